"""What an operator does on a bad day, on the real Django CRM's schema and data: a snapshot that
verify turns red, the deals table brought back with `restore --tables`, a company deleted in the
CRM brought back with its contacts, deals and the deal's file by `undo`, and a long data migration
watched in the journal while it runs. Used by test_djangocrm_upgrade.py, on the fixture and the
verified snapshot it already made, so these cost seconds, not a second CRM."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from crmops.engines.connect import connect_engine
from tests.matrix.digest import native_digest
from tests.realcrm.djangocrm import ROOT, Crm
from tests.verify.verify_helpers import ok, run

VERIFY_SNIPPET = ROOT / "docs" / "examples" / "django-crm-verify.yaml"
MIGRATION_SNIPPET = ROOT / "docs" / "examples" / "django-crm-data-migration.yaml"
#: a company the fixture gave two contacts and a deal with a file (every third deal has one)
COMPANY = "Company 00042 GmbH"


def sql(url: str, statement: str) -> Any:
    """One statement in its own transaction; the first value of its first row, if any."""
    engine = connect_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(statement))
            return result.scalar() if result.returns_rows else None
    finally:
        engine.dispose()


def assertion_names() -> list[str]:
    return [a["name"] for a in yaml.safe_load(VERIFY_SNIPPET.read_text())["verify"]["assertions"]]


def verify_green(config: Path) -> None:
    """The latest snapshot passes every assertion of the shipped snippet and the shrink check."""
    report = ok(run(config, "--json", "verify"))
    passed = {c["name"] for c in report["checks"] if c["ok"]}
    assert set(assertion_names()) <= passed and "shrink" in passed, report["checks"]


def red_verify_then_deals_restored(config: Path, url: str, good: str) -> None:
    """Two deals made negative: the snapshot of that is red, naming the assertion and not the amounts;
    `restore GOOD --tables crm_deal --force` brings the deals back and moves nothing else."""
    before = native_digest(url)
    tickets = "('T00007', 'T00011')"
    amounts = [str(sql(url, f"SELECT amount FROM crm_deal WHERE ticket = '{t}'")) for t in ("T00007", "T00011")]
    sql(url, f"UPDATE crm_deal SET amount = -amount WHERE ticket IN {tickets}")
    bad = ok(run(config, "--json", "backup"))["snapshot_id"]
    r = run(config, "verify", bad)
    assert r.returncode == 30, r.stderr + r.stdout[-2000:]
    assert "assertion 'no deal amount is negative' failed: expected 0, got 2" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    for value in amounts:  # neither the amount nor its negation is printed anywhere
        assert value.lstrip("-") not in r.stdout + r.stderr, value
    t0 = time.monotonic()
    ok(run(config, "--json", "restore", good, "--to", "${CRM_DB_URL}", "--tables", "crm_deal", "--force",
           env={"CRM_DB_URL": url}))
    seconds = time.monotonic() - t0
    assert native_digest(url) == before  # crm_deal as it was; every other table and the schema untouched
    print(f"\nrestore --tables crm_deal: {seconds:.1f}s")


def company_undone(config: Path, crm: Crm, url: str, good: str) -> None:
    """The CRM deletes a company (Django's cascade, in Python): undo brings back the company, its
    contacts, its deal and, through the declared generic relation, the deal's file."""
    before = native_digest(url)
    company = sql(url, f"SELECT id FROM crm_company WHERE full_name = '{COMPANY}'")
    deal_type = sql(url, "SELECT id FROM django_content_type WHERE app_label = 'crm' AND model = 'deal'")
    hanging = (f"SELECT (SELECT count(*) FROM crm_contact WHERE company_id = {company}) * 100 + "
               f"(SELECT count(*) FROM crm_deal WHERE company_id = {company}) * 10 + "
               "(SELECT count(*) FROM common_thefile f JOIN crm_deal d ON d.id = f.object_id "
               f"WHERE f.content_type_id = {deal_type} AND d.company_id = {company})")
    assert sql(url, hanging) == 211  # two contacts, a deal, its file
    files = sql(url, "SELECT count(*) FROM common_thefile")
    crm.exec("python3", "/app/manage.py", "shell", "-c",
             f"from crm.models import Company; print(Company.objects.filter(id={company}).delete())")
    assert sql(url, hanging) == 0 and sql(url, "SELECT count(*) FROM common_thefile") == files - 1
    data = yaml.safe_load(config.read_text())
    # Django's generic relation has no foreign key: declared, with the content type that means "a deal"
    data["undo"] = {"relations": [{"table": "common_thefile", "column": "object_id", "references": "crm_deal.id",
                                   "type_column": "content_type_id", "type_value": str(deal_type)}]}
    undo_config = config.with_name("crmops-undo.yaml")
    undo_config.write_text(yaml.safe_dump(data))
    t0 = time.monotonic()
    done = ok(run(undo_config, "--json", "undo", "--table", "crm_company", "--where", f"id = {company}",
                  "--from", good, "--apply"))
    seconds = time.monotonic() - t0
    assert native_digest(url) == before, done
    print(f"\nundo of a company: {seconds:.1f}s, {json.dumps(done.get('plan', {}).get('summary'))}")


def with_data_migration(playbook: Path) -> None:
    """The shipped data-migration step, put in the playbook's upgrade stage after `migrate`."""
    doc = yaml.safe_load(playbook.read_text())
    steps = next(s for s in doc["stages"] if s["name"] == "upgrade")["steps"]
    at = next(i for i, s in enumerate(steps) if s.get("id") == "migrate") + 1
    steps[at:at] = yaml.safe_load(MIGRATION_SNIPPET.read_text())
    playbook.write_text(yaml.safe_dump(doc, sort_keys=False))


class JournalWatch:
    """Reads the newest run journal while an upgrade runs: were there progress records of a step
    before its end record was written?"""

    def __init__(self, state: Path, step: str) -> None:
        self.folder, self.step = state / "upgrades", step
        self.known = set(self.folder.glob("*.jsonl")) if self.folder.exists() else set()
        self.progress_before_end: list[dict[str, Any]] = []
        self.ended = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> JournalWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _watch(self) -> None:
        while not self._stop.wait(0.3) and not self.ended:
            new = [p for p in self.folder.glob("*.jsonl") if p not in self.known] if self.folder.exists() else []
            if not new:
                continue
            try:
                records = [json.loads(line) for line in new[0].read_text().splitlines() if line.endswith("}")]
            except ValueError:  # a line half-written this instant: read it next time
                continue
            mine = [r for r in records if r.get("step") == self.step and r.get("phase") == "run"]
            if any(r["event"] == "step_end" for r in mine):
                self.ended = True
            elif not self.ended:
                self.progress_before_end = [r for r in mine if r["event"] == "step_progress"]
