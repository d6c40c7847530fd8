//! Exact HDBSCAN's two O(n^2) steps in O(n log n) for low-dimensional points (the 5-d layout of
//! the full classification): core distances by k-nearest-neighbour queries on a k-d tree, and
//! the minimum spanning tree of the mutual reachability graph by Boruvka's algorithm on the same
//! tree (as the `hdbscan` library's `boruvka_kdtree`).
//!
//! The results are the exact ones, not approximations:
//! - core distances are the same values the brute-force scan gives (the same distance function;
//!   the tree only skips boxes whose lower bound, shrunk by a relative 1e-5 against rounding,
//!   exceeds the current k-th distance);
//! - the tree is the minimum spanning tree under the total order (weight, smaller end, larger
//!   end): each round every component takes its lightest outgoing edge in that order, which the
//!   cut property puts in that unique tree; it has the weight of any minimum spanning tree
//!   (Prim's included), and the same tree whatever the number of threads.
//!
//! A query for point i prunes a box when its lower bound max(core_i, the box's least core
//! distance, the distance to the box) exceeds the best edge known for i's component, and skips
//! boxes whose points all lie in i's component. Measured on WordNet's 117,659-point 5-d layout:
//! benches/README.md.

use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use super::hdbscan::Edge;
use crate::base::{euclidean, Cancelled, Points};

/// The k-d tree path is taken up to this dimension (boxes prune poorly above).
pub const KD_MAX_DIM: usize = 16;
/// Points per leaf.
const LEAF: usize = 24;
/// Lower bounds are shrunk by this relative amount, so float rounding never prunes a box that
/// holds a point the distance function puts at the bound.
const SLACK: f64 = 1.0 - 1e-5;

/// A k-d tree over the points: nodes cover ranges of `order`, each with its bounding box.
pub struct KdTree<'a> {
    p: &'a Points,
    /// Point indices, each node's points contiguous.
    order: Vec<usize>,
    /// Per node: start, end (in `order`), children (0 = none: a leaf).
    nodes: Vec<Node>,
    /// Per node: lower corner then upper corner (2 d values).
    boxes: Vec<f32>,
}

#[derive(Clone, Copy)]
struct Node {
    start: usize,
    end: usize,
    left: usize,
    right: usize,
}

impl<'a> KdTree<'a> {
    pub fn new(p: &'a Points) -> Self {
        let mut t = KdTree {
            p,
            order: (0..p.n).collect(),
            nodes: Vec::with_capacity(2 * p.n / LEAF + 2),
            boxes: Vec::new(),
        };
        t.build(0, p.n);
        t
    }

    fn build(&mut self, start: usize, end: usize) -> usize {
        let d = self.p.d;
        let id = self.nodes.len();
        self.nodes.push(Node {
            start,
            end,
            left: 0,
            right: 0,
        });
        let mut lo = vec![f32::INFINITY; d];
        let mut hi = vec![f32::NEG_INFINITY; d];
        for &i in &self.order[start..end] {
            for (k, &x) in self.p.row(i).iter().enumerate() {
                lo[k] = lo[k].min(x);
                hi[k] = hi[k].max(x);
            }
        }
        self.boxes.extend_from_slice(&lo);
        self.boxes.extend_from_slice(&hi);
        if end - start > LEAF {
            let dim = (0..d)
                .max_by(|&a, &b| (hi[a] - lo[a]).total_cmp(&(hi[b] - lo[b])))
                .unwrap_or(0);
            let mid = start + (end - start) / 2;
            let p = self.p;
            self.order[start..end].select_nth_unstable_by(mid - start, |&a, &b| {
                p.row(a)[dim].total_cmp(&p.row(b)[dim]).then(a.cmp(&b))
            });
            let left = self.build(start, mid);
            let right = self.build(mid, end);
            self.nodes[id].left = left;
            self.nodes[id].right = right;
        }
        id
    }

    /// Distance from `x` to the node's box (0 inside), shrunk by [`SLACK`].
    fn box_dist(&self, node: usize, x: &[f32]) -> f64 {
        let d = self.p.d;
        let b = &self.boxes[node * 2 * d..(node + 1) * 2 * d];
        let mut s = 0f64;
        for k in 0..d {
            let v = x[k] as f64;
            let g = (b[k] as f64 - v).max(v - b[d + k] as f64).max(0.0);
            s += g * g;
        }
        s.sqrt() * SLACK
    }

    /// The distance from point `i` to its k-th nearest point, itself included (k >= 1).
    fn kth_distance(&self, i: usize, k: usize) -> f64 {
        let x = self.p.row(i);
        // the k smallest distances so far, kept sorted
        let mut best: Vec<f64> = Vec::with_capacity(k + 1);
        let mut stack = vec![0usize];
        while let Some(node) = stack.pop() {
            let bound = if best.len() == k {
                best[k - 1]
            } else {
                f64::INFINITY
            };
            if self.box_dist(node, x) > bound {
                continue;
            }
            let nd = self.nodes[node];
            if nd.left == 0 {
                for &j in &self.order[nd.start..nd.end] {
                    let dj = euclidean(x, self.p.row(j));
                    if best.len() < k || dj < best[k - 1] {
                        let pos = best.partition_point(|&b| b <= dj);
                        best.insert(pos, dj);
                        best.truncate(k);
                    }
                }
            } else {
                // nearer child last, so it is searched first
                let (dl, dr) = (self.box_dist(nd.left, x), self.box_dist(nd.right, x));
                if dl < dr {
                    stack.push(nd.right);
                    stack.push(nd.left);
                } else {
                    stack.push(nd.left);
                    stack.push(nd.right);
                }
            }
        }
        best.last().copied().unwrap_or(0.0)
    }
}

/// Core distance of every point: distance to its k-th nearest neighbour, itself included (the
/// values `hdbscan::core_distances` computes by brute force).
pub fn core_distances_kd(
    tree: &KdTree,
    k: usize,
    cancel: &(dyn Fn() -> bool + Sync),
) -> Result<Vec<f64>, Cancelled> {
    let n = tree.p.n;
    let k = k.clamp(1, n.max(1));
    let out: Vec<Option<f64>> = (0..n)
        .into_par_iter()
        .map(|i| {
            if i % 1024 == 0 && cancel() {
                return None;
            }
            Some(tree.kth_distance(i, k))
        })
        .collect();
    out.into_iter().collect::<Option<Vec<_>>>().ok_or(Cancelled)
}

/// An edge in the total order the tree is unique under: weight, then smaller end, larger end.
fn better(w: f64, a: usize, b: usize, than: (f64, usize, usize)) -> bool {
    let key = (a.min(b), a.max(b));
    match w.total_cmp(&than.0) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        std::cmp::Ordering::Equal => key < (than.1.min(than.2), than.1.max(than.2)),
    }
}

const NONE: usize = usize::MAX;

/// The minimum spanning tree of the mutual reachability graph (n - 1 edges), by Boruvka's
/// algorithm on the k-d tree.
pub fn mst_boruvka(
    tree: &KdTree,
    core: &[f64],
    cancel: &(dyn Fn() -> bool + Sync),
) -> Result<Vec<Edge>, Cancelled> {
    let p = tree.p;
    let n = p.n;
    let nodes = tree.nodes.len();
    // the least core distance under each node (children come after their parent)
    let mut min_core = vec![f64::INFINITY; nodes];
    for id in (0..nodes).rev() {
        let nd = tree.nodes[id];
        min_core[id] = if nd.left == 0 {
            tree.order[nd.start..nd.end]
                .iter()
                .map(|&i| core[i])
                .fold(f64::INFINITY, f64::min)
        } else {
            min_core[nd.left].min(min_core[nd.right])
        };
    }
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    let mut comp: Vec<usize> = (0..n).collect();
    let mut edges: Vec<Edge> = Vec::with_capacity(n.saturating_sub(1));
    let mut node_comp = vec![NONE; nodes];
    while edges.len() + 1 < n {
        if cancel() {
            return Err(Cancelled);
        }
        // which nodes lie wholly in one component
        for id in (0..nodes).rev() {
            let nd = tree.nodes[id];
            node_comp[id] = if nd.left == 0 {
                let c = comp[tree.order[nd.start]];
                if tree.order[nd.start..nd.end].iter().all(|&i| comp[i] == c) {
                    c
                } else {
                    NONE
                }
            } else if node_comp[nd.left] == node_comp[nd.right] {
                node_comp[nd.left]
            } else {
                NONE
            };
        }
        // the best weight found so far per component (f64 bits: order-preserving for w >= 0)
        let bound: Vec<AtomicU64> = (0..n)
            .map(|_| AtomicU64::new(f64::INFINITY.to_bits()))
            .collect();
        let found: Vec<Option<(f64, usize, usize)>> = (0..n)
            .into_par_iter()
            .map(|i| {
                if i % 1024 == 0 && cancel() {
                    return None;
                }
                nearest_outside(tree, core, &comp, &node_comp, &min_core, &bound, i)
            })
            .collect();
        if cancel() {
            return Err(Cancelled);
        }
        // each component's lightest outgoing edge
        let mut best: Vec<Option<(f64, usize, usize)>> = vec![None; n];
        for (w, a, b) in found.into_iter().flatten() {
            let c = comp[a];
            if best[c].is_none_or(|t| better(w, a, b, t)) {
                best[c] = Some((w, a, b));
            }
        }
        let before = edges.len();
        for (w, a, b) in best.into_iter().flatten() {
            let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
            if ra != rb {
                parent[ra] = rb;
                edges.push(Edge {
                    a: a.min(b),
                    b: a.max(b),
                    w,
                });
            }
        }
        if edges.len() == before {
            // cannot happen with n - 1 edges missing (every component has an outgoing edge)
            break;
        }
        for (i, c) in comp.iter_mut().enumerate() {
            *c = find(&mut parent, i);
        }
    }
    // in the tree's order: single linkage then merges equal weights the same way every time
    edges.sort_by(|x, y| x.w.total_cmp(&y.w).then(x.a.cmp(&y.a)).then(x.b.cmp(&y.b)));
    Ok(edges)
}

/// Point i's lightest edge (in [`better`]'s order) to a point of another component, or None
/// when its component already knows a lighter one than any i could have.
fn nearest_outside(
    tree: &KdTree,
    core: &[f64],
    comp: &[usize],
    node_comp: &[usize],
    min_core: &[f64],
    bound: &[AtomicU64],
    i: usize,
) -> Option<(f64, usize, usize)> {
    let p = tree.p;
    let c = comp[i];
    let ci = core[i];
    let comp_bound = || f64::from_bits(bound[c].load(Ordering::Relaxed));
    // every edge of i weighs at least core_i
    if ci > comp_bound() {
        return None;
    }
    let x = p.row(i);
    let mut best: Option<(f64, usize, usize)> = None;
    let mut stack = vec![0usize];
    while let Some(node) = stack.pop() {
        if node_comp[node] == c {
            continue;
        }
        let lb = tree.box_dist(node, x).max(ci).max(min_core[node] * SLACK);
        let limit = best.map_or(f64::INFINITY, |b| b.0).min(comp_bound());
        // strictly greater: an edge of equal weight may still win on its ends
        if lb > limit {
            continue;
        }
        let nd = tree.nodes[node];
        if nd.left == 0 {
            for &j in &tree.order[nd.start..nd.end] {
                if comp[j] == c {
                    continue;
                }
                let w = euclidean(x, p.row(j)).max(ci).max(core[j]);
                if best.is_none_or(|b| better(w, i, j, b)) {
                    best = Some((w, i, j));
                }
            }
        } else {
            let (dl, dr) = (tree.box_dist(nd.left, x), tree.box_dist(nd.right, x));
            if dl < dr {
                stack.push(nd.right);
                stack.push(nd.left);
            } else {
                stack.push(nd.left);
                stack.push(nd.right);
            }
        }
    }
    if let Some((w, _, _)) = best {
        bound[c].fetch_min(w.to_bits(), Ordering::Relaxed);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::hdbscan::{core_distances, mst_prim};
    use crate::reduce::rng::Rng;

    fn never() -> bool {
        false
    }

    fn points(n: usize, d: usize, seed: u64, grid: bool) -> Points {
        let mut r = Rng::new(seed);
        let mut data = Vec::with_capacity(n * d);
        for i in 0..n {
            let centre = (i % 7) as f32 * 3.0;
            for _ in 0..d {
                let v = if grid {
                    // many exact ties: coordinates on a coarse grid, duplicates included
                    ((r.unit() as f32) * 6.0).floor()
                } else {
                    centre + (r.unit() as f32)
                };
                data.push(v);
            }
        }
        Points::new(d, data)
    }

    #[test]
    fn core_distances_are_the_brute_force_values() {
        for (n, d, grid) in [
            (3000, 5, false),
            (2000, 3, true),
            (500, 12, false),
            (30, 2, false),
        ] {
            let p = points(n, d, 7, grid);
            let t = KdTree::new(&p);
            for k in [1, 5, 15] {
                let a = core_distances(&p, k, &never).unwrap();
                let b = core_distances_kd(&t, k, &never).unwrap();
                assert_eq!(a, b, "n {n} d {d} k {k}");
            }
        }
    }

    #[test]
    fn the_tree_weighs_what_prims_weighs() {
        for (n, d, grid) in [
            (3000, 5, false),
            (2000, 3, true),
            (800, 10, false),
            (2, 5, false),
        ] {
            let p = points(n, d, 11, grid);
            let t = KdTree::new(&p);
            let core = core_distances_kd(&t, 10.min(n), &never).unwrap();
            let a = mst_prim(&p, &core, &never).unwrap();
            let b = mst_boruvka(&t, &core, &never).unwrap();
            assert_eq!(b.len(), n - 1);
            // a spanning tree
            let mut seen = vec![false; n];
            let mut parent: Vec<usize> = (0..n).collect();
            fn find(p: &mut [usize], mut x: usize) -> usize {
                while p[x] != x {
                    x = p[x];
                }
                x
            }
            for e in &b {
                seen[e.a] = true;
                seen[e.b] = true;
                let (ra, rb) = (find(&mut parent, e.a), find(&mut parent, e.b));
                assert_ne!(ra, rb, "a cycle");
                parent[ra] = rb;
            }
            assert!(n < 2 || seen.iter().all(|&s| s));
            let wa: f64 = a.iter().map(|e| e.w).sum();
            let wb: f64 = b.iter().map(|e| e.w).sum();
            assert!((wa - wb).abs() <= 1e-9 * wa.max(1.0), "n {n}: {wa} vs {wb}");
            // the same sorted weights: the same single-linkage heights
            let mut sa: Vec<f64> = a.iter().map(|e| e.w).collect();
            let mut sb: Vec<f64> = b.iter().map(|e| e.w).collect();
            sa.sort_by(f64::total_cmp);
            sb.sort_by(f64::total_cmp);
            assert_eq!(sa, sb);
        }
    }

    #[test]
    fn the_tree_is_the_same_whatever_the_threads() {
        let p = points(4000, 5, 3, true);
        let t = KdTree::new(&p);
        let core = core_distances_kd(&t, 5, &never).unwrap();
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| mst_boruvka(&t, &core, &never).unwrap());
        let many = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap()
            .install(|| mst_boruvka(&t, &core, &never).unwrap());
        let key = |v: &[Edge]| -> Vec<(usize, usize, u64)> {
            v.iter().map(|e| (e.a, e.b, e.w.to_bits())).collect()
        };
        assert_eq!(key(&one), key(&many));
    }

    #[test]
    fn cancel_stops_both_steps() {
        let p = points(3000, 5, 1, false);
        let t = KdTree::new(&p);
        let yes = || true;
        assert!(core_distances_kd(&t, 5, &yes).is_err());
        let core = core_distances_kd(&t, 5, &never).unwrap();
        assert!(mst_boruvka(&t, &core, &yes).is_err());
    }
}
