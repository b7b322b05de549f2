"""tunoffload.aio.AsyncUdpSocket under the default asyncio event loop, on loopback in a
network namespace of the test's own (root needed; skips otherwise)."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest
import tunoffload as t
from _netns import Netns
from _threads import parked
from test_udp import _slow_lo, _why_not, dgram
from tunoffload.aio import AsyncUdpSocket

_reason = _why_not()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")


def _pair() -> tuple[socket.socket, socket.socket]:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    b.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: room for every test
    a.connect(b.getsockname())
    return a, b


class _Counting(AsyncUdpSocket):
    """Records each wait (True: for writing) in ``_waits``."""

    def __init__(self, sock: socket.socket | t.UdpSocket, **kwargs: bool) -> None:
        super().__init__(sock, **kwargs)
        self._waits: list[bool] = []

    async def _wait(self, writable: bool) -> None:
        self._waits.append(writable)
        await super()._wait(writable)


def test_recv_waits_then_takes_the_batch() -> None:
    with Netns("tunoff-udpaio") as ns, ns.entered():
        a, b = _pair()

        async def main() -> None:
            ua, ub = AsyncUdpSocket(a), AsyncUdpSocket(b)
            assert not b.getblocking() and ub.gso and ub.gro
            with pytest.raises(AttributeError):
                ub.gso = False  # read-only on UdpSocket: refused, not shadowed
            assert ub.gso and "gso" not in vars(ub)
            bufs = [bytearray(1500) for _ in range(64)]
            sizes = [0] * 64
            addrs: list[object] = [None] * 64
            task = asyncio.ensure_future(ub.recv_multiple(bufs, sizes, 4, addrs))
            await parked(ub)
            assert not task.done()  # waiting on the loop, not in a thread
            data = [dgram(i, 1400) for i in range(20)]
            assert await ua.send_multiple(data) == 20
            n = await asyncio.wait_for(task, 5)
            got = [bytes(bufs[i][4 : 4 + sizes[i]]) for i in range(n)]
            while len(got) < 20:
                n = await asyncio.wait_for(ub.recv_multiple(bufs, sizes, 4, addrs), 5)
                got += [bytes(bufs[i][4 : 4 + sizes[i]]) for i in range(n)]
            assert got == data
            assert addrs[0] == a.getsockname()

        asyncio.run(main())
        a.close()
        b.close()


def test_send_resumes_after_would_block() -> None:
    with Netns("tunoff-udpaio") as ns, ns.entered():
        _slow_lo(ns)
        a, b = _pair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        b.settimeout(5)
        data = [dgram(i, 1000) for i in range(200)]
        ua = _Counting(t.UdpSocket(a, gso=False))
        assert asyncio.run(asyncio.wait_for(ua.send_multiple(data), 10)) == 200
        assert ua._waits and all(ua._waits)  # it did wait for the socket to become writable
        assert [b.recv(2000) for _ in range(200)] == data
        a.close()
        b.close()


def test_options_pass_through() -> None:
    """The keyword arguments of UdpSocket, its recv_multiple (meta=) and send_multiple
    (ecn=, src=) through the asyncio forms, per-datagram lists included when a send
    resumes after it would block."""
    with Netns("tunoff-udpaio") as ns, ns.entered():
        _slow_lo(ns)
        a, b = _pair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        count = 200
        data = [dgram(i, 1000) for i in range(count)]
        ecns = [(i // 3) % 4 for i in range(count)]
        srcs = ["127.0.0.1" if i % 2 else None for i in range(count)]
        ua = _Counting(a, gso=False)

        async def main() -> list[tuple[bytes, int | None, str | None]]:
            ub = AsyncUdpSocket(b, pktinfo=True, ecn=True)
            assert ub.pktinfo and ub.ecn and not ub.dont_fragment and not ua.gso
            assert await asyncio.wait_for(ua.send_multiple(data, ecn=ecns, src=srcs), 10) == count
            meta, got = t.RecvMeta(), []
            bufs, sizes = [bytearray(1500) for _ in range(64)], [0] * 64
            while len(got) < count:
                n = await asyncio.wait_for(ub.recv_multiple(bufs, sizes, meta=meta), 5)
                got += [
                    (bytes(bufs[i][: sizes[i]]), meta.ecn(i), meta.destination(i)) for i in range(n)
                ]
            return got

        got = asyncio.run(main())
        assert True in ua._waits  # the send did resume after it would have blocked
        assert got == [(d, e, "127.0.0.1") for d, e in zip(data, ecns, strict=True)]
        a.close()
        b.close()


def test_close_wakes_pending_awaits() -> None:
    with Netns("tunoff-udpaio") as ns, ns.entered():
        a, b = _pair()

        async def main() -> None:
            ub = AsyncUdpSocket(b)
            task = asyncio.ensure_future(ub.recv_multiple([bytearray(10)], [0]))
            await parked(ub)
            assert not task.done()
            ub.close()
            with pytest.raises(OSError) as ei:
                await asyncio.wait_for(task, 2)
            assert ei.value.errno == errno.EBADF
            assert b.fileno() == -1  # close() closes the socket
            ub.close()  # idempotent
            with pytest.raises(OSError) as ei:
                await ub.recv_multiple([bytearray(10)], [0])
            assert ei.value.errno == errno.EBADF

        asyncio.run(main())
        a.close()
