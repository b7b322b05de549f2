//! tunoffload: GSO and GRO for Linux TUN devices through `virtio_net_hdr`.
//!
//! - [`engine`]: the pure-Rust offload engine (checksums, virtio header, GSO, GRO, the
//!   split into a caller's buffers, and the checks every batch call makes).
//! - [`aead`]: WireGuard's transport-data messages sealed and opened in batches, in place.
//! - [`device`]: TUN/TAP devices and their batch I/O; [`udp`]: batched UDP sockets.
//! - [`wireguard`]: the WireGuard protocol without I/O (handshakes, timers, cryptokey
//!   routing, a device's data and control paths).
//! - [`hooks`]: what a caller does around the system calls of a batch operation.
//! - `python` (feature `python`): the thin PyO3 layer that maps Python buffers, errors and
//!   the GIL onto the above, built by maturin as `tunoffload._native`.

/// A root-only unit test: `root_test! { /// doc\n fn name() { body } }` is a `#[test]`
/// that is `#[ignore]`d unless build.rs enabled `cfg(tunoffload_root_tests)` (root and
/// `/dev/net/tun` at build time) and whose body starts with
/// [`testsupport::require_root`].
#[cfg(test)]
macro_rules! root_test {
    ($(#[$attr:meta])* fn $name:ident() $body:block) => {
        $(#[$attr])*
        #[test]
        #[cfg_attr(
            not(tunoffload_root_tests),
            ignore = "needs root and /dev/net/tun (run cargo test as root)"
        )]
        fn $name() {
            $crate::testsupport::require_root();
            $body
        }
    };
}
#[cfg(test)]
pub(crate) use root_test;

pub mod aead;
pub mod device;
pub mod engine;
pub mod hooks;
pub mod udp;
pub mod wireguard;

#[cfg(feature = "python")]
mod python;

/// Helpers shared by the unit tests of every module.
#[cfg(test)]
pub(crate) mod testsupport {
    /// The first call of every root-only test (those declared with [`root_test!`], or
    /// marked `#[cfg_attr(not(tunoffload_root_tests), ignore = "...")]`, see build.rs).
    /// Panics if
    /// this process is not root or `/dev/net/tun` is missing: a test binary built as root
    /// but run as another user (or `--ignored` as a user) fails loudly instead of passing
    /// without testing anything.
    pub fn require_root() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        assert!(
            euid == 0,
            "this test needs root, but runs with effective uid {euid} (a test binary built \
             as root, where build.rs enables the root tests, run as another user; or \
             --ignored without root): run cargo test as root, or build and run it as this \
             user to have these tests ignored"
        );
        assert!(
            std::path::Path::new("/dev/net/tun").exists(),
            "this test needs /dev/net/tun (modprobe tun), which is missing"
        );
    }
}
