"""End to end: two network namespaces joined by a forwarder written with the public API.

Namespace A has TUN device ``ta`` (198.18.1.1/24, fd00:a::1/64), namespace B has ``tb``
(198.18.2.1/24, fd00:b::1/64); each routes the other's prefix into its TUN device. A
forwarder (two Python threads) does ``recv_multiple`` from one device and
``send_multiple`` into the other, both directions, with offload on and off. All traffic
stays inside the namespaces the tests create. Needs root; skipped otherwise.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest
from _netns import Netns, can_use_netns
from _threads import HANG_GUARD, wait_blocked_in_poll

_reason = can_use_netns()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

if _reason is None:
    import tunoffload as t

MTU = 1500
A4, B4 = "198.18.1.1", "198.18.2.1"
A6, B6 = "fd00:a::1", "fd00:b::1"
TCP_BYTES = 64 * 1024 * 1024
UDP_SEGMENT = 103  # socket option (SOL_UDP), UDP GSO


class Forwarder:
    """Forwards packets between two devices in both directions, one thread each.

    The zero-copy idiom of docs/forwarding.md: the ``bufs`` and ``sizes`` that
    ``recv_multiple`` fills go straight into ``send_multiple(..., sizes=, count=)``.
    ``hook(dst, n)``, when set, runs after each batch of ``n`` packets written to ``dst``.
    """

    def __init__(self, a: t.TunDevice, b: t.TunDevice) -> None:
        self.errors: list[BaseException] = []
        self.hook: Callable[[t.TunDevice, int], None] | None = None
        self.batches = 0
        self.most: dict[str, int] = {}  # the most packets one read gave, by device
        self.threads = [
            threading.Thread(target=self._run, args=(a, b), daemon=True),
            threading.Thread(target=self._run, args=(b, a), daemon=True),
        ]
        for th in self.threads:
            th.start()

    def _run(self, src: t.TunDevice, dst: t.TunDevice) -> None:
        offset = t.VIRTIO_NET_HDR_LEN if src.offload else 0
        original = bytearray(t.VIRTIO_NET_HDR_LEN + 65535)
        bufs = [bytearray(offset + 65535) for _ in range(t.IDEAL_BATCH_SIZE)]
        sizes = [0] * t.IDEAL_BATCH_SIZE
        gro = t.GroTable()
        try:
            name, most = src.name, 0
        except OSError:
            return  # closed before this thread started
        while True:
            try:
                n = src.recv_multiple(original, bufs, sizes, offset)
            except OSError:
                return  # closed
            except ValueError as e:  # a packet that cannot be split
                self.errors.append(e)
                continue
            if n > most:
                most = self.most[name] = n
            try:
                dst.send_multiple(gro, bufs, offset, sizes=sizes, count=n)
                if self.hook is not None:
                    self.hook(dst, n)
            except OSError as e:
                if dst.closed:
                    return
                self.errors.append(e)
            self.batches += 1

    def join(self) -> None:
        for th in self.threads:
            th.join(HANG_GUARD)  # a hang guard, not a measurement
            assert not th.is_alive(), "forwarder thread did not stop after close()"


@contextlib.contextmanager
def forwarding(offload: bool) -> Iterator[tuple[Netns, Netns, t.TunDevice, t.TunDevice, Forwarder]]:
    """(ns_a, ns_b, ta, tb, forwarder), torn down afterwards (and no error seen)."""
    with Netns("tunoff-a") as na, Netns("tunoff-b") as nb:
        with na.entered():
            ta = t.TunDevice("ta", offload=offload, mtu=MTU)
            ta.add_address(f"{A4}/24")
            ta.add_address(f"{A6}/64", nodad=True)
            ta.up()
        with nb.entered():
            tb = t.TunDevice("tb", offload=offload, mtu=MTU)
            tb.add_address(f"{B4}/24")
            tb.add_address(f"{B6}/64", nodad=True)
            tb.up()
        na.run("ip", "route", "add", "198.18.2.0/24", "dev", "ta")
        na.run("ip", "-6", "route", "add", "fd00:b::/64", "dev", "ta")
        nb.run("ip", "route", "add", "198.18.1.0/24", "dev", "tb")
        nb.run("ip", "-6", "route", "add", "fd00:a::/64", "dev", "tb")
        fwd = Forwarder(ta, tb)
        try:
            yield na, nb, ta, tb, fwd
        finally:
            ta.close()
            tb.close()
            fwd.join()
        assert not fwd.errors, fwd.errors


@pytest.fixture(params=[True, False], ids=["offload", "no-offload"])
def link(request):
    """(ns_a, ns_b, ta, tb, forwarder), torn down afterwards."""
    with forwarding(request.param) as link:
        yield link


SERVER = r"""
import hashlib, socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
s.settimeout(60)
print("ready", flush=True)
c, _ = s.accept()
c.settimeout(60)
h = hashlib.sha256()
buf = bytearray(1 << 20)
mv = memoryview(buf)
n = 0
while True:
    k = c.recv_into(buf)
    if not k:
        break
    h.update(mv[:k])
    n += k
print(n, h.hexdigest(), flush=True)
"""

CLIENT = r"""
import hashlib, random, socket, sys
data = random.Random(int(sys.argv[3])).randbytes(int(sys.argv[4]))
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
c.sendall(data)
c.shutdown(socket.SHUT_WR)
c.recv(1)
print(hashlib.sha256(data).hexdigest(), flush=True)
"""


def tcp_transfer(na: Netns, nb: Netns, server_addr: str, nbytes: int) -> None:
    """Sends nbytes A -> B over TCP and checks its SHA-256 (speed is for benchmarks/)."""
    srv = subprocess.Popen(
        ["ip", "netns", "exec", nb.name, sys.executable, "-c", SERVER, server_addr, "5201"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert srv.stdout is not None
        assert srv.stdout.readline().strip() == "ready"
        cli = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                na.name,
                sys.executable,
                "-c",
                CLIENT,
                server_addr,
                "5201",
                "7",
                str(nbytes),
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert cli.returncode == 0, cli.stderr
        out, err = srv.communicate(timeout=30)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    assert srv.returncode == 0, err
    n, digest = out.split()
    assert int(n) == nbytes
    assert digest == cli.stdout.strip(), "SHA-256 differs: the stream was corrupted"


def test_tcp_64mib_v4(link):
    na, nb, ta, tb, _ = link
    tcp_transfer(na, nb, B4, TCP_BYTES)
    sa, sb = ta.stats, tb.stats
    print(
        f"\nforwarder TCP/IPv4 64 MiB, offload={ta.offload}: "
        f"A->B reads={sa['reads']} rx_packets={sa['rx_packets']} "
        f"writes={sb['writes']} tx_packets={sa['tx_packets']}"
    )
    if ta.offload:
        # A's kernel handed over TSO super-packets, and the forwarder wrote coalesced ones.
        assert sa["max_read"] > MTU + t.VIRTIO_NET_HDR_LEN
        assert sa["rx_packets"] > sa["reads"]
        assert sb["max_write"] > MTU + t.VIRTIO_NET_HDR_LEN
        assert sb["writes"] < tb.stats["tx_packets"]
    else:
        assert sa["max_read"] <= MTU
        assert sb["max_write"] <= MTU


def test_tcp_v6(link):
    na, nb, ta, tb, _ = link
    tcp_transfer(na, nb, B6, 16 * 1024 * 1024)
    if ta.offload:
        assert ta.stats["max_read"] > MTU + t.VIRTIO_NET_HDR_LEN
        assert tb.stats["max_write"] > MTU + t.VIRTIO_NET_HDR_LEN


def _udp_pair(na: Netns, nb: Netns, v6: bool):
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    with nb.entered():
        rx = socket.socket(fam, socket.SOCK_DGRAM)
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        rx.bind((B6 if v6 else B4, 5300))
    with na.entered():
        tx = socket.socket(fam, socket.SOCK_DGRAM)
        tx.connect((B6 if v6 else B4, 5300))
    rx.settimeout(30)  # no datagram for this long: it was lost (a hang guard, too)
    return tx, rx


def _collect(rx: socket.socket, expect: int) -> list[bytes]:
    """Up to `expect` datagrams; fewer if the socket's timeout passes with none coming
    (a lost datagram: the caller's comparison then fails)."""
    got = []
    while len(got) < expect:
        try:
            got.append(rx.recv(70000))
        except TimeoutError:
            break
    return got


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_udp_mixed_sizes(link, v6):
    na, nb, ta, tb, _ = link
    tx, rx = _udp_pair(na, nb, v6)
    rnd = random.Random(3)
    sizes = [1, 8, 100, 512, 1000, 1200, 1400, 1432, 1452, 1472, 3000, 9000, 20000, 60000]
    sent = []
    try:
        for burst in range(40):
            batch = []
            for i in range(32):
                size = sizes[(burst * 32 + i) % len(sizes)] if i % 3 else rnd.randrange(1, 1473)
                if v6 and size > 1452 and size < 3000:
                    size = 1452
                d = (burst * 32 + i).to_bytes(4, "big") + rnd.randbytes(max(0, size - 4))
                d = d[:size]
                tx.send(d)
                batch.append(d)
            got = _collect(rx, len(batch))
            assert got == batch, f"burst {burst}: datagrams lost, reordered or changed"
            sent += batch
    finally:
        tx.close()
        rx.close()
    assert len(sent) == 40 * 32


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_udp_segment_sender(link, v6):
    """A sender using UDP_SEGMENT (UDP GSO) is carried intact, datagram by datagram."""
    na, nb, ta, tb, _ = link
    tx, rx = _udp_pair(na, nb, v6)
    rnd = random.Random(5)
    gso = 1200
    tx.setsockopt(socket.SOL_UDP, UDP_SEGMENT, gso)
    before = ta.stats["max_read"]
    try:
        for k in range(1, 41):
            total = gso * (k % 20 + 1) + (k * 37) % gso
            payload = rnd.randbytes(total)
            tx.send(payload)
            expect = [payload[i : i + gso] for i in range(0, total, gso)]
            got = _collect(rx, len(expect))
            assert got == expect, f"send {k}: segments lost or changed"
    finally:
        tx.close()
        rx.close()
    if ta.offload and ta.udp_gso:
        # The UDP super-packet reached the forwarder whole (USO), was split there, and
        # the segments were coalesced again (UDP GRO) on the way into B.
        assert ta.stats["max_read"] > MTU + t.VIRTIO_NET_HDR_LEN
        assert tb.stats["max_write"] > MTU + t.VIRTIO_NET_HDR_LEN
    elif not ta.offload:
        assert before <= MTU and ta.stats["max_read"] <= MTU


@pytest.mark.parametrize("link", [True], indirect=True, ids=["offload"])
def test_gso_max_segs_bounds_the_super_packets_read(link):
    na, nb, ta, tb, fwd = link
    assert ta.gso_max_segs == 65535
    ta.gso_max_segs = 8  # before the connection: TCP reads it when it connects
    tcp_transfer(na, nb, B4, 8 << 20)
    # The data's super-packets, A -> B: 8 segments at most, and 8 reached.
    assert fwd.most["ta"] == 8
    ta.gso_max_segs = 65535
    tcp_transfer(na, nb, B4, 8 << 20)
    assert fwd.most["ta"] > 8


def test_forwarder_stops_on_close(link):
    """Closing the devices wakes the blocked forwarder threads (checked by the fixture)."""
    na, nb, ta, tb, fwd = link
    for th in fwd.threads:
        wait_blocked_in_poll(th, "a forwarder's recv_multiple")
    ta.close()
    tb.close()
    fwd.join()
    assert os.path.exists("/dev/net/tun")
