"""genome.embed_image / embed_images / image_quality against independent references: PyTorch's
features for the same bytes (tests/fixtures/effnet-reference.jsonl, tools/make_image_reference.py),
Pillow + SciPy for the quality measures; and bad input."""
import io
import json
import pathlib
import struct
import zlib

import numpy as np
import psycopg
import pytest
from PIL import Image, ImageEnhance, ImageFilter
from scipy import ndimage

import imageset
from conftest import connect

REF = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "effnet-reference.jsonl"


def vec(text):
    return np.array(json.loads(text), dtype=np.float64)


@pytest.fixture(scope="module")
def images():
    return imageset.reference_images()


def test_features_match_pytorch_reference(conn, images):
    rows = [json.loads(line) for line in REF.read_text().splitlines()]
    assert len(rows) == len(images) == 8
    worst = 1.0
    for r in rows:
        b = images[r["name"]]
        assert imageset.sha(b) == r["sha256"], f"{r['name']}: bytes differ from the ones the reference was made from"
        got = vec(conn.execute("SELECT genome.embed_image(%s)::text", (b,)).fetchone()[0])
        want = np.array(r["embedding"])
        assert got.shape == (1280,)
        assert abs(np.linalg.norm(got) - 1) < 1e-5
        cos = float(got @ want / np.linalg.norm(want))
        worst = min(worst, cos)
        assert cos >= 0.9999, f"{r['name']}: cosine {cos}"
    print(f"min cosine vs PyTorch over {len(rows)} images: {worst:.7f}")


def test_formats_and_exif_orientation(conn, images):
    """The same photo as JPEG, PNG (resized) and lossless WebP embeds alike; the EXIF-rotated
    JPEG is turned upright before embedding (close to the upright original, far from the
    sideways pixels)."""
    e = {k: vec(conn.execute("SELECT genome.embed_image(%s)::text", (b,)).fetchone()[0]) for k, b in images.items()}
    assert e["flower.jpg"] @ e["flower_lossless.webp"] > 0.999
    assert e["china.jpg"] @ e["china_small.png"] > 0.95
    sideways = Image.open(io.BytesIO(images["china_exif6.jpg"]))
    raw = imageset.encode(sideways.convert("RGB"), "PNG")  # same pixels, no EXIF tag
    r = vec(conn.execute("SELECT genome.embed_image(%s)::text", (raw,)).fetchone()[0])
    assert e["china_exif6.jpg"] @ e["china.jpg"] > 0.97
    assert e["china_exif6.jpg"] @ e["china.jpg"] > r @ e["china.jpg"] + 0.05


def test_batch_matches_single_and_keeps_nulls(conn, images):
    names = ["china.jpg", "fashion_0.png", "flower_lossless.webp"]
    arr = [images[names[0]], None, images[names[1]], images[names[2]]]
    conn.execute("SET genome.batch_size = 2")
    got = conn.execute("SELECT v::text FROM unnest(genome.embed_images(%s)) WITH ORDINALITY u(v, i) ORDER BY i", (arr,)).fetchall()
    assert got[1][0] is None
    for g, name in zip([got[0], got[2], got[3]], names):
        one = vec(conn.execute("SELECT genome.embed_image(%s)::text", (images[name],)).fetchone()[0])
        assert np.abs(vec(g[0]) - one).max() < 1e-5
    assert conn.execute("SELECT genome.embed_image(NULL) IS NULL, genome.embed_images(NULL) IS NULL").fetchone() == (True, True)


def png_declaring(w, h):
    """A valid PNG declaring w x h RGB with a few bytes of pixel data: ~70 bytes."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64)))
            + chunk(b"IEND", b""))


def backend_peak_kib(c):
    pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])


def test_bad_images_are_clear_errors_with_bounded_memory(database, images):
    jpeg, png = images["china.jpg"], imageset.png_of(imageset.fashion()[0][0])
    cases = [
        (b"", "22P03", "empty input"),
        (b"definitely not an image, just text", "22P03", "unrecognised header"),
        (b"GIF89a" + bytes(40), "22P03", "Gif images are not supported"),
        (jpeg[: len(jpeg) // 2], "22P03", "truncated"),
        (png[:-30], "22P03", "invalid image"),
        (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9", "22P03", "invalid image"),
        (png_declaring(20000, 20000), "54000", "20000x20000 is 400000000 pixels"),
    ]
    with connect() as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        before = backend_peak_kib(c)
        for data, state, text in cases:
            for fn in ("genome.embed_image(%s)", "genome.image_quality(%s)"):
                with pytest.raises(psycopg.Error) as e:
                    c.execute(f"SELECT {fn}", (data,))
                assert e.value.sqlstate == state, (fn, text, e.value)
                assert text in str(e.value), (fn, str(e.value))
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT genome.embed_images(ARRAY[%s, %s])", (jpeg, b"junk"))
        assert "image 2:" in str(e.value)
        # the same backend is still there, and the 20000x20000 header did not allocate 1.2 GB
        assert c.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
        grown = backend_peak_kib(c) - before
        assert grown < 300_000, f"peak memory grew by {grown} KiB"
    with connect() as c:
        c.execute("SET genome.max_image_pixels = 10000")  # superuser; users cannot raise it
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT genome.embed_image(%s)", (jpeg,))
        assert e.value.sqlstate == "54000" and "genome.max_image_pixels" in str(e.value)


def test_users_cannot_lift_the_size_limits(database):
    with connect() as c:
        c.execute("DROP ROLE IF EXISTS genome_img_user")
        c.execute("CREATE ROLE genome_img_user LOGIN")
    try:
        with connect(user="genome_img_user") as u:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                u.execute("SET genome.max_image_pixels = 2000000000")
    finally:
        with connect() as c:
            c.execute("DROP ROLE genome_img_user")


def reference_quality(b):
    """The documented measures, recomputed with Pillow (luma) and SciPy (Laplacian)."""
    im = Image.open(io.BytesIO(b))
    from PIL import ImageOps
    im = ImageOps.exif_transpose(im).convert("RGB")
    l = np.asarray(im.convert("L"), np.float64)
    lap = ndimage.laplace(l, mode="mirror")  # OpenCV's default border (reflect-101)
    v = lap.var()
    mean, std = l.mean() / 255, l.std() / 255
    clipped = ((l <= 5) | (l >= 250)).mean()
    w, h = im.size
    s = dict(sharp=v / (v + 100), exp=max(0.0, 1 - ((mean - 0.5) / 0.5) ** 2) * (1 - clipped),
             con=min(1.0, std / 0.2), res=min(1.0, min(w, h) / 512))
    score = 0.40 * s["sharp"] + 0.25 * s["exp"] + 0.20 * s["con"] + 0.15 * s["res"]
    return dict(v=v, mean=mean, std=std, clipped=clipped, w=w, h=h, score=score)


def test_image_quality_matches_pillow_and_scipy(conn, images):
    for name, b in images.items():
        q = conn.execute("SELECT genome.image_quality(%s)", (b,)).fetchone()[0]
        r = reference_quality(b)
        assert q["resolution"]["width"] == r["w"] and q["resolution"]["height"] == r["h"], name
        # lossless formats decode to the same pixels as Pillow; JPEG decoders (zune-jpeg here,
        # libjpeg-turbo in Pillow) may differ by one level on a few pixels
        tol = 2e-3 if name.endswith(".jpg") else 1e-6
        assert abs(q["sharpness"]["laplacian_variance"] - r["v"]) <= tol * max(1, r["v"]) + 1e-4, (name, q, r)
        assert abs(q["exposure"]["brightness"] - r["mean"]) < 1e-3, name
        assert abs(q["exposure"]["clipped"] - r["clipped"]) < 1e-3, name
        assert abs(q["contrast"]["rms"] - r["std"]) < 1e-3, name
        assert abs(q["score"] - r["score"]) < 1e-3, (name, q["score"], r["score"])
        assert 0 <= q["score"] <= 1


def test_quality_ranks_blurred_and_dark_photos_lower(conn, images):
    base = Image.open(io.BytesIO(images["china.jpg"])).convert("RGB")
    blurred = imageset.encode(base.filter(ImageFilter.GaussianBlur(4)), "PNG")
    dark = imageset.encode(ImageEnhance.Brightness(base).enhance(0.15), "PNG")
    tiny = imageset.encode(base.resize((64, 43)), "PNG")
    s = lambda b: conn.execute("SELECT (genome.image_quality(%s)->>'score')::float8", (b,)).fetchone()[0]
    good = s(imageset.encode(base, "PNG"))
    assert good > s(blurred) + 0.15
    assert good > s(dark) + 0.1
    assert good > s(tiny)


def test_registry_keeps_tasks_apart(conn, images):
    row = conn.execute("SELECT task, dimension, tokenizer IS NULL, config->>'kind' FROM genome.models WHERE name = 'efficientnet-lite0'").fetchone()
    assert row == ("image-embedding", 1280, True, "image")
    with pytest.raises(psycopg.errors.WrongObjectType, match="is a image-embedding model, not a text-embedding model"):
        conn.execute("SELECT genome.embed('a text', 'efficientnet-lite0')")
    with pytest.raises(psycopg.errors.WrongObjectType, match="not a image-embedding model"):
        conn.execute("SELECT genome.embed_image(%s, 'all-minilm-l6-v2')", (images["china.jpg"],))
    # an image config that does not fit the model is refused at registration
    onnx = conn.execute("SELECT onnx FROM genome.models WHERE name = 'efficientnet-lite0'").fetchone()[0]
    cfg = json.loads(conn.execute("SELECT config::text FROM genome.models WHERE name = 'efficientnet-lite0'").fetchone()[0])
    bad = dict(cfg, dimension=512)
    with pytest.raises(psycopg.Error, match=r"is not \[batch, 512\]"):
        conn.execute("SELECT genome.register_model('bad-img', '1', %s, NULL, %s::jsonb, 'image-embedding')", (onnx, json.dumps(bad)))
    with pytest.raises(psycopg.Error, match="unknown field `size`"):
        conn.execute("SELECT genome.register_model('bad-img', '1', %s, NULL, %s::jsonb, 'image-embedding')",
                     (onnx, json.dumps(dict(cfg, size=3))))
    with pytest.raises(psycopg.Error, match="needs a tokenizer"):
        conn.execute("SELECT genome.register_model('bad-txt', '1', %s, NULL, %s::jsonb)", (onnx, json.dumps(cfg)))
    assert conn.execute("SELECT count(*) FROM genome.models WHERE name LIKE 'bad-%'").fetchone()[0] == 0


def test_embed_images_honours_statement_timeout(conn, images):
    many = [images["china.jpg"]] * 400
    conn.execute("SET statement_timeout = '1s'")
    with pytest.raises(psycopg.errors.QueryCanceled):
        conn.execute("SELECT genome.embed_images(%s)", (many,))
    conn.execute("RESET statement_timeout")
    assert conn.execute("SELECT 1").fetchone()[0] == 1
