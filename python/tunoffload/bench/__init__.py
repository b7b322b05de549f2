"""``tunoffload bench`` and the helpers the scripts in ``benchmarks/`` share.

Modules (importing this package imports none of them; none imports an optional
dependency when imported):

- :mod:`~tunoffload.bench.cli`: the command (``tunoffload bench``, ``python -m
  tunoffload.bench``): options, the plan of rows, the printed table.
- :mod:`~tunoffload.bench.topology`: namespaces A and B joined by veth or TUN devices
  (:class:`Topology`), built on :mod:`tunoffload.testing`.
- :mod:`~tunoffload.bench.traffic`: traffic between namespaces, for the rows and the
  tests: :func:`run_traffic` (iperf3 when installed, else the generator), :func:`iperf3`,
  :func:`tcp_exchange` (TCP both ways with SHA-256), :func:`udp_exchange` (self-checking
  datagrams); the program each side runs is :mod:`~tunoffload.bench.generator` (``python
  -m tunoffload.bench.generator receive|send|exchange|sink|datagrams ...``).
- :mod:`~tunoffload.bench.wire`: UDP datagrams on a link, captured (:class:`Capture`) and
  sent as they are, replayed, forged or as if from elsewhere (:func:`send_raw_datagrams`).
- :mod:`~tunoffload.bench.wgpeers`: real WireGuard implementations in a namespace pair
  (:class:`Pair`, :class:`Peer`, :func:`configure_pair`), for the interop tests and
  ``benchmarks/wireguard.py``.
- :mod:`~tunoffload.bench.forwarders`: the forwarder rows (:func:`run_forwarder_row`).
- :mod:`~tunoffload.bench.peers`: the tunnel rows (:func:`run_tunnel_row`,
  :class:`TunnelPeers`), one :mod:`~tunoffload.bench.tunnel` process per namespace
  (``python -m tunoffload.bench.tunnel MODE ...``).
- :mod:`~tunoffload.bench.report`: a row's :class:`Result`, :func:`median_run`,
  :func:`format_table`, :func:`results_json`.
"""
