//! Sequence taxonomy classifiers (eDNA): trained from a table of labelled reads into a registry
//! model (`task = 'sequence-classifier'`, the classifier's bytes in `weights`), classifying reads
//! with a confidence per rank and a nearest-reference fallback, and evaluated against known
//! lineages. The algorithms are genome-core's `seq::classify` and `seq::eval`; this layer reads
//! the tables as the caller, writes the registry, and caches loaded classifiers per process by
//! row version.

use std::collections::BTreeMap;
use std::rc::Rc;

use genome_core::seq::classify::{words, Classifier, ClassifierConfig, Prediction};
use genome_core::seq::eval::{cluster_summary, evaluate, Evaluation, Known, Scored};
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB, PgSqlErrorCode};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::collections::ident;
use crate::embed::resolve_cached;
use crate::errors::{interrupt_pending, raise, required, spi};
use crate::models::{ensure_new, require_admin, require_task, resolve, sha256_hex, ModelRow};
use crate::owner::RegClass;
use crate::progress::Progress;
use crate::sequences::{model_input, model_read};
use crate::vector::Vector;

fn invalid(msg: String) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, msg, None)
}

thread_local! {
    /// Loaded classifiers by registry id, with the row version they were read from; an LRU of
    /// `genome.model_cache_size` entries, as the ONNX sessions'.
    static CLASSIFIERS: crate::models::RowCache<Classifier> = crate::models::RowCache::new();
}

/// Drop every cached classifier (genome.clear_model_cache); returns how many there were.
pub fn clear_cache() -> usize {
    CLASSIFIERS.with(|c| c.clear())
}

/// The classifier of a registry row, read once per process and row version.
pub fn classifier(row: &ModelRow) -> Rc<Classifier> {
    require_task(row, "sequence-classifier");
    CLASSIFIERS.with(|c| c.get_or_load(row, || load_classifier(row)))
}

/// Read the classifier of a registry row from its weights.
fn load_classifier(row: &ModelRow) -> Classifier {
    let bytes = required(
        "reading the classifier",
        Spi::get_one_with_args::<Vec<u8>>(
            "SELECT weights FROM genome.models WHERE id = $1",
            &[row.id.into()],
        ),
    );
    Classifier::from_bytes(&bytes).unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!("model \"{}@{}\": {e}", row.name, row.version),
            None,
        )
    })
}

// ---- reading labelled reads ----

/// The SQL type of a live column, or an ERROR naming it.
fn column_type(rel: pg_sys::Oid, col: &str) -> String {
    let t = spi(
        "reading the column's type",
        Spi::get_one_with_args::<String>(
            "SELECT (SELECT pg_catalog.format_type(atttypid, NULL) FROM pg_catalog.pg_attribute \
              WHERE attrelid = $1 AND attname = $2 AND attnum > 0 AND NOT attisdropped)",
            &[rel.into(), col.into()],
        ),
    );
    t.unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!(
                "column \"{col}\" does not exist in table {}",
                crate::owner::table_name(rel)
            ),
            None,
        )
    })
}

/// An expression giving a lineage column as `;`-separated names, top rank first: text as it is,
/// a text[] joined, a jsonb array joined or a jsonb object read by the ranks (`$1`).
fn lineage_expr(rel: pg_sys::Oid, col: &str) -> String {
    let c = format!("t.{}", ident(col));
    match column_type(rel, col).as_str() {
        "text" | "character varying" | "character" | "name" => format!("{c}::text"),
        "text[]" | "character varying[]" | "name[]" => {
            format!("pg_catalog.array_to_string({c}::text[], ';', '')")
        }
        "jsonb" | "json" => format!(
            "CASE pg_catalog.jsonb_typeof({c}::jsonb) \
               WHEN 'string' THEN {c}::jsonb #>> '{{}}' \
               WHEN 'array' THEN (SELECT pg_catalog.string_agg(coalesce(e.v, ''), ';' ORDER BY e.o) \
                                    FROM pg_catalog.jsonb_array_elements_text({c}::jsonb) WITH ORDINALITY e(v, o)) \
               WHEN 'object' THEN (SELECT pg_catalog.string_agg(coalesce({c}::jsonb ->> r.n, ''), ';' ORDER BY r.o) \
                                     FROM pg_catalog.unnest($1::text[]) WITH ORDINALITY r(n, o)) END"
        ),
        other => raise(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!(
                "lineage column \"{col}\" is {other}: a lineage is text (names separated by ';'), text[] or jsonb"
            ),
            None,
        ),
    }
}

/// Labelled reads of a table, read as the caller; rows that cannot be used are counted by reason.
struct Labelled {
    seqs: Vec<Vec<u8>>,
    lineages: Vec<Vec<String>>,
    skipped: BTreeMap<String, i64>,
}

/// A lineage's names for `depth` ranks: a longer lineage is read from its end (RDP lineages
/// start with Root and the domain), a shorter one or one with an empty name is refused.
fn fit_lineage(s: &str, depth: usize) -> Option<Vec<String>> {
    let l = genome_core::seq::taxa::Lineage::parse(s, ';').0;
    if l.len() < depth {
        return None;
    }
    let l = l[l.len() - depth..].to_vec();
    (!l.iter().any(|x| x.is_empty())).then_some(l)
}

fn read_labelled(
    source: pg_sys::Oid,
    seq_col: &str,
    lin_col: &str,
    ranks: &[String],
    k: usize,
) -> Labelled {
    let st = column_type(source, seq_col);
    if !matches!(st.as_str(), "text" | "character varying" | "character") {
        raise(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!("sequence column \"{seq_col}\" is {st}, not text"),
            None,
        );
    }
    let sql = format!(
        "SELECT t.{s}::text, {l} FROM {rel} t",
        s = ident(seq_col),
        l = lineage_expr(source, lin_col),
        rel = crate::owner::table_name(source),
    );
    let rows: Vec<(Option<String>, Option<String>)> = spi(
        "reading labelled sequences",
        Spi::connect(|client| {
            let mut out = Vec::new();
            for r in client.select(&sql, None, &[ranks.to_vec().into()])? {
                out.push((r.get::<String>(1)?, r.get::<String>(2)?));
            }
            Ok::<_, pgrx::spi::SpiError>(out)
        }),
    );
    let mut out = Labelled {
        seqs: Vec::with_capacity(rows.len()),
        lineages: Vec::with_capacity(rows.len()),
        skipped: BTreeMap::new(),
    };
    for (i, (s, l)) in rows.into_iter().enumerate() {
        if i % 1024 == 0 {
            pg_sys::check_for_interrupts!();
        }
        let why = match (s, l) {
            (None, _) => Err("sequence_null"),
            (_, None) => Err("lineage_null"),
            (Some(s), Some(l)) => match (model_read(&s), fit_lineage(&l, ranks.len())) {
                (Err(d), _) => Err(d.name()),
                (_, None) => Err("lineage_short"),
                (Ok(r), Some(l)) => {
                    if words(&r, k).is_empty() {
                        Err("no_kmer")
                    } else {
                        out.seqs.push(r);
                        out.lineages.push(l);
                        Ok(())
                    }
                }
            },
        };
        if let Err(w) = why {
            *out.skipped.entry(w.to_string()).or_default() += 1;
        }
    }
    out
}

/// The training data's fingerprint: SHA-256 over the sorted (read, lineage) pairs.
fn fingerprint(l: &Labelled) -> String {
    let mut keys: Vec<(&[u8], String)> = l
        .seqs
        .iter()
        .zip(&l.lineages)
        .map(|(s, l)| (s.as_slice(), l.join(";")))
        .collect();
    keys.sort();
    let mut h = Sha256::new();
    for (s, l) in keys {
        h.update(s);
        h.update(b"\t");
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// Classify many reads, in parallel chunks (genome.cluster_threads), honouring a cancel between
/// chunks.
fn classify_all(m: &Classifier, reads: &[&[u8]], mut tick: impl FnMut(usize)) -> Vec<Prediction> {
    crate::families::ensure_pool();
    let mut out = Vec::with_capacity(reads.len());
    for chunk in reads.chunks(256) {
        pg_sys::check_for_interrupts!();
        out.par_extend(chunk.par_iter().map(|r| m.classify(r)));
        tick(out.len());
    }
    out
}

fn scored(m: &Classifier, known: &Known, truth: &[String], p: &Prediction) -> Scored {
    let depth = truth.len();
    let (predicted, confidence) = if p.words == 0 {
        (vec![String::new(); depth], vec![0.0; depth])
    } else {
        (
            m.names(p).into_iter().map(str::to_string).collect(),
            p.confidence.clone(),
        )
    };
    Scored {
        known: known.knows(truth, depth - 1),
        parent_known: depth < 2 || known.knows(truth, depth - 2),
        truth: truth.to_vec(),
        predicted,
        confidence,
    }
}

fn evaluation_of(m: &Classifier, data: &Labelled, cutoff: f64, prog: &mut Progress) -> Evaluation {
    prog.stage("evaluating", data.seqs.len() as i64);
    let reads: Vec<&[u8]> = data.seqs.iter().map(|s| s.as_slice()).collect();
    let preds = classify_all(m, &reads, |n| prog.advance(n as i64));
    let known = Known::of(m);
    let s: Vec<Scored> = preds
        .iter()
        .zip(&data.lineages)
        .map(|(p, t)| scored(m, &known, t, p))
        .collect();
    evaluate(&m.taxonomy.ranks, &s, cutoff).unwrap_or_else(|e| invalid(e))
}

/// An evaluation as stored in a model's metrics: without the per-taxon lists (see
/// genome.evaluate_sequence_classifier for them).
fn summary(e: &Evaluation) -> serde_json::Value {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    if let Some(rs) = v.get_mut("ranks").and_then(|r| r.as_array_mut()) {
        for r in rs {
            if let Some(o) = r.as_object_mut() {
                o.remove("classes");
            }
        }
    }
    v
}

fn check_ranks(ranks: &[String]) {
    if ranks.is_empty() || ranks.len() > 16 {
        invalid("ranks must name 1 to 16 ranks, top rank first".into());
    }
    for (i, r) in ranks.iter().enumerate() {
        if r.trim().is_empty() || ranks[..i].contains(r) {
            invalid(format!("rank {} is empty or repeated", i + 1));
        }
    }
}

/// The one name every job that writes a model's versions locks (promote_model takes it too).
fn lock_model(name: &str) {
    spi(
        "locking the model",
        Spi::run_with_args(
            "SELECT pg_catalog.pg_advisory_xact_lock(genome._lock_key('ranking'), pg_catalog.hashtext('model:' || $1))",
            &[name.into()],
        ),
    );
}

/// Train a taxonomy classifier on a table of labelled reads (read as the caller) and register
/// it as a new version of `name`; with `evaluate_on` (a table with the same columns, held out
/// from training) its evaluation goes into the model's metrics.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe)]
fn train_sequence_classifier(
    name: &str,
    source: RegClass,
    sequence_column: default!(&str, "'sequence'"),
    lineage_column: default!(&str, "'lineage'"),
    ranks: default!(Vec<String>, "'{phylum,class,order,family,genus}'"),
    version: default!(Option<&str>, "NULL"),
    evaluate_on: default!(Option<RegClass>, "NULL"),
    cutoff: default!(f64, 0.8),
    fallback_collection: default!(Option<&str>, "NULL"),
    fallback_lineage_column: default!(Option<&str>, "NULL"),
    promote: default!(bool, true),
    seed: default!(i64, 42),
) -> TableIterator<
    'static,
    (
        name!(name, String),
        name!(version, String),
        name!(stage, String),
        name!(sequences, i64),
        name!(skipped, i64),
        name!(taxa, i32),
        name!(seconds, f64),
        name!(metrics, JsonB),
    ),
> {
    let started = std::time::Instant::now();
    require_admin("training a sequence classifier");
    check_ranks(&ranks);
    if !(cutoff > 0.0 && cutoff <= 1.0) {
        invalid("cutoff must be in (0, 1]".into());
    }
    let fallback = fallback_collection.map(|c| {
        let coll = crate::collections::load(c);
        let lin = fallback_lineage_column.unwrap_or(lineage_column);
        column_type(coll.relid, lin);
        let m = resolve(Some(&coll.model));
        require_task(&m, "sequence-embedding");
        serde_json::json!({"collection": c, "relid": coll.relid.to_u32(), "lineage_column": lin, "model": coll.model})
    });
    if let Some(v) = version {
        // refused now, not after the training
        ensure_new(name, v);
    }
    let cfg = ClassifierConfig {
        cutoff,
        seed: seed as u64,
        ..Default::default()
    };
    let mut prog = Progress::start("train_sequence_classifier", name);
    prog.stage("reading sequences", 0);
    let data = read_labelled(source.0, sequence_column, lineage_column, &ranks, cfg.k);
    let skipped: i64 = data.skipped.values().sum();
    if skipped > 0 {
        notice!(
            "pg_genome: {skipped} rows of {} are not trained on: {}",
            crate::owner::table_name(source.0),
            data.skipped
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if data.seqs.len() < 2 {
        invalid(format!(
            "{} has {} usable labelled sequences: training needs at least 2",
            crate::owner::table_name(source.0),
            data.seqs.len()
        ));
    }
    let refs: Vec<&[u8]> = data.seqs.iter().map(|s| s.as_slice()).collect();
    crate::families::ensure_pool();
    let mut last = String::new();
    let model = Classifier::train(
        &cfg,
        &ranks,
        &refs,
        &data.lineages,
        true,
        &mut |stage: &str, done, total| {
            if stage != last {
                prog.stage(stage, total as i64);
                last = stage.to_string();
            }
            prog.advance(done as i64);
            interrupt_pending()
        },
    )
    .unwrap_or_else(|_| {
        pg_sys::check_for_interrupts!();
        raise(
            PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
            "train_sequence_classifier cancelled".into(),
            None,
        )
    })
    .unwrap_or_else(|e| invalid(e));
    let train_seconds = started.elapsed().as_secs_f64();
    let evaluation = evaluate_on.map(|t| {
        let held = read_labelled(t.0, sequence_column, lineage_column, &ranks, cfg.k);
        evaluation_of(&model, &held, cutoff, &mut prog)
    });
    let taxa: Vec<usize> = model.taxonomy.names.iter().map(Vec::len).collect();
    let fp = fingerprint(&data);
    let config = serde_json::json!({
        "kind": "sequence-classifier",
        "dimension": ranks.len(),
        "ranks": ranks,
        "cutoff": cutoff,
        "method": "naive Bayes over 8-mers with bootstrap confidence, nearest references, per-rank logistic calibration on held-out genera",
        "classifier": cfg,
        "featurizer": {"kind": "kmer-words", "k": cfg.k, "canonical": false, "strands": "both"},
        "fallback": fallback,
        "cluster_summary": cluster_summary(&model, 10),
        "training": {
            "source": crate::owner::table_name(source.0),
            "sequence_column": sequence_column,
            "lineage_column": lineage_column,
            "sequences": data.seqs.len(),
            "skipped": data.skipped,
            "taxa": taxa,
            "fingerprint": fp,
        },
    });
    let metrics = serde_json::json!({
        "train_seconds": train_seconds,
        "calibration": model.calibration,
        "evaluation": evaluation.as_ref().map(summary),
        "evaluated_on": evaluate_on.map(|t| crate::owner::table_name(t.0)),
    });
    let weights = model.to_bytes();
    let mut digest = config.to_string().into_bytes();
    digest.extend_from_slice(&weights);
    prog.stage("registering", 0);
    // the version is numbered and written under the model's lock, taken only now: promote and
    // rollback of the same name do not wait for the training
    lock_model(name);
    let version = match version {
        Some(v) => v.to_string(),
        None => required(
            "numbering the version",
            Spi::get_one_with_args::<String>(
                "SELECT 'v' || (coalesce(max(substr(version, 2)::int) FILTER (WHERE version ~ '^v[0-9]{1,9}$'), 0) + 1) \
                   FROM genome.models WHERE name = $1",
                &[name.into()],
            ),
        ),
    };
    ensure_new(name, &version);
    spi(
        "registering the classifier",
        Spi::run_with_args(
            "INSERT INTO genome.models (name, version, task, dimension, config, weights, metrics, sha256, stage) \
             VALUES ($1, $2, 'sequence-classifier', $3, $4, $5, $6, $7, 'staging')",
            &[
                name.into(),
                version.as_str().into(),
                (ranks.len() as i32).into(),
                JsonB(config).into(),
                weights.into(),
                JsonB(metrics.clone()).into(),
                sha256_hex(&digest).into(),
            ],
        ),
    );
    let stage = if promote {
        spi(
            "promoting the classifier",
            Spi::run_with_args(
                "SELECT genome.promote_model($1, $2)",
                &[name.into(), version.as_str().into()],
            ),
        );
        "production"
    } else {
        "staging"
    };
    prog.stage("done", 0);
    TableIterator::once((
        name.to_string(),
        version,
        stage.to_string(),
        data.seqs.len() as i64,
        skipped,
        *taxa.last().unwrap_or(&0) as i32,
        started.elapsed().as_secs_f64(),
        JsonB(metrics),
    ))
}

/// Metrics of a classifier over a table of labelled reads (read as the caller): per rank
/// accuracy, precision / recall / F1 per taxon and macro, ECE and Brier, coverage at the
/// cut-off; on reads of genera the model never saw, how often the genus is withheld and the
/// family right.
#[pg_extern(volatile, parallel_safe)]
fn evaluate_sequence_classifier(
    model: &str,
    source: RegClass,
    sequence_column: default!(&str, "'sequence'"),
    lineage_column: default!(&str, "'lineage'"),
    cutoff: default!(Option<f64>, "NULL"),
    fcinfo: pg_sys::FunctionCallInfo,
) -> JsonB {
    // SAFETY: the fcinfo pgrx passed to this call
    let row = unsafe { resolve_cached(fcinfo, Some(model)) };
    let m = classifier(&row);
    let cutoff = cutoff.unwrap_or(m.config.cutoff);
    if !(cutoff > 0.0 && cutoff <= 1.0) {
        invalid("cutoff must be in (0, 1]".into());
    }
    let mut prog = Progress::start("evaluate_sequence_classifier", model);
    let data = read_labelled(
        source.0,
        sequence_column,
        lineage_column,
        &m.taxonomy.ranks,
        m.config.k,
    );
    let e = evaluation_of(&m, &data, cutoff, &mut prog);
    let mut v = serde_json::to_value(&e).unwrap_or_default();
    v["model"] = serde_json::json!(format!("{}@{}", row.name, row.version));
    v["skipped"] = serde_json::json!(data.skipped);
    JsonB(v)
}

// ---- classification ----

struct Fallback {
    sql: String,
    model: ModelRow,
    relid: pg_sys::Oid,
}

/// The reference collection a classifier names, checked: it must still be the table it was
/// trained with (its OID is pinned in the config), so a collection registered later under the
/// same name, or one in another database a bundle was imported into, is never consulted.
fn fallback_of(row: &ModelRow) -> Option<Fallback> {
    let cfg: serde_json::Value = serde_json::from_str(&row.config).unwrap_or_default();
    let f = cfg.get("fallback")?.as_object()?;
    let name = f.get("collection")?.as_str()?;
    let pinned = f.get("relid")?.as_u64()?;
    let registered = spi(
        "reading genome.collections",
        Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM genome.collections WHERE name = $1 AND relid::oid::int8 = $2)",
            &[name.into(), (pinned as i64).into()],
        ),
    );
    if registered != Some(true) {
        return None;
    }
    let coll = crate::collections::load(name);
    // a caller who may not read the references gets no fallback (needs_fallback still says so)
    let readable = spi(
        "checking privileges",
        Spi::get_one_with_args::<bool>(
            "SELECT pg_catalog.has_table_privilege($1::oid, 'SELECT')",
            &[coll.relid.into()],
        ),
    );
    if readable != Some(true) {
        return None;
    }
    let lin = f.get("lineage_column")?.as_str()?;
    column_type(coll.relid, lin);
    let vs = ident(&crate::vector::vector_schema());
    let d = coll.dimension;
    // one statement for every read that needs it: the nearest `$2` references of each query
    // vector, through the collection's HNSW index
    let sql = format!(
        "SELECT q.o::int, h.id, h.lineage, h.similarity \
           FROM pg_catalog.unnest($1::{vs}.vector({d})[]) WITH ORDINALITY q(v, o), \
           LATERAL (SELECT pg_catalog.format('%s', t.{id}) AS id, pg_catalog.format('%s', t.{lin}) AS lineage, \
                           1 - (t.{emb} OPERATOR({vs}.<=>) q.v) AS similarity \
                      FROM {rel} t WHERE t.{emb} IS NOT NULL \
                     ORDER BY t.{emb} OPERATOR({vs}.<=>) q.v LIMIT $2) h \
          WHERE q.v IS NOT NULL ORDER BY q.o, h.similarity DESC",
        id = ident(&coll.id_col),
        lin = ident(lin),
        emb = ident(&coll.emb_col),
        rel = coll.rel,
    );
    Some(Fallback {
        sql,
        model: resolve(Some(&coll.model)),
        relid: coll.relid,
    })
}

/// The nearest references of each read (None for a read with no clean k-mer). Through
/// `as_table_owner`: a caller without the owner's privileges reads as itself (its grants and
/// row-level security decide what it sees); a more privileged caller (a superuser) reads as the
/// owner, so the table's policies and expressions never run with its rights. The scan is the
/// index's: with enable_seqscan off the planner does not trade the HNSW search for an exact scan
/// of a small table (20 ms a read on 4k references, against well under 1 ms), and
/// hnsw.ef_search is at least k, so k neighbours come back.
fn nearest(fb: &Fallback, reads: &[&str], k: i32) -> Vec<Option<JsonB>> {
    let vecs = crate::models::embed_texts(&fb.model, reads);
    let mut out: Vec<Option<Vec<serde_json::Value>>> = vecs
        .iter()
        .map(|v| v.iter().any(|x| *x != 0.0).then(Vec::new))
        .collect();
    let arg: Vec<Option<Vector>> = vecs
        .into_iter()
        .map(|v| v.iter().any(|x| *x != 0.0).then_some(Vector(v)))
        .collect();
    let ef = k.max(40).to_string();
    let rows = crate::owner::as_table_owner(fb.relid, || {
        crate::owner::with_settings(
            &[("enable_seqscan", "off"), ("hnsw.ef_search", ef.as_str())],
            || {
                spi(
                    "finding the nearest references",
                    Spi::connect(|client| {
                        let mut rows = Vec::new();
                        for r in client.select(&fb.sql, None, &[arg.into(), k.into()])? {
                            rows.push((
                                r.get::<i32>(1)?.unwrap_or_default(),
                                serde_json::json!({
                                    "id": r.get::<String>(2)?,
                                    "lineage": r.get::<String>(3)?,
                                    "similarity": r.get::<f64>(4)?,
                                }),
                            ));
                        }
                        Ok::<_, pgrx::spi::SpiError>(rows)
                    }),
                )
            },
        )
    });
    for (o, v) in rows {
        if let Some(Some(list)) = out.get_mut(o as usize - 1) {
            list.push(v);
        }
    }
    out.into_iter()
        .map(|l| l.map(|l| JsonB(serde_json::Value::Array(l))))
        .collect()
}

/// Classify reads with a sequence classifier: per read its lineage (rank -> name and
/// confidence), the deepest rank called at the model's cut-off, and for a read whose deepest
/// rank is withheld its nearest references (when the model names a reference collection).
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn classify_sequences(
    model: &str,
    sequences: Option<Array<&str>>,
    fallback_k: default!(i32, 3),
) -> TableIterator<
    'static,
    (
        name!(ord, i32),
        name!(lineage, Option<JsonB>),
        name!(label, Option<String>),
        name!(rank, Option<String>),
        name!(confidence, Option<f64>),
        name!(needs_fallback, Option<bool>),
        name!(fallback, Option<JsonB>),
        name!(model_version, String),
    ),
> {
    let started = std::time::Instant::now();
    if !(0..=100).contains(&fallback_k) {
        invalid(format!(
            "fallback_k must be between 0 and 100, not {fallback_k}"
        ));
    }
    // not resolve_cached: a set-returning function's fn_extra is pgrx's (its FuncCallContext)
    let row = resolve(Some(model));
    let m = classifier(&row);
    let Some(sequences) = sequences else {
        return TableIterator::new(Vec::new());
    };
    let raw: Vec<Option<&str>> = sequences.iter().collect();
    let reads: Vec<Option<Vec<u8>>> = raw
        .iter()
        .enumerate()
        .map(|(i, s)| s.map(|s| model_input(s, Some(i + 1))))
        .collect();
    let present: Vec<&[u8]> = reads.iter().flatten().map(|r| r.as_slice()).collect();
    let mut preds = classify_all(&m, &present, |_| {}).into_iter();
    let cutoff = m.config.cutoff;
    let ranks = &m.taxonomy.ranks;
    let mut rows = Vec::with_capacity(reads.len());
    let mut n_fallback = 0usize;
    // reads whose deepest rank is withheld and that have k-mers: the fallback's
    let mut wanted: Vec<usize> = Vec::new();
    for (i, r) in reads.iter().enumerate() {
        let ord = i as i32 + 1;
        if r.is_none() {
            rows.push((ord, None, None, None, None, None, None, row.version.clone()));
            continue;
        }
        let p = preds.next().expect("one prediction per read");
        if p.words == 0 {
            n_fallback += 1;
            rows.push((
                ord,
                None,
                None,
                None,
                None,
                Some(true),
                None,
                row.version.clone(),
            ));
            continue;
        }
        let names = m.names(&p);
        let mut lineage = serde_json::Map::new();
        for (d, rank) in ranks.iter().enumerate() {
            lineage.insert(
                rank.clone(),
                serde_json::json!({"name": names[d], "confidence": p.confidence[d]}),
            );
        }
        let called = p.called_depth(cutoff);
        let needs = called != Some(ranks.len() - 1);
        if needs {
            n_fallback += 1;
            wanted.push(i);
        }
        rows.push((
            ord,
            Some(JsonB(serde_json::Value::Object(lineage))),
            called.map(|d| names[d].to_string()),
            called.map(|d| ranks[d].clone()),
            Some(p.confidence[called.unwrap_or(0)]),
            Some(needs),
            None,
            row.version.clone(),
        ));
    }
    // the references are looked up only when a read needs them
    let fb = if fallback_k > 0 && !wanted.is_empty() {
        fallback_of(&row)
    } else {
        None
    };
    if let Some(fb) = fb {
        let reads: Vec<&str> = wanted.iter().map(|&i| raw[i].unwrap_or_default()).collect();
        for (&i, f) in wanted.iter().zip(nearest(&fb, &reads, fallback_k)) {
            rows[i].6 = f;
        }
    }
    crate::metrics::record_classify(present.len(), n_fallback, started.elapsed());
    TableIterator::new(rows)
}

extension_sql_file!(
    "taxonomy.sql",
    name = "taxonomy",
    requires = [
        "sequences",
        train_sequence_classifier,
        evaluate_sequence_classifier,
        classify_sequences
    ]
);

/// Whether a bundle's classifier bytes are one this build reads, and its registry config agrees
/// with them (ranks, dimension, cut-off): what genome.model_info shows is what classifies.
pub fn check_bundle(config: &serde_json::Value, dimension: i32, b: &[u8]) -> Result<(), String> {
    let m = Classifier::from_bytes(b)?;
    let ranks: Option<Vec<String>> = serde_json::from_value(config["ranks"].clone()).ok();
    if config["kind"] != "sequence-classifier"
        || ranks.as_ref() != Some(&m.taxonomy.ranks)
        || dimension as usize != m.taxonomy.ranks.len()
        || config["dimension"].as_u64() != Some(m.taxonomy.ranks.len() as u64)
        || config["cutoff"].as_f64() != Some(m.config.cutoff)
    {
        return Err(
            "its config (kind, ranks, dimension, cutoff) does not match the classifier".into(),
        );
    }
    Ok(())
}
