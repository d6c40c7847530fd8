#!/usr/bin/env bash
# The expected-output tier (tests/regress): prepare the database genome_regress on the project's
# cluster, then run PostgreSQL's pg_regress on it. Needs the cluster running (scripts/cluster.sh).
set -euo pipefail
source "$(dirname "$0")/env.sh"
DB=genome_regress
OUT="$STATE/regress"
rm -rf "$OUT" && mkdir -p "$OUT"
psql -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
psql -d "$DB" -qv ON_ERROR_STOP=1 -v models="$(MODEL_INSTALL_DIR)" >/dev/null <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION pg_genome CASCADE;
SELECT genome.register_model_dir('tiny-bert', '1', :'models' || '/tiny-bert');
SELECT genome.register_model_dir('efficientnet-lite0', '1', :'models' || '/efficientnet-lite0', task => 'image-embedding');
CREATE TABLE regress_photos (pet int NOT NULL, photo_id int PRIMARY KEY, img bytea, shot_at timestamptz NOT NULL, look int);
-- err(q): runs a statement and shows the SQLSTATE and message it raised (the files' bad-input checks)
CREATE FUNCTION public.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE q;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
SQL
# pet 1: 8 photos of trousers and 8 of sneakers (Fashion-MNIST test images), a day apart
PYTHONPATH="$REPO/tests/integration" "$VENV/bin/python" - "$DB" <<'PY'
import datetime, sys
import numpy as np, psycopg
import imageset
x, y = imageset.fashion()
t0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
with psycopg.connect(dbname=sys.argv[1], autocommit=True) as c, c.cursor().copy("COPY regress_photos FROM STDIN") as cp:
    pid = 0
    for look in (1, 7):
        for i in np.where(y == look)[0][:8]:
            pid += 1
            cp.write_row((1, pid, imageset.png_of(x[i]), t0 + datetime.timedelta(days=pid), int(look)))
PY
REGRESS="$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/regress/pg_regress"
tests=$(cd "$REPO/tests/regress/sql" && ls *.sql | sed 's/\.sql$//' | sort)
echo "pg_regress: $(echo $tests | wc -w) files in tests/regress, database $DB"
if ! "$REGRESS" --host="$PGHOST" --port="$PGPORT" --user=postgres --use-existing --dbname="$DB" \
      --inputdir="$REPO/tests/regress" --outputdir="$OUT" --bindir="$PG_BIN" $tests; then
  cat "$OUT/regression.diffs" 2>/dev/null || true
  exit 1
fi
psql -d postgres -qc "DROP DATABASE $DB WITH (FORCE)"
