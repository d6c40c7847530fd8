//! From cluster labels to families, the building blocks: centroids (in the embedding space),
//! member similarities (exemplars, calibrated per-family thresholds), stable ids across runs,
//! keyword labels and the reason a run found none; `crate::families::plan` puts them together.
//! Also the nearest-centroid assignment of new rows ([`CentroidSet`], for assign_family).

use rayon::prelude::*;
use std::collections::HashMap;

use crate::base::{cosine, quantile_of, Points};

/// Unit-length mean of the (L2-normalised) members of each cluster 0..k-1.
pub fn centroids(emb: &Points, labels: &[i32], k: usize) -> Vec<Vec<f32>> {
    let mut sums = vec![vec![0f64; emb.d]; k];
    for (i, &l) in labels.iter().enumerate() {
        if l >= 0 {
            let r = emb.row(i);
            let norm = r
                .iter()
                .map(|x| (*x as f64).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-12);
            sums[l as usize]
                .iter_mut()
                .zip(r)
                .for_each(|(s, x)| *s += *x as f64 / norm);
        }
    }
    sums.into_iter()
        .map(|s| {
            let norm = s.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            s.iter().map(|x| (x / norm) as f32).collect()
        })
        .collect()
}

/// Per cluster: the members' cosine to the centroid, highest first, with member indices.
pub fn member_similarities(
    emb: &Points,
    labels: &[i32],
    cents: &[Vec<f32>],
) -> Vec<Vec<(f64, usize)>> {
    let mut out = vec![Vec::new(); cents.len()];
    for (i, &l) in labels.iter().enumerate() {
        if l >= 0 {
            out[l as usize].push((cosine(emb.row(i), &cents[l as usize]), i));
        }
    }
    for v in out.iter_mut() {
        v.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    }
    out
}

/// The q-quantile (0..1, linear interpolation) of a family's member similarities: with q = 0.1
/// a new row joins the family when it is at least as close to the centroid as the 10% least
/// typical of the family's own members.
pub fn quantile(sims_desc: &[(f64, usize)], q: f64) -> f64 {
    quantile_of(sims_desc.iter().map(|s| s.0).collect(), q).unwrap_or(1.0)
}

/// Stable ids: pair new clusters with old families by centroid cosine, greedily from the most
/// similar pair down, each old family used at most once, and only pairs with cosine >=
/// `min_cosine`. Returns, per new cluster, the index into `old` it inherits, if any.
pub fn match_families(old: &[Vec<f32>], new: &[Vec<f32>], min_cosine: f64) -> Vec<Option<usize>> {
    let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
    for (j, nc) in new.iter().enumerate() {
        for (i, oc) in old.iter().enumerate() {
            let c = cosine(oc, nc);
            if c >= min_cosine {
                pairs.push((c, j, i));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut out = vec![None; new.len()];
    let mut used = vec![false; old.len()];
    for (_, j, i) in pairs {
        if out[j].is_none() && !used[i] {
            out[j] = Some(i);
            used[i] = true;
        }
    }
    out
}

/// Centroids as one row-major matrix, for the assignment step (cached per process).
#[derive(Debug, Clone)]
pub struct CentroidSet {
    /// Dimension.
    pub d: usize,
    /// Family id of each centroid.
    pub ids: Vec<i64>,
    /// The unit-length centroids, row after row.
    pub matrix: Vec<f32>,
    /// Calibrated per-family thresholds (used when no explicit threshold is given).
    pub thresholds: Vec<f32>,
}

impl CentroidSet {
    /// No centroids yet, of dimension `d`.
    pub fn new(d: usize) -> Self {
        Self {
            d,
            ids: Vec::new(),
            matrix: Vec::new(),
            thresholds: Vec::new(),
        }
    }
    /// Add family `id` (its centroid is normalised here) with its calibrated threshold.
    pub fn push(&mut self, id: i64, centroid: &[f32], threshold: f32) {
        assert_eq!(centroid.len(), self.d);
        let norm = centroid
            .iter()
            .map(|x| x * x)
            .sum::<f32>()
            .sqrt()
            .max(1e-12);
        self.ids.push(id);
        self.matrix.extend(centroid.iter().map(|x| x / norm));
        self.thresholds.push(threshold);
    }
    /// Number of centroids.
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    /// Whether there is no centroid.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    /// Index and cosine of the nearest centroid.
    pub fn nearest(&self, v: &[f32]) -> Option<(usize, f32)> {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm == 0.0 || self.is_empty() {
            return None;
        }
        let mut best = (0usize, f32::NEG_INFINITY);
        for (c, row) in self.matrix.chunks(self.d).enumerate() {
            let s: f32 = row.iter().zip(v).map(|(a, b)| a * b).sum::<f32>() / norm;
            if s > best.1 {
                best = (c, s);
            }
        }
        Some(best)
    }
    /// The family id for `v`: the nearest centroid's if its cosine reaches the threshold
    /// (explicit, else that family's calibrated one), else None (Unclustered).
    pub fn assign(&self, v: &[f32], threshold: Option<f32>) -> (Option<i64>, f32) {
        self.decide(self.nearest(v), threshold)
    }

    fn decide(&self, nearest: Option<(usize, f32)>, threshold: Option<f32>) -> (Option<i64>, f32) {
        match nearest {
            Some((c, s)) if s >= threshold.unwrap_or(self.thresholds[c]) => (Some(self.ids[c]), s),
            Some((_, s)) => (None, s),
            None => (None, 0.0),
        }
    }

    /// [`CentroidSet::assign`] for many rows (`rows`: row after row of `d` values): a block of
    /// rows against every centroid is one matrix product, the blocks on all threads. The
    /// answers are `assign`'s row by row, up to the rounding of the cosines (a full run places
    /// millions of rows against tens of thousands of centroids this way).
    pub fn assign_batch(&self, rows: &[f32], threshold: Option<f32>) -> Vec<(Option<i64>, f32)> {
        const BLOCK: usize = 256;
        let (d, k) = (self.d, self.len());
        if d == 0 || k == 0 {
            return vec![(None, 0.0); rows.len().checked_div(d).unwrap_or(0)];
        }
        rows.par_chunks(BLOCK * d)
            .flat_map_iter(|blk| {
                let m = blk.len() / d;
                let mut sims = vec![0f32; m * k];
                // sims[r, j] = row r . centroid j (the centroids' matrix read transposed)
                crate::rank::scorer::gemm(
                    m,
                    d,
                    k,
                    blk,
                    (d, 1),
                    &self.matrix,
                    (1, d),
                    0.0,
                    &mut sims,
                    k,
                );
                (0..m)
                    .map(|r| {
                        let norm = blk[r * d..(r + 1) * d]
                            .iter()
                            .map(|x| x * x)
                            .sum::<f32>()
                            .sqrt();
                        if norm == 0.0 {
                            return (None, 0.0);
                        }
                        let mut best = (0usize, f32::NEG_INFINITY);
                        for (j, &s) in sims[r * k..(r + 1) * k].iter().enumerate() {
                            if s > best.1 {
                                best = (j, s);
                            }
                        }
                        self.decide(Some((best.0, best.1 / norm)), threshold)
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

const STOPWORDS: &[&str] = &[
    "the", "and", "for", "that", "this", "with", "you", "are", "was", "not", "but", "have", "has",
    "had", "his", "her", "they", "them", "their", "there", "what", "when", "which", "who", "will",
    "would", "can", "could", "from", "all", "one", "been", "were", "your", "its", "our", "out",
    "about", "into", "than", "then", "just", "more", "some", "any", "only", "very", "also", "how",
    "why", "where", "she", "him", "did", "does", "doing", "don", "isn", "aren", "wasn", "let",
    "get", "got", "may", "might", "must", "shall", "should", "being", "over", "such", "because",
    "each", "own", "same", "too", "those", "these", "here", "both", "other", "after", "before",
    "again", "now", "never", "ever", "much", "many", "most", "every", "well", "like", "yes", "off",
    "upon", "said", "say", "says", "way", "make", "made", "see",
];

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| {
            w.chars().count() >= 3
                && !w.chars().all(|c| c.is_numeric())
                && !STOPWORDS.contains(&w.as_str())
        })
}

/// Labels from class-based TF-IDF (as BERTopic's c-TF-IDF): per cluster, the words most
/// frequent in it relative to their frequency over all clusters; `top` words joined by ", ".
pub fn keyword_labels(texts: &[&str], labels: &[i32], k: usize, top: usize) -> Vec<String> {
    let mut tf: Vec<HashMap<String, f64>> = vec![HashMap::new(); k];
    let mut total: HashMap<String, f64> = HashMap::new();
    let mut words_in = vec![0f64; k];
    for (t, &l) in texts.iter().zip(labels) {
        if l < 0 {
            continue;
        }
        for w in words(t) {
            *tf[l as usize].entry(w.clone()).or_default() += 1.0;
            *total.entry(w).or_default() += 1.0;
            words_in[l as usize] += 1.0;
        }
    }
    let avg = words_in.iter().sum::<f64>() / k.max(1) as f64;
    tf.iter()
        .zip(&words_in)
        .map(|(m, n)| {
            let mut scored: Vec<(f64, &String)> = m
                .iter()
                .map(|(w, c)| (c / n.max(1.0) * (1.0 + avg / total[w]).ln(), w))
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
            scored
                .iter()
                .take(top)
                .map(|(_, w)| w.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect()
}

/// Share of clustered points that carry their cluster's most common reference label.
pub fn purity(labels: &[i32], truth: &[i32]) -> f64 {
    let mut counts: HashMap<i32, HashMap<i32, usize>> = HashMap::new();
    let mut clustered = 0usize;
    for (&l, &t) in labels.iter().zip(truth) {
        if l >= 0 {
            *counts.entry(l).or_default().entry(t).or_default() += 1;
            clustered += 1;
        }
    }
    let majority: usize = counts.values().map(|m| *m.values().max().unwrap()).sum();
    majority as f64 / clustered.max(1) as f64
}

/// Why a classification of `points` found no family, in words for the run's record and NOTICE.
pub fn no_families_reason(points: &Points, min_cluster_size: usize) -> String {
    let n = points.n;
    if n < min_cluster_size {
        return format!(
            "{n} rows with an embedding are fewer than min_cluster_size = {min_cluster_size}"
        );
    }
    let d = points.d.max(1);
    let first = &points.data[..d];
    if points
        .data
        .chunks(d)
        .all(|r| r.iter().zip(first).all(|(a, b)| a.to_bits() == b.to_bits()))
    {
        return format!(
            "all {n} rows have the same embedding (the same text): one group alone is never a family, \
             HDBSCAN needs groups that stand out from each other"
        );
    }
    format!(
        "HDBSCAN found no group of at least min_cluster_size = {min_cluster_size} rows that stands out from the rest; \
         every row is Unclustered (a smaller min_cluster_size may find some)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_assignment_equals_one_by_one() {
        let (d, k, n) = (24, 37, 600);
        let mut x = 12345u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2000) as f32 / 1000.0 - 1.0
        };
        let mut set = CentroidSet::new(d);
        for j in 0..k {
            let c: Vec<f32> = (0..d).map(|_| rnd()).collect();
            set.push(100 + j as i64, &c, 0.2 + (j % 5) as f32 * 0.05);
        }
        let mut rows: Vec<f32> = (0..n * d).map(|_| rnd()).collect();
        rows[..d].iter_mut().for_each(|v| *v = 0.0); // a zero row: no family
        for t in [None, Some(0.1f32)] {
            let batch = set.assign_batch(&rows, t);
            assert_eq!(batch.len(), n);
            let mut families = 0;
            for (i, (fam, s)) in batch.iter().enumerate() {
                let (f1, s1) = set.assign(&rows[i * d..(i + 1) * d], t);
                assert!((s - s1).abs() < 1e-5, "row {i}: {s} vs {s1}");
                assert_eq!(*fam, f1, "row {i}");
                families += fam.is_some() as usize;
            }
            assert!(families > 50 && families < n, "{families}");
        }
        assert!(CentroidSet::new(d)
            .assign_batch(&rows, None)
            .iter()
            .all(|r| r.0.is_none()));
    }

    #[test]
    fn centroids_are_unit_means_and_quantiles_interpolate() {
        let p = Points::new(2, vec![1.0, 0.0, 0.0, 1.0, 2.0, 0.0, -1.0, 0.0]);
        let c = centroids(&p, &[0, 0, 1, -1], 2);
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert!((c[0][0] - s).abs() < 1e-6 && (c[0][1] - s).abs() < 1e-6);
        assert_eq!(c[1], vec![1.0, 0.0]);
        let sims = vec![(0.9, 0), (0.5, 1), (0.1, 2)];
        assert!((quantile(&sims, 0.0) - 0.1).abs() < 1e-12);
        assert!((quantile(&sims, 0.25) - 0.3).abs() < 1e-12);
        assert!((quantile(&sims, 1.0) - 0.9).abs() < 1e-12);
    }

    #[test]
    fn matching_is_greedy_one_to_one_and_thresholded() {
        let old = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        // new 0 is near old 1, new 1 near old 0 but less so, new 2 near old 0 too (loses),
        // new 3 is far from both
        let new = vec![
            vec![0.05, 1.0],
            vec![1.0, 0.2],
            vec![1.0, 0.3],
            vec![-1.0, -1.0],
        ];
        let m = match_families(&old, &new, 0.9);
        assert_eq!(m, vec![Some(1), Some(0), None, None]);
    }

    #[test]
    fn assignment_honours_explicit_and_calibrated_thresholds() {
        let mut cs = CentroidSet::new(2);
        cs.push(10, &[1.0, 0.0], 0.95);
        cs.push(20, &[0.0, 2.0], 0.5);
        let v = [0.8f32, 0.6]; // cos 0.8 to family 10, 0.6 to 20
        assert_eq!(cs.assign(&v, None).0, None, "0.8 < calibrated 0.95");
        assert_eq!(cs.assign(&v, Some(0.7)).0, Some(10));
        assert_eq!(cs.assign(&v, Some(0.85)).0, None);
        assert_eq!(cs.assign(&[0.1, 0.9], None).0, Some(20));
        assert_eq!(
            cs.assign(&[0.0, 0.0], Some(0.0)).0,
            None,
            "zero vector goes nowhere"
        );
    }

    #[test]
    fn keyword_labels_pick_distinctive_words() {
        let texts = [
            "cats purr and cats sleep",
            "a cat and cats",
            "dogs bark loudly",
            "dogs fetch the ball",
        ];
        let l = keyword_labels(&texts, &[0, 0, 1, 1], 2, 1);
        assert_eq!(l, vec!["cats".to_string(), "dogs".to_string()]);
        assert!((purity(&[0, 0, 1, 1, -1], &[5, 5, 5, 6, 6]) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn no_families_reason_names_identical_rows_and_small_inputs() {
        let same = Points {
            n: 200,
            d: 3,
            data: [0.6f32, 0.8, 0.0].repeat(200),
        };
        assert!(no_families_reason(&same, 15).contains("all 200 rows have the same embedding"));
        let few = Points {
            n: 4,
            d: 3,
            data: vec![0.1; 12],
        };
        assert!(no_families_reason(&few, 15).contains("fewer than min_cluster_size = 15"));
        let mut mixed = [0.6f32, 0.8, 0.0].repeat(20);
        mixed[0] = 0.7;
        let mixed = Points {
            n: 20,
            d: 3,
            data: mixed,
        };
        assert!(
            no_families_reason(&mixed, 15).contains("no group of at least min_cluster_size = 15")
        );
    }
}
