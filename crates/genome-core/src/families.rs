//! The family plan of a full run (`genome.full_classify`, `genome.hdbscan_recluster`): from a
//! collection's embeddings and their cluster labels to everything the run writes. The pgrx layer
//! reads the rows, clusters them (`cluster::classify`), calls [`plan`] and writes the plan; the
//! decisions are made here:
//! 1. Each cluster's centroid is the unit mean of its L2-normalised members, in the embedding
//!    space (not the reduced one), so that new rows can be compared with it.
//! 2. Stable ids: a cluster takes over the live family whose centroid is most similar, greedily
//!    from the most similar pair down, one to one, and only at cosine >= `match_threshold`; it
//!    is new otherwise. Live families no cluster takes over are retired.
//! 3. A family's threshold (used by assign_family) is the `threshold_quantile` of its members'
//!    cosines to its centroid.
//! 4. Its exemplars are the `exemplars` members nearest its centroid.
//! 5. Its label is the `label_words` most distinctive words (c-TF-IDF) of the texts of the
//!    `label_members` members nearest its centroid, or "family N" (N = cluster + 1) without any.
//! 6. Every row goes to its cluster's family; noise goes to Unclustered.
//! 7. With no cluster at all, the plan says why (for the run's record and a NOTICE).

use crate::base::Points;
use crate::cluster::families::{
    centroids, keyword_labels, match_families, member_similarities, no_families_reason, quantile,
};

/// A live (not retired) family of the collection before the run.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveFamily {
    /// Its id in genome.families.
    pub id: i64,
    /// Its stored centroid.
    pub centroid: Vec<f32>,
}

/// The settings of [`plan`].
#[derive(Debug, Clone, Copy)]
pub struct PlanParams {
    /// Quantile (0..1) of a family's member similarities stored as its threshold.
    pub threshold_quantile: f64,
    /// Centroid cosine at or above which a cluster keeps a live family's id.
    pub match_threshold: f64,
    /// HDBSCAN's min_cluster_size (only to explain a run without families).
    pub min_cluster_size: usize,
    /// Exemplars stored per family.
    pub exemplars: usize,
    /// Members, nearest the centroid first, whose texts label a family.
    pub label_members: usize,
    /// Words in a label.
    pub label_words: usize,
}

impl Default for PlanParams {
    fn default() -> Self {
        Self {
            threshold_quantile: 0.1,
            match_threshold: 0.9,
            min_cluster_size: 15,
            exemplars: 5,
            label_members: 200,
            label_words: 4,
        }
    }
}

/// One family of the run: cluster `j` of the labels is `FamilyPlan::families[j]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedFamily {
    /// The live family whose id (and row) it takes over; None: a new family.
    pub keeps: Option<i64>,
    /// Keywords of its members' texts, or "family N".
    pub label: String,
    /// Unit length, in the embedding space.
    pub centroid: Vec<f32>,
    /// Members (rows with this cluster's label).
    pub size: usize,
    /// Rows (indices into the points) nearest the centroid, nearest first.
    pub exemplars: Vec<usize>,
    /// Cosine a row needs to join this family in assign_family.
    pub threshold: f32,
}

/// What a full run writes: the families, the families to retire and every row's family.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyPlan {
    /// Cluster j's family at index j.
    pub families: Vec<PlannedFamily>,
    /// Ids of the live families no cluster took over, in the order they were given.
    pub retired: Vec<i64>,
    /// Every row's cluster (-1: noise, Unclustered), as given to [`plan`].
    pub labels: Vec<i32>,
    /// Rows left as noise.
    pub n_noise: usize,
    /// Why there is no family, when there is none.
    pub no_families_reason: Option<String>,
}

impl FamilyPlan {
    /// Families that keep a live family's id.
    pub fn n_kept(&self) -> usize {
        self.families.iter().filter(|f| f.keeps.is_some()).count()
    }
    /// Families with a new id.
    pub fn n_new(&self) -> usize {
        self.families.len() - self.n_kept()
    }
    /// Every row's family id, given the id each planned family was written under (in the order
    /// of `families`) and the collection's Unclustered family.
    pub fn row_families(&self, family_ids: &[i64], unclustered: i64) -> Vec<i64> {
        assert_eq!(family_ids.len(), self.families.len());
        self.labels
            .iter()
            .map(|&l| usize::try_from(l).map_or(unclustered, |j| family_ids[j]))
            .collect()
    }
}

/// A size counted in rows of the collection (`min_cluster_size`, `min_samples`) for a run that
/// clusters an even sample of `sample` of its `rows`: a family of m rows has about
/// m * sample / rows of them in the sample. Rounded up, at least 2 (HDBSCAN's smallest).
pub fn size_on_sample(size: usize, sample: usize, rows: usize) -> usize {
    if sample >= rows || rows == 0 {
        return size;
    }
    (size * sample).div_ceil(rows).max(2)
}

/// The plan for `points` (a collection's embeddings, any scale) clustered into `labels` (one
/// per point, 0..n_clusters-1 or -1 for noise), given the collection's `live` families.
///
/// `texts` is asked once, with the rows whose texts label the families (per family its
/// `label_members` members nearest the centroid, nearest first), and answers with each row's
/// text, None where it has none; it is not called when there are no such rows.
pub fn plan(
    points: &Points,
    labels: &[i32],
    n_clusters: usize,
    live: &[LiveFamily],
    texts: &mut dyn FnMut(&[usize]) -> Vec<Option<String>>,
    params: &PlanParams,
) -> FamilyPlan {
    assert_eq!(labels.len(), points.n);
    let k = n_clusters;
    let cents = centroids(points, labels, k);
    let sims = member_similarities(points, labels, &cents);
    let old: Vec<Vec<f32>> = live.iter().map(|f| f.centroid.clone()).collect();
    let matched = match_families(&old, &cents, params.match_threshold);

    // Labels from the texts of the members nearest each centroid.
    let label_rows: Vec<(i32, usize)> = sims
        .iter()
        .enumerate()
        .flat_map(|(j, s)| {
            s.iter()
                .take(params.label_members)
                .map(move |(_, i)| (j as i32, *i))
        })
        .collect();
    let names = if label_rows.is_empty() {
        vec![String::new(); k]
    } else {
        let rows: Vec<usize> = label_rows.iter().map(|r| r.1).collect();
        let got = texts(&rows);
        assert_eq!(got.len(), rows.len(), "one text (or None) per row asked");
        let (mut ltexts, mut llabels) = (Vec::new(), Vec::new());
        for ((j, _), t) in label_rows.iter().zip(&got) {
            if let Some(t) = t {
                ltexts.push(t.as_str());
                llabels.push(*j);
            }
        }
        keyword_labels(&ltexts, &llabels, k, params.label_words)
    };

    let families: Vec<PlannedFamily> = (0..k)
        .map(|j| PlannedFamily {
            keeps: matched[j].map(|o| live[o].id),
            label: if names[j].is_empty() {
                format!("family {}", j + 1)
            } else {
                names[j].clone()
            },
            centroid: cents[j].clone(),
            size: sims[j].len(),
            exemplars: sims[j].iter().take(params.exemplars).map(|s| s.1).collect(),
            threshold: quantile(&sims[j], params.threshold_quantile) as f32,
        })
        .collect();
    let mut used = vec![false; live.len()];
    matched.iter().flatten().for_each(|&o| used[o] = true);
    let retired = live
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .map(|(f, _)| f.id)
        .collect();
    FamilyPlan {
        no_families_reason: (k == 0).then(|| no_families_reason(points, params.min_cluster_size)),
        families,
        retired,
        labels: labels.to_vec(),
        n_noise: labels.iter().filter(|l| **l < 0).count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_scale_with_the_sample() {
        assert_eq!(size_on_sample(15, 1000, 1000), 15);
        assert_eq!(size_on_sample(15, 2000, 1000), 15);
        assert_eq!(size_on_sample(15, 500_000, 1_000_000), 8);
        assert_eq!(size_on_sample(8, 393, 1178), 3);
        assert_eq!(size_on_sample(15, 1_000_000, 10_000_000), 2);
        assert_eq!(size_on_sample(100, 1_000_000, 10_000_000), 10);
    }

    /// Five members around direction (1, 0) in the plane: cosines to (1, 0) of exactly 1, 0.8,
    /// 0.8, 0.6 and 0.6, and their unit mean is (1, 0) itself (they are symmetric about it).
    fn fan_x() -> Vec<[f32; 2]> {
        vec![[1.0, 0.0], [0.8, 0.6], [0.8, -0.6], [0.6, 0.8], [0.6, -0.8]]
    }

    /// The same fan turned to direction (0, 1), twice as long (the scale must not matter).
    fn fan_y() -> Vec<[f32; 2]> {
        fan_x().iter().map(|[x, y]| [-2.0 * y, 2.0 * x]).collect()
    }

    fn points(rows: &[[f32; 2]]) -> Points {
        Points::new(2, rows.iter().flatten().copied().collect())
    }

    fn no_texts(_: &[usize]) -> Vec<Option<String>> {
        panic!("texts not expected")
    }

    /// fan_x as rows 0..5, fan_y as rows 5..10, then one noise row.
    fn two_fans() -> (Points, Vec<i32>) {
        let mut rows = fan_x();
        rows.extend(fan_y());
        rows.push([-1.0, -1.0]);
        let mut labels = vec![0; 5];
        labels.extend([1; 5]);
        labels.push(-1);
        (points(&rows), labels)
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn centroids_sizes_thresholds_and_exemplars() {
        let (p, labels) = two_fans();
        let params = PlanParams {
            // ascending cosines 0.6 0.6 0.8 0.8 1: position 0.3 * 4 = 1.2 -> 0.6 + 0.2 * 0.2
            threshold_quantile: 0.3,
            exemplars: 3,
            ..Default::default()
        };
        let out = plan(&p, &labels, 2, &[], &mut |r| vec![None; r.len()], &params);
        assert_eq!(out.families.len(), 2);
        let (x, y) = (&out.families[0], &out.families[1]);
        assert!(close(&x.centroid, &[1.0, 0.0]), "{:?}", x.centroid);
        assert!(close(&y.centroid, &[0.0, 1.0]), "{:?}", y.centroid);
        assert_eq!((x.size, y.size), (5, 5));
        assert!((x.threshold - 0.64).abs() < 1e-6, "{}", x.threshold);
        assert!((y.threshold - 0.64).abs() < 1e-6, "{}", y.threshold);
        // nearest first, ties (the two 0.8s) in row order
        assert_eq!(x.exemplars, vec![0, 1, 2]);
        assert_eq!(y.exemplars, vec![5, 6, 7]);
        assert_eq!(out.n_noise, 1);
        assert_eq!(out.no_families_reason, None);

        // the extremes of the quantile: the least and the most typical member
        let lo = PlanParams {
            threshold_quantile: 0.0,
            ..Default::default()
        };
        let hi = PlanParams {
            threshold_quantile: 1.0,
            ..Default::default()
        };
        let t = |q: &PlanParams| plan(&p, &labels, 2, &[], &mut |r| vec![None; r.len()], q);
        assert!((t(&lo).families[0].threshold - 0.6).abs() < 1e-6);
        assert!((t(&hi).families[0].threshold - 1.0).abs() < 1e-6);
        // at most as many exemplars as members
        let many = PlanParams {
            exemplars: 50,
            ..Default::default()
        };
        assert_eq!(t(&many).families[1].exemplars, vec![5, 6, 7, 8, 9]);
    }

    #[test]
    fn live_families_keep_their_ids_the_rest_are_new_or_retired() {
        let (p, labels) = two_fans();
        let live = vec![
            // cosine 0.8 to fan_y's centroid (0, 1), 0.6 to fan_x's
            LiveFamily {
                id: 7,
                centroid: vec![0.6, 0.8],
            },
            // cosine 0.99 to fan_x's (1, 0)
            LiveFamily {
                id: 8,
                centroid: vec![0.99, 0.141],
            },
            // opposite to both
            LiveFamily {
                id: 9,
                centroid: vec![-1.0, -1.0],
            },
        ];
        let none = &mut |r: &[usize]| vec![None; r.len()];
        let out = plan(&p, &labels, 2, &live, none, &PlanParams::default());
        assert_eq!(out.families[0].keeps, Some(8));
        assert_eq!(out.families[1].keeps, None, "0.8 < match_threshold 0.9");
        assert_eq!(out.retired, vec![7, 9]);
        assert_eq!((out.n_kept(), out.n_new()), (1, 1));

        // a lower bar lets fan_y take family 7 over
        let loose = PlanParams {
            match_threshold: 0.75,
            ..Default::default()
        };
        let out = plan(&p, &labels, 2, &live, none, &loose);
        assert_eq!(out.families[1].keeps, Some(7));
        assert_eq!(out.retired, vec![9]);
        assert_eq!(
            out.row_families(&[8, 7], 1),
            vec![8, 8, 8, 8, 8, 7, 7, 7, 7, 7, 1]
        );
    }

    #[test]
    fn ids_are_stable_across_runs() {
        // Run 1: no families yet, both new; the writer gives them ids 101 and 102.
        let (p, labels) = two_fans();
        let none = &mut |r: &[usize]| vec![None; r.len()];
        let first = plan(&p, &labels, 2, &[], none, &PlanParams::default());
        assert_eq!((first.n_kept(), first.n_new()), (0, 2));
        let live: Vec<LiveFamily> = first
            .families
            .iter()
            .zip([101, 102])
            .map(|(f, id)| LiveFamily {
                id,
                centroid: f.centroid.clone(),
            })
            .collect();
        // Run 2: the same rows come back in another order, HDBSCAN numbers the clusters the
        // other way round, and a third cluster appears along (-1, 0).
        let mut rows = fan_y();
        rows.extend(fan_x());
        rows.extend([[-1.0, 0.1], [-1.0, -0.1]]);
        let mut labels = vec![0; 5];
        labels.extend([1; 5]);
        labels.extend([2, 2]);
        let second = plan(
            &points(&rows),
            &labels,
            3,
            &live,
            none,
            &PlanParams::default(),
        );
        let keeps: Vec<_> = second.families.iter().map(|f| f.keeps).collect();
        assert_eq!(keeps, vec![Some(102), Some(101), None]);
        assert!(second.retired.is_empty());
        assert_eq!(
            second.row_families(&[102, 101, 103], 1),
            [vec![102; 5], vec![101; 5], vec![103; 2]].concat()
        );
    }

    #[test]
    fn labels_come_from_the_texts_of_the_members_nearest_the_centroid() {
        let (p, labels) = two_fans();
        let texts = [
            "cats purr",
            "cats sleep",
            "cats nap",
            "a lone dog",
            "a lone dog",
            "", // fan_y: no words at all -> "family 2"
            "",
            "",
            "",
            "",
            "noise never asked",
        ];
        let params = PlanParams {
            label_members: 3,
            label_words: 1,
            ..Default::default()
        };
        let mut asked = Vec::new();
        let out = plan(
            &p,
            &labels,
            2,
            &[],
            &mut |rows| {
                asked.extend_from_slice(rows);
                rows.iter().map(|&i| Some(texts[i].to_string())).collect()
            },
            &params,
        );
        // per family the 3 members nearest its centroid, nearest first: the dogs are not read
        assert_eq!(asked, vec![0, 1, 2, 5, 6, 7]);
        assert_eq!(out.families[0].label, "cats");
        assert_eq!(out.families[1].label, "family 2");

        // rows without text are skipped, and a family none of whose rows has text is numbered
        let out = plan(
            &p,
            &labels,
            2,
            &[],
            &mut |rows| {
                rows.iter()
                    .map(|&i| (i == 2).then(|| "purring kittens".to_string()))
                    .collect()
            },
            &PlanParams {
                label_words: 4,
                ..Default::default()
            },
        );
        assert_eq!(out.families[0].label, "kittens, purring");
        assert_eq!(out.families[1].label, "family 2");
    }

    #[test]
    fn no_families_retires_every_live_one_and_says_why() {
        let (p, _) = two_fans();
        let live = vec![LiveFamily {
            id: 4,
            centroid: vec![1.0, 0.0],
        }];
        let params = PlanParams {
            min_cluster_size: 5,
            ..Default::default()
        };
        let out = plan(&p, &[-1; 11], 0, &live, &mut no_texts, &params);
        assert!(out.families.is_empty());
        assert_eq!(out.retired, vec![4]);
        assert_eq!(out.n_noise, 11);
        assert_eq!(out.row_families(&[], 1), vec![1; 11]);
        let why = out.no_families_reason.unwrap();
        assert!(
            why.contains("no group of at least min_cluster_size = 5 rows"),
            "{why}"
        );

        // no rows at all
        let empty = Points {
            n: 0,
            d: 2,
            data: Vec::new(),
        };
        let out = plan(&empty, &[], 0, &live, &mut no_texts, &PlanParams::default());
        assert_eq!(out.retired, vec![4]);
        assert_eq!(out.n_noise, 0);
        assert_eq!(
            out.no_families_reason.as_deref(),
            Some("0 rows with an embedding are fewer than min_cluster_size = 15")
        );
    }
}
