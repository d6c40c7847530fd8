//! kNN graph builders on a raw f32 matrix, for benches/knn_bench.py: time, peak memory and
//! recall@k against exact neighbours of sampled query points.
//!   knn_bench IN.f32 DIM METHOD K [queries=1000] [seed=42]   (METHOD: hnsw | nndescent | exact)
//! Prints one JSON line. NND_TREES, NND_LEAF, NND_CANDIDATES, NND_ROUNDS and NND_DELTA set
//! NN-descent's parameters (default: its defaults); KNN_OUT=FILE writes the graph's indices.

use std::time::Instant;

use genome_core::base::Points;
use genome_core::reduce::knn::{distance, knn, KnnMethod, Metric};
use genome_core::reduce::nndescent::{nn_descent, NnDescentParams};
use genome_core::reduce::rng::Rng;

fn rss_peak_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        eprintln!("usage: knn_bench IN.f32 DIM METHOD K [queries] [seed]");
        std::process::exit(2);
    }
    let bytes = std::fs::read(&a[1]).expect("read input");
    let dim: usize = a[2].parse().expect("dim");
    let method = match a[3].as_str() {
        "hnsw" => KnnMethod::Hnsw,
        "nndescent" => KnnMethod::NnDescent,
        "exact" => KnnMethod::Exact,
        m => panic!("unknown method {m}"),
    };
    let k: usize = a[4].parse().expect("k");
    let queries: usize = a.get(5).map_or(1000, |q| q.parse().expect("queries"));
    let data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let p = Points::new(dim, data).l2_normalized();
    let never = || false;
    let t = Instant::now();
    let g = if method == KnnMethod::NnDescent {
        // NND_TREES, NND_LEAF, NND_CANDIDATES, NND_ROUNDS, NND_DELTA override the defaults
        let env = |v: &str| std::env::var(v).ok();
        let mut q = NnDescentParams::default();
        if let Some(x) = env("NND_TREES") {
            q.trees = x.parse().unwrap();
        }
        if let Some(x) = env("NND_LEAF") {
            q.leaf_size = x.parse().unwrap();
        }
        if let Some(x) = env("NND_CANDIDATES") {
            q.max_candidates = x.parse().unwrap();
        }
        if let Some(x) = env("NND_ROUNDS") {
            q.max_rounds = x.parse().unwrap();
        }
        if let Some(x) = env("NND_DELTA") {
            q.delta = x.parse().unwrap();
        }
        nn_descent(&p, k, Metric::Cosine, q, &never).expect("not cancelled")
    } else {
        knn(&p, k, Metric::Cosine, method, &never).expect("not cancelled")
    };
    let secs = t.elapsed().as_secs_f64();
    if let Ok(out) = std::env::var("KNN_OUT") {
        // the graph's indices, u32 little-endian, n x k (for a peer's recall code)
        let b: Vec<u8> = g.indices.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(out, b).expect("write graph");
    }
    // exact neighbours of sampled points, by brute force
    let mut rng = Rng::new(7);
    let mut hit = 0usize;
    let mut total = 0usize;
    for _ in 0..queries.min(p.n) {
        let i = rng.below(p.n);
        let mut all: Vec<(f32, usize)> = (0..p.n)
            .filter(|&j| j != i)
            .map(|j| (distance(Metric::Cosine, p.row(i), p.row(j)), j))
            .collect();
        all.select_nth_unstable_by(k - 2, |x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
        let kth = all[k - 2].0;
        let (found, _) = g.row(i);
        for &j in &found[1..] {
            total += 1;
            // a neighbour at the k-th distance counts (ties)
            if j as usize != i && distance(Metric::Cosine, p.row(i), p.row(j as usize)) <= kth {
                hit += 1;
            }
        }
    }
    println!(
        "{{\"method\": \"{}\", \"n\": {}, \"dim\": {dim}, \"k\": {k}, \"seconds\": {secs:.3}, \"recall\": {:.4}, \"peak_rss_mib\": {}, \"threads\": {}}}",
        a[3],
        p.n,
        hit as f64 / total.max(1) as f64,
        rss_peak_mib(),
        rayon::current_num_threads()
    );
}
