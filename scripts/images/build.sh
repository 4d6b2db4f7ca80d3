#!/usr/bin/env bash
# Build the sandbox images from Debian packages, since no container registry is
# reachable: each is a debootstrap'ed bookworm with the engine and an entrypoint
# that honours the official image's environment contract. A tag that already
# exists is left alone, so this takes seconds once the images are there.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
MIRROR="${CRMOPS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
WORK="${CRMOPS_IMAGE_WORKDIR:-/var/tmp/crmops-images}"
mkdir -p "$WORK"

have() { docker image inspect "$1" >/dev/null 2>&1; }

rootfs() {  # rootfs NAME PACKAGES -> prints the folder
  local dir="$WORK/$1"
  rm -rf "$dir"
  debootstrap --variant=minbase --include="$2" bookworm "$dir" "$MIRROR" >"$WORK/$1.log" 2>&1 \
    || { tail -30 "$WORK/$1.log" >&2; return 1; }
  # keep images lean: no package lists or caches
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc/* "$dir"/usr/share/man/*
  echo "$dir"
}

import() {  # import DIR TAG ENTRYPOINT PORT ENV...
  local dir=$1 tag=$2 entry=$3 port=$4; shift 4
  local changes=(-c "ENTRYPOINT [\"$entry\"]" -c "EXPOSE $port" -c "LABEL org.crmops.built-by=scripts/images/build.sh")
  for e in "$@"; do changes+=(-c "ENV $e"); done
  tar -C "$dir" -c . | docker import "${changes[@]}" - "$tag" >/dev/null
  rm -rf "$dir"
}

build_postgres() {
  have postgres:15 && return
  local dir; dir=$(rootfs postgres "postgresql-15,postgresql-client-15,locales-all")
  install -m 755 "$HERE/postgres-entrypoint.sh" "$dir/usr/local/bin/docker-entrypoint.sh"
  mkdir -p "$dir/docker-entrypoint-initdb.d" "$dir/var/lib/postgresql/data"
  import "$dir" postgres:15 /usr/local/bin/docker-entrypoint.sh 5432 \
    "PGDATA=/var/lib/postgresql/data" "LANG=C.UTF-8" "PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  echo "built postgres:15"
}

build_mariadb() {
  have mariadb:10.11 && return
  local dir; dir=$(rootfs mariadb "mariadb-server,mariadb-client")
  install -m 755 "$HERE/mariadb-entrypoint.sh" "$dir/usr/local/bin/docker-entrypoint.sh"
  # Debian's postinst initialises a datadir; the official image ships it empty so the
  # entrypoint sets it up from MARIADB_* on first start
  rm -rf "$dir"/var/lib/mysql/*
  mkdir -p "$dir/docker-entrypoint-initdb.d"
  import "$dir" mariadb:10.11 /usr/local/bin/docker-entrypoint.sh 3306 "LANG=C.UTF-8"
  echo "built mariadb:10.11"
}

# the app needs json and http.server: python3-minimal lacks them, so an image built from it
# exits at start; such an image is rebuilt
app_runs() { docker run --rm "$1" python3 -c 'import http.server, json' >/dev/null 2>&1; }

build_app() {
  for v in 1.0 2.0; do
    have "crmops-demo-app:$v" && app_runs "crmops-demo-app:$v" || break
    [ "$v" = 2.0 ] && return
  done
  if ! { have crmops-debian-python:bookworm && app_runs crmops-debian-python:bookworm; }; then
    local dir; dir=$(rootfs python "python3")
    tar -C "$dir" -c . | docker import -c 'CMD ["/bin/sh"]' - crmops-debian-python:bookworm >/dev/null
    rm -rf "$dir"
  fi
  for v in 1.0 2.0; do
    docker build -q -t "crmops-demo-app:$v" --build-arg "VERSION=$v" -f "$HERE/app/Dockerfile" "$HERE/app" >/dev/null
  done
  echo "built crmops-demo-app:1.0 and :2.0"
}

# the two engine images download in parallel; the small app image after them
build_postgres & p1=$!
build_mariadb & p2=$!
fail=0
wait $p1 || fail=1
wait $p2 || fail=1
build_app || fail=1
exit $fail
