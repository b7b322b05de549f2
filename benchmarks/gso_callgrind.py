"""``gso_split`` from Python, for instruction counts: a 64 KiB TCP/IPv4 super-packet into
64 bytearrays, N times.

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=cg.out \\
        python benchmarks/gso_callgrind.py 1200 [--native PATH] [--shuffle]

Run it for N=200 and N=1200 and take (total(1200) - total(200)) / 1000: one call's
instructions, without the start-up. ``--native`` loads another build's extension module
(a ``_native*.so``, say the previous release's) in place of the installed one, so two
builds are counted with the same script, packet and interpreter. ``--shuffle`` puts the
outputs in random order (allocated one after another, their addresses rise, and the
check that no two outputs share memory then has a shortcut a reused list in another
order does not get). No devices, no traffic.
"""

from __future__ import annotations

import argparse
import random
import sys

from engine_py import HDR_FIELDS, load_native, super_packet  # benchmarks/ is on sys.path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("iters", nargs="?", type=int, default=1000, help="calls (1000)")
    p.add_argument("--native", metavar="SO", help="another build's _native*.so")
    p.add_argument("--shuffle", action="store_true", help="outputs in random order")
    args = p.parse_args()
    if args.native:
        try:
            mod = load_native(args.native)
        except SystemExit:  # (its message names engine_py's option, --baseline)
            sys.exit(f"--native: {args.native} is not an extension module")
    else:
        import tunoffload as mod
    pkt, h = super_packet(False, False, 65000)
    hdr = mod.VirtioNetHdr(*(getattr(h, f) for f in HDR_FIELDS))
    out = [bytearray(10 + 2048) for _ in range(64)]
    if args.shuffle:
        random.Random(1).shuffle(out)
    sizes = [0] * 64
    for _ in range(args.iters):
        mod.gso_split(pkt, hdr, out, sizes, 10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
