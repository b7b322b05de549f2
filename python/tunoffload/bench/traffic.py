"""Traffic from namespace A to B for one benchmark row: iperf3 when installed (TCP), else
the built-in generator (:mod:`tunoffload.bench.generator`, a process on each side)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from typing import Any

from tunoffload.bench.topology import ADDR_B, Topology, start_module

PORT = 5201
GENERATOR = "tunoffload.bench.generator"
OVERRUN = 30.0  # seconds a sender may run past its duration before it is killed


def have_iperf3() -> bool:
    return shutil.which("iperf3") is not None


def run_traffic(
    topo: Topology,
    proto: str,
    streams: int,
    duration: float,
    use_iperf: bool,
    progress: str = "",
    dst: str = ADDR_B,
    udp_size: int = 1400,
) -> tuple[float, str]:
    """Runs ``streams`` TCP streams (``proto`` "tcp") or UDP senders ("udp") from A to
    address ``dst`` in B for ``duration`` seconds; returns (bits per second received, the
    generator's name: "iperf3" or "built-in"). iperf3 carries TCP when ``use_iperf``; UDP
    goes out in ``udp_size``-byte datagrams. ``progress`` labels the count-down shown on
    a terminal."""
    if use_iperf and proto == "tcp":
        return _iperf3(topo, streams, duration, progress, dst), "iperf3"
    common = ("--port", str(PORT), "--streams", str(streams), "--duration", str(duration))
    srv = start_module(topo.b, GENERATOR, "receive", proto, *common, stdout=subprocess.PIPE)
    try:
        assert srv.stdout is not None
        if srv.stdout.readline().strip() != "ready":
            raise RuntimeError("the traffic receiver did not start")
        cli = start_module(
            topo.a, GENERATOR, "send", proto, *common, "--host", dst, "--size", str(udp_size)
        )
        _wait(cli, duration, progress)
        line = srv.stdout.readline()
        srv.wait(timeout=30)
        r = json.loads(line)
        return (r["bytes"] * 8 / r["seconds"] if r["seconds"] else 0.0), "built-in"
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()


def _iperf3(topo: Topology, streams: int, duration: float, progress: str, dst: str) -> float:
    srv = topo.b.popen(
        *("iperf3", "-s", "-1", "-B", dst), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(0.3)
        cli = topo.a.popen(
            *("iperf3", "-c", dst, "-t", str(duration), "-P", str(streams), "-J"),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        _wait(cli, duration, progress)
        out = json.loads(cli.stdout.read() if cli.stdout else "{}")
        return float(out["end"]["sum_received"]["bits_per_second"])
    finally:
        srv.kill()
        srv.wait()


def _wait(proc: subprocess.Popen[Any], duration: float, progress: str) -> None:
    """Waits for the sender ``proc`` (killed if it overruns), with a count-down on a
    terminal."""
    start = time.monotonic()
    tty = sys.stderr.isatty() and progress
    try:
        while proc.poll() is None:
            el = time.monotonic() - start
            if tty:
                print(
                    f"\r  {progress}: {min(el, duration):4.1f}/{duration:.0f} s ",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
            if el > duration + OVERRUN:
                proc.kill()
                raise TimeoutError("traffic generator did not finish")
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if tty:
            print("\r" + " " * 60 + "\r", end="", file=sys.stderr, flush=True)
