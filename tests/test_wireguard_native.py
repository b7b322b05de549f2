"""The WireGuard peer with the native ``tunoffload.WireGuardDevice``: real handshakes and
real encryption through ``Interface`` and the daemon, in namespaces of the test's.

Skipped on a build without the native device (the binding adds it; until then the
Python layer is tested with the stand-in in ``test_wireguard_interface.py`` and
``test_wireguard_daemon.py``). Checked: a handshake started by a packet (staged, then
sent), TCP both ways with equal SHA-256, either side initiating, per-peer counters and
handshake times, the hook on decrypted packets, garbage and forged datagrams on the
listen port dropped and counted with the tunnel still up, two daemons configured with
``wg`` (and ``wg show dump`` on each showing the other), a rekey forced by the testing
timers, cookie replies forced by the testing under-load switch, and wireguard-go (when
installed) as the other side.
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from _netns import Netns, can_use_netns, joined_by_veth
from tunoffload import _native
from tunoffload.bench.traffic import tcp_exchange
from tunoffload.testing import genkey, missing_requirements, wait_until, wg

_why = can_use_netns() or (
    None
    if hasattr(_native, "WireGuardDevice") and hasattr(_native, "RecvMeta")
    else "this build has no native WireGuardDevice / RecvMeta yet (the binding adds them)"
)
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))
_no_wg = missing_requirements(tools=["wg"])

import tunoffload as t  # noqa: E402
from tunoffload.wireguard import Interface  # noqa: E402

UNDER_A, UNDER_B = "10.101.0.1", "10.101.0.2"
OVER_A, OVER_B = "10.102.0.1", "10.102.0.2"
SIZE = 8 << 20
WAIT_S = 30  # every wait below is bounded by this


def probe(src: Netns, dst: Netns, addr: str, tries: int = 5) -> bool:
    """A UDP datagram from ``src`` to ``addr`` (in ``dst``) and its echo back, up to
    ``tries`` times, 2 s each (the first may wait for a handshake)."""
    server = dst.socket()
    server.bind((addr, 0))
    server.settimeout(0.2)
    client = src.socket()
    client.settimeout(2)
    done = threading.Event()

    def echo() -> None:
        while not done.is_set():
            try:
                data, peer = server.recvfrom(100)
            except TimeoutError:
                continue
            server.sendto(data, peer)

    th = threading.Thread(target=echo)
    th.start()
    try:
        for i in range(tries):
            client.sendto(b"probe %d" % i, (addr, server.getsockname()[1]))
            try:
                while client.recv(100) != b"probe %d" % i:
                    pass
                return True
            except TimeoutError:
                continue
        return False
    finally:
        done.set()
        th.join(WAIT_S)
        server.close()
        client.close()


class Pair:
    def __init__(self, a_ns: Netns, b_ns: Netns, a: Interface, b: Interface) -> None:
        self.a_ns, self.b_ns, self.a, self.b = a_ns, b_ns, a, b


def initiate(p: Pair) -> bool:
    """A datagram from the side that knows the other's endpoint, and its echo."""
    if p.initiator is p.a:  # type: ignore[attr-defined]
        return probe(p.a_ns, p.b_ns, OVER_B)
    return probe(p.b_ns, p.a_ns, OVER_A)


@pytest.fixture(params=["a-initiates", "b-initiates"])
def pair(request) -> Iterator[Pair]:  # type: ignore[no-untyped-def]
    tag = f"wgn{os.getpid() % 100000}"
    seen: list[int] = []
    with joined_by_veth(tag, (f"{tag}a", f"{tag}b"), (UNDER_A, UNDER_B)) as (a_ns, b_ns):
        (ka, pa), (kb, pb) = genkey(), genkey()
        a = Interface("wga", netns=a_ns.name, private_key=ka, addresses=[f"{OVER_A}/24"], up=True)
        try:
            b = Interface(
                "wgb",
                netns=b_ns.name,
                private_key=kb,
                addresses=[f"{OVER_B}/24"],
                up=True,
                hook=lambda bufs, off, sizes, n: seen.append(n),
            )
        except BaseException:
            a.stop()
            raise
        try:
            # only the initiator knows the other's endpoint
            a_knows = request.param == "a-initiates"
            a.set_peer(pb, allowed_ips=[f"{OVER_B}/32"],
                       endpoint=(UNDER_B, b.listen_port) if a_knows else None)  # fmt: skip
            b.set_peer(pa, allowed_ips=[f"{OVER_A}/32"],
                       endpoint=None if a_knows else (UNDER_A, a.listen_port))  # fmt: skip
            a.start()
            b.start()
            p = Pair(a_ns, b_ns, a, b)
            p.seen = seen  # type: ignore[attr-defined]
            p.initiator = a if a_knows else b  # type: ignore[attr-defined]
            yield p
        finally:
            a.stop()
            b.stop()


def test_handshake_and_tcp_both_ways(pair: Pair) -> None:
    p = pair
    assert initiate(p)  # the first packet is staged, a handshake sends it
    tcp_exchange(p.a_ns, p.b_ns, OVER_B, SIZE, port=5601, check=True)
    for iface in (p.a, p.b):
        (peer,) = iface.peers()
        assert peer["last_handshake"][0] > 0
        assert peer["rx_bytes"] > SIZE and peer["tx_bytes"] > SIZE
        assert peer["endpoint"] is not None  # learned by the responder (roaming)
    assert sum(p.seen) > SIZE // 1420  # type: ignore[attr-defined]
    stats = p.a.stats()
    assert stats["tun_packets"] > stats["tun_reads"]  # super-packets, split and sealed


def test_garbage_on_the_listen_port_is_dropped(pair: Pair) -> None:
    p = pair
    assert initiate(p)
    before = p.b.device.stats()
    junk = p.a_ns.socket()
    with junk:
        rng = __import__("random").Random(20)
        for _ in range(200):
            junk.sendto(rng.randbytes(rng.randrange(1, 200)), (UNDER_B, p.b.listen_port))
        # type 1 with a bad mac1, type 4 with an unknown index, type 4 with a bad tag
        junk.sendto(b"\x01\0\0\0" + bytes(144), (UNDER_B, p.b.listen_port))
        junk.sendto(b"\x04\0\0\0" + struct.pack("<IQ", 0xDEADBEEF, 1) + bytes(48),
                    (UNDER_B, p.b.listen_port))  # fmt: skip
    assert wait_until(lambda: sum(p.b.device.stats().values()) > sum(before.values()))
    tcp_exchange(p.a_ns, p.b_ns, OVER_B, 1 << 20, port=5602, check=True)  # still up


def test_recv_meta_sources() -> None:
    meta = _native.RecvMeta(4)
    with Netns("wgpy-m") as ns:
        rx = ns.socket()
        tx = ns.socket()
        with rx, tx:
            rx.bind(("127.0.0.1", 0))
            tx.bind(("127.0.0.1", 0))
            tx.sendto(b"x", rx.getsockname())
            udp = t.UdpSocket(rx)
            bufs, sizes = [bytearray(100) for _ in range(4)], [0] * 4
            n = udp.recv_multiple(bufs, sizes, 0, meta=meta)  # type: ignore[call-arg]
            assert n == 1
            assert tuple(meta.source(0))[:2] == tx.getsockname()


# --- the daemon with the native device ------------------------------------------------


def daemon_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNOFFLOAD_WG_TESTING")}
    env.pop("WG_PROCESS_FOREGROUND", None)
    env.update(extra)
    return env


class Side:
    """A daemon (``argv`` + the interface name) in ``ns`` with ``rundir`` on its
    ``/run/wireguard``, once its configuration socket is there."""

    def __init__(self, ns: Netns, rundir: Path, name: str, argv: list[str], env: dict[str, str]):
        self.ns, self.rundir, self.name = ns, str(rundir), name
        log = f"{self.rundir}.log"
        self.daemon = ns.start(*argv, log=log, rundir=self.rundir, env=env)
        sock = os.path.join(self.rundir, f"{name}.sock")
        try:
            self.daemon.ready(lambda: os.path.exists(sock), f"{name}'s configuration socket")
        except BaseException:
            self.daemon.stop()
            raise

    def wg(self, *args: str) -> str:
        return wg(*args, ns=self.ns, rundir=self.rundir).stdout

    def dump_peer(self) -> list[str]:
        return self.wg("show", self.name, "dump").splitlines()[1].split("\t")

    def stop(self) -> None:
        self.daemon.stop(WAIT_S)


OURS = [sys.executable, "-m", "tunoffload", "wireguard", "-f"]


@pytest.fixture
def daemons(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A factory: two daemons (argv per side) in namespaces joined by veth, configured
    with wg (A knows B's endpoint), addresses up; stopped afterwards."""
    tag = f"wgd{os.getpid() % 100000}"
    made: list[Side] = []

    def make(argv_a: list[str], argv_b: list[str], env_a: dict[str, str] | None = None,
             env_b: dict[str, str] | None = None) -> tuple[Side, Side]:  # fmt: skip
        a_ns, b_ns = nets
        name = "wg0"
        sides = []
        for label, ns, argv, env in (("a", a_ns, argv_a, env_a), ("b", b_ns, argv_b, env_b)):
            d = tmp_path / label
            d.mkdir(exist_ok=True)
            side = Side(ns, d, name, [*argv, name], env or daemon_env())
            made.append(side)
            sides.append(side)
        a, b = sides
        (ka, pa), (kb, pb) = genkey(), genkey()
        (tmp_path / "ka").write_text(ka)
        (tmp_path / "kb").write_text(kb)
        a.wg("set", name, "private-key", str(tmp_path / "ka"), "listen-port", "51801",
             "peer", pb, "endpoint", f"{UNDER_B}:51802", "allowed-ips", f"{OVER_B}/32")  # fmt: skip
        b.wg("set", name, "private-key", str(tmp_path / "kb"), "listen-port", "51802",
             "peer", pa, "allowed-ips", f"{OVER_A}/32")  # fmt: skip
        for ns, over in ((a_ns, OVER_A), (b_ns, OVER_B)):
            ns.run("ip", "addr", "add", f"{over}/24", "dev", name)
            ns.run("ip", "link", "set", name, "mtu", "1420", "up")
        return a, b

    with joined_by_veth(tag, (f"{tag}a", f"{tag}b"), (UNDER_A, UNDER_B)) as nets:
        try:
            yield make, nets
        finally:
            for side in made:
                side.stop()


@pytest.mark.skipif(_no_wg is not None, reason=str(_no_wg))
def test_daemons_with_wg(daemons) -> None:  # type: ignore[no-untyped-def]
    make, (a_ns, b_ns) = daemons
    a, b = make(OURS, OURS)
    tcp_exchange(a_ns, b_ns, OVER_B, 16 << 20, port=5603, check=True)
    for side in (a, b):
        peer = side.dump_peer()
        assert int(peer[4]) > 0  # latest handshake
        assert int(peer[5]) > 8 << 20 and int(peer[6]) > 8 << 20  # rx, tx


@pytest.mark.skipif(_no_wg is not None, reason=str(_no_wg))
def test_rekey_forced_by_testing_timers(daemons) -> None:  # type: ignore[no-untyped-def]
    make, (a_ns, b_ns) = daemons
    env = daemon_env(TUNOFFLOAD_WG_TESTING_TIMERS="rekey_after_time=2,rekey_timeout=1")
    a, b = make(OURS, OURS, env, env)
    assert probe(a_ns, b_ns, OVER_B)
    first = int(a.dump_peer()[4])
    # traffic for longer than the rekey time: the initiator makes new keys
    assert wait_until(lambda: probe(a_ns, b_ns, OVER_B, 2) and int(a.dump_peer()[4]) > first, 12)
    tcp_exchange(a_ns, b_ns, OVER_B, 1 << 20, port=5604, check=True)


@pytest.mark.skipif(_no_wg is not None, reason=str(_no_wg))
def test_cookie_replies_under_load(daemons) -> None:  # type: ignore[no-untyped-def]
    make, (a_ns, b_ns) = daemons
    quick = daemon_env(TUNOFFLOAD_WG_TESTING_TIMERS="rekey_timeout=1")
    loaded = daemon_env(
        TUNOFFLOAD_WG_TESTING_TIMERS="rekey_timeout=1", TUNOFFLOAD_WG_TESTING_UNDER_LOAD="1"
    )
    a, b = make(OURS, OURS, quick, loaded)
    # B answers A's first initiation with a cookie reply; A's retry carries mac2
    assert probe(a_ns, b_ns, OVER_B, 7)
    assert int(b.dump_peer()[4]) > 0


@pytest.mark.skipif(
    _no_wg is not None or shutil.which("wireguard-go") is None,
    reason="needs wg and wireguard-go",
)
@pytest.mark.parametrize("ours_side", ["a", "b"])
def test_against_wireguard_go(daemons, ours_side: str) -> None:  # type: ignore[no-untyped-def]
    make, (a_ns, b_ns) = daemons
    go = ["wireguard-go", "-f"]
    env_go = daemon_env(WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
    if ours_side == "a":
        a, b = make(OURS, go, None, env_go)
    else:
        a, b = make(go, OURS, env_go, None)
    tcp_exchange(a_ns, b_ns, OVER_B, 4 << 20, port=5605, check=True)
    for side in (a, b):
        assert int(side.dump_peer()[4]) > 0
