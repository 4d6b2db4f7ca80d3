"""Configuration: one line naming file and key for every mistake, secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmops.config import MASK, load_config, mask_url
from crmops.errors import ConfigError

#: what every configuration file states itself
DB = "database:\n  url: sqlite:///crm.db\n"
REPO = "repository:\n  url: file:///var/backups/crm\n"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "crmops.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_embedded_default_is_the_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CRMOPS_CONFIG", raising=False)
    cfg = load_config(environ={})
    assert cfg.source == "embedded default"
    assert cfg.database.url == f"sqlite:///{tmp_path}/demo/crm.db"
    assert cfg.repository.url == f"file://{tmp_path}/demo/repo"
    assert cfg.encryption.key_file == tmp_path / "demo" / "repo.key"


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    p = write(tmp_path, "database:\n  urll: sqlite:///x.db\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, environ={})
    assert str(p) in e.value.line() and "database.urll" in e.value.line() and "unknown key" in e.value.line()


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    p = write(tmp_path, "retention:\n  keep_daily: lots\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, environ={})
    assert "retention.keep_daily" in e.value.line() and "'lots'" in e.value.line()


def test_bad_yaml_gives_the_line(tmp_path: Path) -> None:
    p = write(tmp_path, "database:\n  url: [unclosed\nretention: {\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, environ={})
    assert "line" in e.value.line()


def test_env_interpolation_and_missing_variable(tmp_path: Path) -> None:
    p = write(tmp_path, "database:\n  url: postgresql://crm:${DBPW}@127.0.0.1/crm\n" + REPO)
    cfg = load_config(p, environ={"DBPW": "s3cr3t"})
    assert cfg.database.url == "postgresql://crm:s3cr3t@127.0.0.1/crm"
    with pytest.raises(ConfigError) as e:
        load_config(p, environ={})
    assert "${DBPW}" in e.value.line() and "database.url" in e.value.line()


def test_interpolation_default(tmp_path: Path) -> None:
    p = write(tmp_path, DB + "repository:\n  url: s3://${BUCKET:-crm-backups}/prod\n")
    assert load_config(p, environ={}).repository.url == "s3://crm-backups/prod"


def test_environment_overrides_single_keys(tmp_path: Path) -> None:
    p = write(tmp_path, DB + REPO + "retention:\n  keep_last: 3\n")
    cfg = load_config(p, environ={"CRMOPS_RETENTION__KEEP_LAST": "9", "CRMOPS_REPOSITORY__S3__REGION": "eu-1"})
    assert cfg.retention.keep_last == 9
    assert cfg.repository.s3.region == "eu-1"
    with pytest.raises(ConfigError) as e:
        load_config(p, environ={"CRMOPS_RETENTION__KEEP_LAST": "many"})
    assert "retention.keep_last" in e.value.line()


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    p = sub / "crmops.yaml"
    p.write_text("database:\n  url: sqlite:///crm.db\nrepository:\n  url: file://repo\n"
                 "attachments:\n  path: uploads\n", encoding="utf-8")
    cfg = load_config(p, environ={})
    assert cfg.database.url == f"sqlite:///{sub}/crm.db"
    assert cfg.repository.url == f"file://{sub}/repo"
    assert cfg.attachments.path == sub / "uploads"


def test_masked_hides_every_secret(tmp_path: Path) -> None:
    p = write(tmp_path, """
database: {url: "postgresql://crm:dbpw-123@h/crm"}
repository:
  url: s3://b/p
  s3: {access_key_id: AKIA-xyz, secret_access_key: s3-secret-456}
encryption: {passphrase: pass-789}
notify:
  webhooks: [{kind: slack, url: "https://hooks.example/T0/secret-999"}]
  email: {host: smtp, sender: a@b, to: [c@d], password: smtp-000}
""")
    cfg = load_config(p, environ={})
    text = repr(cfg.masked())
    for secret in ("dbpw-123", "AKIA-xyz", "s3-secret-456", "pass-789", "secret-999", "smtp-000"):
        assert secret not in text
    assert MASK in text
    assert cfg.encryption.resolved_passphrase() == "pass-789"


def test_mask_url_without_password_is_unchanged() -> None:
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db"
    assert MASK in mask_url("mysql://root:pw@127.0.0.1:3306/crm")


def test_starter_config_validates(tmp_path: Path) -> None:
    from importlib import resources

    p = write(tmp_path, resources.files("crmops").joinpath("starter.yaml").read_text(encoding="utf-8"))
    cfg = load_config(p, environ={"CRM_DB_PASSWORD": "x", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    assert cfg.repository.url == "s3://crm-backups/prod"


def _starter_cut(tmp_path: Path, after: str, *, keep_line: bool = True) -> Path:
    from importlib import resources

    text = resources.files("crmops").joinpath("starter.yaml").read_text(encoding="utf-8")
    at = text.index(after) + (len(after) if keep_line else 0)
    return write(tmp_path, text[:at])


STARTER_ENV = {"CRM_DB_PASSWORD": "x", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}


@pytest.mark.parametrize(("after", "said"), [
    ("\ndatabase:\n", "line 5: database: is empty (null) where its settings are required"),
    ("# SQLAlchemy URL of the CRM database", "line 5: database: is empty (null)"),
    ("  url: postgresql://crm:${CRM_DB_PASSWORD}@127.0.0.1:5432/crm\n", "no repository: section"),
    ("\nrepository:\n", "repository: is empty (null)"),
    ("  # file:///backup/crm or s3://bucket/prefix\n", "repository: is empty (null)"),
    ("  exclude: [\"*.tmp\",", ": line 24: expected the node content"),  # cut mid-list: not even YAML
])
def test_a_starter_cut_short_is_an_error_naming_file_and_line(tmp_path: Path, after: str, said: str) -> None:
    """Issue 24 item 7: a truncated file that still parses fell back to the embedded demo for what it no longer
    said (database.url, repository.url): cron then backed up the wrong thing. Every cut is exit 3, file and line."""
    p = _starter_cut(tmp_path, after)
    with pytest.raises(ConfigError) as e:
        load_config(p, environ=STARTER_ENV)
    assert e.value.exit_code == 3 and str(p) in e.value.line() and said in e.value.line(), e.value.line()
    assert "line" in e.value.line()


def test_a_list_cut_mid_item_names_its_line(tmp_path: Path) -> None:
    """Cut inside verify.assertions: the half item is named by the line it starts on."""
    p = _starter_cut(tmp_path, "    - name: every opportunity has an account\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, environ=STARTER_ENV)
    line = e.value.line()
    text = p.read_text().splitlines()
    number = next(i for i, t in enumerate(text, 1) if "- name: every opportunity" in t)
    assert f"{p}: line {number}: key verify.assertions.0.sql: Field required" in line, line


def test_a_url_from_the_environment_counts_as_stated(tmp_path: Path) -> None:
    p = write(tmp_path, "database:\nrepository:\n  url: file:///var/backups/crm\n")
    cfg = load_config(p, environ={"CRMOPS_DATABASE__URL": "sqlite:///other.db"})
    assert cfg.database.url.endswith("other.db")
    p = write(tmp_path, DB + "retention:\n  keep_last: 3\n")
    assert load_config(p, environ={"CRMOPS_REPOSITORY__URL": "file:///x"}).repository.url == "file:///x"
