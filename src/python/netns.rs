//! The native half of `tunoffload.netns` and the `netns=` argument of `TunDevice`:
//! Python targets mapped onto `crate::device::netns`, its errors onto Python's.

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyInt, PyString};

use super::errors::{py_bool, type_error};
use super::gil::Gil;
use crate::device::{Netns, NetnsTarget, Switch};
use crate::hooks::{locked, retry};

/// A Python `netns` argument as a target: an `int` is a descriptor, a `str` (or `bytes`)
/// is read by `NetnsTarget::parse`, an `os.PathLike` is a path.
pub(crate) fn target(obj: &Bound<'_, PyAny>) -> PyResult<NetnsTarget> {
    if let (Ok(i), false) = (obj.cast::<PyInt>(), obj.is_instance_of::<PyBool>()) {
        // A number no descriptor can have is as bad as a negative one.
        return Ok(NetnsTarget::Fd(i.extract::<i32>().unwrap_or(-1)));
    }
    let forms = "a name under /run/netns (str), a path to a namespace file (str with a '/', \
                 or os.PathLike) or an open file descriptor (int)";
    let path = obj.py().import("os")?.call_method1("fsencode", (obj,));
    let path = path.map_err(|_| type_error("a network namespace", forms, obj))?;
    let path = OsStr::from_bytes(path.cast::<PyBytes>()?.as_bytes());
    match obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
        true => Ok(NetnsTarget::parse(path)),
        false => Ok(NetnsTarget::Path(path.into())),
    }
}

/// Opens and checks a Python `netns` argument (GIL released for the system calls).
pub(crate) fn open(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Netns> {
    let t = target(obj)?;
    retry(&mut Gil(py), || Netns::open(&t))
}

/// What ``with tunoffload.netns(target) as ns:`` gives: the calling thread's stay in a
/// network namespace.
///
/// ``name`` (for a name target) and ``path`` (for a name or path) say what was opened,
/// ``inode`` is the namespace's inode number (as ``os.stat("/proc/thread-self/ns/net")``
/// shows inside), ``fileno()`` a descriptor of it that this object owns (valid while the
/// object lives; pass it on, e.g. ``TunDevice(netns=ns.fileno())``, but do not close
/// it). ``active`` is true until ``leave()``; ``thread_id`` is the native id of the
/// thread that entered (``threading.get_native_id()``).
#[pyclass(name = "NetnsSwitch", module = "tunoffload", frozen)]
pub(crate) struct PyNetnsSwitch {
    ns: Netns,
    sw: Mutex<Switch>,
}

#[pymethods]
impl PyNetnsSwitch {
    /// The name under ``/run/netns``, or None when not entered by name.
    #[getter]
    fn name(&self) -> Option<&str> {
        self.ns.name()
    }

    /// The namespace file's path, or None when entered by descriptor.
    #[getter]
    fn path(&self) -> Option<String> {
        self.ns.path().map(|p| p.to_string_lossy().into_owned())
    }

    /// The namespace's inode number.
    #[getter]
    fn inode(&self) -> u64 {
        self.ns.inode()
    }

    /// The native thread id of the thread that entered.
    #[getter]
    fn thread_id(&self) -> i64 {
        locked(&self.sw).thread_id() as i64
    }

    /// True until ``leave()``.
    #[getter]
    fn active(&self) -> bool {
        !locked(&self.sw).is_left()
    }

    /// True when this is active and the calling thread is the one that entered.
    #[getter]
    fn entered_here(&self) -> bool {
        locked(&self.sw).entered_here()
    }

    /// A descriptor of the namespace, owned by this object.
    fn fileno(&self) -> i32 {
        self.ns.fd().as_raw_fd()
    }

    /// Moves the calling thread back to the namespace it was in before. ``RuntimeError``
    /// (and nothing switched) on another thread than the one that entered, when a switch
    /// entered later on this thread is still active, or when already left.
    fn leave(&self) -> PyResult<()> {
        // With the GIL held: `setns` does not block, and releasing the GIL while this
        // switch's lock is held would deadlock against another thread that holds the GIL
        // and waits for the lock (reading `active`, say).
        Ok(locked(&self.sw).leave()?)
    }

    fn __repr__(&self) -> String {
        let (what, inode, active) = (self.ns.opened_as(), self.inode(), py_bool(self.active()));
        format!("<NetnsSwitch {what} inode={inode} active={active}>")
    }
}

/// ``netns_enter(target) -> NetnsSwitch``: moves the calling thread into the network
/// namespace ``target`` (a name under ``/run/netns``, a path, or a descriptor) until
/// ``leave()``. ``tunoffload.netns`` is the context manager over this.
#[pyfunction]
pub(crate) fn netns_enter(py: Python<'_>, target: &Bound<'_, PyAny>) -> PyResult<PyNetnsSwitch> {
    let ns = open(py, target)?;
    let sw = Mutex::new(retry(&mut Gil(py), || ns.enter())?);
    Ok(PyNetnsSwitch { ns, sw })
}
