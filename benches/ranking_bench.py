#!/usr/bin/env python3
"""Capability ranking benchmark on the tldr data set (../shared/data/capabilities), peers side by
side in the same run and the same database:

  - PostgreSQL full-text search (ts_rank_cd over the capability texts, any query word),
  - pgvector cosine (exact, over the same MiniLM text embeddings),
  - their reciprocal-rank fusion (k = 60, top 100 of each),
  - pg_genome before training (HNSW + BM25 fused) and after (the learned ranker),

all on the dev split with all 6,159 capabilities as candidates; metrics recomputed here with
numpy from the ranks (an independent reference for evaluate_ranker's). Then: the hybrid text
weight by dev MRR, cold start (300 capabilities whose intents are all withheld from training),
online learning with a simulated user, rank_capabilities latency with 1 and 4 clients, training
time and peak memory. Tunes on train/dev only.

    .genome/venv/bin/python benches/ranking_bench.py [--data DIR] [--quick]
Prints tables; `--json FILE` keeps the figures.
"""
import argparse
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import numpy as np
import psycopg

REPO = pathlib.Path(__file__).resolve().parents[1]
PORT = int(os.environ.get("GENOME_PORT", "55432"))
DB = "genome_rank_bench"


def say(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def connect(db=DB):
    return psycopg.connect(host="127.0.0.1", port=PORT, user="postgres", dbname=db, autocommit=True)


def metrics(ranks):
    """Ranking metrics from 1-based ranks (None: not ranked), numpy only."""
    r = np.array([x if x else 0 for x in ranks], dtype=float)
    rr = np.where(r > 0, 1.0 / np.maximum(r, 1), 0.0)
    hit = lambda k: float(np.mean((r > 0) & (r <= k)))
    ndcg = np.where((r > 0) & (r <= 10), 1.0 / np.log2(np.maximum(r, 1) + 1), 0.0)
    return {"n": len(ranks), "mrr": float(rr.mean()), "hit_at_1": hit(1), "hit_at_3": hit(3), "hit_at_5": hit(5),
            "hit_at_10": hit(10), "ndcg_at_10": float(ndcg.mean())}


def row(name, m, extra=""):
    return (f"| {name} | {m['n']} | {m['mrr']:.3f} | {m['hit_at_1']:.3f} | {m['hit_at_3']:.3f} | {m['hit_at_5']:.3f} "
            f"| {m['hit_at_10']:.3f} | {m['ndcg_at_10']:.3f} |{extra}")


HEAD = ("| method | intents | MRR | Hit@1 | Hit@3 | Hit@5 | Hit@10 | NDCG@10 |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|")


def load(data, model_dir):
    with connect("postgres") as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {DB}")
    with connect() as c:
        c.execute("CREATE EXTENSION pg_genome CASCADE")
        c.execute("SELECT genome.register_model_dir('all-minilm-l6-v2', '1', %s)", (model_dir,))
    subprocess.run(["psql", "-q", "-h", "127.0.0.1", "-p", str(PORT), "-U", "postgres", "-d", DB, "-v", f"data={data}",
                    "-f", str(REPO / "benches" / "ranking_load.sql")], check=True, stdout=subprocess.DEVNULL)
    with connect() as c:
        t = time.time()
        n = c.execute("SELECT genome.refresh_catalog('tldr')").fetchone()[0]
        say(f"refresh_catalog: {n} capabilities embedded, graph features, in {time.time() - t:.0f} s")
        # the dev intents' embeddings, for the peers (the same model, inside the database)
        c.execute("CREATE TABLE dev_emb AS SELECT intent_id, intent, capability, NULL::vector(384) AS emb FROM tldr_dev")
        ids = [r[0] for r in c.execute("SELECT intent_id FROM dev_emb ORDER BY intent_id").fetchall()]
        for i in range(0, len(ids), 256):
            c.execute("""WITH b AS (SELECT array_agg(intent_id ORDER BY intent_id) ids, genome.embed_batch(array_agg(intent ORDER BY intent_id)) v
                                      FROM dev_emb WHERE intent_id = ANY(%s))
                         UPDATE dev_emb d SET emb = u.v FROM b, unnest(b.ids, b.v) u(id, v) WHERE d.intent_id = u.id""",
                      (ids[i:i + 256],))


def peers(c):
    """Ranks of the label under full-text search, pgvector cosine and their fusion."""
    out = {}
    t = time.time()
    dense = c.execute("""
        SELECT d.intent_id,
               1 + (SELECT count(*) FROM genome.capability_features f
                     WHERE f.catalog = 'tldr' AND (f.text_embedding <=> d.emb) < (l.text_embedding <=> d.emb))
          FROM dev_emb d JOIN genome.capability_features l ON l.catalog = 'tldr' AND l.capability = d.capability
         ORDER BY 1""").fetchall()
    out["pgvector cosine"] = [r[1] for r in dense]
    say(f"peer pgvector cosine: {time.time() - t:.0f} s")
    t = time.time()
    c.execute("""CREATE TEMP TABLE fts AS
        SELECT f.capability, to_tsvector('english', f.content) AS tsv FROM genome.capability_features f WHERE f.catalog = 'tldr'""")
    c.execute("CREATE INDEX ON fts USING gin (tsv)")
    # any query word (plainto_tsquery ANDs them; natural-language intents rarely match every word)
    lex = c.execute("""
        SELECT d.intent_id, d.capability, array_agg(x.capability ORDER BY x.r, x.capability)
          FROM dev_emb d
          CROSS JOIN LATERAL (SELECT replace(plainto_tsquery('english', d.intent)::text, '&', '|') AS q) qq
          LEFT JOIN LATERAL (SELECT s.capability, rank() OVER (ORDER BY ts_rank_cd(s.tsv, to_tsquery('english', qq.q)) DESC) r
                               FROM fts s WHERE qq.q <> '' AND s.tsv @@ to_tsquery('english', qq.q)) x ON true
         GROUP BY 1, 2 ORDER BY 1""").fetchall()
    out["PostgreSQL full-text (ts_rank_cd)"] = [
        (l.index(cap) + 1 if l and cap in l else None) for _, cap, l in lex]
    say(f"peer full-text: {time.time() - t:.0f} s")
    dtop = c.execute("""
        SELECT d.intent_id, array(SELECT f.capability FROM genome.capability_features f WHERE f.catalog = 'tldr'
                                   ORDER BY f.text_embedding <=> d.emb LIMIT 100)
          FROM dev_emb d ORDER BY 1""").fetchall()
    fused = []
    for (_, cap, l), (_, d) in zip(lex, dtop):
        s = {}
        for lst in ((l or [])[:100], d):
            for i, x in enumerate(lst):
                if x is not None:
                    s[x] = s.get(x, 0) + 1 / (60 + i + 1)
        order = sorted(s, key=lambda x: (-s[x], x != cap))  # ties never help: broken against the label
        fused.append(order.index(cap) + 1 if cap in s else None)
    out["fusion (RRF k=60)"] = fused
    return out


def evaluate(c, table="tldr_dev", version=None):
    return c.execute("SELECT genome.evaluate_ranker('tldr', %s, version => %s)", (table, version)).fetchone()[0]


def train(c, examples, dev="tldr_dev", epochs=8, text_weight=None, promote=True):
    r = c.execute("SELECT * FROM genome.train_ranker('tldr', %s::regclass, dev => %s::regclass, epochs => %s::int, "
                  "text_weight => %s::real, promote => %s)",
                  (examples, dev, epochs, text_weight, promote)).fetchone()
    m = c.execute("SELECT metrics FROM genome.rankers WHERE catalog = 'tldr' AND version = %s", (r[0],)).fetchone()[0]
    return r, m


PEER_HNSW = ("WITH q AS MATERIALIZED (SELECT genome.embed(%s)::vector(384) AS v) "
             "SELECT capability FROM peer_caps, q ORDER BY emb <=> q.v LIMIT 10")


def latency(intents, clients, per_client):
    """p50/p99 of rank_capabilities (intent embedding included: intents are new to each backend),
    and of the peer (embed + pgvector HNSW top 10) interleaved call by call on the same
    connections, so that both see the same machine: returns {"rank": (p50, p99, n), "peer": ...}."""
    lat = {"rank": [], "peer": []}
    errors = []

    def run(k):
        try:
            with connect() as c:
                c.execute("SELECT * FROM genome.rank_capabilities('warm up the caches', catalog => 'tldr')")
                c.execute("SELECT genome.embed('warm up')")
                mine = intents[k::clients][:2 * per_client]
                for i, q in enumerate(mine):
                    kind = "rank" if i % 2 == 0 else "peer"
                    sql = ("SELECT * FROM genome.rank_capabilities(%s, catalog => 'tldr')" if kind == "rank"
                           else PEER_HNSW)
                    t = time.perf_counter()
                    c.execute(sql, (q,)).fetchall()
                    lat[kind].append((time.perf_counter() - t) * 1000)
        except Exception as e:  # noqa: reported below
            errors.append(e)

    th = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    [t.start() for t in th]
    [t.join() for t in th]
    if errors:
        raise errors[0]
    return {k: (float(np.percentile(v, 50)), float(np.percentile(v, 99)), len(v)) for k, v in lat.items()}


def peer_latency(intents, n):
    """The peer a user would write: embed the intent, pgvector HNSW top 10 (and full-text top 10)."""
    with connect() as c:
        c.execute("CREATE TABLE IF NOT EXISTS peer_caps AS SELECT capability, text_embedding::vector(384) AS emb, "
                  "to_tsvector('english', content) AS tsv FROM genome.capability_features WHERE catalog = 'tldr'")
        c.execute("CREATE INDEX IF NOT EXISTS peer_caps_hnsw ON peer_caps USING hnsw (emb vector_cosine_ops)")
        c.execute("CREATE INDEX IF NOT EXISTS peer_caps_fts ON peer_caps USING gin (tsv)")
        if n == 0:
            return {}
        c.execute("SELECT genome.embed('warm up')")
        out = {}
        for name, sql in (("pgvector HNSW (embed + top 10)", PEER_HNSW),
                          ("full-text (top 10)",
                           "SELECT capability FROM peer_caps WHERE tsv @@ to_tsquery('english', replace(plainto_tsquery('english', %s)::text, '&', '|')) "
                           "ORDER BY ts_rank_cd(tsv, to_tsquery('english', replace(plainto_tsquery('english', %s)::text, '&', '|'))) DESC LIMIT 10")):
            lat = []
            for q in intents[:n]:
                t = time.perf_counter()
                c.execute(sql, (q,) * sql.count("%s")).fetchall()
                lat.append((time.perf_counter() - t) * 1000)
            out[name] = (float(np.percentile(lat, 50)), float(np.percentile(lat, 99)))
        return out


def simulated_user(c, rounds, n):
    """Each round: rank n dev intents; the user takes the right capability when it is in the top 5
    (success), else the first one shown (failure); then the ranker is retrained on the log."""
    dev = c.execute("SELECT intent, capability FROM tldr_dev ORDER BY md5(intent_id) LIMIT %s", (n,)).fetchall()
    out = []
    for k in range(rounds):
        ranks = []
        for intent, cap in dev:
            rows = c.execute("SELECT capability, ranking_id FROM genome.rank_capabilities(%s, top_k => 10, catalog => 'tldr', "
                             "session_id => %s)", (intent, f"user-{k}-{intent}")).fetchall()
            shown = [r[0] for r in rows]
            rank = shown.index(cap) + 1 if cap in shown else None
            ranks.append(rank)
            if rank and rank <= 5:
                c.execute("SELECT genome.record_outcome(%s, %s, 'success')", (rows[0][1], cap))
            elif rows:
                c.execute("SELECT genome.record_outcome(%s, %s, 'failure')", (rows[0][1], shown[0]))
        m = metrics(ranks)
        out.append(m)
        say(f"simulated user round {k + 1}: MRR@10 {m['mrr']:.3f}, Hit@5 {m['hit_at_5']:.3f}")
        if k + 1 < rounds:
            train(c, None, epochs=4)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "capabilities"))
    ap.add_argument("--models", default=None)
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--quick", action="store_true", help="fewer training runs (no weight sweep)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--latency-only", action="store_true",
                    help="only the latency section, with the ranker in production (after a full run)")
    a = ap.parse_args()
    if a.models is None:
        share = subprocess.check_output([os.environ.get("PG_CONFIG", "pg_config"), "--sharedir"], text=True).strip()
        a.models = f"{share}/pg_genome/models/all-minilm-l6-v2"
    res = {}
    if not a.skip_load:
        say("loading the tldr data set and computing features")
        load(a.data, a.models)
    if a.latency_only:
        with connect() as c:
            intents = [r[0] for r in c.execute("SELECT intent FROM tldr_dev ORDER BY md5(intent_id) DESC").fetchall()]
    else:
        with connect() as c:
            c.execute("SET client_min_messages = warning")
            c.execute("DELETE FROM genome.rankers WHERE catalog = 'tldr'")
            c.execute("DELETE FROM genome.experiences WHERE catalog = 'tldr' AND source = 'outcome'")
            ranks = peers(c)
            say("pg_genome before training (HNSW + BM25, fused)")
            ranks["pg_genome, no ranker (HNSW + BM25 fused)"] = evaluate(c)["ranks"]
            say("training on the train split, early stopping on dev")
            (ver, _, n_ex, n_dev, dev_mrr, _, _, secs), m = train(c, "tldr_train")
            res["training"] = {"examples": n_ex, "seconds": secs, "peak_rss_mb": m.get("peak_rss_mb"),
                               "best_epoch": m.get("best_epoch"), "history": m.get("history"),
                               "temperature": m.get("temperature")}
            ev = evaluate(c)
            ranks["pg_genome ranker"] = ev["ranks"]
            res["calibration"] = {"ece": ev["ece"], "brier": ev["brier"], "coverage": ev["coverage"], "gini": ev["gini"]}
            res["dev"] = {k: metrics(v) for k, v in ranks.items()}
            # evaluate_ranker's own metrics against numpy's on the same ranks
            assert abs(ev["mrr"] - res["dev"]["pg_genome ranker"]["mrr"]) < 1e-9
            print("\n## Dev split (3,639 intents, 6,159 candidates)\n" + HEAD)
            for k, v in res["dev"].items():
                print(row(k, v))
            print(f"\nranker: ECE {ev['ece']:.3f}, Brier {ev['brier']:.3f}, coverage@10 {ev['coverage']:.3f}, "
                  f"Gini {ev['gini']:.3f}; training {secs:.0f} s on {n_ex} examples, peak RSS "
                  f"{m.get('peak_rss_mb') or 0:.0f} MB, best epoch {m.get('best_epoch')}")
            if not a.quick:
                res["text_weight"] = {}
                for w in (0.0, 0.3, 0.7, 1.0):
                    (_, _, _, _, mrr, h10, _, _), _ = train(c, "tldr_train", epochs=4, text_weight=w, promote=False)
                    res["text_weight"][w] = {"dev_mrr": mrr, "dev_hit_at_10": h10}
                    say(f"text weight {w}: dev MRR {mrr:.3f} (4 epochs)")
            # cold start: 300 capabilities with dev intents, all their train intents withheld
            cold = [r[0] for r in c.execute("SELECT DISTINCT capability FROM tldr_dev ORDER BY 1").fetchall()]
            cold = sorted(cold, key=lambda x: hashlib.sha256(f"cold:{x}".encode()).hexdigest())[:300]
            c.execute("DROP TABLE IF EXISTS tldr_train_warm, tldr_dev_cold")
            c.execute("CREATE TABLE tldr_train_warm AS SELECT * FROM tldr_train WHERE capability <> ALL(%s)", (cold,))
            c.execute("CREATE TABLE tldr_dev_cold AS SELECT * FROM tldr_dev WHERE capability = ANY(%s)", (cold,))
            c.execute("DELETE FROM genome.experiences WHERE catalog = 'tldr' AND capability = ANY(%s)", (cold,))
            (cold_ver, *_), _ = train(c, "tldr_train_warm", promote=False)
            cold_ev = evaluate(c, "tldr_dev_cold", cold_ver)
            dense_cold = [r for (r, cap) in zip(ranks["pgvector cosine"],
                                                [x[0] for x in c.execute("SELECT capability FROM dev_emb ORDER BY intent_id")])
                          if cap in set(cold)]
            res["cold_start"] = {"ranker": metrics(cold_ev["ranks"]), "pgvector cosine": metrics(dense_cold)}
            print("\n## Cold start (300 capabilities without training intents, their dev intents)\n" + HEAD)
            print(row("pgvector cosine", res["cold_start"]["pgvector cosine"]))
            print(row("pg_genome ranker (trained without them)", res["cold_start"]["ranker"]))
            # the experience log back to the full train split, for the remaining sections
            c.execute("DELETE FROM genome.rankers WHERE catalog = 'tldr' AND stage <> 'production'")
            c.execute("SELECT genome.train_ranker('tldr', 'tldr_train', dev => 'tldr_dev', epochs => 1, promote => false)")
            c.execute("DELETE FROM genome.rankers WHERE catalog = 'tldr' AND stage <> 'production'")
            intents = [r[0] for r in c.execute("SELECT intent FROM tldr_dev ORDER BY md5(intent_id) DESC").fetchall()]
    say("latency")
    res["latency"] = {}
    peer_latency(intents, 0)  # the peer's table and indexes
    for clients in (1, 4):
        got = latency(intents, clients, 300 // clients)
        (p50, p99, n), (q50, q99, _) = got["rank"], got["peer"]
        res["latency"][f"{clients} client(s)"] = {"p50_ms": p50, "p99_ms": p99, "calls": n,
                                                 "peer_p50_ms": q50, "peer_p99_ms": q99}
        print(f"{clients} client(s), interleaved call by call: rank_capabilities p50 {p50:.1f} ms, p99 {p99:.1f} ms "
              f"({n} calls); peer embed + pgvector HNSW p50 {q50:.1f} ms, p99 {q99:.1f} ms; "
              f"ratio p50 {p50 / q50:.2f}x, p99 {p99 / q99:.2f}x")
    for name, (p50, p99) in peer_latency(intents[600:], 300).items():
        res["latency"][name] = {"p50_ms": p50, "p99_ms": p99}
        print(f"peer {name}: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    if a.latency_only:
        print(json.dumps(res, indent=1))
        return
    with connect() as c:
        c.execute("SET client_min_messages = warning")
        say("online learning with a simulated user")
        res["online"] = simulated_user(c, rounds=3, n=600 if a.quick else 1000)
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "dev"}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
