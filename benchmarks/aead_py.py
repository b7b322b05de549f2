"""The batch AEAD from Python against ``ring`` alone, in one process.

One round seals a tunnel's batch (``--packets`` IPv4 packets of ``--size`` bytes, 45 of
1420 by default: a 64 KiB super-packet's worth) and opens it again:

- ``ring``: ``seal_in_place_separate_tag`` then ``open_in_place`` over the same padded
  bytes, in Rust (``tob_ring_seal_open_run`` in ``benchmarks/rust``'s library, loaded with
  ctypes into this process);
- ``tunoffload``: ``Sealer.seal`` then ``Opener.open`` on a list of bytearrays, from
  Python (the message headers, the padding, the replay window, the IP-length check and
  the binding's conversions included);
- ``memcpy``: a copy of the same bytes, bytearray to bytearray, for scale.

Rounds of the three are interleaved and the medians reported, with the ratio
tunoffload / ring (issue 18 asks for at most 1.3).

    cd benchmarks/rust && cargo build --release --lib && cd ../..
    python benchmarks/aead_py.py --rounds 21
"""

from __future__ import annotations

import argparse
import ctypes
import json
import pathlib
import statistics
import struct
import time

import tunoffload as t

LIB = pathlib.Path(__file__).parent / "rust" / "target" / "release" / "libtunoffload_bench.so"
HEAD = t.TRANSPORT_HEADER_LEN


def ring_us(lib: ctypes.CDLL, n: int, size: int, iters: int) -> float:
    return float(lib.tob_ring_seal_open_run(n, size, iters)) / 1000


def ours_us(n: int, size: int, iters: int) -> float:
    key = bytes([0x5A]) * 32
    sealer, opener = t.Sealer(key, 1), t.Opener(key, 1)
    packet = b"\x45\x00" + struct.pack("!H", size) + bytes(size - 4)
    bufs = [bytearray(HEAD) + packet + bytearray(32) for _ in range(n)]
    sizes = [size] * n
    t0 = time.perf_counter()
    for _ in range(iters):
        sealer.seal(bufs, HEAD, sizes)
        opener.open(bufs, 0, sizes)
    return (time.perf_counter() - t0) / iters * 1e6


def memcpy_us(n: int, size: int, iters: int) -> float:
    src = [bytearray(size) for _ in range(n)]
    dst = [bytearray(size) for _ in range(n)]
    t0 = time.perf_counter()
    for _ in range(iters):
        for d, s in zip(dst, src, strict=True):
            d[:] = s
    return (time.perf_counter() - t0) / iters * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--packets", type=int, default=45)
    p.add_argument("--size", type=int, default=1420)
    p.add_argument("--rounds", type=int, default=11, help="interleaved rounds (median)")
    p.add_argument("--iters", type=int, default=2000, help="seal+open calls per round")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if not LIB.exists():
        p.exit(2, f"{LIB} is missing: cd benchmarks/rust && cargo build --release --lib\n")
    lib = ctypes.CDLL(str(LIB))
    lib.tob_ring_seal_open_run.argtypes = (ctypes.c_size_t, ctypes.c_size_t, ctypes.c_uint64)
    lib.tob_ring_seal_open_run.restype = ctypes.c_double
    n, size, iters = args.packets, args.size, args.iters
    runs: dict[str, list[float]] = {"ring": [], "tunoffload": [], "memcpy": []}
    ring_us(lib, n, size, iters // 10)  # warm up
    ours_us(n, size, iters // 10)
    memcpy_us(n, size, iters // 10)
    for _ in range(args.rounds):
        runs["ring"].append(ring_us(lib, n, size, iters))
        runs["tunoffload"].append(ours_us(n, size, iters))
        runs["memcpy"].append(memcpy_us(n, size, iters))
    med = {k: statistics.median(v) for k, v in runs.items()}
    ratios = [o / r for o, r in zip(runs["tunoffload"], runs["ring"], strict=True)]
    out = {
        "title": f"seal + open of {n} x {size} bytes, median of {args.rounds} interleaved rounds",
        "us": med,
        "gbyte_s": {k: 2 * n * size / v / 1e3 for k, v in med.items()},
        "tunoffload_over_ring": statistics.median(ratios),
        "ratios": ratios,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(out["title"])
    for k, v in med.items():
        print(f"  {k:10} {v:8.1f} us   {out['gbyte_s'][k]:5.2f} GB/s (both ways)")
    print(f"  tunoffload / ring: {out['tunoffload_over_ring']:.2f} (median of per-round ratios)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
