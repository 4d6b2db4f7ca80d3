"""Bring a snapshot back: authenticate everything first, then write; never over live data.

Every chunk the restore needs is fetched and authenticated before the target is
touched, so a damaged repository can never leave a half-restored database. A dump up
to STAGE_LIMIT is staged whole in a private file as its chunks are fetched, opened and
authenticated (one pass, where a separate authentication pass read every chunk twice);
a larger one is authenticated in a pass first, then streamed. A non-empty target is
refused unless forced, and forcing first snapshots the target.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crmops.config import Config
from crmops.dburl import display, engine_kind, safe
from crmops.engines import open_engine
from crmops.engines.base import STAGE_LIMIT
from crmops.engines.files import FileEntry, check_writable_folder, finish_dirs, restore_entry
from crmops.engines.tools import Background
from crmops.engines.tools import read_pieces as read_staged
from crmops.errors import (
    ConfigError,
    CrmopsError,
    FolderNotWritable,
    IntegrityError,
    Interrupted,
    SafetySnapshotFailed,
    TableNotInSnapshot,
    TargetNotEmpty,
)
from crmops.log import Timeline
from crmops.repository import Repository, open_repository
from crmops.services.sources import resolve

ENGINE_OF_FORMAT = {"pg-custom": "postgresql", "mysql-sql": "mysql", "sqlite-db": "sqlite"}
#: --force replaces a database: the snapshot must be named by at least this much of its id (or latest)
FORCE_PREFIX = 6
#: --as: a prefix for the restored copies' names
PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class RestoreResult:
    snapshot_id: str
    target: str
    tables: list[str] | None
    seconds: float
    bytes: int
    files: int = 0
    safety_snapshot: str | None = None
    timeline: list[dict[str, Any]] = field(default_factory=list)
    #: what was overwritten: ["the whole database"] or the tables replaced in place
    replaced: list[str] = field(default_factory=list)
    #: tables that did not exist in the target before (with --as: the copies beside the live ones)
    created: list[str] = field(default_factory=list)
    #: foreign keys of the restored tables not made, each with why and how to get it (see keys_left_out)
    constraints_left_out: list[dict[str, str]] = field(default_factory=list)
    #: the snapshot's attachment files a whole restore without --attachments-to left in the repository
    files_left: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def snapshot_tables(manifest: dict[str, Any]) -> list[str]:
    """The tables a snapshot holds, as its fingerprint names them (PostgreSQL: schema.table outside public)."""
    fingerprint = manifest.get("fingerprint", {})
    return sorted({*(t for t in fingerprint.get("tables", {}) if t != "pg_largeobject"),
                   *fingerprint.get("partitions", {})})


def resolve_tables(manifest: dict[str, Any], engine: str, names: list[str]) -> list[str]:
    """The chosen tables in the engine's own form, each checked against the snapshot, before anything changes."""
    return check_names(snapshot_tables(manifest), engine, names, f"snapshot {manifest['id']}")


def check_names(known: list[str], engine: str, names: list[str], where: str,
                done: str = "nothing was changed") -> list[str]:
    """The chosen tables in the engine's own form, each checked against the tables known to be there.

    PostgreSQL names are schema-qualified ("public.contacts"); a plain name is in public,
    and known names are written as fingerprints write them (schema.table outside public).
    A name not known is refused (exit 16) with the closest names that are; an empty
    known list checks nothing.
    """
    out: list[str] = []
    for raw in names:
        name = raw.replace('"', "") if engine == "postgresql" else raw.strip("`")
        key = name.removeprefix("public.") if engine == "postgresql" else name
        if known and key not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = (f"did you mean {' or '.join(close)}?" if close else
                    f"it holds {', '.join(known[:8])}{', …' if len(known) > 8 else ''}")
            raise TableNotInSnapshot(f"table {raw!r} is not in {where}; {done}", hint=hint)
        full = (key if "." in key else f"public.{key}") if engine == "postgresql" else key
        if full not in out:
            out.append(full)
    return out


def _check_prefix(prefix: str, engine: str, tables: list[str]) -> None:
    if engine == "postgresql" and prefix.endswith(".") and PREFIX.fullmatch(prefix[:-1]):
        if prefix[:-1] in {t.partition(".")[0] for t in tables}:
            raise ConfigError(f"--as {prefix!r} is the tables' own schema",
                              hint="name another schema, e.g. --as recovered.")
        return  # a schema: the tables keep their names there
    if not PREFIX.fullmatch(prefix):
        raise ConfigError(f"--as {prefix!r} is not a usable name prefix",
                          hint="use letters, digits and _ only, e.g. --as restored_"
                               + (" (or --as recovered. for a schema)" if engine == "postgresql" else ""))
    limit = {"postgresql": 63, "mysql": 64}.get(engine)
    for t in tables:
        if limit and len(_prefixed(t, prefix).rpartition(".")[2].encode()) > limit:
            raise ConfigError(f"--as {prefix!r} makes the name of {t} longer than {engine} allows ({limit})",
                              hint="choose a shorter prefix")


def restore(config: Config, ref: str, *, to_url: str, tables: list[str] | None = None,
            attachments_to: Path | None = None, force: bool = False, repo: Repository | None = None,
            progress: Callable[[int], None] | None = None, prefix: str | None = None,
            source: str | None = None, safety_first: bool = True) -> RestoreResult:
    """Restore a snapshot into to_url; with tables, only those, replacing them in place (force) or beside (prefix).

    Everything is checked before the first change: the engine, the table names against
    the snapshot, the destination names, the target's emptiness, every chunk's tag.
    safety_first=False (--no-safety-snapshot) replaces without the pre-restore snapshot.
    """
    mark = Timeline()

    repo = repo or open_repository(config)
    manifest = resolve(config, repo, ref, source=source)
    if force and ref != "latest" and len(ref) < FORCE_PREFIX:  # a typo must not pick what replaces a database
        raise ConfigError(f"snapshot {ref!r}: with --force, name it by at least {FORCE_PREFIX} characters of its id "
                          f"(it matched {manifest['id'][:10]}); nothing was changed",
                          hint=f"crmops restore {manifest['id'][:10]} ...")
    stream = manifest["streams"]["database"]
    wanted = ENGINE_OF_FORMAT.get(stream["format"])
    if wanted != engine_kind(to_url):
        raise ConfigError(f"snapshot {manifest['id']} holds a {wanted} dump; {display(to_url)} is not {wanted}")
    if prefix is not None and not tables:
        raise ConfigError("--as needs --tables", hint="name the tables to restore beside the live ones")
    if tables is not None and not tables:
        raise ConfigError("--tables is empty", hint="name the tables, e.g. --tables contacts,accounts")
    chosen = resolve_tables(manifest, wanted, tables) if tables else None
    if attachments_to is not None:
        check_writable_folder(attachments_to, "--attachments-to", needed=attachment_bytes(manifest))
    with ExitStack() as stack:
        # every chunk is authenticated before the target changes at all (a forced target's
        # old data included): staged whole, or checked in a pass and then streamed
        if chosen is None and stream["size"] <= STAGE_LIMIT:
            target, empty, staged = _check_while_staging(stack, config, repo, manifest, to_url, force, progress)
        else:
            target, empty = check_target(config, to_url, chosen, prefix, force)
            whole = not (chosen and (prefix is not None or not empty))
            staged = stack.enter_context(stage(repo, manifest, progress)) if whole and (
                stream["size"] <= STAGE_LIMIT) else None
        if staged is None:
            repo.authenticate(manifest, progress)
        mark("every chunk authenticated" + (" (dump staged)" if staged else ""))
        return _write(config, repo, manifest, target, empty, staged, to_url, chosen, prefix, force,
                      attachments_to, mark, safety_first=safety_first)


def _check_while_staging(stack: ExitStack, config: Config, repo: Repository, manifest: dict[str, Any], to_url: str,
                         force: bool, progress: Callable[[int], None] | None) -> tuple[Any, bool, Path]:
    """The target's checks (a psql call or a connection: neither changes it) on a thread while the
    dump is staged; a refused target stops the staging and is the error reported, as when the
    checks ran first."""
    checking = Background(check_target, config, to_url, None, None, force)

    def advance(n: int) -> None:
        if checking.failed():
            checking.result()  # raises the target's error
        if progress:
            progress(n)

    try:
        staged = stack.enter_context(stage(repo, manifest, advance))
    except Exception:
        checking.result()  # the target's refusal comes first, as it did before any chunk was read
        raise
    target, empty = checking.result()
    return target, empty, staged


def _write(config: Config, repo: Repository, manifest: dict[str, Any], target: Any, empty: bool,
           staged: Path | None, to_url: str, chosen: list[str] | None, prefix: str | None, force: bool,
           attachments_to: Path | None, mark: Timeline, safety_first: bool = True) -> RestoreResult:
    """Everything authenticated: the safety snapshot, then the database, then the files."""
    stream = manifest["streams"]["database"]
    wanted = ENGINE_OF_FORMAT.get(stream["format"])
    if force and not empty and prefix is None and safe(to_url) == safe(config.database.url):
        logging.getLogger("crmops.restore").warning(  # every input is checked: this is what happens next
            "--to is the configured database (database.url): %s replaced by snapshot %s "
            "(a pre-restore snapshot is taken first)",
            f"its tables {', '.join(chosen)} are" if chosen else "its live content is", manifest["id"][:10])
    safety = None
    if force and not empty and prefix is None and safety_first:
        safety = safety_snapshot(config, to_url, repo)
        mark("safety snapshot of the target")
    replaced: list[str] = []
    created: list[str] = []
    keys_out: list[dict[str, str]] = []
    if chosen and (prefix is not None or not empty):
        done = load_tables(target, repo.read_stream(manifest), stream["format"], chosen, prefix, safety, to_url)
        replaced, created, keys_out = done["replaced"], done["created"], done.get("left_out", [])
        mark("tables restored")
    else:
        try:
            if force and not empty:
                replaced = ["the whole database"]
                _empty(target)
                mark("target emptied")
            if staged is not None and wanted in ("postgresql", "mysql"):
                keys_out = target.restore((), format=stream["format"], tables=chosen, staged=staged) or []
            else:
                chunks = read_staged(staged) if staged is not None else repo.read_stream(manifest)
                keys_out = target.restore(chunks, format=stream["format"], tables=chosen) or []
        except (CrmopsError, KeyboardInterrupt) as e:
            if not safety and isinstance(e, KeyboardInterrupt) and wanted != "sqlite":
                # SQLite's file is renamed into place whole; the servers' targets keep what was loaded
                raise Interrupted("restore stopped half-way; the target may hold part of the snapshot",
                                  hint="restore into a fresh database, or again with --force") from None
            if not safety:
                if force and not empty and isinstance(e, CrmopsError):
                    raise type(e)(f"{e.message}; the target was emptied first and, with --no-safety-snapshot, "
                                  "there is no pre-restore snapshot of it", hint=e.hint) from None
                raise
            back = f"get its previous content back with: crmops restore {safety} --to {display(to_url)} --force"
            if isinstance(e, KeyboardInterrupt):
                raise Interrupted("restore stopped half-way; the target was emptied first", hint=back) from None
            raise type(e)(f"{e.message}; the target was emptied first", hint=back) from None
        created = list(chosen or [])
        mark("database restored")
    files = 0
    if attachments_to is not None:
        try:
            files = restore_files(repo, manifest, attachments_to)
        except (OSError, CrmopsError) as e:
            raise _files_failed(e, manifest["id"], attachments_to, to_url, chosen, replaced, safety) from None
        mark("attachments restored")
    left = 0 if attachments_to is not None or chosen else sum(1 for f in manifest.get("files", [])
                                                              if f.get("kind") == "file")
    return RestoreResult(snapshot_id=manifest["id"], target=safe(to_url), tables=chosen,
                         seconds=mark.seconds(2), bytes=stream["size"], files=files,
                         safety_snapshot=safety, timeline=mark.steps, replaced=replaced, created=created,
                         files_left=left, constraints_left_out=with_hints(keys_out, chosen or [], wanted))


def with_hints(left: list[dict[str, str]], chosen: list[str], engine: str) -> list[dict[str, str]]:
    """Each foreign key left out with the --tables that brings it (both tables, so the key holds)."""
    def short(t: str) -> str:
        return t.removeprefix("public.") if engine == "postgresql" else t

    out = []
    for k in left:
        if k["reason"].startswith("copies"):
            out.append({**k, "hint": "restore without --as to get the tables with their keys"})
            continue
        names = sorted({short(t) for t in chosen} | {short(k["references"])})
        out.append({**k, "hint": f"--tables {','.join(names)}"})
    return out


def left_out_lines(left: list[dict[str, str]]) -> list[str]:
    """What the operator reads: one line per key left out, with the way to get it."""
    if left and all(k["reason"].startswith("copies") for k in left):
        return [f"the copies carry no foreign keys ({len(left)} left out: "
                f"{', '.join(k['table'] + '.' + k['constraint'] for k in left)})"]
    keys = [k for k in left if not k["reason"].startswith("copies")]
    lines = [f"foreign key {k['constraint']} of {_short(k['table'])} (to {_short(k['references'])}) was not made: "
             f"{_short(k['reason'])}; to get it restore both: {k['hint']}" for k in keys]
    if len({k["references"] for k in keys}) > 1:  # one command that brings every key
        every = sorted({t for k in keys for t in k["hint"].removeprefix("--tables ").split(",")})
        lines.append(f"to get them all: --tables {','.join(every)}")
    return lines


def _short(name: str) -> str:
    """A PostgreSQL name in public as the user writes it (public.accounts -> accounts)."""
    return name.replace("public.", "")


def attachment_bytes(manifest: dict[str, Any]) -> int:
    """What the snapshot's attachment files take on disk once restored."""
    return sum(int(f.get("size") or 0) for f in manifest.get("files", []) if f.get("kind") == "file")


def _files_failed(e: OSError | CrmopsError, snapshot: str, folder: Path, to_url: str, chosen: list[str] | None,
                  replaced: list[str], safety: str | None) -> CrmopsError:
    """The attachments failed after the database changed: say what changed and the command that undoes it."""
    why = e.message if isinstance(e, CrmopsError) else f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    what = f"tables {', '.join(chosen)}" if chosen else "the database"
    done = (f"{what} in {display(to_url)} {'were' if chosen else 'was'} already restored from snapshot {snapshot}"
            + (f" (replacing {', '.join(replaced)})" if replaced else ""))
    scope = f" --tables {','.join(chosen)}" if chosen else ""
    hint = (f"undo that with: crmops restore {safety} --to {display(to_url)}{scope} --force; or free the folder and "
            f"run: crmops restore {snapshot} --to {display(to_url)}{scope} --force --attachments-to {folder}"
            if safety else "the target was empty before; fix the folder and restore the attachments again")
    cls = type(e) if isinstance(e, CrmopsError) else FolderNotWritable
    return cls(f"attachments could not be written to {folder}: {why}; {done}", hint=hint)


@contextmanager
def stage(repo: Repository, manifest: dict[str, Any], progress: Callable[[int], None] | None = None, *,
          files: bool = True) -> Iterator[Path]:
    """The database stream whole in a private temporary file, every chunk opened and authenticated
    on the way (a bad one raises IntegrityError, quarantined), and with files the attachments' chunks
    checked too; removed on exit. Nothing outside the temporary folder is touched."""
    if files and manifest.get("files"):
        repo.authenticate({**manifest, "streams": {}}, progress)
    with tempfile.TemporaryDirectory(prefix="crmops-restore-") as tmp:
        path = Path(tmp) / "dump"
        with open(path, "wb") as f:
            for piece in repo.read_stream(manifest):
                f.write(piece)
                if progress:
                    progress(len(piece))
        yield path


# -- the steps a partial restore shares with `restore --at ... --tables` -----------------

def check_target(config: Config, to_url: str, chosen: list[str] | None, prefix: str | None,
                 force: bool) -> tuple[Any, bool]:
    """The target engine and whether it is empty; refuses (exit 60) what would overwrite without --force.

    --as needs no --force: it only adds tables, and refuses names already taken.
    """
    wanted = engine_kind(to_url)
    if prefix is not None and chosen:
        _check_prefix(prefix, wanted, chosen)
    target = open_engine(to_url, config.database)
    empty = target.is_empty()
    if prefix is not None and chosen:
        taken = target.existing_tables([_prefixed(t, prefix) for t in chosen])
        if taken:
            raise TargetNotEmpty(f"{', '.join(taken)} already exist{'s' * (len(taken) == 1)} in {display(to_url)}; "
                                 f"nothing was changed",
                                 hint="choose another --as prefix, or drop the earlier copy")
    elif not force and not empty:
        if chosen:
            raise TargetNotEmpty(f"{display(to_url)} is not empty",
                                 hint=f"add --force to replace only {', '.join(chosen)} there, after a "
                                      f"pre-restore snapshot of the target; or --as restored_ to restore "
                                      f"{'them' if len(chosen) > 1 else 'it'} beside the live tables")
        raise TargetNotEmpty(f"{display(to_url)} is not empty",
                             hint="restore into an empty database, or add --force (a pre-restore snapshot "
                                  "of the target is taken first)")
    return target, empty


def safety_snapshot(config: Config, to_url: str, repo: Repository | None = None) -> str:
    """A snapshot of the target (tag pre-restore) before a forced restore changes it: the way back."""
    from crmops.services.backup import backup

    try:
        return backup(config, tags=["pre-restore"], url=to_url, repo=repo).snapshot_id
    except KeyboardInterrupt:
        raise Interrupted("restore stopped while taking the pre-restore snapshot; the target was not "
                          "changed") from None
    except CrmopsError as e:  # the way back cannot be made: stop before the first change
        raise SafetySnapshotFailed(f"the pre-restore snapshot of {display(to_url)} could not be taken, so nothing "
                                   f"was changed: {e.message}",
                                   hint=(f"{e.hint}; " if e.hint else "") + "or, accepting that the target's "
                                   "current content cannot be got back, add --no-safety-snapshot") from None


def load_tables(target: Any, chunks: Iterable[bytes], fmt: str, chosen: list[str], prefix: str | None,
                safety: str | None, to_url: str) -> dict[str, list[str]]:
    """The engine's all-or-nothing table restore; a stop names the way back when there is one."""
    try:
        return target.restore_tables(chunks, format=fmt, tables=chosen, prefix=prefix)
    except Interrupted as e:
        # the rows are replaced in one transaction: the engine knows whether the stop came after the commit
        committed = getattr(e, "committed", None)
        if committed and safety:
            e.hint = (f"their previous content is in snapshot {safety} (pre-restore): crmops restore "
                      f"{safety} --to {display(to_url)} --tables {','.join(chosen)} --force")
        elif committed is False:
            e.hint = "nothing was changed; run the same restore again to finish it"
        raise


def _prefixed(table: str, prefix: str) -> str:
    schema, dot, name = table.rpartition(".")
    if prefix.endswith("."):
        return f"{prefix}{name}"
    return f"{schema}{dot}{prefix}{name}"


def restore_files(repo: Repository, manifest: dict[str, Any], folder: Path) -> int:
    """Write the snapshot's attachments under folder, each file checked against its hash."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = [FileEntry(**{k: v for k, v in f.items() if k != "chunks"}) for f in manifest.get("files", [])]
    count = 0
    for meta, entry in zip(manifest.get("files", []), entries, strict=True):
        if entry.kind == "file":
            digest = hashlib.sha256()

            def pieces(ids: list[str] = meta["chunks"], h: Any = digest) -> Any:
                for data in repo.read_chunks(ids):
                    h.update(data)
                    yield data

            restore_entry(folder, entry, pieces())
            if digest.hexdigest() != entry.sha256:
                raise IntegrityError(f"attachment {entry.path} does not match its recorded hash")
        else:
            restore_entry(folder, entry)
        count += 1
    finish_dirs(folder, entries)
    return count


def _empty(engine: Any) -> None:
    """Clear a forced target after its safety snapshot (PostgreSQL: schemas; MySQL: tables; SQLite: replaced)."""
    if engine.name == "sqlite":
        return  # the restore replaces the file atomically
    if engine.name == "postgresql":
        with engine.connect() as conn:
            # public comes back as it was (owner, grants, comment): pg_dump leaves out what is
            # initdb's default, so a bare CREATE SCHEMA would lose e.g. PUBLIC's USAGE on it
            again = conn.execute("""SELECT 'ALTER SCHEMA public OWNER TO ' || quote_ident(n.nspowner::regrole::text)
                                    || '; COMMENT ON SCHEMA public IS '
                                    || COALESCE(quote_literal(obj_description(n.oid, 'pg_namespace')), 'NULL')
                                    || ';' || COALESCE((SELECT string_agg(' GRANT ' || a.privilege_type
                                        || ' ON SCHEMA public TO ' || CASE a.grantee WHEN 0 THEN 'PUBLIC'
                                        ELSE quote_ident(a.grantee::regrole::text) END
                                        || CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END, ';')
                                        || ';' FROM aclexplode(n.nspacl) a), '')
                                    FROM pg_namespace n WHERE n.nspname = 'public'""").fetchone()
            for (schema,) in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg_%' "
                                          "AND nspname <> 'information_schema'").fetchall():
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
            conn.execute("CREATE SCHEMA public")
            if again:
                conn.execute(again[0])
            conn.execute("SELECT lo_unlink(oid) FROM pg_largeobject_metadata")
        return
    conn = engine.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET FOREIGN_KEY_CHECKS = 0")
            cur.execute("SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = DATABASE()")
            for name, kind in cur.fetchall():
                cur.execute(f"DROP {'VIEW' if kind == 'VIEW' else 'TABLE'} `{name}`")
            for kind in ("PROCEDURE", "FUNCTION"):
                cur.execute("SELECT routine_name FROM information_schema.routines WHERE routine_schema = DATABASE() "
                            "AND routine_type = %s", (kind,))
                for (name,) in cur.fetchall():
                    cur.execute(f"DROP {kind} `{name}`")
            cur.execute("SELECT event_name FROM information_schema.events WHERE event_schema = DATABASE()")
            for (name,) in cur.fetchall():
                cur.execute(f"DROP EVENT `{name}`")
    finally:
        conn.close()
