"""Undo a deletion: bring chosen rows, and everything that hangs on them, back into the live CRM.

The past (a snapshot today, a point in time later: crmops.undo.source) is
restored into a sandbox; the user's --where picks rows there; relations are followed;
the set is compared with the live database row by row; the plan is shown, and only with
apply is it written: after a pre-undo snapshot, in one transaction, refused outright on
any conflict. Colleagues' work since the snapshot is never overwritten unless asked
(--changed take-snapshot). Every plan and apply is recorded in the audit journal
(state_dir/undo/journal.jsonl): who, which rows, from which snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from crmops.config import Config
from crmops.dburl import display, engine_kind, safe
from crmops.engines.connect import connect_engine
from crmops.engines.files import check_writable_folder
from crmops.errors import ConfigError, CrmopsError, Interrupted, UndoConflict, UndoSelectionInvalid
from crmops.journal import Journal, actor
from crmops.log import Timeline
from crmops.repository import Repository, open_repository
from crmops.services.restore import ENGINE_OF_FORMAT, snapshot_tables
from crmops.undo import apply as undo_apply
from crmops.undo import plan as undo_plan
from crmops.undo import select as undo_select
from crmops.undo.catalog import read_catalog
from crmops.undo.plan import KEEP_LIVE, TAKE_SNAPSHOT, UndoPlan, encode_key
from crmops.undo.source import PastSource, PastState, from_snapshot

CHANGED_POLICIES = (KEEP_LIVE, TAKE_SNAPSHOT)
log = logging.getLogger("crmops.undo")


@dataclass
class UndoRequest:
    table: str
    where: str
    follow_fks: bool = True
    changed: str = KEEP_LIVE
    apply: bool = False
    #: default: the configured database
    to_url: str | None = None
    #: default: attachments.path when the target is the configured database
    attachments_to: Path | None = None


@dataclass
class UndoResult:
    plan: UndoPlan
    applied: bool = False
    written: undo_apply.Written | None = None
    pre_undo_snapshot: str | None = None
    #: why --apply wrote nothing (conflicts); the CLI shows the plan, then fails with it
    refused: str | None = None
    seconds: float = 0.0
    timeline: list[dict[str, Any]] = field(default_factory=list)
    journal: str | None = None

    def to_dict(self) -> dict[str, Any]:
        plan = self.plan.to_dict()
        w = self.written
        return {
            "ok": self.refused is None, "dry_run": not self.applied and self.refused is None,
            "applied": self.applied, "refused": self.refused,
            "snapshot_id": self.plan.source.get("snapshot_id"),
            "inserted": sum(len(v) for v in w.inserted.values()) if w else 0,
            "updated": sum(len(v) for v in w.updated.values()) if w else 0,
            "conflicts": len(self.plan.conflicts),
            "pre_undo_snapshot": self.pre_undo_snapshot,
            "written": w.to_dict() if w else None,
            "plan": plan, "seconds": self.seconds, "timeline": self.timeline, "journal": self.journal,
        }

    def raise_if_refused(self) -> None:
        if self.refused:
            raise UndoConflict(self.refused, hint="nothing was written; see the plan's conflicts")


def journal_path(config: Config) -> Path:
    return config.state_dir / "undo" / "journal.jsonl"


def undo(config: Config, request: UndoRequest, *, ref: str = "latest", source: PastSource | None = None,
         repo: Repository | None = None, on_step: Callable[[str], None] | None = None) -> UndoResult:
    """Plan (and with request.apply, write) the undo of request's rows from the past state.

    source yields the past database (default: snapshot ref restored into a sandbox); tests
    and point-in-time recovery pass their own.
    """
    mark = Timeline(on_step)
    timeline = mark.steps

    if request.changed not in CHANGED_POLICIES:
        raise ConfigError(f"--changed {request.changed}: use keep-live or take-snapshot")
    if not request.where.strip():
        raise ConfigError("--where is empty: name the rows, e.g. --where \"id IN (42, 57)\"")
    to_url = request.to_url or config.database.url
    undo_select.one_condition(request.where, engine_kind(to_url))
    on_configured = request.to_url is None or request.to_url == config.database.url
    root = request.attachments_to or (config.attachments.path if on_configured else None)
    live = _connect(to_url)
    repo = repo or open_repository(config)
    try:
        with repo.lock(exclusive=False, purpose="undo"):
            if source is None:  # a wrong target or table is told before minutes of sandbox restore
                manifest = repo.manifest(ref)
                wanted = ENGINE_OF_FORMAT.get(manifest["streams"]["database"]["format"])
                if wanted != engine_kind(to_url):
                    raise ConfigError(f"snapshot {ref} holds a {wanted} database; {display(to_url)} is not {wanted}")
                _check_table(request.table, snapshot_tables(manifest))
            with live.connect() as conn:  # the condition's columns, before minutes of sandbox restore
                undo_select.check_where(conn, request.table, request.where)
            if request.apply and root is not None:
                check_writable_folder(root, "--attachments-to" if request.attachments_to else "attachments.path")
            past_source = source or (lambda: from_snapshot(config, ref, repo, mark, request.table))
            with past_source() as past:
                if engine_kind(to_url) != past.engine:
                    raise ConfigError(f"the past state is a {past.engine} database; {display(to_url)} is not")
                plan = _plan(config, request, past, live, to_url, root)
                _warn_other_source(plan, past, to_url)
                if plan.unmapped_attachments:
                    log.warning("%s", next(w for w in plan.warnings if "undo.attachment_columns" in w))
                mark(f"plan made: {plan.count('insert')} to re-insert, {plan.count('changed')} changed, "
                     f"{plan.count('identical')} identical, conflicts: {len(plan.conflicts)}")
            result = UndoResult(plan=plan, timeline=timeline)
            if request.apply:
                _apply(config, request, result, live, to_url, on_configured, root, repo, mark)
            else:  # looking is recorded too: the plan shows the rows' contents
                journal = Journal(journal_path(config))
                journal.append("undo-plan", **_who(request, plan), summary=plan.to_dict()["summary"])
                result.journal = str(journal.path)
    finally:
        live.dispose()
    result.seconds = mark.seconds()
    return result


def _check_table(table: str, known: list[str]) -> None:
    """--table against the snapshot's fingerprint, with the closest names (the sandbox would say the same, later)."""
    import difflib

    if not known or table in known or f"public.{table}" in known or table.removeprefix("public.") in known:
        return
    near = difflib.get_close_matches(table, known, n=1, cutoff=0.6)
    listed = ", ".join(known[:8]) + (" ..." if len(known) > 8 else "")
    raise UndoSelectionInvalid(f"--table {table}: no such table in the snapshot; nothing was changed",
                               hint=f"did you mean {near[0]}?" if near else f"it has: {listed}")


def _warn_other_source(plan: UndoPlan, past: PastState, to_url: str) -> None:
    """Rows from another database's snapshot (a mistyped --from, or the wrong --to) are told first.

    Not refused: a database moved to another host keeps its rows but changes its source."""
    from crmops.repository.source import source_of_manifest, source_of_url

    if past.manifest is None:
        return
    theirs, ours = source_of_manifest(past.manifest), source_of_url(to_url)
    if theirs != ours:
        plan.warnings.insert(0, f"snapshot {str(past.snapshot_id)[:10]} is of {theirs}, not of the database being "
                                f"changed ({ours}): its rows come from another database; check --from and --to")


def _connect(url: str) -> sa.Engine:
    """Both sides read and write times the same way: MariaDB's TIMESTAMP columns follow the session's
    time zone, which differs between a sandbox (UTC) and a server configured for local time."""
    if engine_kind(url) == "mysql":
        return connect_engine(url, connect_args={"init_command": "SET time_zone = '+00:00'"})
    return connect_engine(url)


def _plan(config: Config, request: UndoRequest, past: PastState, live: sa.Engine, to_url: str,
          root: Path | None) -> UndoPlan:
    past_engine = _connect(past.url)
    try:
        catalog = read_catalog(past_engine, config.undo.relations)
        with past_engine.connect() as pconn, live.connect() as lconn:
            live_inspector = sa.inspect(lconn)
            live_tables = undo_select.Tables(lconn)

            def live_present(table: str, columns: tuple[str, ...], values: list[Any]) -> set[Any]:
                if not live_inspector.has_table(table):
                    return set()
                t = live_tables[table]
                found: set[Any] = set()
                for batch in undo_select.batches(values):
                    found |= {tuple(r) for r in lconn.execute(
                        sa.select(*(t.c[c] for c in columns)).where(undo_select.matching(t, columns, batch)))}
                return found

            sel = undo_select.select(pconn, catalog, request.table, request.where, follow=request.follow_fks,
                                     live_present=live_present)
            plan = undo_plan.build(config, past, lconn, catalog, sel, target=safe(to_url), table=request.table,
                                   where=request.where, follow=request.follow_fks, changed_policy=request.changed,
                                   attachments_root=root, manifest=past.manifest)
            plan.relations = undo_select.relation_texts(catalog.relations, set(sel.rows))
            return plan
    finally:
        past_engine.dispose()


def _rows_named(plan: UndoPlan) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for table, action, key, _ in plan.writes:
        out.setdefault(table, []).append(f"{action} {encode_key(undo_plan.keyed(plan.primary_keys[table], key))}")
    return out


def _who(request: UndoRequest, plan: UndoPlan) -> dict[str, Any]:
    return {"actor": actor(), "source": plan.source, "target": plan.target, "table": request.table,
            "where": request.where, "follow_fks": request.follow_fks, "changed": request.changed}


def _apply(config: Config, request: UndoRequest, result: UndoResult, live: sa.Engine, to_url: str,
           on_configured: bool, root: Path | None, repo: Repository, mark: Callable[[str], None]) -> None:
    plan = result.plan
    journal = Journal(journal_path(config))
    result.journal = str(journal.path)
    who = _who(request, plan)
    if plan.conflicts:
        first = plan.conflicts[0]
        more = f" (+{len(plan.conflicts) - 1} more)" if len(plan.conflicts) > 1 else ""
        result.refused = (f"undo refused: {first.table} {encode_key(first.key)}: {first.detail}{more}")
        journal.append("undo-refused", **who, conflicts=len(plan.conflicts), first=result.refused)
        return
    if not plan.writes and not any(a["status"] == "restore" for a in plan.attachments):
        result.applied = True
        result.written = undo_apply.Written()
        journal.append("undo-nothing-to-do", **who)
        mark("nothing to write")
        return
    from crmops.services.backup import backup

    try:
        result.pre_undo_snapshot = backup(config, tags=["pre-undo"], url=None if on_configured else to_url,
                                          repo=repo).snapshot_id
    except KeyboardInterrupt:
        raise Interrupted("undo stopped while taking the pre-undo snapshot; nothing was written") from None
    mark(f"pre-undo snapshot {result.pre_undo_snapshot[:10]} of the whole target")
    journal.append("undo-start", **who, pre_undo_snapshot=result.pre_undo_snapshot, rows=_rows_named(plan))
    try:
        written = undo_apply.write(live, plan)
        mark(f"wrote {written.rows()} rows in one transaction")
        if plan.unmapped_attachments:
            mark(f"attachment files NOT restored: undo.attachment_columns is not set "
                 f"({', '.join(plan.unmapped_attachments)} name them)")
        elif root is not None:
            undo_apply.restore_attachments(repo, plan, root, written)
            mark(f"{sum(1 for a in written.attachments if a['status'] == 'restored')} attachment files restored")
    except CrmopsError as e:
        journal.append("undo-failed", **who, pre_undo_snapshot=result.pre_undo_snapshot, error=e.line())
        raise
    except KeyboardInterrupt:
        # the rows go in one transaction: all of them or none, depending on whether the stop came
        # before the commit; a dry run now shows which (re-inserted rows then count as identical)
        line = "undo stopped; its rows are written in one transaction, so all of them or none are in"
        journal.append("undo-stopped", **who, pre_undo_snapshot=result.pre_undo_snapshot, error=line)
        raise Interrupted(line, hint=f"the same command without --apply shows which; attachment files may be "
                                     f"partly restored; the database before is snapshot "
                                     f"{result.pre_undo_snapshot} (pre-undo)") from None
    result.written = written
    result.applied = True
    journal.append("undo-end", **who, pre_undo_snapshot=result.pre_undo_snapshot, inserted=written.inserted,
                   updated=written.updated, counters=written.counters, attachments=written.attachments)
