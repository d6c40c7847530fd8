#!/usr/bin/env bash
# The main job on the sample data: embed every row inside PostgreSQL, index, and search.
set -euo pipefail
source "$(dirname "$0")/env.sh"
say "main job: embed every fortune with genome.embed_batch (default model), then nearest neighbours"
psql -v ON_ERROR_STOP=1 -q <<'SQL'
\timing on
-- Embed what is missing, 256 rows per statement: each statement is short, and a rerun resumes.
DO $$
DECLARE n int; total int := 0;
BEGIN
  LOOP
    WITH todo AS (SELECT id, body FROM public.fortunes WHERE embedding IS NULL ORDER BY id LIMIT 256),
         emb AS (SELECT array_agg(id ORDER BY id) ids, genome.embed_batch(array_agg(body ORDER BY id)) vecs FROM todo)
    UPDATE public.fortunes f SET embedding = u.vec
      FROM emb, unnest(emb.ids, emb.vecs) AS u(id, vec) WHERE f.id = u.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    EXIT WHEN n = 0;
    total := total + n;
    RAISE NOTICE 'embedded % rows', total;
    COMMIT;
  END LOOP;
END $$;
\timing off
CREATE INDEX IF NOT EXISTS fortunes_embedding_hnsw ON public.fortunes USING hnsw (embedding vector_cosine_ops);
ANALYZE public.fortunes;
SELECT count(*) AS rows, count(embedding) AS embedded, vector_dims(min(embedding::text)::vector) AS dims FROM public.fortunes;
\echo
\echo Nearest neighbours (cosine similarity) of a few queries, through the HNSW index:
SELECT q.query, r.rank, round(r.similarity::numeric, 3) AS similarity, r.category, left(r.body, 90) AS fortune
  FROM (VALUES ('my computer crashed and I lost my work'),
               ('a doctor gives advice to a patient'),
               ('the judge and the lawyer in court'),
               ('a recipe with cheese and wine')) AS q(query)
  CROSS JOIN LATERAL (
    SELECT row_number() OVER () AS rank, 1 - (f.embedding <=> qv.v) AS similarity, f.category, f.body
      FROM (SELECT genome.embed(q.query) AS v) qv,
           LATERAL (SELECT * FROM public.fortunes ORDER BY embedding <=> qv.v LIMIT 3) f) r
 ORDER BY q.query, r.rank;
SQL
