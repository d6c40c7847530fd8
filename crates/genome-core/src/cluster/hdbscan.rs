//! Exact HDBSCAN with scikit-learn's semantics (`sklearn.cluster.HDBSCAN`, metric euclidean,
//! cluster_selection_method "eom", cluster_selection_epsilon 0, alpha 1):
//! core distances (the k-th nearest neighbour with the point itself counted, k = min_samples),
//! mutual reachability, minimum spanning tree (Prim), single-linkage tree, condensed tree with
//! min_cluster_size, excess-of-mass selection, labels (-1 = noise) and membership probabilities.
//!
//! Two ways to the same tree, chosen by size:
//! - dense (d >= 32 and n^2 x 4 bytes <= DENSE_MAX_BYTES, i.e. up to ~23k points): the whole distance matrix
//!   is computed once by blocked f64 GEMM (|a|^2 + |b|^2 - 2ab, tiny distances recomputed directly
//!   to avoid cancellation) and stored as f32; core distances and Prim then only read it. GEMM does
//!   the O(n^2 d) part at near-peak FLOP rate, which the pairwise loops cannot.
//! - streaming (larger n): distances are recomputed rather than stored, O(n) memory.
//!
//! The heavy loops run on rayon; `cancel` is polled between stages and inside the long loops.

use rayon::prelude::*;

use super::boruvka::{core_distances_kd, mst_boruvka, KdTree, KD_MAX_DIM};
use crate::base::{euclidean, Cancelled, Points};

#[derive(Debug, Clone, Copy)]
pub struct HdbscanParams {
    pub min_cluster_size: usize,
    /// Defaults to min_cluster_size, as in scikit-learn.
    pub min_samples: Option<usize>,
    pub allow_single_cluster: bool,
    /// Clusters with more points are never selected (their children are), as scikit-learn's
    /// `max_cluster_size`; None = no limit.
    pub max_cluster_size: Option<usize>,
    /// Select the leaves of the condensed tree (finest clusters) instead of excess of mass,
    /// as scikit-learn's cluster_selection_method="leaf".
    pub leaf: bool,
}

impl Default for HdbscanParams {
    fn default() -> Self {
        Self {
            min_cluster_size: 5,
            min_samples: None,
            allow_single_cluster: false,
            max_cluster_size: None,
            leaf: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Hdbscan {
    /// Cluster per point, 0..k-1, or -1 for noise.
    pub labels: Vec<i32>,
    pub probabilities: Vec<f64>,
    pub n_clusters: usize,
}

/// A minimum spanning tree edge.
#[derive(Debug, Clone, Copy)]
pub struct Edge {
    pub a: usize,
    pub b: usize,
    pub w: f64,
}

/// Largest distance matrix the exact path keeps in memory (2 GiB: 23,170 points).
pub const DENSE_MAX_BYTES: usize = 2 << 30;

/// Below this dimension distances are cheap to recompute and the matrix's memory is not worth it
/// (the reduced 5-d coordinates of full_classify stay on the streaming path).
pub const DENSE_MIN_DIM: usize = 32;

/// Low-dimensional point sets at least this large take the k-d tree path (core distances by
/// tree queries, the tree by Boruvka: O(n log n) instead of O(n^2); see `boruvka`). Smaller
/// ones keep Prim's algorithm, whose labels are scikit-learn's: mutual reachability has many
/// edges of equal weight (every neighbour within a point's core distance is at exactly that
/// distance), and which of them a minimum spanning tree holds decides how single linkage orders
/// equal merges, which can change the excess-of-mass selection (on the committed 5-d fixture of
/// real embeddings, ARI 0.04 between the labels of the two paths). Above 20k points Prim's O(n^2)
/// costs minutes (95 s at 117k in 5-d) and there is no reference to be identical to.
pub const KD_MIN_POINTS: usize = 20_000;

/// True when the k-d tree path is used for n points of dimension d.
pub fn uses_kd_tree(n: usize, d: usize) -> bool {
    d <= KD_MAX_DIM && n >= KD_MIN_POINTS && !uses_dense(n, d)
}

/// True when the dense path is used for n points of dimension d.
pub fn uses_dense(n: usize, d: usize) -> bool {
    d >= DENSE_MIN_DIM && n.saturating_mul(n).saturating_mul(4) <= DENSE_MAX_BYTES
}

/// Full n x n Euclidean distance matrix (row-major, f32), by row blocks of f64 GEMM on rayon.
pub fn distance_matrix(
    p: &Points,
    cancel: &(dyn Fn() -> bool + Sync),
) -> Result<Vec<f32>, Cancelled> {
    let (n, d) = (p.n, p.d);
    let x: Vec<f64> = p.data.iter().map(|&v| v as f64).collect();
    let norms: Vec<f64> = x.chunks(d).map(|r| r.iter().map(|v| v * v).sum()).collect();
    let mut m = vec![0f32; n * n];
    const B: usize = 128;
    m.par_chunks_mut(B * n)
        .enumerate()
        .try_for_each(|(bi, block)| {
            if cancel() {
                return Err(Cancelled);
            }
            let r0 = bi * B;
            let rows = block.len() / n;
            let mut g = vec![0f64; rows * n];
            // SAFETY: A is rows x d (row stride d), B = X^T is d x n (x read with row stride 1,
            // column stride d), C is rows x n; all slices are large enough for these shapes.
            #[allow(unsafe_code)] // matrixmultiply's GEMM takes raw pointers
            unsafe {
                matrixmultiply::dgemm(
                    rows,
                    d,
                    n,
                    1.0,
                    x[r0 * d..].as_ptr(),
                    d as isize,
                    1,
                    x.as_ptr(),
                    1,
                    d as isize,
                    0.0,
                    g.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
            for i in 0..rows {
                let a = r0 + i;
                for j in 0..n {
                    let mut s = norms[a] + norms[j] - 2.0 * g[i * n + j];
                    // cancellation: when the squared distance is tiny next to the norms, the GEMM
                    // form has no correct digits left; recompute those few pairs directly.
                    if s < 1e-6 * (norms[a] + norms[j]) {
                        s = x[a * d..(a + 1) * d]
                            .iter()
                            .zip(&x[j * d..(j + 1) * d])
                            .map(|(u, v)| (u - v) * (u - v))
                            .sum();
                    }
                    block[i * n + j] = s.max(0.0).sqrt() as f32;
                }
            }
            Ok(())
        })?;
    Ok(m)
}

/// Core distances from a dense distance matrix.
pub fn core_distances_dense(m: &[f32], n: usize, k: usize) -> Vec<f64> {
    let k = k.clamp(1, n.max(1));
    m.par_chunks(n)
        .map(|row| {
            let mut r = row.to_vec();
            let (_, kth, _) = r.select_nth_unstable_by(k - 1, |a, b| a.total_cmp(b));
            *kth as f64
        })
        .collect()
}

/// Prim's algorithm on the mutual reachability graph read from a dense distance matrix. Same
/// tie rule as `mst_prim` (the lowest index among equal candidates).
pub fn mst_prim_dense(
    m: &[f32],
    n: usize,
    core: &[f64],
    cancel: &(dyn Fn() -> bool + Sync),
) -> Result<Vec<Edge>, Cancelled> {
    let mut in_tree = vec![false; n];
    let mut best = vec![f64::INFINITY; n];
    let mut from = vec![0usize; n];
    let mut edges = Vec::with_capacity(n.saturating_sub(1));
    let mut cur = 0usize;
    in_tree[0] = true;
    for step in 1..n {
        if step % 256 == 0 && cancel() {
            return Err(Cancelled);
        }
        let row = &m[cur * n..(cur + 1) * n];
        let cc = core[cur];
        let mut next = usize::MAX;
        let mut nv = f64::INFINITY;
        for j in 0..n {
            if in_tree[j] {
                continue;
            }
            let mr = (row[j] as f64).max(cc).max(core[j]);
            if mr < best[j] {
                best[j] = mr;
                from[j] = cur;
            }
            if next == usize::MAX || best[j] < nv {
                nv = best[j];
                next = j;
            }
        }
        in_tree[next] = true;
        edges.push(Edge {
            a: from[next],
            b: next,
            w: nv,
        });
        cur = next;
    }
    Ok(edges)
}

/// Core distance of every point: distance to its k-th nearest neighbour, itself included.
pub fn core_distances(
    p: &Points,
    k: usize,
    cancel: &(dyn Fn() -> bool + Sync),
) -> Result<Vec<f64>, Cancelled> {
    let k = k.clamp(1, p.n.max(1));
    let out: Vec<Option<f64>> = (0..p.n)
        .into_par_iter()
        .map(|i| {
            if i % 256 == 0 && cancel() {
                return None;
            }
            let mut d: Vec<f64> = (0..p.n).map(|j| euclidean(p.row(i), p.row(j))).collect();
            let (_, kth, _) = d.select_nth_unstable_by(k - 1, |a, b| a.total_cmp(b));
            Some(*kth)
        })
        .collect();
    out.into_iter().collect::<Option<Vec<_>>>().ok_or(Cancelled)
}

/// Prim's algorithm on the mutual reachability graph, computed on the fly.
pub fn mst_prim(
    p: &Points,
    core: &[f64],
    cancel: &(dyn Fn() -> bool + Sync),
) -> Result<Vec<Edge>, Cancelled> {
    let n = p.n;
    let mut in_tree = vec![false; n];
    let mut best = vec![f64::INFINITY; n];
    let mut from = vec![0usize; n];
    let mut edges = Vec::with_capacity(n.saturating_sub(1));
    let mut cur = 0usize;
    in_tree[0] = true;
    for step in 1..n {
        if step % 64 == 0 && cancel() {
            return Err(Cancelled);
        }
        let cp = p.row(cur);
        let cc = core[cur];
        // update candidate distances from the newly added point, in parallel
        best.par_iter_mut()
            .zip(from.par_iter_mut())
            .enumerate()
            .filter(|(j, _)| !in_tree[*j])
            .for_each(|(j, (b, f))| {
                let mr = euclidean(cp, p.row(j)).max(cc).max(core[j]);
                if mr < *b {
                    *b = mr;
                    *f = cur;
                }
            });
        let mut next = usize::MAX;
        let mut nv = f64::INFINITY;
        for j in 0..n {
            if !in_tree[j] && (next == usize::MAX || best[j] < nv) {
                nv = best[j];
                next = j;
            }
        }
        in_tree[next] = true;
        edges.push(Edge {
            a: from[next],
            b: next,
            w: nv,
        });
        cur = next;
    }
    Ok(edges)
}

/// One merge of the single-linkage tree: nodes < n are points, node n+i is merge i.
#[derive(Debug, Clone, Copy)]
pub struct Merge {
    pub left: usize,
    pub right: usize,
    pub dist: f64,
    pub size: usize,
}

pub fn single_linkage(n: usize, mut edges: Vec<Edge>) -> Vec<Merge> {
    edges.sort_by(|x, y| x.w.total_cmp(&y.w)); // stable: equal weights keep MST order
    let mut parent: Vec<usize> = (0..2 * n).collect();
    let mut size = vec![1usize; 2 * n];
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    let mut merges = Vec::with_capacity(edges.len());
    for (i, e) in edges.iter().enumerate() {
        let ra = find(&mut parent, e.a);
        let rb = find(&mut parent, e.b);
        let node = n + i;
        size[node] = size[ra] + size[rb];
        parent[ra] = node;
        parent[rb] = node;
        merges.push(Merge {
            left: ra,
            right: rb,
            dist: e.w,
            size: size[node],
        });
    }
    merges
}

/// A row of the condensed tree: `child` (a point < n, or a cluster >= n) leaves `parent` at `lambda`.
#[derive(Debug, Clone, Copy)]
pub struct CondensedRow {
    pub parent: usize,
    pub child: usize,
    pub lambda: f64,
    pub size: usize,
}

fn lambda_of(dist: f64) -> f64 {
    if dist > 0.0 {
        1.0 / dist
    } else {
        f64::INFINITY
    }
}

pub fn condense_tree(n: usize, merges: &[Merge], min_cluster_size: usize) -> Vec<CondensedRow> {
    if merges.is_empty() {
        return Vec::new();
    }
    let root = n + merges.len() - 1;
    let node_size = |x: usize| if x < n { 1 } else { merges[x - n].size };
    // leaves (points) under a node
    let leaves = |x: usize| {
        let mut out = Vec::new();
        let mut stack = vec![x];
        while let Some(v) = stack.pop() {
            if v < n {
                out.push(v);
            } else {
                stack.push(merges[v - n].left);
                stack.push(merges[v - n].right);
            }
        }
        out
    };
    let mut relabel = vec![0usize; root + 1];
    relabel[root] = n;
    let mut next_label = n + 1;
    let mut rows = Vec::new();
    // breadth-first from the root, over internal nodes whose subtree is still a cluster
    let mut queue = std::collections::VecDeque::from([root]);
    while let Some(node) = queue.pop_front() {
        let m = merges[node - n];
        let lambda = lambda_of(m.dist);
        let (l, r) = (m.left, m.right);
        let (lc, rc) = (node_size(l), node_size(r));
        let parent = relabel[node];
        let big_l = lc >= min_cluster_size;
        let big_r = rc >= min_cluster_size;
        if big_l && big_r {
            for (c, cs) in [(l, lc), (r, rc)] {
                relabel[c] = next_label;
                next_label += 1;
                rows.push(CondensedRow {
                    parent,
                    child: relabel[c],
                    lambda,
                    size: cs,
                });
                if c >= n {
                    queue.push_back(c);
                }
            }
        } else {
            for (c, big) in [(l, big_l), (r, big_r)] {
                if big {
                    // the cluster carries on under the same label
                    relabel[c] = parent;
                    if c >= n {
                        queue.push_back(c);
                    }
                } else {
                    for p in leaves(c) {
                        rows.push(CondensedRow {
                            parent,
                            child: p,
                            lambda,
                            size: 1,
                        });
                    }
                }
            }
        }
    }
    rows
}

/// Excess-of-mass selection; returns the selected cluster ids (>= n), ascending.
pub fn select_eom(
    n: usize,
    tree: &[CondensedRow],
    allow_single_cluster: bool,
    max_cluster_size: Option<usize>,
) -> Vec<usize> {
    if tree.is_empty() {
        return Vec::new();
    }
    let max_id = tree.iter().map(|r| r.child.max(r.parent)).max().unwrap();
    let mut birth = vec![0f64; max_id + 1];
    for r in tree.iter().filter(|r| r.child >= n) {
        birth[r.child] = r.lambda;
    }
    let root = n;
    birth[root] = 0.0;
    let mut stability = vec![0f64; max_id + 1];
    for r in tree {
        stability[r.parent] += (r.lambda - birth[r.parent]) * r.size as f64;
    }
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); max_id + 1];
    let mut size = vec![n; max_id + 1];
    for r in tree.iter().filter(|r| r.child >= n) {
        children[r.parent].push(r.child);
        size[r.child] = r.size;
    }
    let too_big = |c: usize| max_cluster_size.is_some_and(|m| size[c] > m);
    // cluster ids are handed out consecutively from the root (n) up
    let mut nodes: Vec<usize> = (n..=max_id).collect();
    nodes.sort_unstable_by(|a, b| b.cmp(a)); // children (larger ids) before parents
    if !allow_single_cluster {
        nodes.retain(|c| *c != root);
    }
    let mut is_cluster = vec![false; max_id + 1];
    for c in &nodes {
        is_cluster[*c] = true;
    }
    for &node in &nodes {
        let sub: f64 = children[node].iter().map(|c| stability[*c]).sum();
        if sub > stability[node] || too_big(node) {
            is_cluster[node] = false;
            stability[node] = sub;
        } else {
            let mut stack = children[node].clone();
            while let Some(c) = stack.pop() {
                is_cluster[c] = false;
                stack.extend(children[c].iter().copied());
            }
        }
    }
    (n..=max_id).filter(|c| is_cluster[*c]).collect()
}

/// Leaf selection: the clusters of the condensed tree that do not split into clusters further;
/// the root alone when the tree never splits. (scikit-learn selects the root there too, but with
/// allow_single_cluster it labelled all 15 points of a one-blob case noise; [`label`] keeps them
/// in the root's cluster, so a pet with one look gets one cluster.)
pub fn select_leaf(n: usize, tree: &[CondensedRow]) -> Vec<usize> {
    if tree.is_empty() {
        return Vec::new();
    }
    let max_id = tree.iter().map(|r| r.child.max(r.parent)).max().unwrap();
    let mut has_child = vec![false; max_id + 1];
    let mut is_node = vec![false; max_id + 1];
    is_node[n] = true;
    for r in tree.iter().filter(|r| r.child >= n) {
        has_child[r.parent] = true;
        is_node[r.child] = true;
    }
    (n..=max_id)
        .filter(|c| is_node[*c] && !has_child[*c])
        .collect()
}

/// Labels and probabilities from the condensed tree and the selected clusters.
pub fn label(n: usize, tree: &[CondensedRow], selected: &[usize]) -> (Vec<i32>, Vec<f64>) {
    let max_id = tree
        .iter()
        .map(|r| r.child.max(r.parent))
        .max()
        .unwrap_or(n);
    let mut cluster_parent = vec![usize::MAX; max_id + 1];
    let mut point_row: Vec<Option<CondensedRow>> = vec![None; n];
    for r in tree {
        if r.child >= n {
            cluster_parent[r.child] = r.parent;
        } else {
            point_row[r.child] = Some(*r);
        }
    }
    let mut label_of = vec![-1i32; max_id + 1];
    for (i, c) in selected.iter().enumerate() {
        label_of[*c] = i as i32;
    }
    // deepest lambda reached inside each selected cluster (its own rows only, as scikit-learn)
    let mut max_lambda = vec![0f64; max_id + 1];
    for r in tree {
        if r.lambda > max_lambda[r.parent] {
            max_lambda[r.parent] = r.lambda;
        }
    }
    let mut labels = vec![-1i32; n];
    let mut probs = vec![0f64; n];
    for p in 0..n {
        let Some(row) = point_row[p] else { continue };
        let mut c = row.parent;
        loop {
            if label_of[c] >= 0 {
                labels[p] = label_of[c];
                let ml = max_lambda[c];
                probs[p] = if ml == 0.0 || row.lambda.is_infinite() {
                    1.0
                } else {
                    row.lambda.min(ml) / ml
                };
                break;
            }
            if cluster_parent[c] == usize::MAX {
                break;
            }
            c = cluster_parent[c];
        }
    }
    (labels, probs)
}

/// The whole exact pipeline.
pub fn hdbscan(
    p: &Points,
    params: HdbscanParams,
    cancel: &(dyn Fn() -> bool + Sync),
) -> Result<Hdbscan, Cancelled> {
    let mcs = params.min_cluster_size.max(2);
    if p.n < 2 {
        return Ok(Hdbscan {
            labels: vec![-1; p.n],
            probabilities: vec![0.0; p.n],
            n_clusters: 0,
        });
    }
    let k = params.min_samples.unwrap_or(mcs);
    let mst = if uses_dense(p.n, p.d) {
        let m = distance_matrix(p, cancel)?;
        let core = core_distances_dense(&m, p.n, k);
        mst_prim_dense(&m, p.n, &core, cancel)?
    } else if uses_kd_tree(p.n, p.d) {
        let tree = KdTree::new(p);
        let core = core_distances_kd(&tree, k, cancel)?;
        mst_boruvka(&tree, &core, cancel)?
    } else {
        let core = core_distances(p, k, cancel)?;
        mst_prim(p, &core, cancel)?
    };
    if cancel() {
        return Err(Cancelled);
    }
    let merges = single_linkage(p.n, mst);
    let tree = condense_tree(p.n, &merges, mcs);
    let selected = if params.leaf {
        select_leaf(p.n, &tree)
    } else {
        select_eom(
            p.n,
            &tree,
            params.allow_single_cluster,
            params.max_cluster_size,
        )
    };
    let (labels, probabilities) = label(p.n, &tree, &selected);
    Ok(Hdbscan {
        labels,
        probabilities,
        n_clusters: selected.len(),
    })
}

/// Adjusted Rand index of two labelings (noise -1 is treated as one more label, as
/// sklearn.metrics.adjusted_rand_score does).
pub fn adjusted_rand_index(a: &[i32], b: &[i32]) -> f64 {
    use std::collections::HashMap;
    assert_eq!(a.len(), b.len());
    let n = a.len() as f64;
    let mut table: HashMap<(i32, i32), f64> = HashMap::new();
    let mut ra: HashMap<i32, f64> = HashMap::new();
    let mut rb: HashMap<i32, f64> = HashMap::new();
    for (x, y) in a.iter().zip(b) {
        *table.entry((*x, *y)).or_default() += 1.0;
        *ra.entry(*x).or_default() += 1.0;
        *rb.entry(*y).or_default() += 1.0;
    }
    let c2 = |v: f64| v * (v - 1.0) / 2.0;
    let sum_ij: f64 = table.values().map(|v| c2(*v)).sum();
    let sum_a: f64 = ra.values().map(|v| c2(*v)).sum();
    let sum_b: f64 = rb.values().map(|v| c2(*v)).sum();
    let expected = sum_a * sum_b / c2(n);
    let max = (sum_a + sum_b) / 2.0;
    if (max - expected).abs() < 1e-12 {
        return 1.0;
    }
    (sum_ij - expected) / (max - expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> bool {
        false
    }

    #[test]
    fn two_separated_blobs_and_an_outlier() {
        let mut rows = Vec::new();
        for i in 0..10 {
            rows.push(vec![0.0 + i as f32 * 0.01, 0.0]);
            rows.push(vec![10.0 + i as f32 * 0.01, 10.0]);
        }
        rows.push(vec![100.0, -100.0]);
        let r = hdbscan(
            &Points::from_rows(&rows),
            HdbscanParams {
                min_cluster_size: 5,
                ..Default::default()
            },
            &never,
        )
        .unwrap();
        assert_eq!(r.n_clusters, 2);
        assert_eq!(r.labels[20], -1);
        assert_eq!(r.probabilities[20], 0.0);
        assert!(r.labels[..20].iter().step_by(2).all(|l| *l == r.labels[0]));
        assert!(r.labels[1..20].iter().step_by(2).all(|l| *l == r.labels[1]));
        assert_ne!(r.labels[0], r.labels[1]);
    }

    #[test]
    fn dense_and_streaming_paths_build_the_same_tree() {
        // 700 points in 48-d around 5 centres, with exact duplicates (distance 0 must stay 0
        // despite the GEMM form's cancellation).
        let mut rng = crate::reduce::rng::Rng::new(7);
        let d = 48;
        let centres: Vec<Vec<f32>> = (0..5)
            .map(|_| (0..d).map(|_| rng.normal() as f32 * 3.0).collect())
            .collect();
        let mut rows: Vec<Vec<f32>> = (0..690)
            .map(|i| {
                centres[i % 5]
                    .iter()
                    .map(|c| c + rng.normal() as f32 * (0.3 + (i % 3) as f32 * 0.2))
                    .collect()
            })
            .collect();
        for i in 0..10 {
            rows.push(rows[i * 7].clone());
        }
        let p = Points::from_rows(&rows);
        let core_s = core_distances(&p, 10, &never).unwrap();
        let m = distance_matrix(&p, &never).unwrap();
        assert_eq!(m[7 * p.n + 690 + 1], 0.0);
        for i in 0..p.n {
            for j in (0..p.n).step_by(37) {
                let direct = euclidean(p.row(i), p.row(j));
                assert!(
                    (m[i * p.n + j] as f64 - direct).abs() <= 1e-5 * direct.max(1e-3),
                    "{i} {j}"
                );
            }
        }
        let core_d = core_distances_dense(&m, p.n, 10);
        for (a, b) in core_s.iter().zip(&core_d) {
            assert!((a - b).abs() <= 1e-5 * a, "{a} {b}");
        }
        let ws: f64 = mst_prim(&p, &core_s, &never)
            .unwrap()
            .iter()
            .map(|e| e.w)
            .sum();
        let wd: f64 = mst_prim_dense(&m, p.n, &core_d, &never)
            .unwrap()
            .iter()
            .map(|e| e.w)
            .sum();
        assert!((ws - wd).abs() <= 1e-5 * ws, "{ws} {wd}");
        // and whole runs agree (the dense path is what hdbscan() takes at this size)
        assert!(uses_dense(p.n, p.d) && !uses_dense(p.n, 5));
        let params = HdbscanParams {
            min_cluster_size: 20,
            ..Default::default()
        };
        let dense = hdbscan(&p, params, &never).unwrap();
        let k = 20;
        let streamed = {
            let core = core_distances(&p, k, &never).unwrap();
            let merges = single_linkage(p.n, mst_prim(&p, &core, &never).unwrap());
            let tree = condense_tree(p.n, &merges, 20);
            let sel = select_eom(p.n, &tree, false, None);
            label(p.n, &tree, &sel).0
        };
        assert_eq!(dense.n_clusters, 5);
        assert!(adjusted_rand_index(&dense.labels, &streamed) > 0.999);
    }

    #[test]
    fn cancel_stops_the_run() {
        let rows: Vec<Vec<f32>> = (0..600).map(|i| vec![i as f32, (i % 7) as f32]).collect();
        let r = hdbscan(&Points::from_rows(&rows), HdbscanParams::default(), &|| {
            true
        });
        assert_eq!(r.unwrap_err(), Cancelled);
    }

    #[test]
    fn ari_basics() {
        assert!((adjusted_rand_index(&[0, 0, 1, 1], &[1, 1, 0, 0]) - 1.0).abs() < 1e-12);
        assert!(adjusted_rand_index(&[0, 0, 1, 1], &[0, 1, 0, 1]) < 0.0);
    }

    #[test]
    fn leaf_selection_takes_the_finest_clusters() {
        // two blobs close together and one far away: the leaves are the three blobs; a single
        // blob is one cluster (the root), as scikit-learn's leaf method gives.
        let mut rows = Vec::new();
        for (cx, seed) in [(0.0f32, 1u32), (4.0, 2), (100.0, 3)] {
            for i in 0..20u32 {
                let a = ((i * 37 + seed * 11) % 20) as f32 / 20.0;
                let b = ((i * 53 + seed * 7) % 20) as f32 / 20.0;
                rows.push(vec![cx + a, b]);
            }
        }
        let never = || false;
        let leaf = HdbscanParams {
            min_cluster_size: 5,
            leaf: true,
            ..Default::default()
        };
        let r = hdbscan(&Points::from_rows(&rows), leaf, &never).unwrap();
        assert_eq!(r.n_clusters, 3, "{:?}", r.labels);
        for b in 0..3 {
            let l = r.labels[b * 20];
            assert!(
                l >= 0
                    && r.labels[b * 20..(b + 1) * 20]
                        .iter()
                        .filter(|x| **x == l)
                        .count()
                        >= 18
            );
        }
        let one = hdbscan(&Points::from_rows(&rows[..20]), leaf, &never).unwrap();
        assert_eq!(one.n_clusters, 1);
    }
}
