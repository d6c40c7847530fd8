#!/usr/bin/env python3
"""Evaluate per-pet clusters and hero selection on labelled real photos.

Data: Fashion-MNIST's test split (10,000 product photos by Zalando, 10 labelled classes, MIT),
shipped by Debian's dataset-fashion-mnist. No registry package ships labelled pet photos, so
"pets" are built from it: each pet gets 2-4 looks (classes drawn at random), 12-30 photos per
look, taken over a year with the looks interleaved. A pet's photos arrive in three waves
(50%, 30%, 20% by time) and genome.cluster_pet runs after each wave, so the incremental path
(joins, new clusters among leftovers) is what is measured, not one batch run.
Synthetic degradations complement the real photos: 15% of each pet's photos are blurred and
darkened (marked), so hero selection has bad photos to avoid.

Metrics (printed, and as JSON with --json):
- purity: over all clustered photos, the share whose look is their cluster's majority look
  (goal >= 90%);
- coverage: share of embedded photos in a cluster;
- clusters per look: how much looks are split;
- hero precision: share of genome.select_heroes(pet, 3) picks that are of their cluster's
  majority look and not degraded (goal >= 85%).
Peer: scikit-learn's HDBSCAN (leaf selection, the same min_cluster_size and min_samples as
genome.pet_*) on each pet's final photos at once, same embeddings.

Tuning and evaluation are kept apart: defaults (genome.pet_min_samples,
genome.pet_trim_new_clusters) are chosen on pets drawn from the train split (--split train,
seeds 100-103; tools/replay_pets.py replays variants of the algorithm on them); the reported
figures use the test split.

Usage: evaluate_pets.py [--pets 20] [--seed 0] [--split test|train] [--dsn ...] [--json]
"""
import argparse, datetime, json, os, sys, time

import numpy as np
import psycopg
from PIL import Image, ImageEnhance, ImageFilter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
import imageset  # noqa: E402


T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)


def degrade(arr):
    im = Image.fromarray(arr).filter(ImageFilter.GaussianBlur(1.6))
    return np.asarray(ImageEnhance.Brightness(im).enhance(0.35))


def build(n_pets, seed, split="t10k"):
    x, y = imageset.fashion(split)
    rng = np.random.default_rng(seed)
    used = set()
    rows = []  # pet, photo_id, png, taken_at (days), pose, look, degraded
    pid = 0
    for pet in range(1, n_pets + 1):
        looks = rng.choice(10, size=int(rng.integers(2, 5)), replace=False)
        photos = []
        for look in looks:
            pool = [i for i in np.where(y == look)[0] if i not in used]
            idx = rng.choice(pool, size=int(rng.integers(12, 31)), replace=False)
            used.update(int(i) for i in idx)
            photos += [(int(i), int(look)) for i in idx]
        days = np.sort(rng.uniform(0, 365, len(photos)))
        order = rng.permutation(len(photos))  # looks interleaved in time
        bad = set(rng.choice(len(photos), size=int(round(0.15 * len(photos))), replace=False).tolist())
        for k, j in enumerate(order):
            i, look = photos[j]
            pid += 1
            arr = degrade(x[i]) if k in bad else x[i]
            rows.append((pet, pid, imageset.png_of(arr), float(days[k]), float(rng.uniform(0, 1)), look, k in bad))
    return rows


def purity_of(labels_by_cluster):
    ok = tot = 0
    for labs in labels_by_cluster.values():
        ok += np.bincount(labs).max()
        tot += len(labs)
    return ok, tot


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pets", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dsn", default=f"host=127.0.0.1 port={os.environ.get('GENOME_PORT', '55432')} dbname=genome user=postgres")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--split", choices=["test", "train"], default="test",
                    help="Fashion-MNIST split the pets are drawn from: defaults are tuned on train, reported on test")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the eval_pets schema and media for inspection")
    ap.add_argument("--waves", default="0.5,0.8", help="cut points of the arrival waves (in time order)")
    a = ap.parse_args()
    split = {"test": "t10k", "train": "train"}[a.split]
    rows = build(a.pets, a.seed, split)
    truth = {r[1]: (r[5], r[6]) for r in rows}
    c = psycopg.connect(a.dsn, autocommit=True)
    c.execute("SET client_min_messages = warning")
    c.execute("SELECT genome.unregister_pet_media('eval_pets')")
    c.execute("DROP SCHEMA IF EXISTS eval_pets CASCADE")
    c.execute("CREATE SCHEMA eval_pets")
    c.execute("""CREATE TABLE eval_pets.photos (pet_id int NOT NULL, photo_id bigint PRIMARY KEY, image bytea NOT NULL,
                 taken_at timestamptz NOT NULL, pose real, look int NOT NULL, degraded boolean NOT NULL)""")
    c.execute("CREATE INDEX ON eval_pets.photos (pet_id)")
    c.execute("SELECT genome.register_pet_media('eval_pets.photos', 'pet_id', 'photo_id', 'image', 'taken_at', 'pose', name => 'eval_pets')")
    # The peer runs with the same HDBSCAN settings as cluster_pet.
    mcs = int(c.execute("SHOW genome.pet_min_cluster_size").fetchone()[0])
    ms = int(c.execute("SHOW genome.pet_min_samples").fetchone()[0]) or None
    t_update = []
    by_pet = {}
    for r in rows:
        by_pet.setdefault(r[0], []).append(r)
    cuts = [0.0] + [float(x) for x in a.waves.split(",") if x] + [1.0]
    waves = list(zip(cuts[:-1], cuts[1:]))
    for lo, hi in waves:
        for pet, prs in by_pet.items():
            n = len(prs)
            batch = prs[int(lo * n):int(hi * n)]
            with c.cursor().copy("COPY eval_pets.photos FROM STDIN") as cp:
                for (p, pid, png, day, pose, look, bad) in batch:
                    cp.write_row((p, pid, png, T0 + datetime.timedelta(days=day), pose, look, bad))
            t = time.time()
            res = c.execute("SELECT genome.cluster_pet(%s, 'eval_pets')", (pet,)).fetchone()[0]
            t_update.append((time.time() - t, res["added"]))
    # clusters and heroes
    ok = tot = emb = 0
    looks = clusters = 0
    hero_ok = hero_n = 0
    peer_ok = peer_tot = peer_cl = 0
    for pet in by_pet:
        got = c.execute("SELECT image_id::bigint, cluster_id, embedding::real[] FROM genome.pet_photos WHERE media = 'eval_pets' AND pet_id = %s",
                        (str(pet),)).fetchall()
        emb += len(got)
        lab = {}
        for iid, cid, _ in got:
            if cid is not None:
                lab.setdefault(cid, []).append(truth[iid][0])
        o, t = purity_of(lab)
        ok, tot = ok + o, tot + t
        clusters += len(lab)
        looks += len({truth[r[1]][0] for r in by_pet[pet]})
        major = {cid: np.bincount(v).argmax() for cid, v in lab.items()}
        for cid, rank, iid in c.execute("SELECT cluster_id, rank, image_id::bigint FROM genome.select_heroes(%s, 3, 'eval_pets')", (pet,)).fetchall():
            hero_n += 1
            look, bad = truth[iid]
            hero_ok += int(look == major[cid] and not bad)
        if not a.no_peer:
            from sklearn.cluster import HDBSCAN
            f = np.array([g[2] for g in got], np.float64)
            f /= np.linalg.norm(f, axis=1, keepdims=True)
            pl = HDBSCAN(min_cluster_size=mcs, min_samples=ms, cluster_selection_method="leaf", copy=True).fit_predict(f)
            plab = {}
            for (iid, _, _), l in zip(got, pl):
                if l >= 0:
                    plab.setdefault(l, []).append(truth[iid][0])
            o, t = purity_of(plab)
            peer_ok, peer_tot, peer_cl = peer_ok + o, peer_tot + t, peer_cl + len(plab)
    if not a.keep:
        c.execute("SELECT genome.unregister_pet_media('eval_pets')")
        c.execute("DROP SCHEMA eval_pets CASCADE")
    upd = np.array([u[0] for u in t_update])
    out = {
        "pets": len(by_pet), "photos": len(rows), "looks": looks,
        "purity": ok / max(tot, 1), "coverage": tot / max(emb, 1), "clusters_per_look": clusters / max(looks, 1),
        "hero_precision": hero_ok / max(hero_n, 1), "heroes": hero_n,
        "cluster_pet_ms_median": float(np.median(upd) * 1000), "cluster_pet_ms_max": float(upd.max() * 1000),
    }
    if not a.no_peer:
        out.update({"peer_sklearn_leaf_purity": peer_ok / max(peer_tot, 1), "peer_coverage": peer_tot / max(emb, 1),
                    "peer_clusters_per_look": peer_cl / max(looks, 1)})
    if a.json:
        print(json.dumps(out))
    else:
        print(f"pets {out['pets']}, photos {out['photos']}, looks {out['looks']} (Fashion-MNIST {a.split} split, seed {a.seed})")
        print(f"purity          {out['purity']:.1%}   (goal >= 90%)")
        print(f"coverage        {out['coverage']:.1%}")
        print(f"clusters / look {out['clusters_per_look']:.2f}")
        print(f"hero precision  {out['hero_precision']:.1%}   (goal >= 85%; {hero_n} heroes)")
        if not a.no_peer:
            print(f"peer: scikit-learn HDBSCAN leaf, all photos at once: purity {out['peer_sklearn_leaf_purity']:.1%}, "
                  f"coverage {out['peer_coverage']:.1%}, clusters / look {out['peer_clusters_per_look']:.2f}")
        print(f"cluster_pet per wave: median {out['cluster_pet_ms_median']:.0f} ms, max {out['cluster_pet_ms_max']:.0f} ms (includes embedding new photos)")


if __name__ == "__main__":
    main()
