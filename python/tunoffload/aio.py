"""asyncio support: :class:`AsyncTunDevice`, a :class:`~tunoffload.TunDevice` whose reads
and writes are awaited on the event loop (``loop.add_reader`` / ``loop.add_writer``).

::

    import asyncio, tunoffload as t
    from tunoffload.aio import AsyncTunDevice

    async def main():
        async with AsyncTunDevice.open("tun0", offload=True) as dev:
            dev.up()
            original = bytearray(t.VIRTIO_NET_HDR_LEN + 65535)
            bufs = [bytearray(t.VIRTIO_NET_HDR_LEN + 65535) for _ in range(t.IDEAL_BATCH_SIZE)]
            sizes = [0] * t.IDEAL_BATCH_SIZE
            n = await dev.recv_multiple(original, bufs, sizes, t.VIRTIO_NET_HDR_LEN)

    asyncio.run(main())

The device is put in non-blocking mode; a read that would block waits for the
descriptor to become readable, without a thread. Configuration (``mtu``, ``up()``,
``add_address()`` ...) is passed through to the wrapped device and is synchronous.
Works with any asyncio event loop that implements ``add_reader`` (the default one on
Linux does).
"""

import asyncio
import errno
from collections.abc import Callable
from typing import Any, TypeVar

from tunoffload._native import GroTable, TunDevice

__all__ = ["AsyncTunDevice"]

T = TypeVar("T")


def _closed_error() -> OSError:
    return OSError(errno.EBADF, "the TUN device is closed")


class AsyncTunDevice:
    """A :class:`~tunoffload.TunDevice` for asyncio.

    ``AsyncTunDevice(device)`` wraps an open device (it is switched to non-blocking
    mode); ``AsyncTunDevice.open(name=None, **kwargs)`` creates one with the same
    arguments as ``TunDevice``. Methods ``recv``, ``send``, ``recv_multiple`` and
    ``send_multiple`` are coroutines with the same arguments and results as on
    ``TunDevice``; every other attribute is the wrapped device's.

    ``close()`` (or leaving ``async with``) closes the device and makes every pending
    ``await`` on it raise ``OSError(EBADF)``.
    """

    def __init__(self, device: TunDevice) -> None:
        device.setblocking(False)
        self._dev = device
        self._waiters: set[asyncio.Future[None]] = set()

    @classmethod
    def open(cls, name: str | None = None, **kwargs: Any) -> "AsyncTunDevice":
        """Creates (or opens) a device as ``TunDevice(name, **kwargs)`` and wraps it."""
        kwargs["nonblocking"] = True
        return cls(TunDevice(name, **kwargs))

    @property
    def device(self) -> TunDevice:
        """The wrapped :class:`~tunoffload.TunDevice`."""
        return self._dev

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dev, name)

    def __repr__(self) -> str:
        return f"<AsyncTunDevice {self._dev!r}>"

    async def _wait(self, writable: bool) -> None:
        fd = self._dev.fileno()
        if fd < 0:
            raise _closed_error()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        add, remove = (
            (loop.add_writer, loop.remove_writer)
            if writable
            else (loop.add_reader, loop.remove_reader)
        )
        add(fd, ready)
        self._waiters.add(fut)
        try:
            await fut
        finally:
            self._waiters.discard(fut)
            if not self._dev.closed:  # close() unregistered it already
                remove(fd)

    async def _io(self, writable: bool, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        while True:
            try:
                return call(*args, **kwargs)
            except BlockingIOError as e:
                if getattr(e, "packets_sent", 0):
                    raise  # part of a batch went out: do not write it twice
            await self._wait(writable)

    async def recv(self, buf: Any) -> int:
        """Awaits one packet and reads it into ``buf`` (see ``TunDevice.recv``)."""
        return await self._io(False, self._dev.recv, buf)

    async def send(self, buf: Any) -> int:
        """Writes one packet (see ``TunDevice.send``)."""
        return await self._io(True, self._dev.send, buf)

    async def recv_multiple(
        self, original_buffer: Any, bufs: Any, sizes: list[int], offset: int = 0, **kwargs: Any
    ) -> int:
        """Awaits a packet, then reads and splits it as ``TunDevice.recv_multiple``."""
        return await self._io(
            False, self._dev.recv_multiple, original_buffer, bufs, sizes, offset, **kwargs
        )

    async def send_multiple(
        self, gro_table: GroTable, bufs: Any, offset: int, **kwargs: Any
    ) -> int:
        """Coalesces and writes a batch as ``TunDevice.send_multiple`` (a TUN write does
        not block in practice, so this rarely waits)."""
        return await self._io(True, self._dev.send_multiple, gro_table, bufs, offset, **kwargs)

    def close(self) -> None:
        """Closes the device; pending awaits on it raise ``OSError(EBADF)``. Idempotent."""
        fd = self._dev.fileno()
        for fut in list(self._waiters):
            if not fut.done():
                fut.set_exception(_closed_error())
        if fd >= 0:
            # Unregister before the descriptor number can be reused.
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                loop.remove_reader(fd)
                loop.remove_writer(fd)
        self._dev.close()

    async def __aenter__(self) -> "AsyncTunDevice":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
