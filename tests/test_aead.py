"""The batch AEAD from Python: ``Sealer`` and ``Opener`` (WireGuard's transport-data
messages) against an independent ChaCha20-Poly1305 (``cryptography``), byte for byte; every
kind of bad message dropped and counted; the refusals; the GIL released for a large batch
while another thread waits in a system call (a buffer resized meanwhile is refused)."""

from __future__ import annotations

import struct

import pytest
import tunoffload as t
from _netns import Netns, can_use_netns
from hypothesis import given, settings
from hypothesis import strategies as st

ChaCha20Poly1305 = pytest.importorskip(
    "cryptography.hazmat.primitives.ciphers.aead",
    reason="the independent ChaCha20-Poly1305 comes from the cryptography package",
).ChaCha20Poly1305

KEY = bytes(range(32))
HEAD = t.TRANSPORT_HEADER_LEN


def ipv4(payload_len: int, fill: int = 0x61) -> bytes:
    """An IPv4 packet of 20 + ``payload_len`` bytes (its total length is what opening
    reads of it, to strip the padding)."""
    total = 20 + payload_len
    return b"\x45\x00" + struct.pack("!H", total) + bytes(16) + bytes([fill]) * payload_len


def ipv6(payload_len: int) -> bytes:
    return b"\x60" + bytes(3) + struct.pack("!H", payload_len) + bytes(34) + b"b" * payload_len


def padded(n: int, mtu: int | None = None) -> int:
    """wireguard-go's calculatePaddingSize, as a length."""
    up = -(-n // 16) * 16
    if mtu:
        last = n % mtu if n > mtu else n  # a packet over the MTU pads its remainder
        up = (n - last) + min(-(-last // 16) * 16, mtu)
    return up


def reference(key: bytes, index: int, counter: int, packet: bytes, mtu: int | None = None):
    plain = packet + bytes(padded(len(packet), mtu) - len(packet))
    nonce = bytes(4) + struct.pack("<Q", counter)
    head = struct.pack("<IIQ", 4, index, counter)
    return head + ChaCha20Poly1305(key).encrypt(nonce, plain, None)


def seal(sealer: t.Sealer, packets: list[bytes], slack: int = 0) -> list[bytes]:
    bufs = [bytearray(HEAD) + p + bytearray(slack) for p in packets]
    sizes = [len(p) for p in packets]
    assert sealer.seal(bufs, HEAD, sizes) == len(packets)
    return [bytes(b[:s]) for b, s in zip(bufs, sizes, strict=True)]


def open_(opener: t.Opener, messages: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """(packets, other messages) as ``open`` hands them back."""
    bufs = [bytearray(m) for m in messages]
    sizes = [len(m) for m in messages]
    n, other = opener.open(bufs, 0, sizes)
    packets = [bytes(bufs[j][HEAD : HEAD + sizes[j]]) for j in range(n)]
    return packets, [bytes(bufs[j][: sizes[j]]) for j in range(n, n + other)]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 65535 - 20), min_size=1, max_size=6),
    counter=st.integers(0, 2**63),
    mtu=st.sampled_from([None, 1420, 9000]),
    index=st.integers(0, 2**32 - 1),
)
def test_sealed_messages_are_the_reference_s_and_open_back(sizes, counter, mtu, index):
    packets = [ipv4(n, fill=i) if i % 2 else ipv6(n) for i, n in enumerate(sizes)]
    packets = [p for p in packets if len(p) <= 65535]
    sealer = t.Sealer(KEY, index, counter=counter, mtu=mtu)
    messages = seal(sealer, packets, slack=3)
    for i, (p, m) in enumerate(zip(packets, messages, strict=True)):
        assert m == reference(KEY, index, counter + i, p, mtu)
    assert sealer.next_counter == counter + len(packets)
    opener = t.Opener(KEY, index)
    got, other = open_(opener, messages)
    assert got == packets and other == []
    assert opener.stats["packets"] == len(packets)


def test_opens_what_the_reference_seals():
    packets = [ipv4(n) for n in (0, 1, 15, 16, 1380, 65515)]
    messages = [reference(KEY, 5, c, p) for c, p in enumerate(packets)]
    got, _ = open_(t.Opener(KEY, 5), messages)
    assert got == packets


def test_forged_replayed_behind_window_truncated_and_others_are_dropped_and_counted():
    sealer, opener = t.Sealer(KEY, 9, counter=10_000), t.Opener(KEY, 9)
    good = seal(sealer, [ipv4(40, fill=i) for i in range(3)])
    flipped = [bytearray(good[0]) for _ in range(3)]
    flipped[0][9] ^= 1  # the counter
    flipped[1][30] ^= 0x80  # the ciphertext
    flipped[2][-1] ^= 1  # the tag
    keepalive = reference(KEY, 9, 10_003, b"")
    not_ip = reference(KEY, 9, 10_004, b"\x00" * 32)
    handshake = b"\x01\x00\x00\x00" + bytes(144)
    other_index = reference(KEY, 8, 1, ipv4(8))
    batch = [good[0], *map(bytes, flipped), good[0], good[0][:31], keepalive, not_ip]
    batch += [handshake, other_index, good[2], good[1]]
    got, other = open_(opener, batch)
    # arrival order kept; the late good[1] still opens (the forged ones did not move the
    # window, and it is within it)
    assert got == [ipv4(40, fill=0), ipv4(40, fill=2), ipv4(40, fill=1)]
    assert other == [handshake, other_index]
    s = opener.stats
    assert (s["dropped_forged"], s["dropped_replayed"], s["dropped_malformed"]) == (3, 1, 2)
    assert (s["keepalives"], s["other"], s["packets"]) == (1, 2, 3)
    # behind the window: 8192 - 64 counters back from the top is the oldest accepted
    top = 30_000
    far = t.Sealer(KEY, 9, counter=top)
    late = [reference(KEY, 9, top - 8128, ipv4(1)), reference(KEY, 9, top - 8129, ipv4(2))]
    got, _ = open_(opener, [*seal(far, [ipv4(0)]), *late])
    assert got == [ipv4(0), ipv4(1)]
    assert opener.stats["dropped_replayed"] == 2


def test_refusals_name_their_kind():
    with pytest.raises(t.InputError) as e:
        t.Sealer(bytes(31), 1)
    assert e.value.kind == "bad_key_length"
    sealer = t.Sealer(KEY, 1, counter=2**64 - 2**13 - 2)
    bufs, sizes = [bytearray(HEAD + 40)], [40]
    with pytest.raises(t.InputError) as e:
        sealer.seal(bufs, HEAD - 1, sizes)
    assert e.value.kind == "offset_too_small"
    with pytest.raises(t.InputError) as e:
        sealer.seal(bufs, HEAD, [40, 40])
    assert e.value.kind == "count_too_large"
    with pytest.raises(t.InputError) as e:
        sealer.seal(bufs, HEAD, [40], count=-1)
    assert e.value.kind == "negative_argument"
    with pytest.raises(t.InputError) as e:
        sealer.seal(bufs, HEAD, [41])
    assert (e.value.kind, e.value.index) == ("buffer_too_small", 0)
    # the last counter below the limit seals; the next batch is refused, nothing written
    assert sealer.seal([bytearray(HEAD) + ipv4(20)], HEAD, [40]) == 1
    before = bytes(bufs[0])
    with pytest.raises(t.InputError) as e:
        sealer.seal(bufs, HEAD, [40])
    assert e.value.kind == "key_exhausted" and bytes(bufs[0]) == before
    with pytest.raises(TypeError):
        t.Opener(KEY, 1).open(bytearray(10), 0, [1])


def test_buffers_grow_for_padding_and_tag():
    sealer = t.Sealer(KEY, 3)
    bufs = [bytearray(HEAD) + ipv4(1), bytearray(HEAD) + ipv4(1) + bytearray(100)]
    sizes = [21, 21]
    sealer.seal(bufs, HEAD, sizes)
    assert sizes == [16 + 32 + 16, 16 + 32 + 16]
    assert len(bufs[0]) == 16 + 48 and len(bufs[1]) == 16 + 21 + 100


@pytest.mark.skipif(can_use_netns() is not None, reason=str(can_use_netns()))
@pytest.mark.parametrize("side", ["seal", "open"])
def test_a_large_batch_runs_without_the_gil_while_another_thread_waits(side):
    """With another thread in a system call, a 45-packet batch is sealed (opened) with the
    GIL released, on its buffers pinned: a third thread's resizes meet BufferError, and
    the batch comes out as the reference's."""
    from _busy import another_thread_in_a_syscall, resizes_refused

    packets = [ipv4(1380, fill=i) for i in range(45)]
    msgs = [reference(KEY, 7, i, p) for i, p in enumerate(packets)]
    bufs = [bytearray(HEAD + 1400 + 16) for _ in range(45)]
    sizes = [0] * 45
    sealer = t.Sealer(KEY, 7)

    def call() -> None:
        if side == "seal":
            for b, p in zip(bufs, packets, strict=True):
                b[HEAD : HEAD + 1400] = p
            sizes[:] = [1400] * 45
            t.Sealer(KEY, 7).seal(bufs, HEAD, sizes)
            assert bytes(bufs[44][: sizes[44]]) == msgs[44]
        else:
            for b, m in zip(bufs, msgs, strict=True):
                b[: len(m)] = m
            sizes[:] = [len(m) for m in msgs]
            assert t.Opener(KEY, 7).open(bufs, 0, sizes) == (45, 0)
            assert bytes(bufs[44][HEAD : HEAD + sizes[44]]) == packets[44]

    del sealer
    with Netns("tunoff-aead") as ns, ns.entered(), another_thread_in_a_syscall():
        refused = resizes_refused(bufs, 1, 45, call)
    assert refused > 0, "no resize ever met a pinned buffer"
