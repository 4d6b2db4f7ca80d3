#!/usr/bin/env bash
# The real test bed: Docker engine, PostgreSQL 15, MariaDB 10.11 and an S3 server
# (moto_server), all on loopback, plus the sandbox images built from Debian.
#
#   scripts/testbed.sh up       install what is missing, start what is down (idempotent)
#   scripts/testbed.sh status   say what runs
#   scripts/testbed.sh down     stop what this script started, by pid (data is kept)
#
# State lives in $CRMOPS_TESTBED_DIR (default ./.testbed): data folders, logs, pid
# files and `env`, which tests/conftest.py reads. Ports come from the environment so
# two checkouts on one machine can run beside each other.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BED="${CRMOPS_TESTBED_DIR:-$ROOT/.testbed}"
PYTHON="${CRMOPS_TESTBED_PYTHON:-$ROOT/.venv/bin/python}"
PG_BIN=/usr/lib/postgresql/15/bin
APT_PACKAGES=(docker.io debootstrap postgresql mariadb-server restic chromium iproute2 procps openssl python3 python3-venv
              libmariadb-dev pkg-config)  # the last two: mysqlclient for Django CRM (tests/realschemas)

mkdir -p "$BED"
chmod 711 "$BED"  # postgres and mysql users must reach their own folders
listening() { (: </dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

free_port() {  # free_port PORT: PORT, or the first of PORT+1000, PORT+2000... nobody listens on
  local p=$1
  while listening "$p"; do p=$((p + 1000)); done
  echo "$p"
}

# Ports are chosen once per state folder and kept in $BED/ports, so a second checkout
# (e.g. CI in a fresh clone beside a running bed) runs alongside instead of clashing.
# CRMOPS_TESTBED_{PG,MYSQL,S3}_PORT win when set.
port_of() { sed -n "s|^$1=.*@\?127.0.0.1:\([0-9]*\).*|\1|p" "$BED/env" 2>/dev/null; }
if [ -s "$BED/ports" ]; then
  . "$BED/ports"
elif [ -s "$BED/env" ]; then  # a bed from before the ports file: keep its ports
  PG_PORT=$(port_of CRMOPS_TEST_PG_URL); MY_PORT=$(port_of CRMOPS_TEST_MYSQL_URL)
  S3_PORT=$(port_of CRMOPS_TEST_S3_ENDPOINT)
fi
PG_PORT="${CRMOPS_TESTBED_PG_PORT:-${PG_PORT:-$(free_port 55432)}}"
MY_PORT="${CRMOPS_TESTBED_MYSQL_PORT:-${MY_PORT:-$(free_port 53306)}}"
S3_PORT="${CRMOPS_TESTBED_S3_PORT:-${S3_PORT:-$(free_port 55000)}}"
if [ "${1:-up}" = up ]; then
  printf 'PG_PORT=%s\nMY_PORT=%s\nS3_PORT=%s\n' "$PG_PORT" "$MY_PORT" "$S3_PORT" >"$BED/ports"
fi

log() { printf '[testbed %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
phase_start() { PHASE_T0=$(date +%s.%N); }
phase_end() { log "$1 ($(printf '%.1f' "$(echo "$(date +%s.%N) - $PHASE_T0" | bc)") s)"; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

secret() {  # a random password kept across runs, so a running server keeps matching env
  local f="$BED/$1.secret"
  [ -s "$f" ] || (umask 077; openssl rand -hex 16 > "$f")
  cat "$f"
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...  (WATCH_PID/WATCH_LOG: fail fast if it dies)
  local limit=$1 what=$2; shift 2
  local t0=$SECONDS
  until "$@" >/dev/null 2>&1; do
    if [ -n "${WATCH_PID:-}" ] && ! kill -0 "$WATCH_PID" 2>/dev/null; then
      log "$what exited during start-up:"; tail -5 "${WATCH_LOG:-/dev/null}" >&2; return 1
    fi
    if (( SECONDS - t0 > limit )); then log "$what did not come up within ${limit}s"; return 1; fi
    sleep 0.3
  done
}

install_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  command -v bc >/dev/null || missing+=(bc)
  if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$BED/apt.log" 2>&1 \
      || { tail -20 "$BED/apt.log"; exit 1; }
  fi
}

start_docker() {
  if docker info >/dev/null 2>&1; then return; fi
  if alive "$BED/dockerd.pid"; then
    wait_for 60 dockerd docker info
    return
  fi
  log "starting dockerd"
  nohup dockerd >"$BED/dockerd.log" 2>&1 &
  echo $! >"$BED/dockerd.pid"
  wait_for 90 dockerd docker info
}

start_postgres() {
  local data="$BED/pg" pw
  pw=$(secret pg)
  if [ ! -s "$data/PG_VERSION" ]; then
    log "initialising PostgreSQL 15 cluster"
    rm -rf "$data"; mkdir -p "$data" "$BED/pgsock"
    chown postgres:postgres "$data" "$BED/pgsock"
    local pwfile; pwfile=$(mktemp); printf '%s\n' "$pw" >"$pwfile"; chown postgres "$pwfile"
    su postgres -s /bin/sh -c "$PG_BIN/initdb -D '$data' -U postgres --pwfile='$pwfile' \
      --auth=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8" >"$BED/pg-init.log" 2>&1 \
      || { rm -f "$pwfile"; cat "$BED/pg-init.log"; exit 1; }
    rm -f "$pwfile"
  fi
  chown postgres:postgres "$BED/pgsock" 2>/dev/null || true
  if su postgres -s /bin/sh -c "$PG_BIN/pg_ctl -D '$data' status" >/dev/null 2>&1; then return; fi
  log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
  su postgres -s /bin/sh -c "$PG_BIN/pg_ctl -D '$data' -l '$data/server.log' -w -t 60 start \
    -o \"-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories='$BED/pgsock' \
        -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
        -c max_prepared_transactions=10\"" >/dev/null
  head -1 "$data/postmaster.pid" >"$BED/pg.pid"
}

start_mariadb() {
  local data="$BED/mysql" pw
  pw=$(secret mysql)
  local run="$BED/mysqlrun"  # mariadbd runs as mysql: its socket and log live in a folder it owns
  local sock="$run/mysql.sock"
  mkdir -p "$run"; chown mysql:mysql "$run"
  if alive "$BED/mysql.pid" && MYSQL_PWD="$pw" mariadb-admin --socket="$sock" -uroot ping >/dev/null 2>&1; then
    return
  fi
  if [ ! -d "$data/mysql" ]; then
    log "initialising MariaDB datadir"
    rm -rf "$data"; mkdir -p "$data"; chown mysql:mysql "$data"
    mariadb-install-db --user=mysql --datadir="$data" --auth-root-authentication-method=normal \
      --skip-test-db >"$BED/mysql-init.log" 2>&1 || { cat "$BED/mysql-init.log"; exit 1; }
    touch "$BED/mysql.needs-password"
  fi
  log "starting MariaDB on 127.0.0.1:$MY_PORT"
  nohup mariadbd --no-defaults --user=mysql --datadir="$data" --bind-address=127.0.0.1 \
    --port="$MY_PORT" --socket="$sock" --pid-file="$run/mysqld.pid" \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
    --innodb-flush-log-at-trx-commit=2 --innodb-buffer-pool-size=512M --max-connections=300 \
    --log-error="$run/mysqld.log" --skip-name-resolve >/dev/null 2>&1 &
  echo $! >"$BED/mysql.pid"
  local WATCH_PID; WATCH_PID=$(cat "$BED/mysql.pid"); local WATCH_LOG="$run/mysqld.log"
  if [ -f "$BED/mysql.needs-password" ]; then
    wait_for 60 mariadb mariadb-admin --socket="$sock" -uroot ping
    # the password goes in through stdin, never on a command line
    mariadb --socket="$sock" -uroot <<SQL
ALTER USER 'root'@'localhost' IDENTIFIED BY '$pw';
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';
ALTER USER 'root'@'127.0.0.1' IDENTIFIED BY '$pw';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
FLUSH PRIVILEGES;
SQL
    rm -f "$BED/mysql.needs-password"
  fi
  MYSQL_PWD="$pw" wait_for 60 mariadb mariadb-admin --socket="$sock" -uroot ping
}

s3_up() { "$PYTHON" - "$S3_PORT" <<'PY'
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/moto-api/", timeout=2)
PY
}

start_moto() {
  if s3_up >/dev/null 2>&1; then return; fi
  log "starting moto_server on 127.0.0.1:$S3_PORT"
  nohup "$ROOT/.venv/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$BED/moto.log" 2>&1 &
  echo $! >"$BED/moto.pid"
  wait_for 60 moto_server s3_up
}

write_env() {
  local pgpw mypw
  pgpw=$(secret pg); mypw=$(secret mysql)
  umask 077
  {
    echo "CRMOPS_TEST_PG_URL=postgresql://postgres:$pgpw@127.0.0.1:$PG_PORT/postgres"
    echo "CRMOPS_TEST_MYSQL_URL=mysql://root:$mypw@127.0.0.1:$MY_PORT/mysql"
    echo "CRMOPS_TEST_S3_ENDPOINT=http://127.0.0.1:$S3_PORT"
    if [ "${IMAGES_OK:-0}" = 1 ]; then echo "CRMOPS_TEST_DOCKER=1"; fi
  } >"$BED/env.tmp"
  mv "$BED/env.tmp" "$BED/env"
}

cmd_up() {
  local t0=$SECONDS
  phase_start; install_packages; phase_end "packages ready"
  phase_start; start_postgres; phase_end "PostgreSQL up"
  phase_start; start_mariadb; phase_end "MariaDB up"
  phase_start; start_moto; phase_end "S3 up"
  IMAGES_OK=0; write_env
  phase_start; start_docker; phase_end "Docker engine up"
  phase_start
  "$ROOT/scripts/images/build.sh"
  phase_end "sandbox images ready"
  IMAGES_OK=1; write_env
  log "test bed up in $((SECONDS - t0)) s; settings in $BED/env"
}

cmd_status() {
  local pgpw mypw; pgpw=$(secret pg); mypw=$(secret mysql)
  PGPASSWORD="$pgpw" "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT" -q && echo "postgresql: up" || echo "postgresql: down"
  MYSQL_PWD="$mypw" mariadb-admin -h 127.0.0.1 -P "$MY_PORT" -uroot ping >/dev/null 2>&1 \
    && echo "mariadb: up" || echo "mariadb: down"
  s3_up >/dev/null 2>&1 && echo "s3: up" || echo "s3: down"
  docker info >/dev/null 2>&1 && echo "docker: up" || echo "docker: down"
  for t in postgres:13 postgres:15 postgres:17 mariadb:10.5 mariadb:10.11 mariadb:11.8 \
           crmops-demo-app:1.0 crmops-demo-app:2.0 crmops-pg-upgrade:13-17 \
           "crmops:$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/crmops/__init__.py")"; do
    docker image inspect "$t" >/dev/null 2>&1 && echo "image $t: present" \
      || echo "image $t: missing (scripts/images/build.sh $t)"
  done
}

stop_pid() {  # stop_pid NAME PIDFILE: only what this script started
  local f=$2
  if alive "$f"; then
    log "stopping $1 (pid $(cat "$f"))"
    kill "$(cat "$f")"
    for _ in $(seq 1 50); do alive "$f" || break; sleep 0.2; done
  fi
  rm -f "$f"
}

cmd_down() {
  if [ -s "$BED/pg/PG_VERSION" ]; then
    su postgres -s /bin/sh -c "$PG_BIN/pg_ctl -D '$BED/pg' -m fast stop" >/dev/null 2>&1 || true
    rm -f "$BED/pg.pid"
  fi
  stop_pid mariadb "$BED/mysql.pid"
  stop_pid moto_server "$BED/moto.pid"
  stop_pid dockerd "$BED/dockerd.pid"
}

case "${1:-up}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
