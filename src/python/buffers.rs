//! Python buffers seen from Rust, through the C API's own functions and macros only.
//!
//! - [`Views`]: buffer-protocol exports (`bytes`, `bytearray`, `memoryview`, `array`,
//!   numpy ...) held for the length of a call, for memory used with the GIL released.
//!   While a `bytearray` is exported it cannot be resized, so the memory stays put. Each
//!   `Py_buffer` is stored by value in a `Vec` (reused between calls) and released where
//!   it lies: a push may move the earlier ones, never the memory they describe.
//! - [`PyBuf`]: the core's [`Held`] buffer over a `bytearray` (read in place with
//!   `PyByteArray_AS_STRING`/`PyByteArray_GET_SIZE`, grown through `PyByteArray_Resize`)
//!   or another writable buffer (exported). Used only with the GIL held and no Python code
//!   run while its bytes are borrowed, so a bytearray needs no pin: nothing else can
//!   resize it.

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use pyo3::exceptions::{PyBufferError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyList};

pub(crate) use crate::engine::buffer::Name;
use crate::engine::held::{Held, Holder};

/// A raw byte region inside a held export (or a bytearray read with the GIL held).
pub(crate) type Region = NonNull<[u8]>;

/// No bytes.
const EMPTY: Region = NonNull::slice_from_raw_parts(NonNull::dangling(), 0);

/// The region `len` bytes long at `ptr` (a null pointer or a negative length: empty).
#[inline(always)]
fn region_at(ptr: *mut u8, len: ffi::Py_ssize_t) -> Region {
    let len = usize::try_from(len).unwrap_or(0);
    NonNull::new(ptr).map_or(EMPTY, |p| NonNull::slice_from_raw_parts(p, len))
}

/// The first byte's address.
#[inline(always)]
pub(crate) fn addr(r: Region) -> usize {
    r.cast::<u8>().as_ptr() as usize
}

/// The bytes of `raw` if it is an exact bytearray, through the C API's macros.
///
/// # Safety
/// `raw` is a live object and the GIL is held.
#[inline(always)]
pub(crate) unsafe fn bytearray_region(raw: *mut ffi::PyObject) -> Option<Region> {
    // SAFETY: the caller's contract; the accessors run only on an exact bytearray.
    unsafe {
        let size = || ffi::PyByteArray_GET_SIZE(raw);
        (ffi::PyByteArray_CheckExact(raw) != 0)
            .then(|| region_at(ffi::PyByteArray_AS_STRING(raw).cast(), size()))
    }
}

/// Where `raw`'s memory starts, if it is an exact bytearray (its size is not read).
///
/// # Safety
/// As for [`bytearray_region`].
#[inline(always)]
pub(crate) unsafe fn bytearray_start(raw: *mut ffi::PyObject) -> Option<usize> {
    // SAFETY: the caller's contract; the accessor runs only on an exact bytearray.
    unsafe {
        (ffi::PyByteArray_CheckExact(raw) != 0).then(|| ffi::PyByteArray_AS_STRING(raw) as usize)
    }
}

/// Item `i` of `list`, borrowed (valid while no Python code runs), or `None` past its end.
#[inline(always)]
pub(crate) fn list_get(list: &Bound<'_, PyList>, i: usize) -> Option<*mut ffi::PyObject> {
    // SAFETY: a live list (GIL held through `Bound`); the index is checked against its
    // current length first.
    (i < list.len()).then(|| unsafe { ffi::PyList_GET_ITEM(list.as_ptr(), i as ffi::Py_ssize_t) })
}

/// Buffer exports held for one call; released (with the GIL) on drop.
pub(crate) struct Views<'py> {
    py: Python<'py>,
    views: Vec<ffi::Py_buffer>,
}

thread_local! {
    /// Storage for the exports of one `Views` at a time, so a steady stream of calls
    /// allocates nothing (the first `Views` of a call that exports takes it).
    static SPARE: Cell<Vec<ffi::Py_buffer>> = const { Cell::new(Vec::new()) };
}

impl<'py> Views<'py> {
    pub(crate) fn new(py: Python<'py>) -> Self {
        Views { py, views: vec![] }
    }

    /// Exports `obj` (named `what` in errors), `writable` or read-only. Not a buffer:
    /// `TypeError`; not writable or not contiguous: `BufferError`.
    pub(crate) fn export(
        &mut self,
        obj: &Bound<'py, PyAny>,
        writable: bool,
        what: Name<'_>,
    ) -> PyResult<Region> {
        let flags = if writable { ffi::PyBUF_WRITABLE } else { 0 }; // 0: PyBUF_SIMPLE
        let mut view = MaybeUninit::<ffi::Py_buffer>::uninit();
        // SAFETY: obj is a live object (we hold the GIL through `Bound`); view is written
        // by PyObject_GetBuffer on success and not read otherwise.
        if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), flags) } != 0 {
            return Err(export_error(self.py, writable, what));
        }
        if self.views.capacity() == 0 {
            self.views = SPARE.with(Cell::take);
        }
        // SAFETY: GetBuffer succeeded, so view is initialised.
        let v = unsafe { view.assume_init() };
        self.views.push(v);
        Ok(region_at(v.buf.cast(), v.len))
    }
}

/// The error for an object `PyObject_GetBuffer` refused (the exception it set is fetched).
#[cold]
fn export_error(py: Python<'_>, writable: bool, what: Name<'_>) -> PyErr {
    let cause = PyErr::fetch(py);
    let must = match writable {
        true => "a writable, contiguous bytes-like object (bytearray, memoryview)",
        false => "a contiguous bytes-like object",
    };
    let msg = format!("{what} must be {must}: {}", cause.value(py));
    match cause.is_instance_of::<PyBufferError>(py) {
        true => PyBufferError::new_err(msg),
        false => PyTypeError::new_err(msg),
    }
}

impl Drop for Views<'_> {
    fn drop(&mut self) {
        let _ = self.py;
        for v in &mut self.views {
            // SAFETY: each view came from a successful PyObject_GetBuffer and is released
            // once (cleared just after); the `py` token proves the GIL is held.
            unsafe { ffi::PyBuffer_Release(v) };
        }
        self.views.clear();
        if self.views.capacity() > 0 {
            SPARE.with(|s| s.set(std::mem::take(&mut self.views)));
        }
    }
}

/// A buffer of a batch call: the core's [`Held`] over a Python object, with the GIL held
/// throughout (see the module docs).
pub(crate) type PyBuf<'py> = Held<PyObj<'py>>;

/// A buffer's object: an exact `bytearray`, read in place (pinning it takes an export,
/// which runs no Python code), or anything else, exported by the call's [`Views`].
pub(crate) struct PyObj<'py> {
    pub(crate) obj: Bound<'py, PyAny>,
    /// The export, if not a bytearray.
    export: Option<Region>,
}

impl PyObj<'_> {
    pub(crate) fn is_bytearray(&self) -> bool {
        self.export.is_none()
    }
}

/// Wraps `obj` (named `what`): a `bytearray` is read in place (and may be resized with
/// `grow`), anything else is exported writable by `views`. The packet ends where the
/// buffer ends; `(grow, sized, written_from)` as [`Held::new`] takes them.
#[inline(always)]
pub(crate) fn py_buf<'py>(
    obj: Bound<'py, PyAny>,
    views: &mut Views<'py>,
    (grow, sized, written_from): (bool, bool, usize),
    what: Name<'_>,
) -> PyResult<PyBuf<'py>> {
    // SAFETY: a live object, GIL held.
    let (region, export) = match unsafe { bytearray_region(obj.as_ptr()) } {
        Some(r) => (r, None),
        None => views.export(&obj, true, what).map(|r| (r, Some(r)))?,
    };
    let growable = grow && export.is_none();
    // SAFETY: the object's memory, which nothing else touches while the GIL is held and no
    // Python code runs (the batch code rereads it after Python code ran); an export is
    // held by `views` for the call.
    Ok(unsafe { Held::new(PyObj { obj, export }, region, growable, sized, written_from) })
}

impl Holder for PyObj<'_> {
    fn region(&self) -> Region {
        // SAFETY: a live object (GIL held): a bytearray's memory as it is now.
        let now = || unsafe { bytearray_region(self.obj.as_ptr()) };
        self.export.or_else(now).unwrap_or(EMPTY)
    }

    fn resize(&mut self, new_len: usize) -> bool {
        // SAFETY: asked only of a growable buffer: an exact bytearray (GIL held).
        let bytearray = unsafe { self.obj.cast_unchecked::<PyByteArray>() };
        bytearray.resize(new_len).is_ok()
    }

    fn identity(&self) -> Option<usize> {
        self.is_bytearray().then(|| self.obj.as_ptr() as usize)
    }
}
