"""The unattended jobs (backup, verify, drill, check, forget, prune): one lock, one record per run.

Every run of a job command takes the job lock (so a nightly backup and a weekly drill
never overlap), and when it ends, however it ends, finish() appends a record to
state_dir/runs.jsonl, rewrites the metrics and sends the notifications. Those three are
reporting: any failure in them is logged and never changes the job's exit code.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from crmops import __version__
from crmops.config import Config
from crmops.errors import ConfigError, CrmopsError, IntegrityError, LockBusy
from crmops.journal import Journal
from crmops.log import RUN_ID

log = logging.getLogger("crmops.jobs")

JOB_COMMANDS = ("backup", "verify", "drill", "check", "forget", "prune")
#: how long a job waits for another to finish; the generated units set it
LOCK_WAIT_ENV = "CRMOPS_JOB_LOCK_WAIT"

#: per command, the figures kept from its --json result (what the metrics and the status page use)
FIGURES: dict[str, tuple[str, ...]] = {
    "backup": ("snapshot_id", "bytes_read", "bytes_new", "bytes_uploaded", "dedup_ratio", "chunks_new", "files",
               "chunks_healed", "chunks_quarantined"),
    "verify": ("snapshot_id", "ok", "restore_seconds", "snapshot_age_hours", "first_failure", "record_id"),
    "check": ("ok", "snapshots", "chunks_referenced", "chunks_read", "coverage_percent", "newest_needs"),
    "prune": ("chunks_deleted", "bytes_freed"),
}
FIGURES["drill"] = FIGURES["verify"]
FIGURES["undo"] = ("snapshot_id", "applied", "inserted", "updated", "conflicts", "pre_undo_snapshot")


def runs_path(config: Config) -> Path:
    return config.state_dir / "runs.jsonl"


@dataclass
class JobRun:
    """A job run in progress: what finish() needs to record it."""

    command: str
    started: float = field(default_factory=time.time)
    lock_file: IO[str] | None = None

    def acquire(self, config: Config, wait_seconds: float | None = None) -> None:
        """Take the job lock, waiting up to wait_seconds (default $CRMOPS_JOB_LOCK_WAIT, else 0).

        An flock, so a crashed or killed run never leaves it held.
        """
        if wait_seconds is None:
            try:
                wait_seconds = float(os.environ.get(LOCK_WAIT_ENV) or 0)
            except ValueError:
                wait_seconds = 0.0
        path = config.state_dir / "jobs.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = path.open("a+", encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"state_dir {config.state_dir}: cannot write the job lock ({e.strerror})",
                              hint="run as the user that owns it, or set state_dir in the configuration") from None
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    f.seek(0)
                    holder = f.read().strip() or "another crmops job"
                    f.close()
                    raise LockBusy(f"{holder} is still running",
                                   hint=f"it holds {path}; scheduled runs wait ${LOCK_WAIT_ENV} seconds") from None
                time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        f.seek(0)
        f.truncate()
        f.write(f"crmops {self.command} (pid {os.getpid()}, run {RUN_ID}, since {_iso(self.started)})\n")
        f.flush()
        self.lock_file = f


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def figures_of(command: str, result: Any) -> dict[str, Any]:
    """The key figures of a command's result document (None-valued ones dropped)."""
    if not isinstance(result, dict):
        return {}
    command = command.split("@")[0]  # "drill@offsite": a drill from the copy offsite
    out = {k: result[k] for k in FIGURES.get(command, ()) if result.get(k) is not None}
    if command == "copy":
        out = {"copies": [{"name": c["name"], "ok": c.get("ok"), "snapshots_copied": len(c.get("copied") or []),
                           "bytes_copied": c.get("bytes_copied"), **(c.get("state") or {})}
                          for c in result.get("copies") or []]}
    if command == "forget":
        out = {"snapshots_forgotten": len(result.get("forget") or []), "snapshots_kept": len(result.get("keep") or {})}
        if result.get("prune"):
            out.update({k: result["prune"][k] for k in FIGURES["prune"]})
    if command == "check":
        out["damaged"] = len(result.get("damaged") or [])
        out["quarantined"] = len(result.get("quarantined") or [])
        if not out.get("newest_needs"):
            out.pop("newest_needs", None)
    return out


def repository_figures(config: Config, store: Any = None,
                       listed: list[tuple[str, int]] | None = None) -> dict[str, Any]:
    """Snapshot count and stored bytes, from a listing (no key needed, nothing decrypted); store: an
    open one to list (a second S3 client costs 0.1 CPU-s to build); listed: the whole listing, made already."""
    if listed is None:
        from crmops.storage import open_store

        store = store or open_store(config.repository.url, config.repository)
        listed = list(store.list(""))
    snapshots = size = 0
    for key, n in listed:
        size += n
        snapshots += key.startswith("snapshots/")
    return {"repository_snapshots": snapshots, "repository_size_bytes": size}


def history(config: Config) -> list[dict[str, Any]]:
    """Every recorded run, oldest first; a damaged history is read as far as it is whole."""
    journal = Journal(runs_path(config))
    out: list[dict[str, Any]] = []
    try:
        for record in journal.records():
            out.append(record)
    except IntegrityError as e:
        log.warning("run history: %s", e.line())
    return out


def finish(config: Config, run: JobRun, *, exit_code: int, error: str | None, result: Any,
           log_failure: bool = False) -> dict[str, Any]:
    """Record the run, rewrite the metrics, notify; returns the record with any reporting problems.

    log_failure logs a failed run as an error line too (JSON logs want it; human logs already
    carry the command's own one-line error).
    """
    finished = time.time()
    figures = figures_of(run.command, result)
    if exit_code == 0 and not config.reading_copy:  # a run against a copy does not measure the repository
        listed: list[tuple[str, int]] | None = None
        try:
            from crmops.storage import open_store

            # one listing for both: the size, and whether there is an archive to assess
            listed = list(open_store(config.repository.url, config.repository).list(""))
            figures.update(repository_figures(config, listed=listed))
        except (CrmopsError, OSError) as e:
            log.warning("could not measure the repository: %s", config.redact(str(e)))
        try:
            from crmops.pitr.window import figures as pitr_figures

            figures.update(pitr_figures(config, None if listed is None else [k for k, _ in listed]))
        except (CrmopsError, OSError) as e:
            log.warning("could not read the WAL archive: %s", config.redact(str(e)))
    record: dict[str, Any] = {
        "run_id": RUN_ID, "command": run.command, "result": "success" if exit_code == 0 else "failure",
        "exit_code": exit_code, "error": config.redact(error) if error else None,
        "started": round(run.started, 3), "finished": round(finished, 3),
        "started_at": _iso(run.started), "finished_at": _iso(finished),
        "duration_s": round(finished - run.started, 2), "host": socket.gethostname(), "version": __version__,
        "figures": json.loads(config.redact(json.dumps(figures, default=str))),
        "source": _source(config),
    }
    problems: list[str] = []
    try:
        Journal(runs_path(config)).append("run", **record)
    except (OSError, IntegrityError) as e:
        problems.append(f"could not append to the run history {runs_path(config)}: {e}")
    problems += write_metrics(config)
    problems += notify(config, record)
    for p in problems:  # at error level: --quiet (cron) must still show that reporting is broken
        log.error(config.redact(p))
    level = logging.ERROR if exit_code != 0 and log_failure else logging.INFO
    log.log(level, f"{run.command} {record['result']} in {record['duration_s']} s"
            + (f": {record['error']}" if record["error"] else ""), extra={"fields": {
                "event": "job-end", "command": run.command, "result": record["result"], "exit_code": exit_code,
                "duration_s": record["duration_s"], "figures": record["figures"]}})
    if run.lock_file is not None:
        run.lock_file.close()
    return {**record, "reporting_problems": problems}


def write_metrics(config: Config) -> list[str]:
    """Rewrite the textfile and/or push to the Pushgateway; returns problem lines."""
    n = config.notify
    if n.metrics_file is None and not n.pushgateway_url:
        return []
    from crmops.status import metrics

    text = metrics.render(history(config))
    problems = []
    if n.metrics_file is not None:
        try:
            metrics.write_textfile(n.metrics_file, text)
        except OSError as e:
            problems.append(f"could not write the metrics file {n.metrics_file}: {e.strerror or e}")
    if n.pushgateway_url:
        from crmops.notify import DeliveryFailed

        try:
            metrics.push(n.pushgateway_url, text, timeout=n.timeout_seconds, attempts=n.attempts)
        except DeliveryFailed as e:
            problems.append(f"could not push the metrics: {e}")
    return problems


def notify(config: Config, record: dict[str, Any]) -> list[str]:
    """Notify every channel of a failure, of known damage (quarantined chunks), or of a success when
    notify.on_success is set."""
    figures = record.get("figures") or {}
    # damage outlives a successful run: chunks still quarantined are told every time until repaired, and
    # damage a backup healed is told once (storage that corrupts objects deserves a look)
    damage = bool(figures.get("chunks_quarantined") or figures.get("newest_needs") or figures.get("chunks_healed"))
    if record["result"] == "success" and not config.notify.on_success and not damage:
        return []
    from crmops.notify import Event, notifiers, send_all

    channels = notifiers(config)
    if not channels:
        return []
    event = Event(run_id=record["run_id"], command=record["command"], ok=record["result"] == "success",
                  host=record["host"], started_at=record["started_at"], finished_at=record["finished_at"],
                  duration_s=record["duration_s"], exit_code=record["exit_code"], error=record["error"],
                  figures=record["figures"], version=record["version"])
    return send_all(event, channels, redact=config.redact)


def _source(config: Config) -> str | None:
    """Whose run this was: configurations of two CRMs may share a state_dir (the starter's /var/lib/crmops)."""
    from crmops.repository.source import source_of_url

    try:
        return source_of_url(config.database.url)
    except (CrmopsError, ValueError):
        return None
