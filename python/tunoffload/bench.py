"""``tunoffload bench``: how much faster a Python forwarder is with offload.

Two network namespaces, A and B, each get one TUN device (A: 10.99.0.1/24, B:
10.99.0.2/24); a forwarder written on the public API, in this process, reads packets from
one device and writes them to the other, both ways. TCP (and UDP) traffic runs from A to B
through it for a few seconds. Rows:

- ``split+coalesce``: offload on; ``recv_multiple`` splits each super-packet into
  MTU-sized packets (what a VPN would encrypt one by one) and ``send_multiple`` coalesces
  them again.
- ``plain``: offload off; one ``recv``/``send`` per packet, the path Python code has today.
- ``passthrough``: offload on; super-packets move whole, no split (the ceiling for any
  forwarder on TUN).
- ``veth``: no forwarder, A and B joined by a veth pair (the kernel's own path).

The tunnel rows are a VPN's shape instead: A and B joined by a veth pair (the underlay,
10.98.0.1/24 and 10.98.0.2/24), and in each one tunnel process (``python -m
tunoffload._tunnel``) with a TUN device (the overlay, 10.97.0.1/24 and 10.97.0.2/24, MTU
1420) and a UDP socket to the other; traffic runs between the overlay addresses:

- ``tunnel-plain``: offload off, one ``os.read``/``os.write`` and one ``send``/``recv``
  per packet.
- ``tunnel``: ``TunDevice`` offload + ``UdpSocket``: super-packets split into datagrams
  sent as ``UDP_SEGMENT`` runs; ``UDP_GRO`` reads split and coalesced again into the TUN.
- ``tunnel+vpn``: ``tunnel`` with ``examples/vpn.py``'s ChaCha20-Poly1305 per packet
  (when ``cryptography`` is installed).

``benchmarks/tunnel.py`` runs more tunnel variants side by side.

Traffic comes from iperf3 when installed, else from a built-in generator (one process per
side). Everything created is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

# tunnel rows: their label -> the mode of the peer program (tunoffload._tunnel)
TUNNEL_ROWS = {"tunnel-plain": "plain", "tunnel": "tunoffload", "tunnel+vpn": "vpn"}
MODES = ("veth", "passthrough", "split+coalesce", "plain", *TUNNEL_ROWS)
ADDR_A, ADDR_B, PORT = "10.99.0.1", "10.99.0.2", 5201
# the tunnel rows: the veth between the namespaces is the underlay, the TUN devices the
# overlay; one tunnel process per namespace
UNDERLAY_A, UNDERLAY_B = "10.98.0.1", "10.98.0.2"
OVERLAY_A, OVERLAY_B = "10.97.0.1", "10.97.0.2"
TUNNEL_PORT = 51820
TUNNEL_MTU = 1420  # 1500 on the veth - 20 (IPv4) - 8 (UDP) - 28 (the vpn's nonce and tag)
OFFSET = 16  # headroom before each packet: >= VIRTIO_NET_HDR_LEN


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
        help="rows to run (default all; tunnel+vpn when cryptography is installed)",
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


@dataclass
class Result:
    mode: str
    traffic: str
    streams: int
    gbit_s: float = 0.0
    pps: float = 0.0
    cpu_s: float = 0.0
    cpu_pct: float = 0.0
    # packets per super-packet: per read from the source, per write to the destination
    pkts_per_read_ab: float = 0.0
    pkts_per_write_ab: float = 0.0
    pkts_per_read_ba: float = 0.0
    pkts_per_write_ba: float = 0.0
    generator: str = ""
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# --- namespaces -----------------------------------------------------------------------


def _ip(*args: str, ns: str | None = None, check: bool = True) -> None:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    subprocess.run(argv, check=check, capture_output=True, timeout=30)


class Topology:
    """Namespaces A and B (and what joins them), deleted by ``close``."""

    def __init__(self) -> None:
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.a, self.b = f"tunoff-bench-a-{tag}", f"tunoff-bench-b-{tag}"
        self.devices: list[Any] = []
        try:
            for ns in (self.a, self.b):
                _ip("netns", "add", ns)
                _ip("link", "set", "lo", "up", ns=ns)
        except BaseException:
            self.close()  # the one made already
            raise

    def veth(self, addr_a: str = ADDR_A, addr_b: str = ADDR_B) -> None:
        _ip(
            "link",
            "add",
            "tobv0",
            "netns",
            self.a,
            "type",
            "veth",
            "peer",
            "tobv1",
            "netns",
            self.b,
        )
        for ns, dev, addr in ((self.a, "tobv0", addr_a), (self.b, "tobv1", addr_b)):
            _ip("addr", "add", f"{addr}/24", "dev", dev, ns=ns)
            _ip("link", "set", dev, "up", ns=ns)

    def tuns(self, offload: bool) -> tuple[Any, Any]:
        from tunoffload import TunDevice

        pair = []
        for ns, addr in ((self.a, ADDR_A), (self.b, ADDR_B)):
            dev = TunDevice("tob0", offload=offload, netns=ns)
            self.devices.append(dev)
            dev.add_address(f"{addr}/24")
            dev.up()
            pair.append(dev)
        return pair[0], pair[1]

    def close(self) -> None:
        for d in self.devices:
            with contextlib.suppress(Exception):
                d.close()
        for ns in (self.a, self.b):
            _ip("netns", "del", ns, check=False)


# --- forwarders -------------------------------------------------------------------------


class Counters:
    def __init__(self) -> None:
        self.reads = 0
        self.packets = 0
        self.writes = 0
        self.cpu = 0.0


def _forward_split(src: Any, dst: Any, c: Counters) -> None:
    """recv_multiple (split into MTU packets) -> send_multiple (coalesce), zero-copy."""
    import tunoffload as t

    orig = bytearray(t.VIRTIO_NET_HDR_LEN + 65535)
    bufs = [bytearray(OFFSET + 65535) for _ in range(t.IDEAL_BATCH_SIZE)]
    sizes = [0] * len(bufs)
    table = t.GroTable()
    t0 = time.thread_time()
    try:
        while True:
            n = src.recv_multiple(orig, bufs, sizes, OFFSET)
            c.reads += 1
            c.packets += n
            dst.send_multiple(table, bufs, OFFSET, sizes=sizes, count=n)
    except OSError:
        pass  # the device was closed: the row is over
    finally:
        c.cpu += time.thread_time() - t0


def _forward_whole(src: Any, dst: Any, c: Counters) -> None:
    """One read, one write: plain packets (offload off) or whole super-packets, counted
    as the segments their virtio header says they hold."""
    buf = bytearray(10 + 65535)
    view = memoryview(buf)
    vnet = src.offload
    t0 = time.thread_time()
    try:
        while True:
            n = src.recv(buf)
            c.reads += 1
            if vnet and buf[1]:  # gso_type set: count the segments
                gso_size, l4 = struct.unpack_from("=HH", buf, 4)
                l4_len = 8 if buf[1] == 5 else (buf[10 + l4 + 12] >> 4) * 4
                data = n - 10 - l4 - l4_len
                c.packets += max(1, -(-data // gso_size)) if gso_size else 1
            else:
                c.packets += 1
            dst.send(view[:n])
    except OSError:
        pass
    finally:
        c.cpu += time.thread_time() - t0


# --- traffic ------------------------------------------------------------------------------

_SERVER = r"""
import socket, sys, time, json
proto, port = sys.argv[1], int(sys.argv[2])
streams, duration = int(sys.argv[3]), float(sys.argv[4])
if proto == "tcp":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(streams); s.settimeout(duration + 20)
    print("ready", flush=True)
    conns = [s.accept()[0] for _ in range(streams)]
    import selectors
    sel = selectors.DefaultSelector()
    for c in conns: c.setblocking(False); sel.register(c, selectors.EVENT_READ)
    buf = bytearray(1 << 20); total = 0; first = last = None; open_ = len(conns)
    while open_:
        for key, _ in sel.select(duration + 20):
            try: n = key.fileobj.recv_into(buf)
            except BlockingIOError: continue
            if n == 0: sel.unregister(key.fileobj); open_ -= 1; continue
            now = time.monotonic(); first = first or now; last = now; total += n
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(("0.0.0.0", port)); s.settimeout(2.0)
    print("ready", flush=True)
    buf = bytearray(65535); total = 0; first = last = None; end = time.monotonic() + duration + 10
    while time.monotonic() < end:
        try: n = s.recv_into(buf)
        except socket.timeout:
            if first: break
            continue
        now = time.monotonic(); first = first or now; last = now; total += n
print(json.dumps({"bytes": total, "seconds": (last - first) if first and last else 0}), flush=True)
"""

_CLIENT = r"""
import socket, sys, time, threading
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
streams, duration = int(sys.argv[4]), float(sys.argv[5])
size = int(sys.argv[6]) if len(sys.argv) > 6 else 1400
end = time.monotonic() + duration
def tcp():
    c = socket.create_connection((host, port), timeout=10)
    data = memoryview(bytes(1 << 20))
    while time.monotonic() < end: c.sendall(data)
    c.close()
def udp():
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.connect((host, port))
    c.setsockopt(socket.SOL_UDP, 103, size)  # UDP_SEGMENT: size-byte datagrams, USO
    data = bytes(size * 40)
    while time.monotonic() < end:
        try: c.send(data)
        except OSError: time.sleep(0.0005)
ts = [threading.Thread(target=tcp if proto == "tcp" else udp) for _ in range(streams)]
for t in ts: t.start()
for t in ts: t.join()
"""


def _traffic(
    topo: Topology,
    proto: str,
    streams: int,
    duration: float,
    use_iperf: bool,
    progress: str,
    dst: str = ADDR_B,
    udp_size: int = 1400,
) -> tuple[float, str]:
    """Runs traffic from A to ``dst`` in B; returns (bits per second received, generator
    name). UDP goes out in ``udp_size``-byte datagrams."""
    if use_iperf and proto == "tcp":
        iperf_srv = subprocess.Popen(
            ["ip", "netns", "exec", topo.b, "iperf3", "-s", "-1", "-B", dst],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.3)
            iperf_cli = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    topo.a,
                    "iperf3",
                    "-c",
                    dst,
                    "-t",
                    str(duration),
                    "-P",
                    str(streams),
                    "-J",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            _wait(iperf_cli, duration, progress)
            out = json.loads(iperf_cli.stdout.read() if iperf_cli.stdout else "{}")
            return float(out["end"]["sum_received"]["bits_per_second"]), "iperf3"
        finally:
            iperf_srv.kill()
            iperf_srv.wait()
    py = sys.executable
    srv = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            topo.b,
            py,
            "-c",
            _SERVER,
            proto,
            str(PORT),
            str(streams),
            str(duration),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert srv.stdout is not None
        srv.stdout.readline()  # "ready"
        cli = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                topo.a,
                py,
                "-c",
                _CLIENT,
                proto,
                dst,
                str(PORT),
                str(streams),
                str(duration),
                str(udp_size),
            ]
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


def _wait(proc: subprocess.Popen[Any], duration: float, progress: str) -> None:
    start = time.monotonic()
    try:
        while proc.poll() is None:
            el = time.monotonic() - start
            if sys.stderr.isatty():
                print(
                    f"\r  {progress}: {min(el, duration):4.1f}/{duration:.0f} s ",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
            if el > duration + 30:
                proc.kill()
                raise TimeoutError("traffic generator did not finish")
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if sys.stderr.isatty():
            print("\r" + " " * 60 + "\r", end="", file=sys.stderr, flush=True)


def run_row(mode: str, proto: str, streams: int, duration: float, use_iperf: bool) -> Result:
    """One row: build the topology, forward, measure, tear down."""
    if mode in TUNNEL_ROWS:
        return run_tunnel_row(mode, TUNNEL_ROWS[mode], proto, streams, duration, use_iperf)
    res = Result(mode=mode, traffic=proto.upper(), streams=streams)
    topo = Topology()
    threads: list[threading.Thread] = []
    counters = [Counters(), Counters()]
    devs: tuple[Any, Any] | None = None
    try:
        if mode == "veth":
            topo.veth()
        else:
            offload = mode != "plain"
            devs = topo.tuns(offload)
            fwd = _forward_split if mode == "split+coalesce" else _forward_whole
            for (src, dst), c in zip(
                ((devs[0], devs[1]), (devs[1], devs[0])), counters, strict=True
            ):
                th = threading.Thread(target=fwd, args=(src, dst, c), daemon=True)
                th.start()
                threads.append(th)
        time.sleep(0.2)
        wall0 = time.monotonic()
        bps, res.generator = _traffic(
            topo, proto, streams, duration, use_iperf, f"{mode} {proto} x{streams}"
        )
        wall = time.monotonic() - wall0
        res.gbit_s = bps / 1e9
    except Exception as e:  # a row that fails is reported, the others still run
        res.error = f"{type(e).__name__}: {e}"
        wall = 0.0
    finally:
        stats = [d.stats for d in devs] if devs else []
        topo.close()
        for th in threads:
            th.join(timeout=5)
    if devs:
        fwd_a = counters[0]  # A -> B carries the data (and B -> A the ACKs)
        res.cpu_s = sum(c.cpu for c in counters)
        res.cpu_pct = 100 * res.cpu_s / wall if wall else 0.0
        res.pps = sum(c.packets for c in counters) / wall if wall else 0.0
        fwd_b = counters[1]
        writes_b = stats[1].get("writes", 0) if stats else 0
        writes_a = stats[0].get("writes", 0) if stats else 0
        res.pkts_per_read_ab = ratio(fwd_a.packets, fwd_a.reads)
        res.pkts_per_write_ab = ratio(fwd_a.packets, writes_b)
        res.pkts_per_read_ba = ratio(fwd_b.packets, fwd_b.reads)
        res.pkts_per_write_ba = ratio(fwd_b.packets, writes_a)
        res.extra = {
            "reads_a_to_b": fwd_a.reads,
            "packets_a_to_b": fwd_a.packets,
            "writes_to_b": writes_b,
            "reads_b_to_a": fwd_b.reads,
            "packets_b_to_a": fwd_b.packets,
            "writes_to_a": writes_a,
        }
    return res


# --- tunnels -------------------------------------------------------------------------


def have_cryptography() -> bool:
    """Whether the vpn rows can run (they need the ``cryptography`` package)."""
    import importlib.util

    return importlib.util.find_spec("cryptography") is not None


class TunnelPeers:
    """One tunnel process (``python -m tunoffload._tunnel MODE``) in each namespace of
    ``topo``, joined through its veth; ``stop`` ends them and returns their counters."""

    def __init__(self, topo: Topology, peer_mode: str, mtu: int = TUNNEL_MTU) -> None:
        self.procs: list[tuple[subprocess.Popen[str], Any]] = []
        self.key_file: str | None = None
        if peer_mode == "vpn":
            fd, self.key_file = tempfile.mkstemp(prefix="tunoff-key-", suffix=".hex")
            with os.fdopen(fd, "w") as f:
                f.write(os.urandom(32).hex() + "\n")
        try:
            self._start(topo, peer_mode, mtu)
        except BaseException:
            self.stop()  # the ones already running, and the key file
            raise

    def _start(self, topo: Topology, peer_mode: str, mtu: int) -> None:
        pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": pkg_parent + (os.pathsep + path if path else "")}
        for ns, me, peer, addr in (
            (topo.a, UNDERLAY_A, UNDERLAY_B, OVERLAY_A),
            (topo.b, UNDERLAY_B, UNDERLAY_A, OVERLAY_B),
        ):
            # no IPv6 on the new devices: nothing but the benchmark's traffic in the tunnel
            _ip("netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1")
            argv = [
                *("ip", "netns", "exec", ns, sys.executable, "-m", "tunoffload._tunnel"),
                *(peer_mode, "--tun", "tunl0", "--address", f"{addr}/24", "--mtu", str(mtu)),
                *("--listen", f"{me}:{TUNNEL_PORT}", "--peer", f"{peer}:{TUNNEL_PORT}"),
                *(("--key-file", self.key_file) if self.key_file else ()),
            ]
            err = tempfile.TemporaryFile(mode="w+")
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
            self.procs.append((proc, err))
        for proc, err in self.procs:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            line = proc.stdout.readline() if ready else ""
            if line.strip() != "ready":
                raise RuntimeError(f"tunnel process did not start: {self._stderr(err)}")

    @staticmethod
    def _stderr(err: Any) -> str:
        err.seek(0)
        text: str = err.read().strip()
        return text.splitlines()[-1] if text else "(no output)"

    def stop(self) -> list[dict[str, Any]]:
        """SIGTERM to both; their counters (empty for one that had died)."""
        stats: list[dict[str, Any]] = []
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, err in self.procs:
            try:
                out, _ = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            lines = [x for x in (out or "").splitlines() if x.startswith("{")]
            s: dict[str, Any] = json.loads(lines[-1]) if lines else {}
            if not lines:
                s["error"] = f"exit {proc.returncode}: {self._stderr(err)}"
            err.close()
            stats.append(s)
        if self.key_file:
            with contextlib.suppress(OSError):
                os.unlink(self.key_file)
        self.procs = []
        return stats


def run_tunnel_row(
    label: str,
    peer_mode: str,
    proto: str,
    streams: int,
    duration: float,
    use_iperf: bool,
    mtu: int = TUNNEL_MTU,
) -> Result:
    """One tunnel row: namespaces A and B joined by veth, a tunnel process in each (mode
    ``peer_mode`` of ``tunoffload._tunnel``), traffic from A's overlay address to B's."""
    res = Result(mode=label, traffic=proto.upper(), streams=streams)
    if peer_mode == "vpn" and not have_cryptography():
        res.error = "needs the cryptography package (pip install 'tunoffload[vpn]')"
        return res
    topo = Topology()
    peers: TunnelPeers | None = None
    stats: list[dict[str, Any]] = []
    wall = 0.0
    try:
        topo.veth(UNDERLAY_A, UNDERLAY_B)
        peers = TunnelPeers(topo, peer_mode, mtu)
        time.sleep(0.2)
        wall0 = time.monotonic()
        bps, res.generator = _traffic(
            topo,
            proto,
            streams,
            duration,
            use_iperf,
            f"{label} {proto} x{streams}",
            dst=OVERLAY_B,
            udp_size=mtu - 28,  # IPv4 + UDP headers: datagrams fill the MTU
        )
        wall = time.monotonic() - wall0
        res.gbit_s = bps / 1e9
    except Exception as e:  # a row that fails is reported, the others still run
        res.error = f"{type(e).__name__}: {e}"
    finally:
        if peers is not None:
            stats = peers.stop()
        topo.close()
    if len(stats) == 2:
        a, b = stats
        for s in stats:
            if s.get("error") and not res.error:
                res.error = f"tunnel process: {s['error']}"
        res.cpu_s = a.get("cpu_s", 0.0) + b.get("cpu_s", 0.0)
        res.cpu_pct = 100 * res.cpu_s / wall if wall else 0.0
        packets = sum(s.get("tun_packets", 0) for s in stats)
        res.pps = packets / wall if wall else 0.0
        res.pkts_per_read_ab = ratio(a.get("tun_packets", 0), a.get("tun_reads", 0))
        res.pkts_per_write_ab = ratio(b.get("udp_datagrams", 0), b.get("tun_writes", 0))
        res.pkts_per_read_ba = ratio(b.get("tun_packets", 0), b.get("tun_reads", 0))
        res.pkts_per_write_ba = ratio(a.get("udp_datagrams", 0), a.get("tun_writes", 0))
        res.extra = {"peer_a": a, "peer_b": b, "mtu": mtu}
    return res


def ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _table(rows: list[Result]) -> str:
    head = (
        "forwarder",
        "traffic",
        "streams",
        "Gbit/s",
        "kpkt/s",
        "fwd CPU s",
        "CPU %",
        "A>B pkt/read",
        "pkt/write",
        "B>A pkt/read",
        "pkt/write",
    )
    lines: list[tuple[str, ...]] = [head]
    for r in rows:
        if r.error:
            lines.append((r.mode, r.traffic, str(r.streams), "error: " + r.error, *[""] * 7))
            continue
        fwd = r.mode != "veth"
        lines.append(
            (
                r.mode,
                r.traffic,
                str(r.streams),
                f"{r.gbit_s:.2f}",
                f"{r.pps / 1e3:.0f}" if fwd else "-",
                f"{r.cpu_s:.2f}" if fwd else "-",
                f"{r.cpu_pct:.0f}" if fwd else "-",
                *(
                    f"{v:.1f}" if fwd else "-"
                    for v in (
                        r.pkts_per_read_ab,
                        r.pkts_per_write_ab,
                        r.pkts_per_read_ba,
                        r.pkts_per_write_ba,
                    )
                ),
            )
        )
    widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
    out = [
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in lines
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _median(results: list[Result]) -> Result:
    """The run with the median Gbit/s (the lower middle one), all runs' Gbit/s attached."""
    ok = sorted((r for r in results if not r.error), key=lambda r: r.gbit_s)
    if not ok:
        return results[-1]
    mid = ok[(len(ok) - 1) // 2]
    mid.extra["gbit_s_runs"] = [round(r.gbit_s, 3) for r in results]
    return mid


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) to create network namespaces and TUN devices"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    if shutil.which("ip") is None:
        return "needs the `ip` command (iproute2)"
    return None


def run(args: argparse.Namespace) -> int:
    """Runs the rows that ``args`` asks for and prints the table (or JSON)."""
    reason = _why_not()
    if reason:
        print(f"tunoffload bench: {reason}", file=sys.stderr)
        return 2
    use_iperf = not args.no_iperf and shutil.which("iperf3") is not None
    modes = args.modes or [m for m in MODES if m != "tunnel+vpn" or have_cryptography()]
    plan = [(m, "tcp", s) for s in args.streams for m in modes]
    if not args.no_udp:
        plan += [(m, "udp", 1) for m in modes]
    runs: dict[tuple[str, str, int], list[Result]] = {}
    try:
        for rep in range(max(1, args.repeat)):
            for mode, proto, streams in plan:
                r = run_row(mode, proto, streams, args.duration, use_iperf)
                runs.setdefault((mode, proto, streams), []).append(r)
                if not args.json and sys.stderr.isatty():
                    print(
                        f"  [{rep + 1}/{args.repeat}] {mode:15} {proto} x{streams}: "
                        f"{r.gbit_s:6.2f} Gbit/s {r.error}",
                        file=sys.stderr,
                    )
    except KeyboardInterrupt:
        print("\ninterrupted; the namespaces were removed", file=sys.stderr)
        return 130
    rows = [_median(runs[key]) for key in plan]
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        gen = "iperf3" if use_iperf else "built-in generator"
        print(
            f"tunoffload bench: {args.duration:g} s per row"
            f"{f', median of {args.repeat} runs' if args.repeat > 1 else ''}, traffic from {gen}, "
            f"{os.cpu_count()} CPUs, kernel {os.uname().release}\n"
        )
        print(_table(rows))
        by = {(r.mode, r.traffic, r.streams): r for r in rows}
        for s in args.streams:
            a, b = by.get(("split+coalesce", "TCP", s)), by.get(("plain", "TCP", s))
            if a and b and b.gbit_s and not (a.error or b.error):
                print(f"\nsplit+coalesce vs plain, TCP x{s}: {a.gbit_s / b.gbit_s:.1f}x")
            for fast, slow, what in (
                ("tunnel", "tunnel-plain", ""),
                ("tunnel+vpn", "tunnel", " (what the encryption costs)"),
            ):
                a, b = by.get((fast, "TCP", s)), by.get((slow, "TCP", s))
                if a and b and b.gbit_s and not (a.error or b.error):
                    print(f"{fast} vs {slow}, TCP x{s}: {a.gbit_s / b.gbit_s:.2f}x{what}")
    return 1 if any(r.error for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tunoffload bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
