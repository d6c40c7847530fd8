//! Run the clustering pipeline on a raw f32 matrix, for benchmarks against Python peers.
//!   cargo run --release -p genome-core --example classify -- IN.f32 DIM OUT_PREFIX \
//!       [reduction=umap|pca|none] [method=auto|exact|approximate] [min_cluster_size=15] [seed=42]
//!       [knn=auto|exact|hnsw|nndescent]
//! Writes OUT_PREFIX.labels (i32 per row) and, when reduced, OUT_PREFIX.reduced.f32; prints one
//! JSON line with stage timings.

use std::time::Instant;

use genome_core::cluster::{classify, ClassifyParams, Points};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: classify IN.f32 DIM OUT_PREFIX [key=value ...]");
        std::process::exit(2);
    }
    let bytes = std::fs::read(&args[1]).expect("read input");
    let dim: usize = args[2].parse().expect("dim");
    let data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let p = Points::new(dim, data);
    let mut params = ClassifyParams::default();
    for kv in &args[4..] {
        let (k, v) = kv.split_once('=').expect("key=value");
        match k {
            "reduction" => params.reduction = v.parse().unwrap(),
            "method" => params.method = v.parse().unwrap(),
            "min_cluster_size" => params.min_cluster_size = v.parse().unwrap(),
            "min_samples" => params.min_samples = Some(v.parse().unwrap()),
            "n_components" => params.n_components = v.parse().unwrap(),
            "seed" => params.seed = v.parse().unwrap(),
            "max_cluster_fraction" => params.max_cluster_fraction = v.parse().unwrap(),
            "compare" => {}
            "knn" => {
                params.knn = match v {
                    "exact" => genome_core::reduce::KnnMethod::Exact,
                    "hnsw" => genome_core::reduce::KnnMethod::Hnsw,
                    "nndescent" => genome_core::reduce::KnnMethod::NnDescent,
                    _ => genome_core::reduce::KnnMethod::Auto,
                }
            }
            "init" => {
                params.init = match v {
                    "pca" => genome_core::reduce::Init::Pca,
                    "random" => genome_core::reduce::Init::Random,
                    _ => genome_core::reduce::Init::Spectral,
                }
            }
            _ => panic!("unknown key {k}"),
        }
    }
    let never = || false;
    let t = Instant::now();
    // stage starts on stderr as they happen: a run stopped by a time limit still shows how far it got
    let out = classify(
        &p,
        params,
        &mut |s, done, _| {
            if done == 0 {
                eprintln!("[{:8.1} s] {s}", t.elapsed().as_secs_f64())
            }
        },
        &never,
    )
    .expect("not cancelled");
    let total = t.elapsed().as_secs_f64();
    // compare=1: the approximate HDBSCAN path on the same reduced coordinates, ARI vs exact
    let mut extra = String::new();
    if args[4..].iter().any(|a| a == "compare=1") {
        let space = out
            .reduced
            .clone()
            .unwrap_or_else(|| p.clone().l2_normalized());
        let hp = genome_core::cluster::HdbscanParams {
            min_cluster_size: params.min_cluster_size,
            min_samples: params.min_samples,
            ..Default::default()
        };
        let t = Instant::now();
        let exact = genome_core::cluster::hdbscan(&space, hp, &never).unwrap();
        let te = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let approx = genome_core::cluster::approx::hdbscan_knn(
            &space,
            hp,
            genome_core::cluster::approx::DEFAULT_GRAPH_K,
            genome_core::reduce::KnnMethod::Auto,
            &never,
        )
        .unwrap();
        let ta = t.elapsed().as_secs_f64();
        let ari = genome_core::cluster::hdbscan::adjusted_rand_index(&exact.labels, &approx.labels);
        extra = format!(", \"exact_seconds\": {te:.3}, \"approx_seconds\": {ta:.3}, \"ari_approx_vs_exact\": {ari:.4}");
    }
    let labels: Vec<u8> = out
        .result
        .labels
        .iter()
        .flat_map(|l| l.to_le_bytes())
        .collect();
    std::fs::write(format!("{}.labels", args[3]), labels).unwrap();
    let clustered = out.result.labels.iter().filter(|l| **l >= 0).count();
    let stages: Vec<String> = out
        .timings
        .iter()
        .map(|(s, t)| format!("\"{s}\": {t:.3}"))
        .collect();
    println!(
        "{{\"n\": {}, \"clusters\": {}, \"clustered\": {}, \"approximate\": {}, \"seconds\": {:.3}, \"stages\": {{{}}}{}}}",
        p.n, out.result.n_clusters, clustered, out.approximate, total, stages.join(", "),
        extra
    );
}
