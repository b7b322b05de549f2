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
use super::error::{bail, Error, ErrorKind, Result};
use super::packet::*;
use super::virtio::*;

/// The kernel's `UDP_MAX_SEGMENTS` (on newer kernels): a UDP super-packet of more segments
/// is refused, and GRO never builds one. (A `UDP_SEGMENT` send keeps to
/// [`MAX_SEGMENTS_PER_SEND`](crate::udp::MAX_SEGMENTS_PER_SEND), 64, which older kernels
/// take too.)
pub const UDP_MAX_SEGMENTS: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One segment: the packet unchanged.
    Verbatim,
    /// One segment: the packet with the checksum over `[start..]` stored at `at`.
    CompleteChecksum { start: usize, at: usize },
    /// TCP segments. `seed` plus each segment's L4 length gives its pseudo-header sum.
    Tcp { seed: u16, ip: IpInfo },
    /// UDP segments, as TCP.
    Udp { seed: u16, ip: IpInfo },
}

/// How a super-packet splits: validated, nothing written yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GsoPlan {
    kind: Kind,
    segments: usize,
    len: usize,
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
    let needs_csum = hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
    let single = |kind| GsoPlan {
        kind,
        segments: 1,
        len: pkt.len(),
        hdrs: 0,
        gso_size: 0,
    };
    if hdr.gso_type == VIRTIO_NET_HDR_GSO_NONE && !needs_csum {
        // A plain packet crosses as it is, whatever it holds (an IP fragment, headers the
        // engine does not parse), as it does through the kernel: only `is_v6` is checked.
        version(pkt, is_v6)?;
        return Ok(single(Kind::Verbatim));
    }
    let ip = parse_ip(pkt, is_v6)?;
    let ecn = hdr.gso_type & VIRTIO_NET_HDR_GSO_ECN != 0;
    let (proto, v6) = match hdr.gso_type & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_NONE if !ecn => {
            let (start, at) = checksum_location(pkt, hdr, &ip)?;
            return Ok(single(Kind::CompleteChecksum { start, at }));
        }
        VIRTIO_NET_HDR_GSO_TCPV4 => (PROTO_TCP, Some(false)),
        VIRTIO_NET_HDR_GSO_TCPV6 => (PROTO_TCP, Some(true)),
        VIRTIO_NET_HDR_GSO_UDP_L4 if !ecn => (PROTO_UDP, None),
        VIRTIO_NET_HDR_GSO_UDP => {
            bail!(
                UnsupportedGsoType,
                "gso_type GSO_UDP (UDP fragmentation offload) is not supported"
            )
        }
        // Reached only with the ECN bit: the arms above take these types without it.
        VIRTIO_NET_HDR_GSO_NONE | VIRTIO_NET_HDR_GSO_UDP_L4 => bail!(
            EcnRefused,
            "gso_type {:#04x}: the ECN bit 0x80 goes only with GSO_TCPV4 or GSO_TCPV6",
            hdr.gso_type
        ),
        _ => bail!(
            UnknownGsoType,
            "gso_type {:#04x} is not a known GSO type (0, 1, 4, 5, optionally | 0x80 for TCP)",
            hdr.gso_type
        ),
    };
    let name = gso_name(hdr.gso_type);
    if let Some(want_v6) = v6 {
        if want_v6 != ip.is_v6 {
            bail!(
                GsoIpVersionMismatch,
                "{name} on an IPv{} packet",
                if ip.is_v6 { 6 } else { 4 }
            );
        }
    }
    if ip.proto != proto {
        bail!(
            GsoProtocolMismatch,
            "{name} on a packet whose transport protocol is {}",
            ip.proto
        );
    }
    if ip.fragment {
        bail!(IpFragment, "{name} on an IP fragment");
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
            bail!(
                CsumStartMismatch,
                "csum_start {start} is not the transport header's offset {l4}"
            );
        }
        if at != l4 + csum_field {
            bail!(
                CsumOffsetMismatch,
                "csum_offset {} is not the {} checksum's offset {csum_field}",
                hdr.csum_offset,
                if proto == PROTO_TCP { "TCP" } else { "UDP" }
            );
        }
    } else if proto == PROTO_UDP {
        bail!(
            MissingNeedsCsum,
            "GSO_UDP_L4 without F_NEEDS_CSUM (the kernel refuses it)"
        );
    }
    if l4 + base_hdr > pkt.len() {
        bail!(
            TruncatedTransportHeader,
            "truncated transport header: {} bytes after offset {l4}",
            pkt.len() - l4
        );
    }
    let hdrs = if proto == PROTO_TCP {
        let doff = usize::from(pkt[l4 + 12] >> 4) * 4;
        if doff < TCP_HDR_LEN {
            bail!(
                BadTcpDataOffset,
                "TCP data offset {doff} is below the minimum of 20"
            );
        }
        if l4 + doff > pkt.len() {
            bail!(
                BadTcpDataOffset,
                "TCP header of {doff} bytes runs past the {}-byte packet",
                pkt.len()
            );
        }
        l4 + doff
    } else {
        let udp_len = usize::from(be16(pkt, l4 + 4));
        if udp_len != pkt.len() - l4 {
            bail!(
                UdpLengthMismatch,
                "UDP length {udp_len} disagrees with the {} bytes from the UDP header on",
                pkt.len() - l4
            );
        }
        l4 + UDP_HDR_LEN
    };
    if hdr.gso_size == 0 {
        bail!(GsoSizeZero, "gso_size is 0");
    }
    let gso_size = usize::from(hdr.gso_size);
    let payload = pkt.len() - hdrs;
    // include/linux/virtio_net.h: "Too small packets are not really GSO ones." It
    // measures from csum_start + sizeof(struct tcphdr), so TCP options count as payload.
    let really_gso = pkt.len() - (l4 + base_hdr) > gso_size;
    if really_gso && payload <= gso_size {
        // tcp_gso_segment then finds no more than one segment's payload and the kernel
        // drops the packet; a Linux sender never makes one.
        bail!(
            KernelWouldDrop,
            "{name} packet whose {payload}-byte payload fits in gso_size {gso_size} only \
             without its TCP options: the kernel drops it"
        );
    }
    if !really_gso {
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
        Kind::Tcp { seed, ip }
    } else {
        if segments > UDP_MAX_SEGMENTS {
            bail!(
                TooManySegments,
                "UDP GSO into {segments} segments; the kernel allows at most {UDP_MAX_SEGMENTS}"
            );
        }
        Kind::Udp {
            seed: add(be16(pkt, csum_at), !be16(pkt, l4 + 4)),
            ip,
        }
    };
    Ok(GsoPlan {
        kind,
        segments,
        len: pkt.len(),
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
        bail!(
            CsumStartOutOfRange,
            "csum_start {start} is inside the {ip_hdr}-byte IP header"
        );
    }
    if at + 2 > pkt.len() {
        let kind = if start >= pkt.len() {
            ErrorKind::CsumStartOutOfRange
        } else {
            ErrorKind::CsumOffsetOutOfRange
        };
        return Err(Error::new(
            kind,
            format!(
                "csum_start {start} + csum_offset {} + 2 is beyond the {}-byte packet",
                hdr.csum_offset,
                pkt.len()
            ),
        ));
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

/// Checks that `out_bufs` can take the plan's segments at `out_offset` (`sizes` is
/// [`gso_split`]'s to check).
fn check_outputs(
    plan: &GsoPlan,
    out_lens: impl ExactSizeIterator<Item = usize>,
    out_offset: usize,
) -> Result<()> {
    let n = plan.segments;
    if out_lens.len() < n {
        bail!(
            TooFewOutBufs,
            "the packet splits into {n} segments but only {} out_bufs were given",
            out_lens.len()
        );
    }
    for (i, len) in out_lens.take(n).enumerate() {
        let need = plan.segment_len(i);
        if len < out_offset || len - out_offset < need {
            bail!(OutBufTooSmall @ i, "out_bufs[{i}] holds {len} bytes; segment {i} needs {need} after out_offset {out_offset}");
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
            ErrorKind::PacketChanged,
            "the packet changed between planning and writing",
        ));
    }
    check_outputs(plan, outs.iter_mut().map(|b| b.as_mut().len()), out_offset)?;
    match plan.kind {
        Kind::Verbatim => {
            outs[0].as_mut()[out_offset..out_offset + pkt.len()].copy_from_slice(pkt);
        }
        Kind::CompleteChecksum { start, at } => {
            let out = &mut outs[0].as_mut()[out_offset..out_offset + pkt.len()];
            out[..start].copy_from_slice(&pkt[..start]);
            let c = !checksum::copy_and_sum(&mut out[start..], &pkt[start..]);
            put16(out, at, if c == 0 { 0xffff } else { c });
        }
        Kind::Tcp { seed, ip } | Kind::Udp { seed, ip } => {
            let tcp = matches!(plan.kind, Kind::Tcp { .. });
            let l4 = ip.l4_off;
            let hdrs = plan.hdrs;
            let ip_id = be16(pkt, 4);
            let seq = be32(pkt, l4 + 4);
            let csum_at = l4 + if tcp { TCP_CSUM } else { UDP_CSUM };
            let last = plan.segments - 1;
            // The headers' sums without the fields that change per segment (IPv4 length,
            // ID and checksum; TCP sequence, flags word and checksum; UDP length and
            // checksum): each segment then adds its own values, not 40+ bytes again.
            let ip_base = if ip.is_v6 {
                0
            } else {
                let h = &pkt[..l4];
                fold(
                    u64::from(checksum::sum(h))
                        + u64::from(!be16(h, 2))
                        + u64::from(!be16(h, 4))
                        + u64::from(!be16(h, 10)),
                )
            };
            let l4h = &pkt[l4..hdrs];
            let mut l4_base = u64::from(checksum::sum(l4h)) + u64::from(!be16(l4h, csum_at - l4));
            if tcp {
                l4_base +=
                    u64::from(!be16(l4h, 4)) + u64::from(!be16(l4h, 6)) + u64::from(!be16(l4h, 12));
            } else {
                l4_base += u64::from(!be16(l4h, 4));
            }
            let l4_base = fold(l4_base);
            for (i, out) in outs[..plan.segments].iter_mut().enumerate() {
                let seg_len = plan.segment_len(i);
                let out = &mut out.as_mut()[out_offset..out_offset + seg_len];
                let data_at = hdrs + i * plan.gso_size;
                out[..hdrs].copy_from_slice(&pkt[..hdrs]);
                if ip.is_v6 {
                    put16(out, 4, (seg_len - IPV6_HDR_LEN) as u16);
                } else {
                    let id = ip_id.wrapping_add(i as u16);
                    put16(out, 2, seg_len as u16);
                    put16(out, 4, id);
                    let c = !fold(u64::from(ip_base) + seg_len as u64 + u64::from(id));
                    put16(out, 10, c);
                }
                let l4_len = (seg_len - l4) as u16;
                let changed = if tcp {
                    let s = seq.wrapping_add((i * plan.gso_size) as u32);
                    put32(out, l4 + 4, s);
                    if i != last {
                        out[l4 + TCP_FLAGS] &= !(TCP_FIN | TCP_PSH);
                    }
                    if i != 0 {
                        out[l4 + TCP_FLAGS] &= !TCP_CWR;
                    }
                    u64::from(s >> 16) + u64::from(s & 0xffff) + u64::from(be16(out, l4 + 12))
                } else {
                    put16(out, l4 + 4, l4_len);
                    u64::from(l4_len)
                };
                let body = &mut out[hdrs..];
                let payload_sum =
                    checksum::copy_and_sum(body, &pkt[data_at..data_at + (seg_len - hdrs)]);
                let total = fold(
                    u64::from(add(seed, l4_len))
                        + u64::from(l4_base)
                        + changed
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
    let n = plan.segments;
    if sizes.len() < n {
        bail!(
            SizesTooShort,
            "the packet splits into {n} segments but sizes has room for {}",
            sizes.len()
        );
    }
    // write_segments checks the outputs before writing anything.
    let n = write_segments(&plan, pkt, out_bufs, out_offset)?;
    for (i, s) in sizes[..n].iter_mut().enumerate() {
        *s = plan.segment_len(i);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testutil::{build, l4_checksum_ok, Spec};

    fn tcp_hdr(v6: bool, gso_size: u16) -> VirtioNetHdr {
        VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: if v6 {
                VIRTIO_NET_HDR_GSO_TCPV6
            } else {
                VIRTIO_NET_HDR_GSO_TCPV4
            },
            hdr_len: 0,
            gso_size,
            csum_start: if v6 { 40 } else { 20 },
            csum_offset: 16,
        }
    }

    fn split(pkt: &[u8], hdr: &VirtioNetHdr) -> Result<Vec<Vec<u8>>> {
        let mut outs = vec![vec![0u8; 70000]; 64];
        let mut sizes = [0usize; 64];
        let n = gso_split(pkt, hdr, &mut outs, &mut sizes, 0, None)?;
        Ok((0..n).map(|i| outs[i][..sizes[i]].to_vec()).collect())
    }

    #[test]
    fn tcp_segments_follow_the_kernel() {
        for v6 in [false, true] {
            let spec = Spec {
                v6,
                payload: (0..3000u32).map(|i| i as u8).collect(),
                flags: TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR,
                seq: u32::MAX - 10,
                id: 0xffff,
                ..Spec::default()
            };
            let segs = split(&build(&spec, true), &tcp_hdr(v6, 1000)).unwrap();
            assert_eq!(segs.len(), 3);
            let iph = if v6 { 40 } else { 20 };
            for (i, s) in segs.iter().enumerate() {
                assert!(l4_checksum_ok(s), "segment {i} checksum");
                let seq = be32(s, iph + 4);
                assert_eq!(seq, spec.seq.wrapping_add(1000 * i as u32));
                let flags = s[iph + TCP_FLAGS];
                assert_eq!(
                    flags & (TCP_FIN | TCP_PSH) != 0,
                    i == 2,
                    "FIN/PSH only last"
                );
                assert_eq!(flags & TCP_CWR != 0, i == 0, "CWR only first");
                if !v6 {
                    assert_eq!(be16(s, 4), 0xffffu16.wrapping_add(i as u16));
                    assert_eq!(be16(s, 2) as usize, s.len());
                    assert_eq!(checksum::sum(&s[..20]), 0xffff);
                } else {
                    assert_eq!(be16(s, 4) as usize, s.len() - 40);
                }
                assert_eq!(&s[iph + 20..], &spec.payload[i * 1000..(i + 1) * 1000]);
            }
        }
    }

    #[test]
    fn hdr_len_is_not_trusted() {
        let pkt = build(
            &Spec {
                payload: vec![1; 2500],
                ..Spec::default()
            },
            true,
        );
        let good = split(&pkt, &tcp_hdr(false, 1000)).unwrap();
        for hdr_len in [0, 40, 1040, 2540, u16::MAX] {
            let h = VirtioNetHdr {
                hdr_len,
                ..tcp_hdr(false, 1000)
            };
            assert_eq!(split(&pkt, &h).unwrap(), good, "hdr_len {hdr_len}");
        }
    }

    #[test]
    fn udp_zero_checksum_is_sent_as_ffff() {
        // Find a payload whose first segment's checksum computes to 0.
        let mut spec = Spec {
            udp: true,
            payload: vec![0x11; 2000],
            ..Spec::default()
        };
        let h = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_UDP_L4,
            gso_size: 1000,
            csum_start: 20,
            csum_offset: 6,
            hdr_len: 28,
        };
        let seg0 = &split(&build(&spec, true), &h).unwrap()[0];
        // Adding the checksum c to one payload word makes the segment's sum 0xffff, so
        // its checksum computes to 0.
        let c = be16(seg0, 26);
        let old = u16::from_be_bytes([spec.payload[0], spec.payload[1]]);
        spec.payload[..2].copy_from_slice(&checksum::add(old, c).to_be_bytes());
        let seg0 = &split(&build(&spec, true), &h).unwrap()[0];
        assert_eq!(be16(seg0, 26), 0xffff);
        assert!(l4_checksum_ok(seg0));
    }

    /// One refused input: the packet and header, the outputs offered, the error wanted.
    struct Refusal {
        name: &'static str,
        pkt: Vec<u8>,
        hdr: VirtioNetHdr,
        outs: usize,
        out_len: usize,
        sizes: usize,
        out_offset: usize,
        is_v6: Option<bool>,
        want: ErrorKind,
        index: Option<usize>,
    }

    fn refusal(name: &'static str, pkt: &[u8], hdr: VirtioNetHdr, want: ErrorKind) -> Refusal {
        Refusal {
            name,
            pkt: pkt.to_vec(),
            hdr,
            outs: 8,
            out_len: 4000,
            sizes: 8,
            out_offset: 0,
            is_v6: None,
            want,
            index: None,
        }
    }

    fn edit(pkt: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut p = pkt.to_vec();
        f(&mut p);
        p
    }

    #[test]
    fn malformed_inputs_are_errors() {
        use ErrorKind::*;
        let payload = |n| Spec {
            payload: vec![1; n],
            ..Spec::default()
        };
        let v4 = build(&payload(3000), true);
        let v6 = build(
            &Spec {
                v6: true,
                ..payload(3000)
            },
            true,
        );
        let u4 = build(
            &Spec {
                udp: true,
                ..payload(3000)
            },
            true,
        );
        let h4 = tcp_hdr(false, 1000);
        let h6 = tcp_hdr(true, 1000);
        let hu = VirtioNetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_UDP_L4,
            csum_offset: 6,
            ..h4
        };
        let none = VirtioNetHdr { gso_type: 0, ..h4 };
        let opts = build(
            &Spec {
                tcp_opts: vec![1; 12],
                ..payload(1000)
            },
            true,
        );
        // A hop-by-hop extension header whose length runs past the packet.
        let ext = edit(&v6[..48], |p| {
            put16(p, 4, 8);
            p[6] = 0;
            p[41] = 1;
        });
        // Nine destination-options headers in a row: more than the walk takes.
        let exts = edit(&v6[..40], |p| {
            put16(p, 4, 72);
            p[6] = 60;
            for _ in 0..9 {
                p.extend_from_slice(&[60, 0, 0, 0, 0, 0, 0, 0]);
            }
        });
        let cases = vec![
            refusal("empty", &[], h4, EmptyPacket),
            refusal(
                "empty, plain GSO_NONE",
                &[],
                VirtioNetHdr::default(),
                EmptyPacket,
            ),
            refusal("truncated", &v4[..30], h4, IpLengthMismatch),
            refusal("truncated IPv4 header", &v4[..12], h4, TruncatedIpHeader),
            refusal("truncated IPv6 header", &v6[..30], h6, TruncatedIpHeader),
            refusal("not ip", &edit(&v4, |p| p[0] = 0x55), h4, BadIpVersion),
            refusal("ihl < 5", &edit(&v4, |p| p[0] = 0x44), h4, BadIhl),
            refusal(
                "ihl beyond",
                &edit(&v4[..30], |p| {
                    p[0] = 0x4f;
                    put16(p, 2, 30)
                }),
                h4,
                BadIhl,
            ),
            refusal(
                "total length",
                &edit(&v4, |p| put16(p, 2, 100)),
                h4,
                IpLengthMismatch,
            ),
            refusal(
                "v6 payload length",
                &edit(&v6, |p| put16(p, 4, 7)),
                h6,
                IpLengthMismatch,
            ),
            refusal("v6 extension runs past", &ext, h6, TruncatedIpv6Extension),
            refusal("v6 extensions too many", &exts, h6, TooManyIpv6Extensions),
            refusal("fragment", &edit(&v4, |p| p[6] = 0x20), h4, IpFragment),
            refusal("v6 packet for TCPV4", &v6, h4, GsoIpVersionMismatch),
            refusal("v4 packet for TCPV6", &v4, h6, GsoIpVersionMismatch),
            refusal(
                "UDP packet for TCPV4",
                &u4,
                VirtioNetHdr {
                    csum_offset: 16,
                    ..h4
                },
                GsoProtocolMismatch,
            ),
            refusal(
                "gso_size 0",
                &v4,
                VirtioNetHdr { gso_size: 0, ..h4 },
                GsoSizeZero,
            ),
            refusal(
                "UFO",
                &v4,
                VirtioNetHdr {
                    gso_type: VIRTIO_NET_HDR_GSO_UDP,
                    ..h4
                },
                UnsupportedGsoType,
            ),
            refusal(
                "unknown type",
                &v4,
                VirtioNetHdr { gso_type: 2, ..h4 },
                UnknownGsoType,
            ),
            refusal(
                "udp ecn",
                &u4,
                VirtioNetHdr {
                    gso_type: 0x85,
                    ..hu
                },
                EcnRefused,
            ),
            refusal(
                "gso_none ecn",
                &v4,
                VirtioNetHdr {
                    gso_type: 0x80,
                    ..h4
                },
                EcnRefused,
            ),
            refusal(
                "csum_start beyond",
                &v4,
                VirtioNetHdr {
                    csum_start: 4000,
                    ..h4
                },
                CsumStartOutOfRange,
            ),
            refusal(
                "csum overflow u16",
                &v4,
                VirtioNetHdr {
                    csum_start: 0xfff0,
                    csum_offset: 0x20,
                    ..h4
                },
                CsumStartOutOfRange,
            ),
            refusal(
                "csum_offset beyond",
                &v4,
                VirtioNetHdr {
                    csum_offset: 3019,
                    ..h4
                },
                CsumOffsetOutOfRange,
            ),
            refusal(
                "csum_offset wrong",
                &v4,
                VirtioNetHdr {
                    csum_offset: 6,
                    ..h4
                },
                CsumOffsetMismatch,
            ),
            refusal(
                "csum_start wrong",
                &v4,
                VirtioNetHdr {
                    csum_start: 24,
                    ..h4
                },
                CsumStartMismatch,
            ),
            refusal(
                "gso_none csum beyond",
                &v4,
                VirtioNetHdr {
                    csum_start: 3039,
                    csum_offset: 0,
                    ..none
                },
                CsumOffsetOutOfRange,
            ),
            refusal(
                "gso_none csum in ip header",
                &v4,
                VirtioNetHdr {
                    csum_start: 4,
                    csum_offset: 0,
                    ..none
                },
                CsumStartOutOfRange,
            ),
            refusal(
                "udp without NEEDS_CSUM",
                &u4,
                VirtioNetHdr { flags: 0, ..hu },
                MissingNeedsCsum,
            ),
            refusal(
                "truncated tcp header",
                &edit(&v4[..30], |p| put16(p, 2, 30)),
                VirtioNetHdr { flags: 0, ..h4 },
                TruncatedTransportHeader,
            ),
            refusal(
                "truncated tcp header, checksum field in it",
                &edit(&v4[..38], |p| put16(p, 2, 38)),
                h4,
                TruncatedTransportHeader,
            ),
            refusal(
                "data offset < 5",
                &edit(&v4, |p| p[32] = 0x40),
                h4,
                BadTcpDataOffset,
            ),
            refusal(
                "data offset beyond",
                &edit(&v4[..50], |p| {
                    put16(p, 2, 50);
                    p[32] = 0xf0;
                }),
                h4,
                BadTcpDataOffset,
            ),
            refusal(
                "udp length",
                &edit(&u4, |p| put16(p, 24, 7)),
                hu,
                UdpLengthMismatch,
            ),
            refusal(
                "udp into 129 segments",
                &build(
                    &Spec {
                        udp: true,
                        ..payload(129 * 10)
                    },
                    true,
                ),
                VirtioNetHdr { gso_size: 10, ..hu },
                TooManySegments,
            ),
            refusal(
                "payload fits gso_size only without the options (the kernel drops it)",
                &opts,
                VirtioNetHdr {
                    gso_size: 1005,
                    ..h4
                },
                KernelWouldDrop,
            ),
            Refusal {
                is_v6: Some(true),
                ..refusal("is_v6 wrong", &v4, h4, IpVersionMismatch)
            },
            Refusal {
                is_v6: Some(true),
                ..refusal(
                    "is_v6 wrong, plain GSO_NONE",
                    &v4,
                    VirtioNetHdr::default(),
                    IpVersionMismatch,
                )
            },
            Refusal {
                outs: 2,
                ..refusal("too few outputs", &v4, h4, TooFewOutBufs)
            },
            Refusal {
                out_len: 1000,
                index: Some(0),
                ..refusal("outputs too small", &v4, h4, OutBufTooSmall)
            },
            Refusal {
                out_offset: 1500,
                out_len: 2000,
                index: Some(0),
                ..refusal("out_offset leaves too little", &v4, h4, OutBufTooSmall)
            },
            Refusal {
                out_offset: 5000,
                index: Some(0),
                ..refusal("out_offset beyond the outputs", &v4, h4, OutBufTooSmall)
            },
            Refusal {
                sizes: 2,
                ..refusal("sizes too short", &v4, h4, SizesTooShort)
            },
        ];
        for c in cases {
            let mut outs = vec![vec![0x5au8; c.out_len]; c.outs];
            let mut sizes = vec![0usize; c.sizes];
            let r = gso_split(&c.pkt, &c.hdr, &mut outs, &mut sizes, c.out_offset, c.is_v6);
            let name = c.name;
            let e = r.expect_err(name);
            assert_eq!(e.kind(), c.want, "{name}: {e}");
            assert_eq!(e.index(), c.index, "{name}: {e}");
            assert!(!e.message().is_empty(), "{name}");
            assert!(
                outs.iter().all(|o| o.iter().all(|&b| b == 0x5a)),
                "{name}: wrote"
            );
            assert!(sizes.iter().all(|&s| s == 0), "{name}: sizes written");
        }
    }

    #[test]
    fn a_packet_changed_after_planning_is_refused() {
        let pkt = build(&Spec::default(), true);
        let p = plan(&pkt, &tcp_hdr(false, 40), None).unwrap();
        let mut outs = vec![vec![0u8; 200]; 8];
        let e = write_segments(&p, &pkt[..pkt.len() - 1], &mut outs, 0).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PacketChanged);
    }

    #[test]
    fn small_gso_packet_is_one_segment_with_ffff_for_zero() {
        let pkt = build(
            &Spec {
                payload: vec![1; 500],
                ..Spec::default()
            },
            true,
        );
        let segs = split(&pkt, &tcp_hdr(false, 1000)).unwrap();
        assert_eq!(segs.len(), 1);
        assert!(l4_checksum_ok(&segs[0]));
        assert_eq!(&segs[0][..36], &pkt[..36]);
    }

    #[test]
    fn gso_none_completes_or_copies() {
        let pkt = build(
            &Spec {
                payload: vec![9; 300],
                ..Spec::default()
            },
            true,
        );
        let h = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..Default::default()
        };
        let segs = split(&pkt, &h).unwrap();
        assert!(l4_checksum_ok(&segs[0]));
        let segs = split(&pkt, &VirtioNetHdr::default()).unwrap();
        assert_eq!(segs, vec![pkt]);
    }
}
