#!/usr/bin/env bash
# Several local PostgreSQL 15 clusters with pg_genome, for the scale-out tests and benchmark: a
# coordinator and data nodes n1..nN, on 127.0.0.1 ports from GENOME_NODES_PORT (default 25440:
# coordinator 25440, n1 25441, ...: below Linux's ephemeral ports 32768-60999, which an outgoing
# connection could hold). Data in .genome/multinode/<name>, logs beside it. Each is a
# cluster as scripts/cluster.sh makes the main one (pg_cron, pg_genome preloaded).
#   scripts/nodes.sh start N    the coordinator and n1..nN (already running ones are kept)
#   scripts/nodes.sh stop       every one of them
#   scripts/nodes.sh stop NAME  one (coordinator, n1, ...)
#   scripts/nodes.sh status
set -euo pipefail
source "$(dirname "$0")/env.sh"
BASE="${GENOME_NODES_PORT:-25440}"
DIR="$STATE/multinode"

port_of() { case "$1" in coordinator) echo "$BASE" ;; n*) echo $((BASE + ${1#n})) ;; esac; }
# wal_level = logical: the coordinator publishes the model registry and the ranking catalogs to
# the data nodes (genome_cluster.publish, README "Several nodes")
one() { GENOME_PORT="$(port_of "$2")" GENOME_PGDATA="$DIR/$2" GENOME_EXTRA_CONF="wal_level = logical" \
          "$REPO/scripts/cluster.sh" "$1"; }
names() { for d in "$DIR"/*/; do [ -f "$d/PG_VERSION" ] && basename "$d"; done 2>/dev/null || true; }

case "${1:-status}" in
  start)
    n="${2:?usage: $0 start N}"
    mkdir -p "$DIR"
    for name in coordinator $(seq -f 'n%g' 1 "$n"); do
      one start "$name" >/dev/null
      # a cluster started by an older checkout: restart it for wal_level
      if [ "$(psql -h 127.0.0.1 -p "$(port_of "$name")" -U postgres -d postgres -Atc 'SHOW wal_level')" != logical ]; then
        one restart "$name" >/dev/null
      fi
      printf '%-12s %s\n' "$name" "$(one status "$name")"
    done ;;
  stop)
    if [ -n "${2:-}" ]; then one stop "$2"; else for name in $(names); do one stop "$name" >/dev/null; done; fi ;;
  status)
    for name in $(names); do printf '%-12s %s\n' "$name" "$(one status "$name")"; done ;;
  *) echo "usage: $0 start N | stop [NAME] | status" >&2; exit 2 ;;
esac
