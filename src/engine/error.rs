//! The engine's one error type: a malformed packet, header or argument.
//!
//! Every variant's message names the problem; the Python layer raises it as `ValueError`.

use std::borrow::Cow;
use std::fmt;

/// A packet, virtio header or argument the engine cannot work with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(Cow<'static, str>);

impl Error {
    /// An error with a fixed message.
    pub const fn fixed(msg: &'static str) -> Self {
        Error(Cow::Borrowed(msg))
    }

    /// An error with a formatted message (only built on the error path).
    pub fn new(msg: String) -> Self {
        Error(Cow::Owned(msg))
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// `Result` with the engine's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Returns early with a formatted [`Error`].
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::engine::error::Error::new(format!($($arg)*)))
    };
}
pub(crate) use bail;
