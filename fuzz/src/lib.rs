//! The fuzz harnesses of tunoffload's engine, with the invariants they check.
//!
//! Each `pub fn` here is one fuzz target's body (`fuzz_targets/*.rs` only call it), so the
//! same checks run under libFuzzer (`cargo +nightly fuzz run <target>`) and, on stable,
//! in `cargo test --no-default-features` over the committed seeds and regressions.
//!
//! The checks use their own checksum and header code (below), not the engine's, so that
//! they do not agree with the engine just because they share its bugs.
//!
//! Targets:
//! - [`gso`]: `gso_split` (and `plan` + `write_segments`) on one packet.
//! - [`gro_vec`]: `handle_gro` over growable `Vec<u8>` buffers.
//! - [`gro_fixed`]: `handle_gro` over fixed `&mut [u8]` regions of one arena, some with
//!   spare room after the packet (as the Python layer's `send_multiple(sizes=...)` has).
//! - [`decode`]: `VirtioNetHdr::decode` / `encode` / `to_bytes`.

pub mod aead;
pub mod wireguard;

use tunoffload::engine::gso::{plan, write_segments};
use tunoffload::engine::{
    gso_split, handle_gro, ErrorKind, ExpandBuffer, GroTable, VirtioNetHdr, Window,
    UDP_MAX_SEGMENTS, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP_L4,
    VIRTIO_NET_HDR_LEN,
};

const TCP: u8 = 6;
const UDP: u8 = 17;
const CANARY: u8 = 0xa5;

// ----------------------------------------------------------------------------------------
// Reference checksum and header helpers (independent of the engine's).

/// The folded one's-complement sum of big-endian 16-bit words, byte by byte.
pub fn ones_sum(data: &[u8], init: u32) -> u16 {
    let mut acc = u64::from(init);
    for pair in data.chunks(2) {
        let hi = u64::from(pair[0]) << 8;
        let lo = pair.get(1).map_or(0, |&b| u64::from(b));
        acc += hi | lo;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn rd16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn rd32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn wr16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn wr32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// The pseudo-header sum (folded, not complemented) of an IPv4 or IPv6 packet for an L4
/// length, with the addresses at their fixed offsets.
pub fn pseudo(pkt: &[u8], proto: u8, l4_len: usize) -> u16 {
    let (a, n) = if pkt[0] >> 4 == 6 { (8, 16) } else { (12, 4) };
    let addrs = ones_sum(&pkt[a..a + 2 * n], 0);
    ones_sum(
        &[],
        u32::from(addrs) + u32::from(proto) + (l4_len as u32 & 0xffff) + ((l4_len as u32) >> 16),
    )
}

/// Whether the transport checksum over `pkt[l4..]` verifies.
pub fn l4_valid(pkt: &[u8], l4: usize, proto: u8) -> bool {
    let p = pseudo(pkt, proto, pkt.len() - l4);
    ones_sum(&pkt[l4..], u32::from(p)) == 0xffff
}

fn ipv4_header_valid(pkt: &[u8]) -> bool {
    let ihl = usize::from(pkt[0] & 15) * 4;
    ones_sum(&pkt[..ihl], 0) == 0xffff
}

/// Loose facts about a packet's headers: version 6, IP header length, protocol. Only
/// for building inputs; None when the bytes do not even look like IP.
fn loose_ip(pkt: &[u8]) -> Option<(bool, usize, u8)> {
    match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 => {
            let ihl = usize::from(pkt[0] & 15) * 4;
            (ihl >= 20 && ihl <= pkt.len()).then_some((false, ihl, pkt[9]))
        }
        6 if pkt.len() >= 40 => Some((true, 40, pkt[6])),
        _ => None,
    }
}

/// IPv6: (offset, protocol) after the hop-by-hop, routing and destination options
/// headers, if they fit.
fn v6_walk(pkt: &[u8]) -> Option<(usize, u8)> {
    let (mut next, mut off) = (pkt[6], 40usize);
    for _ in 0..8 {
        if !matches!(next, 0 | 43 | 60) {
            return Some((off, next));
        }
        let len = (usize::from(*pkt.get(off + 1)?) + 1) * 8;
        next = pkt[off];
        off += len;
        if off > pkt.len() {
            return None;
        }
    }
    None
}

/// Length of the transport header at `l4` (TCP data offset or 8), if it fits.
fn loose_l4_len(pkt: &[u8], l4: usize, proto: u8) -> Option<usize> {
    match proto {
        TCP if pkt.len() >= l4 + 20 => {
            let doff = usize::from(pkt[l4 + 12] >> 4) * 4;
            (doff >= 20 && l4 + doff <= pkt.len()).then_some(doff)
        }
        UDP if pkt.len() >= l4 + 8 => Some(8),
        _ => None,
    }
}

/// Makes the IP lengths, the IPv4 header checksum and the UDP length agree with the
/// packet's size, and sets the transport checksum: `partial` puts the pseudo-header sum
/// there (a `NEEDS_CSUM` super-packet), otherwise the full checksum.
pub fn fix_packet(pkt: &mut [u8], l4_hint: Option<usize>, partial: bool) {
    let Some((v6, ihl, proto)) = loose_ip(pkt) else {
        return;
    };
    let len = pkt.len();
    if v6 {
        wr16(pkt, 4, (len - 40) as u16);
    } else {
        wr16(pkt, 2, len as u16);
    }
    let l4 = l4_hint.filter(|&x| x <= len).unwrap_or(ihl);
    // IPv6: the protocol after the extension headers, if `l4` is where they end.
    let proto = match (v6, v6_walk(pkt)) {
        (true, Some((off, next))) if off == l4 => next,
        _ => proto,
    };
    let csum_at = match (proto, loose_l4_len(pkt, l4, proto)) {
        (TCP, Some(_)) => Some(l4 + 16),
        (UDP, Some(_)) => {
            wr16(pkt, l4 + 4, (len - l4) as u16);
            Some(l4 + 6)
        }
        _ => None,
    };
    if let Some(at) = csum_at {
        let p = pseudo(pkt, proto, len - l4);
        if partial {
            wr16(pkt, at, p);
        } else {
            wr16(pkt, at, 0);
            let c = !ones_sum(&pkt[l4..], u32::from(p));
            wr16(pkt, at, if c == 0 && proto == UDP { 0xffff } else { c });
        }
    }
    if !v6 {
        wr16(pkt, 10, 0);
        let c = !ones_sum(&pkt[..ihl], 0);
        wr16(pkt, 10, c);
    }
}

/// A byte source over the fuzz input that yields zeros once exhausted.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

// ----------------------------------------------------------------------------------------
// gso_split

/// Fuzz body for `gso_split`.
///
/// Input: `ctl` byte, 10-byte virtio header, the IP packet.
/// - `ctl & 3`: `out_offset` 0, 1, 7 or 64.
/// - `ctl & 4`: fix the packet's lengths and IPv4 header checksum, and put the right
///   partial checksum in (so the checksum invariants apply more often).
/// - `ctl & 8`: also fix the header to agree with the packet (type, csum_start/offset,
///   `NEEDS_CSUM`; `gso_size` kept, but non-zero).
/// - `ctl & 16`: pass `is_v6` (`ctl & 32` its value) rather than `None`.
/// - `ctl & 64`: outputs exactly as large as the plan needs (else 64 bytes more);
///   with `ctl & 128` as well, the last one is a byte short (must be an error).
///
/// Invariants: success and failure agree with `plan`; on failure nothing is written; on
/// success `sizes` and the bytes written are exactly the plan's, nothing else changes,
/// every segment is a well-formed IP packet of its size, segmented packets carry valid
/// IPv4 header checksums, consecutive IDs and sequence numbers and the input's payload in
/// order, and every segment's transport checksum verifies whenever the input's partial
/// checksum was right.
pub fn gso(data: &[u8]) {
    let mut inp = Input { data };
    let ctl = inp.u8();
    let mut hdr_raw = [0u8; VIRTIO_NET_HDR_LEN];
    hdr_raw.copy_from_slice(&{
        let h = inp.take(VIRTIO_NET_HDR_LEN);
        let mut b = [0u8; VIRTIO_NET_HDR_LEN];
        b[..h.len()].copy_from_slice(h);
        b
    });
    let mut hdr = VirtioNetHdr::decode(&hdr_raw).expect("10 bytes decode");
    let mut pkt = inp.take(usize::MAX).to_vec();
    if pkt.len() > 70_000 {
        pkt.truncate(70_000);
    }
    if ctl & 8 != 0 {
        if let Some((v6, ihl, proto)) = loose_ip(&pkt) {
            hdr.flags |= VIRTIO_NET_HDR_F_NEEDS_CSUM;
            hdr.csum_start = ihl as u16;
            let ecn = hdr.gso_type & VIRTIO_NET_HDR_GSO_ECN;
            let (t, off) = match (proto, v6) {
                (UDP, _) => (VIRTIO_NET_HDR_GSO_UDP_L4, 6),
                (_, false) => (VIRTIO_NET_HDR_GSO_TCPV4 | ecn, 16),
                (_, true) => (VIRTIO_NET_HDR_GSO_TCPV6 | ecn, 16),
            };
            if hdr.gso_type != VIRTIO_NET_HDR_GSO_NONE {
                hdr.gso_type = t;
            }
            hdr.csum_offset = off;
            hdr.gso_size = hdr.gso_size.max(1);
        }
    }
    if ctl & 4 != 0 {
        let partial = hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
        fix_packet(&mut pkt, Some(usize::from(hdr.csum_start)), partial);
    }
    let out_offset = [0usize, 1, 7, 64][usize::from(ctl & 3)];
    let is_v6 = (ctl & 16 != 0).then_some(ctl & 32 != 0);

    let planned = plan(&pkt, &hdr, is_v6);
    let n_bufs = match &planned {
        Ok(p) => p.segments() + 1,
        Err(_) => 4,
    };
    let mut outs: Vec<Vec<u8>> = (0..n_bufs)
        .map(|i| {
            let room = match &planned {
                Ok(p) if ctl & 64 != 0 && i < p.segments() => {
                    let short = ctl & 128 != 0 && i == p.segments() - 1;
                    out_offset + p.segment_len(i) - usize::from(short)
                }
                // Roomy: the segment plus slack (canary checked after it).
                Ok(p) if i < p.segments() => out_offset + p.segment_len(i) + 64,
                _ => out_offset + pkt.len().min(2048) + 64,
            };
            vec![CANARY; room]
        })
        .collect();
    let mut sizes = vec![usize::MAX; n_bufs];
    let r = gso_split(&pkt, &hdr, &mut outs, &mut sizes, out_offset, is_v6);
    let short = ctl & 192 == 192 && planned.is_ok();
    let n = match (&planned, r) {
        (Err(_), Ok(n)) => panic!("gso_split made {n} segments of a packet plan() refuses"),
        (Ok(_), Err(e)) if !short => panic!("plan() accepts but gso_split fails: {e}"),
        (Ok(_), Ok(_)) if short => panic!("gso_split wrote into a buffer one byte short"),
        (planned, Err(e)) => {
            match planned {
                // The same refusal, whichever call makes it.
                Err(pe) => assert_eq!(&e, pe, "plan() and gso_split refuse differently"),
                Ok(p) => assert_eq!(
                    (e.kind(), e.index()),
                    (ErrorKind::OutBufTooSmall, Some(p.segments() - 1)),
                    "the short buffer's refusal: {e}"
                ),
            }
            assert!(!e.message().is_empty(), "an error without a message");
            // Nothing written, nothing set.
            assert!(sizes.iter().all(|&s| s == usize::MAX), "sizes set on error");
            assert!(
                outs.iter().all(|o| o.iter().all(|&b| b == CANARY)),
                "output written on error"
            );
            return;
        }
        (Ok(_), Ok(n)) => n,
    };
    let p = planned.expect("checked");
    assert_eq!(n, p.segments());
    assert!(n >= 1);
    for (i, &size) in sizes[..n].iter().enumerate() {
        assert_eq!(size, p.segment_len(i), "sizes[{i}]");
    }
    assert!(
        sizes[n..].iter().all(|&s| s == usize::MAX),
        "sizes beyond n set"
    );
    for (i, o) in outs.iter().enumerate() {
        let (lo, hi) = if i < n {
            (out_offset, out_offset + sizes[i])
        } else {
            (0, 0)
        };
        assert!(
            o[..lo].iter().all(|&b| b == CANARY),
            "out[{i}] written before offset"
        );
        assert!(
            o[hi..].iter().all(|&b| b == CANARY),
            "out[{i}] written after segment"
        );
    }
    // plan + write_segments (the Python layer's path) gives the same bytes.
    let mut again: Vec<Vec<u8>> = (0..n).map(|i| vec![0u8; p.segment_len(i)]).collect();
    assert_eq!(write_segments(&p, &pkt, &mut again, 0), Ok(n));
    let segs: Vec<&[u8]> = (0..n)
        .map(|i| &outs[i][out_offset..out_offset + sizes[i]])
        .collect();
    for i in 0..n {
        assert_eq!(
            segs[i],
            &again[i][..],
            "write_segments differs from gso_split"
        );
    }
    check_segments(&pkt, &hdr, &segs);
}

/// The invariants of a successful split (see [`gso`]).
fn check_segments(pkt: &[u8], hdr: &VirtioNetHdr, segs: &[&[u8]]) {
    let v6 = pkt[0] >> 4 == 6;
    for s in segs {
        assert_eq!(s[0] >> 4, pkt[0] >> 4, "IP version changed");
        if v6 {
            assert_eq!(usize::from(rd16(s, 4)), s.len() - 40, "IPv6 payload length");
        } else {
            assert_eq!(usize::from(rd16(s, 2)), s.len(), "IPv4 total length");
        }
    }
    let needs_csum = hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
    let cs = usize::from(hdr.csum_start);
    let co = cs + usize::from(hdr.csum_offset);
    if segs.len() == 1 {
        let s = segs[0];
        assert_eq!(s.len(), pkt.len());
        if !needs_csum {
            assert_eq!(s, pkt, "a packet with nothing to do was changed");
            return;
        }
        // Only the checksum field changes, and the checksum then verifies.
        let mut want = pkt.to_vec();
        want[co..co + 2].copy_from_slice(&s[co..co + 2]);
        assert_eq!(s, &want[..], "more than the checksum field changed");
        // skb_checksum_help: the complement of the sum from csum_start on (the field's
        // old value, the pseudo-header sum, included), 0 written as 0xffff; wherever the
        // field is, even at an odd offset.
        let c = !ones_sum(&pkt[cs..], 0);
        let c = if c == 0 { 0xffff } else { c };
        assert_eq!(rd16(s, co), c, "completed checksum");
        if (co - cs) % 2 == 0 {
            let seed = u32::from(rd16(pkt, co));
            assert_eq!(
                ones_sum(&s[cs..], seed),
                0xffff,
                "completed checksum does not verify"
            );
        }
        return;
    }
    // Segmented: TCP or UDP behind a parsed IP header (the engine accepted it).
    let l4 = cs_or_l4(pkt, hdr);
    let (_, _, proto) = loose_ip(pkt).expect("accepted packet is IP");
    let proto = if v6 { ipv6_l4_proto(pkt, l4) } else { proto };
    let l4h = loose_l4_len(pkt, l4, proto).expect("accepted transport header");
    let hdrs = l4 + l4h;
    let gso = usize::from(hdr.gso_size);
    let partial_right = if needs_csum {
        rd16(pkt, l4 + if proto == TCP { 16 } else { 6 }) == pseudo(pkt, proto, pkt.len() - l4)
    } else {
        true // TCP without NEEDS_CSUM: the engine computes the pseudo-header itself
    };
    let mut payload = Vec::with_capacity(pkt.len());
    for (i, s) in segs.iter().enumerate() {
        assert!(s.len() > hdrs, "segment {i} has no payload");
        assert!(s.len() - hdrs <= gso, "segment {i} payload above gso_size");
        if i + 1 < segs.len() {
            assert_eq!(s.len() - hdrs, gso, "segment {i} is short but not last");
        }
        if !v6 {
            assert!(
                ipv4_header_valid(s),
                "segment {i}: bad IPv4 header checksum"
            );
            assert_eq!(
                rd16(s, 4),
                rd16(pkt, 4).wrapping_add(i as u16),
                "segment {i} IPv4 ID"
            );
            // Everything else of the IPv4 header is the input's.
            assert_eq!(s[..2], pkt[..2]);
            assert_eq!(s[6..10], pkt[6..10]);
            assert_eq!(s[12..l4], pkt[12..l4]);
        } else {
            assert_eq!(s[..4], pkt[..4]);
            assert_eq!(s[6..l4], pkt[6..l4]);
        }
        assert_eq!(s[l4..l4 + 4], pkt[l4..l4 + 4], "ports");
        if proto == TCP {
            let seq = rd32(pkt, l4 + 4).wrapping_add((i * gso) as u32);
            assert_eq!(rd32(s, l4 + 4), seq, "segment {i} sequence number");
            assert_eq!(s[l4 + 8..l4 + 13], pkt[l4 + 8..l4 + 13]);
            let (f, pf) = (s[l4 + 13], pkt[l4 + 13]);
            let last = i + 1 == segs.len();
            let mut want = pf;
            if !last {
                want &= !0x09; // FIN, PSH
            }
            if i != 0 {
                want &= !0x80; // CWR
            }
            assert_eq!(f, want, "segment {i} TCP flags");
            assert_eq!(s[l4 + 14..l4 + 16], pkt[l4 + 14..l4 + 16], "window");
            assert_eq!(
                s[l4 + 18..hdrs],
                pkt[l4 + 18..hdrs],
                "urgent pointer, options"
            );
        } else {
            assert_eq!(
                usize::from(rd16(s, l4 + 4)),
                s.len() - l4,
                "segment {i} UDP length"
            );
        }
        if partial_right {
            assert!(
                l4_valid(s, l4, proto),
                "segment {i}: bad transport checksum"
            );
            if proto == UDP {
                assert_ne!(rd16(s, l4 + 6), 0, "UDP checksum 0 must be sent as 0xffff");
            }
        }
        payload.extend_from_slice(&s[hdrs..]);
    }
    assert_eq!(&payload[..], &pkt[hdrs..], "payload not preserved in order");
}

/// The transport header's offset of a packet the engine segmented.
fn cs_or_l4(pkt: &[u8], hdr: &VirtioNetHdr) -> usize {
    if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        return usize::from(hdr.csum_start);
    }
    if pkt[0] >> 4 == 4 {
        return usize::from(pkt[0] & 15) * 4;
    }
    // IPv6 TCP without NEEDS_CSUM: walk the extension headers the engine accepts.
    let (mut next, mut off) = (pkt[6], 40usize);
    while matches!(next, 0 | 43 | 60) {
        next = pkt[off];
        off += (usize::from(pkt[off + 1]) + 1) * 8;
    }
    off
}

/// The protocol of the header at `l4` in an IPv6 packet (after extension headers).
fn ipv6_l4_proto(pkt: &[u8], l4: usize) -> u8 {
    let (mut next, mut off) = (pkt[6], 40usize);
    while off < l4 && matches!(next, 0 | 43 | 60) {
        next = pkt[off];
        off += (usize::from(pkt[off + 1]) + 1) * 8;
    }
    assert_eq!(
        off, l4,
        "csum_start is not after the IPv6 extension headers"
    );
    next
}

// ----------------------------------------------------------------------------------------
// handle_gro

/// The packets a GRO input describes, and how to lay them out.
pub struct GroInput {
    pub offset: usize,
    pub can_udp_gro: bool,
    pub packets: Vec<Vec<u8>>,
    /// Per packet: spare bytes after it (fixed regions only), or [`STUCK`].
    pub spare: Vec<usize>,
}

/// A `spare` that means no spare bytes, in a region that claims room it then refuses to
/// grow into ([`Region::Stuck`]).
pub const STUCK: usize = usize::MAX;

/// Templates for derived packets: TCP/UDP over IPv4/IPv6 with valid checksums.
fn template(kind: u8) -> Vec<u8> {
    let v6 = kind & 1 != 0;
    let udp = kind & 2 != 0;
    let (iph, l4h) = (if v6 { 40 } else { 20 }, if udp { 8 } else { 20 });
    let mut p = vec![0u8; iph + l4h];
    if v6 {
        p[0] = 0x60;
        p[6] = if udp { UDP } else { TCP };
        p[7] = 64;
        p[8] = 0xfd;
        p[23] = 1;
        p[24] = 0xfd;
        p[39] = 2;
    } else {
        p[0] = 0x45;
        p[6] = 0x40;
        p[8] = 64;
        p[9] = if udp { UDP } else { TCP };
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    }
    wr16(&mut p, iph, 40000);
    wr16(&mut p, iph + 2, 5201);
    if !udp {
        wr32(&mut p, iph + 4, 1000);
        wr32(&mut p, iph + 8, 1);
        p[iph + 12] = 0x50;
        p[iph + 13] = 0x10;
        wr16(&mut p, iph + 14, 502);
    }
    p
}

/// Decodes a GRO input.
///
/// `ctl` byte: `offset = 10 + (ctl & 7)`, `can_udp_gro = ctl & 8`, `ctl & 16` fixes
/// lengths and checksums of raw packets too. Then up to 128 records, each a tag byte:
/// - `tag & 3 == 0`: a raw packet: a 16-bit length, then that many bytes.
/// - otherwise a packet derived from the previous one (or, for the first, a template
///   picked by `tag >> 2`): its IP and transport headers, a 16-bit payload length
///   (`% 1500`, or the previous payload's length when `tag & 16`), payload bytes from a
///   seed byte; the sequence number follows the previous packet's (`tag & 3 == 1`),
///   precedes it (`== 2`, a prepend) or stays (`== 3`); `tag & 32` applies a 2-byte
///   header edit (position, xor) first; `tag & 64` sets PSH; lengths and checksums are
///   then made right, and `tag & 128` breaks the transport checksum afterwards.
///
/// After the records, one byte per packet gives its spare room (fixed target).
pub fn decode_gro(data: &[u8]) -> GroInput {
    let mut inp = Input { data };
    let ctl = inp.u8();
    let offset = VIRTIO_NET_HDR_LEN + usize::from(ctl & 7);
    let can_udp_gro = ctl & 8 != 0;
    let fix_raw = ctl & 16 != 0;
    let mut packets: Vec<Vec<u8>> = Vec::new();
    while !inp.is_empty() && packets.len() < 128 {
        let tag = inp.u8();
        if tag & 3 == 0 {
            let len = usize::from(inp.u16());
            let mut p = inp.take(len).to_vec();
            if fix_raw {
                fix_packet(&mut p, None, false);
            }
            packets.push(p);
            continue;
        }
        let prev = packets
            .last()
            .filter(|p| loose_ip(p).is_some())
            .cloned()
            .unwrap_or_else(|| template(tag >> 2));
        let (v6, iph, proto) = loose_ip(&prev).expect("IP");
        let proto = if proto == UDP { UDP } else { TCP };
        let l4h = loose_l4_len(&prev, iph, proto).unwrap_or(if proto == UDP { 8 } else { 20 });
        let hdrs = (iph + l4h).min(prev.len());
        let prev_payload = prev.len() - hdrs;
        let mut p = prev[..hdrs].to_vec();
        p.resize(iph + l4h, 0);
        if !v6 {
            p[9] = proto;
        } else {
            p[6] = proto;
        }
        if proto == TCP {
            p[iph + 12] = ((l4h / 4) as u8) << 4 | (p[iph + 12] & 15);
        }
        let raw_len = usize::from(inp.u16());
        let plen = if tag & 16 != 0 && prev_payload > 0 {
            prev_payload
        } else {
            raw_len % 1500
        };
        if proto == TCP && prev.len() >= iph + 8 {
            let seq = rd32(&prev, iph + 4);
            let seq = match tag & 3 {
                1 => seq.wrapping_add(prev_payload as u32),
                2 => seq.wrapping_sub(plen as u32),
                _ => seq,
            };
            wr32(&mut p, iph + 4, seq);
        }
        if tag & 32 != 0 {
            let at = usize::from(inp.u8()) % p.len();
            p[at] ^= inp.u8();
        }
        if tag & 64 != 0 && proto == TCP {
            p[iph + 13] |= 0x08;
        }
        let mut x = inp.u8() as u32 | 1;
        p.extend((0..plen).map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        }));
        if !v6 {
            if p[0] >> 4 != 4 {
                packets.push(p);
                continue; // the edit broke the version: leave it raw
            }
            p[0] = (p[0] & 0xf0) | ((iph / 4) as u8 & 15);
        }
        fix_packet(&mut p, Some(iph), false);
        if tag & 128 != 0 && p.len() > iph + 8 {
            let last = p.len() - 1;
            p[last] ^= 0x40;
        }
        packets.push(p);
    }
    let spare = (0..packets.len())
        .map(|_| [0usize, STUCK, 1, 100, 1500, 65_535][usize::from(inp.u8() % 6)])
        .collect();
    GroInput {
        offset,
        can_udp_gro,
        packets,
        spare,
    }
}

/// A packet compared across GRO and GSO: the IPv4 ID, the IPv4 header checksum and the
/// transport checksum are zeroed (the kernel renumbers IDs; a checksum may be written as
/// 0 or 0xffff; both checksums are verified separately).
fn normalize(pkt: &[u8]) -> Vec<u8> {
    let mut p = pkt.to_vec();
    if let Some((v6, iph, proto)) = loose_ip(&p) {
        if !v6 {
            p[4..6].fill(0);
            p[10..12].fill(0);
        }
        let at = iph + if proto == TCP { 16 } else { 6 };
        if matches!(proto, TCP | UDP) && p.len() >= at + 2 {
            p[at..at + 2].fill(0);
        }
        // The urgent pointer without URG: the kernel's GRO does not compare it either
        // (segments get the first one's back).
        if proto == TCP && p.len() >= iph + 20 && p[iph + 13] & 0x20 == 0 {
            p[iph + 18..iph + 20].fill(0);
        }
    }
    p
}

/// The invariants of one `handle_gro` result; `bufs[i]` (after the call) holds the
/// headroom and packet. `originals` are the input packets.
fn check_gro_result(originals: &[Vec<u8>], offset: usize, out: &[usize], bufs: &[&[u8]]) {
    assert!(
        out.windows(2).all(|w| w[0] < w[1]),
        "indices not increasing: {out:?}"
    );
    assert!(out.iter().all(|&i| i < bufs.len()), "index out of range");
    let mut got: Vec<Vec<u8>> = Vec::with_capacity(originals.len());
    for &i in out {
        let b = bufs[i];
        assert!(b.len() > offset, "bufs[{i}] has no packet");
        let pkt = &b[offset..];
        assert!(
            pkt.len() <= 65_535,
            "bufs[{i}]: a {}-byte packet",
            pkt.len()
        );
        let h = VirtioNetHdr::decode(&b[offset - VIRTIO_NET_HDR_LEN..offset]).expect("10 bytes");
        if h.gso_type == VIRTIO_NET_HDR_GSO_NONE {
            assert_eq!(
                h,
                VirtioNetHdr::default(),
                "bufs[{i}]: a plain packet's header"
            );
            got.push(normalize(pkt));
            continue;
        }
        // A coalesced packet: well-formed headers, a right partial checksum.
        let (v6, iph, proto) = loose_ip(pkt).expect("coalesced packet is IP");
        assert_eq!(h.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
        let want_type = match (proto, v6) {
            (UDP, _) => VIRTIO_NET_HDR_GSO_UDP_L4,
            (TCP, false) => VIRTIO_NET_HDR_GSO_TCPV4,
            (TCP, true) => VIRTIO_NET_HDR_GSO_TCPV6,
            _ => panic!("coalesced packet of protocol {proto}"),
        };
        assert_eq!(h.gso_type, want_type);
        assert_eq!(usize::from(h.csum_start), iph);
        assert_eq!(h.csum_offset, if proto == TCP { 16 } else { 6 });
        let l4h = loose_l4_len(pkt, iph, proto).expect("transport header");
        assert_eq!(usize::from(h.hdr_len), iph + l4h);
        if v6 {
            assert_eq!(usize::from(rd16(pkt, 4)), pkt.len() - 40);
        } else {
            assert_eq!(usize::from(rd16(pkt, 2)), pkt.len());
            assert!(
                ipv4_header_valid(pkt),
                "bufs[{i}]: bad IPv4 header checksum"
            );
        }
        if proto == UDP {
            assert_eq!(usize::from(rd16(pkt, iph + 4)), pkt.len() - iph);
        }
        let field = rd16(pkt, usize::from(h.csum_start + h.csum_offset));
        assert_eq!(
            field,
            pseudo(pkt, proto, pkt.len() - iph),
            "partial checksum"
        );
        // Split it back: every segment is one of the originals.
        let n_max = pkt.len() / usize::from(h.gso_size.max(1)) + 2;
        let seg_room = usize::from(h.hdr_len) + usize::from(h.gso_size);
        let mut segs = vec![vec![0u8; seg_room]; n_max];
        let mut sizes = vec![0usize; n_max];
        let n = gso_split(pkt, &h, &mut segs, &mut sizes, 0, None)
            .unwrap_or_else(|e| panic!("bufs[{i}]: the coalesced packet does not split: {e}"));
        assert!(n >= 2, "bufs[{i}]: coalesced but one segment");
        if proto == UDP {
            assert!(n <= UDP_MAX_SEGMENTS, "bufs[{i}]: {n} UDP segments");
        }
        for (s, &len) in segs.iter().zip(&sizes).take(n) {
            let s = &s[..len];
            assert!(
                l4_valid(s, iph, proto),
                "bufs[{i}]: a segment's checksum fails"
            );
            got.push(normalize(s));
        }
    }
    // Every original comes out exactly once: written alone, or as a segment of a
    // coalesced packet, with the same bytes (but IPv4 ID and checksums).
    let mut want: Vec<Vec<u8>> = originals.iter().map(|p| normalize(p)).collect();
    want.sort();
    got.sort();
    if got != want {
        let missing: Vec<_> = want.iter().filter(|w| !got.contains(w)).collect();
        let extra: Vec<_> = got.iter().filter(|g| !want.contains(g)).collect();
        panic!(
            "GRO then GSO does not give back the original packets\nmissing: {missing:02x?}\nextra: {extra:02x?}"
        );
    }
}

/// Fuzz body for `handle_gro` over `Vec<u8>` buffers; input as [`decode_gro`].
///
/// Invariants: an error only for an empty packet, and then nothing changed; indices in
/// order; each packet at most 65535 bytes, its buffer ending where it ends; plain packets
/// unchanged with a zero header; coalesced ones with the right header, lengths, IPv4
/// header checksum and partial checksum; and splitting every coalesced packet back
/// gives exactly the original packets (but IPv4 ID and checksum representation).
pub fn gro_vec(data: &[u8]) {
    let g = decode_gro(data);
    let head = 0x3cu8;
    let mut bufs: Vec<Vec<u8>> = g
        .packets
        .iter()
        .map(|p| [vec![head; g.offset], p.clone()].concat())
        .collect();
    let before = bufs.clone();
    let mut table = GroTable::new();
    match handle_gro(&mut bufs, g.offset, &mut table, g.can_udp_gro) {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::NoPacketAfterOffset, "{e}");
            let i = e.index().expect("the buffer's index");
            assert!(
                g.packets[i].is_empty(),
                "error without an empty packet: {e}"
            );
            assert_eq!(bufs, before, "changed before an error");
        }
        Ok(out) => {
            assert!(
                g.packets.iter().all(|p| !p.is_empty()),
                "accepted an empty packet"
            );
            let out = out.to_vec();
            let views: Vec<&[u8]> = bufs.iter().map(|b| &b[..]).collect();
            check_gro_result(&g.packets, g.offset, &out, &views);
            // The table is reusable: the same batch again gives the same result.
            let mut again = before.clone();
            let out2 = handle_gro(&mut again, g.offset, &mut table, g.can_udp_gro)
                .expect("second run")
                .to_vec();
            assert_eq!(out2, out, "a reused GroTable gave another result");
            assert_eq!(again, bufs, "a reused GroTable gave other bytes");
        }
    }
}

/// A fixed region of an arena: the packet is `region[..len]`; it may grow within the
/// region but never beyond (the Python layer's `send_multiple(sizes=...)` buffers), or
/// not at all (`exact`, as `&mut [u8]`).
///
/// `Stuck` is a buffer whose growth fails only when it is asked (a Python bytearray that
/// something else exports): `max_len` promises room, `resize` refuses it.
pub enum Region<'a> {
    Exact(&'a mut [u8]),
    Roomy(Window<'a>),
    Stuck(&'a mut [u8]),
}

impl ExpandBuffer for Region<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Region::Exact(b) | Region::Stuck(b) => ExpandBuffer::bytes(b),
            Region::Roomy(w) => w.bytes(),
        }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Region::Exact(b) | Region::Stuck(b) => ExpandBuffer::bytes_mut(b),
            Region::Roomy(w) => w.bytes_mut(),
        }
    }
    fn max_len(&self) -> usize {
        match self {
            Region::Exact(b) => ExpandBuffer::max_len(b),
            Region::Roomy(w) => w.max_len(),
            Region::Stuck(_) => usize::MAX,
        }
    }
    fn resize(&mut self, new_len: usize) -> tunoffload::engine::Result<()> {
        match self {
            Region::Exact(b) | Region::Stuck(b) => ExpandBuffer::resize(b, new_len),
            Region::Roomy(w) => {
                assert!(new_len <= w.max_len(), "asked to grow past max_len");
                w.resize(new_len)
            }
        }
    }
}

/// Fuzz body for `handle_gro` over fixed regions of one arena (input as
/// [`decode_gro`]; the spare bytes give each region's room after its packet, 0 meaning
/// an exact `&mut [u8]`, [`STUCK`] a [`Region::Stuck`]).
///
/// Invariants: as [`gro_vec`], plus nothing outside the regions (canary gaps) is ever
/// written, no region is asked to grow past its room, and with no spare room at all
/// (stuck regions have none) nothing is coalesced and every packet is written unchanged,
/// in its own slot.
pub fn gro_fixed(data: &[u8]) {
    let g = decode_gro(data);
    const GAP: usize = 8;
    let head = 0x3cu8;
    let mut layout = Vec::with_capacity(g.packets.len());
    let mut arena = vec![CANARY; GAP];
    for (p, &spare) in g.packets.iter().zip(&g.spare) {
        let spare = if spare == STUCK { 0 } else { spare };
        let start = arena.len();
        arena.extend(std::iter::repeat_n(head, g.offset));
        arena.extend_from_slice(p);
        arena.extend(std::iter::repeat_n(0x77, spare));
        layout.push((start, g.offset + p.len(), spare));
        arena.extend(std::iter::repeat_n(CANARY, GAP));
    }
    let arena_before = arena.clone();
    let result = {
        let mut rest: &mut [u8] = &mut arena[..];
        let mut consumed = 0;
        let mut bufs: Vec<Region<'_>> = Vec::with_capacity(layout.len());
        for (&(start, len, spare), &kind) in layout.iter().zip(&g.spare) {
            let (_, r) = std::mem::take(&mut rest).split_at_mut(start - consumed);
            let (region, r) = r.split_at_mut(len + spare);
            rest = r;
            consumed = start + len + spare;
            bufs.push(if kind == STUCK {
                Region::Stuck(region)
            } else if spare == 0 {
                Region::Exact(region)
            } else {
                Region::Roomy(Window::new(region, len))
            });
        }
        let mut table = GroTable::new();
        match handle_gro(&mut bufs, g.offset, &mut table, g.can_udp_gro) {
            Err(_) => None,
            Ok(out) => {
                let out = out.to_vec();
                let views: Vec<Vec<u8>> = bufs.iter().map(|b| b.bytes().to_vec()).collect();
                Some((out, views))
            }
        }
    };
    // The gaps between regions are never written.
    for (k, &(start, len, spare)) in layout.iter().enumerate() {
        let gap = start + len + spare;
        assert!(
            arena[gap..gap + GAP].iter().all(|&b| b == CANARY),
            "the gap after region {k} was written"
        );
    }
    assert!(arena[..GAP].iter().all(|&b| b == CANARY));
    match result {
        None => {
            assert!(
                g.packets.iter().any(|p| p.is_empty()),
                "error without an empty packet"
            );
            assert_eq!(arena, arena_before, "changed before an error");
        }
        Some((out, views)) => {
            let refs: Vec<&[u8]> = views.iter().map(|v| &v[..]).collect();
            check_gro_result(&g.packets, g.offset, &out, &refs);
            // Stuck regions coalesce nothing either: their items are written as their
            // segments, in the order they came.
            if g.spare.iter().all(|&s| s == 0 || s == STUCK) {
                assert_eq!(out, (0..g.packets.len()).collect::<Vec<_>>());
            }
        }
    }
}

// ----------------------------------------------------------------------------------------
// VirtioNetHdr

/// Fuzz body for `VirtioNetHdr::decode`: an error exactly below 10 bytes; otherwise
/// `to_bytes` gives back the first 10 bytes, the fields are those bytes in native order,
/// and `encode` writes exactly those 10 bytes and nothing after them.
pub fn decode(data: &[u8]) {
    match VirtioNetHdr::decode(data) {
        Err(e) => {
            assert!(data.len() < VIRTIO_NET_HDR_LEN);
            assert_eq!(e.kind(), ErrorKind::VirtioHdrTooShort);
        }
        Ok(h) => {
            assert!(data.len() >= VIRTIO_NET_HDR_LEN);
            assert_eq!(h.to_bytes()[..], data[..VIRTIO_NET_HDR_LEN]);
            let ne = |i: usize| u16::from_ne_bytes([data[i], data[i + 1]]);
            assert_eq!(
                (
                    h.flags,
                    h.gso_type,
                    h.hdr_len,
                    h.gso_size,
                    h.csum_start,
                    h.csum_offset
                ),
                (data[0], data[1], ne(2), ne(4), ne(6), ne(8))
            );
            let mut buf = vec![CANARY; data.len() + 3];
            h.encode(&mut buf).expect("room");
            assert_eq!(buf[..VIRTIO_NET_HDR_LEN], data[..VIRTIO_NET_HDR_LEN]);
            assert!(buf[VIRTIO_NET_HDR_LEN..].iter().all(|&b| b == CANARY));
            assert!(h.encode(&mut buf[..VIRTIO_NET_HDR_LEN - 1]).is_err());
        }
    }
}
