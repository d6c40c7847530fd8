#!/usr/bin/env bash
# Every test: the core crate (cargo test), the pgrx layer (#[pg_test] in a throwaway cluster) and
# integration tests against the project's cluster (pytest + psycopg). Needs scripts/setup.sh first.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO"

say "1/3 core: cargo test -p genome-core (release: the pipeline tests run UMAP on 3k real embeddings)"
cargo test --release -p genome-core 2>&1

say "2/3 PostgreSQL edges: cargo pgrx test (throwaway cluster, as the postgres user)"
# cargo pgrx test copies the .so over the installed one in place: a running cluster that preloads
# it would crash (SIGBUS). Stop ours and remove the file first.
"$REPO/scripts/cluster.sh" stop
rm -f "$(pg_pkglibdir)/pg_genome.so"
install -d -o postgres -g postgres "$STATE/pgrx-test"
cargo pgrx test pg15 --runas postgres --pgdata "$STATE/pgrx-test/pgdata" 2>&1

say "3/3 integration: pytest against the project's cluster (release build)"
cargo pgrx install --release --pg-config "$PG_CONFIG" 2>&1 | grep -E "Installing|Finished" || true
install_release_scripts
cargo build --release -p genome-cli 2>&1 | grep -E "error|Finished" || true
"$REPO/scripts/cluster.sh" start
"$VENV/bin/pytest" -q -p no:cacheprovider "$REPO/tests/integration" 2>&1
