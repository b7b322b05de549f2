//! One peer's state (wireguard-go's `peer.go`), each part behind its own lock or in
//! atomics so the data paths and the control thread touch only what they need.
//!
//! Lock order (device-wide): the device's identity, the peer table, a peer's
//! `handshake`, the index table, a peer's `keypairs`, then the leaves (`endpoint`,
//! `cookie`, `staged`). A batch takes each once.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicU16, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed,
};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::cookie::CookieGenerator;
use super::crypto::Secret;
use super::keypair::Keypairs;
use super::noise::Handshake;
use super::timers::Timers;
use crate::aead::HEADER_LEN;

/// wireguard-go's `QueueStagedSize`: packets staged while there is no session.
pub(crate) const MAX_STAGED: usize = 128;

/// Work a data path queued for the control thread ([`Peer::want`] bits).
pub(crate) mod want {
    /// `SendStagedPackets` (which starts a handshake if there is no session).
    pub(crate) const FLUSH: u8 = 1;
    /// `SendHandshakeInitiation(false)`.
    pub(crate) const HANDSHAKE: u8 = 2;
    /// `SendKeepalive`.
    pub(crate) const KEEPALIVE: u8 = 4;
}

/// Locks a mutex; a panic elsewhere (there should be none) does not poison the device.
pub(crate) use crate::hooks::locked as lock;

/// Read-locks an `RwLock`, ignoring poisoning.
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// Write-locks an `RwLock`, ignoring poisoning.
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// One peer.
pub(crate) struct Peer {
    /// Its public key.
    pub(crate) public_key: [u8; 32],
    /// Creation order (for reporting).
    pub(crate) seq: u64,
    /// Cleared when the peer is removed: a data path holding it drops its packets.
    pub(crate) running: AtomicBool,
    pub(crate) handshake: Mutex<Handshake>,
    pub(crate) keypairs: RwLock<Keypairs>,
    pub(crate) endpoint: RwLock<Option<SocketAddr>>,
    pub(crate) cookie: Mutex<CookieGenerator>,
    /// Packets waiting for a session, each with [`HEADER_LEN`] bytes of headroom.
    pub(crate) staged: Mutex<VecDeque<Vec<u8>>>,
    /// `staged.len()`, readable without the lock.
    pub(crate) staged_len: AtomicUsize,
    pub(crate) timers: Timers,
    /// Seconds; 0: off.
    pub(crate) persistent_keepalive: AtomicU16,
    pub(crate) tx_bytes: AtomicU64,
    pub(crate) rx_bytes: AtomicU64,
    /// Nanoseconds since the Unix epoch of the last completed handshake; 0: never.
    pub(crate) last_handshake: AtomicU64,
    /// [`want`] bits for the control thread.
    pub(crate) want: AtomicU8,
}

impl Peer {
    /// A peer with `public_key`, given the static-static DH with our private key.
    pub(crate) fn new(public_key: [u8; 32], static_static: Option<Secret>, seq: u64) -> Peer {
        Peer {
            public_key,
            seq,
            running: AtomicBool::new(true),
            handshake: Mutex::new(Handshake::new(public_key, static_static)),
            keypairs: RwLock::new(Keypairs::default()),
            endpoint: RwLock::new(None),
            cookie: Mutex::new(CookieGenerator::new(&public_key)),
            staged: Mutex::new(VecDeque::new()),
            staged_len: AtomicUsize::new(0),
            timers: Timers::default(),
            persistent_keepalive: AtomicU16::new(0),
            tx_bytes: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            last_handshake: AtomicU64::new(0),
            want: AtomicU8::new(0),
        }
    }

    /// The endpoint, if known.
    pub(crate) fn endpoint(&self) -> Option<SocketAddr> {
        *read(&self.endpoint)
    }

    /// `SetEndpointFromPacket`: roams to `src` (a write only when it changes).
    pub(crate) fn roam(&self, src: SocketAddr) {
        if self.endpoint() != Some(src) {
            *write(&self.endpoint) = Some(src);
        }
    }

    /// Stages copies of `packets` (oldest dropped beyond [`MAX_STAGED`]); returns how
    /// many were dropped.
    pub(crate) fn stage<'a>(&self, packets: impl Iterator<Item = &'a [u8]>) -> u64 {
        let mut q = lock(&self.staged);
        let mut dropped = 0;
        for p in packets {
            let mut v = Vec::with_capacity(HEADER_LEN + p.len());
            v.resize(HEADER_LEN, 0);
            v.extend_from_slice(p);
            q.push_back(v);
            if q.len() > MAX_STAGED {
                q.pop_front();
                dropped += 1;
            }
        }
        self.staged_len.store(q.len(), Relaxed);
        dropped
    }

    /// Queues a keepalive (an empty packet) if nothing is staged (`SendKeepalive`).
    pub(crate) fn stage_keepalive(&self) {
        let mut q = lock(&self.staged);
        if q.is_empty() {
            q.push_back(vec![0; HEADER_LEN]);
            self.staged_len.store(1, Relaxed);
        }
    }

    /// Takes every staged packet.
    pub(crate) fn take_staged(&self) -> VecDeque<Vec<u8>> {
        let mut q = lock(&self.staged);
        self.staged_len.store(0, Relaxed);
        std::mem::take(&mut *q)
    }

    /// Puts packets back in front of the staged ones (a send that could not happen);
    /// returns how many were dropped for room.
    pub(crate) fn restage_front(&self, mut packets: VecDeque<Vec<u8>>) -> u64 {
        let mut q = lock(&self.staged);
        packets.append(&mut q);
        let mut dropped = 0;
        while packets.len() > MAX_STAGED {
            packets.pop_front();
            dropped += 1;
        }
        *q = packets;
        self.staged_len.store(q.len(), Relaxed);
        dropped
    }

    /// `FlushStagedPackets`: drops every staged packet; returns how many.
    pub(crate) fn flush_staged(&self) -> u64 {
        self.take_staged().len() as u64
    }

    /// Asks the control thread for work; whether that is news (a bit of `what` was not
    /// asked for yet).
    pub(crate) fn ask(&self, what: u8) -> bool {
        self.want.fetch_or(what, Relaxed) & what != what
    }
}
