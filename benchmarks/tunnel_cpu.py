"""Where a tunnel's CPU goes: user and kernel time per 64 KiB of TCP payload.

    python benchmarks/tunnel_cpu.py [--modes offload-stdlib-gso tunoffload] [--repeat 2]

Runs ``tunnel.py`` for one mode at a time (10 s of one TCP stream), samples the whole
machine's CPU time (``/proc/stat``: user, and system with irq and softirq) over 4 s in
the middle, and divides by the super-packets' worth of payload moved (Gbit/s / 8 /
65536). On a machine with nothing else running that is the tunnel's cost per 64 KiB,
both processes, the TCP endpoints and the kernel's forwarding included. The kernel's
share is the same for every mode that uses the same system calls; a mode's speed-up over
another is bounded by (its user + kernel) / kernel.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

TUNNEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tunnel.py")


def cpu() -> tuple[int, int, int]:
    """(user, kernel, idle) clock ticks of the whole machine so far."""
    with open("/proc/stat") as f:
        v = list(map(int, f.readline().split()[1:8]))
    user, nice, system, idle, _iowait, irq, softirq = v
    return user + nice, system + irq + softirq, idle


def run(mode: str) -> dict[str, float]:
    p = subprocess.Popen(
        [sys.executable, TUNNEL, "--repeat", "1", "--duration", "10", "--modes", mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(5)  # set-up done, traffic flowing
    a, t0 = cpu(), time.monotonic()
    time.sleep(4)
    b, dt = cpu(), time.monotonic() - t0
    out = p.communicate(timeout=120)[0]
    m = re.search(rf"^{re.escape(mode)}\s+TCP\s+1\s+([\d.]+)", out, re.M)
    if m is None:
        raise RuntimeError(f"tunnel.py {mode} printed no result:\n{out}")
    gbit = float(m.group(1))
    hz = os.sysconf("SC_CLK_TCK")
    user, kernel, idle = ((y - x) / hz / dt for x, y in zip(a, b, strict=True))
    per_s = gbit * 1e9 / 8 / 65536
    return {
        "gbit_s": gbit,
        "user_cores": user,
        "kernel_cores": kernel,
        "idle_cores": idle,
        "user_us": user / per_s * 1e6,
        "kernel_us": kernel / per_s * 1e6,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", nargs="+", default=["offload-stdlib-gso", "tunoffload"])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    print(f"{'mode':20s} {'Gbit/s':>6s}  cores: user kernel idle  per 64 KiB: user kernel")
    for _ in range(args.repeat):
        for mode in args.modes:
            r = run(mode)
            print(
                f"{mode:20s} {r['gbit_s']:6.2f}  {r['user_cores']:11.2f} {r['kernel_cores']:6.2f}"
                f" {r['idle_cores']:4.2f}  {r['user_us']:13.1f} {r['kernel_us']:6.1f} us",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
