"""The traffic program, run in a network namespace (``python -m tunoffload.bench.generator``)
by :mod:`tunoffload.bench.traffic`. Standard library only.

Throughput, for the benchmark rows (when iperf3 is not installed)::

    receive tcp|udp --port P --streams N --duration S
    send tcp|udp --host H --port P --streams N --duration S [--size BYTES]

The receiver listens on every address, prints ``ready``, counts what arrives and prints
one line of JSON, ``{"bytes": ..., "seconds": ...}`` (from the first byte to the last),
when the senders are done: for TCP when every stream is closed, for UDP after 2 s without
a datagram. The sender runs ``--streams`` threads for ``--duration`` seconds: TCP sends
1 MiB at a time, UDP ``--size``-byte datagrams as ``UDP_SEGMENT`` runs of 40.

Checked traffic, for the tests::

    exchange --listen ADDR|--connect ADDR --port P --size N [--seed S] --timeout S
    sink --bind ADDR --port P [--idle S]
    datagrams --host H --port P SEQ:SIZE...

``exchange``: one TCP connection (the listening side prints ``ready`` first; the
connecting side retries until the timeout, as the first SYN may wait for a tunnel's
handshake); each end sends ``--size`` bytes (random; from ``random.Random(seed)`` with
``--seed``) while it receives, then prints one line of JSON: ``sent``, ``sent_sha256``,
``received``, ``received_sha256``, ``error``. ``datagrams`` sends :func:`datagram`
``SEQ`` of ``SIZE`` bytes for each argument, paced; ``sink`` prints ``ready``, then a line
``SEQ LENGTH ok|bad`` for each datagram (its digest checked) until its stdin closes or
``--idle`` seconds pass without one. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import select
import selectors
import socket
import struct
import sys
import threading
import time

UDP_SEGMENT = 103  # <linux/udp.h>; not in the socket module
SLACK = 20.0  # seconds either side waits beyond the duration
DATAGRAM_HEADER = 12  # a checked datagram's sequence number (4) and digest (8)


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


# --- checked traffic ------------------------------------------------------------------


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _connect(addr: str, port: int, deadline: float) -> socket.socket:
    """A TCP connection, retried (a refusal, or no answer yet) until ``deadline``."""
    while True:
        try:
            left = max(0.5, deadline - time.monotonic())
            return socket.create_connection((addr, port), timeout=left)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def exchange(
    listen: str | None, connect: str | None, port: int, size: int, seed: int | None, timeout: float
) -> dict[str, object]:
    """One TCP connection, ``size`` bytes sent while what comes is received; both
    counted and hashed (see the module)."""
    deadline = time.monotonic() + timeout
    if listen is not None:
        with socket.socket(_family(listen), socket.SOCK_STREAM) as ls:
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind((listen, port))
            ls.listen(1)
            ls.settimeout(timeout)
            print("ready", flush=True)
            conn = ls.accept()[0]
    else:
        assert connect is not None
        conn = _connect(connect, port, deadline)
    conn.settimeout(max(1.0, deadline - time.monotonic()))
    rng = random.Random(seed) if seed is not None else None
    sent, got, errors = hashlib.sha256(), hashlib.sha256(), []

    def send() -> None:
        try:
            left = size
            while left:
                n = min(left, 1 << 16)
                chunk = rng.randbytes(n) if rng else os.urandom(n)
                sent.update(chunk)
                conn.sendall(chunk)
                left -= n
            conn.shutdown(socket.SHUT_WR)
        except OSError as e:
            errors.append(f"sending: {e!r}")

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    received, buf = 0, bytearray(1 << 16)
    view = memoryview(buf)
    with conn:
        try:
            while k := conn.recv_into(buf):
                got.update(view[:k])
                received += k
        except OSError as e:
            errors.append(f"receiving: {e!r}")
        sender.join(max(0.0, deadline - time.monotonic()))
        if sender.is_alive():
            errors.append("sending: not done in time")
    return {
        "sent": size,
        "sent_sha256": sent.hexdigest(),
        "received": received,
        "received_sha256": got.hexdigest(),
        "error": "; ".join(errors),
    }


def datagram(seq: int, size: int) -> bytes:
    """Datagram ``seq``: sequence number (4 bytes), the first 8 bytes of the SHA-256 of
    the body, the body (``size - 12`` bytes, a function of ``seq``)."""
    body = random.Random(seq).randbytes(max(0, size - DATAGRAM_HEADER))
    return struct.pack("!I", seq) + hashlib.sha256(body).digest()[:8] + body


def check_datagram(data: bytes) -> tuple[int, bool]:
    """The sequence number of a :func:`datagram` (-1 if too short) and whether its body
    is intact."""
    seq = struct.unpack_from("!I", data)[0] if len(data) >= 4 else -1
    ok = len(data) >= DATAGRAM_HEADER and hashlib.sha256(data[12:]).digest()[:8] == data[4:12]
    return seq, ok


def sink(addr: str, port: int, idle: float) -> None:
    with socket.socket(_family(addr), socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((addr, port))
        print("ready", flush=True)
        buf = bytearray(65536)
        last = time.monotonic()
        while time.monotonic() - last < idle:
            r, _, _ = select.select([s, sys.stdin], [], [], 0.2)
            if sys.stdin in r and not sys.stdin.read(1):
                return  # the parent is done
            if s in r:
                n = s.recv_into(buf)
                last = time.monotonic()
                seq, ok = check_datagram(bytes(buf[:n]))
                print(seq, n, "ok" if ok else "bad", flush=True)


def send_datagrams(host: str, port: int, specs: list[tuple[int, int]]) -> None:
    with socket.socket(_family(host), socket.SOCK_DGRAM) as s:
        for i, (seq, size) in enumerate(specs):
            s.sendto(datagram(seq, size), (host, port))
            if i % 8 == 7:
                time.sleep(0.002)  # paced: no socket buffer is the bottleneck


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tunoffload.bench.generator", description=__doc__.split("\n\n")[0]
    )
    sub = p.add_subparsers(dest="role", required=True)
    for role in ("receive", "send"):
        r = sub.add_parser(role, help=f"throughput: {role}")
        r.add_argument("proto", choices=("tcp", "udp"))
        r.add_argument("--host", default="", help="send: the receiver's address")
        r.add_argument("--port", type=int, required=True)
        r.add_argument("--streams", type=int, default=1, help="TCP connections or UDP senders")
        r.add_argument("--duration", type=float, required=True, help="seconds of sending")
        r.add_argument("--size", type=int, default=1400, help="UDP datagram size (1400)")
    x = sub.add_parser("exchange", help="TCP both ways, counted and hashed")
    side = x.add_mutually_exclusive_group(required=True)
    side.add_argument("--listen", metavar="ADDR")
    side.add_argument("--connect", metavar="ADDR")
    x.add_argument("--port", type=int, required=True)
    x.add_argument("--size", type=int, required=True, help="bytes to send")
    x.add_argument("--seed", type=int, help="the bytes from random.Random(SEED)")
    x.add_argument("--timeout", type=float, default=60.0, help="for all of it (60 s)")
    k = sub.add_parser("sink", help="checked datagrams: receive")
    k.add_argument("--bind", required=True, metavar="ADDR")
    k.add_argument("--port", type=int, required=True)
    k.add_argument("--idle", type=float, default=60.0, help="stop after this long idle")
    d = sub.add_parser("datagrams", help="checked datagrams: send")
    d.add_argument("--host", required=True)
    d.add_argument("--port", type=int, required=True)
    d.add_argument("specs", nargs="*", metavar="SEQ:SIZE")
    args = p.parse_args(argv)
    if args.role == "exchange":
        result = exchange(args.listen, args.connect, args.port, args.size, args.seed, args.timeout)
        print(json.dumps(result), flush=True)
        return 0
    if args.role == "sink":
        sink(args.bind, args.port, args.idle)
        return 0
    if args.role == "datagrams":
        pairs = (spec.split(":") for spec in args.specs)
        send_datagrams(args.host, args.port, [(int(q), int(n)) for q, n in pairs])
        return 0
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
