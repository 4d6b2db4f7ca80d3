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
TRYTON_SERIES = "8.2"
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


TRYTON_MODULES = ("party", "company", "sale_opportunity")
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _server_and_db(url: str) -> tuple[str, str]:
    """A PostgreSQL URL split into the server part (Tryton's database URI) and the database name."""
    base, _, name = url.rpartition("/")
    return base + "/", name.split("?")[0]


def tryton() -> Path:
    return venv(f"tryton-{TRYTON_SERIES}", f"trytond=={TRYTON_SERIES}.*",
                *(f"trytond-{m.replace('_', '-')}=={TRYTON_SERIES}.*" for m in TRYTON_MODULES), "psycopg[binary,pool]")


def tryton_schema(scratch_url: str) -> Path:
    """Tryton's tables as `trytond-admin --all` makes them for TRYTON_MODULES, as a pg_dump file.

    trytond-admin is slow (12 minutes on the shared test machine: 222 tables, 492 foreign keys),
    so its result is dumped once per Tryton series and reloaded from then on.
    """
    home = CACHE / f"tryton-{TRYTON_SERIES}-schema"
    dump = home / "schema.sql"
    if dump.is_file():
        return dump
    env_dir = tryton()
    home.mkdir(parents=True, exist_ok=True)
    server, name = _server_and_db(scratch_url)
    (home / "admin.pass").write_text("tryton admin of a throwaway test database\n")
    env = {**os.environ, "TRYTOND_DATABASE__URI": server, "TRYTONPASSFILE": str(home / "admin.pass")}
    r = subprocess.run([str(env_dir / "bin" / "trytond-admin"), "-d", name, "--all", "--activate-dependencies",
                        "--email", "admin@example.org", "-u", *TRYTON_MODULES], env=env, capture_output=True,
                       text=True, timeout=3600, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        _unavailable("trytond-admin", r.stderr)
    with open(dump.with_suffix(".tmp"), "w") as out:
        subprocess.run([str(PG_BIN / "pg_dump"), "--no-owner", "--no-privileges", "-d", scratch_url], stdout=out,
                       check=True, timeout=600)
    dump.with_suffix(".tmp").rename(dump)
    return dump


def tryton_fill(url: str, parties: int) -> None:
    """Parties, addresses, contact mechanisms and opportunities through Tryton's ORM."""
    server, name = _server_and_db(url)
    env = {**os.environ, "TRYTOND_DATABASE__URI": server}
    r = subprocess.run([str(tryton() / "bin" / "python"), str(Path(__file__).with_name("tryton_fill.py")), name,
                        str(parties)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


#: Django CRM's settings pointed at the database in CRMOPS_REAL_DB_URL (the URL never on a command line)
DJANGO_SETTINGS = '''"""Django CRM's own settings, pointed at the database named by CRMOPS_REAL_DB_URL."""
import os
from urllib.parse import unquote, urlsplit

from webcrm.settings import *  # noqa: F401,F403

_u = urlsplit(os.environ["CRMOPS_REAL_DB_URL"])
DATABASES = {"default": {
    "ENGINE": "django.db.backends.postgresql" if _u.scheme.startswith("postgres") else "django.db.backends.mysql",
    "NAME": _u.path.lstrip("/"), "USER": unquote(_u.username or ""), "PASSWORD": unquote(_u.password or ""),
    "HOST": _u.hostname, "PORT": str(_u.port or ""),
}}
'''
DJANGO_PYTHON = "/root/.pyenv/versions/3.12.1/bin/python"


def django_crm() -> Path:
    """Django CRM in a venv of Python 3.12 (its Django 6 needs it; Debian 12 has 3.11).

    The package omits Pillow from its requirements although its admin imports it; mysqlclient
    builds against libmariadb-dev (the test bed installs it).
    """
    global PYTHON
    python = PYTHON
    try:
        PYTHON = DJANGO_PYTHON if Path(DJANGO_PYTHON).exists() else shutil.which("python3.12") or DJANGO_PYTHON
        home = venv(f"django-crm-admin-{DJANGO_CRM_VERSION}", f"django-crm-admin=={DJANGO_CRM_VERSION}",
                    "psycopg[binary]", "pillow")
    finally:
        PYTHON = python
    (home / "crmops_real_settings.py").write_text(DJANGO_SETTINGS)
    return home


def django_manage(url: str, *argv: str, timeout: float = 600) -> str:
    """Django CRM's python with its settings on `url`: `-m django setupdata`, or a script of ours."""
    home = django_crm()
    env = {**os.environ, "CRMOPS_REAL_DB_URL": url, "PYTHONPATH": str(home),
           "DJANGO_SETTINGS_MODULE": "crmops_real_settings"}
    r = subprocess.run([str(home / "bin" / "python"), *argv], env=env, capture_output=True, text=True,
                       timeout=timeout, cwd=home)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout
