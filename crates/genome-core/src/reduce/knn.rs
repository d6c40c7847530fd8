//! k-nearest neighbours of every point: exact (brute force on rayon) or approximate (HNSW graph
//! from `hnsw_rs`). The point itself is always the first neighbour, at distance 0, as in
//! umap-learn and in HDBSCAN's core distance (which counts the point itself).

use hnsw_rs::prelude::{Distance, Hnsw};
use rayon::prelude::*;

use crate::base::{dot, sq_l2, Cancelled, Points};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// 1 - cos; the inputs must be L2-normalised (then it is 1 - dot).
    Cosine,
    Euclidean,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnnMethod {
    /// Exact up to `EXACT_MAX_POINTS`, HNSW above.
    Auto,
    Exact,
    Hnsw,
    /// NN-descent from random-projection trees (see [`super::nndescent`]).
    NnDescent,
}

/// Above this many points `Auto` switches to HNSW: brute force is O(n^2 d), which at 8k x 384
/// takes about as long as building the HNSW graph (measured, see README).
pub const EXACT_MAX_POINTS: usize = 8_000;

/// `k` neighbours per point, row-major: `indices[i*k..(i+1)*k]`, nearest first, self first.
#[derive(Debug, Clone)]
pub struct Knn {
    pub n: usize,
    pub k: usize,
    pub indices: Vec<u32>,
    pub dists: Vec<f32>,
}

impl Knn {
    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        (
            &self.indices[i * self.k..(i + 1) * self.k],
            &self.dists[i * self.k..(i + 1) * self.k],
        )
    }
}

#[inline]
pub fn distance(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    match metric {
        // Clamped: for duplicates 1 - dot can come out a hair below zero.
        Metric::Cosine => (1.0 - dot(a, b)).max(0.0),
        Metric::Euclidean => sq_l2(a, b).sqrt(),
    }
}

/// hnsw_rs's own `DistDot` asserts `1 - dot >= 0` and panics on duplicates; this one clamps.
#[derive(Clone, Copy, Default)]
struct CosineClamped;
impl Distance<f32> for CosineClamped {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        distance(Metric::Cosine, a, b)
    }
}
#[derive(Clone, Copy, Default)]
struct L2;
impl Distance<f32> for L2 {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        distance(Metric::Euclidean, a, b)
    }
}

pub fn knn(
    p: &Points,
    k: usize,
    metric: Metric,
    method: KnnMethod,
    cancel: &(dyn Fn() -> bool + Sync),
) -> Result<Knn, Cancelled> {
    let k = k.clamp(1, p.n.max(1));
    let exact = match method {
        KnnMethod::Exact => true,
        KnnMethod::Hnsw => false,
        KnnMethod::NnDescent => {
            if p.n > k + 1 {
                let params = super::nndescent::NnDescentParams::default();
                return super::nndescent::nn_descent(p, k, metric, params, cancel);
            }
            true
        }
        KnnMethod::Auto => p.n <= EXACT_MAX_POINTS,
    };
    if exact || p.n <= k + 1 {
        knn_exact(p, k, metric, cancel)
    } else {
        match metric {
            Metric::Cosine => knn_hnsw(p, k, CosineClamped, metric, cancel),
            Metric::Euclidean => knn_hnsw(p, k, L2, metric, cancel),
        }
    }
}

fn knn_exact(
    p: &Points,
    k: usize,
    metric: Metric,
    cancel: &(dyn Fn() -> bool + Sync),
) -> Result<Knn, Cancelled> {
    let rows: Vec<Option<(Vec<u32>, Vec<f32>)>> = (0..p.n)
        .into_par_iter()
        .map_init(
            || Vec::<(f32, u32)>::with_capacity(p.n),
            |buf, i| {
                if i % 256 == 0 && cancel() {
                    return None;
                }
                buf.clear();
                let a = p.row(i);
                for j in 0..p.n {
                    if j != i {
                        buf.push((distance(metric, a, p.row(j)), j as u32));
                    }
                }
                let m = (k - 1).min(buf.len());
                if m > 0 && m < buf.len() {
                    buf.select_nth_unstable_by(m - 1, |x, y| {
                        x.0.total_cmp(&y.0).then(x.1.cmp(&y.1))
                    });
                }
                let mut top: Vec<(f32, u32)> = buf[..m].to_vec();
                top.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
                let mut idx = vec![i as u32];
                let mut ds = vec![0f32];
                for (d, j) in top {
                    idx.push(j);
                    ds.push(d);
                }
                Some((idx, ds))
            },
        )
        .collect();
    collect(p.n, k, rows)
}

fn collect(n: usize, k: usize, rows: Vec<Option<(Vec<u32>, Vec<f32>)>>) -> Result<Knn, Cancelled> {
    let mut indices = Vec::with_capacity(n * k);
    let mut dists = Vec::with_capacity(n * k);
    for r in rows {
        let (i, d) = r.ok_or(Cancelled)?;
        indices.extend(i);
        dists.extend(d);
    }
    Ok(Knn {
        n,
        k,
        indices,
        dists,
    })
}

/// HNSW parameters: M = 16 links per node, ef_construction 200 (recall@15 0.99+ on real
/// MiniLM embeddings, see ../shared/notes/clustering.md); queries use ef = max(2k, 64).
fn knn_hnsw<D: Distance<f32> + Send + Sync>(
    p: &Points,
    k: usize,
    dist: D,
    metric: Metric,
    cancel: &(dyn Fn() -> bool + Sync),
) -> Result<Knn, Cancelled> {
    let layers = 16.min(((p.n as f64).ln().ceil() as usize).max(1));
    let hnsw: Hnsw<f32, D> = Hnsw::new(16, p.n, layers, 200, dist);
    // Insert in chunks so that a cancel is noticed within seconds.
    let all: Vec<(&[f32], usize)> = (0..p.n).map(|i| (p.row(i), i)).collect();
    for chunk in all.chunks(5_000) {
        if cancel() {
            return Err(Cancelled);
        }
        hnsw.parallel_insert_slice(&chunk.to_vec());
    }
    let ef = (2 * k).max(64);
    let rows: Vec<Option<(Vec<u32>, Vec<f32>)>> = (0..p.n)
        .into_par_iter()
        .map(|i| {
            if i % 512 == 0 && cancel() {
                return None;
            }
            let found = hnsw.search(p.row(i), k, ef);
            let mut idx = vec![i as u32];
            let mut ds = vec![0f32];
            for nb in found {
                if nb.d_id != i && idx.len() < k {
                    idx.push(nb.d_id as u32);
                    // recompute: hnsw_rs may return f32 noise for near-duplicates
                    ds.push(distance(metric, p.row(i), p.row(nb.d_id)));
                }
            }
            // A short list (tiny or disconnected graphs) is padded with the farthest found.
            while idx.len() < k {
                let (li, ld) = (*idx.last().unwrap(), *ds.last().unwrap());
                idx.push(li);
                ds.push(ld);
            }
            Some((idx, ds))
        })
        .collect();
    collect(p.n, k, rows)
}

/// Share of true k-nearest neighbours (self excluded) that `approx` found: recall@k.
pub fn recall(exact: &Knn, approx: &Knn) -> f64 {
    assert_eq!(exact.n, approx.n);
    let k = exact.k.min(approx.k);
    let mut hit = 0usize;
    let mut total = 0usize;
    for i in 0..exact.n {
        let (e, _) = exact.row(i);
        let (a, _) = approx.row(i);
        for x in &e[1..k] {
            total += 1;
            if a[1..k].contains(x) {
                hit += 1;
            }
        }
    }
    hit as f64 / total.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reduce::rng::Rng;

    fn random_points(n: usize, d: usize, seed: u64) -> Points {
        let mut r = Rng::new(seed);
        Points::new(d, (0..n * d).map(|_| r.normal() as f32).collect()).l2_normalized()
    }

    #[test]
    fn exact_matches_naive_sort_and_puts_self_first() {
        let p = random_points(300, 16, 1);
        let never = || false;
        let g = knn(&p, 10, Metric::Cosine, KnnMethod::Exact, &never).unwrap();
        for i in 0..p.n {
            let (idx, ds) = g.row(i);
            assert_eq!(idx[0] as usize, i);
            assert_eq!(ds[0], 0.0);
            let mut all: Vec<(f32, usize)> = (0..p.n)
                .filter(|j| *j != i)
                .map(|j| (1.0 - dot(p.row(i), p.row(j)), j))
                .collect();
            all.sort_by(|a, b| a.0.total_cmp(&b.0));
            for t in 1..10 {
                assert!((ds[t] - all[t - 1].0.max(0.0)).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn hnsw_recall_is_high_on_clustered_data() {
        // 20 tight clusters in 32-d: HNSW should find nearly all true neighbours.
        let mut r = Rng::new(3);
        let centers: Vec<Vec<f32>> = (0..20)
            .map(|_| (0..32).map(|_| r.normal() as f32).collect())
            .collect();
        let mut data = Vec::new();
        for i in 0..2000 {
            for x in &centers[i % 20] {
                data.push(x + 0.3 * r.normal() as f32);
            }
        }
        let p = Points::new(32, data).l2_normalized();
        let never = || false;
        let e = knn(&p, 15, Metric::Cosine, KnnMethod::Exact, &never).unwrap();
        let a = knn(&p, 15, Metric::Cosine, KnnMethod::Hnsw, &never).unwrap();
        let rec = recall(&e, &a);
        assert!(rec > 0.95, "recall {rec}");
        let l2 = knn(&p, 15, Metric::Euclidean, KnnMethod::Exact, &never).unwrap();
        // on unit vectors Euclidean and cosine order neighbours alike
        assert!(recall(&e, &l2) > 0.999);
    }

    #[test]
    fn duplicates_do_not_panic_and_cancel_stops() {
        let mut data = Vec::new();
        for _ in 0..200 {
            data.extend([1.0f32, 0.0, 0.0]);
        }
        let p = Points::new(3, data).l2_normalized();
        let never = || false;
        let g = knn(&p, 5, Metric::Cosine, KnnMethod::Hnsw, &never).unwrap();
        assert!(g.dists.iter().all(|d| *d == 0.0));
        let always = || true;
        assert!(knn(&p, 5, Metric::Cosine, KnnMethod::Exact, &always).is_err());
    }
}
