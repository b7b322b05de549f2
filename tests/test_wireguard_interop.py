"""The WireGuard interop matrix: real implementations, driven only through their command
lines and ``wg``, talking to each other through a veth pair between two namespaces.

Ours (``python -m tunoffload wireguard``) against every other implementation of
``wgpeers.IMPLEMENTATIONS``, both ways round (``A>B``: A is the one told B's endpoint, so A
initiates; B learns A's endpoint from the handshake), and ours against ours; with
``TUNOFFLOAD_INTEROP_ALL=1`` also every pair of the others (a check of the harness).
Each test starts both daemons afresh in new namespaces (``wgpeers.Pair``) and checks,
through the tunnel addresses:

- ``test_handshake_and_tcp``: 16 MiB of TCP each way at once, equal SHA-256 on both ends;
  ``wg show IF dump`` on each side names the other's key, a handshake made during the
  test, the other's endpoint, more than 8 MiB received and sent;
- ``test_udp``: self-checking datagrams each way (1 byte of body to 30000 bytes, i.e.
  fragmented inside the tunnel), every one intact, with a pre-shared key on both sides;
- ``test_restart``: the initiator's daemon stopped and started again (configuration
  re-applied): a new handshake, and TCP each way again;
- ``test_roaming_port`` / ``test_roaming_address``: the initiator's listen port moves
  (``wg set``), or one side's veth address (the initiator's, else the other's where the
  initiator is one that keeps sending from a deleted address): after it sends, the other
  side's endpoint for it follows, and TCP from the other side reaches it there;
- ``test_garbage``: onto each side's listen port, from the other namespace, random bytes,
  initiations with a bad and with a valid mac1, junk of every message type, transport
  messages with a real receiver index and a bad tag, and every datagram captured (with
  ``AF_PACKET``) while the tunnel came up replayed, from its real source and from a new
  port: the daemon lives on, answers none with a handshake response, delivers nothing,
  keeps the real endpoint, and TCP still goes through;
- ``test_rekey``: a rekey mid-stream. Ours runs with ``rekey_after_time`` at 3 s and
  ``rekey_after_messages`` at 2000 (the testing timers; the others keep WireGuard's 120 s
  and 2^60), so it starts a new handshake while TCP runs: by time where it made the
  first handshake (only an initiator rekeys by time), by messages where the other did;
  the other answers; both show the later handshake and TCP goes on each way on the new
  keys. (The other side starting the rekey would take two minutes of traffic; ours
  against ours is in ``test_wireguard_daemon.py``.)

Marked with the implementations each case needs (``-m "not boringtun"``, ``-m ours``);
a case skips, saying why, when one of them is missing (not root, no ``wg``, no
boringtun-cli, no ``../shared/anchors/wireguard-go``). ``test_roaming_address`` skips
the pairs where neither side can move its own address at once (see
``wgpeers.STALE_SOURCE``).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from tunoffload.bench import wgpeers as bp
from tunoffload.bench.traffic import DATAGRAM_SIZES as SIZES
from tunoffload.bench.traffic import UdpResult, UdpSink, tcp_exchange, udp_exchange
from tunoffload.bench.wire import Capture, send_raw_datagrams
from tunoffload.testing import missing_requirements, wait_until

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
_why = missing_requirements(tools=["wg"])
pytestmark = [pytest.mark.interop, pytest.mark.skipif(_why is not None, reason=str(_why))]


def _case(a: str, b: str) -> object:
    impls = {a, b}
    reasons = [r for r in (bp.IMPLEMENTATIONS[n].unavailable(REPO) for n in sorted(impls)) if r]
    marks = [getattr(pytest.mark, n.replace("-", "_")) for n in sorted(impls)]
    if reasons:
        marks.append(pytest.mark.skip(reason="; ".join(reasons)))
    return pytest.param((a, b), id=f"{a}>{b}", marks=marks)


# Pairs that include ours test tunoffload; the others (two third-party implementations)
# only check the harness against known-good peers, so they run on request alone.
ALL_PAIRS = os.environ.get("TUNOFFLOAD_INTEROP_ALL") == "1"
CASES = [
    _case(a, b)
    for a, b in [*itertools.permutations(bp.IMPLEMENTATIONS, 2), ("ours", "ours")]
    if ALL_PAIRS or "ours" in (a, b)
]


@pytest.fixture(params=CASES)
def peers(request: pytest.FixtureRequest) -> Iterator[tuple[bp.Pair, bp.Peer, bp.Peer]]:
    """A fresh namespace pair with implementation A running in the first namespace and B
    in the second, not yet configured; everything removed afterwards."""
    a_impl, b_impl = request.param
    with bp.Pair(repo=REPO) as pair:
        yield pair, pair.start(0, a_impl), pair.start(1, b_impl)


def _assert_tcp(client: bp.Peer, server: bp.Peer, size: int) -> None:
    r = tcp_exchange(client.ns, server.ns, server.address, size)
    assert r.ok, f"{client.name} <-> {server.name}: {r.problem()}"
    assert r.client["received"] == r.server["received"] == size


def _udp(
    sender: bp.Peer, receiver: bp.Peer, count: int, first_seq: int, sizes: Sequence[int] = SIZES
) -> UdpResult:
    """Checked datagrams from ``sender``'s namespace to ``receiver``'s tunnel address."""
    return udp_exchange(sender.ns, receiver.ns, receiver.address, count, sizes, first_seq=first_seq)


def _assert_handshake(p: bp.Peer, q: bp.Peer, since: float) -> bp.PeerInfo:
    """``p``'s dump names ``q`` with a handshake made since ``since`` (time.time())."""
    # a handshake-age implementation reads 0 during the first second after a handshake
    assert wait_until(lambda: p.peer_info(q).latest_handshake != 0, 3), (
        f"{p.name} shows no handshake with {q.name}"
    )
    info = p.peer_info(q)
    assert int(since) - 1 <= info.latest_handshake <= time.time() + 1, (
        f"{p.name}: latest handshake {info.latest_handshake}, expected after {since:.0f}"
    )
    return info


def test_handshake_and_tcp(peers: tuple[bp.Pair, bp.Peer, bp.Peer]) -> None:
    _, a, b = peers
    t0 = time.time()
    bp.configure_pair(a, b, initiator=a)
    _assert_tcp(a, b, 16 * MiB)
    for p, q in ((a, b), (b, a)):
        info = _assert_handshake(p, q, t0)
        assert info.public_key == q.public_key
        assert info.endpoint == q.endpoint(), f"{p.name}'s endpoint for {q.name}"
        assert info.rx_bytes > 8 * MiB and info.tx_bytes > 8 * MiB, (
            f"{p.name}: rx {info.rx_bytes}, tx {info.tx_bytes}"
        )
        assert p.dump().listen_port == p.listen_port


def test_udp(peers: tuple[bp.Pair, bp.Peer, bp.Peer]) -> None:
    _, a, b = peers
    bp.configure_pair(a, b, initiator=a, psk=True)
    psk = a.peer_info(b).preshared_key
    assert psk and b.peer_info(a).preshared_key == psk
    for sender, receiver, first in ((a, b, 0), (b, a, 1000)):
        r = _udp(sender, receiver, 70, first_seq=first)
        what = f"{sender.name} -> {receiver.name}: {r}"
        assert not r.missing and r.arrived == r.sent and r.bad == 0, what
        assert r.duplicates <= r.resent, what


def test_restart(peers: tuple[bp.Pair, bp.Peer, bp.Peer]) -> None:
    _, a, b = peers
    bp.configure_pair(a, b, initiator=a)
    _assert_tcp(a, b, MiB)
    # The initiator restarts, forgetting its session; its first packet starts a new one.
    # Traffic must start from it: the other side would send on its old session, which
    # the restarted one cannot read, and start a new handshake only when no answer came
    # for KEEPALIVE_TIMEOUT + REKEY_TIMEOUT (15 s).
    pid = a.pid
    time.sleep(1.0)  # the new handshake's second differs from the first one's
    t0 = time.time()
    a.restart()
    assert a.pid != pid and a.peer_info(b).latest_handshake == 0
    _assert_tcp(a, b, MiB)
    _assert_handshake(a, b, t0)
    _assert_handshake(b, a, t0)


def _assert_roamed(mover: bp.Peer, other: bp.Peer, what: str) -> None:
    """After ``mover`` sends, ``other``'s endpoint for it is its new one, and a
    connection from ``other`` reaches it there."""
    r = _udp(mover, other, 10, sizes=(100,), first_seq=100)
    assert not r.missing, f"{mover.name} -> {other.name} after its {what} moved: {r}"
    assert wait_until(lambda: other.peer_info(mover).endpoint == mover.endpoint(), 5), (
        f"{other.name}'s endpoint for {mover.name} does not follow its {what}: " + mover.endpoint()
    )
    _assert_tcp(other, mover, MiB // 4)  # other's packets go to the new endpoint


def test_roaming_port(peers: tuple[bp.Pair, bp.Peer, bp.Peer]) -> None:
    _, a, b = peers
    bp.configure_pair(a, b, initiator=a)
    _assert_tcp(a, b, MiB // 4)
    assert b.peer_info(a).endpoint == a.endpoint()
    a.set("listen-port", str(a.listen_port + 100))
    a.listen_port += 100
    assert a.dump().listen_port == a.listen_port
    _assert_roamed(a, b, "listen port")


def test_roaming_address(peers: tuple[bp.Pair, bp.Peer, bp.Peer]) -> None:
    """The side that moves is one that sends from its new address at once: the
    initiator, else the other (both know each other's endpoint after the handshake)."""
    pair, a, b = peers
    movers = [p for p in (a, b) if bp.STALE_SOURCE not in p.impl.quirks]
    if not movers:
        pytest.skip(
            f"neither {a.name} nor {b.name} sends from its new address at once when its "
            "own address moves (STALE_SOURCE in wgpeers)"
        )
    mover = movers[0]
    other = b if mover is a else a
    bp.configure_pair(a, b, initiator=a)
    _assert_tcp(a, b, MiB // 4)
    assert other.peer_info(mover).endpoint == mover.endpoint()
    pair.move_address(pair.ns.index(mover.ns), bp.ROAM_ADDRESS)
    _assert_roamed(mover, other, "address")


def test_garbage(peers: tuple[bp.Pair, bp.Peer, bp.Peer], seed: int) -> None:
    pair, a, b = peers
    rng = random.Random(seed)
    # everything between the listen ports while the tunnel comes up, for the replays
    with Capture(pair.ns[0], pair.veth[0], bp.LISTEN_PORTS) as cap:
        bp.configure_pair(a, b, initiator=a)
        for sender, receiver, first in ((a, b, 0), (b, a, 1000)):
            assert not _udp(sender, receiver, 20, first_seq=first).missing
    captured = cap.datagrams
    kinds = {(d.src, d.message_type) for d in captured}
    assert {(a.underlay, 1), (b.underlay, 2), (a.underlay, 4), (b.underlay, 4)} <= kinds, (
        f"the capture missed the handshake or the data: {sorted(kinds, key=str)}"
    )
    for victim, other, veth in ((b, a, pair.veth[0]), (a, b, pair.veth[1])):
        before = victim.peer_info(other)
        forged = bp.forged_datagrams(victim, other, captured, rng)
        labels = {d.label for d in forged}
        assert {"replayed initiation" if victim is b else "replayed response"} <= labels
        assert "transport, real index, bad tag" in labels
        # a sink where the replayed data went: a replay accepted would arrive there again
        udp0 = victim.ns.udp_counters()
        with (
            UdpSink(victim.ns, victim.address) as sink,
            Capture(other.ns, veth, [victim.listen_port]) as w,
        ):
            send_raw_datagrams(other.ns, forged)
            time.sleep(0.5)
        udp1 = victim.ns.udp_counters()
        # they reached a socket (the daemon's): none dropped by the kernel on the way
        assert udp1["InDatagrams"] - udp0["InDatagrams"] >= len(forged), (udp0, udp1)
        assert udp1["InCsumErrors"] == udp0["InCsumErrors"], (udp0, udp1)
        assert udp1["NoPorts"] == udp0["NoPorts"], (udp0, udp1)
        assert victim.alive(), f"{victim.name} died: {victim.log_tail()}"
        assert not sink.received and not sink.bad, (
            f"{victim.name} delivered forged or replayed datagrams: {sink.received}"
        )
        answers = [
            d.message_type
            for d in w.datagrams
            if d.sport == victim.listen_port and d.message_type == bp.MESSAGE_RESPONSE
        ]
        assert not answers, f"{victim.name} answered a forged or replayed initiation"
        after = victim.peer_info(other)
        assert after.endpoint == before.endpoint == other.endpoint(), (
            f"{victim.name}'s endpoint for {other.name} moved to {after.endpoint}"
        )
    _assert_tcp(a, b, MiB)


REKEY_AFTER_S = 3
REKEY_AFTER_MESSAGES = 2000  # about 5 exchanges of 256 KiB
REKEY_CASES = [
    _case(a, b) for a, b in itertools.permutations(bp.IMPLEMENTATIONS, 2) if "ours" in (a, b)
]


@pytest.mark.parametrize("names", REKEY_CASES)
def test_rekey(names: tuple[str, str]) -> None:
    quick = dataclasses.replace(
        bp.IMPLEMENTATIONS["ours"],
        env={
            "TUNOFFLOAD_WG_TESTING_TIMERS": (
                f"rekey_after_time={REKEY_AFTER_S},rekey_after_messages={REKEY_AFTER_MESSAGES}"
            )
        },
    )
    impls = [quick if n == "ours" else n for n in names]
    with bp.Pair(repo=REPO) as pair:
        a, b = pair.start(0, impls[0]), pair.start(1, impls[1])
        ours, other = (a, b) if names[0] == "ours" else (b, a)
        bp.configure_pair(a, b, initiator=a)
        _assert_tcp(a, b, MiB)
        first = _assert_handshake(ours, other, 0).latest_handshake
        _assert_handshake(other, ours, 0)

        def rekeyed() -> bool:
            _assert_tcp(a, b, MiB // 4)  # traffic all along: each exchange must pass
            return (
                ours.peer_info(other).latest_handshake > first + 1  # (boringtun: an age, ±1 s)
                and other.peer_info(ours).latest_handshake > first + 1
            )

        assert wait_until(rekeyed, 6 * REKEY_AFTER_S + 10, interval=0.5), (
            f"no new handshake between {ours.name} and {other.name}"
        )
        _assert_tcp(a, b, 4 * MiB)
        assert ours.alive() and other.alive()
