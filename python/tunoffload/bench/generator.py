"""The built-in traffic generator: a receiver and a sender, one process each, for when
iperf3 is not installed.

    python -m tunoffload.bench.generator receive tcp|udp --port P --streams N --duration S
    python -m tunoffload.bench.generator send tcp|udp --host H --port P --streams N
                                              --duration S [--size BYTES]

The receiver listens on every address, prints ``ready``, counts what arrives and prints
one line of JSON, ``{"bytes": ..., "seconds": ...}`` (from the first byte to the last),
when the senders are done: for TCP when every stream is closed, for UDP after 2 s without
a datagram. The sender runs ``--streams`` threads for ``--duration`` seconds: TCP sends
1 MiB at a time, UDP ``--size``-byte datagrams as ``UDP_SEGMENT`` runs of 40. Every wait
is bounded (the duration and 20 s more).
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import threading
import time

UDP_SEGMENT = 103  # <linux/udp.h>; not in the socket module
SLACK = 20.0  # seconds either side waits beyond the duration


def receive_tcp(port: int, streams: int, duration: float) -> tuple[int, float]:
    """Accepts ``streams`` connections and reads them until all are closed; returns
    (bytes, seconds from the first to the last)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(streams)
        s.settimeout(duration + SLACK)
        print("ready", flush=True)
        conns = [s.accept()[0] for _ in range(streams)]
    sel = selectors.DefaultSelector()
    for c in conns:
        c.setblocking(False)
        sel.register(c, selectors.EVENT_READ)
    buf = bytearray(1 << 20)
    total, first, last, open_ = 0, 0.0, 0.0, len(conns)
    end = time.monotonic() + duration + SLACK
    while open_ and time.monotonic() < end:
        for key, _ in sel.select(duration + SLACK):
            conn: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                n = conn.recv_into(buf)
            except BlockingIOError:
                continue
            if n == 0:
                sel.unregister(conn)
                conn.close()
                open_ -= 1
                continue
            last = time.monotonic()
            first = first or last
            total += n
    return total, last - first


def receive_udp(port: int, duration: float) -> tuple[int, float]:
    """Reads datagrams until 2 s pass without one after the first; returns (bytes,
    seconds from the first to the last)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.bind(("0.0.0.0", port))
        s.settimeout(2.0)
        print("ready", flush=True)
        buf = bytearray(65535)
        total, first, last = 0, 0.0, 0.0
        end = time.monotonic() + duration + SLACK
        while time.monotonic() < end:
            try:
                n = s.recv_into(buf)
            except TimeoutError:
                if first:
                    break
                continue
            last = time.monotonic()
            first = first or last
            total += n
    return total, last - first


def send_tcp(host: str, port: int, end: float) -> None:
    with socket.create_connection((host, port), timeout=10) as c:
        data = memoryview(bytes(1 << 20))
        while time.monotonic() < end:
            c.sendall(data)


def send_udp(host: str, port: int, end: float, size: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.connect((host, port))
        c.setsockopt(socket.SOL_UDP, UDP_SEGMENT, size)  # size-byte datagrams, USO
        data = bytes(size * 40)
        while time.monotonic() < end:
            try:
                c.send(data)
            except OSError:  # the queue is full, or an ICMP error: go on
                time.sleep(0.0005)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tunoffload.bench.generator",
        description="The benchmark's built-in traffic generator.",
    )
    p.add_argument("role", choices=("receive", "send"))
    p.add_argument("proto", choices=("tcp", "udp"))
    p.add_argument("--host", default="", help="send: the receiver's address")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--streams", type=int, default=1, help="TCP connections or UDP senders")
    p.add_argument("--duration", type=float, required=True, help="seconds of sending")
    p.add_argument("--size", type=int, default=1400, help="UDP datagram size (default 1400)")
    args = p.parse_args(argv)
    if args.role == "receive":
        if args.proto == "tcp":
            total, seconds = receive_tcp(args.port, args.streams, args.duration)
        else:
            total, seconds = receive_udp(args.port, args.duration)
        print(json.dumps({"bytes": total, "seconds": seconds}), flush=True)
        return 0
    if not args.host:
        p.error("send needs --host")
    end = time.monotonic() + args.duration

    def stream() -> None:
        if args.proto == "tcp":
            send_tcp(args.host, args.port, end)
        else:
            send_udp(args.host, args.port, end, args.size)

    threads = [threading.Thread(target=stream) for _ in range(args.streams)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
