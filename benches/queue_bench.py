#!/usr/bin/env python3
"""Background embedding and search, peers side by side in one run (not a test).

1. Throughput on the same real texts (the sample data), default model, one intra-op thread:
   background worker path (INSERT, the worker embeds) vs a direct
   UPDATE ... SET embedding = genome.embed(body) in one session.
2. Search latency at N rows (default 100,000: the sample's real embeddings plus jittered copies,
   re-normalised), HNSW index, top 10, p50/p99 over Q queries:
   genome.search(text) (embeds the query), genome.search(vector), each with and without a filter,
   vs a plain pgvector query with the precomputed vector (same filter, same iterative scan).
usage: benches/queue_bench.py [--texts 2000] [--rows 100000] [--queries 200] [--search-only] [--keep]
Needs the project's cluster (scripts/cluster.sh start) with its embedding worker for "genome".
"""
import argparse, io, os, statistics, time

import numpy as np
import psycopg

PORT = int(os.environ.get("GENOME_PORT", "55432"))


def connect():
    return psycopg.connect(host="127.0.0.1", port=PORT, user="postgres", dbname="genome", autocommit=True)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000


def throughput(c, n):
    c.execute("DROP TABLE IF EXISTS bench_direct, bench_bg CASCADE")
    c.execute("SELECT genome.unregister_collection('bench_bg') FROM genome.collections WHERE name = 'bench_bg'")
    c.execute(f"CREATE TABLE bench_direct AS SELECT id, body, NULL::vector(384) AS embedding FROM public.fortunes ORDER BY id LIMIT {n}")
    # the same HNSW index on both: a collection gets one at registration, and its upkeep is part of writing
    c.execute("CREATE INDEX ON bench_direct USING hnsw (embedding vector_cosine_ops)")
    c.execute("CREATE TABLE bench_bg (id bigint PRIMARY KEY, body text)")
    c.execute("SELECT genome.register_collection('bench_bg', 'bench_bg', 'id', 'body')")
    c.execute("SELECT genome.enable_auto_embed('bench_bg')")
    c.execute("SELECT genome.embed('warm up')")
    t = time.perf_counter()
    c.execute("UPDATE bench_direct SET embedding = genome.embed(body)")
    direct = time.perf_counter() - t
    t = time.perf_counter()
    c.execute(f"INSERT INTO bench_bg SELECT id, body FROM public.fortunes ORDER BY id LIMIT {n}")
    while c.execute("SELECT count(*) FROM bench_bg WHERE embedding IS NULL").fetchone()[0]:
        time.sleep(0.05)
    bg = time.perf_counter() - t
    same = c.execute("""SELECT count(*) FROM bench_bg b JOIN bench_direct d USING (id)
                        WHERE (b.embedding <=> d.embedding) < 1e-5""").fetchone()[0]
    workers = c.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_genome embed worker' AND datname = 'genome'").fetchone()[0]
    print(f"1. embedding {n} real texts (default model, 1 intra-op thread per process; {workers} worker(s) for this database)")
    print(f"  direct UPDATE SET embedding = genome.embed(body)   {n / direct:7.1f} rows/s  ({direct:.1f} s)")
    print(f"  background worker (INSERT, then embedded)         {n / bg:7.1f} rows/s  ({bg:.1f} s, until the last row)")
    print(f"  ratio background / direct: {direct / bg:.2f}; identical vectors: {same}/{n}\n")
    c.execute("SELECT genome.unregister_collection('bench_bg')")
    c.execute("DROP TABLE bench_direct, bench_bg")


def search(c, rows, nq, keep=False):
    base = c.execute("SELECT category, embedding::text FROM public.fortunes WHERE embedding IS NOT NULL ORDER BY id").fetchall()
    cats = [b[0] for b in base]
    X = np.array([np.array(b[1].strip("[]").split(","), dtype=np.float32) for b in base])
    rng = np.random.default_rng(0)
    have = c.execute("SELECT count(*) FROM genome.collections WHERE name = 'bench_search'").fetchone()[0]
    reuse = keep and have and c.execute("SELECT count(*) FROM bench_search").fetchone()[0] == rows
    t_load = t_index = 0.0
    if not reuse:
        t_load, t_index = load(c, rows, X, cats, rng)
    c.execute("ANALYZE bench_search")
    _measure(c, rows, nq, t_load, t_index)
    if not keep:
        c.execute("SELECT genome.unregister_collection('bench_search')")
        c.execute("DROP TABLE bench_search")


def load(c, rows, X, cats, rng):
    c.execute("DROP TABLE IF EXISTS bench_search CASCADE")
    c.execute("SELECT genome.unregister_collection('bench_search') FROM genome.collections WHERE name = 'bench_search'")
    c.execute("CREATE TABLE bench_search (id bigint PRIMARY KEY, category text, body text, embedding vector(384))")
    t = time.perf_counter()
    with c.cursor().copy("COPY bench_search FROM STDIN") as cp:
        for i in range(rows):
            j = i % len(X)
            v = X[j] if i < len(X) else X[j] + rng.normal(scale=0.02, size=X.shape[1]).astype(np.float32)
            v = v / np.linalg.norm(v)
            cp.write_row((i, cats[j], f"row {i}", "[" + ",".join(f"{x:.6f}" for x in v) + "]"))
    c.execute("CREATE INDEX ON bench_search (category)")
    c.execute("SET maintenance_work_mem = '2GB'")
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    c.execute("SELECT genome.register_collection('bench_search', 'bench_search', 'id', 'body')")  # builds the HNSW index
    t_index = time.perf_counter() - t
    return t_load, t_index


def _measure(c, rows, nq, t_load, t_index):
    queries = [r[0] for r in c.execute(f"SELECT body FROM public.fortunes ORDER BY id DESC LIMIT {nq}").fetchall()]
    qvecs = [c.execute("SELECT genome.embed(%s)::text", (q,)).fetchone()[0] for q in queries]
    top_cat = c.execute("SELECT category FROM bench_search GROUP BY 1 ORDER BY count(*) DESC LIMIT 1").fetchone()[0]
    filt = '{"category": "%s"}' % top_cat
    share = c.execute("SELECT avg((category = %s)::int) FROM bench_search", (top_cat,)).fetchone()[0]

    def timed(sql, args_of):
        ts = []
        for i in range(nq):
            t = time.perf_counter()
            c.execute(sql, args_of(i)).fetchall()
            ts.append(time.perf_counter() - t)
        return ts

    res = {
        "genome.search(text)": timed("SELECT * FROM genome.search('bench_search', %s, 10, -1)", lambda i: (queries[i],)),
        "genome.search(vector)": timed("SELECT * FROM genome.search('bench_search', %s::vector, 10, -1)", lambda i: (qvecs[i],)),
        "plain pgvector, precomputed vector": timed(
            "SELECT id, 1 - (embedding <=> %s::vector) FROM bench_search ORDER BY embedding <=> %s::vector LIMIT 10",
            lambda i: (qvecs[i], qvecs[i])),
        "genome.search(text) + filter": timed("SELECT * FROM genome.search('bench_search', %s, 10, -1, %s)", lambda i: (queries[i], filt)),
        "genome.search(vector) + filter": timed("SELECT * FROM genome.search('bench_search', %s::vector, 10, -1, %s)", lambda i: (qvecs[i], filt)),
    }
    c.execute("SET hnsw.iterative_scan = relaxed_order")
    res["plain pgvector + filter (iterative scan)"] = timed(
        "SELECT id, 1 - (embedding <=> %s::vector) FROM bench_search WHERE category = %s ORDER BY embedding <=> %s::vector LIMIT 10",
        lambda i: (qvecs[i], top_cat, qvecs[i]))
    c.execute("RESET hnsw.iterative_scan")
    print(f"2. search at {rows} rows (load {t_load:.0f} s, HNSW index build at registration {t_index:.0f} s), top 10, {nq} queries;"
          f" filter category = {top_cat!r} ({share:.1%} of rows)")
    for k, ts in res.items():
        print(f"  {k:<42} p50 {pct(ts, 50):7.2f} ms   p99 {pct(ts, 99):7.2f} ms")
    p = lambda k: pct(res[k], 50)
    print(f"  ratio genome.search(vector) / plain pgvector (p50): {p('genome.search(vector)') / p('plain pgvector, precomputed vector'):.2f}x;"
          f" with filter {p('genome.search(vector) + filter') / p('plain pgvector + filter (iterative scan)'):.2f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--search-only", action="store_true", help="skip part 1")
    ap.add_argument("--keep", action="store_true", help="keep bench_search (and reuse it when it has --rows rows)")
    a = ap.parse_args()
    with connect() as c:
        if not a.search_only:
            throughput(c, a.texts)
        search(c, a.rows, a.queries, a.keep)


if __name__ == "__main__":
    main()
