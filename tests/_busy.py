"""A second thread inside one of tunoffload's system calls, for the tests of the paths
that release the GIL only when one is (the split in ``recv_multiple``, the in-place
coalescing of ``send_multiple(..., sizes=)``, the delivery of a coalesced UDP read).

``with another_thread_in_a_syscall(ns):`` starts a thread blocked in
``UdpSocket.recv_multiple`` on a socket inside ``ns`` (the caller's namespace, entered);
on exit it sends that socket one datagram, from inside ``ns``, and joins the thread.
``resizes_refused(bufs, first, end, call)`` runs ``call`` while yet another thread keeps
resizing some of ``bufs``, and counts the resizes an export refused.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator

import tunoffload as t


@contextlib.contextmanager
def another_thread_in_a_syscall() -> Iterator[None]:
    """The calling thread must be in the test's namespace (its loopback is up)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    u = t.UdpSocket(s)
    got: list[int] = []

    def wait() -> None:
        got.append(u.recv_multiple([bytearray(64)], [0]))

    th = threading.Thread(target=wait, daemon=True)
    th.start()
    time.sleep(0.05)  # into the blocking call (it has nothing else to do)
    try:
        assert th.is_alive(), "the waiting thread ended early"
        yield
    finally:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as w:
            w.sendto(b"wake", s.getsockname())
        th.join(timeout=10)
        s.close()
    assert got == [1], "the waiting thread did not receive its datagram"


def resizes_refused(bufs: list[bytearray], first: int, end: int, call: Callable[[], None]) -> int:
    """Runs ``call`` (bounded: until a resize is refused, 3 s or 3000 calls) while a thread
    keeps resizing ``bufs[first:end]`` by one byte and back; returns how many of its
    resizes met an exported buffer (``BufferError``). Each buffer ends at its length."""
    refused = 0
    stop = threading.Event()

    def resizer() -> None:
        nonlocal refused
        rng = random.Random(first * 1000 + end)
        while not stop.is_set():
            b = bufs[rng.randrange(first, end)]
            try:
                b.append(0)
            except BufferError:
                refused += 1
                continue
            while True:  # back to its length (an export may refuse that too, a while)
                try:
                    del b[-1]
                    break
                except BufferError:
                    refused += 1

    th = threading.Thread(target=resizer, daemon=True)
    th.start()
    try:
        deadline = time.monotonic() + 3.0
        for _ in range(3000):
            if refused or time.monotonic() > deadline:
                break
            call()
    finally:
        stop.set()
        th.join(timeout=10)
    return refused
