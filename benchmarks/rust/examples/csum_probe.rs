use std::hint::black_box;
use std::time::Instant;
use tunoffload::engine::checksum;

fn main() {
    let data: Vec<u8> = (0..70000u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut dst = vec![0u8; 70000];
    for &len in &[1368usize, 1400, 1420, 65536] {
        let reps = 20_000_000 / len;
        let t = Instant::now();
        let mut acc = 0u32;
        for _ in 0..reps {
            acc = acc.wrapping_add(u32::from(checksum::sum(black_box(&data[10..10 + len]))));
        }
        let ns = t.elapsed().as_nanos() as f64 / reps as f64;
        let t = Instant::now();
        for _ in 0..reps {
            dst[..len].copy_from_slice(black_box(&data[10..10 + len]));
            black_box(&dst);
        }
        let cns = t.elapsed().as_nanos() as f64 / reps as f64;
        let t = Instant::now();
        for _ in 0..reps {
            acc = acc.wrapping_add(u32::from(checksum::copy_and_sum(&mut dst[..len], black_box(&data[10..10 + len]))));
        }
        let cs = t.elapsed().as_nanos() as f64 / reps as f64;
        println!("len {len}: sum {ns:.1} ns ({:.1} B/ns), copy {cns:.1} ns, copy_and_sum {cs:.1} ns  {acc}", len as f64 / ns);
    }
}
