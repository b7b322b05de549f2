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
use pyo3::types::{PyByteArray, PyList};
use pyo3::Borrowed;

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

/// The region `len` bytes long at `ptr` (a null pointer or a negative length: empty).
#[inline(always)]
fn region_at(ptr: *mut u8, len: ffi::Py_ssize_t) -> Region {
    Region {
        ptr: NonNull::new(ptr).unwrap_or(NonNull::dangling()),
        len: usize::try_from(len).unwrap_or(0),
    }
}

/// Buffer exports held for one call; released (with the GIL) on drop.
///
/// An exact `bytearray` (the common case, one per packet) is pinned directly: a strong
/// reference plus `ob_exports += 1`, which is what its buffer export does, without the
/// `Py_buffer` round trip. An exact `bytes` read is a strong reference alone (it is
/// immutable). Anything else goes through `PyObject_GetBuffer`.
pub(crate) struct Views<'py> {
    py: Python<'py>,
    views: Vec<ffi::Py_buffer>,
    pinned: Vec<(NonNull<ffi::PyObject>, ffi::Py_ssize_t)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Read,
    Write,
    Exclusive,
}

/// The export count an exclusive pin adds: far above any real count of exports.
const EXCLUSIVE: ffi::Py_ssize_t = 1 << 40;

/// Per-thread spare storage, so a steady stream of calls allocates nothing.
#[derive(Default)]
struct Spare {
    views: Vec<ffi::Py_buffer>,
    pinned: Vec<(NonNull<ffi::PyObject>, ffi::Py_ssize_t)>,
}

/// How many `Views` may be alive at once in a thread and still allocate nothing: a call
/// that holds one while it makes another (`gso_split`: the packet, then the outputs).
const SPARES: usize = 4;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<Spare>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl<'py> Views<'py> {
    /// Room for `n` exports; asking for more is an error, not a reallocation.
    pub(crate) fn with_capacity(py: Python<'py>, n: usize) -> Self {
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

    fn get(
        &mut self,
        obj: &Bound<'py, PyAny>,
        mode: Mode,
        what: &dyn Fn() -> String,
    ) -> PyResult<(Region, bool)> {
        let raw = obj.as_ptr();
        let writable = mode != Mode::Read;
        // SAFETY: raw is a live object (GIL held through `Bound`).
        let (is_bytes, is_bytearray) = unsafe {
            (
                !writable && ffi::PyBytes_CheckExact(raw) != 0,
                ffi::PyByteArray_CheckExact(raw) != 0,
            )
        };
        if (is_bytes || is_bytearray) && !self.can_pin() {
            return Err(PyValueError::new_err(
                "internal: too many buffer pins for this call",
            ));
        }
        if is_bytes {
            // SAFETY: an exact bytes object: immutable, its bytes live as long as it does,
            // and the reference taken here (dropped in `drop`; count 0: no export to undo)
            // keeps it alive. GIL held.
            let region = unsafe {
                ffi::Py_INCREF(raw);
                self.pinned.push((NonNull::new_unchecked(raw), 0));
                region_at(
                    ffi::PyBytes_AS_STRING(raw).cast::<u8>().cast_mut(),
                    ffi::Py_SIZE(raw),
                )
            };
            return Ok((region, false));
        }
        if is_bytearray {
            let exclusive = mode == Mode::Exclusive;
            let count = if exclusive { EXCLUSIVE } else { 1 };
            // SAFETY: raw is a live exact bytearray; GIL held; room checked above.
            return match unsafe { self.pin_bytearray(raw, count) } {
                Some(region) => Ok((region, exclusive)),
                None => Err(already_written(what)),
            };
        }
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
        let rc = unsafe { ffi::PyObject_GetBuffer(raw, view.as_mut_ptr(), flags) };
        if rc != 0 {
            let cause = PyErr::fetch(self.py);
            let msg = if writable {
                format!("{} must be a writable, contiguous bytes-like object (bytearray, memoryview): {}", what(), cause.value(self.py))
            } else {
                format!(
                    "{} must be a contiguous bytes-like object: {}",
                    what(),
                    cause.value(self.py)
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
        let len = if v.buf.is_null() { 0 } else { v.len };
        Ok((region_at(v.buf.cast::<u8>(), len), false))
    }

    /// Exports `obj` read-only.
    pub(crate) fn read(
        &mut self,
        obj: &Bound<'py, PyAny>,
        what: &dyn Fn() -> String,
    ) -> PyResult<Region> {
        Ok(self.get(obj, Mode::Read, what)?.0)
    }

    /// Exports `obj` writable (a `bytes` object is a `BufferError`, a non-buffer `TypeError`).
    pub(crate) fn write(
        &mut self,
        obj: &Bound<'py, PyAny>,
        what: &dyn Fn() -> String,
    ) -> PyResult<Region> {
        Ok(self.get(obj, Mode::Write, what)?.0)
    }

    /// The fast path of [`write_exclusive`](Self::write_exclusive) for an exact
    /// `bytearray` (what `gso_split` and `recv_multiple` are handed, one per segment): a
    /// few loads and stores, no `PyErr` built on the way. `Err(true)`: the bytearray is
    /// already pinned exclusively (listed twice, or written by another thread);
    /// `Err(false)`: not an exact bytearray, so the caller takes the general path.
    ///
    /// # Safety
    /// `raw` is a live object (the GIL is held and something owns a reference to it).
    #[inline(always)]
    pub(crate) unsafe fn pin_bytearray_exclusive(
        &mut self,
        raw: *mut ffi::PyObject,
    ) -> Result<Region, bool> {
        // SAFETY: raw is live (the caller's contract).
        if unsafe { ffi::PyByteArray_CheckExact(raw) } == 0 || !self.can_pin() {
            return Err(false); // the general path handles it (or reports the full table)
        }
        // SAFETY: a live exact bytearray, GIL held, room checked just above.
        unsafe { self.pin_bytearray(raw, EXCLUSIVE) }.ok_or(true)
    }

    /// Whether one more object can be pinned without reallocating `pinned`.
    #[inline(always)]
    fn can_pin(&self) -> bool {
        self.pinned.len() < self.pinned.capacity()
    }

    /// Pins an exact bytearray: a reference plus `count` exports, which makes
    /// PyByteArray_Resize and `del b[...]` refuse until `drop` undoes them. An exclusive
    /// pin counts EXCLUSIVE exports, so a second one is seen: then `None`, nothing pinned.
    ///
    /// # Safety
    /// `raw` is a live exact bytearray, the GIL is held, and [`can_pin`](Self::can_pin).
    #[inline(always)]
    unsafe fn pin_bytearray(
        &mut self,
        raw: *mut ffi::PyObject,
        count: ffi::Py_ssize_t,
    ) -> Option<Region> {
        // SAFETY: the caller's contract; the fields are read in place
        // (PyByteArray_AS_STRING and Py_SIZE, no call per packet).
        unsafe {
            let o = &mut *raw.cast::<ffi::PyByteArrayObject>();
            if count == EXCLUSIVE && o.ob_exports >= EXCLUSIVE {
                return None;
            }
            o.ob_exports += count;
            ffi::Py_INCREF(raw);
            self.pinned.push((NonNull::new_unchecked(raw), count));
            Some(region_at(o.ob_start.cast::<u8>(), o.ob_base.ob_size))
        }
    }

    /// As [`write`](Self::write), and for a `bytearray` also makes sure no other exclusive
    /// pin holds it (in this call or in another thread's): then returns true, and the
    /// region is known not to overlap any other exclusive region.
    pub(crate) fn write_exclusive(
        &mut self,
        obj: &Bound<'py, PyAny>,
        what: &dyn Fn() -> String,
    ) -> PyResult<(Region, bool)> {
        self.get(obj, Mode::Exclusive, what)
    }
}

impl Drop for Views<'_> {
    fn drop(&mut self) {
        let _ = self.py;
        for v in &mut self.views {
            // SAFETY: each view came from a successful PyObject_GetBuffer and is released
            // once; the `py` token proves the GIL is held.
            unsafe { ffi::PyBuffer_Release(v) };
        }
        for (o, count) in &self.pinned {
            // SAFETY: each pin took a reference, and `count` exports if it is a bytearray
            // (a bytes object is pinned with count 0), undone once here with the GIL held.
            unsafe {
                if *count != 0 {
                    (*o.as_ptr().cast::<ffi::PyByteArrayObject>()).ob_exports -= count;
                }
                ffi::Py_DECREF(o.as_ptr());
            }
        }
        self.views.clear();
        self.pinned.clear();
        let spare = Spare {
            views: std::mem::take(&mut self.views),
            pinned: std::mem::take(&mut self.pinned),
        };
        SPARE.with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                if s.len() < SPARES {
                    s.push(spare);
                }
            }
        });
    }
}

/// The `ValueError` for an output bytearray that an exclusive pin already holds.
pub(crate) fn already_written(what: &dyn Fn() -> String) -> PyErr {
    super::engine::kind_error(
        engine::ErrorKind::BufferInUse,
        None,
        format!(
            "{} is already being written by this call or another thread (the same bytearray twice?)",
            what()
        ),
    )
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
            return Err(super::engine::kind_error(
                engine::ErrorKind::OverlappingBuffers,
                Some(b),
                format!("{} and {} share memory", name(a), name(b)),
            ));
        }
    }
    Ok(())
}

/// (start, end, index) of a region, for [`check_disjoint`].
pub(crate) fn span(r: Region, index: usize) -> (usize, usize, usize) {
    let (s, e) = r.range();
    (s, e, index)
}

/// A buffer in `handle_gro`'s list: its packet is `bytes()[offset..]`.
///
/// Two modes. *Exact* (`handle_gro`, and `send_multiple` without `sizes`): the packet ends
/// where the buffer ends, and growing resizes the bytearray (so it stays exact). *Sized*
/// (`send_multiple(..., sizes=...)`): the packet ends at `len`, before the end of the
/// buffer; growing moves `len` within the buffer and only resizes when it must.
pub(crate) struct GroBuf<'py> {
    obj: Bound<'py, PyAny>,
    /// Start of the bytes: cached, refreshed after every resize.
    ptr: NonNull<u8>,
    /// The packet's end (the logical length).
    len: usize,
    /// The buffer's real length.
    cap: usize,
    /// An exact `bytearray` that nothing else exports: it can be resized.
    growable: bool,
    exact: bool,
}

impl<'py> GroBuf<'py> {
    /// Wraps `bufs[index]`; `len` is the packet's end in sized mode, `None` for exact.
    fn new(
        obj: Bound<'py, PyAny>,
        views: &mut Views<'py>,
        index: usize,
        len: Option<usize>,
    ) -> PyResult<Self> {
        let raw = obj.as_ptr();
        // SAFETY: raw is a live object (GIL held through `Bound`).
        let (ptr, cap, growable) = if unsafe { ffi::PyByteArray_CheckExact(raw) } != 0 {
            // SAFETY: an exact bytearray is a PyByteArrayObject; its fields are read in
            // place (PyByteArray_AS_STRING and Py_SIZE) with the GIL held.
            unsafe {
                let o = &*raw.cast::<ffi::PyByteArrayObject>();
                let r = region_at(o.ob_start.cast::<u8>(), o.ob_base.ob_size);
                (r.ptr.as_ptr(), r.len, o.ob_exports == 0)
            }
        } else {
            let r = views.write(&obj, &|| format!("bufs[{index}]"))?;
            (r.ptr.as_ptr(), r.len, false)
        };
        let exact = len.is_none();
        let len = len.unwrap_or(cap);
        if len > cap {
            return Err(PyValueError::new_err(format!(
                "bufs[{index}] holds {cap} bytes, less than offset + sizes[{index}] = {len}"
            )));
        }
        let ptr = NonNull::new(ptr).unwrap_or(NonNull::dangling());
        Ok(GroBuf {
            obj,
            ptr,
            len,
            cap,
            growable,
            exact,
        })
    }

    /// The Python object (to put back into the list after swaps).
    pub(crate) fn object(&self) -> &Bound<'py, PyAny> {
        &self.obj
    }

    /// Where the packet ends.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn span(&self, index: usize) -> (usize, usize, usize) {
        let s = self.ptr.as_ptr() as usize;
        (s, s + self.cap, index)
    }
}

/// The buffers of one GRO call: `bufs[..lens.len()]` in sized mode (packet i ending at
/// `offset + lens[i]`), else all of `bufs` in exact mode. Checked to share no memory.
pub(crate) fn gro_bufs<'py>(
    views: &mut Views<'py>,
    bufs: &Bound<'py, PyList>,
    offset: usize,
    lens: Option<&[usize]>,
) -> PyResult<Vec<GroBuf<'py>>> {
    let n = lens.map_or(bufs.len(), <[usize]>::len);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let end = lens.map(|l| offset + l[i]);
        let obj = if i < bufs.len() {
            // SAFETY: i < len(bufs), checked on this line with the GIL held: a live item
            // the list owns, of which a new reference is taken at once.
            unsafe {
                Borrowed::from_ptr(bufs.py(), ffi::PyList_GET_ITEM(bufs.as_ptr(), i as isize))
            }
            .to_owned()
        } else {
            bufs.get_item(i)? // raises the IndexError
        };
        out.push(GroBuf::new(obj, views, i, end)?);
    }
    if out.iter().all(|b| b.growable) {
        // Distinct bytearrays never share memory: only the same object twice can. Mark
        // each with EXCLUSIVE exports and look for a mark already there (GIL held).
        let mut dup = None;
        for (i, b) in out.iter().enumerate() {
            // SAFETY: growable buffers are exact bytearrays; GIL held; undone just below.
            let e = unsafe { &mut (*b.obj.as_ptr().cast::<ffi::PyByteArrayObject>()).ob_exports };
            if *e >= EXCLUSIVE {
                dup.get_or_insert(i);
            }
            *e += EXCLUSIVE;
        }
        for b in &out {
            // SAFETY: as above, removing this loop's own marks.
            unsafe { (*b.obj.as_ptr().cast::<ffi::PyByteArrayObject>()).ob_exports -= EXCLUSIVE };
        }
        if let Some(i) = dup {
            let first = out.iter().position(|b| b.obj.is(&out[i].obj)).unwrap_or(i);
            return Err(super::engine::kind_error(
                engine::ErrorKind::OverlappingBuffers,
                Some(i),
                format!("bufs[{first}] and bufs[{i}] share memory"),
            ));
        }
    } else {
        let mut spans: Vec<_> = out.iter().enumerate().map(|(i, b)| b.span(i)).collect();
        check_disjoint(&mut spans, &|i| format!("bufs[{i}]"))?;
    }
    Ok(out)
}

// These run only inside `handle_gro`, with the GIL held and no Python code called, so no
// other thread can resize or free a bytearray while a slice of it is alive.
impl ExpandBuffer for GroBuf<'_> {
    fn bytes(&self) -> &[u8] {
        // SAFETY: ptr/len describe live memory of the object (refreshed after each
        // resize; a non-bytearray is exported by the call's Views); GIL held and no
        // Python code runs while the slice lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; the buffers share no memory (checked in `gro_bufs`), so this
        // is the only reference to these bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    fn max_len(&self) -> usize {
        if self.growable {
            isize::MAX as usize
        } else {
            self.cap
        }
    }

    fn resize(&mut self, new_len: usize) -> engine::Result<()> {
        if new_len > self.cap || (self.exact && new_len != self.cap) {
            if !self.growable {
                return Err(engine::Error::fixed(
                    engine::ErrorKind::BufferCannotGrow,
                    "internal: a fixed buffer was asked to grow",
                ));
            }
            let ba = self.obj.cast::<PyByteArray>().map_err(|_| {
                engine::Error::fixed(
                    engine::ErrorKind::BufferCannotGrow,
                    "internal: not a bytearray",
                )
            })?;
            ba.resize(new_len).map_err(|e| {
                engine::Error::new(
                    engine::ErrorKind::BufferCannotGrow,
                    format!(
                        "cannot grow a bytearray to {new_len} bytes: {}",
                        e.value(ba.py())
                    ),
                )
            })?;
            // SAFETY: a bytearray (cast above), GIL held.
            let ptr = unsafe { ffi::PyByteArray_AsString(ba.as_ptr()).cast::<u8>() };
            self.ptr = NonNull::new(ptr).unwrap_or(NonNull::dangling());
            self.cap = new_len;
        }
        self.len = new_len;
        Ok(())
    }
}
