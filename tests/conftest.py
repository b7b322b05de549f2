"""Shared fixtures for the tunoffload tests.

- ``seed``: the seed of every seeded-random test (fixed by default so failures reproduce;
  override with ``TUNOFFLOAD_TEST_SEED=<int>``).
- The terminal summary prints what tests put in ``packets.REPORT_LINES`` (e.g. the
  kernel-oracle count), with or without ``-s``.
"""

from __future__ import annotations

import os

import packets
import pytest

DEFAULT_SEED = 20251125


@pytest.fixture(scope="session")
def seed() -> int:
    return int(os.environ.get("TUNOFFLOAD_TEST_SEED", DEFAULT_SEED))


def pytest_terminal_summary(terminalreporter) -> None:
    if packets.REPORT_LINES:
        terminalreporter.section("tunoffload test report")
        seed = os.environ.get("TUNOFFLOAD_TEST_SEED", DEFAULT_SEED)
        terminalreporter.write_line(f"seed: {seed} (TUNOFFLOAD_TEST_SEED)")
        for line in packets.REPORT_LINES:
            terminalreporter.write_line(line)
