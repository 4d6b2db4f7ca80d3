"""One validated configuration object, read from crmops.yaml and CRMOPS_* variables.

Where the file comes from: --config, then $CRMOPS_CONFIG, then ./crmops.yaml; with none
of these the embedded demo default is used (a SQLite demo CRM and a local repository
under ./demo), so `crmops` works on a fresh machine without servers. A file, once there, must
state database.url and repository.url itself: a file cut short never falls back to the demo.

Secrets never need to sit in the file: any string may say ${VAR} and is filled from
the environment, and CRMOPS_SECTION__KEY variables override single keys.

Kept whole (about 620 lines): one model, section by section, that the whole tool reads, and
how it is read (file, ${VAR}s, CRMOPS_* overrides), which every section shares.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import yaml

# crmops uses no pydantic plugins; looking for them scans every installed package's entry
# points on the first model built, a cost every command paid at start-up
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
from pydantic import (  # noqa: E402
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from crmops.errors import ConfigError

ENV_PREFIX = "CRMOPS_"
#: variables with a meaning of their own, never read as key overrides
RESERVED_ENV = {"CRMOPS_CONFIG", "CRMOPS_PASSPHRASE", "CRMOPS_NEW_PASSPHRASE", "CRMOPS_DEBUG", "CRMOPS_ENV_FILE"}
DEFAULT_FILE = "crmops.yaml"
MASK = "********"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, defer_build=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any) -> Any:
        """A section whose keys are all commented out parses as None: treat it as empty."""
        return {} if value is None else value


class DatabaseConfig(_Section):
    url: str = Field("sqlite:///demo/crm.db", description="SQLAlchemy URL of the CRM database")
    #: extra objects to leave out of a restore elsewhere (owners and grants)
    restore_owners: bool = True
    #: 1 streams the restore from the repository into pg_restore: no temporary copy, and on a
    #: 2-core server 12% faster than -j 2 (45.6 s against 51.7 s for the 3.2 GB large demo CRM)
    jobs: int | None = Field(None, ge=1, le=64, description="parallel restore jobs (pg_restore -j, MariaDB "
                             "clients); unset: one per core (up to 4) for a dump up to 1 GiB, else 1")
    #: MariaDB/MySQL: FLUSH TABLES WITH READ LOCK holds every writer of the server, not only this database's,
    #: while it waits for running writes (another database's too) and until the dump's snapshot is open
    hold_writers_seconds: float = Field(30, gt=0, le=3600, description="MariaDB/MySQL: how long a backup may hold "
                                        "the server's writers for its read lock and the dump's snapshot; past it "
                                        "the backup fails and lets them go")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        scheme = v.split(":", 1)[0].split("+", 1)[0]
        if scheme not in {"sqlite", "postgresql", "postgres", "mysql", "mariadb"}:
            raise ValueError("a URL starting sqlite://, postgresql:// or mysql:// (or mariadb://)")
        return v


class AttachmentsConfig(_Section):
    path: Path | None = None
    exclude: list[str] = Field(default_factory=list)


class S3Config(_Section):
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    object_lock_days: int = Field(0, ge=0, description="S3 Object Lock retention for snapshot objects")
    addressing_style: Literal["auto", "path", "virtual"] = "path"
    max_concurrency: int = Field(8, ge=1, le=64)
    timeout_seconds: float = Field(60, gt=0)
    max_attempts: int = Field(8, ge=1, le=50)


def _repository_url(v: str) -> str:
    if not (v.startswith("file://") or v.startswith("s3://")):
        raise ValueError("file:///path or s3://bucket/prefix")
    return v


#: where a repository (or a copy of one) lives
RepositoryUrl = Annotated[str, AfterValidator(_repository_url)]


class RepositoryConfig(_Section):
    url: RepositoryUrl = "file://demo/repo"
    s3: S3Config = Field(default_factory=S3Config)
    compression_level: int = Field(1, ge=1, le=19, description="zstd level; 1 keeps pace with the database")
    chunk_avg_kib: int = Field(1024, ge=64, le=16384)


class EncryptionConfig(_Section):
    passphrase: SecretStr | None = Field(None, description="default: $CRMOPS_PASSPHRASE")
    key_file: Path | None = None

    def resolved_passphrase(self) -> str | None:
        if self.passphrase is not None:
            return self.passphrase.get_secret_value()
        return os.environ.get("CRMOPS_PASSPHRASE")


class RetentionConfig(_Section):
    keep_last: int = Field(7, ge=0)
    keep_hourly: int = Field(0, ge=0)
    keep_daily: int = Field(14, ge=0)
    keep_weekly: int = Field(8, ge=0)
    keep_monthly: int = Field(12, ge=0)
    keep_yearly: int = Field(3, ge=0)
    #: point-in-time recovery: keep base backups (and their WAL) reaching this many days back
    pitr_days: int = Field(7, ge=0)


class CopyEncryption(_Section):
    """A copy's own way in (key: own). No fallback to $CRMOPS_PASSPHRASE: that is the repository's."""

    passphrase: SecretStr | None = None
    key_file: Path | None = None


class CopyConfig(_Section):
    """A second copy of the repository in another place (another bucket, provider or disk).

    The copy is a repository of the same format: every reading command opens it with
    `--repository NAME`. Its credentials and retention are its own.
    """

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", description="what --to/--repository call it")
    url: RepositoryUrl = Field(..., description="file:///path or s3://bucket/prefix")
    s3: S3Config = Field(default_factory=S3Config)
    #: None: the repository's retention
    retention: RetentionConfig | None = None
    #: shared: the same master key, sealed objects copied byte for byte; own: the copy's own keys
    #: (its `encryption`), every object authenticated, then re-encrypted (docs/FORMAT.md, Copies)
    key: Literal["shared", "own"] = "shared"
    #: with key: own, the copy's passphrase or key file (never the repository's)
    encryption: CopyEncryption | None = None

    @model_validator(mode="after")
    def _own_needs_its_key(self) -> CopyConfig:
        enc = self.encryption
        if self.key == "own" and (enc is None or (enc.passphrase is None and enc.key_file is None)):
            raise ValueError(f"copy {self.name}: key: own needs encryption.passphrase or encryption.key_file "
                             "(the copy's own, not the repository's)")
        if self.key == "shared" and enc is not None:
            raise ValueError(f"copy {self.name}: encryption is for key: own; a shared copy opens with the "
                             "repository's passphrase or key file")
        return self


class Assertion(_Section):
    name: str
    sql: str
    #: the single value the query must return
    expect: Any = 0


class FreshnessCheck(_Section):
    table: str
    column: str
    max_age_hours: float = Field(24, gt=0)


class ShrinkCheck(_Section):
    """Tables that should only grow: a snapshot that lost more rows than this since the one before is red."""

    tables: list[str] = Field(..., min_length=1)
    #: the share of a table's rows it may lose between two backups of the same source
    max_percent: float = Field(5, ge=0, le=100)


class VerifyChecks(_Section):
    fk_orphans: bool = True
    #: SQL returning the attachment paths the database references
    attachments_query: str | None = None
    freshness: FreshnessCheck | None = None
    shrink: ShrinkCheck | None = None


class VerifyConfig(_Section):
    images: dict[str, str] = Field(
        default_factory=lambda: {
            "postgresql": "postgres:{major}",
            "mariadb": "mariadb:{version}",
            "mysql": "mysql:{version}",
        },
        description="image per engine; {major} and {version} come from the snapshot's server",
    )
    memory_limit: str = "2g"
    cpus: float = Field(2.0, gt=0)
    ready_timeout_seconds: float = Field(120, gt=0)
    assertions: list[Assertion] = Field(default_factory=list)
    checks: VerifyChecks = Field(default_factory=VerifyChecks)
    signing_key_file: Path | None = Field(None, description="Ed25519 private key (PEM); default: repository key")


class MigrationsConfig(_Section):
    script_location: str | None = Field(None, description="Alembic script folder; default: the demo CRM's")
    lock_timeout_seconds: float = Field(5, gt=0)
    safety_backup: bool = True
    lint: dict[str, Literal["error", "warning", "off"]] = Field(
        default_factory=dict, description="severity per lint rule, e.g. index-not-concurrent: error")
    lint_fail_on: Literal["error", "warning"] = "error"


class WebhookConfig(_Section):
    kind: Literal["generic", "slack", "dingtalk", "wecom"] = "generic"
    url: SecretStr
    #: DingTalk robots with "additional signature" (加签): the SEC... secret
    secret: SecretStr | None = None


class EmailConfig(_Section):
    host: str
    port: int = 25
    sender: str
    to: list[str]
    username: str | None = None
    password: SecretStr | None = None
    starttls: bool = False


class NotifyConfig(_Section):
    on_success: bool = False
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    email: EmailConfig | None = None
    metrics_file: Path | None = Field(None, description="node_exporter textfile collector output")
    pushgateway_url: str | None = None
    timeout_seconds: float = Field(10, gt=0, description="per attempt, for webhooks, SMTP and the Pushgateway")
    attempts: int = Field(3, ge=1, le=10, description="tries per notification (backoff with jitter)")


class StatusConfig(_Section):
    """Thresholds of `crmops status` and the status page."""

    backup_max_age_hours: float = Field(26, gt=0, description="red when the newest snapshot is older")
    verify_max_age_days: float = Field(8, gt=0, description="amber when the last verification is older")
    #: the repository's allowance in bytes (bucket quota, disk); unset: no size verdict
    repository_quota_bytes: int | None = Field(None, gt=0)
    headroom_percent: float = Field(90, gt=0, le=100, description="amber when usage reaches this share of the quota")
    max_archive_lag_seconds: float = Field(900, gt=0, description="red when the newest archived WAL is older")
    max_copy_lag_hours: float = Field(26, gt=0, description="red when a copy's newest snapshot or archive "
                                                            "lags the repository's by more")


class UndoRelation(_Section):
    """A foreign key the schema does not declare (WukongCRM, many PHP CRMs): table.column -> references."""

    table: str
    column: str
    #: "parent_table.column"
    references: str
    #: a polymorphic link (activities.target_id names a customer, a contact or a deal): the
    #: relation holds only for rows whose type_column equals type_value
    type_column: str | None = None
    type_value: str | None = None

    @model_validator(mode="after")
    def _type_both_or_neither(self) -> UndoRelation:
        if (self.type_column is None) != (self.type_value is None):
            raise ValueError("type_column and type_value go together, e.g. type_column: target_type, "
                             "type_value: customer")
        return self

    @field_validator("references")
    @classmethod
    def _table_dot_column(cls, v: str) -> str:
        if v.count(".") != 1 or not all(v.split(".")):
            raise ValueError("table.column, e.g. crm_customer.customer_id")
        return v


class UndoConfig(_Section):
    relations: list[UndoRelation] = Field(default_factory=list)
    #: "table.column" whose values name files under attachments.path; default: the table and first
    #: column of verify.checks.attachments_query when it is a plain SELECT ... FROM table
    attachment_columns: list[str] = Field(default_factory=list)

    @field_validator("attachment_columns")
    @classmethod
    def _each_table_dot_column(cls, v: list[str]) -> list[str]:
        for item in v:
            if item.count(".") != 1 or not all(item.split(".")):
                raise ValueError(f"table.column, e.g. attachments.storage_path (got {item!r})")
        return v


class CheckConfig(_Section):
    """What the scheduled `check --read-data-subset auto` reads."""

    read_data_days: int = Field(30, ge=1, le=366, description="every chunk is read (and a flipped bit found) "
                                                               "within this many daily checks")

    def daily_percent(self) -> float:
        """The share a daily check reads, rounded up so the days cover everything."""
        return math.ceil(10000 / self.read_data_days) / 100


class Config(_Section):
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    attachments: AttachmentsConfig = Field(default_factory=AttachmentsConfig)
    repository: RepositoryConfig = Field(default_factory=RepositoryConfig)
    encryption: EncryptionConfig = Field(default_factory=EncryptionConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    migrations: MigrationsConfig = Field(default_factory=MigrationsConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    status: StatusConfig = Field(default_factory=StatusConfig)
    undo: UndoConfig = Field(default_factory=UndoConfig)
    check: CheckConfig = Field(default_factory=CheckConfig)
    copies: list[CopyConfig] = Field(default_factory=list)
    state_dir: Path = Field(Path("demo/state"), description="journals, locks and run history (outside the database)")

    #: where the configuration came from ("embedded default" when no file)
    source: str = Field("embedded default", exclude=True)
    #: the copy this configuration reads in place of the repository (`--repository NAME`), or None
    reading_copy: str | None = Field(None, exclude=True)

    @field_validator("copies")
    @classmethod
    def _unique_copy_names(cls, v: list[CopyConfig]) -> list[CopyConfig]:
        names = [c.name for c in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"copy names must differ; {', '.join(twice)} is used twice")
        return v

    def copy_named(self, name: str) -> CopyConfig:
        """The configured copy of that name; ConfigError naming the known ones otherwise."""
        for c in self.copies:
            if c.name == name:
                return c
        known = ", ".join(c.name for c in self.copies) or "none configured"
        raise ConfigError(f"no copy named {name!r} (copies: {known})",
                          hint="copies are listed under `copies:` in the configuration")

    def copy_repository(self, name: str) -> RepositoryConfig:
        """The copy seen as a repository: its place and credentials, the repository's format settings."""
        c = self.copy_named(name)
        return RepositoryConfig(url=c.url, s3=c.s3, compression_level=self.repository.compression_level,
                                chunk_avg_kib=self.repository.chunk_avg_kib)

    def for_copy(self, name: str) -> Config:
        """This configuration reading the copy NAME in place of the repository, with the copy's retention.

        Every command that opens "the repository" then works on the copy alone: the primary
        may be gone.
        """
        c = self.copy_named(name)
        other = self.model_copy(deep=True)
        other.repository = self.copy_repository(name)
        other.retention = (c.retention or self.retention).model_copy()
        other.reading_copy = name
        if c.key == "own" and c.encryption is not None:  # the copy opens with its own key, never the primary's
            other.encryption = EncryptionConfig(passphrase=c.encryption.passphrase or SecretStr(""),
                                                key_file=c.encryption.key_file)
        return other

    def secret_values(self) -> list[str]:
        """Every secret this configuration knows, for scrubbing outgoing text (notifications, logs, reports)."""
        found: list[str] = []

        def walk(model: BaseModel) -> None:
            for _name, value in model:
                if isinstance(value, SecretStr):
                    found.append(value.get_secret_value())
                elif isinstance(value, BaseModel):
                    walk(value)
                elif isinstance(value, list):
                    for item in value:
                        if isinstance(item, BaseModel):
                            walk(item)

        walk(self)
        found.append(self.encryption.resolved_passphrase() or "")
        for url in (self.database.url, self.notify.pushgateway_url or ""):
            try:
                password = urlsplit(url).password or ""
            except ValueError:
                password = ""
            found += [password, unquote(password)]
        # longest first, so a secret containing another is replaced whole
        return sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """text with every configured secret replaced by the mask."""
        for secret in self.secret_values():
            text = text.replace(secret, MASK)
        return text

    def masked(self) -> dict[str, Any]:
        """The effective configuration as plain data, every secret replaced by a mask."""
        data = self.model_dump(mode="json")
        _mask_secrets(data, self)
        data["database"]["url"] = mask_url(self.database.url)
        if self.notify.pushgateway_url:
            data["notify"]["pushgateway_url"] = mask_url(self.notify.pushgateway_url)
        return data


def mask_url(url: str) -> str:
    """A URL with its password replaced, safe for logs and reports."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _mask_secrets(data: dict[str, Any], model: BaseModel) -> None:
    for name, value in model:
        if isinstance(value, SecretStr):
            data[name] = MASK
        elif isinstance(value, BaseModel):
            _mask_secrets(data[name], value)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    _mask_secrets(data[name][i], item)


#: with no file at all: the demo CRM under ./demo, attachments and a key file beside it
EMBEDDED_DEFAULT: dict[str, dict[str, Any]] = {
    "attachments": {"path": "demo/attachments"},
    "encryption": {"key_file": "demo/repo.key"},
    "undo": {"attachment_columns": ["attachments.storage_path"]},
}

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: Any, where: str, file: str, environ: dict[str, str],
                 missing: list[tuple[str, str]] | None = None) -> Any:
    """${VAR} filled in; unset ones are collected in missing (then left as written), or raised at once."""
    if isinstance(value, str):
        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            if missing is None:
                raise ConfigError(f"{file}: key {where}: environment variable ${{{name}}} is not set")
            missing.append((where, name))
            return m.group(0)
        return _ENV_REF.sub(repl, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{where}.{k}" if where else str(k), file, environ, missing)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{where}[{i}]", file, environ, missing) for i, v in enumerate(value)]
    return value


def _missing_error(file: str, missing: list[tuple[str, str]]) -> ConfigError:
    """Every unset variable in one line, so a new set-up is not fixed one run at a time."""
    (where, name), rest = missing[0], missing[1:]
    more = "; also " + ", ".join(f"${{{n}}} ({w})" for w, n in rest) if rest else ""
    return ConfigError(f"{file}: key {where}: environment variable ${{{name}}} is not set{more}",
                       hint="export them, or put them in the file named by $CRMOPS_ENV_FILE")


def yaml_problem(e: yaml.YAMLError) -> tuple[str, str]:
    """(" line N" or "", what is wrong) of a YAML error: messages name the file and the line."""
    mark = getattr(e, "problem_mark", None)
    return (f" line {mark.line + 1}" if mark else ""), (getattr(e, "problem", None) or "invalid YAML")


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Line (1-based) of every key and list item of a YAML text, by its path: errors name where to look."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                lines[(*path, str(key.value))] = key.start_mark.line + 1
                walk(value, (*path, str(key.value)))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*path, str(i))] = item.start_mark.line + 1
                walk(item, (*path, str(i)))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


#: what decides what is backed up and where: a configuration file states these itself (or through
#: CRMOPS_* variables), never by falling back to the embedded demo's, which apply with no file at all
STATED_KEYS = (("database", "url"), ("repository", "url"))


def _check_stated(data: dict[str, Any], file: Path, text: str, lines: dict[tuple[str, ...], int],
                  environ: dict[str, str]) -> None:
    """A file cut short still parses: a missing database or repository URL, or a section left null, is an error.

    Under cron a truncated crmops.yaml must stop the job, not back up the demo or into ./demo/repo.
    """
    count = len(text.splitlines())
    for path in STATED_KEYS:
        section, key = path
        variable = f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
        node = data.get(section)
        if section in data and node is None and variable not in environ:
            raise ConfigError(f"{file}: line {lines.get((section,), '?')}: {section}: is empty (null) where its "
                              f"settings are required ({section}.{key} at least); nothing was done",
                              hint=f"the file has {count} lines: was it cut short? `crmops init --path FILE` writes "
                                   f"a complete example")
        if section in data and not isinstance(node, dict):
            continue  # a wrong type: validation names it with its line
        if (node or {}).get(key) is None and variable not in environ:
            where = (f"line {lines[(section,)]}: {section}: has no {key}" if (section,) in lines
                     else f"no {section}: section")
            raise ConfigError(f"{file}: {where}; a configuration file must state {section}.{key} itself (the "
                              f"demo's default applies only with no file at all); nothing was done",
                              hint=f"the file has {count} lines: was it cut short? Set {section}.{key} (or "
                                   f"{variable}); `crmops init --path FILE` writes a complete example")


def expand_env(value: str, where: str, environ: dict[str, str] | None = None) -> str:
    """${VAR} / ${VAR:-default} filled from the environment, as in the file (e.g. a URL option)."""
    return _interpolate(value, where, "command line", dict(os.environ if environ is None else environ))


def _env_overrides(data: dict[str, Any], environ: dict[str, str]) -> dict[tuple[str, ...], str]:
    """Apply CRMOPS_SECTION__KEY=value (YAML-parsed, so numbers and lists work); returns key path -> variable."""
    applied: dict[tuple[str, ...], str] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        node: Any = data
        for part in path[:-1]:
            if isinstance(node, list):  # copies: CRMOPS_COPIES__OFFSITE__S3__SECRET_ACCESS_KEY names one by name
                named = [item for item in node if isinstance(item, dict) and str(item.get("name")) == part]
                if not named:
                    raise ConfigError(f"{name}: no entry named {part!r} to set {'.'.join(path)} in")
                node = named[0]
                continue
            if node.get(part) is None:  # a section whose keys are all commented out (or cut off) is empty
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict | list):
                raise ConfigError(f"{name}: {'.'.join(path)} cannot be set; its parent is not a section")
        if isinstance(node, list):
            raise ConfigError(f"{name}: {'.'.join(path)} cannot be set; name an entry and its key")
        try:
            node[path[-1]] = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            node[path[-1]] = raw
        applied[tuple(path)] = name
    return applied


def _resolve_paths(cfg: Config, base: Path) -> None:
    """Relative paths in a file are relative to the file, as administrators expect."""
    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p)

    # assigned only when a path changes: an assignment validates, and a section's first validation
    # builds its pydantic validator (a few ms each, for every command)
    for section, name in ((cfg.attachments, "path"), (cfg.encryption, "key_file"), (cfg.verify, "signing_key_file"),
                          (cfg.notify, "metrics_file"), (cfg, "state_dir")):
        old = getattr(section, name)
        new = fix(old)
        if new is not None and new is not old:
            setattr(section, name, new)
    if cfg.migrations.script_location and not Path(cfg.migrations.script_location).is_absolute():
        cfg.migrations.script_location = str(base / cfg.migrations.script_location)
    url = cfg.database.url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        cfg.database.url = "sqlite:///" + str(base / url[len("sqlite:///"):])
    if cfg.repository.url.startswith("file://"):
        rest = cfg.repository.url[len("file://"):]
        if not rest.startswith("/"):
            cfg.repository.url = "file://" + str(base / rest)
    for copy in cfg.copies:
        if copy.encryption is not None:
            copy.encryption.key_file = fix(copy.encryption.key_file)
        rest = copy.url[len("file://"):]
        if copy.url.startswith("file://") and not rest.startswith("/"):
            copy.url = "file://" + str(base / rest)


def _format_validation(err: ValidationError, file: str, from_env: dict[tuple[str, ...], str] | None = None,
                       lines: dict[tuple[str, ...], int] | None = None) -> str:
    """The first mistake, blamed on where it was written: the file and line, or the CRMOPS_* variable that set it."""
    first = err.errors()[0]
    loc = tuple(str(p) for p in first["loc"])
    # the line of the key itself, else of the nearest enclosing key (a missing key is named by its section)
    line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in (lines or {})), None)
    if line is not None:
        file = f"{file}: line {line}"
    key = ".".join(loc) or "(top level)"
    variable = next((v for path, v in (from_env or {}).items() if path[:len(loc)] == loc and loc), None)
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = ("unknown key (check the variable's name: CRMOPS_SECTION__KEY, e.g. CRMOPS_DATABASE__URL)"
               if variable else "unknown key (check the spelling; `crmops init` writes a commented example)")
    elif "input" in first and not isinstance(first["input"], dict | list) and "secret" not in key:
        msg = f"{msg}, got {first['input']!r}"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    if variable:
        return f"environment variable {variable}: key {key}: {msg}{more}"
    return f"{file}: key {key}: {msg}{more}"


ENV_FILE_VAR = "CRMOPS_ENV_FILE"


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (comments, `export`, quotes).

    Scheduled runs get their secrets from this file, so a value with spaces must not
    depend on a shell's quoting rules.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the environment file ({e.strerror})",
                          hint="it holds the secrets of scheduled runs; check its owner and mode") from None
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        line = line.removeprefix("export ").lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(f"{path}: line {number} is not NAME=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[name] = value
    return out


def apply_env_file(environ: MutableMapping[str, str] | None = None) -> None:
    """Fill the environment from $CRMOPS_ENV_FILE, if set and present; variables already set win."""
    environ = os.environ if environ is None else environ
    name = environ.get(ENV_FILE_VAR)
    if not name or not Path(name).exists():
        return
    for key, value in read_env_file(Path(name)).items():
        environ.setdefault(key, value)


def find_config_file(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise ConfigError(f"{p}: configuration file not found", hint="check --config or CRMOPS_CONFIG")
        return p
    env = os.environ.get("CRMOPS_CONFIG")
    if env:
        p = Path(env)
        if not p.is_file():
            raise ConfigError(f"{p}: configuration file named by CRMOPS_CONFIG not found")
        return p
    p = Path(DEFAULT_FILE)
    return p if p.is_file() else None


def load_config(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None,
                early: Callable[[dict[str, Any], Path, dict[str, str]], Any] | None = None) -> Config:
    """Read, interpolate, override and validate; every failure is one ConfigError line.

    early(data, folder, environ) sees the settings before validation (the command line starts
    the key derivation there, crmops.kdf); it must not change them."""
    environ = dict(os.environ if environ is None else environ)
    file = find_config_file(path)
    label = str(file) if file else "embedded default"
    data: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    if file is None:
        data = {k: dict(v) for k, v in EMBEDDED_DEFAULT.items()}
    else:
        try:
            text = file.read_text(encoding="utf-8")
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            where, problem = yaml_problem(e)
            raise ConfigError(f"{file}:{where}: {problem}") from None
        except OSError as e:
            raise ConfigError(f"{file}: cannot read: {e.strerror}") from None
        if not loaded:  # under cron a truncated file must fail, never back up the demo instead
            raise ConfigError(f"{file}: the file is empty (no settings in it); nothing was done",
                              hint="an empty file is never the demo configuration: restore the file, or write "
                                   "a commented one with `crmops init`")
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: expected a mapping of sections at the top level")
        lines = key_lines(text)
        missing: list[tuple[str, str]] = []
        data = _interpolate(loaded, "", label, environ, missing)
        if missing:
            raise _missing_error(label, missing)
    from_env = _env_overrides(data, environ)
    if early is not None:
        early(data, (file.parent if file else Path.cwd()).resolve(), environ)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, label, from_env, lines)) from None
    if file is not None:  # after validation: a misspelt key is named as such, not as a missing one
        _check_stated(loaded, file, text, lines, environ)
    cfg.source = label
    _resolve_paths(cfg, (file.parent if file else Path.cwd()).resolve())
    return cfg
