//! Batched UDP: `sendmmsg` with `UDP_SEGMENT` (segmentation offload, "GSO") and
//! `recvmmsg` with `UDP_GRO` (coalescing offload), the outer half of a tunnel.
//!
//! Pure Rust, no Python: the PyO3 class in `crate::python::udp_socket` wraps
//! [`UdpBatch`].
//!
//! A [`UdpBatch`] does not own its socket: every call takes the descriptor (so a caller
//! that re-reads it each time never uses a stale number). It owns the state that makes a
//! batch cheap: scratch buffers for `recvmmsg`, the `mmsghdr`/`iovec`/cmsg arrays for
//! `sendmmsg` (kept between calls, so the steady state allocates nothing), and the
//! datagrams received but not yet delivered (*pending*: more than the caller had buffers
//! for, or one too large for its buffer), which the next receive delivers first.
//!
//! ```no_run
//! use std::net::UdpSocket;
//! use std::os::fd::AsFd;
//! use tunoffload::udp::{Dest, UdpBatch, Wait};
//!
//! let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
//! sock.connect(sock.local_addr().unwrap()).unwrap();
//! let mut batch = UdpBatch::new(sock.as_fd()).unwrap();
//! let data = vec![vec![7u8; 1400]; 45];
//! // One sendmmsg, one message of 45 segments (UDP_SEGMENT 1400) where the kernel can.
//! batch.send(sock.as_fd(), &data, Dest::Connected, Wait::Block).unwrap();
//! let mut bufs = vec![Vec::new(); 64];
//! let mut sizes = vec![0; 64];
//! let n = batch.recv(sock.as_fd(), &mut bufs, &mut sizes, 0, None, Wait::Block).unwrap();
//! assert!(n >= 1 && sizes[0] == 1400);
//! ```

mod batch;
pub mod cmsg;
pub mod meta;
mod shared;
mod sys;
#[cfg(test)]
pub(crate) mod tests;

pub use batch::{FaultOn, Out, SendError, Stats, UdpBatch};
pub use cmsg::{Source, TxMeta};
pub use cmsg::{ECN_CE, ECN_ECT0, ECN_ECT1, ECN_NAMED, ECN_NOT_ECT};
pub use meta::{parse_source, Meta, Options, PerDatagram, RecvMeta, TxMetas};
pub use shared::Shared;
pub use sys::{addr_form, host_family, host_port, host_string, parse_addr, parse_host};

/// The system constants a caller needs to speak about sockets and their errors (so that
/// bindings above this module need no `libc` of their own).
pub mod consts {
    pub use libc::{AF_INET, AF_INET6, EBADF, SOCK_DGRAM};
}

use std::fmt;
use std::time::{Duration, Instant};

/// At most this many segments go in one `UDP_SEGMENT` send. The kernel's limit
/// (`UDP_MAX_SEGMENTS`) is 64 on older kernels and 128 on newer ones; 64 holds on all. (The
/// engine's [`UDP_MAX_SEGMENTS`](crate::engine::UDP_MAX_SEGMENTS), 128, is the newer
/// kernel's limit for a UDP super-packet through a TUN device.)
pub const MAX_SEGMENTS_PER_SEND: usize = 64;
/// The largest UDP payload over IPv4 (the largest IP packet less the IPv4 and UDP
/// headers: 65507).
pub const MAX_PAYLOAD_V4: usize = crate::engine::MAX_IP_PACKET - 20 - 8;
/// The largest UDP payload over IPv6 without jumbograms (65527: the IPv6 payload length
/// covers the UDP header but not the IPv6 one).
pub const MAX_PAYLOAD_V6: usize = crate::engine::MAX_IP_PACKET - 8;
/// How many datagrams of `size` bytes one `UDP_SEGMENT` send carries: at most
/// [`MAX_SEGMENTS_PER_SEND`], and at most [`MAX_PAYLOAD_V4`] bytes in all (the limit
/// [`UdpBatch::send`] keeps to for both families). `None` for 0 or a size no datagram can
/// have.
pub const fn segments_per_send(size: usize) -> Option<usize> {
    if size == 0 || size > MAX_PAYLOAD_V6 {
        return None;
    }
    let n = MAX_PAYLOAD_V4 / size;
    Some(if n == 0 {
        1
    } else if n > MAX_SEGMENTS_PER_SEND {
        MAX_SEGMENTS_PER_SEND
    } else {
        n
    })
}

/// [`segments_per_send`] for a size as a caller gave it: `OutOfRange` for one no datagram
/// can have (below 1 or above [`MAX_PAYLOAD_V6`]).
pub fn max_segments(size: i64) -> std::result::Result<usize, crate::engine::Error> {
    usize::try_from(size)
        .ok()
        .and_then(segments_per_send)
        .ok_or_else(|| {
            crate::engine::Error::new(
                crate::engine::ErrorKind::OutOfRange,
                format!("size must be a datagram size, 1..{MAX_PAYLOAD_V6}, not {size}"),
            )
        })
}

/// Checks the arguments of a receive: at least one buffer, and at least as many sizes
/// (and addresses, when they are wanted) as buffers.
pub fn check_recv_args(
    bufs: usize,
    sizes: usize,
    addrs: Option<usize>,
) -> std::result::Result<(), crate::engine::Error> {
    use crate::engine::{Error as E, ErrorKind as K};
    if bufs == 0 {
        return Err(E::fixed(K::TooFewOutBufs, "bufs must not be empty"));
    }
    if sizes < bufs {
        let m = format!("sizes has {sizes} entries, fewer than the {bufs} bufs");
        return Err(E::new(K::SizesTooShort, m));
    }
    match addrs {
        Some(a) if a < bufs => Err(E::new(
            K::TooFewAddresses,
            format!("addrs has {a} entries, fewer than the {bufs} bufs"),
        )),
        _ => Ok(()),
    }
}

/// How many `recvmmsg` slots a [`UdpBatch`] keeps (each [`SLOT_SIZE`] bytes).
pub const RECV_SLOTS: usize = 64;
/// The size of one receive slot: more than any UDP datagram or coalesced read.
pub const SLOT_SIZE: usize = 65536;

/// What the socket layer reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A system call failed.
    Os { errno: i32, msg: String },
    /// A bad argument, with its kind (Python: `ValueError` with `kind` and `index`);
    /// nothing was sent or consumed.
    Invalid(crate::engine::Error),
    /// Datagram `index` of this call needs `offset + len = need` bytes of its buffer, which
    /// holds `have` and cannot grow. Nothing was consumed: it is still pending.
    BufferTooSmall {
        index: usize,
        need: usize,
        have: usize,
        reason: String,
    },
    /// A datagram over the path MTU on a socket that does not fragment (`EMSGSIZE`): it
    /// is `size` bytes and the path MTU (the IP packet's limit, `IP_MTU`) is `mtu`, where
    /// it could be read; `msg` says both.
    MessageTooLong {
        size: usize,
        mtu: Option<u32>,
        msg: String,
    },
    /// Non-blocking, and the call would block (`EAGAIN`).
    WouldBlock,
    /// The deadline passed before the socket was ready.
    Timeout,
    /// A signal interrupted a wait (`EINTR`): check for signals, then call again.
    Interrupted,
}

impl Error {
    /// An `Os` error for `errno` while doing `what`.
    pub fn from_errno(errno: i32, what: &str) -> Self {
        Error::Os {
            errno,
            msg: format!("{what}: {}", crate::device::strerror(errno)),
        }
    }

    /// The errno this error stands for, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Os { errno, .. } => Some(*errno),
            Error::MessageTooLong { .. } => Some(libc::EMSGSIZE),
            Error::WouldBlock => Some(libc::EAGAIN),
            Error::Timeout => Some(libc::ETIMEDOUT),
            Error::Interrupted => Some(libc::EINTR),
            Error::Invalid(_) | Error::BufferTooSmall { .. } => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Os { msg, .. } | Error::MessageTooLong { msg, .. } => f.write_str(msg),
            Error::Invalid(e) => f.write_str(e.message()),
            Error::BufferTooSmall {
                index,
                need,
                have,
                reason,
            } => write!(
                f,
                "bufs[{index}] holds {have} bytes, but its datagram needs offset + size = \
                 {need} ({reason}); the datagram is kept for the next call"
            ),
            Error::WouldBlock => f.write_str("Resource temporarily unavailable"),
            Error::Timeout => f.write_str("timed out"),
            Error::Interrupted => f.write_str("Interrupted system call"),
        }
    }
}

impl std::error::Error for Error {}

impl From<crate::engine::Error> for Error {
    fn from(e: crate::engine::Error) -> Self {
        Error::Invalid(e)
    }
}

impl crate::hooks::Interruptible for Error {
    fn is_interrupted(&self) -> bool {
        matches!(self, Error::Interrupted)
    }
}

/// An [`Error::Invalid`] of `kind`.
pub(crate) fn invalid(kind: crate::engine::ErrorKind, msg: impl Into<String>) -> Error {
    Error::Invalid(crate::engine::Error::new(kind, msg.into()))
}

/// `Result` with the socket layer's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// How long a call may wait for the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// As long as it takes (a blocking socket, `timeout=None`).
    Block,
    /// Not at all: [`Error::WouldBlock`] instead (a non-blocking socket, `timeout=0.0`).
    NonBlocking,
    /// Until this instant, then [`Error::Timeout`] (a socket timeout, computed once per
    /// call so that retries after a signal keep the same deadline).
    Until(Instant),
}

impl Wait {
    /// From a socket timeout in seconds as Python's `gettimeout()` gives it: `None`
    /// blocks, zero does not wait (one too large for a `Duration` blocks too).
    pub fn from_secs(timeout: Option<f64>) -> Wait {
        Wait::from_timeout(timeout_from_secs(timeout))
    }

    /// This wait as `poll`'s timeout in milliseconds, from now: -1 to block, 0 not to
    /// wait, else rounded up as CPython does, so that a wait never ends early; `None` once
    /// the deadline has passed.
    pub fn poll_ms(self) -> Option<std::ffi::c_int> {
        match self {
            Wait::Block => Some(-1),
            Wait::NonBlocking => Some(0),
            Wait::Until(t) => match t.saturating_duration_since(Instant::now()) {
                left if left.is_zero() => None,
                left => Some(left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32),
            },
        }
    }

    /// From a socket timeout as Python has it: `None` blocks, zero does not wait.
    pub fn from_timeout(timeout: Option<Duration>) -> Wait {
        match timeout {
            None => Wait::Block,
            Some(d) if d.is_zero() => Wait::NonBlocking,
            Some(d) => match Instant::now().checked_add(d) {
                Some(t) => Wait::Until(t),
                None => Wait::Block,
            },
        }
    }
}

/// `true`: [`Wait::Block`], `false`: [`Wait::NonBlocking`] (a blocking or non-blocking
/// descriptor's call).
impl From<bool> for Wait {
    fn from(blocking: bool) -> Wait {
        match blocking {
            true => Wait::Block,
            false => Wait::NonBlocking,
        }
    }
}

/// A socket timeout in seconds as Python's `gettimeout()` gives it, as a [`Duration`]:
/// `None` (blocking) stays `None`; one too large is [`Duration::MAX`], which waits as long
/// as blocking does (see [`duration_from_secs`]).
pub fn timeout_from_secs(timeout: Option<f64>) -> Option<Duration> {
    timeout.map(duration_from_secs)
}

/// Seconds as a caller counts them (a Python float), as a [`Duration`] to wait: zero for
/// none, a negative number or NaN, [`Duration::MAX`] for one too large.
pub fn duration_from_secs(secs: f64) -> Duration {
    match secs {
        s if s > 0.0 => Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX),
        _ => Duration::ZERO,
    }
}

/// Where `send` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest<'a> {
    /// The connected peer (no address in the messages).
    Connected,
    /// One address for every datagram.
    One(std::net::SocketAddr),
    /// One address per datagram (at least as many as datagrams).
    Each(&'a [std::net::SocketAddr]),
}

impl<'a> Dest<'a> {
    /// The same destinations for the datagrams from `start` on.
    pub fn skip(self, start: usize) -> Dest<'a> {
        match self {
            Dest::Each(a) => Dest::Each(a.get(start..).unwrap_or(&[])),
            other => other,
        }
    }
}
