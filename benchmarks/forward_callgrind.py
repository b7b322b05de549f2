"""The forwarder's own work, for instruction counts: ``recv_multiple`` + ``send_multiple``
on real devices, with the kernel forwarding the packets back in a loop.

    valgrind --tool=callgrind --callgrind-out-file=cg.out \\
        python benchmarks/forward_callgrind.py idiom 2000
    callgrind_annotate --inclusive=yes cg.out | head -60

In a private network namespace (made with unshare, gone with the process): TUN devices
``cga0`` (10.98.0.1/24) and ``cgb0`` (10.98.1.1/24) with offload, IP forwarding on. A batch
of 45 TCP segments from 10.98.0.2 to 10.98.1.2 written to ``cga0`` is coalesced and
forwarded by the kernel out of ``cgb0`` as one super-packet; each iteration reads it from
``cgb0`` (split) and writes it to ``cga0`` again (coalesce), so every iteration runs the
forwarder's code on the same packet. TTL 255 minus one per pass: the batch is written afresh
every 200 iterations. Modes: ``idiom`` (README: 128 buffers of 64 KiB, ``sizes=``/``count=``),
``small`` (the idiom with 1510-byte buffers that grow as they must), ``fit``
(``fit=True`` then ``bufs[:n]``), ``ack`` (one 52-byte ACK per iteration, the other
direction of a TCP stream); ``pass`` and ``ackpass``: the same packets through ``recv`` +
``send`` whole (the passthrough forwarder); ``native``: the idiom in Rust alone on the
crate's batch I/O (``tob_fwd_run`` in ``benchmarks/rust``'s library, loaded with ctypes;
``cargo build --release --lib`` there first), on the same devices: what the binding and
the interpreter add. Callgrind counts user space only: the kernel's
part (the read,
the write, the forwarding) is not in the figures, which is what an A/B of the package wants.
Prints instructions-free timing too (wall clock, not to be trusted on a shared machine).
"""

from __future__ import annotations

import argparse
import ctypes
import pathlib
import struct
import subprocess
import sys
import time

import tunoffload as t
from _inet import inet_sum  # benchmarks/ is on sys.path when a script runs
from tunoffload.testing import unshare_netns

OFFSET = t.VIRTIO_NET_HDR_LEN
LIB = pathlib.Path(__file__).parent / "rust" / "target" / "release" / "libtunoffload_bench.so"


def native_forwarder(a: t.TunDevice, b: t.TunDevice) -> tuple[ctypes.CDLL, int]:
    """The Rust idiom reading ``b`` and writing ``a`` (``tob_fwd_new``)."""
    lib = ctypes.CDLL(str(LIB))
    lib.tob_fwd_new.argtypes = (ctypes.c_int, ctypes.c_int)
    lib.tob_fwd_new.restype = ctypes.c_void_p
    lib.tob_fwd_run.argtypes = (ctypes.c_void_p, ctypes.c_uint64)
    lib.tob_fwd_run.restype = ctypes.c_int64
    lib.tob_fwd_free.argtypes = (ctypes.c_void_p,)
    fwd = lib.tob_fwd_new(b.fileno(), a.fileno())
    if not fwd:
        raise OSError("tob_fwd_new: not TUN devices with offload")
    return lib, fwd


def tcp_segment(seq: int, payload: bytes, flags: int = 0x10) -> bytes:
    src, dst = bytes([10, 98, 0, 2]), bytes([10, 98, 1, 2])
    total = 40 + len(payload)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, 255, 6, 0, src, dst))
    struct.pack_into("!H", ip, 10, 0xFFFF ^ inet_sum(bytes(ip)))
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, seq, 1, 5 << 4, flags, 65535, 0, 0))
    pseudo = src + dst + struct.pack("!HH", 6, 20 + len(payload))
    struct.pack_into("!H", tcp, 16, 0xFFFF ^ inet_sum(pseudo + bytes(tcp) + payload))
    return bytes(ip) + bytes(tcp) + payload


def setup() -> tuple[t.TunDevice, t.TunDevice]:
    unshare_netns()  # OSError without root
    a = t.TunDevice("cga0", offload=True, up=True)
    b = t.TunDevice("cgb0", offload=True, up=True)
    a.add_address("10.98.0.1/24")
    b.add_address("10.98.1.1/24")
    for k in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0"):
        subprocess.run(["sysctl", "-q", "-w", k], check=True)
    subprocess.run(["sysctl", "-q", "-w", "net.ipv4.conf.cga0.rp_filter=0"], check=True)
    drain(b)
    return a, b


def drain(dev: t.TunDevice) -> None:
    dev.setblocking(False)
    buf = bytearray(OFFSET + 65535)
    try:
        while True:
            dev.recv(buf)
    except BlockingIOError:
        pass
    dev.setblocking(True)


MODES = ("idiom", "small", "fit", "ack", "pass", "ackpass", "native")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", nargs="?", default="idiom", choices=MODES, help="(default idiom)")
    p.add_argument("iters", nargs="?", type=int, default=1000, help="iterations (1000)")
    args = p.parse_args()
    mode, iters = args.mode, args.iters
    a, b = setup()
    if mode in ("ack", "ackpass"):
        batch = [tcp_segment(1, b"")]
    else:
        batch = [
            tcp_segment(1 + 1448 * i, bytes((i + k) % 251 for k in range(1448))) for i in range(45)
        ]
    gro = t.GroTable()
    original = bytearray(OFFSET + 65535)
    if mode == "fit":
        bufs = [bytearray() for _ in range(t.IDEAL_BATCH_SIZE)]
    elif mode == "small":  # the idiom with buffers that grow only as far as they must
        bufs = [bytearray(OFFSET + 1500) for _ in range(t.IDEAL_BATCH_SIZE)]
    else:
        bufs = [bytearray(OFFSET + 65535) for _ in range(t.IDEAL_BATCH_SIZE)]
    sizes = [0] * t.IDEAL_BATCH_SIZE

    def inject() -> None:
        a.send_multiple(gro, [bytearray(OFFSET) + s for s in batch], OFFSET)

    inject()
    whole = memoryview(original)  # made once, as the passthrough forwarder does
    segs = done = 0
    lib, fwd = native_forwarder(a, b) if mode == "native" else (None, 0)
    t0 = time.perf_counter()
    for i in range(iters):
        if i % 200 == 199:
            drain(b)
            inject()
        if lib is not None:  # iterations i .. i + 198 (to the next refill) in one call
            if i % 200 == 0:
                k = min(199, iters - i)
                n = lib.tob_fwd_run(fwd, k)
                if n < 0:
                    raise OSError("tob_fwd_run failed")
                segs += n
                done += k
            continue
        if mode in ("pass", "ackpass"):  # passthrough: one recv, one send
            k = b.recv(original)
            a.send(whole[:k])
            n = 1
        elif mode == "fit":
            n = b.recv_multiple(original, bufs, sizes, OFFSET, fit=True)
            a.send_multiple(gro, bufs[:n], OFFSET)
        else:
            n = b.recv_multiple(original, bufs, sizes, OFFSET)
            a.send_multiple(gro, bufs, OFFSET, sizes=sizes, count=n)
        segs += n
        done += 1
    dt = time.perf_counter() - t0
    iters = done
    us = dt / iters * 1e6
    if lib is not None:
        lib.tob_fwd_free(fwd)
    print(f"{mode}: {iters} iterations, {segs / iters:.1f} packets each, {us:.1f} us each")
    a.close()
    b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
