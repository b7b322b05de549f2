//! When to release the GIL for work that is not a system call.
//!
//! Every system call of this module runs with the GIL released, inside [`syscall`], which
//! counts the threads in one. A split or a coalescing (a few microseconds of copying)
//! releases the GIL only when [`others_in_syscalls`] says another thread is in such a
//! call: typically the other direction of a forwarder, blocked in its read, which would
//! otherwise wake to find the GIL taken and pay a thread hand-off. A program with one
//! thread keeps the GIL and pays neither the hand-off nor the buffer exports that make
//! releasing it safe.

use std::sync::atomic::{AtomicUsize, Ordering};

use pyo3::marker::Ungil;
use pyo3::prelude::*;

/// Threads now inside [`syscall`].
static IN_SYSCALLS: AtomicUsize = AtomicUsize::new(0);

/// Decrements the count when the call ends, panics and early returns included.
struct Inside;

impl Drop for Inside {
    fn drop(&mut self) {
        IN_SYSCALLS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs `f` (a system call, or a wait for a lock that one holds) with the GIL released,
/// counted as a thread in a system call while it runs.
pub(crate) fn syscall<T: Ungil>(py: Python<'_>, f: impl Ungil + FnOnce() -> T) -> T {
    IN_SYSCALLS.fetch_add(1, Ordering::Relaxed);
    let _inside = Inside;
    py.detach(f)
}

/// Whether another thread is in one of this module's system calls now (the caller, which
/// holds the GIL, is not).
pub(crate) fn others_in_syscalls() -> bool {
    IN_SYSCALLS.load(Ordering::Relaxed) > 0
}
