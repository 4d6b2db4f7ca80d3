"""Database engine upgrades (PostgreSQL 13 -> 17, MariaDB 10.5 -> 11.8) as a playbook step.

Method `pg_upgrade` (PostgreSQL only) lives in pg_upgrade.py; step.py chooses between them.

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
from crmops.engine_upgrade.compare import analyze, compare_across, run_smoke
from crmops.engines import Engine, open_engine
from crmops.errors import ConfigError

SAY = Callable[[str], None]


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
    analyze(target)
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
        analyze(target)
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
