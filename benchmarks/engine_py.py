"""The engine from Python: gso_split and handle_gro on 64 KiB inputs against a 64 KiB
bytearray copy in the same process, and against the Rust engine's own numbers (criterion,
benchmarks/rust) when they have been run.

    python benchmarks/engine_py.py [--json]

Medians of repeated timings; handle_gro is timed on freshly built (cache-warm) batches.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import struct
import time

import tunoffload as t

OFFSET = 10
CRITERION = pathlib.Path(__file__).parent / "rust" / "target" / "criterion"


def _fold(s: int) -> int:
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _sum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    return _fold(sum(w for (w,) in struct.iter_unpack("!H", b)))


def super_packet(v6: bool, udp: bool, payload: int) -> tuple[bytes, t.VirtioNetHdr]:
    """Headers + payload, pseudo-header sum in the checksum field, as a TUN read gives."""
    iph, l4h, proto = (40 if v6 else 20), (8 if udp else 20), (17 if udp else 6)
    total = iph + l4h + payload
    if v6:
        src, dst = (
            bytes.fromhex("fd00" + "00" * 13 + "01"),
            bytes.fromhex("fd00" + "00" * 13 + "02"),
        )
        ip = struct.pack("!IHBB16s16s", 6 << 28, total - 40, proto, 64, src, dst)
    else:
        src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
        ip = bytearray(
            struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, 64, proto, 0, src, dst)
        )
        struct.pack_into("!H", ip, 10, 0xFFFF ^ _sum(bytes(ip)))
        ip = bytes(ip)
    pseudo = _sum(src + dst + struct.pack("!HH", proto, total - iph))
    if udp:
        l4 = struct.pack("!HHHH", 40000, 5201, total - iph, pseudo)
    else:
        l4 = struct.pack("!HHIIBBHHH", 40000, 5201, 1, 1, 5 << 4, 0x10, 65535, pseudo, 0)
    data = bytes(i % 251 for i in range(payload))
    gso_type = 5 if udp else (4 if v6 else 1)
    hdr = t.VirtioNetHdr(1, gso_type, iph + l4h, 1448, iph, 6 if udp else 16)
    return ip + l4 + data, hdr


def median_us(fn, inner: int, reps: int = 15) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner * 1e6)
    return statistics.median(times)


def gro_us(segs: list[bytes], reps: int = 301, per: int = 4) -> float:
    table = t.GroTable()
    times = []
    for _ in range(reps):
        batches = [[bytearray(OFFSET) + s for s in segs] for _ in range(per)]
        t0 = time.perf_counter()
        for b in batches:
            t.handle_gro(b, OFFSET, table)
        times.append((time.perf_counter() - t0) / per * 1e6)
    return statistics.median(times)


def criterion_us(group: str, name: str) -> float | None:
    f = CRITERION / group / name / "new" / "estimates.json"
    if not f.exists():
        return None
    return json.loads(f.read_text())["median"]["point_estimate"] / 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    src, dst = bytearray(65535), bytearray(65535)

    def copy() -> None:
        dst[:] = src

    memcpy = median_us(copy, 5000)
    rows = []
    for name, v6, udp in (("tcp4", False, False), ("tcp6", True, False), ("udp4", False, True)):
        iph, l4h = (40 if v6 else 20), (8 if udp else 20)
        pkt, hdr = super_packet(v6, udp, 65535 - iph - l4h - (20 if v6 else 0))
        out = [bytearray(OFFSET + 1600) for _ in range(64)]
        sizes = [0] * 64
        n = t.gso_split(pkt, hdr, out, sizes, OFFSET)
        gso = median_us(lambda p=pkt, h=hdr, o=out, z=sizes: t.gso_split(p, h, o, z, OFFSET), 2000)
        seg_pkt, seg_hdr = super_packet(v6, udp, 1448 * 45)
        k = t.gso_split(seg_pkt, seg_hdr, out, sizes, OFFSET)
        segs = [bytes(out[i][OFFSET : OFFSET + sizes[i]]) for i in range(k)]
        assert len(t.handle_gro([bytearray(OFFSET) + s for s in segs], OFFSET, t.GroTable())) == 1
        gro = gro_us(segs)
        rust_gso = criterion_us("gso_split_64k", f"tunoffload_{name}")
        rust_gro = criterion_us("handle_gro_45", f"tunoffload_{name}")
        rows.append(
            {
                "input": name,
                "segments": n,
                "gso_split_us": gso,
                "gso_vs_memcpy": gso / memcpy,
                "gso_vs_rust": gso / rust_gso if rust_gso else None,
                "handle_gro_45_us": gro,
                "gro_vs_memcpy": gro / memcpy,
                "gro_vs_rust": gro / rust_gro if rust_gro else None,
            }
        )
    if args.json:
        print(json.dumps({"memcpy_64k_us": memcpy, "rows": rows}, indent=2))
        return
    print(f"64 KiB bytearray copy: {memcpy:.2f} us (median)\n")
    cols = ("input", "gso_split", "x memcpy", "x Rust", "handle_gro(45)", "x memcpy", "x Rust")
    widths = (6, 10, 9, 7, 16, 9, 7)
    head = " ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths)))
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = (
            r["input"],
            f"{r['gso_split_us']:.2f}us",
            f"{r['gso_vs_memcpy']:.2f}",
            f"{r['gso_vs_rust']:.2f}" if r["gso_vs_rust"] else "n/a",
            f"{r['handle_gro_45_us']:.2f}us",
            f"{r['gro_vs_memcpy']:.2f}",
            f"{r['gro_vs_rust']:.2f}" if r["gro_vs_rust"] else "n/a",
        )
        print(
            " ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        )


if __name__ == "__main__":
    main()
