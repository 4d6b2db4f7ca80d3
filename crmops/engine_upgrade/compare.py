"""What both engine-upgrade methods prove on the new server: the rows arrived, the smoke SQL holds.

A cross-version fingerprint comparison that tells real differences from text forms a
new version or setting writes differently, and the smoke SQL with the verify assertions.
"""

from __future__ import annotations

from typing import Any

from crmops.config import Config
from crmops.engines import Engine, Fingerprint
from crmops.engines.canonical import CANONICAL, table_sums
from crmops.errors import db_said


def analyze(target: Engine) -> None:
    """A logical copy has no planner statistics: gather them, as an operator would before reopening."""
    if target.name == "postgresql":
        with target.connect() as conn:  # type: ignore[attr-defined]
            conn.execute("ANALYZE")


# -- the cross-version comparison ---------------------------------------------------

def compare_across(expected: Fingerprint, source: Engine | None, target: Engine) -> list[dict[str, Any]]:
    """Every table's rows against the old server's fingerprint, computed the same way on the new version.

    The new server computes the snapshot's own method. A canonical fingerprint writes every
    value in a form no version or server setting changes, so it compares as it is; the older
    methods hash text forms that settings (time zone, date style, locale) may change, so a
    table they find different is compared canonically on both servers and reported only if
    its values really differ. Each reported table names the columns that differ.
    """
    got = target.fingerprint(method=expected.method)
    out: list[dict[str, Any]] = []
    for d in expected.compare(got):
        item = {"kind": d.kind, "name": d.name, "expected": d.expected, "found": d.found, "reason": d.reason}
        if d.kind == "table" and d.reason == "content checksum differs" and source is not None:
            old, new = table_sums(source, d.name), table_sums(target, d.name)
            if expected.method != CANONICAL and old == new:
                continue  # equal values whose text form differs between the servers
            item["columns"] = _differing(old[2], new[2])
        out.append(item)
    return out


def differing_columns(source: Engine, target: Engine, table: str) -> list[str]:
    """The columns of a table whose values differ between the two servers, compared canonically."""
    return _differing(column_checksums(source, table), column_checksums(target, table))


def _differing(a: dict[str, int], b: dict[str, int]) -> list[str]:
    return sorted(c for c in set(a) | set(b) if a.get(c) != b.get(c))


def column_checksums(engine: Engine, table: str) -> dict[str, int]:
    """Per column: the order-independent sum of each value's canonical hash (same on every version)."""
    return table_sums(engine, table)[2]


# -- smoke SQL -------------------------------------------------------------------------

def run_smoke(url: str, smoke: list[dict[str, Any]], config: Config) -> list[dict[str, Any]]:
    """The step's smoke SQL and the configured verify assertions, on the upgraded copy."""
    from crmops.engines.connect import connect_engine

    checks = [{"sql": str(s["sql"]), "expect": s.get("expect")} for s in smoke]
    checks += [{"sql": a.sql, "expect": a.expect} for a in getattr(config.verify, "assertions", []) or []]
    out: list[dict[str, Any]] = []
    engine = connect_engine(url)
    try:
        import sqlalchemy as sa

        for c in checks:
            try:
                with engine.begin() as conn:
                    result = conn.execute(sa.text(c["sql"]))
                    first = result.first() if result.returns_rows else None
                value = None if first is None else first[0]
                ok = c["expect"] is None or str(value) == str(c["expect"])
                out.append({"sql": c["sql"], "ok": ok, "value": None if value is None else str(value),
                            "error": None if ok else f"got {value!r}, expected {c['expect']!r}"})
            except sa.exc.DBAPIError as e:
                first_line = db_said(e.orig)
                out.append({"sql": c["sql"], "ok": False, "value": None, "error": first_line})
    finally:
        engine.dispose()
    return out
