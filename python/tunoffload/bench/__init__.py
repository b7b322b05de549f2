"""``tunoffload bench`` and the helpers the scripts in ``benchmarks/`` share.

Modules (importing this package imports none of them; none imports an optional
dependency when imported):

- :mod:`~tunoffload.bench.cli`: the command (``tunoffload bench``, ``python -m
  tunoffload.bench``): options, the plan of rows, the printed table.
- :mod:`~tunoffload.bench.topology`: namespaces A and B joined by veth or TUN devices
  (:class:`Topology`), built on :mod:`tunoffload.testing`.
- :mod:`~tunoffload.bench.traffic`: traffic from A to B (:func:`run_traffic`): iperf3 when
  installed, else :mod:`~tunoffload.bench.generator` (``python -m
  tunoffload.bench.generator receive|send ...``).
- :mod:`~tunoffload.bench.forwarders`: the forwarder rows (:func:`run_forwarder_row`).
- :mod:`~tunoffload.bench.peers`: the tunnel rows (:func:`run_tunnel_row`,
  :class:`TunnelPeers`), one :mod:`~tunoffload.bench.tunnel` process per namespace
  (``python -m tunoffload.bench.tunnel MODE ...``).
- :mod:`~tunoffload.bench.report`: a row's :class:`Result`, :func:`median_run`,
  :func:`format_table`, :func:`results_json`.
- :mod:`~tunoffload.bench.cipher`: the per-packet cipher of ``examples/vpn.py`` and the
  ``tunnel+vpn`` row (interim, until the Rust batch AEAD replaces it).
"""
