//! The batch AEAD: WireGuard's transport-data messages sealed and opened in batches, in
//! place. Pure Rust, no Python, no system calls.
//!
//! # The message (WireGuard whitepaper 5.4.6)
//!
//! ```text
//! 0      1      4               8                        16
//! | 4    | 0 0 0 | receiver (LE) | counter (LE u64)       | ChaCha20-Poly1305 ... | tag |
//! ```
//!
//! [`HEADER_LEN`] = 16 bytes of header, then the packet zero-padded to a multiple of 16
//! ([`padded_len`], as wireguard-go's `calculatePaddingSize`), encrypted with
//! ChaCha20-Poly1305 under nonce `0000 || counter (LE)` and no associated data, then the
//! [`TAG_LEN`] = 16-byte tag: [`OVERHEAD`] = 32 bytes plus the padding. A message with an
//! empty plaintext is a keepalive.
//!
//! # Batches, in place
//!
//! A batch is `(bufs, offset, sizes)`, the shape of [`crate::device`] and [`crate::udp`]:
//! entry `i` lives in `bufs[i][offset..offset + sizes[i]]`, for `i < sizes.len()` (pass
//! `&mut sizes[..count]` for the first `count`). `bufs` is any [`ExpandBuffer`] (a
//! `Vec<u8>`, a fixed `&mut [u8]`, the binding's bytearrays).
//!
//! - [`Sealer::seal`]: packet `i` at `bufs[i][offset..offset + sizes[i]]` becomes message
//!   `i` at `bufs[i][offset - HEADER_LEN..]` (so `offset >= HEADER_LEN`; the header goes in
//!   front of the packet, padding and tag after it, growing the buffer where it must), and
//!   `sizes[i]` becomes the message's length. A TUN read at `offset` is sealed for a UDP
//!   send at `offset - HEADER_LEN`.
//! - [`Opener::open`]: message `i` at `bufs[i][offset..offset + sizes[i]]` becomes packet
//!   `i` at `bufs[i][offset + HEADER_LEN..]`, `sizes[i]` its IP length (padding stripped).
//!   The batch is compacted by swapping `bufs` and `sizes` entries: `[0..packets)` the
//!   opened packets, `[packets..packets + other)` the messages that are not transport data
//!   for this key (another message type, another receiver index: a handshake travelling
//!   in the same batch), untouched, both in arrival order; the rest dropped (forged,
//!   replayed, truncated, malformed; their bytes unspecified, their sizes 0). A UDP read at
//!   `offset` is opened for a TUN write at `offset + HEADER_LEN`. Anything a `B` carries
//!   besides its bytes (a source address, say) moves with its message.
//!
//! # Keys, counters and the replay window
//!
//! - [`Key`]: 32 bytes, zeroed on drop, never printed.
//! - [`Sealer`]: one send key. Counters are assigned in order, one per packet, reserved for
//!   a whole batch at once; no counter `>= REJECT_AFTER_MESSAGES` is ever used (the batch
//!   is refused with [`ErrorKind::KeyExhausted`], nothing sealed), even under concurrent
//!   callers: a nonce is never reused.
//! - [`Opener`]: one receive key with its [`ReplayWindow`] (RFC 6479, [`WINDOW`] bits, as
//!   wireguard-go's `replay.go` and Linux's `counter_validate`), checked after the tag and
//!   updated only then. Its [`OpenStats`] count every message.
//! - Both are `Sync`: their methods take `&self` and may run on several threads at once.
//!
//! # Several keys in one batch
//!
//! A batch read from one UDP socket holds messages for several sessions. [`open_batch`]
//! opens it with a [`Sessions`] that maps a receiver index to its [`Opener`] and may veto a
//! packet after it is opened (AllowedIPs), and is told of every authenticated message (to
//! note the datagram's source for roaming). [`Opener::open`] is `open_batch` with the one
//! session: one algorithm. The single-message steps are public too: [`parse_header`],
//! [`Opener::open_one`], [`ip_packet_len`], [`padded_len`], [`Sealer::seal_one`].
//!
//! # Key material
//!
//! `ring` does not zero its keys. Each [`Sealer`] and [`Opener`] keeps one `ring`
//! `LessSafeKey` in a `ManuallyDrop` and overwrites its bytes with volatile writes when it
//! is dropped (see `key.rs`). Rebuilding a `LessSafeKey` per batch from the [`Key`] would
//! cost little for ChaCha20 (no key schedule), but would make a stack copy per batch (per
//! run of messages in [`open_batch`]) that must be wiped all the same, with the same
//! `unsafe`: one long-lived copy wiped once is fewer copies and less code. Copies that
//! `ring` or the compiler make on the stack while a key is built are not wiped (as with
//! any Rust key type).
//!
//! ```
//! use tunoffload::aead::{Key, Opener, Sealer, HEADER_LEN};
//!
//! let key = Key::from([7u8; 32]);
//! let (sealer, opener) = (Sealer::new(&key, 42), Opener::new(&key, 42));
//! // An IPv4 header claiming 28 bytes, then 8 bytes of UDP.
//! let mut pkt = vec![0u8; 28];
//! pkt[0] = 0x45;
//! pkt[3] = 28;
//! let offset = HEADER_LEN;
//! let mut bufs = vec![[vec![0u8; offset], pkt.clone()].concat()];
//! let mut sizes = vec![pkt.len()];
//! sealer.seal(&mut bufs, offset, &mut sizes, None).unwrap();
//! assert_eq!(sizes[0], 16 + 32 + 16); // 28 bytes padded to 32, header and tag
//! // The message is at bufs[0][0..]: open it there.
//! let opened = opener.open(&mut bufs, 0, &mut sizes).unwrap();
//! assert_eq!((opened.packets, opened.other), (1, 0));
//! assert_eq!(&bufs[0][HEADER_LEN..HEADER_LEN + sizes[0]], &pkt[..]);
//! ```
//!
//! [`ExpandBuffer`]: crate::engine::ExpandBuffer
//! [`ErrorKind::KeyExhausted`]: crate::engine::ErrorKind::KeyExhausted

mod key;
mod open;
mod replay;
mod seal;
#[cfg(test)]
mod tests;
mod with;

pub use key::Key;
pub use open::{open_batch, parse_header, Header, OpenStats, Opened, Opener, Outcome, Sessions};
pub use replay::ReplayWindow;
pub use seal::Sealer;
pub use with::make_room;

use crate::engine::buffer;
use crate::engine::error::{bail, Result};
use crate::engine::ExpandBuffer;

/// The transport-data header: type, 3 reserved bytes, receiver index, counter.
pub const HEADER_LEN: usize = 16;
/// The Poly1305 tag after the ciphertext.
pub const TAG_LEN: usize = 16;
/// What a message adds to its packet, padding aside: header and tag.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// The message type of transport data (the first byte; the next three are 0).
pub const MESSAGE_TRANSPORT: u8 = 4;
/// Plaintexts are zero-padded to a multiple of this (within the MTU, see [`padded_len`]).
pub const PADDING_MULTIPLE: usize = 16;
/// After this many messages a sender should start a new handshake (WireGuard's
/// `REKEY_AFTER_MESSAGES`, 2^60); [`Sealer::next_counter`] tells where a key is.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// No counter at or above this is ever sealed or accepted (WireGuard's
/// `REJECT_AFTER_MESSAGES`, 2^64 - 2^13 - 1).
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// The replay window's bitmap, in bits (RFC 6479). Of them, `WINDOW - 64` counters behind
/// the highest one seen are accepted (one 64-bit word is the ring's slack), exactly as
/// wireguard-go and Linux.
pub const WINDOW: usize = 8192;

/// Checks a batch's shape before anything is changed: `offset >= min_offset`
/// (`offset_too_small`, for the header in front of a packet to seal; `what` names the
/// entries: "packet", "message"), no more `sizes` than `bufs` (`count_too_large`), every
/// entry `bufs[i][offset..offset + sizes[i]]` inside its buffer (`buffer_too_small`, with
/// its index), and no two buffers sharing memory (`overlapping_buffers`): the engine's
/// rules ([`buffer::batch_len`], [`buffer::span`], [`buffer::check_distinct`]). The one
/// check of [`Sealer::seal`], [`open_batch`] and the WireGuard device's batches.
pub fn check_batch<B: ExpandBuffer>(
    bufs: &[B],
    offset: usize,
    sizes: &[usize],
    min_offset: usize,
    what: &str,
) -> Result<()> {
    if offset < min_offset {
        bail!(
            OffsetTooSmall,
            "offset {offset} leaves no room for the {min_offset}-byte header in front of the \
             {what}"
        );
    }
    let n = buffer::batch_len(bufs.len(), Some(sizes.len()), None)?;
    for (i, (b, &size)) in bufs.iter().zip(sizes).enumerate() {
        buffer::span(i, b.bytes().len(), offset, Some(size), true)?;
    }
    let whole = |_: usize, b: &B| buffer::addr_range(b, 0, b.capacity().max(b.bytes().len()));
    buffer::check_distinct(&bufs[..n], &whole, "bufs")
}

/// The padded length of a `size`-byte packet: rounded up to a multiple of 16, but never
/// past `mtu` (as wireguard-go's `calculatePaddingSize` and Linux's
/// `calculate_skb_padding`): a packet of `mtu` bytes or more is not padded beyond the MTU;
/// one longer than `mtu` (which should not happen) is padded as its remainder modulo
/// `mtu` would be. `None` or `Some(0)`: no limit. Saturates at `usize::MAX`.
pub fn padded_len(size: usize, mtu: Option<usize>) -> usize {
    let up = |n: usize| {
        n.div_ceil(PADDING_MULTIPLE)
            .saturating_mul(PADDING_MULTIPLE)
    };
    match mtu {
        None | Some(0) => up(size),
        Some(mtu) => {
            let last = if size > mtu { size % mtu } else { size };
            size - last + up(last).min(mtu)
        }
    }
}

/// The length of the IP packet at the start of a non-empty plaintext, or `None` if it is
/// not one (the rule of wireguard-go's `RoutineSequentialReceiver` and Linux's
/// `wg_packet_consume_data_done`): IPv4 (version 4, at least 20 bytes) with a header
/// length (IHL) of at least 20 and a total length from it to the plaintext's length;
/// IPv6 (version 6, at least 40 bytes) with payload length + 40 at most the plaintext's
/// length. What follows that length is padding. (Linux leaves a bad IHL to its IP layer;
/// a TUN batch refuses it whole, `device::batch::check_packet`, so it is dropped here,
/// alone.)
pub fn ip_packet_len(plain: &[u8]) -> Option<usize> {
    let (min, len) = match plain.first()? >> 4 {
        4 if plain.len() >= 20 && plain[0] & 0x0f >= 5 => (
            usize::from(plain[0] & 0x0f) * 4,
            usize::from(u16::from_be_bytes([plain[2], plain[3]])),
        ),
        6 if plain.len() >= 40 => (
            40,
            40 + usize::from(u16::from_be_bytes([plain[4], plain[5]])),
        ),
        _ => return None,
    };
    (min..=plain.len()).contains(&len).then_some(len)
}
