//! gso_split and handle_gro on 64 KiB inputs: tunoffload vs tun-rs vs memcpy, in one run.

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use tunoffload::engine::{self as eng, checksum, VirtioNetHdr};
use tunoffload_bench::{copy_target, reset, segments, super_packet};

const OFFSET: usize = 10;

fn tunrs_hdr(h: &VirtioNetHdr) -> tun_rs::VirtioNetHdr {
    tun_rs::VirtioNetHdr {
        flags: h.flags,
        gso_type: h.gso_type,
        hdr_len: h.hdr_len,
        gso_size: h.gso_size,
        csum_start: h.csum_start,
        csum_offset: h.csum_offset,
    }
}

fn bench_gso(c: &mut Criterion) {
    let cases = [
        ("tcp4", false, false),
        ("tcp6", true, false),
        ("udp4", false, true),
    ];
    let mut g = c.benchmark_group("gso_split_64k");
    for (name, v6, udp) in cases {
        let iph = if v6 { 40 } else { 20 };
        let l4h = if udp { 8 } else { 20 };
        let (pkt, hdr) = super_packet(v6, udp, 65535 - 40 - l4h - iph + 20);
        g.throughput(Throughput::Bytes(pkt.len() as u64));
        let mut outs = vec![vec![0u8; OFFSET + 1600]; 64];
        let mut sizes = vec![0usize; 64];
        g.bench_function(format!("tunoffload/{name}"), |b| {
            b.iter(|| {
                eng::gso_split(black_box(&pkt), &hdr, &mut outs, &mut sizes, OFFSET, None).unwrap()
            })
        });
        let mut input = pkt.clone();
        let th = tunrs_hdr(&hdr);
        g.bench_function(format!("tun-rs/{name}"), |b| {
            b.iter(|| {
                tun_rs::gso_split(black_box(&mut input), th, &mut outs, &mut sizes, OFFSET, v6)
                    .unwrap()
            })
        });
        let (mut dst, at) = copy_target(&pkt);
        let dst = &mut dst[at..at + pkt.len()];
        g.bench_function(format!("memcpy/{name}"), |b| {
            b.iter(|| dst.copy_from_slice(black_box(&pkt)))
        });
    }
    g.finish();
}

/// Times `f` on a freshly reset batch, `iters` times, after an untimed `prep` of `state`.
fn timed<S>(
    iters: u64,
    segs: &[Vec<u8>],
    state: &mut S,
    prep: impl Fn(&mut S),
    f: impl Fn(&mut S, &mut Vec<Vec<u8>>) -> usize,
) -> Duration {
    let mut bufs = Vec::new();
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        reset(&mut bufs, segs);
        prep(state);
        let t = Instant::now();
        black_box(f(state, &mut bufs));
        total += t.elapsed();
    }
    total
}

fn bench_gro(c: &mut Criterion) {
    let cases = [
        ("tcp4", false, false),
        ("tcp6", true, false),
        ("udp4", false, true),
    ];
    let mut g = c.benchmark_group("handle_gro_45");
    for (name, v6, udp) in cases {
        let segs = segments(v6, udp, 45);
        let bytes: usize = segs.iter().map(|s| s.len() - OFFSET).sum();
        g.throughput(Throughput::Bytes(bytes as u64));
        let mut table = eng::GroTable::new();
        g.bench_function(format!("tunoffload/{name}"), |b| {
            b.iter_custom(|n| {
                timed(
                    n,
                    &segs,
                    &mut table,
                    |_| (),
                    |t, bufs| eng::handle_gro(bufs, OFFSET, t, true).unwrap().len(),
                )
            })
        });
        // tun-rs's handle_gro leaves resetting its tables to its device (a crate-private
        // method), so each call gets fresh tables, made outside the timed part.
        let mut tables = (
            Default::default(),
            Default::default(),
            Vec::with_capacity(128),
        );
        g.bench_function(format!("tun-rs/{name}"), |b| {
            b.iter_custom(|n| {
                timed(
                    n,
                    &segs,
                    &mut tables,
                    |t| {
                        *t = (
                            Default::default(),
                            Default::default(),
                            Vec::with_capacity(128),
                        )
                    },
                    |(tcp, udp, to_write), bufs| {
                        tun_rs::handle_gro(bufs, OFFSET, tcp, udp, true, to_write).unwrap();
                        assert_eq!(to_write.len(), 1);
                        to_write.len()
                    },
                )
            })
        });
        let src = vec![7u8; bytes];
        let (mut dst, at) = copy_target(&src);
        let dst = &mut dst[at..at + bytes];
        g.bench_function(format!("memcpy/{name}"), |b| {
            b.iter(|| dst.copy_from_slice(black_box(&src)))
        });
    }
    g.finish();
}

fn bench_checksum(c: &mut Criterion) {
    let data: Vec<u8> = (0..65536u32).map(|i| (i * 7) as u8).collect();
    let mut g = c.benchmark_group("checksum_64k");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("tunoffload", |b| b.iter(|| checksum::sum(black_box(&data))));
    g.bench_function("tun-rs", |b| {
        b.iter(|| tun_rs::checksum(black_box(&data), 0))
    });
    g.finish();
}

criterion_group!(benches, bench_gso, bench_gro, bench_checksum);
criterion_main!(benches);
