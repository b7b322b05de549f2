"""``tunoffload bench``: how much faster a Python forwarder, and a tunnel, are with offload.

Two network namespaces, A and B, and between them either a forwarder written on the
public API (the forwarder rows, :mod:`tunoffload.bench.forwarders`: ``split+coalesce``,
``plain``, ``passthrough``, and ``veth`` for the kernel alone) or two tunnel processes
over a veth pair (the tunnel rows, :mod:`tunoffload.bench.peers`: ``tunnel-plain``,
``tunnel``, ``tunnel+vpn``, and ``wireguard``: two ``python -m tunoffload wireguard``
daemons configured with ``wg``). TCP (and UDP) traffic runs from A to B through it for a
few seconds; the table shows Gbit/s, packets per second, the forwarders' CPU time and how
many packets each read and write carried. ``benchmarks/tunnel.py`` runs more tunnel
variants side by side, ``benchmarks/wireguard.py`` other WireGuard implementations.

Traffic comes from iperf3 when installed, else from a built-in generator (one process per
side). Everything created is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys

from tunoffload.bench.forwarders import FORWARDER_MODES, run_forwarder_row
from tunoffload.bench.peers import TUNNEL_ROWS, WIREGUARD_ROW, run_tunnel_row, run_wireguard_row
from tunoffload.bench.report import Result, format_table, interleaved_medians, results_json
from tunoffload.bench.traffic import have_iperf3
from tunoffload.testing import missing_requirements

MODES = (*FORWARDER_MODES, *TUNNEL_ROWS, WIREGUARD_ROW)
# pairs of TCP rows whose ratio is printed under the table: (faster, slower, note)
COMPARED = (
    ("split+coalesce", "plain", ""),
    ("tunnel", "tunnel-plain", ""),
    ("tunnel+vpn", "tunnel", " (what the encryption costs)"),
    ("wireguard", "tunnel", " (our WireGuard daemons, configured with wg)"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``tunoffload bench``."""
    p.add_argument("--duration", type=float, default=3.0, help="seconds per row (default 3)")
    p.add_argument(
        "--streams", type=int, nargs="+", default=[1, 4], help="TCP stream counts (default 1 4)"
    )
    p.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=None,
        help="rows to run (default all)",
    )
    p.add_argument("--no-udp", action="store_true", help="skip the UDP (UDP_SEGMENT) rows")
    p.add_argument("--no-iperf", action="store_true", help="use the built-in traffic generator")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each row, interleaved; the row with the median Gbit/s is shown (default 1)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def run_row(mode: str, proto: str, streams: int, duration: float, use_iperf: bool) -> Result:
    """One run of row ``mode`` (one of ``MODES``)."""
    if mode in TUNNEL_ROWS:
        return run_tunnel_row(mode, TUNNEL_ROWS[mode], proto, streams, duration, use_iperf)
    if mode == WIREGUARD_ROW:
        return run_wireguard_row(proto, streams, duration, use_iperf)
    return run_forwarder_row(mode, proto, streams, duration, use_iperf)


def _comparisons(rows: list[Result], streams: list[int]) -> list[list[str]]:
    """The ratios of ``COMPARED`` pairs of rows that both ran, a group per stream count."""
    by = {(r.mode, r.traffic, r.streams): r for r in rows}
    groups = []
    for s in streams:
        lines = []
        for fast, slow, note in COMPARED:
            a, b = by.get((fast, "TCP", s)), by.get((slow, "TCP", s))
            if a and b and b.gbit_s and not (a.error or b.error):
                x = f"{a.gbit_s / b.gbit_s:.{1 if fast == 'split+coalesce' else 2}f}"
                lines.append(f"{fast} vs {slow}, TCP x{s}: {x}x{note}")
        if lines:
            groups.append(lines)
    return groups


def run(args: argparse.Namespace) -> int:
    """Runs the rows that ``args`` asks for and prints the table (or JSON); returns the
    exit status (1 when a row failed, 2 when the benchmark cannot run here)."""
    reason = missing_requirements()
    if reason:
        print(f"tunoffload bench: {reason}", file=sys.stderr)
        return 2
    use_iperf = not args.no_iperf and have_iperf3()
    modes = args.modes or list(MODES)
    if WIREGUARD_ROW in modes:
        why = missing_requirements(tools=["wg"])
        if why:
            print(f"tunoffload bench: the {WIREGUARD_ROW} row is left out: {why}", file=sys.stderr)
            modes = [m for m in modes if m != WIREGUARD_ROW]
            if not modes:
                return 2
    plan = [(m, "tcp", s) for s in args.streams for m in modes]
    if not args.no_udp:
        plan += [(m, "udp", 1) for m in modes]

    def show(rnd: int, row: tuple[str, str, int], r: Result) -> None:
        if not args.json and sys.stderr.isatty():
            mode, proto, streams = row
            print(
                f"  [{rnd + 1}/{args.repeat}] {mode:15} {proto} x{streams}: "
                f"{r.gbit_s:6.2f} Gbit/s {r.error}",
                file=sys.stderr,
            )

    try:
        rows = interleaved_medians(
            plan, args.repeat, lambda row: run_row(*row, args.duration, use_iperf), show
        )
    except KeyboardInterrupt:
        print("\ninterrupted; the namespaces were removed", file=sys.stderr)
        return 130
    if args.json:
        print(results_json(rows))
    else:
        gen = "iperf3" if use_iperf else "built-in generator"
        print(
            f"tunoffload bench: {args.duration:g} s per row"
            f"{f', median of {args.repeat} runs' if args.repeat > 1 else ''}, traffic from {gen}, "
            f"{os.cpu_count()} CPUs, kernel {os.uname().release}\n"
        )
        print(format_table(rows))
        for group in _comparisons(rows, args.streams):
            print("\n" + "\n".join(group))
    return 1 if any(r.error for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m tunoffload.bench``: the same as ``tunoffload bench``."""
    p = argparse.ArgumentParser(prog="tunoffload bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))
