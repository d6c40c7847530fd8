#!/usr/bin/env python3
"""The shared inference service against the in-process path, side by side in one run, on the
project's cluster (scripts/cluster.sh; database `genome`, whose inference worker the cluster
starts) with the default model and the sample texts (real fortunes, .genome/data/fortunes.tsv).

1. Memory: private memory (RssAnon) of 1, 8 and 32 backends after each embedded texts with the
   default model, local vs shared; each backend's growth, and the server's total (backends plus
   inference workers).
2. Throughput: `UPDATE ... SET embedding = genome.embed(text)` and `genome.embed_batch` from 1, 4
   and 16 concurrent clients, local vs shared; texts/s, the ratio, and the shared path's average
   batch (items per model run, from the workers' counters).
3. Latency: `SELECT genome.embed('short text')`, p50 / p99 over 300 warm calls, local vs shared.

    .genome/venv/bin/python benches/inference_bench.py [--json out.json] [--quick]
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import threading
import time

import psycopg

REPO = pathlib.Path(__file__).resolve().parents[1]
STATE = REPO / ".genome"
PORT = int(os.environ.get("GENOME_PORT", "55432"))
DB = "genome"


def connect():
    return psycopg.connect(host="127.0.0.1", port=PORT, user="postgres", dbname=DB, autocommit=True)


def status_kib(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def info(c):
    return c.execute("SELECT genome._inference_info()").fetchone()[0]


def my_workers(c):
    oid = c.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
    return [w for w in info(c)["workers"] if w["database_oid"] == oid]


def worker_totals(c):
    ws = my_workers(c)
    return sum(w["batches"] for w in ws), sum(w["items"] for w in ws)


def setup(texts):
    with connect() as c:
        sharedir = subprocess.check_output([os.environ.get("PG_CONFIG", "pg_config"), "--sharedir"], text=True).strip()
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_genome CASCADE")
        if not c.execute("SELECT count(*) FROM genome.models WHERE name = 'all-minilm-l6-v2'").fetchone()[0]:
            c.execute("SELECT genome.register_model_dir('all-minilm-l6-v2', '1', %s)",
                      (f"{sharedir}/pg_genome/models/all-minilm-l6-v2",))
        c.execute("DROP TABLE IF EXISTS bench_inference")
        c.execute("CREATE TABLE bench_inference (id int PRIMARY KEY, body text, embedding vector(384))")
        with c.cursor() as cur:
            cur.executemany("INSERT INTO bench_inference VALUES (%s, %s, NULL)", list(enumerate(texts)))
        if not my_workers(c):
            raise SystemExit("no inference worker serves database genome: is genome.inference_workers > 0?")


def memory(texts, counts):
    out = {}
    for mode in ["local", "shared"]:
        for n in counts:
            conns = [connect() for _ in range(n)]
            pids = [c.info.backend_pid for c in conns]
            for c in conns:
                c.execute(f"SET genome.inference = {mode}")
                c.execute("SELECT 1")
            before = [status_kib(p, "RssAnon") for p in pids]
            with connect() as m:
                w_before = sum(status_kib(w["pid"], "RssAnon") for w in my_workers(m))
            errors = []

            def work(c, k):
                try:
                    c.execute("SELECT genome.embed_batch(%s)", (texts[k * 8 % len(texts):][:8],))
                except Exception as e:  # noqa: BLE001
                    errors.append(repr(e))
            ts = [threading.Thread(target=work, args=(c, k)) for k, c in enumerate(conns)]
            [t.start() for t in ts]
            [t.join() for t in ts]
            assert not errors, errors[:2]
            after = [status_kib(p, "RssAnon") for p in pids]
            peak = [status_kib(p, "VmHWM") for p in pids]
            with connect() as m:
                w_after = sum(status_kib(w["pid"], "RssAnon") for w in my_workers(m))
            growth = [(a - b) / 1024 for a, b in zip(after, before)]
            total = sum(after) / 1024 + (w_after / 1024 if mode == "shared" else 0)
            out[f"{mode} {n}"] = {
                "backends": n, "growth_mib_mean": statistics.mean(growth), "growth_mib_max": max(growth),
                "backend_peak_mib_max": max(peak) / 1024, "backends_rssanon_mib": sum(after) / 1024,
                "workers_rssanon_mib": w_after / 1024 if mode == "shared" else 0.0,
                "worker_growth_mib": (w_after - w_before) / 1024 if mode == "shared" else 0.0,
                "server_total_mib": total,
            }
            print(f"memory {mode:6} {n:3} backends: growth per backend {statistics.mean(growth):7.1f} MiB "
                  f"(max {max(growth):6.1f}), server total {total:8.1f} MiB", flush=True)
            for c in conns:
                c.close()
    return out


def throughput(texts, clients_list, statement):
    out = {}
    for n in clients_list:
        for mode in ["local", "shared"]:
            conns = [connect() for _ in range(n)]
            for c in conns:
                c.execute(f"SET genome.inference = {mode}")
                c.execute("SELECT genome.embed('warm up')")  # the local path loads its session here
            ids = list(range(len(texts)))
            parts = [ids[k::n] for k in range(n)]
            with connect() as m:
                b0, i0 = worker_totals(m)
            errors = []

            def work(c, part):
                try:
                    if statement == "update":
                        c.execute("UPDATE bench_inference SET embedding = genome.embed(body) WHERE id = ANY(%s)", (part,))
                    else:
                        body = [texts[i] for i in part]
                        for s in range(0, len(body), 64):
                            c.execute("SELECT genome.embed_batch(%s)", (body[s:s + 64],))
                except Exception as e:  # noqa: BLE001
                    errors.append(repr(e))
            t0 = time.monotonic()
            ts = [threading.Thread(target=work, args=(c, p)) for c, p in zip(conns, parts)]
            [t.start() for t in ts]
            [t.join() for t in ts]
            secs = time.monotonic() - t0
            assert not errors, errors[:2]
            with connect() as m:
                b1, i1 = worker_totals(m)
            batches, items = b1 - b0, i1 - i0
            rate = len(texts) / secs
            out[f"{statement} {mode} {n}"] = {"clients": n, "texts_per_s": rate, "seconds": secs,
                                               "worker_batches": batches, "worker_items": items,
                                               "mean_batch": items / batches if batches else None}
            for c in conns:
                c.close()
        loc, sh = out[f"{statement} local {n}"], out[f"{statement} shared {n}"]
        print(f"{statement:12} {n:3} clients: local {loc['texts_per_s']:7.1f} texts/s, shared {sh['texts_per_s']:7.1f} "
              f"texts/s, ratio {sh['texts_per_s'] / loc['texts_per_s']:.2f}, shared mean batch "
              f"{sh['mean_batch'] or 0:.1f}", flush=True)
    return out


def latency(calls):
    out = {}
    with connect() as c:
        for mode in ["local", "shared"]:
            c.execute(f"SET genome.inference = {mode}")
            for _ in range(20):
                c.execute("SELECT genome.embed('short text')")
        samples = {"local": [], "shared": []}
        # interleaved call by call, so both paths see the same machine
        for _ in range(calls):
            for mode in ["local", "shared"]:
                c.execute(f"SET genome.inference = {mode}")
                t0 = time.perf_counter()
                c.execute("SELECT genome.embed('short text')").fetchone()
                samples[mode].append((time.perf_counter() - t0) * 1000)
    for mode, s in samples.items():
        s.sort()
        out[mode] = {"p50_ms": s[len(s) // 2], "p99_ms": s[int(len(s) * 0.99) - 1], "calls": len(s)}
    d = out["shared"]["p50_ms"] - out["local"]["p50_ms"]
    print(f"latency: local p50 {out['local']['p50_ms']:.2f} / p99 {out['local']['p99_ms']:.2f} ms, shared p50 "
          f"{out['shared']['p50_ms']:.2f} / p99 {out['shared']['p99_ms']:.2f} ms; round trip adds {d:+.2f} ms p50", flush=True)
    out["added_p50_ms"] = d
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true", help="fewer texts and backends (a smoke run)")
    a = ap.parse_args()
    texts = [line.split("\t", 2)[2].rstrip("\n").replace("\n", " ")
             for line in open(STATE / "data" / "fortunes.tsv", encoding="utf-8")][: 240 if a.quick else 960]
    setup(texts)
    with connect() as c:
        ws = my_workers(c)
        print(f"{len(texts)} sample texts (fortunes), all-minilm-l6-v2, {os.cpu_count()} cores; inference workers: "
              f"{[(w['pid'], w['provider'], w['intra_op_threads']) for w in ws]}; max_batch "
              f"{info(c)['max_batch']}, max_wait {info(c)['max_wait_ms']} ms; local backends: 1 intra-op thread", flush=True)
    results = {"texts": len(texts), "cores": os.cpu_count()}
    results["latency"] = latency(60 if a.quick else 300)
    results["throughput"] = {}
    for st in ["update", "embed_batch"]:
        results["throughput"].update(throughput(texts, [1, 4] if a.quick else [1, 4, 16], st))
    results["memory"] = memory(texts, [1, 4] if a.quick else [1, 8, 32])
    loc32, sh32 = results["memory"].get("local 32"), results["memory"].get("shared 32")
    if loc32 and sh32:
        r = sh32["server_total_mib"] / loc32["server_total_mib"]
        print(f"32 embedding connections: server total shared / local = {r:.3f} (goal <= 0.25); "
              f"per-backend growth shared {sh32['growth_mib_mean']:.1f} MiB (goal <= 10)")
        results["server_total_ratio_32"] = r
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
