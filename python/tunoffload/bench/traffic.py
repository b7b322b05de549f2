"""Traffic between network namespaces: the program :mod:`tunoffload.bench.generator`
(``python -m``, a process on each side) or iperf3, for the benchmark rows and the tests.

- :func:`run_traffic`: one benchmark row's traffic from A to B (iperf3 when asked and
  installed, TCP; else the generator's throughput mode); bits per second.
- :func:`iperf3`: TCP streams measured by iperf3 (its JSON parsed): :class:`IperfResult`.
- :func:`tcp_exchange`: one TCP connection, bytes each way at once, both ends counting and
  hashing (SHA-256) what they sent and got: :class:`TcpResult`.
- :class:`UdpSink`, :func:`send_datagrams`, :func:`udp_exchange`: self-checking datagrams
  (sequence number, digest), every one accounted for, duplicates seen: :class:`UdpResult`.

Every wait is bounded; the processes are killed and reaped however a call ends.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tunoffload.bench.topology import ADDR_B
from tunoffload.testing import LineReader, Netns, python_module, wait_ready, wait_until

PORT = 5201  # the throughput generator's and iperf3's
TCP_PORT, UDP_PORT = 5471, 5472  # tcp_exchange's and udp_exchange's
GENERATOR = "tunoffload.bench.generator"
OVERRUN = 30.0  # seconds a sender may run past its duration before it is killed
SLACK_S = 30.0  # for a receiver's report after the sender is done
# around a 1420-byte tunnel MTU (1392: the largest unfragmented IPv4 datagram), and
# fragmented ones
DATAGRAM_SIZES = (12, 100, 1000, 1392, 1393, 4000, 30000)


class Sides(Protocol):
    """Namespaces A and B: a :class:`~tunoffload.bench.topology.Topology`, a
    :class:`~tunoffload.bench.wgpeers.Pair`."""

    @property
    def a(self) -> Netns: ...
    @property
    def b(self) -> Netns: ...


def have_iperf3() -> bool:
    return shutil.which("iperf3") is not None


def start_generator(ns: Netns, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """``python -m tunoffload.bench.generator ARGS`` in ``ns``, text mode; ``kwargs`` go
    to ``subprocess.Popen``."""
    return ns.popen(*python_module(GENERATOR, *args), text=True, **kwargs)


@contextlib.contextmanager
def _reaped(*procs: subprocess.Popen[str]) -> Iterator[None]:
    """Kills (if still running) and reaps ``procs`` on leaving."""
    try:
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            if p.stdout:
                p.stdout.close()


def _finish(proc: subprocess.Popen[str], duration: float, progress: str = "") -> str:
    """Waits for the sender ``proc`` (killed if it overruns its ``duration``), with a
    count-down on a terminal; what it wrote on its stdout."""
    start = time.monotonic()
    tty = sys.stderr.isatty() and progress
    try:
        while True:
            el = time.monotonic() - start
            if tty:
                line = f"\r  {progress}: {min(el, duration):4.1f}/{duration:.0f} s "
                print(line, end="", file=sys.stderr, flush=True)
            try:
                return proc.communicate(timeout=0.1)[0] or ""
            except subprocess.TimeoutExpired:
                if el > duration + OVERRUN:
                    raise TimeoutError("traffic generator did not finish") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if tty:
            print("\r" + " " * 60 + "\r", end="", file=sys.stderr, flush=True)


def run_traffic(
    topo: Sides,
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
        r = iperf3(topo.a, topo.b, dst, duration, streams, progress=progress)
        return r.gbit_s * 1e9, "iperf3"
    common = ("--port", str(PORT), "--streams", str(streams), "--duration", str(duration))
    srv = start_generator(topo.b, "receive", proto, *common, stdout=subprocess.PIPE)
    with _reaped(srv):
        lines = wait_ready(srv, "the traffic receiver")
        cli = start_generator(
            topo.a, "send", proto, *common, "--host", dst, "--size", str(udp_size)
        )
        _finish(cli, duration, progress)
        report = lines.read(SLACK_S)
        if not report:
            raise RuntimeError(f"the traffic receiver reported nothing (exit {srv.poll()})")
        r = json.loads(report[0])
    return (r["bytes"] * 8 / r["seconds"] if r["seconds"] else 0.0), "built-in"


@dataclass
class IperfResult:
    gbit_s: float  # received
    retransmits: int
    seconds: float
    raw: dict[str, Any]


def iperf3(
    client: Netns,
    server: Netns,
    addr: str,
    seconds: float,
    streams: int = 1,
    port: int = PORT,
    progress: str = "",
) -> IperfResult:
    """``streams`` TCP streams from ``client`` to ``addr`` in ``server`` for ``seconds``,
    measured by iperf3 (``-J``); ``progress`` labels a count-down on a terminal."""
    srv = server.popen(
        *("iperf3", "-s", "-1", "-B", addr, "-p", str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    with _reaped(srv):
        listening = wait_until(
            lambda: bool(server.run("ss", "-Hltn", f"sport = :{port}").stdout.strip()), 10
        )
        if not listening:
            raise RuntimeError(f"iperf3 -s did not listen on port {port} (exit {srv.poll()})")
        cli = client.popen(
            *("iperf3", "-c", addr, "-p", str(port), "-t", f"{seconds:g}", "-P", str(streams)),
            *("-J", "--connect-timeout", "10000"),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        raw = json.loads(_finish(cli, seconds, progress) or "{}")
    if "error" in raw or "end" not in raw:
        raise RuntimeError(f"iperf3: {raw.get('error', 'no result')}")
    end = raw["end"]
    return IperfResult(
        gbit_s=end["sum_received"]["bits_per_second"] / 1e9,
        retransmits=int(end["sum_sent"].get("retransmits", 0)),
        seconds=float(end["sum_received"]["seconds"]),
        raw=raw,
    )


# --- TCP, counted and hashed ----------------------------------------------------------


@dataclass
class TcpResult:
    """Both ends' view of one :func:`tcp_exchange`: ``sent``, ``sent_sha256``,
    ``received``, ``received_sha256``, ``error`` each."""

    client: dict[str, Any]
    server: dict[str, Any]
    seconds: float

    @property
    def ok(self) -> bool:
        c, s = self.client, self.server
        return bool(
            c["received"] == s["sent"]
            and s["received"] == c["sent"]
            and c["received_sha256"] == s["sent_sha256"]
            and s["received_sha256"] == c["sent_sha256"]
            and not c["error"]
            and not s["error"]
        )

    def problem(self) -> str:
        """Empty when ``ok``, else what differed."""
        if self.ok:
            return ""
        c, s = self.client, self.server
        return (
            f"client sent {c['sent']} ({c['sent_sha256'][:12]}), server got {s['received']} "
            f"({s['received_sha256'][:12]}); server sent {s['sent']} ({s['sent_sha256'][:12]}),"
            f" client got {c['received']} ({c['received_sha256'][:12]}); errors: "
            f"{c['error']!r} {s['error']!r}"
        )


def tcp_exchange(
    client: Netns,
    server: Netns,
    addr: str,
    size: int,
    size_back: int | None = None,
    *,
    port: int = TCP_PORT,
    seed: int | None = None,
    timeout: float = 60,
    check: bool = False,
) -> TcpResult:
    """One TCP connection from ``client`` to ``addr:port`` in ``server``: ``size`` bytes
    to it and ``size_back`` (default ``size``) from it at the same time, random (from
    ``seed`` and ``seed + 1`` when given); each end counts and hashes what it sent and
    got. The result's ``ok`` says whether all arrived intact (``problem()``, what
    differed); with ``check``, ``AssertionError`` when not."""
    back = size if size_back is None else size_back
    common = ("--port", str(port), "--timeout", f"{timeout:g}")
    seeds = (("--seed", str(seed)), ("--seed", str(seed + 1))) if seed is not None else ((), ())
    t0 = time.monotonic()
    srv = start_generator(
        server, "exchange", "--listen", addr, "--size", str(back), *common, *seeds[1],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    with _reaped(srv):
        wait_ready(srv, "the TCP exchange's server")
        cli = start_generator(
            client, "exchange", "--connect", addr, "--size", str(size), *common, *seeds[0],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        with _reaped(cli):
            try:
                out_c = cli.communicate(timeout=timeout + 5)[0]
                out_s = srv.communicate(timeout=10)[0]
            except subprocess.TimeoutExpired:
                raise AssertionError(f"TCP exchange to {addr}: not done in {timeout:g} s") from None
    if not out_c.strip() or not out_s.strip():
        raise AssertionError(f"TCP exchange to {addr} failed: client {out_c!r}, server {out_s!r}")
    lines = out_c.strip().splitlines()[-1], out_s.strip().splitlines()[-1]
    r = TcpResult(json.loads(lines[0]), json.loads(lines[1]), time.monotonic() - t0)
    if check and not r.ok:
        raise AssertionError(f"TCP exchange to {addr}: {r.problem()}")
    return r


# --- self-checking datagrams --------------------------------------------------------------


class UdpSink:
    """A UDP receiver in ``ns`` on ``addr:port``, checking each datagram
    (:func:`tunoffload.bench.generator.datagram`'s format): ``received`` maps sequence
    numbers to how many intact copies arrived, ``bad`` counts the ones whose digest did
    not match. It stops after ``idle`` seconds without a datagram, or on ``close``."""

    def __init__(self, ns: Netns, addr: str, port: int = UDP_PORT, idle: float = 60) -> None:
        self.ns, self.addr, self.port = ns, addr, port
        self.received: dict[int, int] = {}
        self.bad = 0
        self.proc = start_generator(
            ns, "sink", "--bind", addr, "--port", str(port), "--idle", f"{idle:g}",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        self._lines: LineReader | None = None
        try:
            self._lines = wait_ready(self.proc, "the UDP sink")
        except BaseException:
            self.close()
            raise

    def poll(self, timeout: float = 0.0) -> None:
        """Reads what the sink reported so far (waiting up to ``timeout`` for a line)."""
        if self._lines is None:
            return
        for line in self._lines.read(timeout):
            parts = line.split()
            if len(parts) != 3:
                continue  # not a report (a traceback is in the test's output)
            seq, _n, status = parts
            if status == "ok":
                self.received[int(seq)] = self.received.get(int(seq), 0) + 1
            else:
                self.bad += 1

    def wait(self, seqs: Sequence[int], timeout: float) -> list[int]:
        """Waits until every one of ``seqs`` arrived; the ones that did not."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll(min(0.1, max(0.0, deadline - time.monotonic())))
            missing = [s for s in seqs if s not in self.received]
            if not missing or time.monotonic() > deadline:
                return missing

    def close(self) -> None:
        """Stops the sink after reading everything it reported."""
        if self.proc.stdin and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # the sink's signal to stop
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        while self._lines and not self._lines.eof:
            self.poll(1.0)
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self) -> UdpSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def send_datagrams(ns: Netns, addr: str, port: int, specs: Sequence[tuple[int, int]]) -> None:
    """Sends checked datagrams, ``(sequence number, size)`` each, from one new socket in
    ``ns`` to ``addr:port``."""
    args = [f"{seq}:{size}" for seq, size in specs]
    ns.run(*python_module(GENERATOR, "datagrams", "--host", addr, "--port", str(port), *args))


@dataclass
class UdpResult:
    sent: int
    arrived: int
    resent: int  # datagrams sent again because the first copy did not arrive
    duplicates: int
    bad: int
    missing: list[int]

    @property
    def ok(self) -> bool:
        """Every one arrived intact, none more often than it was sent."""
        return not self.missing and not self.bad and self.duplicates <= self.resent


def udp_exchange(
    src: Netns,
    dst: Netns,
    addr: str,
    count: int = 70,
    sizes: Sequence[int] = DATAGRAM_SIZES,
    rounds: int = 3,
    first_seq: int = 0,
    port: int = UDP_PORT,
) -> UdpResult:
    """``count`` datagrams (sizes cycling through ``sizes``) from ``src`` to ``addr`` in
    ``dst``; the ones that did not arrive within a second (two for the first round) are
    sent again, up to ``rounds`` times in all. Every copy that arrives is checked."""
    seqs = list(range(first_seq, first_seq + count))
    size_of = {s: sizes[i % len(sizes)] for i, s in enumerate(seqs)}
    resent = 0
    with UdpSink(dst, addr, port) as sink:
        missing = seqs
        for r in range(rounds):
            send_datagrams(src, addr, port, [(s, size_of[s]) for s in missing])
            resent += len(missing) if r else 0
            missing = sink.wait(missing, timeout=2 if r == 0 else 1)
            if not missing:
                break
    return UdpResult(
        sent=count,
        arrived=sum(1 for s in seqs if s in sink.received),
        resent=resent,
        duplicates=sum(n - 1 for n in sink.received.values() if n > 1),
        bad=sink.bad,
        missing=missing,
    )
