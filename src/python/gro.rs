//! The Python class `GroTable` and function `handle_gro`: the engine's GRO on a list of
//! Python buffers.

use pyo3::prelude::*;
use pyo3::types::PyList;

use super::batch::PyBufs;
use crate::engine::buffer::non_negative;
use crate::engine::{gro, Buffers, GroTable};
use crate::hooks::Direct;

/// Reusable coalescing state for :func:`handle_gro` (one per thread). Nothing carries
/// over from one call to the next; its memory is reused.
#[pyclass(name = "GroTable", module = "tunoffload")]
#[derive(Default)]
pub(crate) struct PyGroTable(pub(crate) GroTable);

#[pymethods]
impl PyGroTable {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    fn __repr__(&self) -> &'static str {
        "GroTable()"
    }
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
pub(crate) fn handle_gro<'py>(
    py: Python<'py>,
    bufs: &Bound<'py, PyAny>,
    offset: i64,
    mut table: PyRefMut<'_, PyGroTable>,
    can_udp_gro: bool,
) -> PyResult<Bound<'py, PyList>> {
    let mut b = PyBufs::new(bufs, "bufs", true, true)?;
    let offset = non_negative(offset, "offset")?;
    let (n, t) = (b.count(), &mut table.0);
    gro::coalesce(&mut b, n, None, offset, t, can_udp_gro, &mut Direct)?;
    PyList::new(py, table.0.written())
}
