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

say "main job, part 2: families — full classification, then an incremental pass on new rows"
psql -v ON_ERROR_STOP=1 -q <<'SQL'
-- A collection fed like an app would: 90% of the fortunes are there at the weekly run, the other
-- 10% arrive afterwards (without embeddings) and are picked up by the 10-minute job.
-- Dropping the table also drops its registration (event trigger), so a rerun starts clean.
SELECT genome.unregister_collection('fortunes') AS replaced_previous \gset
DROP TABLE IF EXISTS public.fortune_feed;
CREATE TABLE public.fortune_feed (id bigint PRIMARY KEY, category text NOT NULL, body text NOT NULL,
                                  embedding vector(384), created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO public.fortune_feed (id, category, body, embedding)
  SELECT id, category, body, embedding FROM public.fortunes WHERE id % 10 <> 0;
SELECT name, relid::regclass AS "table", model FROM genome.register_collection('fortunes', 'public.fortune_feed', 'id', 'body',
       created_at_column => 'created_at');
\timing on
SELECT run_id, n_rows, n_clusters AS families, n_noise AS unclustered, round(seconds::numeric, 1) AS seconds
  FROM genome.full_classify('fortunes', min_cluster_size => 15);
\timing off
-- the majority category of each family, to judge where new rows land
CREATE TEMP TABLE majority AS
  SELECT DISTINCT ON (family_id) family_id, category FROM public.fortune_feed
   GROUP BY family_id, category ORDER BY family_id, count(*) DESC;
\echo
\echo Families found (largest first; labels: the most distinctive words of each family):
SELECT f.id, f.size, round(100.0 * count(*) FILTER (WHERE d.category = m.category) / count(*), 0) AS "% top category",
       m.category AS "top category", f.label
  FROM genome.families f JOIN public.fortune_feed d ON d.family_id = f.id JOIN majority m ON m.family_id = f.id
 WHERE f.collection = 'fortunes' AND NOT f.is_unclustered
 GROUP BY f.id, f.size, m.category, f.label ORDER BY f.size DESC LIMIT 15;
SELECT count(*) FILTER (WHERE NOT is_unclustered) AS families, sum(size) FILTER (WHERE NOT is_unclustered) AS clustered_rows,
       sum(size) FILTER (WHERE is_unclustered) AS unclustered_rows FROM genome.families WHERE collection = 'fortunes' AND retired_at IS NULL;

INSERT INTO public.fortune_feed (id, category, body)
  SELECT id, category, body FROM public.fortunes WHERE id % 10 = 0;
SELECT genome.pending_count('fortunes') AS new_rows_pending;
\echo
\echo Incremental assignment of the new rows, fixed threshold 0.85 (as the seeds used) vs calibrated per-family thresholds:
BEGIN;
CREATE TEMP TABLE fixed AS SELECT * FROM genome.assign_family('fortunes', batch_size => 1000, min_pending => 1, threshold => 0.85);
SELECT '0.85' AS threshold, processed, assigned, unclustered,
       (SELECT count(*) FROM public.fortune_feed d JOIN majority m USING (family_id) WHERE d.id % 10 = 0 AND d.category = m.category
           AND d.family_id <> (SELECT id FROM genome.families WHERE collection = 'fortunes' AND is_unclustered)) AS "right family"
  FROM fixed;
ROLLBACK;
\timing on
CREATE TEMP TABLE calibrated AS SELECT * FROM genome.assign_family('fortunes', batch_size => 1000, min_pending => 1);
\timing off
SELECT 'calibrated' AS threshold, processed, assigned, unclustered,
       (SELECT count(*) FROM public.fortune_feed d JOIN majority m USING (family_id) WHERE d.id % 10 = 0 AND d.category = m.category
           AND d.family_id <> (SELECT id FROM genome.families WHERE collection = 'fortunes' AND is_unclustered)) AS "right family"
  FROM calibrated;
SELECT genome.pending_count('fortunes') AS still_pending;

\echo
\echo Background embedding: new rows are embedded by the worker, nobody calls anything
SELECT genome.enable_auto_embed('fortunes') AS rows_queued_now;
INSERT INTO public.fortune_feed (id, category, body) VALUES
  (100001, 'demo', 'A cat sat on my keyboard and wrote better code than I do.'),
  (100002, 'demo', 'The stock market fell sharply after the announcement.'),
  (100003, 'demo', 'Love is patient, love is kind, and sometimes it forgets to call.');
SELECT pg_sleep(0.5);
DO $$
BEGIN
  FOR i IN 1 .. 120 LOOP
    EXIT WHEN (SELECT count(*) FROM public.fortune_feed WHERE id > 100000 AND embedding IS NULL) = 0;
    PERFORM pg_sleep(0.5);
  END LOOP;
END $$;
SELECT collection, pending, processing, completed, failed, rows_per_s_last_minute FROM genome.embed_queue WHERE collection = 'fortunes';
\echo
\echo Semantic search over the collection (pgvector HNSW index): query = a feline programmer
SELECT id, round(score::numeric, 3) AS score, row->>'category' AS category, left(row->>'body', 90) AS body
  FROM genome.search('fortunes', 'a feline programmer', top_k => 5, score_threshold => 0.3);
\echo with a filter: only the category love
SELECT id, round(score::numeric, 3) AS score, left(row->>'body', 90) AS body
  FROM genome.search('fortunes', 'money cannot buy happiness', top_k => 3, score_threshold => 0, filter => '{"category": "love"}');
SELECT jsonb_build_object('extension', h->'extension_version', 'onnxruntime', h->'runtime'->'onnxruntime_version',
                          'workers', jsonb_array_length(h->'workers')) AS health
  FROM genome.health() h;
SQL

say "part 4: pet photos: image embeddings, per-pet clusters, heroes"
[ -s "$STATE/data/pet_photos.tsv" ] || "$VENV/bin/python" "$REPO/tools/pet_sample.py" "$STATE/data/pet_photos.tsv"
psql -qv ON_ERROR_STOP=1 <<SQL
SET client_min_messages = warning;
SELECT genome.unregister_pet_media('pet_photos') IS NOT NULL AS reset;
DROP TABLE IF EXISTS public.pet_photos;
CREATE TABLE public.pet_photos (pet text NOT NULL, photo_id bigint PRIMARY KEY, taken_at timestamptz NOT NULL,
                                look text NOT NULL, image bytea NOT NULL);
CREATE INDEX ON public.pet_photos (pet);
\copy public.pet_photos FROM '$STATE/data/pet_photos.tsv' WITH (FORMAT text)
\echo Photos of 4 pets (Fashion-MNIST product photos standing in for pets: each pet has a few looks)
SELECT pet, count(*) AS photos, string_agg(DISTINCT look, ', ') AS looks FROM public.pet_photos GROUP BY pet ORDER BY pet;
SELECT name, model, dimension FROM genome.register_pet_media('public.pet_photos', 'pet', 'photo_id', 'image', 'taken_at');
\echo One photo: its embedding size and quality
SELECT vector_dims(genome.embed_image(image)) AS dims, genome.image_quality(image) - 'exposure' - 'contrast' AS quality
  FROM public.pet_photos ORDER BY photo_id LIMIT 1;
\echo Update each pet (embeds its photos, forms its clusters)
\timing on
SELECT pet, r->>'added' AS added, r->>'clusters' AS clusters, r->>'clustered' AS clustered, r->>'unassigned' AS unassigned
  FROM (SELECT pet, genome.cluster_pet(pet, 'pet_photos') AS r FROM (SELECT DISTINCT pet FROM public.pet_photos) p ORDER BY pet) x;
\timing off
\echo Clusters of each pet: size and the looks inside (a pure cluster has one look)
SELECT p.pet_id AS pet, c.id AS cluster, c.size, string_agg(DISTINCT s.look, ', ') AS looks
  FROM genome.pet_photo_clusters c JOIN genome.pet_photos p ON p.cluster_id = c.id
  JOIN public.pet_photos s ON s.photo_id::text = p.image_id
 WHERE c.media = 'pet_photos' GROUP BY 1, 2, 3 ORDER BY 1, 3 DESC;
\echo A new photo of biscuit arrives (trousers): it joins the trousers cluster
INSERT INTO public.pet_photos SELECT 'biscuit', 100000, now(), look, image FROM public.pet_photos WHERE pet = 'max' AND look = 'Trouser' LIMIT 1;
SELECT r->>'added' AS added, r->>'joined' AS joined, r->>'new_clusters' AS new_clusters, r->>'ms' AS ms FROM genome.cluster_pet('biscuit', 'pet_photos') r;
\echo Heroes of luna (top 2 per cluster)
SELECT h.cluster_id, h.rank, h.image_id, round(h.score::numeric, 3) AS score, round(h.quality::numeric, 3) AS quality, s.look
  FROM genome.select_heroes('luna', 2, 'pet_photos') h JOIN public.pet_photos s ON s.photo_id::text = h.image_id ORDER BY h.cluster_id, h.rank;
\echo The API payload for luna (trimmed)
SELECT jsonb_pretty(p - 'clusters' || jsonb_build_object('first_cluster', p->'clusters'->0)) FROM genome.pet_clusters('luna', 'pet_photos') p;
SQL

say "main job, part 5: capability ranking — the cheat sheets of PyPI 'cheat' as a catalog, rankings before and after training"
"$VENV/bin/python" "$REPO/tools/cheat_catalog.py" "$STATE/data/cheat"
psql -v ON_ERROR_STOP=1 -q <<SQL
-- An app's own tables: capabilities (one per cheat sheet) and the tools their commands use.
-- Dropping them also drops the catalog's registration, features, logs and rankers (event trigger).
DROP VIEW IF EXISTS public.cheat_train, public.cheat_test;
DROP TABLE IF EXISTS public.cheat_links, public.cheat_capabilities, public.cheat_intents;
CREATE TABLE public.cheat_capabilities (name text PRIMARY KEY, description text NOT NULL);
CREATE TABLE public.cheat_links (capability text NOT NULL REFERENCES public.cheat_capabilities ON DELETE CASCADE, tool text NOT NULL);
CREATE TABLE public.cheat_intents (intent text NOT NULL, capability text NOT NULL, split text NOT NULL);
\copy public.cheat_capabilities FROM '$STATE/data/cheat/capabilities.tsv' WITH (FORMAT csv, DELIMITER E'\t', HEADER true, QUOTE E'\x01')
\copy public.cheat_links FROM '$STATE/data/cheat/links.tsv' WITH (FORMAT csv, DELIMITER E'\t', HEADER true, QUOTE E'\x01')
\copy public.cheat_intents FROM '$STATE/data/cheat/intents.tsv' WITH (FORMAT csv, DELIMITER E'\t', HEADER true, QUOTE E'\x01')
CREATE VIEW public.cheat_train AS SELECT intent, capability FROM public.cheat_intents WHERE split = 'train';
CREATE VIEW public.cheat_test AS SELECT intent, capability FROM public.cheat_intents WHERE split = 'test';
SELECT count(*) AS capabilities, (SELECT count(DISTINCT tool) FROM public.cheat_links) AS tools,
       (SELECT count(*) FROM public.cheat_intents WHERE split = 'train') AS train_intents,
       (SELECT count(*) FROM public.cheat_intents WHERE split = 'test') AS test_intents FROM public.cheat_capabilities;
SELECT name, model FROM genome.register_catalog('cheat', 'public.cheat_capabilities', 'name', 'description',
                                                'public.cheat_links', 'capability', 'tool');
\timing on
SELECT genome.refresh_catalog('cheat') AS capabilities_embedded;
\timing off
\echo Rankings before any training (fused HNSW + BM25 retrieval; no model, no confidence):
SELECT q.intent, r.rank, r.capability, round(r.score::numeric, 4) AS score, r.confidence, r.model_version
  FROM (VALUES ('extract a compressed archive'), ('find files larger than 100 MB'), ('show which process listens on a port')) q(intent)
  CROSS JOIN LATERAL genome.rank_capabilities(q.intent, top_k => 3, catalog => 'cheat') r ORDER BY q.intent, r.rank;
SELECT round((m->>'mrr')::numeric, 3) AS test_mrr, round((m->>'hit_at_10')::numeric, 3) AS test_hit_at_10
  FROM genome.evaluate_ranker('cheat', 'public.cheat_test') m;
\echo Training a ranker on the train intents (imported as successful experiences):
\timing on
SELECT version, stage, examples, dev_examples, round(dev_mrr::numeric, 3) AS dev_mrr, round(dev_ece::numeric, 3) AS dev_ece
  FROM genome.train_ranker('cheat', 'public.cheat_train');
\timing off
\echo Rankings after training (calibrated confidence, model version; every call is logged):
SELECT q.intent, r.rank, r.capability, round(r.score::numeric, 3) AS score, round(r.confidence::numeric, 3) AS confidence, r.model_version
  FROM (VALUES ('extract a compressed archive'), ('find files larger than 100 MB'), ('show which process listens on a port')) q(intent)
  CROSS JOIN LATERAL genome.rank_capabilities(q.intent, top_k => 3, catalog => 'cheat') r ORDER BY q.intent, r.rank;
\echo Held-out test intents, after training:
SELECT round((m->>'mrr')::numeric, 3) AS test_mrr, round((m->>'hit_at_10')::numeric, 3) AS test_hit_at_10,
       round((m->>'ece')::numeric, 3) AS ece FROM genome.evaluate_ranker('cheat', 'public.cheat_test') m;
\echo An outcome comes back for the last ranking:
SELECT genome.record_outcome(k.id, k.candidates[1], 'success', execution_ms => 40) AS experience_id
  FROM genome.rankings k WHERE k.catalog = 'cheat' ORDER BY k.id DESC LIMIT 1;
SELECT catalog, version, stage, round(dev_mrr::numeric, 3) AS dev_mrr FROM genome.ranker_versions WHERE catalog = 'cheat';
SQL

say "main job, part 6: eDNA — a taxonomy classifier on the 16S gold set (Debian's microbiomeutil-data), trained, evaluated on held-out reads, and reads classified with a fallback"
GENOME_BIN="$REPO/target/release/genome"
GOLD=/usr/share/microbiomeutil-data/RESOURCES/rRNA16S.gold.fasta
psql -qv ON_ERROR_STOP=1 <<'SQL'
SET client_min_messages = warning;
SELECT genome.unregister_collection('rrna16s_refs') AS replaced_previous \gset
DROP TABLE IF EXISTS public.rrna16s, public.rrna16s_refs CASCADE;
SQL
"$GENOME_BIN" load-seqs --table public.rrna16s "$GOLD"
psql -qv ON_ERROR_STOP=1 <<'SQL'
-- A split by genus: about a tenth of the genera whose family has another genus are held out whole
-- ("novel": the classifier never sees them), and a fifth of the reads of every other genus with
-- two or more reads are held out as "test" (known genera).
ALTER TABLE public.rrna16s ADD COLUMN part text;
WITH g AS (SELECT lineage, count(*) AS n, regexp_replace(lineage, ';[^;]*$', '') AS fam FROM public.rrna16s GROUP BY lineage),
     gf AS (SELECT g.*, row_number() OVER (PARTITION BY fam ORDER BY hashtext(lineage)) AS k,
                   count(*) OVER (PARTITION BY fam) AS nf FROM g),
     r AS (SELECT id, lineage, row_number() OVER (PARTITION BY lineage ORDER BY hashtext(id)) AS i FROM public.rrna16s)
UPDATE public.rrna16s s SET part = CASE WHEN gf.nf > 1 AND gf.k > 1 AND abs(hashtext('novel:' || gf.lineage)) % 10 = 0 THEN 'novel'
                                        WHEN gf.n > 1 AND r.i <= round(gf.n * 0.2) THEN 'test' ELSE 'train' END
  FROM r JOIN gf USING (lineage) WHERE s.id = r.id;
CREATE VIEW public.rrna16s_train AS SELECT id, sequence, lineage FROM public.rrna16s WHERE part = 'train';
CREATE VIEW public.rrna16s_held AS SELECT id, sequence, lineage, part FROM public.rrna16s WHERE part <> 'train';
SELECT part, count(*) AS reads, count(DISTINCT lineage) AS genera FROM public.rrna16s GROUP BY part ORDER BY part;
-- The fallback's references: the training reads as a sequence collection, embedded by a k-mer
-- featuriser (canonical 6-mers hashed to 1,024 dimensions) behind a pgvector HNSW index.
SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM genome.models WHERE name = 'kmer6-1024')
  THEN genome.register_kmer_featurizer('kmer6-1024', '1', k => 6, dimension => 1024) END IS NULL AS skipped \gset
CREATE TABLE public.rrna16s_refs AS SELECT id, sequence, lineage FROM public.rrna16s_train;
ALTER TABLE public.rrna16s_refs ADD PRIMARY KEY (id);
SELECT name, model FROM genome.register_collection('rrna16s_refs', 'public.rrna16s_refs', 'id', 'sequence', model => 'kmer6-1024');
\timing on
UPDATE public.rrna16s_refs SET embedding = genome.embed_sequence(sequence, 'kmer6-1024');
\timing off
SQL
echo "training (genome train-seqs: naive Bayes over 8-mers, bootstrap confidence, per-rank calibration on held-out genera)"
"$GENOME_BIN" train-seqs --name rrna16s --source public.rrna16s_train --evaluate-on public.rrna16s_held \
    --fallback-collection rrna16s_refs
psql -qv ON_ERROR_STOP=1 <<'SQL'
\echo
\echo The model as deployed (genome.model_info):
SELECT i->>'version' AS version, i->>'stage' AS stage, i->'thresholds' AS thresholds, i->'featurizer'->>'kind' AS featurizer,
       i->'training'->>'sequences' AS trained_on, left(i->'training'->>'fingerprint', 16) AS data_fingerprint
  FROM genome.model_info('rrna16s') i;
\echo A few held-out reads: two of known genera, two of genera never seen (their genus is withheld; the fallback gives the nearest references)
SELECT h.part, h.id, regexp_replace(h.lineage, '^.*; ', '') AS true_genus, c.label, c.rank, round(c.confidence::numeric, 3) AS confidence,
       c.needs_fallback, c.fallback->0->>'id' AS nearest, round((c.fallback->0->>'similarity')::numeric, 3) AS similarity,
       regexp_replace(c.fallback->0->>'lineage', '^.*; ', '') AS nearest_genus, c.model_version
  FROM (SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY part ORDER BY id) AS k FROM public.rrna16s_held) x WHERE k <= 2) h
  CROSS JOIN LATERAL genome.classify_sequences('rrna16s', ARRAY[h.sequence]) c ORDER BY h.part DESC, h.id;
SQL
psql -qAtc "SELECT '>' || id || E'\n' || sequence FROM public.rrna16s_held WHERE part = 'novel' ORDER BY id LIMIT 3" > "$STATE/novel3.fasta"
echo "genome classify-seqs on a FASTA file (TSV):"
"$GENOME_BIN" classify-seqs --model rrna16s "$STATE/novel3.fasta" | cut -f1-5,8
