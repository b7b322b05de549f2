"""The batch path on a real device: growth of too-small outputs (the ``fit=True`` loop),
arguments checked before the read (the queued packet stays for the next call), packets
that the buffers cannot take kept for the next call, and packets the kernel would refuse
raised as ``ValueError`` before anything is written."""

from __future__ import annotations

import contextlib
import random
import select
import socket
import struct
import time
from collections.abc import Sequence

import packets as P
import pytest
from _busy import another_thread_in_a_syscall, resizes_refused
from _netns import Netns, can_use_netns, drain

_reason = can_use_netns()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

import tunoffload as t  # noqa: E402

HDR = t.VIRTIO_NET_HDR_LEN
UDP_SEGMENT = 103


@pytest.fixture
def ns():
    with Netns("tunoff-batch") as n:
        n.sysctl("net.ipv6.conf.all.disable_ipv6", "1")
        n.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        yield n


def _device(ns: Netns, name: str, offload: bool = True) -> t.TunDevice:
    with ns.entered():
        dev = t.TunDevice(name, offload=offload, up=True, nonblocking=True)
        dev.add_address("192.0.2.1/24")
    drain(dev)
    return dev


def _udp(ns: Netns, payload: bytes, segment: int | None = None) -> None:
    with ns.entered():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if segment is not None:
                s.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, segment)
            s.bind(("192.0.2.1", 4000))
            s.sendto(payload, ("192.0.2.2", 9))
        finally:
            s.close()


def _udp_payload(pkt: bytes) -> bytes:
    assert pkt[0] >> 4 == 4 and pkt[9] == 17, pkt[:20].hex()
    ihl = (pkt[0] & 15) * 4
    (length,) = struct.unpack("!H", pkt[ihl + 4 : ihl + 6])
    return pkt[ihl + 8 : ihl + length]


def test_fit_loop_grows_trimmed_buffers(ns):
    """API.md's form in a loop: fit=True trims, the next larger packet grows them back."""
    dev = _device(ns, "fit1")
    with dev:
        original = bytearray(HDR + 65535)
        bufs = [bytearray(HDR + 1) for _ in range(4)]  # far too small: grown
        sizes = [0] * 4
        gro = t.GroTable()
        for payload in (b"a" * 10, b"b" * 1000, b"c" * 30, b"d" * 1400):
            _udp(ns, payload)
            n = dev.recv_multiple(original, bufs, sizes, HDR, fit=True)
            assert n == 1
            assert len(bufs[0]) == HDR + sizes[0] == HDR + 28 + len(payload)
            assert _udp_payload(bytes(bufs[0][HDR:])) == payload
            written = dev.send_multiple(gro, bufs[:n], HDR)
            assert written == HDR + sizes[0]
        assert len(bufs[1]) == HDR + 1  # never used: untouched


def test_plain_device_fit_loop(ns):
    dev = _device(ns, "fit2", offload=False)
    with dev:
        bufs = [bytearray(0)]
        sizes = [0]
        for payload in (b"x" * 10, b"y" * 1200):
            _udp(ns, payload)
            assert dev.recv_multiple(None, bufs, sizes, 4, fit=True) == 1
            assert len(bufs[0]) == 4 + sizes[0]
            assert _udp_payload(bytes(bufs[0][4:])) == payload


def test_plain_device_grown_bytearray_shows_no_heap(ns):
    dev = _device(ns, "zero1", offload=False)
    with dev:
        for fit in (False, True):
            # Freed memory of the size it grows to, full of 0xAA, for the allocator to reuse.
            junk = bytearray(b"\xaa" * (100 + 65535))
            del junk
            bufs, sizes = [bytearray(0)], [0]
            _udp(ns, b"z" * 50)
            assert dev.recv_multiple(None, bufs, sizes, 100, fit=fit) == 1
            assert bytes(bufs[0][:100]) == bytes(100), "headroom not zeroed"
            assert bytes(bufs[0][100 + sizes[0] :]) == bytes(len(bufs[0]) - 100 - sizes[0])
            assert _udp_payload(bytes(bufs[0][100 : 100 + sizes[0]])) == b"z" * 50


def test_plain_device_bufs0_that_changes_between_looks(ns):
    # A sequence whose bufs[0] is a large buffer when checked and a 2-byte one when
    # used: refused as ValueError (it used to panic), before the read.
    class Shifty(Sequence[memoryview]):
        def __init__(self) -> None:
            self.calls = 0

        def __len__(self) -> int:
            return 1

        def __getitem__(self, i):  # type: ignore[no-untyped-def, override]
            if i != 0:
                raise IndexError(i)
            self.calls += 1
            return memoryview(bytearray(2000 if self.calls == 1 else 2))

    dev = _device(ns, "shift1", offload=False)
    with dev:
        _udp(ns, b"s" * 40)
        with pytest.raises(ValueError, match=r"bufs\[0\] holds 2 bytes .* no room after offset 4"):
            dev.recv_multiple(None, Shifty(), [0], 4)
        bufs, sizes = [bytearray(0)], [0]
        assert dev.recv_multiple(None, bufs, sizes, 4) == 1
        assert _udp_payload(bytes(bufs[0][4 : 4 + sizes[0]])) == b"s" * 40


def test_argument_errors_raise_before_the_read(ns):
    """Each call is wrong whatever arrives: it raises, and the queued packet is still there
    for the next call."""
    dev = _device(ns, "arg1")
    ro = memoryview(bytearray(2000)).toreadonly()
    original = bytearray(HDR + 65535)
    ok = [bytearray(2000)]
    bad = {
        "negative offset": lambda: dev.recv_multiple(original, ok, [0], -1),
        "sizes a tuple": lambda: dev.recv_multiple(original, ok, (0,), HDR),
        "sizes empty": lambda: dev.recv_multiple(original, ok, [], HDR),
        "bufs empty": lambda: dev.recv_multiple(original, [], [0], HDR),
        "bufs not a sequence": lambda: dev.recv_multiple(original, 5, [0], HDR),
        "a read-only output": lambda: dev.recv_multiple(original, [bytearray(10), ro], [0], HDR),
        "a bytes output": lambda: dev.recv_multiple(original, [bytes(2000)], [0], HDR),
        "an int output": lambda: dev.recv_multiple(original, [bytearray(9), 3], [0], HDR),
        "a view with no room after offset": lambda: dev.recv_multiple(
            original, [bytearray(2000), memoryview(bytearray(HDR))], [0, 0], HDR
        ),
        "original read-only": lambda: dev.recv_multiple(ro, ok, [0], HDR),
        "original too small": lambda: dev.recv_multiple(bytearray(HDR), ok, [0], HDR),
        "original is an output": lambda: dev.recv_multiple(original, [original], [0], HDR),
    }
    with dev:
        _udp(ns, b"kept")
        for name, call in bad.items():
            with pytest.raises((ValueError, TypeError, BufferError)):
                call()
                pytest.fail(f"{name}: accepted")
        assert dev.stats["reads"] == 0  # nothing was read
        sizes = [0]
        assert dev.recv_multiple(original, ok, sizes, HDR) == 1
        assert _udp_payload(bytes(ok[0][HDR : HDR + sizes[0]])) == b"kept"


def test_packet_the_buffers_cannot_take_is_kept(ns):
    dev = _device(ns, "keep1")
    original = bytearray(HDR + 65535)
    with dev:
        _udp(ns, b"z" * 500)
        small = memoryview(bytearray(HDR + 100))  # not a bytearray: cannot grow
        with pytest.raises(ValueError, match=r"^bufs\[0\] holds .*kept for the next call") as exc:
            dev.recv_multiple(original, [small], [0], HDR)
        # The kept error is still the engine's, with its kind and index.
        assert (exc.value.kind, exc.value.index) == ("out_buf_too_small", 0)
        assert dev.stats["reads"] == 1
        out = [bytearray(HDR + 1)]
        sizes = [0]
        assert dev.recv_multiple(original, out, sizes, HDR) == 1
        assert _udp_payload(bytes(out[0][HDR : HDR + sizes[0]])) == b"z" * 500
        assert dev.stats["reads"] == 1  # the kept packet, not a new read
        # A plain recv also gets a kept packet first.
        _udp(ns, b"w" * 300)
        with pytest.raises(ValueError, match="kept"):
            dev.recv_multiple(original, [memoryview(bytearray(HDR + 10))], [0], HDR)
        buf = bytearray(HDR + 65535)
        n = dev.recv(buf)
        assert _udp_payload(bytes(buf[HDR:n])) == b"w" * 300


def test_too_few_bufs_for_a_super_packet_keeps_it(ns):
    dev = _device(ns, "keep2")
    if not dev.udp_gso:
        dev.close()
        pytest.skip("the kernel gives this device no UDP segmentation offload")
    original = bytearray(HDR + 65535)
    with dev:
        payload = bytes(range(256)) * 12  # 3072 bytes: 4 segments of 1000 bytes at most
        _udp(ns, payload, segment=1000)
        with pytest.raises(ValueError, match="kept") as exc:
            dev.recv_multiple(original, [bytearray(2000), bytearray(2000)], [0, 0], HDR)
        assert exc.value.kind == "too_few_out_bufs"
        bufs = [bytearray(0) for _ in range(8)]
        sizes = [0] * 8
        n = dev.recv_multiple(original, bufs, sizes, HDR)
        assert n == 4
        got = b"".join(_udp_payload(bytes(bufs[i][HDR : HDR + sizes[i]])) for i in range(n))
        assert got == payload
        # Too few sizes: kept as well.
        _udp(ns, payload, segment=1000)
        with pytest.raises(ValueError, match="kept") as exc:
            dev.recv_multiple(original, bufs, [0, 0], HDR)
        assert exc.value.kind == "sizes_too_short"
        assert dev.recv_multiple(original, bufs, sizes, HDR) == 4


def test_same_bytearray_twice_is_refused_and_kept(ns):
    dev = _device(ns, "dup1")
    original = bytearray(HDR + 65535)
    with dev:
        if not dev.udp_gso:
            pytest.skip("the kernel gives this device no UDP segmentation offload")
        _udp(ns, b"q" * 2500, segment=1000)
        b = bytearray(2000)
        with pytest.raises(ValueError, match="share memory"):
            dev.recv_multiple(original, [b, b, bytearray(2000)], [0] * 3, HDR)
        assert dev.recv_multiple(original, [bytearray(0) for _ in range(3)], [0] * 3, HDR) == 3
        # In a list that is not all bytearrays too, and when the first entry for it must
        # grow (segments of 1028, 1028 and 528 bytes: it takes 610 bytes to 1038, moving
        # its memory; the second entry's 610 would have been enough for its 528).
        _udp(ns, b"q" * 2500, segment=1000)
        b = bytearray(HDR + 600)
        mixed = [memoryview(bytearray(2000)), b, b]
        with pytest.raises(ValueError, match="share memory"):
            dev.recv_multiple(original, mixed, [0] * 3, HDR)
        assert dev.recv_multiple(original, [bytearray(0) for _ in range(3)], [0] * 3, HDR) == 3


@pytest.mark.parametrize("offload", [True, False])
def test_send_multiple_refuses_what_the_kernel_would(ns, offload):
    dev = _device(ns, "bad1", offload=offload)
    off = HDR if offload else 0
    good = bytearray(off) + bytearray.fromhex(
        "4500001c000000004011f98ec0000201c0000202" + "0fa0000900080000"
    )
    cases = {
        "version 0": bytearray(off) + bytearray(28),
        "version 5": bytearray(off) + bytearray(b"\x55" + bytes(27)),
        "IHL past the end": bytearray(off) + bytearray(b"\x4f" + bytes(27)),
        "total length past the end": good[: off + 2] + b"\x01\x00" + good[off + 4 :],
        "IPv6 header cut": bytearray(off) + bytearray(b"\x60" + bytes(20)),
    }
    with dev:
        for name, pkt in cases.items():
            with pytest.raises(ValueError, match=r"bufs\[1\]"):
                dev.send_multiple(t.GroTable(), [bytearray(good), pkt, bytearray(good)], off)
                pytest.fail(f"{name}: accepted")
        assert dev.stats["writes"] == 0  # nothing was written
        assert dev.send_multiple(t.GroTable(), [bytearray(good)], off) == len(good)
        assert dev.stats["writes"] == 1


def test_send_multiple_writes_a_corrupt_segment_alone_between_its_runs(ns):
    """The README idiom's send (64 KiB bytearrays, ``sizes=``/``count=``) with one corrupt
    TCP segment among 20: through a device with offload and the kernel's forwarding out
    of one without, the 20 packets come back as they were (the corrupt one untouched, the
    runs around it coalesced: 3 writes)."""
    ns.sysctl("net.ipv4.ip_forward", "1")
    for key in ("all", "default"):
        ns.sysctl(f"net.ipv4.conf.{key}.rp_filter", "0")
    with ns.entered():
        a = t.TunDevice("bta0", offload=True, up=True, nonblocking=True)
        b = t.TunDevice("btb0", offload=False, up=True, nonblocking=True)
        a.add_address("10.11.0.1/24")
        b.add_address("10.12.0.1/24")
    with a, b:
        drain(a)
        rng = random.Random(20)
        pkts = [
            P.tcp_pkt(False, P.rand_bytes(rng, 1000), seq=1 + 1000 * i, ip_id=i) for i in range(20)
        ]
        broken = bytearray(pkts[9])
        broken[-1] ^= 0x5A  # its TCP checksum no longer verifies
        pkts[9] = bytes(broken)
        off = HDR
        bufs = [bytearray(off + 65535) for _ in range(t.IDEAL_BATCH_SIZE)]
        for buf, p in zip(bufs, pkts, strict=False):
            buf[off : off + len(p)] = p
        sizes = [len(p) for p in pkts]
        writes = a.stats["writes"]
        sent = a.send_multiple(t.GroTable(), bufs, off, sizes=sizes, count=len(pkts))
        assert sent == sum(sizes) - 17 * 40 + 3 * HDR  # 20 packets as 3: 17 fewer headers
        assert a.stats["writes"] - writes == 3
        got: list[bytes] = []
        buf = bytearray(2048)
        deadline = time.monotonic() + 10.0  # a hang guard, not a measurement
        while len(got) < len(pkts) and time.monotonic() < deadline:
            if not select.select([b.fileno()], [], [], 1.0)[0]:
                continue
            try:
                n = b.recv(buf)
            except BlockingIOError:
                continue
            pkt = bytes(buf[:n])
            if pkt[0] >> 4 == 4 and pkt[12:20] == bytes([10, 11, 0, 2, 10, 12, 0, 2]):
                got.append(pkt)
        norm = P.normalize_forwarded  # forwarding changes the TTL and the header checksum
        assert [norm(g) for g in got] == [norm(p) for p in pkts]


@pytest.mark.parametrize("busy", [False, True], ids=["alone", "busy"])
@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_send_multiple_in_place_coalesces_as_handle_gro_does(ns, v6, busy):
    """The README idiom's send (64 KiB bytearrays, ``sizes=``/``count=``; with another
    thread in a system call, ``busy``, coalesced with the GIL released and each buffer
    pinned) against ``handle_gro`` on exact-length copies (the GIL held), for two flows
    with segments out of order, so that heads are prepended to and list entries
    swapped: the same bytes written, the same entries in the same places, and the
    written heads byte for byte the same."""
    dev = _device(ns, "btg0")
    with dev, ns.entered(), another_thread_in_a_syscall() if busy else contextlib.nullcontext():
        rng = random.Random(7 + v6)
        pkts = []
        for i in range(24):
            for flow in (0, 1):
                body = P.rand_bytes(rng, 1200)
                pkts.append(P.tcp_pkt(v6, body, seq=1 + 1200 * i, sport=40000 + flow))
        order = [j ^ 2 for j in range(len(pkts))]  # each flow's pairs of segments reversed
        pkts = [pkts[j] for j in order]
        off = HDR + 6
        sized = [bytearray(off + 65535) for _ in range(t.IDEAL_BATCH_SIZE)]
        for buf, p in zip(sized, pkts, strict=False):
            buf[off : off + len(p)] = p
        exact = [bytearray(off) + p for p in pkts]
        where = {id(b): k for k, b in enumerate(sized)}
        where_exact = {id(b): k for k, b in enumerate(exact)}
        sizes = [len(p) for p in pkts]

        idx = t.handle_gro(exact, off, t.GroTable())
        sent = dev.send_multiple(t.GroTable(), sized, off, sizes=sizes, count=len(pkts))

        perm_exact = [where_exact[id(b)] for b in exact]
        assert perm_exact != list(range(len(exact))), "no entry was swapped: a weak case"
        assert [where[id(b)] for b in sized[: len(pkts)]] == perm_exact
        assert len(idx) <= len(pkts) // 2  # each reversed pair at least coalesced
        assert sent == sum(len(exact[i]) - (off - HDR) for i in idx)
        for i in idx:
            head = exact[i][off - HDR :]  # its virtio header and packet
            assert sized[i][off - HDR : len(exact[i])] == head, f"head {i} differs"


@pytest.mark.parametrize("busy", [False, True], ids=["alone", "busy"])
def test_recv_multiple_splits_as_gso_split_does(ns, busy):
    """A UDP super-packet (UDP_SEGMENT, 40 segments) read with the README idiom's 64 KiB
    bytearrays (with another thread in a system call, ``busy``: split with the GIL
    released, each output pinned) gives what ``gso_split`` gives for the same read: the
    same sizes and the same bytes, and each payload is the one sent."""
    dev = _device(ns, "bts0")
    with dev:
        payload = P.rand_bytes(random.Random(3), 40 * 1200)
        _udp(ns, payload, segment=1200)
        original = bytearray(HDR + 65535)
        bufs = [bytearray(HDR + 65535) for _ in range(t.IDEAL_BATCH_SIZE)]
        sizes = [0] * t.IDEAL_BATCH_SIZE
        with ns.entered(), another_thread_in_a_syscall() if busy else contextlib.nullcontext():
            n = dev.recv_multiple(original, bufs, sizes, HDR)
        assert n == 40
        read = dev.stats["max_read"]
        hdr = t.VirtioNetHdr.decode(original)
        want = [bytearray(HDR + 1500) for _ in range(64)]
        want_sizes = [0] * 64
        assert t.gso_split(bytes(original[HDR:read]), hdr, want, want_sizes, HDR) == 40
        assert sizes[:40] == want_sizes[:40]
        for i in range(40):
            got = bytes(bufs[i][HDR : HDR + sizes[i]])
            assert got == bytes(want[i][HDR : HDR + sizes[i]]), f"segment {i}"
            assert _udp_payload(got) == payload[1200 * i : 1200 * (i + 1)], f"segment {i}"


@pytest.mark.parametrize("side", ["split", "coalesce"])
def test_buffers_are_pinned_while_the_gil_is_released(ns, side):
    """With another thread in a system call, the split (``recv_multiple``) and the
    in-place coalescing (``send_multiple(..., sizes=)``) run with the GIL released: a
    third thread that keeps resizing the buffers meanwhile runs during them, and is
    refused (``BufferError``, the buffers are exported) rather than racing. Without the
    GIL released it could never find a buffer exported. Bounded: 3 s or 3000 calls."""
    dev = _device(ns, "btp0")
    with dev:
        bufs = [bytearray(HDR + 65535) for _ in range(t.IDEAL_BATCH_SIZE)]
        pkts = [P.tcp_pkt(False, bytes(1200), seq=1 + 1200 * i, ip_id=i) for i in range(40)]
        sizes = [len(p) for p in pkts]
        payload = P.rand_bytes(random.Random(6), 40 * 1200)
        original = bytearray(HDR + 65535)
        out_sizes = [0] * t.IDEAL_BATCH_SIZE

        def call() -> None:
            if side == "coalesce":
                for buf, p in zip(bufs, pkts, strict=False):
                    buf[HDR : HDR + len(p)] = p
                sent = dev.send_multiple(t.GroTable(), bufs, HDR, sizes=sizes, count=40)
                assert sent == sum(sizes) - 39 * 40 + HDR  # one write of all 40
            else:
                _udp(ns, payload, segment=1200)
                assert dev.recv_multiple(original, bufs, out_sizes, HDR) == 40
                got = bytes(bufs[39][HDR : HDR + out_sizes[39]])
                assert _udp_payload(got) == payload[-1200:]

        with ns.entered(), another_thread_in_a_syscall():
            # Not bufs[0]: the coalesced packet is written from it, exported for the
            # write whether or not the GIL was released while coalescing.
            refused = resizes_refused(bufs, 1, 40, call)
        assert refused > 0, "no resize ever met an exported buffer"
        assert all(len(b) == HDR + 65535 for b in bufs)
