//! Python buffers seen from Rust, through the C API's own functions and macros only.
//!
//! - [`Views`]: buffer-protocol exports (`bytes`, `bytearray`, `memoryview`, `array`, numpy
//!   ...) held for the length of a call, for memory used with the GIL released (a read
//!   into `original_buffer`, the writes). While a `bytearray` is exported it cannot be
//!   resized, so the memory stays put. The exports live in one `Vec` (never reallocated,
//!   since a `Py_buffer` must not move), reused between calls.
//! - [`Buf`]: the engine's [`ExpandBuffer`] over a `bytearray` (read in place with
//!   `PyByteArray_AS_STRING`/`PyByteArray_GET_SIZE`, grown through `PyByteArray_Resize`)
//!   or a fixed writable buffer (exported). Used only with the GIL held and no Python code
//!   run meanwhile, so a bytearray needs no pin: nothing else can resize it. (Exports can
//!   run Python code: [`bufs_of`] reads the bytearrays again after the last one.)

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

    /// The first byte's address.
    pub(crate) fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
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

    fn get(
        &mut self,
        obj: &Bound<'py, PyAny>,
        writable: bool,
        what: &dyn Fn() -> String,
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
        // SAFETY: GetBuffer succeeded, so view is initialised. (A push may move the earlier
        // views: they are plain values, released by value in `drop`; the regions handed
        // out point at the exported memory, which each export keeps in place.)
        self.views.push(unsafe { view.assume_init() });
        let v = self.views.last().expect("just pushed");
        let len = if v.buf.is_null() { 0 } else { v.len };
        Ok(region_at(v.buf.cast::<u8>(), len))
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

/// The error for an object `PyObject_GetBuffer` refused (the exception it set is fetched).
#[cold]
fn export_error(py: Python<'_>, writable: bool, what: &dyn Fn() -> String) -> PyErr {
    let cause = PyErr::fetch(py);
    let msg = if writable {
        format!(
            "{} must be a writable, contiguous bytes-like object (bytearray, memoryview): {}",
            what(),
            cause.value(py)
        )
    } else {
        format!(
            "{} must be a contiguous bytes-like object: {}",
            what(),
            cause.value(py)
        )
    };
    if cause.is_instance_of::<PyBufferError>(py) {
        PyBufferError::new_err(msg)
    } else {
        PyTypeError::new_err(msg)
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
        for o in &self.pinned {
            // SAFETY: each pin took a reference, given back once here with the GIL held.
            unsafe { ffi::Py_DECREF(o.as_ptr()) };
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

/// A buffer of a split's outputs or of a GRO batch, with the GIL held throughout.
///
/// Two modes. *Exact* (`handle_gro`, `send_multiple` without `sizes`, the split's
/// outputs): the packet ends where the buffer ends, and growing resizes the bytearray (so
/// it stays exact). *Sized* (`send_multiple(..., sizes=...)`): the packet ends at `len`,
/// before the end of the buffer; growing moves `len` within the buffer and only resizes
/// when it must.
pub(crate) struct Buf<'py> {
    obj: Bound<'py, PyAny>,
    /// Start of the bytes: refreshed after every resize.
    ptr: NonNull<u8>,
    /// The packet's end (the logical length).
    len: usize,
    /// The buffer's real length.
    cap: usize,
    /// May be resized: an exact `bytearray` (unless something else exports it, which
    /// `PyByteArray_Resize` then refuses) in a call that grows its buffers.
    growable: bool,
    /// An exact `bytearray`, read in place.
    bytearray: bool,
    exact: bool,
    /// Bytes from here on that a resize adds are the caller's to write (the packet or
    /// segment goes there); the ones it adds below are zeroed, so that no heap memory
    /// shows through in the headroom.
    written_from: usize,
}

impl<'py> Buf<'py> {
    /// Wraps `obj`, the buffer `name()`; `len` is the packet's end in sized mode, `None`
    /// for exact. A `bytearray` is read in place (no export: the GIL is held while this
    /// lives and no Python code runs); anything else is exported writable by `views`.
    /// `grow`: whether a bytearray may be resized; `written_from`: see the field.
    pub(crate) fn new(
        obj: Bound<'py, PyAny>,
        views: &mut Views<'py>,
        len: Option<usize>,
        grow: bool,
        written_from: usize,
        name: &dyn Fn() -> String,
    ) -> PyResult<Self> {
        let raw = obj.as_ptr();
        // SAFETY: raw is a live object (GIL held through `Bound`).
        let bytearray = unsafe { ffi::PyByteArray_CheckExact(raw) } != 0;
        let (r, growable) = if bytearray {
            // SAFETY: an exact bytearray, GIL held: the C API's own accessors.
            let r = unsafe { bytearray_region(raw) };
            (r, grow)
        } else {
            (views.write(&obj, name)?, false)
        };
        let mut b = Buf {
            obj,
            ptr: r.ptr,
            len: len.unwrap_or(r.len),
            cap: r.len,
            growable,
            bytearray,
            exact: len.is_none(),
            written_from,
        };
        b.set_region(r, name)?;
        Ok(b)
    }

    /// Takes `r` as the buffer's memory (the packet's end stays where it is in sized
    /// mode, and must fit).
    fn set_region(&mut self, r: Region, name: &dyn Fn() -> String) -> PyResult<()> {
        (self.ptr, self.cap) = (r.ptr, r.len);
        if self.exact {
            self.len = r.len;
        } else if self.len > r.len {
            return Err(PyValueError::new_err(format!(
                "{} holds {} bytes, less than offset + its size = {}",
                name(),
                r.len,
                self.len
            )));
        }
        Ok(())
    }

    /// Reads a bytearray's memory again, after Python code may have resized it.
    fn reread(&mut self, name: &dyn Fn() -> String) -> PyResult<()> {
        if !self.bytearray {
            return Ok(());
        }
        // SAFETY: an exact bytearray (checked in `new`), kept alive by `obj`; GIL held.
        let r = unsafe { bytearray_region(self.obj.as_ptr()) };
        self.set_region(r, name)
    }

    /// The Python object (to put back into the list after swaps).
    pub(crate) fn object(&self) -> &Bound<'py, PyAny> {
        &self.obj
    }

    /// Where the packet ends.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether this is an exact `bytearray` (its memory is its own: another such buffer
    /// shares none of it unless it is the same object).
    pub(crate) fn is_bytearray(&self) -> bool {
        self.bytearray
    }

    /// (start, end) of bytes `from..to` of the buffer, as addresses.
    pub(crate) fn span(&self, from: usize, to: usize) -> (usize, usize) {
        let s = self.ptr.as_ptr() as usize;
        (s + from, s + to)
    }
}

impl Buf<'_> {
    /// The buffer's real length (what the packet's end may move to without a resize).
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// The buffer's memory as read last (all `cap` bytes).
    pub(crate) fn region(&self) -> Region {
        Region {
            ptr: self.ptr,
            len: self.cap,
        }
    }
}

/// The bytes of an exact bytearray, through `PyByteArray_AS_STRING`/`GET_SIZE`.
///
/// # Safety
/// `raw` is a live bytearray and the GIL is held.
#[inline(always)]
unsafe fn bytearray_region(raw: *mut ffi::PyObject) -> Region {
    // SAFETY: the caller's contract.
    unsafe {
        region_at(
            ffi::PyByteArray_AS_STRING(raw).cast::<u8>(),
            ffi::PyByteArray_GET_SIZE(raw),
        )
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

/// Item `i` of a sequence: a list's through [`list_item`], else `seq[i]`.
pub(crate) fn seq_item<'py>(seq: &Bound<'py, PyAny>, i: usize) -> PyResult<Bound<'py, PyAny>> {
    if let Ok(l) = seq.cast::<PyList>() {
        if let Some(o) = list_item(l, i) {
            return Ok(o);
        }
    }
    seq.get_item(i)
}

/// Grows (or shrinks) the bytearray `b` to `new_len` bytes, zeroing the bytes it adds
/// below `zero_below` (the ones above are the caller's to write at once), so that no
/// heap memory shows through.
pub(crate) fn resize_bytearray(
    b: &Bound<'_, PyByteArray>,
    new_len: usize,
    zero_below: usize,
) -> PyResult<()> {
    let old = b.len();
    b.resize(new_len)?;
    // SAFETY: GIL held and no Python code runs while the slice lives.
    if let Some(fresh) = unsafe { b.as_bytes_mut() }.get_mut(old..new_len.min(zero_below)) {
        fresh.fill(0);
    }
    Ok(())
}

/// The buffers `seq[..n]` as [`Buf`]s (`base + lens[i]` is packet i's end in sized mode;
/// in both modes the caller writes from `base` on, and bytes a resize adds before it are
/// zeroed).
#[allow(clippy::too_many_arguments)]
pub(crate) fn bufs_of<'py>(
    views: &mut Views<'py>,
    seq: &Bound<'py, PyAny>,
    n: usize,
    lens: Option<&[usize]>,
    base: usize,
    grow: bool,
    name: &str,
) -> PyResult<Vec<Buf<'py>>> {
    let mut out = Vec::with_capacity(n);
    let list = seq.cast::<PyList>().ok();
    // Whether Python code may have run since the first buffer was read: `seq[i]` on
    // something that is not a list (or past a list subclass's real end), or the export
    // of a buffer that is not a bytearray (a class's `__buffer__`, Python 3.12+). That
    // code may have resized a bytearray read before it.
    let mut ran_python = false;
    for i in 0..n {
        let obj = match list.and_then(|l| list_item(l, i)) {
            Some(o) => o,
            None => {
                ran_python = true;
                seq.get_item(i)?
            }
        };
        let end = match lens {
            Some(l) => Some(base.saturating_add(l.get(i).copied().ok_or_else(|| {
                PyValueError::new_err(format!("{name}: fewer sizes than buffers"))
            })?)),
            None => None,
        };
        let b = Buf::new(obj, views, end, grow, base, &|| format!("{name}[{i}]"))?;
        ran_python |= !b.is_bytearray();
        out.push(b);
    }
    // Read the bytearrays' memory again, now that no more Python code runs.
    if ran_python {
        for (i, b) in out.iter_mut().enumerate() {
            b.reread(&|| format!("{name}[{i}]"))?;
        }
    }
    Ok(out)
}

/// The first index `i >= from` of `list` whose item is not an exact `bytearray` or is
/// `same_as`; `None` if there is none. Reads the items borrowed (GIL held, no Python code
/// run): a pass over 128 buffers costs a few hundred instructions.
pub(crate) fn scan_bytearrays(
    list: &Bound<'_, PyList>,
    from: usize,
    same_as: *mut ffi::PyObject,
) -> Option<usize> {
    let raw = list.as_ptr();
    // SAFETY: a live list, GIL held; its length is read once and nothing in the loop runs
    // Python code, so the first `len` items stay live objects the list owns.
    unsafe {
        let len = ffi::PyList_GET_SIZE(raw) as usize;
        (from..len).find(|&i| {
            let item = ffi::PyList_GET_ITEM(raw, i as ffi::Py_ssize_t);
            item == same_as || ffi::PyByteArray_CheckExact(item) == 0
        })
    }
}

/// The first pair `(i, j)`, `i < j`, with `keys[i] == keys[j]`, if any: pairwise for a
/// few keys, else an open-addressing set (reused per thread) of twice as many slots: a few
/// instructions per key, where sorting 45 costs a couple of thousand.
pub(crate) fn find_duplicate(keys: &[usize]) -> Option<(usize, usize)> {
    if keys.len() <= 8 {
        for j in 1..keys.len() {
            if let Some(i) = keys[..j].iter().position(|&k| k == keys[j]) {
                return Some((i, j));
            }
        }
        return None;
    }
    let bits = (2 * keys.len()).next_power_of_two();
    let mask = bits - 1;
    // Fibonacci hashing: the product's top bits index the table.
    let shift = 64 - bits.trailing_zeros();
    let mut table = SLOTS.with(|t| t.take());
    table.clear();
    table.resize(bits, (0, u32::MAX));
    let mut found = None;
    'keys: for (j, &k) in keys.iter().enumerate() {
        let mut h = ((k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize;
        loop {
            let slot = &mut table[h & mask];
            if slot.1 == u32::MAX {
                *slot = (k, j as u32);
                break;
            }
            if slot.0 == k {
                found = Some((slot.1 as usize, j));
                break 'keys;
            }
            h += 1;
        }
    }
    SLOTS.with(|t| t.set(table));
    found
}

thread_local! {
    /// `find_duplicate`'s table, reused between calls.
    static SLOTS: std::cell::Cell<Vec<(usize, u32)>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Fails if two of `bufs` may share memory: the same bytearray twice (found by object)
/// when all are bytearrays, else any two overlapping (found by sorting their spans).
/// `part(i)` is the range of buffer i to check, `name(i)` names it.
pub(crate) fn check_bufs_disjoint(
    bufs: &[Buf<'_>],
    part: &dyn Fn(usize, &Buf<'_>) -> (usize, usize),
    name: &dyn Fn(usize) -> String,
) -> PyResult<()> {
    if check_distinct_bytearrays(bufs, name)? {
        return Ok(()); // distinct bytearrays share no memory
    }
    check_spans_disjoint(bufs, part, name)
}

/// The range half of [`check_bufs_disjoint`], for a caller that has checked the
/// bytearrays' identities already (before they grew) and found other buffers among
/// them: no two regions may share a byte.
pub(crate) fn check_spans_disjoint(
    bufs: &[Buf<'_>],
    part: &dyn Fn(usize, &Buf<'_>) -> (usize, usize),
    name: &dyn Fn(usize) -> String,
) -> PyResult<()> {
    let mut spans: Vec<(usize, usize, usize)> = bufs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let (s, e) = part(i, b);
            (s, e, i)
        })
        .collect();
    check_disjoint(&mut spans, name)
}

/// Fails if the same `bytearray` is among `bufs` twice; returns whether all of them are
/// bytearrays. By identity, so it holds before any of them grows: growing one moves its
/// memory, and another entry for the same object would keep the old address (its range
/// would then compare as disjoint).
pub(crate) fn check_distinct_bytearrays(
    bufs: &[Buf<'_>],
    name: &dyn Fn(usize) -> String,
) -> PyResult<bool> {
    let mut keys = KEYS.with(|k| k.take());
    keys.clear();
    let mut all = true;
    for b in bufs {
        if b.is_bytearray() {
            keys.push(b.obj.as_ptr() as usize);
        } else {
            all = false;
        }
    }
    let dup = find_duplicate(&keys);
    KEYS.with(|k| k.set(keys));
    let Some((i, j)) = dup else {
        return Ok(all);
    };
    // Indices into the bytearray entries: back to positions in `bufs`.
    let at = |k: usize| {
        bufs.iter()
            .enumerate()
            .filter(|(_, b)| b.is_bytearray())
            .nth(k)
            .map_or(k, |(i, _)| i)
    };
    let (i, j) = (at(i), at(j));
    Err(super::engine::kind_error(
        engine::ErrorKind::OverlappingBuffers,
        Some(j),
        format!(
            "{} and {} share memory (the same bytearray twice)",
            name(i),
            name(j)
        ),
    ))
}

thread_local! {
    /// `check_bufs_disjoint`'s key list, reused between calls.
    static KEYS: std::cell::Cell<Vec<usize>> = const { std::cell::Cell::new(Vec::new()) };
}

/// (start, end) of a buffer's whole bytes.
pub(crate) fn buf_span(b: &Buf<'_>) -> (usize, usize) {
    b.span(0, b.cap)
}

/// Memory written without going through its object: the bytes of an exact `bytearray`
/// of a list, read with the GIL held (the split's fast path, no reference taken), or the
/// region of an export held by the caller's `Views` (used with the GIL released: the
/// split, an in-place coalescing, a UDP delivery). The packet ends at `len`, which may
/// move within the region but never past it (nothing is resized through a `Fixed`).
pub(crate) struct Fixed {
    /// The region (`cap` bytes at `ptr`).
    ptr: NonNull<u8>,
    cap: usize,
    /// Where the packet ends, `<= cap`.
    len: usize,
}

// SAFETY: as for `Region`, which a `Fixed` is made from: the memory stays in place while
// the export (or the GIL) behind it is held.
unsafe impl Send for Fixed {}

impl Fixed {
    /// All of `r`.
    pub(crate) fn whole(r: Region) -> Fixed {
        Fixed {
            ptr: r.ptr,
            cap: r.len,
            len: r.len,
        }
    }

    /// The first `len` bytes of `r` (at most all of them), able to grow to all of `r`.
    pub(crate) fn sized(r: Region, len: usize) -> Fixed {
        Fixed {
            ptr: r.ptr,
            cap: r.len,
            len: len.min(r.len),
        }
    }

    /// The first byte's address.
    pub(crate) fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// Where the packet ends.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

thread_local! {
    /// The `Vec<Fixed>` of [`with_fixed`], reused between calls.
    static FIXED: std::cell::Cell<Vec<Fixed>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` on an empty `Vec<Fixed>` that this thread reuses from call to call (nothing
/// allocated per call once it has grown).
pub(crate) fn with_fixed<T>(f: impl FnOnce(&mut Vec<Fixed>) -> T) -> T {
    let mut v = FIXED.with(|c| c.take());
    v.clear();
    let r = f(&mut v);
    v.clear();
    FIXED.with(|c| c.set(v));
    r
}

impl AsMut<[u8]> for Fixed {
    fn as_mut(&mut self) -> &mut [u8] {
        self.bytes_mut()
    }
}

impl ExpandBuffer for Fixed {
    fn bytes(&self) -> &[u8] {
        // SAFETY: made by `bytearray_outputs` from a bytearray the list owns, used with the
        // GIL held and no Python code run before the last use (see there), or the region
        // of an export the caller holds while this is used; `len <= cap`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; the callers' regions are disjoint (checked before), so this is
        // the only reference to these bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
    fn max_len(&self) -> usize {
        self.cap
    }
    fn resize(&mut self, new_len: usize) -> engine::Result<()> {
        if new_len > self.cap {
            return Err(engine::Error::fixed(
                engine::ErrorKind::BufferCannotGrow,
                "internal: a fixed buffer was asked to grow past its end",
            ));
        }
        self.len = new_len;
        Ok(())
    }
}

/// The split's fast path: when `list[..n]` are exact bytearrays, each with at least
/// `need(i)` bytes, none overlapping `avoid` (the packet) nor listed twice, fills `out`
/// with their regions and returns true; anything else returns false (and the general
/// path, which grows buffers and names problems, takes over). The regions stay valid
/// while the GIL is held and no Python code runs: the list owns the bytearrays and
/// nothing can resize them.
pub(crate) fn bytearray_outputs(
    list: &Bound<'_, PyList>,
    n: usize,
    need: &dyn Fn(usize) -> usize,
    avoid: (usize, usize),
    out: &mut Vec<Fixed>,
) -> bool {
    out.clear();
    let raw = list.as_ptr();
    let mut keys = KEYS.with(|k| k.take());
    keys.clear();
    // SAFETY: a live list, GIL held, nothing here runs Python code: its first `len` items
    // are live bytearrays (checked) that it owns.
    let ok = unsafe {
        let len = ffi::PyList_GET_SIZE(raw) as usize;
        n <= len
            && (0..n).all(|i| {
                let item = ffi::PyList_GET_ITEM(raw, i as ffi::Py_ssize_t);
                if ffi::PyByteArray_CheckExact(item) == 0 {
                    return false;
                }
                let r = bytearray_region(item);
                let (s, e) = (r.ptr.as_ptr() as usize, r.ptr.as_ptr() as usize + r.len);
                if r.len < need(i) || (s < avoid.1 && avoid.0 < e) {
                    return false;
                }
                keys.push(s);
                out.push(Fixed::whole(r));
                true
            })
    };
    let ok = ok && find_duplicate(&keys).is_none();
    KEYS.with(|k| k.set(keys));
    ok
}

impl AsMut<[u8]> for Buf<'_> {
    fn as_mut(&mut self) -> &mut [u8] {
        self.bytes_mut()
    }
}

// These run only with the GIL held and no Python code called, so no other thread can
// resize or free a bytearray while a slice of it is alive.
impl ExpandBuffer for Buf<'_> {
    fn bytes(&self) -> &[u8] {
        // SAFETY: ptr/len describe live memory of the object (refreshed after each
        // resize; a non-bytearray is exported by the call's Views); GIL held and no
        // Python code runs while the slice lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; the buffers share no memory (checked by every caller), so
        // this is the only reference to these bytes.
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
                        "cannot resize a bytearray to {new_len} bytes: {}",
                        e.value(ba.py())
                    ),
                )
            })?;
            // SAFETY: a bytearray (cast above), GIL held.
            let r = unsafe { bytearray_region(ba.as_ptr()) };
            let old = self.cap;
            self.ptr = r.ptr;
            self.cap = r.len;
            let fresh = old..new_len.min(self.written_from);
            if !fresh.is_empty() {
                // SAFETY: `fresh` is within the bytearray's `r.len` bytes (new_len ==
                // r.len); GIL held and no Python code runs while the slice lives.
                let all = unsafe { std::slice::from_raw_parts_mut(r.ptr.as_ptr(), r.len) };
                all[fresh].fill(0);
            }
        }
        self.len = new_len;
        Ok(())
    }
}
