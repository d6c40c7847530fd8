//! The raw Rust embedder outside PostgreSQL, for benches/embed_bench.py.
//! usage: embed_bench ORT_LIB MODEL_DIR TEXTS_FILE BATCH [THREADS]  (one text per line; prints texts/s)
use genome_core::embed::{ModelConfig, Runtime, SessionSettings, TextEmbedder};
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (lib, dir, file, batch) = (&a[1], &a[2], &a[3], a[4].parse::<usize>().unwrap());
    let rt = Runtime::get_or_load(lib).unwrap();
    let cfg =
        ModelConfig::from_json(&std::fs::read_to_string(format!("{dir}/genome.json")).unwrap())
            .unwrap();
    let onnx = std::fs::read(format!("{dir}/model.onnx")).unwrap();
    let tok = std::fs::read(format!("{dir}/tokenizer.json")).unwrap();
    let settings = SessionSettings {
        intra_threads: a.get(5).map_or(1, |t| t.parse().unwrap()),
        ..SessionSettings::default()
    };
    let mut e = TextEmbedder::new(rt, &onnx, &tok, cfg, settings).unwrap();
    let text = std::fs::read_to_string(file).unwrap();
    let texts: Vec<&str> = text.lines().collect();
    e.embed(&texts[..batch.min(texts.len())]).unwrap(); // warm-up
    let t0 = Instant::now();
    let mut n = 0;
    for chunk in texts.chunks(batch) {
        n += e.embed(chunk).unwrap().len();
    }
    let secs = t0.elapsed().as_secs_f64();
    let rss = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024)
        .unwrap_or(0);
    println!("{{\"texts\": {n}, \"seconds\": {secs:.3}, \"peak_rss_mib\": {rss}}}");
}
