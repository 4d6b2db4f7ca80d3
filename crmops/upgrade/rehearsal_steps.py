"""What each step does in the dry run, and, for a step that is not rehearsed, why.

The dry run acts only on throwaway things: the sandbox database, the rehearsal stack's copy
of the application (crmops.upgrade.stack) and a scratch repository the backup
and restore steps write to and read from. Requests to production's app address go to the
copy; a docker step swaps the copy's image; a maintenance command and an app_command (the
CRM's own migration tool) run inside the copy,
where every file it touches is the copy's own. What can only act on production (a shell
command on this host, a person at a pause) stays "not rehearsed", with the reason.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crmops.config import Config
from crmops.playbooks.actions import run_http
from crmops.playbooks.appexec import run_in
from crmops.playbooks.dockerswap import swap_image
from crmops.playbooks.model import Step
from crmops.playbooks.steps import Executor, StepContext, StepResult, expand_env, tail
from crmops.playbooks.template import Pending
from crmops.repository import Credential, Repository, write_key_file
from crmops.upgrade.stack import RehearsalStack

#: steps that by their nature act on production only
BY_NATURE = {
    "shell": "runs a command on this host, which is production's: not run",
    "pause": "waits for a person: not asked",
    "verify": "verifies a snapshot of production's repository in a sandbox of its own: not run (the rehearsal's "
              "restore, compared with the snapshot's fingerprint, proves the snapshot)",
}


@dataclass
class Place:
    """Where the rehearsal acts: the sandbox database, the copy of the app (or why there is none), a scratch repo."""

    config: Config
    sandbox_url: str
    stack: RehearsalStack | None
    no_stack: str | None
    scratch: Repository
    copied_container: str | None = None


@contextmanager
def scratch_repository(config: Config) -> Iterator[Repository]:
    """A throwaway repository beside the state directory: the rehearsal's own pre-upgrade snapshots go there."""
    from crmops.storage import open_store

    base = Path(config.state_dir) / "rehearsals"
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="scratch-", dir=base) as folder:
        key = Path(folder) / "key"
        write_key_file(key)
        store = open_store(f"file://{os.path.join(folder, 'repo')}", config.repository)
        yield Repository.init(store, Credential(key_file=key), chunk_avg=config.repository.chunk_avg_kib * 1024,
                              compression_level=config.repository.compression_level, label="rehearsal")


def rehearsal_config(config: Config, sandbox_url: str) -> Config:
    """The configuration the backup and restore steps see in the dry run: the sandbox, no attachments."""
    return config.model_copy(update={
        "database": config.database.model_copy(update={"url": sandbox_url, "restore_owners": False}),
        "attachments": config.attachments.model_copy(update={"path": None})})


def why_not(step: Step, params: dict[str, Any], place: Place) -> str | None:
    """None if the step can be rehearsed in place; otherwise the reason it is not."""
    kind = step.type
    if kind in BY_NATURE:
        return BY_NATURE[kind]
    if kind in ("migrate", "sql", "preflight", "backup", "restore", "engine_upgrade"):
        if kind == "restore" and isinstance(params.get("snapshot"), Pending):
            return f"restores {params['snapshot']}, which the rehearsal did not produce"
        return None
    if place.stack is None:
        return f"needs a copy of the app, and there is none: {place.no_stack}"
    if kind == "http":
        return _url_reason(str(params["url"]), place.stack)
    if kind == "maintenance":
        if params.get("http"):
            return _url_reason(str(params["http"].get("url", "")), place.stack)
        if not place.stack.has_shell:
            return "the app's image has no sh to run the maintenance command in"
        return None
    if kind == "app_command":
        if place.copied_container is not None and params["container"] != place.copied_container:
            return f"runs in container {params['container']!r}; the rehearsal copies {place.copied_container!r}"
        return None
    if kind == "docker":
        if place.copied_container is None:
            return "the rehearsal copy was started from an image, not from a container this step swaps"
        if params["container"] != place.copied_container:
            return f"swaps container {params['container']!r}; the rehearsal copies {place.copied_container!r}"
        return None
    return "not run"


def _url_reason(url: str, stack: RehearsalStack) -> str | None:
    if stack.map_url(url) is not None:
        return None
    return (f"sent to {url.split('/')[2] if '://' in url else url}, not to the app the rehearsal copies "
            f"({', '.join(stack.prod_prefixes)}); set rehearsal.app_url if it is the same app")


def executors(place: Place, base: dict[str, Executor]) -> dict[str, Executor]:
    """The executors of steps why_not lets through, each acting on the sandbox, the copy or the scratch repo."""
    rconfig = rehearsal_config(place.config, place.sandbox_url)
    stack = place.stack

    def http(step: Step, params: dict[str, Any], ctx: StepContext) -> StepResult:
        assert stack is not None
        mapped = stack.map_url(str(params["url"]))
        res = run_http(step, {**params, "url": mapped}, ctx)
        res.summary = f"{res.summary} from the copy ({mapped})"
        return res

    def maintenance(step: Step, params: dict[str, Any], ctx: StepContext) -> StepResult:
        assert stack is not None
        if params.get("http"):
            inner = {"timeout": params.get("timeout"), **params["http"]}
            res = run_http(step, {**inner, "url": stack.map_url(str(inner["url"]))}, ctx)
        else:
            inner = params["shell"]
            env = {k: expand_env(str(v)) for k, v in (inner.get("env") or {}).items()}
            env["CRMOPS_RUN_ID"] = ctx.run_id
            code, out = stack.exec_shell(inner["command"], env, float(params.get("timeout") or 300))
            want = int(inner.get("expect_exit", 0))
            res = StepResult(code == want, {}, f"exit {code} in the copy",
                             None if code == want else f"exit code {code} in the rehearsal copy, expected {want}; "
                             f"last output: {tail(out, 2) or '(none)'}")
        res.outputs = {"mode": params["mode"]}
        res.summary = f"maintenance {params['mode']}: {res.summary}"
        return res

    def docker(step: Step, params: dict[str, Any], ctx: StepContext) -> StepResult:
        assert stack is not None
        previous, new_id = swap_image(stack.name, str(params["image"]), stop_timeout=int(params["stop_timeout"]),
                                      client=stack.client, restart=bool(params.get("restart")))
        return StepResult(True, {"previous_image": previous, "image": params["image"], "container": new_id[:12]},
                          f"the copy: {previous} -> {params['image']}")

    def app_command(step: Step, params: dict[str, Any], ctx: StepContext) -> StepResult:
        assert stack is not None
        return run_in(stack.client, stack.name, step, params, ctx, " in the copy")

    def backup(step: Step, params: dict[str, Any], ctx: StepContext) -> StepResult:
        from crmops.services.backup import backup as take

        res = take(rconfig, tags=[*params["tags"], f"upgrade:{ctx.run_id}"], url=place.sandbox_url,
                   repo=place.scratch)
        return StepResult(True, {"snapshot_id": res.snapshot_id, "seconds": res.duration_s},
                          f"snapshot {res.snapshot_id[:10]} of the sandbox in the scratch repository "
                          f"({res.bytes_read / 1e6:.1f} MB read, {res.duration_s:.1f}s)")

    def restore(step: Step, params: dict[str, Any], ctx: StepContext) -> StepResult:
        from crmops.services.restore import restore as put_back

        res = put_back(rconfig, str(params["snapshot"]), to_url=place.sandbox_url, force=True, repo=place.scratch)
        return StepResult(True, {"snapshot_id": res.snapshot_id, "safety_snapshot": res.safety_snapshot,
                                 "seconds": res.seconds},
                          f"snapshot {res.snapshot_id[:10]} restored into the sandbox in {res.seconds:.1f}s")

    return {**base, "http": http, "maintenance": maintenance, "docker": docker, "app_command": app_command,
            "backup": backup,
            "restore": restore}
