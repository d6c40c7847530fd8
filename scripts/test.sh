#!/usr/bin/env bash
# Every test: formatting and lints, the core crate (cargo test), the pgrx layer (#[pg_test] in a
# throwaway cluster), the expected-output SQL tier (pg_regress) and integration tests against the
# project's cluster (pytest + psycopg). Needs scripts/setup.sh first.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO"

say "1/5 hygiene: cargo fmt --check, cargo clippy -D warnings"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

say "2/5 core: cargo test -p genome-core (release: the pipeline tests run UMAP on 3k real embeddings)"
cargo test --release -p genome-core 2>&1

say "3/5 PostgreSQL edges: cargo pgrx test (throwaway cluster, as the postgres user)"
# cargo pgrx test copies the .so over the installed one in place: a running cluster that preloads
# it would crash (SIGBUS). Stop ours and remove the file first.
"$REPO/scripts/cluster.sh" stop
rm -f "$(pg_pkglibdir)/pg_genome.so"
install -d -o postgres -g postgres "$STATE/pgrx-test"
cargo pgrx test pg15 --runas postgres --pgdata "$STATE/pgrx-test/pgdata" 2>&1

say "4/5 expected output: pg_regress on tests/regress (release build installed)"
cargo_progress cargo pgrx install --release --pg-config "$PG_CONFIG"
install_release_scripts
cargo_progress cargo build --release -p genome-cli
"$REPO/scripts/cluster.sh" start
"$REPO/scripts/regress.sh"

say "5/5 integration: pytest against the project's cluster"
"$VENV/bin/pytest" -q -p no:cacheprovider "$REPO/tests/integration" 2>&1
say "all tests passed"
