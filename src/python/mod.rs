//! The PyO3 layer: maps Python buffers, errors and the GIL onto the core. Nothing here
//! decides anything about packets or arguments: every batch rule, check and refusal is
//! in `crate::engine`, `crate::device`, `crate::udp`, `crate::aead` and
//! `crate::wireguard`, which this layer calls with the
//! arguments Python gave.
//!
//! The files import each other in one direction only, each from files above it:
//!
//! ```text
//! errors      the core's errors as Python exceptions (InputError, OSError, ...)
//! gil         Gil: the binding's Hooks (the GIL around system calls and large copies)
//! buffers     Python buffers: exports (Views), a buffer's object (PyObj) for the core's Held
//! batch       <- buffers, errors, gil: a Python sequence as the core's Buffers; sizes
//! virtio_hdr  <- batch, buffers, errors: VirtioNetHdr, gso_split
//! gro         <- batch: GroTable, handle_gro
//! netns       <- errors, gil: NetnsSwitch, netns_enter, the `netns=` argument
//! tun_device  <- batch, buffers, errors, gil, gro, netns: TunDevice (on device::Queue)
//! udp_socket  <- batch, errors, gil: UdpSocket (on udp::Shared), RecvMeta
//! aead        <- batch, buffers, gil: Sealer, Opener
//! wireguard   <- batch, buffers, errors, gil, tun_device, udp_socket: WireGuardDevice
//! mod         <- every class and function: the module and its constants
//! ```

mod aead;
mod batch;
mod buffers;
mod errors;
mod gil;
mod gro;
mod netns;
mod tun_device;
mod udp_socket;
mod virtio_hdr;
mod wireguard;

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::engine::{self, virtio};

/// The native part of the `tunoffload` package.
// gil_used: the binding relies on the GIL to keep bytearrays from being resized under it.
#[pymodule(gil_used = true)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    for (name, value) in virtio::NAMED.into_iter().chain(crate::udp::ECN_NAMED) {
        m.add(name, value)?;
    }
    m.add("UDP_MAX_SEGMENTS", engine::UDP_MAX_SEGMENTS)?;
    let kinds = engine::ErrorKind::ALL.iter().map(|k| k.as_str());
    m.add("ERROR_KINDS", PyTuple::new(py, kinds)?)?;
    m.add("InputError", py.get_type::<errors::InputError>())?;
    m.add_class::<virtio_hdr::PyVirtioNetHdr>()?;
    m.add_class::<gro::PyGroTable>()?;
    m.add_function(wrap_pyfunction!(virtio_hdr::gso_split, m)?)?;
    m.add_function(wrap_pyfunction!(gro::handle_gro, m)?)?;
    m.add_class::<tun_device::PyTunDevice>()?;
    m.add_class::<netns::PyNetnsSwitch>()?;
    m.add_function(wrap_pyfunction!(netns::netns_enter, m)?)?;
    m.add_class::<udp_socket::PyUdpSocket>()?;
    m.add("TRANSPORT_HEADER_LEN", crate::aead::HEADER_LEN)?;
    m.add("TRANSPORT_OVERHEAD", crate::aead::OVERHEAD)?;
    m.add_class::<aead::PySealer>()?;
    m.add_class::<aead::PyOpener>()?;
    m.add_class::<udp_socket::PyRecvMeta>()?;
    m.add_class::<wireguard::PyWireGuardDevice>()?;
    Ok(())
}
