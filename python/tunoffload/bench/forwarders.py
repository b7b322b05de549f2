"""The forwarder rows: a TUN device in A and one in B, and a forwarder on the public API,
in this process (a thread per direction), reading packets from one and writing them to
the other; or, for ``veth``, the kernel's own path between A and B.

- ``split+coalesce``: offload on; ``recv_multiple`` splits each super-packet into
  MTU-sized packets and ``send_multiple`` coalesces them again (:func:`forward_split`).
- ``plain``: offload off; one ``recv``/``send`` per packet (:func:`forward_whole`).
- ``passthrough``: offload on; super-packets move whole (:func:`forward_whole`).
- ``veth``: no forwarder, a veth pair.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable

import tunoffload as t
from tunoffload import TunDevice
from tunoffload.bench.report import Result, ratio
from tunoffload.bench.topology import Topology
from tunoffload.bench.traffic import run_traffic

FORWARDER_MODES = ("veth", "passthrough", "split+coalesce", "plain")
OFFSET = 16  # headroom before each packet: >= VIRTIO_NET_HDR_LEN


class Counters:
    """What one direction of a forwarder did: reads, packets, and its thread's CPU time."""

    def __init__(self) -> None:
        self.reads = 0
        self.packets = 0
        self.cpu = 0.0


def forward_split(src: TunDevice, dst: TunDevice, c: Counters) -> None:
    """recv_multiple (split into MTU packets) -> send_multiple (coalesce), zero-copy,
    until a device is closed."""
    orig = bytearray(t.VIRTIO_NET_HDR_LEN + 65535)
    bufs = [bytearray(OFFSET + 65535) for _ in range(t.IDEAL_BATCH_SIZE)]
    sizes = [0] * len(bufs)
    table = t.GroTable()
    t0 = time.thread_time()
    try:
        while True:
            n = src.recv_multiple(orig, bufs, sizes, OFFSET)
            c.reads += 1
            c.packets += n
            dst.send_multiple(table, bufs, OFFSET, sizes=sizes, count=n)
    except OSError:
        pass  # the device was closed: the row is over
    finally:
        c.cpu += time.thread_time() - t0


def forward_whole(src: TunDevice, dst: TunDevice, c: Counters) -> None:
    """One read, one write, until a device is closed: plain packets (offload off) or
    whole super-packets, counted as the segments their virtio header says they hold."""
    buf = bytearray(t.VIRTIO_NET_HDR_LEN + 65535)
    view = memoryview(buf)
    vnet = src.offload
    t0 = time.thread_time()
    try:
        while True:
            n = src.recv(buf)
            c.reads += 1
            if vnet and buf[1]:  # gso_type set: count the segments
                gso_size, l4 = struct.unpack_from("=HH", buf, 4)
                l4_len = 8 if buf[1] == 5 else (buf[10 + l4 + 12] >> 4) * 4
                data = n - 10 - l4 - l4_len
                c.packets += max(1, -(-data // gso_size)) if gso_size else 1
            else:
                c.packets += 1
            dst.send(view[:n])
    except OSError:
        pass
    finally:
        c.cpu += time.thread_time() - t0


def run_forwarder_row(
    mode: str, proto: str, streams: int, duration: float, use_iperf: bool
) -> Result:
    """One row of ``mode`` (one of :data:`FORWARDER_MODES`): build the topology, forward,
    measure, tear down. A row that fails is returned with its ``error`` set."""
    res = Result(mode=mode, traffic=proto.upper(), streams=streams)
    topo = Topology()
    threads: list[threading.Thread] = []
    counters = [Counters(), Counters()]
    devs: tuple[TunDevice, TunDevice] | None = None
    wall = 0.0
    try:
        if mode == "veth":
            topo.veth()
        else:
            devs = topo.tuns(offload=mode != "plain")
            fwd: Callable[[TunDevice, TunDevice, Counters], None] = (
                forward_split if mode == "split+coalesce" else forward_whole
            )
            for (src, dst), c in zip(
                ((devs[0], devs[1]), (devs[1], devs[0])), counters, strict=True
            ):
                th = threading.Thread(target=fwd, args=(src, dst, c), daemon=True)
                th.start()
                threads.append(th)
        time.sleep(0.2)
        wall0 = time.monotonic()
        bps, res.generator = run_traffic(
            topo, proto, streams, duration, use_iperf, f"{mode} {proto} x{streams}"
        )
        wall = time.monotonic() - wall0
        res.gbit_s = bps / 1e9
    except Exception as e:  # a row that fails is reported, the others still run
        res.error = f"{type(e).__name__}: {e}"
    finally:
        stats = [d.stats for d in devs] if devs else []
        topo.close()
        for th in threads:
            th.join(timeout=5)
    if devs:
        fwd_a, fwd_b = counters  # A -> B carries the data (and B -> A the ACKs)
        res.cpu_s = fwd_a.cpu + fwd_b.cpu
        res.cpu_pct = 100 * res.cpu_s / wall if wall else 0.0
        res.pps = (fwd_a.packets + fwd_b.packets) / wall if wall else 0.0
        writes_b = stats[1].get("writes", 0) if stats else 0
        writes_a = stats[0].get("writes", 0) if stats else 0
        res.pkts_per_read_ab = ratio(fwd_a.packets, fwd_a.reads)
        res.pkts_per_write_ab = ratio(fwd_a.packets, writes_b)
        res.pkts_per_read_ba = ratio(fwd_b.packets, fwd_b.reads)
        res.pkts_per_write_ba = ratio(fwd_b.packets, writes_a)
        res.extra = {
            "reads_a_to_b": fwd_a.reads,
            "packets_a_to_b": fwd_a.packets,
            "writes_to_b": writes_b,
            "reads_b_to_a": fwd_b.reads,
            "packets_b_to_a": fwd_b.packets,
            "writes_to_a": writes_a,
        }
    return res
