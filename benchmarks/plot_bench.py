"""Draws `tunoffload bench --json` results as a bar chart (PNG).

tunoffload bench --json > benchmarks/results/bench.json
python benchmarks/plot_bench.py benchmarks/results/bench.json benchmarks/results/bench.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ORDER = [
    "plain",
    "split+coalesce",
    "passthrough",
    "veth",
    "tunnel-plain",
    "tunnel",
    "tunnel+vpn",
]
LABELS = {
    "plain": "plain recv/send\n(offload off)",
    "split+coalesce": "split + coalesce\n(offload on)",
    "passthrough": "passthrough\n(offload on,\nno split)",
    "veth": "veth pair\n(kernel only)",
    "tunnel-plain": "tunnel, plain\n(1 socket call\nper packet)",
    "tunnel": "tunnel\n(TunDevice +\nUdpSocket)",
    "tunnel+vpn": "tunnel + vpn.py\nencryption",
}


def main(src: str, dst: str) -> None:
    rows = [r for r in json.load(open(src)) if not r["error"]]
    groups = sorted({(r["traffic"], r["streams"]) for r in rows})
    order = [m for m in ORDER if any(r["mode"] == m for r in rows)]
    fig, ax = plt.subplots(figsize=(12, 4.8))
    width = 0.8 / len(groups)
    for g, (traffic, streams) in enumerate(groups):
        vals = []
        for mode in order:
            hit = [
                r["gbit_s"]
                for r in rows
                if (r["mode"], r["traffic"], r["streams"]) == (mode, traffic, streams)
            ]
            vals.append(hit[0] if hit else 0)
        xs = [i + (g - (len(groups) - 1) / 2) * width for i in range(len(order))]
        bars = ax.bar(
            xs, vals, width, label=f"{traffic}, {streams} stream{'s' if streams > 1 else ''}"
        )
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(range(len(order)), [LABELS[m] for m in order], fontsize=8)
    ax.set_ylabel("Gbit/s")
    ax.set_title("tunoffload bench: Python forwarders and tunnels between two namespaces")
    ax.legend()
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
