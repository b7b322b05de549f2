//! GSO: splitting a super-packet read from a TUN device into the packets the Linux kernel
//! itself would put on the wire, byte for byte.
//!
//! The kernel's rules this follows (net/ipv4/tcp_offload.c, net/ipv4/udp_offload.c,
//! net/core/dev.c `skb_checksum_help`, include/linux/virtio_net.h):
//! - With `NEEDS_CSUM`, the transport checksum field already holds the partial
//!   (pseudo-header) sum for the whole packet. The kernel does not recompute it from the
//!   addresses; it adjusts it for each segment's length and adds the segment's bytes.
//!   Without `NEEDS_CSUM`, a TCP packet's pseudo-header sum is computed from the addresses.
//! - IPv4: ID + i, total length and header checksum per segment. IPv6: payload length.
//! - TCP: sequence + i * gso_size; FIN and PSH only on the last segment, CWR only on the
//!   first. UDP: length per segment; a checksum that computes to 0 is sent as 0xFFFF.
//! - A "GSO" packet whose payload fits in one segment is not split: its checksum is
//!   completed as `skb_checksum_help` does (0 becomes 0xFFFF, also for TCP).
//! - `hdr_len` is a hint the kernel's forward path sets to the whole linear part (which
//!   can hold a whole first segment); it is never used.

use super::checksum::{self, add, fold};
use super::error::{bail, Error, Result};
use super::packet::*;
use super::virtio::*;

/// The kernel's `UDP_MAX_SEGMENTS`: a UDP GSO packet of more segments is refused.
pub const UDP_MAX_SEGMENTS: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One segment: the packet unchanged.
    Verbatim,
    /// One segment: the packet with the checksum over `[start..]` stored at `at`.
    CompleteChecksum { start: usize, at: usize },
    /// TCP segments. `seed` plus each segment's L4 length gives its pseudo-header sum.
    Tcp { seed: u16 },
    /// UDP segments, as TCP.
    Udp { seed: u16 },
}

/// How a super-packet splits: validated, nothing written yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GsoPlan {
    kind: Kind,
    segments: usize,
    len: usize,
    ip: IpInfo,
    /// IP plus transport headers, copied to every segment.
    hdrs: usize,
    gso_size: usize,
}

impl GsoPlan {
    /// The number of packets the split makes.
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// The length of packet `i` (`i < segments()`).
    pub fn segment_len(&self, i: usize) -> usize {
        match self.kind {
            Kind::Verbatim | Kind::CompleteChecksum { .. } => self.len,
            Kind::Tcp { .. } | Kind::Udp { .. } => {
                let payload = self.len - self.hdrs;
                let done = i * self.gso_size;
                self.hdrs + (payload - done).min(self.gso_size)
            }
        }
    }
}

/// Checks `pkt` against `hdr` and works out the segments, without writing anything.
///
/// `is_v6`: `None` takes the version from the packet; otherwise it must agree.
pub fn plan(pkt: &[u8], hdr: &VirtioNetHdr, is_v6: Option<bool>) -> Result<GsoPlan> {
    let ip = parse_ip(pkt, is_v6)?;
    let needs_csum = hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
    let single = |kind| GsoPlan {
        kind,
        segments: 1,
        len: pkt.len(),
        ip,
        hdrs: 0,
        gso_size: 0,
    };
    let ecn = hdr.gso_type & VIRTIO_NET_HDR_GSO_ECN != 0;
    let (proto, v6) = match hdr.gso_type & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_NONE if !ecn => {
            if !needs_csum {
                return Ok(single(Kind::Verbatim));
            }
            let (start, at) = checksum_location(pkt, hdr, &ip)?;
            return Ok(single(Kind::CompleteChecksum { start, at }));
        }
        VIRTIO_NET_HDR_GSO_TCPV4 => (PROTO_TCP, Some(false)),
        VIRTIO_NET_HDR_GSO_TCPV6 => (PROTO_TCP, Some(true)),
        VIRTIO_NET_HDR_GSO_UDP_L4 if !ecn => (PROTO_UDP, None),
        VIRTIO_NET_HDR_GSO_UDP => {
            bail!("gso_type GSO_UDP (UDP fragmentation offload) is not supported")
        }
        t => bail!(
            "gso_type {t:#04x} is not a known GSO type (0, 1, 4, 5, optionally | 0x80 for TCP)"
        ),
    };
    let name = gso_name(hdr.gso_type);
    if let Some(want_v6) = v6 {
        if want_v6 != ip.is_v6 {
            bail!("{name} on an IPv{} packet", if ip.is_v6 { 6 } else { 4 });
        }
    }
    if ip.proto != proto {
        bail!(
            "{name} on a packet whose transport protocol is {}",
            ip.proto
        );
    }
    if ip.fragment {
        bail!("{name} on an IPv4 fragment");
    }
    let l4 = ip.l4_off;
    let (base_hdr, csum_field) = if proto == PROTO_TCP {
        (TCP_HDR_LEN, TCP_CSUM)
    } else {
        (UDP_HDR_LEN, UDP_CSUM)
    };
    if needs_csum {
        let (start, at) = checksum_location(pkt, hdr, &ip)?;
        if start != l4 {
            bail!("csum_start {start} is not the transport header's offset {l4}");
        }
        if at != l4 + csum_field {
            bail!(
                "csum_offset {} is not the {} checksum's offset {csum_field}",
                hdr.csum_offset,
                if proto == PROTO_TCP { "TCP" } else { "UDP" }
            );
        }
    } else if proto == PROTO_UDP {
        bail!("GSO_UDP_L4 without F_NEEDS_CSUM (the kernel refuses it)");
    }
    if l4 + base_hdr > pkt.len() {
        bail!(
            "truncated transport header: {} bytes after offset {l4}",
            pkt.len() - l4
        );
    }
    let hdrs = if proto == PROTO_TCP {
        let doff = usize::from(pkt[l4 + 12] >> 4) * 4;
        if doff < TCP_HDR_LEN {
            bail!("TCP data offset {doff} is below the minimum of 20");
        }
        if l4 + doff > pkt.len() {
            bail!(
                "TCP header of {doff} bytes runs past the {}-byte packet",
                pkt.len()
            );
        }
        l4 + doff
    } else {
        l4 + UDP_HDR_LEN
    };
    if hdr.gso_size == 0 {
        bail!("gso_size is 0");
    }
    let gso_size = usize::from(hdr.gso_size);
    let payload = pkt.len() - hdrs;
    // include/linux/virtio_net.h: "Too small packets are not really GSO ones."
    if pkt.len() - (l4 + base_hdr) <= gso_size || payload <= gso_size {
        return Ok(if needs_csum {
            single(Kind::CompleteChecksum {
                start: l4,
                at: l4 + csum_field,
            })
        } else {
            single(Kind::Verbatim)
        });
    }
    let segments = payload.div_ceil(gso_size);
    let csum_at = l4 + csum_field;
    let kind = if proto == PROTO_TCP {
        let l4_len = (pkt.len() - l4) as u16;
        let seed = if needs_csum {
            // What is in the field, less the whole packet's L4 length.
            add(be16(pkt, csum_at), !l4_len)
        } else {
            let (a, n) = ip.addrs();
            checksum::pseudo_header_no_len(PROTO_TCP, &pkt[a..a + n], &pkt[a + n..a + 2 * n])
        };
        Kind::Tcp { seed }
    } else {
        if segments > UDP_MAX_SEGMENTS {
            bail!("UDP GSO into {segments} segments; the kernel allows at most {UDP_MAX_SEGMENTS}");
        }
        Kind::Udp {
            seed: add(be16(pkt, csum_at), !be16(pkt, l4 + 4)),
        }
    };
    Ok(GsoPlan {
        kind,
        segments,
        len: pkt.len(),
        ip,
        hdrs,
        gso_size,
    })
}

/// The `csum_start` and `csum_start + csum_offset` of a `NEEDS_CSUM` header, checked
/// against the packet (computed in `usize`, so the u16 sum cannot overflow).
fn checksum_location(pkt: &[u8], hdr: &VirtioNetHdr, ip: &IpInfo) -> Result<(usize, usize)> {
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    let ip_hdr = if ip.is_v6 { IPV6_HDR_LEN } else { ip.l4_off };
    if start < ip_hdr {
        bail!("csum_start {start} is inside the {ip_hdr}-byte IP header");
    }
    if at + 2 > pkt.len() {
        bail!(
            "csum_start {start} + csum_offset {} + 2 is beyond the {}-byte packet",
            hdr.csum_offset,
            pkt.len()
        );
    }
    Ok((start, at))
}

fn gso_name(gso_type: u8) -> &'static str {
    match gso_type & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_TCPV4 => "GSO_TCPV4",
        VIRTIO_NET_HDR_GSO_TCPV6 => "GSO_TCPV6",
        VIRTIO_NET_HDR_GSO_UDP_L4 => "GSO_UDP_L4",
        _ => "GSO_NONE",
    }
}

/// Checks that `out_bufs` and `sizes` can take the plan's segments at `out_offset`.
pub fn check_outputs(
    plan: &GsoPlan,
    out_lens: impl ExactSizeIterator<Item = usize>,
    sizes_len: usize,
    out_offset: usize,
) -> Result<()> {
    let n = plan.segments;
    if out_lens.len() < n {
        bail!(
            "the packet splits into {n} segments but only {} out_bufs were given",
            out_lens.len()
        );
    }
    if sizes_len < n {
        bail!("the packet splits into {n} segments but sizes has room for {sizes_len}");
    }
    for (i, len) in out_lens.take(n).enumerate() {
        let need = plan.segment_len(i);
        if len < out_offset || len - out_offset < need {
            bail!("out_bufs[{i}] holds {len} bytes; segment {i} needs {need} after out_offset {out_offset}");
        }
    }
    Ok(())
}

/// Writes the planned segments: segment `i` into
/// `outs[i][out_offset..out_offset + plan.segment_len(i)]`.
///
/// Outputs too short or too few are an error raised before anything is written.
pub fn write_segments<B: AsMut<[u8]>>(
    plan: &GsoPlan,
    pkt: &[u8],
    outs: &mut [B],
    out_offset: usize,
) -> Result<usize> {
    if pkt.len() != plan.len {
        return Err(Error::fixed(
            "the packet changed between planning and writing",
        ));
    }
    check_outputs(
        plan,
        outs.iter_mut().map(|b| b.as_mut().len()),
        plan.segments,
        out_offset,
    )?;
    match plan.kind {
        Kind::Verbatim => {
            outs[0].as_mut()[out_offset..out_offset + pkt.len()].copy_from_slice(pkt);
        }
        Kind::CompleteChecksum { start, at } => {
            let out = &mut outs[0].as_mut()[out_offset..out_offset + pkt.len()];
            out.copy_from_slice(pkt);
            let c = !checksum::sum(&out[start..]);
            put16(out, at, if c == 0 { 0xffff } else { c });
        }
        Kind::Tcp { seed } | Kind::Udp { seed } => {
            let tcp = matches!(plan.kind, Kind::Tcp { .. });
            let ip = plan.ip;
            let l4 = ip.l4_off;
            let hdrs = plan.hdrs;
            let ip_id = be16(pkt, 4);
            let seq = be32(pkt, l4 + 4);
            let csum_at = l4 + if tcp { TCP_CSUM } else { UDP_CSUM };
            let last = plan.segments - 1;
            for (i, out) in outs[..plan.segments].iter_mut().enumerate() {
                let seg_len = plan.segment_len(i);
                let out = &mut out.as_mut()[out_offset..out_offset + seg_len];
                let data_at = hdrs + i * plan.gso_size;
                out[..hdrs].copy_from_slice(&pkt[..hdrs]);
                if ip.is_v6 {
                    put16(out, 4, (seg_len - IPV6_HDR_LEN) as u16);
                } else {
                    put16(out, 2, seg_len as u16);
                    put16(out, 4, ip_id.wrapping_add(i as u16));
                    let c = checksum::ipv4_header_checksum(&out[..l4]);
                    put16(out, 10, c);
                }
                let l4_len = (seg_len - l4) as u16;
                if tcp {
                    put32(out, l4 + 4, seq.wrapping_add((i * plan.gso_size) as u32));
                    if i != last {
                        out[l4 + TCP_FLAGS] &= !(TCP_FIN | TCP_PSH);
                    }
                    if i != 0 {
                        out[l4 + TCP_FLAGS] &= !TCP_CWR;
                    }
                } else {
                    put16(out, l4 + 4, l4_len);
                }
                put16(out, csum_at, 0);
                let (head, body) = out.split_at_mut(hdrs);
                let payload_sum =
                    checksum::copy_and_sum(body, &pkt[data_at..data_at + (seg_len - hdrs)]);
                let total = fold(
                    u64::from(add(seed, l4_len))
                        + u64::from(checksum::sum(&head[l4..]))
                        + u64::from(payload_sum),
                );
                let c = !total;
                put16(out, csum_at, if c == 0 && !tcp { 0xffff } else { c });
            }
        }
    }
    Ok(plan.segments)
}

/// Splits the super-packet `pkt` (the bytes after the virtio header) described by `hdr`.
///
/// Segment `i` goes to `out_bufs[i][out_offset..out_offset + sizes[i]]`; returns the
/// number of segments. Everything is checked before anything is written.
pub fn gso_split<B: AsMut<[u8]>>(
    pkt: &[u8],
    hdr: &VirtioNetHdr,
    out_bufs: &mut [B],
    sizes: &mut [usize],
    out_offset: usize,
    is_v6: Option<bool>,
) -> Result<usize> {
    let plan = plan(pkt, hdr, is_v6)?;
    check_outputs(
        &plan,
        out_bufs.iter_mut().map(|b| b.as_mut().len()),
        sizes.len(),
        out_offset,
    )?;
    let n = write_segments(&plan, pkt, out_bufs, out_offset)?;
    for (i, s) in sizes[..n].iter_mut().enumerate() {
        *s = plan.segment_len(i);
    }
    Ok(n)
}
