"""A two-host tunnel on the public API, from the outside: 32 MiB of TCP each way.

Two network namespaces, A and B, are joined by a veth pair (the underlay, 10.93.0.0/24).
In each one a separate process (``tunnel_peer.py``, written on the public API only, not
the package's benchmark peer) opens ``TunDevice(offload=True)`` (the overlay,
10.94.0.0/24) and a connected UDP socket to the other end, and runs the two loops a
tunnel made with tunoffload runs::

    n = tun.recv_multiple(original, bufs, sizes, 0)          # TSO packets split
    udp.send_multiple(bufs, 0, sizes=sizes, count=n)         # runs as UDP_SEGMENT

    n = udp.recv_multiple(bufs, sizes, 10)                   # coalesced reads split
    tun.send_multiple(gro, bufs, 10, sizes=sizes, count=n)   # GRO before the write

One TCP connection from A's overlay address to B's (``tunoffload.bench.traffic.
tcp_exchange``, a process in each namespace) carries 32 MiB each way at the same time; the
SHA-256 of what arrived must equal that of what was sent, both ways. On SIGTERM each peer prints its
counters as JSON: they must show the traffic went through it, batched (more than one
packet per TUN read, fewer ``sendmmsg`` calls than datagrams).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _netns import Netns, can_use_netns, joined_by_veth
from tunoffload.bench.traffic import tcp_exchange
from tunoffload.testing import wait_ready

_why = can_use_netns()
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))

UNDER_A, UNDER_B = "10.93.0.1", "10.93.0.2"
OVER_A, OVER_B = "10.94.0.1", "10.94.0.2"
UDP_PORT, TCP_PORT = 51830, 5301
SIZE = 32 << 20  # each way
PEER = Path(__file__).resolve().parent / "tunnel_peer.py"
# every wait is bounded (together well under a minute); the transfer takes about a second
STARTUP_S = 10  # for both peers to print "ready"
TRANSFER_S = 30  # for the connection and both directions of the transfer, together
STOP_S = 5  # for a peer to report and exit after SIGTERM


@dataclass
class Peer:
    ns: Netns
    proc: subprocess.Popen[str]
    log: Path

    def why(self) -> str:
        """What the peer wrote on stderr, for failure messages."""
        return f"peer in {self.ns.name}: exit {self.proc.poll()}, stderr:\n{self.log.read_text()}"

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
    """A and B joined by a veth pair, one ``tunnel_peer.py`` in each; all gone afterwards."""
    peers: list[Peer] = []
    with joined_by_veth("tunoff-tun", ("ua", "ub"), (UNDER_A, UNDER_B)) as (a_ns, b_ns):
        try:
            for ns, me, other, over in (
                (a_ns, UNDER_A, UNDER_B, OVER_A),
                (b_ns, UNDER_B, UNDER_A, OVER_B),
            ):
                log = tmp / f"{ns.name}.log"
                argv = [sys.executable, str(PEER), "tun0", f"{over}/24", me, other, str(UDP_PORT)]
                with open(log, "w") as err:
                    proc = ns.popen(*argv, stdout=subprocess.PIPE, stderr=err, text=True)
                peers.append(Peer(ns, proc, log))
            for p in peers:
                try:
                    wait_ready(p.proc, "the tunnel peer", STARTUP_S)
                except RuntimeError as e:
                    pytest.fail(f"{e}; {p.why()}")
            yield peers[0], peers[1]
        finally:
            for p in peers:
                if p.proc.poll() is None:
                    p.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.proc.communicate(timeout=STOP_S)


def test_tcp_32_mib_each_way_through_a_batched_tunnel(tmp_path: Path, seed: int) -> None:
    with _two_peers(tmp_path) as (a, b):
        r = tcp_exchange(a.ns, b.ns, OVER_B, SIZE, port=TCP_PORT, seed=seed, timeout=TRANSFER_S)
        assert r.ok, f"{r.problem()}; {a.why()}; {b.why()}"
        ra, rb = a.stop(), b.stop()
    assert r.client["received"] == r.server["received"] == SIZE
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
