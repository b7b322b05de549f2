//! Reading the IPv4/IPv6 and TCP/UDP headers that GSO and GRO need.

use super::error::{bail, Result};

pub(crate) const PROTO_TCP: u8 = 6;
pub(crate) const PROTO_UDP: u8 = 17;
pub(crate) const IPV4_HDR_LEN: usize = 20;
pub(crate) const IPV6_HDR_LEN: usize = 40;
pub(crate) const IPV6_FRAGMENT: u8 = 44;
pub(crate) const TCP_HDR_LEN: usize = 20;
pub(crate) const UDP_HDR_LEN: usize = 8;
pub(crate) const TCP_FLAGS: usize = 13;
pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_PSH: u8 = 0x08;
pub(crate) const TCP_ACK: u8 = 0x10;
pub(crate) const TCP_CWR: u8 = 0x80;
pub(crate) const TCP_CSUM: usize = 16;
pub(crate) const UDP_CSUM: usize = 6;

// `inline(always)`: plain `#[inline]` left `be32` as a call on GRO's per-packet path
// (75 instructions a packet under callgrind).
#[inline(always)]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline(always)]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    let w: [u8; 4] = b[at..at + 4].try_into().expect("a 4-byte slice");
    u32::from_be_bytes(w)
}

#[inline]
pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// What the IP header says about a packet whose lengths have been checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpInfo {
    pub is_v6: bool,
    /// Offset of the transport header (after IPv4 options or IPv6 extension headers).
    pub l4_off: usize,
    /// The transport protocol number.
    pub proto: u8,
    /// An IP fragment (IPv4: MF set or a fragment offset; IPv6: a fragment header).
    pub fragment: bool,
}

impl IpInfo {
    /// Offset and length of the source address; the destination follows it.
    #[inline]
    pub fn addrs(&self) -> (usize, usize) {
        if self.is_v6 {
            (8, 16)
        } else {
            (12, 4)
        }
    }
}

/// Parses and checks the IP header of `pkt`, which must be exactly one whole packet.
///
/// `is_v6`, when given, must agree with the version nibble.
pub(crate) fn parse_ip(pkt: &[u8], is_v6: Option<bool>) -> Result<IpInfo> {
    let v6 = match version(pkt, is_v6)? {
        4 => false,
        6 => true,
        v => bail!(
            BadIpVersion,
            "not an IP packet: version nibble is {v}, expected 4 or 6"
        ),
    };
    if v6 {
        if pkt.len() < IPV6_HDR_LEN {
            bail!(
                TruncatedIpHeader,
                "truncated IPv6 header: {} bytes, need {IPV6_HDR_LEN}",
                pkt.len()
            );
        }
        let plen = be16(pkt, 4) as usize;
        if plen != pkt.len() - IPV6_HDR_LEN {
            bail!(
                IpLengthMismatch,
                "IPv6 payload length {plen} disagrees with the {} bytes after the header",
                pkt.len() - IPV6_HDR_LEN
            );
        }
        let (l4_off, proto) = skip_ipv6_extensions(pkt)?;
        Ok(IpInfo {
            is_v6: true,
            l4_off,
            proto,
            fragment: proto == IPV6_FRAGMENT,
        })
    } else {
        if pkt.len() < IPV4_HDR_LEN {
            bail!(
                TruncatedIpHeader,
                "truncated IPv4 header: {} bytes, need {IPV4_HDR_LEN}",
                pkt.len()
            );
        }
        let ihl = usize::from(pkt[0] & 0x0f) * 4;
        if ihl < IPV4_HDR_LEN {
            bail!(
                BadIhl,
                "IPv4 header length {ihl} is below the minimum of 20"
            );
        }
        if ihl > pkt.len() {
            bail!(
                BadIhl,
                "IPv4 header length {ihl} is beyond the {}-byte packet",
                pkt.len()
            );
        }
        let total = be16(pkt, 2) as usize;
        if total != pkt.len() {
            bail!(
                IpLengthMismatch,
                "IPv4 total length {total} disagrees with the packet's {} bytes",
                pkt.len()
            );
        }
        let fragment = pkt[6] & 0x20 != 0 || be16(pkt, 6) & 0x1fff != 0;
        Ok(IpInfo {
            is_v6: false,
            l4_off: ihl,
            proto: pkt[9],
            fragment,
        })
    }
}

/// The version nibble of a non-empty packet; `is_v6`, when given, must agree with it.
pub(crate) fn version(pkt: &[u8], is_v6: Option<bool>) -> Result<u8> {
    let Some(&first) = pkt.first() else {
        bail!(EmptyPacket, "empty packet");
    };
    let version = first >> 4;
    if let Some(want) = is_v6 {
        if version != if want { 6 } else { 4 } {
            bail!(
                IpVersionMismatch,
                "is_v6={} but the packet is IPv{version}",
                if want { "True" } else { "False" }
            );
        }
    }
    Ok(version)
}

/// Walks IPv6 extension headers to the transport (or fragment) header: (offset, protocol).
fn skip_ipv6_extensions(pkt: &[u8]) -> Result<(usize, u8)> {
    let mut next = pkt[6];
    let mut off = IPV6_HDR_LEN;
    // Hop-by-hop, routing and destination options, at most a handful of them.
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                if off + 2 > pkt.len() {
                    bail!(
                        TruncatedIpv6Extension,
                        "truncated IPv6 extension header at offset {off}"
                    );
                }
                let len = (usize::from(pkt[off + 1]) + 1) * 8;
                if off + len > pkt.len() {
                    bail!(
                        TruncatedIpv6Extension,
                        "IPv6 extension header at offset {off} runs past the packet"
                    );
                }
                next = pkt[off];
                off += len;
            }
            // A fragment header (IPV6_FRAGMENT) ends the walk: what follows is not a
            // transport header, and `IpInfo::fragment` says so.
            _ => return Ok((off, next)),
        }
    }
    bail!(TooManyIpv6Extensions, "too many IPv6 extension headers")
}
