"""``tunoffload.wireguard.Interface`` with the stand-in device (``wgfake``): the plumbing
around the protocol, on real TUN devices and sockets.

Two network namespaces joined by veth (underlay 10.97.0.0/24), an ``Interface`` in each
(overlay 10.98.0.0/24). The stand-in's "encryption" only frames packets as WireGuard
messages, but everything else is real: TUN reads with offload (super-packets split),
``wg.encrypt`` per batch, ``UdpSocket`` sends, receives with each datagram's sender, the
batch compacted by ``decrypt``, the hook, GRO writes to the TUN device, control messages
to ``handle_control`` and its answers sent, the timer thread, a rebind of the listen port
while running, the fwmark, the interface deleted under it, and a clean stop. The
protocol itself is tested with the native device (``test_wireguard_native.py``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator

import pytest
from _netns import Netns, can_use_netns, joined_by_veth, link_info
from tunoffload.testing import wait_until

_why = can_use_netns()
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))
pytest.importorskip("cryptography")

import tunoffload as t  # noqa: E402
from tunoffload.bench.traffic import tcp_exchange  # noqa: E402
from tunoffload.wireguard import Interface, UapiError  # noqa: E402
from wgfake import FakeDevice  # noqa: E402

UNDER_A, UNDER_B = "10.97.0.1", "10.97.0.2"
OVER_A, OVER_B = "10.98.0.1", "10.98.0.2"
KEY_A, KEY_B = bytes([1] * 32), bytes([2] * 32)
SIZE = 4 << 20


class Pair:
    def __init__(self, a_ns: Netns, b_ns: Netns, a: Interface, b: Interface) -> None:
        self.a_ns, self.b_ns, self.a, self.b = a_ns, b_ns, a, b

    @property
    def fa(self) -> FakeDevice:
        return self.a.device  # type: ignore[return-value]

    @property
    def fb(self) -> FakeDevice:
        return self.b.device  # type: ignore[return-value]


def make_interface(ns: Netns, name: str, key: bytes, over: str, **kw) -> Interface:  # type: ignore[no-untyped-def]
    return Interface(
        name,
        netns=ns.name,
        device=FakeDevice(private_key=key),
        addresses=[f"{over}/24"],
        up=True,
        **kw,
    )


@contextlib.contextmanager
def running(a_ns: Netns, b_ns: Netns, b_host: str = UNDER_B, hook=None) -> Iterator[Pair]:  # type: ignore[no-untyped-def]
    """An Interface in each namespace, started; only A knows where B is (at ``b_host``),
    so B learns A's endpoint from A's first message. ``hook`` is B's."""
    a = make_interface(a_ns, "wga", KEY_A, OVER_A)
    try:
        b = make_interface(b_ns, "wgb", KEY_B, OVER_B, hook=hook)
    except BaseException:
        a.stop()
        raise
    try:
        host = f"[{b_host}]" if ":" in b_host else b_host
        a.set_peer(b.public_key, endpoint=f"{host}:{b.listen_port}", allowed_ips=[f"{OVER_B}/32"])  # type: ignore[arg-type]
        b.set_peer(a.public_key, allowed_ips=[f"{OVER_A}/32"])  # type: ignore[arg-type]
        a.start()
        b.start()
        yield Pair(a_ns, b_ns, a, b)
    finally:
        a.stop()
        b.stop()


@contextlib.contextmanager
def namespaces(tag: str) -> Iterator[tuple[Netns, Netns]]:
    """Two namespaces joined by veth (the underlay); ``ns.veth`` is each one's end."""
    tag = f"{tag}{os.getpid() % 100000}"
    with joined_by_veth(tag, (f"{tag}a", f"{tag}b"), (UNDER_A, UNDER_B)) as (a_ns, b_ns):
        a_ns.veth, b_ns.veth = f"{tag}a", f"{tag}b"  # type: ignore[attr-defined]
        yield a_ns, b_ns


@pytest.fixture
def pair() -> Iterator[Pair]:
    hooked: list[tuple[int, int, list[bytes]]] = []

    def hook(bufs: list[bytearray], off: int, sizes: list[int], n: int) -> None:
        hooked.append((off, n, [bytes(bufs[i][off : off + min(sizes[i], 40)]) for i in range(n)]))

    with namespaces("wgi") as (a_ns, b_ns), running(a_ns, b_ns, hook=hook) as p:
        p.hooked = hooked  # type: ignore[attr-defined]
        yield p


def udp_roundtrip(p: Pair, payload: bytes, port: int) -> bytes | None:
    """One datagram from A's overlay address to B's; what B received (None: nothing)."""
    rx = p.b_ns.socket()
    rx.bind((OVER_B, port))
    rx.settimeout(2)
    tx = p.a_ns.socket()
    with rx, tx:
        tx.sendto(payload, (OVER_B, port))
        try:
            return rx.recv(65535)
        except TimeoutError:
            return None


def test_tcp_both_ways_with_roaming_and_the_hook(pair: Pair) -> None:
    p = pair
    tcp_exchange(p.a_ns, p.b_ns, OVER_B, SIZE, port=5401, check=True)
    # B learned A's endpoint from A's datagrams (the sender of each, through RecvMeta)
    peer_a = p.b.peers()[0]
    assert peer_a["endpoint"] == (UNDER_A, p.a.listen_port)
    assert peer_a["rx_bytes"] > SIZE and peer_a["tx_bytes"] > SIZE
    # batches, not packets: TUN reads of super-packets, and sends per batch
    stats = p.a.stats()
    assert stats["tun_packets"] > stats["tun_reads"] > 0
    assert stats["tx_batches"] > 0 and stats["tx_errors"] == 0
    stats_b = p.b.stats()
    assert stats_b["udp_datagrams"] >= stats_b["udp_reads"] > 0
    assert stats_b["rx_packets"] > 0 and stats_b["tun_write_errors"] == 0
    # the hook saw B's decrypted packets at offset 16: IPv4, from A to B
    hooked = p.hooked  # type: ignore[attr-defined]
    assert hooked and all(off == 16 for off, _, _ in hooked)
    heads = [h for _, _, hs in hooked for h in hs]
    assert sum(n for _, n, _ in hooked) == len(heads) >= SIZE // 1420
    assert all(h[0] >> 4 == 4 for h in heads)
    assert {socket.inet_ntoa(h[12:16]) for h in heads} == {OVER_A}
    assert {socket.inet_ntoa(h[16:20]) for h in heads} == {OVER_B}


def test_hook_drops_what_it_does_not_return() -> None:
    def hook(bufs: list[bytearray], off: int, sizes: list[int], n: int) -> int:
        # keep the packets to UDP port 7001 (moved to the front), drop the others
        keep = 0
        for i in range(n):
            pkt = bufs[i]
            ihl = (pkt[off] & 15) * 4
            if int.from_bytes(pkt[off + ihl + 2 : off + ihl + 4], "big") == 7001:
                bufs[keep], bufs[i] = bufs[i], bufs[keep]
                sizes[keep], sizes[i] = sizes[i], sizes[keep]
                keep += 1
        return keep

    with namespaces("wgh") as (a_ns, b_ns), running(a_ns, b_ns, hook=hook) as p:
        assert udp_roundtrip(p, b"dropped", 7002) is None
        assert udp_roundtrip(p, b"kept", 7001) == b"kept"


def test_failures_in_a_batch_are_counted_and_dropped() -> None:
    calls: list[int] = []

    def hook(bufs: list[bytearray], off: int, sizes: list[int], n: int) -> None:
        calls.append(n)
        if len(calls) == 1:
            raise RuntimeError("a bug in the hook")

    with namespaces("wgf") as (a_ns, b_ns), running(a_ns, b_ns, hook=hook) as p:
        assert udp_roundtrip(p, b"first", 7301) is None  # the hook failed: dropped
        assert udp_roundtrip(p, b"second", 7302) == b"second"
        assert p.b.stats()["hook_errors"] == 1
        # a handshake message the device refuses (ValueError) is counted, nothing sent
        junk = a_ns.socket()
        with junk:
            junk.sendto(b"\x03refuse", (UNDER_B, p.b.listen_port))
        assert wait_until(lambda: p.b.stats()["rx_errors"] == 1)
        assert p.b.running and p.b.stats()["control_sent"] == 0
        assert udp_roundtrip(p, b"third", 7303) == b"third"


def test_control_messages_and_timer_thread(pair: Pair) -> None:
    p = pair
    # A's device queues a "handshake initiation"; the timer thread sends it (kicked by
    # config_changed), B's receiving thread hands it to handle_control with its sender,
    # B's answer goes back to that sender, A's receiving thread hands it on
    p.fa.initiate(p.b.public_key)  # type: ignore[arg-type]
    p.a.config_changed()
    assert wait_until(lambda: p.fa.control_log and p.fb.control_log)
    msg, source = p.fb.control_log[0]
    assert msg == bytes([1]) + p.a.public_key  # type: ignore[operator]
    assert source == (UNDER_A, p.a.listen_port)
    msg, source = p.fa.control_log[0]
    assert msg == bytes([2]) + p.b.public_key  # type: ignore[operator]
    assert source == (UNDER_B, p.b.listen_port)
    assert p.a.peers()[0]["last_handshake"][0] > 0
    assert p.b.peers()[0]["last_handshake"][0] > 0
    assert p.a.stats()["control_sent"] == 1 and p.b.stats()["control_sent"] == 1


def test_rebind_while_running(pair: Pair) -> None:
    p = pair
    old = p.b.listen_port
    assert udp_roundtrip(p, b"before", 7100) == b"before"
    p.b.listen_port = 0  # a new free port
    new = p.b.listen_port
    assert new not in (0, old)
    assert p.fb.listen_port == new  # the device reports the port bound
    p.a.set_peer(p.b.public_key, endpoint=(UNDER_B, new))  # type: ignore[arg-type]
    assert udp_roundtrip(p, b"after", 7101) == b"after"

    # the old sockets are closed (by their receiving threads, within POLL_S): the old port
    # can be bound again in B's namespace
    def old_port_free() -> bool:
        s = p.b_ns.socket()
        try:
            s.bind(("0.0.0.0", old))
            return True
        except OSError:
            return False
        finally:
            s.close()

    assert wait_until(old_port_free)
    # a port in use is refused, and the sockets stay as they were
    blocker = p.b_ns.socket()
    blocker.bind(("0.0.0.0", 0))
    with blocker, pytest.raises(OSError):
        p.b.listen_port = blocker.getsockname()[1]
    assert p.b.listen_port == new
    assert udp_roundtrip(p, b"still", 7102) == b"still"


def test_configuration_protocol_rebinds_and_marks(pair: Pair) -> None:
    # what wg set does through the daemon: the device takes the lines, the interface
    # binds and marks its sockets after them
    p = pair
    old = p.b.listen_port
    p.b.uapi_set("listen_port=0\nfwmark=4660\n")
    new = p.b.listen_port
    assert new not in (0, old) and p.fb.listen_port == new
    assert (p.b.fwmark, p.fb.fwmark) == (0x1234, 0x1234)
    lines = [line for line in p.b_ns.run("ss", "-uaneH").stdout.splitlines() if f":{new} " in line]
    assert len(lines) == 2 and all("fwmark:0x1234" in line for line in lines)
    p.a.set_peer(p.b.public_key, endpoint=f"{UNDER_B}:{new}")  # type: ignore[arg-type]
    assert udp_roundtrip(p, b"rebound", 7110) == b"rebound"
    # a port in use: -EADDRINUSE, the sockets and the device's port as they were; the
    # lines of the operation that the device took stay applied
    blocker = p.b_ns.socket()
    blocker.bind(("0.0.0.0", 0))
    with blocker, pytest.raises(UapiError) as err:
        p.b.uapi_set(f"listen_port={blocker.getsockname()[1]}\nfwmark=7\n")
    assert err.value.code == -98
    assert (p.b.listen_port, p.fb.listen_port) == (new, new)
    assert p.b.fwmark == 7
    # a refused line: the device's errno, what came before it applied
    with pytest.raises(UapiError) as err:
        p.b.uapi_set("fwmark=8\nlisten_port=x\n")
    assert err.value.code == -22 and p.b.fwmark == 8 and p.b.listen_port == new
    assert udp_roundtrip(p, b"still", 7111) == b"still"


def test_fwmark_on_both_sockets(pair: Pair) -> None:
    p = pair
    p.b.fwmark = 0x1234
    assert p.fb.fwmark == 0x1234
    lines = [
        line
        for line in p.b_ns.run("ss", "-uaneH").stdout.splitlines()
        if f":{p.b.listen_port} " in line
    ]
    assert len(lines) == 2 and all("fwmark:0x1234" in line for line in lines)  # v4 and v6


def test_stop_removes_everything(pair: Pair) -> None:
    p = pair
    port = p.b.listen_port
    p.b.stop()
    assert p.b.wait(0) and p.b.reason == "stopped" and not p.b.running
    assert link_info(p.b_ns, "wgb") is None  # the TUN device is gone
    s = p.b_ns.socket()
    with s:
        s.bind(("0.0.0.0", port))  # the port is free
    names = [th.name for th in threading.enumerate()]
    assert not [n for n in names if n.endswith(":wgb")]
    p.b.stop()  # idempotent
    with pytest.raises(RuntimeError):
        p.b.start()


def test_interface_deleted_under_it(pair: Pair) -> None:
    p = pair
    assert not p.a.wait(0)
    p.a_ns.run("ip", "link", "del", "wga")
    assert p.a.wait(10)
    assert p.a.reason == "device deleted" and p.a.error is None
    p.a.stop()
    assert not [th for th in threading.enumerate() if th.name.endswith(":wga")]


def test_mtu_change_reaches_the_device(pair: Pair) -> None:
    p = pair
    p.a.tun.mtu = 1300
    assert wait_until(lambda: p.fa.mtu == 1300)
    # a super-packet of 1300-byte segments still fits one UDP_SEGMENT send
    assert p.a.tun.gso_max_segs == t.UdpSocket.max_segments(1300 + 32)


def test_ipv6_underlay() -> None:
    with namespaces("wg6") as (a_ns, b_ns):
        for ns, addr in ((a_ns, "fd97::1"), (b_ns, "fd97::2")):
            ns.sysctl(f"net.ipv6.conf.{ns.veth}.disable_ipv6", "0")  # type: ignore[attr-defined]
            ns.run("ip", "-6", "addr", "add", f"{addr}/64", "dev", ns.veth, "nodad")  # type: ignore[attr-defined]
        with running(a_ns, b_ns, b_host="fd97::2") as p:
            assert udp_roundtrip(p, b"over v6", 7200) == b"over v6"
            assert p.b.peers()[0]["endpoint"] == ("fd97::1", p.a.listen_port)
            tcp_exchange(a_ns, b_ns, OVER_B, 1 << 20, port=5403, check=True)


def test_constructor_failure_leaves_nothing() -> None:
    with Netns("wgpy-c") as ns:
        blocker = ns.socket()
        blocker.bind(("0.0.0.0", 0))
        with blocker, pytest.raises(OSError):
            Interface(
                "wgc",
                netns=ns.name,
                device=FakeDevice(),
                listen_port=blocker.getsockname()[1],
            )
        assert link_info(ns, "wgc") is None
