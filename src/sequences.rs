//! Sequences (eDNA): reads cleaned with a report, k-mer featurisers as registry models
//! (`task = 'sequence-embedding'`, `config->>'kind' = 'kmer'`), and their embeddings as pgvector
//! vectors. The algorithms are genome-core's `seq`; this layer reads arguments, the registry
//! and the per-process featuriser cache, and turns bad input into ERRORs.

use std::collections::HashMap;
use std::rc::Rc;

use genome_core::seq::clean::{clean, clean_one, CleanOptions, Dropped};
use genome_core::seq::kmer::{Featurizer, KmerConfig, Norm};
use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use crate::embed::resolve_cached;
use crate::errors::{raise, OrRaise};
use crate::models::{ensure_new, require_admin, require_task, sha256_hex, ModelRow};
use crate::vector::Vector;

/// The longest read embedded or classified (bases): a longer input is refused after this many
/// bases are read, without copying the rest.
pub const MAX_SEQUENCE_LENGTH: usize = 1_000_000;

fn invalid(msg: String) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, msg, None)
}

/// A read to embed or classify, cleaned for the alphabet only (any case, `U` as `T`); anything
/// else is an ERROR that names the read (`which`, 1-based in an array) and the problem. The
/// one rule for reads given to a model.
pub fn model_input(raw: &str, which: Option<usize>) -> Vec<u8> {
    match model_read(raw) {
        Ok(r) => r,
        Err(d) => {
            let at = which
                .map(|i| format!("sequence {i}"))
                .unwrap_or_else(|| "the sequence".into());
            let why = match d {
                Dropped::Empty => "is empty".to_string(),
                Dropped::FastaHeader => {
                    "starts with '>': a FASTA header, not a sequence (give the sequence lines only)"
                        .to_string()
                }
                Dropped::BadCharacter {
                    position,
                    character,
                } => format!(
                    "is not DNA: {character:?} at position {} is not an IUPAC nucleotide code",
                    position + 1
                ),
                Dropped::TooLong => format!("is longer than {MAX_SEQUENCE_LENGTH} bases"),
                other => other.name().to_string(),
            };
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("{at} {why}"),
                None,
            )
        }
    }
}

/// [`model_input`]'s rule without the ERROR: the cleaned read, or why it cannot be given to a
/// model (training skips such rows and counts them).
pub fn model_read(raw: &str) -> Result<Vec<u8>, Dropped> {
    let o = CleanOptions {
        min_len: 1,
        max_len: MAX_SEQUENCE_LENGTH,
        max_ambiguous: 1.0,
        ..Default::default()
    };
    clean_one(Some(raw), &o).map(|r| r.seq)
}

/// Whether a sequence-embedding row is one of pg_genome's k-mer featurisers (else an ONNX DNA
/// language model).
pub(crate) fn is_kmer(row: &ModelRow) -> bool {
    serde_json::from_str::<serde_json::Value>(&row.config)
        .ok()
        .and_then(|c| c.get("kind").and_then(|k| k.as_str()).map(|k| k == "kmer"))
        .unwrap_or(false)
}

/// Embed reads with a sequence-embedding model: a k-mer featuriser, or an ONNX DNA language
/// model (each read cleaned, then given to its tokenizer as `kmer_sentence` makes it). The path
/// of `embed_sequence(s)` and of `genome.embed`'s callers for sequence models, so collections,
/// search and the queue take them as they take text ones. A read that is not DNA is an ERROR
/// naming its position; NULL gives None, as does a read without a clean k-mer (featurisers).
pub fn embed_read_vectors(
    row: &ModelRow,
    reads: &[Option<&str>],
    positions: bool,
) -> Vec<Option<Vec<f32>>> {
    require_task(row, "sequence-embedding");
    let t = std::time::Instant::now();
    // an ERROR names "sequence N" in an array, "the sequence" alone
    let many = positions;
    let cleaned: Vec<Option<Vec<u8>>> = reads
        .iter()
        .enumerate()
        .map(|(i, r)| r.map(|r| model_input(r, many.then_some(i + 1))))
        .collect();
    let out = if is_kmer(row) {
        let f = featurizer(row);
        cleaned
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if i % 1024 == 0 {
                    pgrx::check_for_interrupts!();
                }
                r.as_ref().and_then(|r| {
                    let v = f.embed(r).unwrap_or_else(|e| invalid(e));
                    v.iter().any(|x| *x != 0.0).then_some(v)
                })
            })
            .collect()
    } else {
        let k = genome_core::embed::ModelConfig::from_json(&row.config)
            .ok()
            .and_then(|c| c.dna_kmer);
        let present: Vec<usize> = (0..cleaned.len())
            .filter(|&i| cleaned[i].is_some())
            .collect();
        let sentences: Vec<String> = present
            .iter()
            .map(|&i| genome_core::seq::kmer_sentence(cleaned[i].as_deref().unwrap_or_default(), k))
            .collect();
        let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
        let mut out = vec![None; cleaned.len()];
        for (i, v) in present
            .iter()
            .zip(crate::models::embed_by_length_onnx(row, &refs))
        {
            out[*i] = Some(v);
        }
        return out;
    };
    crate::metrics::record_embed(reads.len(), t.elapsed(), true);
    out
}

/// [`embed_read_vectors`] for callers that need a vector per read (collections): a read without
/// a clean k-mer gives a zero vector.
pub fn embed_reads(row: &ModelRow, reads: &[&str]) -> Vec<Vec<f32>> {
    let opt: Vec<Option<&str>> = reads.iter().map(|r| Some(*r)).collect();
    embed_read_vectors(row, &opt, true)
        .into_iter()
        .map(|v| v.unwrap_or_else(|| vec![0.0; row.dimension as usize]))
        .collect()
}

fn change_names(c: &genome_core::seq::clean::Changes) -> Vec<String> {
    let mut v = Vec::new();
    if c.lower_case {
        v.push("lower_case".to_string());
    }
    if c.rna {
        v.push("rna".to_string());
    }
    if c.whitespace {
        v.push("whitespace".to_string());
    }
    if c.trimmed_5 > 0 {
        v.push(format!("trimmed_5:{}", c.trimmed_5));
    }
    if c.trimmed_3 > 0 {
        v.push(format!("trimmed_3:{}", c.trimmed_3));
    }
    if c.primer_missing {
        v.push("primer_missing".to_string());
    }
    v
}

fn primers(a: Option<Array<&str>>, what: &str) -> Vec<Vec<u8>> {
    let Some(a) = a else { return vec![] };
    a.iter()
        .enumerate()
        .map(|(i, p)| {
            let p = p.unwrap_or_else(|| invalid(format!("{what} {} is NULL", i + 1)));
            let p = p.trim().to_ascii_uppercase().replace('U', "T");
            if p.is_empty() || !p.bytes().all(|b| genome_core::seq::IUPAC.contains(&b)) {
                invalid(format!(
                    "{what} {} is not an IUPAC nucleotide sequence",
                    i + 1
                ));
            }
            p.into_bytes()
        })
        .collect()
}

/// Clean reads: one row per kept unique read (its input positions, count and the changes made
/// to them) and one row per dropped read (its reason). Nothing is altered without saying so.
#[pg_extern(immutable, parallel_safe)]
fn clean_sequences(
    sequences: Option<Array<&str>>,
    forward_primers: default!(Option<Array<&str>>, "'{}'"),
    reverse_primers: default!(Option<Array<&str>>, "'{}'"),
    min_length: default!(i32, 50),
    max_length: default!(i32, 100000),
    max_ambiguous: default!(f64, 0.01),
    max_mismatches: default!(i32, 2),
    require_primers: default!(bool, false),
    dereplicate: default!(bool, true),
) -> TableIterator<
    'static,
    (
        name!(sequence, Option<String>),
        name!(count, i64),
        name!(members, Vec<i32>),
        name!(dropped, Option<String>),
        name!(detail, Option<String>),
        name!(changes, Vec<String>),
    ),
> {
    if min_length < 1 || max_length < min_length || max_length as usize > MAX_SEQUENCE_LENGTH {
        invalid(format!(
            "min_length and max_length must satisfy 1 <= min_length <= max_length <= {MAX_SEQUENCE_LENGTH}"
        ));
    }
    if !(0.0..=1.0).contains(&max_ambiguous) {
        invalid("max_ambiguous is a share of the read's length, between 0 and 1".into());
    }
    if !(0..=10).contains(&max_mismatches) {
        invalid("max_mismatches must be between 0 and 10".into());
    }
    let o = CleanOptions {
        min_len: min_length as usize,
        max_len: max_length as usize,
        max_ambiguous,
        forward_primers: primers(forward_primers, "forward primer"),
        reverse_primers: primers(reverse_primers, "reverse primer"),
        max_mismatches: max_mismatches as usize,
        require_primers,
        dereplicate,
        ..Default::default()
    };
    let Some(sequences) = sequences else {
        return TableIterator::new(Vec::new());
    };
    let reads: Vec<(Option<&str>, u64)> = sequences.iter().map(|s| (s, 1)).collect();
    let plan = clean(&reads, &o);
    let changes: HashMap<usize, &genome_core::seq::clean::Changes> =
        plan.changes.iter().map(|(i, c)| (*i, c)).collect();
    let mut rows = Vec::with_capacity(plan.kept.len() + plan.dropped.len());
    for u in &plan.kept {
        let mut names: Vec<String> = u
            .members
            .iter()
            .filter_map(|i| changes.get(i))
            .flat_map(|c| change_names(c))
            .collect();
        names.sort();
        names.dedup();
        rows.push((
            Some(String::from_utf8(u.seq.clone()).expect("cleaned reads are ASCII")),
            u.count as i64,
            u.members.iter().map(|i| *i as i32 + 1).collect(),
            None,
            None,
            names,
        ));
    }
    for (i, d) in &plan.dropped {
        let detail = match d {
            Dropped::BadCharacter {
                position,
                character,
            } => Some(format!("{character:?} at position {}", position + 1)),
            _ => None,
        };
        rows.push((
            None,
            1,
            vec![*i as i32 + 1],
            Some(d.name().to_string()),
            detail,
            vec![],
        ));
    }
    TableIterator::new(rows)
}

// ---- k-mer featurisers ----

thread_local! {
    /// Loaded featurisers by registry id, with the row version they were built from; an LRU of
    /// `genome.model_cache_size` entries, as the ONNX sessions' (a dense k = 12 featuriser's
    /// index alone is 64 MiB).
    static FEATURIZERS: crate::models::RowCache<Featurizer> = crate::models::RowCache::new();
}

/// Drop every cached featuriser (genome.clear_model_cache); returns how many there were.
pub fn clear_cache() -> usize {
    FEATURIZERS.with(|c| c.clear())
}

fn parse_norm(s: &str) -> Norm {
    match s.to_ascii_lowercase().as_str() {
        "frequency" => Norm::Frequency,
        "tfidf" | "tf-idf" => Norm::TfIdf,
        "clr" => Norm::Clr,
        other => invalid(format!(
            "unknown normalization \"{other}\" (supported: frequency, tfidf, clr)"
        )),
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The featuriser of a registry row, loaded once per process and row version.
pub fn featurizer(row: &ModelRow) -> Rc<Featurizer> {
    require_task(row, "sequence-embedding");
    FEATURIZERS.with(|c| c.get_or_load(row, || load_featurizer(row)))
}

/// Build the featuriser of a registry row from its config and weights.
fn load_featurizer(row: &ModelRow) -> Featurizer {
    let cfg: serde_json::Value = serde_json::from_str(&row.config).unwrap_or_default();
    if cfg.get("kind").and_then(|k| k.as_str()) != Some("kmer") {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "model \"{}@{}\" is a sequence-embedding model run by ONNX Runtime, which embed_sequence does not serve yet",
                row.name, row.version
            ),
            None,
        );
    }
    let kc: KmerConfig = serde_json::from_value(cfg["featurizer"].clone()).unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!(
                "model \"{}@{}\": bad featuriser config: {e}",
                row.name, row.version
            ),
            None,
        )
    });
    let mut f = Featurizer::new(kc).unwrap_or_else(|e| invalid(e));
    if f.dim() != row.dimension as usize {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!(
                "model \"{}@{}\": dimension {} but its featuriser gives {}",
                row.name,
                row.version,
                row.dimension,
                f.dim()
            ),
            None,
        );
    }
    let weights = Spi::get_one_with_args::<Vec<u8>>(
        "SELECT weights FROM genome.models WHERE id = $1",
        &[row.id.into()],
    )
    .or_raise("reading genome.models");
    if f.config.norm == Norm::TfIdf {
        let w = weights.unwrap_or_default();
        if w.len() != 4 * f.dim() {
            raise(
                PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                format!(
                    "model \"{}@{}\": its IDF weights do not match its dimension",
                    row.name, row.version
                ),
                None,
            );
        }
        f.idf = w
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
    }
    f
}

/// Register a k-mer featuriser as a model (`task = 'sequence-embedding'`). TF-IDF needs
/// `fit_on`, the corpus its document frequencies are fitted on. Returns the new row's id.
#[pg_extern(volatile)]
fn register_kmer_featurizer(
    name: &str,
    version: &str,
    k: default!(i32, 6),
    canonical: default!(bool, true),
    normalization: default!(&str, "'frequency'"),
    dimension: default!(Option<i32>, "NULL"),
    seed: default!(i64, 0),
    fit_on: default!(Option<Array<&str>>, "NULL"),
) -> i64 {
    require_admin("registering a model");
    ensure_new(name, version);
    if !(1..=32).contains(&k) {
        invalid(format!("k must be between 1 and 32, not {k}"));
    }
    let kc = KmerConfig {
        k: k as usize,
        canonical,
        norm: parse_norm(normalization),
        dim: dimension.map(|d| {
            if d < 1 {
                invalid(format!("dimension must be positive, not {d}"));
            }
            d as usize
        }),
        seed: seed as u64,
    };
    let mut f = Featurizer::new(kc.clone()).unwrap_or_else(|e| invalid(e));
    let weights = match (kc.norm, fit_on) {
        (Norm::TfIdf, None) => {
            invalid("a TF-IDF featuriser needs fit_on, the sequences its IDF is fitted on".into())
        }
        (Norm::TfIdf, Some(corpus)) => {
            let reads: Vec<Vec<u8>> = corpus
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.map(|s| model_input(s, Some(i + 1))))
                .collect();
            if reads.is_empty() {
                invalid("fit_on holds no sequence".into());
            }
            let refs: Vec<&[u8]> = reads.iter().map(|r| r.as_slice()).collect();
            f.fit(&refs);
            Some(f32_bytes(&f.idf))
        }
        (_, _) => None,
    };
    let config = serde_json::json!({
        "kind": "kmer",
        "featurizer": kc,
        "dimension": f.dim(),
        "fitted_on": f.fitted_on,
    })
    .to_string();
    let mut digest = config.clone().into_bytes();
    digest.extend(weights.iter().flatten());
    Spi::get_one_with_args::<i64>(
        "INSERT INTO genome.models (name, version, task, dimension, config, weights, sha256) \
         VALUES ($1, $2, 'sequence-embedding', $3, $4::jsonb, $5, $6) RETURNING id",
        &[
            name.into(),
            version.into(),
            (f.dim() as i32).into(),
            config.into(),
            weights.into(),
            sha256_hex(&digest).into(),
        ],
    )
    .or_raise("registering the featuriser")
    .expect("INSERT ... RETURNING gives a row")
}

/// Embed one read with a sequence-embedding model (a k-mer featuriser or an ONNX DNA language
/// model). NULL gives NULL, as does a read with no k-mer free of ambiguous bases (featurisers);
/// a read that is not DNA is an ERROR.
#[pg_extern(stable, parallel_safe)]
fn embed_sequence(
    sequence: Option<&str>,
    model: &str,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Option<Vector> {
    let seq = sequence?;
    // SAFETY: the fcinfo pgrx passed to this call
    let row = unsafe { resolve_cached(fcinfo, Some(model)) };
    embed_read_vectors(&row, &[Some(seq)], false)
        .pop()
        .flatten()
        .map(Vector)
}

/// Embed many reads, in order; NULL elements (and reads with no clean k-mer) give NULL.
#[pg_extern(stable, parallel_safe)]
fn embed_sequences(
    sequences: Option<Array<&str>>,
    model: &str,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Option<Vec<Option<Vector>>> {
    let sequences = sequences?;
    // SAFETY: the fcinfo pgrx passed to this call
    let row = unsafe { resolve_cached(fcinfo, Some(model)) };
    let reads: Vec<Option<&str>> = sequences.iter().collect();
    Some(
        embed_read_vectors(&row, &reads, true)
            .into_iter()
            .map(|v| v.map(Vector))
            .collect(),
    )
}

// ---- discovery ----

/// The families of a sequence collection (after genome.full_classify on it), summarised: size,
/// the exemplar reads nearest the centroid, per rank the majority name among members with a
/// lineage and its share, and the family's mean silhouette (cosine, over at most 2,000 clustered
/// reads). Read through as_table_owner: a caller sees only the rows it may read.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn sequence_families(
    collection: &str,
    lineage_column: default!(Option<&str>, "NULL"),
    ranks: default!(Vec<String>, "'{phylum,class,order,family,genus}'"),
    exemplars: default!(i32, 3),
) -> TableIterator<
    'static,
    (
        name!(family_id, i64),
        name!(label, String),
        name!(size, i64),
        name!(exemplar_ids, Vec<String>),
        name!(exemplar_sequences, Vec<String>),
        name!(majority, Option<pgrx::JsonB>),
        name!(silhouette, Option<f64>),
    ),
> {
    use crate::collections::ident;
    use std::collections::BTreeMap;
    if !(0..=100).contains(&exemplars) {
        invalid(format!(
            "exemplars must be between 0 and 100, not {exemplars}"
        ));
    }
    let c = crate::collections::load(collection);
    let lin = lineage_column.map(|l| {
        if !crate::collections::has_column(&c.rel, l) {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("column \"{l}\" does not exist in table {}", c.rel),
                None,
            );
        }
        format!("pg_catalog.format('%s', t.{})", ident(l))
    });
    let sql = format!(
        "SELECT pg_catalog.format('%s', t.{id}), t.{txt}::text, t.{fam}::int8, t.{emb}::real[], {lin} \
           FROM {rel} t WHERE t.{fam} IS NOT NULL",
        id = ident(&c.id_col),
        txt = ident(&c.text_col),
        fam = ident(&c.fam_col),
        emb = ident(&c.emb_col),
        lin = lin.unwrap_or_else(|| "NULL::text".into()),
        rel = c.rel,
    );
    type Row = (
        String,
        Option<String>,
        i64,
        Option<Vec<f32>>,
        Option<String>,
    );
    let rows: Vec<Row> = c
        .as_owner(|| {
            Spi::connect(|client| {
                let mut out = Vec::new();
                for r in client.select(&sql, None, &[])? {
                    out.push((
                        r.get::<String>(1)?.unwrap_or_default(),
                        r.get::<String>(2)?,
                        r.get::<i64>(3)?.unwrap_or_default(),
                        r.get::<Vec<f32>>(4)?,
                        r.get::<String>(5)?,
                    ));
                }
                Ok::<_, pgrx::spi::SpiError>(out)
            })
        })
        .or_raise("reading the collection");
    type Fam = (i64, String, i64, Vec<String>, bool);
    let fams: Vec<Fam> = Spi::connect(|client| {
        let mut out = Vec::new();
        for r in client.select(
            "SELECT id, label, size, exemplar_ids, is_unclustered FROM genome.families \
              WHERE collection = $1 AND retired_at IS NULL ORDER BY is_unclustered, size DESC, id",
            None,
            &[collection.into()],
        )? {
            out.push((
                r.get::<i64>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<i64>(3)?.unwrap_or_default(),
                r.get::<Vec<String>>(4)?.unwrap_or_default(),
                r.get::<bool>(5)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .or_raise("reading genome.families");
    // silhouette over the clustered reads with an embedding (Unclustered is noise)
    let unclustered: Vec<i64> = fams.iter().filter(|f| f.4).map(|f| f.0).collect();
    let with_emb: Vec<&Row> = rows
        .iter()
        .filter(|r| r.3.as_ref().is_some_and(|v| v.len() == c.dimension))
        .collect();
    let labels: Vec<i32> = {
        let ids: BTreeMap<i64, i32> = fams
            .iter()
            .filter(|f| !f.4)
            .enumerate()
            .map(|(j, f)| (f.0, j as i32))
            .collect();
        with_emb
            .iter()
            .map(|r| {
                if unclustered.contains(&r.2) {
                    -1
                } else {
                    *ids.get(&r.2).unwrap_or(&-1)
                }
            })
            .collect()
    };
    let data: Vec<f32> = with_emb
        .iter()
        .flat_map(|r| r.3.clone().unwrap_or_default())
        .collect();
    crate::families::ensure_pool();
    let sil = genome_core::cluster::quality::silhouette(
        &genome_core::base::Points::new(c.dimension.max(1), data),
        &labels,
        2000,
    );
    let text: std::collections::HashMap<&str, &str> = rows
        .iter()
        .filter_map(|r| r.1.as_deref().map(|t| (r.0.as_str(), t)))
        .collect();
    let mut out = Vec::new();
    for (j, f) in fams.iter().filter(|f| !f.4).enumerate() {
        let members: Vec<&Row> = rows.iter().filter(|r| r.2 == f.0).collect();
        let lineages: Vec<Vec<String>> = members
            .iter()
            .filter_map(|r| r.4.as_deref())
            .map(|l| genome_core::seq::taxa::Lineage::parse(l, ';').0)
            .filter(|l| l.len() >= ranks.len())
            .map(|l| l[l.len() - ranks.len()..].to_vec())
            .collect();
        let majority = (!lineages.is_empty()).then(|| {
            let mut m = serde_json::Map::new();
            for (d, rank) in ranks.iter().enumerate() {
                let mut counts: BTreeMap<String, usize> = BTreeMap::new();
                for l in &lineages {
                    *counts.entry(l[..=d].join(";")).or_default() += 1;
                }
                let (path, n) = counts
                    .into_iter()
                    .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
                    .expect("members with a lineage");
                m.insert(
                    rank.clone(),
                    serde_json::json!({
                        "name": path.rsplit(';').next().unwrap_or_default(),
                        "share": n as f64 / lineages.len() as f64,
                    }),
                );
            }
            pgrx::JsonB(serde_json::Value::Object(m))
        });
        let ex: Vec<String> = f.3.iter().take(exemplars as usize).cloned().collect();
        let seqs: Vec<String> = ex
            .iter()
            .map(|id| {
                text.get(id.as_str())
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            })
            .collect();
        out.push((
            f.0,
            f.1.clone(),
            f.2,
            ex,
            seqs,
            majority,
            sil.per_cluster.get(&(j as i32)).copied(),
        ));
    }
    TableIterator::new(out)
}

extension_sql_file!(
    "sequences.sql",
    name = "sequences",
    requires = [
        "models",
        clean_sequences,
        register_kmer_featurizer,
        embed_sequence,
        embed_sequences,
        sequence_families
    ]
);
