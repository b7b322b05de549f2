"""``tunoffload.wireguard.Interface`` on the native ``WireGuardDevice``: real handshakes and
real encryption between two interfaces, on real TUN devices and sockets.

Two network namespaces joined by veth (underlay 10.97.0.0/24), an ``Interface`` in each
(overlay 10.98.0.0/24); only the initiator is told the other's endpoint. Checked: a
handshake started by a packet (staged, then sent) with either side initiating, TCP both
ways with equal SHA-256, per-peer counters, handshake times and the endpoint learned
from the initiator's datagrams (roaming); TUN reads of super-packets and sends per
batch; the hook on decrypted packets (what it sees, what it drops, a hook that raises);
a handshake made by the timer thread alone (a persistent keepalive) and answered by the
receiving thread to the sender it saw; garbage and forged datagrams on the listen port
dropped in the device, none reaching Python, the tunnel still up; a rebind of the
listen port while running, the fwmark, the configuration protocol's port and mark; the
interface deleted under it, a clean stop, an MTU change, an IPv6 underlay, a
constructor that fails; ``RecvMeta`` itself.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from _netns import Netns, can_use_netns, joined_by_veth, link_info
from tunoffload.testing import wait_until

_why = can_use_netns()
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))

import tunoffload as t  # noqa: E402
from tunoffload.bench.traffic import tcp_exchange  # noqa: E402
from tunoffload.wireguard import Interface, UapiError  # noqa: E402

UNDER_A, UNDER_B = "10.97.0.1", "10.97.0.2"
OVER_A, OVER_B = "10.98.0.1", "10.98.0.2"
KEY_A, KEY_B = bytes([1] * 32), bytes([2] * 32)
SIZE = 4 << 20
WAIT_S = 30  # every wait below is bounded by this


class Pair:
    def __init__(self, a_ns: Netns, b_ns: Netns, a: Interface, b: Interface) -> None:
        self.a_ns, self.b_ns, self.a, self.b = a_ns, b_ns, a, b
        self.initiator = a


def make_interface(ns: Netns, name: str, key: bytes, over: str, **kw) -> Interface:  # type: ignore[no-untyped-def]
    return Interface(name, netns=ns.name, private_key=key, addresses=[f"{over}/24"], up=True, **kw)


@contextlib.contextmanager
def running(  # type: ignore[no-untyped-def]
    a_ns: Netns, b_ns: Netns, b_host: str = UNDER_B, hook=None, initiator: str = "a"
) -> Iterator[Pair]:
    """An Interface in each namespace, started; only the initiator knows where the
    other is (A reaches B at ``b_host``), so the other learns its endpoint from its
    first message. ``hook`` is B's."""
    a = make_interface(a_ns, "wga", KEY_A, OVER_A)
    try:
        b = make_interface(b_ns, "wgb", KEY_B, OVER_B, hook=hook)
    except BaseException:
        a.stop()
        raise
    try:
        host = f"[{b_host}]" if ":" in b_host else b_host
        a_knows = initiator == "a"
        a.set_peer(b.public_key, allowed_ips=[f"{OVER_B}/32"],  # type: ignore[arg-type]
                   endpoint=f"{host}:{b.listen_port}" if a_knows else None)  # fmt: skip
        b.set_peer(a.public_key, allowed_ips=[f"{OVER_A}/32"],  # type: ignore[arg-type]
                   endpoint=None if a_knows else (UNDER_A, a.listen_port))  # fmt: skip
        a.start()
        b.start()
        p = Pair(a_ns, b_ns, a, b)
        p.initiator = a if a_knows else b
        yield p
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


Hooked = list[tuple[int, int, list[bytes]]]


@pytest.fixture
def pair() -> Iterator[Pair]:
    """A initiates; B's hook notes each batch: (offset, count, the packets' heads)."""
    hooked: Hooked = []

    def hook(bufs: list[bytearray], off: int, sizes: list[int], n: int) -> None:
        hooked.append((off, n, [bytes(bufs[i][off : off + min(sizes[i], 40)]) for i in range(n)]))

    with namespaces("wgi") as (a_ns, b_ns), running(a_ns, b_ns, hook=hook) as p:
        p.hooked = hooked  # type: ignore[attr-defined]
        yield p


def udp_roundtrip(p: Pair, payload: bytes, port: int, timeout: float = 2) -> bytes | None:
    """One datagram from A's overlay address to B's; what B received (None: nothing
    within ``timeout`` seconds)."""
    rx = p.b_ns.socket()
    rx.bind((OVER_B, port))
    rx.settimeout(timeout)
    tx = p.a_ns.socket()
    with rx, tx:
        tx.sendto(payload, (OVER_B, port))
        try:
            return rx.recv(65535)
        except TimeoutError:
            return None


def probe(src: Netns, dst: Netns, addr: str, tries: int = 5) -> bool:
    """A UDP datagram from ``src`` to ``addr`` (in ``dst``) and its echo back, up to
    ``tries`` times, 2 s each (the first may wait for a handshake)."""
    server = dst.socket()
    server.bind((addr, 0))
    server.settimeout(0.2)
    client = src.socket()
    client.settimeout(2)
    done = threading.Event()

    def echo() -> None:
        while not done.is_set():
            try:
                data, peer = server.recvfrom(100)
            except TimeoutError:
                continue
            server.sendto(data, peer)

    th = threading.Thread(target=echo)
    th.start()
    try:
        for i in range(tries):
            client.sendto(b"probe %d" % i, (addr, server.getsockname()[1]))
            try:
                while client.recv(100) != b"probe %d" % i:
                    pass
                return True
            except TimeoutError:
                continue
        return False
    finally:
        done.set()
        th.join(WAIT_S)
        server.close()
        client.close()


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_handshake_tcp_both_ways_roaming_and_the_hook(initiator: str) -> None:
    hooked: Hooked = []

    def hook(bufs: list[bytearray], off: int, sizes: list[int], n: int) -> None:
        hooked.append((off, n, [bytes(bufs[i][off : off + min(sizes[i], 40)]) for i in range(n)]))

    with (
        namespaces("wgt") as (a_ns, b_ns),
        running(a_ns, b_ns, hook=hook, initiator=initiator) as p,
    ):
        # the first packet is staged; the handshake it starts sends it
        if initiator == "a":
            assert probe(a_ns, b_ns, OVER_B)
        else:
            assert probe(b_ns, a_ns, OVER_A)
        tcp_exchange(a_ns, b_ns, OVER_B, SIZE, port=5401, check=True)
        # each side knows the other's endpoint: the responder learned the initiator's
        # from its datagrams (the sender of each, through RecvMeta)
        for me, other, under in ((p.a, p.b, UNDER_B), (p.b, p.a, UNDER_A)):
            (peer,) = me.peers()
            assert peer["public_key"] == other.public_key
            assert peer["endpoint"] == (under, other.listen_port)
            assert peer["last_handshake"][0] > 0
            assert peer["rx_bytes"] > SIZE and peer["tx_bytes"] > SIZE
        assert p.a.device.stats()["sessions"] >= 1
        # batches, not packets: TUN reads of super-packets, and sends per batch
        stats = p.a.stats()
        assert stats["tun_packets"] > stats["tun_reads"] > 0
        assert stats["tx_batches"] > 0 and stats["tx_errors"] == 0
        stats_b = p.b.stats()
        assert stats_b["udp_datagrams"] >= stats_b["udp_reads"] > 0
        assert stats_b["rx_packets"] > 0 and stats_b["tun_write_errors"] == 0
        assert stats_b["rx_errors"] == 0 and stats_b["hook_errors"] == 0
    # the hook saw B's decrypted packets at offset 16: IPv4, from A to B
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
        assert p.b.stats()["hook_errors"] == 0


def test_a_hook_that_raises_drops_its_batch_only() -> None:
    calls: list[int] = []

    def hook(bufs: list[bytearray], off: int, sizes: list[int], n: int) -> None:
        calls.append(n)
        if len(calls) == 1:
            raise RuntimeError("a bug in the hook")

    with namespaces("wgf") as (a_ns, b_ns), running(a_ns, b_ns, hook=hook) as p:
        assert udp_roundtrip(p, b"first", 7301) is None  # the hook failed: dropped
        assert udp_roundtrip(p, b"second", 7302) == b"second"
        stats = p.b.stats()
        assert stats["hook_errors"] == 1 and calls == [1, 1]
        assert p.b.running and stats["tun_write_errors"] == 0


def test_handshake_by_the_timer_thread(pair: Pair) -> None:
    # No packet: a persistent keepalive turned on queues A's handshake for the timer
    # thread (kicked by set_peer); B's receiving thread hands the initiation to
    # handle_control with its sender, B's answer goes back to that sender, A's receiving
    # thread completes the handshake.
    p = pair
    assert p.a.peers()[0]["last_handshake"] == (0, 0)
    p.a.set_peer(p.b.public_key, persistent_keepalive=1)  # type: ignore[arg-type]
    assert wait_until(lambda: p.a.peers()[0]["last_handshake"][0] > 0, WAIT_S)
    assert wait_until(lambda: p.b.peers()[0]["last_handshake"][0] > 0, WAIT_S)
    assert p.b.peers()[0]["endpoint"] == (UNDER_A, p.a.listen_port)
    a, b = p.a.stats(), p.b.stats()
    assert a["hs_initiations_sent"] >= 1 and a["control_sent"] >= 1 and a["rx_control"] >= 1
    assert b["hs_responses_sent"] == 1 and b["control_sent"] >= 1 and b["rx_control"] >= 1
    assert a["control_errors"] == b["control_errors"] == 0
    # the keepalives that follow reach B (and are no packets for its TUN device)
    assert wait_until(lambda: p.b.device.stats()["rx_keepalives"] >= 1, WAIT_S)
    assert p.hooked == []  # type: ignore[attr-defined]


def test_garbage_on_the_listen_port_is_dropped_in_the_device(pair: Pair, seed: int) -> None:
    p = pair
    assert udp_roundtrip(p, b"up", 7400) == b"up"
    before = p.b.stats()
    junk = p.a_ns.socket()
    port = p.b.listen_port
    rng = random.Random(seed)
    with junk:
        for _ in range(200):
            junk.sendto(rng.randbytes(rng.randrange(1, 200)), (UNDER_B, port))
        # type 1 with a bad mac1, type 4 with an unknown index, type 4 with a bad tag
        junk.sendto(b"\x01\0\0\0" + bytes(144), (UNDER_B, port))
        junk.sendto(b"\x04\0\0\0" + struct.pack("<IQ", 0xDEADBEEF, 1) + bytes(48), (UNDER_B, port))
    sent = 202

    def dropped() -> int:
        s = p.b.stats()
        return sum(
            s[k] - before[k]
            for k in ("rx_junk", "rx_malformed", "hs_bad_mac1", "rx_unknown_index", "rx_forged")
        )

    assert wait_until(lambda: dropped() == sent, WAIT_S), dropped()
    after = p.b.stats()
    # nothing of it reached Python as a handshake message, nothing was answered
    assert after["rx_control"] == before["rx_control"]
    assert after["control_sent"] == before["control_sent"]
    assert after["hs_bad_mac1"] == before["hs_bad_mac1"] + 1
    assert after["rx_errors"] == 0
    tcp_exchange(p.a_ns, p.b_ns, OVER_B, 1 << 20, port=5602, check=True)  # still up


def test_rebind_while_running(pair: Pair) -> None:
    p = pair
    old = p.b.listen_port
    assert udp_roundtrip(p, b"before", 7100) == b"before"
    p.b.listen_port = 0  # a new free port
    new = p.b.listen_port
    assert new not in (0, old)
    assert p.b.device.listen_port == new  # the device reports the port bound
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
    dev = p.b.device
    old = p.b.listen_port
    p.b.uapi_set("listen_port=0\nfwmark=4660\n")
    new = p.b.listen_port
    assert new not in (0, old) and dev.listen_port == new
    assert (p.b.fwmark, dev.fwmark) == (0x1234, 0x1234)
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
    assert (p.b.listen_port, dev.listen_port) == (new, new)
    assert p.b.fwmark == 7 == dev.fwmark
    # a refused line: the device's errno, what came before it applied
    with pytest.raises(UapiError) as err:
        p.b.uapi_set("fwmark=8\nlisten_port=x\n")
    assert err.value.code == -22 and p.b.fwmark == 8 and p.b.listen_port == new
    assert udp_roundtrip(p, b"still", 7111) == b"still"


def test_fwmark_on_both_sockets(pair: Pair) -> None:
    p = pair
    p.b.fwmark = 0x1234
    assert p.b.device.fwmark == 0x1234
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
    assert wait_until(lambda: p.a.device.mtu == 1300)
    # a super-packet of 1300-byte segments still fits one UDP_SEGMENT send
    assert p.a.tun.gso_max_segs == t.UdpSocket.max_segments(1300 + 32)
    assert udp_roundtrip(p, b"x" * 1200, 7120) == b"x" * 1200


def test_ipv6_underlay() -> None:
    with namespaces("wg6") as (a_ns, b_ns):
        for ns, addr in ((a_ns, "fd97::1"), (b_ns, "fd97::2")):
            ns.sysctl(f"net.ipv6.conf.{ns.veth}.disable_ipv6", "0")  # type: ignore[attr-defined]
            ns.run("ip", "-6", "addr", "add", f"{addr}/64", "dev", ns.veth, "nodad")  # type: ignore[attr-defined]
        with running(a_ns, b_ns, b_host="fd97::2") as p:
            assert udp_roundtrip(p, b"over v6", 7200, timeout=5) == b"over v6"
            assert p.b.peers()[0]["endpoint"] == ("fd97::1", p.a.listen_port)
            tcp_exchange(a_ns, b_ns, OVER_B, 1 << 20, port=5403, check=True)


def test_constructor_failure_leaves_nothing() -> None:
    with Netns("wgpy-c") as ns:
        blocker = ns.socket()
        blocker.bind(("0.0.0.0", 0))
        with blocker, pytest.raises(OSError):
            Interface("wgc", netns=ns.name, listen_port=blocker.getsockname()[1])
        assert link_info(ns, "wgc") is None


def test_recv_meta_sources() -> None:
    meta = t.RecvMeta(4)
    with Netns("wgpy-m") as ns:
        rx = ns.socket()
        tx = ns.socket()
        with rx, tx:
            rx.bind(("127.0.0.1", 0))
            tx.bind(("127.0.0.1", 0))
            tx.sendto(b"x", rx.getsockname())
            udp = t.UdpSocket(rx)
            bufs, sizes = [bytearray(100) for _ in range(4)], [0] * 4
            n = udp.recv_multiple(bufs, sizes, 0, meta=meta)
            assert n == 1
            assert tuple(meta.source(0))[:2] == tx.getsockname()


def test_no_data_from_the_old_port_after_a_configured_port_change() -> None:
    # uapi_set changes the device's port before the sockets follow: the sending thread
    # must not start its native loop again on the old sockets meanwhile (which, the
    # device's port then unchanged during that call, would keep sending from the old
    # port for up to half a second and make the peer roam back to it)
    with namespaces("wgo") as (a_ns, b_ns), running(a_ns, b_ns) as p:
        assert udp_roundtrip(p, b"up", 7130) == b"up"
        done = threading.Event()

        def flood() -> None:
            tx = p.a_ns.socket()
            with tx:
                while not done.is_set():
                    with contextlib.suppress(OSError):
                        tx.sendto(b"x" * 1000, (OVER_B, 7131))

        th = threading.Thread(target=flood)
        th.start()
        try:
            for _ in range(3):
                old = p.a.listen_port
                free = p.a_ns.socket()
                free.bind(("0.0.0.0", 0))
                port = free.getsockname()[1]
                free.close()
                p.a.uapi_set(f"listen_port={port}\n")
                assert p.a.listen_port == port
                threading.Event().wait(0.05)  # what was in flight has arrived
                seen = set()
                for _ in range(40):  # 0.4 s: most of a native call's slice
                    seen.add(p.b.peers()[0]["endpoint"][1])
                    threading.Event().wait(0.01)
                assert old not in seen, (old, port, seen)
        finally:
            done.set()
            th.join(WAIT_S)


@pytest.mark.parametrize("batch_size", [0, -1, 4097])
def test_batch_size_out_of_range_is_refused_by_the_constructor(batch_size: int) -> None:
    # before anything is made (no TUN device, no namespace needed), not in the threads
    with pytest.raises(ValueError, match=r"1\.\.=4096"):
        Interface("wgbatch", batch_size=batch_size)


def test_configuration_after_stop_opens_no_sockets(pair: Pair) -> None:
    # a late configuration connection on a stopped interface: refused as a port that
    # cannot be bound is, and no socket is left open that nobody would close
    p = pair
    port = p.b.listen_port
    p.b.stop()
    with pytest.raises(UapiError) as err:
        p.b.uapi_set("listen_port=0\n")
    assert err.value.code == -98
    assert p.b.listen_port == port == p.b.device.listen_port
    with pytest.raises(OSError):
        p.b.listen_port = 0
    with pytest.raises(UapiError):
        p.b.uapi_set("fwmark=5\n")
    with pytest.raises(OSError):
        p.b.fwmark = 6
    assert p.b_ns.run("ss", "-uanH").stdout.strip() == ""  # no UDP socket in B's namespace


def test_stats_keys(pair: Pair) -> None:
    # the device's counters and this layer's, the sending loop's taken from the native one
    layer = {"tun_reads", "tun_packets", "tx_batches", "tx_unsent", "tx_errors", "udp_reads",
             "udp_datagrams", "rx_packets", "rx_control", "rx_errors", "tun_write_errors",
             "hook_errors", "control_sent", "control_errors"}  # fmt: skip
    assert udp_roundtrip(pair, b"counted", 7140) == b"counted"  # staged, the handshake
    assert udp_roundtrip(pair, b"counted", 7141) == b"counted"  # sealed and sent
    stats = pair.a.stats()
    assert set(stats) == set(pair.a.device.stats()) | layer
    assert stats["tun_reads"] >= 1 and stats["tx_batches"] >= 1
