"""gso_split: outputs checked field by field with scapy and byte for byte against the
reference model of the kernel (packets.kernel_gso, itself checked against the real kernel by
test_kernel_oracle.py); malformed input must raise ValueError before anything is written."""

from __future__ import annotations

import functools
import random
import struct
from collections.abc import Callable
from typing import NamedTuple

import packets as P
import pytest
import tunoffload as t
from _kinds import refused
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6

TS = [("NOP", None), ("NOP", None), ("Timestamp", (0x11223344, 0x55667788))]
FULL_OPTS = [
    ("MSS", 1460),
    ("SAckOK", b""),
    ("Timestamp", (1, 2)),
    ("NOP", None),
    ("WScale", 7),
    ("SAck", (100, 200)),
    ("SAck", (300, 400)),
]  # 40 bytes
CANARY = 0xA5


def H(h: dict) -> t.VirtioNetHdr:
    return t.VirtioNetHdr(**h)


def split(packet, h: dict, *, n_bufs=None, buf_size=None, out_offset=0, is_v6=None):
    """Run gso_split into canary-filled bytearrays; check nothing outside the segments changed."""
    if n_bufs is None or buf_size is None:
        model = P.kernel_gso(bytes(packet), h)  # only to size the buffers generously
        n_bufs = len(model) + 2 if n_bufs is None else n_bufs
        buf_size = out_offset + max(map(len, model)) + 16 if buf_size is None else buf_size
    out = [bytearray([CANARY]) * buf_size for _ in range(n_bufs)]
    sizes = [0] * n_bufs
    kw = {} if is_v6 is None else {"is_v6": is_v6}
    n = t.gso_split(packet, H(h), out, sizes, out_offset, **kw)
    assert isinstance(n, int) and 1 <= n <= n_bufs
    segs = []
    for i in range(n_bufs):
        if i < n:
            assert 0 < sizes[i] <= buf_size - out_offset
            end = out_offset + sizes[i]
            assert out[i][:out_offset] == bytearray([CANARY]) * out_offset, f"buf {i} head"
            assert out[i][end:] == bytearray([CANARY]) * (buf_size - end), f"buf {i} tail"
            segs.append(bytes(out[i][out_offset:end]))
        else:
            assert out[i] == bytearray([CANARY]) * buf_size, f"unused buf {i} was written"
    return segs


def scapy_check(sup: bytes, h: dict, segs: list[bytes]) -> None:
    """Every field of every segment, independently of the reference model."""
    info = P.l3_info(sup)
    tcp = info.proto == 6
    L = IPv6 if info.v6 else IP
    T = TCP if tcp else UDP
    orig = L(sup)
    cs = h["csum_start"]
    thlen = (sup[cs + 12] >> 4) * 4 if tcp else 8
    payload = sup[cs + thlen :]
    g = h["gso_size"]
    base = h["gso_type"] & ~P.GSO_ECN
    really = base != P.GSO_NONE and len(payload) > g
    n = (len(payload) + g - 1) // g if really else 1
    assert len(segs) == n
    assert b"".join(s[cs + thlen :] for s in segs) == payload
    for i, s in enumerate(segs):
        p = L(s)
        if info.v6:
            assert p.plen == len(s) - 40
            assert (p.tc, p.fl, p.hlim, p.nh) == (orig.tc, orig.fl, orig.hlim, orig.nh)
        else:
            assert p.len == len(s)
            assert p.id == (orig.id + i) & 0xFFFF
            assert (p.ttl, p.tos, p.flags, p.frag, p.proto) == (
                orig.ttl,
                orig.tos,
                orig.flags,
                orig.frag,
                orig.proto,
            )
            assert s[20:cs] == sup[20:cs], "IPv4 options"
            q = IP(s)
            del q.chksum
            assert IP(bytes(q)).chksum == p.chksum, "IPv4 header checksum"
        l4 = p[T]
        if tcp:
            assert l4.seq == (orig[TCP].seq + i * g) & 0xFFFFFFFF
            f = int(orig[TCP].flags)
            if i < n - 1:
                f &= ~(P.FIN | P.PSH)
            if i > 0:
                f &= ~P.CWR
            assert int(l4.flags) == f, (i, int(l4.flags), f)
            # everything else in the TCP header (ports, ack, offset, window, urg, options)
            assert s[cs : cs + 4] == sup[cs : cs + 4]
            assert s[cs + 8 : cs + 13] == sup[cs + 8 : cs + 13]
            assert s[cs + 14 : cs + 16] == sup[cs + 14 : cs + 16]
            assert s[cs + 18 : cs + thlen] == sup[cs + 18 : cs + thlen]
        else:
            assert l4.len == len(s) - cs
            assert s[cs : cs + 4] == sup[cs : cs + 4]
        q = L(s)
        del q[T].chksum
        want = L(bytes(q))[T].chksum
        if want == 0 and not (tcp and really):
            want = 0xFFFF  # UDP, and a completed single segment (skb_checksum_help)
        assert l4.chksum == want, f"segment {i}: checksum {l4.chksum:#06x} != {want:#06x}"


def check(sup: bytes, h: dict, **kw) -> list[bytes]:
    segs = split(sup, h, **kw)
    assert segs == P.kernel_gso(sup, h)
    scapy_check(sup, h, segs)
    return segs


def payload(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


# --------------------------------------------------------------------------- GSO_NONE


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_gso_none_without_needs_csum_is_passthrough(v6, proto):
    build = P.tcp_pkt if proto == "tcp" else P.udp_pkt
    pkt = bytearray(build(v6, payload(777)))
    pkt[-1] ^= 0xFF  # a wrong checksum is not touched without NEEDS_CSUM
    segs = split(bytes(pkt), P.none_hdr())
    assert segs == [bytes(pkt)]


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("n", [0, 1, 2, 1000, 8000])
def test_gso_none_needs_csum_completes_checksum(v6, proto, n):
    build = P.tcp_pkt if proto == "tcp" else P.udp_pkt
    full = build(v6, payload(n, n))
    sup = P.partial_csum(full)
    h = P.none_hdr(sup, needs_csum=True)
    segs = check(sup, h)
    assert segs == [full]  # scapy's own checksum


def test_gso_none_needs_csum_any_offset():
    """NEEDS_CSUM is generic: here an ICMP echo with its checksum at csum_start + 2."""
    full = bytes(IP(src=P.SRC4, dst=P.DST4) / ICMP(id=7, seq=9) / payload(101))
    sup = bytearray(full)
    sup[22:24] = b"\0\0"
    h = dict(P.none_hdr(), flags=P.F_NEEDS_CSUM, csum_start=20, csum_offset=2)
    assert split(bytes(sup), h) == [full]


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_gso_none_needs_csum_zero_becomes_ffff(v6, proto):
    build = P.tcp_pkt if proto == "tcp" else P.udp_pkt
    sup = P.partial_csum(build(v6, payload(301)))
    h = P.none_hdr(sup, needs_csum=True)
    sup = P.craft_zero_csum(sup, h, 0)
    (seg,) = check(sup, h)
    assert seg[h["csum_start"] + h["csum_offset"] :][:2] == b"\xff\xff"


def _fragments(v6: bool) -> list[bytes]:
    from scapy.layers.inet import fragment
    from scapy.layers.inet6 import IPv6ExtHdrFragment, fragment6

    if v6:
        big = IPv6(src=P.SRC6, dst=P.DST6) / IPv6ExtHdrFragment() / UDP() / payload(3000)
        return [bytes(f) for f in fragment6(big, 1280)]
    return [bytes(f) for f in fragment(IP(src=P.SRC4, dst=P.DST4) / UDP() / payload(3000), 1000)]


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_gso_none_ip_fragments_pass_through(v6):
    """TUN reads deliver IP fragments (GSO_NONE, no flags): they pass through unchanged."""
    frags = _fragments(v6)
    assert len(frags) >= 3
    for f in frags:
        assert split(f, P.none_hdr()) == [f]


# --------------------------------------------------------------------------- TCP


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("opts", [(), TS, FULL_OPTS], ids=["noopt", "ts", "40B-opts"])
@pytest.mark.parametrize("plen", [4000, 4001, 3999, 3017, 1001, 65535 - 120])
def test_tcp_split(v6, opts, plen):
    sup, h = P.super_tcp(v6, payload(plen, plen), 1000, options=opts, flags=P.ACK | P.PSH)
    segs = check(sup, h)
    assert len(segs) == (plen + 999) // 1000


@pytest.mark.parametrize(
    "flags",
    [
        P.ACK,
        P.ACK | P.PSH,
        P.ACK | P.FIN,
        P.ACK | P.FIN | P.PSH,
        P.ACK | P.CWR,
        P.ACK | P.CWR | P.ECE | P.URG | P.PSH | P.FIN,
        P.PSH,
        0,
    ],
)
@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_tcp_flags(flags, v6):
    sup, h = P.super_tcp(v6, payload(2500), 1000, flags=flags, urgptr=5 if flags & P.URG else 0)
    segs = check(sup, h)
    fl = [s[h["csum_start"] + 13] for s in segs]
    assert fl[-1] & (P.FIN | P.PSH) == flags & (P.FIN | P.PSH)
    assert all(f & (P.FIN | P.PSH) == 0 for f in fl[:-1])
    assert fl[0] & P.CWR == flags & P.CWR
    assert all(f & P.CWR == 0 for f in fl[1:])


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_tcp_gso_without_needs_csum(v6):
    """Without NEEDS_CSUM the kernel computes the pseudo-header from the addresses."""
    full = P.tcp_pkt(v6, payload(3500), options=TS)
    l4 = 40 if v6 else 20
    odd = bytearray(full)
    odd[l4 + 16 : l4 + 18] = b"\xbe\xef"
    h = dict(P.none_hdr(), gso_type=P.GSO_TCPV6 if v6 else P.GSO_TCPV4, gso_size=1000)
    segs = split(bytes(odd), h)
    assert segs == P.kernel_gso(bytes(odd), h)
    scapy_check(P.partial_csum(full), dict(h, csum_start=l4, csum_offset=16), segs)


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_tcp_ecn_gso_type(v6):
    sup, h = P.super_tcp(v6, payload(3000), 1000, ecn=True, flags=P.ACK | P.CWR | P.ECE)
    assert h["gso_type"] & P.GSO_ECN
    check(sup, h)


def test_ipv4_id_wraps():
    sup, h = P.super_tcp(False, payload(4000), 1000, ip_id=0xFFFE)
    segs = check(sup, h)
    assert [struct.unpack_from("!H", s, 4)[0] for s in segs] == [0xFFFE, 0xFFFF, 0, 1]


@pytest.mark.parametrize("df", [True, False])
def test_ipv4_id_increments_with_and_without_df(df):
    sup, h = P.super_tcp(False, payload(3000), 1000, ip_id=0x1234, df=df)
    segs = check(sup, h)
    assert [struct.unpack_from("!H", s, 4)[0] for s in segs] == [0x1234, 0x1235, 0x1236]


def test_tcp_seq_wraps():
    sup, h = P.super_tcp(True, payload(3000), 1000, seq=0xFFFFFC18)  # 2**32 - 1000
    segs = check(sup, h)
    assert [struct.unpack_from("!I", s, 44)[0] for s in segs] == [0xFFFFFC18, 0, 1000]


def test_ipv4_options():
    from scapy.layers.inet import IPOption_NOP

    sup, h = P.super_tcp(False, payload(2500), 1000, ip_options=[IPOption_NOP()] * 8, options=TS)
    assert h["csum_start"] == 28
    check(sup, h)


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_tcp_gso_size_one(v6):
    sup, h = P.super_tcp(v6, payload(150), 1)
    segs = check(sup, h)
    assert len(segs) == 150


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("seg", [0, 1, 3])
def test_tcp_split_zero_checksum_stays_zero(v6, seg):
    sup, h = P.super_tcp(v6, payload(3500), 1000, options=TS)
    sup = P.craft_zero_csum(sup, h, seg)
    segs = check(sup, h)
    assert segs[seg][h["csum_start"] + 16 :][:2] == b"\0\0"


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("plen", [1, 999, 1000])
def test_not_really_gso_single_segment(v6, proto, plen):
    """payload <= gso_size: one segment, the packet itself with its checksum completed."""
    sup, h = (P.super_tcp if proto == "tcp" else P.super_udp)(v6, payload(plen), 1000, ip_id=77)
    (seg,) = check(sup, h)
    cs = h["csum_start"]
    assert seg[:cs] == sup[:cs]  # IP header untouched (ID, length)
    assert seg == P.complete_csum(sup, cs, h["csum_offset"])


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_not_really_gso_zero_checksum_becomes_ffff(v6):
    sup, h = P.super_tcp(v6, payload(700), 1000)
    sup = P.craft_zero_csum(sup, h, 0)
    (seg,) = check(sup, h)
    assert seg[h["csum_start"] + 16 :][:2] == b"\xff\xff"


# --------------------------------------------------------------------------- UDP


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("plen", [1200 * 3, 1200 * 3 + 1, 1200 * 3 - 1, 1201, 64000])
def test_udp_split(v6, plen):
    sup, h = P.super_udp(v6, payload(plen, plen), 1200)
    assert h["gso_type"] == P.GSO_UDP_L4
    segs = check(sup, h)
    assert len(segs) == (plen + 1199) // 1200


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("seg", [0, 2, 4])
def test_udp_zero_checksum_sent_as_ffff(v6, seg):
    sup, h = P.super_udp(v6, payload(4500, 3), 1000)
    sup = P.craft_zero_csum(sup, h, seg)
    _, raws = P.kernel_gso(sup, h, raw=True)
    assert raws[seg] == 0  # the crafted segment really sums to 0
    segs = check(sup, h)
    assert segs[seg][h["csum_start"] + 6 :][:2] == b"\xff\xff"


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("gso", [True, False], ids=["gso", "gso_none"])
def test_checksum_field_is_adjusted_not_recomputed(v6, proto, gso):
    """The kernel takes the partial sum already in the checksum field (adjusting it for each
    segment's length); it never recomputes the pseudo-header from the addresses."""
    build = P.super_tcp if proto == "tcp" else P.super_udp
    sup, h = build(v6, payload(3500), 1000)
    if not gso:
        h = P.none_hdr(sup, needs_csum=True)
    at = h["csum_start"] + h["csum_offset"]
    odd = bytearray(sup)
    struct.pack_into("!H", odd, at, struct.unpack_from("!H", sup, at)[0] ^ 0x1234)
    odd = bytes(odd)
    segs = split(odd, h)
    assert segs == P.kernel_gso(odd, h)
    proper = P.kernel_gso(sup, h)
    assert len(segs) == len(proper)
    for a, b in zip(segs, proper, strict=True):
        assert a[:at] == b[:at] and a[at + 2 :] == b[at + 2 :]
        assert a[at : at + 2] != b[at : at + 2], "checksum recomputed from the addresses"


# --------------------------------------------------------------------------- hdr_len, buffers


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_hdr_len_is_not_trusted(proto, v6):
    build = P.super_tcp if proto == "tcp" else P.super_udp
    kw = {"options": TS} if proto == "tcp" else {}
    sup, h = build(v6, payload(3500), 1000, **kw)
    good = split(sup, h)
    hl = h["hdr_len"]
    for bogus in (0, 1, hl - 1, hl + 1, hl + 1000, len(sup), 0xFFFF):
        assert split(sup, dict(h, hdr_len=bogus)) == good, bogus


@pytest.mark.parametrize("out_offset", [0, 1, 13, 100])
def test_output_only_in_region(out_offset):
    sup, h = P.super_tcp(False, payload(3333), 1000, options=TS)
    segs = split(sup, h, n_bufs=7, buf_size=out_offset + 1200, out_offset=out_offset)
    assert segs == P.kernel_gso(sup, h)


def test_buffers_exactly_large_enough():
    sup, h = P.super_udp(True, payload(2500), 1000)
    want = P.kernel_gso(sup, h)
    out = [bytearray(5 + len(w)) for w in want]
    sizes = [0] * 3
    assert t.gso_split(sup, H(h), out, sizes, 5) == 3
    assert [bytes(o[5:]) for o in out] == want
    assert sizes == [len(w) for w in want]


def test_memoryview_outputs_with_canaries():
    sup, h = P.super_tcp(True, payload(5000), 1400)
    want = P.kernel_gso(sup, h)
    slot = 1600
    big = bytearray([CANARY]) * (slot * 6 + 64)
    mv = memoryview(big)
    out = [mv[32 + i * slot : 32 + i * slot + 1500] for i in range(6)]
    sizes = [0] * 6
    n = t.gso_split(sup, H(h), out, sizes, 3)
    assert n == len(want) == 4
    expect = bytearray([CANARY]) * len(big)
    for i, w in enumerate(want):
        start = 32 + i * slot + 3
        expect[start : start + len(w)] = w
    assert big == expect


def test_mixed_bytearray_and_memoryview_outputs():
    sup, h = P.super_udp(False, payload(2000), 1000)
    a = bytearray(1100)
    b = memoryview(bytearray(1100))
    sizes = [0, 0, 99]
    assert t.gso_split(sup, H(h), [a, b], sizes) == 2
    assert [bytes(a[: sizes[0]]), bytes(b[: sizes[1]])] == P.kernel_gso(sup, h)


def test_read_only_and_various_inputs():
    sup, h = P.super_tcp(False, payload(2500), 1000)
    want = P.kernel_gso(sup, h)
    ba = bytearray(sup)
    inputs = [
        sup,
        ba,
        memoryview(sup),
        memoryview(ba).toreadonly(),
        memoryview(b"xx" + sup + b"yy")[2:-2],
        type("BytesSubclass", (bytes,), {})(sup),
    ]
    for inp in inputs:
        assert split(inp, h) == want, type(inp)
    assert ba == sup, "the input packet was modified"


def test_is_v6_explicit():
    for v6 in (False, True):
        sup, h = P.super_tcp(v6, payload(2500), 1000)
        assert split(sup, h, is_v6=v6) == split(sup, h, is_v6=None) == P.kernel_gso(sup, h)


def test_keyword_arguments():
    """The parameter names of API.md."""
    sup, h = P.super_udp(True, payload(2500), 1000)
    out = [bytearray(1100) for _ in range(3)]
    sizes = [0] * 3
    n = t.gso_split(packet=sup, hdr=H(h), out_bufs=out, sizes=sizes, out_offset=2, is_v6=True)
    assert n == 3
    assert [bytes(out[i][2 : 2 + sizes[i]]) for i in range(3)] == P.kernel_gso(sup, h)


def test_sizes_longer_than_needed_and_return_value():
    sup, h = P.super_tcp(False, payload(2500), 1000)
    out = [bytearray(1100) for _ in range(10)]
    sizes = [0] * 10
    n = t.gso_split(sup, H(h), out, sizes)
    assert n == 3
    assert sizes[:3] == [len(s) for s in P.kernel_gso(sup, h)]


def test_ipv6_destination_options_header():
    """An IPv6 extension header between the fixed header and TCP (csum_start = 48)."""
    full = P.with_dest_opts(P.tcp_pkt(True, payload(2500), options=TS))
    sup = P.partial_csum(full, l4_off=48, proto=6)
    h = {
        "flags": P.F_NEEDS_CSUM,
        "gso_type": P.GSO_TCPV6,
        "hdr_len": 48 + 32,
        "gso_size": 1000,
        "csum_start": 48,
        "csum_offset": 16,
    }
    segs = split(sup, h)
    assert segs == P.kernel_gso(sup, h)
    for s in segs:
        q = IPv6(s)
        assert q.plen == len(s) - 40
        want = q[TCP].chksum
        del q[TCP].chksum
        assert IPv6(bytes(q))[TCP].chksum == want


@pytest.mark.parametrize("seed_", range(40))
def test_random_cases_match_model(seed_, seed):
    rng = random.Random(seed * 1000 + seed_)
    for _ in range(5):
        case = P.random_case(rng)
        if P.kernel_drops(case):
            refused(
                lambda c=case: split(c.packet, c.hdr), "kernel_would_drop", "the kernel drops it"
            )
            continue
        segs = split(case.packet, case.hdr)
        assert segs == P.kernel_gso(case.packet, case.hdr), case.desc


# --------------------------------------------------------------------------- malformed input


def _base(kind="tcp4"):
    v6 = kind.endswith("6")
    if kind.startswith("tcp"):
        return P.super_tcp(v6, payload(3000), 1000, options=TS)
    return P.super_udp(v6, payload(3000), 1000)


def _set(pkt: bytes, off: int, fmt: str, val) -> bytes:
    b = bytearray(pkt)
    struct.pack_into(fmt, b, off, val)
    return bytes(b)


def _fix_ipv4_csum(pkt: bytes) -> bytes:
    b = bytearray(pkt)
    ihl = (b[0] & 15) * 4
    b[10:12] = b"\0\0"
    struct.pack_into("!H", b, 10, P.inet_csum(b[:ihl]))
    return bytes(b)


class Bases(NamedTuple):
    """The well-formed packets (and headers) the malformed ones are made from."""

    sup: bytes
    h: dict
    sup6: bytes
    h6: dict
    u4: bytes
    hu4: dict
    u6: bytes
    hu6: dict
    none: dict  # GSO_NONE with F_NEEDS_CSUM, for `sup`


@functools.lru_cache(maxsize=1)
def bases() -> Bases:
    sup, h = _base()
    return Bases(
        sup, h, *_base("tcp6"), *_base("udp4"), *_base("udp6"), P.none_hdr(sup, needs_csum=True)
    )


class Bad(NamedTuple):
    """One malformed input: ``make(bases())`` gives (packet, hdr, split kwargs); ``kind``
    is the ValueError's kind; ``kernel`` says the kernel drops it too on this path
    (checked against the kernel by test_kernel_oracle.py)."""

    name: str
    make: Callable[[Bases], tuple[bytes, dict, dict]]
    kind: str
    kernel: bool = False


def _unknown(gso_type: int) -> Callable[[Bases], tuple[bytes, dict, dict]]:
    return lambda b: (b.sup, dict(b.h, gso_type=gso_type), {})


def _tcp_doff_beyond(b: Bases) -> tuple[bytes, dict, dict]:
    small, hs = P.super_tcp(False, payload(10), 1000)
    return small[:32] + bytes([0xF0]) + small[33:], hs, {}


BAD = [
    Bad("empty", lambda b: (b"", b.h, {}), "empty_packet"),
    Bad("empty-gso-none", lambda b: (b"", P.none_hdr(), {}), "empty_packet"),
    Bad("truncated-ip-header", lambda b: (b.sup[:12], b.h, {}), "truncated_ip_header", True),
    Bad("truncated-ipv6-header", lambda b: (b.sup6[:30], b.h6, {}), "truncated_ip_header", True),
    Bad(
        "truncated-tcp-header",  # the checksum field is past the end
        lambda b: (_fix_ipv4_csum(_set(b.sup[:30], 2, "!H", 30)), b.h, {}),
        "csum_offset_out_of_range",
        True,
    ),
    Bad(
        "truncated-in-tcp-options",
        lambda b: (_fix_ipv4_csum(_set(b.sup[:45], 2, "!H", 45)), b.h, {}),
        "bad_tcp_data_offset",
        True,
    ),
    Bad(
        "truncated-udp-header",  # the checksum field is past the end
        lambda b: (_fix_ipv4_csum(_set(b.u4[:25], 2, "!H", 25)), b.hu4, {}),
        "csum_offset_out_of_range",
        True,
    ),
    Bad(
        "ipv6-with-tcpv4",
        lambda b: (b.sup6, dict(b.h6, gso_type=P.GSO_TCPV4), {}),
        "gso_ip_version_mismatch",
        True,
    ),
    Bad(
        "ipv4-with-tcpv6",
        lambda b: (b.sup, dict(b.h, gso_type=P.GSO_TCPV6), {}),
        "gso_ip_version_mismatch",
        True,
    ),
    Bad(
        "udp-with-tcpv4",
        lambda b: (b.u4, dict(b.hu4, gso_type=P.GSO_TCPV4, csum_offset=16), {}),
        "gso_protocol_mismatch",
        True,
    ),
    Bad(
        "tcp-with-udp_l4",
        lambda b: (b.sup, dict(b.h, gso_type=P.GSO_UDP_L4, csum_offset=6), {}),
        "gso_protocol_mismatch",
        True,
    ),
    Bad("is_v6-true-for-ipv4", lambda b: (b.sup, b.h, {"is_v6": True}), "ip_version_mismatch"),
    Bad("is_v6-false-for-ipv6", lambda b: (b.sup6, b.h6, {"is_v6": False}), "ip_version_mismatch"),
    Bad(
        "is_v6-true-for-ipv4-gso-none",
        lambda b: (b.sup, b.none, {"is_v6": True}),
        "ip_version_mismatch",
    ),
    Bad("ip-version-5", lambda b: (bytes([0x55]) + b.sup[1:], b.h, {}), "bad_ip_version", True),
    Bad(
        "ipv4-ihl-4",
        lambda b: (bytes([0x44]) + b.sup[1:], dict(b.h, csum_start=16), {}),
        "bad_ihl",
        True,
    ),
    Bad(
        "tcp-doff-4",
        lambda b: (b.sup[:32] + bytes([0x40 | (b.sup[32] & 15)]) + b.sup[33:], b.h, {}),
        "bad_tcp_data_offset",
        True,
    ),
    Bad(
        "tcp-doff-0",
        lambda b: (b.sup[:32] + bytes([b.sup[32] & 15]) + b.sup[33:], b.h, {}),
        "bad_tcp_data_offset",
        True,
    ),
    Bad("tcp-doff-beyond-packet", _tcp_doff_beyond, "bad_tcp_data_offset"),
    Bad(
        "csum_start-beyond-packet",
        lambda b: (b.sup, dict(b.none, csum_start=len(b.sup) + 1), {}),
        "csum_start_out_of_range",
        True,
    ),
    Bad(
        "csum_offset-beyond-packet",
        lambda b: (b.sup, dict(b.none, csum_offset=len(b.sup)), {}),
        "csum_offset_out_of_range",
        True,
    ),
    Bad(
        "csum-field-straddles-end",
        lambda b: (b.sup, dict(b.none, csum_start=len(b.sup) - 1, csum_offset=0), {}),
        "csum_offset_out_of_range",
        True,
    ),
    Bad(
        "csum_start+offset-overflows-u16-none",
        lambda b: (b.sup, dict(b.none, csum_start=0xFFF0, csum_offset=0x20), {}),
        "csum_start_out_of_range",
        True,
    ),
    Bad(
        "csum_start+offset-overflows-u16-tcpv4",
        lambda b: (b.sup, dict(b.h, csum_start=0xFFF0, csum_offset=0x20), {}),
        "csum_start_out_of_range",
        True,
    ),
    Bad(
        "csum_start-inside-ip-header-v4",
        lambda b: (b.sup, dict(b.h, csum_start=10), {}),
        "csum_start_out_of_range",
        True,
    ),
    Bad(
        "csum_start-inside-ip-header-v6",
        lambda b: (b.sup6, dict(b.h6, csum_start=20), {}),
        "csum_start_out_of_range",
        True,
    ),
    Bad(
        "csum_start-not-transport-header",
        lambda b: (b.sup, dict(b.h, csum_start=24), {}),
        "csum_start_mismatch",
        True,
    ),
    Bad(
        "tcp-csum_offset-not-16",
        lambda b: (b.sup, dict(b.h, csum_offset=6), {}),
        "csum_offset_mismatch",
        True,
    ),
    Bad(
        "udp-csum_offset-not-6",
        lambda b: (b.u4, dict(b.hu4, csum_offset=16), {}),
        "csum_offset_mismatch",
        True,
    ),
    Bad("gso_size-0-tcp", lambda b: (b.sup, dict(b.h, gso_size=0), {}), "gso_size_zero", True),
    Bad("gso_size-0-udp", lambda b: (b.u6, dict(b.hu6, gso_size=0), {}), "gso_size_zero", True),
    Bad(
        "gso_type-udp-ufo",
        lambda b: (b.u4, dict(b.hu4, gso_type=P.GSO_UDP), {}),
        "unsupported_gso_type",
    ),
    Bad("gso_type-unknown-02", _unknown(0x02), "unknown_gso_type", True),
    Bad("gso_type-unknown-06", _unknown(0x06), "unknown_gso_type", True),
    Bad("gso_type-unknown-7f", _unknown(0x7F), "unknown_gso_type", True),
    Bad("gso_type-unknown-83", _unknown(0x83), "unsupported_gso_type", True),  # UFO | ECN
    Bad("gso_type-unknown-80", _unknown(0x80), "ecn_refused", True),
    Bad("gso_type-unknown-85", _unknown(0x85), "ecn_refused", True),
    Bad(
        "ipv4-total-length-too-big",
        lambda b: (_fix_ipv4_csum(_set(b.sup, 2, "!H", len(b.sup) + 1)), b.h, {}),
        "ip_length_mismatch",
        True,
    ),
    Bad(
        "ipv4-total-length-too-small",
        lambda b: (_fix_ipv4_csum(_set(b.sup, 2, "!H", len(b.sup) - 1)), b.h, {}),
        "ip_length_mismatch",
    ),
    Bad(
        "ipv4-total-length-too-small-gso-none",
        lambda b: (_fix_ipv4_csum(_set(b.sup, 2, "!H", len(b.sup) - 1)), b.none, {}),
        "ip_length_mismatch",
    ),
    Bad(
        "ipv6-payload-length-too-big",
        lambda b: (_set(b.sup6, 4, "!H", len(b.sup6) - 40 + 1), b.h6, {}),
        "ip_length_mismatch",
        True,
    ),
    Bad(
        "ipv6-payload-length-too-small",
        lambda b: (_set(b.sup6, 4, "!H", len(b.sup6) - 40 - 1), b.h6, {}),
        "ip_length_mismatch",
    ),
    Bad(
        "udp-length-mismatch",
        lambda b: (_set(b.u4, 24, "!H", len(b.u4) - 20 - 1), b.hu4, {}),
        "udp_length_mismatch",
    ),
    Bad(
        "udp-129-segments",
        lambda b: (*P.super_udp(False, payload(129 * 10), 10), {}),
        "too_many_segments",
        True,
    ),
    Bad(
        "udp_l4-without-needs_csum",
        lambda b: (b.u4, dict(b.hu4, flags=0), {}),
        "missing_needs_csum",
        True,
    ),
    Bad("too-few-out_bufs", lambda b: (b.sup, b.h, {"n_bufs": 2}), "too_few_out_bufs"),
    Bad("no-out_bufs", lambda b: (b.sup, P.none_hdr(), {"n_bufs": 0}), "too_few_out_bufs"),
    Bad(
        "out_buf-too-small",
        lambda b: (b.sup, b.h, {"buf_size": len(P.kernel_gso(b.sup, b.h)[0]) - 1}),
        "out_buf_too_small",
    ),
    Bad(
        "out_buf-too-small-for-offset",
        lambda b: (b.sup, b.h, {"buf_size": 1100, "out_offset": 100}),
        "out_buf_too_small",
    ),
    Bad(
        "out_offset-beyond-buffer",
        lambda b: (b.sup, b.h, {"buf_size": 1100, "out_offset": 5000}),
        "out_buf_too_small",
    ),
    Bad("sizes-too-short", lambda b: (b.sup, b.h, {"sizes_len": 2}), "sizes_too_short"),
    Bad("sizes-empty", lambda b: (b.sup, P.none_hdr(), {"sizes_len": 0}), "sizes_too_short"),
]


@pytest.mark.parametrize("case", BAD, ids=[c.name for c in BAD])
def test_malformed_raises_value_error_before_writing(case):
    pkt, h, kw = case.make(bases())
    kw = dict(kw)
    n_bufs = kw.pop("n_bufs", 8)
    buf_size = kw.pop("buf_size", 4000)
    out_offset = kw.pop("out_offset", 0)
    sizes_len = kw.pop("sizes_len", n_bufs)
    out = [bytearray([CANARY]) * buf_size for _ in range(n_bufs)]
    sizes = [0] * sizes_len
    e = refused(lambda: t.gso_split(pkt, H(h), out, sizes, out_offset, **kw), case.kind)
    assert getattr(e, "index", None) == (0 if case.kind == "out_buf_too_small" else None)
    for i, o in enumerate(out):
        assert o == bytearray([CANARY]) * buf_size, f"out_bufs[{i}] written before raising"
    assert sizes == [0] * sizes_len


@pytest.mark.parametrize("off", [-1, -1000, -(2**70)])
def test_negative_out_offset(off):
    sup, h = _base()
    out = [bytearray([CANARY]) * 4000 for _ in range(4)]
    want = "negative_argument" if off >= -(2**63) else OverflowError
    refused(lambda: t.gso_split(sup, H(h), out, [0] * 4, off), want)
    assert all(o == bytearray([CANARY]) * 4000 for o in out)


def test_read_only_out_buf_rejected():
    sup, h = _base()
    good = bytearray([CANARY]) * 2000
    with pytest.raises((TypeError, BufferError, ValueError)):
        t.gso_split(sup, H(h), [good, bytes(2000), bytearray(2000)], [0] * 3)
    assert good == bytearray([CANARY]) * 2000


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_payload_fitting_only_without_options_is_refused_like_the_kernel(v6):
    """TCP options count as payload in the kernel's "really GSO" test but not when it
    segments: such a packet is dropped by the kernel, and refused here, nothing written."""
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]  # 12 bytes of options
    pkt, h = P.super_tcp(v6, bytes(i % 251 for i in range(1000)), 1005, options=opts)
    out = [bytearray([0x5A]) * 2000 for _ in range(4)]
    refused(
        lambda: t.gso_split(pkt, t.VirtioNetHdr(**h), out, [0] * 4),
        "kernel_would_drop",
        r"GSO_TCPV[46] packet whose 1000-byte payload fits in gso_size 1005 only without its TCP "
        "options: the kernel drops it",
    )
    assert all(o == bytearray([0x5A]) * 2000 for o in out)
    # One byte more of gso_size (payload + options fit) and it is one plain segment.
    pkt, h = P.super_tcp(v6, bytes(i % 251 for i in range(1000)), 1012, options=opts)
    assert t.gso_split(pkt, t.VirtioNetHdr(**h), out, [0] * 4) == 1


@pytest.mark.parametrize(
    "initial",
    [
        lambda n: [0] * n,  # a fresh list
        lambda n: [1448 + 40] * n,  # already holding the common size (identity fast path)
        lambda n: [True, 1.0, "x", None] + [object()] * (n - 4),  # not ints: replaced
        lambda n: [2**70, -1] + [1488] * (n - 2),  # ints that do not fit or differ
    ],
)
def test_sizes_list_is_filled_whatever_it_held(initial):
    """gso_split leaves entries that already hold the size alone and replaces the rest;
    every entry ends up an exact int equal to the segment's length."""
    sup, h = P.super_tcp(False, payload(1448 * 7 + 100), 1448)
    want = [len(s) for s in P.kernel_gso(sup, h)]
    out = [bytearray(1600) for _ in range(len(want))]
    sizes = initial(len(want)) + ["tail"]
    for _ in range(2):  # the second call finds the list already filled
        assert t.gso_split(sup, H(h), out, sizes) == len(want)
        assert sizes[:-1] == want
        assert all(type(v) is int for v in sizes[:-1])
        assert sizes[-1] == "tail"


def test_sizes_entry_whose_release_shrinks_the_list():
    """Replacing an entry drops the old object, which may run Python code; a list emptied
    that way is reported, not written past."""
    sup, h = P.super_tcp(False, payload(1448 * 4), 1448)
    sizes: list = []

    class Shrinks:
        def __del__(self):
            sizes.clear()

    sizes.extend([Shrinks()] + [0] * 5)
    out = [bytearray(1600) for _ in range(4)]
    refused(lambda: t.gso_split(sup, H(h), out, sizes), "sizes_changed", "sizes was shortened")
    assert sizes == []


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview, lambda b: memoryview(b)[0:]])
def test_packet_of_any_bytes_like_type(kind):
    """The packet is read in place whatever its type (bytes without an export)."""
    sup, h = P.super_udp(True, payload(3000), 1000)
    assert split(kind(sup), h) == P.kernel_gso(sup, h)


def test_bytes_packet_is_not_kept_alive_or_leaked():
    """A bytes packet is referenced only during the call."""
    import sys

    sup, h = P.super_tcp(False, payload(3000), 1000)
    packet = bytes(sup)
    before = sys.getrefcount(packet)
    out = [bytearray(1100) for _ in range(3)]
    for _ in range(100):
        t.gso_split(packet, H(h), out, [0] * 3)
    assert sys.getrefcount(packet) == before
