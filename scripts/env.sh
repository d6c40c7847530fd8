# Shared settings for the project's scripts (sourced, not run).
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$REPO/.genome"                     # everything generated: venv, models, data, cluster (git-ignored)
# pg_config of PostgreSQL 15: $PG_CONFIG if set, else the one on PATH if it reports 15, else Debian's.
find_pg_config() {
  local c
  for c in "$(command -v pg_config 2>/dev/null)" /usr/lib/postgresql/15/bin/pg_config; do
    if [ -x "$c" ] && "$c" --version 2>/dev/null | grep -q "PostgreSQL 15"; then echo "$c"; return; fi
  done
  echo /usr/lib/postgresql/15/bin/pg_config   # not installed yet: setup.sh installs PostgreSQL 15 there
}
PG_CONFIG="${PG_CONFIG:-$(find_pg_config)}"
PG_BIN="$("$PG_CONFIG" --bindir 2>/dev/null || dirname "$PG_CONFIG")"
GENOME_PORT="${GENOME_PORT:-55432}"
# another cluster than the main one (scripts/nodes.sh): GENOME_PGDATA names its data directory
PGDATA_DIR="${GENOME_PGDATA:-$STATE/pgdata}"
PGSOCK_DIR="$STATE/run"
PGLOG="${GENOME_PGDATA:+$GENOME_PGDATA.log}"
PGLOG="${PGLOG:-$STATE/postgres.log}"
VENV="$STATE/venv"
MODELS="$STATE/models"
ORT_VERSION="1.31.1"
export PG_CONFIG
export PGHOST=127.0.0.1 PGPORT="$GENOME_PORT" PGUSER=postgres PGDATABASE=genome
export CARGO_PGRX_DISABLE_GC_SECTIONS_WORKAROUND=1
export PATH="$HOME/.cargo/bin:$PATH"

# Where the server reads installed files from (also used by the tests).
pg_pkglibdir() { "$PG_CONFIG" --pkglibdir; }
pg_sharedir() { "$PG_CONFIG" --sharedir; }
ORT_LIB_DIR() { echo "$(pg_pkglibdir)/pg_genome"; }
MODEL_INSTALL_DIR() { echo "$(pg_sharedir)/pg_genome/models"; }

# Earlier releases' install scripts and the upgrade scripts (pgrx installs only the current one).
# The scale-out extension pg_genome_cluster (SQL only, cluster/): its control file and its
# install script, at the workspace's version.
install_release_scripts() {
  local ext version
  ext="$(pg_sharedir)/extension"
  version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -1)"
  cp "$REPO"/sql/install/*.sql "$REPO"/sql/upgrade/*.sql "$ext/"
  sed "s/@CARGO_VERSION@/$version/" "$REPO/cluster/pg_genome_cluster.control" > "$ext/pg_genome_cluster.control"
  cp "$REPO/cluster/pg_genome_cluster.sql" "$ext/pg_genome_cluster--$version.sql"
}

GENOME_T0=${GENOME_T0:-$SECONDS}
say() { printf '\n\033[1m==> %s\033[0m   (%d s)\n' "$*" "$((SECONDS - GENOME_T0))"; }

# A long cargo build, shown as it goes: one line per crate compiled, with the seconds elapsed,
# so a 15-minute release build never looks hung. Fails when cargo does.
cargo_progress() {
  local t=$SECONDS n=0 line
  set -o pipefail
  "$@" 2>&1 | while IFS= read -r line; do
    case "$line" in
      *Compiling*) n=$((n + 1)); printf '  [%4d s] %3d crates  %s\n' "$((SECONDS - t))" "$n" "${line#"${line%%[![:space:]]*}"}" ;;
      *Finished*|*Installing*|*Installed*|*error*|*warning:*|*Copying*) printf '  [%4d s] %s\n' "$((SECONDS - t))" "${line#"${line%%[![:space:]]*}"}" ;;
    esac
  done
}
