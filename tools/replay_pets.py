#!/usr/bin/env python3
"""Replay per-pet clustering variants on tuning pets, offline, to choose defaults.

The pets are tools/evaluate_pets.py's (Fashion-MNIST, 2-4 looks each), drawn from the TRAIN split
by default (seeds 100-103), so that choices are never made on the test split the README reports.
They are embedded once with onnxruntime and the registered image model's preprocessing (cached
under .genome/cache), then `update` below, a NumPy + scikit-learn replay of
crates/genome-core/src/pets.rs::update_pet, runs over the arrival waves with each variant. The
degraded photos are left out: in the real evaluation the quality gate holds out all of them.

This is a tool for ranking variants, not a reference for the Rust code (the integration tests
compare cluster_pet with scikit-learn on the real embeddings); the figures it prints are the
"replay" figures in the README's pet evaluation section.

Usage: replay_pets.py [--split train] [--seeds 100,101,102,103] [--variants base,trim,...]
"""
import argparse
import io
import json
import os
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import evaluate_pets  # noqa: E402


def norm(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def embed(rows, model_dir):
    import onnxruntime as ort
    cfg = json.load(open(os.path.join(model_dir, "genome.json")))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), so)
    mean, std = np.array(cfg["mean"], np.float32), np.array(cfg["std"], np.float32)
    r, c = cfg["resize_shorter"], cfg["crop"]

    def prep(png):
        im = Image.open(io.BytesIO(png)).convert("RGB").resize((r, r), Image.BILINEAR)  # the photos are square
        o = (r - c) // 2
        a = np.asarray(im, np.float32)[o:o + c, o:o + c] / 255.0
        return ((a - mean) / std).transpose(2, 0, 1)

    out = []
    for k in range(0, len(rows), 32):
        batch = np.stack([prep(x[2]) for x in rows[k:k + 32]])
        out.append(sess.run([cfg["output_name"]], {cfg["input_name"]: batch})[0])
    return np.concatenate(out)


def load(split, seeds, model_dir):
    """{seed: (vectors, pet, look, degraded)}, embedded once and cached."""
    cache = os.path.join(REPO, ".genome", "cache")
    os.makedirs(cache, exist_ok=True)
    out = {}
    for s in seeds:
        path = os.path.join(cache, f"replay_{split}_{s}.npz")
        if not os.path.exists(path):
            rows = evaluate_pets.build(20, s, {"test": "t10k", "train": "train"}[split])
            np.savez(path, v=embed(rows, model_dir), pet=[x[0] for x in rows], look=[x[5] for x in rows],
                     bad=[x[6] for x in rows])
        z = np.load(path)
        out[s] = (norm(z["v"]), z["pet"], z["look"], z["bad"])
    return out


def update(V, cl, thr, mcs=3, ms=2, min_pending=8, q=0.05, min_sim=0.5, trim="spread", cohesion=None,
           own_tail=None, mad=None):
    """One cluster_pet call on a pet's photos V (unit rows, oldest first); cl[i] is photo i's cluster
    or None. trim: None (0.4.0 as landed), "spread" (the default: members must reach the pet's
    spread taken with the new groups whole), "stored" (first version: the stored threshold, then
    recomputed from the trimmed clusters). Returns (cl, threshold)."""
    from sklearn.cluster import HDBSCAN
    ids = sorted({c for c in cl if c is not None})
    members = {c: [i for i in range(len(V)) if cl[i] == c] for c in ids}
    sums = {c: V[members[c]].sum(0) for c in ids}
    pending = []
    for i in range(len(V)):
        if cl[i] is not None:
            continue
        if ids and thr is not None:
            best, c = max((float(V[i] @ norm(sums[c])), c) for c in ids)
            if best >= thr:
                cl[i] = c
                sums[c] = sums[c] + V[i]
                members[c].append(i)
                continue
        pending.append(i)
    if len(pending) < min_pending:
        return cl, thr
    lab = HDBSCAN(min_cluster_size=mcs, min_samples=ms, cluster_selection_method="leaf",
                  allow_single_cluster=True, copy=True).fit_predict(V[pending])
    groups = []
    for k in sorted(set(lab) - {-1}):
        mem = [pending[j] for j in np.where(lab == k)[0]]
        groups.append((mem, V[mem] @ norm(V[mem].sum(0))))
    if not groups:
        return cl, thr
    old = [V[members[c]] @ norm(sums[c]) for c in ids]
    spread = max(float(np.quantile(np.concatenate(old + [s for _, s in groups]), q)), min_sim)
    bar = thr if (trim == "stored" and thr is not None) else spread
    nxt = max(ids, default=-1) + 1
    formed = []
    for mem, s in groups:
        if cohesion is not None and np.mean(s) < spread + cohesion:
            continue
        keep = np.ones(len(mem), bool)
        if trim is not None:
            keep &= s >= bar
        if own_tail is not None:
            keep &= s >= np.quantile(s, own_tail)
        if mad is not None:
            med = np.median(s)
            keep &= s >= med - mad * 1.4826 * np.median(np.abs(s - med))
        mem = [m for m, k in zip(mem, keep) if k]
        if len(mem) >= mcs:
            formed.append(mem)
    for k, mem in enumerate(formed):
        for i in mem:
            cl[i] = nxt + k
    if formed or thr is None:
        if trim == "stored":
            sims = [V[m] @ norm(V[m].sum(0)) for m in ({c: [i for i in range(len(V)) if cl[i] == c]
                                                         for c in set(cl) - {None}}).values()]
            thr = max(float(np.quantile(np.concatenate(sims), q)), min_sim)
        else:
            thr = spread
    return cl, thr


def replay(data, waves, late=False, **kw):
    """Mean over seeds of (purity, coverage of the good photos, clusters per look[, share of the
    late look's photos in clusters of its own])."""
    res = []
    for V0, pets, looks, bad in data.values():
        ok = tot = cnt = ncl = nlooks = late_in = late_n = 0
        for p in np.unique(pets):
            idx = np.where((pets == p) & ~bad)[0]
            if late:  # the look of the pet's last photo arrives after all the others
                last = looks[idx][-1]
                idx = np.concatenate([idx[looks[idx] != last], idx[looks[idx] == last]])
                n0 = int((looks[idx] != last).sum())
                cuts = [0, n0 // 2, n0, len(idx)]
            else:
                cuts = [0] + [int(w * len(idx)) for w in waves] + [len(idx)]
            V, lk = V0[idx], looks[idx]
            cl, thr = [None] * len(idx), None
            for a, b in zip(cuts[:-1], cuts[1:]):
                cl, thr = update(V[:b], list(cl[:a]) + [None] * (b - a), thr, **kw)
            for c in {x for x in cl if x is not None}:
                mm = [i for i in range(len(cl)) if cl[i] == c]
                major = np.bincount(lk[mm]).argmax()
                ok += (lk[mm] == major).sum()
                tot += len(mm)
                ncl += 1
                if late and major == last:
                    late_in += (lk[mm] == last).sum()
            cnt += len(idx)
            nlooks += len(set(lk))
            if late:
                late_n += (lk == last).sum()
        res.append((ok / tot, tot / cnt, ncl / nlooks) + ((late_in / late_n,) if late else ()))
    return np.mean(res, 0)


VARIANTS = {
    "base": dict(trim=None),
    "trim": dict(),
    "trim-stored": dict(trim="stored"),
    "trim+q0.0625": dict(q=0.0625),
    "trim+q0.075": dict(q=0.075),
    "trim+q0.0875": dict(q=0.0875),
    "trim+cohesion0": dict(cohesion=0.0),
    "trim+cohesion0.03": dict(cohesion=0.03),
    "trim+pending12": dict(min_pending=12),
    "own-tail10%": dict(trim=None, own_tail=0.1),
    "mad1.5": dict(trim=None, mad=1.5),
    "mad3": dict(trim=None, mad=3.0),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=["train", "test"], default="train")
    ap.add_argument("--seeds", default="100,101,102,103")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--model-dir", default=os.path.join(REPO, ".genome", "models", "efficientnet-lite0"))
    a = ap.parse_args()
    data = load(a.split, [int(s) for s in a.seeds.split(",")], a.model_dir)
    fourteen = tuple(np.round(np.arange(0.3, 0.96, 0.05), 2))
    print(f"{a.split} split, seeds {a.seeds}; purity / coverage of good photos / clusters per look")
    print(f"{'variant':<20} {'3 waves':>20} {'14 waves':>20} {'late look (+ its share)':>30}")
    for name in a.variants.split(","):
        kw = VARIANTS[name]
        w3 = replay(data, (0.5, 0.8), **kw)
        w14 = replay(data, fourteen, **kw)
        lt = replay(data, (), late=True, **kw)
        f = lambda r: " / ".join(f"{x:.3f}" for x in r)  # noqa: E731
        print(f"{name:<20} {f(w3):>20} {f(w14):>20} {f(lt):>30}", flush=True)


if __name__ == "__main__":
    main()
