"""asyncio support: :class:`AsyncTunDevice`, a :class:`~tunoffload.TunDevice` whose reads
and writes are awaited on the event loop (``loop.add_reader`` / ``loop.add_writer``), and
:class:`AsyncUdpSocket`, the same for a :class:`~tunoffload.UdpSocket`.

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
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from tunoffload._native import GroTable, Opener, RecvMeta, Sealer, TunDevice, UdpSocket

__all__ = ["AsyncOpener", "AsyncSealer", "AsyncTunDevice", "AsyncUdpSocket"]


async def _wait_fd(
    fd: int, writable: bool, waiters: set[asyncio.Future[None]], still_open: Callable[[], bool]
) -> None:
    """Waits until the event loop sees ``fd`` readable (or writable); ``waiters`` holds the
    future meanwhile, so that ``close()`` can wake it. The callback is removed afterwards
    unless ``still_open()`` says ``close()`` has done that already."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    add, remove = (
        (loop.add_writer, loop.remove_writer) if writable else (loop.add_reader, loop.remove_reader)
    )
    add(fd, ready)
    waiters.add(fut)
    try:
        await fut
    finally:
        waiters.discard(fut)
        if still_open():
            remove(fd)


T = TypeVar("T")


async def _io(
    wait: Callable[[bool], Awaitable[None]],
    writable: bool,
    call: Callable[..., T],
    *args: Any,
    **kwargs: Any,
) -> T:
    """``call(*args, **kwargs)``, awaiting ``wait(writable)`` and calling again while it
    would block. A call that had sent part of a batch (``packets_sent``) is not repeated:
    its ``BlockingIOError`` is raised."""
    while True:
        try:
            return call(*args, **kwargs)
        except BlockingIOError as e:
            if getattr(e, "packets_sent", 0):
                raise  # part of a batch went out: do not write it twice
        await wait(writable)


def _cancel_waits(
    fd: int, waiters: set[asyncio.Future[None]], error: Callable[[], OSError]
) -> None:
    """What ``close()`` does before closing ``fd``: every pending wait raises ``error()``,
    and ``fd`` is unregistered from the running loop (before its number can be reused)."""
    for fut in list(waiters):
        if not fut.done():
            fut.set_exception(error())
    if fd < 0:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    loop.remove_reader(fd)
    loop.remove_writer(fd)


_W = TypeVar("_W", bound="_Wrapper")


class _Wrapper:
    """What the two wrappers share: every public attribute is the wrapped object's, to
    read and to assign (``adev.mtu = 1400`` configures the device; a plain attribute of
    the wrapper would shadow the property and change nothing), the set of pending waits,
    and ``close()`` on leaving ``async with``. A subclass says how its object closes."""

    _waiters: set[asyncio.Future[None]]

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped
        self._waiters = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._wrapped, name, value)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._wrapped!r}>"

    def _closed_error(self) -> OSError:
        raise NotImplementedError

    def _is_open(self) -> bool:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    async def _wait(self, writable: bool) -> None:
        fd = self._wrapped.fileno()
        if fd < 0:
            raise self._closed_error()
        await _wait_fd(fd, writable, self._waiters, self._is_open)

    def close(self) -> None:
        """Closes the wrapped object; pending awaits on it raise ``OSError(EBADF)``.
        Idempotent."""
        _cancel_waits(self._wrapped.fileno(), self._waiters, self._closed_error)
        self._close()

    async def __aenter__(self: _W) -> _W:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class AsyncTunDevice(_Wrapper):
    """A :class:`~tunoffload.TunDevice` for asyncio.

    ``AsyncTunDevice(device)`` wraps an open device (it is switched to non-blocking
    mode); ``AsyncTunDevice.open(name=None, **kwargs)`` creates one with the same
    arguments as ``TunDevice``. Methods ``recv``, ``send``, ``recv_multiple`` and
    ``send_multiple`` are coroutines with the same arguments and results as on
    ``TunDevice``; every other attribute is the wrapped device's, to read and to assign
    (``adev.mtu = 1400`` sets the device's MTU).

    ``close()`` (or leaving ``async with``) closes the device and makes every pending
    ``await`` on it raise ``OSError(EBADF)``.
    """

    def __init__(self, device: TunDevice) -> None:
        device.setblocking(False)
        super().__init__(device)
        self._dev = device

    @classmethod
    def open(cls, name: str | None = None, **kwargs: Any) -> "AsyncTunDevice":
        """Creates (or opens) a device as ``TunDevice(name, **kwargs)`` and wraps it."""
        kwargs["nonblocking"] = True
        return cls(TunDevice(name, **kwargs))

    @property
    def device(self) -> TunDevice:
        """The wrapped :class:`~tunoffload.TunDevice`."""
        return self._dev

    def _closed_error(self) -> OSError:
        return OSError(errno.EBADF, "the TUN device is closed")

    def _is_open(self) -> bool:
        return not self._dev.closed

    def _close(self) -> None:
        self._dev.close()

    async def recv(self, buf: Any) -> int:
        """Awaits one packet and reads it into ``buf`` (see ``TunDevice.recv``)."""
        return await _io(self._wait, False, self._dev.recv, buf)

    async def send(self, buf: Any) -> int:
        """Writes one packet (see ``TunDevice.send``)."""
        return await _io(self._wait, True, self._dev.send, buf)

    async def recv_multiple(
        self, original_buffer: Any, bufs: Any, sizes: list[int], offset: int = 0, **kwargs: Any
    ) -> int:
        """Awaits a packet, then reads and splits it as ``TunDevice.recv_multiple``."""
        return await _io(
            self._wait,
            False,
            self._dev.recv_multiple,
            original_buffer,
            bufs,
            sizes,
            offset,
            **kwargs,
        )

    async def send_multiple(
        self, gro_table: GroTable, bufs: Any, offset: int, **kwargs: Any
    ) -> int:
        """Coalesces and writes a batch as ``TunDevice.send_multiple`` (a TUN write does
        not block in practice, so this rarely waits)."""
        return await _io(
            self._wait, True, self._dev.send_multiple, gro_table, bufs, offset, **kwargs
        )


class AsyncUdpSocket(_Wrapper):
    """A :class:`~tunoffload.UdpSocket` for asyncio.

    ``AsyncUdpSocket(sock, **kwargs)`` wraps a ``socket.socket`` (as ``UdpSocket(sock,
    **kwargs)``: ``gso``, ``gro``, ``pktinfo``, ``ecn``, ``dont_fragment``) or an existing
    ``UdpSocket``; the socket is switched to non-blocking mode.
    ``recv_multiple`` and ``send_multiple`` are coroutines with the arguments and results
    of ``UdpSocket``'s: a receive that would block waits for the socket to become readable,
    a send that would block waits for it to become writable and sends the rest of the
    batch (so the result is always the whole count). Every other attribute (``gso``,
    ``gro``, ``pending``, ``fileno()`` ...) is the wrapped ``UdpSocket``'s.

    ``close()`` (or leaving ``async with``) makes every pending ``await`` raise
    ``OSError(EBADF)`` and closes the socket.

    ::

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 5000))
        async with AsyncUdpSocket(sock) as udp:
            bufs = [bytearray(2048) for _ in range(64)]
            sizes = [0] * 64
            n = await udp.recv_multiple(bufs, sizes)
    """

    def __init__(self, sock: socket.socket | UdpSocket, **kwargs: Any) -> None:
        udp = sock if isinstance(sock, UdpSocket) else UdpSocket(sock, **kwargs)
        udp.socket.setblocking(False)
        super().__init__(udp)
        self._udp = udp

    @property
    def udp(self) -> UdpSocket:
        """The wrapped :class:`~tunoffload.UdpSocket`."""
        return self._udp

    @property
    def socket(self) -> socket.socket:
        """The wrapped ``socket.socket``."""
        return self._udp.socket

    def _closed_error(self) -> OSError:
        return OSError(errno.EBADF, "the socket is closed")

    def _is_open(self) -> bool:
        return self._udp.fileno() >= 0

    def _close(self) -> None:
        self._udp.socket.close()

    async def recv_multiple(
        self,
        bufs: Sequence[Any],
        sizes: list[int],
        offset: int = 0,
        addrs: list[Any] | None = None,
        *,
        meta: RecvMeta | None = None,
    ) -> int:
        """Awaits a datagram, then takes what is queued, as ``UdpSocket.recv_multiple``
        (``meta`` too)."""
        return await _io(
            self._wait, False, self._udp.recv_multiple, bufs, sizes, offset, addrs, meta=meta
        )

    async def send_multiple(
        self,
        bufs: Sequence[Any],
        offset: int = 0,
        *,
        sizes: Sequence[int] | None = None,
        count: int | None = None,
        addr: Any = None,
        ecn: int | list[int | None] | None = None,
        src: str | list[str | None] | None = None,
    ) -> int:
        """Sends the whole batch as ``UdpSocket.send_multiple`` (``ecn`` and ``src`` too),
        waiting for the socket to become writable whenever it would block; returns the
        number of datagrams."""
        n = len(bufs) if count is None else count
        done = 0

        def rest(arg: Any) -> Any:  # a per-datagram list from datagram `done` on
            return arg[done:n] if isinstance(arg, list) else arg

        while True:
            try:
                if done == 0:
                    sent = self._udp.send_multiple(
                        bufs, offset, sizes=sizes, count=count, addr=addr, ecn=ecn, src=src
                    )
                else:
                    sent = self._udp.send_multiple(
                        list(bufs[done:n]),
                        offset,
                        sizes=None if sizes is None else list(sizes[done:n]),
                        addr=rest(addr),
                        ecn=rest(ecn),
                        src=rest(src),
                    )
                return done + sent
            except BlockingIOError as e:
                done += int(getattr(e, "datagrams_sent", 0))
                await self._wait(True)


class AsyncSealer:
    """A :class:`~tunoffload.Sealer` whose :meth:`seal` is awaited, so that a pipeline of
    coroutines awaits each batch call alike (``await dev.recv_multiple(...)``, ``await
    sealer.seal(...)``, ``await udp.send_multiple(...)``). Sealing waits for nothing: it
    runs at once on the event loop's thread (a 64 KiB batch takes tens of microseconds,
    less than handing it to a thread and back). Takes a ``Sealer`` or its arguments."""

    def __init__(self, sealer: Sealer | Any, *args: Any, **kwargs: Any) -> None:
        self.sealer = sealer if isinstance(sealer, Sealer) else Sealer(sealer, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sealer, name)

    async def seal(
        self, bufs: list[bytearray], offset: int, sizes: list[int], count: int | None = None
    ) -> int:
        """:meth:`tunoffload.Sealer.seal`."""
        return self.sealer.seal(bufs, offset, sizes, count)


class AsyncOpener:
    """A :class:`~tunoffload.Opener` whose :meth:`open` is awaited (it runs at once, as
    :class:`AsyncSealer`'s seal does). Takes an ``Opener`` or its arguments."""

    def __init__(self, opener: Opener | Any, *args: Any, **kwargs: Any) -> None:
        self.opener = opener if isinstance(opener, Opener) else Opener(opener, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.opener, name)

    async def open(
        self, bufs: list[bytearray], offset: int, sizes: list[int], count: int | None = None
    ) -> tuple[int, int]:
        """:meth:`tunoffload.Opener.open`."""
        return self.opener.open(bufs, offset, sizes, count)
