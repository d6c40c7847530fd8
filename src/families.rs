//! Families: `genome.full_classify`, `genome.hdbscan_recluster` (the weekly job) and
//! `genome.assign_family` (the 10-minute job). Algorithms live in genome-core; this file reads
//! and writes rows with SPI, takes the locks and reports progress.
//!
//! Locking: a full run holds the collection's advisory lock exclusively for its transaction;
//! assign_family holds it shared (so several can run together and split rows with SKIP LOCKED)
//! and skips its turn while a full run is working. Everything a run writes is in the caller's
//! transaction: an ERROR or a cancel leaves the previous families and assignments untouched.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

use genome_core::cluster::families::{
    centroids, keyword_labels, match_families, member_similarities, no_families_reason, quantile,
    CentroidSet,
};
use genome_core::cluster::{classify, ClassifyParams, Method, Points, Reduction};
use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use crate::collections::{ident, load, try_lock, Collection};
use crate::errors::raise;
use crate::gucs;
use crate::models::{embed_by_length, resolve};
use crate::progress::Progress;
use crate::vector::Vector;

/// Exemplars stored per family, and members whose texts label a family.
const EXEMPLARS: usize = 5;
const LABEL_MEMBERS: usize = 200;
/// Rows per UPDATE when writing assignments back.
const WRITE_CHUNK: usize = 20_000;

/// After a stage gave up because of a cancel: raise PostgreSQL's own cancel ERROR.
fn raise_cancel() -> ! {
    pg_sys::check_for_interrupts!();
    raise(
        PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
        "full classification cancelled".into(),
        None,
    )
}

/// rayon's global pool, sized by genome.cluster_threads the first time a backend clusters.
fn ensure_pool() {
    thread_local!(static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    if !DONE.with(|d| d.replace(true)) {
        let n = gucs::CLUSTER_THREADS.get().max(0) as usize;
        // Err means the pool exists already (another caller built it): fine.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("genome-{i}"))
            .build_global();
    }
}

fn check_arg(ok: bool, msg: &str) {
    if !ok {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            msg.to_string(),
            None,
        );
    }
}

/// Embed `texts` with the collection's model and write them to the rows `ids`.
fn embed_and_store(
    c: &Collection,
    ids: &[String],
    texts: &[String],
    prog: &mut Progress,
    done0: i64,
) -> Vec<Vec<f32>> {
    let row = resolve(Some(&c.model));
    let mut out = Vec::with_capacity(texts.len());
    for (k, chunk) in texts.chunks(256).enumerate() {
        // length-sorted model batches, as embed_batch: 1.5x more rows/s than id order
        // (assign_bench: 51 -> 75 rows/s)
        let slice: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let vecs = embed_by_length(&row, &slice);
        let lo = k * 256;
        let idchunk: Vec<String> = ids[lo..lo + chunk.len()].to_vec();
        let vv: Vec<Vector> = vecs.iter().cloned().map(Vector).collect();
        c.as_owner(|| {
            Spi::run_with_args(
                &format!(
                    "UPDATE {rel} t SET {emb} = u.e FROM unnest($1::text[], $2) AS u(id, e) WHERE t.{id} = u.id::{ty}",
                    rel = c.rel,
                    emb = ident(&c.emb_col),
                    id = ident(&c.id_col),
                    ty = c.id_type
                ),
                &[idchunk.into(), vv.into()],
            )
        })
        .unwrap_or_else(|e| error!("pg_genome: writing embeddings failed: {e}"));
        out.extend(vecs);
        prog.advance(done0 + out.len() as i64);
    }
    out
}

/// The embed stage of full_classify: every row with text but no embedding.
fn embed_missing(c: &Collection, prog: &mut Progress) -> i64 {
    let sql = format!(
        "SELECT {id}::text, {txt}::text FROM {rel} WHERE {emb} IS NULL AND {txt} IS NOT NULL ORDER BY {id}",
        id = ident(&c.id_col),
        txt = ident(&c.text_col),
        rel = c.rel,
        emb = ident(&c.emb_col)
    );
    let (ids, texts): (Vec<String>, Vec<String>) = c
        .as_owner(|| {
            Spi::connect(|client| {
                let mut ids = Vec::new();
                let mut texts = Vec::new();
                for r in client.select(&sql, None, &[])? {
                    ids.push(r.get::<String>(1)?.unwrap_or_default());
                    texts.push(r.get::<String>(2)?.unwrap_or_default());
                }
                Ok::<_, pgrx::spi::SpiError>((ids, texts))
            })
        })
        .unwrap_or_else(|e| error!("pg_genome: reading rows to embed failed: {e}"));
    prog.stage("embed", ids.len() as i64);
    embed_and_store(c, &ids, &texts, prog, 0);
    ids.len() as i64
}

/// All rows with an embedding: ids (as text) and the vectors, read through a cursor.
fn load_embeddings(c: &Collection, prog: &mut Progress) -> (Vec<String>, Points) {
    let total = c
        .as_owner(|| {
            Spi::get_one::<i64>(&format!(
                "SELECT count(*) FROM {} WHERE {} IS NOT NULL",
                c.rel,
                ident(&c.emb_col)
            ))
        })
        .ok()
        .flatten()
        .unwrap_or(0);
    prog.stage("load", total);
    let sql = format!(
        "SELECT {id}::text, {emb} FROM {rel} WHERE {emb} IS NOT NULL ORDER BY {id}",
        id = ident(&c.id_col),
        emb = ident(&c.emb_col),
        rel = c.rel
    );
    let mut ids = Vec::with_capacity(total as usize);
    let mut data: Vec<f32> = Vec::with_capacity(total as usize * c.dimension);
    c.as_owner(|| Spi::connect(|client| {
        let mut cur = client.open_cursor(&sql, &[]);
        loop {
            pg_sys::check_for_interrupts!();
            let t = cur.fetch(10_000)?;
            if t.is_empty() {
                break;
            }
            for r in t {
                let id = r.get::<String>(1)?.unwrap_or_default();
                let v = r.get::<Vector>(2)?.map(|v| v.0).unwrap_or_default();
                if v.len() != c.dimension {
                    raise(
                        PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
                        format!("row {id} of collection \"{}\" has a {}-d embedding, the collection's model gives {}", c.name, v.len(), c.dimension),
                        Some(format!("clear the column: UPDATE {} SET {} = NULL WHERE ...", c.rel, ident(&c.emb_col))),
                    );
                }
                ids.push(id);
                data.extend(v);
            }
            prog.advance(ids.len() as i64);
        }
        Ok::<_, pgrx::spi::SpiError>(())
    }))
    .unwrap_or_else(|e| error!("pg_genome: reading embeddings failed: {e}"));
    let d = c.dimension.max(1);
    (
        ids,
        Points {
            n: data.len() / d,
            d,
            data,
        },
    )
}

fn texts_of(c: &Collection, ids: &[String]) -> HashMap<String, String> {
    let sql = format!(
        "SELECT {id}::text, {txt}::text FROM {rel} WHERE {id} = ANY($1::text[]::{ty}[])",
        id = ident(&c.id_col),
        txt = ident(&c.text_col),
        rel = c.rel,
        ty = c.id_type
    );
    c.as_owner(|| {
        Spi::connect(|client| {
            let mut m = HashMap::new();
            for r in client.select(&sql, None, &[ids.to_vec().into()])? {
                if let (Some(i), Some(t)) = (r.get::<String>(1)?, r.get::<String>(2)?) {
                    m.insert(i, t);
                }
            }
            Ok::<_, pgrx::spi::SpiError>(m)
        })
    })
    .unwrap_or_else(|e| error!("pg_genome: reading texts failed: {e}"))
}

/// Write family ids to the rows, in chunks, skipping rows that already carry the right one.
fn write_assignments(c: &Collection, ids: &[String], fams: &[i64], prog: &mut Progress) {
    let sql = format!(
        "UPDATE {rel} t SET {fam} = u.f FROM unnest($1::text[], $2::int8[]) AS u(id, f) \
          WHERE t.{id} = u.id::{ty} AND t.{fam} IS DISTINCT FROM u.f",
        rel = c.rel,
        fam = ident(&c.fam_col),
        id = ident(&c.id_col),
        ty = c.id_type
    );
    for (k, (ic, fc)) in ids
        .chunks(WRITE_CHUNK)
        .zip(fams.chunks(WRITE_CHUNK))
        .enumerate()
    {
        pg_sys::check_for_interrupts!();
        c.as_owner(|| Spi::run_with_args(&sql, &[ic.to_vec().into(), fc.to_vec().into()]))
            .unwrap_or_else(|e| error!("pg_genome: writing family ids failed: {e}"));
        prog.advance(((k + 1) * WRITE_CHUNK).min(ids.len()) as i64);
    }
}

type RunRow = (i64, i64, i64, i32, i64, i32, i32, i32, bool, f64);

#[allow(clippy::too_many_arguments)]
fn run(
    kind: &'static str,
    collection: &str,
    min_cluster_size: i32,
    min_samples: Option<i32>,
    reduction: &str,
    n_components: i32,
    n_neighbors: i32,
    method: &str,
    seed: i64,
    threshold_quantile: Option<f64>,
) -> RunRow {
    let t0 = Instant::now();
    check_arg(min_cluster_size >= 2, "min_cluster_size must be at least 2");
    check_arg(
        min_samples.is_none_or(|m| m >= 1),
        "min_samples must be at least 1",
    );
    check_arg(
        (2..=100).contains(&n_components),
        "n_components must be between 2 and 100",
    );
    check_arg(
        (2..=200).contains(&n_neighbors),
        "n_neighbors must be between 2 and 200",
    );
    let reduction: Reduction = reduction.parse().unwrap_or_else(|e: String| {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, e, None)
    });
    let method: Method = method.parse().unwrap_or_else(|e: String| {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, e, None)
    });
    let q = threshold_quantile.unwrap_or_else(|| gucs::THRESHOLD_QUANTILE.get());
    check_arg(
        (0.0..=1.0).contains(&q),
        "threshold_quantile must be between 0 and 1",
    );

    let c = load(collection);
    if !try_lock(&c.name, false) {
        raise(
            PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
            format!(
                "another full classification or assignment is running on collection \"{}\"",
                c.name
            ),
            Some("see genome.progress; try again when it has finished".into()),
        );
    }
    let started = Spi::get_one::<pgrx::datum::TimestampWithTimeZone>("SELECT clock_timestamp()")
        .ok()
        .flatten();
    let mut prog = Progress::start(kind, &c.name);
    let mut timings: Vec<(String, f64)> = Vec::new();
    let mut stage_t = Instant::now();
    fn lap(name: &str, timings: &mut Vec<(String, f64)>, stage_t: &mut Instant) {
        timings.push((name.to_string(), stage_t.elapsed().as_secs_f64()));
        *stage_t = Instant::now();
    }

    let n_embedded = if kind == "full_classify" {
        embed_missing(&c, &mut prog)
    } else {
        0
    };
    if kind == "full_classify" {
        lap("embed", &mut timings, &mut stage_t);
    }
    let (ids, points) = load_embeddings(&c, &mut prog);
    lap("load", &mut timings, &mut stage_t);

    ensure_pool();
    let params = ClassifyParams {
        min_cluster_size: min_cluster_size as usize,
        min_samples: min_samples.map(|m| m as usize),
        reduction,
        n_components: n_components as usize,
        n_neighbors: n_neighbors as usize,
        method,
        seed: seed as u64,
        ..Default::default()
    };
    let n = points.n;
    let out = if n == 0 {
        None
    } else {
        // classify calls `progress` on this thread, between its parallel stages.
        let r = classify(
            &points,
            params,
            &mut |s| prog.stage(s, n as i64),
            &crate::errors::interrupt_pending,
        );
        match r {
            Ok(r) => Some(r),
            Err(_) => raise_cancel(),
        }
    };
    if let Some(o) = &out {
        for (s, t) in &o.timings {
            timings.push((s.to_string(), *t));
        }
    }
    stage_t = Instant::now();

    // Families: centroids in the embedding space, matched against the live families.
    prog.stage("families", 0);
    let labels: Vec<i32> = out
        .as_ref()
        .map(|o| o.result.labels.clone())
        .unwrap_or_default();
    let k = out.as_ref().map_or(0, |o| o.result.n_clusters);
    let cents = centroids(&points, &labels, k);
    let sims = member_similarities(&points, &labels, &cents);
    let old: Vec<(i64, Vec<f32>)> = Spi::connect(|client| {
        let mut v = Vec::new();
        for r in client.select(
            "SELECT id, centroid FROM genome.families WHERE collection = $1 AND NOT is_unclustered AND retired_at IS NULL ORDER BY id",
            None,
            &[c.name.as_str().into()],
        )? {
            v.push((r.get::<i64>(1)?.unwrap_or_default(), r.get::<Vector>(2)?.map(|v| v.0).unwrap_or_default()));
        }
        Ok::<_, pgrx::spi::SpiError>(v)
    })
    .unwrap_or_else(|e| error!("pg_genome: reading families failed: {e}"));
    let old_cents: Vec<Vec<f32>> = old.iter().map(|o| o.1.clone()).collect();
    let matched = match_families(&old_cents, &cents, gucs::FAMILY_MATCH_THRESHOLD.get());
    // The run's row comes first (families point at it); its counts are filled in at the end.
    // Readers never see it half-done: it commits with everything else.
    let run_id = Spi::get_one_with_args::<i64>(
        "INSERT INTO genome.runs (collection, kind, status, started_at) VALUES ($1, $2, 'succeeded', $3) RETURNING id",
        &[c.name.as_str().into(), kind.into(), started.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| error!("pg_genome: recording the run failed"));

    // labels from the texts of the members nearest each centroid
    let label_ids: Vec<String> = sims
        .iter()
        .flat_map(|s| s.iter().take(LABEL_MEMBERS).map(|(_, i)| ids[*i].clone()))
        .collect();
    let texts = texts_of(&c, &label_ids);
    let mut ltexts: Vec<&str> = Vec::new();
    let mut llabels: Vec<i32> = Vec::new();
    for (j, s) in sims.iter().enumerate() {
        for (_, i) in s.iter().take(LABEL_MEMBERS) {
            if let Some(t) = texts.get(&ids[*i]) {
                ltexts.push(t);
                llabels.push(j as i32);
            }
        }
    }
    let names = keyword_labels(&ltexts, &llabels, k, 4);

    let mut fam_of_cluster = vec![0i64; k];
    let (mut kept, mut new) = (0i32, 0i32);
    for j in 0..k {
        let exemplars: Vec<String> = sims[j]
            .iter()
            .take(EXEMPLARS)
            .map(|(_, i)| ids[*i].clone())
            .collect();
        let thr = quantile(&sims[j], q) as f32;
        let label = if names[j].is_empty() {
            format!("family {}", j + 1)
        } else {
            names[j].clone()
        };
        let size = sims[j].len() as i64;
        let cent = Vector(cents[j].clone());
        fam_of_cluster[j] = match matched[j] {
            Some(o) => {
                kept += 1;
                Spi::run_with_args(
                    "UPDATE genome.families SET label = $2, centroid = $3, size = $4, exemplar_ids = $5, threshold = $6,
                            run_id = $7, updated_at = now() WHERE id = $1",
                    &[old[o].0.into(), label.into(), cent.into(), size.into(), exemplars.into(), thr.into(), run_id.into()],
                )
                .unwrap_or_else(|e| error!("pg_genome: updating a family failed: {e}"));
                old[o].0
            }
            None => {
                new += 1;
                Spi::get_one_with_args::<i64>(
                    "INSERT INTO genome.families (collection, label, centroid, size, exemplar_ids, threshold, run_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                    &[c.name.as_str().into(), label.into(), cent.into(), size.into(), exemplars.into(), thr.into(), run_id.into()],
                )
                .ok()
                .flatten()
                .unwrap_or_else(|| error!("pg_genome: inserting a family failed"))
            }
        };
    }
    let used: Vec<usize> = matched.iter().flatten().copied().collect();
    let retired: Vec<i64> = (0..old.len())
        .filter(|i| !used.contains(i))
        .map(|i| old[i].0)
        .collect();
    let noise = labels.iter().filter(|l| **l < 0).count() as i64;
    lap("families", &mut timings, &mut stage_t);

    // Every row re-assigned: members to their family, noise to Unclustered.
    prog.stage("assign", n as i64);
    let fams: Vec<i64> = labels
        .iter()
        .map(|l| {
            if *l >= 0 {
                fam_of_cluster[*l as usize]
            } else {
                c.unclustered_id
            }
        })
        .collect();
    write_assignments(&c, &ids, &fams, &mut prog);
    // full_classify embedded everything it could: rows left without an embedding have no text.
    let textless = if kind == "full_classify" {
        // a plain UPDATE, its row count from SPI: a data-modifying WITH would refuse tables
        // with DO ALSO rules
        let sql = format!(
            "UPDATE {rel} SET {fam} = $1 WHERE {emb} IS NULL AND {fam} IS DISTINCT FROM $1",
            rel = c.rel,
            fam = ident(&c.fam_col),
            emb = ident(&c.emb_col)
        );
        c.as_owner(|| {
            Spi::connect_mut(|client| {
                client
                    .update(&sql, None, &[c.unclustered_id.into()])
                    .map(|t| t.len() as i64)
            })
        })
        .unwrap_or_else(|e| error!("pg_genome: assigning rows without text failed: {e}"))
    } else {
        0
    };
    Spi::run_with_args(
        "UPDATE genome.families SET retired_at = now(), updated_at = now(), size = 0, run_id = $2 WHERE id = ANY($1)",
        &[retired.clone().into(), run_id.into()],
    )
    .unwrap_or_else(|e| error!("pg_genome: retiring families failed: {e}"));
    let unclustered = c
        .as_owner(|| {
            Spi::get_one_with_args::<i64>(
                &format!(
                    "SELECT count(*) FROM {rel} WHERE {fam} = $1",
                    rel = c.rel,
                    fam = ident(&c.fam_col)
                ),
                &[c.unclustered_id.into()],
            )
        })
        .unwrap_or_else(|e| error!("pg_genome: counting Unclustered failed: {e}"))
        .unwrap_or(0);
    Spi::run_with_args(
        "UPDATE genome.families SET size = $3, run_id = $2, updated_at = now() WHERE id = $1",
        &[c.unclustered_id.into(), run_id.into(), unclustered.into()],
    )
    .unwrap_or_else(|e| error!("pg_genome: updating Unclustered failed: {e}"));
    Spi::run_with_args(
        "UPDATE genome.collections SET generation = generation + 1 WHERE name = $1",
        &[c.name.as_str().into()],
    )
    .unwrap_or_else(|e| error!("pg_genome: updating the collection failed: {e}"));
    lap("assign", &mut timings, &mut stage_t);

    let approximate = out.as_ref().is_some_and(|o| o.approximate);
    let mut params_json = serde_json::json!({
        "min_cluster_size": min_cluster_size, "min_samples": min_samples, "reduction": format!("{reduction:?}").to_lowercase(),
        "n_components": n_components, "n_neighbors": n_neighbors, "method": format!("{method:?}").to_lowercase(),
        "seed": seed, "threshold_quantile": q, "match_threshold": gucs::FAMILY_MATCH_THRESHOLD.get(),
    });
    if k == 0 {
        // say why, in the run's record and to the caller (0.5.0; 0.4.1 gave no reason)
        let why = no_families_reason(&points, min_cluster_size as usize);
        notice!("pg_genome: {kind} \"{}\" found no families: {why}", c.name);
        params_json["no_families_reason"] = serde_json::json!(why);
    }
    let timings_json = serde_json::Value::Object(
        timings
            .iter()
            .map(|(s, t)| (s.clone(), serde_json::json!((t * 1000.0).round() / 1000.0)))
            .collect(),
    );
    Spi::run_with_args(
        "UPDATE genome.runs SET params = $2::jsonb, n_rows = $3, n_embedded = $4, n_clusters = $5, n_noise = $6, n_kept = $7,
                n_new = $8, n_retired = $9, approximate = $10, timings = $11::jsonb, finished_at = clock_timestamp()
          WHERE id = $1",
        &[
            run_id.into(),
            params_json.to_string().into(),
            (n as i64).into(),
            n_embedded.into(),
            (k as i32).into(),
            noise.into(),
            kept.into(),
            new.into(),
            (retired.len() as i32).into(),
            approximate.into(),
            timings_json.to_string().into(),
        ],
    )
    .unwrap_or_else(|e| error!("pg_genome: recording the run failed: {e}"));
    invalidate(&c.name);
    let secs = t0.elapsed().as_secs_f64();
    notice!(
        "pg_genome: {kind} \"{}\": {n} rows, {k} families ({kept} kept, {new} new, {} retired), {noise} unclustered{} in {secs:.1} s",
        c.name,
        retired.len(),
        if textless > 0 { format!(" (+{textless} without text)") } else { String::new() }
    );
    (
        run_id,
        n as i64,
        n_embedded,
        k as i32,
        noise,
        kept,
        new,
        retired.len() as i32,
        approximate,
        secs,
    )
}

/// The weekly job: embed rows that have no embedding, reduce, cluster, update families and
/// re-assign every row. One transaction: on ERROR or cancel nothing changes.
#[pg_extern(volatile)]
#[allow(clippy::too_many_arguments)]
pub fn full_classify(
    collection: &str,
    min_cluster_size: default!(i32, 15),
    min_samples: default!(Option<i32>, "NULL"),
    reduction: default!(&str, "'umap'"),
    n_components: default!(i32, 5),
    n_neighbors: default!(i32, 15),
    method: default!(&str, "'auto'"),
    seed: default!(i64, 42),
    threshold_quantile: default!(Option<f64>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(run_id, i64),
        name!(n_rows, i64),
        name!(n_embedded, i64),
        name!(n_clusters, i32),
        name!(n_noise, i64),
        name!(n_kept, i32),
        name!(n_new, i32),
        name!(n_retired, i32),
        name!(approximate, bool),
        name!(seconds, f64),
    ),
> {
    TableIterator::once(run(
        "full_classify",
        collection,
        min_cluster_size,
        min_samples,
        reduction,
        n_components,
        n_neighbors,
        method,
        seed,
        threshold_quantile,
    ))
}

/// full_classify without the embedding step (rows without an embedding are left as they are).
#[pg_extern(volatile)]
#[allow(clippy::too_many_arguments)]
pub fn hdbscan_recluster(
    collection: &str,
    min_cluster_size: default!(i32, 15),
    min_samples: default!(Option<i32>, "NULL"),
    reduction: default!(&str, "'umap'"),
    n_components: default!(i32, 5),
    n_neighbors: default!(i32, 15),
    method: default!(&str, "'auto'"),
    seed: default!(i64, 42),
    threshold_quantile: default!(Option<f64>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(run_id, i64),
        name!(n_rows, i64),
        name!(n_embedded, i64),
        name!(n_clusters, i32),
        name!(n_noise, i64),
        name!(n_kept, i32),
        name!(n_new, i32),
        name!(n_retired, i32),
        name!(approximate, bool),
        name!(seconds, f64),
    ),
> {
    TableIterator::once(run(
        "hdbscan_recluster",
        collection,
        min_cluster_size,
        min_samples,
        reduction,
        n_components,
        n_neighbors,
        method,
        seed,
        threshold_quantile,
    ))
}

// ---- incremental assignment ------------------------------------------------------------------

struct Cached {
    key: (i64, i64),
    set: CentroidSet,
}

thread_local! {
    /// Centroid matrices per collection, valid while (generation, Unclustered id) is unchanged:
    /// every full run bumps the generation; a re-registered collection has a new Unclustered row.
    static CENTROIDS: RefCell<HashMap<String, Cached>> = RefCell::new(HashMap::new());
}

fn invalidate(name: &str) {
    CENTROIDS.with(|c| c.borrow_mut().remove(name));
}

fn with_centroids<R>(c: &Collection, f: impl FnOnce(&CentroidSet) -> R) -> R {
    let key = (c.generation, c.unclustered_id);
    let hit = CENTROIDS.with(|m| m.borrow().get(&c.name).is_some_and(|x| x.key == key));
    if !hit {
        let mut set = CentroidSet::new(c.dimension);
        Spi::connect(|client| {
            for r in client.select(
                "SELECT id, centroid, coalesce(threshold, 0) FROM genome.families
                  WHERE collection = $1 AND NOT is_unclustered AND retired_at IS NULL ORDER BY id",
                None,
                &[c.name.as_str().into()],
            )? {
                let id = r.get::<i64>(1)?.unwrap_or_default();
                let v = r.get::<Vector>(2)?.map(|v| v.0).unwrap_or_default();
                if v.len() == c.dimension {
                    set.push(id, &v, r.get::<f32>(3)?.unwrap_or(0.0));
                }
            }
            Ok::<_, pgrx::spi::SpiError>(())
        })
        .unwrap_or_else(|e| error!("pg_genome: reading centroids failed: {e}"));
        CENTROIDS.with(|m| m.borrow_mut().insert(c.name.clone(), Cached { key, set }));
    }
    CENTROIDS.with(|m| f(&m.borrow()[&c.name].set))
}

/// How many processes have loaded centroids for which collections (for tests and health).
#[pg_extern(volatile, parallel_safe)]
pub fn cached_centroids() -> TableIterator<
    'static,
    (
        name!(collection, String),
        name!(generation, i64),
        name!(families, i32),
    ),
> {
    let rows: Vec<_> = CENTROIDS.with(|m| {
        m.borrow()
            .iter()
            .map(|(k, v)| (k.clone(), v.key.0, v.set.len() as i32))
            .collect()
    });
    TableIterator::new(rows)
}

/// The 10-minute job: when at least `min_pending` rows have no family, take the oldest
/// `batch_size` of them (rows locked by another call are skipped), embed those without an
/// embedding, and give each the family whose centroid is most similar if the cosine reaches
/// `threshold` (NULL: each family's calibrated threshold), else Unclustered.
#[pg_extern(volatile)]
pub fn assign_family(
    collection: &str,
    batch_size: default!(i32, 500),
    min_pending: default!(i32, 500),
    threshold: default!(Option<f32>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(processed, i64),
        name!(assigned, i64),
        name!(unclustered, i64),
    ),
> {
    check_arg(batch_size >= 1, "batch_size must be at least 1");
    check_arg(min_pending >= 0, "min_pending must not be negative");
    check_arg(
        threshold.is_none_or(|t| (-1.0..=1.0).contains(&t)),
        "threshold must be a cosine between -1 and 1",
    );
    let c = load(collection);
    let nothing = || TableIterator::once((0i64, 0i64, 0i64));
    if !try_lock(&c.name, true) {
        notice!(
            "pg_genome: assign_family \"{}\": a full classification is running; skipped",
            c.name
        );
        return nothing();
    }
    let live = Spi::get_one_with_args::<i64>(
        "SELECT count(*) FROM genome.families WHERE collection = $1 AND NOT is_unclustered AND retired_at IS NULL",
        &[c.name.as_str().into()],
    )
    .ok()
    .flatten()
    .unwrap_or(0);
    if live == 0 {
        notice!(
            "pg_genome: assign_family \"{}\": no families yet; run genome.full_classify first",
            c.name
        );
        return nothing();
    }
    let pending = c
        .as_owner(|| {
            Spi::get_one::<i64>(&format!(
                "SELECT count(*) FROM {} WHERE {} IS NULL",
                c.rel,
                ident(&c.fam_col)
            ))
        })
        .unwrap_or_else(|e| error!("pg_genome: counting pending rows failed: {e}"))
        .unwrap_or(0);
    if pending < min_pending as i64 || pending == 0 {
        return nothing();
    }
    let mut prog = Progress::start("assign_family", &c.name);
    prog.stage("select", pending.min(batch_size as i64));
    let order = match &c.created_col {
        Some(col) => format!("{} NULLS LAST, {}", ident(col), ident(&c.id_col)),
        None => ident(&c.id_col),
    };
    let sql = format!(
        "SELECT {id}::text, {txt}::text, {emb} FROM {rel} WHERE {fam} IS NULL ORDER BY {order} LIMIT $1 FOR UPDATE SKIP LOCKED",
        id = ident(&c.id_col),
        txt = ident(&c.text_col),
        emb = ident(&c.emb_col),
        rel = c.rel,
        fam = ident(&c.fam_col),
    );
    let rows: Vec<(String, Option<String>, Option<Vec<f32>>)> = c
        .as_owner(|| {
            Spi::connect_mut(|client| {
                let mut v = Vec::new();
                for r in client.update(&sql, None, &[(batch_size as i64).into()])? {
                    v.push((
                        r.get::<String>(1)?.unwrap_or_default(),
                        r.get::<String>(2)?,
                        r.get::<Vector>(3)?.map(|x| x.0),
                    ));
                }
                Ok::<_, pgrx::spi::SpiError>(v)
            })
        })
        .unwrap_or_else(|e| error!("pg_genome: reading pending rows failed: {e}"));
    if rows.is_empty() {
        return nothing();
    }
    // embed the ones that need it
    let need: Vec<usize> = (0..rows.len())
        .filter(|i| rows[*i].2.is_none() && rows[*i].1.is_some())
        .collect();
    let mut vecs: Vec<Option<Vec<f32>>> = rows.iter().map(|r| r.2.clone()).collect();
    if !need.is_empty() {
        prog.stage("embed", need.len() as i64);
        let ids: Vec<String> = need.iter().map(|i| rows[*i].0.clone()).collect();
        let texts: Vec<String> = need
            .iter()
            .map(|i| rows[*i].1.clone().unwrap_or_default())
            .collect();
        let out = embed_and_store(&c, &ids, &texts, &mut prog, 0);
        for (i, v) in need.iter().zip(out) {
            vecs[*i] = Some(v);
        }
    }
    prog.stage("assign", rows.len() as i64);
    let mut fams = Vec::with_capacity(rows.len());
    let mut counts: HashMap<i64, i64> = HashMap::new();
    with_centroids(&c, |set| {
        for v in &vecs {
            let f = match v {
                Some(v) if v.len() == c.dimension => {
                    set.assign(v, threshold).0.unwrap_or(c.unclustered_id)
                }
                _ => c.unclustered_id,
            };
            *counts.entry(f).or_default() += 1;
            fams.push(f);
        }
    });
    let ids: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    write_assignments(&c, &ids, &fams, &mut prog);
    // Family sizes, locked in id order so that concurrent calls cannot deadlock.
    let mut fids: Vec<i64> = counts.keys().copied().collect();
    fids.sort_unstable();
    let ns: Vec<i64> = fids.iter().map(|f| counts[f]).collect();
    Spi::run_with_args(
        "WITH l AS (SELECT id FROM genome.families WHERE id = ANY($1) ORDER BY id FOR UPDATE)
         UPDATE genome.families f SET size = f.size + u.n, updated_at = now()
           FROM unnest($1::int8[], $2::int8[]) AS u(id, n), l WHERE f.id = u.id AND l.id = u.id",
        &[fids.into(), ns.into()],
    )
    .unwrap_or_else(|e| error!("pg_genome: updating family sizes failed: {e}"));
    let unc = counts.get(&c.unclustered_id).copied().unwrap_or(0);
    let processed = rows.len() as i64;
    TableIterator::once((processed, processed - unc, unc))
}
