"""tunoffload.aio under the default asyncio event loop, inside network namespaces."""

from __future__ import annotations

import asyncio
import errno
import socket
import threading

import pytest
from _netns import Netns, can_use_netns
from _threads import HANG_GUARD, parked  # HANG_GUARD bounds the awaits

_reason = can_use_netns()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

if _reason is None:
    import tunoffload as t
    from test_device_forward import A4, A6, B4, B6, MTU, tcp_transfer
    from tunoffload.aio import AsyncTunDevice

HDR = 10


def test_recv_multiple_and_close_wake():
    with Netns("tunoff-aio") as ns:

        async def main() -> None:
            with ns.entered():
                dev = AsyncTunDevice.open("aio0", offload=True, up=True)
            dev.add_address("192.0.2.1/24")
            assert not dev.getblocking()
            # Properties are the device's, to read and to assign.
            dev.mtu = 1400
            dev.gso_max_segs = 46
            assert dev.device.mtu == 1400 == dev.mtu
            assert dev.device.gso_max_segs == 46 == dev.gso_max_segs
            assert "mtu" not in vars(dev)
            with pytest.raises(AttributeError):
                dev.name = "other"  # read-only on the device: refused, not shadowed
            original = bytearray(HDR + 65535)
            bufs = [bytearray(HDR + 2000) for _ in range(4)]
            sizes = [0] * 4
            with ns.entered():
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("192.0.2.1", 0))

            async def ping_once_parked() -> None:
                await parked(dev)
                s.sendto(b"ping", ("192.0.2.2", 9))

            pinger = asyncio.ensure_future(ping_once_parked())
            for _ in range(100):  # skip the namespace's IPv6 chatter
                n = await asyncio.wait_for(
                    dev.recv_multiple(original, bufs, sizes, HDR), HANG_GUARD
                )
                assert n == 1
                if bufs[0][HDR] >> 4 == 4:
                    break
            else:
                pytest.fail("the ping was not among the first 100 packets read")
            await pinger
            assert bytes(bufs[0][HDR + sizes[0] - 4 : HDR + sizes[0]]) == b"ping"
            s.close()

            # close() wakes a pending await with OSError(EBADF).
            task = asyncio.ensure_future(dev.recv(bytearray(HDR + 65535)))
            await parked(dev)
            assert not task.done()
            dev.close()
            with pytest.raises(OSError) as ei:
                await asyncio.wait_for(task, HANG_GUARD)
            assert ei.value.errno == errno.EBADF
            dev.close()  # idempotent

        asyncio.run(main())


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "no-offload"])
def test_async_forwarder_tcp(offload):
    """An asyncio forwarder (one coroutine per direction) carries a TCP transfer."""
    with Netns("tunoff-a") as na, Netns("tunoff-b") as nb:
        with na.entered():
            ta = AsyncTunDevice.open("ta", offload=offload, mtu=MTU, up=True)
        with nb.entered():
            tb = AsyncTunDevice.open("tb", offload=offload, mtu=MTU, up=True)
        ta.add_address(f"{A4}/24")
        ta.add_address(f"{A6}/64", nodad=True)
        tb.add_address(f"{B4}/24")
        tb.add_address(f"{B6}/64", nodad=True)
        na.run("ip", "route", "add", "198.18.2.0/24", "dev", "ta")
        nb.run("ip", "route", "add", "198.18.1.0/24", "dev", "tb")

        async def pump(src: AsyncTunDevice, dst: AsyncTunDevice) -> None:
            off = HDR if offload else 0
            original = bytearray(HDR + 65535)
            bufs = [bytearray(off + 65535) for _ in range(t.IDEAL_BATCH_SIZE)]
            sizes = [0] * t.IDEAL_BATCH_SIZE
            gro = t.GroTable()
            while True:
                try:
                    n = await src.recv_multiple(original, bufs, sizes, off)
                    await dst.send_multiple(gro, bufs, off, sizes=sizes, count=n)
                except OSError:
                    return

        ready = threading.Event()
        state: dict = {}

        async def main() -> None:
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            state["stop"] = lambda: loop.call_soon_threadsafe(stop.set)
            tasks = [asyncio.ensure_future(pump(ta, tb)), asyncio.ensure_future(pump(tb, ta))]
            ready.set()
            await stop.wait()
            ta.close()
            tb.close()
            await asyncio.wait_for(asyncio.gather(*tasks), HANG_GUARD)

        th = threading.Thread(target=asyncio.run, args=(main(),))
        th.start()
        try:
            assert ready.wait(HANG_GUARD), "the event loop thread did not start"
            tcp_transfer(na, nb, B4, 16 * 1024 * 1024)
            if offload:
                assert ta.stats["max_read"] > MTU + HDR
        finally:
            state["stop"]()
            th.join(HANG_GUARD)
        assert not th.is_alive(), "the asyncio forwarder did not stop after close()"
