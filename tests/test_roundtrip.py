"""handle_gro then gso_split gives back exactly the original packets, in per-flow order."""

from __future__ import annotations

import random

import packets as P
import pytest
import tunoffload as t

ITERATIONS = 60


def split_all(buf: bytearray, offset: int) -> list[bytes]:
    hdr = t.VirtioNetHdr.decode(buf[offset - 10 : offset])
    pkt = bytes(buf[offset:])
    n_max = len(pkt) // max(1, hdr.gso_size) + 2
    out = [bytearray(len(pkt)) for _ in range(n_max)]
    sizes = [0] * n_max
    n = t.gso_split(pkt, hdr, out, sizes)
    return [bytes(out[i][: sizes[i]]) for i in range(n)]


def roundtrip(pkts: list[bytes], offset: int, can_udp_gro: bool, table) -> dict:
    bufs = [bytearray(rng_fill(offset)) + p for p in pkts]
    idx = t.handle_gro(bufs, offset, table, can_udp_gro)
    got: dict = {}
    for i in idx:
        for seg in split_all(bufs[i], offset):
            got.setdefault(P.flow_key(seg), []).append(seg)
    return got, len(idx)


def rng_fill(n: int) -> bytes:
    return bytes((i * 37 + 11) & 0xFF for i in range(n))


def test_roundtrip_seeded(seed):
    rng = random.Random(seed)
    table = t.GroTable()
    coalesced_runs = 0
    for it in range(ITERATIONS):
        pkts, expected = P.make_flows(rng)
        offset = rng.choice([10, 12, 16, 64])
        can_udp = rng.random() < 0.8
        got, n_written = roundtrip(pkts, offset, can_udp, table)
        assert got.keys() == expected.keys(), f"iteration {it}"
        for k in expected:
            assert got[k] == expected[k], f"iteration {it}: flow {k} differs after GRO+GSO"
        coalesced_runs += len(pkts) - n_written
    assert coalesced_runs > 0, "the generated flows never coalesced: the test is not testing"


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("tcp", [True, False], ids=["tcp", "udp"])
def test_roundtrip_long_flow(v6, tcp):
    """128 packets of one flow (IDEAL_BATCH_SIZE), several coalesced packets come out."""
    rng = random.Random(5)
    pkts = []
    seq = 0xFFFF0000  # the sequence number wraps inside the batch
    for i in range(t.IDEAL_BATCH_SIZE):
        size = 1200 if i % 50 != 49 else 17
        pl = P.rand_bytes(rng, size)
        kw = {} if v6 else {"ip_id": (0xFFC0 + i) & 0xFFFF}
        if tcp:
            pkts.append(P.tcp_pkt(v6, pl, seq=seq, **kw))
            seq = (seq + size) & 0xFFFFFFFF
        else:
            pkts.append(P.udp_pkt(v6, pl, **kw))
    got, n = roundtrip(pkts, 10, True, t.GroTable())
    assert n < len(pkts) // 10
    assert list(got.values()) == [pkts]
