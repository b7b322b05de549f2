//! Opening: transport-data messages back into packets, in place, each under the key its
//! receiver index names, with the replay window and the counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ring::aead::Aad;

use super::key::RingKey;
use super::seal::nonce;
use super::{
    check_batch, ip_packet_len, Key, ReplayWindow, HEADER_LEN, MESSAGE_TRANSPORT, OVERHEAD,
};
use crate::engine::error::Result;
use crate::engine::ExpandBuffer;

/// Declares [`OpenStats`] (plain numbers) and `Counters` (the same fields, atomic), with
/// the field list written once.
macro_rules! stats {
    (@count $($f:ident)*) => { 0 $(+ { let _ = stringify!($f); 1 })* };
    ($($(#[$doc:meta])* $field:ident,)*) => {
        /// What opening did with messages: for an [`Opener`], every message since it was
        /// made ([`Opener::stats`]); for one call, that call's ([`Opened::stats`]).
        /// Every message lands in exactly one of `packets`, `keepalives`, `other` and the
        /// `dropped_*`.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct OpenStats {
            $($(#[$doc])* pub $field: u64,)*
        }

        impl OpenStats {
            /// Adds `other`'s counts to these.
            pub fn add(&mut self, other: &OpenStats) {
                $(self.$field += other.$field;)*
            }

            /// Each count with its name, in declaration order.
            pub fn items(&self) -> [(&'static str, u64); stats!(@count $($field)*)] {
                [$((stringify!($field), self.$field),)*]
            }
        }

        /// An [`Opener`]'s counts, updated by several threads.
        #[derive(Default)]
        struct Counters {
            $($field: AtomicU64,)*
        }

        impl Counters {
            fn add(&self, s: &OpenStats) {
                $(if s.$field != 0 {
                    self.$field.fetch_add(s.$field, Ordering::Relaxed);
                })*
            }

            fn get(&self) -> OpenStats {
                OpenStats {
                    $($field: self.$field.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

stats! {
    /// Packets opened and handed back.
    packets,
    /// Their bytes (IP lengths, padding stripped).
    bytes,
    /// Keepalives (an empty plaintext): authenticated, counted, not handed back.
    keepalives,
    /// Messages handed back untouched: not transport data (another type, or fewer than 4
    /// bytes), or for another receiver index.
    other,
    /// Dropped: the tag did not verify (a flipped bit anywhere, a wrong key).
    dropped_forged,
    /// Dropped: authentic, but the counter was seen before, is too far behind the window,
    /// or is at or above `REJECT_AFTER_MESSAGES`.
    dropped_replayed,
    /// Dropped: transport data shorter than 32 bytes, or a plaintext that is not an IP
    /// packet whose length fits it.
    dropped_malformed,
    /// Dropped: a packet the [`Sessions::accept`] hook refused.
    dropped_filtered,
}

/// The result of opening a batch: `bufs[..packets]` are the opened packets (packet `j` at
/// `bufs[j][offset + HEADER_LEN..][..sizes[j]]`), `bufs[packets..packets + other]` the
/// other messages, untouched (at `bufs[j][offset..][..sizes[j]]`), both in arrival order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Opened {
    /// How many packets lead the batch.
    pub packets: usize,
    /// How many other messages follow them.
    pub other: usize,
    /// This call's counts (all of them, also the ones no session was found for).
    pub stats: OpenStats,
}

/// What a message's first 16 bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// Transport data (type 4, three zero bytes), at least 32 bytes long.
    Transport {
        /// The receiver index: which of the receiver's sessions.
        receiver: u32,
        /// The counter, the nonce's last 8 bytes.
        counter: u64,
    },
    /// Transport data shorter than its header and tag (32 bytes): malformed.
    Truncated,
    /// Not transport data: another message type, or fewer than 4 bytes.
    Other,
}

/// Reads a message's header (see [`Header`]). Only a message whose first four bytes are
/// `04 00 00 00` is transport data, as wireguard-go reads the type as a 32-bit word.
pub fn parse_header(msg: &[u8]) -> Header {
    match msg {
        [MESSAGE_TRANSPORT, 0, 0, 0, r0, r1, r2, r3, c @ ..] if msg.len() >= OVERHEAD => {
            let mut counter = [0; 8];
            counter.copy_from_slice(&c[..8]);
            Header::Transport {
                receiver: u32::from_le_bytes([*r0, *r1, *r2, *r3]),
                counter: u64::from_le_bytes(counter),
            }
        }
        [MESSAGE_TRANSPORT, 0, 0, 0, ..] => Header::Truncated,
        _ => Header::Other,
    }
}

/// What became of one message ([`Opener::open_one`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An IP packet of this many bytes, at `msg[HEADER_LEN..]`.
    Packet(usize),
    /// A keepalive.
    Keepalive,
    /// Not transport data for this key: untouched.
    Other,
    /// The tag did not verify; the bytes after the header are unspecified.
    Forged,
    /// Authentic, but the replay window refused the counter.
    Replayed,
    /// Truncated, or authentic but not an IP packet.
    Malformed,
}

/// The sessions of an [`open_batch`] call: which [`Opener`] a receiver index names, and the
/// caller's say on what was opened.
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Arc;
/// use tunoffload::aead::{Opener, Sessions};
///
/// struct Peers<'a> {
///     by_index: &'a HashMap<u32, Arc<Opener>>,
///     seen: Vec<usize>,
/// }
///
/// impl Sessions for Peers<'_> {
///     type Session = Arc<Opener>;
///     fn lookup(&mut self, receiver: u32) -> Option<Arc<Opener>> {
///         self.by_index.get(&receiver).cloned()
///     }
///     fn opener(session: &Arc<Opener>) -> &Opener {
///         session
///     }
///     fn authenticated(&mut self, index: usize, _: &Arc<Opener>) {
///         self.seen.push(index); // note datagram `index`'s source address
///     }
///     fn accept(&mut self, _: usize, _: &Arc<Opener>, packet: &[u8]) -> bool {
///         packet[0] >> 4 == 4 // IPv4 only, say
///     }
/// }
/// ```
pub trait Sessions {
    /// What a receiver index resolves to: a reference, an `Arc` of a keypair, ...
    type Session;

    /// The session of `receiver`, or `None` (the message is then "other", handed back).
    /// Called once per transport-data message.
    fn lookup(&mut self, receiver: u32) -> Option<Self::Session>;

    /// The session's opener. Messages in a row with the same opener (compared by address)
    /// add to its [`OpenStats`] once per run.
    fn opener(session: &Self::Session) -> &Opener;

    /// Called for every message that `session`'s key authenticated and its replay window
    /// accepted (before the plaintext is looked at: keepalives and malformed ones too),
    /// with the message's index in the batch as passed in. Where a protocol notes the
    /// datagram's source (roaming) and that the session received something.
    fn authenticated(&mut self, index: usize, session: &Self::Session) {
        let _ = (index, session);
    }

    /// Whether to hand back `packet` (the IP packet, padding stripped), opened from the
    /// message at `index` (as passed in) with `session`'s key; `false` drops it as
    /// `dropped_filtered` (where a protocol checks the inner source against the peer's
    /// allowed addresses). Not called for keepalives or malformed plaintexts.
    fn accept(&mut self, index: usize, session: &Self::Session, packet: &[u8]) -> bool {
        let _ = (index, session, packet);
        true
    }
}

/// Opens a batch whose messages may be for several sessions: message `i` is
/// `bufs[i][offset..offset + sizes[i]]` for `i < sizes.len()`. Each transport-data message
/// is opened with the [`Opener`] its receiver index resolves to, then the batch is
/// compacted as the [module](super) says: `[0..packets)` packets, then `other` messages,
/// in arrival order; the dropped ones after, with sizes 0. Each opener's
/// [`OpenStats`] count its messages; the call's counts, also of messages no session was
/// found for, are in [`Opened::stats`].
///
/// Errors (nothing is changed): more `sizes` than `bufs` (`count_too_large`); a message
/// that runs past its buffer (`buffer_too_small`, with its index). No input makes it
/// panic. Work is linear in the batch, but for moving each packet in front of the other
/// messages before it (a move of the run of others, which are rare: handshakes).
pub fn open_batch<B: ExpandBuffer, S: Sessions>(
    sessions: &mut S,
    bufs: &mut [B],
    offset: usize,
    sizes: &mut [usize],
) -> Result<Opened> {
    open_in(sessions, bufs, offset, sizes).map(|(opened, _)| opened)
}

/// [`open_batch`], returning also the counts of the messages no session was found for
/// (other ones, truncated ones), which [`Opener::open`] adds to its own.
fn open_in<B: ExpandBuffer, S: Sessions>(
    sessions: &mut S,
    bufs: &mut [B],
    offset: usize,
    sizes: &mut [usize],
) -> Result<(Opened, OpenStats)> {
    check_batch(bufs, offset, sizes, 0, "message")?;
    // The counts of messages without a session, of the current run of messages with one
    // opener (added to it when the run ends), and of the whole call.
    let (mut loose, mut total) = (OpenStats::default(), OpenStats::default());
    let mut run: Option<(S::Session, OpenStats)> = None;
    // The batch so far: [0, p) packets, [p, p + o) others, [p + o, i) dropped.
    let (mut p, mut o) = (0, 0);
    for i in 0..sizes.len() {
        let Some(msg) = bufs[i].bytes_mut().get_mut(offset..offset + sizes[i]) else {
            // Checked above; only an `ExpandBuffer` whose two views disagree gets here.
            loose.dropped_malformed += 1;
            sizes[i] = 0;
            continue;
        };
        let found = match parse_header(msg) {
            Header::Transport { receiver, counter } => {
                sessions.lookup(receiver).map(|s| (s, counter))
            }
            Header::Truncated => {
                loose.dropped_malformed += 1;
                sizes[i] = 0;
                continue;
            }
            Header::Other => None,
        };
        let Some((session, counter)) = found else {
            // Another message type, or a receiver index without a session: untouched.
            loose.other += 1;
            move_to(bufs, sizes, i, p + o);
            o += 1;
            continue;
        };
        let (session, tally) = match &mut run {
            Some((cur, tally)) if std::ptr::eq(S::opener(cur), S::opener(&session)) => {
                (&*cur, tally)
            }
            _ => {
                if let Some((prev, tally)) = run.take() {
                    S::opener(&prev).counters.add(&tally);
                    total.add(&tally);
                }
                let (cur, tally) = run.insert((session, OpenStats::default()));
                (&*cur, tally)
            }
        };
        let outcome = match S::opener(session).authenticate(counter, msg) {
            Ok(len) => {
                sessions.authenticated(i, session);
                match content(&msg[HEADER_LEN..][..len]) {
                    Outcome::Packet(len)
                        if !sessions.accept(i, session, &msg[HEADER_LEN..][..len]) =>
                    {
                        tally.dropped_filtered += 1;
                        sizes[i] = 0;
                        continue;
                    }
                    outcome => outcome,
                }
            }
            Err(outcome) => outcome,
        };
        tally.count(outcome);
        if let Outcome::Packet(len) = outcome {
            sizes[i] = len;
            move_to(bufs, sizes, i, p + o);
            // In front of the others, which keep their order.
            bufs[p..=p + o].rotate_right(1);
            sizes[p..=p + o].rotate_right(1);
            p += 1;
        } else {
            sizes[i] = 0;
        }
    }
    if let Some((last, tally)) = run {
        S::opener(&last).counters.add(&tally);
        total.add(&tally);
    }
    total.add(&loose);
    let opened = Opened {
        packets: p,
        other: o,
        stats: total,
    };
    Ok((opened, loose))
}

/// Moves entry `from` of the batch to `to <= from`, swapping it with the (dropped) entry
/// there.
fn move_to<B>(bufs: &mut [B], sizes: &mut [usize], from: usize, to: usize) {
    bufs.swap(to, from);
    sizes.swap(to, from);
}

/// What an authenticated plaintext is: a keepalive (empty), an IP packet whose length
/// fits it ([`ip_packet_len`]), or malformed.
fn content(plain: &[u8]) -> Outcome {
    if plain.is_empty() {
        return Outcome::Keepalive;
    }
    match ip_packet_len(plain) {
        Some(len) => Outcome::Packet(len),
        None => Outcome::Malformed,
    }
}

impl OpenStats {
    /// Counts one message's outcome.
    fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Packet(len) => {
                self.packets += 1;
                self.bytes += len as u64;
            }
            Outcome::Keepalive => self.keepalives += 1,
            Outcome::Other => self.other += 1,
            Outcome::Forged => self.dropped_forged += 1,
            Outcome::Replayed => self.dropped_replayed += 1,
            Outcome::Malformed => self.dropped_malformed += 1,
        }
    }
}

/// [`Opener::open`]'s sessions: the opener itself, for its own receiver index.
struct One<'a>(&'a Opener);

impl<'a> Sessions for One<'a> {
    type Session = &'a Opener;

    fn lookup(&mut self, receiver: u32) -> Option<&'a Opener> {
        (receiver == self.0.local).then_some(self.0)
    }

    fn opener(session: &&'a Opener) -> &'a Opener {
        session
    }
}

/// One receive key, its receiver index (the local one, that the peer puts in its
/// messages), replay window and counts. `&self` methods: it may be shared by several
/// threads (the window is behind a mutex, held only to check a counter).
pub struct Opener {
    key: RingKey,
    local: u32,
    window: Mutex<ReplayWindow>,
    counters: Counters,
}

impl Opener {
    /// An opener for `key`, for messages that carry `local_index`, with an empty window.
    pub fn new(key: &Key, local_index: u32) -> Opener {
        Opener {
            key: key.ring_key(),
            local: local_index,
            window: Mutex::new(ReplayWindow::new()),
            counters: Counters::default(),
        }
    }

    /// The receiver index this key's messages carry.
    pub fn local_index(&self) -> u32 {
        self.local
    }

    /// The counts of every message this opener has seen (a snapshot).
    pub fn stats(&self) -> OpenStats {
        self.counters.get()
    }

    /// Opens a batch of messages for this key ([`open_batch`] with this one session,
    /// which accepts every packet): returns how many packets and other messages lead the
    /// batch. Every message is counted in [`Opener::stats`].
    pub fn open<B: ExpandBuffer>(
        &self,
        bufs: &mut [B],
        offset: usize,
        sizes: &mut [usize],
    ) -> Result<Opened> {
        let (opened, loose) = open_in(&mut One(self), bufs, offset, sizes)?;
        self.counters.add(&loose);
        Ok(opened)
    }

    /// Opens one message, exactly `msg`, in place (the packet lands at
    /// `msg[HEADER_LEN..]`), and counts it.
    pub fn open_one(&self, msg: &mut [u8]) -> Outcome {
        let outcome = match parse_header(msg) {
            Header::Transport { receiver, counter } if receiver == self.local => {
                match self.authenticate(counter, msg) {
                    Ok(len) => content(&msg[HEADER_LEN..][..len]),
                    Err(outcome) => outcome,
                }
            }
            Header::Truncated => Outcome::Malformed,
            _ => Outcome::Other,
        };
        let mut one = OpenStats::default();
        one.count(outcome);
        self.counters.add(&one);
        outcome
    }

    /// Decrypts the transport-data message `msg` (at least 32 bytes) in place and checks
    /// its counter in the window (updated only for an authentic message): the length of
    /// the plaintext, now at `msg[HEADER_LEN..]`, or `Forged` or `Replayed`.
    fn authenticate(&self, counter: u64, msg: &mut [u8]) -> std::result::Result<usize, Outcome> {
        let sealed = msg.get_mut(HEADER_LEN..).ok_or(Outcome::Malformed)?;
        let plain = self
            .key
            .get()
            .open_in_place(nonce(counter), Aad::empty(), sealed)
            .map_err(|_| Outcome::Forged)?;
        let fresh = self
            .window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .check(counter);
        if fresh {
            Ok(plain.len())
        } else {
            Err(Outcome::Replayed)
        }
    }
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("local_index", &self.local)
            .finish_non_exhaustive()
    }
}
