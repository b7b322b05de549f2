//! Python buffers seen from Rust, through the C API's own functions and macros only.
//!
//! - [`Views`]: buffer-protocol exports (`bytes`, `bytearray`, `memoryview`, `array`,
//!   numpy ...) held for the length of a call, for memory used with the GIL released.
//!   While a `bytearray` is exported it cannot be resized, so the memory stays put. Each
//!   `Py_buffer` is stored by value in a `Vec` (reused between calls) and released by
//!   value: a push may move the earlier ones, never the memory they describe.
//! - [`PyBuf`]: the core's [`ExpandBuffer`] over a `bytearray` (read in place with
//!   `PyByteArray_AS_STRING`/`PyByteArray_GET_SIZE`, grown through `PyByteArray_Resize`)
//!   or another writable buffer (exported). Used only with the GIL held and no Python code
//!   run while its bytes are borrowed, so a bytearray needs no pin: nothing else can
//!   resize it.

use std::ffi::c_int;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use pyo3::exceptions::{PyBufferError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyList};
use pyo3::Borrowed;

use crate::engine::{self, ErrorKind, ExpandBuffer};

/// A raw byte region inside a held export (or a bytearray read with the GIL held).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Region {
    pub(crate) ptr: NonNull<u8>,
    pub(crate) len: usize,
}

impl Region {
    /// The bytes.
    ///
    /// # Safety
    /// The export behind the region is still held, and no `&mut` to the same bytes is live.
    pub(crate) unsafe fn slice<'a>(self) -> &'a [u8] {
        // SAFETY: the caller's contract; ptr/len come from a successful PyObject_GetBuffer.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, writable.
    ///
    /// # Safety
    /// The export is held and writable, and no other reference to these bytes is live.
    pub(crate) unsafe fn slice_mut<'a>(self) -> &'a mut [u8] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

/// The region `len` bytes long at `ptr` (a null pointer or a negative length: empty).
#[inline(always)]
fn region_at(ptr: *mut u8, len: ffi::Py_ssize_t) -> Region {
    Region {
        ptr: NonNull::new(ptr).unwrap_or(NonNull::dangling()),
        len: usize::try_from(len).unwrap_or(0),
    }
}

/// The bytes of an exact bytearray, through `PyByteArray_AS_STRING`/`GET_SIZE`.
///
/// # Safety
/// `raw` is a live bytearray and the GIL is held.
#[inline(always)]
pub(crate) unsafe fn bytearray_region(raw: *mut ffi::PyObject) -> Region {
    // SAFETY: the caller's contract.
    unsafe {
        region_at(
            ffi::PyByteArray_AS_STRING(raw).cast::<u8>(),
            ffi::PyByteArray_GET_SIZE(raw),
        )
    }
}

/// Whether `raw` (a live object, GIL held) is an exact `bytearray`.
#[inline(always)]
pub(crate) fn is_bytearray(raw: *mut ffi::PyObject) -> bool {
    // SAFETY: a type check of a live object through the C API's macro.
    unsafe { ffi::PyByteArray_CheckExact(raw) != 0 }
}

/// How an argument is named in a message: `buf`, or `bufs[3]` (made only for an error).
#[derive(Clone, Copy)]
pub(crate) struct Name<'a>(pub(crate) &'a str, pub(crate) Option<usize>);

impl std::fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.1 {
            Some(i) => write!(f, "{}[{i}]", self.0),
            None => f.write_str(self.0),
        }
    }
}

/// Buffer exports held for one call; released (with the GIL) on drop.
///
/// An exact `bytes` read is a strong reference alone (it is immutable). Anything else,
/// `bytearray` included, goes through `PyObject_GetBuffer`.
pub(crate) struct Views<'py> {
    py: Python<'py>,
    views: Vec<ffi::Py_buffer>,
    pinned: Vec<NonNull<ffi::PyObject>>,
}

/// Per-thread spare storage, so a steady stream of calls allocates nothing.
#[derive(Default)]
struct Spare {
    views: Vec<ffi::Py_buffer>,
    pinned: Vec<NonNull<ffi::PyObject>>,
}

/// How many `Views` may be alive at once in a thread and still allocate nothing: a call
/// that holds one while it makes another (`gso_split`: the packet, then the outputs).
const SPARES: usize = 4;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<Spare>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The most entries reserved up front from a length that Python code reported (a list
/// subclass's `__len__` can say anything): more grow as they come.
pub(crate) const PREALLOC: usize = 1 << 12;

impl<'py> Views<'py> {
    /// Room for `n` exports (at most [`PREALLOC`] reserved; more grow the storage).
    pub(crate) fn with_capacity(py: Python<'py>, n: usize) -> Self {
        let n = n.min(PREALLOC);
        let Spare {
            mut views,
            mut pinned,
        } = SPARE
            .with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.pop()))
            .unwrap_or_default();
        views.reserve(n);
        pinned.reserve(n);
        Views { py, views, pinned }
    }

    /// Exports `obj` (named `what` in errors), `writable` or read-only (a `bytes` object
    /// is then held by a reference alone). Not a buffer: `TypeError`; not writable or not
    /// contiguous: `BufferError`.
    pub(crate) fn export(
        &mut self,
        obj: &Bound<'py, PyAny>,
        writable: bool,
        what: Name<'_>,
    ) -> PyResult<Region> {
        let raw = obj.as_ptr();
        // SAFETY: raw is a live object (GIL held through `Bound`).
        if !writable && unsafe { ffi::PyBytes_CheckExact(raw) } != 0 {
            // SAFETY: an exact bytes object: immutable, its bytes live as long as it does,
            // and the reference taken here (dropped in `drop`) keeps it alive. GIL held.
            return Ok(unsafe {
                ffi::Py_INCREF(raw);
                self.pinned.push(NonNull::new_unchecked(raw));
                region_at(
                    ffi::PyBytes_AS_STRING(raw).cast::<u8>().cast_mut(),
                    ffi::Py_SIZE(raw),
                )
            });
        }
        let flags: c_int = if writable {
            ffi::PyBUF_WRITABLE
        } else {
            ffi::PyBUF_SIMPLE
        };
        let mut view = MaybeUninit::<ffi::Py_buffer>::uninit();
        // SAFETY: obj is a live object (we hold the GIL through `Bound`); view is written
        // by PyObject_GetBuffer on success and not read otherwise.
        let rc = unsafe { ffi::PyObject_GetBuffer(raw, view.as_mut_ptr(), flags) };
        if rc != 0 {
            return Err(export_error(self.py, writable, what));
        }
        // SAFETY: GetBuffer succeeded, so view is initialised.
        let v = unsafe { view.assume_init() };
        let len = if v.buf.is_null() { 0 } else { v.len };
        self.views.push(v);
        Ok(region_at(v.buf.cast::<u8>(), len))
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
    if cause.is_instance_of::<PyBufferError>(py) {
        PyBufferError::new_err(msg)
    } else {
        PyTypeError::new_err(msg)
    }
}

impl Drop for Views<'_> {
    fn drop(&mut self) {
        let _ = self.py;
        for mut v in self.views.drain(..) {
            // SAFETY: each view came from a successful PyObject_GetBuffer and is released
            // once; the `py` token proves the GIL is held.
            unsafe { ffi::PyBuffer_Release(&mut v) };
        }
        for o in self.pinned.drain(..) {
            // SAFETY: each pin took a reference, given back once here with the GIL held.
            unsafe { ffi::Py_DECREF(o.as_ptr()) };
        }
        let (views, pinned) = (
            std::mem::take(&mut self.views),
            std::mem::take(&mut self.pinned),
        );
        SPARE.with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                if s.len() < SPARES {
                    s.push(Spare { views, pinned });
                }
            }
        });
    }
}

/// Item `i` of a list, or `None` past its end (a new reference, GIL held).
#[inline(always)]
pub(crate) fn list_item<'py>(list: &Bound<'py, PyList>, i: usize) -> Option<Bound<'py, PyAny>> {
    let raw = list.as_ptr();
    // SAFETY: a live list (GIL held through `Bound`); the index is checked against its
    // current length on the same line, and a new reference to the item is taken at once.
    unsafe {
        if i >= ffi::PyList_GET_SIZE(raw) as usize {
            return None;
        }
        Some(
            Borrowed::from_ptr(list.py(), ffi::PyList_GET_ITEM(raw, i as ffi::Py_ssize_t))
                .to_owned(),
        )
    }
}

/// A buffer of a batch call, with the GIL held throughout (see the module docs).
///
/// Two modes. *Exact*: the packet ends where the buffer ends, and growing resizes the
/// bytearray (so it stays exact). *Sized* (`send_multiple(..., sizes=...)`): the packet
/// ends at `len`, before the end of the buffer; growing moves `len` within the buffer and
/// only resizes when it must.
pub(crate) struct PyBuf<'py> {
    pub(crate) obj: Bound<'py, PyAny>,
    /// The buffer's memory (refreshed after every resize).
    pub(crate) region: Region,
    /// The packet's end (`<= region.len`).
    pub(crate) len: usize,
    /// An exact `bytearray`, read in place (pinning it takes an export, which runs no
    /// Python code; anything else is exported already).
    pub(crate) bytearray: bool,
    /// May be resized: a bytearray in a call that grows its buffers.
    growable: bool,
    sized: bool,
    /// Bytes from here on that a resize adds are the caller's to write (the packet or
    /// segment goes there); the ones it adds below are zeroed, so that no heap memory
    /// shows through in the headroom.
    written_from: usize,
}

impl<'py> PyBuf<'py> {
    /// Wraps `obj` (named `what`): a `bytearray` is read in place (and may be resized
    /// with `grow`), anything else is exported writable by `views`. The packet ends where
    /// the buffer ends.
    #[inline(always)]
    pub(crate) fn new(
        obj: Bound<'py, PyAny>,
        views: &mut Views<'py>,
        grow: bool,
        sized: bool,
        written_from: usize,
        what: Name<'_>,
    ) -> PyResult<Self> {
        let bytearray = is_bytearray(obj.as_ptr());
        let region = match bytearray {
            // SAFETY: an exact bytearray, GIL held: the C API's own accessors.
            true => unsafe { bytearray_region(obj.as_ptr()) },
            false => views.export(&obj, true, what)?,
        };
        Ok(PyBuf {
            obj,
            len: region.len,
            region,
            bytearray,
            growable: bytearray && grow,
            sized,
            written_from,
        })
    }

    /// Reads a bytearray's memory again, after Python code may have resized it.
    pub(crate) fn reread(&mut self) {
        if self.bytearray {
            // SAFETY: an exact bytearray (checked in `new`), kept alive by `obj`; GIL held.
            self.region = unsafe { bytearray_region(self.obj.as_ptr()) };
            self.len = self.region.len;
        }
    }
}

impl AsMut<[u8]> for PyBuf<'_> {
    fn as_mut(&mut self) -> &mut [u8] {
        self.bytes_mut()
    }
}

// These run only with the GIL held and no Python code called, so no other thread can
// resize or free a bytearray while a slice of it is alive.
impl ExpandBuffer for PyBuf<'_> {
    fn bytes(&self) -> &[u8] {
        // SAFETY: the region describes live memory of the object (refreshed after each
        // resize; a non-bytearray is exported by the call's Views); GIL held and no
        // Python code runs while the slice lives; `len <= region.len`.
        unsafe { std::slice::from_raw_parts(self.region.ptr.as_ptr(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; the core checks that its buffers share no memory before it
        // writes, so this is the only reference to these bytes.
        unsafe { std::slice::from_raw_parts_mut(self.region.ptr.as_ptr(), self.len) }
    }

    fn max_len(&self) -> usize {
        match self.growable {
            true => isize::MAX as usize,
            false => self.region.len,
        }
    }

    fn capacity(&self) -> usize {
        self.region.len
    }

    fn identity(&self) -> Option<usize> {
        self.bytearray.then(|| self.obj.as_ptr() as usize)
    }

    #[inline(always)]
    fn resize(&mut self, new_len: usize) -> engine::Result<()> {
        let cap = self.region.len;
        if new_len > cap || (!self.sized && new_len != cap) {
            self.grow_to(new_len)?;
        }
        self.len = new_len;
        Ok(())
    }
}

impl PyBuf<'_> {
    /// Resizes the bytearray (see [`ExpandBuffer::resize`]).
    #[cold]
    fn grow_to(&mut self, new_len: usize) -> engine::Result<()> {
        let cap = self.region.len;
        // SAFETY: an exact bytearray when growable (checked in `new`), GIL held.
        let ba = || unsafe { self.obj.cast_unchecked::<PyByteArray>() };
        if !self.growable || ba().resize(new_len).is_err() {
            let m = format!(
                "a buffer of {cap} bytes cannot become {new_len} (only a bytearray that \
                 nothing else exports can, memory permitting)"
            );
            return Err(engine::Error::new(ErrorKind::BufferCannotGrow, m));
        }
        // SAFETY: a bytearray, GIL held.
        self.region = unsafe { bytearray_region(self.obj.as_ptr()) };
        let fresh = cap..new_len.min(self.written_from);
        if !fresh.is_empty() {
            // SAFETY: `fresh` is within the bytearray's new length; GIL held and no
            // Python code runs while the slice lives.
            let all = unsafe { self.region.slice_mut() };
            all[fresh].fill(0);
        }
        Ok(())
    }
}
