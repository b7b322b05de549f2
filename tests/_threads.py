"""Waiting for a thread to be blocked inside a device call, as an event, not a guessed sleep.

A blocking ``TunDevice`` call waits in ``poll(2)`` (on the device and on the eventfd that
``close()`` signals). ``wait_blocked_in_poll(thread)`` returns once the kernel reports
that thread asleep in that system call (``/proc/self/task/<tid>/syscall``), so a test can
then close the device, delete the link or send a signal knowing the call is really
blocked, instead of sleeping and hoping. The syscall number of ``poll`` is learned from
a thread blocked in ``select.poll`` (the same libc ``poll()``), so nothing here is
architecture-specific.

``HANG_GUARD`` bounds every wait: it is not a measurement; a test that reaches it fails
with a message saying what never happened, instead of hanging the suite.
"""

from __future__ import annotations

import functools
import os
import select
import signal
import threading
import time

HANG_GUARD = 60.0  # seconds


def _syscall_fields(tid: int) -> list[str] | None:
    """The fields of /proc/self/task/<tid>/syscall: [nr, arg0 .. arg5, sp, pc] while the
    thread is blocked in a system call, ["running"] or ["-1", sp, pc] otherwise; None once
    the thread is gone."""
    try:
        with open(f"/proc/self/task/{tid}/syscall") as f:
            return f.read().split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _wait_for(thread: threading.Thread, cond, what: str) -> list[str]:
    tid = thread.native_id
    assert tid is not None, "the thread was not started"
    deadline = time.monotonic() + HANG_GUARD
    while True:
        fields = _syscall_fields(tid)
        if fields is not None and cond(fields):
            return fields
        if not thread.is_alive():
            raise AssertionError(f"{what}: the thread ended first")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {HANG_GUARD:.0f} s (hang guard)")
        time.sleep(0.001)


@functools.cache
def poll_syscall_nr() -> str:
    """The number of the system call libc's ``poll()`` makes (poll or ppoll)."""
    r, w = os.pipe()
    try:
        p = select.poll()
        p.register(r, select.POLLIN)
        th = threading.Thread(target=p.poll, daemon=True)
        th.start()
        try:
            # poll(fds, nfds=1, ...) / ppoll(fds, nfds=1, ...); a thread waiting for the
            # GIL or a lock is in futex(addr, op, ...) with op >= 0x80, never 1.
            fields = _wait_for(th, lambda f: len(f) > 2 and f[2] == "0x1", "select.poll()")
        finally:
            os.write(w, b"x")
            th.join(HANG_GUARD)
        return fields[0]
    finally:
        os.close(r)
        os.close(w)


def wait_blocked_in_poll(thread: threading.Thread, what: str = "the call") -> None:
    """Returns once ``thread`` is asleep in ``poll(2)``; fails if it ends first."""
    nr = poll_syscall_nr()
    _wait_for(thread, lambda f: f[0] == nr, f"{what} blocking in poll(2)")


class MainSignaller:
    """A thread that sends signal ``sig`` to the main thread ``count`` times, each time
    once the main thread is blocked in ``poll(2)``; with ``handled`` (a semaphore that the
    Python handler releases), it waits for the handler to have run before the next one.
    ``join()`` re-raises what went wrong in the thread."""

    def __init__(
        self, sig: int, count: int = 1, handled: threading.Semaphore | None = None
    ) -> None:
        self.sig, self.count, self.handled = sig, count, handled
        self.sent = 0
        self.error: BaseException | None = None
        self._main = threading.main_thread()
        poll_syscall_nr()  # learned now, before the main thread blocks
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for k in range(self.count):
                wait_blocked_in_poll(self._main, f"the main thread (before signal {k + 1})")
                assert self._main.ident is not None
                signal.pthread_kill(self._main.ident, self.sig)
                self.sent += 1
                if self.handled is not None and k + 1 < self.count:
                    assert self.handled.acquire(timeout=HANG_GUARD), (
                        f"the handler did not run for signal {k + 1}"
                    )
        except BaseException as e:  # noqa: BLE001 - re-raised by join()
            self.error = e
            if self._main.ident is not None:
                signal.pthread_kill(self._main.ident, self.sig)  # do not leave it blocked

    def join(self) -> None:
        self.thread.join(HANG_GUARD)
        assert not self.thread.is_alive(), "the signalling thread hangs"
        if self.error is not None:
            raise self.error


async def parked(obj: object) -> None:
    """Returns once a coroutine is awaiting ``obj`` (an ``AsyncTunDevice`` or
    ``AsyncUdpSocket``: its reader is registered with the loop): a bounded number of loop
    turns, no guessed sleep."""
    import asyncio

    for _ in range(1000):
        if obj._waiters:
            return
        await asyncio.sleep(0)
    raise AssertionError("no coroutine ever waited on " + repr(obj))
