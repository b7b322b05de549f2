//! Python classes and functions of the engine: `VirtioNetHdr`, `gso_split`, `GroTable`,
//! `handle_gro` and the constants.

use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyList, PySequence, PyTuple};
use pyo3::Borrowed;

use super::buffers::{
    buf_span, bufs_of, bytearray_outputs, check_bufs_disjoint, check_distinct_bytearrays,
    check_spans_disjoint, list_item, with_fixed, Buf, Fixed, Views,
};
use super::device::to_py;
use super::gil;
use crate::device::batch::Split;
use crate::engine::{self as eng, ErrorKind, VirtioNetHdr};

/// Turns an engine error (a bad packet, header or argument) into `ValueError`, with the
/// kind's name as its `kind` attribute and the buffer or packet index (or `None`) as
/// `index`.
#[cold]
pub(crate) fn value_error(e: eng::Error) -> PyErr {
    Python::attach(|py| {
        let (kind, index) = (e.kind().as_str(), e.index());
        let err = PyValueError::new_err(e.into_message());
        let v = err.value(py);
        // Setting an attribute of a fresh exception fails only without memory; the
        // ValueError is raised all the same.
        let _ = v.setattr(intern!(py, "kind"), kind);
        let _ = v.setattr(intern!(py, "index"), index);
        err
    })
}

/// A `ValueError` the binding raises itself for an argument, with its kind (as
/// [`value_error`]): `index` is the buffer it is about, if any.
#[cold]
pub(crate) fn kind_error(kind: ErrorKind, index: Option<usize>, msg: String) -> PyErr {
    let e = eng::Error::new(kind, msg);
    value_error(match index {
        Some(i) => e.at(i),
        None => e,
    })
}

/// `v` as a size, or `ValueError` naming the argument when it is negative.
pub(crate) fn non_negative(v: isize, name: &str) -> PyResult<usize> {
    usize::try_from(v).map_err(|_| {
        kind_error(
            ErrorKind::NegativeArgument,
            None,
            format!("{name} must be >= 0, got {v}"),
        )
    })
}

/// The 10-byte `struct virtio_net_hdr` that precedes each packet on a TUN device with
/// offload (``IFF_VNET_HDR``), in native byte order.
///
/// Fields: ``flags`` (``VIRTIO_NET_HDR_F_*``), ``gso_type`` (``VIRTIO_NET_HDR_GSO_*``),
/// ``hdr_len``, ``gso_size``, ``csum_start``, ``csum_offset``. A value out of its field's
/// range (``flags``/``gso_type`` 0..=255, the others 0..=65535, negatives included) raises
/// ``OverflowError`` naming the field and the range; a non-int raises ``TypeError``.
#[pyclass(name = "VirtioNetHdr", module = "tunoffload", eq, from_py_object)]
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct PyVirtioNetHdr(VirtioNetHdr);

impl PyVirtioNetHdr {
    pub(crate) fn get(&self) -> VirtioNetHdr {
        self.0
    }
}

/// The header's field names, indexed by [`Field`]'s `F`.
const FIELD_NAMES: [&str; 6] = [
    "flags",
    "gso_type",
    "hdr_len",
    "gso_size",
    "csum_start",
    "csum_offset",
];

/// A header field's integer type.
trait FieldInt: for<'a, 'py> FromPyObject<'a, 'py, Error = PyErr> + Copy {
    const MAX: u16;
}
impl FieldInt for u8 {
    const MAX: u16 = u8::MAX as u16;
}
impl FieldInt for u16 {
    const MAX: u16 = u16::MAX;
}

/// The value of field `FIELD_NAMES[F]`, range-checked on extraction: `OverflowError`
/// ("gso_size must be in 0..=65535, got 70000") or `TypeError`, naming the field.
#[derive(Clone, Copy)]
struct Field<const F: usize, T>(T);

impl<'a, 'py, const F: usize, T: FieldInt> FromPyObject<'a, 'py> for Field<F, T> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        obj.extract::<T>()
            .map(Field)
            .map_err(|e| field_error(obj.py(), FIELD_NAMES[F], T::MAX, &obj, &e))
    }
}

/// The error for a field value `obj` that did not extract (`e`).
#[cold]
fn field_error(py: Python<'_>, name: &str, max: u16, obj: &Bound<'_, PyAny>, e: &PyErr) -> PyErr {
    if obj.is_instance_of::<PyInt>() || e.is_instance_of::<PyOverflowError>(py) {
        PyOverflowError::new_err(format!("{name} must be in 0..={max}, got {obj}"))
    } else {
        let ty = obj
            .get_type()
            .name()
            .map_or_else(|_| "?".to_owned(), |n| n.to_string());
        PyTypeError::new_err(format!("{name} must be an int in 0..={max}, not {ty}"))
    }
}

/// The class's methods, with a getter and a range-checked setter for each field of the
/// wrapped header.
macro_rules! methods_with_fields {
    ($($name:ident / $setter:ident: $t:ty = $f:literal),*; $($method:item)*) => {
        #[pymethods]
        impl PyVirtioNetHdr {
            $(
                #[getter]
                fn $name(&self) -> $t {
                    self.0.$name
                }
                #[setter]
                fn $setter(&mut self, value: Field<$f, $t>) {
                    self.0.$name = value.0;
                }
            )*
            $($method)*
        }
    };
}

methods_with_fields! {
    flags / set_flags: u8 = 0,
    gso_type / set_gso_type: u8 = 1,
    hdr_len / set_hdr_len: u16 = 2,
    gso_size / set_gso_size: u16 = 3,
    csum_start / set_csum_start: u16 = 4,
    csum_offset / set_csum_offset: u16 = 5;

    #[new]
    #[pyo3(
        signature = (flags=Field(0), gso_type=Field(0), hdr_len=Field(0), gso_size=Field(0), csum_start=Field(0), csum_offset=Field(0)),
        text_signature = "(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0)"
    )]
    fn new(
        flags: Field<0, u8>,
        gso_type: Field<1, u8>,
        hdr_len: Field<2, u16>,
        gso_size: Field<3, u16>,
        csum_start: Field<4, u16>,
        csum_offset: Field<5, u16>,
    ) -> Self {
        PyVirtioNetHdr(VirtioNetHdr {
            flags: flags.0,
            gso_type: gso_type.0,
            hdr_len: hdr_len.0,
            gso_size: gso_size.0,
            csum_start: csum_start.0,
            csum_offset: csum_offset.0,
        })
    }

    /// Decodes the first 10 bytes of a bytes-like object (``ValueError`` if shorter).
    #[staticmethod]
    fn decode(py: Python<'_>, buf: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut views = Views::with_capacity(py, 1);
        let r = views.read(buf, &|| "buf".to_owned())?;
        // SAFETY: the export is held by `views` for this scope; nothing writes to it.
        let bytes = unsafe { r.slice() };
        Ok(PyVirtioNetHdr(VirtioNetHdr::decode(bytes).map_err(value_error)?))
    }

    /// Writes the 10 bytes at the start of a writable bytes-like object.
    fn encode(&self, py: Python<'_>, buf: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut views = Views::with_capacity(py, 1);
        let r = views.write(buf, &|| "buf".to_owned())?;
        // SAFETY: the writable export is held by `views`; no other reference exists.
        self.get()
            .encode(unsafe { r.slice_mut() })
            .map_err(value_error)
    }

    /// The header's 10 bytes, native byte order.
    fn __bytes__<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.get().to_bytes())
    }

    /// ``VirtioNetHdr(flags=..., gso_type=..., ...)`` with every field.
    fn __repr__(&self) -> String {
        let h = &self.0;
        format!(
            "VirtioNetHdr(flags={}, gso_type={}, hdr_len={}, gso_size={}, csum_start={}, csum_offset={})",
            h.flags, h.gso_type, h.hdr_len, h.gso_size, h.csum_start, h.csum_offset
        )
    }

    fn __copy__(&self) -> Self {
        *self
    }

    fn __deepcopy__(&self, _memo: &Bound<'_, PyAny>) -> Self {
        *self
    }
}

/// Splits and coalescings of at least this many bytes release the GIL while another
/// thread is in a system call (their buffers pinned by an export each); smaller ones are
/// over before a hand-off would be.
pub(crate) const DETACH_BYTES: usize = 16 * 1024;

/// A split that failed: the exception, and whether the caller's buffers (not the packet)
/// were at fault, so that the packet is intact.
pub(crate) struct SplitFailed {
    pub(crate) err: PyErr,
    pub(crate) keep: bool,
}

impl From<SplitFailed> for PyErr {
    fn from(e: SplitFailed) -> PyErr {
        e.err
    }
}

fn buffers_error(err: PyErr) -> SplitFailed {
    SplitFailed { err, keep: true }
}

/// Splits `packet` (already in Rust memory, held for the call) as `split` planned it into
/// the Python sequence `out_bufs` (named `name` in messages), segment i at `out_offset`,
/// then fills `sizes`. With `grow` a bytearray too small is grown (`recv_multiple`), and
/// with `fit` each ends exactly at its packet. With `detach` (`recv_multiple`) a split of
/// at least [`DETACH_BYTES`] into a list of large enough bytearrays, while another thread
/// is in a system call ([`gil::others_in_syscalls`]), runs with the GIL released, each
/// output pinned by an export (the other direction of a forwarder runs meanwhile);
/// anything else runs with the GIL held throughout, the outputs written in
/// place without pins, since no other thread runs meanwhile. (`gso_split` does not
/// detach: the exports and the hand-off would add about a third to its 2-3 µs.)
#[allow(clippy::too_many_arguments)]
pub(crate) fn split_to_py(
    py: Python<'_>,
    split: &Split,
    packet: &[u8],
    out_bufs: &Bound<'_, PyAny>,
    sizes: &Bound<'_, PyList>,
    out_offset: usize,
    grow: bool,
    fit: bool,
    detach: bool,
    name: &str,
) -> Result<usize, SplitFailed> {
    let n = split.count();
    if !fit {
        if let Ok(list) = out_bufs.cast::<PyList>() {
            // The usual case: a list of bytearrays large enough, read in place.
            let p = packet.as_ptr() as usize;
            let need = |i: usize| out_offset.saturating_add(split.size(i));
            let written = with_fixed(|outs| {
                if !bytearray_outputs(list, n, &need, (p, p + packet.len()), outs)
                    || sizes.len() < n
                {
                    return Ok(None);
                }
                if !detach || packet.len() < DETACH_BYTES || !gil::others_in_syscalls() {
                    return Ok(Some(split.write_packet(packet, outs, out_offset, false)));
                }
                // A large split runs without the GIL, so that another thread (the other
                // direction of a forwarder) is not kept waiting for it: each output is
                // exported first, which keeps it from being resized or freed meanwhile.
                let mut pins = Views::with_capacity(py, n);
                for i in 0..n {
                    let item = list_item(list, i).ok_or_else(|| {
                        buffers_error(PyValueError::new_err("internal: bufs shrank"))
                    })?;
                    // An exact bytearray (checked): its export runs no Python code, so
                    // the regions read above are still the ones it exports.
                    pins.write(&item, &|| format!("{name}[{i}]"))
                        .map_err(buffers_error)?;
                }
                Ok(Some(py.detach(|| {
                    split.write_packet(packet, outs, out_offset, false)
                })))
            })?;
            if let Some(w) = written {
                return written_sizes(py, split, sizes, w);
            }
        }
    }
    let have = out_bufs.len().map_err(buffers_error)?;
    let m = n.min(have);
    let mut views = Views::with_capacity(py, m);
    let mut bufs =
        bufs_of(&mut views, out_bufs, m, None, out_offset, grow, name).map_err(buffers_error)?;
    // Before anything grows (see there); the ranges are compared once they are final.
    let all_bytearrays =
        check_distinct_bytearrays(&bufs, &|i| format!("{name}[{i}]")).map_err(buffers_error)?;
    split
        .prepare_named(&mut bufs, sizes.len(), out_offset, name)
        .map_err(|e| SplitFailed {
            err: to_py(py, e.error),
            keep: e.keep,
        })?;
    // The written ranges must not share a byte with each other (the same bytearray twice,
    // views of one buffer) nor with the packet (a view of an output as original_buffer).
    let p = packet.as_ptr() as usize;
    let (ps, pe) = (p, p + packet.len());
    let part = |i: usize, b: &Buf<'_>| b.span(out_offset, out_offset + split.size(i));
    if let Some(i) = bufs.iter().enumerate().position(|(i, b)| {
        let (s, e) = part(i, b);
        s < pe && ps < e
    }) {
        return Err(buffers_error(kind_error(
            ErrorKind::OverlappingBuffers,
            Some(i),
            format!("{name}[{i}] and the packet share memory"),
        )));
    }
    if !all_bytearrays {
        check_spans_disjoint(&bufs, &part, &|i| format!("{name}[{i}]")).map_err(buffers_error)?;
    }
    let w = split.write_packet(packet, &mut bufs, out_offset, fit);
    // Storing the sizes may run Python code: the outputs are let go of first.
    drop(bufs);
    drop(views);
    written_sizes(py, split, sizes, w)
}

/// [`split_to_py`]'s outputs as Python passed them: `bufs` (named `name`) a sequence,
/// `sizes` a list; `TypeError` otherwise.
pub(crate) fn split_args<'a, 'py>(
    bufs: &Bound<'py, PyAny>,
    sizes: &'a Bound<'py, PyAny>,
    name: &str,
) -> PyResult<&'a Bound<'py, PyList>> {
    if bufs.cast::<PySequence>().is_err() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be a sequence of writable buffers"
        )));
    }
    sizes
        .cast::<PyList>()
        .map_err(|_| PyTypeError::new_err("sizes must be a list"))
}

/// The end of both paths of [`split_to_py`]: `written` packets (or the write's error),
/// their sizes stored into `sizes`. A failure here is not the buffers' (not `keep`).
fn written_sizes(
    py: Python<'_>,
    split: &Split,
    sizes: &Bound<'_, PyList>,
    written: Result<usize, crate::device::Error>,
) -> Result<usize, SplitFailed> {
    let fail = |err| SplitFailed { err, keep: false };
    let written = written.map_err(|e| fail(to_py(py, e)))?;
    let last = split.size(written.saturating_sub(1));
    set_sizes(sizes, written, split.size(0), last).map_err(fail)?;
    Ok(written)
}

/// Stores a split's sizes into the first `n` entries of `sizes`: `common` for entries
/// `0..n-1`, `last` for entry `n-1`. Entries that already hold the value are left alone (a
/// reused list usually does), and one int object is shared per value.
pub(crate) fn set_sizes<'py>(
    sizes: &Bound<'py, PyList>,
    n: usize,
    common: usize,
    last: usize,
) -> PyResult<()> {
    // An int object known to hold a value (owned, so its address stays its own):
    // consecutive equal sizes are one shared object, so a reused list is checked by
    // identity, without converting every entry.
    let mut known: Option<(usize, Bound<'py, PyAny>)> = None;
    let mut known_key = (usize::MAX, std::ptr::null_mut());
    for i in 0..n {
        let v = if i + 1 == n { last } else { common };
        // SAFETY: the list's length and item are read afresh each time through the C
        // API's macros (GIL held), since `store_size` may run Python code.
        let current = unsafe {
            let l = sizes.as_ptr();
            if i >= ffi::PyList_GET_SIZE(l) as usize {
                // Shortened by Python code run while storing an earlier entry.
                return Err(kind_error(
                    ErrorKind::SizesChanged,
                    None,
                    "sizes was shortened during the call".to_owned(),
                ));
            }
            ffi::PyList_GET_ITEM(l, i as ffi::Py_ssize_t)
        };
        if known_key != (v, current) {
            let obj = store_size(sizes, i, v, current, known.take())?;
            known_key = (v, obj.as_ptr());
            known = Some((v, obj));
        }
    }
    Ok(())
}

/// `set_sizes`'s slow path: `sizes[i] = v` unless `current` (the entry) already equals it;
/// `known` is the last int object stored, with its value. Returns the int object now there.
#[cold]
fn store_size<'py>(
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
    if cur.is_exact_instance_of::<pyo3::types::PyInt>() && cur.extract::<usize>().ok() == Some(v) {
        return Ok(cur);
    }
    let obj = match known {
        Some((kv, o)) if kv == v => o,
        _ => v.into_pyobject(py)?.into_any(),
    };
    sizes.set_item(i, &obj)?;
    Ok(obj)
}

/// Splits a GSO super-packet read from a TUN device into the packets the Linux kernel
/// would send, byte for byte.
///
/// ``packet`` is the IP packet after the 10-byte virtio header (any bytes-like object; not
/// modified) and ``hdr`` its :class:`VirtioNetHdr`. Segment *i* is written to
/// ``out_bufs[i][out_offset:out_offset + sizes[i]]`` and ``sizes[i]`` is set; returns the
/// number of segments. ``is_v6=None`` takes the IP version from the packet.
///
/// ``GSO_NONE`` gives the packet itself, its checksum completed when ``F_NEEDS_CSUM`` is set.
/// ``hdr_len`` is never trusted. Any malformed packet or header, too few or too small
/// ``out_bufs``, or a short ``sizes`` raises ``ValueError`` before anything is written.
/// The GIL is held throughout: a 64 KiB split takes a few microseconds, less than a GIL
/// hand-off between threads costs.
#[pyfunction]
#[pyo3(signature = (packet, hdr, out_bufs, sizes, out_offset=0, is_v6=None))]
fn gso_split(
    py: Python<'_>,
    packet: &Bound<'_, PyAny>,
    hdr: PyRef<'_, PyVirtioNetHdr>,
    out_bufs: &Bound<'_, PyAny>,
    sizes: &Bound<'_, PyAny>,
    out_offset: isize,
    is_v6: Option<bool>,
) -> PyResult<usize> {
    let out_offset = non_negative(out_offset, "out_offset")?;
    let mut views = Views::with_capacity(py, 1);
    let pkt = views.read(packet, &|| "packet".to_owned())?;
    // SAFETY: the export is held by `views` until the end of this function; the outputs
    // written meanwhile are checked not to overlap it.
    let bytes = unsafe { pkt.slice() };
    let split = Split::plan_packet(bytes, &hdr.get(), is_v6).map_err(|e| to_py(py, e))?;
    let sizes = split_args(out_bufs, sizes, "out_bufs")?;
    Ok(split_to_py(
        py, &split, bytes, out_bufs, sizes, out_offset, false, false, false, "out_bufs",
    )?)
}

/// Reusable coalescing state for :func:`handle_gro` (one per thread). Nothing carries
/// over from one call to the next; its memory is reused.
#[pyclass(name = "GroTable", module = "tunoffload")]
#[derive(Default)]
pub(crate) struct PyGroTable {
    pub(crate) inner: eng::GroTable,
}

#[pymethods]
impl PyGroTable {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    fn __repr__(&self) -> String {
        "GroTable()".to_owned()
    }
}

/// Runs GRO over the Python list `bufs`: bytearrays grow, list entries may be swapped.
/// Returns the indices to write and where each packet ends (`bufs[i][offset-10:end]` is
/// then its virtio header and packet).
///
/// `lens`: `None` takes every buffer whole (the packet is `bufs[i][offset:]`, and a grown
/// buffer is resized to fit exactly); `Some(lens)` takes packet i as
/// `bufs[i][offset:offset + lens[i]]` for the first `lens.len()` buffers, growing within
/// the buffer where it can.
///
/// Runs with the GIL held (growing a bytearray needs it, and holding it is what keeps any
/// other thread from resizing a buffer while Rust works on it), except for a large batch
/// in sized mode whose buffers can all hold any coalesced packet: see [`gro_detached`].
pub(crate) fn gro_py(
    py: Python<'_>,
    bufs: &Bound<'_, PyList>,
    offset: usize,
    lens: Option<&[usize]>,
    table: &mut eng::GroTable,
    can_udp_gro: bool,
) -> PyResult<Vec<(usize, usize)>> {
    let n = lens.map_or(bufs.len(), <[usize]>::len);
    let mut views = Views::with_capacity(py, n);
    let mut gbufs = bufs_of(&mut views, bufs.as_any(), n, lens, offset, true, "bufs")?;
    check_bufs_disjoint(&gbufs, &|_, b| buf_span(b), &|i| format!("bufs[{i}]"))?;
    // Sized mode, a large batch, and every buffer able to hold any coalesced packet in
    // place (so none would be resized): coalesce without the GIL, the buffers pinned.
    let detach = gil::others_in_syscalls()
        && lens.is_some_and(|l| l.iter().sum::<usize>() >= DETACH_BYTES)
        && gbufs
            .iter()
            .all(|b| b.cap() >= offset.saturating_add(MAX_COALESCED));
    if detach {
        return gro_detached(py, bufs, &gbufs, offset, table, can_udp_gro);
    }
    let out = crate::device::batch::coalesce(&mut gbufs, offset, table, can_udp_gro)
        .map_err(|e| to_py(py, e))?;
    let written = out.iter().map(|&i| (i, gbufs[i].len())).collect();
    if table.swapped() {
        for (i, b) in gbufs.iter().enumerate() {
            let same = list_item(bufs, i).is_some_and(|o| o.is(b.object()));
            if !same {
                bufs.set_item(i, b.object())?;
            }
        }
    }
    Ok(written)
}

/// The largest packet GRO makes (an IP packet's 16-bit length).
const MAX_COALESCED: usize = 65535;

/// [`gro_py`] with the GIL released: each bytearray pinned by an export (any other buffer
/// is held by the export `bufs_of` made), list entries put back afterwards in the order
/// GRO left them. Every buffer holds `offset + MAX_COALESCED` bytes, so GRO decides as it
/// would with the GIL (nothing needs to grow).
fn gro_detached(
    py: Python<'_>,
    bufs: &Bound<'_, PyList>,
    gbufs: &[Buf<'_>],
    offset: usize,
    table: &mut eng::GroTable,
    can_udp_gro: bool,
) -> PyResult<Vec<(usize, usize)>> {
    let mut pins = Views::with_capacity(py, gbufs.len());
    with_fixed(|fixed| {
        for (i, b) in gbufs.iter().enumerate() {
            // A bytearray's export runs no Python code: no other buffer changes meanwhile.
            let r = if b.is_bytearray() {
                pins.write(b.object(), &|| format!("bufs[{i}]"))?
            } else {
                b.region()
            };
            fixed.push(Fixed::sized(r, b.len()));
        }
        let out = py
            .detach(|| crate::device::batch::coalesce(fixed, offset, table, can_udp_gro))
            .map_err(|e| to_py(py, e))?;
        let written = out.iter().map(|&i| (i, fixed[i].len())).collect();
        drop(pins);
        if table.swapped() {
            // Where GRO moved each buffer: their regions are disjoint and none is empty,
            // so a start address names one.
            let mut from: Vec<(usize, usize)> = (gbufs.iter().enumerate())
                .map(|(j, b)| (b.region().addr(), j))
                .collect();
            from.sort_unstable();
            for (k, f) in fixed.iter().enumerate() {
                let j = from
                    .binary_search_by_key(&f.addr(), |&(a, _)| a)
                    .map_err(|_| PyValueError::new_err("internal: a coalesced buffer is lost"))?;
                let obj = gbufs[from[j].1].object();
                if !list_item(bufs, k).is_some_and(|o| o.is(obj)) {
                    bufs.set_item(k, obj)?;
                }
            }
        }
        Ok(written)
    })
}

/// Coalesces a batch of packets for writing to a TUN device with offload.
///
/// ``bufs`` is a list of ``bytearray``: ``bufs[i][offset:]`` is one IP packet and the
/// ``offset >= 10`` bytes before it are headroom for its virtio header. In-order segments
/// of one TCP flow (and of one UDP flow when ``can_udp_gro``) are merged by the rules of
/// the kernel's GRO. Returns the indices of the packets to write, in order; for each,
/// ``bufs[i][offset-10:]`` is the virtio header followed by the packet. Bytearrays may
/// grow and list entries may be swapped. ``ValueError`` for a bad offset or a buffer with
/// no packet, raised before any buffer is changed.
#[pyfunction]
#[pyo3(signature = (bufs, offset, table, can_udp_gro=true))]
fn handle_gro<'py>(
    py: Python<'py>,
    bufs: &Bound<'py, PyAny>,
    offset: isize,
    mut table: PyRefMut<'_, PyGroTable>,
    can_udp_gro: bool,
) -> PyResult<Bound<'py, PyList>> {
    let bufs = bufs
        .cast::<PyList>()
        .map_err(|_| PyTypeError::new_err("bufs must be a list of bytearray"))?;
    let offset = non_negative(offset, "offset")?;
    let out = gro_py(py, bufs, offset, None, &mut table.inner, can_udp_gro)?;
    PyList::new(py, out.iter().map(|&(i, _)| i))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    use crate::engine::virtio::*;
    m.add("VIRTIO_NET_HDR_LEN", VIRTIO_NET_HDR_LEN)?;
    m.add("IDEAL_BATCH_SIZE", IDEAL_BATCH_SIZE)?;
    m.add("VIRTIO_NET_HDR_GSO_NONE", VIRTIO_NET_HDR_GSO_NONE)?;
    m.add("VIRTIO_NET_HDR_GSO_TCPV4", VIRTIO_NET_HDR_GSO_TCPV4)?;
    m.add("VIRTIO_NET_HDR_GSO_UDP", VIRTIO_NET_HDR_GSO_UDP)?;
    m.add("VIRTIO_NET_HDR_GSO_TCPV6", VIRTIO_NET_HDR_GSO_TCPV6)?;
    m.add("VIRTIO_NET_HDR_GSO_UDP_L4", VIRTIO_NET_HDR_GSO_UDP_L4)?;
    m.add("VIRTIO_NET_HDR_GSO_ECN", VIRTIO_NET_HDR_GSO_ECN)?;
    m.add("VIRTIO_NET_HDR_F_NEEDS_CSUM", VIRTIO_NET_HDR_F_NEEDS_CSUM)?;
    m.add("VIRTIO_NET_HDR_F_DATA_VALID", VIRTIO_NET_HDR_F_DATA_VALID)?;
    m.add("UDP_MAX_SEGMENTS", eng::UDP_MAX_SEGMENTS)?;
    let kinds = eng::ErrorKind::ALL.iter().map(|k| k.as_str());
    m.add("ERROR_KINDS", PyTuple::new(m.py(), kinds)?)?;
    m.add_class::<PyVirtioNetHdr>()?;
    m.add_class::<PyGroTable>()?;
    m.add_function(wrap_pyfunction!(gso_split, m)?)?;
    m.add_function(wrap_pyfunction!(handle_gro, m)?)?;
    Ok(())
}
