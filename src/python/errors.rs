//! The core's errors as Python exceptions, each converted in one place.
//!
//! - A refused packet, header or argument (`engine::Error`, and the device's and socket's
//!   `Invalid`) is an [`InputError`]: a `ValueError` whose `kind` (one of `ERROR_KINDS`)
//!   and `index` say which refusal and which buffer.
//! - A system error is an `OSError` built from its errno, so Python picks the subclass
//!   (`PermissionError`, `FileNotFoundError`, `BlockingIOError`, ...).
//! - A call out of turn (a namespace switch left twice) is a `RuntimeError`.

use std::fmt;

use pyo3::create_exception;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTimeoutError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::device::{self, batch::SendError};
use crate::{engine, udp};

create_exception!(
    tunoffload,
    InputError,
    PyValueError,
    "A packet, header or argument tunoffload refuses: a ``ValueError`` with ``kind`` (one \
     of ``ERROR_KINDS``) and ``index`` (the buffer or packet it is about, or None)."
);

/// `OSError(errno, msg)`, of the subclass Python picks for `errno`.
pub(crate) fn os_error(errno: i32, msg: String) -> PyErr {
    PyOSError::new_err((errno, msg))
}

/// `err` with attributes set (how much of a batch went out before it, which refusal).
pub(crate) fn with_attrs<V>(err: PyErr, attrs: &[(&str, V)]) -> PyErr
where
    V: for<'py> IntoPyObject<'py> + Copy,
{
    Python::attach(|py| {
        let v = err.value(py);
        // Setting an attribute of a fresh exception fails only without memory; the error
        // is raised all the same.
        for (name, value) in attrs {
            let _ = v.setattr(name, *value);
        }
    });
    err
}

/// The `InputError` for `e`, with its `kind` and `index`.
impl From<engine::Error> for PyErr {
    #[cold]
    fn from(e: engine::Error) -> PyErr {
        let (kind, index) = (e.kind().as_str(), e.index());
        let err = with_attrs(InputError::new_err(e.into_message()), &[("kind", kind)]);
        with_attrs(err, &[("index", index)])
    }
}

impl From<device::Error> for PyErr {
    fn from(e: device::Error) -> PyErr {
        match e {
            device::Error::Invalid(e) => e.into(),
            device::Error::State(m) => PyRuntimeError::new_err(m),
            // Os, and Closed (EBADF): the errno and the device's own message.
            e => os_error(e.errno().unwrap_or_default(), e.to_string()),
        }
    }
}

impl From<udp::Error> for PyErr {
    fn from(e: udp::Error) -> PyErr {
        match e {
            udp::Error::Invalid(e) => e.into(),
            udp::Error::BufferTooSmall { index, .. } => {
                let kind = engine::ErrorKind::OutBufTooSmall;
                engine::Error::new(kind, e.to_string()).at(index).into()
            }
            udp::Error::Timeout => PyTimeoutError::new_err(e.to_string()),
            // EMSGSIZE, with the path MTU (or None) as `mtu`.
            udp::Error::MessageTooLong { mtu, .. } => {
                let err = os_error(e.errno().unwrap_or_default(), e.to_string());
                with_attrs(err, &[("mtu", mtu)])
            }
            // Os, WouldBlock and Interrupted: their errno and the C library's words for it.
            e => os_error(e.errno().unwrap_or_default(), e.to_string()),
        }
    }
}

/// A send that stopped after writing started carries `packets_sent` and `bytes_sent`.
impl From<SendError<PyErr>> for PyErr {
    fn from(e: SendError<PyErr>) -> PyErr {
        let sent = [("packets_sent", e.packets), ("bytes_sent", e.bytes)];
        match e.writing {
            true => with_attrs(e.error, &sent),
            false => e.error,
        }
    }
}

/// A `TypeError` saying what `what` must be, and what it is.
#[cold]
pub(crate) fn type_error(what: impl fmt::Display, must: &str, obj: &Bound<'_, PyAny>) -> PyErr {
    let ty = obj.get_type();
    let ty = ty.name().map_or_else(|_| "?".into(), |n| n.to_string());
    PyTypeError::new_err(format!("{what} must be {must}, not {ty}"))
}

/// Python's spelling of `b` (for a `repr`).
pub(crate) fn py_bool(b: bool) -> &'static str {
    ["False", "True"][usize::from(b)]
}
