//! The Python classes `Sealer` and `Opener`: `crate::aead`'s batch sealing and opening on
//! a list of buffers, with the GIL released for a large batch while another thread waits
//! in a system call (`Sealer::seal_with` / `Opener::open_with` decide and pin).

use pyo3::prelude::*;
use pyo3::types::{IntoPyDict, PyDict};

use super::batch::in_place;
use super::buffers::{Name, Views};
use super::gil::Gil;
use crate::aead::{Key, Opener, Sealer};

/// A key from any bytes-like object (32 bytes, else `bad_key_length`).
fn key_of(key: &Bound<'_, PyAny>) -> PyResult<Key> {
    let mut views = Views::new(key.py());
    let r = views.export(key, false, Name("key", None))?;
    // SAFETY: the export is held by `views` while the bytes are read; nothing writes them.
    Ok(Key::new(unsafe { r.as_ref() })?)
}

/// Seals packets into WireGuard transport-data messages under one send key
/// (ChaCha20-Poly1305, a counter per packet), a batch per call, in place.
#[pyclass(name = "Sealer", module = "tunoffload", frozen)]
pub(crate) struct PySealer {
    inner: Sealer,
    mtu: Option<usize>,
}

#[pymethods]
impl PySealer {
    #[new]
    #[pyo3(signature = (key, receiver_index, *, counter=0, mtu=None))]
    fn new(
        key: &Bound<'_, PyAny>,
        receiver_index: u32,
        counter: u64,
        mtu: Option<usize>,
    ) -> PyResult<Self> {
        let inner = Sealer::with_counter(&key_of(key)?, receiver_index, counter);
        Ok(PySealer { inner, mtu })
    }

    /// The counter the next packet gets.
    #[getter]
    fn next_counter(&self) -> u64 {
        self.inner.next_counter()
    }

    /// The receiver index every message carries.
    #[getter]
    fn receiver_index(&self) -> u32 {
        self.inner.receiver_index()
    }

    #[pyo3(signature = (bufs, offset, sizes, count=None))]
    fn seal(
        &self,
        py: Python<'_>,
        bufs: &Bound<'_, PyAny>,
        offset: i64,
        sizes: &Bound<'_, PyAny>,
        count: Option<i64>,
    ) -> PyResult<usize> {
        in_place(bufs, offset, sizes, count, |b, offset, v| {
            self.inner.seal_with(b, offset, v, self.mtu, &mut Gil(py))
        })
    }
}

/// Opens WireGuard transport-data messages under one receive key, a batch per call, in
/// place, with the key's replay window; forged, replayed and malformed ones are dropped
/// and counted.
#[pyclass(name = "Opener", module = "tunoffload", frozen)]
pub(crate) struct PyOpener(Opener);

#[pymethods]
impl PyOpener {
    #[new]
    fn new(key: &Bound<'_, PyAny>, receiver_index: u32) -> PyResult<Self> {
        Ok(PyOpener(Opener::new(&key_of(key)?, receiver_index)))
    }

    /// The receiver index this key opens messages for.
    #[getter]
    fn receiver_index(&self) -> u32 {
        self.0.local_index()
    }

    #[pyo3(signature = (bufs, offset, sizes, count=None))]
    fn open(
        &self,
        py: Python<'_>,
        bufs: &Bound<'_, PyAny>,
        offset: i64,
        sizes: &Bound<'_, PyAny>,
        count: Option<i64>,
    ) -> PyResult<(usize, usize)> {
        let o = in_place(bufs, offset, sizes, count, |b, offset, v| {
            self.0.open_with(b, offset, v, &mut Gil(py))
        })?;
        Ok((o.packets, o.other))
    }

    /// Every message since the opener was made, by what became of it.
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.0.stats().items().into_py_dict(py)
    }
}
