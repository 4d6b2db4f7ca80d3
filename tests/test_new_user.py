"""What a new administrator hit on first try: each case fails on the old code and is fixed here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import s3_client

PASSPHRASE = "first try passphrase"


def crmops(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    full.update({"TEST_PASSPHRASE": PASSPHRASE, "COLUMNS": "80", **(env or {})})
    return subprocess.run([sys.executable, "-m", "crmops", "--config", str(config), *args], capture_output=True,
                          text=True, env=full, timeout=120)


def config(tmp_path: Path, repo_url: str, db_url: str | None = None, extra: dict[str, Any] | None = None,
           **repository: Any) -> Path:
    (tmp_path / "crm.db").touch()
    cfg = {"database": {"url": db_url or f"sqlite:///{tmp_path / 'crm.db'}"},
           "repository": {"url": repo_url, **repository}, "encryption": {"passphrase": "${TEST_PASSPHRASE}"},
           "state_dir": str(tmp_path / "state"), **(extra or {})}
    path = tmp_path / "crmops.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("crmops: error: "), r.stderr
    return r.stderr


def test_a_repository_path_that_is_a_file_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "backups").write_text("not a folder")
    cfg = config(tmp_path, f"file://{tmp_path / 'backups'}")
    for args in (("repo", "init"), ("backup",), ("snapshots",)):
        r = crmops(cfg, *args)
        assert r.returncode == 3, (args, r.stderr)  # a configuration mistake, not "endpoint does not answer"
        assert "is a file, not a folder" in one_line_error(r) and "repo init" in r.stderr
    nested = config(tmp_path, f"file://{tmp_path / 'backups' / 'crm'}")
    r = crmops(nested, "repo", "init")
    assert r.returncode == 3 and f"{tmp_path / 'backups'}, in the repository path, is a file" in r.stderr


def test_a_missing_bucket_is_named_and_repo_init_creates_it(tmp_path: Path, s3_endpoint: str) -> None:
    bucket = f"crm-missing-{os.getpid()}-{tmp_path.name[-6:]}".lower().replace("_", "-")
    cfg = config(tmp_path, f"s3://{bucket}/crm", s3={"endpoint_url": s3_endpoint})
    r = crmops(cfg, "backup")
    assert r.returncode == 22
    line = one_line_error(r)
    assert f"bucket {bucket} does not exist" in line and f"aws s3 mb s3://{bucket}" in line
    r = crmops(cfg, "repo", "init")
    assert r.returncode == 0, r.stderr
    assert f"created bucket {bucket}" in r.stdout
    s3_client(s3_endpoint).head_bucket(Bucket=bucket)
    assert crmops(cfg, "backup").returncode == 0


def test_migrate_plan_sql_on_postgresql_explains_what_it_cannot_show(tmp_path: Path, pg_url: str) -> None:
    from crmops.democrm.load import create

    create(pg_url, size="small", version="1.0")
    r = crmops(config(tmp_path, f"file://{tmp_path / 'repo'}", db_url=pg_url), "migrate", "plan", "--sql")
    assert r.returncode == 0, r.stderr
    assert "Error" not in r.stdout + r.stderr  # was: AttributeError: 'NoneType' object has no attribute 'all'
    assert "d2_0002" in r.stdout and "reads the database while it runs" in r.stdout
    assert "ALTER TABLE contacts ADD CONSTRAINT uq_contacts_email UNIQUE (email);" in r.stdout


def test_docker_unreachable_is_one_readable_line(tmp_path: Path) -> None:
    cfg = config(tmp_path, f"file://{tmp_path / 'repo'}")
    r = crmops(cfg, "sandbox", "list", env={"DOCKER_HOST": "tcp://127.0.0.1:1"})
    assert r.returncode == 31
    line = one_line_error(r)
    assert "does not answer: connection refused (start Docker" in line
    assert "HTTPConnectionPool" not in line and "Caused by" not in line  # was a raw exception cut at 160 characters


def test_literal_password_warning_names_the_option_as_typed(tmp_path: Path) -> None:
    cfg = config(tmp_path, f"file://{tmp_path / 'repo'}")
    r = crmops(cfg, "restore", "latest", "--to", "postgresql://crm:hunter2@127.0.0.1:1/crm")
    warning = r.stderr.splitlines()[0]
    assert warning.startswith("crmops: warning: --to holds a password on the command line"), r.stderr
    assert "to_url" not in r.stderr and "hunter2" not in r.stderr


def test_schedule_show_says_when_each_job_next_runs(tmp_path: Path) -> None:
    from datetime import datetime

    from crmops.services.schedule import next_run, next_run_text, parse_installed, parse_when

    tuesday = datetime(2026, 12, 1, 16, 0)
    assert next_run(parse_when("02:30"), tuesday) == datetime(2026, 12, 2, 2, 30)
    assert next_run(parse_when("sun 04:00"), tuesday) == datetime(2026, 12, 6, 4, 0)
    weekdays = parse_when("mon-fri 22:00")
    for written in (weekdays.on_calendar(), weekdays.cron()):  # what systemd and cron files hold
        assert parse_installed(written) == weekdays
    assert next_run(weekdays, datetime(2026, 12, 4, 23, 0)) == datetime(2026, 12, 7, 22, 0)  # Friday night
    assert next_run_text(weekdays.cron(), tuesday) == "Tue 2026-12-01 22:00 (in 6 h 0 min)"
    cfg = config(tmp_path, f"file://{tmp_path / 'repo'}")
    dirs = ("--unit-dir", str(tmp_path / "units"), "--cron-file", str(tmp_path / "cron"))
    for kind in ((), ("--cron",)):
        installed = crmops(cfg, "schedule", "install", *kind, "--verify", "sun 04:00", "--no-systemctl", *dirs)
        assert installed.returncode == 0, installed.stderr
        shown = crmops(cfg, "schedule", "show", *dirs).stdout
        assert re.search(r"next run: Sun \d{4}-\d\d-\d\d 04:00 \(in ", shown), shown


def test_one_rehearsal_is_singular() -> None:
    from crmops.status.verdicts import Overview, _upgrades_verdict

    def summary(n: int) -> str:
        ov = Overview(generated_at="", host="", repository="", upgrades=[{"dry_run": True}] * n)
        return _upgrades_verdict(ov).summary

    assert summary(1) == "1 rehearsal (dry run), no real upgrade"
    assert summary(2) == "2 rehearsals (dry runs), no real upgrade"


def test_help_summaries_are_whole_sentences_at_80_columns(tmp_path: Path) -> None:
    for args in ((), ("migrate",), ("schedule",)):
        r = crmops(tmp_path / "none.yaml", *args, "--help")
        cut = [line for line in r.stdout.splitlines() if line.endswith("...") and not line.startswith("Usage:")]
        assert r.returncode == 0 and not cut, cut
    top = " ".join(crmops(tmp_path / "none.yaml", "--help").stdout.split())
    assert "check Check that every manifest opens and every chunk it needs is present (and, optionally, intact)." in top


def test_tables_wrap_instead_of_cutting_cells_at_80_columns() -> None:
    from rich.console import Console

    from crmops.cli.context import table

    t = table("id", "time (UTC)", "tags", "engine", "schema", "size", "new")
    t.add_row("0123456789", "2026-12-01 16:14:40", "pre-restore,nightly", "postgresql 15.10", "d2_0003", "125.3 MB",
              "12.0 MB")
    console = Console(width=80, record=True)
    console.print(t)
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for word in ("postgresql", "pre-restore", "15.10", "125.3 MB"):
        assert word in text.replace("\n", " ") or word in "".join(text.split()), word


def test_config_show_and_repo_info_are_for_people(tmp_path: Path) -> None:
    cfg = config(tmp_path, f"file://{tmp_path / 'repo'}")
    assert crmops(cfg, "repo", "init").returncode == 0
    shown = crmops(cfg, "config", "show").stdout
    assert shown and not [line for line in shown.splitlines() if line != line.rstrip()]  # no padding to 80
    info = crmops(cfg, "repo", "info").stdout
    assert "{" not in info and "chunking    fastcdc, average 1,024 KiB" in info and "0 snapshots" in info


def _pre_restore_snapshots(cfg: Path) -> list[str]:
    import json

    r = crmops(cfg, "--json", "snapshots", "--all")
    assert r.returncode == 0, r.stderr
    return [s["id"] for s in json.loads(r.stdout) if "pre-restore" in s.get("tags", [])]


def _read_only_mount(folder: Path) -> list[str] | None:
    """A command prefix that runs its command with folder mounted read-only in a private mount namespace."""
    import shutil

    if os.geteuid() != 0 or not shutil.which("unshare"):
        return None
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        return None
    script = f'mount --bind "{folder}" "{folder}" && mount -o remount,bind,ro "{folder}" && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


def test_restore_checks_the_attachments_folder_before_the_database(tmp_path: Path, pg_url: str) -> None:
    """Item 1: a folder that cannot be written is refused before the database is touched; a failure while the
    files are written, after the database changed, names what changed and the command that undoes it."""
    from crmops.democrm.load import create
    from tests.matrix.digest import native_digest

    create(pg_url, size="small", attachments_dir=tmp_path / "files")
    cfg = config(tmp_path, f"file://{tmp_path / 'repo'}", db_url=pg_url,
                 extra={"attachments": {"path": str(tmp_path / "files")}})
    assert crmops(cfg, "repo", "init").returncode == 0
    assert crmops(cfg, "backup").returncode == 0
    password = psycopg_connect(pg_url).info.password
    to = pg_url.replace(f":{password}@", ":${TEST_DB_PASSWORD}@")  # never on the command line
    secret = {"TEST_DB_PASSWORD": password}
    before = native_digest(pg_url)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "ro").mkdir()
    bad = {"/proc/x": "is on a pseudo file system", str(tmp_path / "a-file" / "back"): "is a file, not a folder"}
    for folder, why in bad.items():
        r = crmops(cfg, "restore", "latest", "--to", to, "--force", "--attachments-to", folder, env=secret)
        assert r.returncode == 3 and why in one_line_error(r) and "nothing was changed" in r.stderr, r.stderr
    prefix = _read_only_mount(tmp_path / "ro")
    if prefix is not None:
        full = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
        r = subprocess.run([*prefix, sys.executable, "-m", "crmops", "--config", str(cfg), "restore", "latest",
                            "--to", to, "--force", "--attachments-to", str(tmp_path / "ro" / "back")],
                           capture_output=True, text=True, env={**full, "TEST_PASSPHRASE": PASSPHRASE, **secret},
                           timeout=120)
        assert r.returncode == 3 and "is on a read-only file system" in one_line_error(r), r.stderr
    assert native_digest(pg_url) == before and _pre_restore_snapshots(cfg) == []

    # the folder is writable, but a file's place is taken by a folder: found only while writing
    taken = next(p for p in sorted((tmp_path / "files").rglob("*")) if p.is_file()).relative_to(tmp_path / "files")
    (tmp_path / "back" / taken / "in-the-way").mkdir(parents=True)
    with psycopg_connect(pg_url) as conn:
        conn.execute("CREATE TABLE added_after_backup (id int)")
    changed = native_digest(pg_url)
    r = crmops(cfg, "restore", "latest", "--to", to, "--force", "--attachments-to", str(tmp_path / "back"),
               env=secret)
    assert r.returncode == 4, r.stderr
    warning, line = r.stderr.strip().splitlines()  # restoring onto the configured database is warned about
    assert warning.startswith("crmops: warning: --to is the configured database") and line.startswith("crmops: error:")
    safety = _pre_restore_snapshots(cfg)
    assert len(safety) == 1 and "the database in" in line and "was already restored from snapshot" in line
    undo = re.search(r"undo that with: (crmops restore \S+ --to \S+ --force)", line)
    assert undo and safety[0] in undo.group(1), line
    # the password is hidden as *** in the line, as every secret is
    r = crmops(cfg, *undo.group(1).replace(":***@", ":${TEST_DB_PASSWORD}@").split()[1:], env=secret)
    assert r.returncode == 0, r.stderr
    assert native_digest(pg_url) == changed
    # item 11: at 80 columns the tag and the engine's version stay whole ("pre-restor|e", "postgresql|15.18")
    listed = crmops(cfg, "snapshots", "--all", env=secret).stdout
    rows = [line for line in listed.splitlines() if "pre-restore" in line]
    assert rows and re.search(r"postgresql \d+\.\d+", rows[0]), listed
    assert max(len(line) for line in listed.splitlines()) <= 80, listed


def backed_up(tmp_path: Path, pg_url: str) -> tuple[Path, str, dict[str, str]]:
    """A configuration for pg_url (its password as ${TEST_DB_PASSWORD}), a repository and one backup:
    (config, the URL as written, the environment that fills the password in)."""
    password = psycopg_connect(pg_url).info.password
    hide = {"TEST_DB_PASSWORD": password}
    source = pg_url.replace(f":{password}@", ":${TEST_DB_PASSWORD}@")
    cfg = config(tmp_path, f"file://{tmp_path / 'repo'}", db_url=source)
    assert crmops(cfg, "repo", "init", env=hide).returncode == 0
    assert crmops(cfg, "backup", env=hide).returncode == 0
    return cfg, source, hide


def psycopg_connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True)


def test_undo_and_restore_say_which_attachment_files_they_leave_behind(tmp_path: Path) -> None:
    """Item 2: with undo.attachment_columns unset, --apply says the files are not restored and which key maps
    them (it printed "0 attachment files restored"); a whole restore without --attachments-to counts the files."""

    from crmops.democrm.load import create
    from crmops.engines.connect import connect_engine
    from tests.undo import undo_helpers as h

    url = f"sqlite:///{tmp_path / 'crm.db'}"
    create(url, size="small", version="2.0", attachments_dir=tmp_path / "files")
    cfg = config(tmp_path, f"file://{tmp_path / 'repo'}", db_url=url,
                 extra={"attachments": {"path": str(tmp_path / "files")}})  # no undo.attachment_columns
    assert crmops(cfg, "repo", "init").returncode == 0
    assert crmops(cfg, "backup").returncode == 0
    engine = connect_engine(url)
    with engine.begin() as conn:
        gone = h.closure(conn, h.account_with_attachments(conn))
        paths = [r["storage_path"] for r in h.rows_of(conn, "attachments", gone["attachments"])]
        h.delete(conn, gone)
    engine.dispose()
    for p in paths:
        (tmp_path / "files" / p).unlink()
    r = crmops(cfg, "undo", "--table", "accounts", "--where", f"id = {gone['accounts'][0]}", "--apply")
    assert r.returncode == 0, r.stderr
    n = len(paths)
    said = f"attachments.storage_path ({n} file{'s' * (n != 1)}), but undo.attachment_columns is not set"
    assert said in " ".join(r.stdout.split()) and said in r.stderr, r.stdout + r.stderr
    assert "crmops: warning:" in r.stderr and "0 attachment files restored" not in r.stdout
    assert "attachment files NOT restored" in r.stdout
    assert not any((tmp_path / "files" / p).exists() for p in paths)  # the warning is true

    files = sum(1 for p in (tmp_path / "files").rglob("*") if p.is_file()) + n
    out = crmops(cfg, "restore", "latest", "--to", f"sqlite:///{tmp_path / 'copy.db'}")
    assert out.returncode == 0, out.stderr
    assert f"not restored: the snapshot's {files} attachment files (add --attachments-to DIR" in out.stdout


def test_undo_names_a_mistyped_table_before_any_sandbox_starts(tmp_path: Path, pg_url: str) -> None:
    """Item 10: `undo --table acounts` restored a 17 s sandbox before "did you mean accounts?". With Docker out of
    reach the answer must still be the table's, which proves no sandbox was asked for."""
    from crmops.democrm.load import create

    create(pg_url, size="small", version="1.0")
    password = psycopg_connect(pg_url).info.password
    cfg = config(tmp_path, f"file://{tmp_path / 'repo'}",
                 db_url=pg_url.replace(f":{password}@", ":${TEST_DB_PASSWORD}@"))
    env = {"TEST_DB_PASSWORD": password}
    assert crmops(cfg, "repo", "init", env=env).returncode == 0
    assert crmops(cfg, "backup", env=env).returncode == 0
    r = crmops(cfg, "undo", "--table", "acounts", "--where", "id = 1",
               env={**env, "DOCKER_HOST": "tcp://127.0.0.1:1"})
    assert r.returncode == 72 and "did you mean accounts?" in one_line_error(r), r.stderr
    r = crmops(cfg, "undo", "--table", "accounts", "--where", "id = 1", "--apply", "--attachments-to", "/proc/x",
               env={**env, "DOCKER_HOST": "tcp://127.0.0.1:1"})
    assert r.returncode == 3 and "--attachments-to /proc/x" in one_line_error(r), r.stderr


@pytest.mark.parametrize("engine", ["postgresql", "mariadb"])
def test_undo_where_is_checked_against_the_live_table_before_any_sandbox(tmp_path: Path, engine: str,
                                                                         request: Any) -> None:
    """Item 10, --where: a mistyped column was found only in the sandbox, after its restore. It is checked on the
    live table first (read-only, LIMIT 0), and a second statement or a comment is refused before anything at all.
    Docker out of reach proves no sandbox was asked for."""
    from sqlalchemy.engine import make_url

    from crmops.democrm.load import create
    from tests.matrix.digest import native_digest

    url = request.getfixturevalue("pg_url" if engine == "postgresql" else "mysql_url")
    create(url, size="small", version="1.0")
    password = make_url(url).password or ""
    env = {"TEST_DB_PASSWORD": password, "DOCKER_HOST": "tcp://127.0.0.1:1"}
    cfg = config(tmp_path, f"file://{tmp_path / 'repo'}", db_url=url.replace(f":{password}@", ":${TEST_DB_PASSWORD}@"))
    assert crmops(cfg, "repo", "init", env=env).returncode == 0
    assert crmops(cfg, "backup", env=env).returncode == 0
    before = native_digest(url)
    cases = {"industy LIKE 'soft%'": "table accounts has no column industy; nothing was changed (did you mean "
                                     "industry?)",
             "nme = 'x'": "table accounts has no column nme; nothing was changed (did you mean name?)",
             "id = 1; DROP TABLE accounts": "it holds a ';' (a second statement); nothing was changed",
             "id = 1 -- and the rest": "it holds a comment (--)",
             "name = E'\\'' ; COMMIT; DROP TABLE accounts; --'": "a backslash before a quote",
             "id = 1) OR (1 = 1": "it holds a ')' closing more than it opened",
             "name = 'it''s; fine' AND idd = 2": "table accounts has no column idd",
             "id = = 1": "--where does not work on table accounts: "}
    from tests.matrix.cli import cli

    for where, said in cases.items():
        for apply in ([], ["--apply"]):
            # in this process: sixteen refusals in a fresh interpreter each cost about 25 s on a busy machine
            r = cli(cfg, "undo", "--table", "accounts", "--where", where, *apply,
                    env={**env, "TEST_PASSPHRASE": PASSPHRASE})
            assert r.returncode == 72 and said in one_line_error(r), (where, r.stderr)  # type: ignore[arg-type]
    assert native_digest(url) == before
    ok = crmops(cfg, "undo", "--table", "accounts", "--where", "id = 1", env=env)
    assert ok.returncode == 31 and "does not answer" in ok.stderr, ok.stderr  # a good one goes on to the sandbox


def test_the_starter_works_with_demo_create_url_and_documents_the_attachment_mapping(
        tmp_path: Path, monkeypatch: Any) -> None:
    """Item 6: `init` then `demo create --url` asked for ${CRM_DB_PASSWORD}, then one more variable per run."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "CRM_DB_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    cfg = tmp_path / "crmops.yaml"
    assert crmops(cfg, "init", "--path", str(cfg)).returncode == 0
    starter = cfg.read_text()
    assert "attachment_columns" in starter and "NOT their files" in starter and "never creates a database" in starter
    r = crmops(cfg, "demo", "create", "--url", f"sqlite:///{tmp_path / 'demo.db'}")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "demo.db").stat().st_size > 0 and not Path("/var/lib/crm/uploads").exists()
    r = crmops(cfg, "snapshots")  # every unset variable in one line, not one per run
    line = one_line_error(r)
    assert r.returncode == 3 and all(v in line for v in ("${CRM_DB_PASSWORD}", "${AWS_ACCESS_KEY_ID}",
                                                         "${AWS_SECRET_ACCESS_KEY}")), line


def test_an_empty_configuration_file_is_an_error_not_the_demo(tmp_path: Path) -> None:
    """Item 7: under cron a truncated crmops.yaml silently backed up the embedded demo."""
    for text in ("", "\n\n", "# only a comment\n"):
        cfg = tmp_path / "crmops.yaml"
        cfg.write_text(text)
        r = crmops(cfg, "backup")
        assert r.returncode == 3 and "the file is empty" in one_line_error(r), r.stderr
        assert not (tmp_path / "demo").exists()
    # cut short but still YAML: what it no longer says came from the demo (the repository ./demo/repo)
    starter = (Path(__file__).resolve().parent.parent / "crmops" / "starter.yaml").read_text()
    env = {"CRM_DB_PASSWORD": "x", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    cuts = {"\ndatabase:\n": "line 5: database: is empty (null)",
            "@127.0.0.1:5432/crm\n": "no repository: section; a configuration file must state repository.url",
            "  # file:///backup/crm or s3://bucket/prefix\n": "line 26: repository: is empty (null)"}
    for after, said in cuts.items():
        cfg = tmp_path / "crmops.yaml"
        cfg.write_text(starter[:starter.index(after) + len(after)])
        for args in (("backup",), ("snapshots",), ("config", "show")):
            r = crmops(cfg, *args, env=env)
            assert r.returncode == 3 and f"{cfg}: {said}" in one_line_error(r), r.stderr
            assert "was it cut short?" in r.stderr and not (tmp_path / "demo").exists()


def test_environment_variables_are_blamed_not_the_file(tmp_path: Path) -> None:
    """Item 9: CRMOPS_DATABSE__URL=x was reported as `crmops.yaml: key databse: unknown key`."""
    cfg = config(tmp_path, f"file://{tmp_path / 'repo'}")
    for name, value, said in (("CRMOPS_DATABSE__URL", "x", "key databse: unknown key"),
                              ("CRMOPS_STATUS__BACKUP_MAX_AGE_HOURS", "abc", "key status.backup_max_age_hours")):
        r = crmops(cfg, "config", "show", env={name: value})
        line = one_line_error(r)
        assert r.returncode == 3 and line.startswith(f"crmops: error: environment variable {name}: {said}"), line
        assert str(cfg) not in line


MARKER = "MARKER-4a7c-customer-address"


def test_a_failed_restore_never_shows_row_values(tmp_path: Path, pg_url: str, pg_url_factory: Any) -> None:
    """Item 4: a failed copy printed the row it was sending into the error line and the journal. A marker value
    the target refuses (a check constraint, switched on in the target database only) must appear nowhere."""
    with psycopg_connect(pg_url) as conn:
        conn.execute("CREATE FUNCTION public.allowed(t text) RETURNS boolean LANGUAGE sql STABLE AS "
                     "$$ SELECT current_setting('crm.refuse', true) IS DISTINCT FROM 'on' OR t NOT LIKE 'MARKER%' $$")
        conn.execute("CREATE TABLE addresses (id int PRIMARY KEY, street text CHECK (public.allowed(street)))")
        conn.execute(f"INSERT INTO addresses VALUES (1, 'Main Street 5'), (2, '{MARKER}')")
    cfg, source, hide = backed_up(tmp_path, pg_url)
    outputs = []
    for json_out in ([], ["--json", "--log-format", "json"]):
        target = pg_url_factory()  # a fresh one each time: the failed restore leaves what it loaded
        with psycopg_connect(target) as conn:
            conn.execute(f"ALTER DATABASE \"{target.rsplit('/', 1)[1]}\" SET crm.refuse = 'on'")
        to = target.replace(f":{hide['TEST_DB_PASSWORD']}@", ":${TEST_DB_PASSWORD}@")
        r = crmops(cfg, *json_out, "restore", "latest", "--to", to, env=hide)
        assert r.returncode == 14, r.stderr
        assert "addresses" in r.stderr and "check constraint" in r.stderr, r.stderr  # the cause is still named
        outputs += [r.stdout, r.stderr]
    outputs += [p.read_text(errors="replace") for p in (tmp_path / "state").rglob("*") if p.is_file()]
    assert not [o for o in outputs if MARKER in o], [o for o in outputs if MARKER in o][0][:2000]


def _sql(url: str, *statements: str) -> None:
    """Statements on url as its owner (MariaDB: one at a time, a trigger's body included)."""
    import sqlalchemy as sa

    from crmops.engines.connect import connect_engine

    engine = connect_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement.replace("%", "%%"))  # both drivers format with %
    finally:
        engine.dispose()
    del sa


@pytest.mark.parametrize("engine", ["postgresql", "mariadb"])
def test_what_a_trigger_writes_of_a_row_is_withheld(tmp_path: Path, engine: str, request: Any) -> None:
    """Item 4, trigger text: `RAISE EXCEPTION 'bad %', NEW.name` and `SIGNAL ... MESSAGE_TEXT = CONCAT('bad ',
    NEW.name)` went through whole. A marker value is refused by a trigger in an undo and a migration (and, on
    PostgreSQL, by a CHECK's function in a restore): the cause is named (the function, the table), the marker is
    in no output, log, journal or --json document."""
    import json

    from sqlalchemy.engine import make_url

    from crmops.democrm.load import create

    url = request.getfixturevalue("pg_url" if engine == "postgresql" else "mysql_url")
    create(url, size="small", version="1.0")
    pg = engine == "postgresql"
    now = "now()" if pg else "NOW()"
    _sql(url, f"INSERT INTO accounts (id, owner_id, name, created_at) VALUES (90001, 1, '{MARKER}', {now})",
         f"INSERT INTO contacts (id, account_id, first_name, last_name, email, created_at) VALUES "
         f"(90001, 1, 'A', 'B', ' {MARKER}@Example.ORG', {now})")  # d2_0002 trims it: its UPDATE meets it
    if pg:  # a CHECK whose function raises with the value, switched on in a restore's target only
        _sql(url, "CREATE FUNCTION public.street_ok(t text) RETURNS boolean LANGUAGE plpgsql STABLE AS $$ BEGIN "
                  "IF current_setting('crm.refuse', true) = 'on' AND t LIKE 'MARKER%' THEN "
                  "RAISE EXCEPTION 'bad street %', t; END IF; RETURN true; END $$",
             "CREATE TABLE addresses (id int PRIMARY KEY, street text CHECK (public.street_ok(street)))",
             f"INSERT INTO addresses VALUES (1, 'Main Street 5'), (2, '{MARKER}')")
    password = make_url(url).password or ""
    hide = {"TEST_DB_PASSWORD": password}
    cfg = config(tmp_path, f"file://{tmp_path / 'repo'}", db_url=url.replace(f":{password}@", ":${TEST_DB_PASSWORD}@"))
    assert crmops(cfg, "repo", "init", env=hide).returncode == 0
    assert crmops(cfg, "backup", env=hide).returncode == 0
    # the live database refuses the marker from now on
    _sql(url, "DELETE FROM accounts WHERE id = 90001")
    if pg:
        _sql(url, "CREATE FUNCTION refuse_name() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                  "IF NEW.name LIKE 'MARKER%' THEN RAISE EXCEPTION 'bad name %', NEW.name; END IF; RETURN NEW; END $$",
             "CREATE FUNCTION refuse_email() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
             "IF OLD.email LIKE '%MARKER%' THEN RAISE EXCEPTION 'bad email % -> %', OLD.email, NEW.email; END IF; "
             "RETURN NEW; END $$",
             "CREATE TRIGGER accounts_refuse BEFORE INSERT ON accounts FOR EACH ROW EXECUTE FUNCTION refuse_name()",
             "CREATE TRIGGER contacts_refuse BEFORE UPDATE ON contacts FOR EACH ROW EXECUTE FUNCTION refuse_email()")
    else:  # SIGNAL's MESSAGE_TEXT takes a variable, built from the row
        _sql(url, "CREATE TRIGGER accounts_refuse BEFORE INSERT ON accounts FOR EACH ROW BEGIN "
                  "DECLARE msg VARCHAR(255); IF NEW.name LIKE 'MARKER%' THEN SET msg = CONCAT('bad name ', NEW.name); "
                  "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = msg; END IF; END",
             "CREATE TRIGGER contacts_refuse BEFORE UPDATE ON contacts FOR EACH ROW BEGIN "
             "DECLARE msg VARCHAR(255); IF OLD.email LIKE '%MARKER%' THEN "
             "SET msg = CONCAT('bad email ', OLD.email, ' -> ', NEW.email); "
             "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = msg; END IF; END")
    outputs: list[str] = []
    for json_out in ([], ["--json", "--log-format", "json"]):
        r = crmops(cfg, *json_out, "undo", "--table", "accounts", "--where", "id = 90001", "--apply", env=hide)
        assert r.returncode == 14 and "writing the undo failed, nothing was written" in r.stderr, r.stderr
        assert ("refuse_name() line" if pg else "a trigger's SIGNAL raised an error") in r.stderr, r.stderr
        outputs += [r.stdout, r.stderr]
        r = crmops(cfg, *json_out, "migrate", "up", env=hide)
        assert r.returncode == 40 and "d2_0002" in r.stderr, r.stderr
        assert "raised an error (text withheld: it may quote row values)" in r.stderr, r.stderr
        outputs += [r.stdout, r.stderr]
        if json_out:
            assert json.loads(r.stdout)["exit_code"] == 40
        if pg:
            target = request.getfixturevalue("pg_url_factory")()
            _sql(target, f"ALTER DATABASE \"{make_url(target).database}\" SET crm.refuse = 'on'")
            to = target.replace(f":{password}@", ":${TEST_DB_PASSWORD}@")
            r = crmops(cfg, *json_out, "restore", "latest", "--to", to, env=hide)
            assert r.returncode == 14 and "addresses" in r.stderr and "street_ok(text) line" in r.stderr, r.stderr
            outputs += [r.stdout, r.stderr]
    outputs += [p.read_text(errors="replace") for p in (tmp_path / "state").rglob("*") if p.is_file()]
    leaked = [o for o in outputs if MARKER.lower() in o.lower()]
    assert not leaked, leaked[0][:3000]


def test_what_mariadb_and_its_client_echo_of_a_row_is_withheld() -> None:
    """The lines the MariaDB client and server print (issue 24 item 4: ERROR 2013 with the statement it sent)."""
    from crmops.errors import DatabaseError, without_values

    said = {
        f"ERROR 2013 (HY000) at line 901: Lost connection to server during query INSERT INTO `addresses` "
        f"VALUES (1,'Main St'),(2,'{MARKER}')": "at line 901: Lost connection to server during query INSERT INTO "
                                                "`addresses` … (values withheld)",
        f"ERROR 1062 (23000) at line 12: Duplicate entry '{MARKER}' for key 'uq_street'":
            "Duplicate entry '…' for key 'uq_street'",
        f"ERROR 1366 (22007): Incorrect integer value: '{MARKER}' for column `crm`.`a`.`id` at row 3":
            "Incorrect integer value: '…' for column `crm`.`a`.`id` at row 3",
        f"UPDATE `addresses` SET street = '{MARKER}' WHERE id = 2": "UPDATE `addresses` SET street … (values withheld)",
        # a trigger's own text (SIGNAL ... MESSAGE_TEXT = msg; RAISE EXCEPTION 'bad %', NEW.street)
        f"ERROR 1644 (45000) at line 77: bad street {MARKER} / mariadb: exit 1":
            "ERROR 1644 (45000) at line 77: a trigger's SIGNAL (text withheld: it may quote row values) / mariadb",
        f'pg_restore: error: COPY failed for table "addresses": ERROR:  bad street {MARKER} / CONTEXT:  PL/pgSQL '
        f'function street_ok(text) line 1 at RAISE / COPY addresses, line 2: "2\t{MARKER}"':
            'ERROR:  a trigger or function raised an error (text withheld: it may quote row values) / CONTEXT:  '
            'PL/pgSQL function street_ok(text) line 1 at RAISE / COPY addresses, line 2',
    }
    for line, kept in said.items():
        assert MARKER not in without_values(line) and kept in without_values(line), without_values(line)
        assert MARKER not in DatabaseError(f"mariadb failed (exit 1): {line}").line()


def test_upgrade_check_reports_every_mistake_in_one_run(tmp_path: Path) -> None:
    """Item 10: a step type, an unknown key and an undefined variable took three runs to find."""
    import json

    shipped = (Path(__file__).resolve().parent.parent / "playbooks" / "democrm-1-to-2.yaml").read_text()
    text = (shipped.replace("{type: preflight, check: db_reachable}", "{type: prefligth, check: db_reachable}")
            .replace("restore_factor: 2}", "restore_factr: 2}")
            .replace('url: "{{ vars.app_url }}/health"', 'url: "{{ vars.app_adress }}/health"'))
    assert text.count("prefligth") == text.count("restore_factr") == text.count("app_adress") == 1
    pb = tmp_path / "bad.yaml"
    pb.write_text(text)
    r = crmops(tmp_path / "none.yaml", "--json", "upgrade", str(pb), "--check")
    assert r.returncode == 52 and "(+2 more)" in one_line_error(r), r.stderr
    mistakes = json.loads(r.stdout)["result"]["mistakes"]
    assert len(mistakes) == 3, mistakes
    for word in ("unknown step type 'prefligth'", "restore_factr", "{{ vars.app_adress }}: no such variable"):
        assert [m for m in mistakes if word in m and "bad.yaml line " in m], (word, mistakes)


def test_ctrl_c_says_the_state_in_one_line(tmp_path: Path, pg_url: str) -> None:
    """Item 8: a stopped backup said only `crmops: error: stopped`; a stopped `restore --tables --force` said the
    tables hold "either the restored rows or their own". The stop comes from the dump tool, as a Ctrl-C would."""
    import json

    from crmops.democrm.load import create
    from crmops.engines.postgres import PostgresEngine
    from tests.matrix.digest import native_digest

    create(pg_url, size="small", version="1.0")
    cfg, source, hide = backed_up(tmp_path, pg_url)
    snapshots = json.loads(crmops(cfg, "--json", "snapshots", "--all", env=hide).stdout)
    real = Path(PostgresEngine(pg_url)._tool("pg_dump").path)
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "pg_restore").symlink_to(real.with_name("pg_restore"))
    stop = tools / "pg_dump"
    stop.write_text(f'#!/bin/sh\n[ "$1" = "--version" ] && exec {real} --version\nkill -INT $PPID; sleep 2\n'
                    f'exec {real} "$@"\n')
    stop.chmod(0o755)
    r = crmops(cfg, "backup", env={**hide, "CRMOPS_TOOLS_PATH": str(tools)})
    assert r.returncode == 130
    assert one_line_error(r) == ("crmops: error: backup stopped; nothing was stored: no snapshot was written and the "
                                 "repository's snapshots are unchanged (the chunks uploaded so far are reused by the "
                                 "next backup)\n"), r.stderr
    assert json.loads(crmops(cfg, "--json", "snapshots", "--all", env=hide).stdout) == snapshots

    # restore --tables --force: stopped while pg_restore writes the rows, before the commit
    stop.unlink()
    stop.symlink_to(real)
    (tools / "pg_restore").unlink()
    (tools / "pg_restore").write_text(f'#!/bin/sh\ncase "$*" in *--use-list=*) kill -INT $PPID; sleep 2;; esac\n'
                                      f'exec {real.with_name("pg_restore")} "$@"\n')
    (tools / "pg_restore").chmod(0o755)
    with psycopg_connect(pg_url) as conn:
        conn.execute("UPDATE contacts SET notes = 'edited after the backup' WHERE id = 1")
    before = native_digest(pg_url)
    r = crmops(cfg, "restore", "latest", "--to", source, "--tables", "contacts", "--force",
               env={**hide, "CRMOPS_TOOLS_PATH": str(tools)})
    assert r.returncode == 130
    *warned, line = r.stderr.strip().splitlines()  # the warning that --to is the configured database comes first
    assert len(warned) == 1 and warned[0].startswith("crmops: warning: --to is the configured database")
    assert line.startswith("crmops: error: restore stopped before the commit; public.contacts: left as they were "
                           "(rolled back)"), r.stderr
    assert native_digest(pg_url) == before


def test_usage_errors_are_one_line_with_exit_2(tmp_path: Path) -> None:
    """Item 12: usage errors printed Click's three-line block instead of the promised one `crmops: error:` line."""
    cases = {("restore", "latest"): "Missing option '--to' (see `crmops restore --help`)",
             ("nosuch",): "No such command 'nosuch' (see `crmops --help`)",
             ("check", "--read-data-subset", "150%"): "Invalid value for '--read-data-subset'"}
    for args, said in cases.items():
        r = crmops(tmp_path / "none.yaml", *args)
        assert r.returncode == 2 and said in one_line_error(r), (args, r.stderr)


def test_smaller_surprises_of_restore_check_and_config_show(tmp_path: Path) -> None:
    """Item 12: a one-character prefix picked what replaced a database; the configured database got no warning;
    `--as` read as if the live tables were replaced; `1 snapshots`; `passphrase: null` with CRMOPS_PASSPHRASE set;
    a read-only repository folder was "endpoint does not answer" (exit 20)."""
    from crmops.democrm.load import create
    from crmops.errors import FolderNotWritable

    url = f"sqlite:///{tmp_path / 'crm.db'}"
    create(url, size="small", version="1.0")
    cfg = config(tmp_path, f"file://{tmp_path / 'repo'}", db_url=url)
    assert crmops(cfg, "repo", "init").returncode == 0
    assert crmops(cfg, "backup").returncode == 0
    snap = json_of(crmops(cfg, "--json", "snapshots"))[0]["id"]
    assert crmops(cfg, "check").stdout.startswith("1 snapshot, ")
    before = (tmp_path / "crm.db").read_bytes()
    r = crmops(cfg, "restore", snap[:1], "--to", url, "--force")
    assert r.returncode == 3 and f"at least 6 characters of its id (it matched {snap[:10]})" in one_line_error(r)
    assert (tmp_path / "crm.db").read_bytes() == before and len(json_of(crmops(cfg, "--json", "snapshots"))) == 1
    r = crmops(cfg, "restore", snap[:8], "--to", url, "--tables", "contacts", "--force")
    assert r.returncode == 0 and "crmops: warning: --to is the configured database (database.url): its tables " \
                                 "contacts are replaced" in r.stderr, r.stderr
    beside = crmops(cfg, "restore", snap[:8], "--to", url, "--tables", "contacts", "--as", "old_")
    assert beside.returncode == 0, beside.stderr
    said = " ".join(beside.stdout.split())
    assert "beside the live tables, as old_contacts" in said and "the live tables were not changed" in said, said
    shown = crmops(cfg, "config", "show", env={"CRMOPS_PASSPHRASE": "from the environment"}).stdout
    assert "passphrase: null" not in shown
    page = crmops(cfg, "report", "--html", str(tmp_path / "status.html"))  # one line, not the whole status
    assert page.returncode == 0 and page.stdout.count("\n") == 1, page.stdout
    assert page.stdout.startswith(f"status page written to {tmp_path / 'status.html'}: overall "), page.stdout
    (tmp_path / "other").mkdir()
    nofile = config(tmp_path / "other", f"file://{tmp_path / 'other' / 'repo'}")
    plain = yaml.safe_load(nofile.read_text())
    del plain["encryption"]
    nofile.write_text(yaml.safe_dump(plain))
    shown = crmops(nofile, "config", "show", env={"CRMOPS_PASSPHRASE": "from the environment"}).stdout
    assert "(from $CRMOPS_PASSPHRASE)" in shown and "from the environment" not in shown, shown

    prefix = _read_only_mount(tmp_path / "repo")
    if prefix is None:
        pytest.skip("no private mount namespace here for a read-only repository")
    full = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    r = subprocess.run([*prefix, sys.executable, "-m", "crmops", "--config", str(cfg), "backup"], capture_output=True,
                       text=True, env={**full, "TEST_PASSPHRASE": PASSPHRASE}, timeout=120)
    assert r.returncode == FolderNotWritable.exit_code == 4 and "Read-only file system" in one_line_error(r), r.stderr


def json_of(r: subprocess.CompletedProcess[str]) -> Any:
    import json

    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_tables_keep_identifiers_whole_and_group_repeated_reasons() -> None:
    """Item 11: `sandbox list` split container names over two lines; `upgrade --dry-run` repeated one reason 16
    times."""
    from rich.console import Console

    from crmops.cli.context import table
    from crmops.cli.upgrade import _plan_lines

    t = table("name", "kind", "status", "image", "created (UTC)", "owner", whole=("name",))
    name = "crmops-sandbox-6a7c767173"
    t.add_row(name, "verify", "running", "crmops-pg-upgrade:13-17", "2026-12-07 16:20:01",
              "pid 123456 on host-a (gone)")
    console = Console(width=80, record=True)
    console.print(t)
    text = console.export_text()
    assert name in text and max(len(line) for line in text.splitlines()) <= 80, text

    why = "touches production by nature (shell commands run on the host): not rehearsed in the sandbox stack"
    plan = [{"stage": "switch", "phase": "steps", "step": f"s{i}", "type": "shell", "seconds": 1.0, "measured": False,
             "ok": None, "error": None, "mode": "not rehearsed", "reason": why, "params": {}} for i in range(16)]
    console = Console(width=80, record=True)
    _plan_lines(console, {"plan": plan})
    text = " ".join(console.export_text().split())
    assert text.count("touches production by nature") == 1 and text.count("(reason a)") == 16, text
