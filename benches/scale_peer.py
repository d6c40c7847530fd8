#!/usr/bin/env python3
"""The peer of issue 17's 117,659-row run: umap-learn + scikit-learn on the same WordNet vectors,
with the pipeline's settings (15 neighbours, cosine, 5 components, min_dist 0, spectral init;
HDBSCAN min_cluster_size 15, max_cluster_size half the rows, excess of mass), two seeds: time,
quality against the 45 lexicographer files, ARI between the seeds.

    .genome/bench-venv/bin/python benches/scale_peer.py [PREFIX] [--seeds 42,7] [--json out.json]
PREFIX (default .genome/bench/wordnet): PREFIX.f32 and PREFIX.labels from benches/wordnet.py --dump.
"""
import argparse
import json
import time

import numpy as np
import umap
from sklearn.cluster import HDBSCAN
from sklearn.metrics import adjusted_mutual_info_score as ami, adjusted_rand_score as ari

ap = argparse.ArgumentParser()
ap.add_argument("prefix", nargs="?", default=".genome/bench/wordnet")
ap.add_argument("--seeds", default="42,7")
ap.add_argument("--json")
a = ap.parse_args()
X = np.fromfile(a.prefix + ".f32", dtype="<f4").reshape(-1, 384)
y = np.array(open(a.prefix + ".labels").read().split())
out = {}
runs = []
for seed in [int(s) for s in a.seeds.split(",")]:
    t0 = time.time()
    emb = umap.UMAP(n_neighbors=15, n_components=5, min_dist=0.0, metric="cosine", random_state=seed).fit_transform(X)
    t1 = time.time()
    lab = HDBSCAN(min_cluster_size=15, max_cluster_size=len(X) // 2).fit_predict(emb)
    t2 = time.time()
    m = lab >= 0
    pur = sum(np.unique(y[lab == c], return_counts=True)[1].max() for c in np.unique(lab[m]))
    r = {"seed": seed, "umap_s": t1 - t0, "hdbscan_s": t2 - t1, "families": int(len(np.unique(lab[m]))),
         "clustered": float(m.mean()), "purity": float(pur / m.sum()), "ami_clustered": float(ami(y[m], lab[m])),
         "ami_all": float(ami(y, lab))}
    if runs:
        f = runs[0][1]
        both = m & (f >= 0)
        r["ari_vs_first_seed"] = float(ari(f, lab))
        r["ari_vs_first_seed_both_clustered"] = float(ari(f[both], lab[both]))
    runs.append((r, lab))
    print(json.dumps(r), flush=True)
if a.json:
    json.dump([r for r, _ in runs], open(a.json, "w"), indent=1)
