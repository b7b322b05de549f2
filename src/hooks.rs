//! The caller's part of a system call.
//!
//! The batch operations of the device and socket layers make their system calls, and
//! copy large amounts of memory, through [`Hooks`]. A Rust caller passes [`Direct`]: each
//! call runs as it is and `EINTR` is retried. The Python binding releases the GIL around
//! each system call (and counts the threads inside one), runs the signal handlers after
//! `EINTR` (stopping the operation when one raises), and releases the GIL for a large
//! copy while another thread waits for it.

use std::sync::{Mutex, MutexGuard, TryLockError};

/// What a caller does around the system calls of an operation; `E` is its error type.
pub trait Hooks<E> {
    /// Runs one system call (or a wait for one, or for a lock that one holds).
    fn syscall<T: Send>(&mut self, call: impl FnOnce() -> T + Send) -> T;

    /// A signal interrupted a system call (`EINTR`): `Ok` to make it again, `Err` to stop
    /// the operation with that error.
    fn interrupted(&mut self) -> Result<(), E>;

    /// Whether a copy of `bytes` bytes should run through [`work`](Self::work), on
    /// buffers pinned for it. [`Direct`]: never.
    fn worth_releasing(&self, bytes: usize) -> bool {
        let _ = bytes;
        false
    }

    /// Runs `f`, which touches only memory pinned for it (the binding releases the GIL).
    fn work<T: Send>(&mut self, f: impl FnOnce() -> T + Send) -> T {
        f()
    }
}

/// No hooks: system calls run as they are, and `EINTR` is retried.
#[derive(Debug, Clone, Copy, Default)]
pub struct Direct;

impl<E> Hooks<E> for Direct {
    fn syscall<T: Send>(&mut self, call: impl FnOnce() -> T + Send) -> T {
        call()
    }

    fn interrupted(&mut self) -> Result<(), E> {
        Ok(())
    }
}

/// Locks `m`, taking a lock poisoned by a panic elsewhere (there should be none) as it is:
/// for a lock no system call holds.
pub fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Locks `m`; while another thread holds it (in a system call, say), waits for it through
/// [`Hooks::syscall`] (the binding releases the GIL meanwhile, so that the holder can take
/// the GIL back). A lock poisoned by a panic is taken as it is.
pub fn lock<'a, T: Send, E, H: Hooks<E> + ?Sized>(
    hooks: &mut H,
    m: &'a Mutex<T>,
) -> MutexGuard<'a, T> {
    loop {
        match m.try_lock() {
            Ok(g) => return g,
            Err(TryLockError::Poisoned(p)) => return p.into_inner(),
            Err(TryLockError::WouldBlock) => hooks.syscall(|| drop(m.lock())),
        }
    }
}

/// An error that may say a signal interrupted a system call.
pub trait Interruptible {
    /// True for `EINTR`.
    fn is_interrupted(&self) -> bool;
}

/// Runs the system call `call` through `hooks` until a signal does not interrupt it (or
/// [`Hooks::interrupted`] stops it).
pub fn retry<T: Send, C: Interruptible + Send, E: From<C>, H: Hooks<E> + ?Sized>(
    hooks: &mut H,
    mut call: impl FnMut() -> Result<T, C> + Send,
) -> Result<T, E> {
    loop {
        match hooks.syscall(&mut call) {
            Err(e) if e.is_interrupted() => hooks.interrupted()?,
            r => return r.map_err(E::from),
        }
    }
}
