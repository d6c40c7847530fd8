//! Per-pet photo clusters: the Rust steps behind `genome.cluster_pet` (src/pets.sql), which
//! holds the per-pet lock and embeds new photos one at a time in its own subtransactions (a bad
//! photo fails alone), then calls `_pet_update`: read the pet's photos -> genome-core's
//! `pets::update_pet` (the plan) -> write the plan (assignments, new clusters, centroids). Also
//! `_embed_photo` (one decode gives embedding and quality) and the hero score.

use genome_core::pets::{hero_score, update_pet, HeroWeights, PetParams, Target};
use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use crate::errors::{raise, OrRaise};
use crate::gucs;
use crate::vector::Vector;

/// 0.5.0's plan step, kept as a symbol only (`sql = false`): a database still at 0.5.0 calls it
/// until `ALTER EXTENSION pg_genome UPDATE`, which replaces it with `_pet_update`. Returns
/// {"assign": [[photo, cluster_id | null, new_cluster | null, similarity], ...],
/// "new_clusters": [size, ...], "threshold": t | null}.
#[pg_extern(volatile, parallel_unsafe, sql = false)]
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
    let params = pet_params();
    // Per-pet work is small (hundreds of photos); the check is for very large pets.
    let plan = plan_or_cancel(&vectors, &clusters, threshold, &params);
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

fn plan_or_cancel(
    vectors: &[Vec<f32>],
    clusters: &[Option<i64>],
    threshold: Option<f64>,
    params: &PetParams,
) -> genome_core::pets::PetUpdate {
    update_pet(
        vectors,
        clusters,
        threshold,
        params,
        &crate::errors::interrupt_pending,
    )
    .unwrap_or_else(|_| {
        pg_sys::check_for_interrupts!();
        raise(
            PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
            "canceled".into(),
            None,
        )
    })
}

/// The pet-clustering settings (genome.pet_*).
fn pet_params() -> PetParams {
    PetParams {
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
    }
}

/// One pet's update after its new photos were embedded: the eligible photos (embedded, quality
/// at least genome.pet_min_quality, oldest first) and the pet's threshold are read, genome-core
/// plans (existing clusters keep their ids, photos join the nearest cluster or form new ones),
/// and the plan is written: new clusters, each photo's cluster and similarity, each cluster's
/// centroid (the core's: the mean of its members), the threshold. Returns what the caller
/// reports. Runs as the caller (SECURITY INVOKER), in the caller's transaction, under the
/// per-pet lock `cluster_pet` holds.
#[pg_extern(volatile, parallel_unsafe)]
fn _pet_update(
    media: &str,
    pet_id: &str,
) -> TableIterator<
    'static,
    (
        name!(joined, i32),
        name!(new_clusters, i32),
        name!(threshold, Option<f64>),
    ),
> {
    let (threshold, ids, vectors, clusters) = Spi::connect(|client| {
        let threshold = client
            .select(
                "SELECT threshold FROM genome.pet_state WHERE media = $1 AND pet_id = $2",
                None,
                &[media.into(), pet_id.into()],
            )
            .or_raise("reading the pet's threshold");
        let threshold = threshold
            .into_iter()
            .next()
            .and_then(|r| r.get::<f64>(1).or_raise("reading the pet's threshold"));
        let rows = client
            .select(
                "SELECT p.image_id, p.embedding, p.cluster_id FROM genome.pet_photos p \
                  WHERE p.media = $1 AND p.pet_id = $2 AND p.embedding IS NOT NULL \
                    AND coalesce(p.quality, 0) >= pg_catalog.current_setting('genome.pet_min_quality')::real \
                  ORDER BY p.taken_at NULLS LAST, p.image_id",
                None,
                &[media.into(), pet_id.into()],
            )
            .or_raise("reading the pet's photos");
        let (mut ids, mut vectors, mut clusters) = (Vec::new(), Vec::new(), Vec::new());
        for r in rows {
            ids.push(
                r.get::<String>(1)
                    .or_raise("reading a photo")
                    .unwrap_or_default(),
            );
            let mut v = r
                .get::<Vector>(2)
                .or_raise("reading a photo")
                .map(|v| v.0)
                .unwrap_or_default();
            genome_core::base::l2_normalize(&mut v);
            vectors.push(v);
            clusters.push(r.get::<i64>(3).or_raise("reading a photo"));
        }
        (threshold, ids, vectors, clusters)
    });
    if ids.is_empty() {
        return TableIterator::once((0, 0, threshold));
    }
    let plan = plan_or_cancel(&vectors, &clusters, threshold, &pet_params());
    Spi::connect_mut(|client| {
        let mut new_ids = Vec::with_capacity(plan.new_clusters.len());
        for _ in &plan.new_clusters {
            let id = client
                .update(
                    "INSERT INTO genome.pet_photo_clusters (media, pet_id) VALUES ($1, $2) RETURNING id",
                    None,
                    &[media.into(), pet_id.into()],
                )
                .or_raise("adding a cluster")
                .first()
                .get::<i64>(1)
                .or_raise("adding a cluster");
            new_ids.push(id.unwrap_or_default());
        }
        let id_of = |t: Target| match t {
            Target::Existing(id) => id,
            Target::New(k) => new_ids[k],
        };
        let photos: Vec<String> = plan
            .assignments
            .iter()
            .map(|a| ids[a.photo].clone())
            .collect();
        let targets: Vec<i64> = plan.assignments.iter().map(|a| id_of(a.target)).collect();
        let sims: Vec<f32> = plan
            .assignments
            .iter()
            .map(|a| a.similarity as f32)
            .collect();
        client
            .update(
                "UPDATE genome.pet_photos p SET cluster_id = u.c, similarity = u.s \
                   FROM unnest($2::text[], $3::bigint[], $4::real[]) u(img, c, s) \
                  WHERE p.media = $1 AND p.image_id = u.img",
                None,
                &[media.into(), photos.into(), targets.into(), sims.into()],
            )
            .or_raise("assigning photos");
        let cids: Vec<i64> = plan.centroids.iter().map(|(t, _)| id_of(*t)).collect();
        let cents: Vec<Vector> = plan
            .centroids
            .iter()
            .map(|(_, c)| Vector(c.clone()))
            .collect();
        // written only where it changed (pgvector's = by its schema: the search_path is safe)
        let vs = crate::collections::ident(&crate::vector::vector_schema());
        client
            .update(
                &format!(
                    "UPDATE genome.pet_photo_clusters c SET centroid = u.v, updated_at = now() \
                       FROM unnest($2::bigint[], $3) u(id, v) \
                      WHERE c.media = $1 AND c.id = u.id \
                        AND (c.centroid IS NULL OR NOT c.centroid OPERATOR({vs}.=) u.v)"
                ),
                None,
                &[media.into(), cids.into(), cents.into()],
            )
            .or_raise("storing cluster centroids");
    });
    let joined = plan
        .assignments
        .iter()
        .filter(|a| matches!(a.target, Target::Existing(_)))
        .count() as i32;
    TableIterator::once((joined, plan.new_clusters.len() as i32, plan.threshold))
}

/// One photo, decoded once: its embedding with the media's image model and its quality score
/// (genome.image_quality's `score`), for `cluster_pet`.
#[pg_extern(volatile, parallel_unsafe)]
fn _embed_photo(
    image: &[u8],
    model: &str,
) -> TableIterator<'static, (name!(embedding, Vector), name!(quality, f32))> {
    let (v, q) = crate::images::embed_with_quality(image, model);
    TableIterator::once((Vector(v), q))
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
    requires = ["models", hero_score_of, _pet_update, _embed_photo]
);
