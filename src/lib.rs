//! tunoffload: GSO and GRO for Linux TUN devices through `virtio_net_hdr`.
//!
//! - [`engine`]: the pure-Rust offload engine (checksums, virtio header, GSO, GRO).
//! - `python` (feature `python`): the thin PyO3 layer that maps Python buffers, errors and
//!   the GIL onto the engine, built by maturin as `tunoffload._native`.

pub mod device;
pub mod engine;
pub mod udp;

#[cfg(feature = "python")]
mod python;
