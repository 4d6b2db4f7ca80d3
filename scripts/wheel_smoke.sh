#!/usr/bin/env bash
# The installed wheel, as an administrator installs it (README "Installing for production"):
# build a wheel from this checkout, install it NON-editable into a fresh venv made by Debian 12's
# /usr/bin/python3 outside the checkout, then from that install run every command group's help,
# a SQLite backup / verify / restore round trip with --json parsed, and a point-in-time restore
# of a tiny PostgreSQL 15 cluster whose archive_command (run by the postgres user) is the
# installed crmops. `make test` runs this before the suite; any failure ends it with one
# "wheel smoke FAILED" line and a non-zero exit.
#
#   scripts/wheel_smoke.sh               everything (PostgreSQL step needs /usr/lib/postgresql/15/bin)
#   CRMOPS_SMOKE_PYTHON=python3.12 ...   another interpreter
#   CRMOPS_SMOKE_KEEP=1 ...              keep the work folder (/var/tmp/crmops-wheel-smoke.*)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${CRMOPS_SMOKE_PYTHON:-/usr/bin/python3}"
PG_BIN=/usr/lib/postgresql/15/bin
T0=$SECONDS
WORK=$(mktemp -d /var/tmp/crmops-wheel-smoke.XXXXXX)
chmod 755 "$WORK"
PGDATA_DIR=""

step() { echo "[wheel smoke $((SECONDS - T0)) s] $*"; }
fail() { echo "wheel smoke FAILED: $*" >&2; exit 1; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  local rc=$?
  if [ -n "$PGDATA_DIR" ] && [ -f "$PGDATA_DIR/postmaster.pid" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  for d in "$WORK"/restored; do
    [ -f "$d/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1 || true
  done
  if [ "$rc" != 0 ]; then echo "wheel smoke FAILED (exit $rc); work folder kept: $WORK" >&2
  elif [ -z "${CRMOPS_SMOKE_KEEP:-}" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

[ -x "$PY" ] || fail "$PY is missing (on Debian 12: apt-get install python3 python3-venv)"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || fail "$PY is older than 3.11"
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/crmops/__init__.py")

# -- 1. the wheel, and its dependencies as wheels ------------------------------------------
# Both kept between runs outside the checkout: a builder venv with the build backend, and a
# wheelhouse of the dependencies, so the install reads no index (re-filled when one is missing).
BUILDER="${CRMOPS_SMOKE_BUILDER:-/var/tmp/crmops-wheel-builder}"
WHEELHOUSE="${CRMOPS_SMOKE_WHEELHOUSE:-/var/tmp/crmops-wheelhouse}"
step "building the wheel with $("$PY" --version)"
if ! "$BUILDER/bin/python" -c 'import setuptools, wheel, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 68)' 2>/dev/null; then
  rm -rf "$BUILDER" && "$PY" -m venv "$BUILDER" && "$BUILDER/bin/pip" install -q "setuptools>=68" wheel >"$WORK/builder.log" 2>&1 \
    || { cat "$WORK/builder.log" >&2; fail "the builder venv $BUILDER"; }
fi
"$BUILDER/bin/pip" wheel -q --no-deps --no-build-isolation --wheel-dir "$WORK/dist" "$ROOT" >"$WORK/wheel.log" 2>&1 \
  || { cat "$WORK/wheel.log" >&2; fail "pip wheel failed"; }
WHEEL=$(ls "$WORK"/dist/crmops-"$VERSION"-*.whl) || fail "no crmops-$VERSION wheel in $WORK/dist"
mkdir -p "$WHEELHOUSE"
if ! "$BUILDER/bin/pip" wheel -q --no-index --find-links "$WHEELHOUSE" --wheel-dir "$WORK/deps" "$WHEEL" \
     >"$WORK/deps.log" 2>&1; then
  step "filling the wheelhouse $WHEELHOUSE from the package index"
  "$BUILDER/bin/pip" wheel -q --find-links "$WHEELHOUSE" --wheel-dir "$WHEELHOUSE" "$WHEEL" >"$WORK/deps.log" 2>&1 \
    || { cat "$WORK/deps.log" >&2; fail "pip wheel of the dependencies failed"; }
fi
rm -rf "$WORK/deps" "$WHEELHOUSE"/crmops-*.whl

# -- 2. the install, exactly as README.md's "Installing for production" block says -------
step "installing $(basename "$WHEEL") as README.md says, into $WORK/opt"
block=$(awk '/<!-- install-begin -->/{on=1; next} /<!-- install-end -->/{on=0} on' "$ROOT/README.md" \
        | sed -n '/^```sh$/,/^```$/p' | sed '1d;$d')
[ -n "$block" ] || fail "README.md has no <!-- install-begin --> ... <!-- install-end --> block"
mkdir -p "$WORK/bin"
# no index (the wheelhouse) and no byte-compiling of the whole venv up front (a minute on 2 busy
# cores: each module is compiled when first imported instead)
PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELHOUSE" PIP_NO_COMPILE=1 \
  WHEEL="$WHEEL" PREFIX="$WORK/opt/crmops" BINDIR="$WORK/bin" ETC="$WORK/etc" PYTHON3="$PY" \
  bash -euo pipefail -c "$block" >"$WORK/install.log" 2>&1 || { cat "$WORK/install.log" >&2; fail "the README install failed"; }
C="$WORK/bin/crmops"
export PATH="$WORK/bin:$PATH"
cd "$WORK"  # never the checkout: its crmops/ must not shadow the installed one
env -u PYTHONPATH "$WORK/opt/crmops/bin/python" - "$WORK/opt/crmops" "$VERSION" <<'EOF' || fail "crmops does not come from the wheel"
import sys, crmops
assert crmops.__file__.startswith(sys.argv[1]), crmops.__file__
assert crmops.__version__ == sys.argv[2], crmops.__version__
assert not any(p.endswith(".egg-link") or "__editable__" in p for p in sys.path), sys.path
EOF
unset PYTHONPATH
[ "$("$C" --version)" = "crmops, version $VERSION" ] || fail "crmops --version: $("$C" --version 2>&1)"
if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1; then
  runuser -u postgres -- "$C" --version >/dev/null || fail "the postgres user cannot run $C"
fi

# -- 3. every command group's help, through the installed entry point ---------------------
step "help of every command group and subcommand"
"$C" --help >"$WORK/help.txt" || fail "crmops --help"
groups=$("$WORK/opt/crmops/bin/python" -c 'from crmops.cli.main import COMMANDS; print(" ".join(COMMANDS))')
for g in $groups; do echo "$g"; done | xargs -P 4 -I{} sh -c '"$0" {} --help >/dev/null 2>"$1/help-{}.err" || { cat "$1/help-{}.err"; exit 255; }' "$C" "$WORK" \
  || fail "a command group's --help failed"
"$WORK/opt/crmops/bin/python" - <<'EOF' || fail "a subcommand's --help failed"
# each subcommand's help in one process (a process per subcommand would take a minute)
import click
from click.testing import CliRunner
from crmops.cli.main import cli

runner, n = CliRunner(), 0
def walk(cmd, path):
    global n
    ctx = click.Context(cmd, info_name=path[-1] if path else "crmops")
    for name in (cmd.list_commands(ctx) if isinstance(cmd, click.Group) else []):
        sub = cmd.get_command(ctx, name)
        r = runner.invoke(cli, [*path, name, "--help"])
        assert r.exit_code == 0 and "Usage:" in r.output, (path, name, r.output, r.exception)
        n += 1
        walk(sub, [*path, name])
walk(cli, [])
print(f"{n} commands and subcommands")
EOF

# -- 4. a SQLite round trip: demo CRM, repository, backup, verify, restore, --json ----------
step "SQLite backup / verify / restore round trip"
mkdir -p "$WORK/crm"
cat >"$WORK/etc/crmops.yaml" <<EOF
database: {url: "sqlite:///$WORK/crm/crm.db"}
attachments: {path: "$WORK/crm/files"}
repository: {url: "file://$WORK/repo"}
encryption: {key_file: "$WORK/etc/repo.key"}
state_dir: "$WORK/state"
EOF
export CRMOPS_CONFIG="$WORK/etc/crmops.yaml"
json() {  # json ARGS...: run crmops --json, print its one document (parsed by json.loads)
  local out; out=$("$C" --json "$@") || fail "crmops --json $* exited $?: $out"
  "$WORK/opt/crmops/bin/python" -c 'import json, sys; json.loads(sys.stdin.read())' <<<"$out" \
    || fail "crmops --json $* did not print one JSON document: $out"
  printf '%s' "$out"
}
field() { "$WORK/opt/crmops/bin/python" -c 'import json, sys; d = json.load(sys.stdin); print(eval(sys.argv[1], {}, {"d": d}))' "$1"; }
"$C" --quiet demo create --size small >/dev/null || fail "demo create"
json repo init >/dev/null
snap=$(json backup --tag smoke | field 'd["snapshot_id"]')
[ "$(json snapshots | field '[s["id"] for s in d]')" = "['$snap']" ] || fail "snapshots --json does not list $snap"
json verify latest >/dev/null
json check >/dev/null
json restore latest --to "sqlite:///$WORK/crm/restored.db" --attachments-to "$WORK/crm/restored-files" >/dev/null
"$WORK/opt/crmops/bin/python" - "$WORK/crm" <<'EOF' || fail "the restored SQLite database differs"
import sqlite3, sys
a, b = (sqlite3.connect(f"{sys.argv[1]}/{n}") for n in ("crm.db", "restored.db"))
tables = [r[0] for r in a.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
assert tables, "no tables"
for t in tables:
    q = f'SELECT * FROM "{t}" ORDER BY 1'
    assert a.execute(q).fetchall() == b.execute(q).fetchall(), t
EOF
diff -r "$WORK/crm/files" "$WORK/crm/restored-files" >/dev/null || fail "the restored attachments differ"
json status >/dev/null || true  # status exits 61 when red; its JSON is what is checked here

# -- 5. point-in-time recovery: a tiny cluster archiving through the installed crmops -------
if [ -n "${CRMOPS_SMOKE_NO_PG:-}" ]; then step "PostgreSQL step skipped (CRMOPS_SMOKE_NO_PG)"; step "passed"; exit 0; fi
[ -x "$PG_BIN/initdb" ] || fail "$PG_BIN/initdb is missing (apt-get install postgresql-15, or CRMOPS_SMOKE_NO_PG=1)"
step "restore --at on a tiny PostgreSQL 15 cluster"
PORT=$("$WORK/opt/crmops/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PGDATA_DIR="$WORK/pg"
PGURL="postgresql://postgres@127.0.0.1:$PORT/postgres"
cat >"$WORK/etc/pitr.yaml" <<EOF
database: {url: "$PGURL"}
repository: {url: "file://$WORK/pitr-repo", chunk_avg_kib: 256}
state_dir: "$WORK/pitr-state"
EOF
printf 'CRMOPS_PASSPHRASE=wheel smoke passphrase\n' >"$WORK/etc/crmops.env"
export CRMOPS_CONFIG="$WORK/etc/pitr.yaml" CRMOPS_PASSPHRASE="wheel smoke passphrase"
json repo init >/dev/null
mkdir -p "$WORK/pitr-state"
if [ "$(id -u)" = 0 ]; then  # the postgres user runs archive_command: it writes the archive and its state
  chown -R postgres "$WORK/pitr-repo" "$WORK/pitr-state" "$WORK/etc/crmops.env"
fi
chmod 600 "$WORK/etc/crmops.env"
archive=$(json wal setup --env-file "$WORK/etc/crmops.env" --archive-timeout 5 | field 'd["settings"]["archive_command"]')
case "$archive" in "CRMOPS_ENV_FILE=$WORK/etc/crmops.env $WORK/"*" wal push %p") ;;
  *) fail "wal setup names another crmops: $archive" ;; esac
LOGS="$WORK/pg-logs"  # the server writes its logs as the postgres user
mkdir -m 700 "$PGDATA_DIR" "$LOGS" && { [ "$(id -u)" != 0 ] || chown postgres "$PGDATA_DIR" "$LOGS"; }
as_pg "$PG_BIN/initdb" -D "$PGDATA_DIR" -U postgres -A trust --no-sync -E UTF8 --locale=C.UTF-8 >"$WORK/initdb.log" 2>&1 \
  || { cat "$WORK/initdb.log" >&2; fail "initdb"; }
cat >>"$PGDATA_DIR/postgresql.auto.conf" <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$LOGS'
fsync = off
wal_level = replica
archive_mode = on
archive_timeout = 5
archive_command = '$archive'
EOF
as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$LOGS/pg.log" -w -t 60 start >/dev/null || { tail "$LOGS/pg.log" >&2; fail "pg_ctl start"; }
sql() { "$PG_BIN/psql" -X -qAt -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$1"; }
sql "CREATE TABLE notes (id int PRIMARY KEY, body text)" >/dev/null
json backup --physical >/dev/null
sql "INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 50) g" >/dev/null
sleep 1.1
AT=$(sql "SELECT now()")
sleep 1.1
sql "DELETE FROM notes WHERE id > 10" >/dev/null
# close the segment holding the delete and wait until the postgres user's archive_command stored it
sql "SELECT pg_logical_emit_message(false, 'smoke', 'tick')" >/dev/null
last=$(sql "SELECT pg_walfile_name(pg_switch_wal())")
for _ in $(seq 1 150); do
  done_=$(sql "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
  [[ "$done_" > "$last" || "$done_" == "$last" ]] && break
  sleep 0.2
done
[[ "$done_" > "$last" || "$done_" == "$last" ]] || { tail -20 "$LOGS/pg.log" >&2; fail "archive_command did not archive $last"; }
json wal status >/dev/null || fail "wal status"
RESTORED="$WORK/restored"
json restore --at "$AT" --to-datadir "$RESTORED" >/dev/null
[ -s "$RESTORED/PG_VERSION" ] && [ -f "$RESTORED/recovery.signal" ] || fail "restore --at wrote no data directory"
# start the copy on a port of its own, archiving nothing, and read the moment back
PORT2=$("$WORK/opt/crmops/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf "port = %s\nunix_socket_directories = '%s'\narchive_mode = off\n" "$PORT2" "$LOGS" >>"$RESTORED/postgresql.auto.conf"
[ "$(id -u)" = 0 ] && chown -R postgres "$RESTORED"
as_pg "$PG_BIN/pg_ctl" -D "$RESTORED" -l "$LOGS/restored.log" -w -t 60 start >/dev/null \
  || { tail -20 "$LOGS/restored.log" >&2; fail "the restored data directory does not start"; }
for _ in $(seq 1 150); do
  [ "$(as_pg "$PG_BIN/psql" -X -qAt -h "$LOGS" -p "$PORT2" -U postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ] && break
  sleep 0.2
done
# the copy's own pg_hba.conf: peer on the local socket, passwords on loopback
got=$(as_pg "$PG_BIN/psql" -X -qAt -h "$LOGS" -p "$PORT2" -U postgres -c "SELECT count(*) FROM notes") \
  || { tail -20 "$LOGS/restored.log" >&2; fail "the restored copy does not answer"; }
[ "$got" = 50 ] || fail "restore --at $AT gave $got notes, not 50"
step "passed"
