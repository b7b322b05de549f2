//! [`Queue`]: one queue of a TUN device as a long-lived object shared by threads holds
//! it (the Python class `TunDevice`): closable while calls are in it, blocking or not,
//! its name remembered once closed, and a packet that a batch read could not deliver kept
//! for the next read.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use super::batch::RecvState;
use super::{sys, Counters, Error, OffloadState, Offloads, Tun};
use crate::hooks::{locked, retry, Hooks};

/// What a queue is, as it was opened (still known once it is closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueInfo {
    /// Reads and writes carry the 10-byte virtio header.
    pub offload: bool,
    /// The kernel took UDP segmentation offload (USO4/USO6).
    pub udp_gso: bool,
    /// A TAP (Ethernet) device.
    pub tap: bool,
    /// A multi-queue device.
    pub multi_queue: bool,
    /// Every packet starts with the 4-byte packet information header.
    pub packet_information: bool,
}

/// A TUN queue shared by threads.
///
/// [`close`](Self::close) wakes a thread blocked in a read at once (it gets
/// [`Error::Closed`]); the descriptor itself is closed when the last call using it has
/// returned, so its number is never reused under a running call. Every call after close
/// is [`Error::Closed`] (`EBADF`).
#[derive(Debug)]
pub struct Queue {
    tun: Mutex<Option<Arc<Tun>>>,
    last_name: Mutex<String>,
    blocking: AtomicBool,
    /// The queue's counters (kept after close).
    pub counters: Arc<Counters>,
    /// The device's offload switches (readable after close, as they were).
    offloads: Arc<Offloads>,
    /// What the queue is.
    pub info: QueueInfo,
    /// A packet read by a batch read whose buffers could not take it, for the next read.
    pub recv_state: RecvState,
}

impl Queue {
    /// `tun`, shared; reads wait for a packet when `blocking`.
    pub fn new(tun: Tun, blocking: bool) -> Queue {
        let flags = tun.flags();
        let info = QueueInfo {
            offload: tun.vnet_hdr(),
            udp_gso: tun.udp_gso(),
            tap: flags & sys::IFF_TAP != 0,
            multi_queue: flags & sys::IFF_MULTI_QUEUE != 0,
            packet_information: flags & sys::IFF_NO_PI == 0,
        };
        Queue {
            last_name: Mutex::new(tun.name().unwrap_or_default()),
            counters: tun.counters.clone(),
            offloads: tun.offloads.clone(),
            tun: Mutex::new(Some(Arc::new(tun))),
            blocking: AtomicBool::new(blocking),
            info,
            recv_state: RecvState::new(),
        }
    }

    /// The open queue, or [`Error::Closed`].
    pub fn get(&self) -> Result<Arc<Tun>, Error> {
        locked(&self.tun).clone().ok_or(Error::Closed)
    }

    /// Runs `f` on the open queue through `hooks` (retried after `EINTR`).
    pub fn on<T: Send, E: From<Error>, H: Hooks<E> + ?Sized>(
        &self,
        hooks: &mut H,
        mut f: impl FnMut(&Tun) -> Result<T, Error> + Send,
    ) -> Result<T, E> {
        let tun = self.get()?;
        retry(hooks, || f(&tun))
    }

    /// The interface name as the kernel has it now (the last known one once closed).
    pub fn name<E: From<Error>, H: Hooks<E> + ?Sized>(&self, hooks: &mut H) -> Result<String, E> {
        let Ok(tun) = self.get() else {
            return Ok(locked(&self.last_name).clone());
        };
        let name = retry(hooks, || tun.name())?;
        name.clone_into(&mut locked(&self.last_name));
        Ok(name)
    }

    /// Closes the queue (see the type's docs). Idempotent.
    pub fn close(&self) {
        let taken = locked(&self.tun).take();
        if let Some(tun) = taken {
            tun.shutdown();
        }
    }

    /// The device's offload switches now (as they were at close, once closed).
    pub fn offload_state(&self) -> OffloadState {
        self.offloads.state()
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        locked(&self.tun).is_none()
    }

    /// The descriptor, or -1 once closed.
    pub fn raw_fd(&self) -> i32 {
        locked(&self.tun).as_ref().map_or(-1, |t| t.raw_fd())
    }

    /// Whether reads wait for a packet.
    pub fn blocking(&self) -> bool {
        self.blocking.load(Relaxed)
    }

    /// Makes reads wait for a packet (`true`) or fail with `EAGAIN` when there is none.
    pub fn set_blocking(&self, on: bool) {
        self.blocking.store(on, Relaxed);
    }

    /// Reads one packet into `buf` (a packet held back from a batch read first).
    pub fn recv<E: From<Error>, H: Hooks<E> + ?Sized>(
        &self,
        hooks: &mut H,
        buf: &mut [u8],
    ) -> Result<usize, E> {
        let blocking = self.blocking();
        self.on(hooks, |tun| self.recv_state.read(tun, buf, blocking.into()))
    }

    /// Writes one packet.
    pub fn send<E: From<Error>, H: Hooks<E> + ?Sized>(
        &self,
        hooks: &mut H,
        buf: &[u8],
    ) -> Result<usize, E> {
        let blocking = self.blocking();
        self.on(hooks, |tun| tun.write(buf, blocking))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::TunOptions;
    use crate::hooks::Direct;
    use crate::udp::Wait;
    use std::time::{Duration, Instant};

    crate::root_test! {
        fn a_closed_queue_refuses_calls_and_keeps_its_name() {
            std::thread::spawn(|| {
                // SAFETY: unshare on this thread only affects this thread's namespaces.
                assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
                let opts = TunOptions {
                    name: Some("tq0".into()),
                    ..TunOptions::default()
                };
                let q = Queue::new(Tun::open(&opts).unwrap(), false);
                assert!(!q.info.offload && !q.info.tap && !q.is_closed());
                assert_eq!(q.name::<Error, _>(&mut Direct).unwrap(), "tq0");
                assert!(q.raw_fd() >= 0);
                let e = q.recv::<Error, _>(&mut Direct, &mut [0; 100]).unwrap_err();
                assert_eq!(e.errno(), Some(libc::EAGAIN), "non-blocking, nothing to read");
                let soon = Instant::now() + Duration::from_millis(20);
                let e = q.get().unwrap().read_waiting(&mut [0; 100], Wait::Until(soon));
                assert_eq!(e.unwrap_err().errno(), Some(libc::ETIMEDOUT), "waited, for nothing");
                assert!(Instant::now() >= soon);
                q.close();
                q.close();
                assert!(q.is_closed() && q.raw_fd() == -1);
                assert_eq!(q.name::<Error, _>(&mut Direct).unwrap(), "tq0");
                let sent = q.send::<Error, _>(&mut Direct, &[0x45]);
                assert!(matches!(sent, Err(Error::Closed)));
            })
            .join()
            .expect("queue thread");
        }
    }
}
