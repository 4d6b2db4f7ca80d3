"""Each copy in status and metrics (red when it lags), its own retention, and its configuration."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from crmops.config import load_config
from crmops.errors import ConfigError
from tests.copy.helpers import crm, doc, run, tree_digest, write_config


def _copy_verdict(r) -> dict:  # type: ignore[no-untyped-def,type-arg]
    ov = doc(r)
    return next(v for v in ov["verdicts"] if v["name"] == "copy usb")


def test_status_and_metrics_show_the_copy_red_when_it_lags(tmp_path: Path) -> None:
    crm(tmp_path, attachment_mib=1)
    config = write_config(tmp_path, [{"name": "usb", "url": f"file://{tmp_path / 'usb'}"}])
    text = config.read_text() + f"status: {{max_copy_lag_hours: 0.0005}}\nnotify: {{metrics_file: {tmp_path}/m.prom}}\n"
    config.write_text(text)
    run(config, "repo", "init")
    run(config, "backup")
    never = run(config, "status", check=False)
    assert _copy_verdict(never)["level"] == "red" and "cannot be read" in _copy_verdict(never)["summary"]
    run(config, "copy")
    ok = run(config, "status", check=False)
    assert _copy_verdict(ok)["level"] == "green", _copy_verdict(ok)
    copies = doc(ok)["copies"]
    assert copies[0]["lag_seconds"] == 0.0 and copies[0]["last_proof"] is None
    metrics = (tmp_path / "m.prom").read_text()
    assert 'crmops_copy_lag_seconds{copy="usb"} 0.0' in metrics and 'crmops_copy_success{copy="usb"} 1' in metrics
    time.sleep(2)
    run(config, "backup")  # 2 s after the copied one: the copy now lags by more than 1.8 s
    red = run(config, "status", check=False)
    assert red.returncode == 61 and "copy usb lags the repository by" in red.stderr, red.stderr
    # a drill from the copy is recorded against the copy
    run(config, "copy")
    run(config, "drill", "--repository", "usb", "--report-dir", str(tmp_path / "drills"))
    proven = doc(run(config, "status", check=False))["copies"][0]
    assert proven["last_proof"]["command"] == "drill" and proven["last_proof"]["result"] == "success"
    run(config, "report", "--html", str(tmp_path / "page.html"))
    page = (tmp_path / "page.html").read_text()
    assert 'id="copies"' in page and "usb" in page


def test_forget_on_a_copy_applies_its_retention_and_leaves_the_repository_alone(tmp_path: Path) -> None:
    crm(tmp_path, attachment_mib=1)
    keep_one = {"keep_last": 1, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0, "keep_yearly": 0}
    config = write_config(tmp_path, [{"name": "usb", "url": f"file://{tmp_path / 'usb'}", "retention": keep_one}])
    run(config, "repo", "init")
    first = doc(run(config, "backup"))["snapshot_id"]
    (tmp_path / "files" / "contract-0.pdf").unlink()  # the first snapshot's own chunks: the copy's prune frees them
    (tmp_path / "files" / "more.pdf").write_bytes(os.urandom(300_000))
    second = doc(run(config, "backup"))["snapshot_id"]
    assert sorted(doc(run(config, "copy", "--all"))["copies"][0]["copied"]) == sorted([first, second])
    repo_before = tree_digest(tmp_path / "repo")
    forgot = doc(run(config, "forget", "--repository", "usb", "--prune"))
    assert forgot["forget"] == [first] and list(forgot["keep"]) == [second]
    assert forgot["prune"]["chunks_deleted"] > 0
    assert tree_digest(tmp_path / "repo") == repo_before  # the repository keeps both
    assert {s["id"] for s in json.loads(run(config, "snapshots").stdout)} == {first, second}
    assert [s["id"] for s in json.loads(run(config, "snapshots", "--repository", "usb").stdout)] == [second]
    # the next copy brings back only what the copy's retention keeps: the forgotten one stays forgotten
    again = doc(run(config, "copy"))["copies"][0]
    assert again["copied"] == [] and again["already"] == [second]
    assert doc(run(config, "check", "--read-data", "--repository", "usb"))["ok"]


def test_copies_configuration_names_credentials_and_env_overrides(tmp_path: Path) -> None:
    config = write_config(tmp_path, [{"name": "offsite", "url": "s3://bucket/crm",
                                      "s3": {"secret_access_key": "${COPY_SECRET}"}},
                                     {"name": "usb", "url": "file://usb"}])
    env = {"TEST_PASSPHRASE": "x", "COPY_SECRET": "s3cr3t-copy-key",
           "CRMOPS_COPIES__OFFSITE__S3__ENDPOINT_URL": "http://minio:9000"}
    cfg = load_config(config, env)
    assert cfg.copy_named("offsite").s3.endpoint_url == "http://minio:9000"
    assert cfg.copy_named("usb").url == f"file://{tmp_path / 'usb'}"  # relative to the file, as the repository
    assert "s3cr3t-copy-key" in cfg.secret_values()
    assert "s3cr3t-copy-key" not in json.dumps(cfg.masked())
    reading = cfg.for_copy("offsite")
    assert reading.repository.url == "s3://bucket/crm" and reading.reading_copy == "offsite"
    assert reading.repository.s3.secret_access_key.get_secret_value() == "s3cr3t-copy-key"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="no entry named 'nas'"):
        load_config(config, {**env, "CRMOPS_COPIES__NAS__URL": "file:///x"})
    twice = write_config(tmp_path, [{"name": "usb", "url": "file:///a"}, {"name": "usb", "url": "file:///b"}],
                         name="twice.yaml")
    with pytest.raises(ConfigError, match="usb is used twice"):
        load_config(twice, {"TEST_PASSPHRASE": "x"})
    own = write_config(tmp_path, [{"name": "usb", "url": "file:///a", "key": "own"}], name="own.yaml")
    with pytest.raises(ConfigError, match="key: own needs encryption.passphrase or encryption.key_file"):
        load_config(own, {"TEST_PASSPHRASE": "x"})
    # the copy's own passphrase from the environment, by the copy's name; never the repository's
    mine = load_config(own, {"TEST_PASSPHRASE": "x", "CRMOPS_COPIES__USB__ENCRYPTION__PASSPHRASE": "vault pass"})
    assert mine.for_copy("usb").encryption.resolved_passphrase() == "vault pass"
    assert "vault pass" in mine.secret_values() and "vault pass" not in json.dumps(mine.masked())
    keyed = write_config(tmp_path, [{"name": "usb", "url": "file:///a", "key": "own",
                                     "encryption": {"key_file": "vault.key"}}], name="keyed.yaml")
    reading = load_config(keyed, {"TEST_PASSPHRASE": "x"}).for_copy("usb")
    assert reading.encryption.key_file == tmp_path / "vault.key"  # relative to the file
    assert reading.encryption.resolved_passphrase() == ""  # no fallback to $CRMOPS_PASSPHRASE
    shared = write_config(tmp_path, [{"name": "usb", "url": "file:///a", "encryption": {"key_file": "k"}}],
                          name="shared.yaml")
    with pytest.raises(ConfigError, match="encryption is for key: own"):
        load_config(shared, {"TEST_PASSPHRASE": "x"})
