//! Python's batch arguments for the core: a list (or other sequence) of buffers as the
//! core's [`Buffers`] ([`PyBufs`]), `sizes` read from and stored into Python ints.

use std::cell::Cell;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyList, PySequence, PyTuple};
use pyo3::Borrowed;

use super::buffers::Views;
use super::buffers::{addr, bytearray_region, bytearray_start, list_get, py_buf, PyBuf, PyObj};
use super::errors::type_error;
use super::gil::PYTHON_RAN;
use crate::engine::buffer::{batch_len, non_negative, reuse, Name};
use crate::engine::held::{on_windows, reuse_held, windows_over};
use crate::engine::{Buffers, Error, ErrorKind, ExpandBuffer, Room, Window};

/// The most entries reserved up front from a length that Python code reported (a list
/// subclass's `__len__` can say anything): more grow as they come.
pub(crate) const PREALLOC: usize = 1 << 12;

/// `obj` (named `what`) as a list (a subclass too), or `TypeError` saying what it must be.
pub(crate) fn list<'a, 'py>(
    obj: &'a Bound<'py, PyAny>,
    what: &str,
    must: &str,
) -> PyResult<&'a Bound<'py, PyList>> {
    obj.cast::<PyList>()
        .map_err(|_| type_error(what, must, obj))
}

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

    /// `obj`, the argument `sizes`, as a sequence.
    pub(crate) fn sizes(obj: &'a Bound<'py, PyAny>) -> PyResult<Self> {
        Seq::of(obj, "sizes", "a sequence of int")
    }

    pub(crate) fn len(self) -> PyResult<usize> {
        match self {
            Seq::List(l) => Ok(l.len()),
            Seq::Other(s) => s.len(),
        }
    }

    /// Whether reading an item may run Python code (a `__getitem__`).
    fn runs_python(self) -> bool {
        matches!(self, Seq::Other(s) if !s.is_exact_instance_of::<PyTuple>())
    }

    /// Item `i` (a new reference); `what` names the sequence if a list got shorter than
    /// `i` during the call (Python code run meanwhile may change it).
    #[inline(always)]
    pub(crate) fn get(self, i: usize, what: &str) -> PyResult<Bound<'py, PyAny>> {
        match self {
            // SAFETY: the index is checked against the list's length (GIL held).
            Seq::List(l) if i < l.len() => Ok(unsafe { l.get_item_unchecked(i) }),
            Seq::List(_) => {
                let m = format!("{what} got shorter during the call (no item {i})");
                Err(Error::new(ErrorKind::BufsChanged, m).into())
            }
            Seq::Other(s) => s.get_item(i),
        }
    }

    /// The first `n` entries, read as sizes (see [`read_size`]).
    pub(crate) fn read_sizes(self, n: usize) -> PyResult<Vec<usize>> {
        let mut v = Vec::with_capacity(n.min(PREALLOC));
        let mut known = None;
        for i in 0..n {
            v.push(read_size(self, i, &mut known)?);
        }
        Ok(v)
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
    /// [`PYTHON_RAN`] when `bufs` was read: stale once it moves on.
    read_at: u64,
}

impl<'a, 'py> PyBufs<'a, 'py> {
    /// `obj` (named `name`; `TypeError` if it is not a sequence). With `grow`, a bytearray
    /// too small for its packet is resized. With `list`, a list (GRO swaps its entries; a
    /// subclass is read as its own entries, whatever its `__len__` says).
    pub(crate) fn new(
        obj: &'a Bound<'py, PyAny>,
        name: &'static str,
        grow: bool,
        list: bool,
    ) -> PyResult<Self> {
        let seq = match list {
            true => Seq::List(self::list(obj, name, "a list of bytearray")?),
            false => Seq::of(obj, name, "a sequence of buffers")?,
        };
        Ok(PyBufs {
            py: obj.py(),
            len: seq.len()?,
            seq,
            name,
            grow,
            views: Views::new(obj.py()),
            bufs: Vec::new(),
            read_at: PYTHON_RAN.with(Cell::get),
        })
    }

    /// The bytes of buffers `idx`, exported read-only while `self` is borrowed; `then(i)`
    /// runs once buffer `i` is exported.
    pub(crate) fn exports(
        &mut self,
        idx: impl Iterator<Item = usize>,
        mut then: impl FnMut(usize) -> PyResult<()>,
    ) -> PyResult<Vec<&[u8]>> {
        let mut out = Vec::with_capacity(idx.size_hint().0.min(PREALLOC));
        for i in idx {
            let obj = self.seq.get(i, self.name)?;
            let r = self.views.export(&obj, false, Name(self.name, Some(i)))?;
            // SAFETY: exported by `self.views` while `self` is borrowed; only read.
            out.push(unsafe { r.as_ref() });
            then(i)?;
        }
        Ok(out)
    }

    /// Converts the first `n` buffers (see [`Buffers::bufs`]).
    fn convert(&mut self, n: usize, mode: (bool, bool, usize)) -> PyResult<()> {
        self.bufs.clear();
        self.bufs.reserve(n.min(PREALLOC));
        // Whether Python code may have run since the first buffer was read (`seq[i]` on
        // something that is not a list, or the export of a buffer that is not a
        // bytearray): it may have resized a bytearray read before it.
        let mut ran_python = self.seq.runs_python();
        for i in 0..n {
            let obj = self.seq.get(i, self.name)?;
            let b = py_buf(obj, &mut self.views, mode, Name(self.name, Some(i)))?;
            ran_python |= !b.holder.is_bytearray();
            self.bufs.push(b);
        }
        if ran_python {
            self.bufs.iter_mut().for_each(PyBuf::reread);
        }
        Ok(())
    }
}

impl<'py> Buffers<PyErr> for PyBufs<'_, 'py> {
    type Buf = PyBuf<'py>;

    fn count(&self) -> usize {
        self.len
    }

    fn room(&mut self, i: usize) -> PyResult<Room> {
        let mut views = Views::new(self.py);
        let obj = self.seq.get(i, self.name)?;
        let what = Name(self.name, Some(i));
        let b = py_buf(obj, &mut views, (self.grow, false, 0), what)?;
        let (addr, len, max_len) = (addr(b.region()), b.capacity(), b.max_len());
        Ok(Room { addr, len, max_len })
    }

    #[inline(always)]
    fn next_limited(&mut self, from: usize, start: Option<usize>) -> usize {
        // A list of bytearrays that may grow (the usual case) is passed over without
        // references taken: the C API's macros on the list's own entries, GIL held.
        let (Seq::List(l), true) = (self.seq, self.grow) else {
            return from;
        };
        // SAFETY: the list's live items (GIL held, no Python code run).
        let at = |o| unsafe { bytearray_start(o) }.is_none_or(|a| Some(a) == start);
        (from..l.len())
            .find(|&i| list_get(l, i).is_none_or(at))
            .unwrap_or(l.len().max(from))
    }

    #[inline(always)]
    fn bufs(&mut self, n: usize, sized: bool, written_from: usize) -> PyResult<&mut [PyBuf<'py>]> {
        // After Python code ran, read again in place if each is still its list's entry (a
        // tuple's cannot change).
        let (now, seq) = (PYTHON_RAN.with(Cell::get), self.seq);
        let kept = |i, h: &PyObj| match seq {
            Seq::List(l) => list_get(l, i) == Some(h.obj.as_ptr()),
            Seq::Other(s) => s.is_exact_instance_of::<PyTuple>(),
        };
        let stale = self.read_at != now;
        if self.bufs.len() < n || !reuse_held(&mut self.bufs, (sized, written_from), stale, kept) {
            self.convert(n, (self.grow, sized, written_from))?;
        }
        self.read_at = now;
        Ok(&mut self.bufs[..n])
    }

    fn windows<T>(
        &mut self,
        n: usize,
        need: impl Fn(usize) -> usize,
        pin: bool,
        f: impl for<'w> FnOnce(&mut [Window<'w>]) -> T,
    ) -> PyResult<Option<T>> {
        let Seq::List(l) = self.seq else {
            return Ok(None);
        };
        // SAFETY: the list's live items (GIL held).
        let regions = (0..n).map(|i| list_get(l, i).and_then(|o| unsafe { bytearray_region(o) }));
        // Each exported while `f` runs (and on, until the call ends), if asked: exporting a
        // bytearray runs no Python code.
        let pins = || self.exports((0..n).filter(|_| pin), |_| Ok(())).map(drop);
        // SAFETY: bytearrays the list owns, GIL held and no Python code run while `f` runs
        // (or pinned): nothing else touches them; two share memory only if they are the
        // same object (then at the same address).
        unsafe { windows_over(regions, need, pins, f) }
    }

    fn pinned<T>(
        &mut self,
        n: usize,
        f: impl for<'w> FnOnce(&mut [Window<'w>]) -> T,
    ) -> PyResult<T> {
        // Each bytearray exported until after `f` (exporting a bytearray runs no Python
        // code: no other buffer changes meanwhile); anything else is exported already.
        // The core pins what it read with `bufs` just before, no Python code run between.
        debug_assert!(self.read_at == PYTHON_RAN.with(Cell::get), "stale buffers");
        let mut pins = Views::new(self.py);
        for (i, b) in self.bufs[..n].iter().enumerate() {
            if b.holder.is_bytearray() {
                pins.export(&b.holder.obj, true, Name(self.name, Some(i)))?;
            }
        }
        // SAFETY: pinned until after `f`; the core checked the buffers distinct before.
        Ok(unsafe { on_windows(&mut self.bufs[..n], f) })
    }

    fn reorder(&mut self) -> PyResult<()> {
        let Seq::List(l) = self.seq else {
            return Ok(());
        };
        for (i, b) in self.bufs.iter().enumerate() {
            if list_get(l, i) != Some(b.holder.obj.as_ptr()) {
                l.set_item(i, &b.holder.obj)?;
            }
        }
        Ok(())
    }

    fn pinned_bytes(&mut self, idx: impl Iterator<Item = usize>) -> PyResult<Vec<&[u8]>> {
        self.exports(idx, |_| Ok(()))
    }
}

/// `sizes[i]` read as a size: `TypeError` for an entry that is not an int; a negative one
/// is `negative_argument`, one too large for any buffer is kept so that the core names
/// it. `known` is the int object last read and its value: recv_multiple stores one
/// shared int for equal sizes, so a list it filled converts one or two objects, not 45.
#[inline(always)]
pub(crate) fn read_size<'py>(
    sizes: Seq<'_, 'py>,
    i: usize,
    known: &mut Option<(Bound<'py, PyAny>, usize)>,
) -> PyResult<usize> {
    // A list's entry is compared with the last int read before any reference is taken.
    if let (Seq::List(l), Some((o, v))) = (sizes, known.as_ref()) {
        if list_get(l, i) == Some(o.as_ptr()) {
            return Ok(*v);
        }
    }
    let item = sizes.get(i, "sizes")?;
    if let Some((_, v)) = known.as_ref().filter(|(o, _)| o.is(&item)) {
        return Ok(*v);
    }
    let v = size_of(&item, i)?;
    *known = Some((item, v));
    Ok(v)
}

#[cold]
fn size_of(item: &Bound<'_, PyAny>, i: usize) -> PyResult<usize> {
    match item.extract::<i128>() {
        Ok(v) => Ok(non_negative(v, Name("sizes", Some(i)))?),
        Err(_) if item.is_instance_of::<PyInt>() => Ok(usize::MAX),
        Err(e) if e.is_instance_of::<PyTypeError>(item.py()) => {
            Err(type_error(Name("sizes", Some(i)), "an int", item))
        }
        Err(e) => Err(e), // what an `__index__` raised
    }
}

thread_local! {
    /// The sizes of [`filling_sizes`], reused between calls.
    static SIZES: Cell<Vec<usize>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on sizes for the Python list `sizes` (`TypeError` if it is not a list), as
/// many zeros as it has entries, then stores the first `n` (what `f` returns) into it.
/// Storing may run Python code: `f` lets go of its buffers first (it takes them).
pub(crate) fn filling_sizes(
    sizes: &Bound<'_, PyAny>,
    f: impl FnOnce(&mut [usize]) -> PyResult<usize>,
) -> PyResult<usize> {
    let list = list(sizes, "sizes", "a list")?;
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
/// Runs `f` on the list `bufs` (its bytearrays may grow), `offset` and the first `count`
/// (default all) of the list `sizes`, then stores the sizes `f` left: a batch changed in
/// place.
pub(crate) fn in_place<T>(
    bufs: &Bound<'_, PyAny>,
    offset: i64,
    sizes: &Bound<'_, PyAny>,
    count: Option<i64>,
    f: impl FnOnce(&mut PyBufs<'_, '_>, usize, &mut [usize]) -> PyResult<T>,
) -> PyResult<T> {
    let offset = non_negative(offset, "offset")?;
    let count = count.map(|c| non_negative(c, "count")).transpose()?;
    let list = list(sizes, "sizes", "a list of int")?;
    let mut b = PyBufs::new(bufs, "bufs", true, true)?;
    let n = batch_len(b.count(), Some(list.len()), count)?;
    let mut v = Seq::List(list).read_sizes(n)?;
    let out = f(&mut b, offset, &mut v)?;
    drop(b);
    store_sizes(list, &v)?;
    Ok(out)
}

fn store_sizes<'py>(sizes: &Bound<'py, PyList>, values: &[usize]) -> PyResult<()> {
    let py = sizes.py();
    // The int object last stored or found, and its value: a reused list is checked by
    // identity, without converting every entry.
    let mut last: Option<(usize, Bound<'py, PyAny>)> = None;
    for (i, &v) in values.iter().enumerate() {
        // The entry is read afresh each time: storing may run Python code.
        let Some(p) = list_get(sizes, i) else {
            let m = "sizes was shortened during the call";
            return Err(Error::fixed(ErrorKind::SizesChanged, m).into());
        };
        if last
            .as_ref()
            .is_some_and(|(lv, o)| *lv == v && o.as_ptr() == p)
        {
            continue;
        }
        // SAFETY: the list's live entry, no Python code run since it was read; a new
        // reference is taken at once.
        let cur = unsafe { Borrowed::from_ptr(py, p) }.to_owned();
        let equal = cur.is_exact_instance_of::<PyInt>() && cur.extract::<usize>().ok() == Some(v);
        let obj = match last.take() {
            _ if equal => cur,
            Some((lv, o)) if lv == v => o,
            _ => v.into_pyobject(py)?.into_any(),
        };
        if obj.as_ptr() != p {
            sizes.set_item(i, &obj)?;
        }
        last = Some((v, obj));
    }
    Ok(())
}
