"""The migration scripts: an Alembic script folder, its revisions, paths and checksums.

The folder is the user's own (migrations.script_location) or, by default, the demo
CRM's. crmops needs from its env.py only what Alembic's cookbook recommends: use
``config.attributes["connection"]`` when given, so crmops chooses the transaction,
the lock timeout and the session every statement runs in.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from alembic.config import Config as AlembicConfig
from alembic.script import Script, ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Connection

from crmops.dburl import parse
from crmops.errors import ConfigError, MigrationRefused

#: names a user may give instead of a revision id
BASE = "base"
HEAD = "head"


@dataclass(frozen=True)
class Step:
    """One revision to apply (up) or revert (down), and the revision the database is at afterwards."""

    revision: str
    message: str
    path: Path
    direction: str  # "up" | "down"
    after: str | None

    @property
    def function(self) -> str:
        """The script function this step runs."""
        return "upgrade" if self.direction == "up" else "downgrade"

    def to_dict(self) -> dict[str, str | None]:
        return {"revision": self.revision, "message": self.message, "direction": self.direction,
                "after": self.after}


class Scripts:
    """An Alembic script folder, resolved once; every error is one ConfigError line."""

    def __init__(self, location: str | Path | None = None) -> None:
        from crmops.democrm import SCRIPT_LOCATION, VERSIONS

        self.location = str(location or SCRIPT_LOCATION)
        self.is_demo = Path(self.location).resolve() == Path(SCRIPT_LOCATION).resolve()
        #: release names ("2.0") accepted as targets; only the demo CRM ships them
        self.aliases: dict[str, str] = dict(VERSIONS) if self.is_demo else {}
        if not (Path(self.location) / "env.py").is_file():
            raise ConfigError(f"{self.location}: not an Alembic script folder (no env.py)",
                              hint="set migrations.script_location to the folder holding env.py and versions/")
        try:
            self.directory = ScriptDirectory(self.location)
            self.directory.revision_map.heads  # noqa: B018 - loads every script now, so errors surface here
        except CommandError as e:
            raise ConfigError(f"{self.location}: {e}") from None
        except SyntaxError as e:
            raise ConfigError(f"{e.filename}:{e.lineno}: migration script does not parse: {e.msg}") from None

    # --- Alembic configuration -------------------------------------------------

    def alembic_config(self, url: str, *, connection: Connection | None = None,
                       output: io.StringIO | None = None) -> AlembicConfig:
        """An Alembic config for url; the password stays in memory, never in a file or log line."""
        # Alembic prints some results (e.g. `current`) straight to stdout; keep them out of --json output
        cfg = AlembicConfig(output_buffer=output, stdout=output or io.StringIO())
        cfg.set_main_option("script_location", self.location)
        u = parse(url)
        # env.py files written for `alembic` read sqlalchemy.url; '%' must be escaped for configparser
        cfg.set_main_option("sqlalchemy.url", u.render_as_string(hide_password=False).replace("%", "%%"))
        cfg.attributes["url"] = u.to_sqlalchemy()  # env.py files written for Alembic expect its URL
        if connection is not None:
            cfg.attributes["connection"] = connection
        return cfg

    # --- revisions ---------------------------------------------------------------

    def heads(self) -> list[str]:
        return sorted(self.directory.get_heads())

    def script(self, revision: str) -> Script:
        try:
            script = self.directory.get_revision(revision)
        except CommandError:
            script = None
        if script is None:
            raise ConfigError(f"revision {revision!r} is not in {self.location}",
                              hint="`crmops migrate status` lists the known revisions")
        return script

    def knows(self, revision: str) -> bool:
        try:
            return self.directory.get_revision(revision) is not None
        except CommandError:
            return False

    def single_head(self) -> str | None:
        """The one head; several heads are an error with its fix (they would be applied in no set order)."""
        heads = self.heads()
        if len(heads) > 1:
            raise MigrationRefused(
                f"the migration scripts have {len(heads)} heads ({', '.join(heads)}); the order between "
                "them is undefined",
                hint=f"merge them into one: alembic -c <your alembic.ini> merge -m 'merge heads' {' '.join(heads)}")
        return heads[0] if heads else None

    def resolve(self, target: str) -> str | None:
        """A revision id from what a user typed: an id, a unique prefix, head, base or a release name."""
        name = target.strip()
        if name == BASE:
            return None
        if name in (HEAD, "heads"):
            return self.single_head()
        name = self.aliases.get(name, name)
        return self.script(name).revision

    def steps(self, current: str | None, target: str | None) -> list[Step]:
        """The ordered revisions between current and target: up if target descends from current, else down."""
        if current == target:
            return []
        if current is not None and not self.knows(current):
            raise MigrationRefused(f"the database is at revision {current}, which {self.location} does not hold",
                                   hint="point migrations.script_location at the scripts that migrated it")
        if target is None or (current is not None and self._descends(current, target)):
            chain = list(self.directory.iterate_revisions(current, target))  # current .. just above target
            steps = []
            for i, script in enumerate(chain):
                after = chain[i + 1].revision if i + 1 < len(chain) else target
                steps.append(Step(script.revision, _message(script), Path(script.path), "down", after))
            return steps
        if current is not None and not self._descends(target, current):
            raise MigrationRefused(f"revision {target} is on another branch than the database's {current}",
                                   hint="migrate down to their common ancestor first")
        chain = list(reversed(list(self.directory.iterate_revisions(target, current))))
        return [Step(s.revision, _message(s), Path(s.path), "up", s.revision) for s in chain]

    def _descends(self, upper: str, lower: str) -> bool:
        """True if lower is an ancestor of upper (upper can be reached by upgrading from lower)."""
        return any(s.revision == lower for s in self.directory.iterate_revisions(upper, None))

    def ancestors(self, revision: str | None) -> list[str]:
        """revision and every revision below it, oldest first (what a database at revision has applied)."""
        if revision is None:
            return []
        return [s.revision for s in reversed(list(self.directory.iterate_revisions(revision, None)))]

    def all_revisions(self) -> list[str]:
        """Every revision, oldest first."""
        return [s.revision for s in reversed(list(self.directory.walk_revisions()))]

    def checksum(self, revision: str) -> str:
        """SHA-256 of the script file as it is now (an edit after applying it shows as a change)."""
        return hashlib.sha256(Path(self.script(revision).path).read_bytes()).hexdigest()

    def message(self, revision: str) -> str:
        return _message(self.script(revision))


def _message(script: Script) -> str:
    return (script.doc or "").strip().splitlines()[0] if script.doc else ""
