"""Several nodes (pg_genome_cluster): the cost of the routing layer per call, and throughput with 1
and 3 data nodes, against the same call made straight to a data node (the baseline: no routing).

    .genome/venv/bin/python benches/nodes_bench.py [--calls 200] [--json FILE]

Starts the coordinator and data nodes with scripts/nodes.sh (loopback ports 25440..), loads real
data through the coordinator (Fashion-MNIST photos as 12 pets with two looks each, Debian's
fortunes as a collection), then for 1 and for 3 data nodes measures, one client, `--calls` calls each:
- cluster_pet of a pet with no new photo (the steady state of the background path),
- select_heroes,
- search by text (top 10; every node embeds the query),
- assign_family of 30 new rows (embedding and assignment; min_pending 0),
and the same calls on a data node directly. Then 4 clients at once for cluster_pet and search
(throughput). Prints p50 / p99 in ms and calls/s, and the coordinator's overhead (p50 routed - p50
direct). The machine has 2 cores: the data nodes share them, so 3 nodes measure the routing and
fan-out cost, not a 3x machine.
"""
import argparse
import datetime
import json
import os
import pathlib
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
import psycopg

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
import imageset  # noqa: E402

PG_CONFIG = os.environ.get("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config")
SHARE = subprocess.check_output([PG_CONFIG, "--sharedir"], text=True).strip()
MODELS = f"{SHARE}/pg_genome/models"
COORD = 25440
NODES = {"n1": 25441, "n2": 25442, "n3": 25443}
T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)


def at(port, db="genome"):
    return psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname=db, autocommit=True)


def nodes_sh(*a):
    subprocess.run(["bash", str(REPO / "scripts" / "nodes.sh"), *a], check=True, stdout=subprocess.DEVNULL)


def fresh(port):
    with at(port, "postgres") as c:
        c.execute("DROP DATABASE IF EXISTS genome WITH (FORCE)")
        c.execute("CREATE DATABASE genome")


def prepare_node(port):
    fresh(port)
    with at(port) as c:
        c.execute("SET client_min_messages = warning")
        c.execute("CREATE EXTENSION pg_genome CASCADE")
        c.execute("SELECT genome.register_model_dir('all-minilm-l6-v2', '1', %s)", (f"{MODELS}/all-minilm-l6-v2",))
        c.execute("SELECT genome.register_model_dir('efficientnet-lite0', '1', %s, task => 'image-embedding')",
                  (f"{MODELS}/efficientnet-lite0",))
        c.execute("CREATE SCHEMA b")
        c.execute("CREATE TABLE b.photos (pet bigint NOT NULL, photo_id bigint NOT NULL, img bytea, shot_at timestamptz NOT NULL)")
        c.execute("CREATE INDEX ON b.photos (pet)")
        c.execute("CREATE TABLE b.docs (id bigint PRIMARY KEY, category text NOT NULL, body text NOT NULL)")
        c.execute("SELECT genome.register_pet_media('b.photos', 'pet', 'photo_id', 'img', 'shot_at', name => 'b')")
        c.execute("SELECT genome.register_collection('b_docs', 'b.docs', 'id', 'body')")


def data():
    x, y = imageset.fashion()
    photos, pid = [], 0
    pets = list(range(201, 213))
    for k, pet in enumerate(pets):
        for look in (k % 10, (k + 3) % 10):
            for i in np.where(y == look)[0][pet:pet + 10]:
                pid += 1
                photos.append((pet, pid, imageset.png_of(x[i]), T0 + datetime.timedelta(days=pid)))
    out = pathlib.Path("/tmp/nodes_bench_fortunes.tsv")
    subprocess.run([sys.executable, str(REPO / "tools" / "fortunes_sample.py"), str(out), "25"], check=True,
                   stdout=subprocess.DEVNULL)
    docs = [(int(i), c, b) for i, c, b in (l.split("\t") for l in out.read_text().splitlines())]
    return pets, photos, docs


def setup(n_nodes, pets, photos, docs):
    names = list(NODES)[:n_nodes]
    for n in names:
        prepare_node(NODES[n])
    fresh(COORD)
    with at(COORD) as c:
        c.execute("SET client_min_messages = warning")
        c.execute("CREATE EXTENSION pg_genome_cluster CASCADE")
        c.execute("SELECT genome.register_model_dir('all-minilm-l6-v2', '1', %s)", (f"{MODELS}/all-minilm-l6-v2",))
        for n in names:
            c.execute("SELECT genome_cluster.add_node(%s, '127.0.0.1', %s)", (n, NODES[n]))
        c.execute("CALL genome_cluster.rebalance()")
        c.execute("CREATE SCHEMA b")
        c.execute("CREATE TABLE b.photos (pet bigint NOT NULL, photo_id bigint NOT NULL, img bytea, shot_at timestamptz NOT NULL)"
                  " PARTITION BY LIST (genome_cluster.shard_of((pet)::text))")
        c.execute("CREATE TABLE b.docs (id bigint NOT NULL, category text NOT NULL, body text NOT NULL)"
                  " PARTITION BY LIST (genome_cluster.shard_of((id)::text))")
        c.execute("SELECT genome_cluster.attach_nodes('b.photos')")
        c.execute("SELECT genome_cluster.attach_nodes('b.docs')")
        with c.cursor() as cur:
            cur.executemany("INSERT INTO b.photos VALUES (%s, %s, %s, %s)", photos)
            cur.executemany("INSERT INTO b.docs VALUES (%s, %s, %s)", docs)
        c.execute("SELECT genome.cluster_dirty_pets('b', 1000)")
        c.execute("SELECT genome_cluster.distribute_collection('b_docs', 'bigint')")
        c.execute("SELECT * FROM genome.full_classify('b_docs', min_cluster_size => 5)")
    for n in names:
        with at(NODES[n]) as c:
            c.execute("SELECT genome.create_search_index('b_docs')")
    return names


def timed(conn, sql, args_of, calls):
    ms = []
    for k in range(calls):
        t = time.perf_counter()
        conn.execute(sql, args_of(k)).fetchall()
        ms.append((time.perf_counter() - t) * 1000)
    ms.sort()
    return {"p50": statistics.median(ms), "p99": ms[min(len(ms) - 1, int(len(ms) * 0.99))], "calls": calls}


def throughput(port, sql, args_of, calls, clients=4):
    done = [0]
    lock = threading.Lock()

    def worker(w):
        with at(port) as c:
            for k in range(calls // clients):
                c.execute(sql, args_of(w * 1000 + k)).fetchall()
                with lock:
                    done[0] += 1
    t = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    [x.start() for x in ts]
    [x.join() for x in ts]
    return done[0] / (time.perf_counter() - t)


QUERIES = ["my dog ate my homework", "the law and lawyers", "computers never work", "love and money",
           "a cat on the sofa", "science and the universe", "eat your vegetables", "the game last night"]


def measure(names, pets, calls):
    home = {}
    with at(COORD) as c:
        for p in pets:
            home[p] = c.execute("SELECT (genome_cluster.node_of(%s)).name", (str(p),)).fetchone()[0]
    direct_node = names[0]
    local_pets = [p for p in pets if home[p] == direct_node]
    out = {}
    cases = {
        "cluster_pet": ("SELECT genome.cluster_pet(%s::bigint, 'b')", lambda ps: (lambda k: (ps[k % len(ps)],))),
        "select_heroes": ("SELECT * FROM genome.select_heroes(%s::bigint, 3, 'b')", lambda ps: (lambda k: (ps[k % len(ps)],))),
        "search": ("SELECT id FROM genome.search('b_docs', %s::text, top_k => 10)", lambda ps: (lambda k: (QUERIES[k % len(QUERIES)],))),
    }
    for name, (sql, args) in cases.items():
        with at(COORD) as co, at(NODES[direct_node]) as d:
            # warm both paths (models, plans, connections)
            for k in range(5):
                co.execute(sql, args(pets)(k)).fetchall()
                d.execute(sql, args(local_pets)(k)).fetchall()
            out[name] = {"routed": timed(co, sql, args(pets), calls), "direct": timed(d, sql, args(local_pets), calls)}
        if name in ("cluster_pet", "search"):
            out[name]["routed"]["per_s_4_clients"] = throughput(COORD, sql, args(pets), calls)
            out[name]["direct"]["per_s_4_clients"] = throughput(NODES[direct_node], sql, args(local_pets), calls)
    # assign_family: 30 new rows through the coordinator, then one call; the same on a node directly
    rounds = max(3, calls // 40)
    routed, direct = [], []
    with at(COORD) as co, at(NODES[direct_node]) as d:
        for r in range(rounds):
            base = 1_000_000 + r * 100
            for k in range(30):
                co.execute("INSERT INTO b.docs VALUES (%s, 'new', %s)", (base + k, QUERIES[k % 8] + f" number {k}"))
            t = time.perf_counter()
            co.execute("SELECT * FROM genome.assign_family('b_docs', min_pending => 0)").fetchall()
            routed.append((time.perf_counter() - t) * 1000)
            for k in range(30):
                d.execute("INSERT INTO b.docs VALUES (%s, 'new', %s)", (base + 50 + k, QUERIES[k % 8] + f" number {k}"))
            t = time.perf_counter()
            d.execute("SELECT * FROM genome.assign_family('b_docs', min_pending => 0)").fetchall()
            direct.append((time.perf_counter() - t) * 1000)
    out["assign_family_30_rows"] = {"routed": {"p50": statistics.median(routed), "p99": max(routed), "calls": rounds},
                                    "direct": {"p50": statistics.median(direct), "p99": max(direct), "calls": rounds}}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--json")
    a = ap.parse_args()
    nodes_sh("start", "3")
    pets, photos, docs = data()
    results = {}
    try:
        for n in (1, 3):
            t = time.perf_counter()
            names = setup(n, pets, photos, docs)
            print(f"\n{n} data node(s): set up in {time.perf_counter() - t:.0f} s "
                  f"({len(photos)} photos of {len(pets)} pets, {len(docs)} fortunes)", flush=True)
            results[n] = measure(names, pets, a.calls)
            print(f"{'call':<24}{'routed p50':>11}{'p99':>8}{'direct p50':>12}{'p99':>8}{'overhead p50':>14}"
                  f"{'routed/s (4)':>14}{'direct/s (4)':>14}")
            for name, r in results[n].items():
                ro, di = r["routed"], r["direct"]
                print(f"{name:<24}{ro['p50']:>11.2f}{ro['p99']:>8.2f}{di['p50']:>12.2f}{di['p99']:>8.2f}"
                      f"{ro['p50'] - di['p50']:>14.2f}{ro.get('per_s_4_clients', float('nan')):>14.1f}"
                      f"{di.get('per_s_4_clients', float('nan')):>14.1f}", flush=True)
    finally:
        nodes_sh("stop")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
