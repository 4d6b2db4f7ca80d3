"""MariaDB side by side: crmops backup and restore against `mysqldump` and `mysql`.

Called by bench/run.py with the same size; the demo CRM is built once into the test
bed's MariaDB 10.11 (database crmops_bench_<size>) and kept. The bare side is what an
administrator scripts by hand: `mysqldump --single-transaction` to a file, and `mysql`
reading it into an empty database. The password goes through MYSQL_PWD, never argv.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path


def my_env(url: str) -> dict[str, str]:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return {**os.environ, "MYSQL_PWD": u.password or "", "BENCH_MY_HOST": u.host or "127.0.0.1",
            "BENCH_MY_PORT": str(u.port or 3306), "BENCH_MY_USER": u.username or "root"}


def _client(env: dict[str, str]) -> str:
    return f"--protocol=TCP -h {env['BENCH_MY_HOST']} -P {env['BENCH_MY_PORT']} -u {env['BENCH_MY_USER']}"


def ensure_mariadb(admin_url: str, size: str) -> str:
    """The demo CRM of size in MariaDB (built once, kept as crmops_bench_<size>); its URL."""
    from sqlalchemy.engine import make_url

    name = f"crmops_bench_{size}"
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    marker = Path(tempfile.gettempdir()) / f"{name}-mariadb.json"
    env = my_env(admin_url)
    have = subprocess.run(f"mysql {_client(env)} -N -e 'SHOW DATABASES LIKE \"{name}\"'", shell=True, env=env,
                          capture_output=True, text=True, check=True).stdout.strip()
    if not have or not marker.exists():
        from crmops.democrm.load import create

        subprocess.run(f"mysql {_client(env)} -e 'CREATE DATABASE IF NOT EXISTS {name}'", shell=True, env=env,
                       check=True)
        print(f"building the {size} demo CRM in MariaDB once (kept as database {name}) ...", flush=True)
        marker.write_text(json.dumps(create(url, size=size, force=True).to_dict()))
    return url


def fresh(admin_url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    env = my_env(admin_url)
    subprocess.run(f"mysql {_client(env)} -e 'DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}'",
                   shell=True, env=env, check=True)
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def compare(size: str, admin_url: str, work: Path, run_env: dict[str, str], rows: list, results: dict) -> None:
    """mysqldump / mysql against crmops backup / restore on a local repository, same run."""
    from run import crmops, timed, write_config

    url = ensure_mariadb(admin_url, size)
    env = {**run_env, **my_env(url)}
    db = url.rsplit("/", 1)[1].split("?")[0]
    dump = work / "mariadb.sql"
    bare_dump, _ = timed(f"mysqldump {_client(env)} --single-transaction --routines --triggers {db} > {dump}",
                         env=env, shell=True)
    rows.append(("MariaDB: mysqldump --single-transaction > file", bare_dump, None, ""))
    config = write_config(work, url, f"file://{work}/mariadb-repo")
    subprocess.run(crmops(config, "repo", "init"), env=env, check=True)
    backup, brss = timed(crmops(config, "backup"), env=env)
    rows.append(("MariaDB: crmops backup, local disk (full)", backup, brss, ""))
    fresh(admin_url, "crmops_bench_my_a")
    bare_restore, _ = timed(f"mysql {_client(env)} crmops_bench_my_a < {dump}", env=env, shell=True)
    rows.append(("MariaDB: mysql < the dump file", bare_restore, None, ""))
    target = fresh(admin_url, "crmops_bench_my_b")
    restore, rrss = timed(crmops(config, "restore", "latest", "--to", "${BENCH_TARGET_URL}"),
                          env={**env, "BENCH_TARGET_URL": target})
    rows.append(("MariaDB: crmops restore", restore, rrss, ""))
    results.update(mariadb_backup_vs_mysqldump=round(backup / bare_dump, 2),
                   mariadb_restore_vs_mysql=round(restore / bare_restore, 2),
                   mariadb_backup_s=round(backup, 2), mariadb_mysqldump_s=round(bare_dump, 2),
                   mariadb_restore_s=round(restore, 2), mariadb_mysql_s=round(bare_restore, 2),
                   peak_rss_mb_mariadb_backup=round(brss), peak_rss_mb_mariadb_restore=round(rrss))
    for name in ("crmops_bench_my_a", "crmops_bench_my_b"):
        subprocess.run(f"mysql {_client(env)} -e 'DROP DATABASE IF EXISTS {name}'", shell=True, env=env)
