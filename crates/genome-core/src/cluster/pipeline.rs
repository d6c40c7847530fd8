//! The full-classification pipeline over embeddings: (optional) reduction, then HDBSCAN, with
//! the path chosen by size. Stages report through `progress` and honour `cancel`.

use std::borrow::Cow;
use std::time::Instant;

use super::approx::{hdbscan_knn, DEFAULT_GRAPH_K};
use super::boruvka::KD_MAX_DIM;
use super::hdbscan::{hdbscan, Hdbscan, HdbscanParams};
use crate::base::{Cancelled, Points};
use crate::reduce::knn::EXACT_MAX_POINTS;
use crate::reduce::nndescent::{nn_descent_steps, NnDescentParams};
use crate::reduce::umap::umap_steps;
use crate::reduce::{knn, umap, Init, KnnMethod, Metric, UmapParams};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// HDBSCAN on the L2-normalised embeddings themselves.
    None,
    /// UMAP-style layout (cosine kNN graph, spectral init) to `n_components` dimensions.
    Umap,
    /// Projection on the leading principal components.
    Pca,
}

impl std::str::FromStr for Reduction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "umap" => Ok(Self::Umap),
            "pca" => Ok(Self::Pca),
            _ => Err(format!(
                "unknown reduction \"{s}\" (expected umap, pca or none)"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Auto,
    Exact,
    Approximate,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "exact" => Ok(Self::Exact),
            "approximate" | "approx" => Ok(Self::Approximate),
            _ => Err(format!(
                "unknown HDBSCAN method \"{s}\" (expected auto, exact or approximate)"
            )),
        }
    }
}

/// `Auto` takes the exact path while n^2 d stays under this many operations (about 20k points
/// at 384-d), the approximate path above; up to `KD_MAX_DIM` dimensions (the reduced layout)
/// always the exact path, on a k-d tree from 20k points.
pub const EXACT_BUDGET: f64 = 1.0e11;

#[derive(Debug, Clone, Copy)]
pub struct ClassifyParams {
    pub min_cluster_size: usize,
    pub min_samples: Option<usize>,
    pub reduction: Reduction,
    pub n_components: usize,
    pub n_neighbors: usize,
    pub method: Method,
    pub seed: u64,
    /// No family may hold more than this share of the rows (HDBSCAN's max_cluster_size): see
    /// `classify`.
    pub max_cluster_fraction: f64,
    /// UMAP initial layout (spectral unless told otherwise).
    pub init: Init,
    /// How the reduction's kNN graph is built. Auto: exact up to `knn::EXACT_MAX_POINTS`,
    /// NN-descent above (WordNet's 117,659 glosses: the same families' clustered share, purity
    /// and AMI as with HNSW, the graph in 6.2 s instead of 138 s; benches/README.md).
    pub knn: KnnMethod,
}

impl Default for ClassifyParams {
    fn default() -> Self {
        Self {
            min_cluster_size: 15,
            min_samples: None,
            reduction: Reduction::Umap,
            n_components: 5,
            n_neighbors: 15,
            method: Method::Auto,
            seed: 42,
            max_cluster_fraction: 0.5,
            init: Init::Spectral,
            knn: KnnMethod::Auto,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Classified {
    pub result: Hdbscan,
    /// Whether the approximate HDBSCAN path ran.
    pub approximate: bool,
    /// The reduced coordinates HDBSCAN ran on (None without a reduction).
    pub reduced: Option<Points>,
    /// Seconds per stage, in order.
    pub timings: Vec<(&'static str, f64)>,
}

/// Cluster `emb` (any scale: rows are L2-normalised here). `progress(stage, done, total)` is
/// told each stage as it begins (done 0) and, in the kNN graph and the layout, its steps
/// (rounds of NN-descent, epochs of the layout), always on the calling thread.
pub fn classify(
    emb: &Points,
    params: ClassifyParams,
    progress: &mut dyn FnMut(&str, usize, usize),
    cancel: &(dyn Fn() -> bool + Sync),
) -> Result<Classified, Cancelled> {
    let mut timings = Vec::new();
    // Rows of unit length (what embedding models give) are used as they are: a normalised copy
    // of 1M x 384 would be another 1.5 GiB.
    let normed: Cow<Points> = if emb.rows_unit(1e-4) {
        Cow::Borrowed(emb)
    } else {
        Cow::Owned(emb.clone().l2_normalized())
    };
    let reduced_any = params.reduction != Reduction::None;
    let space = match params.reduction {
        Reduction::None => normed,
        Reduction::Pca => {
            let t = Instant::now();
            progress("reduce", 0, 0);
            let out = umap::pca_project(&normed, params.n_components, params.seed);
            timings.push(("reduce", t.elapsed().as_secs_f64()));
            Cow::Owned(out)
        }
        Reduction::Umap => {
            let t = Instant::now();
            progress("knn", 0, 0);
            let method = match params.knn {
                KnnMethod::Auto if normed.n > EXACT_MAX_POINTS => KnnMethod::NnDescent,
                m => m,
            };
            let k = params.n_neighbors.max(2);
            let g = if method == KnnMethod::NnDescent && normed.n > k + 1 {
                let np = NnDescentParams {
                    seed: params.seed,
                    ..Default::default()
                };
                nn_descent_steps(&normed, k, Metric::Cosine, np, cancel, &mut |d, t| {
                    progress("knn", d, t)
                })?
            } else {
                knn(&normed, k, Metric::Cosine, method, cancel)?
            };
            timings.push(("knn", t.elapsed().as_secs_f64()));
            let t = Instant::now();
            progress("reduce", 0, 0);
            let up = UmapParams {
                n_components: params.n_components,
                init: params.init,
                seed: params.seed,
                ..Default::default()
            };
            let out = umap_steps(&normed, &g, up, cancel, &mut |d, t| {
                progress("reduce", d, t)
            })?;
            drop(g);
            timings.push(("reduce", t.elapsed().as_secs_f64()));
            Cow::Owned(out)
        }
    };
    let t = Instant::now();
    progress("hdbscan", 0, 0);
    // One far-off island in the layout (a few near-identical texts) can make excess-of-mass pick
    // "island vs everything else": umap-learn + scikit-learn do exactly that on 90% of the
    // sample data (2 clusters, purity 0.07). A family holding over half of all rows is never
    // what a taxonomy wants, so such clusters are not selectable (sklearn's max_cluster_size)
    // and their sub-clusters are considered instead.
    let max_cluster_size = if params.max_cluster_fraction < 1.0 {
        Some(
            ((space.n as f64 * params.max_cluster_fraction).ceil() as usize)
                .max(params.min_cluster_size),
        )
    } else {
        None
    };
    let hp = HdbscanParams {
        min_cluster_size: params.min_cluster_size,
        min_samples: params.min_samples,
        max_cluster_size,
        allow_single_cluster: false,
        leaf: false,
    };
    let choose = |n: usize, d: usize| match params.method {
        Method::Exact => false,
        Method::Approximate => true,
        // low dimension: the exact path's k-d tree is O(n log n) at any size
        Method::Auto => d > KD_MAX_DIM && (n as f64).powi(2) * d as f64 > EXACT_BUDGET,
    };
    let approximate = choose(space.n, space.d);
    let run = |p: &Points, hp: HdbscanParams| -> Result<Hdbscan, Cancelled> {
        if choose(p.n, p.d) {
            hdbscan_knn(p, hp, DEFAULT_GRAPH_K, KnnMethod::Auto, cancel)
        } else {
            hdbscan(p, hp, cancel)
        }
    };
    let result = run(&space, hp)?;
    timings.push(("hdbscan", t.elapsed().as_secs_f64()));
    let reduced = if reduced_any {
        Some(space.into_owned())
    } else {
        None
    };
    Ok(Classified {
        result,
        approximate,
        reduced,
        timings,
    })
}
