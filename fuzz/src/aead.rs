//! The fuzz harness of the batch AEAD's open path (target `aead_open`).
//!
//! The messages are built and judged with an independent reference: RustCrypto's
//! `chacha20poly1305`, the wire format written out here, a naive replay window (a set of
//! counters and the highest one) and the IP-length rule restated byte by byte. For
//! arbitrary bytes, [`open`] checks that `Opener::open` hands back exactly the messages
//! the reference decrypts with a valid IP length and an in-window counter, with equal
//! plaintexts, hands back the others untouched, drops the rest, counts each in its bucket,
//! and never panics.

use std::collections::HashSet;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use tunoffload::aead::{Key, OpenStats, Opener, Outcome, REJECT_AFTER_MESSAGES};

const KEY: [u8; 32] = [0x42; 32];
const WRONG_KEY: [u8; 32] = [0x24; 32];
const LOCAL: u32 = 1;
const MAX_MESSAGES: usize = 64;

/// The reference's verdict on one message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    Packet(Vec<u8>),
    Keepalive,
    Other,
    Forged,
    Replayed,
    Malformed,
}

/// The reference receiver: the key, the window as a set of counters and the highest one.
struct Reference {
    cipher: ChaCha20Poly1305,
    seen: HashSet<u64>,
    top: u64,
}

impl Reference {
    fn new() -> Self {
        Reference {
            cipher: ChaCha20Poly1305::new_from_slice(&KEY).unwrap(),
            seen: HashSet::new(),
            top: 0,
        }
    }

    fn judge(&mut self, msg: &[u8]) -> Want {
        if msg.len() < 4 || msg[..4] != [4, 0, 0, 0] {
            return Want::Other;
        }
        if msg.len() < 32 {
            return Want::Malformed;
        }
        if u32::from_le_bytes(msg[4..8].try_into().unwrap()) != LOCAL {
            return Want::Other;
        }
        let counter = u64::from_le_bytes(msg[8..16].try_into().unwrap());
        let Ok(plain) = self.cipher.decrypt(&nonce(counter), &msg[16..]) else {
            return Want::Forged;
        };
        // The window: below the limit, not seen, at most 8192 - 64 behind the top.
        let behind = counter <= self.top && self.top - counter > 8128;
        if counter >= REJECT_AFTER_MESSAGES || behind || !self.seen.insert(counter) {
            return Want::Replayed;
        }
        self.top = self.top.max(counter);
        if plain.is_empty() {
            return Want::Keepalive;
        }
        match ip_len(&plain) {
            Some(n) => Want::Packet(plain[..n].to_vec()),
            None => Want::Malformed,
        }
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    *Nonce::from_slice(&n)
}

/// The IP packet's length by its header, if the plaintext is one whose length fits.
fn ip_len(p: &[u8]) -> Option<usize> {
    let be = |at: usize| usize::from(p[at]) << 8 | usize::from(p[at + 1]);
    match p.first().map(|b| b >> 4) {
        Some(4)
            if p.len() >= 20
                && p[0] & 15 >= 5
                && (usize::from(p[0] & 15) * 4..=p.len()).contains(&be(2)) =>
        {
            Some(be(2))
        }
        Some(6) if p.len() >= 40 && be(4) + 40 <= p.len() => Some(be(4) + 40),
        _ => None,
    }
}

/// A transport-data message sealed by the reference.
fn reference_seal(key: &[u8; 32], receiver: u32, counter: u64, plain: &[u8]) -> Vec<u8> {
    let c = ChaCha20Poly1305::new_from_slice(key).unwrap();
    let mut m = vec![4, 0, 0, 0];
    m.extend_from_slice(&receiver.to_le_bytes());
    m.extend_from_slice(&counter.to_le_bytes());
    m.extend(c.encrypt(&nonce(counter), plain).unwrap());
    m
}

/// The input's next byte, 0 once it runs out.
fn b(it: &mut std::slice::Iter<'_, u8>) -> u8 {
    it.next().copied().unwrap_or(0)
}

fn u16le(it: &mut std::slice::Iter<'_, u8>) -> u16 {
    u16::from_le_bytes([b(it), b(it)])
}

/// Builds the batch of messages the input describes (see [`open`]).
fn messages(data: &[u8]) -> (u8, Vec<Vec<u8>>) {
    let it = &mut data.iter();
    let ctl = b(it);
    let base = if ctl & 0x20 != 0 {
        REJECT_AFTER_MESSAGES - 60_000
    } else {
        0
    };
    let mut msgs: Vec<Vec<u8>> = vec![];
    while msgs.len() < MAX_MESSAGES {
        let Some(&tag) = it.next() else { break };
        let msg = match tag & 3 {
            0 => {
                let counter = base + u64::from(u16le(it));
                let len = usize::from(u16le(it) % 2048);
                let mut plain: Vec<u8> = (0..len).map(|_| b(it)).collect();
                let claim = len + usize::from(tag & 0x30 == 0x30);
                if tag & 4 != 0 && tag & 8 != 0 && len >= 40 {
                    plain[0] = 0x60 | (plain[0] & 15);
                    plain[4..6].copy_from_slice(&((claim - 40) as u16).to_be_bytes());
                } else if tag & 4 != 0 && len >= 20 {
                    plain[0] = 0x40 | (plain[0] & 15);
                    plain[2..4].copy_from_slice(&(claim as u16).to_be_bytes());
                }
                match tag >> 4 & 3 {
                    1 => plain.resize(len.div_ceil(16) * 16, 0),
                    2 => {
                        let extra = usize::from(b(it) % 32);
                        plain.extend((0..extra).map(|_| b(it)));
                    }
                    _ => {}
                }
                let receiver = if tag & 0x40 != 0 { LOCAL + 1 } else { LOCAL };
                let key = if tag & 0x80 != 0 { &WRONG_KEY } else { &KEY };
                reference_seal(key, receiver, counter, &plain)
            }
            1 => {
                let len = usize::from(b(it));
                (0..len).map(|_| b(it)).collect()
            }
            _ if msgs.is_empty() => continue,
            2 => msgs[usize::from(b(it)) % msgs.len()].clone(),
            _ => {
                let mut m = msgs[usize::from(b(it)) % msgs.len()].clone();
                let (op, at) = (b(it), usize::from(u16le(it)));
                if !m.is_empty() && op & 1 == 0 {
                    let n = m.len();
                    m[at / 8 % n] ^= 1 << (at % 8);
                } else if !m.is_empty() {
                    m.truncate(at % m.len());
                }
                m
            }
        };
        msgs.push(msg);
    }
    (ctl, msgs)
}

/// Fuzz body for `aead_open`.
///
/// Input: a `ctl` byte, then records that each describe one message (at most 64; input
/// that runs out reads as zeros):
/// - `ctl & 31`: the offset of the messages in their buffers (junk before them);
///   `ctl & 32`: counters start at `REJECT_AFTER_MESSAGES - 60000` (else 0);
///   `ctl & 64`: open the batch in two calls (split in the middle; the window carries
///   over); `ctl & 128`: also open every message alone with `open_one` on a second opener.
/// - record `tag & 3 == 0`, a message sealed by the reference: counter (base + u16 LE),
///   plaintext length (u16 LE % 2048) and its bytes; `tag & 4`: make it an IP packet of
///   that length (`tag & 8`: IPv6), with `tag & 48 == 48` its length field one too many;
///   `tag >> 4 & 3`: 1 pad with zeros to 16, 2 append `u8 % 32` more bytes; `tag & 64`:
///   receiver index 2 (not ours); `tag & 128`: sealed under another key.
/// - `tag & 3 == 1`: raw bytes (length u8, then the bytes).
/// - `tag & 3 == 2`: a copy of an earlier message (index u8): a replay.
/// - `tag & 3 == 3`: an earlier message (index u8) with, by an op byte, one bit flipped
///   (op even) or cut short (op odd) at position u16 LE.
///
/// Invariants: the packets handed back are exactly the reference's, in arrival order,
/// byte for byte; the other messages follow them untouched, in arrival order; everything
/// else is dropped with size 0; the call's counts and the opener's are the reference's
/// verdicts counted; `open_one` reaches the same verdict for every message.
pub fn open(data: &[u8]) {
    let (ctl, msgs) = messages(data);
    let offset = usize::from(ctl & 31);
    let mut reference = Reference::new();
    let wants: Vec<Want> = msgs.iter().map(|m| reference.judge(m)).collect();

    let opener = Opener::new(&Key::from(KEY), LOCAL);
    let split = if ctl & 64 != 0 { msgs.len() / 2 } else { 0 };
    let mut total = OpenStats::default();
    for (msgs, wants) in [
        (&msgs[..split], &wants[..split]),
        (&msgs[split..], &wants[split..]),
    ] {
        total.add(&check_batch(&opener, msgs, wants, offset));
    }
    assert_eq!(opener.stats(), total);

    if ctl & 128 != 0 {
        let alone = Opener::new(&Key::from(KEY), LOCAL);
        for (i, (m, want)) in msgs.iter().zip(&wants).enumerate() {
            let mut m = m.clone();
            let got = alone.open_one(&mut m);
            let same = match (got, want) {
                (Outcome::Packet(n), Want::Packet(p)) => m[16..][..n] == p[..],
                (Outcome::Keepalive, Want::Keepalive)
                | (Outcome::Other, Want::Other)
                | (Outcome::Forged, Want::Forged)
                | (Outcome::Replayed, Want::Replayed)
                | (Outcome::Malformed, Want::Malformed) => true,
                _ => false,
            };
            assert!(
                same,
                "open_one, message {i}: {got:?}, the reference says {want:?}"
            );
        }
        assert_eq!(alone.stats(), total);
    }
}

/// Opens `msgs` (at `offset` in their buffers) in one call and checks the result against
/// the reference's `wants`; returns the counts the call should have made.
fn check_batch(opener: &Opener, msgs: &[Vec<u8>], wants: &[Want], offset: usize) -> OpenStats {
    let junk = vec![0xa5; offset];
    let mut bufs: Vec<Vec<u8>> = msgs.iter().map(|m| [&junk[..], m].concat()).collect();
    let mut sizes: Vec<usize> = msgs.iter().map(Vec::len).collect();
    let opened = opener.open(&mut bufs, offset, &mut sizes).unwrap();

    let mut want = OpenStats::default();
    let mut packets = vec![];
    let mut others = vec![];
    for (m, w) in msgs.iter().zip(wants) {
        match w {
            Want::Packet(p) => {
                want.packets += 1;
                want.bytes += p.len() as u64;
                packets.push(p);
            }
            Want::Keepalive => want.keepalives += 1,
            Want::Other => {
                want.other += 1;
                others.push(m);
            }
            Want::Forged => want.dropped_forged += 1,
            Want::Replayed => want.dropped_replayed += 1,
            Want::Malformed => want.dropped_malformed += 1,
        }
    }
    assert_eq!(opened.stats, want, "counts");
    assert_eq!(
        (opened.packets, opened.other),
        (packets.len(), others.len())
    );
    for (j, p) in packets.iter().enumerate() {
        assert_eq!(sizes[j], p.len(), "packet {j}'s size");
        assert!(
            bufs[j][offset + 16..][..p.len()] == p[..],
            "packet {j}'s bytes"
        );
    }
    for (j, m) in others.iter().enumerate() {
        let k = packets.len() + j;
        assert_eq!(sizes[k], m.len(), "other {j}'s size");
        assert!(
            bufs[k][offset..][..m.len()] == m[..],
            "other {j} was changed"
        );
        assert!(
            bufs[k][..offset].iter().all(|&b| b == 0xa5),
            "other {j}'s junk"
        );
    }
    let kept = packets.len() + others.len();
    assert!(sizes[kept..].iter().all(|&s| s == 0), "dropped sizes are 0");
    want
}
