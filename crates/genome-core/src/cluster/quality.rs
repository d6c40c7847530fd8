//! Cluster quality: the silhouette (Rousseeuw 1987) under cosine distance, as scikit-learn's
//! `silhouette_samples(X, labels, metric="cosine")` computes it over the clustered points (noise,
//! label < 0, left out; a point alone in its cluster scores 0). Quadratic in the points: over
//! more than `max_points` clustered points, an evenly spaced sample of them is scored.

use std::collections::BTreeMap;

use rayon::prelude::*;

use crate::base::{dot, Points};

#[derive(Debug, Clone, PartialEq)]
pub struct Silhouette {
    /// Mean over the scored points (None: fewer than two clusters).
    pub overall: Option<f64>,
    /// Mean per cluster label, over its scored points.
    pub per_cluster: BTreeMap<i32, f64>,
    /// How many points were scored.
    pub scored: usize,
}

pub fn silhouette(points: &Points, labels: &[i32], max_points: usize) -> Silhouette {
    assert_eq!(points.n, labels.len(), "silhouette: one label per point");
    let mut idx: Vec<usize> = (0..points.n).filter(|&i| labels[i] >= 0).collect();
    if idx.len() > max_points.max(2) {
        let n = idx.len();
        let m = max_points.max(2);
        idx = (0..m).map(|j| idx[j * n / m]).collect();
    }
    let norms: Vec<f32> = idx
        .iter()
        .map(|&i| {
            dot(points.row(i), points.row(i))
                .sqrt()
                .max(f32::MIN_POSITIVE)
        })
        .collect();
    let mut clusters: BTreeMap<i32, usize> = BTreeMap::new();
    for &i in &idx {
        *clusters.entry(labels[i]).or_default() += 1;
    }
    if clusters.len() < 2 {
        return Silhouette {
            overall: None,
            per_cluster: BTreeMap::new(),
            scored: idx.len(),
        };
    }
    let slot: BTreeMap<i32, usize> = clusters.keys().enumerate().map(|(s, &l)| (l, s)).collect();
    let counts: Vec<usize> = clusters.values().copied().collect();
    let s: Vec<f64> = (0..idx.len())
        .into_par_iter()
        .map(|a| {
            let mut sum = vec![0f64; counts.len()];
            let (ra, na) = (points.row(idx[a]), norms[a]);
            for (b, &j) in idx.iter().enumerate() {
                if a != b {
                    let c = f64::from(dot(ra, points.row(j)) / (na * norms[b]));
                    sum[slot[&labels[j]]] += 1.0 - c;
                }
            }
            let own = slot[&labels[idx[a]]];
            if counts[own] < 2 {
                return 0.0;
            }
            let ai = sum[own] / (counts[own] - 1) as f64;
            let bi = (0..counts.len())
                .filter(|&k| k != own)
                .map(|k| sum[k] / counts[k] as f64)
                .fold(f64::INFINITY, f64::min);
            let m = ai.max(bi);
            if m > 0.0 {
                (bi - ai) / m
            } else {
                0.0
            }
        })
        .collect();
    let mut per: BTreeMap<i32, (f64, usize)> = BTreeMap::new();
    for (a, v) in s.iter().enumerate() {
        let e = per.entry(labels[idx[a]]).or_default();
        e.0 += v;
        e.1 += 1;
    }
    Silhouette {
        overall: Some(s.iter().sum::<f64>() / s.len() as f64),
        per_cluster: per
            .into_iter()
            .map(|(l, (t, n))| (l, t / n as f64))
            .collect(),
        scored: idx.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_on_four_points() {
        // two tight pairs at right angles, and a noise point that is left out
        let p = Points::new(2, vec![1.0, 0.0, 1.0, 0.1, 0.0, 1.0, 0.1, 1.0, 1.0, 1.0]);
        let s = silhouette(&p, &[0, 0, 1, 1, -1], 100);
        let cos = |a: [f64; 2], b: [f64; 2]| {
            1.0 - (a[0] * b[0] + a[1] * b[1]) / ((a[0].hypot(a[1])) * (b[0].hypot(b[1])))
        };
        let x = [[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]];
        let point = |i: usize, mate: usize, others: [usize; 2]| {
            let a = cos(x[i], x[mate]);
            let b = (cos(x[i], x[others[0]]) + cos(x[i], x[others[1]])) / 2.0;
            (b - a) / a.max(b)
        };
        let want0 = (point(0, 1, [2, 3]) + point(1, 0, [2, 3])) / 2.0;
        assert!((s.per_cluster[&0] - want0).abs() < 1e-6);
        assert_eq!(s.scored, 4);
        assert!(s.overall.unwrap() > 0.8);
        // one cluster: undefined
        assert_eq!(silhouette(&p, &[0, 0, 0, 0, -1], 100).overall, None);
    }
}
