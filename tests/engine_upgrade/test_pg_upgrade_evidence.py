"""A failed pg_upgrade keeps its evidence, and the rehearsal names the databases it did not rehearse (issue 24,
item 3): the rollback removed pg_upgrade_output.d, so "Consult the last few lines of ..." named a file that was gone,
and a view in another database of the cluster failed the real upgrade after a passing dry run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.matrix.digest import native_digest
from tests.matrix.servers import BY_ID, run_server

pytestmark = [pytest.mark.docker, pytest.mark.matrix, pytest.mark.slow]

#: PostgreSQL 17 moved the checkpoint counters out of pg_stat_bgwriter: a 13 view on them fails pg_upgrade's
#: schema restore, which pg_upgrade --check does not see
BROKEN_VIEW = "CREATE VIEW checkpoint_load AS SELECT buffers_checkpoint FROM pg_stat_bgwriter"


def test_failed_pg_upgrade_keeps_its_logs_and_other_databases_are_a_named_risk(docker_client, tmp_path: Path
                                                                               ) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    from crmops.config import Config
    from crmops.engine_upgrade.box import rehearse
    from crmops.playbooks.steps import StepContext, StepFailed

    with run_server(docker_client, BY_ID["pg13"]) as old:
        url, other = old.create_database(), old.create_database()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE invoices (id int PRIMARY KEY, amount numeric)")
            conn.execute("INSERT INTO invoices VALUES (1, 10.5)")
            conn.execute(BROKEN_VIEW)
        before = native_digest(url)
        cfg = Config.model_validate({"database": {"url": url}, "repository": {"url": f"file://{tmp_path}/r"},
                                     "state_dir": str(tmp_path / "state")})
        ctx = StepContext("run-1", url, dry_run=True)
        with pytest.raises(StepFailed) as failed:
            rehearse(cfg, url, "17", {"mode": "link"}, smoke=[], ctx=ctx, timeout=600)
        kept = tmp_path / "state" / "upgrades" / "run-1" / "pg_upgrade"
        message = str(failed.value)
        assert f"its logs are kept in {kept}" in message and "buffers_checkpoint" in message, message
        logs = [p for p in kept.rglob("*.log") if "buffers_checkpoint" in p.read_text()]
        assert logs, sorted(str(p) for p in kept.rglob("*"))
        assert native_digest(url) == before

        # the view moves to another database of the cluster: the rehearsal of url passes, and says what it missed
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP VIEW checkpoint_load")
        with psycopg.connect(other, autocommit=True) as conn:
            conn.execute(BROKEN_VIEW)
        report = rehearse(cfg, url, "17", {"mode": "link"}, smoke=[], ctx=StepContext("run-2", url, dry_run=True),
                          timeout=600)
        assert report["incompatibilities"] == [] and report["differences"] == []
        name = other.rsplit("/", 1)[1]
        assert len(report["risks"]) == 1 and f"not rehearsed: {name} (1 table, view or function)" in \
            report["risks"][0], report["risks"]
        assert "pg_upgrade upgrades every database of the cluster" in report["risks"][0]
