"""The whole set of commands, run on a real CRM or ERP schema the way an operator would.

A test sets the schema up from its published package (see tests/realschemas/README.md) and
hands the database here. This backs it up, verifies the snapshot, restores it whole into a
scratch database (the native digest equal to the source), damages a core table in a copy and
brings it back with `restore --tables --force` and beside itself with `--as`, then deletes a
top-level record with all that hangs on it and brings it back with `undo` (the past being the
whole restore made before). Each step is timed; the figures go to the test's output.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from crmops.engines.connect import connect_engine
from crmops.repository import open_repository
from crmops.undo.source import PastState
from crmops.undo.workflow import UndoRequest, undo
from tests.matrix.digest import native_digest
from tests.verify.verify_helpers import load, ok, run, write_config


@dataclass
class Schema:
    """What the harness needs to know of one real schema."""

    name: str
    #: a table with many rows that the application cannot live without
    core_table: str
    #: the top-level record to delete and bring back: table and WHERE
    top_table: str
    top_where: str
    #: how the application deletes it: SQL (its own cascade where the schema has no foreign keys),
    #: or a function of the database URL that runs the application's own delete
    delete: list[str] | Callable[[str], None]
    #: undo.relations for links the schema does not declare
    relations: list[dict[str, Any]] = field(default_factory=list)
    #: tables the deletion must not move (checked by native digest)
    untouched: tuple[str, ...] = ()
    #: what goes wrong in the core table (default: all its rows deleted)
    damage: list[str] = field(default_factory=list)
    #: rows the undo plan may find identical in live (None: not checked)
    identical: int | None = None


def sql(url: str, *statements: str) -> None:
    engine = connect_engine(url)
    try:
        with engine.begin() as conn:
            for stmt in statements:
                conn.execute(sa.text(stmt))
    finally:
        engine.dispose()


def count(url: str, table: str) -> int:
    engine = connect_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def _rows_only(digest: dict[str, str]) -> dict[str, str]:
    return {k.split(".")[-1]: v for k, v in digest.items() if k != "schema"}


def exercise(schema: Schema, kind: str, src: str, factory: Callable[[], str], tmp_path: Path,
             *, verify_sandbox: bool = True) -> dict[str, float]:
    """Run the whole set on `src`; returns seconds per step. Asserts what an operator would check."""
    timings: dict[str, float] = {}
    config = write_config(tmp_path, src, attachments=False, verify={"checks": {}})
    data = yaml.safe_load(config.read_text())
    if schema.relations:
        data["undo"] = {"relations": schema.relations}
    config.write_text(yaml.safe_dump(data))
    ok(run(config, "repo", "init"))

    def step(name: str, *args: str) -> Any:
        t0 = time.monotonic()
        out = ok(run(config, "--json", *args))
        timings[name] = round(time.monotonic() - t0, 1)
        return out

    source_digest = native_digest(src)
    snap = step("backup", "backup")["snapshot_id"]
    if verify_sandbox:
        report = step("verify", "verify", snap)
        assert report.get("ok", report.get("passed", True)) is not False, report

    # whole restore into an empty database: schema and every row as the source
    whole = factory()
    step("restore whole", "restore", snap, "--to", whole)
    restored = native_digest(whole)
    assert _schema(restored) == _schema(source_digest), _first_difference(_schema(restored), _schema(source_digest))
    assert _rows_only(restored) == _rows_only(source_digest)

    # one core table damaged in a copy; --force brings it back, the others do not move
    target = factory()
    ok(run(config, "--json", "restore", snap, "--to", target))
    n = count(target, schema.core_table)
    assert n > 0
    sql(target, *(schema.damage or [f"DELETE FROM {schema.core_table}"]))
    before = _rows_only(native_digest(target))
    step("restore --tables --force", "restore", snap, "--to", target, "--tables", schema.core_table, "--force")
    after = _rows_only(native_digest(target))
    core = schema.core_table.strip('"`').split(".")[-1]
    assert count(target, schema.core_table) == n
    assert after[core] == _rows_only(source_digest)[core]
    assert {k: v for k, v in after.items() if k.lower() != core.lower()} == \
        {k: v for k, v in before.items() if k.lower() != core.lower()}
    step("restore --tables --as", "restore", snap, "--to", target, "--tables", schema.core_table, "--as", "r_")
    assert count(target, _prefixed(schema.core_table, "r_")) == n

    # undo: the application deletes a top-level record and what hangs on it
    live = target
    sql(live, f"DROP TABLE {_prefixed(schema.core_table, 'r_')}")
    untouched = {t: v for t, v in _rows_only(native_digest(live)).items()
                 if t.lower() in {u.lower() for u in schema.untouched}}
    if callable(schema.delete):
        schema.delete(live)
    else:
        sql(live, *schema.delete)
    assert native_digest(live) != source_digest

    @contextmanager
    def past() -> Iterator[PastState]:
        yield PastState(url=whole, engine=kind, kind="snapshot", label=f"{schema.name} restored from {snap}")

    cfg = load(config)
    repo = open_repository(cfg)
    t0 = time.monotonic()
    ask = UndoRequest(table=schema.top_table, where=schema.top_where, to_url=live)
    plan = undo(cfg, ask, source=past, repo=repo).to_dict()
    timings["undo plan"] = round(time.monotonic() - t0, 1)
    assert plan["plan"]["summary"]["conflicts"] == 0, plan["plan"]["summary"]
    if schema.identical is not None:
        assert sum(t["identical"] for t in plan["plan"]["tables"]) == schema.identical, plan["plan"]["tables"]
    t0 = time.monotonic()
    done = undo(cfg, replace(ask, apply=True), source=past, repo=repo)
    timings["undo apply"] = round(time.monotonic() - t0, 1)
    assert done.applied and done.written is not None and done.written.rows() > 0
    assert done.written.rows() == plan["plan"]["summary"]["insert"]
    timings["undo rows"] = float(done.written.rows())
    # every row of every table as before the deletion
    now, was = _rows_only(native_digest(live)), _rows_only(source_digest)
    assert {t: (v, was.get(t)) for t, v in now.items() if v != was.get(t)} == {}, (timings, plan["plan"]["tables"])
    assert {t: v for t, v in _rows_only(native_digest(live)).items() if t in untouched} == untouched
    print(json.dumps({"schema": schema.name, "engine": kind, "seconds": timings,
                      "tables": len(_rows_only(source_digest)),
                      "undo_tables": {t["table"]: t.get("insert") for t in plan["plan"]["tables"]}}))
    return timings


def _prefixed(table: str, prefix: str) -> str:
    parts = table.split(".")
    parts[-1] = prefix + parts[-1]
    return ".".join(parts)


def _schema(digest: dict[str, str]) -> str:
    """The schema dump without the line naming the database (MariaDB's dump comments)."""
    return "\n".join(line for line in digest["schema"].splitlines() if not line.startswith("-- "))


def _first_difference(a: str, b: str) -> str:
    for x, y in zip(a.splitlines(), b.splitlines(), strict=False):
        if x != y:
            return f"restored: {x!r} source: {y!r}"
    return "one is longer"
