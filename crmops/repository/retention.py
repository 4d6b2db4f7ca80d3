"""Which snapshots a retention policy keeps (the semantics restic users know).

keep_last N keeps the N newest; keep_hourly/daily/weekly/monthly/yearly N keep, for
each of the N most recent hours/days/ISO weeks/months/years that have snapshots, the
newest snapshot in it. A snapshot kept by any rule is kept, with every reason listed.
The policy applies to each source's backups on their own (plan_groups), like restic's
--group-by, and a group's newest verified snapshot is never forgotten.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from crmops.config import RetentionConfig
from crmops.repository.source import safety_tag, source_of_manifest

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


def group_of(m: dict[str, Any]) -> tuple[str, str]:
    """(source, kind): a source's backups and its safety snapshots (per tag) are kept apart.

    A burst of pre-restore snapshots must not push a database's nightly backups out of
    keep-last, and a second CRM in the repository must not push out the first one's.
    """
    return source_of_manifest(m), safety_tag(m.get("tags") or []) or "backups"


def plan_groups(manifests: list[dict[str, Any]], policy: RetentionConfig,
                verified: Callable[[str], bool] | None = None) -> list[dict[str, Any]]:
    """The policy applied to each group on its own; a group's newest verified snapshot is always kept.

    Each group: {"source", "kind", "keep": {id: reasons}, "forget": [ids]}, newest first.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for m in manifests:
        groups.setdefault(group_of(m), []).append(m)
    out = []
    for (source, kind), members in sorted(groups.items()):
        keep, forget = plan([(m["id"], _time(m["time"])) for m in members], policy)
        if verified is not None:
            for m in sorted(members, key=lambda m: m["time"], reverse=True):
                if verified(m["id"]):
                    keep.setdefault(m["id"], []).append("newest verified")
                    if m["id"] in forget:
                        forget.remove(m["id"])
                    break
        out.append({"source": source, "kind": kind, "keep": keep, "forget": forget})
    return out


def _time(text: str) -> datetime:
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)
