"""Refusals from outside: one table of bad arguments and packets across the public API.

Each must raise a ``tunoffload.InputError`` (a ``ValueError``) with its ``kind`` in
``ERROR_KINDS``, that kind, and the ``index`` of the buffer it is about (or ``None``); the
same mistake made on different classes (``count=-1``, empty ``bufs``, a size past its
buffer, ...) must be the same class and kind from each (the engine, ``TunDevice``,
``UdpSocket``, the AEAD's ``Sealer`` and ``Opener``). Nothing is sent or read.
"""

from __future__ import annotations

import collections
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import packets as P
import pytest
import tunoffload as t
from _netns import Netns, can_use_netns

OFF = t.VIRTIO_NET_HDR_LEN
SUP, H = P.super_tcp(False, bytes(range(256)) * 12, 1000)
HDR = t.VirtioNetHdr(**H)
PKT = P.tcp_pkt(False, b"a" * 100, seq=1000)


@dataclass
class Env:
    """What the calls are made on: a TUN device with offload, one without, a TAP device,
    and a UDP socket (with the address of a peer), all in a namespace of the test's own."""

    tun: t.TunDevice
    plain: t.TunDevice
    tap: t.TunDevice
    udp: t.UdpSocket
    peer: tuple[str, int]
    ns: Netns


def _outs(n: int = 4, size: int = 2000) -> list[bytearray]:
    return [bytearray(size) for _ in range(n)]


def _pkts(n: int = 2) -> list[bytearray]:
    return [bytearray(OFF) + P.tcp_pkt(False, b"a" * 100, seq=1000 + 100 * i) for i in range(n)]


def _twice() -> list[bytearray]:
    b = bytearray(OFF) + PKT
    return [b, b]


def _tcp_socket(env: Env) -> t.UdpSocket:
    with env.ns.entered(), socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return t.UdpSocket(s)


def _original_as_output(env: Env) -> int:
    original = bytearray(OFF + 65535)
    return env.tun.recv_multiple(original, [bytearray(2000), original], [0, 0], OFF)


# (mistake, call, kind, index): a mistake's name groups the calls that make it on
# different classes, which must all raise alike.
Case = tuple[str, Callable[[Env], Any], str, int | None]
G = t.GroTable()
SEAL, OPEN = t.Sealer(bytes(32), 1), t.Opener(bytes(32), 1)
CASES: list[Case] = [
    # --- the engine ---
    (
        "negative offset",
        lambda e: t.gso_split(SUP, HDR, _outs(), [0] * 4, -1),
        "negative_argument",
        None,
    ),
    ("negative offset", lambda e: t.handle_gro(_pkts(), -1, G), "negative_argument", None),
    ("empty bufs", lambda e: t.gso_split(SUP, HDR, [], [0] * 4), "too_few_out_bufs", None),
    ("empty sizes", lambda e: t.gso_split(SUP, HDR, _outs(), []), "sizes_too_short", None),
    (
        "output too small",
        lambda e: t.gso_split(SUP, HDR, _outs(4, 100), [0] * 4),
        "out_buf_too_small",
        0,
    ),
    ("same buffer twice", lambda e: t.handle_gro(_twice(), OFF, G), "overlapping_buffers", 1),
    (
        "no packet after offset",
        lambda e: t.handle_gro([*_pkts(1), bytearray(OFF)], OFF, G),
        "no_packet_after_offset",
        1,
    ),
    (
        "offset below the virtio header",
        lambda e: t.handle_gro(_pkts(), OFF - 1, G),
        "offset_too_small",
        None,
    ),
    (
        "short virtio header",
        lambda e: t.VirtioNetHdr.decode(b"short"),
        "virtio_hdr_too_short",
        None,
    ),
    ("empty packet", lambda e: t.gso_split(b"", HDR, _outs(), [0] * 4), "empty_packet", None),
    # --- TunDevice: receive ---
    (
        "negative offset",
        lambda e: e.tun.recv_multiple(bytearray(70000), _outs(), [0] * 4, -1),
        "negative_argument",
        None,
    ),
    (
        "empty bufs",
        lambda e: e.tun.recv_multiple(bytearray(70000), [], [0], OFF),
        "too_few_out_bufs",
        None,
    ),
    ("empty bufs", lambda e: e.plain.recv_multiple(None, [], [0], 0), "too_few_out_bufs", None),
    (
        "empty sizes",
        lambda e: e.tun.recv_multiple(bytearray(70000), _outs(), [], OFF),
        "sizes_too_short",
        None,
    ),
    (
        "read buffer too small",
        lambda e: e.tun.recv_multiple(bytearray(OFF), _outs(), [0] * 4, OFF),
        "buffer_too_small",
        None,
    ),
    ("output is the read buffer", _original_as_output, "overlapping_buffers", 1),
    (
        "output too small",
        lambda e: e.tun.recv_multiple(
            bytearray(70000), [bytearray(9), memoryview(bytearray(OFF))], [0] * 2, OFF
        ),
        "out_buf_too_small",
        1,
    ),
    # --- TunDevice: send ---
    (
        "negative count",
        lambda e: e.tun.send_multiple(G, _pkts(), OFF, count=-1),
        "negative_argument",
        None,
    ),
    (
        "negative count",
        lambda e: e.plain.send_multiple(G, _pkts(), OFF, count=-1),
        "negative_argument",
        None,
    ),
    (
        "count past bufs",
        lambda e: e.tun.send_multiple(G, _pkts(), OFF, count=3),
        "count_too_large",
        None,
    ),
    (
        "too few sizes",
        lambda e: e.tun.send_multiple(G, _pkts(), OFF, sizes=[40], count=2),
        "sizes_too_short",
        None,
    ),
    (
        "offset below the virtio header",
        lambda e: e.tun.send_multiple(G, _pkts(), OFF - 1),
        "offset_too_small",
        None,
    ),
    (
        "size past its buffer",
        lambda e: e.tun.send_multiple(G, _pkts(), OFF, sizes=[140, 5000]),
        "buffer_too_small",
        1,
    ),
    (
        "size past its buffer",
        lambda e: e.plain.send_multiple(G, _pkts(), OFF, sizes=[140, 5000]),
        "buffer_too_small",
        1,
    ),
    (
        "negative size",
        lambda e: e.tun.send_multiple(G, _pkts(), OFF, sizes=[140, -1]),
        "negative_argument",
        None,
    ),
    (
        "same buffer twice",
        lambda e: e.tun.send_multiple(G, _twice(), OFF),
        "overlapping_buffers",
        1,
    ),
    (
        "not an IP packet",
        lambda e: e.tun.send_multiple(G, [*_pkts(1), bytearray(OFF + 40)], OFF),
        "bad_ip_version",
        1,
    ),
    (
        "no packet after offset",
        lambda e: e.plain.send_multiple(G, [*_pkts(1), bytearray(OFF)], OFF),
        "no_packet_after_offset",
        1,
    ),
    # --- TunDevice: configuration ---
    (
        "offload with TAP",
        lambda e: t.TunDevice(offload=True, tap=True),
        "incompatible_options",
        None,
    ),
    ("name too long", lambda e: t.TunDevice("x" * 16), "bad_name", None),
    ("negative descriptor", lambda e: t.TunDevice.from_fd(-1), "negative_argument", None),
    ("not a MAC address", lambda e: setattr(e.tap, "mac", "02:00:00:zz:00:01"), "bad_mac", None),
    ("not a MAC address", lambda e: setattr(e.tap, "mac", b"\x02\x00"), "bad_mac", None),
    (
        "a MAC address on TUN",
        lambda e: setattr(e.tun, "mac", "02:00:00:00:00:01"),
        "incompatible_options",
        None,
    ),
    ("out of range", lambda e: setattr(e.tun, "gso_max_segs", 0), "out_of_range", None),
    ("out of range", lambda e: t.UdpSocket.max_segments(0), "out_of_range", None),
    ("bad address", lambda e: e.tun.add_address("not-an-address/24"), "bad_address", None),
    (
        "bad address",
        lambda e: e.udp.send_multiple([b"x"], addr=("no-such-host.invalid", 9)),
        "bad_address",
        None,
    ),
    (
        "bad address",
        lambda e: e.udp.send_multiple([b"x"], addr=("127.0.0.1", 70000)),
        "bad_address",
        None,
    ),
    (
        "not a network namespace",
        lambda e: t.netns("/proc/self/ns/uts").__enter__(),
        "wrong_file_type",
        None,
    ),
    ("not a UDP socket", _tcp_socket, "wrong_file_type", None),
    # --- UdpSocket ---
    (
        "negative offset",
        lambda e: e.udp.recv_multiple(_outs(), [0] * 4, -1),
        "negative_argument",
        None,
    ),
    ("negative count", lambda e: e.udp.send_multiple([b"x"], count=-1), "negative_argument", None),
    ("empty bufs", lambda e: e.udp.recv_multiple([], [0]), "too_few_out_bufs", None),
    (
        "too few sizes",
        lambda e: e.udp.send_multiple([b"x", b"y"], sizes=[1]),
        "sizes_too_short",
        None,
    ),
    ("too few sizes", lambda e: e.udp.recv_multiple(_outs(2), [0]), "sizes_too_short", None),
    ("count past bufs", lambda e: e.udp.send_multiple([b"x"], count=2), "count_too_large", None),
    (
        "size past its buffer",
        lambda e: e.udp.send_multiple([b"x", b"yy"], sizes=[1, 3]),
        "buffer_too_small",
        1,
    ),
    (
        "negative size",
        lambda e: e.udp.send_multiple([b"x", b"yy"], sizes=[1, -1]),
        "negative_argument",
        None,
    ),
    (
        "datagram too large",
        lambda e: e.udp.send_multiple([b"x", bytes(65508)], addr=e.peer),
        "datagram_too_large",
        1,
    ),
    (
        "too few addresses",
        lambda e: e.udp.send_multiple([b"x", b"y"], addr=[e.peer]),
        "too_few_addresses",
        None,
    ),
    (
        "too few addresses",
        lambda e: e.udp.recv_multiple(_outs(2), [0] * 2, 0, [None]),
        "too_few_addresses",
        None,
    ),
    # --- UdpSocket: per-datagram options ---
    (
        "bad ECN value",
        lambda e: e.udp.send_multiple([b"x"], addr=e.peer, ecn=4),
        "out_of_range",
        None,
    ),
    (
        "bad ECN value",
        lambda e: e.udp.send_multiple([b"x", b"y"], addr=e.peer, ecn=[t.ECN_CE, -1]),
        "out_of_range",
        1,
    ),
    (
        "bad source address",
        lambda e: e.udp.send_multiple([b"x"], addr=e.peer, src="0.0.0.0"),
        "bad_address",
        None,
    ),
    (
        "bad source address",
        lambda e: e.udp.send_multiple([b"x", b"y"], addr=e.peer, src=[None, "fd00::1"]),
        "bad_address",
        1,
    ),
    (
        "bad source address",
        lambda e: e.udp.send_multiple([b"x"], addr=e.peer, src="localhost"),
        "bad_address",
        None,
    ),
    (
        "too few addresses",
        lambda e: e.udp.send_multiple([b"x", b"y"], addr=e.peer, src=["127.0.0.1"]),
        "too_few_addresses",
        None,
    ),
    (
        "too few addresses",
        lambda e: e.udp.send_multiple([b"x", b"y"], addr=e.peer, ecn=[0]),
        "too_few_addresses",
        None,
    ),
    ("index past the batch", lambda e: t.RecvMeta(4).source(0), "out_of_range", None),
    ("index past the batch", lambda e: t.RecvMeta(4).swap(0, 1), "out_of_range", None),
    # --- TunDevice: offload switches ---
    (
        "switch without offload",
        lambda e: setattr(e.plain, "tcp_coalescing", True),
        "incompatible_options",
        None,
    ),
    (
        "switch without offload",
        lambda e: setattr(e.plain, "udp_segmentation", False),
        "incompatible_options",
        None,
    ),
    # --- the batch AEAD ---
    ("bad key length", lambda e: t.Sealer(bytes(31), 1), "bad_key_length", None),
    ("bad key length", lambda e: t.Opener(b"", 1), "bad_key_length", None),
    ("negative offset", lambda e: SEAL.seal(_outs(2), -1, [1, 1]), "negative_argument", None),
    ("negative offset", lambda e: OPEN.open(_outs(2), -1, [1, 1]), "negative_argument", None),
    ("negative count", lambda e: SEAL.seal(_outs(2), 16, [1, 1], -1), "negative_argument", None),
    ("negative count", lambda e: OPEN.open(_outs(2), 0, [1, 1], -1), "negative_argument", None),
    ("count past bufs", lambda e: SEAL.seal(_outs(1), 16, [1, 1]), "count_too_large", None),
    ("count past bufs", lambda e: OPEN.open(_outs(1), 0, [1, 1]), "count_too_large", None),
    ("too few sizes", lambda e: SEAL.seal(_outs(2), 16, [1], 2), "sizes_too_short", None),
    ("too few sizes", lambda e: OPEN.open(_outs(2), 0, [1], 2), "sizes_too_short", None),
    (
        "offset below the message header",
        lambda e: SEAL.seal(_outs(2), 15, [1, 1]),
        "offset_too_small",
        None,
    ),
    ("size past its buffer", lambda e: SEAL.seal(_outs(2), 16, [1, 5000]), "buffer_too_small", 1),
    ("size past its buffer", lambda e: OPEN.open(_outs(2), 0, [1, 5000]), "buffer_too_small", 1),
    ("negative size", lambda e: SEAL.seal(_outs(2), 16, [1, -1]), "negative_argument", None),
    ("same buffer twice", lambda e: SEAL.seal(_twice(), 16, [1, 1]), "overlapping_buffers", 1),
    ("same buffer twice", lambda e: OPEN.open(_twice(), 0, [1, 1]), "overlapping_buffers", 1),
    (
        "key spent",
        lambda e: t.Sealer(bytes(32), 1, counter=2**64 - 2**13 - 1).seal(_outs(1), 16, [1]),
        "key_exhausted",
        None,
    ),
]

_reason = can_use_netns()


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    if _reason is not None:
        pytest.skip(_reason)
    with Netns("tunoff-refuse") as ns:
        with ns.entered():
            tun = t.TunDevice("refuse0", offload=True, up=True, nonblocking=True)
            plain = t.TunDevice("refuse1", up=True, nonblocking=True)
            tap = t.TunDevice("refuse2", tap=True, nonblocking=True)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            peer.bind(("127.0.0.1", 0))
        s.settimeout(0.0)
        env = Env(tun, plain, tap, t.UdpSocket(s), peer.getsockname(), ns)
        yield env
        for dev in (tun, plain, tap):
            assert dev.stats["reads"] == 0 and dev.stats["writes"] == 0, "something moved"
            dev.close()
        assert env.udp.stats["send_calls"] == 0, "something was sent"
        s.close()
        peer.close()


def _refusal(env: Env, call: Callable[[Env], Any]) -> BaseException:
    with pytest.raises(Exception) as ei:
        call(env)
    return ei.value


@pytest.mark.parametrize(("mistake", "call", "kind", "index"), CASES, ids=[c[0] for c in CASES])
def test_refusal(
    env: Env, mistake: str, call: Callable[[Env], Any], kind: str, index: int | None
) -> None:
    e = _refusal(env, call)
    assert type(e) is t.InputError, f"{mistake}: {type(e).__name__}: {e}"
    assert isinstance(e, ValueError)
    assert e.kind in t.ERROR_KINDS
    assert (e.kind, e.index) == (kind, index), f"{mistake}: {e}"
    assert str(e), "the message names the problem"


def test_the_same_mistake_is_the_same_refusal_everywhere(env: Env) -> None:
    seen: dict[str, set[tuple[str, object]]] = collections.defaultdict(set)
    for mistake, call, _, _ in CASES:
        e = _refusal(env, call)
        seen[mistake].add((type(e).__name__, getattr(e, "kind", None)))
    alike = {m: s for m, s in seen.items() if len(s) > 1}
    assert not alike, f"one mistake, several refusals: {alike}"
    assert sum(1 for m, *_ in CASES if [c[0] for c in CASES].count(m) > 1) >= 20


def test_wrong_types_are_type_errors(env: Env) -> None:
    calls: list[Callable[[], Any]] = [
        lambda: env.tun.send_multiple(G, _pkts(), OFF, sizes=["x", "y"]),  # type: ignore[list-item]
        lambda: env.udp.send_multiple([b"x"], sizes=["x"]),  # type: ignore[list-item]
        lambda: env.udp.send_multiple([b"x"], addr="127.0.0.1"),  # type: ignore[arg-type]
        lambda: env.udp.send_multiple([b"x"], addr=env.peer, ecn="2"),  # type: ignore[arg-type]
        lambda: env.udp.send_multiple([b"x"], addr=env.peer, ecn=[1.5]),  # type: ignore[list-item]
        lambda: env.tun.recv_multiple(bytearray(70000), 5, [0], OFF),  # type: ignore[arg-type]
        lambda: env.udp.recv_multiple(5, [0]),  # type: ignore[arg-type]
        lambda: t.gso_split(SUP, HDR, _outs(), (0, 0, 0, 0)),  # type: ignore[arg-type]
        lambda: SEAL.seal(_outs(2), 16, (1, 1)),  # type: ignore[arg-type]
        lambda: OPEN.open(bytearray(4), 0, [1]),  # type: ignore[arg-type]
        lambda: t.Sealer("not bytes", 1),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(TypeError):
            call()
