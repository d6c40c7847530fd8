//! Paths to what `scripts/setup.sh` installs: the ONNX Runtime library and the converted models.
#![allow(dead_code)]
use std::path::PathBuf;

use genome_core::embed::{ModelConfig, Runtime, SessionSettings, TextEmbedder};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn ort_lib() -> String {
    std::env::var("GENOME_ORT_LIB")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/lib/pg_genome/libonnxruntime.so.1.31.1".into())
}

pub fn model_dir(name: &str) -> PathBuf {
    let base = std::env::var("GENOME_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join(".genome/models"));
    let d = base.join(name);
    assert!(
        d.join("model.onnx").is_file(),
        "{} missing: run scripts/setup.sh first",
        d.display()
    );
    d
}

pub fn fixture() -> PathBuf {
    repo().join("tests/fixtures/minilm-reference.jsonl")
}

pub fn runtime() -> &'static Runtime {
    Runtime::get_or_load(&ort_lib()).expect("ONNX Runtime loads")
}

pub fn files(name: &str) -> (Vec<u8>, Vec<u8>, ModelConfig) {
    let d = model_dir(name);
    let onnx = std::fs::read(d.join("model.onnx")).unwrap();
    let tok = std::fs::read(d.join("tokenizer.json")).unwrap();
    let cfg =
        ModelConfig::from_json(&std::fs::read_to_string(d.join("genome.json")).unwrap()).unwrap();
    (onnx, tok, cfg)
}

pub fn embedder(name: &str) -> TextEmbedder {
    let (onnx, tok, cfg) = files(name);
    TextEmbedder::new(runtime(), &onnx, &tok, cfg, SessionSettings::default()).unwrap()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}
