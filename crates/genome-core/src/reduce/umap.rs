//! A UMAP-style reduction following umap-learn 0.5 (McInnes et al., arXiv:1802.03426):
//! fuzzy simplicial set from a kNN graph (smooth kNN distances, fuzzy union), spectral
//! initialisation (or PCA, or random), then stochastic layout optimisation with negative
//! sampling. Up to [`PARALLEL_MIN_POINTS`] the optimisation runs serially with a seeded
//! generator, as umap-learn does when given a random_state; above, in blocks on all cores
//! ([`optimize_blocks`]). Either way a given input and seed always gives the same layout.

use super::knn::Knn;
use super::linalg::top_eigenvectors;
use super::rng::Rng;
use crate::base::{Cancelled, Points};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    Spectral,
    Pca,
    Random,
}

#[derive(Debug, Clone, Copy)]
pub struct UmapParams {
    pub n_components: usize,
    pub min_dist: f64,
    pub spread: f64,
    /// None: 500 up to 10,000 points, 200 above (umap-learn's default).
    pub n_epochs: Option<usize>,
    pub negative_sample_rate: usize,
    pub init: Init,
    pub seed: u64,
}

impl Default for UmapParams {
    fn default() -> Self {
        Self {
            n_components: 5,
            min_dist: 0.0,
            spread: 1.0,
            n_epochs: None,
            negative_sample_rate: 5,
            init: Init::Spectral,
            seed: 42,
        }
    }
}

/// Fit a, b of 1 / (1 + a d^(2b)) to the target membership curve, as umap-learn's
/// `find_ab_params` does with scipy's curve_fit (here: Gauss-Newton from a grid start).
pub fn find_ab_params(spread: f64, min_dist: f64) -> (f64, f64) {
    let xs: Vec<f64> = (0..300).map(|i| spread * 3.0 * i as f64 / 299.0).collect();
    let ys: Vec<f64> = xs
        .iter()
        .map(|&x| {
            if x < min_dist {
                1.0
            } else {
                (-(x - min_dist) / spread).exp()
            }
        })
        .collect();
    let sse = |a: f64, b: f64| -> f64 {
        xs.iter()
            .zip(&ys)
            .map(|(&x, &y)| {
                let f = 1.0 / (1.0 + a * x.powf(2.0 * b));
                (f - y) * (f - y)
            })
            .sum()
    };
    let (mut a, mut b) = (1.0, 1.0);
    let mut best = f64::INFINITY;
    for ai in 1..60 {
        for bi in 1..60 {
            let (ta, tb) = (ai as f64 * 0.05, bi as f64 * 0.05);
            let e = sse(ta, tb);
            if e < best {
                best = e;
                a = ta;
                b = tb;
            }
        }
    }
    // Gauss-Newton refinement with step halving.
    for _ in 0..100 {
        let (mut jtj, mut jtr) = ([[0f64; 2]; 2], [0f64; 2]);
        for (&x, &y) in xs.iter().zip(&ys) {
            if x <= 0.0 {
                continue;
            }
            let p = x.powf(2.0 * b);
            let den = 1.0 + a * p;
            let f = 1.0 / den;
            let r = f - y;
            let da = -p / (den * den);
            let db = -a * p * 2.0 * x.ln() / (den * den);
            jtj[0][0] += da * da;
            jtj[0][1] += da * db;
            jtj[1][1] += db * db;
            jtr[0] += da * r;
            jtr[1] += db * r;
        }
        jtj[1][0] = jtj[0][1];
        let det = jtj[0][0] * jtj[1][1] - jtj[0][1] * jtj[1][0];
        if det.abs() < 1e-300 {
            break;
        }
        let sa = (jtj[1][1] * jtr[0] - jtj[0][1] * jtr[1]) / det;
        let sb = (jtj[0][0] * jtr[1] - jtj[1][0] * jtr[0]) / det;
        let mut t = 1.0;
        let cur = sse(a, b);
        while t > 1e-6 && sse(a - t * sa, b - t * sb) >= cur {
            t *= 0.5;
        }
        if t <= 1e-6 {
            break;
        }
        a -= t * sa;
        b -= t * sb;
    }
    (a, b)
}

/// A symmetric sparse graph in COO form (both directions stored).
#[derive(Debug, Clone)]
pub struct Graph {
    pub n: usize,
    pub head: Vec<u32>,
    pub tail: Vec<u32>,
    pub weight: Vec<f32>,
}

/// umap-learn's smooth_knn_dist: per point rho (nearest non-zero distance) and sigma such
/// that sum_j exp(-(d_ij - rho) / sigma) = log2(k).
pub fn smooth_knn_dist(knn: &Knn) -> (Vec<f64>, Vec<f64>) {
    const SMOOTH_K_TOLERANCE: f64 = 1e-5;
    const MIN_K_DIST_SCALE: f64 = 1e-3;
    let k = knn.k;
    let target = (k as f64).log2();
    let mean_all = knn.dists.iter().map(|d| *d as f64).sum::<f64>() / knn.dists.len().max(1) as f64;
    let mut rhos = vec![0f64; knn.n];
    let mut sigmas = vec![0f64; knn.n];
    for i in 0..knn.n {
        let (_, ds) = knn.row(i);
        let rho = ds
            .iter()
            .map(|d| *d as f64)
            .find(|d| *d > 0.0)
            .unwrap_or(0.0);
        let (mut lo, mut hi, mut mid) = (0.0f64, f64::INFINITY, 1.0f64);
        for _ in 0..64 {
            let mut psum = 0.0;
            for &d in &ds[1..] {
                let d = d as f64 - rho;
                psum += if d > 0.0 { (-(d / mid)).exp() } else { 1.0 };
            }
            if (psum - target).abs() < SMOOTH_K_TOLERANCE {
                break;
            }
            if psum > target {
                hi = mid;
                mid = (lo + hi) / 2.0;
            } else {
                lo = mid;
                mid = if hi.is_infinite() {
                    mid * 2.0
                } else {
                    (lo + hi) / 2.0
                };
            }
        }
        let mean_i = ds.iter().map(|d| *d as f64).sum::<f64>() / k as f64;
        let floor = MIN_K_DIST_SCALE * if rho > 0.0 { mean_i } else { mean_all };
        rhos[i] = rho;
        sigmas[i] = mid.max(floor);
    }
    (rhos, sigmas)
}

/// The fuzzy simplicial set: memberships exp(-(d - rho) / sigma), then the fuzzy union
/// w_ij + w_ji - w_ij w_ji.
pub fn fuzzy_simplicial_set(knn: &Knn) -> Graph {
    let (rhos, sigmas) = smooth_knn_dist(knn);
    // (min, max, weight, direction): both directions of a pair meet after sorting.
    let mut entries: Vec<(u32, u32, f32)> = Vec::with_capacity(knn.n * knn.k);
    for i in 0..knn.n {
        let (idx, ds) = knn.row(i);
        for (&j, &d) in idx.iter().zip(ds) {
            if j as usize == i {
                continue;
            }
            let d = d as f64;
            let w = if d - rhos[i] <= 0.0 || sigmas[i] == 0.0 {
                1.0
            } else {
                (-(d - rhos[i]) / sigmas[i]).exp()
            };
            entries.push((i as u32, j, w as f32));
        }
    }
    // A kNN list may name the same neighbour twice (HNSW padding); keep one.
    entries.sort_by_key(|a| (a.0, a.1));
    entries.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    // w_ji by binary search in row j (entries are sorted by row, then column): no hash map of
    // all n k entries (400 MB at 1M points)
    let mut row_start = vec![0usize; knn.n + 1];
    for &(i, _, _) in &entries {
        row_start[i as usize + 1] += 1;
    }
    for i in 0..knn.n {
        row_start[i + 1] += row_start[i];
    }
    let weight_of = |i: u32, j: u32| -> f32 {
        let row = &entries[row_start[i as usize]..row_start[i as usize + 1]];
        row.binary_search_by_key(&j, |e| e.1)
            .map_or(0.0, |p| row[p].2)
    };
    let mut pairs: Vec<(u32, u32, f32)> = Vec::with_capacity(entries.len() * 2);
    for &(i, j, w) in &entries {
        let back = weight_of(j, i);
        let u = w + back - w * back;
        pairs.push((i, j, u));
        if back == 0.0 {
            // j does not list i: add the reverse direction, which the loop will not visit.
            pairs.push((j, i, u));
        }
    }
    drop(entries);
    pairs.sort_by_key(|a| (a.0, a.1));
    pairs.retain(|p| p.2 > 0.0);
    let head = pairs.iter().map(|p| p.0).collect();
    let tail = pairs.iter().map(|p| p.1).collect();
    let weight = pairs.iter().map(|p| p.2).collect();
    Graph {
        n: knn.n,
        head,
        tail,
        weight,
    }
}

/// The spectral layout, or Ok(None) when it does not apply (an isolated point).
fn spectral_init(
    g: &Graph,
    dim: usize,
    seed: u64,
    cancel: &(dyn Fn() -> bool + Sync),
) -> Result<Option<Vec<Vec<f64>>>, Cancelled> {
    use rayon::prelude::*;
    let n = g.n;
    if n <= dim + 1 {
        return Ok(None);
    }
    let mut deg = vec![0f64; n];
    for (h, w) in g.head.iter().zip(&g.weight) {
        deg[*h as usize] += *w as f64;
    }
    if deg.iter().any(|d| *d <= 0.0) {
        return Ok(None); // an isolated point: the normalised Laplacian is undefined
    }
    let inv_sqrt: Vec<f64> = deg.iter().map(|d| 1.0 / d.sqrt()).collect();
    let norm = deg.iter().sum::<f64>().sqrt();
    let trivial: Vec<f64> = deg.iter().map(|d| d.sqrt() / norm).collect();
    // each row's edges (the graph is sorted by head)
    let mut row_start = vec![0usize; n + 1];
    for h in &g.head {
        row_start[*h as usize + 1] += 1;
    }
    for i in 0..n {
        row_start[i + 1] += row_start[i];
    }
    // (I + D^-1/2 W D^-1/2) / 2 has the Laplacian's smallest eigenvectors as its largest ones
    // and is positive semi-definite, so power iteration applies. Rows in parallel, each summed
    // in edge order: the same values on any number of threads.
    let vecs = top_eigenvectors(n, dim, 150, seed, &[trivial], cancel, |x, y| {
        y.par_iter_mut().enumerate().for_each(|(h, yh)| {
            let mut acc = 0.5 * x[h];
            for e in row_start[h]..row_start[h + 1] {
                let t = g.tail[e] as usize;
                acc += 0.5 * g.weight[e] as f64 * inv_sqrt[h] * inv_sqrt[t] * x[t];
            }
            *yh = acc;
        });
    })
    .ok_or(Cancelled)?
    .0;
    Ok(Some(vecs))
}

fn pca_init(p: &Points, dim: usize, seed: u64) -> Vec<Vec<f64>> {
    let d = p.d;
    let mut mean = vec![0f64; d];
    for i in 0..p.n {
        for (m, x) in mean.iter_mut().zip(p.row(i)) {
            *m += *x as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= p.n.max(1) as f64);
    // The covariance from at most 20k evenly spaced rows: enough for 5-10 components.
    let step = (p.n / 20_000).max(1);
    let mut cov = vec![0f64; d * d];
    let mut rows = 0usize;
    let mut c = vec![0f64; d];
    for i in (0..p.n).step_by(step) {
        for (k, x) in p.row(i).iter().enumerate() {
            c[k] = *x as f64 - mean[k];
        }
        for a in 0..d {
            let ca = c[a];
            for b in 0..d {
                cov[a * d + b] += ca * c[b];
            }
        }
        rows += 1;
    }
    cov.iter_mut().for_each(|v| *v /= rows as f64);
    // d x d: quick, not worth a cancel check
    let (axes, _) = top_eigenvectors(d, dim.min(d), 300, seed, &[], &|| false, |x, y| {
        for a in 0..d {
            y[a] = (0..d).map(|b| cov[a * d + b] * x[b]).sum();
        }
    })
    .expect("never cancelled");
    axes.iter()
        .map(|ax| {
            (0..p.n)
                .map(|i| {
                    p.row(i)
                        .iter()
                        .zip(&mean)
                        .zip(ax)
                        .map(|((x, m), a)| (*x as f64 - m) * a)
                        .sum()
                })
                .collect()
        })
        .collect()
}

/// Projection of `p` on its `dim` leading principal components (the `pca` reduction).
pub fn pca_project(p: &Points, dim: usize, seed: u64) -> Points {
    let cols = pca_init(p, dim, seed);
    let mut data = vec![0f32; p.n * cols.len()];
    for (c, col) in cols.iter().enumerate() {
        for i in 0..p.n {
            data[i * cols.len() + c] = col[i] as f32;
        }
    }
    Points {
        n: p.n,
        d: cols.len(),
        data,
    }
}

/// An edge to optimise: head, tail, epochs per sample (16 bytes: 1M points have 30M edges).
type Edge = (u32, u32, f64);

/// Above this many points the layout is optimised in blocks on all cores
/// ([`optimize_blocks`]); up to it, serially as umap-learn does with a random_state.
pub const PARALLEL_MIN_POINTS: usize = 10_000;

/// Head ranges the parallel optimisation splits the points into: a fixed number, so the layout
/// for a seed is the same whatever the number of threads.
const BLOCKS: usize = 256;

/// Parts of an epoch after which every block sees the others' points as they now are.
const PHASES: usize = 4;

#[derive(Clone, Copy)]
struct Optimize {
    dim: usize,
    a: f32,
    b: f32,
    neg_rate: f64,
    n_epochs: usize,
    seed: u64,
}

/// The attraction's coefficient along an edge at squared distance `d2` > 0, in f32 with one
/// powf as umap-learn's numba kernel: d^(2b-2) = d^(2b) / d^2.
#[inline]
fn attraction(d2: f32, a: f32, b: f32) -> f32 {
    let pb = d2.powf(b);
    -2.0 * a * b * (pb / d2) / (a * pb + 1.0)
}

/// A negative sample's repulsion coefficient at squared distance `d2` > 0.
#[inline]
fn repulsion(d2: f32, a: f32, b: f32) -> f32 {
    2.0 * b / ((0.001 + d2) * (a * d2.powf(b) + 1.0))
}

/// umap-learn's optimisation, serially: each sampled edge (j, k) moves both ends, each negative
/// sample moves j.
fn optimize_serial(
    emb: &mut [f32],
    n: usize,
    edges: &[Edge],
    opt: Optimize,
    rng: &mut Rng,
    cancel: &(dyn Fn() -> bool + Sync),
    steps: &mut dyn FnMut(usize, usize),
) -> Result<(), Cancelled> {
    let Optimize {
        dim,
        a,
        b,
        neg_rate,
        n_epochs,
        ..
    } = opt;
    let mut next_sample: Vec<f64> = edges.iter().map(|e| e.2).collect();
    let mut next_negative: Vec<f64> = edges.iter().map(|e| e.2 / neg_rate).collect();
    let mut alpha = 1.0f32;
    for epoch in 0..n_epochs {
        if epoch % 10 == 0 {
            if cancel() {
                return Err(Cancelled);
            }
            steps(epoch, n_epochs);
        }
        let ef = epoch as f64;
        for (e, &(j, k, eps)) in edges.iter().enumerate() {
            let (j, k) = (j as usize, k as usize);
            if next_sample[e] > ef {
                continue;
            }
            let d2 = sq_dist(emb, j, k, dim);
            if d2 > 0.0 {
                let coeff = attraction(d2, a, b);
                for c in 0..dim {
                    let g =
                        (coeff * (emb[j * dim + c] - emb[k * dim + c])).clamp(-4.0, 4.0) * alpha;
                    emb[j * dim + c] += g;
                    emb[k * dim + c] -= g;
                }
            }
            next_sample[e] += eps;
            let eps_neg = eps / neg_rate;
            let n_neg = ((ef - next_negative[e]) / eps_neg).max(0.0) as usize;
            for _ in 0..n_neg {
                let o = rng.below(n);
                if o == j {
                    continue;
                }
                let d2 = sq_dist(emb, j, o, dim);
                if d2 <= 0.0 {
                    continue;
                }
                let coeff = repulsion(d2, a, b);
                for c in 0..dim {
                    let g =
                        (coeff * (emb[j * dim + c] - emb[o * dim + c])).clamp(-4.0, 4.0) * alpha;
                    emb[j * dim + c] += g;
                }
            }
            next_negative[e] += n_neg as f64 * eps_neg;
        }
        alpha = 1.0 - (epoch + 1) as f32 / n_epochs as f32;
    }
    Ok(())
}

/// The same optimisation on all cores. The points are split into [`BLOCKS`] ranges of heads,
/// and each epoch into [`PHASES`] parts of every block's edges (the graph's edges are sorted by
/// head). In a phase every block runs its part with its own generator, seeded by (seed, epoch,
/// block, phase): an edge (j, k) moves j by the clipped attraction and k by its opposite, as
/// umap-learn does; a negative sample moves j. A block moves its own points at once and
/// reads them as they move; the moves of other blocks' points are kept and added after the
/// phase, in block order, and other blocks' points are read as the last phase left them. So no
/// two threads write the same point, and a seed gives the same layout whatever the number of
/// threads. umap-learn's parallel mode instead lets threads race (Hogwild) and is not
/// reproducible.
///
/// Moving both ends matters. Until 0.8.0 an edge moved only j, by twice the attraction (the
/// graph holds (k, j) too): the same moves in sum, but a point took all of its pulls at once
/// when its own edges ran. On WordNet's 117,659 glosses that gave more, smaller families
/// (1,335 against umap-learn's 1,076) that changed with the seed (ARI between seeds 42 and 7
/// on rows both runs cluster 0.834; umap-learn 0.926). Moving both ends gives 1,099-1,120
/// families, ARI 0.936, and the serial optimisation's quality (benches/README.md).
fn optimize_blocks(
    emb: &mut [f32],
    n: usize,
    edges: &[Edge],
    opt: Optimize,
    cancel: &(dyn Fn() -> bool + Sync),
    steps: &mut dyn FnMut(usize, usize),
) -> Result<(), Cancelled> {
    use rayon::prelude::*;
    let Optimize {
        dim,
        a,
        b,
        neg_rate,
        n_epochs,
        seed,
    } = opt;
    let per_block = n.div_ceil(BLOCKS);
    // each block's edges: a contiguous range (sorted by head)
    let mut starts = Vec::with_capacity(BLOCKS + 1);
    for blk in 0..=BLOCKS {
        let head = (blk * per_block).min(n);
        starts.push(edges.partition_point(|e| (e.0 as usize) < head));
    }
    let mut next_sample: Vec<f64> = edges.iter().map(|e| e.2).collect();
    let mut next_negative: Vec<f64> = edges.iter().map(|e| e.2 / neg_rate).collect();
    let mut prev = emb.to_vec();
    let mut alpha = 1.0f32;
    for epoch in 0..n_epochs {
        if cancel() {
            return Err(Cancelled);
        }
        steps(epoch, n_epochs);
        for phase in 0..PHASES {
            prev.copy_from_slice(emb);
            let ef = epoch as f64;
            // each block's own points and edge state, as disjoint mutable slices
            let mut parts = Vec::with_capacity(BLOCKS);
            let (mut e_rest, mut s_rest, mut g_rest) =
                (&mut emb[..], &mut next_sample[..], &mut next_negative[..]);
            for blk in 0..BLOCKS {
                let lo = (blk * per_block).min(n);
                let hi = ((blk + 1) * per_block).min(n);
                let count = starts[blk + 1] - starts[blk];
                let (own, e_tail) = std::mem::take(&mut e_rest).split_at_mut((hi - lo) * dim);
                let (ns, s_tail) = std::mem::take(&mut s_rest).split_at_mut(count);
                let (ng, g_tail) = std::mem::take(&mut g_rest).split_at_mut(count);
                (e_rest, s_rest, g_rest) = (e_tail, s_tail, g_tail);
                parts.push((blk, lo, hi, own, ns, ng));
            }
            let (prev, starts) = (&prev[..], &starts[..]);
            let moved: Vec<(Vec<u32>, Vec<f32>)> = parts
                .into_par_iter()
                .map(|(blk, lo, hi, own, ns, ng)| {
                    let mut rng = Rng::new(
                        seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                            ^ (blk as u64 + 1).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
                            ^ (phase as u64).wrapping_mul(0x1656_67B1_9E37_79F9),
                    );
                    let count = starts[blk + 1] - starts[blk];
                    let (from, to) = (count * phase / PHASES, count * (phase + 1) / PHASES);
                    let (mut tails, mut deltas) = (Vec::new(), Vec::new());
                    let mut other = vec![0f32; dim];
                    // a point's coordinates: this block's as they move, any other's as the last phase left them
                    let load = |own: &[f32], i: usize, out: &mut [f32]| {
                        if (lo..hi).contains(&i) {
                            out.copy_from_slice(&own[(i - lo) * dim..(i - lo + 1) * dim]);
                        } else {
                            out.copy_from_slice(&prev[i * dim..(i + 1) * dim]);
                        }
                    };
                    for (e, &(j, k, eps)) in edges[starts[blk]..starts[blk + 1]]
                        .iter()
                        .enumerate()
                        .take(to)
                        .skip(from)
                    {
                        let (j, k) = (j as usize, k as usize);
                        if ns[e] > ef {
                            continue;
                        }
                        let jo = (j - lo) * dim;
                        load(own, k, &mut other);
                        let d2: f32 = own[jo..jo + dim]
                            .iter()
                            .zip(&other)
                            .map(|(x, y)| (x - y) * (x - y))
                            .sum();
                        if d2 > 0.0 {
                            let coeff = attraction(d2, a, b);
                            let local = (lo..hi).contains(&k);
                            if !local {
                                tails.push(k as u32);
                            }
                            for c in 0..dim {
                                let g = (coeff * (own[jo + c] - other[c])).clamp(-4.0, 4.0) * alpha;
                                own[jo + c] += g;
                                if local {
                                    own[(k - lo) * dim + c] -= g;
                                } else {
                                    deltas.push(-g);
                                }
                            }
                        }
                        ns[e] += eps;
                        let eps_neg = eps / neg_rate;
                        let n_neg = ((ef - ng[e]) / eps_neg).max(0.0) as usize;
                        for _ in 0..n_neg {
                            let o = rng.below(n);
                            if o == j {
                                continue;
                            }
                            load(own, o, &mut other);
                            let d2: f32 = own[jo..jo + dim]
                                .iter()
                                .zip(&other)
                                .map(|(x, y)| (x - y) * (x - y))
                                .sum();
                            if d2 <= 0.0 {
                                continue;
                            }
                            let coeff = repulsion(d2, a, b);
                            for c in 0..dim {
                                let g = (coeff * (own[jo + c] - other[c])).clamp(-4.0, 4.0) * alpha;
                                own[jo + c] += g;
                            }
                        }
                        ng[e] += n_neg as f64 * eps_neg;
                    }
                    (tails, deltas)
                })
                .collect();
            // the other ends' moves, in block order (the same sums on any number of threads)
            for (tails, deltas) in &moved {
                for (t, d) in tails.iter().zip(deltas.chunks_exact(dim)) {
                    let at = *t as usize * dim;
                    for c in 0..dim {
                        emb[at + c] += d[c];
                    }
                }
            }
        }
        alpha = 1.0 - (epoch + 1) as f32 / n_epochs as f32;
    }
    Ok(())
}

#[inline]
fn sq_dist(emb: &[f32], i: usize, j: usize, dim: usize) -> f32 {
    let (a, b) = (&emb[i * dim..(i + 1) * dim], &emb[j * dim..(j + 1) * dim]);
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Reduce `p` (whose kNN graph is `knn`) to `n_components` dimensions.
pub fn umap(
    p: &Points,
    knn: &Knn,
    params: UmapParams,
    cancel: &(dyn Fn() -> bool + Sync),
) -> Result<Points, Cancelled> {
    umap_steps(p, knn, params, cancel, &mut |_, _| {})
}

/// [`umap`], telling `steps(done, total)` before each epoch of the optimisation (on the
/// calling thread).
pub fn umap_steps(
    p: &Points,
    knn: &Knn,
    params: UmapParams,
    cancel: &(dyn Fn() -> bool + Sync),
    steps: &mut dyn FnMut(usize, usize),
) -> Result<Points, Cancelled> {
    let n = p.n;
    let dim = params.n_components.max(1);
    let mut rng = Rng::new(params.seed);
    if n == 0 {
        return Ok(Points {
            n: 0,
            d: dim,
            data: vec![],
        });
    }
    let graph = fuzzy_simplicial_set(knn);
    if cancel() {
        return Err(Cancelled);
    }
    // Initial layout, then (as umap-learn) scale to max |x| = 10 and add tiny noise, then
    // rescale every dimension to [0, 10].
    let init: Vec<Vec<f64>> = match params.init {
        Init::Spectral => spectral_init(&graph, dim, params.seed, cancel)?
            .unwrap_or_else(|| pca_init(p, dim, params.seed)),
        Init::Pca => pca_init(p, dim, params.seed),
        Init::Random => (0..dim)
            .map(|_| (0..n).map(|_| rng.unit() * 20.0 - 10.0).collect())
            .collect(),
    };
    let maxabs = init
        .iter()
        .flatten()
        .fold(0f64, |m, x| m.max(x.abs()))
        .max(1e-12);
    let mut emb = vec![0f32; n * dim];
    for c in 0..dim.min(init.len()) {
        for i in 0..n {
            emb[i * dim + c] = (init[c][i] * 10.0 / maxabs + rng.normal() * 1e-4) as f32;
        }
    }
    for c in 0..dim {
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for i in 0..n {
            lo = lo.min(emb[i * dim + c]);
            hi = hi.max(emb[i * dim + c]);
        }
        let span = (hi - lo).max(1e-12);
        for i in 0..n {
            emb[i * dim + c] = 10.0 * (emb[i * dim + c] - lo) / span;
        }
    }

    let n_epochs = params
        .n_epochs
        .unwrap_or(if n <= 10_000 { 500 } else { 200 });
    let (a, b) = find_ab_params(params.spread, params.min_dist);
    let wmax = graph.weight.iter().fold(0f32, |m, w| m.max(*w)) as f64;
    // Edges too weak to be sampled even once are dropped, as in umap-learn.
    let mut edges: Vec<Edge> = Vec::with_capacity(graph.weight.len());
    for ((h, t), w) in graph.head.iter().zip(&graph.tail).zip(&graph.weight) {
        if (*w as f64) >= wmax / n_epochs as f64 {
            let samples = n_epochs as f64 * (*w as f64 / wmax);
            edges.push((*h, *t, n_epochs as f64 / samples));
        }
    }
    // the graph and the initial layout are no longer needed (1M points: 360 MB and 40 MB)
    drop(graph);
    drop(init);
    let opt = Optimize {
        dim,
        a: a as f32,
        b: b as f32,
        neg_rate: params.negative_sample_rate as f64,
        n_epochs,
        seed: params.seed,
    };
    if n > PARALLEL_MIN_POINTS {
        optimize_blocks(&mut emb, n, &edges, opt, cancel, steps)?;
    } else {
        optimize_serial(&mut emb, n, &edges, opt, &mut rng, cancel, steps)?;
    }
    Ok(Points {
        n,
        d: dim,
        data: emb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reduce::knn::{knn, KnnMethod, Metric};

    #[test]
    fn ab_params_match_umap_learn() {
        // umap-learn 0.5.12: find_ab_params(1.0, 0.1) = (1.5769, 0.8951); (1.0, 0.0) = (1.9328, 0.7905)
        let (a, b) = find_ab_params(1.0, 0.1);
        assert!(
            (a - 1.577).abs() < 0.01 && (b - 0.895).abs() < 0.01,
            "{a} {b}"
        );
        let (a, b) = find_ab_params(1.0, 0.0);
        assert!(
            (a - 1.9328).abs() < 0.002 && (b - 0.7905).abs() < 0.002,
            "{a} {b}"
        );
    }

    /// The fuzzy union against a plain hash-map version of it.
    #[test]
    fn fuzzy_union_matches_a_hash_map_reference() {
        let mut r = Rng::new(3);
        let data: Vec<f32> = (0..600 * 6).map(|_| r.normal() as f32).collect();
        let p = Points::new(6, data);
        let never = || false;
        let g = knn(&p, 8, Metric::Euclidean, KnnMethod::Exact, &never).unwrap();
        let fs = fuzzy_simplicial_set(&g);
        let (rhos, sigmas) = smooth_knn_dist(&g);
        let mut w = std::collections::HashMap::new();
        for i in 0..g.n {
            let (idx, ds) = g.row(i);
            for (&j, &d) in idx.iter().zip(ds) {
                if j as usize != i {
                    let d = d as f64;
                    let v = if d - rhos[i] <= 0.0 || sigmas[i] == 0.0 {
                        1.0
                    } else {
                        (-(d - rhos[i]) / sigmas[i]).exp()
                    };
                    w.insert((i as u32, j), v as f32);
                }
            }
        }
        let mut want: Vec<(u32, u32, f32)> = Vec::new();
        for (&(i, j), &a) in &w {
            let b = w.get(&(j, i)).copied().unwrap_or(0.0);
            want.push((i, j, a + b - a * b));
            if b == 0.0 {
                want.push((j, i, a + b - a * b));
            }
        }
        want.sort_by_key(|x| (x.0, x.1));
        let got: Vec<(u32, u32, f32)> = (0..fs.head.len())
            .map(|e| (fs.head[e], fs.tail[e], fs.weight[e]))
            .collect();
        assert_eq!(got, want);
    }

    /// Above PARALLEL_MIN_POINTS: the block optimisation gives the same layout on 1 and 3
    /// threads, and still separates the blobs.
    #[test]
    fn block_layout_is_the_same_whatever_the_threads() {
        let mut r = Rng::new(9);
        let centers: Vec<Vec<f32>> = (0..4)
            .map(|_| (0..8).map(|_| 3.0 * r.normal() as f32).collect())
            .collect();
        let n = PARALLEL_MIN_POINTS + 500;
        let mut data = Vec::new();
        for i in 0..n {
            for x in &centers[i % 4] {
                data.push(x + r.normal() as f32 * 0.5);
            }
        }
        let p = Points::new(8, data);
        let never = || false;
        let g = knn(&p, 10, Metric::Euclidean, KnnMethod::Hnsw, &never).unwrap();
        let params = UmapParams {
            n_components: 2,
            n_epochs: Some(30),
            ..Default::default()
        };
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| umap(&p, &g, params, &never).unwrap())
        };
        let e1 = run(1);
        let e3 = run(3);
        assert_eq!(e1.data, e3.data, "same seed, same layout, any threads");
        let g2 = knn(&e1, 2, Metric::Euclidean, KnnMethod::Hnsw, &never).unwrap();
        let same = (0..n)
            .filter(|&i| g2.row(i).0[1] as usize % 4 == i % 4)
            .count();
        assert!(same as f64 >= 0.99 * n as f64, "{same} of {n}");
    }

    #[test]
    fn separates_clusters_and_is_deterministic() {
        let mut r = Rng::new(5);
        let centers: Vec<Vec<f32>> = (0..4)
            .map(|_| (0..20).map(|_| 3.0 * r.normal() as f32).collect())
            .collect();
        let mut data = Vec::new();
        for i in 0..400 {
            for x in &centers[i % 4] {
                data.push(x + r.normal() as f32 * 0.5);
            }
        }
        let p = Points::new(20, data);
        let never = || false;
        let g = knn(&p, 15, Metric::Euclidean, KnnMethod::Exact, &never).unwrap();
        let params = UmapParams {
            n_components: 2,
            ..Default::default()
        };
        let e1 = umap(&p, &g, params, &never).unwrap();
        let e2 = umap(&p, &g, params, &never).unwrap();
        assert_eq!(e1.data, e2.data, "same seed, same layout");
        // every point's nearest neighbour in the layout belongs to its own blob
        let never = || false;
        let g2 = knn(&e1, 2, Metric::Euclidean, KnnMethod::Exact, &never).unwrap();
        for i in 0..e1.n {
            assert_eq!(g2.row(i).0[1] as usize % 4, i % 4);
        }
    }
}
