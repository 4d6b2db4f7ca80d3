"""Notifications through real receivers on 127.0.0.1: webhook formats, retries, refusals, e-mail."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

from crmops.config import Config
from crmops.democrm.load import create
from crmops.notify import Event, notifiers, send_all
from tests.receivers import http_receiver, smtp_receiver

TOKEN = "hook-token-7f3a9c"
DING_SECRET = "SECding-secret-55b1"


def event(ok: bool = False) -> Event:
    return Event(run_id="run0123abcd", command="backup", ok=ok, host="crm-host", started_at="2026-11-23T02:30:00",
                 finished_at="2026-11-23T02:31:05", duration_s=65.0, exit_code=0 if ok else 20,
                 error=None if ok else "cannot reach S3 at http://127.0.0.1:9 (check the endpoint)",
                 figures={"snapshot_id": "abc123", "bytes_new": 1234})


def config(notify: dict) -> Config:
    return Config.model_validate({"notify": {"attempts": 3, "timeout_seconds": 3, **notify}})


def test_each_webhook_kind_gets_its_format_and_transient_failures_are_retried() -> None:
    with http_receiver() as rec:
        rec.script["/generic"] = [(503, b"busy"), (500, b"oops"), (200, b"")]
        hooks = [{"kind": "generic", "url": f"{rec.url}/generic/{TOKEN}"},
                 {"kind": "slack", "url": f"{rec.url}/slack/T0/B0/{TOKEN}"},
                 {"kind": "dingtalk", "url": f"{rec.url}/ding?access_token={TOKEN}", "secret": DING_SECRET},
                 {"kind": "wecom", "url": f"{rec.url}/wecom?key={TOKEN}"}]
        problems = send_all(event(), notifiers(config({"webhooks": hooks})))
        assert problems == []
        assert len(rec.to("/generic")) == 3  # two 5xx answers, then delivered
        generic = json.loads(rec.to("/generic")[-1].body)
        assert generic["run_id"] == "run0123abcd" and generic["ok"] is False and generic["command"] == "backup"
        assert generic["error"].startswith("cannot reach S3") and generic["figures"]["bytes_new"] == 1234
        slack = json.loads(rec.to("/slack")[0].body)
        assert set(slack) == {"text"} and "crmops backup FAILED on crm-host" in slack["text"]
        assert "run0123abcd" in slack["text"]
        ding_req = rec.to("/ding")[0]
        ding = json.loads(ding_req.body)
        assert ding["msgtype"] == "markdown" and "cannot reach S3" in ding["markdown"]["text"]
        q = parse_qs(urlsplit(ding_req.path).query)
        want = hmac.new(DING_SECRET.encode(), f"{q['timestamp'][0]}\n{DING_SECRET}".encode(), hashlib.sha256)
        assert q["sign"][0] == base64.b64encode(want.digest()).decode() and q["access_token"] == [TOKEN]
        wecom = json.loads(rec.to("/wecom")[0].body)
        assert wecom["msgtype"] == "markdown" and "run0123abcd" in wecom["markdown"]["content"]
        assert all(r.headers["Content-Type"].startswith("application/json") for r in rec.requests)


def test_refusals_and_dead_receivers_become_lines_without_the_url_token() -> None:
    with http_receiver() as rec:
        rec.script["/ding"] = [(200, b'{"errcode": 310000, "errmsg": "sign not match"}')]
        rec.script["/gone"] = [(404, b"no such hook")]
        hooks = [{"kind": "dingtalk", "url": f"{rec.url}/ding?access_token={TOKEN}"},
                 {"kind": "slack", "url": f"{rec.url}/gone/{TOKEN}"},
                 {"kind": "generic", "url": f"http://127.0.0.1:9/{TOKEN}"}]
        cfg = config({"webhooks": hooks, "attempts": 2})
        problems = send_all(event(), notifiers(cfg), redact=cfg.redact)
    assert len(problems) == 3
    assert "errcode 310000 sign not match" in problems[0]
    assert "HTTP 404" in problems[1] and len(rec.to("/gone")) == 1  # a 4xx is not retried
    assert "did not answer" in problems[2]
    assert not any(TOKEN in p or "/ding" in p for p in problems)


def test_email_through_smtp() -> None:
    with smtp_receiver() as smtp:
        cfg = config({"email": {"host": smtp.host, "port": smtp.port, "sender": "crmops@crm.example",
                                "to": ["it@crm.example", "boss@crm.example"]}})
        assert send_all(event(), notifiers(cfg)) == []
    (msg,) = smtp.messages
    assert msg["Subject"].startswith("[crmops] crmops backup FAILED on crm-host: cannot reach S3")
    assert msg["To"] == "it@crm.example, boss@crm.example" and msg["X-Crmops-Run-Id"] == "run0123abcd"
    body = msg.get_payload(decode=True).decode()
    assert "run id: run0123abcd" in body and '"exit_code": 20' in body


def test_a_dead_webhook_never_changes_the_jobs_exit_code(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'crm.db'}"
    create(db, size="small")
    cfg = {"database": {"url": db}, "repository": {"url": f"file://{tmp_path / 'repo'}", "chunk_avg_kib": 256},
           "encryption": {"passphrase": "notify test passphrase"}, "state_dir": str(tmp_path / "state"),
           "notify": {"on_success": True, "attempts": 1, "timeout_seconds": 2,
                      "webhooks": [{"kind": "generic", "url": f"http://127.0.0.1:9/{TOKEN}"}]}}
    (tmp_path / "crmops.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMOPS_")}
    run = [sys.executable, "-m", "crmops", "--config", str(tmp_path / "crmops.yaml")]
    assert subprocess.run([*run, "repo", "init"], capture_output=True, env=env, timeout=60).returncode == 0
    r = subprocess.run([*run, "--json", "backup"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["snapshot_id"]
    assert "notification via webhook #1 (generic, http://127.0.0.1:9) failed" in r.stderr and TOKEN not in r.stderr
    (line,) = (tmp_path / "state" / "runs.jsonl").read_text().splitlines()
    assert json.loads(line)["result"] == "success"


def test_every_configured_secret_is_scrubbed_and_masked() -> None:
    cfg = Config.model_validate({
        "database": {"url": "postgresql://crm:p%40ss-db-77@db.example/crm"},
        "repository": {"url": "s3://b/p", "s3": {"secret_access_key": "s3-secret-0042"}},
        "encryption": {"passphrase": "long passphrase 11"},
        "notify": {"pushgateway_url": "http://push:gw-secret-5@gw.example:9091",
                   "webhooks": [{"kind": "dingtalk", "url": f"https://oapi.example/robot?access_token={TOKEN}",
                                 "secret": DING_SECRET}],
                   "email": {"host": "smtp.example", "sender": "a@example", "to": ["b@example"],
                             "username": "u", "password": "smtp-secret-3"}}})
    text = (f"p@ss-db-77 p%40ss-db-77 s3-secret-0042 long passphrase 11 gw-secret-5 {DING_SECRET} smtp-secret-3 "
            f"https://oapi.example/robot?access_token={TOKEN}")
    assert cfg.redact(text) == " ".join(["********"] * 8)
    shown = json.dumps(cfg.masked())
    assert not any(s in shown for s in ("p@ss-db-77", "s3-secret-0042", "gw-secret-5", DING_SECRET, TOKEN))
