//! The TUN device layer: opening and configuring Linux TUN/TAP devices, and reading and
//! writing them with a `poll(2)`-based wait that another thread can interrupt.
//!
//! Pure Rust, no Python: the PyO3 class in `crate::python::device` wraps [`Tun`].
//! Every `unsafe` block here is a system call or ioctl on descriptors this module owns.

pub mod batch;
pub mod netlink;
pub mod netns;
pub mod sys;
mod tun;

pub use batch::{
    check_packet, check_truncation, coalesce, recv_multiple, send_multiple, write_packets,
    RecvState, SendError, Sent, Split, SplitError,
};
pub use netlink::{parse_ifaddr, IfAddr};
pub use netns::{Netns, NetnsGuard, NetnsTarget, Switch};
pub use tun::{Counters, Tun, TunOptions};

use std::fmt;

/// What the device layer reports. `Os` carries the errno (so Python can raise the right
/// `OSError` subclass) and a message that says what was being done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A system call failed.
    Os { errno: i32, msg: String },
    /// A bad argument (Python: `ValueError`).
    Invalid(String),
    /// A packet or buffer the engine refused, with its kind (Python: `ValueError` with
    /// `kind` and `index`).
    Engine(crate::engine::Error),
    /// The device was closed, before or during the call.
    Closed,
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
            Error::Invalid(_) | Error::Engine(_) => None,
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
            Error::Invalid(msg) => f.write_str(msg),
            Error::Engine(e) => f.write_str(e.message()),
            Error::Closed => f.write_str("the TUN device is closed"),
        }
    }
}

impl std::error::Error for Error {}

/// The calling thread's `errno` as an [`Error`] about `what`.
pub(crate) fn last_error(what: &str) -> Error {
    let errno = std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    Error::from_errno(errno, what)
}
