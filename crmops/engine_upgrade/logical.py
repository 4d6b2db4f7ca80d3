"""Database engine upgrades (PostgreSQL 13 -> 17, MariaDB 10.5 -> 11.8) as a playbook step.

Method `pg_upgrade` (PostgreSQL only) lives in crmops.services.pg_upgrade.

Method `logical`: dump from the old server, restore into an empty database on a new
server of the target version, prove the rows arrived (a cross-version fingerprint
comparison), run the smoke SQL there. The old server and its data are only read, so
until the application's connection is switched (the playbook's next steps) rollback is
"switch back": nothing on the old server needs undoing.

The dry run does the same from the rehearsal's copy of the latest verified snapshot into
a throwaway sandbox of the TARGET version, restoring past errors so that every object
the new version rejects is named, and measures the copy for the downtime forecast.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crmops.config import Config
from crmops.dburl import parse, safe
from crmops.engines import Engine, Fingerprint, open_engine
from crmops.engines.canonical import CANONICAL, table_sums
from crmops.errors import ConfigError
from crmops.playbooks.steps import StepContext, StepResult, expand_env

SAY = Callable[[str], None]


def executor(config: Config) -> Callable[[Any, dict[str, Any], StepContext], StepResult]:
    """The engine_upgrade step's executor: the real copy, or (dry run) the rehearsal in a target sandbox."""

    def run(step: Any, params: dict[str, Any], ctx: StepContext) -> StepResult:
        if params.get("method") == "pg_upgrade":
            from crmops.services.pg_upgrade import run_step

            return run_step(config, step, params, ctx, _result)
        if ctx.dry_run:
            report = rehearse(config, ctx.url, str(params["target_version"]), smoke=params.get("smoke_sql") or [],
                              say=ctx.say)
        else:
            report = upgrade_logical(config, ctx.url, expand_env(str(params["target_url"])),
                                     str(params["target_version"]), smoke=params.get("smoke_sql") or [], say=ctx.say)
        return _result(report)

    return run


def _result(report: dict[str, Any]) -> StepResult:
    outputs = {k: report.get(k) for k in ("method", "mode", "seconds", "dump_seconds", "restore_seconds", "image",
                                          "check_seconds", "upgrade_seconds", "load_seconds",
                                          "source_version", "target_version", "tables", "differences",
                                          "incompatibilities", "smoke", "tool") if k in report}
    problems = [f"{i['object']}: {i['error']}" for i in report["incompatibilities"]]
    problems += [_difference_line(d) for d in report["differences"]]
    problems += [f"smoke SQL {s['sql']!r}: {s['error']}" for s in report["smoke"] if not s["ok"]]
    summary = (f"{report['source_version']} -> {report['target_version']} ({report['method']}): "
               f"{report['tables']} tables in {report['seconds']:.1f}s")
    if problems:
        return StepResult(False, outputs, summary, f"{len(problems)} problem(s): " + "; ".join(problems[:5]))
    return StepResult(True, outputs, summary + ", every table's rows match, smoke SQL holds")


def _difference_line(d: dict[str, Any]) -> str:
    cols = f" (columns: {', '.join(d['columns'])})" if d.get("columns") else ""
    return f"{d['kind']} {d['name']}: {d['reason']}{cols}"


# -- the real run --------------------------------------------------------------------

def upgrade_logical(config: Config, source_url: str, target_url: str, target_version: str, *,
                    smoke: list[dict[str, Any]], say: SAY = lambda s: None) -> dict[str, Any]:
    """Copy the CRM's database from the old server into the new one; the old one is only read."""
    source = open_engine(source_url, config.database)
    target = open_engine(target_url, config.database)
    src_version, dst_version = _check_pair(source, target, target_version)
    if not target.is_empty():
        raise ConfigError(f"the new server's database {safe(target_url)} is not empty",
                          hint="the logical engine upgrade restores into an empty database; create a new one")
    say(f"copying {safe(source_url)} ({src_version}) into {safe(target_url)} ({dst_version})")
    t0 = time.monotonic()
    with source.dump() as dump:
        target.restore(dump.chunks(), format=dump.format)
        expected = dump.fingerprint
        tool = dump.tool
    seconds = time.monotonic() - t0
    _analyze(target)
    return {"method": "logical", "source_version": src_version, "target_version": dst_version,
            "seconds": round(seconds, 2), "tables": len(expected.tables), "tool": tool,
            "differences": compare_across(expected, source, target), "incompatibilities": [],
            "smoke": run_smoke(target_url, smoke, config)}


def _check_pair(source: Engine, target: Engine, target_version: str) -> tuple[str, str]:
    if source.name != target.name:
        raise ConfigError(f"the new server is {target.name}, the old one {source.name}: an engine upgrade "
                          "stays within one engine")
    src, dst = source.server_version(), target.server_version()
    if not _same_release(dst, target_version):
        raise ConfigError(f"the new server runs {dst}, the playbook's target_version is {target_version}",
                          hint="point target_url at a server of the target version")
    if _release(dst) <= _release(src):
        raise ConfigError(f"the new server ({dst}) is not newer than the old one ({src})")
    return src, dst


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version.split("-")[0])[:3])


def _same_release(version: str, want: str) -> bool:
    w = _release(want)
    return _release(version)[:len(w)] == w


def _analyze(target: Engine) -> None:
    """A logical copy has no planner statistics: gather them, as an operator would before reopening."""
    if target.name == "postgresql":
        with target.connect() as conn:  # type: ignore[attr-defined]
            conn.execute("ANALYZE")


# -- the cross-version comparison ---------------------------------------------------

def compare_across(expected: Fingerprint, source: Engine | None, target: Engine) -> list[dict[str, Any]]:
    """Every table's rows against the old server's fingerprint, computed the same way on the new version.

    The new server computes the snapshot's own method. A canonical fingerprint writes every
    value in a form no version or server setting changes, so it compares as it is; the older
    methods hash text forms that settings (time zone, date style, locale) may change, so a
    table they find different is compared canonically on both servers and reported only if
    its values really differ. Each reported table names the columns that differ.
    """
    got = target.fingerprint(method=expected.method)
    out: list[dict[str, Any]] = []
    for d in expected.compare(got):
        item = {"kind": d.kind, "name": d.name, "expected": d.expected, "found": d.found, "reason": d.reason}
        if d.kind == "table" and d.reason == "content checksum differs" and source is not None:
            old, new = table_sums(source, d.name), table_sums(target, d.name)
            if expected.method != CANONICAL and old == new:
                continue  # equal values whose text form differs between the servers
            item["columns"] = _differing(old[2], new[2])
        out.append(item)
    return out


def differing_columns(source: Engine, target: Engine, table: str) -> list[str]:
    """The columns of a table whose values differ between the two servers, compared canonically."""
    return _differing(column_checksums(source, table), column_checksums(target, table))


def _differing(a: dict[str, int], b: dict[str, int]) -> list[str]:
    return sorted(c for c in set(a) | set(b) if a.get(c) != b.get(c))


def column_checksums(engine: Engine, table: str) -> dict[str, int]:
    """Per column: the order-independent sum of each value's canonical hash (same on every version)."""
    return table_sums(engine, table)[2]


# -- smoke SQL -------------------------------------------------------------------------

def run_smoke(url: str, smoke: list[dict[str, Any]], config: Config) -> list[dict[str, Any]]:
    """The step's smoke SQL and the configured verify assertions, on the upgraded copy."""
    from crmops.engines.connect import connect_engine

    checks = [{"sql": str(s["sql"]), "expect": s.get("expect")} for s in smoke]
    checks += [{"sql": a.sql, "expect": a.expect} for a in getattr(config.verify, "assertions", []) or []]
    out: list[dict[str, Any]] = []
    engine = connect_engine(url)
    try:
        import sqlalchemy as sa

        for c in checks:
            try:
                with engine.begin() as conn:
                    result = conn.execute(sa.text(c["sql"]))
                    first = result.first() if result.returns_rows else None
                value = None if first is None else first[0]
                ok = c["expect"] is None or str(value) == str(c["expect"])
                out.append({"sql": c["sql"], "ok": ok, "value": None if value is None else str(value),
                            "error": None if ok else f"got {value!r}, expected {c['expect']!r}"})
            except sa.exc.DBAPIError as e:
                first_line = (str(e.orig).strip().splitlines() or [type(e.orig).__name__])[0]
                out.append({"sql": c["sql"], "ok": False, "value": None, "error": first_line})
    finally:
        engine.dispose()
    return out


# -- the dry run -----------------------------------------------------------------------

def rehearse(config: Config, source_url: str, target_version: str, *, smoke: list[dict[str, Any]],
             say: SAY = lambda s: None) -> dict[str, Any]:
    """The copy into a throwaway sandbox of the target version, reporting what the new version rejects."""
    from crmops.sandbox import open_sandbox

    source = open_engine(source_url, config.database)
    src_version = source.server_version()
    sandbox_version = f"{target_version}-MariaDB" if "mariadb" in src_version.lower() else target_version
    if _release(target_version) <= _release(src_version):
        raise ConfigError(f"target_version {target_version} is not newer than the server ({src_version})")
    with open_sandbox(config.verify, source.name, sandbox_version, database=source.database_name()) as box:
        say(f"rehearsing the engine upgrade in {box.image} ({box.name})")
        target = open_engine(box.url, config.database)
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="crmops-engine-upgrade-") as tmp:
            path = Path(tmp) / "dump"
            with source.dump() as dump, open(path, "wb") as f:
                for piece in dump.chunks():
                    f.write(piece)
                expected = dump.fingerprint
                tool = dump.tool
                fmt = dump.format
            dump_s = time.monotonic() - t0
            incompatibilities = restore_past_errors(target, path, fmt)
        seconds = time.monotonic() - t0
        _analyze(target)
        report = {"method": "logical", "source_version": src_version, "target_version": target.server_version(),
                  "image": box.image, "seconds": round(seconds, 2), "dump_seconds": round(dump_s, 2),
                  "restore_seconds": round(seconds - dump_s, 2), "tables": len(expected.tables), "tool": tool,
                  "incompatibilities": incompatibilities,
                  "differences": compare_across(expected, source, target), "smoke": run_smoke(box.url, smoke, config)}
    return report


_PG_ENTRY = re.compile(r"from TOC entry \d+; \d+ \d+ (?P<what>.+)$")
_PG_ERROR = re.compile(r"error: (?:could not execute query: )?(?P<msg>.+)$")
_MY_ERROR = re.compile(r"^ERROR (?P<code>\d+) \(\w+\) at line (?P<line>\d+): (?P<msg>.*)$")
_MY_OBJECT = re.compile(rb"^-- (?:Table structure for table|Dumping data for table|Temporary table structure for "
                        rb"view|Final view structure for view|Dumping routines for database|Dumping events for "
                        rb"database) (?P<name>.+)$")


_MY_KINDS = {"Table structure": "table", "Dumping data": "rows of table", "Temporary table structure": "view",
             "Final view structure": "view", "Dumping routines": "routines of database",
             "Dumping events": "events of database"}


def restore_past_errors(target: Engine, path: Path, fmt: str) -> list[dict[str, str]]:
    """Restore a spooled dump without stopping at errors; each error with the object it belongs to."""
    if fmt == "pg-custom":
        tool = target._tool("pg_restore")  # type: ignore[attr-defined]
        argv = tool.argv(["--verbose", "--no-password", f"--dbname={target.database_name()}", str(path)],
                         mounts=[str(path.parent)])
        env = target._env()  # type: ignore[attr-defined]
    elif fmt == "mysql-sql":
        tool = target._tool("client")  # type: ignore[attr-defined]
        options = target._option_file()  # type: ignore[attr-defined]
        argv = tool.argv([f"--defaults-extra-file={options}", "--default-character-set=utf8mb4", "--binary-mode",
                          "--force", target.database_name()], stdin=True, mounts=[options])
        env = {}
    else:
        raise ConfigError(f"a {fmt} dump has no engine upgrade")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "MYSQL"))}
    full_env.update(env)
    try:
        with open(path, "rb") as stdin:
            r = subprocess.run(argv, stdin=stdin if fmt == "mysql-sql" else subprocess.DEVNULL,
                               capture_output=True, env=full_env, timeout=6 * 3600)
    finally:
        if fmt == "mysql-sql":
            os.unlink(options)
    text = r.stderr.decode("utf-8", "replace")
    secrets = [parse(target_url_of(target)).password or ""]
    found = _pg_errors(text) if fmt == "pg-custom" else _mysql_errors(text, path)
    for f in found:
        for s in secrets:
            if s:
                f["error"] = f["error"].replace(s, "********")
    merged: dict[str, dict[str, str]] = {}
    for f in found:  # one entry per object, its errors in order
        if f["object"] in merged and f["error"] not in merged[f["object"]]["error"]:
            merged[f["object"]]["error"] += "; " + f["error"]
        merged.setdefault(f["object"], dict(f))
    found = list(merged.values())
    if r.returncode != 0 and not found:
        found.append({"object": "(restore)", "error": text.strip().splitlines()[-1] if text.strip() else
                      f"exit {r.returncode}"})
    return found


def target_url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)  # type: ignore[attr-defined]


def _pg_errors(text: str) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    current = "(unknown object)"
    for line in text.splitlines():
        m = _PG_ENTRY.search(line)
        if m:
            current = m.group("what").rsplit(" ", 1)[0]  # drop the owner
            continue
        m = _PG_ERROR.search(line)
        if m and "errors ignored on restore" not in line:
            out.append({"object": current, "error": m.group("msg").strip()})
    return out


def _mysql_errors(text: str, path: Path) -> list[dict[str, str]]:
    wanted: dict[int, str] = {}
    for line in text.splitlines():
        m = _MY_ERROR.match(line.strip())
        if m:
            wanted[int(m.group("line"))] = f"ERROR {m.group('code')}: {m.group('msg')}"
    if not wanted:
        return []
    objects: dict[int, str] = {}
    current = "(header)"
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            m = _MY_OBJECT.match(raw.rstrip(b"\n"))
            if m:
                head = raw.split(b" for ")[0][3:].decode(errors="replace")
                current = f"{_MY_KINDS.get(head, head.lower())} {m.group('name').decode(errors='replace')}"
            if number in wanted:
                objects[number] = current
            if number >= max(wanted):
                break
    return [{"object": objects.get(n, "(unknown object)"), "error": msg} for n, msg in sorted(wanted.items())]
