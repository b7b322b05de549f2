"""A two-host tunnel, on one machine: how fast each way of writing it moves one TCP stream.

Two network namespaces, A and B, joined by a veth pair (the underlay, 10.98.0.1/24 and
10.98.0.2/24, inside the namespaces only); in each one tunnel process (``ip netns exec``,
``python -m tunoffload.bench.tunnel MODE``) with a TUN device (the overlay, 10.97.0.1/24 and
10.97.0.2/24, MTU 1420) and a UDP socket to the other. TCP runs from A's overlay address
to B's (iperf3 when installed, else a built-in generator) for ``--duration`` seconds.

Modes (the loops are in ``python/tunoffload/bench/tunnel.py``):

- ``plain``: TUN without offload, ``os.read``/``os.write``; one ``sock.send``/``recv``
  per packet.
- ``offload-stdlib-perpacket``: ``TunDevice(offload=True)`` + ``recv_multiple`` /
  ``send_multiple``; one ``sock.send`` / ``recv_into`` per datagram.
- ``offload-stdlib-gso``: the same with ``UDP_SEGMENT`` and ``UDP_GRO`` written by hand on
  the standard library's ``socket.sendmsg`` / ``recvmsg_into`` and their cmsgs, the GRO
  read split in Python.
- ``tunoffload``: ``TunDevice`` + ``UdpSocket``: ``n = tun.recv_multiple(original, bufs,
  sizes, 0)`` then ``udp.send_multiple(bufs, 0, sizes=sizes, count=n)``; the other way
  ``n = udp.recv_multiple(bufs, sizes, 10)`` then ``tun.send_multiple(gro, bufs, 10,
  sizes=sizes, count=n)``.
- ``vpn``: ``tunoffload`` with ``examples/vpn.py``'s encryption (``tunoffload.psk``: the
  batch AEAD, WireGuard's transport-data messages), a batch per call.
- ``tun-forwarder``: for scale, no tunnel: the README's TUN-to-TUN forwarder on this
  package alone (``tunoffload bench``'s ``split+coalesce`` row, one process).

Every mode runs once per round, rounds interleaved; ``--repeat 3`` shows the median of
three and the ratios of ``tunoffload`` to ``plain``, to ``offload-stdlib-gso`` and to
``tun-forwarder``. Needs root; everything it makes is removed at the end.

    python benchmarks/tunnel.py --repeat 3 [--duration 5] [--modes ...] [--json]
"""

from __future__ import annotations

import argparse
import os
import sys

from tunoffload.bench import tunnel
from tunoffload.bench.forwarders import run_forwarder_row
from tunoffload.bench.peers import TUNNEL_MTU, run_tunnel_row
from tunoffload.bench.report import Result, format_table, interleaved_medians, results_json
from tunoffload.bench.traffic import have_iperf3
from tunoffload.testing import missing_requirements

MODES = (*tunnel.MODES, "tun-forwarder")
# (mode, the mode it is measured against, the ratio the tunnel should reach)
TARGETS = (
    ("tunoffload", "plain", 7.0),
    ("tunoffload", "offload-stdlib-gso", 1.8),
    ("tunoffload", "tun-forwarder", 0.7),
)


def run_mode(mode: str, args: argparse.Namespace, use_iperf: bool) -> Result:
    if mode == "tun-forwarder":
        r = run_forwarder_row("split+coalesce", "tcp", args.streams, args.duration, use_iperf)
        r.mode = mode
        return r
    return run_tunnel_row(mode, mode, "tcp", args.streams, args.duration, use_iperf, mtu=args.mtu)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    p.add_argument("--repeat", type=int, default=1, help="interleaved rounds (default 1)")
    p.add_argument("--streams", type=int, default=1, help="TCP streams (default 1)")
    p.add_argument("--mtu", type=int, default=TUNNEL_MTU, help="overlay MTU (1420)")
    p.add_argument("--modes", nargs="+", choices=MODES, help="modes to run (default all)")
    p.add_argument("--no-iperf", action="store_true", help="use the built-in generator")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)

    reason = missing_requirements()
    if reason:
        print(f"tunnel benchmark: {reason}", file=sys.stderr)
        return 2
    modes = args.modes or list(MODES)
    use_iperf = not args.no_iperf and have_iperf3()

    def show(rnd: int, mode: str, r: Result) -> None:
        print(
            f"  [{rnd + 1}/{args.repeat}] {mode:25} {r.gbit_s:6.2f} Gbit/s {r.error}",
            file=sys.stderr,
            flush=True,
        )

    try:
        rows = interleaved_medians(modes, args.repeat, lambda m: run_mode(m, args, use_iperf), show)
    except KeyboardInterrupt:
        print("\ninterrupted; the namespaces were removed", file=sys.stderr)
        return 130
    if args.json:
        print(results_json(rows))
        return 1 if any(r.error for r in rows) else 0
    gen = "iperf3" if use_iperf else "built-in generator"
    print(
        f"tunnel benchmark: TCP x{args.streams}, {args.duration:g} s per run"
        f"{f', median of {args.repeat} interleaved runs' if args.repeat > 1 else ''}, "
        f"traffic from {gen}, overlay MTU {args.mtu}, {os.cpu_count()} CPUs, "
        f"kernel {os.uname().release}\n"
    )
    print(format_table(rows))
    by = {r.mode: r for r in rows if not r.error}
    printed = False
    for mode, base, target in TARGETS:
        a, b = by.get(mode), by.get(base)
        if a and b and b.gbit_s:
            if not printed:
                print()
                printed = True
            got = a.gbit_s / b.gbit_s
            verdict = "meets" if got >= target else "below"
            print(f"{mode} / {base}: {got:.2f}x ({verdict} the target of {target:g}x)")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
