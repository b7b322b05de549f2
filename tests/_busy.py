"""A second thread inside one of tunoffload's system calls, for the tests of the paths
that release the GIL only when one is (the split in ``recv_multiple``, the in-place
coalescing of ``send_multiple(..., sizes=)``, the delivery of a coalesced UDP read).

``with another_thread_in_a_syscall(ns):`` starts a thread blocked in
``UdpSocket.recv_multiple`` on a socket inside ``ns`` (the caller's namespace, entered);
on exit it sends that socket one datagram, from inside ``ns``, and joins the thread.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

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
