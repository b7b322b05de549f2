"""Property tests (hypothesis) of the engine's Python entry points.

- Arbitrary bytes and header fields never crash ``VirtioNetHdr.decode``, ``gso_split`` or
  ``handle_gro``: only ``ValueError`` / ``TypeError`` / ``OverflowError`` come out.
- Valid flows round trip: ``handle_gro`` then ``gso_split`` of each written packet gives
  back the original packets (but the IPv4 ID, which the kernel renumbers too).
- Every coalesced packet carries the right IP length, IPv4 header checksum, UDP length
  and partial (pseudo-header) checksum, and is at most 65535 bytes.
- Segments that differ in a header field the kernel's GRO compares never merge
  (regression: the TCP window and reserved bits were not compared).

Packets are built with struct here (scapy is too slow for hundreds of examples).
Examples are bounded (``max_examples``) so the file runs in a few seconds.
"""

from __future__ import annotations

import struct

import packets as P
import pytest
import tunoffload as t
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ALLOWED = (ValueError, TypeError, OverflowError)
FAST = settings(
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
SLOW = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)

SRC4, DST4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
SRC6, DST6 = bytes.fromhex("fd00" + "00" * 13 + "01"), bytes.fromhex("fd00" + "00" * 13 + "02")


def build(
    v6: bool,
    udp: bool,
    payload: bytes,
    *,
    seq: int = 0,
    ack: int = 1,
    flags: int = P.ACK,
    window: int = 502,
    ttl: int = 64,
    tos: int = 0,
    ip_id: int = 0,
    sport: int = 40000,
    dport: int = 5201,
    options: bytes = b"",
    reserved: int = 0,
) -> bytes:
    """A TCP or UDP packet with correct lengths and checksums."""
    if udp:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        at = 6
    else:
        doff = (20 + len(options)) // 4
        l4 = (
            struct.pack(
                "!HHIIBBHHH", sport, dport, seq, ack, doff << 4 | reserved, flags, window, 0, 0
            )
            + options
            + payload
        )
        at = 16
    proto = 17 if udp else 6
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    c = P.inet_csum(l4, P.pseudo_sum(src, dst, proto, len(l4)))
    if udp and c == 0:
        c = 0xFFFF
    l4 = l4[:at] + struct.pack("!H", c) + l4[at + 2 :]
    if v6:
        ip = struct.pack("!IHBB", 6 << 28 | tos << 20, len(l4), proto, ttl) + src + dst
    else:
        ip = struct.pack("!BBHHHBBH", 0x45, tos, 20 + len(l4), ip_id, 0x4000, ttl, proto, 0)
        ip += src + dst
        ip = ip[:10] + struct.pack("!H", P.inet_csum(ip)) + ip[12:]
    return ip + l4


def normalize(pkt: bytes) -> bytes:
    """Zero the IPv4 ID and header checksum (the kernel's segmentation renumbers IDs)."""
    b = bytearray(pkt)
    if b[0] >> 4 == 4:
        b[4:6] = b"\0\0"
        b[10:12] = b"\0\0"
    return bytes(b)


def split_back(buf: bytearray, offset: int) -> list[bytes]:
    """The packets a buffer written by handle_gro stands for (itself, or its segments)."""
    hdr = t.VirtioNetHdr.decode(buf[offset - 10 : offset])
    pkt = bytes(buf[offset:])
    if hdr.gso_type == t.VIRTIO_NET_HDR_GSO_NONE:
        return [pkt]
    n = len(pkt) // max(hdr.gso_size, 1) + 2
    out = [bytearray(hdr.hdr_len + hdr.gso_size) for _ in range(n)]
    sizes = [0] * n
    k = t.gso_split(pkt, hdr, out, sizes)
    return [bytes(out[i][: sizes[i]]) for i in range(k)]


def check_coalesced(buf: bytearray, offset: int) -> None:
    """A coalesced packet's lengths, checksums and virtio header are right."""
    hdr = t.VirtioNetHdr.decode(buf[offset - 10 : offset])
    pkt = bytes(buf[offset:])
    assert 0 < len(pkt) <= 65535
    if hdr.gso_type == t.VIRTIO_NET_HDR_GSO_NONE:
        assert hdr == t.VirtioNetHdr()
        return
    info = P.l3_info(pkt)
    assert hdr.flags == t.VIRTIO_NET_HDR_F_NEEDS_CSUM
    assert hdr.csum_start == info.l4_off
    if info.v6:
        assert struct.unpack_from("!H", pkt, 4)[0] == len(pkt) - 40
    else:
        assert struct.unpack_from("!H", pkt, 2)[0] == len(pkt)
        assert P.ones_sum(pkt[:20]) == 0xFFFF, "IPv4 header checksum"
    l4_len = len(pkt) - info.l4_off
    if info.proto == 17:
        assert hdr.gso_type == t.VIRTIO_NET_HDR_GSO_UDP_L4 and hdr.csum_offset == 6
        assert struct.unpack_from("!H", pkt, info.l4_off + 4)[0] == l4_len
    else:
        want = t.VIRTIO_NET_HDR_GSO_TCPV6 if info.v6 else t.VIRTIO_NET_HDR_GSO_TCPV4
        assert hdr.gso_type == want and hdr.csum_offset == 16
    field = struct.unpack_from("!H", pkt, hdr.csum_start + hdr.csum_offset)[0]
    assert field == P.pseudo_sum(info.src, info.dst, info.proto, l4_len), "partial checksum"


# --- arbitrary input never crashes -------------------------------------------------------

hdr_fields = st.fixed_dictionaries(
    {
        "flags": st.integers(0, 255),
        "gso_type": st.sampled_from([0, 1, 3, 4, 5, 0x81, 0x84, 0x85, 0x80, 2, 255]),
        "hdr_len": st.integers(0, 65535),
        "gso_size": st.one_of(st.integers(0, 65535), st.sampled_from([1, 100, 1448])),
        "csum_start": st.one_of(st.integers(0, 65535), st.sampled_from([20, 40, 60])),
        "csum_offset": st.one_of(st.integers(0, 65535), st.sampled_from([6, 16])),
    }
)


@FAST
@given(st.binary(max_size=64))
def test_decode_arbitrary_bytes(raw):
    if len(raw) < 10:
        with pytest.raises(ValueError):
            t.VirtioNetHdr.decode(raw)
        return
    h = t.VirtioNetHdr.decode(raw)
    assert bytes(h) == raw[:10]
    assert t.VirtioNetHdr.decode(bytes(h)) == h


@FAST
@given(
    packet=st.one_of(
        st.binary(max_size=300),
        # Bytes behind a plausible IP first byte reach the deeper checks.
        st.builds(
            lambda b, first: bytes([first]) + b,
            st.binary(max_size=300),
            st.sampled_from([0x45, 0x46, 0x60]),
        ),
    ),
    hdr=hdr_fields,
    n_out=st.integers(0, 5),
    out_size=st.sampled_from([0, 20, 400, 2000]),
    out_offset=st.sampled_from([0, 1, 10, 2000]),
    is_v6=st.sampled_from([None, True, False]),
)
def test_gso_split_arbitrary_bytes(packet, hdr, n_out, out_size, out_offset, is_v6):
    outs = [bytearray(b"\x5c" * out_size) for _ in range(n_out)]
    sizes = [0] * n_out
    try:
        n = t.gso_split(packet, t.VirtioNetHdr(**hdr), outs, sizes, out_offset, is_v6)
    except ALLOWED:
        assert all(o == bytearray(b"\x5c" * out_size) for o in outs), "written before raising"
        return
    assert 1 <= n <= n_out
    assert all(out_offset + sizes[i] <= out_size for i in range(n))


@FAST
@given(
    pkts=st.lists(
        st.one_of(
            st.binary(min_size=0, max_size=120),
            st.builds(
                lambda b, first: bytes([first]) + b,
                st.binary(max_size=120),
                st.sampled_from([0x45, 0x60]),
            ),
        ),
        max_size=12,
    ),
    offset=st.integers(0, 16),
    can_udp_gro=st.booleans(),
)
def test_handle_gro_arbitrary_bytes(pkts, offset, can_udp_gro):
    bufs = [bytearray(b"\xee" * offset) + p for p in pkts]
    before = [bytes(b) for b in bufs]
    try:
        idx = t.handle_gro(bufs, offset, t.GroTable(), can_udp_gro)
    except ALLOWED:
        assert [bytes(b) for b in bufs] == before, "changed before raising"
        return
    assert offset >= 10 and all(len(p) > 0 for p in pkts)
    assert idx == sorted(set(idx))
    # Arbitrary bytes rarely coalesce; whatever is written is what came in, or splits
    # back into it.
    got = sorted(normalize(s) for i in idx for s in split_back(bufs[i], offset))
    assert got == sorted(normalize(p) for p in pkts)


# --- valid flows round trip --------------------------------------------------------------


@st.composite
def flows(draw):
    """Interleaved in-order flows: TCP/UDP over IPv4/IPv6, MSS-sized segments with a
    possibly shorter last one, varied TTL/TOS/options/window/PSH."""
    n_flows = draw(st.integers(1, 4))
    specs = []
    for k in range(n_flows):
        udp = draw(st.booleans())
        specs.append(
            {
                "v6": draw(st.booleans()),
                "udp": udp,
                "mss": draw(st.sampled_from([1, 7, 100, 536, 1200, 1448])),
                "n": draw(st.integers(1, 12)),
                "ttl": draw(st.sampled_from([1, 64, 255])),
                "tos": draw(st.sampled_from([0, 0x10, 0xB8])),
                "window": draw(st.integers(0, 65535)),
                "options": b""
                if udp
                else draw(st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(8)])),
                "seq": draw(st.integers(0, 2**32 - 1)),
                "sport": 1000 + k,
                "short_last": draw(st.booleans()),
                "psh_last": draw(st.booleans()),
            }
        )
    order = draw(st.permutations([k for k, s in enumerate(specs) for _ in range(s["n"])]))
    fill = draw(st.integers(0, 255))
    made = [0] * n_flows
    seqs = [s["seq"] for s in specs]
    pkts = []
    for k in order:
        s = specs[k]
        i = made[k]
        made[k] += 1
        last = made[k] == s["n"]
        size = s["mss"] if not (last and s["short_last"]) else max(1, s["mss"] // 2)
        payload = bytes((fill + i * 7 + j) & 0xFF for j in range(size))
        flags = P.ACK | (P.PSH if last and s["psh_last"] else 0)
        pkts.append(
            build(
                s["v6"],
                s["udp"],
                payload,
                seq=seqs[k],
                flags=flags,
                window=s["window"],
                ttl=s["ttl"],
                tos=s["tos"],
                ip_id=i,
                sport=s["sport"],
                options=s["options"],
            )
        )
        seqs[k] = (seqs[k] + size) & 0xFFFFFFFF
    return pkts


@SLOW
@given(pkts=flows(), offset=st.sampled_from([10, 12, 64]), can_udp_gro=st.booleans())
def test_valid_flows_round_trip(pkts, offset, can_udp_gro):
    bufs = [bytearray(offset) + p for p in pkts]
    idx = t.handle_gro(bufs, offset, t.GroTable(), can_udp_gro)
    got = sorted(normalize(s) for i in idx for s in split_back(bufs[i], offset))
    assert got == sorted(normalize(p) for p in pkts)
    for i in idx:
        check_coalesced(bufs[i], offset)


@SLOW
@given(
    v6=st.booleans(),
    udp=st.booleans(),
    mss=st.sampled_from([1, 100, 1448, 8000]),
    n=st.integers(2, 128),
    window=st.integers(0, 65535),
)
def test_single_flow_coalesces_within_limits(v6, udp, mss, n, window):
    seq = 7
    pkts = []
    for i in range(n):
        pkts.append(build(v6, udp, bytes([i & 0xFF]) * mss, seq=seq, window=window, ip_id=i))
        seq += mss
    bufs = [bytearray(10) + p for p in pkts]
    idx = t.handle_gro(bufs, 10, t.GroTable(), True)
    assert len(idx) < n, "an in-order flow of full segments did not coalesce"
    total = 0
    for i in idx:
        check_coalesced(bufs[i], 10)
        segs = split_back(bufs[i], 10)
        if udp:
            assert len(segs) <= t.UDP_MAX_SEGMENTS
        total += len(segs)
    assert total == n
    got = [normalize(s) for i in idx for s in split_back(bufs[i], 10)]
    assert got == [normalize(p) for p in pkts], "payload order changed"


# --- what the kernel's GRO compares never merges -----------------------------------------


@pytest.mark.parametrize(
    "field,value",
    [
        ("window", 1000),
        ("reserved", 1),  # TCP reserved bits (AccECN's AE flag)
        ("ttl", 63),
        ("tos", 0x10),
        ("ack", 2),
        ("options", b"\x01\x01\x01\x01"),
        ("flags", P.ACK | P.FIN),
    ],
)
@pytest.mark.parametrize("v6", [False, True])
def test_differing_headers_never_merge(field, value, v6):
    a = build(v6, False, b"a" * 100, seq=1000)
    b = build(v6, False, b"b" * 100, seq=1100, **{field: value})
    bufs = [bytearray(10) + a, bytearray(10) + b]
    assert t.handle_gro(bufs, 10, t.GroTable()) == [0, 1], f"{field} differs but merged"
    assert bytes(bufs[0][10:]) == a and bytes(bufs[1][10:]) == b
    same = [bytearray(10) + a, bytearray(10) + build(v6, False, b"b" * 100, seq=1100)]
    assert t.handle_gro(same, 10, t.GroTable()) == [0], "the control pair did not merge"
