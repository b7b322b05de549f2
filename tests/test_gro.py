"""GroTable / handle_gro per API.md: coalescing, every refusal rule, buffer contract."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

import packets as P
import pytest
import tunoffload as t
from _kinds import refused
from scapy.layers.inet import IP, IPOption_NOP

OFF = 16  # headroom before each packet (>= VIRTIO_NET_HDR_LEN)
TS = [("NOP", None), ("NOP", None), ("Timestamp", (0x11223344, 0x55667788))]
ZERO_HDR = bytes(10)


def rand(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def tcp_flow(
    n, v6=False, mss=1448, *, seq=1_000_000, last=None, sizes=None, ip_id=100, **kw
) -> list[bytes]:
    """In-order TCP segments of one flow (IPv4 IDs consecutive, same ACK/TTL/options)."""
    kw.setdefault("options", TS)
    sizes = list(sizes) if sizes is not None else [mss] * n
    pkts = []
    for i, size in enumerate(sizes):
        flags = P.ACK
        if last is not None and i == len(sizes) - 1:
            flags = last
        extra = {} if v6 else {"ip_id": (ip_id + i) & 0xFFFF}
        pkts.append(P.tcp_pkt(v6, rand(size, seq + i), seq=seq, flags=flags, **extra, **kw))
        seq += size
    return pkts


def udp_flow(n, v6=False, size=1448, *, sizes=None, ip_id=200, **kw) -> list[bytes]:
    sizes = list(sizes) if sizes is not None else [size] * n
    pkts = []
    for i, s in enumerate(sizes):
        extra = {} if v6 else {"ip_id": (ip_id + i) & 0xFFFF}
        pkts.append(P.udp_pkt(v6, rand(s, 7000 + i), **extra, **kw))
    return pkts


def ip_len(pkt: bytes) -> int:
    if pkt[0] >> 4 == 4:
        return struct.unpack_from("!H", pkt, 2)[0]
    return 40 + struct.unpack_from("!H", pkt, 4)[0]


def gro(pkts, offset=OFF, can_udp_gro=True, table=None):
    """handle_gro on fresh buffers; checks the buffer contract; returns [(hdr, packet)]."""
    bufs = [bytearray(b"\xcc" * offset) + p for p in pkts]
    table = table if table is not None else t.GroTable()
    idx = t.handle_gro(bufs, offset, table, can_udp_gro)
    assert isinstance(idx, list)
    assert idx == sorted(set(idx)), f"indices not in order / duplicated: {idx}"
    assert all(0 <= i < len(bufs) for i in idx)
    out = []
    for i in idx:
        b = bufs[i]
        assert isinstance(b, bytearray)
        pkt = bytes(b[offset:])
        assert len(pkt) >= 20
        assert len(b) == offset + ip_len(pkt), "bufs[i] must be exactly offset + packet length"
        out.append((t.VirtioNetHdr.decode(bytes(b[offset - 10 : offset])), pkt))
    return out


def split(hdr, pkt) -> list[bytes]:
    n_max = len(pkt) // 1 + 2 if hdr.gso_size == 0 else len(pkt) // max(1, hdr.gso_size) + 2
    out = [bytearray(len(pkt)) for _ in range(min(n_max, 400))]
    sizes = [0] * len(out)
    n = t.gso_split(pkt, hdr, out, sizes)
    return [bytes(out[i][: sizes[i]]) for i in range(n)]


def assert_untouched(out, pkts):
    assert len(out) == len(pkts), f"expected {len(pkts)} packets written, got {len(out)}"
    for (h, p), orig in zip(out, pkts, strict=True):
        assert bytes(h) == ZERO_HDR, f"non-coalesced packet needs a GSO_NONE header, got {h!r}"
        assert p == orig


def check_coalesced(h, pkt: bytes, originals: list[bytes]) -> None:
    """Header fields, IP/L4 headers, pseudo-header sum, payload, and a lossless split."""
    first = originals[0]
    info = P.l3_info(first)
    tcp = info.proto == 6
    l4 = info.l4_off
    thlen = (first[l4 + 12] >> 4) * 4 if tcp else 8
    hl = l4 + thlen
    assert h.flags == t.VIRTIO_NET_HDR_F_NEEDS_CSUM
    if tcp:
        assert h.gso_type == (t.VIRTIO_NET_HDR_GSO_TCPV6 if info.v6 else t.VIRTIO_NET_HDR_GSO_TCPV4)
        assert h.csum_offset == 16
    else:
        assert h.gso_type == t.VIRTIO_NET_HDR_GSO_UDP_L4
        assert h.csum_offset == 6
    assert h.csum_start == l4
    assert h.hdr_len == hl
    assert h.gso_size == len(first) - hl
    assert len(pkt) == hl + sum(len(o) - hl for o in originals)
    assert len(pkt) <= 65535
    assert pkt[hl:] == b"".join(o[hl:] for o in originals)
    if info.v6:
        assert struct.unpack_from("!H", pkt, 4)[0] == len(pkt) - 40
        assert pkt[:4] == first[:4] and pkt[6:40] == first[6:40]
    else:
        assert struct.unpack_from("!H", pkt, 2)[0] == len(pkt)
        assert pkt[:2] == first[:2] and pkt[4:10] == first[4:10] and pkt[12:l4] == first[12:l4]
        q = IP(pkt[:l4])
        del q.chksum
        assert bytes(q)[10:12] == pkt[10:12], "IPv4 header checksum"
    psum = P.pseudo_sum(info.src, info.dst, info.proto, len(pkt) - l4)
    coff = l4 + (16 if tcp else 6)
    assert struct.unpack_from("!H", pkt, coff)[0] == psum, "pseudo-header sum in checksum field"
    if tcp:
        assert pkt[l4 : l4 + 13] == first[l4 : l4 + 13]
        want_flags = first[l4 + 13] | (originals[-1][l4 + 13] & P.PSH)
        assert pkt[l4 + 13] == want_flags
        assert pkt[l4 + 14 : l4 + 16] == first[l4 + 14 : l4 + 16]
        assert pkt[l4 + 18 : hl] == first[l4 + 18 : hl]
    else:
        assert pkt[l4 : l4 + 4] == first[l4 : l4 + 4]
        assert struct.unpack_from("!H", pkt, l4 + 4)[0] == len(pkt) - l4
    assert split(h, pkt) == originals, "gso_split does not give the original segments back"


# --------------------------------------------------------------------------- coalescing


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("n", [2, 3, 17, 45])
def test_tcp_flow_coalesces(v6, n):
    pkts = tcp_flow(n, v6)
    ((h, pkt),) = gro(pkts)
    check_coalesced(h, pkt, pkts)


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("n", [2, 45])
def test_udp_flow_coalesces(v6, n):
    pkts = udp_flow(n, v6)
    ((h, pkt),) = gro(pkts)
    check_coalesced(h, pkt, pkts)


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_tcp_psh_on_last_segment(v6):
    pkts = tcp_flow(5, v6, last=P.ACK | P.PSH)
    ((h, pkt),) = gro(pkts)
    check_coalesced(h, pkt, pkts)
    assert pkt[P.l3_info(pkt).l4_off + 13] == P.ACK | P.PSH


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_smaller_last_segment_joins(proto):
    sizes = [1200] * 4 + [333]
    pkts = tcp_flow(0, sizes=sizes) if proto == "tcp" else udp_flow(0, sizes=sizes)
    ((h, pkt),) = gro(pkts)
    check_coalesced(h, pkt, pkts)
    assert h.gso_size == 1200


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_never_exceeds_65535(v6, proto):
    pkts = tcp_flow(60, v6) if proto == "tcp" else udp_flow(60, v6)
    out = gro(pkts)
    assert len(out) == 2
    got = []
    for h, pkt in out:
        assert len(pkt) <= 65535
        got += split(h, pkt) if h.gso_type else [pkt]
    assert got == pkts


@pytest.mark.parametrize("extra", [323, 324])
def test_65535_boundary(extra):
    # 45 * 1448 + 52 = 65212; a 46th segment of 323 bytes makes 65535 exactly, 324 one more
    pkts = tcp_flow(0, sizes=[1448] * 45 + [extra])
    out = gro(pkts)
    got = []
    for h, pkt in out:
        assert len(pkt) <= 65535
        got += split(h, pkt) if h.gso_type else [pkt]
    assert got == pkts
    if extra == 324:
        assert len(out) == 2


def test_interleaved_flows():
    a = tcp_flow(6, False, sport=1111)
    b = tcp_flow(6, True, sport=2222)
    c = udp_flow(6, False, sport=3333)
    d = tcp_flow(6, False, sport=1111, ack=0x999)  # same 4-tuple as a, other ACK: other flow
    pkts = [x for quad in zip(a, b, c, d, strict=True) for x in quad]
    out = gro(pkts)
    assert len(out) == 4
    for (h, pkt), orig in zip(out, (a, b, c, d), strict=True):
        check_coalesced(h, pkt, orig)


def test_prepend_out_of_order():
    """A segment that directly precedes the stored item is prepended (seed's Prepend)."""
    a, b = tcp_flow(2, False)
    ((h, pkt),) = gro([b, a])
    check_coalesced(h, pkt, [a, b])


def test_prepend_v6_with_psh_on_later():
    a, b = tcp_flow(2, True, last=P.ACK | P.PSH)
    ((h, pkt),) = gro([b, a])
    check_coalesced(h, pkt, [a, b])


def test_prepend_larger_segment():
    """A larger segment may be prepended to a lone smaller one (it becomes gso_size)."""
    a, b = tcp_flow(0, sizes=[1000, 500])
    ((h, pkt),) = gro([b, a])
    check_coalesced(h, pkt, [a, b])
    assert h.gso_size == 1000


def test_prepend_twice_reverse_order():
    a, b, c = tcp_flow(3, False)
    out = gro([c, b, a])
    got = []
    for h, pkt in out:
        got += split(h, pkt) if h.gso_type else [pkt]
    assert got == [a, b, c]


def test_a_head_that_cannot_grow_is_written_as_its_segments_in_order():
    """A head bytearray that something else exports cannot grow: its item's segments are
    written alone, unchanged, in sequence order and in the slots they arrived in (the
    prepended one, which came last, moves to the first slot)."""
    a, b, c = tcp_flow(3, False)
    bufs = [bytearray(b"\xcc" * OFF) + p for p in (b, c, a)]
    with memoryview(bufs[2]):  # a: the item's head once it is prepended
        idx = t.handle_gro(bufs, OFF, t.GroTable())
    assert idx == [0, 1, 2]
    assert [bytes(x[OFF:]) for x in bufs] == [a, b, c]
    assert all(bytes(x[OFF - 10 : OFF]) == ZERO_HDR for x in bufs)


def test_prepend_then_append():
    a, b, c = tcp_flow(3, True)
    out = gro([b, a, c])
    got = []
    for h, pkt in out:
        got += split(h, pkt) if h.gso_type else [pkt]
    assert got == [a, b, c]
    if len(out) == 1:
        check_coalesced(out[0][0], out[0][1], [a, b, c])


def test_fragments_and_extension_headers_are_lossless():
    """IPv6 fragments / extension headers and IPv4 fragments: written back losslessly."""
    from scapy.layers.inet import UDP, fragment
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6

    big6 = IPv6(src=P.SRC6, dst=P.DST6) / IPv6ExtHdrFragment() / UDP() / rand(3000)
    frags6 = [bytes(f) for f in fragment6(big6, 1280)]
    frags4 = [bytes(f) for f in fragment(IP(src=P.SRC4, dst=P.DST4) / UDP() / rand(3000), 1000)]
    ext = [P.with_dest_opts(p) for p in tcp_flow(3, True)]
    pkts = frags6 + frags4 + ext
    out = gro(pkts)
    got = []
    for h, pkt in out:
        got += split(h, pkt) if h.gso_type else [pkt]
    assert got == pkts


def test_non_buffer_entry_changes_nothing():
    pkts = tcp_flow(3)
    bufs = [bytearray(b"\xcc" * OFF) + p for p in pkts] + [b"\0" * 80]
    before = [bytes(b) for b in bufs]
    with pytest.raises((TypeError, ValueError, BufferError)):
        t.handle_gro(bufs, OFF, t.GroTable())
    assert [bytes(b) for b in bufs] == before


def test_non_candidates_get_zero_header():
    from scapy.layers.inet import ICMP

    icmp = bytes(IP(src=P.SRC4, dst=P.DST4) / ICMP() / b"ping")
    junk = bytes(range(1, 40))
    tiny = b"\x45"
    pkts = [icmp, P.tcp_pkt(False, b""), P.udp_pkt(True, b"x")]
    out = gro(pkts)
    assert_untouched(out, pkts)
    # not an IP packet at all: still written unchanged with a zero header
    bufs = [bytearray(b"\xcc" * OFF) + junk, bytearray(b"\xcc" * OFF) + tiny]
    idx = t.handle_gro(bufs, OFF, t.GroTable())
    assert list(idx) == [0, 1]
    assert bytes(bufs[0][OFF - 10 : OFF]) == ZERO_HDR and bytes(bufs[0][OFF:]) == junk
    assert bytes(bufs[1][OFF - 10 : OFF]) == ZERO_HDR and bytes(bufs[1][OFF:]) == tiny


@pytest.mark.parametrize("offset", [10, 11, 12, 64])
def test_offsets(offset):
    pkts = tcp_flow(4, True)
    ((h, pkt),) = gro(pkts, offset=offset)
    check_coalesced(h, pkt, pkts)


def test_empty_list():
    assert list(t.handle_gro([], OFF, t.GroTable())) == []


def test_table_state_does_not_carry_over():
    table = t.GroTable()
    a, b, c, d = tcp_flow(4, False)
    ((h1, p1),) = gro([a, b], table=table)
    check_coalesced(h1, p1, [a, b])
    out = gro([c, d], table=table)
    ((h2, p2),) = out
    check_coalesced(h2, p2, [c, d])
    # a lone continuation in a third call stays alone
    e = tcp_flow(5, False)[4]
    assert_untouched(gro([e], table=table), [e])


# --------------------------------------------------------------------------- refusals


def _mut(pkt: bytes, off: int, val: int) -> bytes:
    b = bytearray(pkt)
    b[off] = val
    return bytes(b)


def _fix4(pkt: bytes) -> bytes:
    b = bytearray(pkt)
    b[10:12] = b"\0\0"
    struct.pack_into("!H", b, 10, P.inet_csum(b[:20]))
    return bytes(b)


def _v4() -> list[bytes]:
    return tcp_flow(2, False)


def _other_second(**kw) -> Callable[[], list[bytes]]:
    """The base v4 flow's first packet, then the second of a flow that differs by ``kw``."""
    return lambda: [_v4()[0], tcp_flow(2, False, **kw)[1]]


def _v6_other_second(**kw) -> Callable[[], list[bytes]]:
    return lambda: [tcp_flow(2, True)[0], tcp_flow(2, True, **kw)[1]]


def _flip(flow: Callable[[], list[bytes]], which: int, off: int, bit: int):
    """A flow with one bit of one packet flipped (a checksum that fails)."""

    def make() -> list[bytes]:
        pkts = flow()
        pkts[which] = _mut(pkts[which], off, pkts[which][off] ^ bit)
        return pkts

    return make


def _both(f: Callable[[bytes], bytes], flow: Callable[[], list[bytes]]):
    return lambda: [f(p) for p in flow()]


_FLAGS = {"syn": P.SYN, "fin": P.FIN, "rst": P.RST, "urg": P.URG, "ece": P.ECE, "cwr": P.CWR}
_OTHER_TS = [("NOP", None), ("NOP", None), ("Timestamp", (0x11223345, 0x55667788))]

# Packets that must NOT be merged (all written unchanged with a zero header): (name, make).
REFUSALS: list[tuple[str, Callable[[], list[bytes]]]] = [
    ("ttl", _other_second(ttl=63)),
    ("tos", _other_second(tos=0x10)),
    ("df", _other_second(df=False)),
    ("hop-limit-v6", _v6_other_second(ttl=63)),
    ("traffic-class-v6", _v6_other_second(tos=0x20)),
    ("traffic-class-low-nibble-v6", _v6_other_second(tos=0x02)),
    ("ack", _other_second(ack=0x01020305)),
    ("ports", _other_second(sport=40001)),
    ("tcp-options-values", _other_second(options=_OTHER_TS)),
    ("tcp-options-length", _other_second(options=TS + [("NOP", None)] * 4)),
    ("tcp-options-vs-none", _other_second(options=())),
    *[
        entry
        for flag, bit in _FLAGS.items()
        for entry in (
            (
                f"{flag}-on-first",
                lambda bit=bit: [tcp_flow(1, False, last=P.ACK | bit)[0], _v4()[1]],
            ),
            (f"{flag}-on-second", _other_second(last=P.ACK | bit)),
        )
    ],
    ("no-ack-flag", lambda: [tcp_flow(1, False, last=0)[0], tcp_flow(2, False, last=0)[1]]),
    ("bad-tcp-csum-second", _flip(_v4, 1, 36, 0x40)),
    ("bad-tcp-csum-first", _flip(_v4, 0, 36, 0x40)),
    ("bad-tcp-csum-v6", _flip(lambda: tcp_flow(2, True), 1, 56, 1)),
    ("bad-udp-csum-second", _flip(lambda: udp_flow(2), 1, 26, 0x40)),
    ("bad-udp-csum-first", _flip(lambda: udp_flow(2), 0, 26, 0x40)),
    ("bad-udp-csum-v6", _flip(lambda: udp_flow(2, True), 1, 46, 1)),
    ("seq-gap", _other_second(seq=1_000_001)),
    ("seq-overlap", _other_second(seq=999_999)),
    ("seq-repeat", lambda: [_v4()[0], _v4()[0]]),
    ("larger-after-smaller-tcp", lambda: tcp_flow(0, sizes=[500, 1000])),
    ("larger-after-smaller-udp", lambda: udp_flow(0, sizes=[500, 1000])),
    ("ipv4-options", lambda: tcp_flow(2, False, ip_options=[IPOption_NOP()] * 4)),
    ("ipv4-options-udp", lambda: udp_flow(2, False, ip_options=[IPOption_NOP()] * 4)),
    ("fragment-mf", _both(lambda p: _fix4(_mut(p, 6, p[6] | 0x20)), _v4)),
    (
        "fragment-offset",
        _both(lambda p: _fix4(_mut(p, 7, 0x10)), lambda: tcp_flow(2, False, df=False)),
    ),
    ("fragment-udp", _both(lambda p: _fix4(_mut(p, 6, p[6] | 0x20)), lambda: udp_flow(2, False))),
    ("zero-payload", lambda: [P.tcp_pkt(False, b"", seq=5), P.tcp_pkt(False, b"", seq=5)]),
    ("ttl-udp", lambda: [udp_flow(1)[0], udp_flow(1, ttl=9)[0]]),
    ("flow-label-v6", _flip(lambda: tcp_flow(2, True), 1, 3, 0x01)),
    ("bad-ipv4-header-csum", _flip(_v4, 1, 11, 0x01)),
]


@pytest.mark.parametrize(("name", "make"), REFUSALS, ids=[n for n, _ in REFUSALS])
def test_refusal(name, make):
    pkts = make()
    assert_untouched(gro(pkts), pkts)


def test_refusal_controls_do_coalesce():
    """The refusal tests' base packets do coalesce: the one difference is what stops them."""
    for pkts in (tcp_flow(2, False), tcp_flow(2, True), udp_flow(2), udp_flow(2, True)):
        assert len(gro(pkts)) == 1


def test_keyword_arguments():
    pkts = udp_flow(3)
    bufs = [bytearray(OFF) + p for p in pkts]
    assert t.handle_gro(bufs=bufs, offset=OFF, table=t.GroTable(), can_udp_gro=False) == [0, 1, 2]
    bufs = [bytearray(OFF) + p for p in pkts]
    assert t.handle_gro(bufs=bufs, offset=OFF, table=t.GroTable(), can_udp_gro=True) == [0]


def test_udp_disabled():
    for v6 in (False, True):
        pkts = udp_flow(3, v6)
        assert_untouched(gro(pkts, can_udp_gro=False), pkts)
    # TCP still coalesces when only UDP GRO is off
    pkts = tcp_flow(3)
    ((h, p),) = gro(pkts, can_udp_gro=False)
    check_coalesced(h, p, pkts)


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_smaller_segment_ends_run(proto):
    sizes = [1000, 500, 500]
    pkts = tcp_flow(0, sizes=sizes) if proto == "tcp" else udp_flow(0, sizes=sizes)
    (h1, p1), (h2, p2) = gro(pkts)
    check_coalesced(h1, p1, pkts[:2])
    assert bytes(h2) == ZERO_HDR and p2 == pkts[2]


def test_psh_ends_run():
    a, _, c = tcp_flow(3)
    b = tcp_flow(2, last=P.ACK | P.PSH)[1]
    (h1, p1), (h2, p2) = gro([a, b, c])
    check_coalesced(h1, p1, [a, b])
    assert bytes(h2) == ZERO_HDR and p2 == c


def test_psh_segment_not_prepended():
    a, b = tcp_flow(2, last=P.ACK)
    a_psh = tcp_flow(1, last=P.ACK | P.PSH)[0]
    assert_untouched(gro([b, a_psh]), [b, a_psh])
    ((h, p),) = gro([b, a])
    check_coalesced(h, p, [a, b])


def test_bad_checksum_in_middle_splits_flow():
    a, b, c = tcp_flow(3)
    bad = _mut(b, 36, b[36] ^ 0x40)
    out = gro([a, bad, c])
    assert_untouched(out, [a, bad, c])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("offset", [0, 1, 9])
def test_offset_too_small(offset):
    pkts = tcp_flow(3)
    bufs = [bytearray(b"\xcc" * offset) + p for p in pkts]
    before = [bytes(b) for b in bufs]
    e = refused(
        lambda: t.handle_gro(bufs, offset, t.GroTable()),
        "offset_too_small",
        f"^offset {offset} leaves no room for the 10-byte virtio header$",
    )
    assert getattr(e, "index", "missing") is None
    assert [bytes(b) for b in bufs] == before


@pytest.mark.parametrize("where", [0, 1, 3])
@pytest.mark.parametrize("short", [0, 5])
def test_buffer_without_packet(where, short):
    """A buffer that ends at (or before) `offset` -> ValueError before any buffer changes."""
    pkts = tcp_flow(3)
    bufs = [bytearray(b"\xcc" * OFF) + p for p in pkts]
    bufs.insert(where, bytearray(b"\xcc" * (OFF - short)))
    before = [bytes(b) for b in bufs]
    ids = [id(b) for b in bufs]
    e = refused(
        lambda: t.handle_gro(bufs, OFF, t.GroTable()),
        "no_packet_after_offset",
        rf"^bufs\[{where}\] holds {OFF - short} bytes: no packet after offset {OFF}$",
    )
    assert getattr(e, "index", None) == where
    assert [bytes(b) for b in bufs] == before
    assert [id(b) for b in bufs] == ids, "list entries swapped although handle_gro failed"


def test_table_usable_after_error():
    table = t.GroTable()
    refused(lambda: t.handle_gro([bytearray(OFF)], OFF, table), "no_packet_after_offset")
    pkts = tcp_flow(3)
    ((h, p),) = gro(pkts, table=table)
    check_coalesced(h, p, pkts)
