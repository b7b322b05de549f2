//! The checksum loop, timed in one process against the form it replaced (32-bit words
//! widened into 64-bit lanes, compiled for AVX2; the copy a separate `memcpy` first) and
//! against a plain copy of the same bytes, rounds interleaved.
//!
//!     cargo run --release --example csum_probe
use std::hint::black_box;
use std::time::Instant;
use tunoffload::engine::checksum;

/// The earlier loop, kept here for comparison only.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn old_sum(data: &[u8]) -> u16 {
    let mut chunks = data.chunks_exact(4);
    let mut total: u64 = (&mut chunks)
        .map(|w| u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
        .sum();
    for w in chunks.remainder().chunks(2) {
        total += u64::from(u16::from_ne_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    checksum::fold(total).swap_bytes()
}

fn time(reps: usize, mut f: impl FnMut() -> u16) -> f64 {
    let t = Instant::now();
    let mut acc = 0u32;
    for _ in 0..reps {
        acc = acc.wrapping_add(u32::from(f()));
    }
    black_box(acc);
    t.elapsed().as_nanos() as f64 / reps as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    assert!(std::arch::is_x86_feature_detected!("avx2"), "needs AVX2");
    let src: Vec<u8> = (0..70000u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut dst = vec![0u8; 70000];
    println!("ns per call, medians of 31 interleaved rounds");
    println!("  bytes    copy  old sum  new sum  old copy+sum  new copy+sum");
    for len in [1368usize, 1420, 9000, 65536] {
        let reps = 2_000_000 / len + 1;
        let s = &src[10..10 + len];
        let mut r: [Vec<f64>; 5] = Default::default();
        for _ in 0..31 {
            r[0].push(time(reps, || {
                dst[..len].copy_from_slice(black_box(s));
                black_box(&dst);
                0
            }));
            // SAFETY: AVX2 is present (asserted above).
            r[1].push(time(reps, || unsafe { old_sum(black_box(s)) }));
            r[2].push(time(reps, || checksum::sum(black_box(s))));
            r[3].push(time(reps, || {
                dst[..len].copy_from_slice(black_box(s));
                // SAFETY: as above.
                unsafe { old_sum(&dst[..len]) }
            }));
            r[4].push(time(reps, || {
                checksum::copy_and_sum(&mut dst[..len], black_box(s))
            }));
        }
        // SAFETY: as above.
        assert_eq!(checksum::sum(s), unsafe { old_sum(s) });
        let m: Vec<f64> = r.into_iter().map(median).collect();
        println!(
            "  {len:5}  {:6.1}  {:7.1}  {:7.1}  {:12.1}  {:12.1}",
            m[0], m[1], m[2], m[3], m[4]
        );
    }
}
