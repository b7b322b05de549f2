//! The PyO3 layer: maps Python buffers, errors and the GIL onto the engine.
//! Nothing here decides anything about packets; that is all in `crate::engine`.

pub(crate) mod buffers;
pub(crate) mod device;
pub(crate) mod engine;
pub(crate) mod gil;
pub(crate) mod netns;
pub(crate) mod udp;

use pyo3::prelude::*;

/// The native part of the `tunoffload` package.
// gil_used: handle_gro relies on the GIL to keep bytearrays from being resized under it.
#[pymodule(gil_used = true)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    engine::register(m)?;
    device::register(m)?;
    netns::register(m)?;
    udp::register(m)?;
    Ok(())
}
