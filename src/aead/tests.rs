//! The AEAD's tests: byte for byte against RustCrypto's `chacha20poly1305`, every message
//! in its bucket, the batch's order, counter exhaustion and concurrency.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};

use super::*;
use crate::engine::ErrorKind;

/// A small seeded PRNG (xorshift64*), so the property tests need no extra crate.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn key(&mut self) -> [u8; 32] {
        self.bytes(32).try_into().unwrap()
    }
}

// ----------------------------------------------------------------------------------------
// The reference: RustCrypto's ChaCha20-Poly1305 and the message format written out.

fn reference_nonce(counter: u64) -> [u8; 12] {
    let mut n = [0; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

/// The message RustCrypto makes of `packet`, padded to `padded` bytes.
fn reference_seal(
    key: &[u8; 32],
    receiver: u32,
    counter: u64,
    packet: &[u8],
    padded: usize,
) -> Vec<u8> {
    let mut plain = packet.to_vec();
    plain.resize(padded, 0);
    let c = ChaCha20Poly1305::new_from_slice(key).unwrap();
    let sealed = c
        .encrypt(Nonce::from_slice(&reference_nonce(counter)), &plain[..])
        .unwrap();
    let mut msg = vec![4, 0, 0, 0];
    msg.extend_from_slice(&receiver.to_le_bytes());
    msg.extend_from_slice(&counter.to_le_bytes());
    msg.extend_from_slice(&sealed);
    msg
}

/// wireguard-go's `calculatePaddingSize`, transcribed: the padding (not the padded size).
fn go_padding(size: usize, mtu: usize) -> usize {
    let mut last = size;
    if mtu == 0 {
        return ((last + 15) & !15) - last;
    }
    if last > mtu {
        last %= mtu;
    }
    let padded = ((last + 15) & !15).min(mtu);
    padded - last
}

/// A plaintext of `n` bytes that is an IP packet of exactly `n` bytes where it can be
/// (IPv4 from 20 bytes, IPv6 from 40 when `v6`), random bytes after its header.
fn ip_packet(rng: &mut Rng, n: usize, v6: bool) -> Vec<u8> {
    let mut p = rng.bytes(n);
    if v6 && n >= 40 {
        p[0] = 0x60 | (p[0] & 15);
        p[4..6].copy_from_slice(&((n - 40) as u16).to_be_bytes());
    } else if n >= 20 {
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(n as u16).to_be_bytes());
    } else if let Some(b) = p.first_mut() {
        *b = 0x45; // too short for any IP header
    }
    p
}

/// Buffers holding `packets` at `offset`, with `slack` random bytes after each.
fn batch(rng: &mut Rng, packets: &[Vec<u8>], offset: usize, slack: usize) -> Vec<Vec<u8>> {
    packets
        .iter()
        .map(|p| [rng.bytes(offset), p.clone(), rng.bytes(slack)].concat())
        .collect()
}

// ----------------------------------------------------------------------------------------
// Byte for byte.

/// Sealed messages are RustCrypto's encryption of the padded packet under nonce
/// 0000 || counter, behind the header, for sizes 0..=65535; and they open back to the
/// packets (keepalives counted, non-IP plaintexts dropped as malformed).
#[test]
fn seal_matches_reference_and_opens() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut sizes_to_try: Vec<usize> = (0..=100).collect();
    sizes_to_try.extend([1279, 1280, 1420, 1440, 65519, 65520, 65534, 65535]);
    sizes_to_try.extend((0..60).map(|_| rng.below(65536)));
    sizes_to_try.extend((0..60).map(|_| rng.below(2000)));
    let mut total = 0;
    for (round, chunk) in sizes_to_try.chunks(7).enumerate() {
        let key = rng.key();
        let receiver = rng.next() as u32;
        let first = if round % 5 == 4 {
            rng.next() >> 2
        } else {
            rng.next() % 1000
        };
        let mtu = match round % 4 {
            0 => None,
            1 => Some(0),
            2 => Some(1420),
            _ => Some(rng.below(70000) + 1),
        };
        let offset = HEADER_LEN + rng.below(40);
        let v6 = round % 2 == 1;
        let packets: Vec<Vec<u8>> = chunk.iter().map(|&n| ip_packet(&mut rng, n, v6)).collect();
        let slack = rng.below(3) * 8;
        let mut bufs = batch(&mut rng, &packets, offset, slack);
        let mut sizes: Vec<usize> = packets.iter().map(Vec::len).collect();
        let sealer = Sealer::with_counter(&Key::from(key), receiver, first);
        assert_eq!(
            sealer.seal(&mut bufs, offset, &mut sizes, mtu),
            Ok(chunk.len())
        );
        assert_eq!(sealer.next_counter(), first + chunk.len() as u64);
        for (i, p) in packets.iter().enumerate() {
            let padded = p.len() + go_padding(p.len(), mtu.unwrap_or(0));
            assert_eq!(padded, padded_len(p.len(), mtu));
            let want = reference_seal(&key, receiver, first + i as u64, p, padded);
            assert_eq!(
                sizes[i],
                want.len(),
                "round {round}, packet {i} of {} bytes",
                p.len()
            );
            assert!(
                bufs[i][offset - HEADER_LEN..][..sizes[i]] == want[..],
                "round {round}, packet {i} of {} bytes: not the reference's message",
                p.len()
            );
        }
        // Open them where they are (messages at offset - 16).
        let opener = Opener::new(&Key::from(key), receiver);
        let kept = bufs.clone();
        let opened = opener
            .open(&mut bufs, offset - HEADER_LEN, &mut sizes)
            .unwrap();
        let is_packet = |p: &Vec<u8>| p.len() >= 20;
        let want: Vec<&Vec<u8>> = packets.iter().filter(|p| is_packet(p)).collect();
        assert_eq!(
            (opened.packets, opened.other),
            (want.len(), 0),
            "round {round}"
        );
        for (j, p) in want.iter().enumerate() {
            assert_eq!(
                &bufs[j][offset..][..sizes[j]],
                &p[..],
                "round {round}, packet {j}"
            );
        }
        let s = opener.stats();
        let keepalives = packets.iter().filter(|p| p.is_empty()).count() as u64;
        assert_eq!(s.packets, want.len() as u64);
        assert_eq!(s.bytes, want.iter().map(|p| p.len() as u64).sum::<u64>());
        assert_eq!(s.keepalives, keepalives);
        assert_eq!(
            s.dropped_malformed,
            chunk.len() as u64 - s.packets - keepalives
        );
        assert_eq!(s, opened.stats);
        // The same messages again: all replayed.
        let mut again = kept;
        let mut sizes: Vec<usize> = packets
            .iter()
            .map(|p| padded_len(p.len(), mtu) + OVERHEAD)
            .collect();
        let opened = opener
            .open(&mut again, offset - HEADER_LEN, &mut sizes)
            .unwrap();
        assert_eq!(opened.packets + opened.other, 0);
        assert_eq!(opened.stats.dropped_replayed, chunk.len() as u64);
        total += chunk.len();
    }
    assert!(total > 200);
}

/// `open` opens what RustCrypto seals, also unpadded and over-padded plaintexts (the
/// padding is whatever follows the IP length).
#[test]
fn opens_reference_messages() {
    let mut rng = Rng(77);
    let key = rng.key();
    let opener = Opener::new(&Key::from(key), 9);
    let mut want = vec![];
    let mut bufs = vec![];
    for counter in 0..200u64 {
        let n = if counter < 100 {
            counter as usize
        } else {
            rng.below(9000)
        };
        let p = ip_packet(&mut rng, n, counter % 3 == 0);
        let padded = if n == 0 { 0 } else { n + rng.below(40) };
        let msg = reference_seal(&key, 9, counter * 7, &p, padded);
        bufs.push([vec![0xee; 5], msg].concat());
        want.push(p);
    }
    let mut sizes: Vec<usize> = bufs.iter().map(|b| b.len() - 5).collect();
    let opened = opener.open(&mut bufs, 5, &mut sizes).unwrap();
    let packets: Vec<&Vec<u8>> = want.iter().filter(|p| p.len() >= 20).collect();
    assert_eq!(opened.packets, packets.len());
    for (j, p) in packets.iter().enumerate() {
        assert_eq!(&bufs[j][5 + HEADER_LEN..][..sizes[j]], &p[..]);
    }
    assert_eq!(opened.stats.keepalives, 1);
}

#[test]
fn padding_is_wireguard_gos() {
    for size in (0..200).chain([1419, 1420, 1421, 1500, 2839, 2840, 2841, 65535]) {
        for mtu in [0, 1, 15, 16, 17, 100, 1280, 1420, 1500, 65535] {
            assert_eq!(
                padded_len(size, Some(mtu)),
                size + go_padding(size, mtu),
                "size {size}, mtu {mtu}"
            );
        }
        assert_eq!(padded_len(size, None), size + go_padding(size, 0));
    }
    assert_eq!(padded_len(1419, Some(1420)), 1420);
    assert_eq!(padded_len(1420, Some(1420)), 1420);
    assert_eq!(padded_len(1405, Some(1420)), 1408);
    assert_eq!(padded_len(usize::MAX, None), usize::MAX);
}

#[test]
fn ip_lengths() {
    let v4 = |tot: u16, len: usize| {
        let mut p = vec![0; len];
        if len > 0 {
            p[0] = 0x45;
        }
        if len >= 4 {
            p[2..4].copy_from_slice(&tot.to_be_bytes());
        }
        p
    };
    let ihl = |words: u8, mut p: Vec<u8>| {
        p[0] = 0x40 | words;
        p
    };
    let v6 = |payload: u16, len: usize| {
        let mut p = vec![0x60; len];
        if len >= 6 {
            p[4..6].copy_from_slice(&payload.to_be_bytes());
        }
        p
    };
    let cases: &[(&str, Vec<u8>, Option<usize>)] = &[
        ("empty", vec![], None),
        ("v4 exact", v4(20, 20), Some(20)),
        ("v4 padded", v4(20, 32), Some(20)),
        ("v4 total length beyond", v4(33, 32), None),
        ("v4 total length below 20", v4(19, 32), None),
        ("v4 short", v4(19, 19), None),
        ("v4 max", v4(65535, 65535), Some(65535)),
        ("v4 header of 24", ihl(6, v4(24, 32)), Some(24)),
        ("v4 header length 0", ihl(0, v4(20, 32)), None),
        ("v4 header length 4", ihl(4, v4(20, 32)), None),
        ("v4 header beyond the total", ihl(15, v4(40, 64)), None),
        ("v6 exact", v6(0, 40), Some(40)),
        ("v6 padded", v6(8, 64), Some(48)),
        ("v6 beyond", v6(25, 64), None),
        ("v6 short", v6(0, 39), None),
        ("v6 max", v6(65535, 65575), Some(65575)),
        ("version 0", vec![0; 64], None),
        ("version 5", vec![0x50; 64], None),
    ];
    for (name, p, want) in cases {
        assert_eq!(ip_packet_len(p), *want, "{name}");
    }
}

// ----------------------------------------------------------------------------------------
// Buckets and order.

/// A seeded PRNG, a key from it, and the key's two ends for receiver index `index`: a
/// sealer from counter `first` and an opener.
fn pair(seed: u64, index: u32, first: u64) -> (Rng, Key, Sealer, Opener) {
    let mut rng = Rng(seed);
    let key = Key::from(rng.key());
    let sealer = Sealer::with_counter(&key, index, first);
    let opener = Opener::new(&key, index);
    (rng, key, sealer, opener)
}

/// Sealed message of an IPv4 packet of `n >= 20` bytes (or a keepalive for 0).
fn sealed(sealer: &Sealer, rng: &mut Rng, n: usize) -> (Vec<u8>, Vec<u8>) {
    let p = ip_packet(rng, n, false);
    let mut b = [vec![0; HEADER_LEN], p.clone()].concat();
    let len = sealer.seal_one(&mut b, HEADER_LEN, n, None).unwrap();
    assert_eq!(b.len(), len);
    (b, p)
}

/// Opens `msgs` as one batch at offset 0 and returns the result with the buffers as
/// left.
fn open_all(opener: &Opener, msgs: &[Vec<u8>]) -> (Opened, Vec<Vec<u8>>, Vec<usize>) {
    let mut bufs = msgs.to_vec();
    let mut sizes: Vec<usize> = msgs.iter().map(Vec::len).collect();
    let opened = opener.open(&mut bufs, 0, &mut sizes).unwrap();
    (opened, bufs, sizes)
}

/// A bit flipped anywhere in a message: in the type or receiver index it is another
/// message (handed back as it came); anywhere else (counter, ciphertext, tag) forged.
#[test]
fn every_flipped_bit_lands_in_its_bucket() {
    let (mut rng, _, sealer, opener) = pair(3, 0x0102_0304, 1000);
    let (msg, _) = sealed(&sealer, &mut rng, 40);
    assert_eq!(msg.len(), 16 + 48 + 16);
    let mut want = OpenStats::default();
    for bit in 0..msg.len() * 8 {
        let mut m = msg.clone();
        m[bit / 8] ^= 1 << (bit % 8);
        let (opened, bufs, sizes) = open_all(&opener, std::slice::from_ref(&m));
        assert_eq!(opened.packets, 0, "bit {bit}");
        if bit < 64 {
            assert_eq!(opened.other, 1, "bit {bit}");
            assert_eq!(
                (&bufs[0], sizes[0]),
                (&m, m.len()),
                "bit {bit}: not untouched"
            );
            want.other += 1;
        } else {
            assert_eq!(opened.stats.dropped_forged, 1, "bit {bit}");
            assert_eq!(sizes[0], 0);
            want.dropped_forged += 1;
        }
    }
    assert_eq!(opener.stats(), want);
    // The message itself still opens: no forgery moved the window.
    let (opened, bufs, sizes) = open_all(&opener, &[msg]);
    assert_eq!(opened.packets, 1);
    assert_eq!(ip_packet_len(&bufs[0][HEADER_LEN..][..sizes[0]]), Some(40));
}

/// One batch with a message of every kind, shuffled, against the expected layout and
/// counts.
#[test]
fn every_kind_in_one_batch() {
    let (mut rng, key, sealer, opener) = pair(11, 5, 0);
    let other_key = Sealer::new(&Key::from(rng.key()), 5);
    // Counters 0 and 1 end up behind the window (its top at 8130 = 1 + 8129), 2 within.
    let (early, _) = sealed(&sealer, &mut rng, 20); // counter 0
    sealed(&sealer, &mut rng, 20); // counter 1, never sent
    let (a, pa) = sealed(&sealer, &mut rng, 60); // counter 2
    let (b, pb) = sealed(&sealer, &mut rng, 1420);
    let (keepalive, _) = sealed(&sealer, &mut rng, 0);
    let (forged, _) = {
        let (mut m, p) = sealed(&sealer, &mut rng, 30);
        let last = m.len() - 1;
        m[last] ^= 0x80;
        (m, p)
    };
    let (wrong_key, _) = sealed(&other_key, &mut rng, 20);
    let (not_ip, _) = {
        let mut b = [vec![0; HEADER_LEN], vec![0x99; 24]].concat();
        sealer.seal_one(&mut b, HEADER_LEN, 24, None).unwrap();
        (b, ())
    };
    let (replayed, _) = sealed(&sealer, &mut rng, 20); // opened before the batch
    let top = Sealer::with_counter(&key, 5, 8130);
    let (topmsg, _) = sealed(&top, &mut rng, 100);
    let handshake = [vec![1, 0, 0, 0], rng.bytes(144)].concat();
    let another_index = {
        let mut m = a.clone();
        m[4] ^= 1;
        m
    };
    let short = [vec![4, 0, 0, 0], rng.bytes(27)].concat();
    let tiny = vec![4, 0];
    let reserved = {
        let mut m = b.clone();
        m[2] = 1; // type 4 with a non-zero reserved byte: not transport data
        m
    };
    // Move the window.
    let (o, _, _) = open_all(&opener, &[replayed.clone(), topmsg]);
    assert_eq!(o.packets, 2);
    let msgs = vec![
        handshake.clone(),     // other
        a.clone(),             // packet
        replayed,              // replayed
        short,                 // malformed (truncated)
        early,                 // counter 0: behind the window
        another_index.clone(), // other
        forged,                // forged
        keepalive,             // keepalive
        tiny.clone(),          // other (fewer than 4 bytes)
        b.clone(),             // packet
        wrong_key,             // forged
        not_ip,                // malformed
        reserved.clone(),      // other
        a.clone(),             // replayed (within the batch)
    ];
    let before = opener.stats();
    let (opened, bufs, sizes) = open_all(&opener, &msgs);
    assert_eq!((opened.packets, opened.other), (2, 4));
    assert_eq!(&bufs[0][HEADER_LEN..][..sizes[0]], &pa[..]);
    assert_eq!(&bufs[1][HEADER_LEN..][..sizes[1]], &pb[..]);
    let others = [&handshake, &another_index, &tiny, &reserved];
    for (j, m) in others.iter().enumerate() {
        assert_eq!((&bufs[2 + j], sizes[2 + j]), (*m, m.len()), "other {j}");
    }
    assert!(sizes[6..].iter().all(|&s| s == 0));
    let want = OpenStats {
        packets: 2,
        bytes: 60 + 1420,
        keepalives: 1,
        other: 4,
        dropped_forged: 2,
        dropped_replayed: 3,
        dropped_malformed: 2,
        dropped_filtered: 0,
    };
    assert_eq!(opened.stats, want);
    let mut after = before;
    after.add(&want);
    assert_eq!(opener.stats(), after);
}

/// Random batches of packets, other messages and drops: packets then others, each in
/// arrival order, for any mix (the rotation in front of the others).
#[test]
fn compaction_keeps_arrival_order() {
    let (mut rng, _, sealer, opener) = pair(99, 1, 0);
    for round in 0..200 {
        let n = rng.below(40);
        let mut msgs = vec![];
        let (mut packets, mut others) = (vec![], vec![]);
        for k in 0..n {
            match rng.below(3) {
                0 => {
                    let n = 20 + rng.below(100);
                    let (m, p) = sealed(&sealer, &mut rng, n);
                    msgs.push(m);
                    packets.push(p);
                }
                1 => {
                    let m = [vec![2, 0, 0, 0], (k as u32).to_le_bytes().to_vec()].concat();
                    others.push(m.clone());
                    msgs.push(m);
                }
                _ => msgs.push(vec![4, 0, 0, 0, k as u8]),
            }
        }
        let (opened, bufs, sizes) = open_all(&opener, &msgs);
        assert_eq!(
            (opened.packets, opened.other),
            (packets.len(), others.len())
        );
        for (j, p) in packets.iter().enumerate() {
            assert_eq!(
                &bufs[j][HEADER_LEN..][..sizes[j]],
                &p[..],
                "round {round}, {j}"
            );
        }
        for (j, m) in others.iter().enumerate() {
            let k = packets.len() + j;
            assert_eq!(&bufs[k][..sizes[k]], &m[..], "round {round}, other {j}");
        }
    }
}

// ----------------------------------------------------------------------------------------
// Several sessions in one batch.

struct Table<'a> {
    openers: &'a [Opener],
    authenticated: Vec<usize>,
    accepted: Vec<(usize, u32, usize)>,
    refuse_len: usize,
}

impl<'a> Sessions for Table<'a> {
    type Session = &'a Opener;

    fn lookup(&mut self, receiver: u32) -> Option<&'a Opener> {
        self.openers.iter().find(|o| o.local_index() == receiver)
    }

    fn opener(session: &&'a Opener) -> &'a Opener {
        session
    }

    fn authenticated(&mut self, index: usize, _: &&'a Opener) {
        self.authenticated.push(index);
    }

    fn accept(&mut self, index: usize, session: &&'a Opener, packet: &[u8]) -> bool {
        self.accepted
            .push((index, session.local_index(), packet.len()));
        packet.len() != self.refuse_len
    }
}

#[test]
fn sessions_resolve_count_and_filter() {
    let mut rng = Rng(5);
    let keys: Vec<Key> = (0..3).map(|_| Key::from(rng.key())).collect();
    let sealers: Vec<Sealer> = keys
        .iter()
        .zip([10, 20, 30])
        .map(|(k, i)| Sealer::new(k, i))
        .collect();
    let openers: Vec<Opener> = keys
        .iter()
        .zip([10, 20, 30])
        .map(|(k, i)| Opener::new(k, i))
        .collect();
    let unknown = Sealer::new(&Key::from(rng.key()), 40);
    // (sealer, size): runs of one key, interleavings, a keepalive, a refused packet.
    let plan: &[(&Sealer, usize)] = &[
        (&sealers[0], 20),
        (&sealers[0], 21),
        (&sealers[1], 22),
        (&sealers[0], 0),
        (&unknown, 23),
        (&sealers[2], 77), // refused by accept
        (&sealers[1], 24),
        (&sealers[1], 25),
    ];
    let mut msgs = vec![];
    for &(s, n) in plan {
        msgs.push(sealed(s, &mut rng, n).0);
    }
    msgs.push(vec![3, 0, 0, 0, 1, 2]); // another type
    let mut table = Table {
        openers: &openers,
        authenticated: vec![],
        accepted: vec![],
        refuse_len: 77,
    };
    let mut bufs = msgs.clone();
    let mut sizes: Vec<usize> = msgs.iter().map(Vec::len).collect();
    let opened = open_batch(&mut table, &mut bufs, 0, &mut sizes).unwrap();
    assert_eq!((opened.packets, opened.other), (5, 2));
    assert_eq!(sizes[..5], [20, 21, 22, 24, 25]);
    assert_eq!((&bufs[5], &bufs[6]), (&msgs[4], &msgs[8]));
    assert_eq!(table.authenticated, [0, 1, 2, 3, 5, 6, 7]);
    assert_eq!(
        table.accepted,
        [
            (0, 10, 20),
            (1, 10, 21),
            (2, 20, 22),
            (5, 30, 77),
            (6, 20, 24),
            (7, 20, 25)
        ]
    );
    let s: Vec<OpenStats> = openers.iter().map(Opener::stats).collect();
    assert_eq!((s[0].packets, s[0].keepalives, s[0].bytes), (2, 1, 41));
    assert_eq!((s[1].packets, s[1].bytes), (3, 22 + 24 + 25));
    assert_eq!((s[2].packets, s[2].dropped_filtered), (0, 1));
    // Messages for no session are the call's, not an opener's.
    assert!(s.iter().all(|s| s.other == 0));
    assert_eq!(opened.stats.other, 2);
    assert_eq!(opened.stats.dropped_filtered, 1);
    let mut sum = OpenStats::default();
    s.iter().for_each(|x| sum.add(x));
    sum.other = 2;
    assert_eq!(opened.stats, sum);
}

// ----------------------------------------------------------------------------------------
// Refusals, before anything is written.

#[test]
fn refusals_change_nothing() {
    let (_, _, sealer, opener) = pair(8, 1, 50);
    let good = || vec![vec![0u8; 16 + 40], vec![0u8; 16 + 40]];
    type Case = (&'static str, usize, Vec<usize>, ErrorKind, Option<usize>);
    let cases: Vec<Case> = vec![
        (
            "offset 15",
            15,
            vec![40, 40],
            ErrorKind::OffsetTooSmall,
            None,
        ),
        ("offset 0", 0, vec![40, 40], ErrorKind::OffsetTooSmall, None),
        (
            "more sizes than bufs",
            16,
            vec![1, 1, 1],
            ErrorKind::CountTooLarge,
            None,
        ),
        (
            "second packet beyond",
            16,
            vec![40, 41],
            ErrorKind::BufferTooSmall,
            Some(1),
        ),
        (
            "size overflows",
            16,
            vec![usize::MAX, 1],
            ErrorKind::BufferTooSmall,
            Some(0),
        ),
        (
            "offset beyond",
            57,
            vec![0],
            ErrorKind::BufferTooSmall,
            Some(0),
        ),
    ];
    for (name, offset, sizes, kind, index) in cases {
        let mut bufs = good();
        let mut s = sizes.clone();
        let e = sealer.seal(&mut bufs, offset, &mut s, None).unwrap_err();
        assert_eq!((e.kind(), e.index()), (kind, index), "{name}: {e}");
        assert_eq!((bufs, s), (good(), sizes.clone()), "{name}");
        if kind != ErrorKind::OffsetTooSmall {
            let mut bufs = good();
            let mut s = sizes.clone();
            let e = opener.open(&mut bufs, offset, &mut s).unwrap_err();
            assert_eq!((e.kind(), e.index()), (kind, index), "open, {name}: {e}");
            assert_eq!((bufs, s), (good(), sizes), "open, {name}");
        }
    }
    // A fixed buffer with room for one message but not the second.
    let mut arena = [0u8; 2 * 64 + 63];
    let (x, y) = arena.split_at_mut(64);
    let (y, _) = y.split_at_mut(63);
    let mut bufs: Vec<&mut [u8]> = vec![x, y];
    let e = sealer.seal(&mut bufs, 16, &mut [20, 20], None).unwrap_err();
    assert_eq!(
        (e.kind(), e.index()),
        (ErrorKind::OutBufTooSmall, Some(1)),
        "{e}"
    );
    assert!(arena.iter().all(|&b| b == 0));
    assert_eq!(sealer.next_counter(), 50);
    assert_eq!(opener.stats(), OpenStats::default());
    // The same with padding within the MTU fits: 20 bytes padded to 20 + 4.
    let (x, y) = arena.split_at_mut(64);
    let mut bufs: Vec<&mut [u8]> = vec![x, &mut y[..60]];
    assert_eq!(sealer.seal(&mut bufs, 16, &mut [20, 20], Some(24)), Ok(2));
}

#[test]
fn buffers_grow_for_padding_and_tag() {
    let key = Key::from([1; 32]);
    let sealer = Sealer::new(&key, 1);
    let mut bufs = vec![vec![9u8; 16 + 17], vec![9u8; 16 + 100]];
    let mut sizes = [17, 1];
    assert_eq!(sealer.seal(&mut bufs, 16, &mut sizes, None), Ok(2));
    assert_eq!(sizes, [16 + 32 + 16, 16 + 16 + 16]);
    assert_eq!(bufs[0].len(), 16 + 48);
    assert_eq!(
        bufs[1].len(),
        16 + 100,
        "a long enough buffer keeps its length"
    );
    // An empty batch is no work and spends no counter.
    assert_eq!(sealer.seal(&mut bufs, 16, &mut [], None), Ok(0));
    assert_eq!(sealer.next_counter(), 2);
}

// ----------------------------------------------------------------------------------------
// Counters.

#[test]
fn a_spent_key_refuses_and_never_wraps() {
    let key = Key::from([2; 32]);
    let packet = |n| {
        let mut p = vec![0u8; 16 + 20];
        (p[16], p[19]) = (0x45, 20);
        vec![p; n]
    };
    let sealer = Sealer::with_counter(&key, 1, REJECT_AFTER_MESSAGES - 3);
    let mut bufs = packet(4);
    let e = sealer.seal(&mut bufs, 16, &mut [20; 4], None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyExhausted, "{e}");
    assert_eq!(bufs, packet(4), "nothing sealed");
    assert_eq!(sealer.next_counter(), REJECT_AFTER_MESSAGES - 3);
    let mut bufs = packet(3);
    assert_eq!(sealer.seal(&mut bufs, 16, &mut [20; 3], None), Ok(3));
    let counters: Vec<u64> = bufs
        .iter()
        .map(|b| u64::from_le_bytes(b[8..16].try_into().unwrap()))
        .collect();
    assert_eq!(
        counters,
        [3, 2, 1].map(|d| REJECT_AFTER_MESSAGES - d),
        "the last counter is REJECT_AFTER_MESSAGES - 1"
    );
    for _ in 0..3 {
        let mut b = vec![0u8; 16];
        let e = sealer.seal_one(&mut b, 16, 0, None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::KeyExhausted);
        assert_eq!(sealer.next_counter(), REJECT_AFTER_MESSAGES);
    }
    // Beyond the limit from the start, and the largest batch: refused, no wrap.
    for first in [REJECT_AFTER_MESSAGES, REJECT_AFTER_MESSAGES + 1, u64::MAX] {
        let s = Sealer::with_counter(&key, 1, first);
        assert_eq!(
            s.seal_one(&mut vec![0u8; 16], 16, 0, None)
                .unwrap_err()
                .kind(),
            ErrorKind::KeyExhausted
        );
        assert_eq!(s.next_counter(), first);
    }
    // The last counter opens; the window refuses the limit itself.
    let opener = Opener::new(&key, 1);
    let mut sizes = [64; 3];
    let opened = opener.open(&mut bufs, 0, &mut sizes).unwrap();
    assert_eq!(opened.packets, 3);
}

/// Threads sealing through one `Sealer` never get the same counter, up to the limit and
/// not past it.
#[test]
fn concurrent_sealers_never_share_a_counter() {
    let key = Key::from([3; 32]);
    const BATCH: usize = 7;
    let start = REJECT_AFTER_MESSAGES - 2000;
    let sealer = Arc::new(Sealer::with_counter(&key, 1, start));
    let refused = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (sealer, refused) = (sealer.clone(), refused.clone());
            std::thread::spawn(move || {
                let mut mine = vec![];
                loop {
                    let mut bufs = vec![vec![0u8; 16 + 20]; BATCH];
                    match sealer.seal(&mut bufs, 16, &mut [20; BATCH], None) {
                        Ok(_) => mine.extend(
                            bufs.iter()
                                .map(|b| u64::from_le_bytes(b[8..16].try_into().unwrap())),
                        ),
                        Err(e) => {
                            assert_eq!(e.kind(), ErrorKind::KeyExhausted);
                            refused.fetch_add(1, Ordering::Relaxed);
                            return mine;
                        }
                    }
                }
            })
        })
        .collect();
    let mut all = HashSet::new();
    for t in threads {
        for c in t.join().unwrap() {
            assert!(c < REJECT_AFTER_MESSAGES);
            assert!(all.insert(c), "counter {c} used twice");
        }
    }
    assert_eq!(refused.load(Ordering::Relaxed), 4);
    assert_eq!(all.len(), 2000 / BATCH * BATCH);
    assert_eq!(all.iter().min(), Some(&start));
    assert_eq!(sealer.next_counter(), start + all.len() as u64);
}

/// Threads opening the same messages through one `Opener`: each opened exactly once.
#[test]
fn concurrent_openers_open_each_message_once() {
    let (mut rng, _, sealer, opener) = pair(21, 1, 0);
    let opener = Arc::new(opener);
    let msgs: Arc<Vec<Vec<u8>>> =
        Arc::new((0..400).map(|_| sealed(&sealer, &mut rng, 20).0).collect());
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let (opener, msgs) = (opener.clone(), msgs.clone());
            std::thread::spawn(move || {
                let mut opened = 0;
                for chunk in msgs.chunks(16 + t) {
                    opened += open_all(&opener, chunk).0.packets;
                }
                opened
            })
        })
        .collect();
    let opened: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(opened, 400);
    let s = opener.stats();
    assert_eq!((s.packets, s.dropped_replayed), (400, 800));
}

#[test]
fn open_one_outcomes() {
    let (mut rng, _, sealer, opener) = pair(4, 7, 0);
    let (mut m, p) = sealed(&sealer, &mut rng, 44);
    let kept = m.clone();
    assert_eq!(opener.open_one(&mut m), Outcome::Packet(44));
    assert_eq!(&m[HEADER_LEN..][..44], &p[..]);
    assert_eq!(opener.open_one(&mut kept.clone()), Outcome::Replayed);
    let (mut k, _) = sealed(&sealer, &mut rng, 0);
    assert_eq!(opener.open_one(&mut k), Outcome::Keepalive);
    assert_eq!(opener.open_one(&mut [4, 0, 0, 0, 7, 0]), Outcome::Malformed);
    assert_eq!(opener.open_one(&mut [1, 0, 0, 0]), Outcome::Other);
    assert_eq!(opener.open_one(&mut []), Outcome::Other);
    let mut other_index = kept.clone();
    other_index[4] = 8;
    assert_eq!(opener.open_one(&mut other_index), Outcome::Other);
    let mut forged = sealed(&sealer, &mut rng, 20).0;
    forged[20] ^= 1;
    assert_eq!(opener.open_one(&mut forged), Outcome::Forged);
    let s = opener.stats();
    assert_eq!(
        (
            s.packets,
            s.dropped_replayed,
            s.keepalives,
            s.dropped_malformed,
            s.other,
            s.dropped_forged
        ),
        (1, 1, 1, 1, 3, 1)
    );
    assert_eq!(
        parse_header(&kept),
        Header::Transport {
            receiver: 7,
            counter: 0
        }
    );
    assert_eq!(parse_header(&kept[..31]), Header::Truncated);
    assert_eq!(parse_header(&kept[..3]), Header::Other);
}

// ----------------------------------------------------------------------------------------
// On a caller's buffers and hooks.

/// Hooks that release (or not) for any batch, and count the work they ran.
struct Counting {
    release: bool,
    works: usize,
}

impl crate::hooks::Hooks<crate::engine::Error> for Counting {
    fn syscall<T: Send>(&mut self, call: impl FnOnce() -> T + Send) -> T {
        call()
    }
    fn interrupted(&mut self) -> std::result::Result<(), crate::engine::Error> {
        Ok(())
    }
    fn worth_releasing(&self, _: usize) -> bool {
        self.release
    }
    fn work<T: Send>(&mut self, f: impl FnOnce() -> T + Send) -> T {
        self.works += 1;
        f()
    }
}

/// `seal_with`/`open_with` give what `seal`/`open` give, on the buffers pinned (through
/// the hooks' work) or not: buffers short of room for padding and tag grow before the
/// work, and the batch comes back compacted in the buffers themselves.
#[test]
fn seal_and_open_with_hooks_match_the_plain_calls() {
    for release in [false, true] {
        let (mut rng, key, sealer, opener) = pair(7, 9, 100);
        let packets: Vec<Vec<u8>> = [20, 21, 1400].map(|n| ip_packet(&mut rng, n, false)).into();
        // Buffer 1 has no room for its padding and tag: it grows before the work.
        let mut bufs = [
            [vec![0; 16], packets[0].clone(), vec![0; 64]].concat(),
            [vec![0; 16], packets[1].clone()].concat(),
            [vec![0; 16], packets[2].clone(), vec![0; 64]].concat(),
        ];
        let mut sizes: Vec<usize> = packets.iter().map(Vec::len).collect();
        let mut hooks = Counting { release, works: 0 };
        let n = sealer.seal_with(&mut bufs[..], 16, &mut sizes, None, &mut hooks);
        assert_eq!(n, Ok(3));
        assert_eq!(hooks.works, usize::from(release));
        let plain = Sealer::with_counter(&key, 9, 100);
        let mut want = vec![
            [vec![0; 16], packets[0].clone(), vec![0; 64]].concat(),
            [vec![0; 16], packets[1].clone()].concat(),
            [vec![0; 16], packets[2].clone(), vec![0; 64]].concat(),
        ];
        let mut want_sizes: Vec<usize> = packets.iter().map(Vec::len).collect();
        plain.seal(&mut want, 16, &mut want_sizes, None).unwrap();
        assert_eq!(sizes, want_sizes);
        for ((b, w), &size) in bufs.iter().zip(&want).zip(&sizes) {
            assert_eq!(b[..size], w[..size]);
        }
        // A forged one first: the opened two move in front of it.
        bufs[0][20] ^= 1;
        let opened = opener
            .open_with(&mut bufs[..], 0, &mut sizes, &mut hooks)
            .unwrap();
        assert_eq!((opened.packets, opened.other), (2, 0));
        assert_eq!(hooks.works, 2 * usize::from(release));
        assert_eq!(&bufs[0][16..16 + sizes[0]], &packets[1][..]);
        assert_eq!(&bufs[1][16..16 + sizes[1]], &packets[2][..]);
        assert_eq!(opener.stats().dropped_forged, 1);
        // More sizes than buffers: refused before anything happens.
        let err = sealer.seal_with(&mut bufs[..1], 16, &mut [20, 20], None, &mut hooks);
        assert_eq!(err.unwrap_err().kind(), ErrorKind::CountTooLarge);
    }
}
