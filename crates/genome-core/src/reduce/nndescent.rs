//! Approximate k-nearest neighbours by NN-descent (Dong, Moses & Li, WWW 2011), the method
//! umap-learn uses through pynndescent: an initial graph from random-projection trees (points
//! that fall in the same leaf are compared), then rounds of local joins (two neighbours of one
//! point are likely neighbours of each other) until a round improves almost nothing.
//!
//! Every point's list is improved only by its own thread, from updates computed against the
//! graph as it stood at the start of the round and applied in a fixed order, so the result is
//! the same for a seed whatever the number of threads. Memory is O(n k) besides the points.

use rayon::prelude::*;

use super::knn::{distance, Knn, Metric};
use super::rng::Rng;
use crate::base::{mix64, Cancelled, Points};

/// Points whose local joins are computed before their updates are applied (bounds the memory
/// of pending updates), and points per parallel task within it.
const SPAN: usize = 32_768;
/// Pairs of leaf-mates measured before their updates are applied (at most 12 bytes each).
const SPAN_PAIRS: usize = 4_000_000;
const BLOCK: usize = 1_024;

/// Settings; the defaults follow pynndescent's where it has one.
#[derive(Debug, Clone, Copy)]
pub struct NnDescentParams {
    /// Random-projection trees for the initial graph (0: 5 + sqrt(n) / 20, at most 32; umap-learn
    /// asks pynndescent for the same, at most 64).
    pub trees: usize,
    /// Most points in a tree's leaf (0: 5 k within 60..=256, pynndescent's).
    pub leaf_size: usize,
    /// Most new and most old candidates a point joins per round (0: 60, as umap-learn asks).
    pub max_candidates: usize,
    /// Rounds at most (0: max(5, log2 n)).
    pub max_rounds: usize,
    /// Stop when a round makes fewer than delta x n x k improvements.
    pub delta: f64,
    pub seed: u64,
}

impl Default for NnDescentParams {
    fn default() -> Self {
        Self {
            trees: 0,
            leaf_size: 0,
            max_candidates: 0,
            max_rounds: 0,
            delta: 0.001,
            seed: 42,
        }
    }
}

/// The neighbour lists being built: `k` slots per point (self excluded), sorted by distance,
/// `u32::MAX` where empty; `new` marks entries not yet joined.
struct Graph {
    k: usize,
    idx: Vec<u32>,
    dist: Vec<f32>,
    new: Vec<bool>,
}

impl Graph {
    /// Apply updates (a, b, d): b offered to a's list and a to b's. Each thread improves only
    /// its own range of points and reads the updates in their order, so the result does not
    /// depend on the number of threads. Returns how many lists changed.
    fn apply(&mut self, updates: &[Vec<(u32, u32, f32)>]) -> usize {
        let kk = self.k;
        let n = self.idx.len() / kk;
        let per = n.div_ceil(rayon::current_num_threads().max(1)).max(1);
        self.idx
            .par_chunks_mut(per * kk)
            .zip(self.dist.par_chunks_mut(per * kk))
            .zip(self.new.par_chunks_mut(per * kk))
            .enumerate()
            .map(|(t, ((idx, ds), nw))| {
                let lo = t * per;
                let hi = lo + idx.len() / kk;
                let mut c = 0;
                for list in updates {
                    for &(u, v, d) in list {
                        for (a, b) in [(u, v), (v, u)] {
                            let a = a as usize;
                            if (lo..hi).contains(&a) {
                                let r = (a - lo) * kk..(a - lo + 1) * kk;
                                if push(&mut idx[r.clone()], &mut ds[r.clone()], &mut nw[r], b, d) {
                                    c += 1;
                                }
                            }
                        }
                    }
                }
                c
            })
            .sum()
    }

    fn worst(&self, i: usize) -> f32 {
        self.dist[i * self.k + self.k - 1]
    }

    /// The updates of one local join: every pair within `new` and every pair of `new` x `old`,
    /// kept when it improves either point's list as it stands.
    fn join(
        &self,
        new: &[u32],
        old: &[u32],
        dist: impl Fn(usize, usize) -> f32,
        out: &mut Vec<(u32, u32, f32)>,
    ) {
        for (x, &u) in new.iter().enumerate() {
            for &v in new[x + 1..].iter().chain(old) {
                if u == v {
                    continue;
                }
                let d = dist(u as usize, v as usize);
                if d < self.worst(u as usize) || d < self.worst(v as usize) {
                    out.push((u, v, d));
                }
            }
        }
    }
}

/// Insert `j` at distance `d` into one point's sorted list; true when it changed.
fn push(idx: &mut [u32], dist: &mut [f32], new: &mut [bool], j: u32, d: f32) -> bool {
    let k = idx.len();
    if dist[k - 1].partial_cmp(&d) != Some(std::cmp::Ordering::Greater) || idx.contains(&j) {
        return false;
    }
    let mut p = k - 1;
    while p > 0 && (dist[p - 1] > d || (dist[p - 1] == d && idx[p - 1] > j)) {
        idx[p] = idx[p - 1];
        dist[p] = dist[p - 1];
        new[p] = new[p - 1];
        p -= 1;
    }
    idx[p] = j;
    dist[p] = d;
    new[p] = true;
    true
}

/// Leaves of one random-projection tree over `ids`: a random hyperplane between two random
/// points splits each node until it holds at most `leaf` points.
/// None when `cancel` said so (polled every 2^16 points split).
fn rp_leaves(
    p: &Points,
    leaf: usize,
    seed: u64,
    cancel: &(dyn Fn() -> bool + Sync),
) -> Option<Vec<Vec<u32>>> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    let mut stack: Vec<Vec<u32>> = vec![(0..p.n as u32).collect()];
    let d = p.d;
    let mut normal = vec![0f32; d];
    let mut work = 0usize;
    while let Some(ids) = stack.pop() {
        work += ids.len();
        if work >= 1 << 16 {
            work = 0;
            if cancel() {
                return None;
            }
        }
        if ids.len() <= leaf {
            out.push(ids);
            continue;
        }
        let a = ids[rng.below(ids.len())] as usize;
        let mut b = ids[rng.below(ids.len())] as usize;
        for _ in 0..8 {
            if b != a && p.row(a) != p.row(b) {
                break;
            }
            b = ids[rng.below(ids.len())] as usize;
        }
        let (ra, rb) = (p.row(a), p.row(b));
        let mut offset = 0f32;
        for t in 0..d {
            normal[t] = ra[t] - rb[t];
            offset -= normal[t] * (ra[t] + rb[t]) * 0.5;
        }
        let (mut left, mut right) = (Vec::new(), Vec::new());
        for &i in &ids {
            let s = crate::base::dot(&normal, p.row(i as usize)) + offset;
            // exact ties (duplicates on the plane) go to a random side
            if s > 0.0 || (s == 0.0 && rng.next_u64() & 1 == 0) {
                left.push(i);
            } else {
                right.push(i);
            }
        }
        if left.is_empty() || right.is_empty() {
            // all on one side (duplicates): split at random in halves
            let mut all = ids;
            for t in (1..all.len()).rev() {
                all.swap(t, rng.below(t + 1));
            }
            let half = all.len() / 2;
            right = all.split_off(half);
            left = all;
        }
        stack.push(right);
        stack.push(left);
    }
    Some(out)
}

/// Candidate lists of one round, compressed: `start[i]..start[i+1]` into `items`.
struct Csr {
    start: Vec<usize>,
    items: Vec<u32>,
}

impl Csr {
    fn row(&self, i: usize) -> &[u32] {
        &self.items[self.start[i]..self.start[i + 1]]
    }
}

/// A point's candidates: its own entries and the points that list it (reverse), at most `max`
/// chosen by a seeded random priority, as pynndescent samples them; each row sorted.
fn candidates(g: &Graph, n: usize, want_new: bool, max: usize, seed: u64) -> Csr {
    let k = g.k;
    let wanted = |i: usize, s: usize| {
        let j = g.idx[i * k + s];
        (j != u32::MAX && g.new[i * k + s] == want_new).then_some(j as usize)
    };
    let mut start = vec![0usize; n + 1];
    for i in 0..n {
        for s in 0..k {
            if let Some(j) = wanted(i, s) {
                start[i + 1] += 1;
                start[j + 1] += 1;
            }
        }
    }
    for i in 0..n {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut all = vec![0u32; start[n]];
    for i in 0..n {
        for s in 0..k {
            if let Some(j) = wanted(i, s) {
                all[fill[i]] = j as u32;
                fill[i] += 1;
                all[fill[j]] = i as u32;
                fill[j] += 1;
            }
        }
    }
    let rows: Vec<Vec<u32>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut v = all[start[i]..start[i + 1]].to_vec();
            // the same point twice (forward and reverse) keeps one slot
            v.sort_unstable();
            v.dedup();
            if v.len() > max {
                v.sort_by_key(|&j| mix64(seed ^ ((i as u64) << 32) ^ j as u64));
                v.truncate(max);
                v.sort_unstable();
            }
            v
        })
        .collect();
    let mut start = Vec::with_capacity(n + 1);
    let mut items = Vec::with_capacity(rows.iter().map(Vec::len).sum());
    start.push(0);
    for r in rows {
        items.extend(r);
        start.push(items.len());
    }
    Csr { start, items }
}

/// `k` nearest neighbours of every point, the point itself first (as [`super::knn::knn`]).
pub fn nn_descent(
    p: &Points,
    k: usize,
    metric: Metric,
    params: NnDescentParams,
    cancel: &(dyn Fn() -> bool + Sync),
) -> Result<Knn, Cancelled> {
    nn_descent_steps(p, k, metric, params, cancel, &mut |_, _| {})
}

/// [`nn_descent`], telling `steps(done, total)` before each tree's leaf joins and each round of
/// local joins (on the calling thread; the last rounds may be skipped when the graph has
/// settled).
pub fn nn_descent_steps(
    p: &Points,
    k: usize,
    metric: Metric,
    params: NnDescentParams,
    cancel: &(dyn Fn() -> bool + Sync),
    steps: &mut dyn FnMut(usize, usize),
) -> Result<Knn, Cancelled> {
    let n = p.n;
    if n <= 1 {
        return Ok(Knn {
            n,
            k: 1,
            indices: (0..n as u32).collect(),
            dists: vec![0.0; n],
        });
    }
    let k = k.clamp(1, n);
    let kk = (k - 1).max(1); // neighbours besides the point itself
    let trees = if params.trees > 0 {
        params.trees
    } else {
        (5 + ((n as f64).sqrt() / 20.0).round() as usize).min(32)
    };
    let leaf = if params.leaf_size > 0 {
        params.leaf_size
    } else {
        (5 * k).clamp(60, 256)
    };
    let max_cand = if params.max_candidates > 0 {
        params.max_candidates
    } else {
        60
    };
    let rounds = if params.max_rounds > 0 {
        params.max_rounds
    } else {
        ((n.max(2) as f64).log2().round() as usize).max(5)
    };
    let dist = |a: usize, b: usize| distance(metric, p.row(a), p.row(b));

    // 1. initial graph: the pairs of points that share a leaf, tree by tree (each pair once,
    // kept when it improves either list), leaves in spans to bound the pending updates
    let mut g = Graph {
        k: kk,
        idx: vec![u32::MAX; n * kk],
        dist: vec![f32::INFINITY; n * kk],
        new: vec![true; n * kk],
    };
    let forest: Vec<Vec<Vec<u32>>> = (0..trees)
        .into_par_iter()
        .map(|t| rp_leaves(p, leaf, mix64(params.seed ^ (t as u64 + 1)), cancel))
        .collect::<Option<_>>()
        .ok_or(Cancelled)?;
    for (t, leaves) in forest.iter().enumerate() {
        steps(t, trees + rounds);
        // leaves in spans of about SPAN_PAIRS pairs: the pending updates stay bounded (on the
        // first tree every pair is an update)
        let mut spans: Vec<&[Vec<u32>]> = Vec::new();
        let (mut from, mut pairs) = (0, 0usize);
        for (l, ids) in leaves.iter().enumerate() {
            pairs += ids.len() * ids.len().saturating_sub(1) / 2;
            if pairs >= SPAN_PAIRS || l + 1 == leaves.len() {
                spans.push(&leaves[from..=l]);
                from = l + 1;
                pairs = 0;
            }
        }
        for span in spans {
            let updates: Vec<Vec<(u32, u32, f32)>> = span
                .par_chunks(16)
                .map(|chunk| {
                    if cancel() {
                        return None;
                    }
                    let mut out = Vec::new();
                    for ids in chunk {
                        g.join(ids, &[], dist, &mut out);
                    }
                    Some(out)
                })
                .collect::<Option<_>>()
                .ok_or(Cancelled)?;
            g.apply(&updates);
        }
    }
    drop(forest);
    // points with an incomplete list (leaves smaller than k): random others
    let mut rng = Rng::new(params.seed ^ 0x5eed);
    for i in 0..n {
        let mut tries = 0;
        while g.idx[i * kk + kk - 1] == u32::MAX && tries < 4 * kk && n > 1 {
            tries += 1;
            let j = rng.below(n);
            if j != i {
                let d = dist(i, j);
                let r = i * kk..(i + 1) * kk;
                push(
                    &mut g.idx[r.clone()],
                    &mut g.dist[r.clone()],
                    &mut g.new[r],
                    j as u32,
                    d,
                );
            }
        }
    }

    // 2. local joins
    for round in 0..rounds {
        if cancel() {
            return Err(Cancelled);
        }
        steps(trees + round, trees + rounds);
        let seed = mix64(params.seed ^ 0xd1b5_4a32_d192_ed03 ^ round as u64);
        let news = candidates(&g, n, true, max_cand, seed);
        let olds = candidates(&g, n, false, max_cand, seed ^ 1);
        // the sampled new entries are joined now: old from here on
        for i in 0..n {
            let c = news.row(i);
            for s in 0..kk {
                let j = g.idx[i * kk + s];
                if j == u32::MAX || (g.new[i * kk + s] && c.binary_search(&j).is_ok()) {
                    g.new[i * kk + s] = false;
                }
            }
        }
        // the points in spans of SPAN: updates (a, b, d) from each block of a span, computed in
        // parallel against the lists as they stand, then applied by each thread to its own range
        // of points in block order (memory: one span's updates)
        let mut changed = 0usize;
        for span in (0..n).step_by(SPAN) {
            let span_end = (span + SPAN).min(n);
            let updates: Vec<Vec<(u32, u32, f32)>> = (span..span_end)
                .step_by(BLOCK)
                .collect::<Vec<_>>()
                .into_par_iter()
                .map(|b| {
                    if cancel() {
                        return None;
                    }
                    let mut out = Vec::new();
                    for i in b..(b + BLOCK).min(span_end) {
                        g.join(news.row(i), olds.row(i), dist, &mut out);
                    }
                    Some(out)
                })
                .collect::<Option<_>>()
                .ok_or(Cancelled)?;
            changed += g.apply(&updates);
        }
        if (changed as f64) < params.delta * n as f64 * kk as f64 {
            break;
        }
    }

    // 3. self first, then the list
    let mut indices = Vec::with_capacity(n * k);
    let mut dists = Vec::with_capacity(n * k);
    for i in 0..n {
        indices.push(i as u32);
        dists.push(0.0);
        for s in 0..k - 1 {
            let (mut j, mut d) = (g.idx[i * kk + s], g.dist[i * kk + s]);
            if j == u32::MAX {
                // fewer points than k: repeat the farthest found (as the HNSW path does)
                j = *indices.last().expect("self pushed");
                d = *dists.last().expect("self pushed");
            }
            indices.push(j);
            dists.push(d);
        }
    }
    Ok(Knn {
        n,
        k,
        indices,
        dists,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reduce::knn::{knn, recall, KnnMethod};

    fn clustered(n: usize, d: usize, clusters: usize, spread: f32, seed: u64) -> Points {
        let mut r = Rng::new(seed);
        let centers: Vec<Vec<f32>> = (0..clusters)
            .map(|_| (0..d).map(|_| r.normal() as f32).collect())
            .collect();
        let mut data = Vec::with_capacity(n * d);
        for i in 0..n {
            for x in &centers[i % clusters] {
                data.push(x + spread * r.normal() as f32);
            }
        }
        Points::new(d, data).l2_normalized()
    }

    #[test]
    fn finds_nearly_all_true_neighbours_and_puts_self_first() {
        let p = clustered(3000, 32, 30, 0.5, 7);
        let never = || false;
        let e = knn(&p, 15, Metric::Cosine, KnnMethod::Exact, &never).unwrap();
        let a = nn_descent(&p, 15, Metric::Cosine, NnDescentParams::default(), &never).unwrap();
        let rec = recall(&e, &a);
        assert!(rec > 0.97, "recall {rec}");
        for i in 0..p.n {
            let (idx, ds) = a.row(i);
            assert_eq!(idx[0] as usize, i);
            assert_eq!(ds[0], 0.0);
            assert!(ds.windows(2).all(|w| w[0] <= w[1]), "sorted");
            // distances are the true ones
            for (j, d) in idx.iter().zip(ds).skip(1) {
                assert_ne!(*j as usize, i);
                let t = distance(Metric::Cosine, p.row(i), p.row(*j as usize));
                assert!((t - d).abs() < 1e-6);
            }
        }
        // Euclidean too
        let e2 = knn(&p, 10, Metric::Euclidean, KnnMethod::Exact, &never).unwrap();
        let a2 = nn_descent(
            &p,
            10,
            Metric::Euclidean,
            NnDescentParams::default(),
            &never,
        )
        .unwrap();
        assert!(recall(&e2, &a2) > 0.97);
    }

    #[test]
    fn the_same_for_a_seed_whatever_the_threads() {
        let p = clustered(2000, 16, 10, 0.8, 3);
        let never = || false;
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let three = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let a = one.install(|| nn_descent(&p, 15, Metric::Cosine, Default::default(), &never));
        let b = three.install(|| nn_descent(&p, 15, Metric::Cosine, Default::default(), &never));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.indices, b.indices);
        assert_eq!(a.dists, b.dists);
    }

    #[test]
    fn duplicates_tiny_inputs_and_cancel() {
        let never = || false;
        let mut data = Vec::new();
        for _ in 0..300 {
            data.extend([1.0f32, 0.0, 0.0]);
        }
        let p = Points::new(3, data).l2_normalized();
        let g = nn_descent(&p, 5, Metric::Cosine, Default::default(), &never).unwrap();
        assert!(g.dists.iter().all(|d| *d == 0.0));
        // fewer points than k
        let p = clustered(4, 8, 2, 0.1, 1);
        let g = nn_descent(&p, 10, Metric::Cosine, Default::default(), &never).unwrap();
        assert_eq!(g.indices.len(), 4 * 4);
        let always = || true;
        let p = clustered(500, 8, 5, 0.3, 2);
        assert!(nn_descent(&p, 10, Metric::Cosine, Default::default(), &always).is_err());
    }
}
