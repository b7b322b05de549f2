//! The offload engine: pure Rust, no Python, no system calls.
//!
//! - [`checksum`]: the Internet checksum.
//! - [`virtio`]: `struct virtio_net_hdr` and its constants.
//! - [`gso`]: splitting a TUN super-packet into the kernel's segments.
//! - [`gro`]: coalescing a batch of packets into super-packets.
//! - [`split`]: a super-packet split into a caller's buffers (checks, growth, sizes).
//! - [`buffer`]: buffers as the batch calls see them, and the checks they share.
//! - [`held`]: buffers in memory a caller holds and may resize (the binding's).

pub mod buffer;
pub mod checksum;
pub mod error;
pub mod gro;
pub mod gso;
pub mod held;
mod packet;
pub mod split;
#[cfg(test)]
mod testutil;
pub mod virtio;

pub use buffer::{Buffers, ExpandBuffer, Room, Window, MAX_IP_PACKET};
pub use error::{Error, ErrorKind, Result};
pub use gro::{handle_gro, GroKinds, GroTable};
pub use gso::{gso_split, GsoPlan, UDP_MAX_SEGMENTS};
pub use split::{Failed, Split};
pub use virtio::*;
