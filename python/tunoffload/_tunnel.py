"""Two halves of a point-to-point tunnel: the packet cipher of ``examples/vpn.py``, and the
peer program of the tunnel benchmarks.

The cipher (``PacketCipher``, ``ReplayWindow``) is ChaCha20-Poly1305 from ``cryptography``
with a pre-shared 32-byte key. Each datagram on the wire is::

    | sender id (4) | counter (8, little-endian) | ciphertext (= IP packet length) | tag (16) |

The first 12 bytes are the AEAD nonce, sent in the clear and authenticated by the tag (a
nonce is bound to its ciphertext). A nonce must never repeat for one key:

- the two peers use disjoint halves of the nonce space: the sender id is the last four
  bytes of the sender's own tunnel address (``--address``), and the two ends of one link
  have different addresses (they must, for routing; two ends configured with the same
  address would reuse nonces, so never do that with a key in use). A datagram that
  carries the receiver's own id (one of its own datagrams reflected back at it) is
  dropped as replayed;
- within one sender the 64-bit counter goes up by one per datagram and starts, when the
  process starts, at the wall clock in nanoseconds since 1970, so a restarted sender
  continues above every counter it used before (a process sends far fewer than one
  datagram per nanosecond). The receiver's replay window simply moves up to it. This
  assumes the clock is not stepped back by more than the previous run lasted; a real VPN
  (WireGuard) makes fresh keys with a handshake instead.

The receiver keeps a sliding window of the last ``REPLAY_WINDOW`` counters (a ring of
flags, as WireGuard keeps it): a counter already seen or older than the window is a
replay. The window is updated only after the tag verified, so a forged datagram cannot
move it. Without a handshake, a receiver that restarts will accept once each datagram
captured before its restart that is newer than what it has seen since; this example does
not defend against that.

The peer program, ``python -m tunoffload._tunnel MODE --tun NAME --address A/N --listen
HOST:PORT --peer HOST:PORT [--key-file F]``, is one end of a tunnel in one of the
benchmarks' modes (``MODES``); it prints ``ready`` once its device is up and, on SIGTERM,
one line of JSON counters, then exits. ``tunoffload bench`` and ``benchmarks/tunnel.py``
run one per network namespace.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import tunoffload as t

MODES = ("plain", "offload-stdlib-perpacket", "offload-stdlib-gso", "tunoffload", "vpn")
HEADER_LEN = 12  # sender id + counter: the nonce
TAG_LEN = 16
OVERHEAD = HEADER_LEN + TAG_LEN
REPLAY_WINDOW = 2048
MIN_IP_LEN = 20
UDP_SEGMENT, UDP_GRO = 103, 104  # <linux/udp.h>; not in the socket module
UDP_MAX_PAYLOAD = 65507  # IPv4: 65535 - 20 (IP) - 8 (UDP)
GSO_MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS on older kernels
BATCH = t.IDEAL_BATCH_SIZE
TUN_OFFSET = 10  # headroom for the virtio header on writes to the TUN device
_HEADER = struct.Struct("<4sQ")
_COUNTER_LIMIT = 1 << 64


# --- the cipher -------------------------------------------------------------------------


def read_key(path: str) -> bytes:
    """The 32-byte key in file ``path``, written as 64 hexadecimal digits."""
    with open(path) as f:
        text = "".join(f.read().split())
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{path}: the key must be 64 hexadecimal digits") from None
    if len(key) != 32:
        raise ValueError(f"{path}: the key must be 32 bytes (64 hex digits), not {len(key)}")
    return key


def sender_id(address: str) -> bytes:
    """The 4-byte sender id of the peer whose tunnel address is ``address`` ("10.0.0.1/24")."""
    return ipaddress.ip_interface(address).ip.packed[-4:]


class ReplayWindow:
    """The counters seen lately, as WireGuard keeps them: ``top`` is the highest accepted,
    and a ring of ``size`` flags (a power of two) says which of the counters ``top - size
    + 1 .. top`` were seen; the flag of counter c is ``ring[c % size]``. Anything older is
    too old to tell, and refused."""

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError("the window size must be a power of two")
        self.size = size
        self.top = -1
        self._mask = size - 1
        self._ring = bytearray(size)
        self._zeros = memoryview(bytes(size))

    def seen(self, counter: int) -> bool:
        """True when ``counter`` was accepted already or is too old to tell."""
        top = self.top
        if counter > top:
            return False
        return top - counter >= self.size or self._ring[counter & self._mask] == 1

    def mark(self, counter: int) -> None:
        """Records ``counter`` (call it only for a datagram whose tag verified)."""
        ring, mask = self._ring, self._mask
        top = self.top
        if counter > top:
            # the window slides up: the flags of the counters skipped over are cleared
            gap = counter - top - 1
            if gap >= self.size:
                ring[:] = self._zeros
            elif gap:
                start = (top + 1) & mask
                end = start + gap
                if end <= self.size:
                    ring[start:end] = self._zeros[:gap]
                else:
                    ring[start:] = self._zeros[: self.size - start]
                    ring[: end - self.size] = self._zeros[: end - self.size]
            self.top = counter
        ring[counter & mask] = 1


class PacketCipher:
    """Seals IP packets into datagrams and opens them again, a batch at a time.

    One instance per direction and thread: ``seal`` uses and advances the send counter,
    ``open`` the replay window and the drop counters.
    """

    def __init__(self, key: bytes, own_id: bytes, counter: int | None = None) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        if len(own_id) != 4:
            raise ValueError("the sender id is 4 bytes")
        self._aead = ChaCha20Poly1305(key)
        self._id = own_id
        self.counter = time.time_ns() if counter is None else counter
        self.window = ReplayWindow()
        self.dropped_forged = 0
        self.dropped_replayed = 0
        self.dropped_malformed = 0
        # cryptography >= 46 writes into our buffers; older versions return bytes
        self._into = hasattr(self._aead, "encrypt_into")

    def seal(
        self,
        plain: Sequence[memoryview],
        offset: int,
        sizes: Sequence[int],
        n: int,
        out: Sequence[memoryview],
        out_sizes: list[int],
    ) -> None:
        """Packet i = ``plain[i][offset:offset + sizes[i]]`` becomes datagram i =
        ``out[i][:out_sizes[i]]``. Both are memoryviews, made once (the ``out`` buffers
        hold at least 65535 bytes)."""
        counter = self.counter
        if counter + n >= _COUNTER_LIMIT:
            raise OverflowError("the send counter is exhausted: use a new key")
        self.counter = counter + n
        own_id, aead, pack = self._id, self._aead, _HEADER.pack
        into = self._into
        for i in range(n):
            size = sizes[i]
            nonce = pack(own_id, counter)
            counter += 1
            dst = out[i]
            dst[:HEADER_LEN] = nonce
            src = plain[i][offset : offset + size]
            if into:
                aead.encrypt_into(nonce, src, None, dst[HEADER_LEN : HEADER_LEN + size + TAG_LEN])
            else:
                dst[HEADER_LEN : HEADER_LEN + size + TAG_LEN] = aead.encrypt(nonce, src, None)
            out_sizes[i] = size + OVERHEAD

    def open(
        self,
        wire: Sequence[memoryview],
        sizes: Sequence[int],
        n: int,
        plain: Sequence[bytearray],
        offset: int,
        plain_sizes: list[int],
    ) -> int:
        """Datagrams ``wire[i][:sizes[i]]``, i < n, that verify and are not replays become
        packets ``plain[j][offset:offset + plain_sizes[j]]`` for j < the count returned.
        The others are counted in ``dropped_*`` and left out."""
        from cryptography.exceptions import InvalidTag

        aead, window, own_id, unpack = self._aead, self.window, self._id, _HEADER.unpack_from
        into = self._into
        j = 0
        for i in range(n):
            size = sizes[i]
            if size < OVERHEAD + MIN_IP_LEN:
                self.dropped_malformed += 1
                continue
            src = wire[i]
            sid, counter = unpack(src)
            if sid == own_id or window.seen(counter):
                self.dropped_replayed += 1
                continue
            length = size - OVERHEAD
            buf = plain[j]
            try:
                if into:
                    aead.decrypt_into(
                        src[:HEADER_LEN],
                        src[HEADER_LEN:size],
                        None,
                        memoryview(buf)[offset : offset + length],
                    )
                else:
                    nonce = bytes(src[:HEADER_LEN])
                    buf[offset : offset + length] = aead.decrypt(nonce, src[HEADER_LEN:size], None)
            except InvalidTag:
                self.dropped_forged += 1
                continue
            window.mark(counter)
            if buf[offset] >> 4 not in (4, 6):  # authentic, but not an IP packet
                self.dropped_malformed += 1
                continue
            plain_sizes[j] = length
            j += 1
        return j


# --- the peer program -----------------------------------------------------------------


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


def vpn_tx(tun: t.TunDevice, udp: t.UdpSocket, c: Counters, cipher: PacketCipher) -> None:
    original = bytearray(t.VIRTIO_NET_HDR_LEN + 65535)
    plain, sizes = _bufs(size=65535), [0] * BATCH
    plain_views = _views(plain)
    wire = _bufs(size=65535)
    wire_views, wire_sizes = _views(wire), [0] * BATCH
    while True:
        n = tun.recv_multiple(original, plain, sizes, 0)
        cipher.seal(plain_views, 0, sizes, n, wire_views, wire_sizes)
        udp.send_multiple(wire, 0, sizes=wire_sizes, count=n)
        c.reads += 1
        c.packets += n
        c.calls += 1


def vpn_rx(tun: t.TunDevice, udp: t.UdpSocket, c: Counters, cipher: PacketCipher) -> None:
    wire = _bufs(size=65535)
    wire_views, wire_sizes = _views(wire), [0] * BATCH
    plain, sizes, gro = _bufs(), [0] * BATCH, t.GroTable()
    while True:
        n = udp.recv_multiple(wire, wire_sizes, 0)
        m = cipher.open(wire_views, wire_sizes, n, plain, TUN_OFFSET, sizes)
        if m:
            tun.send_multiple(gro, plain, TUN_OFFSET, sizes=sizes, count=m)
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
        prog="python -m tunoffload._tunnel", description="One end of a benchmark tunnel."
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
    ciphers: list[PacketCipher] = []
    if mode == "vpn":
        if not args.key_file:
            p.error("vpn mode needs --key-file")
        key, own = read_key(args.key_file), sender_id(args.address)
        ciphers = [PacketCipher(key, own), PacketCipher(key, own)]
        tx_extra, rx_extra = (ciphers[0],), (ciphers[1],)
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
            out[name] = sum(getattr(c, name) for c in ciphers)
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
