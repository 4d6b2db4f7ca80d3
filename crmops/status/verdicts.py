"""Is the CRM's data safe right now? Verdicts for `crmops status` and the status page.

Everything is read, nothing is changed: the repository's snapshots and the signed
verification records next to them, the run history (state_dir/runs.jsonl) and the upgrade
journals (state_dir/upgrades/*.jsonl). A repository that cannot be opened is itself a red
verdict, not an error, so monitoring still gets a page and an exit code.

Kept whole (about 410 lines): one verdict per concern, read together as one page.
"""

from __future__ import annotations

import socket
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from crmops import __version__
from crmops.config import Config
from crmops.errors import CrmopsError, IntegrityError
from crmops.journal import Journal
from crmops.status.jobs import history, repository_figures

GREEN, AMBER, RED = "green", "amber", "red"
_RANK = {GREEN: 0, AMBER: 1, RED: 2}
#: a job whose last run failed makes the status red; the others amber
CRITICAL_JOBS = ("backup", "verify", "drill", "check")


@dataclass
class Verdict:
    name: str
    level: str
    summary: str


@dataclass
class Overview:
    generated_at: str
    host: str
    repository: str
    repository_error: str | None = None
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    verifications: list[dict[str, Any]] = field(default_factory=list)
    upgrades: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    repository_size_bytes: int | None = None
    #: chunks found damaged or missing and not stored again yet; those the newest snapshot of the source needs
    quarantined: list[str] = field(default_factory=list)
    quarantine_needed: list[str] = field(default_factory=list)
    newest_of_source: str | None = None
    retention: dict[str, Any] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)
    #: the configured database's source: what the verdicts judge (snapshots and verifications are its own)
    source: str = ""
    #: other sources in the repository: source -> number of snapshots
    other_sources: dict[str, int] = field(default_factory=dict)
    #: snapshots whose manifest cannot be read: [{"id", "problem"}]
    damaged: list[dict[str, str]] = field(default_factory=list)
    version: str = __version__
    #: point-in-time recovery: each archiving cluster's window, lag and first gap
    pitr: list[dict[str, Any]] = field(default_factory=list)
    #: "<kind>:<id>" -> the archive's push times over the last day (Unix seconds): the lag chart
    lag_history: dict[str, list[int]] = field(default_factory=dict)
    #: the lag limit the chart marks (status.max_archive_lag_seconds)
    max_archive_lag_seconds: float = 900.0
    #: each configured copy: newest snapshot, lag, archive lag, last drill from it (crmops.copy.lag)
    copies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def level(self) -> str:
        return max((v.level for v in self.verdicts), key=_RANK.__getitem__, default=GREEN)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("lag_history")  # thousands of numbers, for the page's chart only
        return {"level": self.level, **doc}


def parse_time(text: str) -> datetime:
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _ago(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h ago" if hours < 48 else f"{hours / 24:.1f} days ago"


def _snapshots(n: int) -> str:
    return f"{n} snapshot{'' if n == 1 else 's'}"


def _mb(n: int | float) -> str:
    return f"{n / 1e6:,.1f} MB"


def read_upgrades(folder: Path) -> list[dict[str, Any]]:
    """One entry per upgrade journal (newest first): its start and end records, or what is wrong with it."""
    out = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        entry: dict[str, Any] = {"file": path.name, "result": None, "problem": None, "steps": 0}
        try:
            for rec in Journal(path).records():
                entry["steps"] += 1
                if rec.get("event") == "start":
                    entry.update({k: rec.get(k) for k in ("run_id", "playbook", "from_version", "to_version",
                                                          "dry_run")}, started_at=rec.get("ts"))
                elif rec.get("event") == "end":
                    entry.update(result=rec.get("result"), ended_at=rec.get("ts"), error=rec.get("error"))
        except IntegrityError as e:
            entry["problem"] = e.line()
        except OSError as e:
            entry["problem"] = f"cannot read: {e.strerror}"
        out.append(entry)
    return sorted(out, key=lambda e: e.get("started_at") or "", reverse=True)


def _read_repository(config: Config, ov: Overview) -> None:
    """The configured source's snapshots and verifications; other sources only counted, damage named."""
    from crmops.repository import SnapshotInfo, open_repository
    from crmops.repository.retention import plan_groups
    from crmops.repository.source import is_safety
    from crmops.services.sources import configured_source
    from crmops.verify.record import KIND

    repo = open_repository(config)
    ov.repository = repo.store.url
    ov.source = configured_source(config)
    listing = repo.keep_listing()  # the PITR windows below ask for it again
    ov.damaged = [{"id": d.id, "problem": d.problem} for d in listing.damaged]
    passed: dict[str, bool] = {}
    every_record = repo.all_records()  # one listing of records/, not one per snapshot
    for m in listing.manifests:
        info = SnapshotInfo.from_manifest(m)
        if info.source != ov.source:
            ov.other_sources[info.source] = ov.other_sources.get(info.source, 0) + 1
        else:
            ov.snapshots.append({"id": info.id, "time": info.time, "tags": info.tags, "engine": info.engine,
                                 "schema_revision": info.schema_revision, "size": info.size,
                                 "bytes_new": info.bytes_new, "seconds": m.get("stats", {}).get("seconds"),
                                 "source": info.source, "safety": is_safety(m)})
        records = every_record.get(m["id"], [])
        if any(isinstance(r, IntegrityError) for r in records):
            continue  # a damaged record proves nothing
        for rec in records:
            if rec.get("kind") != KIND or "record" not in rec:
                continue
            body = rec["record"]
            passed[m["id"]] = bool(body.get("ok"))
            if info.source == ov.source and not is_safety(m):
                ov.verifications.append({k: body.get(k) for k in (
                    "snapshot_id", "verified_at", "ok", "first_failure", "restore_seconds", "snapshot_age_hours",
                    "total_seconds", "sandbox", "image")})
    ov.verifications.sort(key=lambda v: v.get("verified_at") or "")
    logical = [m for m in listing.manifests if m.get("kind") != "physical"]  # base backups: retention.pitr_days
    groups = plan_groups(logical, config.retention, lambda sid: passed.get(sid, False))
    ov.retention = {"kept": sum(len(g["keep"]) for g in groups),
                    "past_retention": sum(len(g["forget"]) for g in groups),
                    "groups": len(groups), "policy": config.retention.model_dump()}
    ov.repository_size_bytes = repository_figures(config, repo.store)["repository_size_bytes"]
    from crmops.pitr.window import all_windows, assessed, public

    for w in all_windows(repo):
        w = assessed(w, config.database.url)
        if w.get("lag_note"):
            w["lag_note"] = config.redact(w["lag_note"])
        ov.lag_history[f"{w.get('kind', 'wal')}:{w['system_id']}"] = w.get("pushes") or []
        ov.pitr.append(public(w))
    _read_quarantine(config, repo, listing.manifests, ov)


def _read_quarantine(config: Config, repo: Any, manifests: list[dict[str, Any]], ov: Overview) -> None:
    from crmops.repository.paths import manifest_chunks
    from crmops.services.repair import newest_of_source

    referenced = {c for m in manifests for c in manifest_chunks(m)}
    ov.quarantined = sorted(repo.quarantined() & referenced)  # the others only wait for prune
    newest = newest_of_source(manifests, config)
    if newest is not None:
        ov.newest_of_source = newest["id"]
        ov.quarantine_needed = sorted(set(manifest_chunks(newest)) & set(ov.quarantined))


def gather(config: Config, now: datetime | None = None, runs_shown: int = 30) -> Overview:
    """Read everything the verdicts and the status page need; never raises for what it finds."""
    now = now or datetime.now(UTC)
    ov = Overview(generated_at=now.isoformat(timespec="seconds"), host=socket.gethostname(),
                  repository=config.repository.url.split("?")[0],
                  max_archive_lag_seconds=config.status.max_archive_lag_seconds)
    try:
        _read_repository(config, ov)
    except CrmopsError as e:
        ov.repository_error = config.redact(e.line())
    runs = history(config)
    if config.copies:
        from crmops.copy.lag import judged

        ov.copies = judged(config, now, runs)
    ov.runs = runs[-runs_shown:]
    ov.upgrades = read_upgrades(config.state_dir / "upgrades")
    ov.verdicts = verdicts(config, ov, runs, now)
    return ov


def verdicts(config: Config, ov: Overview, runs: list[dict[str, Any]], now: datetime) -> list[Verdict]:
    from crmops.services.sources import configured_source

    s = config.status
    # another CRM's runs in a shared state_dir are not this database's jobs (old records have no source)
    try:
        mine = ov.source or configured_source(config)
        runs = [r for r in runs if r.get("source") in (None, mine)]
    except CrmopsError:
        pass  # a URL that names no source: every run counts
    out = [_backup_verdict(ov, runs, now, s.backup_max_age_hours)]
    out.append(_verify_verdict(ov, now, s.verify_max_age_days))
    if ov.repository_error:
        out.append(Verdict("repository", RED, f"cannot open the repository: {ov.repository_error}"))
    elif ov.damaged:
        ids = ", ".join(d["id"][:10] for d in ov.damaged)
        out.append(Verdict("repository", RED, f"{len(ov.damaged)} snapshot manifest(s) damaged ({ids}); "
                                              f"{_snapshots(len(ov.snapshots))} of this database readable; "
                                              "run `crmops check`"))
    else:
        total = len(ov.snapshots) + sum(ov.other_sources.values())
        out.append(Verdict("repository", GREEN, f"{_snapshots(total)}, "
                                                f"{_mb(ov.repository_size_bytes or 0)} stored at {ov.repository}"))
    out.append(_sources_verdict(ov))
    out.append(_retention_verdict(ov, s.repository_quota_bytes, s.headroom_percent))
    out.append(_jobs_verdict(runs, now))
    out.append(_integrity_verdict(config, ov, runs))
    out.append(_upgrades_verdict(ov))
    out.append(_alerting_verdict(config))
    out += [_archive_verdict(w, s.max_archive_lag_seconds) for w in ov.pitr]
    out += [Verdict(f"copy {c['name']}", c["level"], c["summary"]) for c in ov.copies]
    return out


def _archive_verdict(w: dict[str, Any], max_lag: float) -> Verdict:
    """Point-in-time recovery: the archive lag is the data a crash would lose; a gap breaks the window.

    The lag is judged by the server when database.url is the archiving server (pitr/lag.py):
    an idle server with everything archived is green however old its last push; without the
    server the age of the last push stands, and the summary says so.
    """
    binlog = w.get("kind") == "binlog"
    name, what = ("binlog archive", "binary log") if binlog else ("wal archive", "WAL segment")
    if w.get("gap"):
        return Verdict(name, RED, w["gap"]["message"])
    failing = w.get("archive_failing")
    if failing:
        return Verdict(name, RED, f"archive_command is failing: {failing['wal']} could not be archived "
                                  f"(last failure {failing['at'][:19]}); check the server log")
    lag = w.get("archive_lag_seconds")
    if lag is None:
        return Verdict(name, AMBER, f"{w['system_id']}: no {what} archived yet")
    asked = w.get("lag_source") == "server"
    measured = "" if asked or not w.get("lag_note") else f" ({w['lag_note']})"
    if lag > max_lag:
        how = "`crmops binlog follow`" if binlog else "archive_command"
        since = "; the server has written since" if asked else ""
        return Verdict(name, RED, f"archive lag {lag:.0f} s (limit {max_lag:g} s): the newest {what} was "
                                  f"archived {w.get('last_push_age_seconds', lag):.0f} s ago{since}; check {how} "
                                  f"and the server log{measured}")
    if w.get("idle_slots"):
        slot = w["idle_slots"][0]
        return Verdict(name, AMBER, f"replication slot {slot['slot']} is inactive and keeps "
                                    f"{slot['retained_bytes'] / 2**30:.1f} GiB of WAL on the server, growing until "
                                    "its disk is full: start its streamer (`crmops wal stream`, `schedule install "
                                    f"--wal-stream`) or drop it: SELECT pg_drop_replication_slot('{slot['slot']}')")
    if not w.get("start"):
        return Verdict(name, AMBER, f"{what}s archived {w.get('last_push_age_seconds', lag):.0f} s ago, but no "
                                    "backup to start from: run "
                                    + ("`crmops backup`" if binlog else "`crmops backup --physical`"))
    state = "idle, everything written is archived" if w.get("idle") else f"archive lag {lag:.0f} s"
    return Verdict(name, GREEN, f"recoverable from {w['start'][:19]} to {w['end'][:19]} UTC; {state}{measured}")


def _sources_verdict(ov: Overview) -> Verdict:
    """What is judged, and in one line what else the repository holds (never judged here)."""
    others = "; the repository also holds " + ", ".join(
        f"{src} ({n})" for src, n in sorted(ov.other_sources.items())) if ov.other_sources else ""
    return Verdict("sources", GREEN, f"judging {ov.source or 'the configured database'}{others}")


def _alerting_verdict(config: Config) -> Verdict:
    """A failed nightly job that reaches no one is the silent failure this tool exists to prevent."""
    n = config.notify
    channels: list[str] = []
    if n.webhooks or n.email is not None:  # the channels' modules (HTTP, SMTP, retries) only when there are any
        from crmops.notify import notifiers

        channels += [c.name for c in notifiers(config)]
    channels += [f"metrics file {n.metrics_file}"] if n.metrics_file else []
    if n.pushgateway_url:
        from crmops.notify.http import host_of

        channels.append(f"Pushgateway {host_of(n.pushgateway_url)}")
    if not channels:
        return Verdict("alerting", AMBER, "a failed job reaches no one but its exit code: configure notify.webhooks, "
                                          "notify.email, notify.metrics_file or notify.pushgateway_url")
    return Verdict("alerting", GREEN, "failures are reported to " + ", ".join(channels))


def _backup_verdict(ov: Overview, runs: list[dict[str, Any]], now: datetime, max_hours: float) -> Verdict:
    # the configured database's own backups: safety snapshots (pre-restore, pre-migrate) are not backups
    times = [parse_time(sn["time"]) for sn in ov.snapshots if not sn.get("safety")]
    # a repository we cannot read right now: the run history still knows the last good backup
    times += [datetime.fromtimestamp(r["finished"], UTC) for r in runs
              if r.get("command") == "backup" and r.get("result") == "success" and ov.repository_error]
    if not times:
        return Verdict("backup", RED, f"no backup of {ov.source or 'the configured database'} yet"
                       if not ov.repository_error
                       else "no backup is known (the repository cannot be read)")
    newest = max(times)
    age = now - newest
    if age > timedelta(hours=max_hours):
        return Verdict("backup", RED, f"no backup in {age.total_seconds() / 3600:.1f} hours (limit {max_hours:g} h); "
                                      f"the newest is from {newest:%Y-%m-%d %H:%M} UTC")
    return Verdict("backup", GREEN, f"newest snapshot {_ago(age)} ({newest:%Y-%m-%d %H:%M} UTC)")


def _verify_verdict(ov: Overview, now: datetime, max_days: float) -> Verdict:
    if not ov.verifications:
        if ov.repository_error:
            return Verdict("verification", AMBER, "verifications unknown (the repository cannot be read)")
        return Verdict("verification", AMBER, "no snapshot has been verified yet (run `crmops drill`)")
    last = ov.verifications[-1]
    when = parse_time(last["verified_at"])
    sid = (last.get("snapshot_id") or "")[:10]
    if not last.get("ok"):
        return Verdict("verification", RED, f"the last verification failed: snapshot {sid} on "
                                            f"{when:%Y-%m-%d %H:%M} UTC: {last.get('first_failure')}")
    if now - when > timedelta(days=max_days):
        return Verdict("verification", AMBER, f"the last verification is {_ago(now - when)} "
                                              f"(older than {max_days:g} days); run `crmops drill`")
    rto = last.get("restore_seconds")
    return Verdict("verification", GREEN, f"snapshot {sid} restored and matched {_ago(now - when)}"
                   + (f", restore time {rto:.3g} s" if rto is not None else ""))


def _retention_verdict(ov: Overview, quota: int | None, headroom: float) -> Verdict:
    if ov.repository_error:
        return Verdict("retention", AMBER, "unknown (the repository cannot be read)")
    ret = ov.retention
    problems = []
    if ret.get("past_retention"):
        n = ret["past_retention"]
        problems.append(f"{_snapshots(n)} {'is' if n == 1 else 'are'} past the retention policy "
                        "(run `crmops forget --prune`)")
    used = ""
    if quota:
        share = 100 * (ov.repository_size_bytes or 0) / quota
        used = f"; {share:.0f}% of the {_mb(quota)} quota"
        if share >= headroom:
            problems.append(f"the repository uses {share:.0f}% of its {_mb(quota)} quota "
                            f"(warning at {headroom:g}%): widen the quota or keep fewer snapshots")
    if problems:
        return Verdict("retention", AMBER, "; ".join(problems))
    return Verdict("retention", GREEN, f"{_snapshots(ret.get('kept', 0))}, all kept by the retention policy{used}")


def _jobs_verdict(runs: list[dict[str, Any]], now: datetime) -> Verdict:
    last: dict[str, dict[str, Any]] = {}
    for r in runs:
        last[r.get("command", "?")] = r
    if not last:
        return Verdict("jobs", AMBER, "no job run has been recorded yet (is the schedule installed?)")
    failed = [r for r in last.values() if r.get("result") != "success"]
    if failed:
        level = RED if any(r["command"] in CRITICAL_JOBS for r in failed) else AMBER
        text = "; ".join(f"last {r['command']} failed {_ago(now - datetime.fromtimestamp(r['finished'], UTC))}: "
                         f"{r.get('error')} (run {r.get('run_id')})" for r in failed)
        return Verdict("jobs", level, text)
    return Verdict("jobs", GREEN, "last runs ok: " + ", ".join(
        f"{c} {_ago(now - datetime.fromtimestamp(r['finished'], UTC))}" for c, r in sorted(last.items())))


def _upgrades_verdict(ov: Overview) -> Verdict:
    real = [u for u in ov.upgrades if not u.get("dry_run")]
    if not ov.upgrades:
        return Verdict("upgrades", GREEN, "no upgrade runs recorded")
    damaged = [u for u in ov.upgrades if u.get("problem")]
    if damaged:
        return Verdict("upgrades", AMBER, f"upgrade journal {damaged[0]['file']}: {damaged[0]['problem']}")
    if not real:
        n = len(ov.upgrades)
        runs = "1 rehearsal (dry run)" if n == 1 else f"{n} rehearsals (dry runs)"
        return Verdict("upgrades", GREEN, f"{runs}, no real upgrade")
    u = real[0]
    what = f"upgrade {u.get('playbook')} {u.get('from_version')} → {u.get('to_version')} (run {u.get('run_id')})"
    if u.get("result") is None:
        return Verdict("upgrades", AMBER, f"{what} has no end record: still running, or interrupted "
                                          "(resume or roll it back with `crmops upgrade`)")
    if u["result"] == "success":
        return Verdict("upgrades", GREEN, f"{what} succeeded")
    why = f": {u['error']}" if u.get("error") else ""
    if u["result"] == "rolled-back":
        return Verdict("upgrades", AMBER, f"{what} was rolled back{why}")
    return Verdict("upgrades", RED, f"{what} failed and was not rolled back{why}")


def _integrity_verdict(config: Config, ov: Overview, runs: list[dict[str, Any]]) -> Verdict:
    """Red while the newest snapshot of the configured database needs a chunk known to be damaged."""
    days = config.check.read_data_days
    reading = (f"the scheduled check reads {config.check.daily_percent():g}% of the data a day, so a damaged "
               f"chunk is found within {days} days")
    checks = [r for r in runs if r.get("command") == "check" and r.get("result") == "success"]
    if checks:
        reading += f"; coverage {checks[-1].get('figures', {}).get('coverage_percent', '?')}%"
    if ov.repository_error:
        return Verdict("integrity", AMBER, "unknown (the repository cannot be read)")
    if ov.quarantine_needed:
        n = len(ov.quarantine_needed)
        return Verdict("integrity", RED, f"the newest snapshot {ov.newest_of_source} needs {n} damaged chunk"
                                         f"{'s' if n != 1 else ''} ({', '.join(ov.quarantine_needed)}): it cannot be "
                                         "restored until `crmops backup` stores them again; then "
                                         "`crmops repair --dry-run`")
    if ov.quarantined:
        n = len(ov.quarantined)
        return Verdict("integrity", AMBER, f"{n} damaged chunk{'s' if n != 1 else ''} in quarantine, needed only by "
                                           "older snapshots: `crmops repair --dry-run` names them")
    return Verdict("integrity", GREEN, f"no damaged chunk known; {reading}")
