"""The tunnel's UDP half, for instruction counts: ``UdpSocket.send_multiple`` of 45
datagrams of 1448 bytes (one ``UDP_SEGMENT`` message) and ``UdpSocket.recv_multiple`` of
them (one ``UDP_GRO`` read) over loopback, as the tunnel's two loops call them.

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=cg.out \\
        python benchmarks/udp_callgrind.py 1200
    callgrind_annotate cg.out | head -40

Run it for N=200 and N=1200 and take (total(1200) - total(200)) / 1000: the instructions
of one iteration, without the start-up. In a private network namespace (made with unshare
for this process, gone with it), loopback only. The ``forward_callgrind.py`` idiom counts
the TUN half (split on read, coalescing on write); this counts the other. Callgrind counts
user space only: the kernel's part is not in the figures, which is what an A/B of the
package wants. It uses no helper of the package beyond ``UdpSocket``, so the same script
runs against an older build (``--help`` aside, it needs root).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import socket
import subprocess
import time

import tunoffload as t

OFFSET = 10  # the TUN side's virtio header, as the tunnel leaves room for it
SIZE, COUNT = 1448, 45


def private_netns() -> None:
    """This process into a network namespace of its own, loopback up."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
        err = ctypes.get_errno()
        raise SystemExit(f"unshare(CLONE_NEWNET): {os.strerror(err)} (needs root)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("iters", nargs="?", type=int, default=1000, help="iterations (1000)")
    args = p.parse_args()
    private_netns()
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    a.connect(b.getsockname())
    tx, rx = t.UdpSocket(a), t.UdpSocket(b)
    out = [bytearray(OFFSET + 65535) for _ in range(64)]
    for i, buf in enumerate(out):
        buf[OFFSET : OFFSET + SIZE] = bytes((i + k) % 251 for k in range(SIZE))
    out_sizes = [SIZE] * 64
    bufs, sizes = [bytearray(OFFSET + 65535) for _ in range(64)], [0] * 64
    t0 = time.perf_counter()
    for _ in range(args.iters):
        tx.send_multiple(out, OFFSET, sizes=out_sizes, count=COUNT)
        got = 0
        while got < COUNT:
            got += rx.recv_multiple(bufs, sizes, OFFSET)
    wall = time.perf_counter() - t0
    # One more, checked: every datagram arrives whole and in order.
    tx.send_multiple(out, OFFSET, sizes=out_sizes, count=COUNT)
    got = 0
    while got < COUNT:
        k = rx.recv_multiple(bufs, sizes, OFFSET)
        for j in range(k):
            want = out[got + j][OFFSET : OFFSET + SIZE]
            if sizes[j] != SIZE or bufs[j][OFFSET : OFFSET + SIZE] != want:
                raise SystemExit(f"datagram {got + j} came back changed")
        got += k
    print(f"{args.iters} iterations of {COUNT} datagrams: {wall / args.iters * 1e6:.1f} us each")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
