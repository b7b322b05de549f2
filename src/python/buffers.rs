//! Python buffers seen from Rust.
//!
//! - [`Views`]: buffer-protocol exports (`bytes`, `bytearray`, `memoryview`, `array`, numpy
//!   ...) held for the length of a call. While a `bytearray` is exported it cannot be
//!   resized, so the memory stays put even with the GIL released. The exports live in one
//!   `Vec` allocated per call (never reallocated, since a `Py_buffer` must not move), not
//!   one allocation per buffer as `pyo3::buffer::PyBuffer` would do.
//! - [`GroBuf`]: the engine's [`ExpandBuffer`] over a `bytearray` (grows in place through
//!   `PyByteArray_Resize`) or a fixed writable buffer. Used only with the GIL held.

use std::ffi::c_int;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use pyo3::exceptions::{PyBufferError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyByteArray;

use crate::engine::{self, ExpandBuffer};

/// A raw byte region inside a held export: `Send` so it can cross into `py.detach`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Region only points into a buffer export held by a `Views` that outlives every
// use of the region (see `Views`); the exporter keeps the memory in place while exported.
unsafe impl Send for Region {}

impl Region {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn range(&self) -> (usize, usize) {
        let start = self.ptr.as_ptr() as usize;
        (start, start + self.len)
    }

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

/// Buffer exports held for one call; released (with the GIL) on drop.
pub(crate) struct Views<'py> {
    py: Python<'py>,
    views: Vec<ffi::Py_buffer>,
}

impl<'py> Views<'py> {
    /// Room for `n` exports; asking for more is an error, not a reallocation.
    pub(crate) fn with_capacity(py: Python<'py>, n: usize) -> Self {
        Views {
            py,
            views: Vec::with_capacity(n),
        }
    }

    fn get(
        &mut self,
        obj: &Bound<'py, PyAny>,
        writable: bool,
        what: &dyn Fn() -> String,
    ) -> PyResult<Region> {
        if self.views.len() == self.views.capacity() {
            return Err(PyValueError::new_err(
                "internal: too many buffer exports for this call",
            ));
        }
        let flags: c_int = if writable {
            ffi::PyBUF_WRITABLE
        } else {
            ffi::PyBUF_SIMPLE
        };
        let mut view = MaybeUninit::<ffi::Py_buffer>::uninit();
        // SAFETY: obj is a live object (we hold the GIL through `Bound`); view is written
        // by PyObject_GetBuffer on success and not read otherwise.
        let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), flags) };
        if rc != 0 {
            let cause = PyErr::fetch(self.py);
            let msg = if writable {
                format!("{} must be a writable, contiguous bytes-like object (bytearray, memoryview): {}", what(), cause)
            } else {
                format!(
                    "{} must be a contiguous bytes-like object: {}",
                    what(),
                    cause
                )
            };
            return Err(if cause.is_instance_of::<PyBufferError>(self.py) {
                PyBufferError::new_err(msg)
            } else {
                PyTypeError::new_err(msg)
            });
        }
        // SAFETY: GetBuffer succeeded, so view is initialised. Pushing within capacity
        // does not move the earlier views.
        self.views.push(unsafe { view.assume_init() });
        let v = self.views.last().expect("just pushed");
        let len = usize::try_from(v.len).unwrap_or(0);
        let ptr = NonNull::new(v.buf.cast::<u8>()).unwrap_or(NonNull::dangling());
        Ok(Region {
            ptr,
            len: if v.buf.is_null() { 0 } else { len },
        })
    }

    /// Exports `obj` read-only.
    pub(crate) fn read(
        &mut self,
        obj: &Bound<'py, PyAny>,
        what: &dyn Fn() -> String,
    ) -> PyResult<Region> {
        self.get(obj, false, what)
    }

    /// Exports `obj` writable (a `bytes` object is a `BufferError`, a non-buffer `TypeError`).
    pub(crate) fn write(
        &mut self,
        obj: &Bound<'py, PyAny>,
        what: &dyn Fn() -> String,
    ) -> PyResult<Region> {
        self.get(obj, true, what)
    }
}

impl Drop for Views<'_> {
    fn drop(&mut self) {
        for v in &mut self.views {
            // SAFETY: each view came from a successful PyObject_GetBuffer and is released
            // once; the `py` token proves the GIL is held.
            unsafe { ffi::PyBuffer_Release(v) };
        }
    }
}

/// Fails if any two regions share a byte (`names[i]` names region i in the message).
pub(crate) fn check_disjoint(
    regions: &mut [(usize, usize, usize)],
    name: &dyn Fn(usize) -> String,
) -> PyResult<()> {
    regions.sort_unstable();
    for w in regions.windows(2) {
        let ((_, a_end, a), (b_start, _, b)) = (w[0], w[1]);
        if b_start < a_end {
            return Err(PyValueError::new_err(format!(
                "{} and {} share memory",
                name(a),
                name(b)
            )));
        }
    }
    Ok(())
}

/// (start, end, index) of a region, for [`check_disjoint`].
pub(crate) fn span(r: Region, index: usize) -> (usize, usize, usize) {
    let (s, e) = r.range();
    (s, e, index)
}

/// A buffer in `handle_gro`'s list.
pub(crate) enum GroBuf<'py> {
    /// Grows in place; `fixed` when a memoryview of it exists (it then cannot resize).
    ByteArray {
        obj: Bound<'py, PyByteArray>,
        fixed: bool,
    },
    /// Any other writable buffer, held by the call's `Views`.
    Fixed {
        obj: Bound<'py, PyAny>,
        region: Region,
    },
}

impl<'py> GroBuf<'py> {
    /// Wraps `obj`; only `bytearray`s can grow (and so take merged segments).
    pub(crate) fn new(
        obj: Bound<'py, PyAny>,
        views: &mut Views<'py>,
        index: usize,
    ) -> PyResult<Self> {
        match obj.cast_into::<PyByteArray>() {
            Ok(ba) => {
                // SAFETY: `ba` is a bytearray (checked by the cast), so the object is a
                // PyByteArrayObject; ob_exports is read with the GIL held.
                let exports = unsafe { (*ba.as_ptr().cast::<ffi::PyByteArrayObject>()).ob_exports };
                Ok(GroBuf::ByteArray {
                    obj: ba,
                    fixed: exports > 0,
                })
            }
            Err(e) => {
                let obj = e.into_inner();
                let region = views.write(&obj, &|| format!("bufs[{index}]"))?;
                Ok(GroBuf::Fixed { obj, region })
            }
        }
    }

    /// The Python object (to put back into the list after swaps).
    pub(crate) fn object(&self) -> &Bound<'py, PyAny> {
        match self {
            GroBuf::ByteArray { obj, .. } => obj.as_any(),
            GroBuf::Fixed { obj, .. } => obj,
        }
    }

    pub(crate) fn span(&self, index: usize) -> (usize, usize, usize) {
        let b = self.bytes();
        let s = b.as_ptr() as usize;
        (s, s + b.len(), index)
    }
}

// These run only inside `handle_gro`, with the GIL held and no Python code called, so no
// other thread can resize or free a bytearray while a slice of it is alive.
impl ExpandBuffer for GroBuf<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            // SAFETY: GIL held, no Python code runs while the slice lives (see above).
            GroBuf::ByteArray { obj, .. } => unsafe { obj.as_bytes() },
            // SAFETY: the export is held by the call's Views; regions are disjoint.
            GroBuf::Fixed { region, .. } => unsafe { region.slice() },
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            // SAFETY: as above; bufs are checked to be disjoint, so this is the only
            // reference to these bytes.
            GroBuf::ByteArray { obj, .. } => unsafe { obj.as_bytes_mut() },
            // SAFETY: writable export held by Views; disjoint from the other buffers.
            GroBuf::Fixed { region, .. } => unsafe { region.slice_mut() },
        }
    }

    fn max_len(&self) -> usize {
        match self {
            GroBuf::ByteArray { fixed: false, .. } => isize::MAX as usize,
            GroBuf::ByteArray { obj, .. } => obj.len(),
            GroBuf::Fixed { region, .. } => region.len(),
        }
    }

    fn resize(&mut self, new_len: usize) -> engine::Result<()> {
        match self {
            GroBuf::ByteArray { obj, fixed: false } => obj.resize(new_len).map_err(|e| {
                engine::Error::new(format!("cannot grow a bytearray to {new_len} bytes: {e}"))
            }),
            _ if new_len == self.bytes().len() => Ok(()),
            _ => Err(engine::Error::fixed(
                "internal: a fixed buffer was asked to grow",
            )),
        }
    }
}
