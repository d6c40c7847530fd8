#!/usr/bin/env python3
"""Reference labels for the Rust HDBSCAN from scikit-learn's sklearn.cluster.HDBSCAN.

Writes tests/fixtures/hdbscan/<case>.json: {min_cluster_size, min_samples, dim, ties, points
(or points_file: little-endian float32, row-major), labels, probabilities}. Points are float32
(what pg_genome clusters); scikit-learn runs on them widened to float64.
usage: make_hdbscan_fixtures.py OUT_DIR [EMBEDDINGS_TSV|-] [PET_EMBEDDINGS_TSV]
(TSVs of pgvector text, one per line; "-" skips the text-embedding cases.)
Needs scikit-learn (made with 1.9.1: pip install scikit-learn==1.9.1); not part of the set-up,
the fixtures are committed. The embeddings used: the first 600 rows of public.fortunes; for the
per-pet cases (leaf selection, allow_single_cluster, min_samples 2: what genome.cluster_pet runs),
the genome.embed_image vectors of single pets of tools/evaluate_pets.py (seed 0, kept with --keep):
  psql -Atc "SELECT embedding FROM genome.pet_photos WHERE media = 'eval_pets' AND pet_id IN ('3', '4')
             ORDER BY pet_id, image_id::bigint" > pets.tsv
"""
import json, os, sys

import numpy as np
import sklearn
from sklearn.cluster import HDBSCAN
from sklearn.datasets import make_blobs, make_moons

out = sys.argv[1]
os.makedirs(out, exist_ok=True)


def write(name, X, mcs, ms=None, ties=False, binary=False, max_size=None, sel="eom", single=False):
    X = np.asarray(X, dtype=np.float32)
    h = HDBSCAN(min_cluster_size=mcs, min_samples=ms, metric="euclidean", algorithm="brute", copy=True,
                max_cluster_size=max_size, cluster_selection_method=sel,
                allow_single_cluster=single).fit(X.astype(np.float64))
    rec = {"case": name, "sklearn": sklearn.__version__, "min_cluster_size": mcs, "min_samples": ms, "max_cluster_size": max_size,
           "cluster_selection_method": sel, "allow_single_cluster": single,
           "dim": int(X.shape[1]), "n": int(X.shape[0]), "ties": ties,
           "labels": h.labels_.tolist(), "probabilities": [round(float(p), 12) for p in h.probabilities_]}
    if binary:
        X.astype("<f4").tofile(os.path.join(out, f"{name}.f32"))
        rec["points_file"] = f"{name}.f32"
    else:
        rec["points"] = X.astype(float).tolist()
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(rec, f)
    k = len(set(h.labels_)) - (1 if -1 in h.labels_ else 0)
    print(f"{name}: n={len(X)} d={X.shape[1]} clusters={k} noise={(h.labels_ == -1).sum()}")


X, _ = make_blobs(n_samples=400, centers=5, cluster_std=0.8, random_state=0)
write("blobs", X, 10)
# a big cluster that holds two dense cores: with max_cluster_size it must split
X, _ = make_blobs(n_samples=[300, 300, 100], centers=[[0, 0], [2.5, 0], [20, 20]], cluster_std=[0.6, 0.6, 0.5], random_state=3)
write("blobs_max_size", X, 10, max_size=400)
X, _ = make_moons(n_samples=400, noise=0.07, random_state=1)
write("moons", X, 12, ms=5)
X, _ = make_blobs(n_samples=[200, 150, 150], centers=[[0, 0], [6, 6], [14, 0]], cluster_std=[0.3, 1.0, 2.5], random_state=2)
write("varying_density", X, 15)
rng = np.random.default_rng(3)
X, _ = make_blobs(n_samples=300, centers=3, cluster_std=0.5, random_state=3)
X = np.vstack([X, X[rng.choice(300, 60)]])  # exact duplicates
write("duplicates", X, 10, ties=True)
g = np.array([[i, j] for i in range(12) for j in range(12)] + [[i + 30, j] for i in range(8) for j in range(8)], dtype=float)
write("grid_ties", g, 8, ties=True)
X, _ = make_blobs(n_samples=300, n_features=10, centers=4, random_state=4)
write("blobs_10d", X, 8, ms=3)


def load_tsv(path):
    E = np.array([[float(v) for v in l.strip().strip("[]").split(",")] for l in open(path)], dtype=np.float32)
    return E / np.linalg.norm(E, axis=1, keepdims=True)


if len(sys.argv) > 3:
    P = load_tsv(sys.argv[3])
    n = len(P) // 2  # both pets together, and the first half alone (pet 3 and a few of pet 4)
    write("pets_leaf_ms2", P, 3, ms=2, sel="leaf", single=True, binary=True)
    write("pets_leaf_ms2_half", P[:n], 3, ms=2, sel="leaf", single=True, binary=True)
if len(sys.argv) > 2 and sys.argv[2] != "-":
    E = load_tsv(sys.argv[2])
    write("minilm_raw", E, 10, ties=True, binary=True)  # real data carries exact duplicates
    # a 5-d linear projection (top principal axes) of the same embeddings: many more clusters
    C = E - E.mean(0)
    _, _, vt = np.linalg.svd(C, full_matrices=False)
    write("minilm_pca5", C @ vt[:5].T, 10, ties=True)
    write("minilm_pca5_small", C @ vt[:5].T, 5, ms=3, ties=True)
