//! The batch AEAD on a tunnel's batch (45 packets of 1420 bytes, a 64 KiB super-packet's
//! worth): `ring` alone (`seal_in_place_separate_tag` / `open_in_place` in a loop over the
//! same buffers), tunoffload's `Sealer::seal` / `Opener::open`, and a memcpy of the same
//! bytes; and the cost of building a `ring` key (what rebuilding one per batch would add).
//!
//!     cd benchmarks/rust && cargo bench --bench aead

use criterion::measurement::WallTime;
use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use tunoffload::aead::{padded_len, Key, Opener, Sealer, HEADER_LEN, OVERHEAD};
use tunoffload_bench::super_packet;

const PACKETS: usize = 45;
const SIZE: usize = 1420;
const KEY: [u8; 32] = [0x5a; 32];
/// Room for the message header in front of each packet (and a virtio header before it).
const OFFSET: usize = 10 + HEADER_LEN;

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

fn ring_key() -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &KEY).unwrap())
}

/// The batch as a TUN read leaves it: each packet at `OFFSET`, room for padding and tag.
fn packets() -> Vec<Vec<u8>> {
    let (pkt, _) = super_packet(false, true, SIZE - 28);
    assert_eq!(pkt.len(), SIZE);
    let mut b = vec![0u8; OFFSET];
    b.extend_from_slice(&pkt);
    b.resize(OFFSET + padded_len(SIZE, None) + 16, 0);
    vec![b; PACKETS]
}

/// The same bytes copied from one batch's buffers into another's.
fn memcpy(g: &mut BenchmarkGroup<'_, WallTime>) {
    let src = packets();
    let mut dst = packets();
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            for (d, s) in dst.iter_mut().zip(&src) {
                d[OFFSET..OFFSET + SIZE].copy_from_slice(black_box(&s[OFFSET..OFFSET + SIZE]));
            }
        })
    });
}

fn bench_seal(c: &mut Criterion) {
    let mut g = c.benchmark_group("aead_seal_45x1420");
    g.throughput(Throughput::Bytes((PACKETS * SIZE) as u64));
    let padded = padded_len(SIZE, None);

    let key = ring_key();
    let mut bufs = packets();
    g.bench_function("ring", |b| {
        let mut counter = 0u64;
        b.iter(|| {
            for buf in bufs.iter_mut() {
                let tag = key
                    .seal_in_place_separate_tag(
                        nonce(counter),
                        Aad::empty(),
                        &mut buf[OFFSET..OFFSET + padded],
                    )
                    .unwrap();
                buf[OFFSET + padded..][..16].copy_from_slice(tag.as_ref());
                counter += 1;
            }
        })
    });

    // Sealing changes the buffers: each run starts again from the packets (untimed).
    let sealer = Sealer::new(&Key::from(KEY), 1);
    let fresh = packets();
    g.bench_function("tunoffload", |b| {
        b.iter_batched_ref(
            || (fresh.clone(), vec![SIZE; PACKETS]),
            |(bufs, sizes)| sealer.seal(bufs, OFFSET, sizes, None).unwrap(),
            BatchSize::SmallInput,
        )
    });

    memcpy(&mut g);
    g.finish();
}

fn bench_open(c: &mut Criterion) {
    let mut g = c.benchmark_group("aead_open_45x1420");
    g.throughput(Throughput::Bytes((PACKETS * SIZE) as u64));
    let message = padded_len(SIZE, None) + OVERHEAD;
    // Each run opens fresh messages (new counters, so the replay window takes them),
    // sealed untimed before it; the messages are at OFFSET - HEADER_LEN.
    let sealer = Sealer::new(&Key::from(KEY), 1);
    let fresh = packets();
    let batch = || {
        let mut bufs = fresh.clone();
        let mut sizes = vec![SIZE; PACKETS];
        sealer.seal(&mut bufs, OFFSET, &mut sizes, None).unwrap();
        (bufs, sizes)
    };

    let key = ring_key();
    g.bench_function("ring", |b| {
        b.iter_batched_ref(
            batch,
            |(bufs, _)| {
                for buf in bufs.iter_mut() {
                    let counter = u64::from_le_bytes(buf[OFFSET - 8..OFFSET].try_into().unwrap());
                    let sealed = &mut buf[OFFSET..OFFSET - HEADER_LEN + message];
                    black_box(
                        key.open_in_place(nonce(counter), Aad::empty(), sealed)
                            .unwrap(),
                    );
                }
            },
            BatchSize::SmallInput,
        )
    });

    let opener = Opener::new(&Key::from(KEY), 1);
    g.bench_function("tunoffload", |b| {
        b.iter_batched_ref(
            batch,
            |(bufs, sizes)| {
                let opened = opener.open(bufs, OFFSET - HEADER_LEN, sizes).unwrap();
                assert_eq!(opened.packets, PACKETS);
            },
            BatchSize::SmallInput,
        )
    });

    memcpy(&mut g);
    g.finish();
}

/// What building a `ring` key costs (rebuilding one per batch, rather than keeping one
/// and wiping it on drop, would add this to every batch, plus the wipe of its copy).
fn bench_key(c: &mut Criterion) {
    let key = Key::from(KEY);
    c.bench_function("aead_key/ring_key_from_bytes", |b| {
        b.iter(|| black_box(ring_key()))
    });
    c.bench_function("aead_key/sealer_new_and_drop", |b| {
        b.iter(|| black_box(Sealer::new(&key, 1)))
    });
}

criterion_group!(benches, bench_seal, bench_open, bench_key);
criterion_main!(benches);
