//! Sealing: packets into transport-data messages, in place, under one send key.

use std::sync::atomic::{AtomicU64, Ordering};

use ring::aead::{Aad, Nonce};

use super::key::RingKey;
use super::{
    check_batch, padded_len, Key, HEADER_LEN, MESSAGE_TRANSPORT, REJECT_AFTER_MESSAGES, TAG_LEN,
};
use crate::engine::error::{bail, Error, ErrorKind, Result};
use crate::engine::ExpandBuffer;

/// ChaCha20-Poly1305's limit on one message's plaintext in `ring` (a 32-bit block counter,
/// one block for Poly1305's key): 256 GiB less 64 bytes.
const MAX_PLAINTEXT: u64 = ((1 << 32) - 1) * 64;

/// One send key: seals packets into messages for the peer that knows the key as
/// `receiver_index`, with counters from an atomic next counter. `&self` methods: it may be
/// shared by several threads, which then never get the same counter.
pub struct Sealer {
    key: RingKey,
    receiver: u32,
    next: AtomicU64,
}

impl Sealer {
    /// A sealer for `key` whose messages carry `receiver_index` (the receiver's index of
    /// the session), counting from 0.
    pub fn new(key: &Key, receiver_index: u32) -> Sealer {
        Sealer::with_counter(key, receiver_index, 0)
    }

    /// As [`Sealer::new`], with `first` as the next counter (to resume a key, or to test
    /// one near its end). Counters from [`REJECT_AFTER_MESSAGES`] on are refused.
    pub fn with_counter(key: &Key, receiver_index: u32, first: u64) -> Sealer {
        Sealer {
            key: key.ring_key(),
            receiver: receiver_index,
            next: AtomicU64::new(first),
        }
    }

    /// The receiver index the messages carry.
    pub fn receiver_index(&self) -> u32 {
        self.receiver
    }

    /// The counter the next packet gets (at most [`REJECT_AFTER_MESSAGES`], where the key is
    /// spent). Compare with [`super::REKEY_AFTER_MESSAGES`] to know when to rekey.
    pub fn next_counter(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// Seals a batch in place: packet `i`, `bufs[i][offset..offset + sizes[i]]` for `i <
    /// sizes.len()`, becomes message `i` at `bufs[i][offset - HEADER_LEN..]` (header in
    /// front, padding to [`padded_len`]`(sizes[i], pad_mtu)` and tag after), and `sizes[i]`
    /// its length. Buffers too short for the padding and tag are grown
    /// ([`ExpandBuffer::resize`]). The packets get consecutive counters, reserved for the
    /// whole batch at once. Returns the number of messages, `sizes.len()`.
    ///
    /// Refused before anything is written (an error of the kind named):
    /// `offset < HEADER_LEN` (`offset_too_small`); more `sizes` than `bufs`
    /// (`count_too_large`); a packet that runs past its buffer (`buffer_too_small`,
    /// with its index); a buffer that cannot grow to its message (`out_buf_too_small`,
    /// with its index); a packet too long for ChaCha20-Poly1305 (`packet_too_large`); a
    /// batch that would use a counter at or above [`REJECT_AFTER_MESSAGES`]
    /// (`key_exhausted`). A buffer whose `resize` fails although its `max_len` allowed it
    /// (`buffer_cannot_grow`) stops the batch part way: the messages before it are sealed,
    /// their counters and the batch's others are spent (never reused).
    pub fn seal<B: ExpandBuffer>(
        &self,
        bufs: &mut [B],
        offset: usize,
        sizes: &mut [usize],
        pad_mtu: Option<usize>,
    ) -> Result<usize> {
        check_batch(bufs, offset, sizes, HEADER_LEN, "packet")?;
        for (i, (b, &size)) in bufs.iter().zip(sizes.iter()).enumerate() {
            let len = b.bytes().len();
            let padded = padded_len(size, pad_mtu);
            if padded as u64 > MAX_PLAINTEXT {
                bail!(
                    PacketTooLarge @ i,
                    "packet {i} is {size} bytes, more than ChaCha20-Poly1305 seals at once"
                );
            }
            // offset + size <= len <= isize::MAX and padded <= size + 15: no overflow.
            let need = offset + padded + TAG_LEN;
            if need > len && b.max_len() < need {
                return Err(cannot_grow(i, len, need, offset));
            }
        }
        if sizes.is_empty() {
            return Ok(0);
        }
        let first = self.reserve(sizes.len())?;
        for (i, (b, size)) in bufs.iter_mut().zip(sizes.iter_mut()).enumerate() {
            let padded = padded_len(*size, pad_mtu);
            *size = self
                .seal_in(b, offset, *size, padded, first + i as u64)
                .map_err(|e| e.at(i))?;
        }
        Ok(sizes.len())
    }

    /// Seals one packet, `buf[offset..offset + size]`, as [`Sealer::seal`] seals a batch of
    /// one; returns the message's length (it is at `buf[offset - HEADER_LEN..]`). A `size`
    /// of 0 makes a keepalive.
    pub fn seal_one<B: ExpandBuffer>(
        &self,
        buf: &mut B,
        offset: usize,
        size: usize,
        pad_mtu: Option<usize>,
    ) -> Result<usize> {
        let mut sizes = [size];
        self.seal(std::slice::from_mut(buf), offset, &mut sizes, pad_mtu)?;
        Ok(sizes[0])
    }
}

impl Sealer {
    /// Reserves `n > 0` consecutive counters, all below [`REJECT_AFTER_MESSAGES`], and
    /// returns the first; or refuses (`key_exhausted`) and reserves none. One atomic
    /// compare-and-swap (retried only when another thread got in between): the next
    /// counter never passes the limit, so it cannot wrap.
    fn reserve(&self, n: usize) -> Result<u64> {
        self.next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
                fits(next, n).then(|| next + n as u64)
            })
            .map_err(|next| spent(next, n))
    }

    /// Refuses (`key_exhausted`) a batch of `n` that the counters left cannot take, as
    /// sealing it would: a check made before a caller prepares a batch. (Another thread
    /// may still spend the counters in between; the seal itself then refuses.)
    pub fn check_room(&self, n: usize) -> Result<()> {
        let next = self.next_counter();
        if fits(next, n) {
            Ok(())
        } else {
            Err(spent(next, n))
        }
    }

    /// Seals the packet `buf[offset..offset + size]` (checked by the caller) with
    /// `counter`, padded to `padded` bytes, growing `buf` if it must; returns the
    /// message's length.
    fn seal_in<B: ExpandBuffer>(
        &self,
        buf: &mut B,
        offset: usize,
        size: usize,
        padded: usize,
        counter: u64,
    ) -> Result<usize> {
        let end = offset + padded + TAG_LEN;
        if buf.bytes().len() < end {
            buf.resize(end).map_err(|e| {
                Error::new(
                    ErrorKind::BufferCannotGrow,
                    format!("a buffer cannot grow to {end} bytes: {}", e.message()),
                )
            })?;
        }
        let Some(msg) = buf.bytes_mut().get_mut(offset - HEADER_LEN..end) else {
            bail!(BufferCannotGrow, "a buffer did not grow to {end} bytes");
        };
        let (header, rest) = msg.split_at_mut(HEADER_LEN);
        header[..4].copy_from_slice(&[MESSAGE_TRANSPORT, 0, 0, 0]);
        header[4..8].copy_from_slice(&self.receiver.to_le_bytes());
        header[8..].copy_from_slice(&counter.to_le_bytes());
        let (plain, tag) = rest.split_at_mut(padded);
        plain[size..].fill(0);
        let t = self
            .key
            .get()
            .seal_in_place_separate_tag(nonce(counter), Aad::empty(), plain)
            .map_err(|_| {
                Error::fixed(
                    ErrorKind::PacketTooLarge,
                    "ChaCha20-Poly1305 refused the packet",
                )
            })?;
        tag.copy_from_slice(t.as_ref());
        Ok(HEADER_LEN + padded + TAG_LEN)
    }
}

/// WireGuard's nonce for a counter: 4 zero bytes, then the counter little-endian.
pub(super) fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Whether `n` counters from `next` on stay below [`REJECT_AFTER_MESSAGES`].
fn fits(next: u64, n: usize) -> bool {
    u64::try_from(n)
        .ok()
        .and_then(|n| next.checked_add(n))
        .is_some_and(|end| end <= REJECT_AFTER_MESSAGES)
}

/// The refusal of a batch of `n` when `next` is the next counter.
fn spent(next: u64, n: usize) -> Error {
    Error::new(
        ErrorKind::KeyExhausted,
        format!(
            "the send key is spent: {} counters left, the batch needs {n} (a new handshake \
             is due)",
            REJECT_AFTER_MESSAGES.saturating_sub(next)
        ),
    )
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("receiver_index", &self.receiver)
            .field("next_counter", &self.next_counter())
            .finish_non_exhaustive()
    }
}

/// `out_buf_too_small` for buffer `i`, `len` bytes, which cannot grow to the `need` bytes
/// its packet's message takes after `offset`.
pub(super) fn cannot_grow(i: usize, len: usize, need: usize, offset: usize) -> Error {
    let m = format!(
        "bufs[{i}] holds {len} bytes and cannot grow to the {need} that packet {i}'s message \
         needs after offset {offset}"
    );
    Error::new(ErrorKind::OutBufTooSmall, m).at(i)
}
