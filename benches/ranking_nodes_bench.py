"""Several nodes, ranking (pg_genome_cluster): rank_capabilities through the coordinator, served by
any data node from the replicated catalog, against the same call made straight to a data node
(the baseline: one node ranking alone, no routing), with 1 and 3 data nodes.

    .genome/venv/bin/python benches/ranking_nodes_bench.py [--calls 200] [--json FILE]

Starts the coordinator and data nodes with scripts/nodes.sh (loopback ports 25440..), sets them up
as tests/integration/test_cluster_reference.py does (the real text model, the cheat sheets
catalog registered and refreshed on the coordinator, published, every node subscribed), then
measures one client, `--calls` calls of the catalog's labelled intents (top 10, each logged), p50
and p99 in ms, and 4 clients at once (calls/s, each connection warmed first as in an app's pool). The machine has 2 cores: the data nodes share
them, so 3 nodes measure the routing and the spread of a ranking load, not a 3x machine.
"""
import argparse
import json
import pathlib
import statistics
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
from test_cluster import at, nodes_sh  # noqa: E402
from test_cluster_reference import CAT, COORD, DB, drop_database, set_up  # noqa: E402

SQL = "SELECT capability, ranking_id FROM genome.rank_capabilities(%s, top_k => 10, catalog => %s)"


def timed(port, intents, calls):
    ms = []
    with at(port, DB) as c:
        for k in range(5):
            c.execute(SQL, (intents[k], CAT)).fetchall()
        for k in range(calls):
            t = time.perf_counter()
            c.execute(SQL, (intents[k % len(intents)], CAT)).fetchall()
            ms.append((time.perf_counter() - t) * 1000)
    ms.sort()
    return {"p50": statistics.median(ms), "p99": ms[min(len(ms) - 1, int(len(ms) * 0.99))], "calls": calls}


def throughput(port, intents, calls, clients=4):
    """calls/s of `clients` connections at once, each warmed first (its backend, and through the
    coordinator its PL/Proxy connections and the nodes' backends), as an app's pool would be."""
    done = [0]
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def worker(w):
        with at(port, DB) as c:
            for k in range(20):
                c.execute(SQL, (intents[(w * 991 + k) % len(intents)], CAT)).fetchall()
            start.wait()
            for k in range(calls // clients):
                c.execute(SQL, (intents[(w * 997 + k) % len(intents)], CAT)).fetchall()
                with lock:
                    done[0] += 1
    ts = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    [x.start() for x in ts]
    start.wait()
    t = time.perf_counter()
    [x.join() for x in ts]
    return done[0] / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--json")
    a = ap.parse_args()
    results = {}
    nodes_sh("start", "3")
    try:
        for n in (1, 3):
            nodes = {f"n{i}": 25440 + i for i in range(1, n + 1)}
            for port in (25441, 25442, 25443, COORD):
                drop_database(port)
            t = time.perf_counter()
            set_up(nodes, classifier=False)
            with at(COORD, DB) as c:
                intents = [r[0] for r in c.execute("SELECT intent FROM ref_app.intents ORDER BY md5(intent)").fetchall()]
                served = {}
                for k in range(60):
                    rid = c.execute(SQL, (intents[k], CAT)).fetchone()[1]
                    node = c.execute("SELECT name FROM genome_cluster.nodes WHERE position = (%s::bigint >> 40) - 1",
                                     (rid,)).fetchone()[0]
                    served[node] = served.get(node, 0) + 1
            print(f"\n{n} data node(s): set up in {time.perf_counter() - t:.0f} s, {len(intents)} intents; "
                  f"60 rankings served by {dict(sorted(served.items()))}", flush=True)
            r = {"routed": timed(COORD, intents, a.calls), "direct": timed(25441, intents, a.calls)}
            r["routed"]["per_s_4_clients"] = throughput(COORD, intents, a.calls)
            r["direct"]["per_s_4_clients"] = throughput(25441, intents, a.calls)
            r["served"] = served
            results[n] = r
            ro, di = r["routed"], r["direct"]
            print(f"{'call':<20}{'routed p50':>11}{'p99':>8}{'direct p50':>12}{'p99':>8}{'overhead p50':>14}"
                  f"{'routed/s (4)':>14}{'direct/s (4)':>14}{'ratio':>7}")
            print(f"{'rank_capabilities':<20}{ro['p50']:>11.2f}{ro['p99']:>8.2f}{di['p50']:>12.2f}{di['p99']:>8.2f}"
                  f"{ro['p50'] - di['p50']:>14.2f}{ro['per_s_4_clients']:>14.1f}{di['per_s_4_clients']:>14.1f}"
                  f"{ro['per_s_4_clients'] / di['per_s_4_clients']:>7.2f}", flush=True)
    finally:
        for port in (25441, 25442, 25443, COORD):
            drop_database(port)
        nodes_sh("stop")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
