//! handle_gro in a loop, for `valgrind --tool=callgrind --toggle-collect='*run_gro*'`.
use tunoffload::engine as eng;

#[inline(never)]
fn run_gro(bufs: &mut [Vec<u8>], t: &mut eng::GroTable) -> usize {
    eng::handle_gro(bufs, 10, t, true)
        .map(|w| w.len())
        .unwrap_or(0)
}

fn main() {
    let path = std::env::args().nth(1).expect("segments file");
    let data = std::fs::read(path).unwrap();
    // u16 length-prefixed packets
    let mut segs = Vec::new();
    let mut d = &data[..];
    while d.len() >= 2 {
        let l = u16::from_le_bytes([d[0], d[1]]) as usize;
        let mut b = vec![0u8; 10];
        b.extend_from_slice(&d[2..2 + l]);
        segs.push(b);
        d = &d[2 + l..];
    }
    let mut t = eng::GroTable::new();
    let mut bufs: Vec<Vec<u8>> = Vec::new();
    let mut n = 0;
    for _ in 0..2000 {
        tunoffload_bench::reset(&mut bufs, &segs);
        n += run_gro(&mut bufs, &mut t);
    }
    println!("{n}");
}
