"""Longest tests first, so parallel workers do not end the run waiting on one long test.

With `--dist loadgroup`, pytest-xdist hands each idle worker the next test in collection
order. Collected in file order, the longest tests (real-CRM upgrades, engine matrices) came
last and ran alone at the end. Sorting the tests known to be long to the front makes the
schedule "longest first", which keeps the workers busy until the end.

Known durations live in tests/durations.json (seconds of setup + call + teardown, only tests
above THRESHOLD). Refresh it from a whole run: CRMOPS_RECORD_DURATIONS=1 make test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

DURATIONS = Path(__file__).with_name("durations.json")
THRESHOLD = 15.0  # seconds; shorter tests keep file order, so module fixtures stay shared


def known_durations() -> dict[str, float]:
    try:
        return {k: float(v) for k, v in json.loads(DURATIONS.read_text()).items()}
    except (OSError, ValueError):
        return {}


def bare_id(nodeid: str) -> str:
    """The test's id without the "@group" that pytest-xdist's loadgroup appends on a worker."""
    head, at, group = nodeid.rpartition("@")
    return head if at and "::" in head and not set(group) & set("[]:") else nodeid


def longest_first(items: list[pytest.Item], known: dict[str, float]) -> list[pytest.Item]:
    """The known long tests, longest first, then the rest in collection order."""
    long = sorted((i for i in items if known.get(bare_id(i.nodeid), 0.0) >= THRESHOLD),
                  key=lambda i: -known[bare_id(i.nodeid)])
    chosen = {id(i) for i in long}
    return long + [i for i in items if id(i) not in chosen]


class Recorder:
    """Sums each test's phases on the controller and writes the long ones at the end."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        key = bare_id(report.nodeid)
        self.seconds[key] = self.seconds.get(key, 0.0) + report.duration

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(session.config, "workerinput"):
            return
        long = {k: round(v, 1) for k, v in sorted(self.seconds.items()) if v >= THRESHOLD}
        DURATIONS.write_text(json.dumps(long, indent=1) + "\n")


def configure(config: pytest.Config) -> None:
    if os.environ.get("CRMOPS_RECORD_DURATIONS") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(Recorder(), "crmops-durations")


def reorder(items: list[pytest.Item]) -> None:
    items[:] = longest_first(items, known_durations())
