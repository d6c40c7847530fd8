//! What an ONNX graph may hold before ONNX Runtime sees it.
//!
//! ONNX Runtime resolves a tensor's *external data* (`TensorProto.data_location = EXTERNAL`,
//! `external_data = [{location: ...}]`) against the process's working directory: in a backend
//! that is `$PGDATA`, so a submitted graph could read any server file into a tensor. Registry
//! models are self-contained (the bytes are in `genome.models.onnx` or one file), so every tensor
//! anywhere in the graph (initializers, sparse initializers, `Constant` nodes' attributes, the
//! subgraphs of `Loop`/`If`/`Scan`, local functions, training graphs) must carry its data inline.
//! ONNX Runtime's own ORT format (flatbuffers, identifier `ORTM`) is refused: only ONNX protobuf
//! is scanned. A `Loop` or `Scan` whose body has no step that depends on the iteration is refused
//! too (see [`interruptible`]). The scan walks the protobuf by the field numbers of `onnx.proto` (IR version 10),
//! skipping every field it does not need.

use crate::{Error, Result};

// Field numbers from onnx/onnx.proto.
const MODEL_GRAPH: u32 = 7;
const MODEL_TRAINING_INFO: u32 = 20;
const MODEL_FUNCTIONS: u32 = 25;
const GRAPH_NODE: u32 = 1;
const GRAPH_INITIALIZER: u32 = 5;
const GRAPH_SPARSE_INITIALIZER: u32 = 15;
const GRAPH_INPUT: u32 = 11;
const GRAPH_OUTPUT: u32 = 12;
const VALUE_INFO_NAME: u32 = 1;
const NODE_INPUT: u32 = 1;
const NODE_OUTPUT: u32 = 2;
const NODE_OP_TYPE: u32 = 4;
const NODE_ATTRIBUTE: u32 = 5;
const ATTR_T: u32 = 5;
const ATTR_G: u32 = 6;
const ATTR_TENSORS: u32 = 10;
const ATTR_GRAPHS: u32 = 11;
const ATTR_SPARSE_TENSOR: u32 = 22;
const ATTR_SPARSE_TENSORS: u32 = 23;
const TENSOR_NAME: u32 = 8;
const TENSOR_EXTERNAL_DATA: u32 = 13;
const TENSOR_DATA_LOCATION: u32 = 14;
const SPARSE_VALUES: u32 = 1;
const SPARSE_INDICES: u32 = 2;
const TRAINING_INITIALIZATION: u32 = 1;
const TRAINING_ALGORITHM: u32 = 2;
const FUNCTION_NODE: u32 = 7;
const FUNCTION_ATTRIBUTE_PROTO: u32 = 11;
/// `TensorProto.DataLocation.EXTERNAL`.
const EXTERNAL: u64 = 1;
/// Nesting deeper than this (graphs in attributes in graphs ...) is refused, not recursed into.
const MAX_DEPTH: usize = 64;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Model,
    Graph,
    Node,
    Attribute,
    Tensor,
    Sparse,
    Training,
    Function,
    ValueInfo,
}

/// Refuse a model whose bytes are not an ONNX protobuf, or that names external data anywhere.
pub fn check_self_contained(onnx: &[u8]) -> Result<()> {
    if onnx.len() >= 8 && &onnx[4..8] == b"ORTM" {
        return Err(Error::ModelLoad(
            "ORT-format models are not accepted; register the .onnx (protobuf) file".into(),
        ));
    }
    walk(onnx, Kind::Model, 0).map(|_| ())
}

fn bad(what: &str) -> Error {
    Error::ModelLoad(format!("not a valid ONNX model ({what})"))
}

pub(crate) fn varint(b: &[u8], pos: &mut usize) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos).ok_or_else(|| bad("truncated varint"))?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(bad("varint too long"))
}

/// Which message a length-delimited field of `kind` holds, when it matters for the scan.
fn child(kind: Kind, field: u32) -> Option<Kind> {
    use Kind::*;
    match (kind, field) {
        (Model, MODEL_GRAPH) => Some(Graph),
        (Model, MODEL_TRAINING_INFO) => Some(Training),
        (Model, MODEL_FUNCTIONS) => Some(Function),
        (Graph, GRAPH_NODE) | (Function, FUNCTION_NODE) => Some(Node),
        // a local function's attribute defaults (their tensors and graphs are checked too)
        (Function, FUNCTION_ATTRIBUTE_PROTO) => Some(Attribute),
        (Graph, GRAPH_INITIALIZER) => Some(Tensor),
        (Graph, GRAPH_INPUT) | (Graph, GRAPH_OUTPUT) => Some(ValueInfo),
        (Graph, GRAPH_SPARSE_INITIALIZER) => Some(Sparse),
        (Node, NODE_ATTRIBUTE) => Some(Attribute),
        (Attribute, ATTR_T) | (Attribute, ATTR_TENSORS) => Some(Tensor),
        (Attribute, ATTR_G) | (Attribute, ATTR_GRAPHS) => Some(Graph),
        (Attribute, ATTR_SPARSE_TENSOR) | (Attribute, ATTR_SPARSE_TENSORS) => Some(Sparse),
        (Sparse, SPARSE_VALUES) | (Sparse, SPARSE_INDICES) => Some(Tensor),
        (Training, TRAINING_INITIALIZATION) | (Training, TRAINING_ALGORITHM) => Some(Graph),
        _ => None,
    }
}

/// What a message tells its parent. A node: its operator, inputs and outputs, and whether every
/// graph in its attributes is interruptible. A graph: whether it is interruptible (below). A
/// value info: its name.
#[derive(Default)]
struct Summary {
    name: Vec<u8>,
    op_type: Vec<u8>,
    inputs: Vec<Vec<u8>>,
    outputs: Vec<Vec<u8>>,
    interruptible: bool,
    subgraphs_interruptible: Option<bool>,
}

/// Operators whose output depends on their input's shape only, which ONNX Runtime folds into a
/// constant when the shape is known.
const SHAPE_ONLY: [&[u8]; 3] = [b"Shape", b"Size", b"EyeLike"];

/// ONNX Runtime checks a run's terminate flag before each kernel. A `Loop`/`Scan` body is
/// interruptible when each iteration surely runs one: some output of the body comes from a node
/// that depends on the body's inputs (the iteration number, the condition, carried or scanned
/// values), through data rather than shapes alone, so that it cannot be folded into a constant
/// or removed. A body without nodes, or whose outputs are constants or its inputs passed
/// through, would iterate (up to 2^63 times) with no point at which a cancel could stop it.
fn interruptible(formal_inputs: &[Vec<u8>], nodes: &[Summary], outputs: &[Vec<u8>]) -> bool {
    let mut dependent: std::collections::HashSet<&[u8]> =
        formal_inputs.iter().map(Vec::as_slice).collect();
    let mut produced: std::collections::HashSet<&[u8]> = std::collections::HashSet::new();
    for n in nodes {
        if !SHAPE_ONLY.contains(&n.op_type.as_slice())
            && n.inputs.iter().any(|i| dependent.contains(i.as_slice()))
        {
            for o in &n.outputs {
                dependent.insert(o);
                produced.insert(o);
            }
        }
    }
    outputs.iter().any(|o| produced.contains(o.as_slice()))
}

fn walk(b: &[u8], kind: Kind, depth: usize) -> Result<Summary> {
    if depth > MAX_DEPTH {
        return Err(bad("graphs nested too deeply"));
    }
    let mut pos = 0;
    let mut name: Option<&[u8]> = None;
    let mut external = false;
    let mut summary = Summary::default();
    let (mut graph_inputs, mut graph_outputs, mut graph_nodes) =
        (Vec::new(), Vec::new(), Vec::new());
    while pos < b.len() {
        let key = varint(b, &mut pos)?;
        let field = (key >> 3) as u32;
        if field == 0 {
            return Err(bad("field number 0"));
        }
        match key & 7 {
            0 => {
                let v = varint(b, &mut pos)?;
                if kind == Kind::Tensor && field == TENSOR_DATA_LOCATION && v == EXTERNAL {
                    external = true;
                }
            }
            1 => pos = pos.checked_add(8).ok_or_else(|| bad("truncated"))?,
            5 => pos = pos.checked_add(4).ok_or_else(|| bad("truncated"))?,
            2 => {
                let len = usize::try_from(varint(b, &mut pos)?).map_err(|_| bad("length"))?;
                let end = pos
                    .checked_add(len)
                    .filter(|e| *e <= b.len())
                    .ok_or_else(|| bad("truncated field"))?;
                let body = &b[pos..end];
                match (kind, field) {
                    (Kind::Tensor, TENSOR_EXTERNAL_DATA) => external = true,
                    (Kind::Tensor, TENSOR_NAME) => name = Some(body),
                    (Kind::ValueInfo, VALUE_INFO_NAME) => summary.name = body.to_vec(),
                    (Kind::Node, NODE_INPUT) => summary.inputs.push(body.to_vec()),
                    (Kind::Node, NODE_OUTPUT) => summary.outputs.push(body.to_vec()),
                    (Kind::Node, NODE_OP_TYPE) => summary.op_type = body.to_vec(),
                    _ => {
                        if let Some(k) = child(kind, field) {
                            let sub = walk(body, k, depth + 1)?;
                            match (kind, field) {
                                (Kind::Graph, GRAPH_NODE) => graph_nodes.push(sub),
                                (Kind::Graph, GRAPH_INPUT) => graph_inputs.push(sub.name),
                                (Kind::Graph, GRAPH_OUTPUT) => graph_outputs.push(sub.name),
                                (Kind::Attribute, ATTR_G)
                                | (Kind::Attribute, ATTR_GRAPHS)
                                | (Kind::Node, NODE_ATTRIBUTE) => {
                                    let ok = if kind == Kind::Attribute {
                                        Some(sub.interruptible)
                                    } else {
                                        sub.subgraphs_interruptible
                                    };
                                    if let Some(ok) = ok {
                                        summary.subgraphs_interruptible = Some(
                                            summary.subgraphs_interruptible.unwrap_or(true) && ok,
                                        );
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                }
                pos = end;
            }
            _ => return Err(bad("unsupported wire type")),
        }
        if pos > b.len() {
            return Err(bad("truncated"));
        }
    }
    if kind == Kind::Model && b.is_empty() {
        return Err(bad("no bytes"));
    }
    if kind == Kind::Graph {
        summary.interruptible = interruptible(&graph_inputs, &graph_nodes, &graph_outputs);
    }
    if kind == Kind::Node
        && matches!(summary.op_type.as_slice(), b"Loop" | b"Scan")
        && summary.subgraphs_interruptible == Some(false)
    {
        return Err(Error::ModelLoad(format!(
            "a {} node's body has no step that depends on the iteration (no node, or only constants and \
             passed-through inputs); its iterations could not be interrupted",
            String::from_utf8_lossy(&summary.op_type)
        )));
    }
    if external {
        // The tensor's name is the graph author's text, not file content: safe to show, and it
        // tells which initializer to embed.
        let name = name.map(String::from_utf8_lossy).unwrap_or_default();
        let name: String = name.chars().take(100).collect();
        return Err(Error::ModelLoad(format!(
            "tensor \"{name}\" keeps its data in an external file; only self-contained ONNX models are accepted \
             (save the model with all tensors inline, e.g. onnx.save(model, path, save_as_external_data=False))"
        )));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(field: u32, wire: u8) -> Vec<u8> {
        enc_varint(((field as u64) << 3) | wire as u64)
    }
    fn enc_varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }
    fn msg(field: u32, body: &[u8]) -> Vec<u8> {
        let mut out = key(field, 2);
        out.extend(enc_varint(body.len() as u64));
        out.extend_from_slice(body);
        out
    }
    fn int(field: u32, v: u64) -> Vec<u8> {
        let mut out = key(field, 0);
        out.extend(enc_varint(v));
        out
    }
    fn tensor(external: bool, by_entry: bool) -> Vec<u8> {
        let mut t = int(1, 3); // dims
        t.extend(msg(TENSOR_NAME, b"w"));
        if external && by_entry {
            t.extend(msg(TENSOR_EXTERNAL_DATA, &msg(1, b"location")));
        } else if external {
            t.extend(int(TENSOR_DATA_LOCATION, EXTERNAL));
        } else {
            t.extend(msg(9, &[0u8; 12])); // raw_data
        }
        t
    }
    fn model(graph: &[u8]) -> Vec<u8> {
        let mut m = int(1, 10); // ir_version
        m.extend(msg(MODEL_GRAPH, graph));
        m
    }

    #[test]
    fn inline_initializers_pass() {
        let g = msg(GRAPH_INITIALIZER, &tensor(false, false));
        assert!(check_self_contained(&model(&g)).is_ok());
    }

    #[test]
    fn external_initializer_is_refused_by_location_or_entries() {
        for by_entry in [false, true] {
            let g = msg(GRAPH_INITIALIZER, &tensor(true, by_entry));
            let e = check_self_contained(&model(&g)).unwrap_err().to_string();
            assert!(e.contains("external file") && e.contains("\"w\""), "{e}");
        }
    }

    #[test]
    fn external_tensor_in_a_loop_body_constant_is_refused() {
        // Graph -> Node(Loop) -> Attribute g -> Graph -> Node(Constant) -> Attribute t -> Tensor
        let constant = msg(NODE_ATTRIBUTE, &msg(ATTR_T, &tensor(true, false)));
        let body = msg(GRAPH_NODE, &constant);
        let lp = msg(NODE_ATTRIBUTE, &msg(ATTR_G, &body));
        let g = msg(GRAPH_NODE, &lp);
        assert!(check_self_contained(&model(&g)).is_err());
        // ... and in a local function, its attributes' defaults, and a sparse initializer's values
        let f = msg(MODEL_FUNCTIONS, &msg(FUNCTION_NODE, &constant));
        let mut m = model(&[]);
        m.extend(f);
        assert!(check_self_contained(&m).is_err());
        let f = msg(
            MODEL_FUNCTIONS,
            &msg(FUNCTION_ATTRIBUTE_PROTO, &msg(ATTR_T, &tensor(true, false))),
        );
        let mut m = model(&[]);
        m.extend(f);
        assert!(check_self_contained(&m).is_err());
        let s = msg(
            GRAPH_SPARSE_INITIALIZER,
            &msg(SPARSE_VALUES, &tensor(true, true)),
        );
        assert!(check_self_contained(&model(&s)).is_err());
    }

    fn value_info(name: &[u8]) -> Vec<u8> {
        msg(VALUE_INFO_NAME, name)
    }

    fn node_of(op: &[u8], inputs: &[&[u8]], outputs: &[&[u8]]) -> Vec<u8> {
        let mut n = msg(NODE_OP_TYPE, op);
        for i in inputs {
            n.extend(msg(NODE_INPUT, i));
        }
        for o in outputs {
            n.extend(msg(NODE_OUTPUT, o));
        }
        msg(GRAPH_NODE, &n)
    }

    /// A body with inputs (i, cond, v) and outputs `outs`, made of `nodes`.
    fn body(nodes: &[Vec<u8>], outs: &[&[u8]]) -> Vec<u8> {
        let mut g: Vec<u8> = nodes.concat();
        for i in [&b"i"[..], b"cond", b"v"] {
            g.extend(msg(GRAPH_INPUT, &value_info(i)));
        }
        for o in outs {
            g.extend(msg(GRAPH_OUTPUT, &value_info(o)));
        }
        g
    }

    fn looping(op: &[u8], body: &[u8]) -> Vec<u8> {
        let mut n = msg(NODE_OP_TYPE, op);
        n.extend(msg(NODE_ATTRIBUTE, &msg(ATTR_G, body)));
        msg(GRAPH_NODE, &n)
    }

    #[test]
    fn a_loop_body_must_depend_on_its_iteration() {
        let refused = |b: &[u8]| check_self_contained(&model(&looping(b"Loop", b))).is_err();
        // empty; inputs passed through; outputs from constants only (folded at load)
        assert!(refused(&body(&[], &[b"cond", b"v"])));
        let folded = [
            node_of(b"Constant", &[], &[b"a"]),
            node_of(b"Greater", &[b"a", b"a"], &[b"c2"]),
        ];
        assert!(refused(&body(&folded, &[b"c2", b"v"])));
        // through the shape of a carried value only: folded when the shape is static
        let by_shape = [
            node_of(b"Shape", &[b"v"], &[b"s"]),
            node_of(b"Greater", &[b"s", b"s"], &[b"c2"]),
        ];
        assert!(refused(&body(&by_shape, &[b"c2", b"v"])));
        // a step on the carried value
        let add = [node_of(b"Add", &[b"v", b"one"], &[b"v2"])];
        assert!(!refused(&body(&add, &[b"cond", b"v2"])));
        // a dependent node whose result is unused would be removed: not enough
        let unused = [node_of(b"Add", &[b"v", b"one"], &[b"dead"])];
        assert!(refused(&body(&unused, &[b"cond", b"v"])));
        // Scan alike; If runs its branch once and may be empty
        assert!(check_self_contained(&model(&looping(b"Scan", &body(&[], &[b"v"])))).is_err());
        assert!(check_self_contained(&model(&looping(b"If", &body(&[], &[b"v"])))).is_ok());
        // a bad Loop nested in a good one is refused at its own level
        let mut inner = add.to_vec();
        inner.push(looping(b"Loop", &body(&[], &[b"cond", b"v"])));
        assert!(refused(&body(&inner, &[b"cond", b"v2"])));
    }

    #[test]
    fn garbage_and_ort_format_are_refused() {
        assert!(check_self_contained(b"").is_err());
        assert!(check_self_contained(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(check_self_contained(b"\x1c\x00\x00\x00ORTM rest").is_err());
        // a length running past the end
        assert!(check_self_contained(&msg(MODEL_GRAPH, b"abc")[..3]).is_err());
    }

    #[test]
    fn deep_nesting_is_refused_without_recursing_forever() {
        let mut g = Vec::new();
        for _ in 0..200 {
            g = msg(GRAPH_NODE, &msg(NODE_ATTRIBUTE, &msg(ATTR_G, &g)));
        }
        assert!(check_self_contained(&model(&g)).is_err());
    }
}
