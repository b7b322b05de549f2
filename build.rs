//! Decides whether the root-only tests run.
//!
//! Some `cargo test` cases need root and `/dev/net/tun` (they create TUN devices in a
//! network namespace of their own). When this build runs as root (effective uid 0) and
//! `/dev/net/tun` exists, it sets `cfg(tunoffload_root_tests)`; otherwise those tests are
//! compiled as `#[ignore]`d, so `cargo test` shows them as "ignored" with the reason
//! instead of passing without testing anything. `cargo test -- --ignored` still runs
//! them (they then fail loudly if they are not root). A test binary built as root but run
//! as another user panics with a clear message rather than passing silently.
//!
//! Declare every such test with `crate::root_test! { fn name() { ... } }` (src/lib.rs),
//! which is the same as marking it:
//! `#[cfg_attr(not(tunoffload_root_tests), ignore = "needs root and /dev/net/tun (run cargo test as root)")]`
//! and start it with `crate::testsupport::require_root()` (src/lib.rs).

fn main() {
    println!("cargo:rustc-check-cfg=cfg(tunoffload_root_tests)");
    println!("cargo:rerun-if-changed=build.rs");
    // Switching users (su, sudo) changes these: a build made as root and then repeated
    // as a user (or the other way round) decides again.
    println!("cargo:rerun-if-env-changed=USER");
    println!("cargo:rerun-if-env-changed=SUDO_USER");
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root && std::path::Path::new("/dev/net/tun").exists() {
        println!("cargo:rustc-cfg=tunoffload_root_tests");
    }
}
