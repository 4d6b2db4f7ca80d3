"""Logging set-up: human lines or JSON lines, each carrying the run id.

Every run gets one id (CRMOPS_RUN_ID if a scheduler set it), so a line in the
logs, a metric and a notification can be matched to the same nightly run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from crmops.errors import without_values

RUN_ID = os.environ.get("CRMOPS_RUN_ID") or uuid.uuid4().hex[:12]


class Timeline:
    """The steps of one restore, verify or undo with the seconds since it started (its --json "timeline").

    Called with a step's words when it is done; on_step shows them as they happen (progress).
    """

    def __init__(self, on_step: Callable[[str], None] | None = None) -> None:
        self.started = time.monotonic()
        self.steps: list[dict[str, Any]] = []
        self.on_step = on_step

    def __call__(self, step: str) -> None:
        self.steps.append({"step": step, "at_s": self.seconds(3)})
        if self.on_step:
            self.on_step(step)

    def seconds(self, digits: int = 3) -> float:
        """Seconds since the start."""
        return round(time.monotonic() - self.started, digits)


class _RunIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = RUN_ID
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "run_id": getattr(record, "run_id", RUN_ID),
            "msg": without_values(record.getMessage()),
        }
        for key, value in getattr(record, "fields", {}).items():
            data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class _HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"crmops: {record.levelname.lower()}: {without_values(record.getMessage())}"


def setup_logging(*, debug: bool = False, fmt: str = "human", quiet: bool = False) -> None:
    """Logs go to stderr so --json output on stdout stays parseable."""
    root = logging.getLogger("crmops")
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RunIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif debug:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(run_id)s] %(message)s"))
    else:  # the same shape as the one-line errors: `crmops: warning: ...`
        handler.setFormatter(_HumanFormatter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else (logging.ERROR if quiet else logging.WARNING))
    root.propagate = False
