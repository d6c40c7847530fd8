//! Collections as the Rust side sees them. Registration itself is SQL (src/collections.sql):
//! `register_collection`, `unregister_collection`, `pending_count`; the checks every use makes
//! are here (`checked_relation`, `genome.collection_relation`).
//! At the end: reading and writing the collection's own table (embeddings, texts, family ids)
//! for the jobs, always as the table's owner.

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::errors::{raise, OrRaise};

#[derive(Debug, Clone)]
pub struct Collection {
    pub name: String,
    /// The table's OID and its name, schema-qualified and quoted.
    pub relid: pgrx::pg_sys::Oid,
    pub rel: String,
    pub id_col: String,
    pub text_col: String,
    pub emb_col: String,
    pub fam_col: String,
    pub created_col: Option<String>,
    pub model: String,
    pub dimension: usize,
    pub generation: i64,
    /// SQL type of the id column, for casting text ids back (`u.id::bigint`).
    pub id_type: String,
    pub unclustered_id: i64,
}

/// Whether the relation named `rel` (as regclass reads it) has a live column `col`.
pub fn has_column(rel: &str, col: &str) -> bool {
    crate::errors::spi(
        "checking a column",
        Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = $1::text::regclass \
               AND attname = $2 AND attnum > 0 AND NOT attisdropped)",
            &[rel.into(), col.into()],
        ),
    )
    .unwrap_or(false)
}

/// Quote an identifier as format('%I') does when it must (always quoting is equally valid).
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn load(name: &str) -> Collection {
    // collection_relation raises the clear errors: not registered, its table is gone, or the
    // role that registered it no longer has the owner's privileges on it. Read under the safe search path:
    // the table and type names come out schema-qualified.
    let row = crate::owner::with_safe_search_path(|| Spi::connect(|client| {
        let t = client.select(
            "SELECT genome.collection_relation(c.name)::text, c.relid::oid, c.id_column::text, c.text_column::text,
                    c.embedding_column::text, c.family_column::text, c.created_at_column::text, c.model,
                    c.dimension, c.generation,
                    (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                      WHERE a.attrelid = c.relid AND a.attname = c.id_column AND NOT a.attisdropped),
                    (SELECT f.id FROM genome.families f WHERE f.collection = c.name AND f.is_unclustered)
               FROM genome.collections c WHERE c.name = $1",
            None,
            &[name.into()],
        )?;
        let mut out = None;
        for r in t {
            out = Some(Collection {
                name: name.to_string(),
                rel: r.get::<String>(1)?.unwrap_or_default(),
                relid: r.get::<pgrx::pg_sys::Oid>(2)?.unwrap_or(pgrx::pg_sys::InvalidOid),
                id_col: r.get::<String>(3)?.unwrap_or_default(),
                text_col: r.get::<String>(4)?.unwrap_or_default(),
                emb_col: r.get::<String>(5)?.unwrap_or_default(),
                fam_col: r.get::<String>(6)?.unwrap_or_default(),
                created_col: r.get::<String>(7)?,
                model: r.get::<String>(8)?.unwrap_or_default(),
                dimension: r.get::<i32>(9)?.unwrap_or_default() as usize,
                generation: r.get::<i64>(10)?.unwrap_or_default(),
                id_type: r.get::<String>(11)?.unwrap_or_default(),
                unclustered_id: r.get::<i64>(12)?.unwrap_or_default(),
            });
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    }))
    .or_raise("reading genome.collections");
    let c = row.unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("collection \"{name}\" is not registered"),
            Some("see genome.collections; register with genome.register_collection(...)".into()),
        )
    });
    if c.id_type.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!(
                "column \"{}\" of collection \"{name}\" no longer exists",
                c.id_col
            ),
            Some("unregister and register the collection again".into()),
        );
    }
    c
}

impl Collection {
    /// Run `f`, statements on the collection's table, as the table's owner (see `owner`).
    pub fn as_owner<R>(&self, f: impl FnOnce() -> R) -> R {
        crate::owner::as_table_owner(self.relid, f)
    }
}

/// The collection's table, after the checks every use makes: it is registered, its table still
/// exists, and the role that registered it (`registered_by`, set by a trigger to the writing
/// role) still has the owner's privileges on it. A row written into genome.collections by other
/// means names a table its writer does not own, and is refused here: registrations grant
/// nothing. `row` is the registration's (relid, registered_by), None when there is none.
pub fn checked_relation(
    name: Option<&str>,
    row: Option<(pgrx::pg_sys::Oid, Option<pgrx::pg_sys::Oid>)>,
) -> pgrx::pg_sys::Oid {
    let shown = name.unwrap_or("<NULL>");
    let Some((rel, who)) = row else {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("collection \"{shown}\" is not registered"),
            Some("see genome.collections; register with genome.register_collection(...)".into()),
        )
    };
    if crate::owner::relowner_opt(rel).is_none() {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("the table of collection \"{shown}\" no longer exists"),
            None,
        );
    }
    crate::owner::check_registrant("collection", shown, rel, who);
    rel
}

/// A collection's table after the checks every use makes ([`checked_relation`]).
#[pg_extern(stable, parallel_safe)]
pub fn collection_relation(collection: Option<&str>) -> crate::owner::RegClass {
    const SQL: &str =
        "SELECT c.relid::oid, c.registered_by::oid FROM genome.collections c WHERE c.name = $1";
    let row = Spi::connect(|client| {
        crate::plans::with_plan(
            client,
            SQL,
            &[pgrx::PgOid::from(pgrx::pg_sys::TEXTOID)],
            |stmt| {
                let t = crate::errors::spi(
                    "reading the collection",
                    client.select(stmt, None, &[collection.into()]),
                );
                let mut out = None;
                for r in t {
                    let rel =
                        crate::errors::spi("reading the collection", r.get::<pgrx::pg_sys::Oid>(1));
                    let who =
                        crate::errors::spi("reading the collection", r.get::<pgrx::pg_sys::Oid>(2));
                    out = rel.map(|rel| (rel, who));
                }
                out
            },
        )
    });
    crate::owner::RegClass(checked_relation(collection, row))
}

/// Try the collection's transaction-level advisory lock (crate::locks): exclusive for full runs,
/// shared for assign_family. False only when another transaction holds it.
pub fn try_lock(name: &str, shared: bool) -> bool {
    crate::locks::LockKey::Collection.try_lock(name, shared)
}

/// Wait for the collection's lock, exclusive, until the end of the transaction.
pub fn lock(name: &str) {
    crate::locks::LockKey::Collection.lock(name)
}

// The SQL objects of this capability, in their current shape: src/collections.sql.
extension_sql_file!(
    "collections.sql",
    name = "collections",
    requires = ["models", collection_relation]
);

// ---- the app table: embeddings, texts and family ids ------------------------------------------

use std::collections::HashMap;

use genome_core::base::Points;
use pgrx::pg_sys;

use crate::models::{embed_by_length, resolve};
use crate::progress::Progress;
use crate::vector::Vector;

/// Rows per UPDATE when writing assignments back.
const WRITE_CHUNK: usize = 20_000;

/// Write embeddings to a collection's rows: the one way pg_genome does it (full runs, assignment,
/// the background queue through `genome._write_embeddings`). As the table's owner, and only
/// where the row's text is still the text that was embedded: a concurrent edit keeps its new
/// text and gets its embedding later (the queue re-queued the row; a full run or assignment
/// embeds it next time). A NULL vector writes nothing. Returns the rows written.
pub fn write_embeddings(
    c: &Collection,
    column: &str,
    ids: Vec<String>,
    texts: Vec<Option<String>>,
    vectors: pgrx::datum::DatumWithOid<'_>,
) -> i64 {
    let sql = format!(
        "UPDATE {rel} t SET {col} = u.v FROM unnest($1::text[], $2, $3::text[]) AS u(rid, v, txt) \
          WHERE t.{id} OPERATOR(pg_catalog.=) u.rid::{ty} AND t.{txtcol} IS NOT DISTINCT FROM u.txt \
            AND u.v IS NOT NULL",
        rel = c.rel,
        col = ident(column),
        id = ident(&c.id_col),
        ty = c.id_type,
        txtcol = ident(&c.text_col),
    );
    c.as_owner(|| {
        Spi::connect_mut(|client| {
            client
                .update(&sql, None, &[ids.into(), vectors, texts.into()])
                .map(|t| t.len() as i64)
        })
    })
    .or_raise("writing embeddings")
}

/// SQL face of [`write_embeddings`] for the queue's PL/pgSQL: `target` 'embedding' (the
/// collection's embedding column) or 'reembed' (the shadow column of a re-embedding).
#[pg_extern(volatile, parallel_unsafe)]
fn _write_embeddings(
    collection: &str,
    target: &str,
    ids: Vec<Option<String>>,
    texts: Vec<Option<String>>,
    vectors: pgrx::AnyArray,
) -> i64 {
    let c = load(collection);
    let column = match target {
        "embedding" => c.emb_col.clone(),
        "reembed" => Spi::get_one_with_args::<String>(
            "SELECT reembed_column::text FROM genome.collections WHERE name = $1",
            &[collection.into()],
        )
        .or_raise("reading the re-embedding column")
        .unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("collection \"{collection}\" has no re-embedding in progress"),
                None,
            )
        }),
        _ => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("target must be 'embedding' or 'reembed', not \"{target}\""),
            None,
        ),
    };
    let ids = ids.into_iter().map(Option::unwrap_or_default).collect();
    if vectors.oid() != crate::vector::vector_array_type_oid() {
        raise(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            "vectors must be a vector[]".into(),
            None,
        );
    }
    // the array as it came, straight into the statement: no element is converted
    // SAFETY: a vector[] datum (checked above), valid for this call
    let vectors = unsafe { pgrx::datum::DatumWithOid::new(vectors.datum(), vectors.oid()) };
    write_embeddings(&c, &column, ids, texts, vectors)
}

/// Embed `texts` with the collection's model and write them to the rows `ids`; returns the
/// vectors. Progress advances from `done0`.
pub fn embed_and_store(
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
        let vv: Vec<Option<Vector>> = vecs.iter().cloned().map(|v| Some(Vector(v))).collect();
        let tx: Vec<Option<String>> = chunk.iter().cloned().map(Some).collect();
        write_embeddings(c, &c.emb_col, idchunk, tx, vv.into());
        out.extend(vecs);
        prog.advance(done0 + out.len() as i64);
    }
    out
}

/// The embed stage of full_classify: embeds every row with text but no embedding; returns how
/// many.
pub fn embed_missing(c: &Collection, prog: &mut Progress) -> i64 {
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
        .or_raise("reading rows to embed");
    prog.stage("embed", ids.len() as i64);
    embed_and_store(c, &ids, &texts, prog, 0);
    ids.len() as i64
}

/// How many rows of the collection have an embedding (read as the table's owner).
pub fn count_embedded(c: &Collection) -> i64 {
    c.as_owner(|| {
        Spi::get_one::<i64>(&format!(
            "SELECT count(*) FROM {} WHERE {} IS NOT NULL",
            c.rel,
            ident(&c.emb_col)
        ))
    })
    .or_raise("counting rows")
    .unwrap_or(0)
}

/// The rows with an embedding a full run clusters, in id order: their ids (as text) and their
/// vectors, read through a cursor (the "load" stage). With more than `cap` rows (0: no cap),
/// every k-th row only (k = rows / cap, rounded up): an even sample of at most `cap`. Returns
/// the rows read, their vectors, and how many rows have an embedding.
pub fn load_embeddings(
    c: &Collection,
    prog: &mut Progress,
    cap: i64,
) -> (Vec<String>, Points, i64) {
    let total = count_embedded(c);
    prog.stage("load", total);
    let stride = if cap > 0 && total > cap {
        (total + cap - 1) / cap
    } else {
        1
    } as usize;
    let keep = total as usize / stride + 1;
    let mut ids = Vec::with_capacity(keep);
    let mut data: Vec<f32> = Vec::with_capacity(keep * c.dimension);
    let mut seen = 0usize;
    by_fetch(c, |rows| {
        for (id, v) in rows {
            if v.len() != c.dimension {
                raise(
                    PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
                    format!("row {id} of collection \"{}\" has a {}-d embedding, the collection's model gives {}", c.name, v.len(), c.dimension),
                    Some(format!("clear the column: UPDATE {} SET {} = NULL WHERE ...", c.rel, ident(&c.emb_col))),
                );
            }
            if seen.is_multiple_of(stride) {
                ids.push(id);
                data.extend(v);
            }
            seen += 1;
        }
        prog.advance(seen as i64);
    });
    let d = c.dimension.max(1);
    (
        ids,
        Points {
            n: data.len() / d,
            d,
            data,
        },
        seen as i64,
    )
}

/// Every row with an embedding whose id is not in `skip`, in id order, a fetch at a time:
/// `f` gets the fetch's ids and vectors (row after row) and may write to the table (a full run
/// on a sample places the other rows this way, at the memory of one fetch).
pub fn each_embedding_except(
    c: &Collection,
    skip: &std::collections::HashSet<&str>,
    mut f: impl FnMut(&[String], &[f32]),
) {
    by_fetch(c, |rows| {
        let mut ids = Vec::new();
        let mut data = Vec::new();
        for (id, v) in rows {
            if !skip.contains(id.as_str()) && v.len() == c.dimension {
                ids.push(id);
                data.extend(v);
            }
        }
        f(&ids, &data);
    });
}

/// The collection's rows with an embedding, (id as text, vector), in id order, read through a
/// cursor and handed to `f` a fetch of 10,000 at a time, with a check for a cancel between
/// fetches: what the full run's two passes (the load and the placement) share.
fn by_fetch(c: &Collection, mut f: impl FnMut(Vec<(String, Vec<f32>)>)) {
    let sql = format!(
        "SELECT {id}::text, {emb} FROM {rel} WHERE {emb} IS NOT NULL ORDER BY {id}",
        id = ident(&c.id_col),
        emb = ident(&c.emb_col),
        rel = c.rel
    );
    c.as_owner(|| {
        Spi::connect(|client| {
            let mut cur = client.open_cursor(&sql, &[]);
            loop {
                pg_sys::check_for_interrupts!();
                let t = cur.fetch(10_000)?;
                if t.is_empty() {
                    break;
                }
                let mut rows = Vec::with_capacity(t.len());
                for r in t {
                    let id = r.get::<String>(1)?.unwrap_or_default();
                    rows.push((id, r.get::<Vector>(2)?.map(|v| v.0).unwrap_or_default()));
                }
                // Each fetch's rows would otherwise stay in SPI's memory until the end (1M rows
                // of 384-d: 1.6 GB next to the 1.5 GB copied out): free them now.
                // SAFETY: SPI_tuptable is the fetch just read, whose rows were copied above.
                unsafe { pg_sys::SPI_freetuptable(pg_sys::SPI_tuptable) };
                f(rows);
            }
            Ok::<_, pgrx::spi::SpiError>(())
        })
    })
    .or_raise("reading embeddings");
}

/// The texts of the rows `ids` (ids as text), by id; rows without text are left out.
pub fn texts_of(c: &Collection, ids: &[String]) -> HashMap<String, String> {
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
    .or_raise("reading texts")
}

/// Write family ids to the rows, in chunks, skipping rows that already carry the right one.
pub fn write_assignments(c: &Collection, ids: &[String], fams: &[i64], prog: &mut Progress) {
    for (k, (ic, fc)) in ids
        .chunks(WRITE_CHUNK)
        .zip(fams.chunks(WRITE_CHUNK))
        .enumerate()
    {
        pg_sys::check_for_interrupts!();
        write_families_of(c, ic, fc);
        prog.advance(((k + 1) * WRITE_CHUNK).min(ids.len()) as i64);
    }
}

/// One statement of [`write_assignments`]: these rows' families (rows whose family is already
/// that one are not written).
pub fn write_families_of(c: &Collection, ids: &[String], fams: &[i64]) {
    let sql = format!(
        "UPDATE {rel} t SET {fam} = u.f FROM unnest($1::text[], $2::int8[]) AS u(id, f) \
          WHERE t.{id} = u.id::{ty} AND t.{fam} IS DISTINCT FROM u.f",
        rel = c.rel,
        fam = ident(&c.fam_col),
        id = ident(&c.id_col),
        ty = c.id_type
    );
    c.as_owner(|| Spi::run_with_args(&sql, &[ids.to_vec().into(), fams.to_vec().into()]))
        .or_raise("writing family ids");
}

/// Put the rows that have no embedding (after full_classify's embed stage: the rows without
/// text) in Unclustered; returns how many changed. With `textless_only`, rows that have text
/// are left as they are (a data node's install: rows written since the coordinator's run began
/// wait for their embedding and assign_family). A plain UPDATE, its row count from SPI: a
/// data-modifying WITH would refuse tables with DO ALSO rules.
pub fn unclustered_without_embedding(c: &Collection, textless_only: bool) -> i64 {
    let sql = format!(
        "UPDATE {rel} SET {fam} = $1 WHERE {emb} IS NULL{text} AND {fam} IS DISTINCT FROM $1",
        rel = c.rel,
        fam = ident(&c.fam_col),
        emb = ident(&c.emb_col),
        text = if textless_only {
            format!(" AND {} IS NULL", ident(&c.text_col))
        } else {
            String::new()
        }
    );
    c.as_owner(|| {
        Spi::connect_mut(|client| {
            client
                .update(&sql, None, &[c.unclustered_id.into()])
                .map(|t| t.len() as i64)
        })
    })
    .or_raise("assigning rows without text")
}

/// Rows of the collection in Unclustered.
pub fn count_unclustered(c: &Collection) -> i64 {
    c.as_owner(|| {
        Spi::get_one_with_args::<i64>(
            &format!(
                "SELECT count(*) FROM {rel} WHERE {fam} = $1",
                rel = c.rel,
                fam = ident(&c.fam_col)
            ),
            &[c.unclustered_id.into()],
        )
    })
    .or_raise("counting Unclustered")
    .unwrap_or(0)
}

/// Rows listed as waiting for a family (genome.pending_rows), counted up to `cap`: enough for
/// assign_family's `min_pending` test without reading a long list. Entries are hints (a row may
/// have been given a family or deleted since), dropped by [`lock_pending`] when met.
pub fn count_pending(c: &Collection, cap: i64) -> i64 {
    if !has_pending_list() {
        return c
            .as_owner(|| {
                Spi::get_one::<i64>(&format!(
                    "SELECT count(*) FROM {} WHERE {} IS NULL",
                    c.rel,
                    ident(&c.fam_col)
                ))
            })
            .or_raise("counting pending rows")
            .unwrap_or(0);
    }
    Spi::get_one_with_args::<i64>(
        "SELECT count(*) FROM (SELECT 1 FROM genome.pending_rows WHERE collection = $1 LIMIT $2) x",
        &[c.name.as_str().into(), cap.into()],
    )
    .or_raise("counting pending rows")
    .unwrap_or(0)
}

/// A row waiting for a family: its id (as text), its text and its embedding, if any.
pub struct PendingRow {
    pub id: String,
    pub text: Option<String>,
    pub embedding: Option<Vec<f32>>,
}

/// Lock and read up to `limit` rows without a family, in the order they became pending
/// (genome.pending_rows; rows listed at registration by the created-at column when there is
/// one, then by id). Entries and rows another transaction holds are skipped. The entries taken
/// are deleted here, in the caller's transaction, except those of rows still without a family
/// that another transaction holds: rows given a family elsewhere or deleted leave the list
/// too, so a batch costs what its own entries cost, however long the list.
pub fn lock_pending(c: &Collection, limit: i64) -> Vec<PendingRow> {
    if !has_pending_list() {
        return lock_pending_unlisted(c, limit);
    }
    let taken: Vec<String> = Spi::connect_mut(|client| {
        let mut v = Vec::new();
        for r in client.update(
            "SELECT row_id FROM genome.pending_rows WHERE collection = $1 ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED",
            None,
            &[c.name.as_str().into(), limit.into()],
        )? {
            v.push(r.get::<String>(1)?.unwrap_or_default());
        }
        Ok::<_, pgrx::spi::SpiError>(v)
    })
    .or_raise("reading pending rows");
    if taken.is_empty() {
        return Vec::new();
    }
    let rows_sql = format!(
        "SELECT u.id, t.{txt}::text, t.{emb} FROM {rel} t \
           JOIN unnest($1::text[]) WITH ORDINALITY AS u(id, k) ON t.{id} = u.id::{ty} \
          WHERE t.{fam} IS NULL ORDER BY u.k FOR UPDATE OF t SKIP LOCKED",
        id = ident(&c.id_col),
        txt = ident(&c.text_col),
        emb = ident(&c.emb_col),
        rel = c.rel,
        fam = ident(&c.fam_col),
        ty = c.id_type,
    );
    let rows = c
        .as_owner(|| {
            Spi::connect_mut(|client| {
                let mut v = Vec::new();
                for r in client.update(&rows_sql, None, &[taken.clone().into()])? {
                    v.push(PendingRow {
                        id: r.get::<String>(1)?.unwrap_or_default(),
                        text: r.get::<String>(2)?,
                        embedding: r.get::<Vector>(3)?.map(|x| x.0),
                    });
                }
                Ok::<_, pgrx::spi::SpiError>(v)
            })
        })
        .or_raise("reading pending rows");
    // rows still waiting that another transaction holds keep their entries
    let waiting = still_waiting(c, &taken);
    let mine: std::collections::HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let done: Vec<String> = taken
        .into_iter()
        .filter(|id| mine.contains(id.as_str()) || !waiting.contains(id))
        .collect();
    drop_entries(c, &done);
    rows
}

/// Delete the entries of these rows (ids as text) from genome.pending_rows.
fn drop_entries(c: &Collection, ids: &[String]) {
    for chunk in ids.chunks(WRITE_CHUNK) {
        pg_sys::check_for_interrupts!();
        Spi::run_with_args(
            "DELETE FROM genome.pending_rows p USING unnest($2::text[]) u WHERE p.collection = $1 AND p.row_id = u",
            &[c.name.as_str().into(), chunk.to_vec().into()],
        )
        .or_raise("updating the pending rows");
    }
}

/// After a full run gave every row it read a family: the entries of listed rows that have a
/// family now (or are gone) leave genome.pending_rows. The list is read first (in steady state
/// it holds only the rows added since the last assignment), so the cost follows the list, not
/// the table; rows added meanwhile, or without an embedding, stay listed.
pub fn drop_pending(c: &Collection) {
    if !has_pending_list() {
        return;
    }
    // locked first: a trigger listing one of these rows again waits, then sees it deleted
    let listed: Vec<String> = Spi::connect_mut(|client| {
        let mut v = Vec::new();
        for r in client.update(
            "SELECT row_id FROM genome.pending_rows WHERE collection = $1 FOR UPDATE",
            None,
            &[c.name.as_str().into()],
        )? {
            v.push(r.get::<String>(1)?.unwrap_or_default());
        }
        Ok::<_, pgrx::spi::SpiError>(v)
    })
    .or_raise("reading the pending rows");
    if listed.is_empty() {
        return;
    }
    let waiting = still_waiting(c, &listed);
    let done: Vec<String> = listed
        .into_iter()
        .filter(|id| !waiting.contains(id))
        .collect();
    drop_entries(c, &done);
}

/// Of these rows (ids as text), those still without a family (as the entries spell them: the
/// id type's output, which its cast to text need not equal).
fn still_waiting(c: &Collection, ids: &[String]) -> std::collections::HashSet<String> {
    let sql = format!(
        "SELECT u FROM unnest($1::text[]) u JOIN {rel} t ON t.{id} = u::{ty} WHERE t.{fam} IS NULL",
        id = ident(&c.id_col),
        rel = c.rel,
        fam = ident(&c.fam_col),
        ty = c.id_type,
    );
    c.as_owner(|| {
        Spi::connect(|client| {
            let mut w = std::collections::HashSet::new();
            for r in client.select(&sql, None, &[ids.to_vec().into()])? {
                w.insert(r.get::<String>(1)?.unwrap_or_default());
            }
            Ok::<_, pgrx::spi::SpiError>(w)
        })
    })
    .or_raise("reading pending rows")
}

/// Whether this database has genome.pending_rows (0.8.0). A database still on 0.7.1's SQL with
/// this library (ALTER EXTENSION ... UPDATE not yet run) finds pending rows by their family
/// column, as 0.7.1 did.
fn has_pending_list() -> bool {
    Spi::get_one::<bool>("SELECT to_regclass('genome.pending_rows') IS NOT NULL")
        .or_raise("looking for genome.pending_rows")
        .unwrap_or(false)
}

/// [`lock_pending`] before 0.8.0's SQL: up to `limit` rows whose family is NULL, oldest first
/// (by the created-at column when there is one, then by id), skipping rows others hold.
fn lock_pending_unlisted(c: &Collection, limit: i64) -> Vec<PendingRow> {
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
    c.as_owner(|| {
        Spi::connect_mut(|client| {
            let mut v = Vec::new();
            for r in client.update(&sql, None, &[limit.into()])? {
                v.push(PendingRow {
                    id: r.get::<String>(1)?.unwrap_or_default(),
                    text: r.get::<String>(2)?,
                    embedding: r.get::<Vector>(3)?.map(|x| x.0),
                });
            }
            Ok::<_, pgrx::spi::SpiError>(v)
        })
    })
    .or_raise("reading pending rows")
}
