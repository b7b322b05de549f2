"""A two-host tunnel on the public API, from the outside: 32 MiB of TCP each way.

Two network namespaces, A and B, are joined by a veth pair (the underlay, 10.93.0.0/24).
In each one a separate process (``PEER`` below, written here on the public API only, not
the package's benchmark peer) opens ``TunDevice(offload=True)`` (the overlay,
10.94.0.0/24) and a connected UDP socket to the other end, and runs the two loops a
tunnel made with tunoffload runs::

    n = tun.recv_multiple(original, bufs, sizes, 0)          # TSO packets split
    udp.send_multiple(bufs, 0, sizes=sizes, count=n)         # runs as UDP_SEGMENT

    n = udp.recv_multiple(bufs, sizes, 10)                   # coalesced reads split
    tun.send_multiple(gro, bufs, 10, sizes=sizes, count=n)   # GRO before the write

This test process opens a TCP connection from A's overlay address to B's (its sockets
made inside the namespaces) and sends 32 MiB each way at the same time; the SHA-256 of
what arrived must equal that of what was sent, both ways. On SIGTERM each peer prints its
counters as JSON: they must show the traffic went through it, batched (more than one
packet per TUN read, fewer ``sendmmsg`` calls than datagrams).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _netns import Netns, can_use_netns, joined_by_veth

_why = can_use_netns()
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))

UNDER_A, UNDER_B = "10.93.0.1", "10.93.0.2"
OVER_A, OVER_B = "10.94.0.1", "10.94.0.2"
UDP_PORT, TCP_PORT = 51830, 5301
SIZE = 32 << 20  # each way
# every wait is bounded (together well under a minute); the transfer takes about a second
STARTUP_S = 10  # for both peers to print "ready"
CONNECT_S = 5  # for the TCP handshake through the tunnel
TRANSFER_S = 30  # for both directions of the transfer, together
STOP_S = 5  # for a peer to report and exit after SIGTERM

# One tunnel end: argv is TUN name, tunnel address, local underlay address, peer's, port.
PEER = r"""
import json, os, signal, socket, sys, threading, traceback
import tunoffload

name, address, local, remote, port = sys.argv[1:6]
BATCH = tunoffload.IDEAL_BATCH_SIZE
HDR = tunoffload.VIRTIO_NET_HDR_LEN
tun = tunoffload.TunDevice(name, offload=True, mtu=1420)
tun.add_address(address)
tun.up()
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, 32, 4 << 20)  # SO_RCVBUFFORCE
sock.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_SNDBUFFORCE
sock.bind((local, int(port)))
sock.connect((remote, int(port)))
udp = tunoffload.UdpSocket(sock)
c = dict.fromkeys(
    ["tun_reads", "tun_packets", "tun_bytes", "udp_reads", "udp_datagrams", "udp_bytes",
     "refused"], 0)

def tun_to_udp():
    original = bytearray(HDR + 65535)
    bufs, sizes = [bytearray(65535) for _ in range(BATCH)], [0] * BATCH
    while True:
        n = tun.recv_multiple(original, bufs, sizes, 0)
        try:
            udp.send_multiple(bufs, 0, sizes=sizes, count=n)
        except ConnectionRefusedError:  # an ICMP error from before the peer was up
            c["refused"] += 1
        c["tun_reads"] += 1
        c["tun_packets"] += n
        c["tun_bytes"] += sum(sizes[:n])

def udp_to_tun():
    gro = tunoffload.GroTable()
    bufs, sizes = [bytearray(HDR + 65535) for _ in range(BATCH)], [0] * BATCH
    while True:
        try:
            n = udp.recv_multiple(bufs, sizes, HDR)
        except ConnectionRefusedError:
            c["refused"] += 1
            continue
        tun.send_multiple(gro, bufs, HDR, sizes=sizes, count=n)
        c["udp_reads"] += 1
        c["udp_datagrams"] += n
        c["udp_bytes"] += sum(sizes[:n])

def run(loop):
    try:
        loop()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)

def report(signum, frame):
    print(json.dumps({**c, "udp": udp.stats, "tun": tun.stats}), flush=True)
    os._exit(0)

signal.signal(signal.SIGTERM, report)
for loop in (tun_to_udp, udp_to_tun):
    threading.Thread(target=run, args=(loop,), daemon=True).start()
print("ready", flush=True)
while True:
    signal.pause()
"""


@dataclass
class Peer:
    ns: Netns
    proc: subprocess.Popen[str]
    log: Path

    def why(self) -> str:
        """What the peer wrote on stderr, for failure messages."""
        return f"peer in {self.ns.name}: exit {self.proc.poll()}, stderr:\n{self.log.read_text()}"

    def wait_ready(self, deadline: float) -> None:
        assert self.proc.stdout is not None
        timeout = max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"no 'ready' within {STARTUP_S} s; {self.why()}"
        line = self.proc.stdout.readline()
        assert line == "ready\n", f"expected 'ready', got {line!r}; {self.why()}"

    def stop(self) -> dict[str, Any]:
        """SIGTERM: the peer prints its counters as one line of JSON and exits."""
        assert self.proc.poll() is None, self.why()
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no report within {STOP_S} s of SIGTERM; {self.why()}")
        assert self.proc.returncode == 0, self.why()
        report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return report


@contextlib.contextmanager
def _two_peers(tmp: Path) -> Iterator[tuple[Peer, Peer]]:
    """A and B joined by a veth pair, one PEER process in each; all gone afterwards."""
    script = tmp / "peer.py"
    script.write_text(PEER)
    peers: list[Peer] = []
    with joined_by_veth("tunoff-tun", ("ua", "ub"), (UNDER_A, UNDER_B)) as (a_ns, b_ns):
        try:
            for ns, me, other, over in (
                (a_ns, UNDER_A, UNDER_B, OVER_A),
                (b_ns, UNDER_B, UNDER_A, OVER_B),
            ):
                log = tmp / f"{ns.name}.log"
                argv = ["ip", "netns", "exec", ns.name, sys.executable, str(script)]
                argv += ["tun0", f"{over}/24", me, other, str(UDP_PORT)]
                with open(log, "w") as err:
                    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
                peers.append(Peer(ns, proc, log))
            deadline = time.monotonic() + STARTUP_S
            for p in peers:
                p.wait_ready(deadline)
            yield peers[0], peers[1]
        finally:
            for p in peers:
                if p.proc.poll() is None:
                    p.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.proc.communicate(timeout=STOP_S)


def _send(sock: socket.socket, data: bytes, errors: list[str], what: str) -> None:
    try:
        sock.sendall(data)  # the socket's timeout bounds the whole call
        sock.shutdown(socket.SHUT_WR)
    except OSError as e:
        errors.append(f"sending {what}: {e!r}")


def _receive(
    sock: socket.socket, deadline: float, into: dict[str, tuple[int, str]], what: str
) -> None:
    h, n = hashlib.sha256(), 0
    buf = bytearray(1 << 20)
    try:
        while time.monotonic() < deadline:
            k = sock.recv_into(buf)
            if k == 0:
                break
            h.update(memoryview(buf)[:k])
            n += k
    except OSError as e:
        into[what] = (n, f"error {e!r}")
        return
    into[what] = (n, h.hexdigest())


def _transfer(
    client: socket.socket, conn: socket.socket, to_b: bytes, to_a: bytes, peers: list[Peer]
) -> dict[str, tuple[int, str]]:
    """Both directions at once; (bytes, SHA-256) of what arrived, per direction. Fails
    at once if a peer dies, and after TRANSFER_S if the transfer is not done."""
    for s in (client, conn):
        s.settimeout(TRANSFER_S)
    deadline = time.monotonic() + TRANSFER_S
    errors: list[str] = []
    got: dict[str, tuple[int, str]] = {}
    threads = [
        threading.Thread(target=_send, args=(client, to_b, errors, "A->B"), daemon=True),
        threading.Thread(target=_send, args=(conn, to_a, errors, "B->A"), daemon=True),
        threading.Thread(target=_receive, args=(conn, deadline, got, "A->B"), daemon=True),
        threading.Thread(target=_receive, args=(client, deadline, got, "B->A"), daemon=True),
    ]
    for th in threads:
        th.start()
    dead: list[Peer] = []
    while any(th.is_alive() for th in threads) and time.monotonic() < deadline + 1:
        dead = [p for p in peers if p.proc.poll() is not None]
        if dead:
            break
        threads[0].join(0.1)
    if any(th.is_alive() for th in threads):  # unblock them before failing
        for s in (client, conn):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
    assert not dead, "a tunnel peer died during the transfer: " + "; ".join(p.why() for p in dead)
    assert not any(th.is_alive() for th in threads), (
        f"transfer not done within {TRANSFER_S} s: {got}, {errors}"
    )
    assert errors == [], (errors, got)
    return got


def test_tcp_32_mib_each_way_through_a_batched_tunnel(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    to_b, to_a = rng.randbytes(SIZE), rng.randbytes(SIZE)
    with _two_peers(tmp_path) as (a, b):
        with b.ns.entered():
            server = socket.create_server((OVER_B, TCP_PORT))
        with a.ns.entered():
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with server, client:
            server.settimeout(CONNECT_S)
            client.settimeout(CONNECT_S)
            try:
                client.connect((OVER_B, TCP_PORT))
                conn, _ = server.accept()
            except TimeoutError:
                pytest.fail(f"no TCP connection through the tunnel within {CONNECT_S} s")
            with conn:
                got = _transfer(client, conn, to_b, to_a, [a, b])
        ra, rb = a.stop(), b.stop()

    want = {
        "A->B": (SIZE, hashlib.sha256(to_b).hexdigest()),
        "B->A": (SIZE, hashlib.sha256(to_a).hexdigest()),
    }
    assert got == want
    for me, other in ((ra, rb), (rb, ra)):
        # the 32 MiB went through the peers: out of one TUN device, into the other
        assert me["tun_bytes"] > SIZE and other["udp_bytes"] > SIZE, (me, other)
        # batched: super-packets (TSO) read from the TUN device were split into several
        assert me["tun"]["max_read"] > 1420, me
        assert me["tun_packets"] > me["tun_reads"], me
        # and runs of them went out together (sendmmsg with UDP_SEGMENT)
        udp = me["udp"]
        assert udp["send_calls"] < udp["send_datagrams"], me
        # and what arrived was coalesced again before it was written to the TUN device
        assert me["tun"]["writes"] < me["udp_datagrams"], me
        assert me["refused"] == 0, me
