"""The tunnel rows: a VPN's shape. Namespaces A and B joined by a veth pair (the
underlay, ``UNDERLAY_A``/``UNDERLAY_B``/24), and in each one tunnel process
(:mod:`tunoffload.bench.tunnel`, ``python -m tunoffload.bench.tunnel MODE``) with a TUN
device (the overlay, ``OVERLAY_A``/``OVERLAY_B``/24, MTU ``TUNNEL_MTU``) and a UDP socket
to the other; traffic runs between the overlay addresses.

- ``tunnel-plain``: offload off, one ``os.read``/``os.write`` and one ``send``/``recv``
  per packet.
- ``tunnel``: ``TunDevice`` offload + ``UdpSocket``: super-packets split into datagrams
  sent as ``UDP_SEGMENT`` runs; ``UDP_GRO`` reads split and coalesced again into the TUN.
- ``tunnel+vpn``: ``tunnel`` with ``examples/vpn.py``'s encryption: WireGuard
  transport-data messages (ChaCha20-Poly1305) sealed and opened a batch per call in Rust
  (:mod:`tunoffload.psk` on :class:`tunoffload.Sealer` / :class:`tunoffload.Opener`).

And ``wireguard`` (:func:`run_wireguard_row`): WireGuard itself, two ``python -m
tunoffload wireguard`` daemons configured with ``wg`` as ``benchmarks/wireguard.py`` runs
them (:func:`tunoffload.bench.wgpeers.measure`, its own underlay and overlay addresses,
tunnel MTU 1420); the CPU is the daemons'. Needs ``wg``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import tempfile
import time
from typing import IO, Any

from tunoffload.bench import wgpeers
from tunoffload.bench.report import Result, ratio
from tunoffload.bench.topology import Topology
from tunoffload.bench.traffic import run_traffic
from tunoffload.testing import python_module

# the tunnel rows: their label -> the mode of the peer program (tunoffload.bench.tunnel)
TUNNEL_ROWS = {"tunnel-plain": "plain", "tunnel": "tunoffload", "tunnel+vpn": "vpn"}
WIREGUARD_ROW = "wireguard"  # ours against ours, the daemons configured with wg
UNDERLAY_A, UNDERLAY_B = "10.98.0.1", "10.98.0.2"
OVERLAY_A, OVERLAY_B = "10.97.0.1", "10.97.0.2"
TUNNEL_PORT = 51820
TUNNEL_MTU = 1420  # WireGuard's default: 1500 on the veth - 20 - 8 - 32 (message overhead) - 20
TUNNEL_DEV = "tunl0"
PEER_MODULE = "tunoffload.bench.tunnel"


class TunnelPeers:
    """One tunnel process (``python -m tunoffload.bench.tunnel MODE``) in each namespace of
    ``topo``, joined through its veth; ``stop`` ends them and returns their counters. If
    one cannot start, the other is stopped too and ``RuntimeError`` raised."""

    def __init__(self, topo: Topology, peer_mode: str, mtu: int = TUNNEL_MTU) -> None:
        self.procs: list[tuple[subprocess.Popen[str], IO[str]]] = []
        self.key_file: str | None = None
        if peer_mode == "vpn":
            fd, self.key_file = tempfile.mkstemp(prefix="tunoff-key-", suffix=".hex")
            with os.fdopen(fd, "w") as f:
                f.write(os.urandom(32).hex() + "\n")
        try:
            self._start(topo, peer_mode, mtu)
        except BaseException:
            self.stop()  # the ones already running, and the key file
            raise

    def _start(self, topo: Topology, peer_mode: str, mtu: int) -> None:
        for ns, me, peer, addr in (
            (topo.a, UNDERLAY_A, UNDERLAY_B, OVERLAY_A),
            (topo.b, UNDERLAY_B, UNDERLAY_A, OVERLAY_B),
        ):
            # no IPv6 on the new devices: nothing but the benchmark's traffic in the tunnel
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
            args = [
                *(peer_mode, "--tun", TUNNEL_DEV, "--address", f"{addr}/24", "--mtu", str(mtu)),
                *("--listen", f"{me}:{TUNNEL_PORT}", "--peer", f"{peer}:{TUNNEL_PORT}"),
                *(("--key-file", self.key_file) if self.key_file else ()),
            ]
            log: IO[str] = tempfile.TemporaryFile(mode="w+")
            argv = python_module(PEER_MODULE, *args)
            proc = ns.popen(*argv, text=True, stdout=subprocess.PIPE, stderr=log)
            self.procs.append((proc, log))
        for proc, err in self.procs:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            line = proc.stdout.readline() if ready else ""
            if line.strip() != "ready":
                raise RuntimeError(f"tunnel process did not start: {self._stderr(err)}")

    @staticmethod
    def _stderr(err: IO[str]) -> str:
        err.seek(0)
        text = err.read().strip()
        return text.splitlines()[-1] if text else "(no output)"

    def stop(self) -> list[dict[str, Any]]:
        """SIGTERM to both; their counters (with an ``error`` for one that had died)."""
        stats: list[dict[str, Any]] = []
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, err in self.procs:
            try:
                out, _ = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            lines = [x for x in (out or "").splitlines() if x.startswith("{")]
            s: dict[str, Any] = json.loads(lines[-1]) if lines else {}
            if not lines:
                s["error"] = f"exit {proc.returncode}: {self._stderr(err)}"
            err.close()
            stats.append(s)
        if self.key_file:
            with contextlib.suppress(OSError):
                os.unlink(self.key_file)
        self.procs = []
        return stats


def run_tunnel_row(
    label: str,
    peer_mode: str,
    proto: str,
    streams: int,
    duration: float,
    use_iperf: bool,
    mtu: int = TUNNEL_MTU,
) -> Result:
    """One tunnel row, labelled ``label``: namespaces A and B joined by veth, a tunnel
    process in each (mode ``peer_mode`` of :mod:`tunoffload.bench.tunnel`), traffic from
    A's overlay address to B's. A row that fails is returned with its ``error`` set."""
    res = Result(mode=label, traffic=proto.upper(), streams=streams)
    topo = Topology()
    peers: TunnelPeers | None = None
    stats: list[dict[str, Any]] = []
    wall = 0.0
    try:
        topo.veth(UNDERLAY_A, UNDERLAY_B)
        peers = TunnelPeers(topo, peer_mode, mtu)
        time.sleep(0.2)
        wall0 = time.monotonic()
        bps, res.generator = run_traffic(
            topo,
            proto,
            streams,
            duration,
            use_iperf,
            f"{label} {proto} x{streams}",
            dst=OVERLAY_B,
            udp_size=mtu - 28,  # IPv4 + UDP headers: datagrams fill the MTU
        )
        wall = time.monotonic() - wall0
        res.gbit_s = bps / 1e9
    except Exception as e:  # a row that fails is reported, the others still run
        res.error = f"{type(e).__name__}: {e}"
    finally:
        if peers is not None:
            stats = peers.stop()
        topo.close()
    if len(stats) == 2:
        a, b = stats
        for s in stats:
            if s.get("error") and not res.error:
                res.error = f"tunnel process: {s['error']}"
        res.cpu_s = a.get("cpu_s", 0.0) + b.get("cpu_s", 0.0)
        res.cpu_pct = 100 * res.cpu_s / wall if wall else 0.0
        packets = sum(s.get("tun_packets", 0) for s in stats)
        res.pps = packets / wall if wall else 0.0
        res.pkts_per_read_ab = ratio(a.get("tun_packets", 0), a.get("tun_reads", 0))
        res.pkts_per_write_ab = ratio(b.get("udp_datagrams", 0), b.get("tun_writes", 0))
        res.pkts_per_read_ba = ratio(b.get("tun_packets", 0), b.get("tun_reads", 0))
        res.pkts_per_write_ba = ratio(a.get("udp_datagrams", 0), a.get("tun_writes", 0))
        res.extra = {"peer_a": a, "peer_b": b, "mtu": mtu}
    return res


def run_wireguard_row(proto: str, streams: int, duration: float, use_iperf: bool) -> Result:
    """One ``wireguard`` row: our WireGuard daemon in namespaces A and B (named as the
    other rows' are), configured with ``wg``; traffic from A's tunnel address to B's. A
    row that fails is returned with its ``error`` set."""
    res = Result(mode=WIREGUARD_ROW, traffic=proto.upper(), streams=streams)

    def traffic(pair: wgpeers.Pair, a: wgpeers.Peer, b: wgpeers.Peer) -> None:
        bps, res.generator = run_traffic(
            pair,
            proto,
            streams,
            duration,
            use_iperf,
            f"{WIREGUARD_ROW} {proto} x{streams}",
            dst=b.address,
            udp_size=wgpeers.MTU - 28,  # IPv4 + UDP headers: datagrams fill the MTU
        )
        res.gbit_s = bps / 1e9

    res.extra["mtu"] = wgpeers.MTU
    return wgpeers.measure("ours", res, traffic, prefix="tunoff-bench")
