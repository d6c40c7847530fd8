//! The capability <-> tool bipartite graph: Node2Vec embeddings (second-order biased random
//! walks, then skip-gram with negative sampling as word2vec trains it), weighted PageRank and
//! the clustering coefficient of capabilities in their one-mode projection.
//!
//! Nodes are numbered left (capabilities) first, then right (tools): left `i` is node `i`,
//! right `j` is node `n_left + j`. Everything here is single-threaded where randomness is
//! involved, so a seed gives the same embeddings on every run and platform.

use serde::{Deserialize, Serialize};

use crate::base::{dot, Cancelled};
use crate::reduce::rng::Rng;

/// Undirected weighted bipartite graph: left = capabilities 0..n_left, right = tools 0..n_right.
///
/// Edges are `(left, right, weight)`. Edges whose weight is not a positive finite number are
/// ignored; an edge given twice counts once with the weights summed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bipartite {
    /// Number of left nodes (capabilities).
    pub n_left: usize,
    /// Number of right nodes (tools).
    pub n_right: usize,
    /// `(left, right, weight > 0)`; indices must be below `n_left` / `n_right`.
    pub edges: Vec<(u32, u32, f32)>,
}

/// Node2Vec hyper-parameters. The defaults (in brackets) suit a graph of ~10k nodes: shorter
/// walks and a smaller dimension than the paper's 80 and 128.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node2VecConfig {
    /// Embedding dimension (64).
    pub dim: usize,
    /// Nodes per walk, the start included (15).
    pub walk_length: usize,
    /// Walks started from every non-isolated node (40).
    pub walks_per_node: usize,
    /// Skip-gram context window on each side; word2vec's dynamic window samples 1..=window (5).
    pub window: usize,
    /// Return parameter: the unnormalised weight of going back to the previous node is w/p (1.0).
    pub p: f64,
    /// In-out parameter: moving away from the previous node has weight w/q (1.0).
    pub q: f64,
    /// Negative samples per positive pair (5).
    pub negatives: usize,
    /// Passes of skip-gram over the walks (1).
    pub epochs: usize,
    /// Initial learning rate, decayed linearly to `1e-4 * learning_rate` as word2vec does (0.025).
    pub learning_rate: f32,
    /// Seed of the walks, the initial vectors and the negative samples.
    pub seed: u64,
}

impl Default for Node2VecConfig {
    fn default() -> Self {
        Self {
            dim: 64,
            walk_length: 15,
            walks_per_node: 40,
            window: 5,
            p: 1.0,
            q: 1.0,
            negatives: 5,
            epochs: 1,
            learning_rate: 0.025,
            seed: 42,
        }
    }
}

/// Node embeddings, row-major: left is n_left x dim, right is n_right x dim. Isolated nodes get
/// all-zero rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeEmbeddings {
    /// Dimension of every row.
    pub dim: usize,
    /// Capability vectors, `n_left * dim` values.
    pub left: Vec<f32>,
    /// Tool vectors, `n_right * dim` values.
    pub right: Vec<f32>,
}

impl NodeEmbeddings {
    /// The vector of capability `i`.
    pub fn left_row(&self, i: usize) -> &[f32] {
        &self.left[i * self.dim..(i + 1) * self.dim]
    }
    /// The vector of tool `j`.
    pub fn right_row(&self, j: usize) -> &[f32] {
        &self.right[j * self.dim..(j + 1) * self.dim]
    }
}

/// Compressed adjacency of the whole graph (left nodes first), neighbours sorted by id,
/// duplicate edges merged, with per-node cumulative weights for sampling.
struct Adjacency {
    /// `offsets[u]..offsets[u + 1]` indexes `nbr`, `w` and `cum` for node `u`.
    offsets: Vec<usize>,
    nbr: Vec<u32>,
    w: Vec<f64>,
    /// Inclusive running sum of `w` within each node's range.
    cum: Vec<f64>,
}

impl Adjacency {
    fn new(g: &Bipartite) -> Self {
        let n = g.n_left + g.n_right;
        let mut lists: Vec<Vec<(u32, f64)>> = vec![Vec::new(); n];
        for &(l, r, w) in &g.edges {
            assert!(
                (l as usize) < g.n_left && (r as usize) < g.n_right,
                "edge ({l}, {r}) out of range for {} x {} nodes",
                g.n_left,
                g.n_right
            );
            if !(w > 0.0 && w.is_finite()) {
                continue;
            }
            let (u, v) = (l, (g.n_left + r as usize) as u32);
            lists[u as usize].push((v, w as f64));
            lists[v as usize].push((u, w as f64));
        }
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0);
        let (mut nbr, mut wv, mut cum) = (Vec::new(), Vec::new(), Vec::new());
        for mut list in lists {
            list.sort_by_key(|&(v, _)| v);
            let mut acc = 0.0;
            let mut last: Option<u32> = None;
            for (v, w) in list {
                acc += w;
                if last == Some(v) {
                    *wv.last_mut().unwrap() += w;
                    *cum.last_mut().unwrap() = acc;
                } else {
                    nbr.push(v);
                    wv.push(w);
                    cum.push(acc);
                    last = Some(v);
                }
            }
            offsets.push(nbr.len());
        }
        Self {
            offsets,
            nbr,
            w: wv,
            cum,
        }
    }

    fn n(&self) -> usize {
        self.offsets.len() - 1
    }

    #[inline]
    fn range(&self, u: usize) -> std::ops::Range<usize> {
        self.offsets[u]..self.offsets[u + 1]
    }

    #[inline]
    fn degree(&self, u: usize) -> usize {
        self.offsets[u + 1] - self.offsets[u]
    }

    /// Total weight of the edges at `u`.
    #[inline]
    fn strength(&self, u: usize) -> f64 {
        let r = self.range(u);
        if r.is_empty() {
            0.0
        } else {
            self.cum[r.end - 1]
        }
    }

    /// A neighbour of `u` drawn with probability proportional to the edge weight (`u` must have
    /// a neighbour).
    #[inline]
    fn sample_first(&self, u: usize, rng: &mut Rng) -> u32 {
        let r = self.range(u);
        let cum = &self.cum[r.clone()];
        let x = rng.unit() * cum[cum.len() - 1];
        let k = cum.partition_point(|&c| c <= x).min(cum.len() - 1);
        self.nbr[r.start + k]
    }

    /// The next node of a Node2Vec walk at `cur`, having come from `prev` (a neighbour of
    /// `cur`). Unnormalised weights: w/p back to `prev`, w for a neighbour of `prev` (none in a
    /// bipartite graph: `prev` and the other neighbours of `cur` are on the same side), w/q for
    /// the rest. So `prev` is chosen with probability (w_prev/p) / (w_prev/p + rest/q), and
    /// otherwise a neighbour other than `prev` proportionally to its weight.
    #[inline]
    fn sample_second(&self, prev: u32, cur: usize, p: f64, q: f64, rng: &mut Rng) -> u32 {
        let r = self.range(cur);
        let nbr = &self.nbr[r.clone()];
        let cum = &self.cum[r.clone()];
        let pp = match nbr.binary_search(&prev) {
            Ok(k) => k,
            // Not reachable from a walk; fall back to a first-order step.
            Err(_) => return self.sample_first(cur, rng),
        };
        let w_prev = self.w[r.start + pp];
        let total = cum[cum.len() - 1];
        let rest = (total - w_prev).max(0.0);
        let back = w_prev / p;
        let x = rng.unit() * (back + rest / q);
        if x < back || rest <= 0.0 || nbr.len() == 1 {
            return prev;
        }
        // Uniform in [0, rest) over the weights of the neighbours other than prev.
        let s = ((x - back) * q).clamp(0.0, rest * (1.0 - f64::EPSILON));
        let before = cum[pp] - w_prev;
        let k = if s < before {
            cum[..pp]
                .partition_point(|&c| c <= s)
                .min(pp.saturating_sub(1))
        } else {
            let s2 = s + w_prev;
            (pp + 1 + cum[pp + 1..].partition_point(|&c| c <= s2)).min(nbr.len() - 1)
        };
        if k == pp {
            // Rounding put us on prev's slot: take a neighbour next to it instead.
            return nbr[if pp + 1 < nbr.len() { pp + 1 } else { pp - 1 }];
        }
        nbr[k]
    }
}

/// `walks_per_node` rounds; in each, every non-isolated node (in an order shuffled by `rng`)
/// starts one walk of `walk_length` nodes. Returned flat: walk `i` is
/// `walks[i * walk_length..(i + 1) * walk_length]`.
fn generate_walks(
    adj: &Adjacency,
    walk_length: usize,
    walks_per_node: usize,
    p: f64,
    q: f64,
    rng: &mut Rng,
    cancel: &dyn Fn() -> bool,
) -> Result<Vec<u32>, Cancelled> {
    let starts: Vec<u32> = (0..adj.n())
        .filter(|&u| adj.degree(u) > 0)
        .map(|u| u as u32)
        .collect();
    if walk_length == 0 {
        return Ok(Vec::new());
    }
    let mut walks = Vec::with_capacity(starts.len() * walks_per_node * walk_length);
    let mut order = starts;
    let mut count = 0usize;
    for _ in 0..walks_per_node {
        // Fisher-Yates.
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        for &s in &order {
            if count.is_multiple_of(1000) && cancel() {
                return Err(Cancelled);
            }
            count += 1;
            walks.push(s);
            if walk_length == 1 {
                continue;
            }
            let mut prev = s;
            let mut cur = adj.sample_first(s as usize, rng);
            walks.push(cur);
            for _ in 2..walk_length {
                let next = adj.sample_second(prev, cur as usize, p, q, rng);
                walks.push(next);
                prev = cur;
                cur = next;
            }
        }
    }
    Ok(walks)
}

/// The sigmoid's input is clamped to +-MAX_EXP, word2vec's bound.
const MAX_EXP: f32 = 6.0;

#[inline]
fn sigmoid(x: f32) -> f32 {
    let x = x.clamp(-MAX_EXP, MAX_EXP);
    1.0 / (1.0 + (-x).exp())
}

/// Uniform integer in 0..n (n < 2^32) by multiply-shift of the high 32 bits: no division,
/// bias below n / 2^32.
#[inline]
fn below32(rng: &mut Rng, n: usize) -> usize {
    (((rng.next_u64() >> 32) * n as u64) >> 32) as usize
}

/// Noise distribution for negative sampling: node ids drawn with probability proportional to
/// count^0.75 (word2vec's unigram table), as a Vose alias table: one random number per draw
/// and 12 bytes per node, so it stays in cache where word2vec's 1e8-entry table would not.
struct NoiseTable {
    /// (keep threshold scaled to 2^32, node kept, alias node).
    slots: Vec<(u32, u32, u32)>,
}

impl NoiseTable {
    fn new(counts: &[u64]) -> Self {
        let nodes: Vec<u32> = (0..counts.len() as u32)
            .filter(|&u| counts[u as usize] > 0)
            .collect();
        let k = nodes.len();
        if k == 0 {
            return Self { slots: Vec::new() };
        }
        let pow: Vec<f64> = nodes
            .iter()
            .map(|&u| (counts[u as usize] as f64).powf(0.75))
            .collect();
        let total: f64 = pow.iter().sum();
        let mut scaled: Vec<f64> = pow.iter().map(|p| p / total * k as f64).collect();
        let mut alias: Vec<usize> = (0..k).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..k).partition(|&i| scaled[i] < 1.0);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            alias[s] = l;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Whatever is left (rounding) keeps itself with probability 1.
        for i in small.into_iter().chain(large) {
            scaled[i] = 1.0;
        }
        let slots = (0..k)
            .map(|i| {
                let t = (scaled[i].clamp(0.0, 1.0) * 4_294_967_296.0).min(u32::MAX as f64) as u32;
                let t = if scaled[i] >= 1.0 { u32::MAX } else { t };
                (t, nodes[i], nodes[alias[i]])
            })
            .collect();
        Self { slots }
    }

    fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    #[inline]
    fn sample(&self, rng: &mut Rng) -> u32 {
        let r = rng.next_u64();
        let i = (((r >> 32) * self.slots.len() as u64) >> 32) as usize;
        let (t, keep, other) = self.slots[i];
        if (r as u32) < t || t == u32::MAX {
            keep
        } else {
            other
        }
    }
}

/// Node2Vec embeddings of every node of `g`: biased second-order random walks (Grover &
/// Leskovec 2016) fed to skip-gram with negative sampling (word2vec: input and output vectors,
/// unigram^0.75 noise, dynamic window, linearly decayed learning rate; the input vectors are
/// returned). Single-threaded, so exactly reproducible for a seed.
///
/// `cancel` is called every 1000 walks and every 10,000 training tokens.
///
/// # Panics
/// When an edge index is out of range, or `p` or `q` is not positive and finite.
pub fn node2vec(
    g: &Bipartite,
    cfg: &Node2VecConfig,
    cancel: &dyn Fn() -> bool,
) -> Result<NodeEmbeddings, Cancelled> {
    assert!(
        cfg.p > 0.0 && cfg.p.is_finite() && cfg.q > 0.0 && cfg.q.is_finite(),
        "node2vec p and q must be positive and finite"
    );
    let adj = Adjacency::new(g);
    let n = adj.n();
    let dim = cfg.dim;
    let mut rng = Rng::new(cfg.seed);
    let len = cfg.walk_length;
    let walks = generate_walks(
        &adj,
        len,
        cfg.walks_per_node,
        cfg.p,
        cfg.q,
        &mut rng,
        cancel,
    )?;

    let mut counts = vec![0u64; n];
    for &u in &walks {
        counts[u as usize] += 1;
    }
    let noise = NoiseTable::new(&counts);

    // word2vec's initialisation: inputs uniform in [-0.5, 0.5) / dim, outputs zero.
    let mut syn0 = vec![0f32; n * dim];
    for (u, row) in syn0.chunks_mut(dim.max(1)).enumerate() {
        if counts[u] > 0 {
            for x in row {
                *x = ((rng.unit() - 0.5) / dim as f64) as f32;
            }
        }
    }
    let mut syn1 = vec![0f32; n * dim];
    let mut neu1e = vec![0f32; dim];

    let total_tokens = (walks.len() as f64) * cfg.epochs as f64;
    let lr0 = cfg.learning_rate;
    let min_lr = lr0 * 1e-4;
    let mut processed = 0usize;
    let mut since_check = 0usize;
    let window = cfg.window;
    if dim > 0 && len > 1 && window > 0 && !noise.is_empty() {
        for _ in 0..cfg.epochs {
            for walk in walks.chunks_exact(len) {
                if since_check >= 10_000 {
                    since_check = 0;
                    if cancel() {
                        return Err(Cancelled);
                    }
                }
                let alpha =
                    (lr0 * (1.0 - processed as f64 / (total_tokens + 1.0)) as f32).max(min_lr);
                for (i, &center) in walk.iter().enumerate() {
                    let b = below32(&mut rng, window);
                    let reach = window - b;
                    let lo = i.saturating_sub(reach);
                    let hi = (i + reach).min(len - 1);
                    for (j, &ctx) in walk.iter().enumerate().take(hi + 1).skip(lo) {
                        if j == i {
                            continue;
                        }
                        let l1 = ctx as usize * dim;
                        neu1e.iter_mut().for_each(|x| *x = 0.0);
                        for d in 0..=cfg.negatives {
                            let (target, label) = if d == 0 {
                                (center, 1.0f32)
                            } else {
                                let t = noise.sample(&mut rng);
                                if t == center {
                                    continue;
                                }
                                (t, 0.0f32)
                            };
                            let l2 = target as usize * dim;
                            let input = &syn0[l1..l1 + dim];
                            let out = &mut syn1[l2..l2 + dim];
                            let f = dot(input, out);
                            let gr = (label - sigmoid(f)) * alpha;
                            for ((e, o), x) in neu1e.iter_mut().zip(out.iter_mut()).zip(input) {
                                *e += gr * *o;
                                *o += gr * *x;
                            }
                        }
                        for (x, e) in syn0[l1..l1 + dim].iter_mut().zip(&neu1e) {
                            *x += *e;
                        }
                    }
                }
                processed += len;
                since_check += len;
            }
        }
    }

    let split = g.n_left * dim;
    let right = syn0.split_off(split);
    Ok(NodeEmbeddings {
        dim,
        left: syn0,
        right,
    })
}

/// PageRank over the undirected weighted graph: from a node, the walk moves to a neighbour with
/// probability proportional to the edge weight; with probability `1 - damping`, and always from
/// an isolated node, it jumps to a node chosen uniformly. Power iteration from the uniform
/// vector until the L1 change is below `n * tol` (networkx's `pagerank(G, alpha=damping,
/// tol=tol, weight='weight')` criterion) or `max_iter` iterations (the last iterate is
/// returned, where networkx raises). Returns (left, right) scores summing to 1 over all nodes.
pub fn pagerank(g: &Bipartite, damping: f64, tol: f64, max_iter: usize) -> (Vec<f64>, Vec<f64>) {
    let adj = Adjacency::new(g);
    let n = adj.n();
    if n == 0 {
        return (Vec::new(), Vec::new());
    }
    let nf = n as f64;
    let strength: Vec<f64> = (0..n).map(|u| adj.strength(u)).collect();
    let mut x = vec![1.0 / nf; n];
    let mut next = vec![0.0; n];
    for _ in 0..max_iter {
        let dangling: f64 = (0..n).filter(|&u| strength[u] == 0.0).map(|u| x[u]).sum();
        let base = (1.0 - damping) / nf + damping * dangling / nf;
        next.iter_mut().for_each(|v| *v = base);
        for u in 0..n {
            if strength[u] == 0.0 {
                continue;
            }
            let share = damping * x[u] / strength[u];
            for k in adj.range(u) {
                next[adj.nbr[k] as usize] += share * adj.w[k];
            }
        }
        let err: f64 = next.iter().zip(&x).map(|(a, b)| (a - b).abs()).sum();
        std::mem::swap(&mut x, &mut next);
        if err < nf * tol {
            break;
        }
    }
    let s: f64 = x.iter().sum();
    if s > 0.0 {
        x.iter_mut().for_each(|v| *v /= s);
    }
    let right = x.split_off(g.n_left);
    (x, right)
}

/// Clustering coefficient of each capability in the capability-capability projection (two
/// capabilities are neighbours when they share a tool; unweighted; networkx's `clustering`
/// definition: triangles / (deg*(deg-1)/2), 0 for degree < 2).
pub fn capability_clustering(g: &Bipartite) -> Vec<f64> {
    use rayon::prelude::*;
    let adj = Adjacency::new(g);
    let nl = g.n_left;
    // Projection: sorted, distinct capability neighbours of each capability.
    let proj: Vec<Vec<u32>> = (0..nl)
        .into_par_iter()
        .map(|u| {
            let mut out: Vec<u32> = adj
                .range(u)
                .flat_map(|k| {
                    let t = adj.nbr[k] as usize;
                    adj.range(t).map(|m| adj.nbr[m])
                })
                .filter(|&v| v as usize != u)
                .collect();
            out.sort_unstable();
            out.dedup();
            out
        })
        .collect();
    (0..nl)
        .into_par_iter()
        .map(|u| {
            let nu = &proj[u];
            let d = nu.len();
            if d < 2 {
                return 0.0;
            }
            // Each triangle at u is seen twice (from both of its other corners).
            let twice: usize = nu
                .iter()
                .map(|&v| sorted_intersection(nu, &proj[v as usize]))
                .sum();
            twice as f64 / (d * (d - 1)) as f64
        })
        .collect()
}

/// Size of the intersection of two sorted, distinct lists.
fn sorted_intersection(a: &[u32], b: &[u32]) -> usize {
    let (mut i, mut j, mut c) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                c += 1;
                i += 1;
                j += 1;
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::cosine;

    fn never() -> bool {
        false
    }

    /// Two communities: capabilities 0..10 with tools 0..8, capabilities 10..20 with tools
    /// 8..16, each capability linked to 3 tools of its own community; capability 20 and tool 16
    /// isolated.
    fn two_communities() -> Bipartite {
        let mut edges = Vec::new();
        let mut rng = Rng::new(5);
        for c in 0..20u32 {
            let base = if c < 10 { 0 } else { 8 };
            let mut tools: Vec<u32> = Vec::new();
            while tools.len() < 3 {
                let t = base + rng.below(8) as u32;
                if !tools.contains(&t) {
                    tools.push(t);
                }
            }
            for t in tools {
                edges.push((c, t, 1.0 + rng.below(3) as f32));
            }
        }
        Bipartite {
            n_left: 21,
            n_right: 17,
            edges,
        }
    }

    fn small_cfg(seed: u64) -> Node2VecConfig {
        Node2VecConfig {
            dim: 16,
            walks_per_node: 20,
            seed,
            ..Default::default()
        }
    }

    #[test]
    fn reproducible_for_a_seed_and_seed_sensitive() {
        let g = two_communities();
        let a = node2vec(&g, &small_cfg(1), &never).unwrap();
        let b = node2vec(&g, &small_cfg(1), &never).unwrap();
        let c = node2vec(&g, &small_cfg(2), &never).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.left, c.left);
        assert_eq!(a.left.len(), 21 * 16);
        assert_eq!(a.right.len(), 17 * 16);
    }

    #[test]
    fn communities_separate_and_isolated_nodes_are_zero() {
        let g = two_communities();
        let e = node2vec(&g, &small_cfg(3), &never).unwrap();
        assert!(e.left_row(20).iter().all(|&x| x == 0.0));
        assert!(e.right_row(16).iter().all(|&x| x == 0.0));
        assert!(e.left_row(0).iter().any(|&x| x != 0.0));
        let (mut within, mut nw, mut across, mut na) = (0.0, 0, 0.0, 0);
        for i in 0..20 {
            for j in (i + 1)..20 {
                let c = cosine(e.left_row(i), e.left_row(j));
                if (i < 10) == (j < 10) {
                    within += c;
                    nw += 1;
                } else {
                    across += c;
                    na += 1;
                }
            }
        }
        let (within, across) = (within / nw as f64, across / na as f64);
        assert!(within > across + 0.4, "within {within} across {across}");
    }

    #[test]
    fn walks_follow_edges_and_p_controls_returns() {
        let g = two_communities();
        let adj = Adjacency::new(&g);
        // Share of steps i -> i+2 that return to node i, over steps from a node of degree >= 2.
        let return_rate = |p: f64, q: f64| {
            let mut rng = Rng::new(9);
            let walks = generate_walks(&adj, 15, 10, p, q, &mut rng, &never).unwrap();
            let (mut back, mut total) = (0usize, 0usize);
            for w in walks.chunks_exact(15) {
                for k in 0..14 {
                    let (a, b) = (w[k] as usize, w[k + 1]);
                    assert!(adj.nbr[adj.range(a)].contains(&b), "walk leaves the edges");
                }
                for k in 0..13 {
                    if adj.degree(w[k + 1] as usize) >= 2 {
                        total += 1;
                        back += usize::from(w[k + 2] == w[k]);
                    }
                }
            }
            back as f64 / total as f64
        };
        let tiny_p = return_rate(1e-6, 1.0);
        let plain = return_rate(1.0, 1.0);
        let huge_p = return_rate(1e6, 1.0);
        let tiny_q = return_rate(1.0, 1e-3);
        assert!(tiny_p > 0.999, "{tiny_p}");
        assert!(huge_p < 1e-3, "{huge_p}");
        assert!(tiny_q < 0.02, "{tiny_q}");
        assert!(plain > 0.1 && plain < 0.6, "{plain}");
    }

    #[test]
    fn second_order_step_has_the_node2vec_probabilities() {
        // Tool 0 (node 3) links capabilities 0, 1, 2 with weights 1, 2, 3. From capability 0
        // into tool 0 with p = 0.5, q = 2: unnormalised 1/0.5 = 2 (return), 2/2 = 1, 3/2 = 1.5.
        let g = Bipartite {
            n_left: 3,
            n_right: 1,
            edges: vec![(0, 0, 1.0), (1, 0, 2.0), (2, 0, 3.0)],
        };
        let adj = Adjacency::new(&g);
        let mut rng = Rng::new(11);
        let mut hits = [0usize; 3];
        let draws = 200_000;
        for _ in 0..draws {
            hits[adj.sample_second(0, 3, 0.5, 2.0, &mut rng) as usize] += 1;
        }
        let expect = [2.0 / 4.5, 1.0 / 4.5, 1.5 / 4.5];
        for k in 0..3 {
            let f = hits[k] as f64 / draws as f64;
            assert!((f - expect[k]).abs() < 0.005, "{k}: {f} vs {}", expect[k]);
        }
        // Coming from capability 2 instead: return 3/0.5 = 6, others 1/2 and 2/2.
        let mut hits = [0usize; 3];
        for _ in 0..draws {
            hits[adj.sample_second(2, 3, 0.5, 2.0, &mut rng) as usize] += 1;
        }
        let expect = [0.5 / 7.5, 1.0 / 7.5, 6.0 / 7.5];
        for k in 0..3 {
            let f = hits[k] as f64 / draws as f64;
            assert!((f - expect[k]).abs() < 0.005, "{k}: {f} vs {}", expect[k]);
        }
    }

    #[test]
    fn noise_table_draws_count_to_the_three_quarters() {
        // 16^0.75 = 8, 1^0.75 = 1, 81^0.75 = 27: probabilities 8/36, 1/36, 27/36; zero counts
        // are never drawn.
        let t = NoiseTable::new(&[0, 16, 1, 81, 0]);
        let mut rng = Rng::new(4);
        let mut hits = [0usize; 5];
        let draws = 360_000;
        for _ in 0..draws {
            hits[t.sample(&mut rng) as usize] += 1;
        }
        assert_eq!((hits[0], hits[4]), (0, 0));
        for (k, e) in [(1, 8.0 / 36.0), (2, 1.0 / 36.0), (3, 27.0 / 36.0)] {
            let f = hits[k] as f64 / draws as f64;
            assert!((f - e).abs() < 0.004, "{k}: {f} vs {e}");
        }
        assert!(NoiseTable::new(&[0, 0]).is_empty());
    }

    #[test]
    fn duplicate_edges_merge_and_bad_weights_are_ignored() {
        let g = Bipartite {
            n_left: 2,
            n_right: 2,
            edges: vec![(0, 0, 1.0), (0, 0, 2.0), (1, 1, 0.0), (1, 0, f32::NAN)],
        };
        let adj = Adjacency::new(&g);
        assert_eq!(adj.degree(0), 1);
        assert_eq!(adj.strength(0), 3.0);
        assert_eq!(adj.degree(1), 0);
        assert_eq!(adj.degree(3), 0);
    }

    #[test]
    fn cancel_returns_err() {
        let g = two_communities();
        assert_eq!(node2vec(&g, &small_cfg(1), &|| true), Err(Cancelled));
        // Cancelling during training (after the walks) also stops it.
        let calls = std::cell::Cell::new(0);
        let late = || {
            calls.set(calls.get() + 1);
            calls.get() > 1
        };
        assert_eq!(node2vec(&g, &small_cfg(1), &late), Err(Cancelled));
    }

    /// Graph for the PageRank and clustering references: 4 capabilities, 4 tools (tool 3
    /// isolated), capability 3 isolated.
    fn reference_graph() -> Bipartite {
        Bipartite {
            n_left: 5,
            n_right: 4,
            edges: vec![
                (0, 0, 1.0),
                (0, 1, 2.0),
                (1, 0, 0.5),
                (1, 2, 1.5),
                (2, 1, 3.0),
                (2, 2, 1.0),
                (4, 2, 2.5),
            ],
        }
    }

    #[test]
    fn pagerank_matches_networkx() {
        // Produced with networkx 3.6.1:
        //   import networkx as nx
        //   E = [(0,0,1.0),(0,1,2.0),(1,0,0.5),(1,2,1.5),(2,1,3.0),(2,2,1.0),(4,2,2.5)]
        //   G = nx.Graph(); G.add_nodes_from(range(9))
        //   G.add_weighted_edges_from((l, 5 + r, w) for l, r, w in E)
        //   pr = nx.pagerank(G, alpha=0.85, tol=1e-14, max_iter=10000, weight='weight')
        //   print([repr(pr[i]) for i in range(9)])
        let expect = [
            0.1295128084319252,
            0.09474588580889437,
            0.15307469660942308,
            0.020547945205479454,
            0.10767216264844295,
            0.0773767416622528,
            0.1915236557387592,
            0.20499815868934343,
            0.020547945205479454,
        ];
        let (l, r) = pagerank(&reference_graph(), 0.85, 1e-14, 10_000);
        assert_eq!((l.len(), r.len()), (5, 4));
        let all: Vec<f64> = l.iter().chain(&r).copied().collect();
        for (a, b) in all.iter().zip(expect) {
            assert!((a - b).abs() < 1e-10, "{a} vs {b}");
        }
        assert!((all.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn clustering_matches_networkx() {
        // Produced with networkx 3.6.1:
        //   from networkx.algorithms import bipartite
        //   E = [(0,0),(0,1),(1,0),(1,2),(2,1),(2,2),(4,2),(5,3),(6,3),(5,4),(7,4),(8,4),(7,1)]
        //   B = nx.Graph(); B.add_nodes_from(range(9)); B.add_nodes_from(range(100, 105))
        //   B.add_edges_from((l, 100 + r) for l, r in E)
        //   P = bipartite.projected_graph(B, range(9)); c = nx.clustering(P)
        //   print([repr(c[i]) for i in range(9)])
        let edges = [
            (0, 0),
            (0, 1),
            (1, 0),
            (1, 2),
            (2, 1),
            (2, 2),
            (4, 2),
            (5, 3),
            (6, 3),
            (5, 4),
            (7, 4),
            (8, 4),
            (7, 1),
        ];
        let g = Bipartite {
            n_left: 9,
            n_right: 5,
            edges: edges.iter().map(|&(l, r)| (l, r, 1.0)).collect(),
        };
        let expect = [
            0.6666666666666666,
            0.6666666666666666,
            0.5,
            0.0,
            1.0,
            0.3333333333333333,
            0.0,
            0.3333333333333333,
            1.0,
        ];
        let c = capability_clustering(&g);
        assert_eq!(c.len(), 9);
        for (a, b) in c.iter().zip(expect) {
            assert!((a - b).abs() < 1e-12, "{c:?}");
        }
    }

    /// Times the defaults on a random graph of the production size. Run with
    /// `cargo test -p genome-core --release --lib rank::graph -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn node2vec_runtime_on_production_size() {
        let (nl, nr, ne) = (6159usize, 4491usize, 6794usize);
        let mut rng = Rng::new(2024);
        let mut edges = Vec::with_capacity(ne);
        let mut seen = std::collections::HashSet::new();
        while edges.len() < ne {
            let (l, r) = (rng.below(nl) as u32, rng.below(nr) as u32);
            if seen.insert((l, r)) {
                edges.push((l, r, 1.0 + rng.below(4) as f32));
            }
        }
        let g = Bipartite {
            n_left: nl,
            n_right: nr,
            edges,
        };
        let t = std::time::Instant::now();
        let e = node2vec(&g, &Node2VecConfig::default(), &never).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let active = Adjacency::new(&g);
        let active = (0..active.n()).filter(|&u| active.degree(u) > 0).count();
        println!(
            "node2vec {nl} x {nr}, {ne} edges, {active} non-isolated nodes: {secs:.2} s ({} tokens)",
            active * 40 * 15
        );
        assert_eq!(e.left.len(), nl * 64);
        let t = std::time::Instant::now();
        let _ = pagerank(&g, 0.85, 1e-10, 1000);
        let _ = capability_clustering(&g);
        println!("pagerank + clustering: {:.3} s", t.elapsed().as_secs_f64());
    }
}
