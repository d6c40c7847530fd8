"""Make tests/fixtures/pipeline: the sample data's real embeddings and umap-learn + scikit-learn's
results on them, the independent reference for genome-core's reduction + HDBSCAN pipeline.

Needs a venv with tools/requirements-bench.txt and a running cluster with public.fortunes
embedded (scripts/setup.sh). Run: .genome/bench-venv/bin/python tools/make_pipeline_fixture.py
The embeddings are stored as float16 (half the size); the reference runs on the same rounded
values the Rust test reads back.
"""
import json, os, subprocess, time
import numpy as np
import umap
from sklearn.cluster import HDBSCAN
from sklearn.metrics import adjusted_mutual_info_score

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "pipeline")
os.makedirs(OUT, exist_ok=True)
rows = subprocess.run(["psql", "-AtF\t", "-c", "select category, embedding::text from public.fortunes order by id"],
                      check=True, capture_output=True, text=True).stdout.splitlines()
cats = [r.split("\t")[0] for r in rows]
X = np.stack([np.array(r.split("\t")[1].strip("[]").split(","), dtype=np.float32) for r in rows])
X16 = X.astype(np.float16)
X16.tofile(os.path.join(OUT, "fortunes_minilm.f16"))
X = X16.astype(np.float32)
names = sorted(set(cats))
y = np.array([names.index(c) for c in cats])

def scores(lab):
    m = lab >= 0
    pur = sum(np.unique(y[lab == c], return_counts=True)[1].max() for c in set(lab[m]))
    return dict(clusters=int(len(set(lab[m]))), clustered=float(m.mean()), purity=float(pur / max(m.sum(), 1)),
                ami=float(adjusted_mutual_info_score(y, lab)))

def knn_preservation(A, B, k=15):
    from sklearn.neighbors import NearestNeighbors
    ia = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(A).kneighbors(A, return_distance=False)[:, 1:]
    ib = NearestNeighbors(n_neighbors=k + 1).fit(B).kneighbors(B, return_distance=False)[:, 1:]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ia, ib)]))

t = time.time()
R = umap.UMAP(n_neighbors=15, n_components=5, min_dist=0.0, metric="cosine", random_state=42).fit_transform(X)
lab = HDBSCAN(min_cluster_size=15).fit_predict(R)
raw = HDBSCAN(min_cluster_size=15).fit_predict(X / np.linalg.norm(X, axis=1, keepdims=True))
keep = (np.arange(len(y)) + 1) % 10 != 0   # the main job's weekly run sees 90% of the sample
Rs = umap.UMAP(n_neighbors=15, n_components=5, min_dist=0.0, metric="cosine", random_state=42).fit_transform(X[keep])
ys, yfull = y[keep], y
y = ys
sub = scores(HDBSCAN(min_cluster_size=15).fit_predict(Rs))
y = yfull
ref = dict(n=len(y), dim=X.shape[1], categories=y.tolist(), category_names=names,
           umap_hdbscan=dict(scores(lab), knn_preservation_15=knn_preservation(X, R), labels=lab.tolist()),
           raw_hdbscan=scores(raw), subset90_umap_hdbscan=sub,
           versions=dict(umap=umap.__version__, sklearn=__import__("sklearn").__version__))
json.dump(ref, open(os.path.join(OUT, "fortunes.json"), "w"))
print({k: v for k, v in ref["umap_hdbscan"].items() if k != "labels"}, ref["raw_hdbscan"], f"{time.time() - t:.1f}s")
