"""crmops copy beside restic copy, between the same two stores: a local repository to S3.

    PYTHONPATH=. .venv/bin/python -m bench.copy_bench --size medium

Needs the test bed (PostgreSQL and moto S3). Both tools back up the same demo CRM's
`pg_dump -Fc -Z0` (crmops through its engine, restic from stdin) into a local repository,
then copy it to a bucket of the test bed's S3 (moto on loopback: it burns a core of its
own, so absolute S3 speeds are low for both); then a night of CRM work (1% of the rows
edited), a second backup each, and the nightly copy. Each copy is timed as a separate
process (wall seconds, peak RSS). Beside them, a copy with its own keys (`key: own`, the same
bucket under another prefix): every chunk opened and sealed again, named by the copy's own
keyed ids, so its cost over the shared-key copy is what re-encryption costs.
Measurements, never pass/fail.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import boto3
import yaml

from bench.run import PASS, PY, bed_env, ensure_database, pg_env, save_results, timed, touch_one_percent


def _bucket_bytes(client, bucket: str, prefix: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(objects, bytes) under prefix."""
    n = size = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            n += 1
            size += o["Size"]
    return n, size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default=os.environ.get("BENCH_SIZE", "medium"),
                    choices=["tiny", "small", "medium", "large"])
    args = ap.parse_args()
    env = bed_env()
    s3 = env["CRMOPS_TEST_S3_ENDPOINT"]
    url, _built = ensure_database(env["CRMOPS_TEST_PG_URL"], args.size)
    penv = pg_env(url)
    restic = shutil.which("restic")
    client = boto3.client("s3", endpoint_url=s3, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    bucket = f"crmops-copybench-{int(time.time())}"
    client.create_bucket(Bucket=bucket)
    run_env = {**os.environ, "BENCH_PASSPHRASE": PASS, "BENCH_VAULT_PASSPHRASE": PASS + " vault",
               "RESTIC_PASSWORD": PASS, "RESTIC_FROM_PASSWORD": PASS,
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    work = Path(tempfile.mkdtemp(prefix="crmops-copybench-"))
    rows: list[tuple[str, float, float | None, str]] = []
    results: dict[str, float | int | str | None] = {"size": args.size, "cores": os.cpu_count()}
    try:
        config = work / "crmops.yaml"
        config.write_text(yaml.safe_dump({
            "database": {"url": url}, "repository": {"url": f"file://{work}/repo"},
            "encryption": {"passphrase": "${BENCH_PASSPHRASE}"}, "state_dir": str(work / "state"),
            "copies": [{"name": "offsite", "url": f"s3://{bucket}/crmops", "s3": {"endpoint_url": s3}},
                       {"name": "vault", "url": f"s3://{bucket}/vault", "s3": {"endpoint_url": s3}, "key": "own",
                        "encryption": {"passphrase": "${BENCH_VAULT_PASSPHRASE}"}}]}))

        def crmops(*a: str) -> list[str]:
            return [PY, "-m", "crmops", "--config", str(config), "--quiet", *a]

        subprocess.run(crmops("repo", "init"), env=run_env, check=True, stdout=subprocess.DEVNULL)
        src, dest = str(work / "restic"), f"s3:{s3}/{bucket}/restic"
        if restic:
            subprocess.run([restic, "init", "-q", "-r", src], env=run_env, check=True)
            subprocess.run([restic, "init", "-q", "-r", dest, "--from-repo", src, "--copy-chunker-params"],
                           env=run_env, check=True)

        def backups() -> None:
            subprocess.run(crmops("backup"), env=run_env, check=True)
            if restic:
                subprocess.run(f"pg_dump -Fc -Z0 | {restic} backup -q -r {src} --stdin --stdin-filename crm.dump",
                               env={**penv, **run_env}, shell=True, check=True)

        for night in ("first", "nightly"):
            if night == "nightly":
                touch_one_percent(url)
            backups()
            before = _bucket_bytes(client, bucket, "crmops/")
            t, rss = timed(crmops("copy", "--to", "offsite"), env=run_env)
            after = _bucket_bytes(client, bucket, "crmops/")
            sent = after[1] - before[1]
            rows.append((f"crmops copy, {night}", t, rss, f"{after[0] - before[0]} objects, {sent / 1e6:.1f} MB"))
            results.update({f"copy_{night}_s": round(t, 1), f"copy_{night}_mb": round(sent / 1e6, 1),
                            f"copy_{night}_rss_mb": round(rss)})
            before = _bucket_bytes(client, bucket, "vault/")
            ot, orss = timed(crmops("copy", "--to", "vault"), env=run_env)
            after = _bucket_bytes(client, bucket, "vault/")
            osent = after[1] - before[1]
            rows.append((f"crmops copy, key: own (re-encrypted), {night}", ot, orss,
                         f"{after[0] - before[0]} objects, {osent / 1e6:.1f} MB"))
            results.update({f"copy_own_{night}_s": round(ot, 1), f"copy_own_{night}_mb": round(osent / 1e6, 1),
                            f"copy_own_{night}_rss_mb": round(orss), f"copy_own_{night}_vs_shared": round(ot / t, 2)})
            if restic:
                before = _bucket_bytes(client, bucket, "restic/")
                rt, rrss = timed([restic, "-q", "-r", dest, "copy", "--from-repo", src], env=run_env)
                after = _bucket_bytes(client, bucket, "restic/")
                rsent = after[1] - before[1]
                rows.append((f"restic copy, {night}", rt, rrss, f"{after[0] - before[0]} objects, "
                                                               f"{rsent / 1e6:.1f} MB"))
                results.update({f"restic_copy_{night}_s": round(rt, 1),
                                f"restic_copy_{night}_mb": round(rsent / 1e6, 1),
                                f"restic_copy_{night}_rss_mb": round(rrss),
                                f"copy_{night}_vs_restic": round(t / rt, 2)})
        t, _ = timed(crmops("copy"), env=run_env)
        rows.append(("crmops copy, nothing new (one listing each side)", t, None, ""))
        results["copy_nothing_new_s"] = round(t, 1)
        t, _ = timed(crmops("check", "--read-data", "--repository", "offsite"), env=run_env)
        rows.append(("crmops check --read-data --repository offsite", t, None, "every chunk of the copy read"))
        results["check_copy_read_data_s"] = round(t, 1)
        t, _ = timed(crmops("check", "--read-data", "--repository", "vault"), env=run_env)
        rows.append(("crmops check --read-data --repository vault (own key)", t, None, "every chunk read"))
        results["check_copy_own_read_data_s"] = round(t, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for o in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=o["Key"])
        client.delete_bucket(Bucket=bucket)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"copy to S3 (moto on loopback), demo CRM {args.size}, {os.cpu_count()} cores")
    for col in ("what", "seconds", "peak RSS MB", "note"):
        table.add_column(col)
    for what, secs, rss, note in rows:
        table.add_row(what, f"{secs:.1f}", f"{rss:.0f}" if rss else "", note)
    Console().print(table)
    save_results({f"copybench_{k}": v for k, v in results.items()}, args.size)


if __name__ == "__main__":
    main()
