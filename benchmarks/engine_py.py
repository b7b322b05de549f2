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

Where the heap puts the output buffers moves a split by up to 10 % (the same build, the
same process: 3.15-3.47 us for TCP/IPv4 on the VM of 2026-12-07), which between two
processes is more than the binding's whole cost. So ``gso_split`` is timed over
``--placements`` sets of output bytearrays, each placed after a different amount of other
heap, and the Rust engine splits into the very same bytearrays: ``x Rust`` is the binding's
cost, not the two sides' luck with the heap.

``--baseline PATH`` loads another build's extension module (the ``_native*.so`` of, say,
the previous release's wheel) into the same process and times its ``gso_split`` and
``handle_gro`` on the same inputs and buffers, interleaved: a before/after in one process,
which the heap's placement and the VM's drift cannot tell apart.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
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
        lib.tob_gso_run_into.argtypes = (p, p, n, n, ctypes.c_uint64)
        lib.tob_gso_run_into.restype = ctypes.c_double
        for f in (lib.tob_gso_free, lib.tob_gro_free):
            f.argtypes, f.restype = (p,), None
        self.lib = lib

    def gso(self, pkt: bytes, hdr: t.VirtioNetHdr):
        """``run(iters, outs)``: microseconds per split into ``outs`` (an Outputs)."""
        s = self.lib.tob_gso_new(pkt, len(pkt), bytes(hdr))
        if not s:
            raise ValueError("the Rust engine refused the packet")

        def run(iters: int, outs: Outputs) -> float:
            ns = self.lib.tob_gso_run_into(s, outs.ptrs, len(outs.bufs), outs.cap, iters)
            if ns < 0:
                raise ValueError("the Rust engine refused the outputs")
            return ns / 1000

        return run

    def gro(self, segs: list[bytes]):
        lens = (ctypes.c_size_t * len(segs))(*map(len, segs))
        s = self.lib.tob_gro_new(b"".join(segs), lens, len(segs))
        return lambda iters: self.lib.tob_gro_run(s, iters) / 1000


class Outputs:
    """64 output bytearrays of ``cap`` bytes, allocated after ``pad`` bytes of other heap,
    pinned (exported) for as long as the Rust side may write them through ``ptrs``."""

    def __init__(self, pad: int, cap: int = OFFSET + 1600) -> None:
        self.cap, self.pad = cap, bytearray(pad + 1)
        self.bufs = [bytearray(cap) for _ in range(64)]
        self.pins = [(ctypes.c_char * cap).from_buffer(b) for b in self.bufs]
        self.ptrs = (ctypes.c_void_p * 64)(*map(ctypes.addressof, self.pins))


def load_native(path: str):
    """Another build's ``tunoffload._native`` (a ``_native*.so``), beside this one."""
    spec = importlib.util.spec_from_file_location("tunoffload._native", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--baseline: {path} is not an extension module")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def gso_py(pkt, hdr, out: list, sizes: list, iters: int, f=t.gso_split) -> float:
    """Microseconds per call of back-to-back gso_split calls (``f``: another build's)."""
    o = OFFSET
    t0 = time.perf_counter()
    for _ in range(iters):
        f(pkt, hdr, out, sizes, o)
    return (time.perf_counter() - t0) / iters * 1e6


def gro_py(segs: list[bytes], table, iters: int, per: int = 4, f=t.handle_gro) -> float:
    """Microseconds per handle_gro call, on fresh batches built outside the timed part
    (``per`` at a time, so they are still in cache)."""
    o, total = OFFSET, 0.0
    for _ in range(iters // per):
        batches = [[bytearray(OFFSET) + s for s in segs] for _ in range(per)]
        t0 = time.perf_counter()
        for b in batches:
            f(b, o, table)
        total += time.perf_counter() - t0
    return total / (iters // per * per) * 1e6


def _copy_pair() -> tuple[bytearray, memoryview]:
    """A 64 KiB source and a destination half a page away from it modulo 4096: two
    bytearrays allocated one after the other sit 16 bytes apart modulo a page, and on AMD
    EPYC (Zen) glibc's ``rep movsb`` copy is then 15-20x slower (26 us against 1.4 us
    for 64 KiB on the VM of 2026-12-07), which is not the copy this column stands for."""
    src, big = bytearray(65536), bytearray(65536 + 4096)
    apart = (_addr(big) - _addr(src)) % 4096
    at = (2048 - apart) % 4096
    return src, memoryview(big)[at : at + 65536]


def _addr(b: bytearray) -> int:
    return ctypes.addressof((ctypes.c_char * 1).from_buffer(b))


COPY_SRC, COPY_DST = _copy_pair()


def copy_us(iters: int) -> float:
    """Microseconds per 64 KiB copy (a bytearray into a memoryview of another)."""
    src, dst = COPY_SRC, COPY_DST
    t0 = time.perf_counter()
    for _ in range(iters):
        dst[:] = src
    return (time.perf_counter() - t0) / iters * 1e6


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def measure(
    name: str, v6: bool, udp: bool, rust: RustEngine | None, rounds: int, placements: int, base
) -> dict:
    iph, l4h = (40 if v6 else 20), (8 if udp else 20)
    pkt, hdr = super_packet(v6, udp, 65535 - iph - l4h - (20 if v6 else 0))
    sets = [Outputs(pad) for pad in range(0, 4096, 4096 // placements)[:placements]]
    out, sizes = sets[0].bufs, [0] * 64
    n = t.gso_split(pkt, hdr, out, sizes, OFFSET)
    seg_pkt, seg_hdr = super_packet(v6, udp, 1448 * 45)
    k = t.gso_split(seg_pkt, seg_hdr, out, sizes, OFFSET)
    segs = [bytes(out[i][OFFSET : OFFSET + sizes[i]]) for i in range(k)]
    table = t.GroTable()
    assert len(t.handle_gro([bytearray(OFFSET) + s for s in segs], OFFSET, table)) == 1
    rust_gso = rust.gso(pkt, hdr) if rust else None
    rust_gro = rust.gro(segs) if rust else None
    if base is not None:
        b_hdr = base.VirtioNetHdr(*(getattr(hdr, f) for f in HDR_FIELDS))
        b_table = base.GroTable()
        assert base.gso_split(pkt, b_hdr, out, sizes, OFFSET) == n
    cols: dict[str, list[float]] = {}

    def add(key: str, v: float) -> None:
        cols.setdefault(key, []).append(v)

    def record(name: str, short: str, v: float, before: float | None, copy: float) -> None:
        """A Python call's time, against the copy and, if timed, the baseline build's."""
        add(f"{name}_us", v)
        add(f"{short}_vs_memcpy", v / copy)
        if before is not None:
            add(f"base_{name}_us", before)
            add(f"{short}_vs_base", v / before)

    for o in sets:
        gso_py(pkt, hdr, o.bufs, sizes, 200)  # warm up
    for r in range(rounds):
        # Each pair back to back, each after a few untimed calls of its own; the baseline
        # before or after this build, alternately.
        copy_us(20)
        c = copy_us(200)
        add("memcpy_us", c)
        for o in sets:
            g, bg = pair(
                lambda it, o=o: gso_py(pkt, hdr, o.bufs, sizes, it),
                base and (lambda it, o=o: gso_py(pkt, b_hdr, o.bufs, sizes, it, base.gso_split)),
                r,
                200,
            )
            record("gso_split", "gso", g, bg, c)
            if rust_gso:
                rust_gso(20, o)
                rg = rust_gso(200, o)
                add("rust_gso_split_us", rg)
                add("gso_vs_rust", g / rg)
        h, bh = pair(
            lambda it: gro_py(segs, table, it),
            base and (lambda it: gro_py(segs, b_table, it, f=base.handle_gro)),
            r,
            32,
        )
        record("handle_gro_45", "gro", h, bh, c)
        if rust_gro:
            rust_gro(4)
            rh = rust_gro(32)
            add("rust_handle_gro_45_us", rh)
            add("gro_vs_rust", h / rh)
    row: dict = {"input": name, "segments": n, "rounds": rounds, "placements": len(sets)}
    row.update({k: med(v) for k, v in cols.items()})
    return row


HDR_FIELDS = ("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset")


def pair(mine, theirs, rnd: int, iters: int) -> tuple[float, float | None]:
    """``mine(iters)`` and, if given, ``theirs(iters)`` back to back (the baseline first in
    odd rounds), each after ``iters // 10`` (at least 4) untimed calls of its own."""

    def timed(f) -> float:
        f(max(4, iters // 10))
        return f(iters)

    if theirs is None:
        return timed(mine), None
    if rnd % 2:
        before = timed(theirs)
        return timed(mine), before
    return timed(mine), timed(theirs)


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
    ap.add_argument(
        "--placements",
        type=int,
        default=8,
        help="sets of gso_split output buffers, each at another place in the heap (default 8)",
    )
    ap.add_argument(
        "--baseline",
        metavar="SO",
        help="another build's _native*.so, timed beside this one in the same process",
    )
    args = ap.parse_args()
    base = load_native(args.baseline) if args.baseline else None
    kept = False if args.trim else keep_heap()
    rust = RustEngine(LIB) if LIB.exists() else None
    if rust is None and not args.json:
        print(f"(no {LIB}: build it for the Rust columns)\n")
    rows = [
        measure(name, v6, udp, rust, args.rounds, max(1, min(args.placements, 64)), base)
        for name, v6, udp in (("tcp4", False, False), ("tcp6", True, False), ("udp4", False, True))
    ]
    send = None if args.no_device else send_path(args.rounds)
    if args.json:
        out = {"heap_trimming": not kept, "baseline": args.baseline, "rows": rows, "send": send}
        print(json.dumps(out, indent=2))
        return
    trim = "off (mallopt)" if kept else "glibc default"
    print(
        f"medians of {args.rounds} interleaved rounds ({rows[0]['placements']} placements of "
        "gso_split's outputs, the Rust side writing the same ones); ratios taken within "
        "each round;"
    )
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
    if base is not None:
        cols = (
            cols[:5]
            + (
                ("before", "base_gso_split_us", "{:.2f}us"),
                ("x before", "gso_vs_base", "{:.3f}"),
            )
            + cols[5:9]
            + (
                ("before", "base_handle_gro_45_us", "{:.2f}us"),
                ("x before", "gro_vs_base", "{:.3f}"),
            )
            + cols[9:]
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
        print("\n(send path: left out (--no-device, or not root))")
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
