"""``python -m tunoffload wireguard`` and ``tunoffload-wireguard``: usage, without root.

(What the daemon does is tested in ``test_wireguard_daemon.py``, in namespaces.)
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from tunoffload.wireguard import daemon


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunoffload", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_help() -> None:
    proc = run("wireguard", "--help")
    assert proc.returncode == 0
    assert "IFNAME" in proc.stdout and "--foreground" in proc.stdout
    assert "wireguard" in run("--help").stdout


@pytest.mark.parametrize("args", [(), ("-f",), ("a", "b"), ("--bogus", "wg0")])
def test_usage_errors(args: tuple[str, ...]) -> None:
    proc = run("wireguard", *args)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr


@pytest.mark.parametrize(
    ("value", "level"),
    [
        ("verbose", 10),
        ("debug", 10),
        ("error", 40),
        (None, 40),
        ("", 40),
        ("anything", 40),
        ("silent", None),
    ],
)
def test_log_level(value: str | None, level: int | None) -> None:
    assert daemon.log_level(value) == level


@pytest.mark.parametrize(
    ("env", "options"),
    [
        ({}, {}),
        ({daemon.ENV_TESTING_UNDER_LOAD: "0"}, {}),
        ({daemon.ENV_TESTING_UNDER_LOAD: "1"}, {"force_under_load": True}),
        (
            {daemon.ENV_TESTING_TIMERS: "rekey_after_time=2.5, rekey_after_messages=1000"},
            {"timers": {"rekey_after_time": 2.5, "rekey_after_messages": 1000}},
        ),
    ],
)
def test_testing_options(env: dict[str, str], options: dict[str, object]) -> None:
    assert daemon.testing_options(env) == options


@pytest.mark.parametrize(
    "value",
    ["rekey=1", "rekey_after_time", "rekey_after_time=x", "rekey_after_time=0",
     "rekey_after_messages=1.5", "rekey_after_time=-1"],
)  # fmt: skip
def test_testing_options_refused(value: str) -> None:
    with pytest.raises(daemon.DaemonError):
        daemon.testing_options({daemon.ENV_TESTING_TIMERS: value})


def test_console_script_when_installed() -> None:
    script = os.path.join(os.path.dirname(sys.executable), "tunoffload-wireguard")
    if not os.path.exists(script):
        pytest.skip("the tunoffload-wireguard script is not installed next to this python")
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "IFNAME" in proc.stdout
