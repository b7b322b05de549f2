"""No leaks: a million engine calls and a hundred thousand device reads and writes leave
the process's resident memory and open file descriptors flat.

Each loop warms up first (allocator pools, per-thread spare storage, the GroTable's
reused vectors), then measures. The bounds are generous: they catch a leak of a few
bytes per call (a lost buffer export, a reference, a Vec), not allocator noise. Error
paths are included, since that is where leaks hide. Loops are bounded in count.
"""

from __future__ import annotations

import gc
import os
import socket
import sys

import packets as P
import pytest
import tunoffload as t
from _netns import Netns, can_use_netns

ENGINE_CALLS = 1_000_000
DEVICE_OPS = 100_000


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_million_engine_calls_leak_nothing():
    """gso_split, handle_gro and VirtioNetHdr (decode, encode, construction), on success
    and on error, ENGINE_CALLS calls in all."""
    sup, h = P.super_tcp(False, bytes(range(256)) * 4, 500)
    hdr = t.VirtioNetHdr(**h)
    bad_hdr = t.VirtioNetHdr(**{**h, "csum_offset": 6})
    outs = [bytearray(600) for _ in range(4)]
    sizes = [0] * 4
    raw = bytes(hdr)
    flow = [P.tcp_pkt(False, b"x" * 100, seq=1000 + 100 * i) for i in range(3)]
    table = t.GroTable()
    head = bytearray(b"\0" * 10)
    target = bytearray(16)
    refs_before = [sys.getrefcount(o) for o in (sup, hdr, outs[0], sizes, raw, table)]

    def batch(n: int) -> int:
        calls = 0
        for _ in range(n):
            t.gso_split(sup, hdr, outs, sizes)
            try:
                t.gso_split(sup, bad_hdr, outs, sizes)
            except ValueError:
                pass
            t.handle_gro([head + p for p in flow], 10, table)
            try:
                t.handle_gro([bytearray(5)], 10, table)
            except ValueError:
                pass
            t.VirtioNetHdr.decode(raw)
            try:
                t.VirtioNetHdr.decode(b"short")
            except ValueError:
                pass
            hdr.encode(target)
            t.VirtioNetHdr(flags=1, gso_type=4, gso_size=1448)
            calls += 8
        return calls

    done = batch(20_000)  # warm-up
    gc.collect()
    rss0, fds0 = rss_bytes(), open_fds()
    done += batch((ENGINE_CALLS - done) // 8)
    gc.collect()
    grown = rss_bytes() - rss0
    assert done >= ENGINE_CALLS - 8
    assert grown < 16 * 1024 * 1024, f"RSS grew by {grown} bytes over {done} calls"
    assert open_fds() == fds0
    refs_after = [sys.getrefcount(o) for o in (sup, hdr, outs[0], sizes, raw, table)]
    assert refs_after == refs_before, "a call kept references"
    for b in (*outs, target, head):
        b.append(0)  # no export left behind (an exported bytearray cannot resize)
        del b[-1]


_reason = can_use_netns()


@pytest.mark.skipif(_reason is not None, reason=_reason or "")
def test_a_hundred_thousand_device_reads_and_writes_leak_nothing():
    """Packets written into an offload device are forwarded by the kernel back out of
    it and read again: DEVICE_OPS writes (send_multiple, send) and as many reads
    (recv_multiple, recv); then devices opened and closed, and queues cloned."""
    with Netns("tunoff-res") as ns:
        with ns.entered():
            dev = t.TunDevice("res0", offload=True, nonblocking=True)
            dev.add_address("10.77.0.1/24")
            dev.up()
        ns.run("ip", "route", "add", "10.78.0.0/24", "dev", "res0")
        ns.sysctl("net.ipv4.ip_forward", "1")
        for key in ("all", "default", "res0"):
            ns.sysctl(f"net.ipv4.conf.{key}.rp_filter", "0")
        # 32 UDP packets of distinct flows per batch (no coalescing: one write each).
        batch = [
            P.udp_pkt(False, b"r" * 64, sport=2000 + i, src="10.77.0.2", dst="10.78.0.2")
            for i in range(32)
        ]
        bufs = [bytearray(10) + p for p in batch]
        sizes = [len(p) for p in batch]
        rbufs = [bytearray(10 + 1500)]
        rsizes = [0]
        original = bytearray(10 + 65535)
        single = bytes(t.VirtioNetHdr()) + batch[0]
        one = bytearray(70000)
        table = t.GroTable()
        ops = {"writes": 0, "reads": 0}

        def drain() -> None:
            for _ in range(4 * len(batch)):
                try:
                    if ops["reads"] % 2:
                        dev.recv(one)
                    else:
                        dev.recv_multiple(original, rbufs, rsizes, 10)
                except BlockingIOError:
                    return
                ops["reads"] += 1

        def run(writes: int) -> None:
            target = ops["writes"] + writes
            while ops["writes"] < target:
                dev.send_multiple(table, bufs, 10, sizes=sizes, count=len(batch))
                dev.send(single)
                ops["writes"] += len(batch) + 1
                drain()

        with dev:
            run(5_000)  # warm-up
            gc.collect()
            rss0, fds0 = rss_bytes(), open_fds()
            reads0 = ops["reads"]
            run(DEVICE_OPS)
            gc.collect()
            grown = rss_bytes() - rss0
            assert ops["reads"] - reads0 >= DEVICE_OPS // 2, "the kernel did not loop packets back"
            assert dev.stats["writes"] >= DEVICE_OPS
            assert grown < 16 * 1024 * 1024, f"RSS grew by {grown} bytes"
            assert open_fds() == fds0
            # Devices and queues opened and closed: descriptors come back.
            with ns.entered():
                for k in range(50):
                    with t.TunDevice(f"tmp{k % 3}", multi_queue=True, offload=True) as d:
                        d.clone_queue().close()
                    s = socket.socket()
                    s.close()
            gc.collect()
            assert open_fds() == fds0, "TunDevice open/close leaked descriptors"
