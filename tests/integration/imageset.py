"""Real photos for the image tests, built the same way by the tests and by the reference
generator (tools/make_image_reference.py), so the PyTorch reference features apply to the very
bytes the tests send to genome.embed_image.

Sources (none made by this project):
- scikit-learn's sample photos china.jpg and flower.jpg (Flickr, CC BY 2.0; see
  sklearn/datasets/images/README.txt), shipped in the scikit-learn wheel;
- Fashion-MNIST test images (Zalando, MIT), shipped by Debian's dataset-fashion-mnist.
Variants (PNG, WebP, an EXIF-rotated JPEG) are encoded with the pinned Pillow.
"""
import gzip, hashlib, io, os

import numpy as np
from PIL import Image

FASHION = "/usr/share/datasets/fashion-mnist"
FASHION_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def sklearn_photo(name):
    import sklearn.datasets
    d = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    return open(os.path.join(d, name), "rb").read()


def fashion(split="t10k"):
    """(images uint8 [n, 28, 28], labels uint8 [n])."""
    x = np.frombuffer(gzip.open(f"{FASHION}/{split}-images-idx3-ubyte.gz").read()[16:], np.uint8).reshape(-1, 28, 28)
    y = np.frombuffer(gzip.open(f"{FASHION}/{split}-labels-idx1-ubyte.gz").read()[8:], np.uint8)
    return x, y


def encode(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def png_of(arr):
    return encode(Image.fromarray(arr), "PNG")


def reference_images():
    """name -> bytes."""
    china, flower = sklearn_photo("china.jpg"), sklearn_photo("flower.jpg")
    out = {"china.jpg": china, "flower.jpg": flower}
    ci = Image.open(io.BytesIO(china)).convert("RGB")
    out["china_small.png"] = encode(ci.resize((300, 200), Image.BICUBIC), "PNG")
    out["flower_lossless.webp"] = encode(Image.open(io.BytesIO(flower)).convert("RGB"), "WEBP", lossless=True)
    # stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to display)
    exif = Image.Exif()
    exif[0x0112] = 6
    out["china_exif6.jpg"] = encode(ci.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=92, exif=exif.tobytes())
    x, _ = fashion()
    for i in range(3):
        out[f"fashion_{i}.png"] = png_of(x[i])
    return out


def sha(b):
    return hashlib.sha256(b).hexdigest()
