"""A benchmark row's result, the median of repeated runs, and the table and JSON they are
shown as (``benchmarks/plot_bench.py`` reads the JSON)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

Row = TypeVar("Row")


@dataclass
class Result:
    """One run of one row: ``mode`` (the row's label), ``traffic`` ("TCP" or "UDP") and
    ``streams``; what it measured; ``error`` when it failed (the rest is then zero)."""

    mode: str
    traffic: str
    streams: int
    gbit_s: float = 0.0
    pps: float = 0.0
    cpu_s: float = 0.0
    cpu_pct: float = 0.0
    # packets per super-packet: per read from the source, per write to the destination
    pkts_per_read_ab: float = 0.0
    pkts_per_write_ab: float = 0.0
    pkts_per_read_ba: float = 0.0
    pkts_per_write_ba: float = 0.0
    generator: str = ""
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def ratio(a: float, b: float) -> float:
    """``a / b``, 0 when ``b`` is 0."""
    return a / b if b else 0.0


def median_run(results: Sequence[Result]) -> Result:
    """The run with the median Gbit/s (the lower middle one) among those that did not
    fail, with every run's Gbit/s in ``extra["gbit_s_runs"]``; the last run when all
    failed."""
    ok = sorted((r for r in results if not r.error), key=lambda r: r.gbit_s)
    if not ok:
        return results[-1]
    mid = ok[(len(ok) - 1) // 2]
    mid.extra["gbit_s_runs"] = [round(r.gbit_s, 3) for r in results]
    return mid


def interleaved_medians(
    plan: Sequence[Row],
    repeat: int,
    run_one: Callable[[Row], Result],
    progress: Callable[[int, Row, Result], None] | None = None,
) -> list[Result]:
    """Runs ``run_one`` on every entry of ``plan`` once per round, ``repeat`` rounds (at
    least one), so that the VM's drift spreads over all rows alike; returns each entry's
    :func:`median_run`, in plan order. ``progress(round, entry, result)`` is called after
    each run."""
    runs: list[list[Result]] = [[] for _ in plan]
    for rnd in range(max(1, repeat)):
        for entry, done in zip(plan, runs, strict=True):
            r = run_one(entry)
            done.append(r)
            if progress is not None:
                progress(rnd, entry, r)
    return [median_run(done) for done in runs]


def results_json(rows: Sequence[Result]) -> str:
    """The rows as a JSON list of objects, one per row with the fields of :class:`Result`."""
    return json.dumps([asdict(r) for r in rows], indent=2)


HEADER = (
    "forwarder",
    "traffic",
    "streams",
    "Gbit/s",
    "kpkt/s",
    "fwd CPU s",
    "CPU %",
    "A>B pkt/read",
    "pkt/write",
    "B>A pkt/read",
    "pkt/write",
)


# rows with no forwarder to measure (the kernel alone), and rows whose processes do not
# count their packets (the WireGuard daemons: their CPU time only)
NO_FORWARDER = ("veth",)
NO_PACKET_COUNTS = (*NO_FORWARDER, "wireguard")


def _cells(r: Result) -> tuple[str, ...]:
    if r.error:
        return (r.mode, r.traffic, str(r.streams), "error: " + r.error, *[""] * 7)
    fwd = r.mode not in NO_FORWARDER
    counted = r.mode not in NO_PACKET_COUNTS
    per_call = (r.pkts_per_read_ab, r.pkts_per_write_ab, r.pkts_per_read_ba, r.pkts_per_write_ba)
    return (
        r.mode,
        r.traffic,
        str(r.streams),
        f"{r.gbit_s:.2f}",
        f"{r.pps / 1e3:.0f}" if counted else "-",
        f"{r.cpu_s:.2f}" if fwd else "-",
        f"{r.cpu_pct:.0f}" if fwd else "-",
        *(f"{v:.1f}" if counted else "-" for v in per_call),
    )


def format_table(rows: Sequence[Result]) -> str:
    """The rows as an aligned text table, one line each, under a header and a rule."""
    lines = [HEADER, *(_cells(r) for r in rows)]
    widths = [max(len(x[i]) for x in lines) for i in range(len(HEADER))]
    out = [
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in lines
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
