"""Packet builders (scapy) and a reference model of Linux software GSO, shared by the tests.

Nothing here imports tunoffload: the builders make packets the way the kernel hands them to a
TUN reader (super-packets carry the folded, non-complemented pseudo-header sum for the FULL L4
length in their transport checksum field), and ``kernel_gso`` predicts what the kernel's own
segmentation (tcp_gso_segment / __udp_gso_segment / skb_checksum_help) makes of them.  The
kernel-oracle test checks this model against the real kernel, so the expectations used by
test_gso.py are themselves verified.
"""

from __future__ import annotations

import array
import random
import struct
import sys
from dataclasses import dataclass, field

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop

VIRTIO_NET_HDR_LEN = 10
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4, GSO_ECN = 0, 1, 3, 4, 5, 0x80
F_NEEDS_CSUM, F_DATA_VALID = 1, 2

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

SRC4, DST4 = "10.11.0.2", "10.12.0.2"
SRC6, DST6 = "fd11::2", "fd12::2"

HDR_FIELDS = ("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset")

# Lines that conftest.py's terminal-summary hook prints at the end of the run.
REPORT_LINES: list[str] = []


# --------------------------------------------------------------------------- checksums


def ones_sum(data: bytes | bytearray | memoryview, init: int = 0) -> int:
    """Folded 16-bit one's-complement sum (NOT complemented) of big-endian words."""
    data = bytes(data)
    if len(data) & 1:
        data += b"\0"
    words = array.array("H", data)
    if sys.byteorder == "little":
        words.byteswap()
    s = init + sum(words)
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def inet_csum(data: bytes | bytearray | memoryview, init: int = 0) -> int:
    """The Internet checksum (complemented one's-complement sum)."""
    return ~ones_sum(data, init) & 0xFFFF


@dataclass
class L3:
    v6: bool
    l4_off: int  # offset of the transport header
    proto: int
    src: bytes
    dst: bytes


def l3_info(pkt: bytes | bytearray) -> L3:
    """IPv4 (with options) or IPv6 (without extension headers) header facts."""
    pkt = bytes(pkt)
    if pkt[0] >> 4 == 4:
        return L3(False, (pkt[0] & 15) * 4, pkt[9], pkt[12:16], pkt[16:20])
    if pkt[0] >> 4 == 6:
        return L3(True, 40, pkt[6], pkt[8:24], pkt[24:40])
    raise ValueError("not an IP packet")


def pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Folded, non-complemented pseudo-header sum, as the kernel leaves it for CHECKSUM_PARTIAL."""
    if len(src) == 4:
        extra = struct.pack("!BBH", 0, proto, length)
    else:
        extra = struct.pack("!I3xB", length, proto)
    return ones_sum(src + dst + extra)


def _as_bytes(pkt) -> bytes:
    return bytes(pkt)


def partial_csum(pkt, l4_off: int | None = None, proto: int | None = None) -> bytes:
    """Put the pseudo-header sum for the full L4 length into the transport checksum field.

    That is what a CHECKSUM_PARTIAL (super-)packet read from a TUN device carries.
    """
    b = bytearray(_as_bytes(pkt))
    info = l3_info(b)
    off = info.l4_off if l4_off is None else l4_off
    pr = info.proto if proto is None else proto
    where = off + (16 if pr == 6 else 6)
    struct.pack_into("!H", b, where, pseudo_sum(info.src, info.dst, pr, len(b) - off))
    return bytes(b)


def complete_csum(pkt: bytes, csum_start: int, csum_offset: int) -> bytes:
    """skb_checksum_help: sum [csum_start, end) including the field; 0 is written as 0xFFFF."""
    b = bytearray(pkt)
    c = inet_csum(b[csum_start:]) or 0xFFFF
    struct.pack_into("!H", b, csum_start + csum_offset, c)
    return bytes(b)


# --------------------------------------------------------------------------- builders


def _ip(
    v6: bool, *, ttl=64, tos=0, df=True, ip_id=0x1234, ip_options=None, src=None, dst=None, fl=0
):
    if v6:
        return IPv6(src=src or SRC6, dst=dst or DST6, hlim=ttl, tc=tos, fl=fl)
    kw = {}
    if ip_options:
        kw["options"] = ip_options
    return IP(
        src=src or SRC4, dst=dst or DST4, ttl=ttl, tos=tos, id=ip_id, flags=2 if df else 0, **kw
    )


def tcp_pkt(
    v6: bool = False,
    payload: bytes = b"",
    *,
    seq: int = 1000,
    ack: int = 0x01020304,
    flags: int = ACK,
    sport: int = 40000,
    dport: int = 5201,
    options=(),
    window: int = 502,
    urgptr: int = 0,
    dataofs: int | None = None,
    **ipkw,
) -> bytes:
    """A TCP packet with a correct, complete checksum."""
    kw = {}
    if dataofs is not None:
        kw["dataofs"] = dataofs
    t = TCP(
        sport=sport,
        dport=dport,
        seq=seq & 0xFFFFFFFF,
        ack=ack,
        flags=flags,
        window=window,
        urgptr=urgptr,
        options=list(options),
        **kw,
    )
    return bytes(_ip(v6, **ipkw) / t / payload) if payload else bytes(_ip(v6, **ipkw) / t)


def udp_pkt(
    v6: bool = False, payload: bytes = b"", *, sport: int = 40001, dport: int = 4789, **ipkw
) -> bytes:
    """A UDP packet with a correct checksum (0 computed is sent as 0xFFFF, as scapy does)."""
    u = UDP(sport=sport, dport=dport)
    return bytes(_ip(v6, **ipkw) / u / payload) if payload else bytes(_ip(v6, **ipkw) / u)


def gso_hdr(pkt: bytes, gso_size: int, *, ecn: bool = False, hdr_len: int | None = None) -> dict:
    """The virtio header fields the kernel would give `pkt` as a GSO super-packet."""
    info = l3_info(pkt)
    if info.proto == 6:
        thlen = (pkt[info.l4_off + 12] >> 4) * 4
        gso_type = GSO_TCPV6 if info.v6 else GSO_TCPV4
        if ecn:
            gso_type |= GSO_ECN
        coff = 16
    else:
        thlen = 8
        gso_type = GSO_UDP_L4
        coff = 6
    return {
        "flags": F_NEEDS_CSUM,
        "gso_type": gso_type,
        "hdr_len": info.l4_off + thlen if hdr_len is None else hdr_len,
        "gso_size": gso_size,
        "csum_start": info.l4_off,
        "csum_offset": coff,
    }


def none_hdr(pkt: bytes | None = None, needs_csum: bool = False) -> dict:
    h = dict.fromkeys(HDR_FIELDS, 0)
    if needs_csum:
        assert pkt is not None
        info = l3_info(pkt)
        h["flags"] = F_NEEDS_CSUM
        h["csum_start"] = info.l4_off
        h["csum_offset"] = 16 if info.proto == 6 else 6
    return h


def super_tcp(v6: bool, payload: bytes, gso_size: int, *, ecn=False, **kw) -> tuple[bytes, dict]:
    p = partial_csum(tcp_pkt(v6, payload, **kw))
    return p, gso_hdr(p, gso_size, ecn=ecn)


def super_udp(v6: bool, payload: bytes, gso_size: int, **kw) -> tuple[bytes, dict]:
    p = partial_csum(udp_pkt(v6, payload, **kw))
    return p, gso_hdr(p, gso_size)


def hdr_bytes(h: dict) -> bytes:
    """The 10-byte virtio_net_hdr in native byte order, as TUN reads/writes it."""
    return struct.pack("=BBHHHH", *(h[k] for k in HDR_FIELDS))


# --------------------------------------------------------------------------- kernel model


def kernel_gso(pkt: bytes, h: dict, raw: bool = False) -> list:
    """What Linux software GSO (+ skb_checksum_help) makes of `pkt` with virtio header `h`.

    Only for well-formed input.  With raw=True returns (segments, computed checksums before the
    UDP/single-segment 0 -> 0xFFFF mapping) for crafting zero-checksum cases.
    """
    pkt = bytes(pkt)
    base = h["gso_type"] & ~GSO_ECN
    cs, co = h["csum_start"], h["csum_offset"]
    if base == GSO_NONE:
        if h["flags"] & F_NEEDS_CSUM:
            raw_c = inet_csum(pkt[cs:])
            out = [complete_csum(pkt, cs, co)]
            return (out, [raw_c]) if raw else out
        return ([pkt], [None]) if raw else [pkt]
    info = l3_info(pkt)
    tcp = base in (GSO_TCPV4, GSO_TCPV6)
    needs = bool(h["flags"] & F_NEEDS_CSUM)
    if not needs:
        # TCP GSO without NEEDS_CSUM: tcp4/6_gso_segment recomputes the pseudo-header sum from
        # the addresses (and a packet that is not really GSO passes unchanged).
        cs, co = info.l4_off, 16
        b = bytearray(pkt)
        struct.pack_into("!H", b, cs + co, pseudo_sum(info.src, info.dst, 6, len(b) - cs))
        thlen = (pkt[cs + 12] >> 4) * 4
        if len(pkt) - cs - thlen <= h["gso_size"]:
            return ([pkt], [None]) if raw else [pkt]
        return kernel_gso(bytes(b), dict(h, flags=F_NEEDS_CSUM, csum_start=cs, csum_offset=co), raw)
    g = h["gso_size"]
    thlen = (pkt[cs + 12] >> 4) * 4 if tcp else 8
    hl = cs + thlen
    payload = pkt[hl:]
    # virtio_net_hdr_to_skb: "Too small packets are not really GSO ones" (it measures from
    # csum_start + sizeof(tcphdr/udphdr)); such a packet only gets its checksum completed.
    if len(pkt) - (cs + (20 if tcp else 8)) <= g or len(payload) <= g:
        raw_c = inet_csum(pkt[cs:])
        out = [complete_csum(pkt, cs, co)]
        return (out, [raw_c]) if raw else out
    full_l4 = len(pkt) - cs
    psum = struct.unpack_from("!H", pkt, cs + co)[0]
    n = (len(payload) + g - 1) // g
    ip_id = struct.unpack_from("!H", pkt, 4)[0]
    seq = struct.unpack_from("!I", pkt, cs + 4)[0] if tcp else 0
    segs, raws = [], []
    for i in range(n):
        seg = bytearray(pkt[:hl] + payload[i * g : (i + 1) * g])
        if info.v6:
            struct.pack_into("!H", seg, 4, len(seg) - 40)
        else:
            struct.pack_into("!HH", seg, 2, len(seg), (ip_id + i) & 0xFFFF)
            seg[10:12] = b"\0\0"
            struct.pack_into("!H", seg, 10, inet_csum(seg[:cs]))
        if tcp:
            struct.pack_into("!I", seg, cs + 4, (seq + i * g) & 0xFFFFFFFF)
            if i < n - 1:
                seg[cs + 13] &= ~(FIN | PSH) & 0xFF
            if i > 0:
                seg[cs + 13] &= ~CWR & 0xFF
        else:
            struct.pack_into("!H", seg, cs + 4, len(seg) - cs)
        # the partial sum adjusted for this segment's L4 length (one's-complement arithmetic)
        init = ones_sum(b"", psum + (~full_l4 & 0xFFFF) + (len(seg) - cs))
        struct.pack_into("!H", seg, cs + co, init)
        c = inet_csum(seg[cs:])
        raws.append(c)
        if not tcp and c == 0:
            c = 0xFFFF
        struct.pack_into("!H", seg, cs + co, c)
        segs.append(bytes(seg))
    return (segs, raws) if raw else segs


def craft_zero_csum(pkt: bytes, h: dict, seg_index: int) -> bytes | None:
    """Change two payload bytes of super-packet `pkt` so that segment `seg_index` checksums to 0.

    Returns None when the segment has no aligned payload word to adjust.
    """
    base = h["gso_type"] & ~GSO_ECN
    cs = h["csum_start"]
    tcp = base in (GSO_TCPV4, GSO_TCPV6) or (base == GSO_NONE and h["csum_offset"] == 16)
    thlen = (pkt[cs + 12] >> 4) * 4 if tcp else 8
    hl = cs + thlen
    segs = kernel_gso(pkt, h)
    if seg_index >= len(segs):
        return None
    if len(segs) == 1:
        start, dlen = hl, len(pkt) - hl
    else:
        start, dlen = hl + seg_index * h["gso_size"], len(segs[seg_index]) - hl
    j = dlen - 2 if dlen % 2 == 0 else dlen - 3  # an even offset from the L4 header
    if j < 0:
        return None
    b = bytearray(pkt)
    b[start + j : start + j + 2] = b"\0\0"
    _, raws = kernel_gso(bytes(b), h, raw=True)
    struct.pack_into("!H", b, start + j, raws[seg_index])
    _, raws = kernel_gso(bytes(b), h, raw=True)
    assert raws[seg_index] == 0, "crafting failed"
    return bytes(b)


# --------------------------------------------------------------------------- random cases


@dataclass
class Case:
    desc: str
    packet: bytes
    hdr: dict
    v6: bool


def random_tcp_options(rng: random.Random) -> list:
    opts: list = []
    size = 0
    choices = [
        (("MSS", 1460), 4),
        (("WScale", 7), 3),
        (("SAckOK", b""), 2),
        (("Timestamp", (rng.getrandbits(32), rng.getrandbits(32))), 10),
        (("NOP", None), 1),
        (("SAck", (rng.getrandbits(32), rng.getrandbits(32))), 10),
    ]
    for _ in range(rng.randint(1, 6)):
        opt, n = rng.choice(choices)
        if size + n > 40:
            break
        opts.append(opt)
        size += n
    return opts


def normalize_forwarded(pkt: bytes) -> bytes:
    """Zero what forwarding legitimately changes: TTL/hop limit and the IPv4 header checksum."""
    b = bytearray(pkt)
    if b and b[0] >> 4 == 4:
        b[8] = 0
        b[10:12] = b"\0\0"
    elif b and b[0] >> 4 == 6:
        b[7] = 0
    return bytes(b)


def rand_bytes(rng: random.Random, n: int) -> bytes:
    return rng.getrandbits(8 * n).to_bytes(n, "big") if n else b""


def random_case(rng: random.Random, mtu: int = 9000, max_segs: int = 64) -> Case:
    """A random well-formed super-packet (or GSO_NONE packet) and its virtio header."""
    v6 = rng.random() < 0.5
    kind = rng.choices(["tcp", "udp", "none"], weights=[50, 35, 15])[0]
    is_tcp = kind == "tcp" or (kind == "none" and rng.random() < 0.5)
    ipkw: dict = {"ttl": rng.randint(2, 255), "tos": rng.randint(0, 255)}
    notes = []
    if v6:
        ipkw["fl"] = rng.getrandbits(20)
    else:
        ipkw["df"] = rng.random() < 0.5
        r = rng.random()
        ipkw["ip_id"] = (
            rng.randint(0xFFF0, 0xFFFF) if r < 0.2 else 0 if r < 0.25 else rng.getrandbits(16)
        )
        if rng.random() < 0.1:
            ipkw["ip_options"] = [IPOption_NOP()] * rng.choice([4, 8])
            notes.append("ipopts")
    tkw: dict = {}
    thlen = 8
    if is_tcp:
        if rng.random() < 0.6:
            tkw["options"] = random_tcp_options(rng)
        f = ACK if rng.random() < 0.9 else 0
        for flag, p in ((FIN, 0.2), (PSH, 0.4), (CWR, 0.2), (URG, 0.1), (ECE, 0.15)):
            if rng.random() < p:
                f |= flag
        tkw["flags"] = f
        tkw["seq"] = (
            rng.getrandbits(32) if rng.random() < 0.7 else 0xFFFFFFFF - rng.randint(0, 3000)
        )
        tkw["ack"] = rng.getrandbits(32)
        tkw["window"] = rng.getrandbits(16)
        if f & URG:
            tkw["urgptr"] = rng.getrandbits(16)
        tkw["sport"], tkw["dport"] = rng.randint(1, 65535), rng.randint(1, 65535)
        probe = tcp_pkt(v6, b"", **tkw, **ipkw)
        l4 = l3_info(probe).l4_off
        thlen = (probe[l4 + 12] >> 4) * 4
    else:
        tkw["sport"], tkw["dport"] = rng.randint(1, 65535), rng.randint(1, 65535)
        l4 = l3_info(udp_pkt(v6, b"", **tkw, **ipkw)).l4_off
    hl = l4 + thlen

    if kind == "none":
        plen = rng.randint(0, mtu - hl - 8)
        payload = rand_bytes(rng, plen)
        pkt = tcp_pkt(v6, payload, **tkw, **ipkw) if is_tcp else udp_pkt(v6, payload, **tkw, **ipkw)
        needs = rng.random() < 0.8
        if needs:
            pkt = partial_csum(pkt)
        h = none_hdr(pkt, needs)
        desc = f"{'v6' if v6 else 'v4'} {'tcp' if is_tcp else 'udp'} GSO_NONE needs_csum={needs}"
        desc += f" len={len(pkt)}"
        if needs and rng.random() < 0.1:
            b = bytearray(pkt)
            struct.pack_into("!H", b, l4 + h["csum_offset"], rng.getrandbits(16))
            pkt = bytes(b)
            desc += " odd-partial-sum"
        case = Case(desc, pkt, h, v6)
        if needs and rng.random() < 0.15:
            crafted = craft_zero_csum(pkt, h, 0)
            if crafted is not None:
                case.packet = crafted
                case.desc += " zero-csum"
        return case

    g = rng.choices(
        [
            rng.randint(1, 16),
            rng.randint(17, 600),
            rng.randint(500, 1500),
            rng.randint(1500, mtu - hl),
        ],
        weights=[10, 25, 40, 25],
    )[0]
    kmax = max(1, min(max_segs, (65535 - hl) // g))
    mode = rng.choice(["exact", "plus1", "minus1", "below", "random", "random"])
    if mode == "exact":
        plen = rng.randint(min(2, kmax), kmax) * g
    elif mode == "plus1":
        plen = rng.randint(1, max(1, kmax - 1)) * g + 1
    elif mode == "minus1":
        plen = rng.randint(min(2, kmax), kmax) * g - 1
    elif mode == "below":
        plen = rng.randint(1, g)
    else:
        plen = rng.randint(min(g + 1, kmax * g), kmax * g)
    plen = max(1, min(plen, 65535 - hl))
    payload = rand_bytes(rng, plen)
    if is_tcp:
        pkt, h = super_tcp(v6, payload, g, **tkw, **ipkw)
    else:
        pkt, h = super_udp(v6, payload, g, **tkw, **ipkw)
    desc = (
        f"{'v6' if v6 else 'v4'} {'tcp' if is_tcp else 'udp'} gso_size={g} payload={plen}"
        f" ({mode}) hl={hl}"
    )
    if is_tcp:
        desc += f" flags={tkw['flags']:#04x}"
    if not v6:
        desc += f" df={ipkw['df']} id={ipkw['ip_id']:#06x}"
    if notes:
        desc += " " + " ".join(notes)
    case = Case(desc, pkt, h, v6)
    r = rng.random()
    if r < (0.25 if not is_tcp else 0.08):
        n = len(kernel_gso(pkt, h))
        idx = rng.randrange(n)
        crafted = craft_zero_csum(pkt, h, idx)
        if crafted is not None:
            case.packet = crafted
            case.desc += f" zero-csum-seg={idx}/{n}"
    if rng.random() < 0.05:
        # the kernel adjusts whatever the checksum field holds; it never recomputes it
        b = bytearray(case.packet)
        struct.pack_into("!H", b, l4 + case.hdr["csum_offset"], rng.getrandbits(16))
        case.packet = bytes(b)
        case.desc += " odd-partial-sum"
    if rng.random() < 0.15:
        bogus = rng.choice([0, 1, hl + g, len(case.packet), rng.randint(0, len(case.packet))])
        case.hdr = dict(case.hdr, hdr_len=min(bogus, len(case.packet), 0xFFFF))
        case.desc += f" bogus-hdr_len={case.hdr['hdr_len']}"
    return case


def with_dest_opts(v6_tcp_or_udp: bytes, hop_by_hop: bool = False) -> bytes:
    """Insert an 8-byte IPv6 Destination Options (or Hop-by-Hop) header after the fixed one."""
    p = IPv6(v6_tcp_or_udp)
    inner = p.payload
    ext = IPv6ExtHdrHopByHop() if hop_by_hop else IPv6ExtHdrDestOpt()
    q = IPv6(src=p.src, dst=p.dst, hlim=p.hlim, tc=p.tc, fl=p.fl) / ext / inner
    return bytes(q)


# --------------------------------------------------------------------------- flows


@dataclass
class Flow:
    v6: bool
    tcp: bool
    sport: int
    ack: int
    mss: int
    ttl: int
    tos: int
    opts: list
    seq: int
    ip_id: int
    pkts: list = field(default_factory=list)


def flow_key(pkt: bytes):
    """(v6, proto, sport, ack) - what tells the generated flows apart."""
    info = l3_info(pkt)
    l4 = info.l4_off
    if info.proto not in (6, 17):
        return ("other",)
    sport = struct.unpack_from("!H", pkt, l4)[0]
    ack = struct.unpack_from("!I", pkt, l4 + 8)[0] if info.proto == 6 else 0
    return (info.v6, info.proto, sport, ack)


def make_flows(rng: random.Random, min_ttl: int = 1) -> tuple[list[bytes], dict]:
    """Interleaved in-order flows (TCP/UDP, v4/v6) and the expected packets per flow_key."""
    flows = []
    used = set()
    for _ in range(rng.randint(1, 6)):
        sport = rng.randint(1024, 65535)
        ack = rng.getrandbits(32)
        if flows and rng.random() < 0.2:  # same 4-tuple as another flow, other ACK
            sport = flows[-1].sport
        if (sport, ack) in used:
            continue
        used.add((sport, ack))
        tcp = rng.random() < 0.6
        flows.append(
            Flow(
                v6=rng.random() < 0.5,
                tcp=tcp,
                sport=sport,
                ack=ack,
                mss=rng.choice([1, 7, 100, 536, 1200, 1448, 1448, 4000]),
                ttl=rng.randint(min_ttl, 255),
                tos=rng.choice([0, 0, 0x10, 0xB8]),
                opts=(
                    rng.choice([[], random_tcp_options(rng), [("NOP", None)] * 12]) if tcp else []
                ),
                seq=rng.getrandbits(32),
                ip_id=rng.getrandbits(16),
            )
        )
    order = []
    for i in range(len(flows)):
        order += [i] * rng.randint(1, 40)
    rng.shuffle(order)  # interleaving; each flow's own packets stay in order
    seq_pkts = []
    for i in order:
        f = flows[i]
        size = f.mss if rng.random() < 0.85 else rng.randint(1, f.mss)
        payload = rand_bytes(rng, size)
        ipkw = {"ttl": f.ttl, "tos": f.tos}
        if not f.v6:
            ipkw["ip_id"] = f.ip_id
            f.ip_id = (f.ip_id + 1) & 0xFFFF
        if f.tcp:
            flags = ACK | (PSH if rng.random() < 0.1 else 0)
            p = tcp_pkt(
                f.v6,
                payload,
                seq=f.seq,
                ack=f.ack,
                flags=flags,
                sport=f.sport,
                options=f.opts,
                **ipkw,
            )
            f.seq = (f.seq + size) & 0xFFFFFFFF
        else:
            p = udp_pkt(f.v6, payload, sport=f.sport, **ipkw)
        f.pkts.append(p)
        seq_pkts.append(p)
        if rng.random() < 0.03:
            other = bytes(IP(src=SRC4, dst=DST4) / ICMP(seq=len(seq_pkts)) / b"x")
            seq_pkts.append(other)
    expected: dict = {}
    for p in seq_pkts:
        expected.setdefault(flow_key(p), []).append(p)
    return seq_pkts, expected


def kernel_drops(case: Case) -> bool:
    """The one kind of well-formed input the kernel is known to drop on this path.

    TCP with options whose payload fits in gso_size while payload + options do not:
    virtio_net_hdr_to_skb measures from csum_start + sizeof(struct tcphdr) and marks the packet
    GSO, then tcp_gso_segment refuses a packet of <= mss payload.
    """
    h, pkt = case.hdr, case.packet
    if h["gso_type"] & ~GSO_ECN not in (GSO_TCPV4, GSO_TCPV6):
        return False
    cs = h["csum_start"] if h["flags"] & F_NEEDS_CSUM else l3_info(pkt).l4_off
    thlen = (pkt[cs + 12] >> 4) * 4
    return len(pkt) - cs - thlen <= h["gso_size"] < len(pkt) - cs - 20
