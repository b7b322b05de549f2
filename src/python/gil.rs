//! The GIL around the core's system calls and copies: [`Gil`], the binding's
//! [`Hooks`].
//!
//! Every system call of this module runs through [`Gil::syscall`]: with the GIL
//! released, counted as a thread in a system call while it runs. After `EINTR` the signal
//! handlers run (an exception from one stops the call). A large copy (a split or a
//! coalescing, a UDP delivery) releases the GIL only when [`others_in_syscalls`] says
//! another thread is in such a call: typically the other direction of a forwarder,
//! blocked in its read, which would otherwise wake to find the GIL taken and pay a
//! thread hand-off. A program with one thread keeps the GIL and pays neither the hand-off
//! nor the buffer exports that make releasing it safe.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use pyo3::prelude::*;

use crate::hooks::Hooks;

/// Copies of at least this many bytes release the GIL while another thread is in a
/// system call (their buffers pinned by an export each); smaller ones are over before a
/// hand-off would be.
pub(crate) const DETACH_BYTES: usize = 16 * 1024;

/// Threads now inside [`Gil::syscall`].
static IN_SYSCALLS: AtomicUsize = AtomicUsize::new(0);

/// Whether another thread is in one of this module's system calls now (the caller, which
/// holds the GIL, is not).
pub(crate) fn others_in_syscalls() -> bool {
    IN_SYSCALLS.load(Ordering::Relaxed) > 0
}

thread_local! {
    /// Counts the times this thread let Python code run in the middle of a call
    /// ([`python_ran`]): a reading of buffers is good while the count is unchanged.
    pub(crate) static PYTHON_RAN: Cell<u64> = const { Cell::new(0) };
}

/// Notes that Python code may have run (this thread let go of the GIL, or ran signal
/// handlers, or called a method a subclass may override): buffers read before are stale.
pub(crate) fn python_ran() {
    PYTHON_RAN.with(|c| c.set(c.get() + 1));
}

/// The binding's hooks: the GIL released around each system call and large copy.
pub(crate) struct Gil<'py>(pub(crate) Python<'py>);

impl Hooks<PyErr> for Gil<'_> {
    fn syscall<T: Send>(&mut self, call: impl FnOnce() -> T + Send) -> T {
        // (A panic in `call`, which would be a bug, leaves the count high: large copies
        // then release the GIL more often than they need to, nothing worse.)
        IN_SYSCALLS.fetch_add(1, Ordering::Relaxed);
        let r = self.0.detach(call);
        IN_SYSCALLS.fetch_sub(1, Ordering::Relaxed);
        python_ran(); // (other threads ran meanwhile)
        r
    }

    fn interrupted(&mut self) -> PyResult<()> {
        python_ran();
        self.0.check_signals()
    }

    fn worth_releasing(&self, bytes: usize) -> bool {
        bytes >= DETACH_BYTES && others_in_syscalls()
    }

    fn work<T: Send>(&mut self, f: impl FnOnce() -> T + Send) -> T {
        self.0.detach(f)
    }
}
