//! Per-pet photo clusters: the Rust steps behind `genome.cluster_pet` and
//! `genome.select_heroes` (the SQL in finalize.sql reads and writes the tables, under a per-pet
//! lock). The algorithm is genome-core's `pets`; here: arguments, GUCs, cancellation.

use genome_core::pets::{hero_score, update_pet, HeroWeights, PetParams, Target};
use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use crate::errors::raise;
use crate::gucs;

/// One pet's update plan. `embeddings` holds the pet's photos' vectors, row after row (a 2-D
/// real[] from array_agg(embedding::real[])), photo i (1-based in the result) in row i;
/// `clusters[i]` is its cluster id or NULL when unassigned; `threshold` the pet's stored join
/// threshold. Returns {"assign": [[photo, cluster_id | null, new_cluster | null, similarity],
/// ...], "new_clusters": [size, ...], "threshold": t | null}; new_cluster indexes new_clusters.
#[pg_extern(volatile, parallel_unsafe)]
pub fn _pet_plan(
    embeddings: Array<f32>,
    clusters: Array<i64>,
    threshold: Option<f64>,
) -> pgrx::JsonB {
    let clusters: Vec<Option<i64>> = clusters.iter().collect();
    let flat: Vec<f32> = embeddings
        .iter()
        .map(|x| {
            x.unwrap_or_else(|| {
                raise(
                    PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                    "a photo embedding has a NULL element".into(),
                    None,
                )
            })
        })
        .collect();
    let n = clusters.len();
    if n == 0 || !flat.len().is_multiple_of(n) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "{} embedding values do not split into {n} photos",
                flat.len()
            ),
            None,
        );
    }
    let d = flat.len() / n;
    let vectors: Vec<Vec<f32>> = flat
        .chunks(d)
        .map(|c| {
            let mut v = c.to_vec();
            genome_core::embed::pooling::l2_normalize(&mut v);
            v
        })
        .collect();
    let params = PetParams {
        min_cluster_size: gucs::PET_MIN_CLUSTER_SIZE.get() as usize,
        min_samples: match gucs::PET_MIN_SAMPLES.get() {
            0 => None,
            k => Some(k as usize),
        },
        min_pending: gucs::PET_MIN_PENDING.get() as usize,
        min_similarity: gucs::PET_MIN_SIMILARITY.get(),
        threshold_quantile: gucs::PET_THRESHOLD_QUANTILE.get(),
        leaf: gucs::PET_CLUSTER_SELECTION.get() == gucs::Selection::Leaf,
        join_margin: gucs::PET_JOIN_MARGIN.get(),
        center: gucs::PET_CENTER.get(),
        trim_new: gucs::PET_TRIM_NEW_CLUSTERS.get(),
    };
    // Per-pet work is small (hundreds of photos); the check is for very large pets.
    let plan = update_pet(
        &vectors,
        &clusters,
        threshold,
        &params,
        &crate::errors::interrupt_pending,
    )
    .unwrap_or_else(|_| {
        pg_sys::check_for_interrupts!();
        raise(
            PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
            "canceled".into(),
            None,
        )
    });
    let assign: Vec<serde_json::Value> = plan
        .assignments
        .iter()
        .map(|a| {
            let (existing, new) = match a.target {
                Target::Existing(id) => (Some(id), None),
                Target::New(k) => (None, Some(k + 1)),
            };
            serde_json::json!([a.photo + 1, existing, new, a.similarity])
        })
        .collect();
    pgrx::JsonB(serde_json::json!({
        "assign": assign,
        "new_clusters": plan.new_clusters,
        "threshold": plan.threshold,
    }))
}

/// A photo's hero score (genome-core's pets::hero_score; formula in the README). NULL weights
/// take the genome.hero_weight_* settings; pose NULL leaves pose out of the score.
#[pg_extern(stable, parallel_safe)]
pub fn hero_score_of(
    quality: f64,
    centrality: f64,
    age_days: f64,
    pose: default!(Option<f64>, "NULL"),
    w_quality: default!(Option<f64>, "NULL"),
    w_centrality: default!(Option<f64>, "NULL"),
    w_recency: default!(Option<f64>, "NULL"),
    w_pose: default!(Option<f64>, "NULL"),
) -> f64 {
    let w = HeroWeights {
        quality: w_quality.unwrap_or_else(|| gucs::HERO_WEIGHT_QUALITY.get()),
        centrality: w_centrality.unwrap_or_else(|| gucs::HERO_WEIGHT_CENTRALITY.get()),
        recency: w_recency.unwrap_or_else(|| gucs::HERO_WEIGHT_RECENCY.get()),
        pose: w_pose.unwrap_or_else(|| gucs::HERO_WEIGHT_POSE.get()),
    };
    if [w.quality, w.centrality, w.recency, w.pose]
        .iter()
        .any(|x| !x.is_finite() || *x < 0.0)
    {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "hero weights must be finite and >= 0".into(),
            None,
        );
    }
    hero_score(
        &w,
        quality,
        centrality,
        age_days,
        gucs::HERO_HALF_LIFE_DAYS.get(),
        pose,
    )
}

// The SQL objects of this capability, in their current shape: src/pets.sql.
extension_sql_file!(
    "pets.sql",
    name = "pets",
    requires = ["models", hero_score_of]
);
