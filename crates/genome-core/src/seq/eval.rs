//! Evaluation of a taxonomy classifier's lineages against known ones: per rank the accuracy,
//! precision / recall / F1 per taxon and their macro averages (scikit-learn's
//! `precision_recall_fscore_support` over the union of true and predicted labels, zero division
//! as 0), ECE and Brier of the rank's confidence, the coverage at the cut-off and how often the
//! calls made are right; on reads whose genus the model never saw (their family known): how
//! often the deepest rank is withheld, and withheld while the rank above is right.
//!
//! A taxon is its path from the top rank (names are not unique across ranks), so a prediction
//! is right at a rank when its whole path down to that rank is.

use std::collections::{BTreeMap, HashSet};

use crate::rank::metrics::{brier, ece};
use crate::seq::classify::Classifier;

/// The taxa a classifier was trained on, by rank, as paths: to tell a read of a known genus from
/// a novel one.
pub struct Known(Vec<HashSet<String>>);

impl Known {
    pub fn of(m: &Classifier) -> Known {
        let t = &m.taxonomy;
        let mut sets = vec![HashSet::new(); t.ranks.len()];
        for p in &t.paths {
            let mut key = String::new();
            for (r, &id) in p.iter().enumerate() {
                if r > 0 {
                    key.push(';');
                }
                key.push_str(&t.names[r][id as usize]);
                sets[r].insert(key.clone());
            }
        }
        Known(sets)
    }

    /// Whether the taxon at `depth` of `lineage` (its path) was trained on.
    pub fn knows(&self, lineage: &[String], depth: usize) -> bool {
        depth < self.0.len()
            && lineage.len() > depth
            && self.0[depth].contains(&lineage[..=depth].join(";"))
    }
}

/// One read's evaluation input: the true lineage (as many names as ranks), the predicted one and
/// its confidence per rank, and whether the model knows the read's deepest taxon.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub truth: Vec<String>,
    pub predicted: Vec<String>,
    pub confidence: Vec<f64>,
    /// The model was trained on this read's deepest taxon (false: a "novel" read).
    pub known: bool,
    /// The model knows the taxon one rank above the deepest (a novel read's family).
    pub parent_known: bool,
}

/// What a trained classifier's taxa look like, kept in its bundle: taxa per rank, how many
/// deepest-rank taxa rest on a single reference, and their cohesion (mean best similarity between
/// a taxon's own references; taxa with two or more references only).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClusterSummary {
    pub taxa_per_rank: Vec<usize>,
    pub references: usize,
    pub single_reference_taxa: usize,
    pub mean_cohesion: Option<f64>,
    /// The largest deepest-rank taxa: (path, references, cohesion).
    pub largest: Vec<(String, u32, Option<f32>)>,
    /// The least cohesive taxa with two or more references.
    pub least_cohesive: Vec<(String, u32, f32)>,
}

pub fn cluster_summary(m: &Classifier, top: usize) -> ClusterSummary {
    let t = &m.taxonomy;
    let path = |l: usize| -> String {
        t.paths[l]
            .iter()
            .enumerate()
            .map(|(r, &id)| t.names[r][id as usize].as_str())
            .collect::<Vec<_>>()
            .join(";")
    };
    let nl = t.n_leaves();
    let multi: Vec<usize> = (0..nl).filter(|&l| m.leaf_size[l] >= 2).collect();
    let mut by_size: Vec<usize> = (0..nl).collect();
    by_size.sort_by_key(|&l| (std::cmp::Reverse(m.leaf_size[l]), l));
    let mut by_cohesion = multi.clone();
    by_cohesion.sort_by(|&a, &b| m.cohesion[a].total_cmp(&m.cohesion[b]).then(a.cmp(&b)));
    ClusterSummary {
        taxa_per_rank: t.names.iter().map(Vec::len).collect(),
        references: m.n_train as usize,
        single_reference_taxa: nl - multi.len(),
        mean_cohesion: (!multi.is_empty()).then(|| {
            multi.iter().map(|&l| f64::from(m.cohesion[l])).sum::<f64>() / multi.len() as f64
        }),
        largest: by_size
            .iter()
            .take(top)
            .map(|&l| {
                (
                    path(l),
                    m.leaf_size[l],
                    (m.leaf_size[l] >= 2).then_some(m.cohesion[l]),
                )
            })
            .collect(),
        least_cohesive: by_cohesion
            .iter()
            .take(top)
            .map(|&l| (path(l), m.leaf_size[l], m.cohesion[l]))
            .collect(),
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassMetrics {
    pub taxon: String,
    pub support: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RankMetrics {
    pub rank: String,
    /// Reads evaluated at this rank (all of them).
    pub n: usize,
    pub accuracy: f64,
    /// Accuracy over the reads whose deepest taxon the model knows.
    pub accuracy_known: f64,
    pub precision_macro: f64,
    pub recall_macro: f64,
    pub f1_macro: f64,
    /// Of the confidence against "the path down to this rank is right", over every read.
    pub ece: f64,
    pub brier: f64,
    /// ECE over the reads whose deepest taxon the model knows.
    pub ece_known: f64,
    /// Share of reads called at this rank (confidence >= the cut-off).
    pub coverage: f64,
    /// Share of the calls that are right (1 when there are none).
    pub called_accuracy: f64,
    /// Per taxon (its path), in path order.
    pub classes: Vec<ClassMetrics>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    pub cutoff: f64,
    pub n: usize,
    pub n_known: usize,
    pub n_novel: usize,
    /// Novel reads whose parent taxon is known: the denominator of the `novel_*` shares.
    pub n_novel_parent_known: usize,
    pub ranks: Vec<RankMetrics>,
    /// Of the known reads, the share whose deepest rank is withheld (below the cut-off).
    pub known_withheld: f64,
    /// Of the novel reads whose parent taxon is known: deepest rank withheld; parent rank right;
    /// both at once. None without such reads.
    pub novel_withheld: Option<f64>,
    pub novel_parent_right: Option<f64>,
    pub novel_withheld_parent_right: Option<f64>,
}

fn path(l: &[String], r: usize) -> String {
    l[..=r].join(";")
}

fn right(s: &Scored, r: usize) -> bool {
    s.predicted.len() > r && s.truth.len() > r && s.predicted[..=r] == s.truth[..=r]
}

fn share(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Evaluate `reads` (each with `ranks.len()` true and predicted names) at the cut-off.
pub fn evaluate(ranks: &[String], reads: &[Scored], cutoff: f64) -> Result<Evaluation, String> {
    let depth = ranks.len();
    if depth == 0 {
        return Err("at least one rank is needed".into());
    }
    for (i, s) in reads.iter().enumerate() {
        if s.truth.len() != depth || s.predicted.len() != depth || s.confidence.len() != depth {
            return Err(format!(
                "read {} has {} true names, {} predicted and {} confidences for {depth} ranks",
                i + 1,
                s.truth.len(),
                s.predicted.len(),
                s.confidence.len()
            ));
        }
    }
    let n = reads.len();
    let mut out = Vec::with_capacity(depth);
    for (r, rank) in ranks.iter().enumerate() {
        // per taxon: true positives, predicted count, true count
        let mut tally: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
        for s in reads {
            let (t, p) = (path(&s.truth, r), path(&s.predicted, r));
            tally.entry(t.clone()).or_default().2 += 1;
            let e = tally.entry(p.clone()).or_default();
            e.1 += 1;
            if t == p {
                e.0 += 1;
            }
        }
        let classes: Vec<ClassMetrics> = tally
            .into_iter()
            .map(|(taxon, (tp, pred, support))| {
                let precision = share(tp, pred).unwrap_or(0.0);
                let recall = share(tp, support).unwrap_or(0.0);
                let f1 = if tp == 0 {
                    0.0
                } else {
                    2.0 * tp as f64 / (pred + support) as f64
                };
                ClassMetrics {
                    taxon,
                    support,
                    precision,
                    recall,
                    f1,
                }
            })
            .collect();
        let m = classes.len().max(1) as f64;
        let conf: Vec<f64> = reads.iter().map(|s| s.confidence[r]).collect();
        let ok: Vec<bool> = reads.iter().map(|s| right(s, r)).collect();
        let (kc, ko): (Vec<f64>, Vec<bool>) = reads
            .iter()
            .filter(|s| s.known)
            .map(|s| (s.confidence[r], right(s, r)))
            .unzip();
        let called: Vec<bool> = reads
            .iter()
            .filter(|s| s.confidence[r] >= cutoff)
            .map(|s| right(s, r))
            .collect();
        out.push(RankMetrics {
            rank: rank.clone(),
            n,
            accuracy: share(ok.iter().filter(|x| **x).count(), n).unwrap_or(0.0),
            accuracy_known: share(ko.iter().filter(|x| **x).count(), ko.len()).unwrap_or(0.0),
            precision_macro: classes.iter().map(|c| c.precision).sum::<f64>() / m,
            recall_macro: classes.iter().map(|c| c.recall).sum::<f64>() / m,
            f1_macro: classes.iter().map(|c| c.f1).sum::<f64>() / m,
            ece: ece(&conf, &ok, 10),
            brier: brier(&conf, &ok),
            ece_known: ece(&kc, &ko, 10),
            coverage: share(called.len(), n).unwrap_or(0.0),
            called_accuracy: share(called.iter().filter(|x| **x).count(), called.len())
                .unwrap_or(1.0),
            classes,
        });
    }
    let g = depth - 1;
    let known: Vec<&Scored> = reads.iter().filter(|s| s.known).collect();
    let novel: Vec<&Scored> = reads
        .iter()
        .filter(|s| !s.known && s.parent_known && g > 0)
        .collect();
    let withheld = |s: &Scored| s.confidence[g] < cutoff;
    Ok(Evaluation {
        cutoff,
        n,
        n_known: known.len(),
        n_novel: reads.iter().filter(|s| !s.known).count(),
        n_novel_parent_known: novel.len(),
        ranks: out,
        known_withheld: share(known.iter().filter(|s| withheld(s)).count(), known.len())
            .unwrap_or(0.0),
        novel_withheld: share(novel.iter().filter(|s| withheld(s)).count(), novel.len()),
        novel_parent_right: share(
            novel.iter().filter(|s| right(s, g - 1)).count(),
            novel.len(),
        ),
        novel_withheld_parent_right: share(
            novel
                .iter()
                .filter(|s| withheld(s) && right(s, g - 1))
                .count(),
            novel.len(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str, p: &str, c: &[f64], known: bool) -> Scored {
        Scored {
            truth: t.split(';').map(String::from).collect(),
            predicted: p.split(';').map(String::from).collect(),
            confidence: c.to_vec(),
            known,
            parent_known: true,
        }
    }

    #[test]
    fn hand_counted() {
        let ranks = vec!["family".to_string(), "genus".to_string()];
        let reads = vec![
            s("F1;G1", "F1;G1", &[1.0, 0.9], true),
            s("F1;G1", "F1;G2", &[0.9, 0.5], true),
            s("F1;G2", "F1;G2", &[0.95, 0.85], true),
            s("F2;G3", "F1;G1", &[0.6, 0.3], false),
        ];
        let e = evaluate(&ranks, &reads, 0.8).unwrap();
        let fam = &e.ranks[0];
        assert_eq!(fam.accuracy, 0.75);
        // F1: tp 3, predicted 4, support 3; F2: tp 0, support 1
        assert!((fam.classes[0].precision - 0.75).abs() < 1e-12);
        assert_eq!(fam.classes[0].recall, 1.0);
        assert_eq!(fam.classes[1].f1, 0.0);
        assert!((fam.f1_macro - (2.0 * 3.0 / 7.0) / 2.0).abs() < 1e-12);
        assert_eq!(fam.coverage, 0.75);
        assert_eq!(fam.called_accuracy, 1.0);
        let gen = &e.ranks[1];
        assert_eq!(gen.accuracy, 0.5);
        assert_eq!(gen.accuracy_known, 2.0 / 3.0);
        // G1 (F1;G1): tp 1, pred 2, support 2; G2 (F1;G2): tp 1, pred 2, support 1; G3: support 1
        assert_eq!(gen.classes.len(), 3);
        assert!((gen.precision_macro - (0.5 + 0.5 + 0.0) / 3.0).abs() < 1e-12);
        assert!((gen.recall_macro - (0.5 + 1.0 + 0.0) / 3.0).abs() < 1e-12);
        assert_eq!(e.known_withheld, 1.0 / 3.0);
        assert_eq!(e.novel_withheld, Some(1.0));
        assert_eq!(e.novel_parent_right, Some(0.0));
        assert_eq!(e.n_novel, 1);
        let b = (0.1f64.powi(2) + 0.5f64.powi(2) + 0.15f64.powi(2) + 0.3f64.powi(2)) / 4.0;
        assert!((gen.brier - b).abs() < 1e-12);
    }

    #[test]
    fn ragged_input_is_an_error() {
        let ranks = vec!["family".to_string(), "genus".to_string()];
        assert!(evaluate(&ranks, &[s("F1", "F1;G1", &[1.0, 1.0], true)], 0.8).is_err());
        assert!(evaluate(&[], &[], 0.8).is_err());
    }
}
