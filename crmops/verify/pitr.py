"""`crmops verify --at T` / `drill --at T`: recover to T in a sandbox and check what can be checked.

There is no fingerprint to compare (see basebackup.py): the proof is that PostgreSQL
replays the archive to T and promotes, that no foreign key has orphan rows, and that
the configured SQL assertions hold. The figures a drill wants come with it: the time
the recovery took (RTO) and how far behind the newest archived WAL is (RPO).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crmops.config import Config
from crmops.errors import VerificationFailed


def checks_on(config: Config, url: str, show_data: bool = False) -> list[dict[str, Any]]:
    from crmops.engines.connect import connect_engine
    from crmops.verify.checks import fk_orphans, run_assertion

    engine = connect_engine(url)
    try:
        out = []
        if config.verify.checks.fk_orphans:
            out.append(fk_orphans(engine, show_data).to_dict())
        with engine.connect() as conn:
            for a in config.verify.assertions:
                out.append(run_assertion(conn, a, show_data).to_dict())
        return out
    finally:
        engine.dispose()


def verify_at(config: Config, target: dict[str, str], *, keep: bool = False, show_data: bool = False,
              say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    from crmops.pitr.restore import restore_at

    result = restore_at(config, target, sandbox=True, keep=keep, say=say,
                        inspect=lambda url: {"checks": checks_on(config, url, show_data)})
    failed = [c for c in result["checks"] if not c["ok"]]
    lag = result.get("archive_lag_seconds")
    result.update(ok=not failed, first_failure=failed[0]["detail"] if failed else None,
                  restore_seconds=result.get("replay_seconds"), rpo_seconds=lag)
    for c in result["checks"]:
        result["lines"].append(("ok   " if c["ok"] else "FAIL ") + c["detail"])
    result["lines"].append(f"recovery time (RTO) {result['seconds']} s; archive lag (RPO) "
                           f"{'unknown' if lag is None else f'{lag:.0f} s'}")
    return result


def raise_if_failed(result: dict[str, Any]) -> None:
    if not result["ok"]:
        raise VerificationFailed(f"point-in-time copy at {result['target']['value']}: {result['first_failure']}")
