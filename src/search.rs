//! Semantic search: `genome.search` over a collection's pgvector HNSW index. The SQL side (the
//! index) is src/search.sql.
//!
//! One call: the re-embedding lock (shared), the collection's checks and columns (one saved
//! plan), the query as the table's owner when the caller is more privileged (a role sees only
//! rows it could read itself), rows straight back. The statements are planned once per backend
//! and kept (SPI_keepplan) by their text, which names the table and columns: a renamed column or
//! a re-embedding makes a new text, and PostgreSQL's plan cache replans a kept plan when a
//! table it reads changes.

use pgrx::callconv::{BoxRet, FcInfo};
use pgrx::datum::Datum;
use pgrx::prelude::*;
use pgrx::{pg_sys, FromDatum, IntoDatum, JsonB, PgOid, PgSqlErrorCode};

use crate::collections::{checked_relation, ident};
use crate::errors::{raise, spi};
use crate::locks::LockKey;
use crate::models::{embed_texts, resolve};
use crate::plans::{select_fresh, with_plan};
use crate::vector::{vector_type_oid, Vector};

extension_sql_file!(
    "search.sql",
    name = "search",
    requires = ["queue", search_text, search_vector]
);

/// A jsonb value handed from the search statement to the caller as it is: no parse into
/// serde_json and no re-serialisation (those cost about 30 us per hit). The datum is copied out
/// of SPI's memory into the set-returning function's own context (`HITS_CONTEXT`, set by `run`
/// for the duration of its query): it lives while the rows are returned and goes with the call,
/// so a long transaction searching many times holds no hits of earlier calls.
pub struct RawJsonb(pg_sys::Datum);

thread_local! {
    static HITS_CONTEXT: std::cell::Cell<pg_sys::MemoryContext> =
        const { std::cell::Cell::new(std::ptr::null_mut()) };
}

impl FromDatum for RawJsonb {
    unsafe fn from_datum_in_memory_context(
        memory_context: pgrx::PgMemoryContexts,
        datum: pg_sys::Datum,
        is_null: bool,
        typoid: pg_sys::Oid,
    ) -> Option<Self> {
        let target = HITS_CONTEXT.with(|c| c.get());
        let mut cx = if target.is_null() {
            memory_context
        } else {
            pgrx::PgMemoryContexts::For(target)
        };
        // SAFETY: as FromDatum's contract; the copy is made in `cx`, a live context (the SRF's
        // multi-call context while `run` queries, else the one pgrx chose)
        unsafe { cx.switch_to(|_| Self::from_polymorphic_datum(datum, is_null, typoid)) }
    }

    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _oid: pg_sys::Oid,
    ) -> Option<Self> {
        // SAFETY: a jsonb (varlena) datum: copied (and detoasted) into the current context
        (!is_null).then(|| {
            RawJsonb(pg_sys::Datum::from(unsafe {
                pg_sys::pg_detoast_datum_copy(datum.cast_mut_ptr())
            }))
        })
    }
}

pgrx::impl_sql_translatable!(RawJsonb, "jsonb");

impl IntoDatum for RawJsonb {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

unsafe impl BoxRet for RawJsonb {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        // SAFETY: a valid jsonb datum in a context that outlives the call (see above)
        unsafe { fcinfo.return_raw_datum(self.0) }
    }
}

/// What a search needs of its collection, read after the checks every use makes.
struct Target {
    rel: pg_sys::Oid,
    id_col: String,
    emb_col: String,
    dimension: i32,
    model: String,
    vector_schema: String,
    /// schema-qualified and quoted (read under the safe search_path)
    name: String,
    /// the expression of the hit's row without its embedding (converting the vector to JSON and
    /// dropping it again was a third of a search's time)
    payload: String,
}

fn target(collection: Option<&str>) -> Target {
    // a re-embedding's switch-over cannot happen between reading the columns and the query
    LockKey::Embedding.lock_shared(collection.unwrap_or_default());
    const SQL: &str = "SELECT c.relid::oid, c.registered_by::oid, c.id_column::text, \
              c.embedding_column::text, c.dimension, c.model, c.relid::regclass::text \
         FROM genome.collections c WHERE c.name = $1";
    // read with a snapshot taken after the lock: a switch-over that committed while we waited
    // is seen (the column and model it made current)
    let text = |d: Option<pg_sys::Datum>| {
        // SAFETY: text columns of the row being read
        d.and_then(|d| unsafe { String::from_datum(d, false) })
            .unwrap_or_default()
    };
    let found = Spi::connect(|_| {
        select_fresh(SQL, &[pg_sys::TEXTOID], &[collection.into_datum()], |get| {
            // SAFETY: the columns' types as the statement states them
            let oid = |i| get(i).map(|d| unsafe { pg_sys::Oid::from_datum(d, false) }.unwrap());
            let rel = oid(1).unwrap_or(pg_sys::InvalidOid);
            (
                (rel, oid(2)),
                Target {
                    rel,
                    id_col: text(get(3)),
                    emb_col: text(get(4)),
                    dimension: get(5)
                        .and_then(|d| unsafe { i32::from_datum(d, false) })
                        .unwrap_or_default(),
                    model: text(get(6)),
                    vector_schema: String::new(),
                    name: text(get(7)),
                    payload: String::new(),
                },
            )
        })
    });
    let (row, t) = found.into_iter().next().unzip();
    // the checks every use makes (not registered, table gone, registrant no longer the owner)
    checked_relation(collection, row);
    let mut t = t.expect("checked_relation raises when there is no registration");
    t.payload = payload_of(t.rel, &t.emb_col);
    t.vector_schema = crate::vector::vector_schema();
    t
}

/// The hit's row as jsonb, every column but the embedding, built from the table's current
/// columns (the relation cache: no query): `jsonb_build_object('a', t.a, ...)`, or for tables
/// wider than a function's 100 arguments allow, `to_jsonb` of a row of them.
fn payload_of(rel: pg_sys::Oid, emb_col: &str) -> String {
    let mut cols = Vec::new();
    // SAFETY: the relation exists (checked just before, and locked by nothing we hold but
    // AccessShareLock taken here); its tuple descriptor is read while it is open.
    unsafe {
        let r = pg_sys::relation_open(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let desc = (*r).rd_att;
        for i in 0..(*desc).natts as usize {
            let a = (*desc).attrs.as_slice((*desc).natts as usize)[i];
            if a.attisdropped {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(a.attname.data.as_ptr()).to_string_lossy();
            if name != emb_col {
                cols.push(name.into_owned());
            }
        }
        pg_sys::relation_close(r, pg_sys::NoLock as pg_sys::LOCKMODE);
    }
    if cols.len() <= 50 {
        let pairs: Vec<String> = cols
            .iter()
            .map(|c| format!("'{}', t.{}", c.replace('\'', "''"), ident(c)))
            .collect();
        format!("pg_catalog.jsonb_build_object({})", pairs.join(", "))
    } else {
        let list: Vec<String> = cols.iter().map(|c| format!("t.{}", ident(c))).collect();
        format!(
            "(SELECT pg_catalog.to_jsonb(r) FROM (SELECT {}) r)",
            list.join(", ")
        )
    }
}

fn bad(msg: String) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, msg, None)
}

/// One condition per filter entry, in key order, reading the value from the statement's jsonb
/// parameter ($4). pg_catalog's = (the statement runs with search_path = pg_catalog, pg_temp):
/// no operator from a schema other roles can create in is ever picked.
fn filter_conditions(rel: pg_sys::Oid, name: &str, filter: &serde_json::Value) -> String {
    let serde_json::Value::Object(map) = filter else {
        bad("filter must be a JSON object of column: value pairs".into())
    };
    let mut conds = String::new();
    for (k, v) in map {
        let ty = Spi::connect(|client| {
            let t = client.select(
                "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a \
                  WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
                None,
                &[rel.into(), k.as_str().into()],
            )?;
            let mut ty = None;
            for r in t {
                ty = r.get::<String>(1)?;
            }
            Ok::<_, pgrx::spi::SpiError>(ty)
        });
        let Some(ty) = spi("reading the filter's column types", ty) else {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("filter column \"{k}\" does not exist in {name}"),
                None,
            )
        };
        let scalar = |e: &serde_json::Value| !(e.is_object() || e.is_array());
        let lit = k.replace('\'', "''");
        let col = ident(k);
        conds += &match v {
            serde_json::Value::Null => format!(" AND t.{col} IS NULL"),
            serde_json::Value::Array(a) if a.iter().all(scalar) => format!(
                " AND t.{col} OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT pg_catalog.jsonb_array_elements_text($4 -> '{lit}'))::{ty}[])"
            ),
            v if scalar(v) => {
                format!(" AND t.{col} OPERATOR(pg_catalog.=) ($4 ->> '{lit}')::{ty}")
            }
            _ => bad(format!(
                "filter value for \"{k}\" must be a scalar or an array of scalars"
            )),
        };
    }
    conds
}

type Hit = (String, f32, Option<RawJsonb>);

/// The search itself. `query` is the query vector (NULL: no rows).
fn run(
    collection: Option<&str>,
    t: &Target,
    query: Option<Vec<f32>>,
    top_k: i32,
    score_threshold: Option<f32>,
    filter: Option<JsonB>,
) -> Vec<Hit> {
    if !(1..=1000).contains(&top_k) {
        bad("top_k must be between 1 and 1000".into());
    }
    if score_threshold.is_some_and(f32::is_nan) {
        bad("score_threshold must be a number (a cosine between -1 and 1), not NaN".into());
    }
    let Some(q) = query else {
        return Vec::new();
    };
    if q.len() != t.dimension as usize {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
            format!(
                "query vector has {} dimensions, collection \"{}\" has {}",
                q.len(),
                collection.unwrap_or_default(),
                t.dimension
            ),
            None,
        );
    }
    // cosine similarity to a zero vector is undefined (NaN, which passes every threshold)
    let norm: f64 = q.iter().map(|x| f64::from(*x) * f64::from(*x)).sum();
    if norm == 0.0 || norm.is_nan() {
        bad("the query vector has zero length; cosine similarity is undefined".into());
    }
    let conds = match &filter {
        Some(f) => filter_conditions(t.rel, &t.name, &f.0),
        None => String::new(),
    };
    let (emb, vs) = (ident(&t.emb_col), ident(&t.vector_schema));
    let dist = format!("t.{emb} OPERATOR({vs}.<=>) $1");
    let rel = &t.name;
    // the nearest top_k (the index's order), then rows with no defined score (a stored
    // zero-length embedding: NaN) and those under the threshold left out, best first
    let statement = |order: &str| {
        format!(
            "SELECT h.id, (1 - h.dist)::real, h.payload FROM (\
               SELECT pg_catalog.format('%s', t.{id}) AS id, {dist} AS dist, \
                      {payload} AS payload \
                 FROM {rel} t WHERE t.{emb} IS NOT NULL{conds} ORDER BY {order} LIMIT $2) h \
              WHERE h.dist OPERATOR(pg_catalog.<>) 'NaN'::float8 \
                AND 1 - h.dist OPERATOR(pg_catalog.>=) $3 ORDER BY h.dist, h.id",
            id = ident(&t.id_col),
            payload = t.payload,
        )
    };
    let types = [
        PgOid::from(vector_type_oid()),
        PgOid::from(pg_sys::INT4OID),
        PgOid::from(pg_sys::FLOAT8OID),
        PgOid::from(pg_sys::JSONBOID),
    ];
    let threshold = score_threshold.map_or(-1.0, f64::from);
    let query = |order: &str| -> Vec<Hit> {
        let args = [
            Vector(q.clone()).into(),
            top_k.into(),
            threshold.into(),
            filter.as_ref().map(|f| JsonB(f.0.clone())).into(),
        ];
        crate::owner::as_table_owner(t.rel, || fetch_hits(&statement(order), &types, &args))
    };
    let hits = query(&dist);
    if filter.is_some() && hits.len() < top_k as usize {
        // fewer than asked though more rows may pass the filter: an exact scan over the rows
        // that pass it ("+ 0" keeps the planner off the index)
        return query(&format!("({dist}) OPERATOR(pg_catalog.+) 0, 1"));
    }
    hits
}

/// The rows of a statement returning (id text, score real, row jsonb), kept as hits. The jsonb
/// values are copied into the context this call runs in (the SRF's, see RawJsonb).
fn fetch_hits(sql: &str, types: &[PgOid], args: &[pgrx::datum::DatumWithOid]) -> Vec<Hit> {
    let outer = unsafe { pg_sys::CurrentMemoryContext };
    let previous = HITS_CONTEXT.with(|c| c.replace(outer));
    struct Reset(pg_sys::MemoryContext);
    impl Drop for Reset {
        fn drop(&mut self) {
            HITS_CONTEXT.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(previous);
    Spi::connect(|client| {
        with_plan(client, sql, types, |stmt| {
            let rows = spi("searching", client.select(stmt, None, args));
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push((
                    spi("reading a hit", r.get::<String>(1)).unwrap_or_default(),
                    spi("reading a hit", r.get::<f32>(2)).unwrap_or_default(),
                    spi("reading a hit", r.get::<RawJsonb>(3)),
                ));
            }
            out
        })
    })
}

/// On a coordinator (src/cluster.rs): the search of every data node, merged
/// (genome_cluster.search, cluster/pg_genome_cluster.sql). `query` is the text or the vector,
/// as given; the nodes check the arguments.
fn routed(
    collection: Option<&str>,
    query: pgrx::datum::DatumWithOid,
    top_k: Option<i32>,
    score_threshold: Option<f32>,
    filter: Option<JsonB>,
) -> Vec<Hit> {
    // the statement's text names the query's type: plans are kept by their text (plans.rs)
    let kind = if query.oid() == pg_sys::TEXTOID {
        "text"
    } else {
        "vector"
    };
    let sql =
        format!("SELECT h.id, h.score, h.\"row\" FROM genome_cluster.search($1, $2, $3, $4, $5) h -- {kind}");
    let types = [
        PgOid::from(pg_sys::TEXTOID),
        PgOid::from(query.oid()),
        PgOid::from(pg_sys::INT4OID),
        PgOid::from(pg_sys::FLOAT4OID),
        PgOid::from(pg_sys::JSONBOID),
    ];
    let args = [
        collection.into(),
        query,
        top_k.into(),
        score_threshold.into(),
        filter.into(),
    ];
    fetch_hits(&sql, &types, &args)
}

/// Settings for this call only (owner::with_settings): the safe search_path; pgvector's HNSW settings (at least top_k
/// candidates per scan, as pgvector returns at most ef_search rows per scan; iterative scans so
/// a filter that rejects many candidates still fills the result); and, without a filter, the
/// kept generic plan (an HNSW index scan whatever the vector and the limit) instead of planning
/// each call again for its values (custom plans: about 0.3 ms of a 0.45 ms search at 100k rows).
/// With a filter the values matter to the plan (how many rows pass), so PostgreSQL chooses.
fn with_search_settings<R>(top_k: i32, generic: bool, f: impl FnOnce() -> R) -> R {
    let ef_search = top_k.max(40).to_string();
    let plans = if generic {
        "force_generic_plan"
    } else {
        "auto"
    };
    crate::owner::with_settings(
        &[
            ("hnsw.ef_search", &ef_search),
            ("hnsw.iterative_scan", "relaxed_order"),
            ("plan_cache_mode", plans),
        ],
        f,
    )
}

/// Both forms of `genome.search`: the collection read after the lock, the query vector from
/// `query` (given the collection: its model), the search, rows back.
fn search(
    collection: Option<&str>,
    top_k: Option<i32>,
    score_threshold: Option<f32>,
    filter: Option<JsonB>,
    query: impl FnOnce(&Target) -> Option<Vec<f32>>,
) -> Vec<Hit> {
    let top_k = top_k.unwrap_or(0);
    with_search_settings(top_k, filter.is_none(), || {
        let t = target(collection);
        let q = query(&t);
        run(collection, &t, q, top_k, score_threshold, filter)
    })
}

/// Semantic search: the rows of a collection most similar to a text (cosine), best first, with
/// optional equality filters. The text is embedded with the collection's model.
#[pg_extern(volatile, name = "search")]
pub fn search_text(
    collection: Option<&str>,
    query: Option<&str>,
    top_k: default!(Option<i32>, 10),
    score_threshold: default!(Option<f32>, 0.5),
    filter: default!(Option<JsonB>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(id, String),
        name!(score, f32),
        name!(row, Option<RawJsonb>),
    ),
> {
    if crate::cluster::coordinator() {
        // a distributed collection's model is known here: the query is embedded once, here, and
        // its vector goes to the nodes (else every node embeds the text)
        let q = match (query, collection.and_then(crate::cluster::model_of)) {
            (Some(text), Some(model)) => {
                let v = embed_texts(&resolve(Some(&model)), &[text]).pop();
                Some(Vector(v.expect("one vector per text"))).into()
            }
            _ => query.into(),
        };
        return TableIterator::new(routed(collection, q, top_k, score_threshold, filter));
    }
    TableIterator::new(search(collection, top_k, score_threshold, filter, |t| {
        let model = resolve(Some(&t.model));
        query.map(|text| {
            embed_texts(&model, &[text])
                .pop()
                .expect("one vector per text")
        })
    }))
}

/// Semantic search with a precomputed query vector (the collection's dimension).
#[pg_extern(volatile, name = "search")]
pub fn search_vector(
    collection: Option<&str>,
    query_vector: Option<Vector>,
    top_k: default!(Option<i32>, 10),
    score_threshold: default!(Option<f32>, 0.5),
    filter: default!(Option<JsonB>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(id, String),
        name!(score, f32),
        name!(row, Option<RawJsonb>),
    ),
> {
    if crate::cluster::coordinator() {
        return TableIterator::new(routed(
            collection,
            query_vector.into(),
            top_k,
            score_threshold,
            filter,
        ));
    }
    TableIterator::new(search(collection, top_k, score_threshold, filter, |_| {
        query_vector.map(|v| v.0)
    }))
}
