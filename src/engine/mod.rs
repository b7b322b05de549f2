//! The offload engine: pure Rust, no Python, no system calls.
//!
//! - [`checksum`]: the Internet checksum.
//! - [`virtio`]: `struct virtio_net_hdr` and its constants.
//! - [`gso`]: splitting a TUN super-packet into the kernel's segments.
//! - [`gro`]: coalescing a batch of packets into super-packets.

pub mod checksum;
pub mod error;
pub mod gro;
pub mod gso;
mod packet;
#[cfg(test)]
mod testutil;
pub mod virtio;

pub use error::{Error, ErrorKind, Result};
pub use gro::{handle_gro, ExpandBuffer, GroTable};
pub use gso::{gso_split, GsoPlan, UDP_MAX_SEGMENTS};
pub use virtio::*;
