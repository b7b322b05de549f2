"""WireGuard implementations against each other: one TCP stream through each, both sides
the same implementation, in one sitting.

For each implementation available here (``tunoffload.bench.wgpeers.IMPLEMENTATIONS``:
Debian's wireguard-go, the upstream wireguard-go in ``../shared/anchors``, boringtun-cli,
and ours once built), two namespaces joined by a veth pair (the underlay, MTU 1500), one
daemon in each, configured with ``wg`` (MTU 1420 on the tunnel, as wg-quick sets it);
iperf3 runs one TCP stream from one tunnel address to the other for ``--duration``
seconds. Beside them, in the same sitting, tunoffload's own tunnel rows as ``tunoffload
bench`` runs them (``python -m tunoffload.bench.tunnel``,
``tunoffload.bench.peers.run_tunnel_row``):
``tunnel`` (``TunDevice`` + ``UdpSocket``, unencrypted) and ``tunnel+vpn`` (with
``examples/vpn.py``'s encryption, the batch AEAD); and ``vpn.py``, ``examples/vpn.py``
itself run by its command line in each namespace (issue 18's measure).

Every row runs once per round, rounds interleaved; the median of ``--repeat`` rounds is
shown, with each daemon's CPU (both sides' user + system time over the run), TCP
retransmissions and the datagrams the underlay's UDP sockets dropped on a full receive
buffer (``RcvbufErrors`` of both namespaces). Then the ratios issue 20 asks for: each
implementation against the upstream wireguard-go and against the unencrypted tunnel
(ours: at least 1.5x and 0.6x; the encrypted tunnels: at least 0.6x the unencrypted
one). The results also go to ``benchmarks/results/`` as JSON.
Needs root, ``wg`` and iperf3; everything made is removed at the end, also on Ctrl-C.

    python benchmarks/wireguard.py --repeat 3 [--duration 5] [--impls ...] [--json]
    python benchmarks/wireguard.py --list     # the implementations found here, versions
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tunoffload.bench import wgpeers as bp
from tunoffload.bench.peers import (
    OVERLAY_A,
    OVERLAY_B,
    TUNNEL_MTU,
    TUNNEL_PORT,
    UNDERLAY_A,
    UNDERLAY_B,
    run_tunnel_row,
)
from tunoffload.bench.peers import TUNNEL_ROWS as BENCH_TUNNEL_ROWS
from tunoffload.bench.report import Result, interleaved_medians
from tunoffload.bench.topology import Topology
from tunoffload.bench.traffic import iperf3
from tunoffload.testing import missing_requirements, wait_until

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TUNNEL_ROWS = ("tunnel", "tunnel+vpn")  # bench.TUNNEL_ROWS labels
VPN_EXAMPLE = "vpn.py"  # examples/vpn.py, run by its command line on both sides
BASELINE = "wireguard-go-upstream"
# (row, the row it is measured against, the ratio issue 20 asks of it)
TARGETS = (
    ("ours", BASELINE, 1.5),
    ("ours", "tunnel", 0.6),
    ("vpn.py", "tunnel", 0.6),  # issue 18
    ("tunnel+vpn", "tunnel", 0.6),
)


def run_wireguard(impl: str, duration: float) -> Result:
    """One run: ``impl`` on both sides, one iperf3 TCP stream from side A to side B."""
    res = Result(mode=impl, traffic="TCP", streams=1, generator="iperf3")

    def traffic(pair: bp.Pair, a: bp.Peer, b: bp.Peer) -> None:
        r = iperf3(a.ns, b.ns, b.address, duration)
        res.gbit_s = r.gbit_s
        res.extra["retransmits"] = r.retransmits

    return bp.measure(impl, res, traffic, prefix="tunoff-wgb", repo=REPO)


def run_vpn_example(duration: float) -> Result:
    """One run of ``examples/vpn.py`` as its users run it: one process per namespace, by
    its command line (a pre-shared key file, ``--listen``/``--peer`` on the veth), one
    iperf3 TCP stream from A's tunnel address to B's."""
    res = Result(mode=VPN_EXAMPLE, traffic="TCP", streams=1, generator="iperf3")
    procs: list[subprocess.Popen[str]] = []
    try:
        with Topology() as topo, tempfile.TemporaryDirectory() as tmp:
            topo.veth(UNDERLAY_A, UNDERLAY_B)
            key = Path(tmp) / "key.hex"
            key.write_text(os.urandom(32).hex() + "\n")
            logs = []
            for ns, me, peer, addr in (
                (topo.a, UNDERLAY_A, UNDERLAY_B, OVERLAY_A),
                (topo.b, UNDERLAY_B, UNDERLAY_A, OVERLAY_B),
            ):
                ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
                log = Path(tmp) / f"{ns.name}.log"
                argv = [sys.executable, str(REPO / "examples" / "vpn.py"), "--tun", "vpn0"]
                argv += ["--address", f"{addr}/24", "--mtu", str(TUNNEL_MTU)]
                argv += ["--listen", f"{me}:{TUNNEL_PORT}", "--peer", f"{peer}:{TUNNEL_PORT}"]
                argv += ["--key-file", str(key), "--stats-file", str(log) + ".json"]
                with open(log, "w") as err:
                    procs.append(ns.popen(*argv, text=True, stderr=err))
                logs.append(log)
            up = lambda: all("up, peer" in log.read_text() for log in logs)  # noqa: E731
            if not wait_until(up, 30):
                raise RuntimeError(f"vpn.py did not come up: {logs[0].read_text()[-300:]}")
            cpu0 = [_cpu(p.pid) for p in procs]
            drops0 = [ns.udp_counters()["RcvbufErrors"] for ns in (topo.a, topo.b)]
            t0 = time.monotonic()
            r = iperf3(topo.a, topo.b, OVERLAY_B, duration)
            wall = time.monotonic() - t0
            cpu = [_cpu(p.pid) - c for p, c in zip(procs, cpu0, strict=True)]
            drops = [
                ns.udp_counters()["RcvbufErrors"] - d
                for ns, d in zip((topo.a, topo.b), drops0, strict=True)
            ]
            res.gbit_s, res.cpu_s = r.gbit_s, sum(cpu)
            res.cpu_pct = 100 * res.cpu_s / wall
            res.extra = {
                "cpu_pct_a": round(100 * cpu[0] / wall, 1),
                "cpu_pct_b": round(100 * cpu[1] / wall, 1),
                "retransmits": r.retransmits,
                "rcvbuf_drops_a": drops[0],
                "rcvbuf_drops_b": drops[1],
            }
    except Exception as e:  # a row that fails is reported, the others still run
        res.error = f"{type(e).__name__}: {e}"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return res


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and its descendants so far (vpn.py
    forks its receiving process: its CPU is half the row's). A process gone meanwhile
    counts 0 (one that exits between the two reads would be missed: vpn.py's do not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(_cpu(child) for child in children)


def run_row(row: str, duration: float) -> Result:
    if row == VPN_EXAMPLE:
        return run_vpn_example(duration)
    if row in TUNNEL_ROWS:
        return run_tunnel_row(row, BENCH_TUNNEL_ROWS[row], "tcp", 1, duration, use_iperf=True)
    return run_wireguard(row, duration)


def table(rows: list[Result]) -> str:
    head = ("implementation", "Gbit/s", "runs", "CPU % A", "CPU % B", "retr", "rcvbuf drops")
    lines = [head]
    for r in rows:
        runs = ",".join(f"{g:.2f}" for g in r.extra.get("gbit_s_runs", [r.gbit_s]))
        if r.error:
            lines.append((r.mode, "error: " + r.error, "", "", "", "", ""))
        elif r.mode in TUNNEL_ROWS:  # the tunnel processes' CPU, A+B
            lines.append((r.mode, f"{r.gbit_s:.2f}", runs, f"{r.cpu_pct:.0f} (A+B)", "", "", ""))
        else:
            x = r.extra
            lines.append(
                (
                    r.mode,
                    f"{r.gbit_s:.2f}",
                    runs,
                    f"{x['cpu_pct_a']:.0f}",
                    f"{x['cpu_pct_b']:.0f}",
                    str(x["retransmits"]),
                    f"{x['rcvbuf_drops_a']}/{x['rcvbuf_drops_b']}",
                )
            )
    widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
    out = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def ratios(rows: list[Result]) -> list[str]:
    by = {r.mode: r for r in rows if not r.error and r.gbit_s}
    out = []
    for base in (BASELINE, "tunnel"):
        if base not in by:
            continue
        for r in rows:
            if r.mode != base and r.mode in by:
                target = next((t for m, b, t in TARGETS if (m, b) == (r.mode, base)), None)
                got = by[r.mode].gbit_s / by[base].gbit_s
                verdict = (
                    f" ({'meets' if got >= target else 'below'} the target of {target:g}x)"
                    if target
                    else ""
                )
                out.append(f"{r.mode} / {base}: {got:.2f}x{verdict}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    p.add_argument("--repeat", type=int, default=1, help="interleaved rounds (default 1)")
    p.add_argument(
        "--impls",
        nargs="+",
        choices=[*bp.IMPLEMENTATIONS, *TUNNEL_ROWS, VPN_EXAMPLE],
        help="rows to run (default: every implementation found here, and the tunnel rows)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--out", type=Path, help="the JSON file (default: benchmarks/results/)")
    p.add_argument("--list", action="store_true", help="list the implementations found here")
    args = p.parse_args(argv)
    if args.list:
        for name, impl in bp.IMPLEMENTATIONS.items():
            why = impl.unavailable(REPO)
            if why:
                print(f"{name:22} -  {why}")
            else:
                print(f"{name:22} {impl.version(REPO) or '?'}  ({' '.join(impl.command(REPO))})")
        return 0

    reason = missing_requirements(tools=["wg", "iperf3", "ss"])
    if reason:
        print(f"wireguard benchmark: {reason}", file=sys.stderr)
        return 2
    rows_wanted = args.impls or [
        *(n for n, impl in bp.IMPLEMENTATIONS.items() if not impl.unavailable(REPO)),
        *TUNNEL_ROWS,
        VPN_EXAMPLE,
    ]
    for name in rows_wanted:
        why = bp.IMPLEMENTATIONS[name].unavailable(REPO) if name in bp.IMPLEMENTATIONS else None
        if why:
            print(f"wireguard benchmark: {why}", file=sys.stderr)
            return 2
    # SIGTERM ends the sitting as Ctrl-C does: everything made is removed
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    runs: dict[str, list[Result]] = {}
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())

    def progress(rnd: int, row: str, r: Result) -> None:
        runs.setdefault(row, []).append(r)
        print(
            f"  [{rnd + 1}/{args.repeat}] {row:22} {r.gbit_s:6.2f} Gbit/s {r.error}",
            file=sys.stderr,
            flush=True,
        )

    try:
        rows = interleaved_medians(
            rows_wanted, args.repeat, lambda row: run_row(row, args.duration), progress
        )
    except KeyboardInterrupt:
        print("\ninterrupted; the namespaces were removed", file=sys.stderr)
        return 130
    versions = {
        n: bp.IMPLEMENTATIONS[n].version(REPO) for n in rows_wanted if n in bp.IMPLEMENTATIONS
    }
    head = (
        f"wireguard benchmark: one TCP stream (iperf3), {args.duration:g} s per run"
        f"{f', median of {args.repeat} interleaved rounds' if args.repeat > 1 else ''}, "
        f"tunnel MTU {bp.MTU}, {os.cpu_count()} CPUs, kernel {os.uname().release}, {started}"
    )
    report: dict[str, Any] = {
        "title": head,
        "versions": versions,
        "rows": [asdict(r) for r in rows],
        "runs": {k: [asdict(r) for r in v] for k, v in runs.items()},
        "ratios": ratios(rows),
    }
    out = args.out or RESULTS / f"wireguard_{time.strftime('%Y-%m-%d_%H%M', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(head + "\n")
        for name, v in versions.items():
            print(f"  {name}: {v} ({bp.IMPLEMENTATIONS[name].description})")
        print()
        print(table(rows))
        print()
        print("\n".join(report["ratios"]))
        print(f"\nJSON: {out}")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
