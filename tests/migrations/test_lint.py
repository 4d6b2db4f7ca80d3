"""Lint flags each operation that hurts a live CRM, at its line, and passes the safe ways to do the same."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from crmops.config import Config
from crmops.democrm import SCRIPT_LOCATION
from crmops.migrations.lint import RULES, failing, lint_script
from crmops.services import migrate as service

TEMPLATE = '''"""{rev}

Revision ID: {rev}
Revises: {down}
"""
import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = {down_literal}
branch_labels = None
depends_on = None


def upgrade() -> None:
{body}
{downgrade}'''

DOWNGRADE = '''

def downgrade() -> None:
    op.execute("SELECT 1")
'''

#: (revision, upgrade body, with a downgrade, expected rule or None, the flagged line's text)
CASES = [
    ("drop_table", 'op.drop_table("leads")', True, "drop-table", "op.drop_table"),
    ("drop_column", 'op.drop_column("contacts", "title")', True, "drop-column", "op.drop_column"),
    ("drop_column_batch", 'with op.batch_alter_table("accounts") as batch:\n        batch.drop_column("website")',
     True, "drop-column", "batch.drop_column"),
    ("rename_table", 'op.rename_table("leads", "prospects")', True, "rename-table", "op.rename_table"),
    ("rename_column", 'op.alter_column("contacts", "phone", new_column_name="mobile")', True, "rename-column",
     "op.alter_column"),
    ("not_null_no_default", 'op.add_column("contacts", sa.Column("region", sa.String(20), nullable=False))', True,
     "not-null-without-default", "op.add_column"),
    ("set_not_null", 'op.alter_column("contacts", "phone", existing_type=sa.String(50), nullable=False)', True,
     "set-not-null", "op.alter_column"),
    ("type_change", 'op.alter_column("accounts", "name", type_=sa.String(400))', True, "type-change",
     "op.alter_column"),
    ("plain_index", 'op.create_index("ix_leads_company", "leads", ["company"])', True, "index-not-concurrent",
     "op.create_index"),
    ("raw_rename", 'op.execute("ALTER TABLE leads RENAME TO prospects")', True, "raw-sql-danger", "op.execute"),
    ("no_downgrade", 'op.add_column("leads", sa.Column("region", sa.String(20)))', False, "missing-downgrade", None),
    # the safe ways
    ("safe_nullable_column", 'op.add_column("leads", sa.Column("region", sa.String(20)))', True, None, None),
    ("safe_not_null_with_default", 'op.add_column("leads", sa.Column("active", sa.Boolean, nullable=False, '
                                   'server_default=sa.true()))', True, None, None),
    ("safe_new_table", 'op.create_table("tags", sa.Column("id", sa.Integer, primary_key=True), '
                       'sa.Column("name", sa.String(50), nullable=False))\n'
                       '    op.create_index("ix_tags_name", "tags", ["name"])\n'
                       '    op.drop_column("tags", "name")', True, None, None),
    ("safe_concurrent_index", 'with op.get_context().autocommit_block():\n'
                              '        op.create_index("ix_leads_source", "leads", ["source"], '
                              'postgresql_concurrently=True)', True, None, None),
]


def write_chain(folder: Path) -> dict[str, Path]:
    """The cases as one linear Alembic history in folder (with the demo's env.py)."""
    folder.mkdir()
    shutil.copy(Path(SCRIPT_LOCATION) / "env.py", folder / "env.py")
    shutil.copy(Path(SCRIPT_LOCATION) / "script.py.mako", folder / "script.py.mako")
    (folder / "versions").mkdir()
    paths: dict[str, Path] = {}
    down = None
    for rev, body, with_down, _, _ in CASES:
        path = folder / "versions" / f"{rev}.py"
        path.write_text(TEMPLATE.format(rev=rev, down=down or "", down_literal=repr(down), body="    " + body,
                                        downgrade=DOWNGRADE if with_down else ""))
        paths[rev] = path
        down = rev
    return paths


def line_of(path: Path, text: str | None) -> int:
    if text is None:
        return 1
    return next(i for i, line in enumerate(path.read_text().splitlines(), start=1) if text in line)


@pytest.mark.parametrize(("rev", "body", "with_down", "rule", "marker"), CASES, ids=[c[0] for c in CASES])
def test_each_dangerous_operation_is_flagged_and_safe_ones_pass(tmp_path: Path, rev: str, body: str,
                                                                with_down: bool, rule: str | None,
                                                                marker: str | None) -> None:
    path = write_chain(tmp_path / "scripts")[rev]
    findings = lint_script(rev, path, engine="postgresql")
    if rule is None:
        assert findings == []
        return
    assert [(f.rule, f.line, f.revision) for f in findings] == [(rule, line_of(path, marker), rev)]
    assert findings[0].severity == RULES[rule][0] and findings[0].why.startswith(RULES[rule][1])


def test_index_rule_only_for_postgresql(tmp_path: Path) -> None:
    path = write_chain(tmp_path / "scripts")["plain_index"]
    assert lint_script("plain_index", path, engine="mysql") == []


def test_a_script_that_does_not_parse_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("def upgrade(:\n    pass\n")
    [finding] = lint_script("broken", path, engine="sqlite")
    assert (finding.rule, finding.severity, finding.line) == ("syntax", "error", 1)


def test_service_lints_every_revision_with_configured_severities(tmp_path: Path) -> None:
    write_chain(tmp_path / "scripts")
    config = Config.model_validate({"database": {"url": f"sqlite:///{tmp_path / 'crm.db'}"},
                                    "state_dir": str(tmp_path / "state"),
                                    "migrations": {"script_location": str(tmp_path / "scripts"),
                                                   "lint": {"index-not-concurrent": "off", "drop-column": "warning"}}})
    findings = service.lint(config, all_revisions=True, engine="postgresql")
    expected = {c[3] for c in CASES if c[3]} - {"index-not-concurrent"}
    assert {f.rule for f in findings} == expected
    assert {f.revision for f in findings} == {c[0] for c in CASES if c[3] and c[3] != "index-not-concurrent"}
    assert all(f.severity == "warning" for f in findings if f.rule == "drop-column")
    errors = {f.rule for f in failing(findings)}
    assert "drop-column" not in errors and "drop-table" in errors and "set-not-null" not in errors
    config.migrations.lint_fail_on = "warning"
    assert {f.rule for f in service.lint_failures(config, findings)} == expected


def test_unknown_rule_in_config_is_one_clear_error(tmp_path: Path) -> None:
    from crmops.errors import ConfigError

    config = Config.model_validate({"migrations": {"lint": {"drop-tables": "off"}}})
    with pytest.raises(ConfigError, match="unknown rule 'drop-tables'"):
        service.lint(config, all_revisions=True, engine="sqlite")


def test_the_demo_crm_migrations_lint_clean_but_for_the_kept_merge() -> None:
    findings = service.lint(Config(), all_revisions=True, engine="postgresql")
    assert [(f.revision, f.rule) for f in findings] == [("d2_0002", "empty-downgrade")]
