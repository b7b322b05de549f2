//! gso_split and handle_gro of one 64 KiB TCP/IPv4 super-packet (45 segments) in a loop,
//! for `perf record`: `gro_probe ITERS split|gro|reset`. `reset` times only the refill of
//! the 45 buffers that `gro` does before each call (subtract it).
use std::hint::black_box;
use std::time::Instant;
use tunoffload::engine as eng;
use tunoffload_bench::{reset, segments, super_packet};

fn main() {
    let (pkt, hdr) = super_packet(false, false, 45 * 1448);
    let mut out: Vec<Vec<u8>> = (0..64).map(|_| vec![0u8; 10 + 1500]).collect();
    let mut sizes = vec![0usize; 64];
    let mut t = eng::GroTable::new();
    let iters: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(200000);
    let mode = std::env::args().nth(2).unwrap_or_default();
    let segs = segments(false, false, 45);
    let mut bufs = Vec::new();
    let t0 = Instant::now();
    for _ in 0..iters {
        if mode == "split" {
            black_box(
                eng::gso_split(black_box(&pkt), &hdr, &mut out, &mut sizes, 10, Some(false))
                    .unwrap(),
            );
        } else {
            reset(&mut bufs, &segs);
            if mode != "reset" {
                let w = eng::handle_gro(&mut bufs, 10, &mut t, true).unwrap().len();
                assert_eq!(black_box(w), 1, "the 45 segments coalesce into one packet");
            }
        }
    }
    println!(
        "{mode} n={}: {:.2} us/iter",
        segs.len(),
        t0.elapsed().as_secs_f64() * 1e6 / iters as f64
    );
}
