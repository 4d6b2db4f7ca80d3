"""The playbook model: versions, window, variables, ordered stages of steps and rollback steps.

Each step type is a pydantic model naming its parameters and the outputs later steps
may reference (``{{ steps.<id>.<output> }}``), so the whole playbook, templates
included, is checked before anything runs.
"""

from __future__ import annotations

import re
from datetime import time as dtime
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ID = r"^[A-Za-z_][A-Za-z0-9_-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Step(_Strict):
    """What every step has: an id to reference it by, a timeout, retries and an expected duration."""

    #: outputs other steps may reference as {{ steps.<id>.<name> }}
    OUTPUTS: ClassVar[tuple[str, ...]] = ()
    #: steps the dry run executes for real in the sandbox
    REHEARSED: ClassVar[bool] = False

    type: str
    id: str | None = Field(None, pattern=_ID)
    name: str | None = None
    timeout: float = Field(600, gt=0, description="seconds before the step is cancelled and counts as failed")
    retries: int = Field(0, ge=0, le=100)
    retry_delay: float = Field(2, ge=0)
    expected_seconds: float | None = Field(None, ge=0, description="for the dry run's plan where not measured")

    def describe(self) -> str:
        return self.name or self.type


class PreflightStep(Step):
    OUTPUTS = ("value", "detail")
    REHEARSED = True  # run against production, read-only
    type: Literal["preflight"]
    check: Literal["db_reachable", "disk_free", "snapshot_fresh", "schema_revision", "no_other_upgrade"]
    path: str | None = Field(None, description="disk_free: folder to check (default: the state directory)")
    min_free_gb: float | None = Field(None, ge=0, description="disk_free: at least this much")
    restore_factor: float = Field(2.0, gt=0, description="disk_free: free >= factor x latest snapshot size")
    max_age_hours: float = Field(24, gt=0, description="snapshot_fresh: newest snapshot at most this old")
    require_verified: bool = Field(True, description="snapshot_fresh: and its latest verification passed")
    expect: str | None = Field(None, description="schema_revision: the revision the database must be at")

    @model_validator(mode="after")
    def _needs(self) -> PreflightStep:
        if self.check == "schema_revision" and not self.expect:
            raise ValueError("check schema_revision needs expect: <revision>")
        return self


class BackupStep(Step):
    OUTPUTS = ("snapshot_id", "seconds")
    type: Literal["backup"]
    tags: list[str] = Field(default_factory=lambda: ["pre-upgrade"])


class VerifyStep(Step):
    OUTPUTS = ("snapshot_id", "ok")
    type: Literal["verify"]
    snapshot: str = "latest"


class MigrateStep(Step):
    OUTPUTS = ("from", "to", "seconds", "safety_snapshot", "revisions")
    REHEARSED = True
    type: Literal["migrate"]
    to: str
    safety_backup: bool = Field(False, description="the playbook's own backup step usually covers this")


class SqlStep(Step):
    OUTPUTS = ("value", "rowcount")
    REHEARSED = True
    type: Literal["sql"]
    sql: str
    expect: Any = Field(None, description="an assertion: the first column of the first row must equal this")
    timeout: float = Field(300, gt=0)


class ShellStep(Step):
    OUTPUTS = ("exit_code", "stdout")
    type: Literal["shell"]
    command: str | list[str]
    env: dict[str, str] = Field(default_factory=dict)
    expect_exit: int = 0
    cwd: str | None = None
    timeout: float = Field(300, gt=0)


class HttpStep(Step):
    OUTPUTS = ("status", "body")
    type: Literal["http"]
    url: str
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    expect_status: int | list[int] = 200
    expect_body: str | None = Field(None, description="text the response body must contain")
    timeout: float = Field(10, gt=0)

    def statuses(self) -> list[int]:
        return [self.expect_status] if isinstance(self.expect_status, int) else list(self.expect_status)


class DockerStep(Step):
    OUTPUTS = ("previous_image", "image", "container")
    type: Literal["docker"]
    container: str
    image: str
    stop_timeout: int = Field(10, ge=0, le=600)
    timeout: float = Field(120, gt=0)
    restart: bool = Field(False, description="restart the container even when it already runs image: an app "
                          "that loads its schema at start (Tryton) must restart after its own migration")


class AppCommandStep(Step):
    """A command inside the application's container (docker exec): the CRM's own upgrade tool.

    Django's `manage.py migrate`, `collectstatic` and `showmigrations`, Tryton's `trytond-admin`:
    not Alembic, so crmops sees their effect only through what they print and the database.
    """

    OUTPUTS = ("exit_code", "stdout", "seconds")
    type: Literal["app_command"]
    container: str
    command: str | list[str]
    env: dict[str, str] = Field(default_factory=dict, description="more environment; ${VAR} from crmops's")
    user: str | None = None
    workdir: str | None = None
    expect_exit: int = 0
    timeout: float = Field(1800, gt=0)


class PauseStep(Step):
    OUTPUTS = ()
    type: Literal["pause"]
    message: str = "continue?"


class MaintenanceStep(Step):
    OUTPUTS = ("mode",)
    type: Literal["maintenance"]
    mode: Literal["on", "off"]
    shell: dict[str, Any] | None = Field(None, description="a shell step's fields (command, env, expect_exit…)")
    http: dict[str, Any] | None = Field(None, description="an http step's fields (url, method, expect_status…)")

    @model_validator(mode="after")
    def _one_way(self) -> MaintenanceStep:
        if (self.shell is None) == (self.http is None):
            raise ValueError("maintenance needs exactly one of shell: or http:")
        inner = ShellStep if self.shell is not None else HttpStep
        inner.model_validate({"type": inner.model_fields["type"].annotation.__args__[0],  # type: ignore[union-attr]
                              **(self.shell or self.http or {})})
        return self

    def inner(self, rendered: dict[str, Any]) -> ShellStep | HttpStep:
        """The shell or http step that switches maintenance mode, built from already rendered fields."""
        if self.shell is not None:
            return ShellStep.model_validate({"type": "shell", "timeout": self.timeout, **rendered})
        return HttpStep.model_validate({"type": "http", **rendered})


class RestoreStep(Step):
    OUTPUTS = ("snapshot_id", "safety_snapshot", "seconds")
    type: Literal["restore"]
    snapshot: str
    timeout: float = Field(3600, gt=0)


class EngineUpgradeStep(Step):
    """A database server major upgrade (crmops.engine_upgrade.logical).

    logical: the old server is only read. pg_upgrade: the old server is stopped and upgraded
    where its data directory is; `action: rollback` (the engine stage's rollback step) brings
    it back as it was, or refuses where link mode makes that unsafe.
    """

    OUTPUTS = ("seconds", "source_version", "target_version", "tables", "differences", "incompatibilities",
               "smoke", "tool", "mode", "check_seconds", "upgrade_seconds", "undone")
    REHEARSED = True  # in a sandbox of the target version (logical) or of both versions (pg_upgrade)
    type: Literal["engine_upgrade"]
    method: Literal["logical", "pg_upgrade"] = Field("logical", description="logical: dump, restore into the new "
                                                     "server, compare; pg_upgrade: PostgreSQL's in-place upgrade")
    action: Literal["upgrade", "rollback"] = Field("upgrade", description="rollback: undo a pg_upgrade")
    target_version: str = Field(description="the new server's release: 17, 11.8")
    target_url: str | None = Field(None, description="the database on the new server; ${VAR} for its password "
                                   "(pg_upgrade: default the configured database URL)")
    smoke_sql: list[dict[str, Any]] = Field(default_factory=list, description="[{sql, expect}] on the new copy")
    mode: Literal["link", "clone", "copy"] = Field("link", description="pg_upgrade's file transfer")
    old_datadir: str | None = None
    new_datadir: str | None = Field(None, description="pg_upgrade: absent or empty; crmops runs initdb there")
    old_bindir: str | None = None
    new_bindir: str | None = None
    exec_prefix: list[str] = Field(default_factory=list, description="argv prefix reaching the data directories "
                                   "as their owner: [sudo, -u, postgres] or [docker, exec, -u, postgres, NAME]")
    stop_old: list[str] | None = None
    start_old: list[str] | None = None
    start_new: list[str] | None = None
    stop_new: list[str] | None = Field(None, description="default: the new bindir's pg_ctl stop via exec_prefix")
    copy_config: list[str] = Field(default_factory=lambda: ["pg_hba.conf", "pg_ident.conf"],
                                   description="files copied from the old data directory into the new one")
    socket_dir: str = Field("/tmp", description="pg_upgrade's working and socket directory")
    image: str | None = Field(None, description="pg_upgrade dry run: the image with both versions "
                              "(default crmops-pg-upgrade:OLD-NEW)")
    timeout: float = Field(7200, gt=0)

    @field_validator("target_version", mode="before")
    @classmethod
    def _version_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) else v

    @model_validator(mode="after")
    def _method_needs(self) -> EngineUpgradeStep:
        if self.method == "logical":
            if self.action == "rollback":
                raise ValueError("method logical has nothing to roll back: the old server is only read")
            if not self.target_url:
                raise ValueError("method logical needs target_url")
            return self
        missing = [k for k in ("old_datadir", "new_datadir", "old_bindir", "new_bindir", "stop_old", "start_old",
                               "start_new") if not getattr(self, k)]
        if missing:
            raise ValueError(f"method pg_upgrade needs {', '.join(missing)}")
        return self


AnyStep = Annotated[
    PreflightStep | BackupStep | VerifyStep | MigrateStep | SqlStep | ShellStep | HttpStep | DockerStep
    | AppCommandStep | PauseStep | MaintenanceStep | RestoreStep | EngineUpgradeStep,
    Field(discriminator="type"),
]
STEP_TYPES: dict[str, type[Step]] = {
    cls.model_fields["type"].annotation.__args__[0]: cls  # type: ignore[union-attr]
    for cls in (PreflightStep, BackupStep, VerifyStep, MigrateStep, SqlStep, ShellStep, HttpStep, DockerStep,
                AppCommandStep, PauseStep, MaintenanceStep, RestoreStep, EngineUpgradeStep)
}
SMOKE_TYPES = ("sql", "http")


class Window(_Strict):
    """When the real upgrade may run: days, a local start and end (end before start spans midnight)."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(default_factory=lambda: list(DAYS))
    start: str = "00:00"
    end: str = "24:00"
    timezone: str = "UTC"

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, v: str) -> str:
        if v != "24:00" and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", str(v)):
            raise ValueError(f"a time of day as HH:MM, got {v!r}")
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (e.g. Europe/Berlin, Asia/Shanghai, UTC)") from None
        return v

    def clock(self, which: str) -> dtime | None:
        text = self.start if which == "start" else self.end
        return None if text == "24:00" else dtime.fromisoformat(text)


class Stage(_Strict):
    name: str = Field(pattern=_ID)
    description: str | None = None
    steps: list[AnyStep] = Field(min_length=1)
    rollback: list[AnyStep] = Field(default_factory=list)
    #: the CRM version reached when this stage completes: a checkpoint snapshot is taken there
    checkpoint: str | None = None


class PostChecks(_Strict):
    drift: bool = Field(True, description="the schema must match the target revision exactly")
    row_counts: bool = Field(True, description="per-table row changes must match the rehearsal's")
    row_tolerance_percent: float = Field(5, ge=0)
    row_tolerance_rows: int = Field(10, ge=0)


class Rehearsal(_Strict):
    """How the dry run starts a throwaway copy of the CRM next to the sandbox database.

    Default: a copy of the container the playbook's first docker step swaps. A CRM run another
    way (systemd, a package) names an image of its current version instead; skip says why no
    copy can be started, and every step that needs one stays "not rehearsed" with that reason.
    """

    container: str | None = Field(None, description="the production container to copy (default: the first "
                                  "docker step's)")
    image: str | None = Field(None, description="start this image as the copy (a CRM not run in Docker)")
    port: int | None = Field(None, ge=1, le=65535, description="the port the CRM listens on inside the copy "
                             "(default: the first exposed port, else 8080)")
    app_url: str | None = Field(None, description="production's base URL the steps use; requests to it go to "
                                "the copy (default: the copied container's published ports on this host)")
    env: dict[str, str] = Field(default_factory=dict, description="more environment for the copy; ${VAR} is "
                                "read from crmops's environment")
    database_env: dict[str, Literal["url", "host", "port", "database", "user", "password"]] = Field(
        default_factory=dict, description="environment variables that get the sandbox database's settings")
    to_image: str | None = Field(None, description="image of the target version, for playbooks that install it "
                                 "by shell: the copy runs it after the stage swap_after")
    swap_after: str | None = Field(None, description="the stage after which the copy is swapped to to_image")
    skip: str | None = Field(None, description="start no copy; the reason each step that needs one shows")

    @model_validator(mode="after")
    def _consistent(self) -> Rehearsal:
        if self.container and self.image:
            raise ValueError("rehearsal: give container or image, not both")
        if bool(self.to_image) != bool(self.swap_after):
            raise ValueError("rehearsal: to_image and swap_after go together")
        return self


class Playbook(_Strict):
    name: str
    description: str | None = None
    from_version: str
    to_version: str
    window: Window | None = None
    vars: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    stages: list[Stage] = Field(min_length=1)
    smoke_tests: list[AnyStep] = Field(default_factory=list)
    post_checks: PostChecks = Field(default_factory=PostChecks)
    #: after a failure past a checkpoint: undo everything, or only back to the last good hop
    on_failure: Literal["rollback_to_start", "rollback_to_checkpoint"] = "rollback_to_start"
    #: how the dry run starts its throwaway copy of the CRM (default: a copy of the docker step's container)
    rehearsal: Rehearsal | None = None

    #: set by the loader: where it came from and a digest of its text
    source: str = Field("", exclude=True)
    digest: str = Field("", exclude=True)

    @model_validator(mode="after")
    def _swap_stage(self) -> Playbook:
        after = self.rehearsal.swap_after if self.rehearsal else None
        if after and after not in [s.name for s in self.stages]:
            raise ValueError(f"rehearsal: swap_after names no stage ({after!r})")
        return self

    @field_validator("from_version", "to_version", mode="before")
    @classmethod
    def _version_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) else v

    def all_steps(self) -> list[tuple[Stage | None, str, Step]]:
        """(stage, phase, step) in document order; phase is run, rollback or smoke."""
        out: list[tuple[Stage | None, str, Step]] = []
        for stage in self.stages:
            out += [(stage, "run", s) for s in stage.steps]
            out += [(stage, "rollback", s) for s in stage.rollback]
        out += [(None, "smoke", s) for s in self.smoke_tests]
        return out

    def migrate_target(self) -> str | None:
        """The revision the last migrate step goes to (may still hold a template)."""
        targets = [s.to for st in self.stages for s in st.steps if isinstance(s, MigrateStep)]
        return targets[-1] if targets else None
