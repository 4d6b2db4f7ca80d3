"""Can the server's OS user run what archive_command names? Checked before it is written.

PostgreSQL runs archive_command as the user that owns the data directory (postgres on
Debian), not as the administrator who ran `wal setup`. A crmops installed under /root, a
configuration or env file only root may read, or a repository folder it cannot write make
every push fail, visible only in the server's log. So, when the data directory is on this
host and we may act as its owner (root, or that user itself), each path is checked as that
user: in a forked child that drops to its uid and groups and asks os.access for the file and
every folder on the way (the symlinks' targets too), then the executable is run once
(`--version`) as that user to prove its interpreter and packages load.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shlex
import stat
import subprocess
from pathlib import Path
from typing import Any


def owner_of(data_directory: str) -> pwd.struct_passwd | None:
    """The OS user owning the data directory, when it is on this host."""
    try:
        return pwd.getpwuid(os.stat(data_directory).st_uid)
    except (OSError, KeyError):
        return None


def can_act_as(user: pwd.struct_passwd) -> bool:
    return os.geteuid() in (0, user.pw_uid)


def _describe(path: Path) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        return f"{path} ({e.strerror})"
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{path} ({stat.filemode(st.st_mode)} {owner}:{group})"


def _chain(path: Path) -> list[Path]:
    """path, every folder above it, and the same for where its symlinks lead."""
    out: list[Path] = []
    seen = set()
    todo = [Path(os.path.abspath(path))]
    while todo:
        p = todo.pop()
        for q in [*reversed(p.parents), p]:
            if q in seen:
                continue
            seen.add(q)
            out.append(q)
            if q.is_symlink():
                target = Path(os.path.realpath(q))
                if target not in seen:
                    todo.append(target)
    return out


def interpreter(exe: Path) -> Path | None:
    """The #! interpreter of a script (a console script's python), absolute only."""
    try:
        with open(exe, "rb") as f:
            head = f.readline(512)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].decode("utf-8", "replace").split()
    return Path(words[0]) if words and words[0].startswith("/") and not words[0].endswith("/env") else None


def _steps(path: Path, mode: int) -> list[tuple[str, int]]:
    """(path, access mode) for every folder to enter and the file itself, symlinks followed (as root)."""
    real = Path(os.path.realpath(path))
    return [(str(q), mode if q == real else os.X_OK) for q in _chain(path) if not q.is_symlink()]


def _problem(step: str, mode: int) -> str:
    q = Path(step)
    if not os.path.lexists(q):
        return f"{q} does not exist"
    verb = {os.X_OK: "cannot enter" if q.is_dir() else "cannot execute", os.R_OK: "cannot read",
            os.W_OK | os.X_OK: "cannot write into"}.get(mode, "cannot use")
    return f"{verb} {_describe(q)}"


def check_as(user: pwd.struct_passwd, wants: list[tuple[str, Path, int]]) -> list[dict[str, str]]:
    """[{what, path, problem}] for each (what, path, mode) the user cannot use.

    The paths are walked here (root sees every symlink); the child, as the user, only asks
    os.access of each step and answers the index of the first it may not use.
    """
    plans = [_steps(path, mode) for _what, path, mode in wants]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(r)
            if os.geteuid() != user.pw_uid:
                os.setgroups(os.getgrouplist(user.pw_name, user.pw_gid))
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)
            first = [next((i for i, (q, m) in enumerate(steps) if not os.access(q, m)), -1) for steps in plans]
            os.write(w, json.dumps(first).encode())
        except BaseException:  # noqa: BLE001 (the parent reads an empty answer as a failure)
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _pid, status = os.waitpid(pid, 0)
    if status != 0 or not chunks:
        return [{"what": "check", "path": "", "problem": f"could not check as {user.pw_name}"}]
    found = []
    for (what, path, _mode), steps, i in zip(wants, plans, json.loads(b"".join(chunks)), strict=True):
        if i >= 0:
            found.append({"what": what, "path": str(path), "problem": _problem(*steps[i])})
    return found


def run_as(user: pwd.struct_passwd, argv: list[str], env: dict[str, str], cwd: str = "/",
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """argv as the user (root drops to it; the user itself just runs it)."""
    kw: dict[str, Any] = {}
    if os.geteuid() != user.pw_uid:
        kw = {"user": user.pw_uid, "group": user.pw_gid,
              "extra_groups": os.getgrouplist(user.pw_name, user.pw_gid)}
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)


def fix_for(item: dict[str, str], user: str) -> str:
    """What to change, said exactly."""
    what, path = item["what"], item["path"]
    if what == "crmops":
        return (f"install crmops where {user} can run it (README: installing for the postgres user), "
                "or name such a copy with --crmops PATH")
    if what == "repository":
        return f"chown -R {user} {shlex.quote(path)} (the server's user writes the WAL into it)"
    if item["problem"].startswith("cannot enter"):
        folder = item["problem"].split(" ", 2)[2].split(" (")[0]
        return f"chmod o+x {shlex.quote(folder)}, or move the {what} file where {user} can read it"
    return f"chgrp {user} {shlex.quote(path)} && chmod g+r {shlex.quote(path)}"


def preflight(user: pwd.struct_passwd, exe: str, config_file: Path | None, env_file: Path,
              repo_folder: Path | None, extra: tuple[Path, ...] = ()) -> list[dict[str, str]]:
    """Everything archive_command needs, checked as the user; [] when it can run."""
    words = shlex.split(exe)
    program = Path(words[0])
    wants: list[tuple[str, Path, int]] = [("crmops", program, os.X_OK)]
    interp = interpreter(program)
    if interp is not None:
        wants.append(("crmops", interp, os.X_OK))
    if config_file is not None:
        wants.append(("configuration", config_file, os.R_OK))
    if env_file.exists():  # missing: the passphrase may come from elsewhere; the proof tells
        wants.append(("env", env_file, os.R_OK))
    wants += [("key", Path(p), os.R_OK) for p in extra]
    if repo_folder is not None:
        wants.append(("repository", repo_folder, os.W_OK | os.X_OK))
    problems = check_as(user, wants)
    if not any(p["what"] == "crmops" for p in problems):
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": user.pw_dir}
        try:
            r = run_as(user, [*words, "--version"], env)
            failed = None if r.returncode == 0 else \
                f"`{exe} --version` as {user.pw_name} exited {r.returncode}: " \
                f"{(r.stderr.strip().splitlines() or ['no message'])[-1]}"
        except (OSError, subprocess.TimeoutExpired) as e:
            failed = f"`{exe} --version` as {user.pw_name} did not run: {e}"
        if failed:
            problems.insert(0, {"what": "crmops", "path": words[0], "problem": failed})
    for p in problems:
        p["fix"] = fix_for(p, user.pw_name)
    return problems
