//! The Python class `VirtioNetHdr`: the engine's `VirtioNetHdr` with range-checked
//! fields.

use pyo3::exceptions::{PyOverflowError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt};
use pyo3::Borrowed;

use super::buffers::{Name, Views};
use crate::engine::VirtioNetHdr;

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

/// The header's fields, indexed by [`Field`]'s `F`: name and largest value.
const FIELDS: [(&str, u16); 6] = [
    ("flags", 0xff),
    ("gso_type", 0xff),
    ("hdr_len", 0xffff),
    ("gso_size", 0xffff),
    ("csum_start", 0xffff),
    ("csum_offset", 0xffff),
];

/// The value of field `FIELDS[F]`, range-checked on extraction: `OverflowError`
/// ("gso_size must be in 0..=65535, got 70000") or `TypeError`, naming the field.
#[derive(Clone, Copy)]
struct Field<const F: usize>(u16);

impl<'a, 'py, const F: usize> FromPyObject<'a, 'py> for Field<F> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let (name, max) = FIELDS[F];
        match obj.extract::<i128>() {
            Ok(v) if (0..=i128::from(max)).contains(&v) => Ok(Field(v as u16)),
            Err(e)
                if !obj.is_instance_of::<PyInt>()
                    && !e.is_instance_of::<PyOverflowError>(obj.py()) =>
            {
                let ty = obj
                    .get_type()
                    .name()
                    .map_or_else(|_| "?".into(), |n| n.to_string());
                Err(PyTypeError::new_err(format!(
                    "{name} must be an int in 0..={max}, not {ty}"
                )))
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
    ($($name:ident / $setter:ident: $t:ty = $f:literal),*; $($method:item)*) => {
        #[pymethods]
        impl PyVirtioNetHdr {
            $(
                #[getter]
                fn $name(&self) -> $t {
                    self.0.$name
                }
                #[setter]
                fn $setter(&mut self, value: Field<$f>) {
                    self.0.$name = value.0 as $t;
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
        flags: Field<0>,
        gso_type: Field<1>,
        hdr_len: Field<2>,
        gso_size: Field<3>,
        csum_start: Field<4>,
        csum_offset: Field<5>,
    ) -> Self {
        PyVirtioNetHdr(VirtioNetHdr {
            flags: flags.0 as u8,
            gso_type: gso_type.0 as u8,
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
        // SAFETY: the export is held by `views` for this scope; nothing writes to it.
        let bytes = unsafe { views.export(buf, false, Name("buf", None))?.slice() };
        Ok(PyVirtioNetHdr(VirtioNetHdr::decode(bytes)?))
    }

    /// Writes the 10 bytes at the start of a writable bytes-like object.
    fn encode(&self, py: Python<'_>, buf: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut views = Views::with_capacity(py, 1);
        // SAFETY: the writable export is held by `views`; no other reference exists.
        Ok(self.0.encode(unsafe { views.export(buf, true, Name("buf", None))?.slice_mut() })?)
    }

    /// The header's 10 bytes, native byte order.
    fn __bytes__<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.to_bytes())
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
