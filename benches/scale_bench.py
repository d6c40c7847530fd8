#!/usr/bin/env python3
"""Issue 17: the weekly full classification at scale, through `genome.full_classify` on real
tables of the project's cluster (database `genome`), one backend per run.

Data: WordNet 3.0's 117,659 synsets (public.bench_wordnet, loaded and embedded by
benches/wordnet.py, labelled by their 45 lexicographer files). Sizes above 117,659 add jittered
copies: copy j of a synset is its embedding plus a noise vector (one of 4,096 drawn once,
N(0, 0.02^2) per dimension, the scale of benches/cluster_bench.py), re-normalised; the copy keeps
the synset's text and label.

For each size: the backend's peak memory (VmHWM) and the run's per-stage timings
(genome.runs.timings), the progress view polled every 10 s while it runs (stage, fraction,
the stage's time left). At 117,659 rows: clustered share, purity and AMI against the
lexicographer files, and the ARI between runs with two seeds. With --cancel N: at N rows, a
first full run, then runs cancelled in the kNN graph, in the layout and while writing rows:
how long the cancel took and whether the families and every row's family are as the first
run left them.

    .genome/venv/bin/python benches/scale_bench.py [--sizes 117659,1000000]
        [--seeds 42,7] [--cancel 300000] [--search-index] [--fillfactor 50] [--grow 1000000 --batch 1000]
        [--sample-rows 40000] [--json out.json]
"""
import argparse
import json
import math
import os
import threading
import time

import numpy as np
import psycopg

DSN = f"host={os.environ.get('PGHOST', '127.0.0.1')} port={os.environ.get('PGPORT', '55432')} " \
      f"user={os.environ.get('PGUSER', 'postgres')} dbname=genome"
BASE = 117_659


def connect():
    return psycopg.connect(DSN, autocommit=True)


def prepare(n, search_index, fillfactor=None):
    """bench_scale_N (ids 1..n, the synsets first, then their jittered copies), registered as
    collection scale_N. Without `search_index` the collection's pgvector HNSW index (which
    register_collection builds) is dropped before the rows go in: see benches/README.md on
    writing the families back. `fillfactor`: the table's (room on each page for the new
    version of a row whose family changes: a HOT update)."""
    t = f"bench_scale_{n}"
    name = t.replace("bench_", "")
    with connect() as c:
        c.execute("SET maintenance_work_mem = '1GB'")
        if not c.execute("SELECT to_regclass('bench_noise') IS NOT NULL").fetchone()[0]:
            rng = np.random.default_rng(17)
            noise = rng.normal(scale=0.02, size=(4096, 384)).astype(np.float32)
            c.execute("CREATE TABLE bench_noise (k int PRIMARY KEY, v vector(384))")
            with c.cursor().copy("COPY bench_noise (k, v) FROM STDIN") as cp:
                for k, v in enumerate(noise):
                    cp.write_row((k, "[" + ",".join(f"{x:.6f}" for x in v) + "]"))
        c.execute("SELECT genome.unregister_collection(%s) FROM genome.collections WHERE name = %s", (name, name))
        c.execute(f"DROP TABLE IF EXISTS {t}")
        ff = f" WITH (fillfactor = {int(fillfactor)})" if fillfactor else ""
        c.execute(f"CREATE TABLE {t} (id bigint PRIMARY KEY, body text, lexname text, embedding vector(384), family_id bigint){ff}")
        c.execute("SELECT genome.register_collection(%s, %s::regclass, 'id', 'body', 'embedding', 'family_id', NULL, 'all-minilm-l6-v2')",
                  (name, t))
        # the collection's HNSW index goes before the rows; with --search-index it is built again
        # (the same definition) once they are in: a bulk build is faster than 1M insertions
        c.execute(f"DROP INDEX genome_hnsw_{name}")
        copies = math.ceil(n / BASE)
        t0 = time.time()
        c.execute(f"""
            INSERT INTO {t}
            SELECT j * {BASE} + w.rn, w.body, w.lexname,
                   CASE WHEN j = 0 THEN w.embedding ELSE l2_normalize(w.embedding + z.v) END, NULL
              FROM (SELECT row_number() OVER (ORDER BY id) AS rn, * FROM bench_wordnet) w
              CROSS JOIN generate_series(0, {copies - 1}) j
              JOIN bench_noise z ON z.k = (w.rn * 7 + j * 131) % 4096
             WHERE j * {BASE} + w.rn <= {n}""")
        c.execute(f"VACUUM ANALYZE {t}")
        if search_index:
            t1 = time.time()
            c.execute("SET maintenance_work_mem = '8GB'")
            c.execute("SELECT genome.create_search_index(%s)", (name,))
            print(f"  search index built in {time.time() - t1:.0f} s", flush=True)
        print(f"  table {t}: {n} rows in {time.time() - t0:.0f} s (search index: {search_index}, fillfactor: "
              f"{fillfactor or 100})", flush=True)
    return t, name


def status(pid):
    out = {}
    for line in open(f"/proc/{pid}/status"):
        k, v = line.split(":", 1)
        if k in ("VmHWM", "VmRSS"):
            out[k] = int(v.split()[0]) / 1024
    return out


class Poller(threading.Thread):
    """Prints the progress view of one backend every `every` seconds."""

    def __init__(self, pid, every=10.0):
        super().__init__(daemon=True)
        self.pid, self.every, self.stop, self.seen = pid, every, threading.Event(), []

    def run(self):
        with connect() as c:
            while not self.stop.wait(self.every):
                r = c.execute("SELECT stage, done, total, stage_fraction, stage_seconds_left, running_seconds "
                              "FROM genome.progress WHERE pid = %s", (self.pid,)).fetchone()
                if r:
                    self.seen.append(r)
                    stage, done, total, frac, left, run = r
                    f = f"{frac:.0%}" if frac is not None else "-"
                    l = f"{left:.0f} s left in stage" if left is not None else ""
                    print(f"    [{run:6.0f} s] {stage:9s} {done}/{total} {f} {l}", flush=True)


def updates(c, name):
    """(updates, HOT updates) of the collection's table so far (pg_stat_user_tables)."""
    c.execute("SELECT pg_stat_clear_snapshot()")
    return c.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables s JOIN genome.collections g "
                     "ON g.relid = s.relid WHERE g.name = %s", (name,)).fetchone()


SAMPLE_ROWS = None  # --sample-rows: genome.classify_sample_rows for every run


def full_run(name, seed, cancel_when=None):
    """One full_classify in a fresh backend. cancel_when(stage, fraction, stage_seconds) -> True
    cancels it."""
    with connect() as c:
        if SAMPLE_ROWS is not None:
            c.execute(f"SET genome.classify_sample_rows = {int(SAMPLE_ROWS)}")
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        before = status(pid)
        poll = Poller(pid, every=1.0 if cancel_when else 10.0)
        canceller = None
        result = {"seed": seed}
        if cancel_when:
            def watch():
                with connect() as w:
                    while True:
                        r = w.execute("SELECT stage, stage_fraction, stage_seconds FROM genome.progress WHERE pid = %s",
                                      (pid,)).fetchone()
                        if r and cancel_when(*r):
                            result["cancelled_in"] = r[0]
                            result["cancel_sent"] = time.monotonic()
                            w.execute("SELECT pg_cancel_backend(%s)", (pid,))
                            return
                        time.sleep(0.05)
            canceller = threading.Thread(target=watch, daemon=True)
            canceller.start()
        else:
            poll.start()
        upd0 = updates(c, name)
        t0 = time.monotonic()
        try:
            row = c.execute("SELECT * FROM genome.full_classify(%s, seed => %s)", (name, seed)).fetchone()
            result.update(ok=True, seconds=time.monotonic() - t0, n_clusters=row[3], n_noise=row[4])
        except psycopg.Error as e:
            result.update(ok=False, sqlstate=e.sqlstate, error=str(e).splitlines()[0])
            if "cancel_sent" in result:
                result["cancel_seconds"] = time.monotonic() - result.pop("cancel_sent")
        poll.stop.set()
        after = status(pid)
        result["backend_peak_mib"] = after["VmHWM"]
        result["backend_base_mib"] = before["VmRSS"]
        if result.get("ok"):
            time.sleep(1.5)  # the backend's table statistics reach the shared counters when it idles
            upd1 = updates(c, name)
            result["row_updates"] = upd1[0] - upd0[0]
            result["hot_updates"] = upd1[1] - upd0[1]
            result["timings"] = c.execute("SELECT timings FROM genome.runs WHERE collection = %s ORDER BY id DESC LIMIT 1",
                                          (name,)).fetchone()[0]
    return result


def labels(t, name):
    with connect() as c:
        rows = c.execute(f"SELECT family_id, lexname FROM {t} ORDER BY id").fetchall()
        unc = c.execute("SELECT id FROM genome.families WHERE collection = %s AND is_unclustered", (name,)).fetchone()[0]
    fam = np.array([-1 if f is None or f == unc else f for f, _ in rows])
    return fam, np.array([l for _, l in rows])


def quality(fam, lex):
    from sklearn.metrics import adjusted_mutual_info_score as ami
    m = fam >= 0
    pur = sum(np.unique(lex[fam == f], return_counts=True)[1].max() for f in np.unique(fam[m]))
    return {"clustered": float(m.mean()), "purity": float(pur / max(m.sum(), 1)),
            "ami_clustered": float(ami(lex[m], fam[m])), "ami_all": float(ami(lex, fam)),
            "families": int(len(np.unique(fam[m])))}


def checksum(t, name):
    with connect() as c:
        rows = c.execute(f"SELECT md5(string_agg(coalesce(family_id::text, '-'), ',' ORDER BY id)) FROM {t}").fetchone()[0]
        fams = c.execute("SELECT md5(string_agg(id || ':' || size || ':' || coalesce(retired_at::text, ''), ',' ORDER BY id)) "
                         "FROM genome.families WHERE collection = %s", (name,)).fetchone()[0]
        runs = c.execute("SELECT count(*) FROM genome.runs WHERE collection = %s", (name,)).fetchone()[0]
    return rows, fams, runs


def grow(n, batch, fillfactor, search_index):
    """assign_family with many rows pending: the 117,659 glosses classified by a full run, then
    `n` jittered copies inserted at once (listed by the collection's trigger), then assign_family
    in batches of `batch` until none is left. Each call's time, by how many rows were still
    pending: flat if no batch scans the whole table or the whole list."""
    t, name = prepare(BASE, search_index, fillfactor)
    r = full_run(name, 42)
    print(f"  full run on {BASE}: {r['seconds']:.1f} s", flush=True)
    copies = math.ceil(n / BASE)
    with connect() as c:
        t0 = time.time()
        c.execute(f"""
            INSERT INTO {t}
            SELECT j * {BASE} + w.rn, w.body, w.lexname, l2_normalize(w.embedding + z.v), NULL
              FROM (SELECT row_number() OVER (ORDER BY id) AS rn, * FROM bench_wordnet) w
              CROSS JOIN generate_series(1, {copies}) j
              JOIN bench_noise z ON z.k = (w.rn * 7 + j * 131) % 4096
             WHERE (j - 1) * {BASE} + w.rn <= {n}""")
        ins = time.time() - t0
        c.execute(f"VACUUM ANALYZE {t}")
        listed = c.execute("SELECT count(*) FROM genome.pending_rows WHERE collection = %s", (name,)).fetchone()[0]
        print(f"  inserted {n} rows in {ins:.1f} s, {listed} listed as pending", flush=True)
        calls = []
        left = listed
        t0 = time.time()
        while True:
            t1 = time.perf_counter()
            p, a, u = c.execute("SELECT * FROM genome.assign_family(%s, batch_size => %s, min_pending => 1)",
                                (name, batch)).fetchone()
            dt = time.perf_counter() - t1
            if p == 0:
                break
            calls.append((left, p, dt))
            left -= p
            if len(calls) % 200 == 0:
                print(f"    {len(calls)} calls, {left} pending, last {dt * 1000:.0f} ms", flush=True)
        total = time.time() - t0
        null = c.execute(f"SELECT count(*) FROM {t} WHERE family_id IS NULL").fetchone()[0]
    k = max(len(calls) // 10, 1)
    def ms(part):
        v = sorted(x[2] for x in part)
        return {"p50_ms": 1000 * v[len(v) // 2], "p90_ms": 1000 * v[int(len(v) * 0.9)], "calls": len(v)}
    out = {"rows": n, "batch": batch, "insert_seconds": ins, "listed": listed, "calls": len(calls),
           "seconds": total, "rows_per_second": listed / total, "left_without_family": null,
           "first_tenth": ms(calls[:k]), "middle_tenth": ms(calls[len(calls) // 2 - k // 2:len(calls) // 2 + k - k // 2]),
           "last_tenth": ms(calls[-k:])}
    print(f"  assign_family: {json.dumps(out)}", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="117659", help="comma-separated row counts ('' for none)")
    ap.add_argument("--seeds", default="42,7")
    ap.add_argument("--cancel", type=int, default=0)
    ap.add_argument("--search-index", action="store_true",
                    help="keep the collection's HNSW index (writing families back then costs an index insertion per row)")
    ap.add_argument("--fillfactor", type=int, help="the table's fillfactor (default 100)")
    ap.add_argument("--grow", type=int, default=0,
                    help="assign_family with this many rows pending (inserted after a full run on the glosses)")
    ap.add_argument("--batch", type=int, default=1000, help="assign_family's batch size with --grow")
    ap.add_argument("--sample-rows", type=int,
                    help="genome.classify_sample_rows for the runs (default: the GUC's, 1,000,000)")
    ap.add_argument("--json")
    a = ap.parse_args()
    global SAMPLE_ROWS
    SAMPLE_ROWS = a.sample_rows
    out = {"runs": {}, "cancel": None}
    seeds = [int(s) for s in a.seeds.split(",")]
    for n in [int(s) for s in a.sizes.split(",") if s.strip()]:
        print(f"{n} rows", flush=True)
        t, name = prepare(n, a.search_index, a.fillfactor)
        res = []
        firsts = None
        for i, seed in enumerate(seeds if n <= BASE else seeds[:1]):
            r = full_run(name, seed)
            print(f"  seed {seed}: {json.dumps(r)}", flush=True)
            if n <= BASE and r.get("ok"):
                fam, lex = labels(t, name)
                r["quality"] = quality(fam, lex)
                print(f"    quality {r['quality']}", flush=True)
                if firsts is None:
                    firsts = fam
                else:
                    from sklearn.metrics import adjusted_rand_score as ari
                    m = (fam >= 0) & (firsts >= 0)
                    r["ari_vs_first_seed"] = float(ari(firsts, fam))
                    r["ari_vs_first_seed_both_clustered"] = float(ari(firsts[m], fam[m]))
                    print(f"    ARI vs seed {seeds[0]}: {r['ari_vs_first_seed']:.3f} (rows clustered in both: "
                          f"{r['ari_vs_first_seed_both_clustered']:.3f})", flush=True)
            res.append(r)
        out["runs"][n] = res
    if a.cancel:
        n = a.cancel
        print(f"cancel at {n} rows", flush=True)
        t, name = prepare(n, a.search_index, a.fillfactor)
        first = full_run(name, 42)
        print(f"  first run: {json.dumps(first)}", flush=True)
        before = checksum(t, name)
        cancels = []
        # (stage, at least this fraction, at least this many seconds into the stage): the layout
        # both in its initialisation (before its first epoch) and in its epochs
        for stage, frac, secs in (("knn", 0.3, 0), ("reduce", 0.0, 5.0), ("reduce", 0.5, 0), ("hdbscan", 0.0, 0),
                                  ("assign", 0.3, 0)):
            r = full_run(name, 43, cancel_when=lambda s, f, sec, st=stage, fr=frac, se=secs:
                         s == st and (f or 0) >= fr and sec >= se)
            r["asked"] = {"stage": stage, "fraction": frac, "seconds_into_stage": secs}
            r["untouched"] = checksum(t, name) == before
            print(f"  cancel in {stage}: {json.dumps(r)}", flush=True)
            cancels.append(r)
        out["cancel"] = {"rows": n, "first": first, "cancels": cancels}
    if a.grow:
        print(f"assign_family with {a.grow} rows pending", flush=True)
        out["grow"] = grow(a.grow, a.batch, a.fillfactor, a.search_index)
    out["sample_rows"] = a.sample_rows
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1, default=str)


if __name__ == "__main__":
    main()
