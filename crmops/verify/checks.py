"""Checks run inside a restored sandbox, beyond the fingerprint.

Each returns a CheckResult; none raises for a finding. Row samples and paths can carry
personal data (names, e-mail addresses in file names), so they are masked unless the
caller asks for the data; key columns (ids) stay visible, as they locate the problem.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crmops.config import Assertion, FreshnessCheck, ShrinkCheck

if TYPE_CHECKING:
    import sqlalchemy as sa

# SQLAlchemy (0.2-0.5 s of imports) is imported by the checks that query, which run once the sandbox
# is up: verify imports this module before its sandbox starts, when nothing waits beside the import

MASKED = "***"
SAMPLE_ROWS = 3


@dataclass
class CheckResult:
    name: str
    kind: str  # restore | attachments | assertion | fk_orphans | attachments_pairing | freshness | shrink
    ok: bool
    detail: str
    samples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mask(value: Any) -> Any:
    """A value with its content hidden but its shape kept: strings keep their first character."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value[:1] + MASKED if value else value
    return MASKED


def mask_path(path: str) -> str:
    """contracts/2024/jane-doe.pdf -> c***/2***/j***.pdf: depth and extension, no names."""
    parts = path.split("/")
    out = []
    for p in parts:
        stem, dot, ext = p.rpartition(".")
        out.append(f"{mask(stem)}.{ext}" if dot and stem else mask(p))
    return "/".join(out)


def _first_line(e: BaseException) -> str:
    orig = getattr(e, "orig", e)
    text = str(orig).strip().splitlines()
    return text[0][:200] if text else type(orig).__name__


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(bytes(value))} bytes>"
    return value


def _equal(found: Any, expect: Any) -> bool:
    found = _plain(found)
    if isinstance(expect, bool):  # PostgreSQL answers true, MySQL 1
        return found is not None and bool(found) == expect
    try:
        return float(found) == float(expect)
    except (TypeError, ValueError):
        return str(found) == str(expect)


def run_assertion(conn: sa.Connection, a: Assertion, show_data: bool) -> CheckResult:
    """One configured SQL assertion: the query's single value must equal `expect`."""
    import sqlalchemy as sa
    from sqlalchemy.exc import DBAPIError

    try:
        found = conn.execute(sa.text(a.sql)).scalar()
    except DBAPIError as e:
        conn.rollback()
        return CheckResult(a.name, "assertion", False, f"assertion {a.name!r}: the query failed: {_first_line(e)}")
    if _equal(found, a.expect):
        return CheckResult(a.name, "assertion", True, f"assertion {a.name!r}: {_plain(found)!r} as expected")
    shown = _plain(found)
    if not show_data and not isinstance(shown, int | float | type(None)):
        shown = mask(shown)
    return CheckResult(a.name, "assertion", False,
                       f"assertion {a.name!r} failed: expected {a.expect!r}, got {shown!r}")


def _schemas(insp: Any, dialect: str) -> list[str | None]:
    if dialect != "postgresql":
        return [None]
    return [s for s in insp.get_schema_names() if s != "information_schema" and not s.startswith("pg_")]


def fk_orphans(engine: sa.Engine, show_data: bool) -> CheckResult:
    """Rows whose foreign key names a parent that is not there (MySQL dumps load with key checks off)."""
    import sqlalchemy as sa

    insp = sa.inspect(engine)
    q = engine.dialect.identifier_preparer.quote
    dialect = engine.dialect.name
    default = insp.default_schema_name
    checked = 0
    failures: list[tuple[str, int, list[dict[str, Any]]]] = []
    with engine.connect() as conn:
        for schema in _schemas(insp, dialect):
            for table in insp.get_table_names(schema=schema):
                pk = set(insp.get_pk_constraint(table, schema=schema).get("constrained_columns") or [])
                for fk in insp.get_foreign_keys(table, schema=schema):
                    cols, ref_cols = fk["constrained_columns"], fk["referred_columns"]
                    ref_schema = fk.get("referred_schema") or schema
                    child = f"{q(schema)}.{q(table)}" if schema else q(table)
                    parent = f"{q(ref_schema)}.{q(fk['referred_table'])}" if ref_schema else q(fk["referred_table"])
                    where = " AND ".join(f"c.{q(c)} IS NOT NULL" for c in cols)
                    match = " AND ".join(f"p.{q(r)} = c.{q(c)}" for c, r in zip(cols, ref_cols, strict=True))
                    orphan = f"FROM {child} c WHERE {where} AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE {match})"
                    count = conn.execute(sa.text(f"SELECT count(*) {orphan}")).scalar() or 0
                    checked += 1
                    if not count:
                        continue
                    rows = conn.execute(sa.text(f"SELECT c.* {orphan} LIMIT {SAMPLE_ROWS}")).mappings().all()
                    keys = pk | set(cols)
                    samples = [{k: _plain(v) if (show_data or k in keys) else mask(_plain(v)) for k, v in r.items()}
                               for r in rows]
                    where_name = table if schema in (None, default) else f"{schema}.{table}"
                    ref_name = fk["referred_table"] if ref_schema in (None, default) else \
                        f"{ref_schema}.{fk['referred_table']}"
                    failures.append((f"{where_name}({', '.join(cols)}) -> {ref_name}({', '.join(ref_cols)})",
                                     int(count), samples))
    if not failures:
        return CheckResult("fk_orphans", "fk_orphans", True, f"{checked} foreign keys checked, no orphan rows")
    name, count, _ = failures[0]
    more = f" (+{len(failures) - 1} more foreign keys)" if len(failures) > 1 else ""
    samples = [{"foreign_key": n, "orphans": c, "rows": s} for n, c, s in failures]
    return CheckResult("fk_orphans", "fk_orphans", False, f"foreign key {name}: {count} orphan rows{more}", samples)


def _relative(path: str, root: str | None) -> str:
    p = path.replace("\\", "/")
    if root:
        r = root.rstrip("/") + "/"
        if p.startswith(r):
            p = p[len(r):]
    while p.startswith("./"):
        p = p[2:]
    return p.lstrip("/")


def attachments_pairing(conn: sa.Connection, query: str, files: dict[str, dict[str, Any]], restored: Path | None,
                        root: str | None, show_data: bool) -> CheckResult:
    """Every attachment the database references is in the snapshot, with the hash it should have.

    The query returns the path (relative to the attachments folder, or under its recorded root)
    and optionally the content's SHA-256 as the database records it.
    """
    import sqlalchemy as sa
    from sqlalchemy.exc import DBAPIError

    try:
        rows = conn.execute(sa.text(query)).all()
    except DBAPIError as e:
        conn.rollback()
        return CheckResult("attachments_pairing", "attachments_pairing", False,
                           f"attachments query failed: {_first_line(e)}")
    problems: list[tuple[str, str]] = []
    for row in rows:
        if row[0] is None:
            continue
        rel = _relative(str(row[0]), root)
        entry = files.get(rel)
        if entry is None or entry.get("kind") != "file":
            problems.append((rel, "not in the snapshot"))
            continue
        if len(row) > 1 and row[1] and str(row[1]).lower() != entry.get("sha256"):
            problems.append((rel, "hash differs from the database's"))
            continue
        if restored is not None:
            on_disk = restored / rel
            if not on_disk.is_file() or sha256_file(on_disk) != entry.get("sha256"):
                problems.append((rel, "restored copy does not match the snapshot's hash"))
    if not problems:
        return CheckResult("attachments_pairing", "attachments_pairing", True,
                           f"{len(rows)} referenced attachments present with matching hashes")
    shown = [(p if show_data else mask_path(p), why) for p, why in problems]
    return CheckResult("attachments_pairing", "attachments_pairing", False,
                       f"{len(problems)} of {len(rows)} referenced attachments missing or different, "
                       f"first {shown[0][0]}: {shown[0][1]}", [{"path": p, "problem": w} for p, w in shown])


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            h.update(piece)
    return h.hexdigest()


def _as_datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def freshness(conn: sa.Connection, quote: Any, check: FreshnessCheck, snapshot_time: datetime) -> CheckResult:
    """The newest row of a busy table is recent: an old snapshot of a stale replica fails here."""
    import sqlalchemy as sa
    from sqlalchemy.exc import DBAPIError

    table = ".".join(quote(p) for p in check.table.split("."))
    name = f"freshness {check.table}.{check.column}"
    try:
        newest = conn.execute(sa.text(f"SELECT max({quote(check.column)}) FROM {table}")).scalar()
    except DBAPIError as e:
        conn.rollback()
        return CheckResult("freshness", "freshness", False, f"{name}: the query failed: {_first_line(e)}")
    when = _as_datetime(newest)
    if when is None:
        return CheckResult("freshness", "freshness", False, f"{name}: no rows with a readable time")
    age_h = (snapshot_time - when).total_seconds() / 3600
    ok = age_h <= check.max_age_hours
    verdict = "within" if ok else "older than"
    return CheckResult("freshness", "freshness", ok, f"{name}: newest row {age_h:.1f} h before the snapshot, "
                       f"{verdict} the {check.max_age_hours:g} h floor")


def _rows_by_table(manifest: dict[str, Any]) -> dict[str, int]:
    """Row counts from a snapshot's fingerprint, by bare table name (PostgreSQL's carry their schema)."""
    out: dict[str, int] = {}
    for name, t in (manifest.get("fingerprint") or {}).get("tables", {}).items():
        out.setdefault(name.split(".")[-1].strip('"`').lower(), int(t.get("rows") or 0))
    return out


def shrink(check: ShrinkCheck, manifest: dict[str, Any], previous: dict[str, Any] | None) -> CheckResult:
    """Tables that should only grow did not lose more than max_percent of their rows since the previous backup.

    A mass delete (a wrong filter in the CRM's admin, a script gone astray) is valid data: every
    other check passes. Counts come from the two fingerprints, so no row is read or shown.
    """
    if previous is None:
        return CheckResult("shrink", "shrink", True, "shrink: no earlier backup of this source to compare with")
    now, was = _rows_by_table(manifest), _rows_by_table(previous)
    missing = [t for t in check.tables if t.lower() not in now]
    lost: list[str] = []
    for table in check.tables:
        before, after = was.get(table.lower()), now.get(table.lower())
        if before and after is not None and after < before * (1 - check.max_percent / 100):
            lost.append(f"{table} {before} -> {after} rows ({(after - before) / before * 100:+.1f} %)")
    if missing:
        lost.insert(0, f"{missing[0]} is not in the snapshot")
    since = f"since snapshot {previous['id'][:10]}"
    if not lost:
        return CheckResult("shrink", "shrink", True, f"shrink: {len(check.tables)} tables lost at most "
                           f"{check.max_percent:g} % of their rows {since}")
    more = f" (+{len(lost) - 1} more)" if len(lost) > 1 else ""
    return CheckResult("shrink", "shrink", False, f"shrink: {lost[0]} {since}, more than the "
                       f"{check.max_percent:g} % allowed{more}", [{"table": x} for x in lost])
