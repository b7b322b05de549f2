//! The TUN device layer: opening and configuring Linux TUN/TAP devices, and reading and
//! writing them with a `poll(2)`-based wait that another thread can interrupt.
//!
//! Pure Rust, no Python: the PyO3 class in `crate::python::tun_device` wraps [`Tun`].
//! Every `unsafe` block here is a system call or ioctl on descriptors this module owns.

pub mod batch;
pub mod netlink;
pub mod netns;
pub mod offload;
#[cfg(test)]
pub(crate) mod offload_tests;
mod queue;
pub mod sys;
mod tun;

pub use batch::{
    check_packet, check_truncation, recv_multiple, send_multiple, write_packets, RecvState,
    SendError, Sent,
};
pub use netlink::{format_mac, mac_from_bytes, parse_ifaddr, parse_mac, IfAddr};
pub use netns::{Netns, NetnsGuard, NetnsTarget, Switch};
pub use offload::{OffloadState, Offloads};
pub use queue::{Queue, QueueInfo};
pub use tun::{Counters, Tun, TunOptions};

use std::fmt;

/// What the device layer reports. `Os` carries the errno (so Python can raise the right
/// `OSError` subclass) and a message that says what was being done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A system call failed.
    Os { errno: i32, msg: String },
    /// A bad argument, packet or buffer, with its kind (Python: `ValueError` with `kind`
    /// and `index`).
    Invalid(crate::engine::Error),
    /// A call out of turn (leaving a namespace switch twice, from another thread, or
    /// before an inner one; Python: `RuntimeError`).
    State(String),
    /// The device was closed, before or during the call.
    Closed,
}

impl From<crate::engine::Error> for Error {
    fn from(e: crate::engine::Error) -> Self {
        Error::Invalid(e)
    }
}

/// An [`Error::Invalid`] of `kind`.
pub(crate) fn invalid(kind: crate::engine::ErrorKind, msg: impl Into<String>) -> Error {
    Error::Invalid(crate::engine::Error::new(kind, msg.into()))
}

/// The C library's text for `errno`, without Rust's " (os error N)" suffix.
pub fn strerror(errno: i32) -> String {
    let s = std::io::Error::from_raw_os_error(errno).to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

impl Error {
    /// An `Os` error for `errno` while doing `what`.
    pub fn from_errno(errno: i32, what: &str) -> Self {
        Error::Os {
            errno,
            msg: format!("{what}: {}", strerror(errno)),
        }
    }

    /// The errno, if this is an OS error (`EBADF` for a closed device).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Os { errno, .. } => Some(*errno),
            Error::Closed => Some(libc::EBADF),
            Error::Invalid(_) | Error::State(_) => None,
        }
    }

    /// True for `EINTR`: the caller should check for signals and retry.
    pub fn is_eintr(&self) -> bool {
        matches!(self, Error::Os { errno, .. } if *errno == libc::EINTR)
    }

    /// True for `EAGAIN`/`EWOULDBLOCK`.
    pub fn is_eagain(&self) -> bool {
        matches!(self, Error::Os { errno, .. } if *errno == libc::EAGAIN)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Os { msg, .. } => f.write_str(msg),
            Error::Invalid(e) => f.write_str(e.message()),
            Error::State(msg) => f.write_str(msg),
            Error::Closed => f.write_str("the TUN device is closed"),
        }
    }
}

impl std::error::Error for Error {}

impl crate::hooks::Interruptible for Error {
    fn is_interrupted(&self) -> bool {
        self.is_eintr()
    }
}

/// The calling thread's `errno` as an [`Error`] about `what`.
pub(crate) fn last_error(what: &str) -> Error {
    let errno = std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    Error::from_errno(errno, what)
}
