"""UDP datagrams on the wire of a namespace: captured, and sent as they are (replayed,
forged, garbage), for the tests of what a tunnel drops. Standard library only.

- :class:`Capture`: the IPv4 UDP datagrams from or to some ports on a link of a
  namespace (``AF_PACKET``; a GSO frame split into its datagrams), as :class:`Datagram`.
- :func:`send_raw_datagrams`: datagrams sent from a namespace, from a new UDP socket, or
  as if from another address and port (a raw IPv4 socket, the UDP checksum computed).

Both run this module in the namespace (``python -m tunoffload.bench.wire capture|send``):

    capture --dev DEV --ports P[,P...] [--limit N] [--seconds S]
        prints ``ready``, captures until its stdin closes (or N datagrams, or S seconds),
        then prints the datagrams as one line of JSON;
    send
        reads the datagrams as JSON on stdin, sends them (1 ms apart), prints the port
        of the UDP socket it sent the unspoofed ones from.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunoffload.testing import Netns, python_module, wait_ready

MODULE = "tunoffload.bench.wire"
ETH_P_ALL = 0x0003
SOL_PACKET, PACKET_VNET_HDR = 263, 15  # a GSO frame comes with its segment size
PACKET_OUTGOING = 4


@dataclass
class Datagram:
    """A UDP datagram seen on a link, or one to send (``src``/``sport``: the source it
    claims; sent from a raw socket when set, else from a new UDP socket)."""

    payload: bytes
    dst: str
    dport: int
    src: str | None = None
    sport: int | None = None
    label: str = ""
    outgoing: bool = False
    time: float = 0.0

    @property
    def message_type(self) -> int:
        """The first byte (a WireGuard message's type), -1 when empty."""
        return self.payload[0] if self.payload else -1


class Capture:
    """Captures the UDP datagrams from or to ``ports`` on link ``dev`` of ``ns`` until
    ``stop`` (or leaving ``with``), at most ``limit`` of them and for at most
    ``seconds``; ``datagrams`` then holds them, in the order seen."""

    def __init__(
        self, ns: Netns, dev: str, ports: Sequence[int], limit: int = 2000, seconds: float = 60
    ) -> None:
        args = ["--dev", dev, "--ports", ",".join(map(str, ports))]
        args += ["--limit", str(limit), "--seconds", f"{seconds:g}"]
        self.proc = ns.popen(
            *python_module(MODULE, "capture", *args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.datagrams: list[Datagram] = []
        try:
            wait_ready(self.proc, "the capture")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> list[Datagram]:
        """Ends the capture; the datagrams, in the order seen."""
        if self.proc.returncode is not None:
            return self.datagrams
        try:  # stdin closed: the capture's signal to stop
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        lines = (out or "").strip().splitlines()
        if lines:
            self.datagrams = [
                Datagram(**{**d, "payload": bytes.fromhex(d["payload"])})
                for d in json.loads(lines[-1])
            ]
        return self.datagrams

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def send_raw_datagrams(ns: Netns, datagrams: Sequence[Datagram]) -> int:
    """Sends ``datagrams`` from ``ns``: the ones with a source as if from it, the others
    from one new UDP socket; returns that socket's port."""
    spec = [
        {"payload": d.payload.hex(), "dst": d.dst, "dport": d.dport}
        | ({"src": d.src, "sport": d.sport} if d.src is not None else {})
        for d in datagrams
    ]
    out = ns.run(*python_module(MODULE, "send"), input=json.dumps(spec), timeout=60).stdout
    return int(out.strip() or 0)


# --- the program, in the namespace ------------------------------------------------------


def _frames(s: socket.socket, ports: set[int]) -> list[dict[str, Any]]:
    """The UDP datagrams from or to ``ports`` in the frames queued on ``s`` now."""
    out: list[dict[str, Any]] = []
    while True:
        try:
            frame, (_, _, pkttype, _, _) = s.recvfrom(262144, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return out
        gso_type, gso_size = frame[1], struct.unpack_from("=H", frame, 4)[0]
        eth = frame[10:]  # after the virtio_net_hdr
        if len(eth) < 42 or eth[12:14] != b"\x08\x00" or eth[23] != 17:
            continue  # not IPv4 UDP
        ihl = (eth[14] & 15) * 4
        total = struct.unpack_from("!H", eth, 16)[0]
        sport, dport = struct.unpack_from("!HH", eth, 14 + ihl)
        if sport not in ports and dport not in ports:
            continue
        payload = eth[14 + ihl + 8 : 14 + total] if total else eth[14 + ihl + 8 :]
        step = gso_size if gso_type and gso_size else len(payload) or 1
        for i in range(0, max(len(payload), 1), step):
            out.append(
                {
                    "src": socket.inet_ntoa(eth[26:30]),
                    "sport": sport,
                    "dst": socket.inet_ntoa(eth[30:34]),
                    "dport": dport,
                    "outgoing": pkttype == PACKET_OUTGOING,
                    "time": time.time(),
                    "payload": payload[i : i + step].hex(),
                }
            )


def capture(dev: str, ports: set[int], limit: int, seconds: float) -> list[dict[str, Any]]:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((dev, 0))
    print("ready", flush=True)
    out: list[dict[str, Any]] = []
    end = time.monotonic() + seconds
    while len(out) < limit and time.monotonic() < end:
        r, _, _ = select.select([s, sys.stdin], [], [], 0.1)
        if sys.stdin in r and not sys.stdin.read(1):
            end = 0  # stopped: take what is queued, then no more
        out += _frames(s, ports)
    return out[:limit]


def _checksum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s: int = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def udp_ipv4(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """An IPv4 + UDP packet (the kernel fills the IP checksum on a raw socket)."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    length = 8 + len(payload)
    pseudo = s + d + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    c = 0xFFFF ^ _checksum(pseudo + struct.pack("!HHHH", sport, dport, length, 0) + payload)
    udp = struct.pack("!HHHH", sport, dport, length, c or 0xFFFF)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0, 64, 17, 0, s, d)
    return ip + udp + payload


def send(spec: list[dict[str, Any]]) -> int:
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IP_HDRINCL
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", 0))
    for d in spec:
        payload = bytes.fromhex(d["payload"])
        if d.get("src") is None:
            udp.sendto(payload, (d["dst"], d["dport"]))
        else:
            packet = udp_ipv4(d["src"], d["sport"], d["dst"], d["dport"], payload)
            raw.sendto(packet, (d["dst"], 0))
        time.sleep(0.001)
    port: int = udp.getsockname()[1]
    return port


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("capture", help="capture until stdin closes; JSON")
    c.add_argument("--dev", required=True)
    c.add_argument("--ports", required=True, help="comma-separated")
    c.add_argument("--limit", type=int, default=2000)
    c.add_argument("--seconds", type=float, default=60.0)
    sub.add_parser("send", help="send the datagrams given as JSON on stdin")
    args = p.parse_args(argv)
    if args.cmd == "capture":
        ports = {int(x) for x in args.ports.split(",")}
        print(json.dumps(capture(args.dev, ports, args.limit, args.seconds)), flush=True)
    else:
        print(send(json.loads(sys.stdin.read())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
