"""kNN graph builders side by side on real embeddings (issue 17's first lever), in one run.

  .genome/bench-venv/bin/python benches/knn_bench.py [--sizes 20000,117659] [--skip-hnsw-above N]

Data: WordNet 3.0 glosses embedded with the default model (benches/wordnet.py, which loads and
embeds them in the project's cluster and dumps .genome/bench/wordnet.f32). For each size (the
first N synsets) it builds the k = 15 graph with genome-core's NN-descent and HNSW
(examples/knn_bench) and with pynndescent (the peer umap-learn uses, with umap-learn's settings:
n_trees 5 + sqrt(n)/20 at most 64, max_candidates 60), and prints seconds, peak memory and
recall@15 against brute-force neighbours of 500 sampled points (the same points and the same
recall code for every method).
"""
import argparse, json, os, pathlib, resource, subprocess, sys, time
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
OUT = REPO / ".genome" / "bench"
BIN = REPO / "target" / "release" / "examples" / "knn_bench"
K = 15


def recall(X, idx, queries):
    hit = tot = 0
    for i in queries:
        d = 1 - X @ X[i]
        d[i] = np.inf
        kth = np.partition(d, K - 2)[K - 2]
        for j in idx[i]:
            if j == i:
                continue
            tot += 1
            hit += (1 - X[i] @ X[j]) <= kth + 1e-6
    return hit / tot


def ours(path, n, method):
    graph = OUT / f"knn-{method}-{n}.u32"
    out = subprocess.run([str(BIN), str(path), "384", method, str(K), "0"], check=True, capture_output=True,
                         text=True, env={**os.environ, "KNN_OUT": str(graph)}).stdout
    r = json.loads(out)
    idx = np.fromfile(graph, dtype="<u4").reshape(n, K)
    graph.unlink()
    return r["seconds"], r["peak_rss_mib"], idx


def pynn(path, n):
    # in a child process: its peak memory is its own
    code = f"""
import json, resource, sys, time, numpy as np
from pynndescent import NNDescent
X = np.fromfile({str(path)!r}, dtype="<f4").reshape(-1, 384)
X /= np.linalg.norm(X, axis=1, keepdims=True)
NNDescent(X[:2000], n_neighbors={K}, metric="cosine")  # numba compiles outside the timing
n = len(X); t = time.perf_counter()
g = NNDescent(X, n_neighbors={K}, metric="cosine", n_trees=min(64, 5 + int(round(n ** 0.5 / 20.0))),
              n_iters=max(5, int(round(np.log2(n)))), max_candidates=60, low_memory=True, n_jobs=-1).neighbor_graph[0]
secs = time.perf_counter() - t
g.astype("<u4").tofile({str(OUT / "knn-pynn.u32")!r})
print(json.dumps({{"seconds": secs, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    r = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    idx = np.fromfile(OUT / "knn-pynn.u32", dtype="<u4").reshape(n, K)
    (OUT / "knn-pynn.u32").unlink()
    return r["seconds"], r["peak_rss_mib"], idx


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="20000,117659")
    ap.add_argument("--skip-hnsw-above", type=int, default=10**9)
    ap.add_argument("--json")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    full = OUT / "wordnet.f32"
    if not full.exists():
        subprocess.run([sys.executable.replace("bench-venv", "venv"), str(REPO / "benches" / "wordnet.py"),
                        "--dump", str(OUT / "wordnet")], check=True)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "genome-core", "--example", "knn_bench"],
                   check=True, cwd=REPO)
    allX = np.fromfile(full, dtype="<f4").reshape(-1, 384)
    results = {}
    for n in [int(s) for s in a.sizes.split(",")]:
        X = allX[:n].copy()
        path = OUT / f"wordnet-{n}.f32"
        X.tofile(path)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        queries = np.random.default_rng(7).choice(n, 500, replace=False)
        row = {}
        runs = [("nndescent", lambda: ours(path, n, "nndescent")), ("pynndescent", lambda: pynn(path, n))]
        if n <= a.skip_hnsw_above:
            runs.append(("hnsw", lambda: ours(path, n, "hnsw")))
        for name, run in runs:
            secs, mib, idx = run()
            row[name] = {"seconds": secs, "peak_rss_mib": mib, "recall": recall(X, idx, queries)}
            print(f"n={n:7} {name:12} {secs:8.2f} s  peak {mib:7.0f} MiB  recall@15 {row[name]['recall']:.4f}", flush=True)
        path.unlink()
        nd = row["nndescent"]
        print(f"n={n:7} NN-descent / pynndescent time {nd['seconds'] / row['pynndescent']['seconds']:.2f}x"
              + (f", HNSW / NN-descent time {row['hnsw']['seconds'] / nd['seconds']:.1f}x" if "hnsw" in row else ""),
              flush=True)
        results[n] = row
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
