"""examples/vpn.py: its packet cipher and replay window, then two copies of it end to end.

The end-to-end tests build two network namespaces joined by a veth pair (the underlay) and
run one ``examples/vpn.py`` in each (``ip netns exec``); TCP and UDP cross the tunnel
between the two TUN devices (the overlay) and are checked byte for byte. Real encrypted
datagrams are captured on the underlay (an AF_PACKET socket on the veth) and sent again,
replayed and tampered with: the receiver must drop and count them, and nothing extra may
come out of its TUN device.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _netns import Netns, can_use_netns, joined_by_veth
from tunoffload.bench.traffic import tcp_exchange, udp_exchange
from tunoffload.bench.wire import Capture, Datagram, send_raw_datagrams
from tunoffload.testing import wait_until

try:  # only to check messages against an independent ChaCha20-Poly1305
    import cryptography  # noqa: F401

    NO_CRYPTO = None
except ImportError:
    NO_CRYPTO = "needs the cryptography package"

_why = can_use_netns()
needs_netns = pytest.mark.skipif(_why is not None, reason=str(_why))

VPN = Path(__file__).resolve().parent.parent / "examples" / "vpn.py"
UNDER_A, UNDER_B = "10.96.0.1", "10.96.0.2"
OVER_A, OVER_B = "10.95.0.1", "10.95.0.2"
PORT = 51820
KEY = bytes(range(32))


def _packet(payload: bytes = b"x" * 40) -> bytearray:
    """An IPv4 packet: its total length is all the cipher reads of it (to strip the
    padding on opening)."""
    return bytearray(b"\x45\x00" + struct.pack("!H", 20 + len(payload)) + bytes(16) + payload)


# --- the cipher (tunoffload.psk on the batch AEAD), without devices ---------------------


def _seal(cipher, packets, head=16):
    bufs = [bytearray(head) + p + bytearray(64) for p in packets]
    sizes = [len(p) for p in packets]
    assert cipher.seal(bufs, head, sizes, len(bufs)) == len(bufs)
    return [bytes(b[: sizes[i]]) for i, b in enumerate(bufs)]


def _open(cipher, datagrams):
    bufs = [bytearray(d) + bytearray(16) for d in datagrams]
    sizes = [len(d) for d in datagrams]
    m = cipher.open(bufs, 0, sizes, len(bufs))
    return [bytes(bufs[j][16 : 16 + sizes[j]]) for j in range(m)]


def test_cipher_round_trip_keys_and_nonces():
    from tunoffload.psk import PskCipher, direction_key, sender_id

    a_id, b_id = sender_id("10.0.0.1/24"), sender_id("10.0.0.2/24")
    assert (a_id, b_id) == (0x0100000A, 0x0200000A)  # the address bytes, little-endian
    a, b = PskCipher(KEY, "10.0.0.1/24"), PskCipher(KEY, "10.0.0.2/24")
    start = a.sealer.next_counter
    assert start > time.time_ns() - 60 * 10**9  # from the clock: above any earlier run's
    packets = [_packet(bytes([i]) * (i * 50)) for i in range(1, 9)]
    messages = _seal(a, packets)
    for i, (p, m) in enumerate(zip(packets, messages, strict=True)):
        padded = -(-len(p) // 16) * 16
        assert len(m) == 16 + padded + 16
        kind, index, counter = struct.unpack_from("<IIQ", m)
        assert (kind, index, counter) == (4, a_id, start + i)
        assert bytes(p[20:]) not in m  # encrypted
    assert _open(b, messages) == [bytes(p) for p in packets]
    # each direction has its own key: b seals under another key than a
    back = _seal(b, [_packet()])[0]
    assert struct.unpack_from("<I", back, 4)[0] == b_id
    assert direction_key(KEY, a_id) != direction_key(KEY, b_id)
    assert _open(a, [back]) == [bytes(_packet())]
    if NO_CRYPTO is None:  # byte for byte what an independent ChaCha20-Poly1305 makes
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        p, m = packets[3], messages[3]
        padded = bytes(p) + bytes(-len(p) % 16)
        nonce = bytes(4) + struct.pack("<Q", start + 3)
        assert m[16:] == ChaCha20Poly1305(direction_key(KEY, a_id)).encrypt(nonce, padded, None)


def test_cipher_drops_forged_replayed_reflected_and_malformed():
    from tunoffload.psk import PskCipher

    a, b = PskCipher(KEY, "10.0.0.1/24"), PskCipher(KEY, "10.0.0.2/24")
    good = _seal(a, [_packet(b"first" * 10), _packet(b"second" * 10)])
    third = _seal(a, [_packet(b"third" * 10)])[0]
    tampered = bytearray(third)
    tampered[30] ^= 1
    other_key = _seal(PskCipher(bytes(32), "10.0.0.1/24"), [_packet()])[0]
    reflected = _seal(b, [_packet()])[0]  # b's own message sent back to it
    not_ip = _seal(a, [bytearray(b"\x00" * 40)])[0]
    batch = [good[0], bytes(tampered), good[0], other_key, reflected, b"short", not_ip]
    # a forged message does not move the window: the real one with its counter still opens
    out = _open(b, [*batch, good[1], third])
    assert out == [bytes(_packet(w * 10)) for w in (b"first", b"second", b"third")]
    s = b.stats
    assert (s["dropped_forged"], s["dropped_replayed"], s["dropped_malformed"]) == (2, 2, 2)
    assert _open(b, [third]) == [] and b.stats["dropped_replayed"] == 3


def test_cipher_refuses_the_last_run_s_messages_after_a_sender_restart():
    """A restarted sender (same address, so the same key) continues above its old
    counters; the receiver keeps its window, so the old run's messages stay refused."""
    from tunoffload.psk import PskCipher

    b = PskCipher(KEY, "10.0.0.2/24")
    old = _seal(PskCipher(KEY, "10.0.0.1/24"), [_packet(b"old")])
    assert _open(b, old) == [bytes(_packet(b"old"))]
    new = _seal(PskCipher(KEY, "10.0.0.1/24"), [_packet(b"new")])
    assert _open(b, new) == [bytes(_packet(b"new"))]
    assert _open(b, old) == [] and b.stats["dropped_replayed"] == 1


def test_read_key(tmp_path):
    from tunoffload.psk import read_key

    good = tmp_path / "k"
    good.write_text(KEY.hex()[:30] + "\n  " + KEY.hex()[30:] + "\n")
    assert read_key(str(good)) == KEY
    for text in ("abcd", "zz" * 32, KEY.hex() + "00"):
        bad = tmp_path / "bad"
        bad.write_text(text)
        with pytest.raises(ValueError, match="64 hex"):
            read_key(str(bad))


# --- two vpn.py processes, end to end ----------------------------------------------------


@dataclass
class Peer:
    ns: Netns
    proc: subprocess.Popen[str]
    stats_file: Path
    log: Path

    def stats(self) -> dict[str, int]:
        """The counters, fresh: SIGUSR1 makes the process rewrite its stats file."""
        with contextlib.suppress(FileNotFoundError):
            self.stats_file.unlink()
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not self.stats_file.exists():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "no stats file after SIGUSR1"
            time.sleep(0.02)
        return json.loads(self.stats_file.read_text())


@dataclass
class Tunnel:
    a: Peer
    b: Peer


@contextlib.contextmanager
def _tunnel(tmp: Path) -> Iterator[Tunnel]:
    peers: list[Peer] = []
    with joined_by_veth("tunoff-vpn", ("va", "vb"), (UNDER_A, UNDER_B)) as (a_ns, b_ns):
        try:
            key = tmp / "key.hex"
            key.write_text(os.urandom(32).hex() + "\n")
            for ns, dev, peer, over in (
                (a_ns, "va", UNDER_B, OVER_A),
                (b_ns, "vb", UNDER_A, OVER_B),
            ):
                stats, log = tmp / f"{dev}.json", tmp / f"{dev}.log"
                argv = [
                    *(sys.executable, str(VPN), "--tun", "vpn0"),
                    *("--address", f"{over}/24", "--listen", f"0.0.0.0:{PORT}"),
                    *("--peer", f"{peer}:{PORT}", "--key-file", str(key)),
                    *("--stats-file", str(stats)),
                ]
                with open(log, "w") as err:
                    proc = ns.popen(*argv, stderr=err, text=True)
                peers.append(Peer(ns, proc, stats, log))
            for p in peers:  # up when it says so
                wait_until(lambda p=p: "up, peer" in p.log.read_text() or p.proc.poll() is not None)
                assert "up, peer" in p.log.read_text(), p.log.read_text()
            yield Tunnel(*peers)
        finally:
            for p in peers:
                if p.proc.poll() is None:
                    p.proc.send_signal(signal.SIGTERM)
            for p in peers:
                try:
                    p.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.proc.kill()
                    p.proc.wait()


@pytest.fixture(scope="module")
def tunnel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tunnel]:
    with _tunnel(tmp_path_factory.mktemp("vpn")) as t:
        yield t


@needs_netns
def test_tcp_through_the_tunnel_both_ways(tunnel: Tunnel):
    tcp_exchange(tunnel.a.ns, tunnel.b.ns, OVER_B, 6 << 20, 5 << 20, port=5001, check=True)
    for peer in (tunnel.a, tunnel.b):
        s = peer.stats()
        assert s["sent"] > 0 and s["received"] > 0
        assert s["dropped_forged"] == s["dropped_replayed"] == s["dropped_malformed"] == 0


@needs_netns
def test_udp_datagrams_through_the_tunnel(tunnel: Tunnel):
    # 1392 fills the 1420-byte MTU; 3000 crosses as two IP fragments, reassembled in B;
    # 12: the smallest self-checking datagram (sequence number and digest)
    sizes = (12, 13, 100, 576, 1000, 1391, 1392, 3000)
    for src, dst, dst_addr in ((tunnel.a, tunnel.b, OVER_B), (tunnel.b, tunnel.a, OVER_A)):
        r = udp_exchange(src.ns, dst.ns, dst_addr, count=32, sizes=sizes, rounds=1, port=6001)
        assert r.arrived == r.sent and not r.bad and not r.duplicates, r


@needs_netns
def test_replayed_forged_and_malformed_datagrams_are_dropped(tunnel: Tunnel):
    a, b = tunnel.a, tunnel.b
    rx, b_rx = a.ns.socket(), b.ns.socket()
    rx.bind((OVER_A, 6002))
    b_rx.bind((OVER_B, 6003))
    tx, a_tx = b.ns.socket(), a.ns.socket()  # through the tunnel
    rx.settimeout(10)
    b_rx.settimeout(10)
    with rx, tx, b_rx, a_tx:
        inner = os.urandom(333)
        wire_len = 16 + -(-(20 + 8 + len(inner)) // 16) * 16 + 16  # header, padded, tag
        with Capture(a.ns, "va", [PORT]) as cap:
            tx.sendto(inner, (OVER_A, 6002))  # B -> A, encrypted
            assert rx.recv(65535) == inner
            a_tx.sendto(inner, (OVER_B, 6003))  # one of A's own datagrams, to reflect back
            assert b_rx.recv(65535) == inner
        seen = {d.outgoing: d.payload for d in cap.datagrams if len(d.payload) == wire_len}
        incoming, outgoing = seen[False], seen[True]
        assert inner not in incoming

        before = a.stats()
        forged = bytearray(incoming)
        counter = struct.unpack_from("<Q", forged, 8)[0]
        struct.pack_into("<Q", forged, 8, counter + 1000)  # a fresh counter: not a replay
        forged[40] ^= 0x20  # and a flipped ciphertext bit
        straight = (incoming, bytes(forged), outgoing, b"\x01" * 20)  # at A's port
        send_raw_datagrams(b.ns, [Datagram(d, UNDER_A, PORT) for d in straight])
        want = {
            "dropped_replayed": before["dropped_replayed"] + 2,  # the replay, the reflection
            "dropped_forged": before["dropped_forged"] + 1,
            "dropped_malformed": before["dropped_malformed"] + 1,
        }
        wait_until(lambda: all(a.stats()[k] >= v for k, v in want.items()), 10)
        after = a.stats()
        assert {k: after[k] for k in want} == want
        assert after["received"] == before["received"]  # nothing reached A's TUN device
        # and nothing came out of it: the next datagram A's socket gets is a new one
        marker = b"marker" + os.urandom(8)
        tx.sendto(marker, (OVER_A, 6002))
        assert rx.recv(65535) == marker
        rx.setblocking(False)
        assert select.select([rx], [], [], 0)[0] == []
        assert a.stats()["received"] == before["received"] + 1


@needs_netns
def test_sigterm_and_sigint_stop_an_end_cleanly(tmp_path: Path):
    with _tunnel(tmp_path) as t:
        peers = [t.a, t.b]
        for p, sig in zip(peers, (signal.SIGTERM, signal.SIGINT), strict=True):
            p.proc.send_signal(sig)
        for p in peers:
            assert p.proc.wait(timeout=15) == 0, p.log.read_text()
            final = json.loads(p.stats_file.read_text())
            assert set(final) >= {
                "sent",
                "received",
                "dropped_forged",
                "dropped_replayed",
                "dropped_malformed",
            }
            # the device went with the process
            assert p.ns.run("ip", "link", "show", "vpn0", check=False).returncode != 0


def test_vpn_refuses_a_bad_key_file(tmp_path: Path):
    bad = tmp_path / "key.hex"
    bad.write_text("not a key")
    r = subprocess.run(
        [sys.executable, str(VPN), "--address", "10.95.0.1/24", "--listen", "127.0.0.1:1"]
        + ["--peer", "127.0.0.1:2", "--key-file", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "64 hexadecimal digits" in r.stderr, r.stderr
