"""Clustering benchmarks with the Python peers side by side, in one run (not tests).

  .genome/bench-venv/bin/python benches/cluster_bench.py [--large 100000] [--hdbscan-n 20000]

1. Full pipeline (reduction + HDBSCAN) on the sample data's real MiniLM embeddings:
   genome-core (examples/classify) vs umap-learn + scikit-learn HDBSCAN: time, clusters,
   clustered share, purity, AMI against the texts' real categories.
2. Exact HDBSCAN on N x 384 embeddings (real ones, extended with jittered copies to reach N):
   genome-core vs sklearn.cluster.HDBSCAN vs the hdbscan package: time and ARI.
3. The approximate path at a large size: time, peak memory, ARI vs exact on a sample.
Inputs come from the running cluster (public.fortunes, embedded by scripts/setup.sh).
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time
import numpy as np
from sklearn.cluster import HDBSCAN
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "target", "release", "examples", "classify")
TMP = tempfile.mkdtemp(prefix="genome-bench-")


def load():
    rows = subprocess.run(["psql", "-AtF\t", "-c", "SELECT category, embedding::text FROM public.fortunes ORDER BY id"],
                          check=True, capture_output=True, text=True).stdout.splitlines()
    cats = [r.split("\t")[0] for r in rows]
    X = np.stack([np.array(r.split("\t")[1].strip("[]").split(","), dtype=np.float32) for r in rows])
    names = sorted(set(cats))
    return X, np.array([names.index(c) for c in cats])


def extend(X, y, n, seed=0):
    """n realistic 384-d vectors: the real ones, then jittered copies (noise at the scale of the
    real within-topic spread), re-normalised."""
    rng = np.random.default_rng(seed)
    reps = [X]
    while sum(len(r) for r in reps) < n:
        J = X + rng.normal(scale=0.02, size=X.shape).astype(np.float32)
        reps.append(J / np.linalg.norm(J, axis=1, keepdims=True))
    return np.concatenate(reps)[:n], np.tile(y, len(reps))[:n]


def scores(lab, y):
    m = lab >= 0
    pur = sum(np.unique(y[lab == c], return_counts=True)[1].max() for c in set(lab[m])) / max(m.sum(), 1)
    return dict(clusters=int(len(set(lab[m]))), clustered=round(float(m.mean()), 3), purity=round(float(pur), 3),
                ami=round(float(adjusted_mutual_info_score(y, lab)), 3))


def rust(X, *kv):
    path = os.path.join(TMP, "in.f32")
    X.astype("<f4").tofile(path)
    t = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run([BIN, path, str(X.shape[1]), os.path.join(TMP, "out"), *kv], check=True, stdout=subprocess.PIPE,
                         stderr=None if os.environ.get("GENOME_BENCH_STAGES") else subprocess.DEVNULL, text=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    info = json.loads(out.stdout)
    info["wall"] = time.time() - t
    info["peak_rss_mib"] = round(max(peak, before) / 1024)
    return np.fromfile(os.path.join(TMP, "out.labels"), dtype=np.int32), info


def line(name, secs, extra):
    print(f"  {name:<34} {secs:8.2f} s   {extra}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hdbscan-n", type=int, default=20000)
    ap.add_argument("--large", type=int, default=100000)
    ap.add_argument("--skip-hdbscan-pkg", action="store_true")
    ap.add_argument("--sections", default="1,2,3", help="comma-separated subset of 1,2,3")
    a = ap.parse_args()
    sections = set(a.sections.split(","))
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "genome-core", "--example", "classify"], check=True, cwd=REPO)
    X, y = load()
    print(f"data: {len(X)} real all-MiniLM-L6-v2 embeddings of the sample texts, {len(set(y))} categories; 2 cores\n")

    if "1" in sections:
        pipeline(X, y)
    if "2" in sections:
        exact(X, y, a)
    if "3" in sections:
        large(X, y, a)


def pipeline(X, y):
    print("1. full pipeline (UMAP-style 5-d, min_dist 0, 15 neighbours; HDBSCAN min_cluster_size 15)")
    import umap
    lab, info = rust(X)
    line("genome-core", info["wall"], scores(lab, y))
    umap.UMAP(n_neighbors=15, n_components=5, min_dist=0.0, metric="cosine", random_state=42).fit_transform(X[:300])  # JIT warm-up
    t = time.time()
    R = umap.UMAP(n_neighbors=15, n_components=5, min_dist=0.0, metric="cosine", random_state=42).fit_transform(X)
    lab_py = HDBSCAN(min_cluster_size=15, copy=True).fit_predict(R)
    tp = time.time() - t
    line("umap-learn + sklearn (numba warm)", tp, scores(lab_py, y))
    print(f"  ratio: {tp / info['wall']:.1f}x faster\n")
    for n in (20000,):
        Xn, yn = extend(X, y, n)
        lab, info = rust(Xn)
        line(f"genome-core, {n} rows", info["wall"], f"{scores(lab, yn)} stages {info['stages']}")
        t = time.time()
        R = umap.UMAP(n_neighbors=15, n_components=5, min_dist=0.0, metric="cosine", random_state=42).fit_transform(Xn)
        lab_py = HDBSCAN(min_cluster_size=15, copy=True).fit_predict(R)
        tp = time.time() - t
        line(f"umap-learn + sklearn, {n} rows", tp, scores(lab_py, yn))
        print(f"  ratio: {tp / info['wall']:.1f}x faster\n")



def exact(X, y, a):
    n = a.hdbscan_n
    print(f"2. exact HDBSCAN on {n} x 384 (min_cluster_size 15, raw normalised embeddings)")
    Xn, yn = extend(X, y, n, seed=1)
    # max_cluster_fraction=1: no family-size cap, i.e. plain HDBSCAN as scikit-learn runs it
    lab, info = rust(Xn, "reduction=none", "method=exact", "max_cluster_fraction=1")
    line("genome-core exact", info["wall"], f"{info['clusters']} clusters")
    t = time.time()
    lab_sk = HDBSCAN(min_cluster_size=15, copy=True).fit_predict(Xn.astype(np.float64))
    ts = time.time() - t
    line("sklearn.cluster.HDBSCAN", ts, f"ARI vs genome-core {adjusted_rand_score(lab_sk, lab):.4f}")
    print(f"  ratio: {ts / info['wall']:.1f}x faster than sklearn")
    if not a.skip_hdbscan_pkg:
        import hdbscan
        t = time.time()
        lab_h = hdbscan.HDBSCAN(min_cluster_size=15, core_dist_n_jobs=2).fit_predict(Xn.astype(np.float64))
        th = time.time() - t
        line("hdbscan 0.8 (boruvka_kdtree)", th, f"ARI vs genome-core {adjusted_rand_score(lab_h, lab):.4f}")
        print(f"  ratio: {th / info['wall']:.1f}x faster than the hdbscan package")
    print()


def large(X, y, a):
    n = a.large
    print(f"3. approximate path at {n} x 384 (full pipeline: HNSW kNN, reduction, kNN-graph HDBSCAN)")
    Xn, yn = extend(X, y, n, seed=2)
    lab, info = rust(Xn)
    line(f"genome-core, {n} rows", info["wall"], f"{scores(lab, yn)} approximate={info['approximate']} peak RSS {info['peak_rss_mib']} MiB stages {info['stages']}")
    s = np.random.default_rng(3).choice(n, 20000, replace=False)
    _, info = rust(Xn[s], "compare=1")
    print(f"  approximate vs exact HDBSCAN on the reduced coordinates of a 20k sample: ARI {info['ari_approx_vs_exact']}, "
          f"{info['approx_seconds']:.2f} s vs {info['exact_seconds']:.2f} s")
    _, info = rust(Xn[s], "compare=1", "reduction=none", "min_cluster_size=5")
    print(f"  same on the raw 384-d embeddings (min_cluster_size 5): ARI {info['ari_approx_vs_exact']}, "
          f"{info['approx_seconds']:.2f} s vs {info['exact_seconds']:.2f} s")


if __name__ == "__main__":
    main()
