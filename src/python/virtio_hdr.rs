//! The Python class `VirtioNetHdr` (the engine's `VirtioNetHdr` with range-checked
//! fields) and the function `gso_split` it drives (`engine::Split` into Python buffers).

use pyo3::exceptions::PyOverflowError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt};
use pyo3::Borrowed;

use super::batch::{filling_sizes, PyBufs};
use super::buffers::Views;
use super::errors::type_error;
use crate::engine::buffer::{non_negative, Name};
use crate::engine::{Failed, Split, VirtioNetHdr};
use crate::hooks::Direct;

/// The 10-byte `struct virtio_net_hdr` that precedes each packet on a TUN device with
/// offload (``IFF_VNET_HDR``), in native byte order.
///
/// Fields: ``flags`` (``VIRTIO_NET_HDR_F_*``), ``gso_type`` (``VIRTIO_NET_HDR_GSO_*``),
/// ``hdr_len``, ``gso_size``, ``csum_start``, ``csum_offset``. A value out of its field's
/// range (``flags``/``gso_type`` 0..=255, the others 0..=65535, negatives included) raises
/// ``OverflowError`` naming the field and the range; a non-int raises ``TypeError``.
#[pyclass(name = "VirtioNetHdr", module = "tunoffload", eq, from_py_object)]
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct PyVirtioNetHdr(pub(crate) VirtioNetHdr);

/// The value of field `VirtioNetHdr::FIELDS[F]`, range-checked on extraction:
/// `OverflowError` ("gso_size must be in 0..=65535, got 70000") or `TypeError`, naming the
/// field.
#[derive(Clone, Copy)]
struct Field<const F: usize>(u16);

impl<'a, 'py, const F: usize> FromPyObject<'a, 'py> for Field<F> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let (name, max) = VirtioNetHdr::FIELDS[F];
        match obj.extract::<i128>() {
            Ok(v) if (0..=i128::from(max)).contains(&v) => Ok(Field(v as u16)),
            Err(e)
                if !obj.is_instance_of::<PyInt>()
                    && !e.is_instance_of::<PyOverflowError>(obj.py()) =>
            {
                Err(type_error(name, &format!("an int in 0..={max}"), &obj))
            }
            _ => Err(PyOverflowError::new_err(format!(
                "{name} must be in 0..={max}, got {}",
                &*obj
            ))),
        }
    }
}

/// The class's methods, with a getter and a range-checked setter for each field of the
/// wrapped header.
macro_rules! methods_with_fields {
    ($($name:ident / $setter:ident = $f:literal),*; $($method:item)*) => {
        #[pymethods]
        impl PyVirtioNetHdr {
            $(
                #[getter]
                fn $name(&self) -> u16 {
                    self.0.fields()[$f]
                }
                #[setter]
                fn $setter(&mut self, value: Field<$f>) {
                    self.0.set_field($f, value.0);
                }
            )*
            $($method)*
        }
    };
}

methods_with_fields! {
    flags / set_flags = 0,
    gso_type / set_gso_type = 1,
    hdr_len / set_hdr_len = 2,
    gso_size / set_gso_size = 3,
    csum_start / set_csum_start = 4,
    csum_offset / set_csum_offset = 5;

    #[new]
    #[pyo3(
        signature = (flags=Field(0), gso_type=Field(0), hdr_len=Field(0), gso_size=Field(0), csum_start=Field(0), csum_offset=Field(0)),
        text_signature = "(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0)"
    )]
    fn new(
        flags: Field<0>,
        gso_type: Field<1>,
        hdr_len: Field<2>,
        gso_size: Field<3>,
        csum_start: Field<4>,
        csum_offset: Field<5>,
    ) -> Self {
        let f = [flags.0, gso_type.0, hdr_len.0, gso_size.0, csum_start.0, csum_offset.0];
        PyVirtioNetHdr(VirtioNetHdr::from_fields(f))
    }

    /// Decodes the first 10 bytes of a bytes-like object (``ValueError`` if shorter).
    #[staticmethod]
    fn decode(py: Python<'_>, buf: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut views = Views::new(py);
        // SAFETY: the export is held by `views` for this scope; nothing writes to it.
        let bytes = unsafe { views.export(buf, false, Name("buf", None))?.as_ref() };
        Ok(PyVirtioNetHdr(VirtioNetHdr::decode(bytes)?))
    }

    /// Writes the 10 bytes at the start of a writable bytes-like object.
    fn encode(&self, py: Python<'_>, buf: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut views = Views::new(py);
        // SAFETY: the writable export is held by `views`; no other reference exists.
        Ok(self.0.encode(unsafe { views.export(buf, true, Name("buf", None))?.as_mut() })?)
    }

    /// The header's 10 bytes, native byte order.
    fn __bytes__<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.to_bytes())
    }

    /// ``VirtioNetHdr(flags=..., gso_type=..., ...)`` with every field.
    fn __repr__(&self) -> String {
        self.0.to_string()
    }

    fn __copy__(&self) -> Self {
        *self
    }

    fn __deepcopy__(&self, _memo: &Bound<'_, PyAny>) -> Self {
        *self
    }
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
pub(crate) fn gso_split(
    py: Python<'_>,
    packet: &Bound<'_, PyAny>,
    hdr: PyRef<'_, PyVirtioNetHdr>,
    out_bufs: &Bound<'_, PyAny>,
    sizes: &Bound<'_, PyAny>,
    out_offset: i64,
    is_v6: Option<bool>,
) -> PyResult<usize> {
    let off = non_negative(out_offset, "out_offset")?;
    let mut views = Views::new(py);
    let pkt = match packet.cast::<PyBytes>() {
        Ok(bytes) => bytes.as_bytes(), // immutable, and held by the caller for the call
        // SAFETY: the export is held by `views` until the split is done; the core checks
        // that the outputs written meanwhile do not overlap it.
        Err(_) => unsafe { views.export(packet, false, Name("packet", None))?.as_ref() },
    };
    let split = Split::plan_packet(pkt, &hdr.0, is_v6)?;
    let mut outs = PyBufs::new(out_bufs, "out_bufs", false, false)?;
    filling_sizes(sizes, move |sz| {
        let r = split.deliver(pkt, &mut outs, sz, off, false, "out_bufs", &mut Direct);
        drop(views);
        r.map_err(Failed::into_error)
    })
}
