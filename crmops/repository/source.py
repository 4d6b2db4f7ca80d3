"""A snapshot's source: which database it was dumped from, as one stable string.

`latest`, status, verify, the upgrade preflight and retention work per source, so a
pre-restore snapshot of a scratch database or a second CRM backed up into the same
repository never stands in for the configured database's backups. The string names the
engine, host, port and database (or the SQLite file's absolute path) and never a user
name or password: it is shown in listings and reports and typed on command lines.

    postgresql://db.example.org:5432/crm
    mysql://10.0.0.5:3306/suitecrm
    sqlite:///srv/crm/data/crm.db
"""

from __future__ import annotations

import os
from typing import Any

from crmops.dburl import engine_kind, parse
from crmops.errors import ConfigError

#: tags of the snapshots crmops takes by itself before changing a database; `latest` passes over them
SAFETY_TAGS = ("pre-restore", "pre-migrate", "pre-undo")
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
UNKNOWN = "unknown"


def source_of_url(url: str) -> str:
    """The source string of a database URL (credentials dropped, default port filled in)."""
    u = parse(url)
    kind = engine_kind(u)
    if kind == "sqlite":
        path = u.database or ""
        if path and path != ":memory:":
            path = os.path.abspath(os.path.expanduser(path))
        return f"sqlite://{path}" if path.startswith("/") else f"sqlite:///{path}"
    host = (u.host or u.query.get("host") or "localhost")
    host = host if isinstance(host, str) else host[0]
    if host.startswith("/"):  # a Unix socket directory: the socket, not a TCP port, names the server
        return f"{kind}://{host.lower()}/{u.database or ''}".replace("///", "//")
    port = u.port or DEFAULT_PORTS[kind]
    return f"{kind}://{host.lower()}:{port}/{u.database or ''}"


def source_of_manifest(m: dict[str, Any]) -> str:
    """The manifest's recorded source, or for snapshots older than the field, what the manifest says.

    Older manifests carry the dumped URL with its password hidden ("source") and the
    engine and database name; the URL alone gives host, port and database.
    """
    recorded = m.get("source_id")
    if isinstance(recorded, str) and recorded:
        return recorded
    url = m.get("source")
    if isinstance(url, str) and url:
        try:
            return source_of_url(url)
        except ConfigError:
            pass
    engine, database = m.get("engine"), m.get("database")
    if engine:
        return f"{engine}://{UNKNOWN}/{database or ''}"
    return UNKNOWN


def safety_tag(tags: list[str] | tuple[str, ...]) -> str | None:
    """The tag that marks a snapshot crmops took to protect a target (pre-restore, pre-migrate, pre-undo), if any."""
    return next((t for t in tags if t in SAFETY_TAGS), None)


def is_safety(m: dict[str, Any]) -> bool:
    return safety_tag(m.get("tags") or []) is not None


def normalise(text: str) -> str:
    """What a user typed after --source: a source string or a database URL (credentials are dropped)."""
    text = text.strip()
    if "://" not in text:
        return text
    try:
        return source_of_url(text)
    except (ConfigError, ValueError):
        return text


def match_source(wanted: str, known: list[str]) -> str:
    """The one known source `wanted` names: exactly, by its database (file) name, or as the only one containing it."""
    if wanted in known:
        return wanted
    wanted = normalise(wanted)
    if wanted in known:
        return wanted
    named = [s for s in known if s.rstrip("/").rsplit("/", 1)[-1] == wanted]  # the database or file name
    if len(named) == 1:
        return named[0]
    hits = [s for s in known if wanted in s]
    if len(hits) == 1:
        return hits[0]
    listing = ", ".join(sorted(known)) or "none"
    if hits:
        raise ConfigError(f"--source {wanted!r} matches several sources: {', '.join(sorted(hits))}",
                          hint="give more of it")
    raise ConfigError(f"no snapshot of source {wanted!r} in the repository (sources: {listing})",
                      hint="`crmops snapshots --all` shows each snapshot's source")
