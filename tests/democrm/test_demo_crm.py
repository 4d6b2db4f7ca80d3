"""The demo CRM loads on all three engines with every data kind, deterministically,
and its migrations go 1.0 -> 2.0 -> 1.0."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from crmops.dburl import parse
from crmops.democrm import VERSIONS, alembic_config
from crmops.democrm.load import create
from crmops.errors import TargetNotEmpty

ENGINES = ["sqlite_url", "pg_url", "mysql_url"]


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(parse(url).to_sqlalchemy())


def _schema(url: str) -> dict[str, object]:
    eng = _engine(url)
    insp = sa.inspect(eng)
    out = {}
    for t in sorted(insp.get_table_names()):
        out[t] = (
            sorted((c["name"], str(c["type"]).split("(")[0], c["nullable"]) for c in insp.get_columns(t)),
            sorted(i["name"] for i in insp.get_indexes(t) if i["name"] and not i["name"].startswith("uq_")),
            sorted(u["name"] or "" for u in insp.get_unique_constraints(t)),
            sorted(tuple(fk["constrained_columns"]) for fk in insp.get_foreign_keys(t)),
        )
    out["views"] = sorted(insp.get_view_names())
    eng.dispose()
    return out


def _content_hash(url: str) -> str:
    eng = _engine(url)
    h = hashlib.sha256()
    with eng.connect() as conn:
        for t in ("accounts", "contacts", "opportunities", "activities", "attachments", "audit_log"):
            for row in conn.execute(sa.text(f"SELECT * FROM {t} ORDER BY id")):
                h.update(repr(tuple(row)).encode())
    eng.dispose()
    return h.hexdigest()


@pytest.mark.parametrize("fixture", ENGINES)
def test_all_data_kinds_present(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = request.getfixturevalue(fixture)
    result = create(url, size="small", seed=7, attachments_dir=tmp_path / "files")
    assert result.rows["activities"] == 2500 and result.rows["audit_log"] > 100
    eng = _engine(url)
    with eng.connect() as conn:
        q = lambda sql: conn.execute(sa.text(sql)).scalar_one()  # noqa: E731
        assert q("SELECT COUNT(*) FROM contacts WHERE first_name LIKE '%伟%' OR last_name LIKE '%王%'") > 0
        assert q("SELECT COUNT(*) FROM activities WHERE body LIKE '%🚀%'") > 0
        assert q("SELECT COUNT(*) FROM activities WHERE body IS NULL") > 0
        assert q("SELECT COUNT(*) FROM accounts WHERE annual_revenue IS NULL") > 0
        thumbs = [r[0] for r in conn.execute(sa.text("SELECT thumbnail FROM attachments WHERE thumbnail IS NOT NULL"))]
        assert any(b"\x00" in bytes(t) for t in thumbs)
        amount = q("SELECT amount FROM opportunities WHERE id = 1")
        assert str(amount).count(".") == 1 and len(str(amount).split(".")[1]) == 2
        details = q("SELECT details FROM opportunities WHERE details IS NOT NULL ORDER BY id LIMIT 1")
        assert "备注" in (json.loads(details) if isinstance(details, str) else details)
        dup = q("SELECT COUNT(*) FROM (SELECT LOWER(TRIM(email)) e FROM contacts GROUP BY LOWER(TRIM(email)) "
                "HAVING COUNT(*) > 1) d")
        assert dup >= 3
        assert q("SELECT COUNT(*) FROM pipeline_summary") == 5
        if eng.dialect.name == "postgresql":
            assert q("SELECT data_type FROM information_schema.columns WHERE table_name = 'activities' "
                     "AND column_name = 'occurred_at'") == "timestamp with time zone"
        stored = {r[0]: r[1] for r in conn.execute(sa.text("SELECT storage_path, sha256 FROM attachments"))}
    eng.dispose()
    files = {p.relative_to(tmp_path / "files").as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in (tmp_path / "files").rglob("*.pdf")}
    assert stored == files
    assert len(set(files.values())) < len(files)  # some attachments are identical


def test_same_seed_same_data(tmp_path: Path) -> None:
    a, b, c = (f"sqlite:///{tmp_path / n}.db" for n in "abc")
    create(a, seed=3)
    create(b, seed=3)
    create(c, seed=4)
    assert _content_hash(a) == _content_hash(b) != _content_hash(c)


def test_refuses_a_non_empty_database(sqlite_url: str) -> None:
    eng = _engine(sqlite_url)
    with eng.begin() as conn:
        conn.execute(sa.text("CREATE TABLE precious (id INTEGER)"))
    eng.dispose()
    with pytest.raises(TargetNotEmpty):
        create(sqlite_url)
    with pytest.raises(TargetNotEmpty):
        create(sqlite_url, force=True)  # not a demo CRM: never dropped


@pytest.mark.parametrize("fixture", ENGINES)
def test_migrations_up_to_2_and_back(fixture: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(fixture)
    create(url, size="small")
    schema_1 = _schema(url)
    cfg = alembic_config(url)
    command.upgrade(cfg, VERSIONS["2.0"])
    eng = _engine(url)
    with eng.connect() as conn:
        dups = conn.execute(sa.text("SELECT COUNT(*) FROM (SELECT email FROM contacts GROUP BY email "
                                    "HAVING COUNT(*) > 1) d")).scalar_one()
        stages = conn.execute(sa.text("SELECT name FROM pipeline_stages ORDER BY position")).scalars().all()
    eng.dispose()
    assert dups == 0 and "feedback" in stages
    schema_2 = _schema(url)
    assert "customer_feedback" in schema_2 and "uq_contacts_email" in schema_2["contacts"][2]
    command.downgrade(cfg, VERSIONS["1.0"])
    assert _schema(url) == schema_1


def test_merge_fails_on_cross_account_duplicates(sqlite_url: str) -> None:
    create(sqlite_url, size="small")
    eng = _engine(sqlite_url)
    with eng.begin() as conn:
        conn.execute(sa.text("UPDATE contacts SET email = 'shared@example.org' WHERE id IN (1, 2)"))
        accounts = conn.execute(sa.text("SELECT account_id FROM contacts WHERE id IN (1, 2)")).scalars().all()
    eng.dispose()
    assert len(set(accounts)) == 2
    with pytest.raises(Exception, match="shared@example.org"):
        command.upgrade(alembic_config(sqlite_url), VERSIONS["2.0"])
