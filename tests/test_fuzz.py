"""Random and mutated input: only ValueError / TypeError / OverflowError may come out, and no
byte outside the output regions may change (outputs are memoryview slices of larger
bytearrays with canary bytes around them)."""

from __future__ import annotations

import random
import struct

import packets as P
import pytest
import tunoffload as t

ALLOWED = (ValueError, TypeError, OverflowError)
# Fixed iteration counts (not time budgets): every run checks the same cases for a seed.
N_GSO_FUZZ = 1000
N_GRO_FUZZ = 300
CANARY = 0x5C
FIELDS = P.HDR_FIELDS
LIMITS = {"flags": 255, "gso_type": 255}


def mutate(rng: random.Random, pkt: bytes) -> bytes:
    b = bytearray(pkt)
    for _ in range(rng.randint(0, 4)):
        op = rng.random()
        if op < 0.55 and b:
            # mostly headers: the first 80 bytes
            i = rng.randrange(min(len(b), 80)) if rng.random() < 0.8 else rng.randrange(len(b))
            b[i] = rng.getrandbits(8)
        elif op < 0.75 and b:
            del b[rng.randrange(len(b)) :]
        elif op < 0.85:
            b += rng.randbytes(rng.randint(1, 64))
        elif len(b) >= 4:
            i = rng.randrange(len(b) - 1)
            b[i : i + 2] = struct.pack(
                "!H", rng.choice([0, 1, 0xFFFF, 0x8000, len(b), len(b) - 40]) & 0xFFFF
            )
    return bytes(b)


def mutate_hdr(rng: random.Random, h: dict, plen: int) -> dict:
    h = dict(h)
    for _ in range(rng.randint(0, 3)):
        k = rng.choice(FIELDS)
        top = LIMITS.get(k, 0xFFFF)
        h[k] = rng.choice(
            [
                0,
                1,
                top,
                rng.randint(0, top),
                min(top, plen),
                min(top, max(0, plen - 1)),
                min(top, plen + 1),
            ]
        )
    if rng.random() < 0.1:
        h["gso_type"] = rng.choice([0, 1, 3, 4, 5, 0x81, 0x84, 0x85, 2, 6])
    return h


def test_decode_random_bytes(seed):
    rng = random.Random(seed)
    for _ in range(3000):
        n = rng.randint(0, 24)
        raw = rng.randbytes(n)
        if n < 10:
            with pytest.raises(ValueError):
                t.VirtioNetHdr.decode(raw)
            continue
        h = t.VirtioNetHdr.decode(raw)
        want = struct.unpack("=BBHHHH", raw[:10])
        assert tuple(getattr(h, k) for k in FIELDS) == want
        assert bytes(h) == raw[:10]


def test_wrong_types():
    sup, h = P.super_tcp(False, b"x" * 3000, 1000)
    hdr = t.VirtioNetHdr(**h)
    out = [bytearray(2000) for _ in range(4)]
    for args in (
        ("not bytes", hdr, out, [0] * 4),
        (12345, hdr, out, [0] * 4),
        (sup, "hdr", out, [0] * 4),
        (sup, None, out, [0] * 4),
        (sup, hdr, [1, 2, 3, 4], [0] * 4),
        (sup, hdr, ["a" * 2000] * 4, [0] * 4),
        (sup, hdr, out, "sizes"),
        (sup, hdr, out, None),
        (sup, hdr, None, [0] * 4),
    ):
        with pytest.raises(ALLOWED):
            t.gso_split(*args)
    with pytest.raises(ALLOWED):
        t.VirtioNetHdr.decode(None)
    with pytest.raises(ALLOWED):
        t.VirtioNetHdr.decode(12)
    for bad in ([b"\0" * 40], ["x" * 40], [None], None, "abc"):
        with pytest.raises((*ALLOWED, BufferError)):  # bytes in bufs: read-only
            t.handle_gro(bad, 10, t.GroTable())
    with pytest.raises(ALLOWED):
        t.handle_gro([bytearray(60)], 10, "table")


def _base_inputs(rng: random.Random):
    case = P.random_case(rng, max_segs=24)
    return case.packet, case.hdr


def test_gso_split_fuzz(seed):
    rng = random.Random(seed + 1)
    oks = 0
    for _ in range(N_GSO_FUZZ):
        pkt, h = _base_inputs(rng)
        if rng.random() < 0.8:
            pkt = mutate(rng, pkt)
        if rng.random() < 0.7:
            h = mutate_hdr(rng, h, len(pkt))
        if rng.random() < 0.05:
            pkt = rng.randbytes(rng.randint(0, 200))
        n_bufs = rng.choice([0, 1, 2, 5, 30])
        slot = rng.choice([0, 10, 60, 600, 1600, 9100, 66000])
        out_offset = rng.choice([0, 0, 3, 50, slot, slot + 1])
        gap = 16
        big = bytearray([CANARY]) * (gap + n_bufs * (slot + gap))
        mv = memoryview(big)
        out = [mv[gap + i * (slot + gap) : gap + i * (slot + gap) + slot] for i in range(n_bufs)]
        sizes = [0] * rng.choice([n_bufs, max(0, n_bufs - 1), n_bufs + 3])
        src = bytes(pkt)
        inp = bytearray(pkt) if rng.random() < 0.5 else src
        try:
            n = t.gso_split(inp, t.VirtioNetHdr(**h), out, sizes, out_offset)
        except ALLOWED:
            assert big == bytearray([CANARY]) * len(big), "written before raising"
            n = None
        assert bytes(inp) == src, "input modified"
        for o in out:
            o.release()  # BufferError if the call still held an export
        mv.release()
        if isinstance(inp, bytearray):
            _resizable(inp)
        expect = bytearray([CANARY]) * len(big)
        if n is not None:
            oks += 1
            assert 0 <= n <= min(n_bufs, len(sizes))
            for i in range(n):
                assert 0 <= sizes[i] and out_offset + sizes[i] <= slot
                start = gap + i * (slot + gap) + out_offset
                expect[start : start + sizes[i]] = big[start : start + sizes[i]]
            assert big == expect, "bytes outside the output regions changed"
    assert oks > 0, "no fuzzed case was accepted: the success path went untested"


def test_gso_split_fuzz_does_not_touch_neighbours_on_success(seed):
    """Well-formed cases into tightly packed memoryview slices: canaries survive."""
    rng = random.Random(seed + 2)
    for _ in range(150):
        case = P.random_case(rng, max_segs=24)
        if P.kernel_drops(case):
            continue  # refused (as the kernel drops it): covered in test_gso
        want = P.kernel_gso(case.packet, case.hdr)
        slot = max(map(len, want))
        n_bufs = len(want)
        big = bytearray([CANARY]) * (2 + n_bufs * (slot + 2))
        mv = memoryview(big)
        out = [mv[2 + i * (slot + 2) : 2 + i * (slot + 2) + slot] for i in range(n_bufs)]
        sizes = [0] * n_bufs
        n = t.gso_split(case.packet, t.VirtioNetHdr(**case.hdr), out, sizes)
        assert n == n_bufs, case.desc
        expect = bytearray([CANARY]) * len(big)
        for i, w in enumerate(want):
            expect[2 + i * (slot + 2) : 2 + i * (slot + 2) + len(w)] = w
        assert big == expect, case.desc


def _gro_packets(rng: random.Random) -> list[bytes]:
    pkts = []
    seq = rng.getrandbits(32)
    v6 = rng.random() < 0.5
    for _ in range(rng.randint(0, 20)):
        r = rng.random()
        size = rng.choice([1, 100, 1448])
        if r < 0.6:
            p = P.tcp_pkt(
                v6,
                P.rand_bytes(rng, size),
                seq=seq,
                flags=P.ACK | (P.PSH if rng.random() < 0.1 else 0),
            )
            seq = (seq + size) & 0xFFFFFFFF
        elif r < 0.9:
            p = P.udp_pkt(v6, P.rand_bytes(rng, size))
        else:
            p = rng.randbytes(rng.randint(1, 80))
        if rng.random() < 0.3:
            p = mutate(rng, p) or b"\x45"
        pkts.append(p)
    return pkts


def test_handle_gro_fuzz(seed):
    rng = random.Random(seed + 3)
    table = t.GroTable()
    accepted = coalesced = 0
    for _ in range(N_GRO_FUZZ):
        pkts = _gro_packets(rng)
        offset = rng.choice([10, 10, 12, 40, rng.randint(0, 12)])
        bufs = [bytearray(rng.randbytes(offset)) + p for p in pkts]
        if bufs and rng.random() < 0.05:
            bufs[rng.randrange(len(bufs))] = bytearray(rng.randint(0, offset))
        before = [bytes(b) for b in bufs]
        ids = [id(b) for b in bufs]
        try:
            idx = list(t.handle_gro(bufs, offset, table, rng.random() < 0.7))
        except ALLOWED:
            assert [bytes(b) for b in bufs] == before, "buffers changed before raising"
            assert [id(b) for b in bufs] == ids
            for b in bufs:
                _resizable(b)
            continue
        accepted += 1
        coalesced += len(idx) < len(bufs)
        for b in bufs:
            _resizable(b)
        assert idx == sorted(set(idx)) and all(0 <= i < len(bufs) for i in idx)
        assert sorted(id(b) for b in bufs) == sorted(ids), "buffers replaced, not swapped"
        for i in idx:
            assert len(bufs[i]) > offset
            assert len(bufs[i]) - offset <= 65535
    # the success path and the merging path both ran on fuzzed input
    assert accepted > 0 and coalesced > 0, (accepted, coalesced)


def _resizable(b: bytearray) -> None:
    """The call released its hold on `b` (a pinned / exported bytearray cannot resize)."""
    b.append(0)
    del b[-1]


def test_buffers_released_after_success_and_error():
    sup, h = P.super_tcp(False, b"z" * 3000, 1000)
    hdr = t.VirtioNetHdr(**h)
    inp = bytearray(sup)
    outs = [bytearray(1100) for _ in range(4)]
    assert t.gso_split(inp, hdr, outs, [0] * 4) == 3
    for b in [inp, *outs]:
        _resizable(b)
    small = [bytearray(1100), bytearray(10), bytearray(1100)]
    with pytest.raises(ValueError):
        t.gso_split(inp, hdr, small, [0] * 3)
    for b in [inp, *small]:
        _resizable(b)
    dup = bytearray(1100)
    with pytest.raises(ValueError):
        t.gso_split(inp, hdr, [dup, dup, bytearray(1100)], [0] * 3)
    _resizable(dup)
    with pytest.raises(ValueError):
        t.gso_split(inp, hdr, [inp, bytearray(1100), bytearray(1100)], [0] * 3)
    _resizable(inp)
    bufs = [bytearray(10) + p for p in (sup, sup)] + [bytearray(5)]
    with pytest.raises(ValueError):
        t.handle_gro(bufs, 10, t.GroTable())
    for b in bufs:
        _resizable(b)
    bufs = [bytearray(10) + P.udp_pkt(False, b"q" * 100) for _ in range(3)]
    t.handle_gro(bufs, 10, t.GroTable())
    for b in bufs:
        _resizable(b)


def test_overlapping_outputs():
    """Written regions that overlap each other or the packet: ValueError, nothing written.
    Disjoint regions of one buffer are fine."""
    sup, h = P.super_tcp(False, bytes(range(256)) * 12, 1000)
    hdr = t.VirtioNetHdr(**h)
    want = P.kernel_gso(sup, h)
    x = bytearray([CANARY]) * 20000
    mv = memoryview(x)
    for outs in (
        [x, mv[500:], bytearray(2000), bytearray(2000)],
        [mv[500:], x, bytearray(2000), bytearray(2000)],
        [x, x, bytearray(2000), bytearray(2000)],
    ):
        with pytest.raises(ValueError):
            t.gso_split(sup, hdr, outs, [0] * 4)
        assert x == bytearray([CANARY]) * 20000
    sizes = [0] * 4
    outs = [mv[i * 5000 : (i + 1) * 5000] for i in range(4)]
    assert t.gso_split(sup, hdr, outs, sizes) == 4
    assert [bytes(outs[i][: sizes[i]]) for i in range(4)] == want
    big = bytearray(sup) + bytearray([CANARY]) * 10000
    bmv = memoryview(big)
    packet = bmv[: len(sup)]
    clash = [bmv[100:], bytearray(2000), bytearray(2000), bytearray(2000)]
    with pytest.raises(ValueError):  # the first segment would overwrite the packet
        t.gso_split(packet, hdr, clash, [0] * 4)
    assert big == bytearray(sup) + bytearray([CANARY]) * 10000
    outs = [bmv[len(sup) + i * 1100 : len(sup) + (i + 1) * 1100] for i in range(4)]
    assert t.gso_split(packet, hdr, outs, sizes) == 4
    assert [bytes(outs[i][: sizes[i]]) for i in range(4)] == want
    assert bytes(big[: len(sup)]) == sup
