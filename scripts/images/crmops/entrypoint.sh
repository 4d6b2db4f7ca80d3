#!/bin/sh
# The crmops image's entrypoint: `crmops ARGS...`, or with `loop` the scheduled jobs forever
# (for a Compose stack without a host scheduler; docs/COMPOSE.md):
#   CRMOPS_LOOP_JOBS      jobs separated by ";"   (default "backup; verify")
#   CRMOPS_LOOP_INTERVAL  seconds between rounds  (default 86400)
# A failed job is logged with its exit code and the next one still runs; notifications and
# metrics come from crmops's own configuration (notify:).
set -u
if [ "${1:-}" != loop ]; then exec crmops "$@"; fi
jobs=${CRMOPS_LOOP_JOBS:-backup; verify}
every=${CRMOPS_LOOP_INTERVAL:-86400}
case "$every" in ''|*[!0-9]*) echo "crmops loop: CRMOPS_LOOP_INTERVAL must be seconds, not '$every'" >&2; exit 2 ;; esac
trap 'exit 0' TERM INT
while :; do
  old_ifs=$IFS; IFS=';'
  for job in $jobs; do
    IFS=$old_ifs
    # shellcheck disable=SC2086  # a job is crmops's arguments, split on spaces
    set -- $job
    [ $# -gt 0 ] || continue
    echo "crmops loop: $(date -u +%FT%TZ) crmops $*"
    crmops --log-format json "$@"; rc=$?
    [ "$rc" = 0 ] || echo "crmops loop: crmops $* exited $rc" >&2
    IFS=';'
  done
  IFS=$old_ifs
  sleep "$every" & wait $!
done
