//! Python's batch arguments for the core: a list (or other sequence) of buffers as the
//! core's [`Buffers`] ([`PyBufs`]), `sizes` read from and stored into Python ints.

use std::cell::Cell;
use std::thread::LocalKey;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyList, PySequence, PyTuple};
use pyo3::Borrowed;

use super::buffers::{bytearray_region, is_bytearray, list_item, Name, PyBuf, Region, Views};
use super::errors::type_error;
use crate::engine::buffer::{batch_len, find_duplicate, non_negative};
use crate::engine::{Buffers, Error, ErrorKind, ExpandBuffer, Room, Window};

/// A sequence argument, read item by item (no copy of its items per call).
#[derive(Clone, Copy)]
pub(crate) enum Seq<'a, 'py> {
    List(&'a Bound<'py, PyList>),
    Other(&'a Bound<'py, PySequence>),
}

impl<'a, 'py> Seq<'a, 'py> {
    /// `obj` (named `what`) as a sequence, or `TypeError` saying what it must be.
    /// (A list subclass is read as any sequence: its `__len__` and `__getitem__` count.)
    pub(crate) fn of(obj: &'a Bound<'py, PyAny>, what: &str, must: &str) -> PyResult<Self> {
        if let Ok(l) = obj.cast_exact::<PyList>() {
            return Ok(Seq::List(l));
        }
        obj.cast::<PySequence>()
            .map(Seq::Other)
            .map_err(|_| type_error(what, must, obj))
    }

    pub(crate) fn len(self) -> PyResult<usize> {
        match self {
            Seq::List(l) => Ok(l.len()),
            Seq::Other(s) => s.len(),
        }
    }

    /// Item `i` (a new reference); `what` names the sequence if a list got shorter than
    /// `i` during the call (Python code run meanwhile may change it). Whether Python code
    /// may have run for it comes second.
    #[inline(always)]
    pub(crate) fn get(self, i: usize, what: &str) -> PyResult<(Bound<'py, PyAny>, bool)> {
        match self {
            Seq::List(l) => list_item(l, i).map(|o| (o, false)).ok_or_else(|| {
                let m = format!("{what} got shorter during the call (no item {i})");
                Error::new(ErrorKind::BufsChanged, m).into()
            }),
            Seq::Other(s) => Ok((s.get_item(i)?, !s.is_exact_instance_of::<PyTuple>())),
        }
    }
}

/// A Python sequence of buffers as the core's [`Buffers`]: converted only as far as a
/// call asks, once.
pub(crate) struct PyBufs<'a, 'py> {
    py: Python<'py>,
    seq: Seq<'a, 'py>,
    len: usize,
    name: &'static str,
    /// Whether bytearrays may be resized.
    grow: bool,
    views: Views<'py>,
    bufs: Vec<PyBuf<'py>>,
}

impl<'a, 'py> PyBufs<'a, 'py> {
    /// `seq` (named `name`; `TypeError` if it is not a sequence). With `grow`, a
    /// bytearray too small for its packet is resized.
    pub(crate) fn new(
        seq: &'a Bound<'py, PyAny>,
        name: &'static str,
        grow: bool,
    ) -> PyResult<Self> {
        Self::of(
            seq.py(),
            Seq::of(seq, name, "a sequence of buffers")?,
            name,
            grow,
        )
    }

    /// The list `seq` (a subclass too: its own entries, whatever its `__len__` says), to
    /// coalesce (GRO swaps its entries).
    pub(crate) fn list(seq: &'a Bound<'py, PyAny>, name: &'static str) -> PyResult<Self> {
        let list = seq
            .cast::<PyList>()
            .map_err(|_| type_error(name, "a list of bytearray", seq))?;
        Self::of(seq.py(), Seq::List(list), name, true)
    }

    fn of(py: Python<'py>, seq: Seq<'a, 'py>, name: &'static str, grow: bool) -> PyResult<Self> {
        Ok(PyBufs {
            py,
            len: seq.len()?,
            seq,
            name,
            grow,
            views: Views::with_capacity(py, 0),
            bufs: Vec::new(),
        })
    }

    #[inline(always)]
    fn item(&self, i: usize) -> PyResult<(Bound<'py, PyAny>, bool)> {
        self.seq.get(i, self.name)
    }

    /// The list's item `i` borrowed, when it is an exact bytearray (GIL held: valid while
    /// no Python code runs).
    #[inline(always)]
    fn bytearray_at(&self, i: usize) -> Option<Region> {
        let Seq::List(l) = self.seq else { return None };
        let raw = l.as_ptr();
        // SAFETY: a live list, GIL held; the index is checked against its length now, and
        // the item is a live object the list owns.
        unsafe {
            if i >= ffi::PyList_GET_SIZE(raw) as usize {
                return None;
            }
            let item = ffi::PyList_GET_ITEM(raw, i as ffi::Py_ssize_t);
            is_bytearray(item).then(|| bytearray_region(item))
        }
    }
}

thread_local! {
    /// The windows of [`PyBufs::windows`] and [`PyBufs::pinned`], reused between calls.
    static WINDOWS: Cell<Vec<Window<'static>>> = const { Cell::new(Vec::new()) };
    /// Keys for the duplicate check of [`PyBufs::windows`], reused between calls.
    static KEYS: Cell<Vec<usize>> = const { Cell::new(Vec::new()) };
    /// The sizes of [`with_sizes`], reused between calls.
    static SIZES: Cell<Vec<usize>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on this thread's reusable vector in `key`, empty: nothing is allocated per
/// call once it has grown (a call made meanwhile, by Python code, gets one of its own).
pub(crate) fn reuse<T, R>(
    key: &'static LocalKey<Cell<Vec<T>>>,
    f: impl FnOnce(&mut Vec<T>) -> R,
) -> R {
    let mut v = key.with(Cell::take);
    v.clear();
    let r = f(&mut v);
    v.clear();
    key.with(|c| c.set(v));
    r
}

impl<'py> Buffers<PyErr> for PyBufs<'_, 'py> {
    type Buf = PyBuf<'py>;

    fn count(&self) -> usize {
        self.len
    }

    fn room(&mut self, i: usize) -> PyResult<Room> {
        let mut views = Views::with_capacity(self.py, 1);
        let what = Name(self.name, Some(i));
        let b = PyBuf::new(self.item(i)?.0, &mut views, self.grow, false, 0, what)?;
        let (addr, len, max_len) = (b.region.ptr.as_ptr() as usize, b.capacity(), b.max_len());
        Ok(Room { addr, len, max_len })
    }

    #[inline(always)]
    fn next_limited(&mut self, from: usize, addr: Option<usize>) -> usize {
        // A list of bytearrays that may grow (the usual case) is passed over without
        // references taken: the C API's macros on the list's own entries, GIL held.
        let (Seq::List(l), true) = (self.seq, self.grow) else {
            return from;
        };
        let raw = l.as_ptr();
        let addr = addr.unwrap_or(0);
        // SAFETY: a live list, GIL held, no Python code run: its length is read once and
        // its first `len` items are live objects it owns.
        unsafe {
            let len = ffi::PyList_GET_SIZE(raw) as usize;
            (from..len)
                .find(|&i| {
                    let item = ffi::PyList_GET_ITEM(raw, i as ffi::Py_ssize_t);
                    !is_bytearray(item) || ffi::PyByteArray_AS_STRING(item) as usize == addr
                })
                .unwrap_or(len.max(from))
        }
    }

    #[inline(always)]
    fn bufs(&mut self, n: usize, sized: bool, written_from: usize) -> PyResult<&mut [PyBuf<'py>]> {
        if self.bufs.len() != n {
            self.convert(n, sized, written_from)?;
        }
        Ok(&mut self.bufs)
    }

    fn windows<T>(
        &mut self,
        n: usize,
        need: &dyn Fn(usize) -> usize,
        pin: bool,
        f: impl for<'w> FnOnce(&mut [Window<'w>]) -> T,
    ) -> PyResult<Option<T>> {
        reuse(&WINDOWS, |w| {
            for i in 0..n {
                let Some(r) = self.bytearray_at(i).filter(|r| r.len >= need(i)) else {
                    return Ok(None);
                };
                // SAFETY: a bytearray the list owns, GIL held and no Python code run while
                // the window is used (or pinned below); no byte is used before the windows
                // are checked distinct.
                w.push(unsafe { Window::from_raw(r.ptr, r.len, r.len) });
            }
            let addrs = |k: &mut Vec<usize>| k.extend(w.iter().map(Window::addr));
            if reuse(&KEYS, |k| {
                addrs(k);
                find_duplicate(k).is_some()
            }) {
                return Ok(None);
            }
            let _pins = if pin { Some(self.pin_items(n)?) } else { None };
            Ok(Some(f(w)))
        })
    }

    fn pinned<T>(
        &mut self,
        n: usize,
        f: impl for<'w> FnOnce(&mut [Window<'w>]) -> T,
    ) -> PyResult<T> {
        let mut pins = Views::with_capacity(self.py, n);
        reuse(&WINDOWS, |w| {
            for (i, b) in self.bufs[..n].iter().enumerate() {
                // A bytearray's export runs no Python code: no other buffer changes meanwhile.
                let r = match b.bytearray {
                    true => pins.export(&b.obj, true, Name(self.name, Some(i)))?,
                    false => b.region,
                };
                // SAFETY: exported (pinned) until `pins` is dropped, after `f`; the core
                // checked the buffers distinct before.
                w.push(unsafe { Window::from_raw(r.ptr, r.len, b.bytes().len()) });
            }
            let out = f(w);
            drop(pins);
            self.follow(w);
            Ok(out)
        })
    }

    fn reorder(&mut self) -> PyResult<()> {
        for (i, b) in self.bufs.iter().enumerate() {
            match self.seq {
                Seq::List(l) if list_item(l, i).is_some_and(|o| o.is(&b.obj)) => {}
                Seq::List(l) => l.set_item(i, &b.obj)?,
                Seq::Other(s) if s.get_item(i)?.is(&b.obj) => {}
                Seq::Other(s) => s.set_item(i, &b.obj)?,
            }
        }
        Ok(())
    }

    fn pinned_bytes(&mut self, idx: impl Iterator<Item = usize>) -> PyResult<Vec<&[u8]>> {
        let mut out = Vec::with_capacity(idx.size_hint().0.min(super::buffers::PREALLOC));
        for i in idx {
            let (obj, _) = self.item(i)?;
            let r = self.views.export(&obj, false, Name(self.name, Some(i)))?;
            // SAFETY: exported by `self.views` while `self` is borrowed; only read.
            out.push(unsafe { r.slice() });
        }
        Ok(out)
    }
}

impl<'py> PyBufs<'_, 'py> {
    /// Converts the first `n` buffers (see [`Buffers::bufs`]).
    fn convert(&mut self, n: usize, sized: bool, written_from: usize) -> PyResult<()> {
        self.bufs.clear();
        self.bufs.reserve(n.min(super::buffers::PREALLOC));
        // Whether Python code may have run since the first buffer was read (`seq[i]` on
        // something that is not a list, or the export of a buffer that is not a
        // bytearray): it may have resized a bytearray read before it.
        let mut ran_python = false;
        for i in 0..n {
            let (obj, ran) = self.item(i)?;
            let what = Name(self.name, Some(i));
            let b = PyBuf::new(obj, &mut self.views, self.grow, sized, written_from, what)?;
            ran_python |= ran || !b.bytearray;
            self.bufs.push(b);
        }
        if ran_python {
            self.bufs.iter_mut().for_each(PyBuf::reread);
        }
        Ok(())
    }

    /// Exports the list's first `n` items (exact bytearrays: no Python code runs).
    fn pin_items(&self, n: usize) -> PyResult<Views<'py>> {
        let mut pins = Views::with_capacity(self.py, n);
        for i in 0..n {
            let (obj, _) = self.item(i)?;
            pins.export(&obj, true, Name(self.name, Some(i)))?;
        }
        Ok(pins)
    }

    /// The buffers take the order and lengths of `w`, windows of them that work may have
    /// swapped (their memory is disjoint, each window starting where its buffer does).
    fn follow(&mut self, w: &[Window<'_>]) {
        for (k, x) in w.iter().enumerate() {
            // Where the buffer GRO moved here is now (at `k` itself unless swapped).
            if let Some(j) = (k..w.len()).find(|&j| self.bufs[j].region.ptr == x.ptr()) {
                self.bufs.swap(k, j);
            }
            self.bufs[k].len = x.len();
        }
    }
}

/// Reads sizes from Python ints: `TypeError` for one that is not an int; a negative one is
/// `negative_argument`, one too large for any buffer is kept so that the core names it.
#[derive(Default)]
pub(crate) struct SizeReader<'py> {
    /// The int object last read and its value: recv_multiple stores one shared int for
    /// equal sizes, so a list it filled converts one or two objects, not 45.
    known: Option<(Bound<'py, PyAny>, usize)>,
}

impl<'py> SizeReader<'py> {
    /// `item`, the entry `sizes[i]`, as a size.
    #[inline(always)]
    pub(crate) fn read(&mut self, item: Bound<'py, PyAny>, i: usize) -> PyResult<usize> {
        match &self.known {
            Some((o, v)) if o.is(&item) => Ok(*v),
            _ => self.convert(item, i),
        }
    }

    #[cold]
    fn convert(&mut self, item: Bound<'py, PyAny>, i: usize) -> PyResult<usize> {
        let v = match item.extract::<i128>() {
            Ok(v) => non_negative(v, Name("sizes", Some(i)))?,
            Err(_) if item.is_instance_of::<PyInt>() => usize::MAX,
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyTypeError>(item.py()) => {
                return Err(type_error(Name("sizes", Some(i)), "an int", &item))
            }
            Err(e) => return Err(e), // what an `__index__` raised
        };
        self.known = Some((item, v));
        Ok(v)
    }
}

/// `sizes` (a sequence of ints) read for a send of `have` buffers and `count`: its first
/// [`batch_len`] entries.
pub(crate) fn sizes_of(
    obj: &Bound<'_, PyAny>,
    have: usize,
    count: Option<usize>,
) -> PyResult<Vec<usize>> {
    let seq = Seq::of(obj, "sizes", "a sequence of int")?;
    let n = batch_len(have, Some(seq.len()?), count)?;
    let mut v = Vec::with_capacity(n.min(super::buffers::PREALLOC));
    let mut reader = SizeReader::default();
    for i in 0..n {
        v.push(reader.read(seq.get(i, "sizes")?.0, i)?);
    }
    Ok(v)
}

/// Runs `f` on sizes for the Python list `sizes` (`TypeError` if it is not a list), as
/// many zeros as it has entries, then stores the first `n` (what `f` returns) into it.
/// Storing may run Python code: `f` lets go of its buffers first (it takes them).
pub(crate) fn filling_sizes(
    sizes: &Bound<'_, PyAny>,
    f: impl FnOnce(&mut [usize]) -> PyResult<usize>,
) -> PyResult<usize> {
    let list = sizes
        .cast::<PyList>()
        .map_err(|_| type_error("sizes", "a list", sizes))?;
    reuse(&SIZES, |v| {
        v.resize(list.len(), 0);
        let n = f(v)?;
        store_sizes(list, &v[..n])?;
        Ok(n)
    })
}

/// Stores `values` into the first entries of the list `sizes`. Entries that already hold
/// the value are left alone (a reused list usually does), and consecutive equal values
/// share one int object. `sizes_changed` if Python code run meanwhile shortened it.
/// Runs `f` on the list `bufs` (its bytearrays may grow) and the first `count` (default
/// all) of the list `sizes`, then stores the sizes `f` left: a batch changed in place.
pub(crate) fn in_place<T>(
    bufs: &Bound<'_, PyAny>,
    sizes: &Bound<'_, PyAny>,
    count: Option<i64>,
    f: impl FnOnce(&mut PyBufs<'_, '_>, &mut [usize]) -> PyResult<T>,
) -> PyResult<T> {
    let count = count.map(|c| non_negative(c, "count")).transpose()?;
    let list = sizes
        .cast::<PyList>()
        .map_err(|_| type_error("sizes", "a list of int", sizes))?;
    let mut b = PyBufs::list(bufs, "bufs")?;
    let mut v = sizes_of(sizes, b.count(), count)?;
    let out = f(&mut b, &mut v)?;
    drop(b);
    store_sizes(list, &v)?;
    Ok(out)
}

fn store_sizes<'py>(sizes: &Bound<'py, PyList>, values: &[usize]) -> PyResult<()> {
    // An int object known to hold a value (owned, so its address stays its own): a reused
    // list is checked by identity, without converting every entry.
    let mut known: Option<(usize, Bound<'py, PyAny>)> = None;
    let mut known_key = (usize::MAX, std::ptr::null_mut());
    for (i, &v) in values.iter().enumerate() {
        // SAFETY: the list's length and item are read afresh each time through the C
        // API's macros (GIL held), since `store` may run Python code.
        let current = unsafe {
            let l = sizes.as_ptr();
            if i >= ffi::PyList_GET_SIZE(l) as usize {
                let m = "sizes was shortened during the call";
                return Err(Error::fixed(ErrorKind::SizesChanged, m).into());
            }
            ffi::PyList_GET_ITEM(l, i as ffi::Py_ssize_t)
        };
        if known_key != (v, current) {
            let obj = store(sizes, i, v, current, known.take())?;
            known_key = (v, obj.as_ptr());
            known = Some((v, obj));
        }
    }
    Ok(())
}

/// `store_sizes`'s slow path: `sizes[i] = v` unless `current` (the entry) already equals
/// it; `known` is the last int object stored, with its value. Returns the int object now
/// there.
#[cold]
fn store<'py>(
    sizes: &Bound<'py, PyList>,
    i: usize,
    v: usize,
    current: *mut ffi::PyObject,
    known: Option<(usize, Bound<'py, PyAny>)>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = sizes.py();
    // SAFETY: `current` is the list's live entry i (read by the caller with the GIL held,
    // no Python code run since); a new reference is taken before anything else happens.
    let cur = unsafe { Borrowed::from_ptr(py, current) }.to_owned();
    if cur.is_exact_instance_of::<PyInt>() && cur.extract::<usize>().ok() == Some(v) {
        return Ok(cur);
    }
    let obj = match known {
        Some((kv, o)) if kv == v => o,
        _ => v.into_pyobject(py)?.into_any(),
    };
    sizes.set_item(i, &obj)?;
    Ok(obj)
}

/// Python's spelling of `false` and `true` (for a `repr`).
pub(crate) const PY_BOOL: [&str; 2] = ["False", "True"];
