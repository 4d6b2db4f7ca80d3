"""Prove a snapshot: restore it into a throwaway sandbox and compare it with what was backed up.

Every chunk is authenticated on the way (the restore stream and the attachments are
read through the repository's AEAD), the restored database is fingerprinted and
compared table by table with the fingerprint taken at backup time, then the configured
checks run. The outcome is a signed record stored next to the snapshot, so a failed
snapshot is never silently used later (is_verified_ok), and an auditor can check it.
"""

from __future__ import annotations

import hashlib
import json
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crmops import __version__
from crmops.config import Config
from crmops.engines import Fingerprint, open_engine
from crmops.engines.connect import connect_engine
from crmops.engines.tools import Background
from crmops.errors import CrmopsError, DatabaseError, IntegrityError, SandboxUnavailable, VerificationFailed
from crmops.log import Timeline
from crmops.repository import Repository, open_repository
from crmops.repository.source import is_safety, source_of_manifest
from crmops.sandbox import Sandbox, open_sandbox
from crmops.sandbox.background import starting
from crmops.services.restore import ENGINE_OF_FORMAT
from crmops.services.sources import resolve
from crmops.verify import checks
from crmops.verify.checks import CheckResult
from crmops.verify.prepare import Prepared, prepare
from crmops.verify.record import KIND, sign


@dataclass
class TableResult:
    name: str
    rows_expected: int | None
    rows_found: int | None
    checksum_ok: bool | None
    ok: bool
    reason: str = ""


@dataclass
class VerifyResult:
    snapshot_id: str
    snapshot_time: str
    engine: str
    server_version: str
    database: str | None
    sandbox: str
    sandbox_name: str
    image: str
    image_id: str
    verified_at: str = ""
    ok: bool = False
    first_failure: str | None = None
    tables: list[TableResult] = field(default_factory=list)
    #: schema object counts and sequences that differ (table rows are in `tables`)
    differences: list[dict[str, Any]] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    fingerprint_expected: str = ""
    fingerprint_found: str = ""
    sandbox_start_seconds: float | None = None
    #: the measured recovery time: streaming the snapshot into an empty database
    restore_seconds: float | None = None
    total_seconds: float = 0.0
    #: the snapshot's age when verified: the data a disaster right now would lose, at best
    snapshot_age_hours: float = 0.0
    bytes_restored: int = 0
    files_checked: int = 0
    timeline: list[dict[str, Any]] = field(default_factory=list)
    record_id: str | None = None
    #: the signed record as stored in the repository (and written by --record)
    record: dict[str, Any] | None = None
    kept: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def failures(self) -> list[str]:
        out = [c.detail for c in self.checks if c.kind == "restore" and not c.ok]
        out += [f"table {t.name}: {t.reason} (rows expected {t.rows_expected}, found {t.rows_found})"
                for t in self.tables if not t.ok]
        out += [f"{d['kind']} {d['name']}: {d['reason']} (expected {d['expected']}, found {d['found']})"
                for d in self.differences]
        out += [c.detail for c in self.checks if c.kind != "restore" and not c.ok]
        return out

    def raise_if_failed(self) -> None:
        if not self.ok:
            n = len(self.failures())
            more = f" (+{n - 1} more)" if n > 1 else ""
            raise VerificationFailed(f"snapshot {self.snapshot_id[:10]} failed verification: "
                                     f"{self.first_failure}{more}",
                                     hint="the snapshot is flagged; see the report, and keep earlier snapshots")


def fingerprint_digest(fp: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(fp, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def table_results(expected: Fingerprint, found: Fingerprint,
                  rounded: dict[str, dict[str, int]] | None = None) -> list[TableResult]:
    """Per table, what differs; rounded (from the manifest) names FLOAT columns the dump itself rounded."""
    out = []
    for name in sorted(set(expected.tables) | set(found.tables)):
        a, b = expected.tables.get(name), found.tables.get(name)
        checksum_ok = a.checksum == b.checksum if a and b else None
        if a is None:
            reason = "unexpected table"
        elif b is None:
            reason = "table missing"
        elif a.rows != b.rows:
            reason = "row count differs"
        elif not checksum_ok:
            reason = "content checksum differs"
            if rounded and name in rounded:
                from crmops.services.backup import rounded_text

                reason += f": {rounded_text(rounded[name])}"
        else:
            reason = ""
        out.append(TableResult(name, a.rows if a else None, b.rows if b else None, checksum_ok, not reason, reason))
    return out


def _parse_time(text: str) -> datetime:
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def verify(config: Config, ref: str = "latest", *, keep: bool = False, show_data: bool = False,
           repo: Repository | None = None, on_step: Callable[[str], None] | None = None,
           source: str | None = None) -> VerifyResult:
    """Restore ref into a sandbox and check it; the result is recorded (signed) in the repository.

    Raises only for problems outside the snapshot (no Docker, image missing, repository
    unreachable); a snapshot that does not verify comes back with ok=False.
    """
    mark = Timeline(on_step)
    timeline = mark.steps

    repo = repo or open_repository(config)
    with repo.lock(exclusive=False, purpose="verify") as refresh:
        manifest = resolve(config, repo, ref, source=source)
        mark("manifest opened and authenticated")
        stream = manifest["streams"]["database"]
        engine = ENGINE_OF_FORMAT.get(stream["format"], "unknown")
        server_version = manifest.get("server_version") or ""
        sandbox = open_sandbox(config.verify, engine, server_version, database=manifest.get("database"))
        result = VerifyResult(snapshot_id=manifest["id"], snapshot_time=manifest["time"], engine=engine,
                              server_version=server_version, database=manifest.get("database"),
                              sandbox=sandbox.kind, sandbox_name=sandbox.name, image=sandbox.image, image_id="",
                              timeline=timeline,
                              bytes_restored=stream["size"])
        try:
            with ExitStack() as stack:
                # the sandbox starts on a thread while the snapshot is fetched, authenticated and staged
                started = stack.enter_context(starting(sandbox))
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="crmops-verify-files-")))
                prepared = prepare(repo, manifest, stack, folder, started.check,
                                   lambda: previous_backup(repo, manifest) if config.verify.checks.shrink else None,
                                   mark)
                started.ready()
                result.image_id = sandbox.image_id
                result.sandbox_start_seconds = getattr(sandbox, "started_s", None)
                mark(f"sandbox {sandbox.name} ready" + (f" ({sandbox.image})" if sandbox.image else ""))
                _examine(config, repo, manifest, sandbox, result, show_data, mark, refresh, prepared)
                if keep:
                    sandbox.keep()
                    result.kept = sandbox.connect_info()
        finally:
            if not keep:
                sandbox.remove()
        if not keep:
            mark("sandbox removed")
        verified = datetime.now(UTC)
        result.verified_at = verified.isoformat(timespec="milliseconds")
        result.snapshot_age_hours = round((verified - _parse_time(manifest["time"])).total_seconds() / 3600, 3)
        failures = result.failures()
        result.ok = not failures
        result.first_failure = failures[0] if failures else None
        result.total_seconds = mark.seconds()
        result.record = signed_record(config, repo, result)
        result.record_id = repo.put_record(result.snapshot_id, KIND, result.record)
    return result


def _examine(config: Config, repo: Repository, manifest: dict[str, Any], sandbox: Sandbox, result: VerifyResult,
             show_data: bool, mark: Callable[[str], None], refresh: Callable[[], None], prepared: Prepared) -> None:
    """Restore, fingerprint and checks (the attachments were prepared); findings go into result, nothing
    raises for them."""
    stream = manifest["streams"]["database"]
    target = open_engine(sandbox.url, config.database.model_copy(update={"restore_owners": False}))

    def pieces() -> Iterator[bytes]:
        for data in repo.read_stream(manifest):  # each chunk authenticated as it is read
            refresh()
            yield data

    if prepared.restore_failure:  # a chunk failed while it was staged: the target was never touched
        result.checks.append(CheckResult("restore", "restore", False, prepared.restore_failure))
        mark("restore failed")
        return
    t0 = time.monotonic()
    try:
        if prepared.staged is not None:
            # PostgreSQL: one pg_restore in one transaction (up to 16 MiB) or -j (restore_jobs);
            # MariaDB/MySQL: the file over one client per core when it is large enough (engines.mysql_load)
            target.restore((), format=stream["format"], staged=prepared.staged)
        else:
            target.restore(pieces(), format=stream["format"])
    except CrmopsError as e:
        if not sandbox.alive():  # not the snapshot's fault: do not flag it
            raise SandboxUnavailable(f"sandbox {sandbox.name} stopped or vanished during the restore",
                                     hint="check `docker events` and verify.memory_limit, then retry") from None
        if not isinstance(e, IntegrityError | DatabaseError):
            raise
        result.checks.append(CheckResult("restore", "restore", False, f"restore failed: {e.line()}"))
        mark("restore failed")
        return
    # the recovery time a drill reports: fetching and authenticating the dump (done while the sandbox
    # started) and restoring it, as a restore into a running server would take
    result.restore_seconds = round(prepared.staged_seconds + time.monotonic() - t0, 3)
    mark("database restored")
    # the checks read the sandbox through their own connection while the fingerprint reads it through its own
    checked = Background(lambda: _run_checks(config, manifest, sandbox.url, prepared.attachments, show_data,
                                             prepared.previous))
    expected = Fingerprint.from_dict(manifest["fingerprint"])
    found = target.fingerprint(method=expected.method)  # raising, it leaves the checks to die with the sandbox
    more = checked.result()
    result.fingerprint_expected = fingerprint_digest(manifest["fingerprint"])
    result.fingerprint_found = fingerprint_digest(found.to_dict())
    result.tables = table_results(expected, found, manifest.get("rounded_floats"))
    result.differences = [asdict(d) for d in expected.compare(found) if d.kind != "table"]
    mark("fingerprint compared")
    if prepared.attachments_check is not None:
        result.checks.append(prepared.attachments_check)
        result.files_checked = prepared.files_checked
    result.checks.extend(more)
    mark("checks run")


def previous_backup(repo: Repository, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The backup of the same source taken just before manifest (safety snapshots and base backups passed over)."""
    source = source_of_manifest(manifest)
    when = _parse_time(manifest["time"])
    earlier = [m for m in repo.listing().of_source(source)
               if _parse_time(m["time"]) < when and not is_safety(m) and m.get("kind") != "physical"]
    return max(earlier, key=lambda m: _parse_time(m["time"])) if earlier else None


def _run_checks(config: Config, manifest: dict[str, Any], url: str, restored: Path | None, show_data: bool,
                previous: dict[str, Any] | None = None) -> list[CheckResult]:
    wanted = config.verify.checks
    out: list[CheckResult] = []
    db = connect_engine(url)
    try:
        if wanted.fk_orphans:
            out.append(checks.fk_orphans(db, show_data))
        with db.connect() as conn:
            if wanted.attachments_query:
                files = {f["path"]: f for f in manifest.get("files", [])}
                out.append(checks.attachments_pairing(conn, wanted.attachments_query, files, restored,
                                                      manifest.get("attachments_root"), show_data))
            if wanted.freshness is not None:
                out.append(checks.freshness(conn, db.dialect.identifier_preparer.quote, wanted.freshness,
                                            _parse_time(manifest["time"])))
            if wanted.shrink is not None:
                out.append(checks.shrink(wanted.shrink, manifest, previous))
            for a in config.verify.assertions:
                out.append(checks.run_assertion(conn, a, show_data))
    finally:
        db.dispose()
    return out


def record_body(repo: Repository, r: VerifyResult) -> dict[str, Any]:
    """What the signed record attests; row samples are left out (they stay in the local report)."""
    return {
        "type": "crmops-verification", "version": 1, "repository": repo.id, "snapshot_id": r.snapshot_id,
        "snapshot_time": r.snapshot_time, "verified_at": r.verified_at, "ok": r.ok, "first_failure": r.first_failure,
        "engine": r.engine, "server_version": r.server_version, "sandbox": r.sandbox, "image": r.image,
        "image_id": r.image_id, "fingerprint_expected": r.fingerprint_expected,
        "fingerprint_found": r.fingerprint_found,
        "tables": [{"name": t.name, "rows_expected": t.rows_expected, "rows_found": t.rows_found,
                    "checksum_ok": t.checksum_ok, "ok": t.ok} for t in r.tables],
        "differences": r.differences,
        "checks": [{"name": c.name, "kind": c.kind, "ok": c.ok, "detail": c.detail} for c in r.checks],
        "restore_seconds": r.restore_seconds, "total_seconds": r.total_seconds,
        "snapshot_age_hours": r.snapshot_age_hours, "tool": f"crmops {__version__}", "host": socket.gethostname(),
    }


def signed_record(config: Config, repo: Repository, r: VerifyResult) -> dict[str, Any]:
    return sign(record_body(repo, r), record_key=repo.key.record_key, repository_id=repo.id,
                signing_key_file=config.verify.signing_key_file)
