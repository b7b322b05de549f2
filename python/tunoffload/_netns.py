"""``tunoffload.netns(target)``: run a block with the calling thread in a network namespace."""

from __future__ import annotations

import os
import threading
from types import TracebackType
from typing import Union

from tunoffload._native import NetnsSwitch, netns_enter

NetnsTarget = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]", int]
"""What names a network namespace: a name under ``/run/netns`` (a ``str`` without a
``/``), a path to a namespace file (a ``str`` with a ``/``, or an ``os.PathLike``), or an
open file descriptor of one (an ``int``)."""


class netns:  # noqa: N801 (a context manager named like a function, as contextlib's)
    """Context manager: inside it the calling thread is in the network namespace ``target``.

    ``target`` is a name under ``/run/netns`` (as ``ip netns add`` makes), a path to a
    namespace file (``"/proc/1234/ns/net"``, an ``os.PathLike``), or an open file
    descriptor of one. Inside the block, sockets and TUN devices the thread creates
    belong to that namespace; on leaving, normally or by an exception, the thread is back
    in the namespace it came from. Only the calling thread moves; other threads stay
    where they are (in asyncio code every task on the loop's thread is inside while the
    block runs: do not ``await`` in it). ``with`` blocks nest (also on one ``netns``
    object, and in several threads at once).

    ``__enter__`` returns a :class:`NetnsSwitch` (``name``, ``path``, ``inode``,
    ``fileno()``, ``thread_id``, ``active``).

    Errors on entering: a missing name or path is ``FileNotFoundError`` (naming it, with
    a hint to ``ip netns add``), a file that is not a network namespace ``ValueError``, a
    wrong type ``TypeError``, no CAP_SYS_ADMIN (needed by ``setns``) ``PermissionError``.
    Leaving from another thread than the one that entered is a ``RuntimeError`` and
    switches no thread.
    """

    __slots__ = ("_entered", "_lock", "_target")

    def __init__(self, target: NetnsTarget) -> None:
        self._target = target
        self._entered: list[NetnsSwitch] = []
        self._lock = threading.Lock()

    @property
    def target(self) -> NetnsTarget:
        """The namespace, as given."""
        return self._target

    def __enter__(self) -> NetnsSwitch:
        switch = netns_enter(self._target)
        with self._lock:
            self._entered.append(switch)
        return switch

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            for i in range(len(self._entered) - 1, -1, -1):
                switch = self._entered[i]
                if switch.entered_here:
                    switch.leave()
                    del self._entered[i]
                    return
            others = [s.thread_id for s in self._entered]
        raise RuntimeError(
            f"tunoffload.netns({self._target!r}) is left in a thread that did not enter it "
            f"(native thread id {threading.get_native_id()}; entered in "
            f"{others or 'no thread'}); a thread can only leave its own namespace switch"
        )

    def __repr__(self) -> str:
        return f"tunoffload.netns({self._target!r})"
