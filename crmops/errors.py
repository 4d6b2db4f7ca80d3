"""User-facing errors and the exit codes they map to.

Every failure a user can cause is raised as a CrmopsError subclass: the CLI prints
its message as one line and exits with its code, so cron jobs and monitoring can
tell failures apart without parsing text. Codes are stable; README.md lists them.
"""

from __future__ import annotations

import re


class CrmopsError(Exception):
    """Base of every error that ends a command with one clear line."""

    exit_code: int = 1
    #: short machine-readable name, used in --json output
    kind: str = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def line(self) -> str:
        """The one line shown to the user: what is wrong, then what to do (never a row's values)."""
        # each part on its own: a statement's values run to the end of the message, never into the hint
        message = without_values(self.message)
        return f"{message} ({without_values(self.hint)})" if self.hint else message


#: what database servers and their client tools echo of a row or a statement: each kept up to its
#: table, column, key name or position, the values replaced by …
#: where a DETAIL's value list ends: a full stop, the end of the line, the " / " joining a tool's lines,
#: "; " before crmops's own words, or " (" before a hint
_DETAIL_END = r"(?=\.?(?:\s+/\s|\s*$|;\s|\s+\())"
_VALUE_PATTERNS = [
    (re.compile(r"(Duplicate entry )'.*?'( for key)", re.S), r"\1'…'\2"),
    (re.compile(r"(Incorrect [\w ]+ value: )'.*?'( for column)", re.S), r"\1'…'\2"),
    (re.compile(r"(Key \([^)]*\)=)\(.*?\)( already exists| is not present| is still referenced| conflicts)"),
     r"\1(…)\2"),
    (re.compile(r"(Key \([^)]*\)=)\((?!…\)).*?\)" + _DETAIL_END, re.M), r"\1(…)"),
    (re.compile(r"(Failing row contains )\(.*?\)" + _DETAIL_END, re.M), r"\1(…)"),
    (re.compile(r"(COPY [^,\s]+, line \d+(?:, column [^:]+)?): .*"), r"\1"),
    (re.compile(r"(invalid input (?:syntax|value) for [^:]*: )\".*?\""), r'\1"…"'),
    (re.compile(r"\b((?:INSERT|REPLACE)\s+(?:IGNORE\s+)?INTO\s+[^\s(]+)[^\n]*", re.I),
     r"\1 … (values withheld)"),
    (re.compile(r"\b(UPDATE\s+[^\s]+\s+SET(?:\s+[`\"\w.]+(?=\s*=))?)[^\n]*", re.I),
     r"\1 … (values withheld)"),
    (re.compile(r"\b(VALUES)\s*\(.*", re.I), r"\1 (…)"),
    (re.compile(r"^\s*LINE \d+: .*$\n?(^\s*\^\s*$\n?)?", re.M), ""),
]


#: text a trigger or function wrote itself (PL/pgSQL RAISE, MariaDB/MySQL SIGNAL): it may quote any row value
#: (`RAISE EXCEPTION 'bad %', NEW.email`), so it is withheld whole; what raised it (function, line) stays
WITHHELD = "(text withheld: it may quote row values)"
_RAISED_PATTERNS = [
    # psql/pg_restore: "ERROR:  <text>" then, on a later line, "CONTEXT:  PL/pgSQL function f() line 3 at RAISE"
    (re.compile(r"((?:ERROR|FATAL):\s+)(?:(?!(?:ERROR|FATAL):).)*?(\s*(?:\s/\s|\n)\s*CONTEXT:\s+PL/pgSQL function "
                r"[^\n]*?\bat RAISE)", re.S), r"\1a trigger or function raised an error " + WITHHELD + r"\2"),
    # mysql client: "ERROR 1644 (45000) at line 12: <text>"; the driver: "(1644, '<text>')"
    (re.compile(r"(ERROR \d+ \(45000\)(?: at line \d+)?: )[^\n]*?" + _DETAIL_END.replace(r"\.?", ""), re.M),
     r"\1a trigger's SIGNAL " + WITHHELD),
    (re.compile(r"\((1644), (['\"]).*?\2\)", re.S), r"(\1, a trigger's SIGNAL " + WITHHELD + ")"),
]


def raised_by_code(orig: BaseException) -> str | None:
    """What raised a driver's error, when a trigger or function wrote its text (else None).

    PostgreSQL: SQLSTATE P0001 or a PL/pgSQL RAISE in the context; MariaDB/MySQL: error 1644 (SIGNAL
    SQLSTATE '45000'). SQLite's RAISE takes only a literal, so its text is shown.
    """
    diag = getattr(orig, "diag", None)
    context = str(getattr(diag, "context", None) or "")
    if getattr(orig, "sqlstate", None) == "P0001" or " at RAISE" in context:
        where = next((line.strip() for line in context.splitlines() if " at RAISE" in line), "")
        return where or "a PL/pgSQL RAISE"
    args = getattr(orig, "args", ())
    if args and args[0] == 1644:
        return "a trigger's SIGNAL"
    return None  # SQLite's RAISE takes a string literal: its text holds no row value


def db_said(orig: BaseException) -> str:
    """A driver's error as one line for people: values withheld, and a trigger's own text withheld whole."""
    by = raised_by_code(orig)
    if by is not None:
        return f"{by} raised an error {WITHHELD}"
    text = str(orig).strip()
    return without_values(text.splitlines()[0]) if text else type(orig).__name__


def without_values(text: str) -> str:
    """text without the row values a server or client tool echoes (failing rows, keys, statements).

    An error goes to the terminal, the run history, journals and notifications, none of which may
    hold customer data; the table, column, constraint and line number stay, so the cause is still named.
    """
    for pattern, keep in _RAISED_PATTERNS + _VALUE_PATTERNS:
        text = pattern.sub(keep, text)
    return text


def _error(name: str, code: int, kind: str, doc: str) -> type[CrmopsError]:
    cls = type(name, (CrmopsError,), {"exit_code": code, "kind": kind, "__doc__": doc})
    return cls


# configuration and usage
ConfigError = _error("ConfigError", 3, "config", "The configuration file or environment is invalid.")
FolderNotWritable = _error("FolderNotWritable", 4, "folder-not-writable",
                           "A local folder cannot be written (read-only, full or not permitted).")
# databases
DatabaseUnreachable = _error("DatabaseUnreachable", 10, "db-unreachable", "The database server does not answer.")
DatabaseAuthFailed = _error("DatabaseAuthFailed", 11, "db-auth", "The database rejected the credentials.")
DatabaseNotFound = _error("DatabaseNotFound", 12, "db-missing", "The named database does not exist.")
ToolMissing = _error("ToolMissing", 13, "tool-missing", "A client tool is missing or too old for the server.")
DatabaseError = _error("DatabaseError", 14, "db-error", "A dump, restore or query failed.")
ConstraintBroken = _error("ConstraintBroken", 15, "constraint-broken",
                          "A partial restore would break a foreign key; nothing was changed.")
TableNotInSnapshot = _error("TableNotInSnapshot", 16, "table-missing",
                            "A table named for restore is not in the snapshot.")
# storage and repository
StorageUnreachable = _error("StorageUnreachable", 20, "storage-unreachable", "The storage endpoint does not answer.")
StorageAccessDenied = _error(
    "StorageAccessDenied", 21, "storage-credentials", "Storage credentials are missing or refused."
)
RepositoryNotFound = _error("RepositoryNotFound", 22, "repo-missing", "No repository at the configured place.")
RepositoryTooNew = _error("RepositoryTooNew", 23, "repo-too-new", "The repository was written by a newer format.")
WrongKey = _error("WrongKey", 24, "wrong-key", "The passphrase or key file does not open the repository.")
KeyFileMissing = _error("KeyFileMissing", 25, "key-file-missing", "The configured key file cannot be read.")
IntegrityError = _error("IntegrityError", 26, "integrity", "A stored object is missing, truncated or tampered with.")
LockBusy = _error("LockBusy", 27, "locked", "Another crmops run holds a conflicting lock.")
SnapshotNotFound = _error("SnapshotNotFound", 28, "snapshot-missing", "No snapshot matches the given id.")
RepositoryExists = _error("RepositoryExists", 29, "repo-exists", "A repository already exists there.")
# verification and sandboxes
VerificationFailed = _error("VerificationFailed", 30, "verify-failed", "A restored copy does not match its snapshot.")
SandboxUnavailable = _error("SandboxUnavailable", 31, "docker-unavailable", "The Docker engine does not answer.")
ImageMissing = _error("ImageMissing", 32, "image-missing", "The sandbox image is not present locally.")
# migrations
MigrationFailed = _error("MigrationFailed", 40, "migration-failed", "A migration failed while running.")
MigrationRefused = _error("MigrationRefused", 41, "migration-refused", "A pre-check refused to run a migration.")
LintFailed = _error("LintFailed", 42, "lint-failed", "Migration lint found errors.")
SchemaDrift = _error("SchemaDrift", 43, "schema-drift", "The live schema differs from what its migrations create.")
# upgrades
UpgradeFailed = _error("UpgradeFailed", 50, "upgrade-failed", "An upgrade stage failed (and was rolled back).")
UpgradeRefused = _error("UpgradeRefused", 51, "upgrade-refused", "The upgrade refused to start.")
PlaybookInvalid = _error("PlaybookInvalid", 52, "playbook-invalid", "The playbook file is invalid.")
# safety refusals and operations
TargetNotEmpty = _error("TargetNotEmpty", 60, "target-not-empty", "Refused to overwrite a non-empty target.")
SafetySnapshotFailed = _error("SafetySnapshotFailed", 62, "safety-snapshot-failed",
                              "The safety snapshot before a change could not be taken; nothing was changed.")
StatusRed = _error("StatusRed", 61, "status-red", "A monitoring verdict is red.")
ObjectLocked = _error("ObjectLocked", 63, "object-locked",
                      "S3 Object Lock keeps objects that were to be deleted; nothing was deleted.")
# undo
UndoConflict = _error("UndoConflict", 70, "undo-conflict",
                      "An undo was refused: a row to restore collides with live data (nothing was written).")
UndoNothingSelected = _error("UndoNothingSelected", 71, "undo-nothing-selected",
                             "The undo selection matched no row in the snapshot.")
UndoSelectionInvalid = _error("UndoSelectionInvalid", 72, "undo-selection-invalid",
                              "The undo --table or --where is not a valid selection (checked before any sandbox "
                              "starts).")
Interrupted = _error("Interrupted", 130, "interrupted", "Stopped by Ctrl-C or SIGTERM.")

EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "internal error (a bug: run again with --debug and report it)",
    2: "usage error (unknown option or missing argument)",
    **{
        cls.exit_code: cls.__doc__ or ""
        for cls in (
            ConfigError, FolderNotWritable, DatabaseUnreachable, DatabaseAuthFailed, DatabaseNotFound, ToolMissing,
            DatabaseError, StorageUnreachable, StorageAccessDenied, RepositoryNotFound,
            RepositoryTooNew, WrongKey, KeyFileMissing, IntegrityError, LockBusy, SnapshotNotFound,
            RepositoryExists, VerificationFailed, SandboxUnavailable, ImageMissing, MigrationFailed,
            MigrationRefused, LintFailed, SchemaDrift, UpgradeFailed, UpgradeRefused, PlaybookInvalid,
            TargetNotEmpty, SafetySnapshotFailed, StatusRed, ObjectLocked, Interrupted, ConstraintBroken,
            TableNotInSnapshot,
            UndoConflict, UndoNothingSelected, UndoSelectionInvalid,
        )
    },
}
# point-in-time recovery
WalConflict = _error("WalConflict", 80, "wal-conflict",
                     "A WAL file is already archived with different content.")
WalMissing = _error("WalMissing", 81, "wal-missing", "The requested WAL file is not in the archive.")
OutsideWindow = _error("OutsideWindow", 82, "outside-window",
                       "The recovery target lies outside the recoverable window.")
RecoveryFailed = _error("RecoveryFailed", 83, "recovery-failed",
                        "Replaying the archive did not reach the recovery target.")
WalRefused = _error("WalRefused", 84, "wal-refused",
                    "A WAL file of a timeline that is not production's was refused (a restored copy?).")
ArchiveNotWorking = _error("ArchiveNotWorking", 85, "archive-not-working",
                           "The server's archive_command does not bring WAL into the archive.")
EXIT_CODES.update({cls.exit_code: cls.__doc__ or "" for cls in (WalConflict, WalMissing, OutsideWindow,
                                                                  RecoveryFailed, WalRefused, ArchiveNotWorking)})
