"""A forwarder on the public API between two network namespaces, one TCP stream through it.

    python benchmarks/forwarder.py [--modes passthrough idiom fit plain] [--repeat 3]
                                   [--seconds 3] [--json]

Modes (each direction a thread of this process):
- ``passthrough``: offload on, ``recv`` + ``send`` of whole super-packets (the ceiling).
- ``idiom``: the README's zero-copy form, ``n = src.recv_multiple(original, bufs, sizes,
  offset)`` then ``dst.send_multiple(gro, bufs, offset, sizes=sizes, count=n)``, with 128
  buffers of 64 KiB.
- ``fit``: API.md's natural form in a loop, ``recv_multiple(..., fit=True)`` then
  ``send_multiple(gro, bufs[:n], offset)`` (exact-length bytearrays, grown as needed).
- ``plain``: offload off, one ``recv`` + one ``send`` per packet.
- ``idiom-procs`` (not run unless named): the idiom with the other direction in a forked
  process instead of a thread (no GIL shared between the directions).
- ``native-pass``, ``native-idiom`` (not run unless named): passthrough and the idiom in
  Rust alone on the crate's batch I/O (``benchmarks/rust/examples/forward_native.rs``;
  build it first with ``cargo build --release --example forward_native`` in
  ``benchmarks/rust``): the floor the Python forms can approach.

The modes are interleaved round by round (``--repeat``) and medians reported, with each
mode's ratio to passthrough taken within its round. Traffic: iperf3 if installed, else a
built-in generator (a Python sender and receiver in the two namespaces). Needs root and
the ``ip`` command; makes its own namespaces and deletes them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import tunoffload as t

# the namespaces, devices and traffic are the ones ``tunoffload bench`` makes
from tunoffload.bench.topology import TUN_NAME, Topology
from tunoffload.bench.traffic import have_iperf3, run_traffic
from tunoffload.testing import missing_requirements

OFFSET = t.VIRTIO_NET_HDR_LEN
MODES = ("passthrough", "idiom", "fit", "plain")
NATIVE_MODES = ("native-pass", "native-idiom")
EXTRA_MODES = ("idiom-procs", *NATIVE_MODES)
NATIVE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "rust/target/release/examples/forward_native"
)


# --- forwarders ---------------------------------------------------------------------------


def fwd_passthrough(src: t.TunDevice, dst: t.TunDevice) -> None:
    buf = bytearray(OFFSET + 65535)
    view = memoryview(buf)
    while True:
        n = src.recv(buf)
        dst.send(view[:n])


def fwd_idiom(src: t.TunDevice, dst: t.TunDevice) -> None:
    original = bytearray(OFFSET + 65535)
    bufs = [bytearray(OFFSET + 65535) for _ in range(t.IDEAL_BATCH_SIZE)]
    sizes = [0] * t.IDEAL_BATCH_SIZE
    gro = t.GroTable()
    while True:
        n = src.recv_multiple(original, bufs, sizes, OFFSET)
        dst.send_multiple(gro, bufs, OFFSET, sizes=sizes, count=n)


def fwd_fit(src: t.TunDevice, dst: t.TunDevice) -> None:
    original = bytearray(OFFSET + 65535)
    bufs = [bytearray() for _ in range(t.IDEAL_BATCH_SIZE)]
    sizes = [0] * t.IDEAL_BATCH_SIZE
    gro = t.GroTable()
    while True:
        n = src.recv_multiple(original, bufs, sizes, OFFSET, fit=True)
        dst.send_multiple(gro, bufs[:n], OFFSET)


fwd_plain = fwd_passthrough  # the same loop; the devices have no offload

FORWARDERS: dict[str, Callable[[t.TunDevice, t.TunDevice], None]] = {
    "passthrough": fwd_passthrough,
    "idiom": fwd_idiom,
    "fit": fwd_fit,
    "plain": fwd_plain,
    "idiom-procs": fwd_idiom,
}


def _tcp(topo: Topology, mode: str, seconds: float) -> dict[str, Any]:
    """One TCP stream A -> B through ``topo`` (iperf3 if installed, else bench's built-in
    generator): the row's speed."""
    bps, gen = run_traffic(topo, "tcp", 1, seconds, have_iperf3(), f"{mode} TCP x1")
    return {"mode": mode, "gbit_s": bps / 1e9, "generator": gen, "packets_per_read_ab": 0.0}


def run_native(mode: str, seconds: float) -> dict[str, Any]:
    """One run of a ``native-*`` mode: the Rust forwarder in its own process."""
    topo = Topology()
    proc = None
    try:
        proc = subprocess.Popen(
            [NATIVE, mode.removeprefix("native-"), topo.a.name, topo.b.name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{NATIVE} did not start")
        topo.address_links(TUN_NAME)  # the Rust forwarder made them
        return _tcp(topo, mode, seconds)
    finally:
        if proc is not None:
            proc.communicate(timeout=10)  # closes its stdin: it stops
        topo.close()


def run_mode(mode: str, seconds: float) -> dict[str, Any]:
    """One run of ``mode``: namespaces, devices, forwarder threads (for ``idiom-procs`` the
    B -> A direction in a forked child instead), traffic, clean-up."""
    if mode in NATIVE_MODES:
        return run_native(mode, seconds)
    topo = Topology()
    threads: list[threading.Thread] = []
    child = 0
    try:
        devs = topo.tuns(offload=mode != "plain")
        forward = FORWARDERS[mode]
        directions = [(devs[0], devs[1]), (devs[1], devs[0])]
        if mode == "idiom-procs":
            child = os.fork()
            if child == 0:  # forwards B -> A until killed
                with contextlib.suppress(BaseException):
                    forward(devs[1], devs[0])
                os._exit(0)
            directions = directions[:1]

        def loop(src: t.TunDevice, dst: t.TunDevice) -> None:
            with contextlib.suppress(OSError):  # closed: the run is over
                forward(src, dst)

        for src, dst in directions:
            th = threading.Thread(target=loop, args=(src, dst), daemon=True)
            th.start()
            threads.append(th)
        cpu0 = time.process_time()
        row = _tcp(topo, mode, seconds)
        stats = devs[0].stats
        reads = stats["reads"] or 1
        row["cpu_s"] = time.process_time() - cpu0
        row["packets_per_read_ab"] = (stats.get("rx_packets") or reads) / reads
        return row
    finally:
        if child:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
        topo.close()  # closes the devices: the forwarder threads end
        for th in threads:
            th.join(timeout=5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", nargs="+", choices=MODES + EXTRA_MODES, default=list(MODES))
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--seconds", type=float, default=3.0, help="traffic per run (default 3)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    reason = missing_requirements()
    if reason:
        print(f"forwarder benchmark: {reason}", file=sys.stderr)
        return 2
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in args.modes}
    ratios: dict[str, list[float]] = {m: [] for m in args.modes}
    for r in range(args.repeat):
        base = None
        for mode in args.modes:
            row = run_mode(mode, args.seconds)
            runs[mode].append(row)
            if mode == "passthrough":
                base = row["gbit_s"]
            if base:
                ratios[mode].append(row["gbit_s"] / base)
            if not args.json:
                print(f"round {r + 1}: {mode:12s} {row['gbit_s']:6.2f} Gbit/s", flush=True)
    summary = []
    for mode in args.modes:
        g = [x["gbit_s"] for x in runs[mode]]
        summary.append(
            {
                "mode": mode,
                "gbit_s_median": statistics.median(g),
                "runs": g,
                "vs_passthrough_median": statistics.median(ratios[mode]) if ratios[mode] else None,
                "packets_per_read_ab": statistics.median(
                    x["packets_per_read_ab"] for x in runs[mode]
                ),
                "generator": runs[mode][0]["generator"],
            }
        )
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"\nmedians of {args.repeat} interleaved rounds, {args.seconds:g} s each, 1 TCP stream")
    print(f"{'mode':12s} {'Gbit/s':>7s} {'x passthrough':>13s} {'pkts/read':>9s}  runs")
    for s in summary:
        vs = s["vs_passthrough_median"]
        vs_txt = f"{vs:13.2f}" if vs is not None else f"{'-':>13s}"
        runs_txt = ", ".join(f"{x:.2f}" for x in s["runs"])
        print(
            f"{s['mode']:12s} {s['gbit_s_median']:7.2f} {vs_txt} "
            f"{s['packets_per_read_ab']:9.1f}  {runs_txt}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
