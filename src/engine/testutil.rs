//! Packet builders for the engine's unit tests.

use super::checksum;
use super::packet::*;

/// Knobs for [`build`].
#[derive(Clone)]
pub struct Spec {
    pub v6: bool,
    pub udp: bool,
    pub payload: Vec<u8>,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub ttl: u8,
    pub tos: u8,
    pub df: bool,
    pub id: u16,
    pub tcp_opts: Vec<u8>,
    pub sport: u16,
    pub window: u16,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            v6: false,
            udp: false,
            payload: vec![0xab; 100],
            seq: 1000,
            ack: 1,
            flags: TCP_ACK,
            ttl: 64,
            tos: 0,
            df: true,
            id: 7,
            tcp_opts: vec![],
            sport: 1234,
            window: 65535,
        }
    }
}

/// A packet with valid checksums; `partial` leaves the pseudo-header sum in the
/// transport checksum field, as a `NEEDS_CSUM` super-packet carries it.
pub fn build(s: &Spec, partial: bool) -> Vec<u8> {
    let iph = if s.v6 { IPV6_HDR_LEN } else { IPV4_HDR_LEN };
    let l4h = if s.udp {
        UDP_HDR_LEN
    } else {
        TCP_HDR_LEN + s.tcp_opts.len()
    };
    let total = iph + l4h + s.payload.len();
    let mut p = vec![0u8; total];
    if s.v6 {
        p[0] = 0x60 | (s.tos >> 4);
        p[1] = s.tos << 4;
        put16(&mut p, 4, (total - iph) as u16);
        p[6] = if s.udp { PROTO_UDP } else { PROTO_TCP };
        p[7] = s.ttl;
        p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    } else {
        p[0] = 0x45;
        p[1] = s.tos;
        put16(&mut p, 2, total as u16);
        put16(&mut p, 4, s.id);
        p[6] = if s.df { 0x40 } else { 0 };
        p[8] = s.ttl;
        p[9] = if s.udp { PROTO_UDP } else { PROTO_TCP };
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let c = checksum::ipv4_header_checksum(&p[..20]);
        put16(&mut p, 10, c);
    }
    put16(&mut p, iph, s.sport);
    put16(&mut p, iph + 2, 80);
    let csum_at = if s.udp {
        put16(&mut p, iph + 4, (total - iph) as u16);
        iph + UDP_CSUM
    } else {
        put32(&mut p, iph + 4, s.seq);
        put32(&mut p, iph + 8, s.ack);
        p[iph + 12] = ((l4h / 4) as u8) << 4;
        p[iph + TCP_FLAGS] = s.flags;
        put16(&mut p, iph + 14, s.window);
        p[iph + TCP_HDR_LEN..iph + l4h].copy_from_slice(&s.tcp_opts);
        iph + TCP_CSUM
    };
    p[iph + l4h..].copy_from_slice(&s.payload);
    let (a, n) = if s.v6 { (8, 16) } else { (12, 4) };
    let proto = if s.udp { PROTO_UDP } else { PROTO_TCP };
    let pseudo = checksum::pseudo_header(
        proto,
        &p[a..a + n],
        &p[a + n..a + 2 * n],
        (total - iph) as u16,
    );
    if partial {
        put16(&mut p, csum_at, pseudo);
    } else {
        let c = !checksum::add(pseudo, checksum::sum(&p[iph..]));
        put16(&mut p, csum_at, if c == 0 && s.udp { 0xffff } else { c });
    }
    p
}

/// Whether the transport checksum of a whole packet verifies.
pub fn l4_checksum_ok(p: &[u8]) -> bool {
    let v6 = p[0] >> 4 == 6;
    let (iph, proto, a, n) = if v6 {
        (40, p[6], 8, 16)
    } else {
        (usize::from(p[0] & 15) * 4, p[9], 12, 4)
    };
    let pseudo = checksum::pseudo_header(
        proto,
        &p[a..a + n],
        &p[a + n..a + 2 * n],
        (p.len() - iph) as u16,
    );
    checksum::add(pseudo, checksum::sum(&p[iph..])) == 0xffff
}
