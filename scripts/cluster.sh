#!/usr/bin/env bash
# The project's own PostgreSQL 15 cluster: data in .genome/pgdata, 127.0.0.1:${GENOME_PORT:-55432}.
#   scripts/cluster.sh start | stop | restart | status | psql [args...] | init
set -euo pipefail
source "$(dirname "$0")/env.sh"

as_pg() { runuser -u postgres -- "$@"; }

ensure_traversable() {
  # The server runs as `postgres` and must reach .genome/ inside the checkout.
  local d="$STATE"
  while [ "$d" != "/" ]; do
    if ! runuser -u postgres -- test -x "$d"; then
      echo "granting search (x) permission on $d so the postgres user can reach the data directory"
      chmod o+x "$d"
    fi
    d="$(dirname "$d")"
  done
}

init() {
  mkdir -p "$STATE"
  ensure_traversable
  if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
    install -d -o postgres -g postgres -m 700 "$PGDATA_DIR"
    install -d -o postgres -g postgres -m 755 "$PGSOCK_DIR"
    as_pg "$PG_BIN/initdb" -D "$PGDATA_DIR" -A trust -U postgres --no-sync -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >> "$PGDATA_DIR/postgresql.conf" <<CONF
# --- pg_genome's local cluster ---
listen_addresses = '127.0.0.1'
port = $GENOME_PORT
unix_socket_directories = '$PGSOCK_DIR'
shared_preload_libraries = 'pg_cron,pg_genome'
cron.database_name = 'genome'
max_worker_processes = 16
logging_collector = off
CONF
  fi
  install -d -o postgres -g postgres -m 755 "$PGSOCK_DIR"
  touch "$PGLOG" && chown postgres "$PGLOG"
  # pg_genome's own settings live in an include file rewritten at every start, so that a
  # cluster made by an older checkout picks up new ones.
  grep -q "^include_if_exists = 'genome.conf'" "$PGDATA_DIR/postgresql.conf" \
    || echo "include_if_exists = 'genome.conf'" >> "$PGDATA_DIR/postgresql.conf"
  cat > "$PGDATA_DIR/genome.conf" <<CONF
# written by scripts/cluster.sh at every start
# background embedding workers: the main job's database and the integration tests' one
genome.worker_databases = 'genome,genome_it'
genome.embed_workers = 1
${GENOME_EXTRA_CONF:-}
CONF
  chown postgres "$PGDATA_DIR/genome.conf"
}

running() { as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; }

start() {
  init
  if running; then return 0; fi
  as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGLOG" -w -t 60 start >/dev/null \
    || { tail -30 "$PGLOG"; exit 1; }
  echo "cluster running on 127.0.0.1:$GENOME_PORT (data $PGDATA_DIR, log $PGLOG)"
}

stop() {
  if [ -f "$PGDATA_DIR/PG_VERSION" ] && running; then
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w stop >/dev/null
    echo "cluster stopped"
  fi
}

case "${1:-status}" in
  init) init ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if [ -f "$PGDATA_DIR/PG_VERSION" ] && running; then echo "running on 127.0.0.1:$GENOME_PORT"; else echo "stopped"; fi ;;
  psql) shift; exec psql "$@" ;;
  *) echo "usage: $0 start|stop|restart|status|psql [args]" >&2; exit 2 ;;
esac
