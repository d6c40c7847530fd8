#!/usr/bin/env python3
"""Incremental assignment throughput at 1,000 families, peers side by side in one run (not a test).

A collection with 1,000 live families (centroids: real MiniLM embeddings of the sample data,
jittered and re-normalised; calibrated thresholds 0.5) and batches of 500 pending rows whose
texts are real fortunes. Measured per batch of 500, median of REPS batches:
  1. genome.assign_family, rows already embedded      (nearest centroid in Rust, cached matrix)
  2. plain pgvector: UPDATE ... SET family_id = (nearest centroid by <=> over genome.families)
  3. genome.assign_family, rows without embedding     (embed + assign in one call)
  4. plain SQL: UPDATE SET embedding = genome.embed(body), then the pgvector assignment
Both peers land each row in the same family (checked), so the ratio compares equal work.
usage: benches/assign_bench.py [REPS]   (default 5; needs the project's cluster: scripts/cluster.sh)
"""
import os, pathlib, statistics, sys, time

import numpy as np
import psycopg

REPO = pathlib.Path(__file__).resolve().parents[1]
PORT = int(os.environ.get("GENOME_PORT", "55432"))
REPS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
BATCH, FAMILIES = 500, 1000


def connect():
    return psycopg.connect(host="127.0.0.1", port=PORT, user="postgres", dbname="genome", autocommit=True)


def vec(v):
    return "[" + ",".join(f"{x:.7f}" for x in v) + "]"


def main():
    c = connect()
    rows = c.execute("SELECT body, embedding::text FROM public.fortunes WHERE embedding IS NOT NULL ORDER BY id").fetchall()
    texts = [r[0] for r in rows]
    X = np.array([np.array(r[1].strip("[]").split(","), dtype=np.float32) for r in rows])
    rng = np.random.default_rng(0)
    C = X[rng.choice(len(X), FAMILIES, replace=False)] + rng.normal(scale=0.02, size=(FAMILIES, X.shape[1]))
    C /= np.linalg.norm(C, axis=1, keepdims=True)

    c.execute("SELECT genome.unregister_collection('bench_assign') FROM genome.collections WHERE name = 'bench_assign'")
    c.execute("DROP TABLE IF EXISTS public.bench_assign")
    c.execute("CREATE TABLE public.bench_assign (id bigserial PRIMARY KEY, body text NOT NULL)")
    c.execute("SELECT genome.register_collection('bench_assign', 'public.bench_assign', 'id', 'body')")
    with c.cursor() as cur:
        cur.executemany("INSERT INTO genome.families (collection, label, centroid, size, threshold) VALUES ('bench_assign', %s, %s::vector, 10, 0.5)",
                        [(f"bench family {i}", vec(C[i])) for i in range(FAMILIES)])
    c.execute("UPDATE genome.collections SET generation = generation + 1 WHERE name = 'bench_assign'")
    unclustered = c.execute("SELECT id FROM genome.families WHERE collection = 'bench_assign' AND is_unclustered").fetchone()[0]

    def load(batch_no, with_embedding):
        sl = [(batch_no * BATCH + i) % len(texts) for i in range(BATCH)]
        c.execute("TRUNCATE public.bench_assign RESTART IDENTITY")
        with c.cursor() as cur:
            if with_embedding:
                cur.executemany("INSERT INTO public.bench_assign (body, embedding) VALUES (%s, %s::vector)", [(texts[i], vec(X[i])) for i in sl])
            else:
                cur.executemany("INSERT INTO public.bench_assign (body) VALUES (%s)", [(texts[i],) for i in sl])
        c.execute("ANALYZE public.bench_assign")

    def ours():
        r = c.execute("SELECT processed, assigned FROM genome.assign_family('bench_assign', batch_size => %s, min_pending => 1)", (BATCH,)).fetchone()
        assert r[0] == BATCH, r

    def pgvector():
        c.execute("""UPDATE public.bench_assign t SET family_id = coalesce(
                       (SELECT f.id FROM genome.families f
                         WHERE f.collection = 'bench_assign' AND NOT f.is_unclustered AND f.retired_at IS NULL
                           AND 1 - (f.centroid <=> t.embedding) >= f.threshold
                         ORDER BY f.centroid <=> t.embedding LIMIT 1), %s)
                     WHERE family_id IS NULL""", (unclustered,))

    def sql_embed_then_pgvector():
        c.execute("UPDATE public.bench_assign SET embedding = genome.embed(body) WHERE embedding IS NULL")
        pgvector()

    def timed(fn, with_embedding, check=None):
        times = []
        for b in range(REPS):
            load(b, with_embedding)
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
            if check is not None:
                check[b] = dict(c.execute("SELECT id, family_id FROM public.bench_assign").fetchall())
        return statistics.median(times)

    # warm the backend (model session, centroid cache) so every figure is steady state
    load(99, False); ours(); load(98, False); sql_embed_then_pgvector()
    got_ours, got_peer = {}, {}
    res = {}
    res["ours_no_embed"] = timed(ours, True, got_ours)
    res["pgvector_no_embed"] = timed(pgvector, True, got_peer)
    same = sum(got_ours[b][i] == got_peer[b][i] for b in got_ours for i in got_ours[b])
    total = sum(len(got_ours[b]) for b in got_ours)
    res["ours_embed"] = timed(ours, False)
    res["sql_embed_pgvector"] = timed(sql_embed_then_pgvector, False)

    print(f"assign_family at {FAMILIES} families, batches of {BATCH} rows, median of {REPS} (rows/s):")
    print(f"  already embedded:  genome.assign_family {BATCH / res['ours_no_embed']:9.0f}   "
          f"pgvector UPDATE {BATCH / res['pgvector_no_embed']:9.0f}   ratio {res['pgvector_no_embed'] / res['ours_no_embed']:.1f}x")
    print(f"  with embedding:    genome.assign_family {BATCH / res['ours_embed']:9.0f}   "
          f"embed()+pgvector {BATCH / res['sql_embed_pgvector']:9.0f}   ratio {res['sql_embed_pgvector'] / res['ours_embed']:.1f}x")
    print(f"  same family from both paths: {same}/{total} rows")
    c.execute("SELECT genome.unregister_collection('bench_assign')")
    c.execute("DROP TABLE public.bench_assign")


if __name__ == "__main__":
    main()
