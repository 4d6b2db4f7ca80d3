#!/bin/sh
# Entrypoint honouring the official mariadb image's contract: MARIADB_ROOT_PASSWORD,
# MARIADB_ALLOW_EMPTY_ROOT_PASSWORD, MARIADB_RANDOM_ROOT_PASSWORD, MARIADB_DATABASE,
# MARIADB_USER, MARIADB_PASSWORD (MYSQL_* accepted too), port 3306, mysqld as PID 1.
set -eu
: "${MARIADB_ROOT_PASSWORD:=${MYSQL_ROOT_PASSWORD:-}}"
: "${MARIADB_ALLOW_EMPTY_ROOT_PASSWORD:=${MYSQL_ALLOW_EMPTY_PASSWORD:-}}"
: "${MARIADB_DATABASE:=${MYSQL_DATABASE:-}}"
: "${MARIADB_USER:=${MYSQL_USER:-}}"
: "${MARIADB_PASSWORD:=${MYSQL_PASSWORD:-}}"
DATADIR=/var/lib/mysql
SOCK=/run/mysqld/mysqld.sock
mkdir -p /run/mysqld "$DATADIR"
chown mysql:mysql /run/mysqld "$DATADIR"

if [ ! -d "$DATADIR/mysql" ]; then
  if [ -z "$MARIADB_ROOT_PASSWORD" ] && [ -z "$MARIADB_ALLOW_EMPTY_ROOT_PASSWORD" ] \
     && [ -z "${MARIADB_RANDOM_ROOT_PASSWORD:-}" ]; then
    echo "error: database is uninitialized and password option is not specified" >&2
    echo "  You need to specify one of MARIADB_ROOT_PASSWORD, MARIADB_ALLOW_EMPTY_ROOT_PASSWORD and MARIADB_RANDOM_ROOT_PASSWORD" >&2
    exit 1
  fi
  if [ -n "${MARIADB_RANDOM_ROOT_PASSWORD:-}" ]; then
    MARIADB_ROOT_PASSWORD=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
    echo "GENERATED ROOT PASSWORD: $MARIADB_ROOT_PASSWORD"
  fi
  mariadb-install-db --user=mysql --datadir="$DATADIR" --auth-root-authentication-method=normal \
    --skip-test-db >/dev/null
  mariadbd --user=mysql --datadir="$DATADIR" --skip-networking --socket="$SOCK" &
  pid=$!
  i=0
  until mariadb-admin --socket="$SOCK" -uroot ping >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -gt 300 ] && { echo "temporary server did not start" >&2; exit 1; }
    sleep 0.2
  done
  esc() { printf '%s' "$1" | sed "s/\\\\/\\\\\\\\/g; s/'/\\\\'/g"; }
  rootpw=$(esc "$MARIADB_ROOT_PASSWORD")
  {
    echo "SET @@SESSION.SQL_LOG_BIN=0;"
    echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '$rootpw';"
    echo "CREATE USER 'root'@'%' IDENTIFIED BY '$rootpw';"
    echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
    if [ -n "$MARIADB_DATABASE" ]; then
      echo "CREATE DATABASE IF NOT EXISTS \`$MARIADB_DATABASE\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;"
    fi
    if [ -n "$MARIADB_USER" ]; then
      echo "CREATE USER '$MARIADB_USER'@'%' IDENTIFIED BY '$(esc "$MARIADB_PASSWORD")';"
      [ -n "$MARIADB_DATABASE" ] && echo "GRANT ALL ON \`$MARIADB_DATABASE\`.* TO '$MARIADB_USER'@'%';"
    fi
    echo "FLUSH PRIVILEGES;"
  } >/tmp/init.sql  # the container's own /tmp, removed right after
  mariadb --socket="$SOCK" -uroot </tmp/init.sql || { echo "error: initial SQL failed" >&2; exit 1; }
  rm -f /tmp/init.sql
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sql) MYSQL_PWD="$MARIADB_ROOT_PASSWORD" mariadb --socket="$SOCK" -uroot ${MARIADB_DATABASE:+"$MARIADB_DATABASE"} <"$f" ;;
      *.sh) . "$f" ;;
    esac
  done
  MYSQL_PWD="$MARIADB_ROOT_PASSWORD" mariadb-admin --socket="$SOCK" -uroot shutdown
  wait $pid || true
  echo "MariaDB init process done. Ready for start up."
fi

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ] && [ "$1" != mariadbd ] && [ "$1" != mysqld ]; then
  exec "$@"
fi
case "${1:-}" in mariadbd|mysqld) shift ;; esac
exec mariadbd --user=mysql --datadir="$DATADIR" --bind-address=0.0.0.0 --port=3306 --socket="$SOCK" \
  --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci "$@"
