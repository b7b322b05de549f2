//! [`Shared`]: one socket's batches for callers in several threads (the Python class
//! `UdpSocket`).

use std::ffi::c_int;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

use super::{Result, Stats, UdpBatch};
use crate::hooks::{lock, Hooks};

/// A receiving and a sending [`UdpBatch`] on one socket: one thread may receive while
/// another sends; two calls of one kind take turns (the second waits through the caller's
/// hooks). The counters, the pending count and whether segmentation is on are readable
/// at any time, as of the last call that ended (a call may wait long, holding its batch).
#[derive(Debug)]
pub struct Shared {
    rx: Mutex<UdpBatch>,
    tx: Mutex<UdpBatch>,
    /// The receive counters, the send counters and the pending count.
    seen: Mutex<(Stats, Stats, usize)>,
    gso: AtomicBool,
    family: c_int,
    gro: bool,
}

impl Shared {
    /// The batches for `sock`, with the offloads asked for where the kernel has them
    /// (`UDP_GRO` turned on for the socket when `gro`), as [`UdpBatch::with_offloads`].
    pub fn new(sock: BorrowedFd<'_>, gso: bool, gro: bool) -> Result<Self> {
        let rx = UdpBatch::with_offloads(sock, false, gro)?;
        let tx = UdpBatch::with_offloads(sock, gso, false)?;
        Ok(Shared {
            family: rx.family(),
            gro: rx.gro(),
            gso: AtomicBool::new(tx.gso()),
            rx: Mutex::new(rx),
            tx: Mutex::new(tx),
            seen: Mutex::default(),
        })
    }

    /// The socket's family (`AF_INET` or `AF_INET6`).
    pub fn family(&self) -> c_int {
        self.family
    }

    /// Whether `UDP_GRO` was turned on.
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// Whether runs of equal-size datagrams go out as `UDP_SEGMENT` sends.
    pub fn gso(&self) -> bool {
        self.gso.load(Relaxed)
    }

    fn seen(&self) -> (Stats, Stats, usize) {
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Datagrams received and not delivered yet.
    pub fn pending(&self) -> usize {
        self.seen().2
    }

    /// The counters by name (see [`Stats::items`]).
    pub fn stats(&self) -> [(&'static str, u64); 10] {
        let (rx, tx, _) = self.seen();
        rx.items(&tx)
    }

    /// Runs `f` on the sending batch as one system call made through `hooks` (after a
    /// wait for another send, through them too); then records the batch's counters and
    /// whether segmentation is still on.
    pub fn sending<T: Send, E, H: Hooks<E> + ?Sized>(
        &self,
        hooks: &mut H,
        f: impl FnOnce(&mut UdpBatch) -> T + Send,
    ) -> T {
        let mut guard = lock(hooks, &self.tx);
        let tx = &mut *guard;
        let r = hooks.syscall(|| f(tx));
        self.gso.store(tx.gso(), Relaxed);
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).1 = tx.stats();
        r
    }

    /// Runs `f` on the receiving batch and `hooks` (after a wait for another receive,
    /// through them); then records the batch's counters and pending count.
    pub fn receiving<T, E, H: Hooks<E> + ?Sized>(
        &self,
        hooks: &mut H,
        f: impl FnOnce(&mut UdpBatch, &mut H) -> T,
    ) -> T {
        let mut rx = lock(hooks, &self.rx);
        let r = f(&mut rx, hooks);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        (seen.0, seen.2) = (rx.stats(), rx.pending());
        r
    }
}
