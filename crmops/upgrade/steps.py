"""The step executors that need crmops services: preflight, backup, verify, migrate, restore.

They are built here and handed to the playbook runner (crmops.playbooks never imports
the service layer). Preflight checks only read; the dry run runs them against production.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from crmops.config import Config
from crmops.dburl import display
from crmops.engines import open_engine
from crmops.engines.connect import connect_engine
from crmops.playbooks.actions import CORE_EXECUTORS
from crmops.playbooks.appexec import run_app_command
from crmops.playbooks.dockerswap import run_docker
from crmops.playbooks.model import Step
from crmops.playbooks.runjournal import unfinished_runs
from crmops.playbooks.steps import Executor, StepContext, StepResult
from crmops.repository import open_repository


def executors(config: Config, *, production_url: str | None = None) -> dict[str, Executor]:
    """Every step type's executor; preflight always reads production_url (the dry run's too)."""
    production = production_url or config.database.url

    def preflight(step: Step, params: dict[str, Any], ctx: StepContext) -> StepResult:
        return run_preflight(config, params, url=production, run_id=ctx.run_id)

    def backup_step(step: Step, params: dict[str, Any], ctx: StepContext) -> StepResult:
        from crmops.services.backup import backup

        res = backup(config, tags=[*params["tags"], f"upgrade:{ctx.run_id}"])
        return StepResult(True, {"snapshot_id": res.snapshot_id, "seconds": res.duration_s},
                          f"snapshot {res.snapshot_id[:10]} ({res.bytes_read / 1e6:.1f} MB read, "
                          f"{res.duration_s:.1f}s)")

    def verify_step(step: Step, params: dict[str, Any], ctx: StepContext) -> StepResult:
        from crmops.verify.workflow import verify

        res = verify(config, str(params["snapshot"]))
        outputs = {"snapshot_id": res.snapshot_id, "ok": res.ok}
        if not res.ok:
            return StepResult(False, outputs, "verification failed", f"snapshot {res.snapshot_id[:10]} does not "
                              f"verify: {res.first_failure}")
        return StepResult(True, outputs, f"snapshot {res.snapshot_id[:10]} verified in {res.total_seconds:.1f}s")

    def migrate_step(step: Step, params: dict[str, Any], ctx: StepContext) -> StepResult:
        from crmops.services.migrate import migrate

        since = datetime.now(UTC)
        ctx.on_cancel(lambda: cancel_queries(ctx.url, since))
        res = migrate(config, to=str(params["to"]), url=ctx.url, safety_backup=bool(params["safety_backup"]),
                      tags=("pre-migrate", f"upgrade:{ctx.run_id}"))
        d = res.to_dict()
        outputs = {"from": d["from"], "to": d["to"], "seconds": d["seconds"], "safety_snapshot": d["safety_snapshot"],
                   "revisions": {r["revision"]: r["seconds"] for r in d.get("revisions") or []}}
        return StepResult(True, outputs, f"{d['from']} -> {d['to']} in {d['seconds']:.2f}s "
                          f"({len(d.get('revisions') or [])} revisions)")

    def restore_step(step: Step, params: dict[str, Any], ctx: StepContext) -> StepResult:
        from crmops.services.restore import restore

        res = restore(config, str(params["snapshot"]), to_url=ctx.url, force=True)
        return StepResult(True, {"snapshot_id": res.snapshot_id, "safety_snapshot": res.safety_snapshot,
                                 "seconds": res.seconds},
                          f"snapshot {res.snapshot_id[:10]} restored into {display(ctx.url)} in {res.seconds:.1f}s "
                          f"(the state before it: snapshot {(res.safety_snapshot or '-')[:10]})")

    from crmops.engine_upgrade.step import executor as engine_upgrade

    return {**CORE_EXECUTORS, "docker": run_docker, "app_command": run_app_command, "preflight": preflight,
            "backup": backup_step,
            "verify": verify_step, "migrate": migrate_step, "restore": restore_step,
            "engine_upgrade": engine_upgrade(config)}


def cancel_queries(url: str, since: datetime) -> int:
    """Cancel the statements a timed-out or interrupted migration is running (PostgreSQL).

    Only sessions that connected to the database after the step began and are busy are
    cancelled: the migration's own, not the CRM's idle pool. On MySQL/MariaDB nothing is
    cancelled and the runner waits for the statement to end before rolling back.
    """
    engine = open_engine(url)
    if engine.name != "postgresql":
        return 0
    with engine.connect() as conn:  # type: ignore[attr-defined]
        rows = conn.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND pid <> pg_backend_pid() AND state = 'active' AND backend_start >= %s",
                            (since,)).fetchall()
    return len(rows)


def run_preflight(config: Config, params: dict[str, Any], *, url: str, run_id: str) -> StepResult:
    """One read-only check; a failed check is a failed step (the upgrade stops before changing anything)."""
    check = params["check"]
    fn: Callable[..., tuple[bool, Any, str]] = CHECKS[check]
    ok, value, detail = fn(config, params, url=url, run_id=run_id)
    return StepResult(ok, {"value": value, "detail": detail}, f"{check}: {detail}",
                      None if ok else f"preflight {check}: {detail}")


def _db_reachable(config: Config, params: dict[str, Any], *, url: str, run_id: str) -> tuple[bool, Any, str]:
    engine = connect_engine(url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1").fetchone()
            version = conn.dialect.server_version_info
    finally:
        engine.dispose()
    text = ".".join(str(v) for v in version or ()) or "?"
    return True, text, f"{display(url)} answers (server {text})"


def _disk_free(config: Config, params: dict[str, Any], *, url: str, run_id: str) -> tuple[bool, Any, str]:
    folder = params.get("path") or str(config.state_dir)
    probe = folder
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe.rstrip("/")) or "/"
    free = shutil.disk_usage(probe).free
    need = (params.get("min_free_gb") or 0) * 1e9
    why = f"{params.get('min_free_gb') or 0:g} GB asked"
    try:
        from crmops.services.sources import resolve

        size = resolve(config, open_repository(config))["streams"]["database"]["size"]
        if size * params["restore_factor"] > need:
            need = size * params["restore_factor"]
            why = f"{params['restore_factor']:g} x the latest snapshot's {size / 1e6:.1f} MB, for a restore"
    except Exception as e:  # no repository yet: the backup step will say so; here only the floor counts
        why += f" (no snapshot size known: {type(e).__name__})"
    ok = free >= need
    return ok, round(free / 1e9, 3), f"{free / 1e9:.2f} GB free in {folder}, need {need / 1e9:.2f} GB ({why})"


def _snapshot_fresh(config: Config, params: dict[str, Any], *, url: str, run_id: str) -> tuple[bool, Any, str]:
    """A recent restore point exists: the newest snapshot (newest verified one with require_verified)."""
    from crmops.repository.source import is_safety
    from crmops.services.sources import configured_source
    from crmops.verify.record import is_verified_ok

    repo = open_repository(config)
    source = configured_source(config)
    manifests = [m for m in reversed(repo.listing().of_source(source)) if not is_safety(m)]
    if not manifests:
        return False, None, (f"the repository holds no backup of {source}; run `crmops backup` "
                             "(and `crmops verify`) first")
    newest = manifests[0]
    if params["require_verified"]:
        good = next((m for m in manifests if is_verified_ok(repo, m["id"])), None)
        if good is None:
            return False, newest["id"][:10], (f"no snapshot has passed verification (newest: {newest['id'][:10]}); "
                                              "run `crmops verify` first")
        newest = good
    taken = datetime.fromisoformat(newest["time"])
    taken = taken if taken.tzinfo else taken.replace(tzinfo=UTC)
    age_h = (datetime.now(UTC) - taken).total_seconds() / 3600
    sid = newest["id"][:10]
    what = "newest verified snapshot" if params["require_verified"] else "newest snapshot"
    if age_h > params["max_age_hours"]:
        return False, sid, f"the {what} {sid} is {age_h:.1f} h old (limit {params['max_age_hours']:g} h)"
    return True, sid, f"the {what} {sid} is {age_h:.1f} h old"


def _schema_revision(config: Config, params: dict[str, Any], *, url: str, run_id: str) -> tuple[bool, Any, str]:
    from crmops.services.migrate import status

    current = status(config, url=url)["current"]
    want = str(params["expect"])
    if current != want:
        return False, current, f"the database is at {current or 'no revision'}, the playbook expects {want}"
    return True, current, f"at {current}"


def _no_other_upgrade(config: Config, params: dict[str, Any], *, url: str, run_id: str) -> tuple[bool, Any, str]:
    others = [s for s in unfinished_runs(config.state_dir) if s.run_id != run_id]
    if others:
        return False, others[0].run_id, (f"upgrade {others[0].run_id} did not finish; `crmops upgrade --resume` "
                                         "or `--rollback` it first")
    return True, None, "no other upgrade is running or unfinished"


CHECKS: dict[str, Callable[..., tuple[bool, Any, str]]] = {
    "db_reachable": _db_reachable, "disk_free": _disk_free, "snapshot_fresh": _snapshot_fresh,
    "schema_revision": _schema_revision, "no_other_upgrade": _no_other_upgrade,
}
