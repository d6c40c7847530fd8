//! Approximate HDBSCAN for large inputs: core distances and candidate edges come from a
//! k-nearest-neighbour graph (exact or HNSW) instead of all n^2 pairs. The minimum spanning
//! forest of the mutual-reachability kNN graph (Kruskal) is joined into one tree by linking the
//! forest's components through their most central members; the condensed tree, excess-of-mass
//! selection and labelling are then the exact path's own code. Accuracy against the exact path
//! is measured (ARI) in tests and in the benchmark.

use super::hdbscan::{
    condense_tree, label, select_eom, single_linkage, Edge, Hdbscan, HdbscanParams,
};
use crate::base::{euclidean, Cancelled, Points};
use crate::reduce::knn::{knn, KnnMethod, Metric};

/// Neighbours per point used for candidate edges (at least min_samples).
pub const DEFAULT_GRAPH_K: usize = 24;

struct Dsu(Vec<usize>);
impl Dsu {
    fn find(&mut self, mut x: usize) -> usize {
        while self.0[x] != x {
            self.0[x] = self.0[self.0[x]];
            x = self.0[x];
        }
        x
    }
}

pub fn hdbscan_knn(
    p: &Points,
    params: HdbscanParams,
    graph_k: usize,
    method: KnnMethod,
    cancel: &(dyn Fn() -> bool + Sync),
) -> Result<Hdbscan, Cancelled> {
    let n = p.n;
    let mcs = params.min_cluster_size.max(2);
    let ms = params.min_samples.unwrap_or(mcs).max(1);
    if n < 2 {
        return Ok(Hdbscan {
            labels: vec![-1; n],
            probabilities: vec![0.0; n],
            n_clusters: 0,
        });
    }
    let k = graph_k.max(ms).min(n);
    let g = knn(p, k, Metric::Euclidean, method, cancel)?;
    let core: Vec<f64> = (0..n).map(|i| g.row(i).1[ms.min(k) - 1] as f64).collect();
    let mut cand: Vec<Edge> = Vec::with_capacity(n * (k - 1));
    for i in 0..n {
        let (idx, ds) = g.row(i);
        for (&j, &d) in idx.iter().zip(ds).skip(1) {
            let j = j as usize;
            if j != i {
                cand.push(Edge {
                    a: i.min(j),
                    b: i.max(j),
                    w: (d as f64).max(core[i]).max(core[j]),
                });
            }
        }
    }
    if cancel() {
        return Err(Cancelled);
    }
    cand.sort_by(|x, y| x.w.total_cmp(&y.w).then(x.a.cmp(&y.a)).then(x.b.cmp(&y.b)));
    let mut dsu = Dsu((0..n).collect());
    let mut tree: Vec<Edge> = Vec::with_capacity(n - 1);
    for e in cand {
        let (ra, rb) = (dsu.find(e.a), dsu.find(e.b));
        if ra != rb {
            dsu.0[ra] = rb;
            tree.push(e);
        }
    }
    if tree.len() < n - 1 {
        connect_components(p, &core, &mut dsu, &mut tree, cancel)?;
    }
    let merges = single_linkage(n, tree);
    let ctree = condense_tree(n, &merges, mcs);
    let selected = if params.leaf {
        super::hdbscan::select_leaf(n, &ctree)
    } else {
        select_eom(
            n,
            &ctree,
            params.allow_single_cluster,
            params.max_cluster_size,
        )
    };
    let (labels, probabilities) = label(n, &ctree, &selected);
    Ok(Hdbscan {
        labels,
        probabilities,
        n_clusters: selected.len(),
    })
}

/// Join the forest: each component is represented by its member nearest the component's mean,
/// and the representatives are joined by Prim's algorithm on their mutual reachability.
fn connect_components(
    p: &Points,
    core: &[f64],
    dsu: &mut Dsu,
    tree: &mut Vec<Edge>,
    cancel: &(dyn Fn() -> bool + Sync),
) -> Result<(), Cancelled> {
    let n = p.n;
    let mut comp_of = std::collections::HashMap::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for i in 0..n {
        let r = dsu.find(i);
        let c = *comp_of.entry(r).or_insert_with(|| {
            members.push(Vec::new());
            members.len() - 1
        });
        members[c].push(i);
    }
    let reps: Vec<usize> = members
        .iter()
        .map(|m| {
            let mut mean = vec![0f64; p.d];
            for &i in m {
                mean.iter_mut()
                    .zip(p.row(i))
                    .for_each(|(a, x)| *a += *x as f64);
            }
            mean.iter_mut().for_each(|a| *a /= m.len() as f64);
            let meanf: Vec<f32> = mean.iter().map(|x| *x as f32).collect();
            *m.iter()
                .min_by(|a, b| {
                    euclidean(p.row(**a), &meanf).total_cmp(&euclidean(p.row(**b), &meanf))
                })
                .unwrap()
        })
        .collect();
    let c = reps.len();
    let mut in_tree = vec![false; c];
    let mut best = vec![f64::INFINITY; c];
    let mut from = vec![0usize; c];
    let mut cur = 0usize;
    in_tree[0] = true;
    for step in 1..c {
        if step % 64 == 0 && cancel() {
            return Err(Cancelled);
        }
        for j in 0..c {
            if !in_tree[j] {
                let (a, b) = (reps[cur], reps[j]);
                let w = euclidean(p.row(a), p.row(b)).max(core[a]).max(core[b]);
                if w < best[j] {
                    best[j] = w;
                    from[j] = cur;
                }
            }
        }
        let next = (0..c)
            .filter(|j| !in_tree[*j])
            .min_by(|a, b| best[*a].total_cmp(&best[*b]))
            .unwrap();
        in_tree[next] = true;
        tree.push(Edge {
            a: reps[from[next]],
            b: reps[next],
            w: best[next],
        });
        cur = next;
    }
    Ok(())
}
