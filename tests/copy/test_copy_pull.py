"""Pull mode against an S3 server that enforces IAM: a host with read-only credentials for the
repository and the only write credentials for the copy; the CRM host holds none for the copy.

The shared test server accepts any credentials, so this test starts a moto_server of its own
and switches on its IAM enforcement (moto's /moto-api/reset-auth) once users and policies exist:
every request after that is allowed or denied by the policies below, the ones the README documents.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from tests.copy.helpers import crm, doc, run, write_config
from tests.ports import free_port

#: moto authorises some requests by their API operation's name where AWS uses the IAM action:
#: ListObjectsV2 (AWS: s3:ListBucket), HeadObject (AWS: s3:GetObject), HeadBucket (AWS: s3:ListBucket),
#: ListMultipartUploads (AWS: s3:ListBucketMultipartUploads).
#: Each statement gets those names beside the AWS ones, on the same resources.
MOTO_ALIASES = {"s3:ListBucket": ["s3:ListObjectsV2", "s3:HeadBucket"], "s3:GetObject": ["s3:HeadObject"],
                "s3:ListBucketMultipartUploads": ["s3:ListMultipartUploads"]}


def _policy(statements: list[dict]) -> str:  # type: ignore[type-arg]
    for st in statements:
        st["Action"] = st["Action"] + [alias for a in st["Action"] for alias in MOTO_ALIASES.get(a, [])]
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def crm_host_policy(primary: str) -> str:
    """The CRM host: its repository only, and no right at all on the copy's bucket."""
    return _policy([{"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject", "s3:PutObject",
                                                   "s3:DeleteObject", "s3:GetBucketLocation",
                                                   "s3:GetBucketObjectLockConfiguration"],
                     "Resource": [f"arn:aws:s3:::{primary}", f"arn:aws:s3:::{primary}/*"]}])


def pull_host_policy(primary: str, copy: str) -> str:
    """The copy host: reads the repository, writes the copy."""
    return _policy([
        {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject"],
         "Resource": [f"arn:aws:s3:::{primary}", f"arn:aws:s3:::{primary}/*"]},
        {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                                       "s3:ListBucketMultipartUploads", "s3:AbortMultipartUpload"],
         "Resource": [f"arn:aws:s3:::{copy}", f"arn:aws:s3:::{copy}/*"]}])


@pytest.fixture
def iam_s3(tmp_path: Path) -> Iterator[str]:
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.exists() and not shutil.which("moto_server"):
        pytest.skip("moto_server is not installed")
    port = free_port()
    log = open(tmp_path / "moto.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([str(exe if exe.exists() else "moto_server"), "-p", str(port)], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _client(service: str, url: str, key: str = "admin", secret: str = "admin"):  # type: ignore[no-untyped-def]
    return boto3.client(service, endpoint_url=url, region_name="us-east-1", aws_access_key_id=key,
                        aws_secret_access_key=secret, config=BotoConfig(s3={"addressing_style": "path"}))


def _user(iam, name: str, policy: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=policy)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def _objects(client, bucket: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """key -> ETag of every object in the bucket."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
    return out


def test_pull_mode_copies_with_read_only_repository_credentials(tmp_path: Path, iam_s3: str) -> None:
    primary, copy = "crm-primary", "crm-offsite"
    admin = _client("s3", iam_s3)
    admin.create_bucket(Bucket=primary)
    admin.create_bucket(Bucket=copy)
    iam = _client("iam", iam_s3)
    crm_key = _user(iam, "crm-host", crm_host_policy(primary))
    pull_key = _user(iam, "copy-host", pull_host_policy(primary, copy))
    urllib.request.urlopen(urllib.request.Request(f"{iam_s3}/moto-api/reset-auth", data=b"0", method="POST",
                                                  headers={"Content-Type": "text/plain"})).close()

    def s3(key: tuple[str, str]) -> dict[str, str]:
        return {"endpoint_url": iam_s3, "access_key_id": key[0], "secret_access_key": key[1]}

    # the policies are enforced: each host is refused what it must not do
    with pytest.raises(ClientError, match="AccessDenied"):
        _client("s3", iam_s3, *crm_key).put_object(Bucket=copy, Key="x", Body=b"x")
    with pytest.raises(ClientError, match="AccessDenied"):
        _client("s3", iam_s3, *pull_key).put_object(Bucket=primary, Key="x", Body=b"x")

    crm_s3 = _client("s3", iam_s3, *crm_key)
    # the CRM host: its repository, no copy configured, no credentials for one
    crm(tmp_path)
    crm_side = write_config(tmp_path, [], repository={"url": f"s3://{primary}/crm", "chunk_avg_kib": 64,
                                                      "s3": s3(crm_key)})
    run(crm_side, "repo", "init")
    snap = doc(run(crm_side, "backup"))["snapshot_id"]
    assert "no copies are configured" in run(crm_side, "copy", check=False).stderr

    # the copy host: the same repository with read-only credentials, and the copy's only write credentials
    pull = tmp_path / "pull"
    pull.mkdir()
    pull_side = write_config(pull, [{"name": "offsite", "url": f"s3://{copy}/crm", "s3": s3(pull_key)}],
                             repository={"url": f"s3://{primary}/crm", "chunk_avg_kib": 64, "s3": s3(pull_key)})
    before = _objects(crm_s3, primary)
    r = doc(run(pull_side, "copy"))["copies"][0]
    assert r["ok"] and r["copied"] == [snap] and r["repository_locked"] is False
    assert r["chunks_copied"] > 20
    again = doc(run(pull_side, "copy"))["copies"][0]
    assert again["copied"] == [] and again["chunks_copied"] == 0
    # nothing was written to the repository by the copy host, and it cannot be
    assert _objects(crm_s3, primary) == before
    bad = run(pull_side, "forget", check=False)
    assert bad.returncode == 21 and "refused the credentials" in bad.stderr and "Traceback" not in bad.stderr
    # and the copy reads on its own: its snapshots and every chunk authenticated
    listed = json.loads(run(pull_side, "snapshots", "--all", "--repository", "offsite").stdout)
    assert [s["id"] for s in listed] == [snap]
    assert doc(run(pull_side, "check", "--read-data", "--repository", "offsite"))["ok"]


#: what the copy host needs beside pull_host_policy on a bucket with Object Lock (README: "S3 Object Lock")
LOCK_ACTIONS = ["s3:GetBucketObjectLockConfiguration", "s3:GetObjectRetention", "s3:GetObjectLegalHold",
                "s3:ListBucketVersions", "s3:DeleteObjectVersion"]


def test_pull_mode_onto_an_object_lock_bucket_refuses_every_delete_of_what_it_keeps(
        tmp_path: Path, iam_s3: str) -> None:
    primary, copy = "crm-primary", "crm-vault"
    admin = _client("s3", iam_s3)
    admin.create_bucket(Bucket=primary)
    admin.create_bucket(Bucket=copy, ObjectLockEnabledForBucket=True)
    admin.put_object_lock_configuration(Bucket=copy, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 30}}})
    iam = _client("iam", iam_s3)
    crm_key = _user(iam, "crm-host", crm_host_policy(primary))
    pull = json.loads(pull_host_policy(primary, copy))
    pull["Statement"].append(json.loads(_policy([{"Effect": "Allow", "Action": list(LOCK_ACTIONS),
                                                  "Resource": [f"arn:aws:s3:::{copy}",
                                                               f"arn:aws:s3:::{copy}/*"]}]))["Statement"][0])
    pull_key = _user(iam, "copy-host", json.dumps(pull))
    auditor = _client("s3", iam_s3, *_user(iam, "auditor", json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:ListBucketVersions", "s3:ListObjectVersions"],
         "Resource": [f"arn:aws:s3:::{copy}"]}]})))
    urllib.request.urlopen(urllib.request.Request(f"{iam_s3}/moto-api/reset-auth", data=b"0", method="POST",
                                                  headers={"Content-Type": "text/plain"})).close()

    def s3(key: tuple[str, str]) -> dict[str, str]:
        return {"endpoint_url": iam_s3, "access_key_id": key[0], "secret_access_key": key[1]}

    crm(tmp_path)
    crm_side = write_config(tmp_path, [], repository={"url": f"s3://{primary}/crm", "chunk_avg_kib": 64,
                                                      "s3": s3(crm_key)})
    run(crm_side, "repo", "init")
    first = doc(run(crm_side, "backup"))["snapshot_id"]
    (tmp_path / "files" / "order.pdf").write_bytes(b"order " * 40_000)
    second = doc(run(crm_side, "backup"))["snapshot_id"]
    short = {"keep_last": 1, "keep_hourly": 0, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0,
             "keep_yearly": 0, "pitr_days": 0}
    host = tmp_path / "pull"
    host.mkdir()
    pull_side = write_config(host, [{"name": "vault", "url": f"s3://{copy}/crm", "s3": s3(pull_key),
                                     "retention": short}],
                             repository={"url": f"s3://{primary}/crm", "chunk_avg_kib": 64, "s3": s3(pull_key)})
    r = doc(run(pull_side, "copy", "--all"))["copies"][0]
    assert r["ok"] and sorted(r["copied"]) == sorted([first, second])

    def history() -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for page in auditor.get_paginator("list_object_versions").paginate(Bucket=copy):
            for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                if "/locks/" not in v["Key"]:
                    out.setdefault(v["Key"], []).append(v["VersionId"])
        return out

    before = history()
    # moto authorises GetObjectLockConfiguration by another name than the policy's and refuses it: this is
    # the copy host that may not read the bucket's lock configuration, which checks each object's own
    # retention before deleting it instead of hiding it behind a delete marker
    # the copy host's own forget, with a retention shorter than the lock: refused before any delete
    r2 = run(pull_side, "forget", "--prune", "--repository", "vault", check=False)
    assert r2.returncode == 63 and "nothing was forgotten" in r2.stderr and "Traceback" not in r2.stderr, r2.stderr
    # the CRM host's credentials reach nothing on the copy's bucket
    aimed = write_config(tmp_path, [{"name": "vault", "url": f"s3://{copy}/crm", "s3": s3(crm_key),
                                     "retention": short}], name="aimed.yaml",
                         repository={"url": f"s3://{primary}/crm", "chunk_avg_kib": 64, "s3": s3(crm_key)})
    r3 = run(aimed, "forget", "--prune", "--repository", "vault", check=False)
    assert r3.returncode == 21 and "refused the credentials" in r3.stderr, r3.stderr
    # a stolen copy-host key deleting versions directly: S3 refuses every locked one
    stolen = _client("s3", iam_s3, *pull_key)
    for key, ids in before.items():
        if key.startswith(("crm/snapshots/", "crm/data/")):
            with pytest.raises(ClientError, match="AccessDenied"):
                stolen.delete_object(Bucket=copy, Key=key, VersionId=ids[0])
    assert history() == before
    assert doc(run(pull_side, "check", "--read-data", "--repository", "vault"))["ok"]
