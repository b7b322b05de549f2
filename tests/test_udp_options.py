"""UdpSocket's per-datagram options against real sockets, in a namespace of the test's own
with two server addresses per family: packet information (a server answers each client
from the address the client used), ECN codepoints (the ones sent are the ones received),
don't-fragment (``EMSGSIZE`` naming the MTU), and the fallbacks the send fault hook
forces (nothing lost, nothing twice, each counted). IPv4, IPv6 and IPv4-mapped IPv6 (a
dual-stack ``AF_INET6`` socket talking to IPv4 peers) alike. The Rust counterparts are in
``src/udp/tests/options.rs``.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator

import pytest
import tunoffload as t
from _netns import Netns
from test_udp import _why_not, dgram

AF4, AF6 = socket.AF_INET, socket.AF_INET6
SO_RCVBUFFORCE = 33
IP_RECVTOS = 13
# The server's two addresses and a client's own, per family (on lo, in the test's
# namespace; benchmarking and unique-local ranges, nothing routed).
SERVER = {AF4: ("198.18.0.1", "198.18.0.2"), AF6: ("fd00:21::1", "fd00:21::2")}
CLIENT = {AF4: "198.18.0.10", AF6: "fd00:21::10"}
# (name, server socket family, clients' family): IPv4, IPv6, IPv4 clients of a
# dual-stack IPv6 socket.
FAMILIES = [("v4", AF4, AF4), ("v6", AF6, AF6), ("mapped", AF6, AF4)]
ECNS = [t.ECN_NOT_ECT, t.ECN_ECT1, t.ECN_ECT0, t.ECN_CE]


@pytest.fixture
def ns() -> Iterator[Netns]:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    with Netns("tunoff-udpopt") as n, n.entered():
        for a in (*SERVER[AF4], CLIENT[AF4]):
            n.ip("addr", "add", f"{a}/32", "dev", "lo")
        for a in (*SERVER[AF6], CLIENT[AF6]):
            n.ip("addr", "add", f"{a}/128", "dev", "lo", "nodad")
        yield n


def udp(
    family: int, host: str, *, v6only: bool = True, timeout: float | None = 5.0
) -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
    if family == AF6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    s.bind((host, 0))
    s.settimeout(timeout)
    return s


def ends(family: int) -> tuple[socket.socket, t.UdpSocket, socket.socket, t.UdpSocket]:
    """A receiver on the first server address with ECN reporting (``ecn=True``), and a
    sender on the client address: each socket and its UdpSocket."""
    rx, tx = udp(family, SERVER[family][0]), udp(family, CLIENT[family])
    return rx, t.UdpSocket(rx, ecn=True), tx, t.UdpSocket(tx)


def server_socket(family: int, clients: int) -> socket.socket:
    """Bound to every address of its family (the IPv4-mapped case: a dual-stack socket)."""
    return udp(family, "::" if family == AF6 else "0.0.0.0", v6only=clients == AF6)


def to(family: int, host: str, port: int) -> tuple[str, int]:
    """`host:port` as a socket of `family` addresses it (IPv4 as ::ffff:a.b.c.d on AF6)."""
    return (f"::ffff:{host}" if family == AF6 and ":" not in host else host, port)


def recv_meta(
    u: t.UdpSocket, count: int
) -> list[tuple[bytes, object, str | None, int | None, int | None]]:
    """`count` datagrams with `u`: (bytes, source, destination, ifindex, ECN) each."""
    meta = t.RecvMeta()
    bufs = [bytearray(2000) for _ in range(16)]
    sizes = [0] * 16
    got: list[tuple[bytes, object, str | None, int | None, int | None]] = []
    for _ in range(count):
        if len(got) >= count:
            break
        n = u.recv_multiple(bufs, sizes, meta=meta)
        assert len(meta) == n
        got += [
            (
                bytes(bufs[i][: sizes[i]]),
                meta.source(i),
                meta.destination(i),
                meta.ifindex(i),
                meta.ecn(i),
            )
            for i in range(n)
        ]
    assert len(got) == count
    return got


def nothing_more(s: socket.socket) -> None:
    s.settimeout(0)
    with pytest.raises(BlockingIOError):
        s.recv(10)  # nothing twice


# ----- packet information: sticky replies ------------------------------------------------


@pytest.mark.parametrize(("name", "sfam", "cfam"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_server_answers_from_the_address_each_client_used(
    ns: Netns, name: str, sfam: int, cfam: int
) -> None:
    srv = server_socket(sfam, cfam)
    port = srv.getsockname()[1]
    us = t.UdpSocket(srv, pktinfo=True)
    assert us.pktinfo and not us.ecn and not us.dont_fragment
    clients = [udp(cfam, CLIENT[cfam]) for _ in SERVER[cfam]]
    lo = socket.if_nametoindex("lo")
    for with_src in (True, False):
        for i, (c, addr) in enumerate(zip(clients, SERVER[cfam], strict=True)):
            c.sendto(dgram(i, 100 + i), (addr, port))
        got = recv_meta(us, len(clients))
        # Each datagram's local address is the one its client sent to.
        assert sorted(d for _, _, d, _, _ in got) == sorted(to(sfam, a, 0)[0] for a in SERVER[cfam])
        assert all(ifx == lo for _, _, _, ifx, _ in got)
        replies = [b"re:" + data for data, *_ in got]
        sources = [src for _, src, _, _, _ in got]
        src = [d for _, _, d, _, _ in got] if with_src else None
        assert us.send_multiple(replies, addr=sources, src=src) == len(got)
        for data, source, _, _, _ in got:
            c = clients[data[3]]  # datagram i came from client i
            assert source[:2] == to(sfam, *c.getsockname()[:2])
            reply, frm = c.recvfrom(2000)
            assert reply == b"re:" + data
            if with_src:
                assert frm[0] == SERVER[cfam][data[3]], "answered from another address"
            else:
                # Without src, the route picks the client's own address: the control that
                # shows the packet information does the work above.
                assert frm[0] == CLIENT[cfam], frm
    assert us.stats["src_fallbacks"] == 0
    for c in clients:
        nothing_more(c)
        c.close()
    srv.close()


def test_a_source_per_datagram_and_none_entries(ns: Netns) -> None:
    srv = server_socket(AF4, AF4)
    us = t.UdpSocket(srv)
    c = udp(AF4, CLIENT[AF4])
    dest = c.getsockname()
    srcs = [SERVER[AF4][0], None, SERVER[AF4][1], SERVER[AF4][1]]
    data = [dgram(i, 300) for i in range(4)]
    assert us.send_multiple(data, addr=dest, src=srcs) == 4
    got = [c.recvfrom(2000) for _ in range(4)]
    assert [d for d, _ in got] == data
    assert [a[0] for _, a in got] == [SERVER[AF4][0], CLIENT[AF4], SERVER[AF4][1], SERVER[AF4][1]]
    # The last two are one run (equal size, equal source): one message.
    assert us.stats["send_messages"] == 3 and us.stats["send_datagrams"] == 4
    nothing_more(c)
    c.close()
    srv.close()


# ----- ECN ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "sfam", "cfam"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_ecn_codepoints_arrive_as_sent(ns: Netns, name: str, sfam: int, cfam: int) -> None:
    rx = server_socket(sfam, cfam)
    urx = t.UdpSocket(rx, ecn=True)
    assert urx.ecn
    tx = udp(sfam, "::" if sfam == AF6 else "0.0.0.0", v6only=cfam == AF6)
    utx = t.UdpSocket(tx)
    dest = to(sfam, SERVER[cfam][0], rx.getsockname()[1])
    # Per batch: every codepoint for a run of equal datagrams (one UDP_SEGMENT message).
    for k, cp in enumerate(ECNS):
        data = [dgram(10 * k + i, 500) for i in range(5)]
        before = utx.stats["send_messages"]
        assert utx.send_multiple(data, addr=dest, ecn=cp) == 5
        assert utx.stats["send_messages"] == before + 1
        got = recv_meta(urx, 5)
        assert [(d, e) for d, _, _, _, e in got] == [(x, cp) for x in data]
    # Per datagram: each codepoint in turn, None (the socket's: not ECT) among them.
    ecns = [ECNS[i % 4] for i in range(8)] + [None]
    data = [dgram(100 + i, 700) for i in range(9)]
    assert utx.send_multiple(data, addr=dest, ecn=ecns) == 9
    got = recv_meta(urx, 9)
    assert [(d, e) for d, _, _, _, e in got] == [
        (x, e or 0) for x, e in zip(data, ecns, strict=True)
    ]
    assert utx.send_ecn and utx.stats["ecn_fallbacks"] == 0
    # A receiver without ecn=True reports none.
    plain = t.UdpSocket(rx)
    utx.send_multiple([b"x"], addr=dest, ecn=t.ECN_CE)
    m = t.RecvMeta()
    assert plain.recv_multiple([bytearray(10)], [0], meta=m) == 1 and m.ecn(0) is None
    assert m.destination(0) is None and m.ifindex(0) is None
    rx.close()
    tx.close()


def test_ecn_keeps_the_sockets_dscp(ns: Netns) -> None:
    """The codepoint goes into the ECN bits; the DSCP bits stay the socket's (read from
    the whole TOS byte the receiver's IP_RECVTOS reports)."""
    rx, _, tx, utx = ends(AF4)
    rx.setsockopt(socket.IPPROTO_IP, IP_RECVTOS, 1)
    tx.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xB8)  # DSCP EF
    ecns = [t.ECN_ECT0, t.ECN_CE, None]
    assert utx.send_multiple([b"a", b"bb", b"ccc"], addr=rx.getsockname(), ecn=ecns) == 3
    tos = []
    for _ in ecns:
        _, anc, _, _ = rx.recvmsg(100, socket.CMSG_SPACE(4))
        tos += [c[2][0] for c in anc if c[:2] == (socket.IPPROTO_IP, socket.IP_TOS)]
    assert tos == [0xB8 | t.ECN_ECT0, 0xB8 | t.ECN_CE, 0xB8]
    rx.close()
    tx.close()


# ----- don't fragment ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "sfam", "cfam"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_dont_fragment_names_the_mtu(ns: Netns, name: str, sfam: int, cfam: int) -> None:
    ns.run("ip", "link", "set", "lo", "mtu", "1400")
    rx = udp(cfam, SERVER[cfam][0])
    payload = 1400 - (28 if cfam == AF4 else 48)  # the most one unfragmented datagram holds
    for connected in (True, False):
        tx = udp(sfam, "::" if sfam == AF6 else "0.0.0.0", v6only=cfam == AF6)
        dest = to(sfam, SERVER[cfam][0], rx.getsockname()[1])
        if connected:
            tx.connect(dest)
        utx = t.UdpSocket(tx, dont_fragment=True)
        assert utx.dont_fragment
        addr = None if connected else dest
        good = [dgram(i, 1000) for i in range(2)] + [dgram(2, payload)]
        assert utx.send_multiple(good, addr=addr) == 3
        assert [rx.recv(2000) for _ in range(3)] == good
        with pytest.raises(OSError) as ei:
            utx.send_multiple([*good[:2], dgram(3, payload + 1)], addr=addr)
        e = ei.value
        assert e.errno == errno.EMSGSIZE
        assert e.mtu == 1400, e  # type: ignore[attr-defined]
        assert "1400" in str(e) and str(payload) in str(e), e
        assert e.datagrams_sent == 2  # type: ignore[attr-defined]
        assert [rx.recv(2000) for _ in range(2)] == good[:2]
        nothing_more(rx)
        rx.settimeout(5)
        # The control: the same datagram on a socket that fragments goes through.
        tx2 = udp(sfam, "::" if sfam == AF6 else "0.0.0.0", v6only=cfam == AF6)
        if cfam == AF4:
            assert t.UdpSocket(tx2).send_multiple([dgram(3, payload + 1)], addr=dest) == 1
            assert rx.recv(2000) == dgram(3, payload + 1)
        tx.close()
        tx2.close()
    rx.close()


# ----- fallbacks forced by the fault hook ---------------------------------------------------


@pytest.mark.parametrize("err", [errno.EINVAL, errno.EIO, errno.ENETUNREACH, errno.EADDRNOTAVAIL])
def test_a_refused_source_is_dropped_for_that_message(ns: Netns, err: int) -> None:
    rx = udp(AF4, CLIENT[AF4])
    tx = server_socket(AF4, AF4)
    utx = t.UdpSocket(tx)
    data = [dgram(i, 400 + i) for i in range(4)]  # one message each
    utx._inject_send_faults(err, 1, on="src")
    assert utx.send_multiple(data, addr=rx.getsockname(), src=SERVER[AF4][1]) == 4
    got = [rx.recvfrom(2000) for _ in range(4)]
    assert [d for d, _ in got] == data
    # The message refused went again from the route's address (the client's own, here);
    # sources stay on for the others.
    assert [a[0] for _, a in got] == [CLIENT[AF4]] + [SERVER[AF4][1]] * 3
    assert utx.stats["src_fallbacks"] == 1
    nothing_more(rx)
    rx.close()
    tx.close()


def test_a_refused_ecn_codepoint_turns_ecn_off(ns: Netns) -> None:
    rx, urx, tx, utx = ends(AF6)
    utx._inject_send_faults(errno.EIO, 1, on="ecn")
    data = [dgram(i, 100 + 50 * i) for i in range(4)]  # one message each
    assert utx.send_multiple(data, addr=rx.getsockname(), ecn=t.ECN_ECT0) == 4
    assert not utx.send_ecn and utx.stats["ecn_fallbacks"] == 1
    assert [(d, e) for d, *_, e in recv_meta(urx, 4)] == [(x, t.ECN_NOT_ECT) for x in data]
    assert utx.send_multiple(data[:1], addr=rx.getsockname(), ecn=t.ECN_CE) == 1
    assert [e for *_, e in recv_meta(urx, 1)] == [t.ECN_NOT_ECT], "off for this UdpSocket"
    assert t.UdpSocket(tx).send_ecn, "another UdpSocket still sends them"
    nothing_more(rx)
    rx.close()
    tx.close()


@pytest.mark.parametrize(("err", "gso_after"), [(errno.EIO, False), (errno.EINVAL, True)])
def test_a_refused_segmented_send_goes_one_by_one(ns: Netns, err: int, gso_after: bool) -> None:
    rx, urx, tx, utx = ends(AF4)
    utx._inject_send_faults(err, 1, on="segmented")
    data = [dgram(i, 800) for i in range(10)]
    assert utx.send_multiple(data, addr=rx.getsockname(), ecn=t.ECN_ECT1) == 10
    # Segmentation given up first: the codepoint stays on every datagram.
    assert [(d, e) for d, *_, e in recv_meta(urx, 10)] == [(x, t.ECN_ECT1) for x in data]
    assert utx.stats["fallbacks"] == 1 and utx.gso is gso_after and utx.send_ecn
    nothing_more(rx)
    rx.close()
    tx.close()


def test_an_injected_error_without_fallback_is_raised(ns: Netns) -> None:
    rx, _, tx, utx = ends(AF4)
    data = [dgram(i, 100 + i) for i in range(5)]  # one message each
    utx._inject_send_faults(errno.EPERM, 1, on="src")
    # Only messages with a source are hit: datagrams 0 and 1 go, 2 is refused.
    with pytest.raises(PermissionError) as ei:
        utx.send_multiple(data, addr=rx.getsockname(), src=[None, None, SERVER[AF4][0], None, None])
    assert ei.value.datagrams_sent == 2  # type: ignore[attr-defined]
    assert [rx.recv(2000) for _ in range(2)] == data[:2]
    utx._inject_send_faults(errno.EPERM, 3)
    utx._inject_send_faults(errno.EPERM, 0)  # disarmed
    assert utx.send_multiple(data, addr=rx.getsockname()) == 5
    assert [rx.recv(2000) for _ in range(5)] == data
    for bad in (0, -1):
        with pytest.raises(t.InputError) as ie:
            utx._inject_send_faults(bad, 1)
        assert ie.value.kind == "out_of_range"
    with pytest.raises(t.InputError) as ie:
        utx._inject_send_faults(errno.EIO, 1, on="everything")
    assert ie.value.kind == "unknown_option"
    nothing_more(rx)
    rx.close()
    tx.close()


# ----- RecvMeta -------------------------------------------------------------------------------


def test_recv_meta_entries_and_swap(ns: Netns) -> None:
    rx = udp(AF4, "0.0.0.0")
    urx = t.UdpSocket(rx, pktinfo=True, ecn=True)
    port = rx.getsockname()[1]
    txs = [udp(AF4, CLIENT[AF4]) for _ in range(2)]
    # (Loopback delivers at once: both are queued before the receive.)
    t.UdpSocket(txs[0]).send_multiple([b"first"], addr=(SERVER[AF4][0], port), ecn=t.ECN_ECT1)
    t.UdpSocket(txs[1]).send_multiple([b"second"], addr=(SERVER[AF4][1], port), ecn=t.ECN_CE)
    meta = t.RecvMeta(1)
    assert len(meta) == 0
    with pytest.raises(t.InputError) as ei:
        meta.source(0)
    assert (ei.value.kind, ei.value.index) == ("out_of_range", None)
    bufs, sizes = [bytearray(100) for _ in range(4)], [0] * 4
    assert urx.recv_multiple(bufs, sizes, meta=meta) == 2  # grown from 1 to the batch
    assert len(meta) == 2
    want = [
        (txs[0].getsockname(), SERVER[AF4][0], t.ECN_ECT1),
        (txs[1].getsockname(), SERVER[AF4][1], t.ECN_CE),
    ]
    entries = [(meta.source(i), meta.destination(i), meta.ecn(i)) for i in range(2)]
    assert entries == want
    assert [bytes(bufs[i][: sizes[i]]) for i in range(2)] == [b"first", b"second"]
    meta.swap(0, 1)
    assert [(meta.source(i), meta.destination(i), meta.ecn(i)) for i in range(2)] == want[::-1]
    for call in (lambda: meta.swap(0, 2), lambda: meta.ecn(2), lambda: meta.destination(3)):
        with pytest.raises(t.InputError) as ei:
            call()
        assert ei.value.kind == "out_of_range"
    assert meta.ecn(0) == t.ECN_CE, "a refused swap exchanges nothing"
    for s in (rx, *txs):
        s.close()
