#!/usr/bin/env python3
"""Benchmark (not a test): image embedding and per-pet clustering, each next to a Python peer run
in the same process on the same bytes.

1. ms per image for genome.embed_image (decode, preprocess, EfficientNet-Lite0, 1 ONNX thread)
   on a 640x427 JPEG, a 12 MP JPEG and a 28x28 PNG; peer: Pillow + onnxruntime (1 thread) doing
   the same preprocessing with the same model file. Also genome.embed_images in batches and
   genome.image_quality on the 12 MP photo.
2. genome.cluster_pet latency for a pet with 100 photos when 1 new photo arrives (median of 10);
   peer: the global recompute it avoids: embed the photo with onnxruntime and re-run
   scikit-learn's HDBSCAN over all 101 embeddings.
3. Peak memory (VmHWM) of a backend that embedded images (12 MP included); peer: the peak RSS
   of the Python process doing the same.

Usage: benches/pet_bench.py [--dsn ...] [--repeat 20]   (needs tools/requirements-bench.txt)
"""
import argparse, datetime, io, json, os, resource, statistics, sys, time

import numpy as np
import onnxruntime as ort
import psycopg
from PIL import Image, ImageOps

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
import imageset  # noqa: E402


def prep(b):
    im = ImageOps.exif_transpose(Image.open(io.BytesIO(b))).convert("RGB")
    w, h = im.size
    nw, nh = (256, (h * 256 + w // 2) // w) if w <= h else ((w * 256 + h // 2) // h, 256)
    im = im.resize((nw, nh), Image.BILINEAR)
    l, t = (nw - 224) // 2, (nh - 224) // 2
    a = np.asarray(im.crop((l, t, l + 224, t + 224)), np.float32) / 255.0
    return ((a - 127 / 255) / (128 / 255)).transpose(2, 0, 1)


def timed(fn, repeat):
    fn()  # warm-up (loads the model once)
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000


def vm(c, key):
    pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", default=f"host=127.0.0.1 port={os.environ.get('GENOME_PORT', '55432')} dbname=genome user=postgres")
    ap.add_argument("--repeat", type=int, default=20)
    a = ap.parse_args()
    c = psycopg.connect(a.dsn, autocommit=True)
    c.execute("SET client_min_messages = warning")
    model = c.execute("SELECT onnx FROM genome.models WHERE name = 'efficientnet-lite0' ORDER BY created_at DESC LIMIT 1").fetchone()[0]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(bytes(model), so, providers=["CPUExecutionProvider"])

    china = imageset.sklearn_photo("china.jpg")
    big = imageset.encode(Image.open(io.BytesIO(china)).convert("RGB").resize((4000, 3000), Image.BICUBIC), "JPEG", quality=90)
    tiny = imageset.png_of(imageset.fashion()[0][0])
    print("1. ms per image (median), genome vs Pillow + onnxruntime, both 1 thread")
    print(f"{'image':22s} {'genome.embed_image':>19s} {'python peer':>12s} {'ratio':>6s}")
    for name, b in [("640x427 JPEG", china), ("4000x3000 JPEG", big), ("28x28 PNG", tiny)]:
        rep = max(3, a.repeat // 4) if b is big else a.repeat
        g = timed(lambda: c.execute("SELECT genome.embed_image(%s) IS NOT NULL", (b,)).fetchone(), rep)
        p = timed(lambda: sess.run(None, {"pixels": prep(b)[None]}), rep)
        print(f"{name:22s} {g:17.1f} ms {p:9.1f} ms {p / g:6.2f}x")
    batch = [china] * 32
    g = timed(lambda: c.execute("SELECT cardinality(genome.embed_images(%s))", (batch,)).fetchone(), 3) / 32
    p = timed(lambda: sess.run(None, {"pixels": np.stack([prep(b) for b in batch])}), 3) / 32
    print(f"{'640x427 JPEG, batch 32':22s} {g:17.1f} ms {p:9.1f} ms {p / g:6.2f}x   (per image)")
    g = timed(lambda: c.execute("SELECT genome.image_quality(%s)", (big,)).fetchone(), 5)
    print(f"image_quality on 4000x3000 JPEG: {g:.1f} ms")

    # 2. cluster_pet: a pet with 100 photos, then one new photo at a time
    x, y = imageset.fashion()
    c.execute("SELECT genome.unregister_pet_media('bench_pets')")
    c.execute("DROP SCHEMA IF EXISTS bench_pets CASCADE")
    c.execute("CREATE SCHEMA bench_pets")
    c.execute("CREATE TABLE bench_pets.photos (pet int, id int PRIMARY KEY, img bytea, at timestamptz)")
    c.execute("CREATE INDEX ON bench_pets.photos (pet)")
    c.execute("SELECT genome.register_pet_media('bench_pets.photos', 'pet', 'id', 'img', 'at', name => 'bench_pets')")
    t0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
    idx = np.concatenate([np.where(y == look)[0][:25] for look in (0, 1, 7, 8)])
    # 9,999 other pets' rows make the table realistic; they are never read by pet 1's update
    with c.cursor().copy("COPY bench_pets.photos FROM STDIN") as cp:
        for k, i in enumerate(idx):
            cp.write_row((1, k, imageset.png_of(x[i]), t0 + datetime.timedelta(hours=k)))
        for k in range(20000):
            cp.write_row((2 + k // 2, 1000 + k, tiny, t0))
    c.execute("ANALYZE bench_pets.photos")
    first = c.execute("SELECT genome.cluster_pet(1, 'bench_pets')").fetchone()[0]
    new = iter(np.where(y == 7)[0][100:200])
    nid = iter(range(500000, 600000))

    def one_more():
        c.execute("INSERT INTO bench_pets.photos VALUES (1, %s, %s, now())", (next(nid), imageset.png_of(x[next(new)])))
        return c.execute("SELECT genome.cluster_pet(1, 'bench_pets')").fetchone()[0]

    ts = []
    for _ in range(10):
        t = time.perf_counter()
        r = one_more()
        ts.append((time.perf_counter() - t) * 1000)
    noop = timed(lambda: c.execute("SELECT genome.cluster_pet(1, 'bench_pets')").fetchone(), 10)
    emb = np.array([json.loads(v) for (v,) in c.execute(
        "SELECT embedding::text FROM genome.pet_photos WHERE media = 'bench_pets' AND pet_id = '1' AND embedding IS NOT NULL").fetchall()])
    from sklearn.cluster import HDBSCAN
    newb = imageset.png_of(x[np.where(y == 7)[0][300]])
    # The peer runs with cluster_pet's HDBSCAN settings, read from the server.
    mcs = int(c.execute("SHOW genome.pet_min_cluster_size").fetchone()[0])
    ms = int(c.execute("SHOW genome.pet_min_samples").fetchone()[0]) or None

    def peer():
        v = sess.run(None, {"pixels": prep(newb)[None]})[0][0]
        f = np.vstack([emb[:100], v / np.linalg.norm(v)])
        HDBSCAN(min_cluster_size=mcs, min_samples=ms, cluster_selection_method="leaf", copy=True).fit_predict(f)

    p = timed(peer, 10)
    print(f"\n2. cluster_pet, pet with 100 photos ({first['clusters']} clusters after the first update), 1 new photo:")
    print(f"   genome.cluster_pet median {statistics.median(ts):.1f} ms (max {max(ts):.1f}; includes embedding it); "
          f"no new photo: {noop:.1f} ms")
    print(f"   peer, global recompute (onnxruntime embed + scikit-learn HDBSCAN on 101): {p:.1f} ms ({p / statistics.median(ts):.2f}x)")
    print(f"   last update: {r}")
    c.execute("SELECT genome.unregister_pet_media('bench_pets')")
    c.execute("DROP SCHEMA bench_pets CASCADE")

    # 3. peak memory of a fresh backend that embeds images
    with psycopg.connect(a.dsn, autocommit=True) as m:
        base = vm(m, "VmHWM")
        m.execute("SELECT genome.embed_image(%s) IS NOT NULL", (china,)).fetchone()
        after_model = vm(m, "VmHWM")
        for _ in range(3):
            m.execute("SELECT genome.embed_image(%s) IS NOT NULL", (big,)).fetchone()
        m.execute("SELECT cardinality(genome.embed_images(%s))", ([china] * 32,)).fetchone()
        peak = vm(m, "VmHWM")
        rss = vm(m, "VmRSS")
    for _ in range(3):
        sess.run(None, {"pixels": prep(big)[None]})
    py_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n3. backend peak memory (VmHWM): {base:.0f} MiB at start, {after_model:.0f} MiB with the model loaded, "
          f"{peak:.0f} MiB after 12 MP photos and a batch of 32 (RSS now {rss:.0f} MiB)")
    print(f"   peer: this Python process (onnxruntime + Pillow + numpy + psycopg + scikit-learn) peaked at {py_peak:.0f} MiB")


if __name__ == "__main__":
    main()
