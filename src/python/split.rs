//! The Python function `gso_split`: `engine::Split` into Python buffers.

use pyo3::prelude::*;

use super::batch::{filling_sizes, PyBufs};
use super::buffers::Views;
use super::virtio_hdr::PyVirtioNetHdr;
use crate::engine::buffer::{non_negative, Name};
use crate::engine::{Failed, Split};
use crate::hooks::Direct;

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
    let out_offset = non_negative(out_offset, "out_offset")?;
    let mut views = Views::new(py);
    // SAFETY: the export is held by `views` until the split is done; the core checks that
    // the outputs written meanwhile do not overlap it.
    let pkt = unsafe { views.export(packet, false, Name("packet", None))?.as_ref() };
    let split = Split::plan_packet(pkt, &hdr.0, is_v6)?;
    let mut outs = PyBufs::new(out_bufs, "out_bufs", false, false)?;
    filling_sizes(sizes, move |sz| {
        let r = split.deliver(
            pkt,
            &mut outs,
            sz,
            out_offset,
            false,
            "out_bufs",
            &mut Direct,
        );
        drop(views);
        r.map_err(Failed::into_error)
    })
}
