"""Real schemas from their published packages, cached under /var/tmp keyed by version.

Request Tracker's schema comes from Debian's request-tracker5 package (its etc/schema.Pg and
schema.mysql, the files RT's own rt-setup-database runs); Tryton and Django CRM from PyPI,
each in a venv of its own made by Debian's python3 so its dependencies never meet crmops's.
A cache is reused while its marker file exists; the first run in CI fills it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("CRMOPS_REAL_SCHEMAS_CACHE", "/var/tmp/crmops-real-schemas"))
RT_VERSION = "5.0.3+dfsg-3~deb12u7"
TRYTON_SERIES = "7.0"
DJANGO_CRM_VERSION = "3.1.0"
PYTHON = "/usr/bin/python3"


def _unavailable(what: str, detail: str) -> None:
    reason = f"{what} could not be installed: {detail[-400:]}"
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def rt_schema_dir() -> Path:
    """Request Tracker's etc/ folder from the Debian package (downloaded, never installed)."""
    home = CACHE / f"rt-{RT_VERSION}"
    etc = home / "x" / "usr" / "share" / "request-tracker5" / "etc"
    if (etc / "schema.Pg").is_file():
        return etc
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o777)  # apt's sandbox user writes the download here
    r = subprocess.run(["apt-get", "download", f"request-tracker5={RT_VERSION}"], cwd=home, capture_output=True,
                       text=True, timeout=300)
    debs = glob.glob(str(home / "request-tracker5_*.deb"))
    if not debs:
        _unavailable("request-tracker5", r.stderr)
    subprocess.run(["dpkg-deb", "-x", debs[0], str(home / "x")], check=True, timeout=120)
    return etc


def venv(name: str, *requirements: str) -> Path:
    """A venv under the cache holding `requirements`, made once per name (which carries the versions)."""
    home = CACHE / name
    marker = home / ".complete"
    if marker.is_file():
        return home
    shutil.rmtree(home, ignore_errors=True)
    python = PYTHON if Path(PYTHON).exists() else shutil.which("python3") or "python3"
    r = subprocess.run([python, "-m", "venv", str(home)], capture_output=True, text=True, timeout=300)
    if r.returncode == 0:
        r = subprocess.run([str(home / "bin" / "pip"), "install", "-q", *requirements], capture_output=True,
                           text=True, timeout=900)
    if r.returncode != 0:
        _unavailable(name, r.stderr + r.stdout)
    marker.write_text(" ".join(requirements) + "\n")
    return home
