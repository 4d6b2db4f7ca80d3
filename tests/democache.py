"""The medium demo CRM on PostgreSQL and SQLite: built once per demo CRM code, then copied.

`create(size="medium")` writes about 125,000 rows (125 MB): 20-40 s on the shared machine, in
every test that asks for it. `CREATE DATABASE ... TEMPLATE` copies the same database in under a
second. The template's name carries a hash of crmops/democrm (its data, loader and migrations)
and the version, so a changed demo CRM builds a new one; it is built under another name and
renamed when complete, under an advisory lock, so parallel workers build it once and never
copy half of one. Its build's DemoResult is kept as the template's comment. SQLite's is a file
under /var/tmp (CACHE), copied the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from crmops.dburl import display
from crmops.democrm.load import DemoResult, create

DEMOCRM = Path(__file__).resolve().parent.parent / "crmops" / "democrm"
CACHE = Path(os.environ.get("CRMOPS_DEMO_CACHE", "/var/tmp/crmops-demo-cache"))


def _code_key() -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in DEMOCRM.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(DEMOCRM)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def medium_pg(url: str, version: str = "1.0") -> DemoResult:
    """Make the empty PostgreSQL database at url a copy of the medium demo CRM at version."""
    u = make_url(url)
    target = u.database or ""
    admin = u.set(database="postgres").render_as_string(hide_password=False)
    template = f"crmops_demo_medium_{version.replace('.', '_')}_{_code_key()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (template,))
        try:
            row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                               (template,)).fetchone()
            if row is None or not row[0]:
                building = f"{template}_building"
                conn.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
                conn.execute(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{building}"')
                built = create(u.set(database=building).render_as_string(hide_password=False), size="medium",
                               version=version)
                comment = json.dumps(built.to_dict()).replace("'", "''")
                conn.execute(f"COMMENT ON DATABASE \"{building}\" IS '{comment}'")
                conn.execute(f'ALTER DATABASE "{building}" RENAME TO "{template}"')
                row = (json.dumps(built.to_dict()),)
            conn.execute(f'DROP DATABASE "{target}"')
            conn.execute(f'CREATE DATABASE "{target}" TEMPLATE "{template}"')
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (template,))
    return DemoResult(**{**json.loads(row[0]), "url": display(url)})


def medium_sqlite(url: str, version: str = "1.0") -> DemoResult:
    """Make the SQLite file at url (not there yet) a copy of the medium demo CRM at version."""
    target = Path(make_url(url).database or "")
    home = CACHE / f"medium-{version}-{_code_key()}"
    db, meta = home / "crm.db", home / "result.json"
    if not meta.is_file():  # the result is written last: a folder without it is half-built
        building = CACHE / f".{home.name}.{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        built = create(f"sqlite:///{building / 'crm.db'}", size="medium", version=version)
        (building / "result.json").write_text(json.dumps(built.to_dict()))
        try:
            os.rename(building, home)
        except OSError:  # another worker finished first: keep its copy
            shutil.rmtree(building, ignore_errors=True)
    shutil.copyfile(db, target)
    return DemoResult(**{**json.loads(meta.read_text()), "url": display(url)})
