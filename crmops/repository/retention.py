"""Which snapshots a retention policy keeps (the semantics restic users know).

keep_last N keeps the N newest; keep_hourly/daily/weekly/monthly/yearly N keep, for
each of the N most recent hours/days/ISO weeks/months/years that have snapshots, the
newest snapshot in it. A snapshot kept by any rule is kept, with every reason listed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from crmops.config import RetentionConfig

BUCKETS: list[tuple[str, Callable[[datetime], str]]] = [
    ("hourly", lambda t: t.strftime("%Y-%m-%d %H:00")),
    ("daily", lambda t: t.strftime("%Y-%m-%d")),
    ("weekly", lambda t: "{}-W{:02d}".format(*t.isocalendar()[:2])),
    ("monthly", lambda t: t.strftime("%Y-%m")),
    ("yearly", lambda t: t.strftime("%Y")),
]


def plan(snapshots: list[tuple[str, datetime]], policy: RetentionConfig) -> tuple[dict[str, list[str]], list[str]]:
    """(kept id -> reasons, ids to forget) for snapshots given as (id, time)."""
    newest_first = sorted(snapshots, key=lambda s: s[1], reverse=True)
    keep: dict[str, list[str]] = {}
    for sid, _ in newest_first[:policy.keep_last]:
        keep.setdefault(sid, []).append("last")
    for name, bucket in BUCKETS:
        limit = getattr(policy, f"keep_{name}")
        seen: list[str] = []
        for sid, t in newest_first:
            b = bucket(t)
            if b in seen:
                continue
            if len(seen) >= limit:
                break
            seen.append(b)
            keep.setdefault(sid, []).append(f"{name} {b}")
    forget = [sid for sid, _ in newest_first if sid not in keep]
    return keep, forget
