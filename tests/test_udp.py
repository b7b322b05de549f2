"""UdpSocket against real sockets on loopback, in a network namespace of the test's own.

Every datagram is checked byte for byte (each carries its index and a pattern), against
what was sent, through a UdpSocket and through a plain socket; coalescing is checked
through ``pending`` (one coalesced read of many segments). The tests need root for the
namespace and skip without it.
"""

from __future__ import annotations

import contextlib
import errno
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
import tunoffload as t
from _busy import another_thread_in_a_syscall, resizes_refused
from _netns import Netns, can_use_netns

AF4, AF6 = socket.AF_INET, socket.AF_INET6
HOST = {AF4: "127.0.0.1", AF6: "::1"}
MAX = {AF4: 65507, AF6: 65527}


def _why_not() -> str | None:
    return can_use_netns(tun=False)  # sockets only: no TUN device needed


@pytest.fixture
def ns() -> Iterator[Netns]:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    with Netns("tunoff-udp") as n, n.entered():
        yield n


def dgram(i: int, n: int) -> bytes:
    """Datagram `i` of `n` bytes: its index, then bytes that depend on it."""
    head = i.to_bytes(4, "big")
    return (head + random.Random(i * 1_000_003 + n).randbytes(max(0, n - 4)))[:n]


SO_RCVBUFFORCE = 33


def sock(family: int = AF4, timeout: float | None = 5.0, host: str | None = None) -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    # Room for every datagram a test sends before it reads (root may exceed rmem_max).
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    s.bind((host or HOST[family], 0))
    s.settimeout(timeout)
    return s


def pair(family: int = AF4) -> tuple[socket.socket, socket.socket]:
    """A sender connected to a receiver (the receiver is not connected)."""
    a, b = sock(family), sock(family)
    a.connect(b.getsockname())
    return a, b


def recv_all(u: t.UdpSocket, count: int, offset: int = 0, per_call: int = 64) -> list[bytes]:
    """Receives `count` datagrams with `u` (a bounded number of calls)."""
    bufs = [bytearray() for _ in range(per_call)]
    sizes = [0] * per_call
    got: list[bytes] = []
    for _ in range(count):
        if len(got) >= count:
            break
        n = u.recv_multiple(bufs, sizes, offset)
        assert 1 <= n <= per_call
        got += [bytes(bufs[i][offset : offset + sizes[i]]) for i in range(n)]
    assert len(got) == count
    return got


def recv_plain(s: socket.socket, count: int) -> list[bytes]:
    return [s.recv(70000) for _ in range(count)]


def nothing_queued(u: t.UdpSocket) -> None:
    """Asserts that no datagram is waiting (the socket is made non-blocking for it)."""
    s = u.socket
    old = s.gettimeout()
    s.setblocking(False)
    try:
        with pytest.raises(BlockingIOError):
            u.recv_multiple([bytearray(70000)], [0])
    finally:
        s.settimeout(old)


# ----- construction -----------------------------------------------------------------


def test_wraps_udp_sockets_only(ns: Netns) -> None:
    a = sock()
    u = t.UdpSocket(a)
    assert u.gso and u.gro  # a 6.x kernel has both
    assert u.fileno() == a.fileno() and u.socket is a and u.family == AF4
    assert "UdpSocket" in repr(u)
    with pytest.raises(TypeError, match="socket.socket"):
        t.UdpSocket(a.fileno())  # type: ignore[arg-type]
    with socket.socket(AF4, socket.SOCK_STREAM) as tcp:
        with pytest.raises(ValueError, match="SOCK_DGRAM"):
            t.UdpSocket(tcp)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unix:
        with pytest.raises(ValueError, match="AF_INET"):
            t.UdpSocket(unix)
    off = t.UdpSocket(a, gso=False, gro=False)
    assert not off.gso and not off.gro
    a.close()
    with pytest.raises(OSError) as e:
        t.UdpSocket(a)
    assert e.value.errno == errno.EBADF
    assert u.fileno() == -1


# ----- sizes, runs, coalescing -------------------------------------------------------


SWEEP = [1, 2, 100, 1471, 1472, 1473, 4000, 8972, 9000, 32768, 65000, 65507]


@pytest.mark.parametrize("family", [AF4, AF6])
def test_size_sweep(ns: Netns, family: int) -> None:
    a, b = pair(family)
    ua, ub = t.UdpSocket(a), t.UdpSocket(b)
    sizes = SWEEP + ([65508, 65527] if family == AF6 else [])
    k = 0
    for size in sizes:
        count = max(1, min(5, MAX[family] // size))
        data = [dgram(k + i, size) for i in range(count)]
        k += count
        assert ua.send_multiple(data) == count
        assert recv_all(ub, count, offset=7) == data
        # The same through a plain reader: the kernel segments what coalesced.
        c = sock(family)
        assert ua.send_multiple(data, addr=c.getsockname()) == count
        assert recv_plain(c, count) == data
        c.close()


def test_mixed_sizes_plain_receiver(ns: Netns) -> None:
    a, b = pair()
    ua = t.UdpSocket(a)
    lens = [1400] * 5 + [1000] + [1400] * 3 + [200, 200, 300, 300, 300, 0, 1, 65000, 1, 1]
    lens += [100] * 70  # more than 64 segments: two runs
    data = [dgram(i, n) for i, n in enumerate(lens)]
    assert ua.send_multiple(data) == len(data)
    assert recv_plain(b, len(data)) == data  # b has no UDP_GRO: every datagram alone


@pytest.mark.parametrize("busy", [False, True], ids=["alone", "busy"])
def test_a_coalesced_read_into_large_bytearrays(ns: Netns, busy: bool) -> None:
    """One coalesced read of 45 delivered into 64 KiB bytearrays (with another thread in a
    system call, ``busy``: copied with the GIL released, each buffer pinned): every
    datagram whole and in order, the bytearrays not resized."""
    a, b = pair()
    ua, ub = t.UdpSocket(a), t.UdpSocket(b)
    data = [dgram(i, 1400) for i in range(45)]
    assert ua.send_multiple(data) == 45
    bufs = [bytearray(7 + 65535) for _ in range(64)]
    sizes = [0] * 64
    with another_thread_in_a_syscall() if busy else contextlib.nullcontext():
        assert ub.recv_multiple(bufs, sizes, 7) == 45
    assert [bytes(bufs[i][7 : 7 + sizes[i]]) for i in range(45)] == data
    assert all(len(b) == 7 + 65535 for b in bufs)
    assert ub.stats["recv_messages"] == 1  # one coalesced read


def test_coalesced_read_is_split_at_the_sizes_sent(ns: Netns) -> None:
    a, b = pair()
    ua, ub = t.UdpSocket(a), t.UdpSocket(b)
    lens = [1400] * 45 + [1400] * 10 + [700]
    data = [dgram(i, n) for i, n in enumerate(lens)]
    assert ua.send_multiple(data) == len(data)
    # The first run is 46 segments (65507 // 1400), the largest payload one send takes.
    # One buffer: the first segment; the 45 others of that read wait, pending.
    bufs, sizes = [bytearray(2000)], [0]
    assert ub.recv_multiple(bufs, sizes) == 1
    assert ub.pending == 45  # one coalesced read of 46
    got = [bytes(bufs[0][: sizes[0]])] + recv_all(ub, len(data) - 1)
    assert got == data
    assert ub.pending == 0
    # Two runs (46, then 9 + the shorter 700) in one sendmmsg; two coalesced reads.
    assert ua.stats["send_calls"] == 1 and ua.stats["send_messages"] == 2
    assert ua.stats["send_datagrams"] == len(data) and ua.stats["fallbacks"] == 0
    assert ub.stats["recv_messages"] == 2 and ub.stats["recv_datagrams"] == len(data)


def test_a_coalesced_read_that_does_not_fit_whole_waits_whole(ns: Netns) -> None:
    a, b = pair()
    ua, ub = t.UdpSocket(a), t.UdpSocket(b)
    # Three sends, so three coalesced reads: 10 x 100, 10 x 200, 3 x 300.
    runs = [[dgram(i, 100) for i in range(10)]]
    runs.append([dgram(10 + i, 200) for i in range(10)])
    runs.append([dgram(20 + i, 300) for i in range(3)])
    for r in runs:
        assert ua.send_multiple(r) == len(r)
    bufs, sizes = [bytearray() for _ in range(15)], [0] * 15
    # 15 buffers: the first read (10), not 5 of the second, which waits whole ...
    assert ub.recv_multiple(bufs, sizes) == 10
    assert [bytes(bufs[i][: sizes[i]]) for i in range(10)] == runs[0]
    assert ub.pending == 13
    # ... and comes next, with the third read (3), which fits after it: 13.
    assert ub.recv_multiple(bufs, sizes) == 13
    assert [bytes(bufs[i][: sizes[i]]) for i in range(13)] == runs[1] + runs[2]
    assert ub.pending == 0
    # A read larger than all the buffers on its own is still delivered in parts.
    big = [dgram(40 + i, 100) for i in range(20)]
    assert ua.send_multiple(big) == 20
    assert ub.recv_multiple(bufs, sizes) == 15
    assert ub.pending == 5
    assert ub.recv_multiple(bufs, sizes) == 5
    assert [bytes(bufs[i][: sizes[i]]) for i in range(5)] == big[15:]
    assert ub.stats["recv_messages"] == 4 and ub.stats["recv_datagrams"] == 43


@pytest.mark.parametrize(
    ("size", "segments"),
    [(1, 64), (100, 64), (1023, 64), (1024, 63), (1420, 46), (1472, 44), (65507, 1), (65527, 1)],
)
def test_max_segments_is_how_send_multiple_groups(ns: Netns, size: int, segments: int) -> None:
    assert t.UdpSocket.max_segments(size) == segments
    if size > 9000:
        return
    a, b = pair()
    ua = t.UdpSocket(a)
    data = [dgram(i, size) for i in range(segments + 1)]
    assert ua.send_multiple(data) == segments + 1
    # One UDP_SEGMENT send of `segments`, then one of the datagram left over.
    assert ua.stats["send_messages"] == 2
    assert recv_all(t.UdpSocket(b), segments + 1, per_call=128) == data


@pytest.mark.parametrize("size", [0, -1, 65528, 1 << 40])
def test_max_segments_refuses_impossible_sizes(size: int) -> None:
    with pytest.raises(ValueError, match=r"size must be a datagram size, 1\.\.65527"):
        t.UdpSocket.max_segments(size)


def test_without_offloads_every_datagram_goes_alone(ns: Netns) -> None:
    a, b = pair()
    ua, ub = t.UdpSocket(a, gso=False), t.UdpSocket(b, gro=False)
    assert not ua.gso and not ub.gro
    data = [dgram(i, 1400) for i in range(45)]
    assert ua.send_multiple(data) == 45
    bufs, sizes = [bytearray(2000)], [0]
    assert ub.recv_multiple(bufs, sizes) == 1
    assert ub.pending == 0  # plain datagrams: one per read
    assert [bytes(bufs[0][: sizes[0]])] + recv_all(ub, 44) == data


def test_sizes_list_and_offset(ns: Netns) -> None:
    a, b = pair()
    ua, ub = t.UdpSocket(a), t.UdpSocket(b)
    lens = [1200, 1200, 1200, 600, 9, 9]
    data = [dgram(i, n) for i, n in enumerate(lens)]
    # Datagrams cut out of larger buffers with sizes, after 10 bytes of headroom.
    big = [bytearray(b"H" * 10 + d + b"T" * 50) for d in data]
    assert ua.send_multiple(big, 10, sizes=lens, count=5) == 5
    assert ua.send_multiple(big[5:], 10, sizes=lens[5:]) == 1
    bufs = [bytearray(b"x" * 3000) for _ in range(16)]
    sizes = [-1] * 17
    got: list[bytes] = []
    for _ in range(6):
        if len(got) == 6:
            break
        n = ub.recv_multiple(bufs, sizes, 10)
        for i in range(n):
            assert bufs[i][:10] == b"x" * 10  # nothing before offset is written
            assert len(bufs[i]) == 3000  # not shrunk
            got.append(bytes(bufs[i][10 : 10 + sizes[i]]))
    assert got == data


def test_more_queued_than_bufs_none_lost(ns: Netns) -> None:
    a, b = pair()
    ub = t.UdpSocket(b)
    data = [dgram(i, 100 + i) for i in range(10)]
    for d in data:
        a.send(d)  # ten separate datagrams, no segmentation
    bufs, sizes = [bytearray(200) for _ in range(3)], [0] * 3
    got: list[bytes] = []
    counts = []
    for _ in range(10):
        if len(got) == 10:
            break
        n = ub.recv_multiple(bufs, sizes)
        counts.append(n)
        got += [bytes(bufs[i][: sizes[i]]) for i in range(n)]
    assert got == data
    assert counts == [3, 3, 3, 1]
    nothing_queued(ub)


# ----- addresses -----------------------------------------------------------------------


@pytest.mark.parametrize("family", [AF4, AF6])
def test_addrs_filled_as_recvfrom_gives_them(ns: Netns, family: int) -> None:
    r = sock(family)
    s1, s2 = sock(family), sock(family)
    u1, u2, ur = t.UdpSocket(s1), t.UdpSocket(s2), t.UdpSocket(r)
    to = r.getsockname()
    assert u1.send_multiple([dgram(0, 500)] * 3, addr=to) == 3
    assert u2.send_multiple([dgram(1, 500)], addr=[to]) == 1
    assert u1.send_multiple([dgram(2, 10)], addr=to) == 1
    bufs, sizes, addrs = [bytearray(600) for _ in range(8)], [0] * 8, [None] * 8
    got: list[tuple[bytes, object]] = []
    for _ in range(5):
        if len(got) == 5:
            break
        n = ur.recv_multiple(bufs, sizes, 0, addrs)
        got += [(bytes(bufs[i][: sizes[i]]), addrs[i]) for i in range(n)]
    want_from = [s1.getsockname()] * 3 + [s2.getsockname(), s1.getsockname()]
    assert [a for _, a in got] == want_from
    assert [d for d, _ in got] == [dgram(0, 500)] * 3 + [dgram(1, 500), dgram(2, 10)]
    # The form socket.recvfrom gives:
    s1.sendto(b"probe", to)
    assert r.recvfrom(10) == (b"probe", s1.getsockname())
    if family == AF6:
        assert len(got[0][1]) == 4  # type: ignore[arg-type]
        host, port = to[0], to[1]
        for form in [(host, port), (host, port, 0), (host, port, 0, 0), ("::1%lo", port)]:
            assert u1.send_multiple([b"v6"], addr=form) == 1
            assert r.recvfrom(10) == (b"v6", s1.getsockname())


def test_addrs_reuse_one_tuple_per_sender(ns: Netns) -> None:
    a, b = pair()
    ua, ub = t.UdpSocket(a), t.UdpSocket(b)
    ua.send_multiple([dgram(i, 100) for i in range(5)])
    bufs, sizes, addrs = [bytearray(100) for _ in range(5)], [0] * 5, [None] * 5
    assert ub.recv_multiple(bufs, sizes, 0, addrs) == 5
    assert addrs[0] == a.getsockname()
    assert all(x is addrs[0] for x in addrs)


def test_per_datagram_addresses(ns: Netns) -> None:
    s = sock()
    r1, r2 = sock(), sock()
    us = t.UdpSocket(s)
    to = [r1.getsockname(), r1.getsockname(), r2.getsockname(), r1.getsockname()] * 3
    data = [dgram(i, 1000) for i in range(len(to))]
    assert us.send_multiple(data, addr=to) == len(data)
    want1 = [d for d, a in zip(data, to, strict=True) if a == r1.getsockname()]
    want2 = [d for d, a in zip(data, to, strict=True) if a == r2.getsockname()]
    assert recv_plain(r1, len(want1)) == want1
    assert recv_plain(r2, len(want2)) == want2
    # Hosts as strings of all accepted forms.
    port = r1.getsockname()[1]
    assert us.send_multiple([b"a", b"b"], addr=[("127.0.0.1", port), ("127.0.0.1", port)]) == 2
    assert recv_plain(r1, 2) == [b"a", b"b"]


def test_ipv4_host_on_an_ipv6_socket_is_v4_mapped(ns: Netns) -> None:
    r = sock(AF4)
    s = socket.socket(AF6, socket.SOCK_DGRAM)
    s.bind(("::", 0))
    s.settimeout(5)
    us = t.UdpSocket(s)
    port = r.getsockname()[1]
    data = [dgram(i, 1300) for i in range(4)]
    assert us.send_multiple(data, addr=("127.0.0.1", port)) == 4
    assert recv_plain(r, 4) == data
    assert us.send_multiple([b"m"], addr=("::ffff:127.0.0.1", port)) == 1
    assert recv_plain(r, 1) == [b"m"]
    with pytest.raises(ValueError, match="65507"):
        us.send_multiple([bytes(65508)], addr=("127.0.0.1", port))


# ----- buffers too small -----------------------------------------------------------------


def test_fixed_buffer_too_small_keeps_the_datagram(ns: Netns) -> None:
    a, b = pair()
    ub = t.UdpSocket(b)
    a.send(dgram(0, 1400))
    small = memoryview(bytearray(100))
    with pytest.raises(ValueError, match=r"bufs\[0\].*100.*1410"):
        ub.recv_multiple([small], [0], 10)
    assert ub.pending == 1
    big = bytearray(2000)
    sizes = [0]
    assert ub.recv_multiple([memoryview(big)], sizes, 10) == 1
    assert bytes(big[10 : 10 + sizes[0]]) == dgram(0, 1400)


def test_too_small_second_buffer_consumes_nothing(ns: Netns) -> None:
    a, b = pair()
    ua, ub = t.UdpSocket(a), t.UdpSocket(b)
    data = [dgram(0, 500), dgram(1, 50)]
    assert ua.send_multiple(data) == 2  # one run: one coalesced read of both
    first, second = bytearray(600), bytearray(40)
    with pytest.raises(ValueError, match=r"bufs\[1\] holds 40 bytes.*50"):
        ub.recv_multiple([memoryview(first), memoryview(second)], [0, 0])
    assert ub.pending == 2
    assert first == bytearray(600)  # nothing copied either
    sizes = [0, 0]
    second = bytearray(100)
    assert ub.recv_multiple([memoryview(first), memoryview(second)], sizes) == 2
    assert [bytes(first[: sizes[0]]), bytes(second[: sizes[1]])] == data


def test_bytearray_too_small_is_grown(ns: Netns) -> None:
    a, b = pair()
    ub = t.UdpSocket(b)
    a.send(dgram(0, 3000))
    a.send(dgram(1, 10))
    bufs = [bytearray(), bytearray(b"z" * 50)]
    sizes = [0, 0]
    got: list[bytes] = []
    for _ in range(2):
        if len(got) == 2:
            break
        n = ub.recv_multiple(bufs, sizes, 4)
        got += [bytes(bufs[i][4 : 4 + sizes[i]]) for i in range(n)]
        if n == 1:
            bufs = bufs[1:] + bufs[:1]
    assert got == [dgram(0, 3000), dgram(1, 10)]
    assert sorted(len(x) for x in bufs) == [50, 3004]
    grown = next(x for x in bufs if len(x) == 3004)
    assert grown[:4] == bytes(4)  # the headroom of a grown bytearray is zeroed


def test_same_buffer_twice_is_refused_and_kept(ns: Netns) -> None:
    """The same bytearray twice, the first entry too small for its datagram: growing it
    moves its memory, and the second entry would still point at the old block. Refused
    before anything grows (as ``TunDevice.recv_multiple`` does), nothing consumed; so is
    the same memoryview twice (the second datagram would overwrite the first)."""
    a, b = pair()
    ua, ub = t.UdpSocket(a), t.UdpSocket(b)
    data = [dgram(0, 3000), dgram(1, 10)]
    assert ua.send_multiple(data) == 2
    twice = bytearray(100)
    with pytest.raises(ValueError, match="share memory") as exc:
        ub.recv_multiple([twice, twice], [0, 0])
    assert exc.value.kind == "overlapping_buffers" and exc.value.index == 1
    view = memoryview(bytearray(4000))
    with pytest.raises(ValueError, match="share memory") as exc:
        ub.recv_multiple([view, view], [0, 0])
    assert exc.value.kind == "overlapping_buffers"
    assert twice == bytearray(100)  # nothing grown or written
    assert recv_all(ub, 2) == data  # nothing consumed


def test_a_buffer_resized_while_the_receive_waits_is_read_again(ns: Netns) -> None:
    """Another thread resizes a bytearray of ``bufs`` while ``recv_multiple`` waits for a
    datagram with the GIL released (moving its memory): the datagram lands in the
    bytearray as it is now, not where it was when the call began."""
    a, b = pair()
    ub = t.UdpSocket(b)
    buf = bytearray(16)
    data = dgram(7, 1200)

    def resize_then_send() -> None:
        time.sleep(0.2)  # the receive is waiting by now
        buf.extend(bytes(1 << 20))  # reallocated: the old block is freed
        a.send(data)

    th = threading.Thread(target=resize_then_send)
    th.start()
    sizes = [0]
    try:
        assert ub.recv_multiple([buf], sizes) == 1
    finally:
        th.join()
    assert bytes(buf[: sizes[0]]) == data and len(buf) == 16 + (1 << 20)


# ----- blocking modes, closed sockets, signals ---------------------------------------------


def test_nonblocking_and_timeout(ns: Netns) -> None:
    a, b = pair()
    ub = t.UdpSocket(b)
    bufs, sizes = [bytearray(100)], [0]
    b.setblocking(False)
    with pytest.raises(BlockingIOError) as e:
        ub.recv_multiple(bufs, sizes)
    assert e.value.errno == errno.EAGAIN
    b.settimeout(0.02)
    with pytest.raises(TimeoutError):
        ub.recv_multiple(bufs, sizes)
    a.send(b"late")
    b.settimeout(5)
    assert ub.recv_multiple(bufs, sizes) == 1 and bytes(bufs[0][: sizes[0]]) == b"late"


def _slow_lo(ns: Netns) -> None:
    """A rate-limited qdisc on lo: sent datagrams wait there, charged to the sender's
    send buffer, so a small one fills up and the sender would block."""
    if shutil.which("tc") is None:
        pytest.skip("tc (iproute2) is missing")
    r = ns.run("tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "20mbit",
               "burst", "2000", "limit", "10000000", check=False)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"no tbf qdisc here: {r.stderr.strip()}")


def test_send_that_would_block_reports_datagrams_sent(ns: Netns) -> None:
    _slow_lo(ns)
    a, b = pair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ua = t.UdpSocket(a, gso=False)
    data = [dgram(i, 1000) for i in range(100)]
    a.setblocking(False)
    with pytest.raises(BlockingIOError) as e:
        ua.send_multiple(data)
    sent = e.value.datagrams_sent  # type: ignore[attr-defined]
    assert 0 < sent < 100
    assert recv_plain(b, sent) == data[:sent]  # the first `sent`, in order
    a.settimeout(5)
    assert ua.send_multiple(data[sent:]) == 100 - sent  # blocking: waits for room
    assert recv_plain(b, 100 - sent) == data[sent:]
    # A timeout that passes: TimeoutError, also with the count.
    a.settimeout(0.001)
    with pytest.raises(TimeoutError) as e2:
        for _ in range(10):
            ua.send_multiple(data)
    assert 0 <= e2.value.datagrams_sent < 100  # type: ignore[attr-defined]


def test_closed_socket_is_ebadf(ns: Netns) -> None:
    a, b = pair()
    ua, ub = t.UdpSocket(a), t.UdpSocket(b)
    a.close()
    b.close()
    with pytest.raises(OSError) as e:
        ua.send_multiple([b"x"])
    assert e.value.errno == errno.EBADF
    with pytest.raises(OSError) as e:
        ub.recv_multiple([bytearray(10)], [0])
    assert e.value.errno == errno.EBADF


def test_signal_during_a_blocking_receive(ns: Netns) -> None:
    a, b = pair()
    ub = t.UdpSocket(b)
    b.settimeout(None)
    fired = []

    def handler(signum: int, frame: object) -> None:
        fired.append(signum)
        a.send(b"from the handler")  # the retried wait then finds it

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        bufs, sizes = [bytearray(100)], [0]
        assert ub.recv_multiple(bufs, sizes) == 1
        assert bytes(bufs[0][: sizes[0]]) == b"from the handler" and fired

        def raising(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGALRM, raising)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(KeyboardInterrupt):
            ub.recv_multiple(bufs, sizes)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_signal_handler_may_use_the_same_udpsocket(ns: Netns) -> None:
    """A handler that runs while a receive waits may call the same object (no lock is
    held while Python code runs): the handler gets the first datagram, the interrupted
    call, going on, the second."""
    a, b = pair()
    ua, ub = t.UdpSocket(a), t.UdpSocket(b)
    b.settimeout(None)
    inner: list[bytes] = []

    def handler(signum: int, frame: object) -> None:
        a.send(b"one")
        a.send(b"two")
        buf, sizes = bytearray(10), [0]
        assert ub.recv_multiple([buf], sizes) == 1
        inner.append(bytes(buf[: sizes[0]]))
        assert ua.send_multiple([b"x"], addr=b.getsockname()) == 1  # and sends, too

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        bufs, sizes = [bytearray(10), bytearray(10)], [0, 0]
        n = ub.recv_multiple(bufs, sizes)
        got = [bytes(bufs[i][: sizes[i]]) for i in range(n)]
        if n == 1:
            got += recv_all(ub, 1)
        assert inner == [b"one"] and got == [b"two", b"x"]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_one_thread_receives_while_another_sends(ns: Netns) -> None:
    a, b = pair()
    b.connect(a.getsockname())
    ua, ub = t.UdpSocket(a), t.UdpSocket(b)
    data = [dgram(i, 1200) for i in range(300)]
    got: list[bytes] = []
    err: list[BaseException] = []

    def reader() -> None:
        try:
            got.extend(recv_all(ub, len(data)))
        except BaseException as e:  # reported below
            err.append(e)

    th = threading.Thread(target=reader)
    th.start()
    assert ub.pending == 0 and ub.stats["recv_calls"] == 0  # do not wait for the reader
    for i in range(0, len(data), 30):
        assert ua.send_multiple(data[i : i + 30]) == 30
    th.join(10)
    assert not th.is_alive() and not err
    assert got == data
    # The same socket object sends the other way from this thread meanwhile.
    assert ub.send_multiple([b"back"]) == 1
    assert a.recv(10) == b"back"


def test_two_udpsockets_on_one_socket_in_two_threads(ns: Netns) -> None:
    """The tunnel pattern: one socket, one UdpSocket receiving in a thread while another
    sends from this one; an echo peer sends every datagram back."""
    s, peer = sock(), sock()
    u_in, u_out = t.UdpSocket(s), t.UdpSocket(s)
    data = [dgram(i, 1300) for i in range(200)]
    got: list[bytes] = []
    err: list[BaseException] = []

    def reader() -> None:
        try:
            got.extend(recv_all(u_in, len(data)))
        except BaseException as e:  # reported below
            err.append(e)

    def echo() -> None:
        try:
            for _ in range(len(data)):
                d, frm = peer.recvfrom(2000)
                peer.sendto(d, frm)
        except BaseException as e:  # reported below
            err.append(e)

    threads = [threading.Thread(target=reader), threading.Thread(target=echo)]
    for th in threads:
        th.start()
    for i in range(0, len(data), 40):
        assert u_out.send_multiple(data[i : i + 40], addr=peer.getsockname()) == 40
    for th in threads:
        th.join(10)
    assert not any(th.is_alive() for th in threads) and not err
    assert got == data


# ----- kernel refusals -------------------------------------------------------------------------


def test_segments_above_the_mtu_fall_back(ns: Netns) -> None:
    ns.run("ip", "link", "set", "lo", "mtu", "1500")
    a, b = pair()
    ua, ub = t.UdpSocket(a), t.UdpSocket(b)
    lens = [2000] * 5 + [1400] * 3 + [2000, 2000, 10]
    data = [dgram(i, n) for i, n in enumerate(lens)]
    assert ua.send_multiple(data) == len(data)
    assert ua.gso  # EINVAL turns nothing off
    assert ua.stats["fallbacks"] == 2  # the two runs of 2000-byte segments
    assert recv_all(ub, len(data)) == data


def test_eio_turns_gso_off_and_loses_nothing(ns: Netns) -> None:
    """The kernel refuses a segmented UDP-Lite send with EIO (as it does, before Linux
    6.11, on a route whose device lacks tx checksum offload, the case wireguard-go's conn/
    handles): the run goes out datagram by datagram, and segmentation stays off."""
    a = socket.socket(AF4, socket.SOCK_DGRAM, socket.IPPROTO_UDPLITE)
    b = socket.socket(AF4, socket.SOCK_DGRAM, socket.IPPROTO_UDPLITE)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    b.settimeout(5)
    a.connect(b.getsockname())
    ua = t.UdpSocket(a)
    assert ua.gso
    data = [dgram(i, 1000) for i in range(10)] + [dgram(10, 10)]
    assert ua.send_multiple(data) == len(data)
    assert not ua.gso  # EIO: off for good
    more = [dgram(i, 900) for i in range(20, 25)]
    assert ua.send_multiple(more) == 5
    assert recv_plain(b, len(data) + 5) == data + more  # each once, in order
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        b.recv(10)  # nothing twice


def test_route_without_tx_checksum_offload(ns: Netns) -> None:
    """A veth without tx checksum offload: older kernels refuse segmented sends over it
    (EIO), newer ones checksum in software; either way every datagram arrives once."""
    if shutil.which("ethtool") is None:
        pytest.skip("ethtool is missing (apt-get install ethtool)")
    with Netns("tunoff-udp2") as peer:
        r = ns.run("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1", check=False)
        if r.returncode != 0:
            pytest.skip(f"no veth devices here: {r.stderr.strip()}")
        ns.run("ip", "link", "set", "v1", "netns", peer.name)
        ns.run("ip", "addr", "add", "192.0.2.1/24", "dev", "v0")
        ns.run("ip", "link", "set", "v0", "up")
        peer.run("ip", "addr", "add", "192.0.2.2/24", "dev", "v1")
        peer.run("ip", "link", "set", "v1", "up")
        ns.run("ethtool", "-K", "v0", "tx", "off")
        with peer.entered():
            r1 = sock(host="192.0.2.2")
        s = sock(host="192.0.2.1")
        us = t.UdpSocket(s)
        to = r1.getsockname()
        data = [dgram(i, 1000) for i in range(10)]
        assert us.send_multiple(data, addr=to) == 10
        more = [dgram(i, 900) for i in range(10, 15)]
        assert us.send_multiple(more, addr=to) == 5
        assert recv_plain(r1, 15) == data + more
        r1.setblocking(False)
        with pytest.raises(BlockingIOError):
            r1.recv(10)  # nothing twice
        r1.close()


# ----- bad arguments: raised before anything is received or sent ------------------------


def test_bad_recv_arguments_consume_nothing(ns: Netns) -> None:
    a, b = pair()
    ub = t.UdpSocket(b)
    a.send(dgram(0, 300))
    good = [bytearray(400)]
    cases: list[tuple[type[BaseException], tuple[object, ...]]] = [
        (TypeError, ([b"read-only"], [0])),
        (TypeError, ((x for x in good), [0])),
        (TypeError, (good, (0,))),
        (ValueError, ([], [])),
        (ValueError, (good * 2, [0])),
        (ValueError, (good, [0], -1)),
        (ValueError, (good, [0], 0, [])),
        (TypeError, (good, [0], 0, (None,))),
    ]
    for exc, args in cases:
        with pytest.raises((exc, BufferError)):
            ub.recv_multiple(*args)  # type: ignore[arg-type]
    # An offset no bytearray can grow to: refused, the datagram kept.
    with pytest.raises(ValueError, match="can grow to"):
        ub.recv_multiple([bytearray()], [0], 2**63 - 1)
    sizes = [0]
    assert ub.recv_multiple(good, sizes) == 1
    assert bytes(good[0][: sizes[0]]) == dgram(0, 300)


def test_bad_send_arguments_send_nothing(ns: Netns) -> None:
    a, b = pair()
    ua, ub = t.UdpSocket(a), t.UdpSocket(b)
    d = [dgram(i, 100) for i in range(4)]
    port = b.getsockname()[1]
    cases: list[tuple[type[BaseException], dict[str, object]]] = [
        (ValueError, {"bufs": d + [bytes(65508)]}),
        (ValueError, {"bufs": d, "offset": -1}),
        (ValueError, {"bufs": d, "offset": 101}),
        (ValueError, {"bufs": d, "count": 5}),
        (ValueError, {"bufs": d, "count": -1}),
        (ValueError, {"bufs": d, "sizes": [10, 10, 10]}),
        (ValueError, {"bufs": d, "sizes": [10, 10, 10, 101]}),
        (ValueError, {"bufs": d, "sizes": [10, 10, 10, -1]}),
        (TypeError, {"bufs": d, "sizes": [10, 10, 10, "x"]}),
        (ValueError, {"bufs": d, "sizes": [10, 10, 10, 2**70]}),
        (TypeError, {"bufs": d + [42]}),
        (TypeError, {"bufs": 42}),
        (ValueError, {"bufs": d, "addr": ("no-such-host.invalid", port)}),
        (ValueError, {"bufs": d, "addr": ("::1", port)}),
        (ValueError, {"bufs": d, "addr": ("127.0.0.1", 70000)}),
        (TypeError, {"bufs": d, "addr": ("127.0.0.1",)}),
        (TypeError, {"bufs": d, "addr": "127.0.0.1"}),
        (TypeError, {"bufs": d, "addr": (b"127.0.0.1", port)}),
        (ValueError, {"bufs": d, "addr": [("127.0.0.1", port)] * 3}),
        (ValueError, {"bufs": d, "addr": [("127.0.0.1", port)] * 3 + [("x", 1)]}),
    ]
    for exc, kw in cases:
        bufs = kw.pop("bufs")
        with pytest.raises(exc):
            ua.send_multiple(bufs, **kw)  # type: ignore[arg-type]
    nothing_queued(ub)
    assert ua.send_multiple(d, count=0) == 0
    assert ua.send_multiple([]) == 0
    nothing_queued(ub)
    assert ua.send_multiple(d) == 4
    assert recv_all(ub, 4) == d


def test_buffer_resized_during_the_call_is_refused(ns: Netns) -> None:
    # An __index__ in sizes runs Python code while the bufs are exported: resizing one of
    # them then fails (its export is held), and the error propagates before any send.
    a, b = pair()
    ua, ub = t.UdpSocket(a), t.UdpSocket(b)
    victim = bytearray(dgram(0, 100))

    class Grows:
        def __index__(self) -> int:
            victim.extend(bytes(100000))
            return 100

    with pytest.raises(BufferError):
        ua.send_multiple([victim], sizes=[Grows()])
    assert victim == dgram(0, 100)
    nothing_queued(ub)
    assert ua.send_multiple([victim], sizes=[50]) == 1
    assert recv_all(ub, 1) == [dgram(0, 100)[:50]]


def test_bufs_shortened_during_the_call_is_a_value_error(ns: Netns) -> None:
    # The lists are read item by item: one emptied by an __index__ in sizes mid-call is
    # a ValueError naming it, and nothing is sent.
    a, b = pair()
    ua, ub = t.UdpSocket(a), t.UdpSocket(b)
    bufs = [dgram(i, 100) for i in range(3)]

    class Clears:
        def __index__(self) -> int:
            bufs.clear()
            return 100

    with pytest.raises(ValueError, match="bufs got shorter"):
        ua.send_multiple(bufs, sizes=[Clears(), 100, 100])
    nothing_queued(ub)
    # The same for a list of addresses emptied by a port's __index__.
    port = b.getsockname()[1]
    addrs: list[tuple[str, object]] = []

    class Empties:
        def __index__(self) -> int:
            addrs.clear()
            return port

    addrs += [("127.0.0.1", Empties()), ("127.0.0.1", port)]
    with pytest.raises(ValueError, match="addr got shorter"):
        ua.send_multiple([dgram(0, 10), dgram(1, 10)], addr=addrs)
    nothing_queued(ub)


def test_empty_datagrams(ns: Netns) -> None:
    a, b = pair()
    ua, ub = t.UdpSocket(a), t.UdpSocket(b)
    data = [b"", b"x", b"", b"", b"yy"]
    assert ua.send_multiple(data) == 5
    assert recv_all(ub, 5) == data


def test_ip_netns_available_for_the_tests() -> None:
    # The namespace tests above need root and iproute2; this says so when they skip.
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    assert subprocess.run(["ip", "-V"], capture_output=True).returncode == 0


def test_buffers_are_pinned_while_the_gil_is_released(ns: Netns) -> None:
    """With another thread in a system call, the copy of a coalesced read into large
    bytearrays runs with the GIL released: a thread that keeps resizing those buffers
    meanwhile is refused (``BufferError``, they are exported) rather than racing, and
    every datagram arrives whole. Bounded: 3 s or 3000 rounds."""
    a, b = pair()
    ua, ub = t.UdpSocket(a), t.UdpSocket(b)
    bufs = [bytearray(65535) for _ in range(64)]
    sizes = [0] * 64
    data = [dgram(i, 1400) for i in range(45)]

    def call() -> None:
        assert ua.send_multiple(data) == 45
        assert ub.recv_multiple(bufs, sizes) == 45
        assert [bytes(bufs[i][: sizes[i]]) for i in range(45)] == data

    with another_thread_in_a_syscall():
        refused = resizes_refused(bufs, 1, 45, call)
    assert refused > 0, "no resize ever met an exported buffer"
