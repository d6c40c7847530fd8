//! One copy of a model's weights for several sessions of one process.
//!
//! An inference worker runs a text model as one single-threaded session per core (measured on
//! 2 cores: two 1-thread sessions embed 440 texts/s where one 2-thread session embeds 383 to
//! 412; benches/README.md). Each ONNX Runtime session would copy the graph's initializers and
//! pack its MatMul weights again (about 105 MiB per session of all-MiniLM-L6-v2). Instead, the
//! large float initializers of the graph are read once into tensors that every session is given
//! (`AddInitializer`: the session uses the caller's buffer), and the packed weights go in one
//! shared container: a second session then adds about 19 MiB, a third 9 MiB.
//!
//! Only top-level graph initializers stored as `raw_data` of float32 with at least
//! [`MIN_SHARED_BYTES`] are taken, each with a name no other initializer has, and none in a
//! model with subgraphs or local functions; every other tensor stays in the model as it is. A
//! tensor whose declared shape does not match its bytes is left to ONNX Runtime (which refuses
//! it). The scan reads fields one at a time and allocates only the tensors it shares.

use ort::value::{DynValue, Tensor};

use super::guard::varint;
use crate::{Error, Result};

const MODEL_GRAPH: u32 = 7;
const MODEL_FUNCTIONS: u32 = 25;
const GRAPH_NODE: u32 = 1;
const GRAPH_INITIALIZER: u32 = 5;
const NODE_ATTRIBUTE: u32 = 5;
const ATTR_G: u32 = 6;
const ATTR_GRAPHS: u32 = 11;
const TENSOR_DIMS: u32 = 1;
const TENSOR_DATA_TYPE: u32 = 2;
const TENSOR_NAME: u32 = 8;
const TENSOR_RAW_DATA: u32 = 9;
const FLOAT: u64 = 1;

/// Smaller initializers are not worth sharing (and are cheap to copy).
pub const MIN_SHARED_BYTES: usize = 64 << 10;

fn bad(what: &str) -> Error {
    Error::ModelLoad(format!("not a valid ONNX model ({what})"))
}

/// A protobuf field: number, wire type, varint value (wire type 0) or byte range (type 2).
struct Field {
    number: u32,
    wire: u64,
    value: u64,
    body: std::ops::Range<usize>,
}

/// The fields of a message, read one at a time (nothing is allocated per field).
struct Fields<'a> {
    b: &'a [u8],
    pos: usize,
}

fn fields(b: &[u8]) -> Fields<'_> {
    Fields { b, pos: 0 }
}

impl Iterator for Fields<'_> {
    type Item = Result<Field>;

    fn next(&mut self) -> Option<Result<Field>> {
        if self.pos >= self.b.len() {
            return None;
        }
        let r = self.read();
        if r.is_err() {
            self.pos = self.b.len();
        }
        Some(r)
    }
}

impl Fields<'_> {
    fn read(&mut self) -> Result<Field> {
        let b = self.b;
        let pos = &mut self.pos;
        let key = varint(b, pos)?;
        let (number, wire) = ((key >> 3) as u32, key & 7);
        let mut f = Field {
            number,
            wire,
            value: 0,
            body: 0..0,
        };
        match wire {
            0 => f.value = varint(b, pos)?,
            1 => *pos = pos.checked_add(8).ok_or_else(|| bad("truncated"))?,
            5 => *pos = pos.checked_add(4).ok_or_else(|| bad("truncated"))?,
            2 => {
                let len = usize::try_from(varint(b, pos)?).map_err(|_| bad("length"))?;
                let end = pos
                    .checked_add(len)
                    .filter(|e| *e <= b.len())
                    .ok_or_else(|| bad("truncated field"))?;
                f.body = *pos..end;
                *pos = end;
            }
            _ => return Err(bad("unsupported wire type")),
        }
        if *pos > b.len() {
            return Err(bad("truncated"));
        }
        Ok(f)
    }
}

/// The graph's large float32 initializers as tensors, by name, in graph order.
pub fn shared_initializers(onnx: &[u8]) -> Result<Vec<(String, DynValue)>> {
    float_initializers(onnx)?
        .into_iter()
        .map(|(name, dims, data)| {
            let t =
                Tensor::from_array((dims, data)).map_err(|e| Error::ModelLoad(e.to_string()))?;
            Ok((name, t.into_dyn()))
        })
        .collect()
}

/// A float32 initializer: name, shape, values.
type Initializer = (String, Vec<i64>, Vec<f32>);

/// Tensors of more dimensions are not shared.
const MAX_RANK: usize = 16;

/// The graph's large float32 initializers, read from the protobuf. Nothing is shared when the
/// model has local functions or a node with a graph attribute (`If`, `Loop`, `Scan`): ONNX
/// Runtime matches a given initializer by name in subgraphs too, where a name may be shadowed.
/// A name given to several initializers, or not valid UTF-8, is not shared either.
fn float_initializers(onnx: &[u8]) -> Result<Vec<Initializer>> {
    let mut graphs = Vec::new();
    for f in fields(onnx) {
        let f = f?;
        match (f.number, f.wire) {
            (MODEL_GRAPH, 2) => graphs.push(f.body),
            (MODEL_FUNCTIONS, 2) => return Ok(Vec::new()),
            _ => {}
        }
    }
    let mut out: Vec<Initializer> = Vec::new();
    let mut names: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
    for g in graphs {
        let graph = &onnx[g];
        for f in fields(graph) {
            let f = f?;
            if f.wire != 2 {
                continue;
            }
            match f.number {
                GRAPH_NODE if has_graph_attribute(&graph[f.body.clone()])? => return Ok(Vec::new()),
                GRAPH_INITIALIZER => {
                    let t = &graph[f.body];
                    if let Some(name) = tensor_name(t)? {
                        *names.entry(name.to_vec()).or_default() += 1;
                    }
                    if let Some(init) = float_tensor(t)? {
                        out.push(init);
                    }
                }
                _ => {}
            }
        }
    }
    out.retain(|(name, _, _)| names.get(name.as_bytes()) == Some(&1));
    Ok(out)
}

fn has_graph_attribute(node: &[u8]) -> Result<bool> {
    for f in fields(node) {
        let f = f?;
        if f.number == NODE_ATTRIBUTE && f.wire == 2 {
            for a in fields(&node[f.body]) {
                let a = a?;
                if a.wire == 2 && (a.number == ATTR_G || a.number == ATTR_GRAPHS) {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

fn tensor_name(t: &[u8]) -> Result<Option<&[u8]>> {
    for f in fields(t) {
        let f = f?;
        if f.number == TENSOR_NAME && f.wire == 2 {
            return Ok(Some(&t[f.body]));
        }
    }
    Ok(None)
}

fn float_tensor(t: &[u8]) -> Result<Option<Initializer>> {
    let (mut dims, mut dtype, mut name, mut raw) = (Vec::new(), 0, None, None);
    let mut rank_ok = true;
    for f in fields(t) {
        let f = f?;
        match (f.number, f.wire) {
            (TENSOR_DIMS, 0) => {
                rank_ok &= dims.len() < MAX_RANK;
                if rank_ok {
                    dims.push(f.value as i64);
                }
            }
            (TENSOR_DIMS, 2) => {
                let packed = &t[f.body];
                let mut p = 0;
                while p < packed.len() && rank_ok {
                    rank_ok &= dims.len() < MAX_RANK;
                    dims.push(varint(packed, &mut p)? as i64);
                }
            }
            (TENSOR_DATA_TYPE, 0) => dtype = f.value,
            (TENSOR_NAME, 2) => name = std::str::from_utf8(&t[f.body]).ok(),
            (TENSOR_RAW_DATA, 2) => raw = Some(&t[f.body]),
            _ => {}
        }
    }
    let (Some(name), Some(raw)) = (name, raw) else {
        return Ok(None);
    };
    if !rank_ok || dtype != FLOAT || raw.len() < MIN_SHARED_BYTES || raw.len() % 4 != 0 {
        return Ok(None);
    }
    let count = dims.iter().try_fold(1usize, |n, &d| {
        usize::try_from(d).ok().and_then(|d| n.checked_mul(d))
    });
    if count != Some(raw.len() / 4) {
        return Ok(None);
    }
    let data: Vec<f32> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Some((name.to_string(), dims, data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(field: u32, wire: u64) -> Vec<u8> {
        enc(((field as u64) << 3) | wire)
    }
    fn enc(mut v: u64) -> Vec<u8> {
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
    fn bytes(field: u32, body: &[u8]) -> Vec<u8> {
        [key(field, 2), enc(body.len() as u64), body.to_vec()].concat()
    }
    fn tensor(name: &str, dims: &[u64], dtype: u64, raw: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        for &d in dims {
            t.extend(key(TENSOR_DIMS, 0));
            t.extend(enc(d));
        }
        t.extend(key(TENSOR_DATA_TYPE, 0));
        t.extend(enc(dtype));
        t.extend(bytes(TENSOR_NAME, name.as_bytes()));
        t.extend(bytes(TENSOR_RAW_DATA, raw));
        t
    }

    #[test]
    fn only_large_float_initializers_whose_shape_matches_are_shared() {
        let big: Vec<u8> = (0..128 * 256)
            .flat_map(|i| (i as f32).to_le_bytes())
            .collect();
        let graph = [
            bytes(GRAPH_INITIALIZER, &tensor("w", &[128, 256], FLOAT, &big)),
            // too small
            bytes(GRAPH_INITIALIZER, &tensor("b", &[4], FLOAT, &big[..16])),
            // int64, not float
            bytes(GRAPH_INITIALIZER, &tensor("ids", &[128, 128], 7, &big)),
            // shape says more than the bytes hold
            bytes(GRAPH_INITIALIZER, &tensor("lie", &[256, 256], FLOAT, &big)),
        ]
        .concat();
        let model = bytes(MODEL_GRAPH, &graph);
        let got = float_initializers(&model).unwrap();
        assert_eq!(got.len(), 1);
        let (name, shape, data) = &got[0];
        assert_eq!(name, "w");
        assert_eq!(shape, &[128, 256]);
        assert_eq!(data[5], 5.0);
        assert_eq!(data[128 * 256 - 1], (128 * 256 - 1) as f32);
    }

    #[test]
    fn nothing_is_shared_with_duplicate_names_or_subgraphs() {
        let big: Vec<u8> = (0..128 * 256)
            .flat_map(|i| (i as f32).to_le_bytes())
            .collect();
        let w = bytes(GRAPH_INITIALIZER, &tensor("w", &[128, 256], FLOAT, &big));
        let v = bytes(GRAPH_INITIALIZER, &tensor("v", &[128, 256], FLOAT, &big));
        let twice = bytes(MODEL_GRAPH, &[w.clone(), w.clone(), v.clone()].concat());
        let got = float_initializers(&twice).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "v");
        // a node with a graph attribute (an If's branch)
        let attr = bytes(ATTR_G, &[]);
        let node = bytes(GRAPH_NODE, &bytes(NODE_ATTRIBUTE, &attr));
        let with_if = bytes(MODEL_GRAPH, &[node, w.clone()].concat());
        assert!(float_initializers(&with_if).unwrap().is_empty());
        let with_fn = [bytes(MODEL_GRAPH, &w), bytes(MODEL_FUNCTIONS, &[])].concat();
        assert!(float_initializers(&with_fn).unwrap().is_empty());
        // a rank far beyond any real tensor is not collected
        let dims: Vec<u64> = vec![1; 10_000];
        let deep = bytes(
            MODEL_GRAPH,
            &bytes(GRAPH_INITIALIZER, &tensor("d", &dims, FLOAT, &big)),
        );
        assert!(float_initializers(&deep).unwrap().is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(float_initializers(&[0x3a, 0xff]).is_err());
        assert!(float_initializers(&[0x07]).is_err());
    }
}
