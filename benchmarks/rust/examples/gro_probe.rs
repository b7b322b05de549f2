//! gso_split and handle_gro of one 64 KiB TCP/IPv4 super-packet (45 segments) in a loop,
//! for `perf record`: `gro_probe ITERS split|gro|reset`. `reset` times only the refill of
//! the 45 buffers that `gro` does before each call (subtract it).
use std::hint::black_box;
use std::time::Instant;
use tunoffload::engine::{self as eng, checksum, VirtioNetHdr};

/// A super-packet as a TUN reader gets it: headers + `payload` bytes, pseudo-header sum in
/// the transport checksum field.
fn super_packet(v6: bool, udp: bool, payload: usize) -> (Vec<u8>, VirtioNetHdr) {
    let iph = if v6 { 40 } else { 20 };
    let l4h = if udp { 8 } else { 20 };
    let total = iph + l4h + payload;
    let mut p = vec![0u8; total];
    let proto = if udp { 17 } else { 6 };
    if v6 {
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        p[6] = proto;
        p[7] = 64;
        p[8] = 0xfd;
        p[23] = 1;
        p[24] = 0xfd;
        p[39] = 2;
    } else {
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let c = checksum::ipv4_header_checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    p[iph..iph + 4].copy_from_slice(&[0x9c, 0x40, 0x14, 0x51]);
    if udp {
        p[iph + 4..iph + 6].copy_from_slice(&((total - iph) as u16).to_be_bytes());
    } else {
        p[iph + 4..iph + 8].copy_from_slice(&1u32.to_be_bytes());
        p[iph + 8..iph + 12].copy_from_slice(&1u32.to_be_bytes());
        p[iph + 12] = 5 << 4;
        p[iph + 13] = 0x10;
    }
    for (i, b) in p[iph + l4h..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let (a, n) = if v6 { (8, 16) } else { (12, 4) };
    let ps = checksum::pseudo_header(
        proto,
        &p[a..a + n],
        &p[a + n..a + 2 * n],
        (total - iph) as u16,
    );
    let at = iph + if udp { 6 } else { 16 };
    p[at..at + 2].copy_from_slice(&ps.to_be_bytes());
    let hdr = VirtioNetHdr {
        flags: eng::VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: match (v6, udp) {
            (_, true) => eng::VIRTIO_NET_HDR_GSO_UDP_L4,
            (false, false) => eng::VIRTIO_NET_HDR_GSO_TCPV4,
            (true, false) => eng::VIRTIO_NET_HDR_GSO_TCPV6,
        },
        hdr_len: (iph + l4h) as u16,
        gso_size: 1448,
        csum_start: iph as u16,
        csum_offset: if udp { 6 } else { 16 },
    };
    (p, hdr)
}
fn main() {
    let (pkt, hdr) = super_packet(false, false, 45 * 1448);
    let mut orig = vec![0u8; 10 + pkt.len()];
    hdr.encode(&mut orig[..10]).unwrap();
    orig[10..].copy_from_slice(&pkt);
    let mut out: Vec<Vec<u8>> = (0..64).map(|_| vec![0u8; 10 + 1500]).collect();
    let mut sizes = vec![0usize; 64];
    let mut t = eng::GroTable::new();
    let iters: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(200000);
    let mode = std::env::args().nth(2).unwrap_or_default();
    let mut segs: Vec<Vec<u8>> = Vec::new();
    let n = eng::gso_split(&pkt, &hdr, &mut out, &mut sizes, 10, Some(false)).unwrap();
    for i in 0..n {
        segs.push(out[i][..10 + sizes[i]].to_vec());
    }
    let mut bufs: Vec<Vec<u8>> = segs
        .iter()
        .map(|s| {
            let mut v = s.clone();
            v.reserve(70000);
            v
        })
        .collect();
    let t0 = Instant::now();
    for _ in 0..iters {
        if mode == "split" {
            black_box(
                eng::gso_split(black_box(&pkt), &hdr, &mut out, &mut sizes, 10, Some(false))
                    .unwrap(),
            );
        } else {
            for (b, s) in bufs.iter_mut().zip(&segs) {
                b.truncate(0);
                b.extend_from_slice(s);
            }
            if mode != "reset" {
                black_box(eng::handle_gro(&mut bufs, 10, &mut t, true).unwrap().len());
            }
        }
    }
    println!(
        "{mode} n={n}: {:.2} us/iter",
        t0.elapsed().as_secs_f64() * 1e6 / iters as f64
    );
}
