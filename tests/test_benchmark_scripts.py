"""Every script in ``benchmarks/`` starts: its imports resolve against the installed
package and ``--help`` answers (the scripts import ``tunoffload.bench``'s public helpers,
which the tests do not otherwise run from them). No namespaces, no traffic: speed is the
scripts' business, not the tests'."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# (plot_bench.py takes two paths and needs matplotlib, the `bench` extra: imported only)
SCRIPTS = sorted(
    p.name
    for p in BENCHMARKS.glob("*.py")
    if not p.name.startswith("_") and p.name != "plot_bench.py"
)

pytestmark = pytest.mark.skipif(
    not SCRIPTS, reason="benchmarks/ is not in this checkout (a wheel test job)"
)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_answers_help(script: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:"), proc.stdout


@pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="plot_bench.py needs matplotlib"
)
def test_plot_bench_imports() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import runpy, sys; runpy.run_path(sys.argv[1])",
            str(BENCHMARKS / "plot_bench.py"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
