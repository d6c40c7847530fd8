//! The raw Rust embedder outside PostgreSQL, for benches/embed_bench.py and benches/README.md.
//! usage: embed_bench ORT_LIB MODEL_DIR TEXTS_FILE BATCH [THREADS] [PARALLEL_SESSIONS]
//! (one text per line; prints texts/s and peak RSS; with PARALLEL_SESSIONS > 1 also checks that
//! every vector has the bits a single session gives)
use genome_core::embed::{ModelConfig, Runtime, SessionSettings, TextEmbedder};
use std::time::Instant;

fn rss(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024)
        .unwrap_or(0)
}

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
        parallel_sessions: a.get(6).map_or(1, |t| t.parse().unwrap()),
        ..SessionSettings::default()
    };
    let before = rss("RssAnon");
    let mut e = TextEmbedder::new(rt, &onnx, &tok, cfg.clone(), settings).unwrap();
    let loaded = rss("RssAnon") - before;
    let text = std::fs::read_to_string(file).unwrap();
    let texts: Vec<&str> = text.lines().collect();
    e.embed(&texts[..batch.min(texts.len())]).unwrap(); // warm-up
    let t0 = Instant::now();
    let mut out = Vec::new();
    for chunk in texts.chunks(batch) {
        out.extend(e.embed(chunk).unwrap());
    }
    let secs = t0.elapsed().as_secs_f64();
    let peak = rss("VmHWM");
    let mut same = None;
    if settings.parallel_sessions > 1 {
        drop(e);
        let mut one = TextEmbedder::new(rt, &onnx, &tok, cfg, SessionSettings::default()).unwrap();
        let mut k = 0;
        let mut equal = 0;
        for chunk in texts.chunks(batch) {
            for v in one.embed(chunk).unwrap() {
                equal += usize::from(v == out[k]);
                k += 1;
            }
        }
        same = Some(equal);
    }
    println!(
        "{{\"texts\": {}, \"seconds\": {secs:.3}, \"peak_rss_mib\": {peak}, \"model_mib\": {loaded}, \"bit_identical\": {}}}",
        out.len(),
        same.map_or("null".into(), |s| s.to_string())
    );
}
