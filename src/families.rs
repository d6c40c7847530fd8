//! Full runs: `genome.full_classify` and `genome.hdbscan_recluster` (the weekly job). A run
//! reads the collection's embeddings (`collections`), clusters them (genome-core's
//! `cluster::classify`), plans the families (genome-core's `families::plan`: centroids, stable
//! ids, thresholds, exemplars, labels) and writes the plan: the families' rows, every row's
//! family and the run's row in genome.runs. This file checks the arguments, takes the lock,
//! reports progress and does the writing; the 10-minute job is `assign`.
//!
//! Locking: a full run holds the collection's advisory lock exclusively for its transaction
//! (assign_family holds it shared and skips its turn meanwhile). Everything a run writes is in
//! the caller's transaction: an ERROR or a cancel leaves the previous families and assignments
//! untouched.

use std::fmt;
use std::time::Instant;

use genome_core::base::Points;
use genome_core::cluster::{classify, ClassifyParams, Method, Reduction};
use genome_core::families::{plan, size_on_sample, FamilyPlan, LiveFamily, PlanParams};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB, PgSqlErrorCode};

use crate::collections::{
    count_embedded, count_unclustered, drop_pending, each_embedding_except, embed_missing, load,
    load_embeddings, texts_of, try_lock, unclustered_without_embedding, write_assignments,
    write_families_of, Collection,
};
use crate::errors::{raise, OrRaise};
use crate::gucs;
use crate::progress::Progress;
use crate::vector::Vector;

/// Raise ERRCODE_INVALID_PARAMETER_VALUE with `msg` unless `ok`.
pub fn check_arg(ok: bool, msg: &str) {
    if !ok {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            msg.to_string(),
            None,
        );
    }
}

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
pub(crate) fn ensure_pool() {
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

/// The two kinds of full run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// Embeds the rows that have text but no embedding first, and puts the rows still without
    /// one (they have no text) in Unclustered.
    FullClassify,
    /// Clusters the embeddings there are; rows without one are left as they are.
    HdbscanRecluster,
}

impl RunKind {
    /// The name in genome.runs.kind, genome.progress and NOTICEs (the SQL function's name).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FullClassify => "full_classify",
            Self::HdbscanRecluster => "hdbscan_recluster",
        }
    }
    /// Whether the run embeds missing rows (and assigns rows without text).
    pub fn embeds(self) -> bool {
        self == Self::FullClassify
    }
}

impl fmt::Display for RunKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SQL arguments of a full run, as given (both kinds take the same).
#[derive(Debug, Clone, Copy)]
pub struct RunArgs<'a> {
    pub collection: &'a str,
    pub min_cluster_size: i32,
    pub min_samples: Option<i32>,
    pub reduction: &'a str,
    pub n_components: i32,
    pub n_neighbors: i32,
    pub method: &'a str,
    pub seed: i64,
    pub threshold_quantile: Option<f64>,
}

/// A run's checked settings: for the clustering, for the plan, and as genome.runs.params
/// records them.
struct RunSettings {
    classify: ClassifyParams,
    plan: PlanParams,
    record: serde_json::Value,
}

impl RunArgs<'_> {
    /// Check the arguments (ERROR on a bad one) and read the GUCs they default to.
    fn settings(&self) -> RunSettings {
        check_arg(
            self.min_cluster_size >= 2,
            "min_cluster_size must be at least 2",
        );
        check_arg(
            self.min_samples.is_none_or(|m| m >= 1),
            "min_samples must be at least 1",
        );
        check_arg(
            (2..=100).contains(&self.n_components),
            "n_components must be between 2 and 100",
        );
        check_arg(
            (2..=200).contains(&self.n_neighbors),
            "n_neighbors must be between 2 and 200",
        );
        let reduction: Reduction = self.reduction.parse().unwrap_or_else(|e: String| {
            raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, e, None)
        });
        let method: Method = self.method.parse().unwrap_or_else(|e: String| {
            raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, e, None)
        });
        let q = self
            .threshold_quantile
            .unwrap_or_else(|| gucs::THRESHOLD_QUANTILE.get());
        check_arg(
            (0.0..=1.0).contains(&q),
            "threshold_quantile must be between 0 and 1",
        );
        let match_threshold = gucs::FAMILY_MATCH_THRESHOLD.get();
        RunSettings {
            classify: ClassifyParams {
                min_cluster_size: self.min_cluster_size as usize,
                min_samples: self.min_samples.map(|m| m as usize),
                reduction,
                n_components: self.n_components as usize,
                n_neighbors: self.n_neighbors as usize,
                method,
                seed: self.seed as u64,
                ..Default::default()
            },
            plan: PlanParams {
                threshold_quantile: q,
                match_threshold,
                min_cluster_size: self.min_cluster_size as usize,
                ..Default::default()
            },
            record: serde_json::json!({
                "min_cluster_size": self.min_cluster_size, "min_samples": self.min_samples,
                "reduction": format!("{reduction:?}").to_lowercase(),
                "n_components": self.n_components, "n_neighbors": self.n_neighbors,
                "method": format!("{method:?}").to_lowercase(), "seed": self.seed,
                "threshold_quantile": q, "match_threshold": match_threshold,
            }),
        }
    }
}

/// What a full run returns: its row in genome.runs, in short.
#[derive(Debug, Clone, Copy)]
pub struct RunSummary {
    pub run_id: i64,
    pub n_rows: i64,
    pub n_embedded: i64,
    pub n_clusters: i32,
    pub n_noise: i64,
    pub n_kept: i32,
    pub n_new: i32,
    pub n_retired: i32,
    pub approximate: bool,
    pub seconds: f64,
}

/// A run's result row, in the order of the SQL functions' result columns.
type RunRow = (i64, i64, i64, i32, i64, i32, i32, i32, bool, f64);

impl RunSummary {
    fn row(self) -> RunRow {
        (
            self.run_id,
            self.n_rows,
            self.n_embedded,
            self.n_clusters,
            self.n_noise,
            self.n_kept,
            self.n_new,
            self.n_retired,
            self.approximate,
            self.seconds,
        )
    }
}

/// Seconds per stage, in order, for genome.runs.timings.
struct Timings {
    laps: Vec<(String, f64)>,
    since: Instant,
}

impl Timings {
    fn start() -> Self {
        Self {
            laps: Vec::new(),
            since: Instant::now(),
        }
    }
    /// Stage `name` ended now (it began at the previous lap).
    fn lap(&mut self, name: &str) {
        self.laps
            .push((name.to_string(), self.since.elapsed().as_secs_f64()));
        self.since = Instant::now();
    }
    /// Stages timed elsewhere (classify's), ending now.
    fn extend(&mut self, laps: &[(&str, f64)]) {
        self.laps
            .extend(laps.iter().map(|(s, t)| (s.to_string(), *t)));
        self.since = Instant::now();
    }
    /// {"stage": seconds, ...}, to the millisecond.
    fn json(&self) -> JsonB {
        JsonB(serde_json::Value::Object(
            self.laps
                .iter()
                .map(|(s, t)| (s.clone(), serde_json::json!((t * 1000.0).round() / 1000.0)))
                .collect(),
        ))
    }
}

/// The collection's live families (not Unclustered, not retired), in id order.
fn live_families(c: &Collection) -> Vec<LiveFamily> {
    Spi::connect(|client| {
        let mut v = Vec::new();
        for r in client.select(
            "SELECT id, centroid FROM genome.families WHERE collection = $1 AND NOT is_unclustered AND retired_at IS NULL ORDER BY id",
            None,
            &[c.name.as_str().into()],
        )? {
            v.push(LiveFamily {
                id: r.get::<i64>(1)?.unwrap_or_default(),
                centroid: r.get::<Vector>(2)?.map(|v| v.0).unwrap_or_default(),
            });
        }
        Ok::<_, pgrx::spi::SpiError>(v)
    })
    .or_raise("reading families")
}

/// Write the planned families (in plan order: new ones get their ids in that order) under the
/// run `run_id`; returns their ids. `ids` maps the plan's rows to the table's ids.
fn write_families(c: &Collection, p: &FamilyPlan, ids: &[String], run_id: i64) -> Vec<i64> {
    p.families
        .iter()
        .map(|f| {
            let exemplars: Vec<String> = f.exemplars.iter().map(|&i| ids[i].clone()).collect();
            let (label, cent, size) = (f.label.as_str(), Vector(f.centroid.clone()), f.size as i64);
            match f.keeps {
                Some(id) => {
                    Spi::run_with_args(
                        "UPDATE genome.families SET label = $2, centroid = $3, size = $4, exemplar_ids = $5, threshold = $6,
                                run_id = $7, updated_at = now() WHERE id = $1",
                        &[id.into(), label.into(), cent.into(), size.into(), exemplars.into(), f.threshold.into(), run_id.into()],
                    )
                    .or_raise("updating a family");
                    id
                }
                None => Spi::get_one_with_args::<i64>(
                    "INSERT INTO genome.families (collection, label, centroid, size, exemplar_ids, threshold, run_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                    &[c.name.as_str().into(), label.into(), cent.into(), size.into(), exemplars.into(), f.threshold.into(), run_id.into()],
                )
                .or_raise("inserting a family")
                .unwrap_or_else(|| error!("pg_genome: inserting a family returned no row")),
            }
        })
        .collect()
}

/// Cluster the rows (none: no cluster): labels, the number of clusters and whether the
/// approximate path ran. Stages are reported to `prog` and timed into `timings`.
fn cluster(
    points: &Points,
    params: ClassifyParams,
    prog: &mut Progress,
    timings: &mut Timings,
) -> (Vec<i32>, usize, bool) {
    ensure_pool();
    let n = points.n;
    if n == 0 {
        timings.extend(&[]);
        return (Vec::new(), 0, false);
    }
    // classify calls `progress` on this thread, between its parallel stages.
    // a stage's steps (NN-descent rounds, layout epochs) are its progress: done of total
    let mut current = String::new();
    let o = classify(
        points,
        params,
        &mut |s, done, total| {
            if s != current {
                current = s.to_string();
                prog.stage(s, n as i64);
            }
            if total > 0 {
                prog.steps(done as i64, total as i64);
            }
        },
        &crate::errors::interrupt_pending,
    )
    .unwrap_or_else(|_| raise_cancel());
    timings.extend(&o.timings);
    (o.result.labels, o.result.n_clusters, o.approximate)
}

/// The texts of the plan's `rows` (indices into `ids`), None where a row has none.
fn label_texts(c: &Collection, ids: &[String], rows: &[usize]) -> Vec<Option<String>> {
    let want: Vec<String> = rows.iter().map(|&i| ids[i].clone()).collect();
    let mut got = texts_of(c, &want);
    want.iter().map(|id| got.remove(id)).collect()
}

/// The run's row in genome.runs, before its counts are known: families point at it. Readers
/// never see it half-done: it commits with everything else.
fn insert_run(c: &Collection, kind: RunKind, started: Option<TimestampWithTimeZone>) -> i64 {
    Spi::get_one_with_args::<i64>(
        "INSERT INTO genome.runs (collection, kind, status, started_at) VALUES ($1, $2, 'succeeded', $3) RETURNING id",
        &[c.name.as_str().into(), kind.as_str().into(), started.into()],
    )
    .or_raise("recording the run")
    .unwrap_or_else(|| error!("pg_genome: recording the run returned no row"))
}

/// Rows placed between two checks for a cancel.
const PLACE_ROWS: usize = 1_000;

/// A run on a sample (`sample`: its rows' ids): each of the `rest` other rows gets the family
/// whose centroid is nearest if its cosine reaches that family's calibrated threshold, else
/// Unclustered, as assign_family places a new row; read and written a fetch at a time, so memory
/// stays the sample's. The families grow by the rows they got. Returns (rows placed, of them
/// Unclustered).
fn place_rest(c: &Collection, sample: &[String], rest: i64, prog: &mut Progress) -> (i64, i64) {
    prog.stage("place", rest);
    let skip: std::collections::HashSet<&str> = sample.iter().map(String::as_str).collect();
    let set = crate::assign::live_centroids(c);
    let mut counts: std::collections::HashMap<i64, i64> = std::collections::HashMap::new();
    let (mut placed, mut unclustered) = (0i64, 0i64);
    each_embedding_except(c, &skip, |ids, data| {
        // a thousand rows at a time against every centroid (under 0.6 s at 84,000 families on
        // two cores), so that a cancel is seen within that
        let mut fams: Vec<i64> = Vec::with_capacity(ids.len());
        for part in data.chunks(PLACE_ROWS * c.dimension.max(1)) {
            pg_sys::check_for_interrupts!();
            fams.extend(
                set.assign_batch(part, None)
                    .into_iter()
                    .map(|(f, _)| f.unwrap_or(c.unclustered_id)),
            );
        }
        for &f in &fams {
            if f == c.unclustered_id {
                unclustered += 1;
            } else {
                *counts.entry(f).or_default() += 1;
            }
        }
        write_families_of(c, ids, &fams);
        placed += ids.len() as i64;
        prog.advance(placed);
    });
    let mut fids: Vec<i64> = counts.keys().copied().collect();
    fids.sort_unstable();
    let ns: Vec<i64> = fids.iter().map(|f| counts[f]).collect();
    Spi::run_with_args(
        "UPDATE genome.families f SET size = f.size + u.n FROM unnest($1::int8[], $2::int8[]) AS u(id, n) WHERE f.id = u.id",
        &[fids.into(), ns.into()],
    )
    .or_raise("updating family sizes");
    (placed, unclustered)
}

/// Every row re-assigned (members to their family, noise to Unclustered; on a sample, every
/// other row placed by nearest family; with full_classify, rows without an embedding too), the
/// families no cluster kept retired, Unclustered's size and the collection's generation
/// updated. Returns how many rows without text went to Unclustered, and (rows placed outside the
/// sample, of them Unclustered).
#[allow(clippy::too_many_arguments)]
fn write_rows(
    kind: RunKind,
    c: &Collection,
    p: &FamilyPlan,
    ids: &[String],
    family_ids: &[i64],
    rest: i64,
    run_id: i64,
    prog: &mut Progress,
) -> (i64, (i64, i64)) {
    prog.stage("assign", ids.len() as i64);
    write_assignments(c, ids, &p.row_families(family_ids, c.unclustered_id), prog);
    // retired before the placement, which goes to live families only
    Spi::run_with_args(
        "UPDATE genome.families SET retired_at = now(), updated_at = now(), size = 0, run_id = $2 WHERE id = ANY($1)",
        &[p.retired.clone().into(), run_id.into()],
    )
    .or_raise("retiring families");
    let placed = if rest > 0 {
        place_rest(c, ids, rest, prog)
    } else {
        (0, 0)
    };
    // full_classify embedded everything it could: rows left without an embedding have no text.
    let textless = if kind.embeds() {
        unclustered_without_embedding(c, false)
    } else {
        0
    };
    // listed rows that have a family now leave the pending list (rows added since stay)
    drop_pending(c);
    let unclustered = count_unclustered(c);
    Spi::run_with_args(
        "UPDATE genome.families SET size = $3, run_id = $2, updated_at = now() WHERE id = $1",
        &[c.unclustered_id.into(), run_id.into(), unclustered.into()],
    )
    .or_raise("updating Unclustered");
    Spi::run_with_args(
        "UPDATE genome.collections SET generation = generation + 1 WHERE name = $1",
        &[c.name.as_str().into()],
    )
    .or_raise("updating the collection");
    (textless, placed)
}

/// Fill in the run's row: its settings, counts and timings.
fn record_run(s: &RunSummary, record: serde_json::Value, timings: &Timings) {
    Spi::run_with_args(
        "UPDATE genome.runs SET params = $2, n_rows = $3, n_embedded = $4, n_clusters = $5, n_noise = $6, n_kept = $7,
                n_new = $8, n_retired = $9, approximate = $10, timings = $11, finished_at = clock_timestamp()
          WHERE id = $1",
        &[
            s.run_id.into(),
            JsonB(record).into(),
            s.n_rows.into(),
            s.n_embedded.into(),
            s.n_clusters.into(),
            s.n_noise.into(),
            s.n_kept.into(),
            s.n_new.into(),
            s.n_retired.into(),
            s.approximate.into(),
            timings.json().into(),
        ],
    )
    .or_raise("recording the run");
}

/// A full run: read, classify, plan, write.
fn run(kind: RunKind, args: RunArgs) -> RunSummary {
    let t0 = Instant::now();
    let settings = args.settings();
    let c = load(args.collection);
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
    let started = Spi::get_one::<TimestampWithTimeZone>("SELECT clock_timestamp()")
        .or_raise("reading the clock");
    let mut prog = Progress::start(kind.as_str(), &c.name);
    let mut timings = Timings::start();

    // On a coordinator, a distributed collection's rows come from the data nodes first.
    let distributed = crate::cluster::distributed(&c.name);
    let on_nodes = if distributed {
        let n = crate::cluster::gather(&c.name, kind.embeds());
        timings.lap("gather");
        Some(n)
    } else {
        None
    };
    // Read: embed what is missing (full_classify), then every embedding.
    let n_embedded = if kind.embeds() {
        let n = embed_missing(&c, &mut prog);
        timings.lap("embed");
        n
    } else {
        0
    };
    let (ids, points, n_rows) = load_embeddings(
        &c,
        &mut prog,
        crate::gucs::CLASSIFY_SAMPLE_ROWS.get() as i64,
    );
    let rest = n_rows - points.n as i64;
    timings.lap("load");
    let mut settings = settings;
    // on a coordinator the rows gathered may themselves be a sample of the nodes' rows
    let of_rows = on_nodes.map_or(n_rows, |t| t.max(n_rows));
    if of_rows > points.n as i64 {
        // sizes count rows of the collection: on a sample of 1/k, a k-th of them
        let on_sample = |m: usize| size_on_sample(m, points.n, of_rows as usize);
        settings.classify.min_cluster_size = on_sample(settings.classify.min_cluster_size);
        settings.classify.min_samples = settings.classify.min_samples.map(on_sample);
        settings.plan.min_cluster_size = on_sample(settings.plan.min_cluster_size);
    }

    // Classify.
    let (labels, k, approximate) = cluster(&points, settings.classify, &mut prog, &mut timings);

    // Plan: the families against the live ones; texts are read for the rows the plan names.
    prog.stage("families", 0);
    let p = plan(
        &points,
        &labels,
        k,
        &live_families(&c),
        &mut |rows| {
            // reads are not words: a sequence collection's families are "family N"
            // (genome.sequence_families summarises them by lineage)
            if crate::models::resolve(Some(&c.model)).task == "sequence-embedding" {
                vec![None; rows.len()]
            } else {
                label_texts(&c, &ids, rows)
            }
        },
        &settings.plan,
    );

    // Write.
    let run_id = insert_run(&c, kind, started);
    let family_ids = write_families(&c, &p, &ids, run_id);
    timings.lap("families");
    // the vectors are not needed any more: the placement reads the table a fetch at a time
    let n_sample = points.n;
    drop(points);
    let (textless, (placed, placed_unclustered)) =
        write_rows(kind, &c, &p, &ids, &family_ids, rest, run_id, &mut prog);
    timings.lap("assign");

    let clustered_min_size = settings.classify.min_cluster_size;
    let mut record = settings.record;
    if let Some(why) = &p.no_families_reason {
        // say why, in the run's record and to the caller (0.5.0; 0.4.1 gave no reason)
        notice!("pg_genome: {kind} \"{}\" found no families: {why}", c.name);
        record["no_families_reason"] = serde_json::json!(why);
    }
    if let Some(n) = on_nodes {
        // a coordinator's run: the rows the data nodes hold, of which it clustered n_sample
        record["data_nodes"] = serde_json::json!({"rows": n, "clustered": n_sample});
    }
    if rest > 0 {
        // clustered on an even sample; the other rows placed by nearest family
        record["sample"] = serde_json::json!({"rows": n_sample, "of": n_rows, "placed": placed,
                                              "placed_unclustered": placed_unclustered,
                                              "min_cluster_size": clustered_min_size});
    }
    let mut s = RunSummary {
        run_id,
        n_rows: n_sample as i64 + placed,
        n_embedded,
        n_clusters: k as i32,
        n_noise: p.n_noise as i64 + placed_unclustered,
        n_kept: p.n_kept() as i32,
        n_new: p.n_new() as i32,
        n_retired: p.retired.len() as i32,
        approximate,
        seconds: 0.0,
    };
    if distributed {
        crate::cluster::push(&c.name);
        timings.lap("install");
    }
    record_run(&s, record, &timings);
    crate::assign::invalidate(&c.name);
    s.seconds = t0.elapsed().as_secs_f64();
    notice!(
        "pg_genome: {kind} \"{}\": {} rows, {k} families ({} kept, {} new, {} retired), {} unclustered{} in {:.1} s",
        c.name,
        s.n_rows,
        s.n_kept,
        s.n_new,
        s.n_retired,
        s.n_noise,
        if textless > 0 { format!(" (+{textless} without text)") } else { String::new() },
        s.seconds
    );
    s
}

/// A data node's side of a full run on a coordinator (src/cluster.rs): the coordinator's
/// families become this node's with their ids (its Unclustered takes the coordinator's id; live
/// families the coordinator no longer has are retired), the rows the coordinator clustered
/// (`row_ids`, any node's: rows not here are skipped) get `row_families`, and every other row
/// the nearest family whose calibrated threshold it reaches, else Unclustered: as a single node
/// places the rows outside its sample. Family sizes are this node's counts. One transaction,
/// under the collection's lock, on this node.
#[pg_extern(volatile)]
#[allow(clippy::too_many_arguments)]
fn _install_families(
    collection: &str,
    family_ids: Vec<i64>,
    labels: Vec<String>,
    centroids: pgrx::AnyArray,
    thresholds: Vec<Option<f32>>,
    unclustered_id: i64,
    row_ids: Vec<String>,
    row_families: Vec<i64>,
) -> JsonB {
    check_arg(
        centroids.oid() == crate::vector::vector_array_type_oid(),
        "centroids must be a vector[]",
    );
    check_arg(
        row_ids.len() == row_families.len(),
        "row_ids and row_families must have the same length",
    );
    let c = load(collection);
    // it sets any family on any row: for the table's owner (the coordinator's run connects as it)
    let owns = Spi::get_one_with_args::<bool>("SELECT genome._owns($1)", &[c.relid.into()])
        .or_raise("checking the table's owner")
        .unwrap_or(false);
    if !owns {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "installing families on collection \"{}\" needs the ownership of its table",
                c.name
            ),
            None,
        );
    }
    // waits for a running assignment (assign_family holds the lock shared) to finish
    crate::collections::lock(&c.name);
    // the array as it came, straight into the statements: no element is converted
    // SAFETY: a vector[] datum (checked above), valid for this call
    let centroids =
        || unsafe { pgrx::datum::DatumWithOid::new(centroids.datum(), centroids.oid()) };
    let vs = crate::collections::ident(&crate::vector::vector_schema());
    let (n_centroids, wrong) = Spi::get_two_with_args::<i64, i64>(
        &format!("SELECT count(*), count(*) FILTER (WHERE x IS NULL OR {vs}.vector_dims(x) <> $2) FROM unnest($1::{vs}.vector[]) x"),
        &[centroids(), (c.dimension as i32).into()],
    )
    .or_raise("reading the centroids");
    check_arg(
        labels.len() == family_ids.len()
            && n_centroids.unwrap_or(0) as usize == family_ids.len()
            && thresholds.len() == family_ids.len(),
        "family_ids, labels, centroids and thresholds must have the same length",
    );
    if let Some(wrong) = wrong.filter(|&w| w > 0) {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
            format!(
                "{wrong} centroids are NULL or not of collection \"{}\"'s {} dimensions",
                c.name, c.dimension
            ),
            None,
        );
    }
    let mut prog = Progress::start("install_families", &c.name);
    // Unclustered under the coordinator's id (ids are the coordinator's, from 10^12 up: they
    // never meet this node's own)
    Spi::run_with_args(
        "WITH old AS (DELETE FROM genome.families WHERE collection = $1 AND is_unclustered AND id <> $2 RETURNING label)
         INSERT INTO genome.families (id, collection, label, is_unclustered) OVERRIDING SYSTEM VALUE
         SELECT $2, $1, old.label, true FROM old",
        &[c.name.as_str().into(), unclustered_id.into()],
    )
    .or_raise("taking the coordinator's Unclustered id");
    let clash = Spi::get_one_with_args::<i64>(
        "SELECT min(f.id) FROM genome.families f WHERE f.id = ANY($2) AND f.collection <> $1",
        &[c.name.as_str().into(), family_ids.clone().into()],
    )
    .or_raise("checking family ids");
    if let Some(id) = clash {
        raise(
            PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
            format!("family id {id} of the coordinator is another collection's on this node"),
            Some("classify this node's collections through the coordinator only".into()),
        );
    }
    Spi::run_with_args(
        "INSERT INTO genome.families AS f (id, collection, label, centroid, threshold, size) OVERRIDING SYSTEM VALUE
         SELECT u.id, $1, u.label, u.centroid, u.threshold, 0
           FROM unnest($2::int8[], $3::text[], $4::vector[], $5::real[]) AS u(id, label, centroid, threshold)
         ON CONFLICT (id) DO UPDATE SET label = EXCLUDED.label, centroid = EXCLUDED.centroid,
                threshold = EXCLUDED.threshold, size = 0, retired_at = NULL, updated_at = now()",
        &[
            c.name.as_str().into(),
            family_ids.clone().into(),
            labels.into(),
            centroids(),
            thresholds.into(),
        ],
    )
    .or_raise("writing the coordinator's families");
    Spi::run_with_args(
        "UPDATE genome.families SET retired_at = now(), updated_at = now(), size = 0
          WHERE collection = $1 AND NOT is_unclustered AND retired_at IS NULL AND id <> ALL($2)",
        &[c.name.as_str().into(), family_ids.into()],
    )
    .or_raise("retiring families");
    crate::assign::invalidate(&c.name);
    let c = load(collection);
    prog.stage("assign", row_ids.len() as i64);
    write_assignments(&c, &row_ids, &row_families, &mut prog);
    let rest = count_embedded(&c);
    let (placed, placed_unclustered) = place_rest(&c, &row_ids, rest, &mut prog);
    // rows without text (never embedded) go to Unclustered; rows with text written since the
    // run began wait for their embedding and assign_family
    let textless = unclustered_without_embedding(&c, true);
    let ident = crate::collections::ident;
    drop_pending(&c);
    // this node's sizes: one pass over its rows (read as the table's owner)
    let counts = c
        .as_owner(|| {
            Spi::connect(|client| {
                let mut ids: Vec<i64> = Vec::new();
                let mut ns: Vec<i64> = Vec::new();
                for r in client.select(
                    &format!(
                        "SELECT t.{fam}, count(*) FROM {rel} t WHERE t.{fam} IS NOT NULL GROUP BY t.{fam}",
                        fam = ident(&c.fam_col),
                        rel = c.rel
                    ),
                    None,
                    &[],
                )? {
                    ids.push(r.get::<i64>(1)?.unwrap_or_default());
                    ns.push(r.get::<i64>(2)?.unwrap_or_default());
                }
                Ok::<_, pgrx::spi::SpiError>((ids, ns))
            })
        })
        .or_raise("counting family sizes");
    Spi::run_with_args(
        "UPDATE genome.families f SET size = coalesce(u.n, 0)
           FROM genome.families g LEFT JOIN unnest($2::int8[], $3::int8[]) AS u(id, n) ON u.id = g.id
          WHERE f.id = g.id AND g.collection = $1 AND (g.retired_at IS NULL OR g.is_unclustered)",
        &[c.name.as_str().into(), counts.0.into(), counts.1.into()],
    )
    .or_raise("writing family sizes");
    Spi::run_with_args(
        "UPDATE genome.collections SET generation = generation + 1 WHERE name = $1",
        &[c.name.as_str().into()],
    )
    .or_raise("updating the collection");
    crate::assign::invalidate(&c.name);
    JsonB(serde_json::json!({
        "rows": rest + textless, "given": row_ids.len(), "placed": placed,
        "placed_unclustered": placed_unclustered, "textless": textless,
    }))
}

/// A data node's count of the rows a full run on a coordinator may cluster (its rows with an
/// embedding), as a single node's run counts them.
#[pg_extern(stable)]
fn _embedded_count(collection: &str) -> i64 {
    count_embedded(&load(collection))
}

/// A data node's embedding step of a full run on a coordinator: embeds the rows that have text
/// and no embedding, as full_classify does first. Returns how many it embedded.
#[pg_extern(volatile)]
fn _embed_missing(collection: &str) -> i64 {
    let c = load(collection);
    let mut prog = Progress::start("embed", &c.name);
    embed_missing(&c, &mut prog)
}

/// Declares a full run's SQL function: both kinds take the same arguments with the same
/// defaults and return the same row (pgrx needs each `#[pg_extern]` to spell them out).
macro_rules! full_run {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[pg_extern(volatile)]
        #[allow(clippy::too_many_arguments)]
        pub fn $name(
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
            let args = RunArgs {
                collection,
                min_cluster_size,
                min_samples,
                reduction,
                n_components,
                n_neighbors,
                method,
                seed,
                threshold_quantile,
            };
            TableIterator::once(run($kind, args).row())
        }
    };
}

full_run!(
    /// The weekly job: embed rows that have no embedding, reduce, cluster, update families and
    /// re-assign every row. One transaction: on ERROR or cancel nothing changes.
    full_classify,
    RunKind::FullClassify
);

full_run!(
    /// full_classify without the embedding step (rows without an embedding are left as they are).
    hdbscan_recluster,
    RunKind::HdbscanRecluster
);

// The SQL objects of this capability, in their current shape: src/families.sql.
extension_sql_file!(
    "families.sql",
    name = "families",
    requires = [
        "collections",
        full_classify,
        hdbscan_recluster,
        assign::assign_family,
        assign::cached_centroids
    ]
);
