#!/usr/bin/env bash
# Build the sandbox images from Debian packages, since no container registry is
# reachable: each is a debootstrap'ed Debian suite with the engine and an entrypoint
# that honours the official image's environment contract. One suite per server
# version, so the test matrix covers what real CRMs run on:
#
#   bullseye: postgres:13  mariadb:10.5
#   bookworm: postgres:15  mariadb:10.11
#   trixie:   postgres:17  mariadb:11.8
#
# crmops-djangocrm:2.4.0 and :3.1.0, the real Django CRM (djangocrm/Dockerfile, wheels from PyPI),
# crmops-tryton:SERIES for 7.0 7.2 7.4 7.6 7.8 8.0, Tryton's server and the modules for parties, opportunities
# and sales (tryton/Dockerfile, the series' latest wheels from PyPI, on crmops-runtime:bookworm's Python 3.11),
# and crmops-pg-upgrade:13-17, PostgreSQL 13 and 17 in one image for pg_upgrade, made by
# `docker build` from the two local postgres images (pg-upgrade/Dockerfile, no download).
#
#   scripts/images/build.sh                  every image whose tag is missing
#   scripts/images/build.sh postgres:17 ...  only these tags (still only when missing)
#
# and crmops:VERSION, crmops itself (VERSION from crmops/__init__.py) for Compose stacks: the
# wheel and its dependencies on crmops-runtime:bookworm (python3 + PostgreSQL 15 and MariaDB
# client tools, debootstrap'ed), by `docker build` from crmops/Dockerfile, no registry.
#
# A tag that already exists is left alone (never removed or retagged), so this takes
# seconds once the images are there. Engine images build in parallel, each from its own
# folder and log under $CRMOPS_IMAGE_WORKDIR; the package's version is checked against
# the tag before import, so a suite that moved on fails the build instead of mislabelling.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
MIRROR="${CRMOPS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
WORK="${CRMOPS_IMAGE_WORKDIR:-/var/tmp/crmops-images}"
mkdir -p "$WORK"

# tag -> Debian suite
declare -A SUITE=(
  [postgres:13]=bullseye [postgres:15]=bookworm [postgres:17]=trixie
  [mariadb:10.5]=bullseye [mariadb:10.11]=bookworm [mariadb:11.8]=trixie
)
ENGINE_TAGS=(postgres:13 postgres:15 postgres:17 mariadb:10.5 mariadb:10.11 mariadb:11.8)
PG_UPGRADE_TAG=crmops-pg-upgrade:13-17
ROOT="$(cd "$HERE/../.." && pwd)"
CRMOPS_VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/crmops/__init__.py")
CRMOPS_TAG="crmops:$CRMOPS_VERSION"

have() { docker image inspect "$1" >/dev/null 2>&1; }

rootfs() {  # rootfs NAME SUITE PACKAGES -> prints the folder
  local dir="$WORK/$1" try
  # a second attempt rides out a mirror hiccup (a truncated download, a reset connection)
  for try in 1 2; do
    rm -rf "$dir"
    debootstrap --variant=minbase --include="$3" "$2" "$dir" "$MIRROR" >"$WORK/$1.log" 2>&1 && break
    if [ "$try" = 2 ]; then
      echo "debootstrap $2 for $1 failed twice (log: $WORK/$1.log):" >&2; tail -30 "$WORK/$1.log" >&2; return 1
    fi
    sleep 5
  done
  # keep images lean: no package lists or caches
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc/* "$dir"/usr/share/man/*
  echo "$dir"
}

pkg_version() {  # pkg_version DIR PACKAGE -> Debian version without epoch, e.g. 10.5.29-0+deb11u1
  dpkg-query --admindir="$1/var/lib/dpkg" -W -f '${Version}' "$2" | sed 's/^[0-9]*://'
}

check_version() {  # check_version TAG VERSION: the package must be the tag's release line
  local want=${1#*:} got=$2
  case "$got" in
    "$want".*|"$want"-*|"$want"+*) ;;
    *) echo "$1: the suite ships version $got, not $want; not importing" >&2; return 1 ;;
  esac
}

import() {  # import DIR TAG ENTRYPOINT PORT ENV...
  local dir=$1 tag=$2 entry=$3 port=$4; shift 4
  local changes=(-c "ENTRYPOINT [\"$entry\"]" -c "EXPOSE $port" -c "LABEL org.crmops.built-by=scripts/images/build.sh")
  for e in "$@"; do changes+=(-c "ENV $e"); done
  tar -C "$dir" -c . | docker import "${changes[@]}" - "$tag" >/dev/null
  rm -rf "$dir"
}

build_postgres() {  # build_postgres TAG
  local tag=$1 v=${1#*:} t0=$SECONDS dir
  have "$tag" && return
  dir=$(rootfs "postgres-$v" "${SUITE[$tag]}" "postgresql-$v,postgresql-client-$v,locales-all")
  check_version "$tag" "$(pkg_version "$dir" "postgresql-$v")" || { rm -rf "$dir"; return 1; }
  install -m 755 "$HERE/postgres-entrypoint.sh" "$dir/usr/local/bin/docker-entrypoint.sh"
  mkdir -p "$dir/docker-entrypoint-initdb.d" "$dir/var/lib/postgresql/data"
  import "$dir" "$tag" /usr/local/bin/docker-entrypoint.sh 5432 \
    "PGDATA=/var/lib/postgresql/data" "LANG=C.UTF-8" "PATH=/usr/lib/postgresql/$v/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  echo "built $tag from ${SUITE[$tag]} in $((SECONDS - t0)) s"
}

build_mariadb() {  # build_mariadb TAG
  local tag=$1 v=${1#*:} t0=$SECONDS dir
  have "$tag" && return
  dir=$(rootfs "mariadb-$v" "${SUITE[$tag]}" "mariadb-server,mariadb-client")
  check_version "$tag" "$(pkg_version "$dir" mariadb-server)" || { rm -rf "$dir"; return 1; }
  install -m 755 "$HERE/mariadb-entrypoint.sh" "$dir/usr/local/bin/docker-entrypoint.sh"
  # Debian's postinst initialises a datadir; the official image ships it empty so the
  # entrypoint sets it up from MARIADB_* on first start
  rm -rf "$dir"/var/lib/mysql/*
  mkdir -p "$dir/docker-entrypoint-initdb.d"
  import "$dir" "$tag" /usr/local/bin/docker-entrypoint.sh 3306 "LANG=C.UTF-8"
  echo "built $tag from ${SUITE[$tag]} in $((SECONDS - t0)) s"
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
    local dir; dir=$(rootfs python bookworm "python3")
    tar -C "$dir" -c . | docker import -c 'CMD ["/bin/sh"]' - crmops-debian-python:bookworm >/dev/null
    rm -rf "$dir"
  fi
  for v in 1.0 2.0; do
    docker build -q -t "crmops-demo-app:$v" --build-arg "VERSION=$v" -f "$HERE/app/Dockerfile" "$HERE/app" >/dev/null
  done
  echo "built crmops-demo-app:1.0 and :2.0"
}

# Django CRM (django-crm-admin on PyPI) at the versions the real-CRM upgrade tests use: Debian
# trixie's Python 3.13 (Django 6 needs 3.12) and psycopg2, the app's pinned wheels
# fetched by pip on this host for that Python (so the build itself needs no network).
DJANGOCRM_VERSIONS=(2.4.0 3.1.0)
build_djangocrm() {
  local v ctx t0=$SECONDS meta
  for v in "${DJANGOCRM_VERSIONS[@]}"; do
    have "crmops-djangocrm:$v" && continue
    if ! have crmops-debian-python:trixie; then
      local dir; dir=$(rootfs python-trixie trixie "python3,python3-pip,python3-psycopg2")
      tar -C "$dir" -c . | docker import -c 'CMD ["/bin/sh"]' - crmops-debian-python:trixie >/dev/null
      rm -rf "$dir"
    fi
    ctx="$WORK/djangocrm-$v"
    rm -rf "$ctx" && mkdir -p "$ctx/wheels"
    cp "$HERE"/djangocrm/{Dockerfile,crmops_settings.py,crmops_urls.py,fixture.py} "$ctx/"
    python3 -m pip download -q --no-deps -d "$ctx/wheels" "django-crm-admin==$v" >"$WORK/djangocrm-$v.log" 2>&1       || { echo "pip download django-crm-admin==$v failed (log: $WORK/djangocrm-$v.log)" >&2; return 1; }
    # its pinned requirements, less mysqlclient (a C build; PyMySQL stands in) and setuptools
    meta=$(python3 - "$ctx"/wheels/django_crm_admin-*.whl <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
for line in meta.splitlines():
    if line.startswith("Requires-Dist: ") and ";" not in line:
        req = line.split(" ", 1)[1]
        if req.split("==")[0].lower() not in ("mysqlclient", "setuptools"):
            print(req)
print("gunicorn==23.0.0")
print("PyMySQL==1.1.1")
print("Pillow==11.3.0")  # imported by the admin (resize_image), not in its pins
PY
)
    printf '%s\n' "$meta" >"$ctx/requirements.txt"
    python3 -m pip download -q --only-binary=:all: --python-version 3.13 --implementation cp --abi cp313 --abi abi3 \
      --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform any -d "$ctx/wheels" -r "$ctx/requirements.txt" >>"$WORK/djangocrm-$v.log" 2>&1 \
      || { echo "pip download of django-crm-admin $v's requirements failed (log: $WORK/djangocrm-$v.log)" >&2; return 1; }
    DOCKER_BUILDKIT=0 docker build -q -t "crmops-djangocrm:$v" --build-arg "VERSION=$v" "$ctx" >>"$WORK/djangocrm-$v.log" 2>&1 \
      || { echo "building crmops-djangocrm:$v failed (log: $WORK/djangocrm-$v.log):" >&2; tail -20 "$WORK/djangocrm-$v.log" >&2; return 1; }
    rm -rf "$ctx"
    echo "built crmops-djangocrm:$v in $((SECONDS - t0)) s"
  done
}

# Tryton (trytond and the modules giving parties, opportunities and sales) at each series the
# staged upgrade passes through. Every series accepts Debian 12's Python 3.11 (7.0-7.4 need >= 3.8,
# 7.6 and 7.8 >= 3.9, 8.0 >= 3.10); 7.x talks to PostgreSQL through psycopg2, 8.0 through psycopg 3,
# so both go in. python-sql 1.8 writes an EXCLUDE constraint's WHERE without the parentheses PostgreSQL
# needs, and only 8.0 is written for it (7.2's trytond-admin fails on ir_model's new constraint): 7.x
# keeps the python-sql of its time (< 1.8). argon2-cffi in every series: 7.0 hashes passwords with
# argon2 only when it is there (scrypt otherwise), and from 7.6 on Tryton checks argon2 and bcrypt
# hashes only, so a 7.0 user without it could not sign in after the upgrade. Wheels land in one shared folder ($WORK/tryton-wheels, the pip cache across series:
# lxml and the rest download once); each image's context gets only its series' wheels, picked from
# that folder offline, and one pip layer installs them.
TRYTON_SERIES=(7.0 7.2 7.4 7.6 7.8 8.0)
TRYTON_PIP=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
            --platform any)
build_tryton() {  # build_tryton [SERIES...]: crmops-tryton:SERIES for each (all when none named)
  local s ctx t0 log reqs series=("$@") fail=0
  ((${#series[@]})) || series=("${TRYTON_SERIES[@]}")
  for s in "${series[@]}"; do
    # an image from before STOPSIGNAL SIGINT made every swap wait out docker stop's timeout: rebuilt
    have "crmops-tryton:$s" \
      && [ "$(docker image inspect -f '{{.Config.StopSignal}}' "crmops-tryton:$s")" = SIGINT ] && continue
    t0=$SECONDS ctx="$WORK/tryton-$s" log="$WORK/tryton-$s.log"
    if ! have crmops-runtime:bookworm; then build_crmops_runtime || return 1; fi
    rm -rf "$ctx" && mkdir -p "$ctx/wheels" "$WORK/tryton-wheels"
    cp "$HERE"/tryton/{Dockerfile,trytond.conf,fixture.py} "$ctx/"
    reqs=("trytond==$s.*" psycopg2-binary "psycopg[binary,pool]" argon2-cffi)
    [ "$s" = 8.0 ] || reqs+=("python-sql<1.8")
    for m in party company currency sale sale-opportunity; do reqs+=("trytond-$m==$s.*"); done
    { python3 -m pip download -q "${TRYTON_PIP[@]}" -d "$WORK/tryton-wheels" "${reqs[@]}" >"$log" 2>&1 \
      && python3 -m pip download -q --no-index --find-links "$WORK/tryton-wheels" "${TRYTON_PIP[@]}" \
           -d "$ctx/wheels" "${reqs[@]}" >>"$log" 2>&1; } \
      || { echo "pip download of Tryton $s failed (log: $log)" >&2; fail=1; continue; }
    DOCKER_BUILDKIT=0 docker build -q -t "crmops-tryton:$s" --build-arg "SERIES=$s" "$ctx" >>"$log" 2>&1 \
      || { echo "building crmops-tryton:$s failed (log: $log):" >&2; tail -20 "$log" >&2; fail=1; continue; }
    rm -rf "$ctx"
    echo "built crmops-tryton:$s ($(docker run --rm "crmops-tryton:$s" python3 -c \
      'import importlib.metadata as m; print(m.version("trytond"))')) in $((SECONDS - t0)) s"
  done
  return $fail
}

build_pg_upgrade() {  # build_pg_upgrade crmops-pg-upgrade:OLD-NEW, after postgres:OLD and postgres:NEW
  local tag=$1 pair=${1#*:} t0=$SECONDS old new
  old=${pair%-*} new=${pair#*-}
  have "$tag" && return
  for v in "$old" "$new"; do
    have "postgres:$v" || { echo "$tag needs postgres:$v (scripts/images/build.sh postgres:$v)" >&2; return 1; }
  done
  # the legacy builder: it needs no BuildKit component, and the recipe uses nothing newer
  DOCKER_BUILDKIT=0 docker build -q -t "$tag" --build-arg "OLD=$old" --build-arg "NEW=$new" \
    -f "$HERE/pg-upgrade/Dockerfile" "$HERE" >"$WORK/$tag.log" 2>&1 \
    || { echo "building $tag failed (log: $WORK/$tag.log):" >&2; tail -20 "$WORK/$tag.log" >&2; return 1; }
  echo "built $tag from postgres:$old and postgres:$new in $((SECONDS - t0)) s"
}

build_crmops_runtime() {  # crmops-runtime:bookworm: python3 and the client tools, the base of crmops:VERSION and Tryton
  local dir
  dir=$(rootfs crmops-runtime bookworm "python3,python3-venv,postgresql-client-15,mariadb-client,ca-certificates")
  tar -C "$dir" -c . | docker import -c 'CMD ["/bin/sh"]' -c "ENV LANG=C.UTF-8" \
    -c "LABEL org.crmops.built-by=scripts/images/build.sh" - crmops-runtime:bookworm >/dev/null
  rm -rf "$dir"
}

build_crmops() {  # crmops:VERSION from the checkout's wheel, on crmops-runtime:bookworm
  local t0=$SECONDS ctx dir
  have "$CRMOPS_TAG" && return
  if ! have crmops-runtime:bookworm; then build_crmops_runtime || return 1; fi
  ctx="$WORK/crmops-context"
  rm -rf "$ctx" && mkdir -p "$ctx/wheels"
  # the wheelhouse: crmops and every dependency, built by Debian 12's python3 like the image's; the
  # dependencies' wheels are kept in $WORK/crmops-wheelhouse, so a rebuild reads no index
  local pip="$WORK/crmops-pip/bin/pip" wh="$WORK/crmops-wheelhouse" log="$WORK/$CRMOPS_TAG.log"
  if ! "$WORK/crmops-pip/bin/python" -c 'import setuptools, wheel' 2>/dev/null; then
    rm -rf "$WORK/crmops-pip"; /usr/bin/python3 -m venv "$WORK/crmops-pip"
    "$pip" install -q "setuptools>=68" wheel >"$log" 2>&1 || { tail -20 "$log" >&2; return 1; }
  fi
  mkdir -p "$wh"
  { "$pip" wheel -q --no-deps --no-build-isolation --wheel-dir "$ctx/wheels" "$ROOT" >"$log" 2>&1 \
    && { "$pip" wheel -q --no-index --find-links "$wh" --wheel-dir "$ctx/wheels" "$ctx"/wheels/crmops-*.whl \
           >>"$log" 2>&1 \
         || { "$pip" wheel -q --find-links "$wh" --wheel-dir "$wh" "$ctx"/wheels/crmops-*.whl >>"$log" 2>&1 \
              && rm -f "$wh"/crmops-*.whl && cp "$wh"/*.whl "$ctx/wheels/"; }; }; } \
    || { echo "building the wheels for $CRMOPS_TAG failed (log: $log):" >&2; tail -20 "$log" >&2; return 1; }
  cp "$HERE/crmops/Dockerfile" "$ctx/Dockerfile"
  install -m 755 "$HERE/crmops/entrypoint.sh" "$ctx/entrypoint.sh"
  DOCKER_BUILDKIT=0 docker build -q -t "$CRMOPS_TAG" --build-arg "VERSION=$CRMOPS_VERSION" "$ctx" \
    >>"$WORK/$CRMOPS_TAG.log" 2>&1 \
    || { echo "building $CRMOPS_TAG failed (log: $WORK/$CRMOPS_TAG.log):" >&2; tail -20 "$WORK/$CRMOPS_TAG.log" >&2
         return 1; }
  rm -rf "$ctx"
  echo "built $CRMOPS_TAG in $((SECONDS - t0)) s"
}

build_one() {
  case "$1" in
    postgres:*) build_postgres "$1" ;;
    mariadb:*) build_mariadb "$1" ;;
    crmops-demo-app|crmops-demo-app:*) build_app ;;
    crmops-djangocrm|crmops-djangocrm:*) build_djangocrm ;;
  esac
}

targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=("${ENGINE_TAGS[@]}" crmops-demo-app crmops-djangocrm "$PG_UPGRADE_TAG" crmops crmops-tryton)
fi
for t in "${targets[@]}"; do
  case "$t" in
    crmops-demo-app|crmops-demo-app:*|crmops-djangocrm|crmops-djangocrm:*|crmops-tryton) ;;
    crmops-tryton:*) [[ " ${TRYTON_SERIES[*]} " == *" ${t#*:} "* ]] \
                       || { echo "unknown Tryton series ${t#*:}; known: ${TRYTON_SERIES[*]}" >&2; exit 2; } ;;
    "$PG_UPGRADE_TAG"|crmops|"$CRMOPS_TAG") ;;
    *) [ -n "${SUITE[$t]:-}" ] || { echo "unknown image $t; known: ${ENGINE_TAGS[*]} crmops-demo-app crmops-djangocrm crmops-tryton $PG_UPGRADE_TAG $CRMOPS_TAG" >&2
                                    exit 2; } ;;
  esac
done

# the engine images download in parallel (the network, not the 2 cores, bounds them);
# the small app image after them
pids=()
app=0 pgu=0 dcrm=0 self=0 tryton=()
for t in "${targets[@]}"; do
  case "$t" in
    crmops-tryton) tryton+=("${TRYTON_SERIES[@]}") ;;
    crmops-tryton:*) tryton+=("${t#*:}") ;;
    crmops-demo-app*) app=1 ;;
    crmops-djangocrm*) dcrm=1 ;;
    "$PG_UPGRADE_TAG") pgu=1 ;;
    crmops|"$CRMOPS_TAG") self=1 ;;
    *) build_one "$t" & pids+=($!) ;;
  esac
done
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
if ((app)); then build_app || fail=1; fi
if ((dcrm)); then build_djangocrm || fail=1; fi
# made from the two postgres images, so after them (the only one built with `docker build` from local images)
if ((pgu)); then
  if ! have "$PG_UPGRADE_TAG"; then
    for v in postgres:13 postgres:17; do have "$v" || build_postgres "$v" || fail=1; done
  fi
  build_pg_upgrade "$PG_UPGRADE_TAG" || fail=1
fi
if ((self)); then build_crmops || fail=1; fi
if ((${#tryton[@]})); then build_tryton "${tryton[@]}" || fail=1; fi
exit $fail
