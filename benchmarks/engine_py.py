"""The engine from Python: gso_split and handle_gro on 64 KiB inputs, timed side by side
with the Rust engine itself and with a 64 KiB bytearray copy, in the same process.

    cargo build --release --lib --manifest-path benchmarks/rust/Cargo.toml   # once
    python benchmarks/engine_py.py [--rounds N] [--json] [--no-device]

As root it also times the send path on a real TUN device (in a private network namespace
made for the process): ``send_multiple(gro, bufs, 10, sizes=sizes, count=45)`` of 45 TCP
segments (coalesce and one 64 KiB write, the packet then dropped by the stack), beside a
plain ``send`` of the same super-packet whole (the passthrough's write) and the copy.

Each round times, back to back, the Python call, the same operation in the Rust engine (the
benchmarks' library, loaded with ctypes: the loops of the criterion benchmarks) and the
copy; the ratios are taken within a round and their medians reported, so the VM's drift in
speed cancels out. Without the library the Rust columns are left out.
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
from _inet import inet_sum  # benchmarks/ is on sys.path when a script runs
from tunoffload.testing import unshare_netns

OFFSET = 10
LIB = pathlib.Path(__file__).parent / "rust" / "target" / "release" / "libtunoffload_bench.so"


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
        struct.pack_into("!H", ip, 10, 0xFFFF ^ inet_sum(bytes(ip)))
        ip = bytes(ip)
    pseudo = inet_sum(src + dst + struct.pack("!HH", proto, total - iph))
    if udp:
        l4 = struct.pack("!HHHH", 40000, 5201, total - iph, pseudo)
    else:
        l4 = struct.pack("!HHIIBBHHH", 40000, 5201, 1, 1, 5 << 4, 0x10, 65535, pseudo, 0)
    data = bytes(i % 251 for i in range(payload))
    gso_type = 5 if udp else (4 if v6 else 1)
    hdr = t.VirtioNetHdr(1, gso_type, iph + l4h, 1448, iph, 6 if udp else 16)
    return ip + l4 + data, hdr


class RustEngine:
    """The Rust engine, timed in this process (benchmarks/rust/src/lib.rs)."""

    def __init__(self, path: pathlib.Path) -> None:
        lib = ctypes.CDLL(str(path))
        p, n = ctypes.c_void_p, ctypes.c_size_t
        lib.tob_gso_new.argtypes = (ctypes.c_char_p, n, ctypes.c_char_p)
        lib.tob_gso_new.restype = p
        lib.tob_gro_new.argtypes = (ctypes.c_char_p, ctypes.POINTER(n), n)
        lib.tob_gro_new.restype = p
        for f in (lib.tob_gso_run, lib.tob_gro_run):
            f.argtypes, f.restype = (p, ctypes.c_uint64), ctypes.c_double
        for f in (lib.tob_gso_free, lib.tob_gro_free):
            f.argtypes, f.restype = (p,), None
        self.lib = lib

    def gso(self, pkt: bytes, hdr: t.VirtioNetHdr):
        s = self.lib.tob_gso_new(pkt, len(pkt), bytes(hdr))
        if not s:
            raise ValueError("the Rust engine refused the packet")
        return lambda iters: self.lib.tob_gso_run(s, iters) / 1000

    def gro(self, segs: list[bytes]):
        lens = (ctypes.c_size_t * len(segs))(*map(len, segs))
        s = self.lib.tob_gro_new(b"".join(segs), lens, len(segs))
        return lambda iters: self.lib.tob_gro_run(s, iters) / 1000


def gso_py(pkt: bytes, hdr: t.VirtioNetHdr, out: list, sizes: list, iters: int) -> float:
    """Microseconds per call of back-to-back gso_split calls."""
    f, o = t.gso_split, OFFSET
    t0 = time.perf_counter()
    for _ in range(iters):
        f(pkt, hdr, out, sizes, o)
    return (time.perf_counter() - t0) / iters * 1e6


def gro_py(segs: list[bytes], table: t.GroTable, iters: int, per: int = 4) -> float:
    """Microseconds per handle_gro call, on fresh batches built outside the timed part
    (``per`` at a time, so they are still in cache)."""
    f, o, total = t.handle_gro, OFFSET, 0.0
    for _ in range(iters // per):
        batches = [[bytearray(OFFSET) + s for s in segs] for _ in range(per)]
        t0 = time.perf_counter()
        for b in batches:
            f(b, o, table)
        total += time.perf_counter() - t0
    return total / (iters // per * per) * 1e6


COPY_SRC, COPY_DST = bytearray(65536), bytearray(65536)


def copy_us(iters: int) -> float:
    """Microseconds per 64 KiB bytearray copy."""
    src, dst = COPY_SRC, COPY_DST
    t0 = time.perf_counter()
    for _ in range(iters):
        dst[:] = src
    return (time.perf_counter() - t0) / iters * 1e6


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def measure(name: str, v6: bool, udp: bool, rust: RustEngine | None, rounds: int) -> dict:
    iph, l4h = (40 if v6 else 20), (8 if udp else 20)
    pkt, hdr = super_packet(v6, udp, 65535 - iph - l4h - (20 if v6 else 0))
    out = [bytearray(OFFSET + 1600) for _ in range(64)]
    sizes = [0] * 64
    n = t.gso_split(pkt, hdr, out, sizes, OFFSET)
    seg_pkt, seg_hdr = super_packet(v6, udp, 1448 * 45)
    k = t.gso_split(seg_pkt, seg_hdr, out, sizes, OFFSET)
    segs = [bytes(out[i][OFFSET : OFFSET + sizes[i]]) for i in range(k)]
    table = t.GroTable()
    assert len(t.handle_gro([bytearray(OFFSET) + s for s in segs], OFFSET, table)) == 1
    rust_gso = rust.gso(pkt, hdr) if rust else None
    rust_gro = rust.gro(segs) if rust else None
    cols: dict[str, list[float]] = {}

    def add(key: str, v: float) -> None:
        cols.setdefault(key, []).append(v)

    gso_py(pkt, hdr, out, sizes, 500)  # warm up
    for _ in range(rounds):
        # Each pair back to back, each after a few untimed calls of its own.
        copy_us(20)
        c = copy_us(200)
        gso_py(pkt, hdr, out, sizes, 20)
        g = gso_py(pkt, hdr, out, sizes, 200)
        if rust_gso:
            rust_gso(20)
            rg = rust_gso(200)
        gro_py(segs, table, 4)
        h = gro_py(segs, table, 32)
        if rust_gro:
            rust_gro(4)
            rh = rust_gro(32)
        add("memcpy_us", c)
        add("gso_split_us", g)
        add("handle_gro_45_us", h)
        add("gso_vs_memcpy", g / c)
        add("gro_vs_memcpy", h / c)
        if rust_gso and rust_gro:
            add("rust_gso_split_us", rg)
            add("rust_handle_gro_45_us", rh)
            add("gso_vs_rust", g / rg)
            add("gro_vs_rust", h / rh)
    row: dict = {"input": name, "segments": n, "rounds": rounds}
    row.update({k: med(v) for k, v in cols.items()})
    return row


def send_path(rounds: int) -> dict | None:
    """The send path on a TUN device: coalesce + write of 45 segments, against the write of
    the same super-packet whole and a 64 KiB copy, interleaved round by round."""
    import os

    if os.geteuid() != 0:
        return None
    try:
        unshare_netns()  # this process only
    except OSError:
        return None
    dev = t.TunDevice("epy0", offload=True, up=True)
    dev.add_address("10.97.0.1/24")
    seg_pkt, seg_hdr = super_packet(False, False, 1448 * 45)
    bufs = [bytearray(OFFSET + 65535) for _ in range(64)]
    sizes = [0] * 64
    n = t.gso_split(seg_pkt, seg_hdr, bufs, sizes, OFFSET)
    head = bytes(bufs[0][: OFFSET + sizes[0]])  # restored before each call (GRO rewrote it)
    whole = bytes(seg_hdr) + seg_pkt
    table = t.GroTable()
    assert dev.send_multiple(table, bufs, OFFSET, sizes=sizes, count=n) == len(whole)

    def send_us(iters: int) -> float:
        f, b0, hl = dev.send_multiple, bufs[0], len(head)
        t0 = time.perf_counter()
        for _ in range(iters):
            b0[:hl] = head
            f(table, bufs, OFFSET, sizes=sizes, count=n)
        return (time.perf_counter() - t0) / iters * 1e6

    def pass_us(iters: int) -> float:
        f = dev.send
        t0 = time.perf_counter()
        for _ in range(iters):
            f(whole)
        return (time.perf_counter() - t0) / iters * 1e6

    cols: dict[str, list[float]] = {}
    for _ in range(rounds):
        copy_us(20)
        c = copy_us(200)
        send_us(10)
        s_ = send_us(100)
        pass_us(10)
        p_ = pass_us(100)
        for k, v in (
            ("memcpy_us", c),
            ("send_multiple_45_us", s_),
            ("send_whole_us", p_),
            ("send_vs_memcpy", s_ / c),
            ("send_vs_whole", s_ / p_),
            ("coalesce_only_vs_memcpy", (s_ - p_) / c),
        ):
            cols.setdefault(k, []).append(v)
    dev.close()
    return {"segments": n, "rounds": rounds, **{k: med(v) for k, v in cols.items()}}


def keep_heap() -> bool:
    """Turns off glibc's heap trimming in this process (mallopt M_TRIM_THRESHOLD).

    handle_gro grows the first bytearray of a flow to 64 KiB and the batch then frees it.
    When that block sits at the top of the heap, glibc gives the memory back to the kernel
    on free and the next batch takes 16 page faults to grow again: 1.5-2 us per call, on
    the Python side only (the Rust side reuses its buffers). Whether it happens depends on
    the heap's layout, which the Rust side's own buffers in this process change, so without
    this the Python figures for TCP/IPv6 and UDP came out 15-35 % higher in a side-by-side
    run than alone. A program that reuses its buffers (send_multiple with sizes=) never
    grows them and does not see this either way.
    """
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(-1, 1 << 30))  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=41, help="interleaved rounds (default 41)")
    ap.add_argument(
        "--trim", action="store_true", help="keep glibc's heap trimming (see keep_heap())"
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-device", action="store_true", help="leave out the send path")
    args = ap.parse_args()
    kept = False if args.trim else keep_heap()
    rust = RustEngine(LIB) if LIB.exists() else None
    if rust is None and not args.json:
        print(f"(no {LIB}: build it for the Rust columns)\n")
    rows = [
        measure(name, v6, udp, rust, args.rounds)
        for name, v6, udp in (("tcp4", False, False), ("tcp6", True, False), ("udp4", False, True))
    ]
    send = None if args.no_device else send_path(args.rounds)
    if args.json:
        print(json.dumps({"heap_trimming": not kept, "rows": rows, "send": send}, indent=2))
        return
    trim = "off (mallopt)" if kept else "glibc default"
    print(f"medians of {args.rounds} interleaved rounds; ratios taken within each round;")
    print(f"heap trimming: {trim}\n")
    cols = (
        ("input", "input", "{}"),
        ("memcpy", "memcpy_us", "{:.2f}us"),
        ("gso_split", "gso_split_us", "{:.2f}us"),
        ("Rust", "rust_gso_split_us", "{:.2f}us"),
        ("x Rust", "gso_vs_rust", "{:.3f}"),
        ("x memcpy", "gso_vs_memcpy", "{:.2f}"),
        ("handle_gro(45)", "handle_gro_45_us", "{:.2f}us"),
        ("Rust", "rust_handle_gro_45_us", "{:.2f}us"),
        ("x Rust", "gro_vs_rust", "{:.3f}"),
        ("x memcpy", "gro_vs_memcpy", "{:.2f}"),
    )
    cells = [[h for h, _, _ in cols]]
    for r in rows:
        cells.append([fmt.format(r[k]) if k in r else "n/a" for _, k, fmt in cols])
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    for j, line in enumerate(cells):
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if j == 0:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    if send is None:
        print("\n(send path: needs root; left out)")
        return
    print(
        f"\nsend path, TCP/IPv4, {send['segments']} segments on a TUN device: "
        f"send_multiple {send['send_multiple_45_us']:.2f}us, the same super-packet "
        f"written whole {send['send_whole_us']:.2f}us, memcpy {send['memcpy_us']:.2f}us; "
        f"send_multiple = {send['send_vs_memcpy']:.2f}x memcpy = "
        f"{send['send_vs_whole']:.2f}x the whole write; coalescing alone (the difference) "
        f"{send['coalesce_only_vs_memcpy']:.2f}x memcpy"
    )


if __name__ == "__main__":
    main()
