"""PostgreSQL major upgrades with pg_upgrade: the engine_upgrade step's second method.

pg_upgrade runs where both data directories are, as their owner, with the old server
stopped; crmops reaches that place through an argv prefix (`sudo -u postgres`, `docker
exec -u postgres NAME`). The sequence: validate everything, initdb the new cluster with
the old one's settings, `pg_upgrade --check` against the live old server (findings abort
with the old server untouched), stop the old server, pg_upgrade (--link, --clone or
--copy), start the new one, then compare every table's rows and run the smoke SQL there.

Undoing (on a failure inside the step, or the engine stage's rollback step) stops the new
server, removes the new cluster crmops created and starts the old server. In link mode
pg_upgrade renames the old global/pg_control to pg_control.old before it links the
relation files; as long as the new server has never run on those files, putting the name
back gives the old cluster as it was. Once it has run, the files are shared and written:
undoing is refused, and the way back is the pre-upgrade snapshot.

Kept whole (about 430 lines): one upgrade sequence and the undo of each of its stages,
which must be read together.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from crmops.config import Config
from crmops.dburl import safe
from crmops.engines import Fingerprint, open_engine
from crmops.errors import ConfigError, CrmopsError, UpgradeFailed, UpgradeRefused
from crmops.playbooks.steps import StepContext, StepFailed

#: written into the new data directory right after initdb: this cluster is crmops's to remove
OWNER_MARK = "crmops_pg_upgrade.owner"
#: the new cluster's control state right after pg_upgrade: unchanged means the new server never ran
STATE_MARK = "crmops_pg_upgrade.state"
_CONTROL_KEYS = ("Database cluster state", "Latest checkpoint location")
#: held by an upgrade while it runs: an undo (the rollback after a timeout or Ctrl-C, which the
#: runner starts while the step's thread may still be inside pg_upgrade) waits for it to end
_BUSY = threading.RLock()


@dataclass
class Layout:
    """Where the two clusters are and how to reach and drive them (the step's parameters)."""

    old_datadir: str
    new_datadir: str
    old_bindir: str
    new_bindir: str
    stop_old: list[str]
    start_old: list[str]
    start_new: list[str]
    exec_prefix: list[str] = field(default_factory=list)
    stop_new: list[str] | None = None
    mode: str = "link"
    socket_dir: str = "/tmp"
    copy_config: list[str] = field(default_factory=lambda: ["pg_hba.conf", "pg_ident.conf"])
    #: seconds for one command (stop, start, initdb); pg_upgrade itself gets the step's timeout
    command_timeout: float = 300

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Layout:
        missing = [k for k in ("old_datadir", "new_datadir", "old_bindir", "new_bindir", "stop_old", "start_old",
                               "start_new") if not params.get(k)]
        if missing:
            raise ConfigError(f"engine_upgrade method pg_upgrade needs {', '.join(missing)}")
        path = {k: str(params[k]).rstrip("/") for k in ("old_datadir", "new_datadir", "old_bindir", "new_bindir")}
        return cls(old_datadir=path["old_datadir"], new_datadir=path["new_datadir"], old_bindir=path["old_bindir"],
                   new_bindir=path["new_bindir"],
                   stop_old=_argv(params["stop_old"]), start_old=_argv(params["start_old"]),
                   start_new=_argv(params["start_new"]), exec_prefix=_argv(params.get("exec_prefix") or []),
                   stop_new=_argv(params["stop_new"]) if params.get("stop_new") else None,
                   mode=str(params.get("mode") or "link"), socket_dir=str(params.get("socket_dir") or "/tmp"),
                   copy_config=list(params.get("copy_config", ["pg_hba.conf", "pg_ident.conf"])))

    # -- running things ----------------------------------------------------------------

    def here(self, argv: list[str], *, timeout: float | None = None, check: bool = True,
             what: str = "") -> subprocess.CompletedProcess[str]:
        """Run argv where the data directories are (through exec_prefix)."""
        return _run(self.exec_prefix + argv, timeout=timeout or self.command_timeout, check=check,
                    what=what or argv[0].rsplit("/", 1)[-1])

    def command(self, argv: list[str], what: str) -> None:
        """A playbook-given command (stop/start a server), run as given."""
        _run(argv, timeout=self.command_timeout, check=True, what=what)

    def exists(self, path: str) -> bool:
        return self.here(["test", "-e", path], check=False).returncode == 0

    def read(self, path: str) -> str:
        return self.here(["cat", path], what=f"reading {path}").stdout

    def control(self, datadir: str, bindir: str) -> dict[str, str]:
        out = self.here([f"{bindir}/pg_controldata", "-D", datadir], what="pg_controldata").stdout
        pairs = (line.split(":", 1) for line in out.splitlines() if ":" in line)
        return {k.strip(): v.strip() for k, v in pairs if k.strip() in _CONTROL_KEYS}

    def running(self, datadir: str, bindir: str) -> bool:
        return self.here([f"{bindir}/pg_ctl", "status", "-D", datadir], check=False).returncode == 0

    def pg_upgrade(self, extra: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """pg_upgrade from socket_dir (it writes its scripts into the working directory)."""
        argv = ["sh", "-c", 'cd "$0" && exec "$@"', self.socket_dir, f"{self.new_bindir}/pg_upgrade",
                "-b", self.old_bindir, "-B", self.new_bindir, "-d", self.old_datadir, "-D", self.new_datadir,
                "-s", self.socket_dir, *extra]
        return self.here(argv, timeout=timeout, check=False)


def _argv(value: Any) -> list[str]:
    if isinstance(value, str):
        return shlex.split(value)
    return [str(a) for a in value]


def _run(argv: list[str], *, timeout: float, check: bool, what: str) -> subprocess.CompletedProcess[str]:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise StepFailed(f"{what}: {argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise StepFailed(f"{what}: no answer within {timeout:g}s") from None
    if check and r.returncode != 0:
        last = (r.stderr.strip() or r.stdout.strip()).splitlines()
        raise StepFailed(f"{what} failed (exit {r.returncode}): {last[-1] if last else 'no output'}")
    return r


def _major(version: str) -> str:
    m = re.search(r"(\d+)(?:\.\d+)?", version)
    return m.group(1) if m else version


# -- validation ----------------------------------------------------------------------

def validate(layout: Layout, source_url: str, target_version: str, config: Config) -> dict[str, Any]:
    """Everything checked before the first change; the old cluster's settings the new one must share."""
    if layout.mode not in ("link", "clone", "copy"):
        raise ConfigError(f"engine_upgrade mode {layout.mode!r}: use link, clone or copy")
    source = open_engine(source_url, config.database)
    if source.name != "postgresql":
        raise ConfigError("method pg_upgrade is for PostgreSQL; use method logical for MariaDB")
    src = source.server_version()
    src_major, dst_major = _major(src), _major(target_version)
    if int(dst_major) <= int(src_major):
        raise ConfigError(f"target_version {target_version} is not newer than the server ({src})")
    for bindir, want in ((layout.old_bindir, src_major), (layout.new_bindir, dst_major)):
        r = layout.here([f"{bindir}/postgres", "-V"], check=False)
        if r.returncode != 0:
            raise ConfigError(f"{bindir}/postgres does not run there: "
                              f"{(r.stderr.strip() or r.stdout.strip() or 'no output').splitlines()[-1]}")
        m = re.search(r"\(PostgreSQL\)\s+(\d+)", r.stdout)
        if not m or m.group(1) != want:
            raise ConfigError(f"{bindir} holds {r.stdout.strip()}, not PostgreSQL {want}")
    if layout.read(f"{layout.old_datadir}/PG_VERSION").strip() != src_major:
        raise ConfigError(f"{layout.old_datadir} is not the data directory of the PostgreSQL {src_major} server")
    if layout.exists(f"{layout.old_datadir}/global/pg_control.old"):
        raise UpgradeRefused(f"{layout.old_datadir}/global/pg_control.old exists: an earlier pg_upgrade --link "
                             "reached this cluster", hint="run the playbook's rollback first")
    empty = layout.here(["sh", "-c", 'test ! -e "$0" || test -z "$(ls -A "$0")"', layout.new_datadir], check=False)
    if empty.returncode != 0:
        raise UpgradeRefused(f"the new data directory {layout.new_datadir} exists and is not empty",
                             hint="pg_upgrade needs a fresh cluster there; move it aside")
    for argv in (layout.stop_old, layout.start_old, layout.start_new):
        if not argv:
            raise ConfigError("stop_old, start_old and start_new must be commands")
    with source.connect() as conn:  # type: ignore[attr-defined]
        row = conn.execute("SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
                           "WHERE datname = 'template0'").fetchone()
        user = conn.execute("SELECT rolname FROM pg_authid WHERE oid = 10").fetchone()[0]
        checksums = conn.execute("SHOW data_checksums").fetchone()[0]
    return {"source_version": src, "source_major": src_major, "target_major": dst_major, "encoding": row[0],
            "lc_collate": row[1], "lc_ctype": row[2], "install_user": user, "checksums": checksums == "on"}


# -- the upgrade -----------------------------------------------------------------------

def initdb(layout: Layout, settings: dict[str, Any]) -> None:
    """The new cluster with the old one's encoding, locale, checksums and install user (pg_upgrade needs them equal)."""
    argv = [f"{layout.new_bindir}/initdb", "-D", layout.new_datadir, "-U", settings["install_user"],
            f"--encoding={settings['encoding']}", f"--lc-collate={settings['lc_collate']}",
            f"--lc-ctype={settings['lc_ctype']}", "--auth-local=trust", "--auth-host=scram-sha-256"]
    if settings["checksums"]:
        argv.append("--data-checksums")
    layout.here(argv, what="initdb of the new cluster")
    layout.here(["sh", "-c", 'date -u > "$0"', f"{layout.new_datadir}/{OWNER_MARK}"], what="marking the new cluster")


def check(layout: Layout, timeout: float) -> tuple[list[dict[str, str]], float]:
    """pg_upgrade --check against the live old server: each finding with the objects it names."""
    t0 = time.monotonic()
    r = layout.pg_upgrade(["--check", *_mode_flag(layout.mode)], timeout)
    seconds = time.monotonic() - t0
    if r.returncode == 0:
        return [], seconds
    return findings(layout, r.stdout + "\n" + r.stderr), seconds


def _mode_flag(mode: str) -> list[str]:
    return {"link": ["--link"], "clone": ["--clone"], "copy": ["--copy"]}[mode]


_FAILED = re.compile(r"^(?P<check>Checking [^\n]*?)\s{2,}(?:failed check: .*|fatal)$")
_FILE = re.compile(r"^\s+(?P<path>/\S+\.txt)\s*$")


def findings(layout: Layout, output: str) -> list[dict[str, str]]:
    """Read pg_upgrade's failure: the failed check, its explanation, and each object its list file names."""
    lines = output.splitlines()
    check_name, message, files = "pg_upgrade --check", [], []
    for i, line in enumerate(lines):
        m = _FAILED.match(line)
        if m:
            check_name = m.group("check")
            body = []
            for nxt in lines[i + 1:]:
                if nxt.startswith(("A list of", "Failure, exiting")) or _FILE.match(nxt):
                    break
                if nxt.strip():
                    body.append(nxt.strip())
            message = body
        f = _FILE.match(line)
        if f:
            files.append(f.group("path"))
    why = " ".join(message)
    if not why:  # not one named check: pg_upgrade's own words, without its progress lines
        said = [x.strip() for x in lines if x.strip() and not re.search(r"\s(ok|skipped)$", x.strip())
                and x.strip() != "Failure, exiting" and not set(x.strip()) <= {"-"}
                and not x.startswith("Performing Consistency Checks")]
        why = " ".join(said[-3:]) or "pg_upgrade --check failed"
    if "could not clone file" in why:
        why += " (mode clone needs both data directories on one file system with reflinks, such as XFS or " \
               "Btrfs: use mode link or copy here)"
    out: list[dict[str, str]] = []
    for path in files:
        database = ""
        try:
            text = layout.read(path)
        except StepFailed:
            continue
        for raw in text.splitlines():
            if raw.startswith("In database:"):
                database = raw.split(":", 1)[1].strip()
            elif raw.strip():
                obj = raw.strip() + (f" (database {database})" if database else "")
                out.append({"object": obj, "error": f"{check_name}: {why}"})
    if not out:
        out.append({"object": "(cluster)", "error": f"{check_name}: {why}"})
    return out


def upgrade(config: Config, source_url: str, target_url: str, target_version: str, layout: Layout, *,
            smoke: list[dict[str, Any]], ctx: StepContext, timeout: float) -> dict[str, Any]:
    """The whole sequence; on any failure after the first change the old server is brought back, then it raises."""
    with _BUSY:
        return _upgrade(config, source_url, target_url, target_version, layout, smoke=smoke, ctx=ctx,
                        timeout=timeout)


def _go_on(ctx: StepContext) -> None:
    """Between phases: a cancelled step (timeout, Ctrl-C) stops here and undoes what it did."""
    if ctx.cancelled.is_set():
        raise StepFailed("cancelled")


def _upgrade(config: Config, source_url: str, target_url: str, target_version: str, layout: Layout, *,
             smoke: list[dict[str, Any]], ctx: StepContext, timeout: float) -> dict[str, Any]:
    from crmops.engine_upgrade.compare import analyze, compare_across, run_smoke

    say = ctx.say
    settings = validate(layout, source_url, target_version, config)
    expected: Fingerprint = open_engine(source_url, config.database).fingerprint()
    say(f"pg_upgrade {settings['source_version']} -> {target_version} ({layout.mode}) in {layout.old_datadir}")
    ctx.progress({"pg_upgrade": "initdb"})
    t0 = time.monotonic()
    try:
        initdb(layout, settings)
        problems, check_s = check(layout, timeout)
        if problems:
            raise _Findings(problems)
        _go_on(ctx)
        t1 = time.monotonic()
        ctx.progress({"pg_upgrade": "stopping old"})
        layout.command(layout.stop_old, "stopping the old server")
        ctx.progress({"pg_upgrade": "upgrading"})
        r = layout.pg_upgrade(_mode_flag(layout.mode), timeout)
        if r.returncode != 0:  # its logs are in the new cluster, which the undo below removes: kept first
            raise StepFailed(_failure(layout, config, ctx.run_id, r))
        _go_on(ctx)
        for name in layout.copy_config:
            src = f"{layout.old_datadir}/{name}"
            if layout.exists(src):
                layout.here(["cp", src, f"{layout.new_datadir}/{name}"], what=f"copying {name}")
        state = layout.control(layout.new_datadir, layout.new_bindir)
        layout.here(["sh", "-c", 'printf "%s" "$1" > "$0"', f"{layout.new_datadir}/{STATE_MARK}", _state_text(state)],
                    what="recording the new cluster's state")
        ctx.progress({"pg_upgrade": "starting new"})
        layout.command(layout.start_new, "starting the new server")
        target = _wait_ready(target_url, config)
        dst = target.server_version()
        if _major(dst) != _major(target_version):
            raise StepFailed(f"the server at {safe(target_url)} runs {dst}, not {target_version}")
        seconds, upgrade_s = time.monotonic() - t0, time.monotonic() - t1
        analyze(target)
        report = {"method": "pg_upgrade", "mode": layout.mode, "source_version": settings["source_version"],
                  "target_version": dst, "seconds": round(seconds, 2), "check_seconds": round(check_s, 2),
                  "upgrade_seconds": round(upgrade_s, 2), "tables": len(expected.tables), "tool": "pg_upgrade",
                  "incompatibilities": [], "differences": compare_across(expected, None, target),
                  "smoke": run_smoke(target_url, smoke, config)}
    except _Findings as f:
        undo(layout, source_url, config, say=say)
        return {"method": "pg_upgrade", "mode": layout.mode, "source_version": settings["source_version"],
                "target_version": target_version, "seconds": 0.0, "tables": len(expected.tables),
                "tool": "pg_upgrade", "incompatibilities": f.problems, "differences": [], "smoke": []}
    except BaseException as e:
        _undo_after(layout, source_url, config, say, e)
        raise
    if report["differences"] or not all(s["ok"] for s in report["smoke"]):
        _undo_after(layout, source_url, config, say, None)
    return report


class _Findings(Exception):
    def __init__(self, problems: list[dict[str, str]]) -> None:
        super().__init__("pg_upgrade --check found problems")
        self.problems = problems


def _undo_after(layout: Layout, source_url: str, config: Config, say: Any, error: BaseException | None) -> None:
    try:
        undo(layout, source_url, config, say=say)
    except CrmopsError as u:
        if error is None:
            raise
        raise StepFailed(f"{_describe(error)}; and undoing failed: {u.line()}") from None
    except StepFailed as u:
        if error is None:
            raise
        raise StepFailed(f"{_describe(error)}; and undoing failed: {u}") from None


def _describe(e: BaseException) -> str:
    return e.line() if isinstance(e, CrmopsError) else str(e) or type(e).__name__


def _failure(layout: Layout, config: Config, run_id: str, r: subprocess.CompletedProcess[str]) -> str:
    from crmops.engine_upgrade.evidence import failure_text, keep_logs

    try:
        kept = keep_logs(layout, config, run_id)
    except (OSError, StepFailed):
        kept = None
    return failure_text(r.stdout + "\n" + r.stderr, _last_words(r), r.returncode, kept, layout)


def _last_words(r: subprocess.CompletedProcess[str]) -> str:
    lines = [x.strip() for x in (r.stdout + "\n" + r.stderr).splitlines() if x.strip()]
    return " ".join(lines[-3:]) if lines else "no output"


def _state_text(state: dict[str, str]) -> str:
    return "\n".join(f"{k}: {state.get(k, '')}" for k in _CONTROL_KEYS) + "\n"


def _wait_ready(url: str, config: Config, seconds: float = 120) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        try:
            engine = open_engine(url, config.database)
            engine.server_version()
            return engine
        except CrmopsError as e:
            if time.monotonic() > deadline:
                raise StepFailed(f"the server at {safe(url)} did not answer within {seconds:g}s: {e.message}") \
                    from None
            time.sleep(0.5)


# -- undoing ---------------------------------------------------------------------------

def undo(layout: Layout, source_url: str, config: Config, *, say: Any = lambda s: None) -> str:
    """Back to the old server as it was; refuses (UpgradeFailed) where link mode makes that unsafe."""
    if not _BUSY.acquire(blocking=False):
        say("waiting for the running pg_upgrade step to end before undoing it")
        _BUSY.acquire()
    try:
        return _undo(layout, source_url, config, say)
    finally:
        _BUSY.release()


def _undo(layout: Layout, source_url: str, config: Config, say: Any) -> str:
    done: list[str] = []
    new_is_ours = layout.exists(f"{layout.new_datadir}/{OWNER_MARK}")
    renamed = f"{layout.old_datadir}/global/pg_control.old"
    linked = layout.exists(renamed)
    # decided before anything is stopped: a refusal leaves the new server serving the data
    if linked and not new_is_ours:
        raise UpgradeFailed(f"{renamed} exists but {layout.new_datadir} is not the cluster crmops created: "
                            "not touching either", hint="check both data directories by hand")
    if linked and not _new_never_ran(layout):
        raise UpgradeFailed("the new server has run on the files pg_upgrade --link shares with the old cluster: "
                            "starting the old server is unsafe; the new server is left as it is",
                            hint="keep the new server, or restore the pre-upgrade snapshot (crmops restore) into "
                                 "a PostgreSQL server")
    if new_is_ours and layout.exists(f"{layout.new_datadir}/PG_VERSION") and \
            layout.running(layout.new_datadir, layout.new_bindir):
        layout.command(layout.stop_new or layout.exec_prefix + [
            f"{layout.new_bindir}/pg_ctl", "-D", layout.new_datadir, "-m", "fast", "-w", "stop"],
            "stopping the new server")
        done.append("stopped the new server")
    if linked:
        layout.here(["mv", renamed, f"{layout.old_datadir}/global/pg_control"], what="restoring pg_control")
        done.append("restored the old global/pg_control")
    if new_is_ours:
        layout.here(["rm", "-rf", layout.new_datadir], what="removing the new cluster")
        done.append(f"removed {layout.new_datadir}")
    if not layout.running(layout.old_datadir, layout.old_bindir):
        layout.command(layout.start_old, "starting the old server")
        _wait_ready(source_url, config)
        done.append("started the old server")
    summary = ", ".join(done) if done else "nothing to undo: the old server is serving"
    say(f"pg_upgrade undone: {summary}")
    return summary


def _new_never_ran(layout: Layout) -> bool:
    """The new cluster's control state equals what pg_upgrade left (a server that ran changes it)."""
    mark = f"{layout.new_datadir}/{STATE_MARK}"
    if not layout.exists(mark):
        return True  # pg_upgrade did not finish: only its own binary-upgrade runs touched the new cluster
    now = _state_text(layout.control(layout.new_datadir, layout.new_bindir))
    return layout.read(mark) == now
