"""One end of a benchmark tunnel: ``python -m tunoffload.bench.tunnel MODE --tun NAME
--address A/N --listen HOST:PORT --peer HOST:PORT [--mtu N] [--key-file F]``.

It makes the TUN device ``NAME`` (the overlay) and a UDP socket bound to ``--listen`` and
connected to ``--peer`` (the underlay), and moves packets between them in one of
``MODES``, a thread per direction; it prints ``ready`` once its device is up and, on
SIGTERM, one line of JSON counters, then exits. ``tunoffload bench``
(:mod:`tunoffload.bench.peers`) and ``benchmarks/tunnel.py`` run one per network
namespace. The modes:

- ``plain``: TUN without offload, ``os.read``/``os.write``; one ``sock.send``/``recv``
  per packet.
- ``offload-stdlib-perpacket``: ``TunDevice(offload=True)`` + ``recv_multiple`` /
  ``send_multiple``; one ``sock.send`` / ``recv_into`` per datagram.
- ``offload-stdlib-gso``: the same with ``UDP_SEGMENT`` and ``UDP_GRO`` written by hand on
  the standard library's ``socket.sendmsg`` / ``recvmsg_into``.
- ``tunoffload``: ``TunDevice`` + ``UdpSocket``, batches both ways.
- ``vpn``: ``tunoffload`` with ``examples/vpn.py``'s cipher, a batch per call
  (:mod:`tunoffload.psk`, on the batch AEAD; needs ``--key-file``).

:func:`parse_endpoint` and :func:`make_socket` are shared with ``examples/vpn.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import tunoffload as t
from tunoffload.psk import OVERHEAD, PskCipher, read_key

MODES = ("plain", "offload-stdlib-perpacket", "offload-stdlib-gso", "tunoffload", "vpn")
UDP_SEGMENT, UDP_GRO = 103, 104  # <linux/udp.h>; not in the socket module
UDP_MAX_PAYLOAD = 65507  # IPv4: 65535 - 20 (IP) - 8 (UDP)
GSO_MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS on older kernels
BATCH = t.IDEAL_BATCH_SIZE
TUN_OFFSET = 10  # headroom for the virtio header on writes to the TUN device


def parse_endpoint(text: str) -> tuple[str, int]:
    """``"10.0.0.1:51820"`` or ``"[fd00::1]:51820"`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


class Counters:
    """What one direction did: reads from its source, packets, calls on its destination."""

    def __init__(self) -> None:
        self.reads = 0
        self.packets = 0
        self.calls = 0


def _views(bufs: Sequence[bytearray]) -> list[memoryview]:
    return [memoryview(b) for b in bufs]


def _bufs(count: int = BATCH, size: int = TUN_OFFSET + 65535) -> list[bytearray]:
    return [bytearray(size) for _ in range(count)]


# Each mode is a pair of loops: TUN -> UDP and UDP -> TUN. They run until the process ends.


def plain_tx(tun: t.TunDevice, sock: socket.socket, c: Counters) -> None:
    fd, send = tun.fileno(), sock.send
    os.set_blocking(fd, True)  # as a plain program opens /dev/net/tun
    while True:
        data = os.read(fd, 65535)
        send(data)
        c.reads += 1
        c.packets += 1
        c.calls += 1


def plain_rx(tun: t.TunDevice, sock: socket.socket, c: Counters) -> None:
    fd, recv = tun.fileno(), sock.recv
    while True:
        data = recv(65535)
        os.write(fd, data)
        c.reads += 1
        c.packets += 1
        c.calls += 1


def perpacket_tx(tun: t.TunDevice, sock: socket.socket, c: Counters) -> None:
    original = bytearray(t.VIRTIO_NET_HDR_LEN + 65535)
    bufs = _bufs(size=65535)
    views, sizes, send = _views(bufs), [0] * BATCH, sock.send
    while True:
        n = tun.recv_multiple(original, bufs, sizes, 0)
        for i in range(n):
            send(views[i][: sizes[i]])
        c.reads += 1
        c.packets += n
        c.calls += n


def perpacket_rx(tun: t.TunDevice, sock: socket.socket, c: Counters) -> None:
    bufs, sizes, gro = _bufs(), [0] * BATCH, t.GroTable()
    recv_into, dontwait = sock.recv_into, socket.MSG_DONTWAIT
    while True:
        # the first datagram waits, the ones already queued are taken without waiting
        sizes[0] = recv_into(memoryview(bufs[0])[TUN_OFFSET:])
        k = 1
        while k < BATCH:
            try:
                sizes[k] = recv_into(memoryview(bufs[k])[TUN_OFFSET:], 0, dontwait)
            except BlockingIOError:
                break
            k += 1
        tun.send_multiple(gro, bufs, TUN_OFFSET, sizes=sizes, count=k)
        c.reads += k
        c.packets += k
        c.calls += 1


def gso_tx(tun: t.TunDevice, sock: socket.socket, c: Counters) -> None:
    """UDP_SEGMENT by hand: each run of equal-size packets (the last may be shorter) goes
    out in one sendmsg, its packets gathered from their buffers by the iovec."""
    original = bytearray(t.VIRTIO_NET_HDR_LEN + 65535)
    bufs = _bufs(size=65535)
    views, sizes = _views(bufs), [0] * BATCH
    send, sendmsg, pack = sock.send, sock.sendmsg, struct.Struct("=H").pack
    while True:
        n = tun.recv_multiple(original, bufs, sizes, 0)
        i = 0
        while i < n:
            size = sizes[i]
            most = min(GSO_MAX_SEGMENTS, UDP_MAX_PAYLOAD // size)
            j = i + 1
            while j < n and j - i < most and sizes[j] == size:
                j += 1
            if j < n and j - i < most and sizes[j] < size:
                j += 1  # a shorter one ends the run
            if j - i == 1:
                send(views[i][:size])
            else:
                sendmsg(
                    [views[k][: sizes[k]] for k in range(i, j)],
                    [(socket.SOL_UDP, UDP_SEGMENT, pack(size))],
                )
            c.calls += 1
            i = j
        c.reads += 1
        c.packets += n


def gso_rx(tun: t.TunDevice, sock: socket.socket, c: Counters) -> None:
    """UDP_GRO by hand: recvmsg_into one (possibly coalesced) read, split at the segment
    size from its cmsg into the TUN buffers; more reads without waiting while a full one
    still fits, then one send_multiple."""
    sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
    bufs, sizes, gro = _bufs(), [0] * BATCH, t.GroTable()
    big = bytearray(65535)
    bigv = memoryview(big)
    cmsg_space = socket.CMSG_SPACE(4)
    recvmsg_into, dontwait = sock.recvmsg_into, socket.MSG_DONTWAIT
    while True:
        k = 0
        flags = 0
        while BATCH - k >= GSO_MAX_SEGMENTS:
            try:
                nbytes, anc, _, _ = recvmsg_into([bigv], cmsg_space, flags)
            except BlockingIOError:
                break
            flags = dontwait
            c.reads += 1
            seg = nbytes
            for level, kind, data in anc:
                if level == socket.SOL_UDP and kind == UDP_GRO:
                    seg = int.from_bytes(data[:4], sys.byteorder)
            off = 0
            while off < nbytes:
                length = min(seg, nbytes - off)
                bufs[k][TUN_OFFSET : TUN_OFFSET + length] = bigv[off : off + length]
                sizes[k] = length
                k += 1
                off += length
        tun.send_multiple(gro, bufs, TUN_OFFSET, sizes=sizes, count=k)
        c.packets += k
        c.calls += 1


def tunoffload_tx(tun: t.TunDevice, udp: t.UdpSocket, c: Counters) -> None:
    original = bytearray(t.VIRTIO_NET_HDR_LEN + 65535)
    bufs, sizes = _bufs(size=65535), [0] * BATCH
    while True:
        n = tun.recv_multiple(original, bufs, sizes, 0)
        udp.send_multiple(bufs, 0, sizes=sizes, count=n)
        c.reads += 1
        c.packets += n
        c.calls += 1


def tunoffload_rx(tun: t.TunDevice, udp: t.UdpSocket, c: Counters) -> None:
    bufs, sizes, gro = _bufs(), [0] * BATCH, t.GroTable()
    while True:
        n = udp.recv_multiple(bufs, sizes, TUN_OFFSET)
        tun.send_multiple(gro, bufs, TUN_OFFSET, sizes=sizes, count=n)
        c.reads += 1
        c.packets += n
        c.calls += 1


def vpn_tx(tun: t.TunDevice, udp: t.UdpSocket, c: Counters, cipher: PskCipher) -> None:
    original = bytearray(t.VIRTIO_NET_HDR_LEN + 65535)
    head = t.TRANSPORT_HEADER_LEN  # each packet lands behind room for its message header
    bufs, sizes = _bufs(size=head + 65535 + t.TRANSPORT_OVERHEAD), [0] * BATCH
    while True:
        n = tun.recv_multiple(original, bufs, sizes, head)
        cipher.seal(bufs, head, sizes, n)
        udp.send_multiple(bufs, 0, sizes=sizes, count=n)
        c.reads += 1
        c.packets += n
        c.calls += 1


def vpn_rx(tun: t.TunDevice, udp: t.UdpSocket, c: Counters, cipher: PskCipher) -> None:
    head = t.TRANSPORT_HEADER_LEN  # the packets open behind their headers
    bufs, sizes, gro = _bufs(size=head + 65535), [0] * BATCH, t.GroTable()
    while True:
        n = udp.recv_multiple(bufs, sizes, 0)
        m = cipher.open(bufs, 0, sizes, n)
        if m:
            tun.send_multiple(gro, bufs, head, sizes=sizes, count=m)
            c.calls += 1
        c.reads += 1
        c.packets += m


def make_socket(listen: tuple[str, int], peer: tuple[str, int] | None) -> socket.socket:
    """A UDP socket bound to ``listen`` (connected to ``peer`` if given) with 4 MiB
    buffers, as a tunnel wants them."""
    family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    for force, plain in (
        (33, socket.SO_SNDBUF),  # SO_SNDBUFFORCE: past net.core.wmem_max, as root
        (32, socket.SO_RCVBUF),  # SO_RCVBUFFORCE
    ):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, 4 << 20)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, 4 << 20)
    sock.bind(listen)
    if peer is not None:
        sock.connect(peer)
    return sock


def _run(name: str, loop: Callable[..., None], args: tuple[Any, ...]) -> threading.Thread:
    def body() -> None:
        try:
            while True:
                try:
                    loop(*args)
                except ConnectionRefusedError:
                    continue  # an ICMP error from before the peer was up: go on
        except BaseException:
            # the process ends without its report: the parent sees the failure
            print(f"{name}: {traceback.format_exc()}", file=sys.stderr, flush=True)
            os._exit(1)

    th = threading.Thread(target=body, name=name, daemon=True)
    th.start()
    return th


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tunoffload.bench.tunnel", description="One end of a benchmark tunnel."
    )
    p.add_argument("mode", choices=MODES)
    p.add_argument("--tun", required=True, help="TUN device name")
    p.add_argument("--address", required=True, help="tunnel address, e.g. 10.97.0.1/24")
    p.add_argument("--listen", required=True, type=parse_endpoint, help="HOST:PORT to bind")
    p.add_argument("--peer", required=True, type=parse_endpoint, help="the peer's HOST:PORT")
    p.add_argument("--mtu", type=int, default=1420, help="TUN MTU (default 1420)")
    p.add_argument("--key-file", help="vpn mode: the pre-shared key, 64 hex digits")
    args = p.parse_args(argv)

    mode: str = args.mode
    tx_extra: tuple[Any, ...] = ()  # the vpn's ciphers, one per direction
    rx_extra: tuple[Any, ...] = ()
    ciphers: list[PskCipher] = []
    if mode == "vpn":
        if not args.key_file:
            p.error("vpn mode needs --key-file")
        ciphers = [PskCipher(read_key(args.key_file), args.address, mtu=args.mtu)]
        tx_extra = rx_extra = (ciphers[0],)
    tun = t.TunDevice(args.tun, offload=mode != "plain", mtu=args.mtu)
    if mode != "plain":
        # each super-packet read leaves in one UDP_SEGMENT send (46 at MTU 1420)
        datagram = args.mtu + (OVERHEAD if mode == "vpn" else 0)
        tun.gso_max_segs = t.UdpSocket.max_segments(datagram)
    tun.add_address(args.address)
    tun.up()
    # every mode: a bound and connected socket with 4 MiB buffers
    sock = make_socket(args.listen, args.peer)
    tx, rx = Counters(), Counters()
    udp_tx: Any = sock
    udp_rx: Any = sock
    if mode in ("tunoffload", "vpn"):
        udp_tx = t.UdpSocket(sock)  # one per thread
        udp_rx = t.UdpSocket(sock)
    loops: dict[str, tuple[Callable[..., None], Callable[..., None]]] = {
        "plain": (plain_tx, plain_rx),
        "offload-stdlib-perpacket": (perpacket_tx, perpacket_rx),
        "offload-stdlib-gso": (gso_tx, gso_rx),
        "tunoffload": (tunoffload_tx, tunoffload_rx),
        "vpn": (vpn_tx, vpn_rx),
    }
    tx_loop, rx_loop = loops[mode]

    def report(signum: int, frame: object) -> None:
        times = os.times()
        out: dict[str, Any] = {
            "mode": mode,
            "tun_reads": tx.reads,
            "tun_packets": tx.packets,
            "udp_sends": tx.calls,
            "udp_reads": rx.reads,
            "udp_datagrams": rx.packets,
            "tun_write_calls": rx.calls,
            # plain mode writes with os.write, past the device's own counters
            "tun_writes": rx.calls if mode == "plain" else tun.stats.get("writes", 0),
            "cpu_s": times.user + times.system,
            "udp_gso": bool(getattr(udp_tx, "gso", False)),
            "udp_gro": bool(getattr(udp_rx, "gro", False)),
            # UdpSocket's own counters (system calls, messages, datagrams), when in use
            "udp_stats_tx": dict(getattr(udp_tx, "stats", {})),
            "udp_stats_rx": dict(getattr(udp_rx, "stats", {})),
        }
        for name in ("dropped_forged", "dropped_replayed", "dropped_malformed"):
            out[name] = sum(c.stats[name] for c in ciphers)
        print(json.dumps(out), flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, report)
    signal.signal(signal.SIGINT, report)
    _run("tun->udp", tx_loop, (tun, udp_tx, tx, *tx_extra))
    _run("udp->tun", rx_loop, (tun, udp_rx, rx, *rx_extra))
    print("ready", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
