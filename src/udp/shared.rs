//! [`Shared`]: one socket's batches for callers in several threads (the Python class
//! `UdpSocket`).

use std::ffi::c_int;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;

use super::{Options, Result, Stats, UdpBatch};
use crate::hooks::{lock, locked, Hooks};

/// A receiving and a sending [`UdpBatch`] on one socket: one thread may receive while
/// another sends; two calls of one kind take turns (the second waits through the caller's
/// hooks). The counters, the pending count and whether segmentation and ECN cmsgs are
/// on are readable at any time, as of the last call that ended (a call may wait long,
/// holding its batch).
#[derive(Debug)]
pub struct Shared {
    rx: Mutex<UdpBatch>,
    tx: Mutex<UdpBatch>,
    /// The receive counters, the send counters and the pending count.
    seen: Mutex<(Stats, Stats, usize)>,
    gso: AtomicBool,
    send_ecn: AtomicBool,
    family: c_int,
    gro: bool,
    opts: Options,
}

impl Shared {
    /// The batches for `sock`, with the offloads asked for where the kernel has them
    /// (`UDP_GRO` turned on for the socket when `opts.gro`) and the other options turned
    /// on for the socket, as [`UdpBatch::with_options`].
    pub fn new(sock: BorrowedFd<'_>, opts: &Options) -> Result<Self> {
        let rx = UdpBatch::with_options(
            sock,
            &Options {
                gso: false,
                ..*opts
            },
        )?;
        // (The socket options are on already: the sending batch only needs to know them.)
        let tx = UdpBatch::with_options(
            sock,
            &Options {
                gro: false,
                ..*opts
            },
        )?;
        Ok(Shared {
            family: rx.family(),
            gro: rx.gro(),
            gso: AtomicBool::new(tx.gso()),
            send_ecn: AtomicBool::new(tx.send_ecn()),
            opts: *opts,
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

    /// Whether ECN codepoints go out as cmsgs (off once the kernel refused one; see
    /// [`UdpBatch::send_ecn`]).
    pub fn send_ecn(&self) -> bool {
        self.send_ecn.load(Relaxed)
    }

    /// The options as asked for.
    pub fn options(&self) -> Options {
        self.opts
    }

    fn seen(&self) -> (Stats, Stats, usize) {
        *locked(&self.seen)
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
    /// whether segmentation and ECN cmsgs are still on.
    pub fn sending<T: Send, E, H: Hooks<E> + ?Sized>(
        &self,
        hooks: &mut H,
        f: impl FnOnce(&mut UdpBatch) -> T + Send,
    ) -> T {
        let mut guard = lock(hooks, &self.tx);
        let tx = &mut *guard;
        let r = hooks.syscall(|| f(tx));
        self.gso.store(tx.gso(), Relaxed);
        self.send_ecn.store(tx.send_ecn(), Relaxed);
        locked(&self.seen).1 = tx.stats();
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
        let mut seen = locked(&self.seen);
        (seen.0, seen.2) = (rx.stats(), rx.pending());
        r
    }
}
