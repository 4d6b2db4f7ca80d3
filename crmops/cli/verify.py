"""`crmops verify` and `crmops drill`: prove a snapshot restores into exactly what was backed up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from crmops.cli.context import AppContext, pass_app, repository_option, table


def _render(console, r) -> None:  # type: ignore[no-untyped-def]
    failed = any(not row.ok for row in r.tables)  # the "problem" column only when there is one
    t = table("table", "rows expected", "rows found", "checksum", *(["problem"] if failed else []))
    for row in r.tables:
        t.add_row(row.name, "–" if row.rows_expected is None else f"{row.rows_expected:,}",
                  "–" if row.rows_found is None else f"{row.rows_found:,}",
                  "–" if row.checksum_ok is None else ("ok" if row.checksum_ok else "[red]differs[/red]"),
                  *([] if not failed else ["" if row.ok else f"[red]{row.reason}[/red]"]))
    if r.tables:
        console.print(t)
    for d in r.differences:
        console.print(f"[red]DIFFERS[/red] {d['kind']} {d['name']}: expected {d['expected']}, found {d['found']}")
    for c in r.checks:
        console.print(f"{'[green]ok[/green]  ' if c.ok else '[red]FAIL[/red]'} {c.detail}")
        for s in c.samples[:3] if not c.ok else []:
            console.print(f"      {json.dumps(s, default=str, ensure_ascii=False)}")
    rto = "–" if r.restore_seconds is None else f"{r.restore_seconds:.1f} s"
    console.print(f"restore time (RTO) {rto}; snapshot age (RPO) {r.snapshot_age_hours:.1f} h; "
                  f"whole run {r.total_seconds:.1f} s in {r.sandbox} {r.image}".rstrip())
    if r.kept:
        console.print(f"sandbox kept: {r.kept['name']}\n  connect: {r.kept['url']}\n  shell:   {r.kept['shell']}\n"
                      f"  remove:  {r.kept['remove']}")
    verdict = "[green]VERIFIED[/green]" if r.ok else f"[red]FAILED[/red]: {r.first_failure}"
    console.print(f"snapshot {r.snapshot_id[:10]} {verdict} (record {r.record_id})")


def _run(app: AppContext, snapshot: str, keep: bool, show_data: bool, record: Path | None,
         report_dir: Path | None, source: str | None = None) -> None:
    from crmops.verify.workflow import verify

    app.begin_job("drill" if report_dir is not None else "verify")
    r = verify(app.config, snapshot, keep=keep, show_data=show_data, on_step=lambda s: app.say(f"· {s}"),
               source=source)
    out: dict[str, Any] = r.to_dict()
    if record is not None:
        record.write_text(json.dumps(r.record, indent=2, ensure_ascii=False), encoding="utf-8")
        out["record_file"] = str(record)
    if report_dir is not None:
        from crmops.verify.report import write_reports

        out["reports"] = write_reports(r, report_dir)

    def human(console) -> None:  # type: ignore[no-untyped-def]
        _render(console, r)
        if report_dir is not None:
            console.print(f"report: {out['reports']['html']} (and .json)")
        if record is not None:
            console.print(f"signed record written to {record}")

    app.emit(out, human)
    r.raise_if_failed()


_record_opt = click.option("--record", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
                           help="Also write the signed verification record to FILE (for auditors).")
_source_opt = click.option("--source", metavar="SOURCE",
                           help="latest of this source instead of the configured database's.")
_show_opt = click.option("--show-data", is_flag=True, help="Show row samples in failures unmasked (personal data).")


_at_opt = click.option("--at", metavar="TIME", help="PostgreSQL point in time: recover base backup + WAL archive to "
                       'TIME (e.g. "2026-12-01 14:05:00+00") in a sandbox and run the checks there.')


def _run_at(app: AppContext, at: str, keep: bool, show_data: bool, report_dir: Path | None) -> None:
    from crmops.verify.pitr import raise_if_failed, verify_at

    app.begin_job("drill" if report_dir is not None else "verify")
    out = verify_at(app.config, {"time": at}, keep=keep, show_data=show_data, say=lambda s: app.say(f"· {s}"))
    if report_dir is not None:
        from datetime import UTC, datetime

        report_dir.mkdir(parents=True, exist_ok=True)
        path = report_dir / f"drill-at-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
        path.write_text(json.dumps(out, indent=2, default=str, ensure_ascii=False), encoding="utf-8")
        out["reports"] = {"json": str(path)}

    def human(console) -> None:  # type: ignore[no-untyped-def]
        for line in out["lines"]:
            console.print(line, markup=False)
        console.print(("VERIFIED" if out["ok"] else f"FAILED: {out['first_failure']}")
                      + f" at {out['target']['value']}", markup=False)

    app.emit(out, human)
    raise_if_failed(out)


@click.command("verify")
@repository_option
@click.argument("snapshot", default="latest")
@_show_opt
@_record_opt
@_source_opt
@click.option("--check-record", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="FILE",
              help="Check a signed record offline instead of verifying (Ed25519: no repository needed).")
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="PEM",
              help="With --check-record: the trusted Ed25519 public key the record must be signed with.")
@_at_opt
@pass_app
def verify_cmd(app: AppContext, snapshot: str, show_data: bool, record: Path | None, check_record: Path | None,
               public_key: Path | None, source: str | None, at: str | None) -> None:
    """Restore SNAPSHOT (default: latest) into a throwaway sandbox and prove it matches what was backed up.

    Exit 0 only if every table's rows and checksum, the attachments and all configured
    checks match; otherwise exit 30 naming the first failure.
    """
    if check_record is not None:
        _check_record(app, check_record, public_key)
        return
    if at is not None:
        return _run_at(app, at, False, show_data, None)
    _run(app, snapshot, False, show_data, record, None, source)


@click.command("drill")
@repository_option
@click.argument("snapshot", default="latest")
@click.option("--keep", is_flag=True, help="Leave the sandbox running and print how to connect and remove it.")
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Where the JSON and HTML reports go (default: <state_dir>/drills).")
@_show_opt
@_record_opt
@_source_opt
@_at_opt
@pass_app
def drill_cmd(app: AppContext, snapshot: str, keep: bool, report_dir: Path | None, show_data: bool,
              record: Path | None, source: str | None, at: str | None) -> None:
    """Disaster drill: verify SNAPSHOT and write a JSON and a self-contained HTML report."""
    if at is not None:
        return _run_at(app, at, keep, show_data, report_dir or app.config.state_dir / "drills")
    _run(app, snapshot, keep, show_data, record, report_dir or app.config.state_dir / "drills", source)


def _check_record(app: AppContext, path: Path, public_key: Path | None) -> None:
    from crmops.errors import IntegrityError, VerificationFailed
    from crmops.verify import record as verify_record

    try:
        signed = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise IntegrityError(f"{path}: not a JSON verification record") from None
    alg = (signed.get("signature") or {}).get("alg") if isinstance(signed, dict) else None
    key = repo_id = None
    if alg == "hmac-sha256":
        from crmops.repository import open_repository

        repo = open_repository(app.config)
        key, repo_id = repo.key.record_key, repo.id
    checked = verify_record.check(signed, record_key=key, repository_id=repo_id, public_key_file=public_key)
    body = signed["record"]
    out = {"file": str(path), "signature_valid": True, **checked, "snapshot_id": body.get("snapshot_id"),
           "verified_at": body.get("verified_at"), "ok": body.get("ok"), "first_failure": body.get("first_failure"),
           "image": body.get("image"), "restore_seconds": body.get("restore_seconds")}

    def human(console) -> None:  # type: ignore[no-untyped-def]
        who = checked.get("key_id") or f"repository {checked.get('repository')}"
        trust = "" if checked["trusted_key"] else " (key embedded in the record: compare it, or pass --public-key)"
        console.print(f"signature valid ({checked['alg']}, {who}){trust}")
        console.print(f"snapshot {body.get('snapshot_id')} verified at {body.get('verified_at')}: "
                      f"{'ok' if body.get('ok') else 'FAILED: ' + str(body.get('first_failure'))}; "
                      f"restore {body.get('restore_seconds')} s in {body.get('image') or body.get('sandbox')}")

    app.emit(out, human)
    if not body.get("ok"):
        raise VerificationFailed(f"the record is genuine but says snapshot {body.get('snapshot_id')} failed: "
                                 f"{body.get('first_failure')}")
