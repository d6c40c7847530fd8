//! Capability ranking, the pgrx side: `refresh_catalog` (the feature store), `rank_capabilities`
//! (serving), `train_ranker` and `evaluate_ranker`. The algorithms are genome-core's `rank`
//! module; registration, outcomes, stages and the canary are SQL (src/ranking.sql).
//!
//! Serving: the intent's embedding (an LRU per backend), the catalog's dense candidates from the
//! pgvector HNSW index of its feature table, its lexical candidates (BM25 over the capability
//! texts, kept in the process with the catalog's features) and the production ranker's memory of
//! past successful intents; the ranker scores their union, or, before any training, the
//! candidates are ordered by reciprocal-rank fusion of the dense and lexical ranks
//! (`model_version` NULL, `confidence` NULL). Catalog features and rankers are loaded once per
//! process and cached by feature version and ranker row.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use genome_core::rank::graph::{self, Bipartite, Node2VecConfig};
use genome_core::rank::metrics;
use genome_core::rank::text::Bm25;
use genome_core::rank::train::{self as rt, CapabilityStats, Catalog, Memory, Query, Ranker};
use pgrx::prelude::*;
use pgrx::{JsonB, PgOid, PgSqlErrorCode};
use sha2::{Digest, Sha256};

use crate::collections::ident;
use crate::errors::{interrupt_pending, raise, required, spi, OrRaise};
use crate::models::{self, ModelRow};
use crate::progress::Progress;
use crate::vector::Vector;

/// Longest intent accepted (bytes); the model reads its first 256 tokens anyway.
const MAX_INTENT_BYTES: usize = 16 * 1024;
/// Intent embeddings kept per backend.
const INTENT_CACHE: usize = 2048;

/// A catalog's registration.
#[derive(Debug, Clone)]
struct CatalogRow {
    name: String,
    relid: pg_sys::Oid,
    id_col: String,
    text_col: String,
    links: pg_sys::Oid,
    link_cap_col: String,
    link_tool_col: String,
    tools: Option<pg_sys::Oid>,
    tool_id_col: Option<String>,
    tool_text_col: Option<String>,
    model: String,
    dimension: usize,
    text_weight: f32,
    feature_version: i64,
    registered_by: Option<pg_sys::Oid>,
}

fn not_registered(name: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
        format!("catalog \"{name}\" is not registered"),
        Some("see genome.catalogs; register with genome.register_catalog(...)".into()),
    )
}

const CATALOG_ROWS: &str =
    "SELECT c.name, c.relid::oid, c.id_column::text, c.text_column::text, c.links::oid,
        c.link_capability_column::text, c.link_tool_column::text, c.tools::oid,
        c.tool_id_column::text, c.tool_text_column::text, c.model, c.dimension,
        c.text_weight, c.feature_version, c.registered_by::oid
   FROM genome.catalogs c WHERE $1::text IS NULL OR c.name = $1 ORDER BY c.name";

/// The registration of `name` (NULL: the only catalog there is), after the checks every use
/// makes: registered, tables present, the registrant still owns them.
fn catalog_row(name: Option<&str>) -> CatalogRow {
    let rows = crate::owner::with_safe_search_path(|| {
        Spi::connect(|client| {
            crate::plans::with_plan(
                client,
                CATALOG_ROWS,
                &[PgOid::from(pg_sys::TEXTOID)],
                |stmt| {
                    let t = client.select(stmt, None, &[name.into()])?;
                    let mut out = Vec::new();
                    for r in t {
                        out.push(CatalogRow {
                            name: r.get::<String>(1)?.unwrap_or_default(),
                            relid: r.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
                            id_col: r.get::<String>(3)?.unwrap_or_default(),
                            text_col: r.get::<String>(4)?.unwrap_or_default(),
                            links: r.get::<pg_sys::Oid>(5)?.unwrap_or(pg_sys::InvalidOid),
                            link_cap_col: r.get::<String>(6)?.unwrap_or_default(),
                            link_tool_col: r.get::<String>(7)?.unwrap_or_default(),
                            tools: r.get::<pg_sys::Oid>(8)?,
                            tool_id_col: r.get::<String>(9)?,
                            tool_text_col: r.get::<String>(10)?,
                            model: r.get::<String>(11)?.unwrap_or_default(),
                            dimension: r.get::<i32>(12)?.unwrap_or_default() as usize,
                            text_weight: r.get::<f32>(13)?.unwrap_or(0.3),
                            feature_version: r.get::<i64>(14)?.unwrap_or_default(),
                            registered_by: r.get::<pg_sys::Oid>(15)?,
                        });
                    }
                    Ok::<_, pgrx::spi::SpiError>(out)
                },
            )
        })
    })
    .or_raise("reading genome.catalogs");
    let row = match (name, rows.len()) {
        (_, 1) => rows.into_iter().next().expect("one row"),
        (Some(n), _) => not_registered(n),
        (None, 0) => raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            "no catalog is registered".into(),
            Some("register one with genome.register_catalog(...)".into()),
        ),
        (None, _) => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "several catalogs are registered: name one".into(),
            None,
        ),
    };
    for rel in [Some(row.relid), Some(row.links), row.tools]
        .into_iter()
        .flatten()
    {
        if crate::owner::relowner_opt(rel).is_none() {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("a table of catalog \"{}\" no longer exists", row.name),
                Some("unregister and register the catalog again".into()),
            );
        }
        crate::owner::check_registrant("catalog", &row.name, rel, row.registered_by);
    }
    row
}

fn ask(sql: &str, catalog: &str) -> bool {
    Spi::connect(|client| {
        crate::plans::with_plan(client, sql, &[PgOid::from(pg_sys::TEXTOID)], |stmt| {
            client
                .select(stmt, None, &[catalog.into()])?
                .first()
                .get_one::<bool>()
        })
    })
    .or_raise("checking catalog privileges")
    .unwrap_or(false)
}

/// ERROR unless the caller may read the catalog's tables (ranking, training, evaluation read
/// nothing a caller could not read itself).
fn require_readable(c: &CatalogRow) {
    if !ask("SELECT genome._catalog_readable($1)", &c.name) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied for catalog \"{}\": its tables are not readable by this role",
                c.name
            ),
            None,
        );
    }
}

/// ERROR unless the caller owns the catalog's tables (refresh and training write its features
/// and models).
fn require_owned(c: &CatalogRow, doing: &str) {
    if !ask("SELECT genome._catalog_owned($1)", &c.name) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "only the owner of catalog \"{}\"'s tables may {doing}",
                c.name
            ),
            None,
        );
    }
}

fn lock_catalog(name: &str) {
    spi(
        "locking the catalog",
        Spi::run_with_args(
            "SELECT pg_catalog.pg_advisory_xact_lock(genome._lock_key('ranking'), pg_catalog.hashtext($1))",
            &[name.into()],
        ),
    );
}

/// A long computation stopped because an interrupt is pending: PostgreSQL's own ERROR for it
/// (cancel, statement_timeout, termination), else a cancellation ERROR naming the job.
fn cancelled(job: &str) -> ! {
    pg_sys::check_for_interrupts!();
    raise(
        PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
        format!("{job} cancelled"),
        None,
    )
}

fn vector_literal(v: &[f32]) -> String {
    let mut s = String::with_capacity(v.len() * 10 + 2);
    s.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&x.to_string());
    }
    s.push(']');
    s
}

fn array_literal(v: &[f32]) -> String {
    let mut s = vector_literal(v);
    s.replace_range(0..1, "{");
    s.pop();
    s.push('}');
    s
}

// ---------------------------------------------------------------------------------------------
// refresh_catalog

struct AppCatalog {
    ids: Vec<String>,
    texts: Vec<String>,
    links: Vec<(String, String, i64)>,
    tool_text: HashMap<String, String>,
}

fn read_app_tables(c: &CatalogRow) -> AppCatalog {
    let (ids, texts) = crate::owner::as_table_owner(c.relid, || {
        Spi::connect(|client| {
            let sql = format!(
                "SELECT ({})::text, coalesce(({})::text, '') FROM {} WHERE {} IS NOT NULL",
                ident(&c.id_col),
                ident(&c.text_col),
                crate::owner::table_name(c.relid),
                ident(&c.id_col)
            );
            let mut ids = Vec::new();
            let mut texts = Vec::new();
            for r in client.select(&sql, None, &[])? {
                ids.push(r.get::<String>(1)?.unwrap_or_default());
                texts.push(r.get::<String>(2)?.unwrap_or_default());
            }
            Ok::<_, pgrx::spi::SpiError>((ids, texts))
        })
    })
    .or_raise("reading the catalog's capabilities");
    let links = crate::owner::as_table_owner(c.links, || {
        Spi::connect(|client| {
            let sql = format!(
                "SELECT ({cap})::text, ({tool})::text, count(*) FROM {rel}
                  WHERE {cap} IS NOT NULL AND {tool} IS NOT NULL GROUP BY 1, 2",
                cap = ident(&c.link_cap_col),
                tool = ident(&c.link_tool_col),
                rel = crate::owner::table_name(c.links)
            );
            let mut out = Vec::new();
            for r in client.select(&sql, None, &[])? {
                out.push((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<i64>(3)?.unwrap_or(1),
                ));
            }
            Ok::<_, pgrx::spi::SpiError>(out)
        })
    })
    .or_raise("reading the catalog's links");
    let mut tool_text = HashMap::new();
    if let (Some(rel), Some(idc), Some(tc)) = (c.tools, &c.tool_id_col, &c.tool_text_col) {
        tool_text = crate::owner::as_table_owner(rel, || {
            Spi::connect(|client| {
                let sql = format!(
                    "SELECT ({})::text, ({})::text FROM {} WHERE {} IS NOT NULL",
                    ident(idc),
                    ident(tc),
                    crate::owner::table_name(rel),
                    ident(idc)
                );
                let mut out = HashMap::new();
                for r in client.select(&sql, None, &[])? {
                    if let (Some(k), Some(v)) = (r.get::<String>(1)?, r.get::<String>(2)?) {
                        out.insert(k, v);
                    }
                }
                Ok::<_, pgrx::spi::SpiError>(out)
            })
        })
        .or_raise("reading the catalog's tools");
    }
    AppCatalog {
        ids,
        texts,
        links,
        tool_text,
    }
}

/// The text a capability is embedded as: its description and its tools (most used first, at
/// most 12, with their descriptions when a tools table is registered).
fn content_of(text: &str, tools: &[(String, i64)], tool_text: &HashMap<String, String>) -> String {
    let mut t: Vec<&(String, i64)> = tools.iter().collect();
    t.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let names: Vec<String> = t
        .iter()
        .take(12)
        .map(|(n, _)| match tool_text.get(n) {
            Some(d) if !d.is_empty() => format!("{n} ({d})"),
            _ => n.clone(),
        })
        .collect();
    if names.is_empty() {
        text.to_string()
    } else {
        format!(
            "{}. Tools: {}",
            text.trim_end_matches('.'),
            names.join(", ")
        )
    }
}

/// Compute the catalog's features: embed new and changed capabilities (by a hash of their
/// content), Node2Vec over the capability-tool graph, PageRank, clustering and usage statistics.
/// Returns the number of capabilities embedded.
#[pg_extern(volatile, parallel_unsafe)]
pub fn refresh_catalog(catalog: &str) -> i64 {
    let c = catalog_row(Some(catalog));
    require_owned(&c, "refresh its features");
    lock_catalog(&c.name);
    let mut prog = Progress::start("refresh_catalog", &c.name);
    prog.stage("reading the app's tables", 0);
    let app = read_app_tables(&c);
    if app.ids.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("catalog \"{}\" has no capabilities", c.name),
            Some("its capability table is empty".into()),
        );
    }
    let index: HashMap<&str, usize> = app
        .ids
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    // tools and edges (links to unknown capabilities are ignored)
    let mut tool_ids: HashMap<&str, u32> = HashMap::new();
    let mut tool_names: Vec<String> = Vec::new();
    let mut cap_tools: Vec<Vec<(String, i64)>> = vec![Vec::new(); app.ids.len()];
    let mut edges = Vec::new();
    for (cap, tool, n) in &app.links {
        let Some(ci) = index.get(cap.as_str()) else {
            continue;
        };
        let ti = *tool_ids.entry(tool.as_str()).or_insert_with(|| {
            tool_names.push(tool.clone());
            (tool_names.len() - 1) as u32
        });
        cap_tools[*ci].push((tool.clone(), *n));
        edges.push((*ci as u32, ti, *n as f32));
    }
    if edges.is_empty() {
        notice!(
            "pg_genome: catalog \"{}\" has no capability-tool links: graph features are zero and the hybrid embedding is the text embedding",
            c.name
        );
    }
    let contents: Vec<String> = (0..app.ids.len())
        .map(|i| content_of(&app.texts[i], &cap_tools[i], &app.tool_text))
        .collect();
    let hashes: Vec<String> = contents
        .iter()
        .map(|s| hex::encode(Sha256::digest(format!("{}\n{s}", c.model).as_bytes())))
        .collect();
    let existing: HashMap<String, String> = Spi::connect(|client| {
        let mut m = HashMap::new();
        for r in client.select(
            "SELECT capability, content_hash FROM genome.capability_features WHERE catalog = $1",
            None,
            &[c.name.as_str().into()],
        )? {
            m.insert(
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
            );
        }
        Ok::<_, pgrx::spi::SpiError>(m)
    })
    .or_raise("reading the feature store");
    let changed: Vec<usize> = (0..app.ids.len())
        .filter(|i| existing.get(&app.ids[*i]) != Some(&hashes[*i]))
        .collect();
    prog.stage(
        "embedding new and changed capabilities",
        changed.len() as i64,
    );
    let row: ModelRow = models::resolve(Some(&c.model));
    let texts: Vec<&str> = changed.iter().map(|i| contents[*i].as_str()).collect();
    let mut embedded: Vec<Vec<f32>> = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(256) {
        embedded.extend(models::embed_by_length(&row, chunk));
        prog.advance(embedded.len() as i64);
    }
    prog.stage(
        "graph features (Node2Vec, PageRank, clustering)",
        edges.len() as i64,
    );
    let g = Bipartite {
        n_left: app.ids.len(),
        n_right: tool_names.len(),
        edges,
    };
    let emb = graph::node2vec(&g, &Node2VecConfig::default(), &interrupt_pending)
        .unwrap_or_else(|_| cancelled("refresh_catalog"));
    let (pr_caps, pr_tools) = graph::pagerank(&g, 0.85, 1e-10, 200);
    let clustering = graph::capability_clustering(&g);
    let n_nodes = (g.n_left + g.n_right) as f64;
    let dim = emb.dim;
    prog.stage("writing features", app.ids.len() as i64);
    let version = c.feature_version + 1;
    let vs = ident(&crate::vector::vector_schema());
    Spi::connect_mut(|client| {
        client.update(
            "DELETE FROM genome.capability_features f WHERE f.catalog = $1 AND f.capability <> ALL($2)",
            None,
            &[c.name.as_str().into(), app.ids.clone().into()],
        )?;
        // new and changed rows: content and embedding
        let ids: Vec<String> = changed.iter().map(|i| app.ids[*i].clone()).collect();
        let cont: Vec<String> = changed.iter().map(|i| contents[*i].clone()).collect();
        let hs: Vec<String> = changed.iter().map(|i| hashes[*i].clone()).collect();
        let vecs: Vec<String> = embedded.iter().map(|v| vector_literal(v)).collect();
        client.update(
            &format!(
                "INSERT INTO genome.capability_features AS f (catalog, capability, content, content_hash, text_embedding,
                        graph_embedding, feature_version)
                 SELECT $1, u.id, u.content, u.hash, u.vec::{vs}.vector, '{{}}', $6
                   FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) u(id, content, hash, vec)
                 ON CONFLICT (catalog, capability) DO UPDATE
                    SET content = excluded.content, content_hash = excluded.content_hash,
                        text_embedding = excluded.text_embedding"
            ),
            None,
            &[
                c.name.as_str().into(),
                ids.into(),
                cont.into(),
                hs.into(),
                vecs.into(),
                version.into(),
            ],
        )?;
        // every row: graph and usage statistics
        let graph_arrays: Vec<String> = (0..app.ids.len())
            .map(|i| array_literal(&emb.left[i * dim..(i + 1) * dim]))
            .collect();
        let tools: Vec<String> = cap_tools
            .iter()
            .map(|t| {
                let names: Vec<String> = t
                    .iter()
                    .map(|(n, _)| format!("\"{}\"", n.replace('\\', "\\\\").replace('"', "\\\"")))
                    .collect();
                format!("{{{}}}", names.join(","))
            })
            .collect();
        let counts: Vec<i32> = cap_tools.iter().map(|t| t.len() as i32).collect();
        let pr: Vec<f32> = pr_caps.iter().map(|x| (*x * n_nodes) as f32).collect();
        let cl: Vec<f32> = clustering.iter().map(|x| *x as f32).collect();
        client.update(
            "UPDATE genome.capability_features f
                SET graph_embedding = u.g::real[], tools = u.tools::text[], tool_count = u.n, pagerank = u.pr,
                    clustering = u.cl, feature_version = $8, computed_at = now(),
                    usage_1d = coalesce(s.d1, 0), usage_7d = coalesce(s.d7, 0), usage_30d = coalesce(s.d30, 0),
                    success_rate = s.success, mean_execution_ms = s.ms
               FROM unnest($2::text[], $3::text[], $4::text[], $5::int[], $6::real[], $7::real[]) u(id, g, tools, n, pr, cl)
               LEFT JOIN (SELECT e.capability,
                                 count(*) FILTER (WHERE e.created_at > now() - interval '1 day') AS d1,
                                 count(*) FILTER (WHERE e.created_at > now() - interval '7 days') AS d7,
                                 count(*) AS d30,
                                 avg(e.reward)::real AS success,
                                 avg(e.execution_ms)::real AS ms
                            FROM genome.experiences e
                           WHERE e.catalog = $1 AND e.source = 'outcome' AND e.created_at > now() - interval '30 days'
                           GROUP BY 1) s ON s.capability = u.id
              WHERE f.catalog = $1 AND f.capability = u.id",
            None,
            &[
                c.name.as_str().into(),
                app.ids.clone().into(),
                graph_arrays.into(),
                tools.into(),
                counts.into(),
                pr.into(),
                cl.into(),
                version.into(),
            ],
        )?;
        client.update(
            "DELETE FROM genome.tool_features WHERE catalog = $1",
            None,
            &[c.name.as_str().into()],
        )?;
        let tool_graph: Vec<String> = (0..tool_names.len())
            .map(|i| array_literal(&emb.right[i * dim..(i + 1) * dim]))
            .collect();
        let mut n_caps = vec![0i32; tool_names.len()];
        for (_, t, _) in &g.edges {
            n_caps[*t as usize] += 1;
        }
        let tpr: Vec<f32> = pr_tools.iter().map(|x| (*x * n_nodes) as f32).collect();
        client.update(
            "INSERT INTO genome.tool_features (catalog, tool, graph_embedding, n_capabilities, pagerank, feature_version)
             SELECT $1, u.t, u.g::real[], u.n, u.pr, $6
               FROM unnest($2::text[], $3::text[], $4::int[], $5::real[]) u(t, g, n, pr)",
            None,
            &[
                c.name.as_str().into(),
                tool_names.clone().into(),
                tool_graph.into(),
                n_caps.into(),
                tpr.into(),
                version.into(),
            ],
        )?;
        client.update(
            "UPDATE genome.catalogs SET feature_version = $2, refreshed_at = now() WHERE name = $1",
            None,
            &[c.name.as_str().into(), version.into()],
        )?;
        Ok::<_, pgrx::spi::SpiError>(())
    })
    .or_raise("writing the catalog's features");
    prog.stage("done", 0);
    changed.len() as i64
}

// ---------------------------------------------------------------------------------------------
// The per-process caches: catalog features, rankers, intent embeddings

/// A catalog's features in the process.
struct LoadedCatalog {
    row: CatalogRow,
    cat: Catalog,
    index: HashMap<String, u32>,
    tool_index: HashMap<String, u32>,
}

/// A ranker version with its memory, in the process.
struct LoadedRanker {
    version: String,
    ranker: Ranker,
    memory: Memory,
}

thread_local! {
    static CATALOGS: RefCell<HashMap<String, (i64, Arc<LoadedCatalog>)>> = RefCell::new(HashMap::new());
    static RANKERS: RefCell<HashMap<(i64, i64), (String, Arc<LoadedRanker>)>> = RefCell::new(HashMap::new());
    static INTENTS: RefCell<lru::LruCache<(String, String), Arc<Vec<f32>>>> =
        RefCell::new(lru::LruCache::new(std::num::NonZeroUsize::new(INTENT_CACHE).expect("nonzero")));
}

fn loaded_catalog(row: CatalogRow) -> Arc<LoadedCatalog> {
    if let Some(c) = CATALOGS.with(|m| {
        m.borrow()
            .get(&row.name)
            .filter(|(v, _)| *v == row.feature_version)
            .map(|(_, c)| c.clone())
    }) {
        return c;
    }
    if row.feature_version == 0 {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("catalog \"{}\" has no features yet", row.name),
            Some(format!("run SELECT genome.refresh_catalog('{}')", row.name)),
        );
    }
    let loaded = Spi::connect(|client| {
        let mut tool_index = HashMap::new();
        let mut tool_graph = Vec::new();
        let mut graph_dim = 0;
        // rows written by other means than refresh_catalog are checked, not trusted
        let mut consistent = true;
        for r in client.select(
            "SELECT tool, graph_embedding FROM genome.tool_features WHERE catalog = $1 ORDER BY tool",
            None,
            &[row.name.as_str().into()],
        )? {
            let g: Vec<f32> = r.get::<Vec<Option<f32>>>(2)?.unwrap_or_default().into_iter().map(|x| x.unwrap_or(0.0)).collect();
            consistent &= graph_dim == 0 || g.len() == graph_dim;
            graph_dim = g.len();
            tool_index.insert(r.get::<String>(1)?.unwrap_or_default(), tool_index.len() as u32);
            tool_graph.extend(g);
        }
        let mut names = Vec::new();
        let mut contents = Vec::new();
        let mut text = Vec::new();
        let mut graph = Vec::new();
        let mut cap_tools = Vec::new();
        let mut stats = Vec::new();
        let mut text_dim = 0;
        for r in client.select(
            "SELECT capability, content, text_embedding, graph_embedding, tools, tool_count, pagerank, clustering,
                    usage_30d, success_rate
               FROM genome.capability_features WHERE catalog = $1 ORDER BY capability",
            None,
            &[row.name.as_str().into()],
        )? {
            names.push(r.get::<String>(1)?.unwrap_or_default());
            contents.push(r.get::<String>(2)?.unwrap_or_default());
            let mut t = r.get::<Vector>(3)?.map(|v| v.0).unwrap_or_default();
            genome_core::base::l2_normalize(&mut t);
            consistent &= t.len() == row.dimension;
            text_dim = t.len();
            text.extend(t);
            let mut g: Vec<f32> = r.get::<Vec<Option<f32>>>(4)?.unwrap_or_default().into_iter().map(|x| x.unwrap_or(0.0)).collect();
            if graph_dim == 0 {
                graph_dim = g.len();
            }
            consistent &= g.len() == graph_dim;
            g.resize(graph_dim, 0.0);
            graph.extend(g);
            let tools: Vec<u32> = r
                .get::<Vec<Option<String>>>(5)?
                .unwrap_or_default()
                .into_iter()
                .flatten()
                .filter_map(|t| tool_index.get(&t).copied())
                .collect();
            cap_tools.push(tools);
            let usage = r.get::<i32>(9)?.unwrap_or(0) as f32;
            let rate = r.get::<f32>(10)?;
            stats.push(CapabilityStats {
                tool_count: r.get::<i32>(6)?.unwrap_or(0) as f32,
                pagerank: r.get::<f32>(7)?.unwrap_or(0.0),
                clustering: r.get::<f32>(8)?.unwrap_or(0.0),
                usage_30d: usage,
                // smoothed towards 1/2 by one success and one failure
                success_rate: (rate.unwrap_or(0.5) * usage + 1.0) / (usage + 2.0),
            });
        }
        if !consistent {
            raise(
                PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                format!(
                    "the features of catalog \"{}\" are inconsistent (embedding dimensions differ between rows or from the model's {})",
                    row.name, row.dimension
                ),
                Some(format!("run SELECT genome.refresh_catalog('{}')", row.name)),
            );
        }
        Ok::<_, pgrx::spi::SpiError>((names, contents, text, text_dim, graph, graph_dim, tool_graph, cap_tools, stats, tool_index))
    })
    .or_raise("loading the catalog's features");
    let (
        names,
        contents,
        text,
        text_dim,
        graph,
        graph_dim,
        tool_graph,
        cap_tools,
        stats,
        tool_index,
    ) = loaded;
    if names.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("catalog \"{}\" has no capabilities", row.name),
            None,
        );
    }
    let index = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), i as u32))
        .collect();
    let cat = Catalog {
        names,
        text_dim,
        text,
        graph_dim,
        graph,
        tool_graph,
        cap_tools,
        stats,
        bm25: Bm25::new(&contents),
    };
    let lc = Arc::new(LoadedCatalog {
        row: row.clone(),
        cat,
        index,
        tool_index,
    });
    CATALOGS.with(|m| {
        m.borrow_mut()
            .insert(row.name.clone(), (row.feature_version, lc.clone()))
    });
    lc
}

/// The production ranker of the catalog and the canary (version, share), as rows.
struct ServingRankers {
    production: Option<(i64, String)>,
    canary: Option<(i64, String, f64)>,
}

fn serving_rankers(catalog: &str) -> ServingRankers {
    const SQL: &str = "SELECT id, xmin::text, stage, canary_share FROM genome.rankers
                        WHERE catalog = $1 AND (stage = 'production' OR canary_share IS NOT NULL)";
    let rows = Spi::connect(|client| {
        crate::plans::with_plan(client, SQL, &[PgOid::from(pg_sys::TEXTOID)], |stmt| {
            let mut out = Vec::new();
            for r in client.select(stmt, None, &[catalog.into()])? {
                out.push((
                    r.get::<i64>(1)?.unwrap_or_default(),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<String>(3)?.unwrap_or_default(),
                    r.get::<f32>(4)?,
                ));
            }
            Ok::<_, pgrx::spi::SpiError>(out)
        })
    })
    .or_raise("reading the catalog's rankers");
    let mut s = ServingRankers {
        production: None,
        canary: None,
    };
    for (id, xmin, stage, share) in rows {
        if stage == "production" {
            s.production = Some((id, xmin));
        } else if let Some(share) = share {
            s.canary = Some((id, xmin, share as f64));
        }
    }
    s
}

fn loaded_ranker(lc: &LoadedCatalog, id: i64, xmin: &str) -> Arc<LoadedRanker> {
    let key = (id, lc.row.feature_version);
    if let Some(r) = RANKERS.with(|m| {
        m.borrow()
            .get(&key)
            .filter(|(x, _)| x == xmin)
            .map(|(_, r)| r.clone())
    }) {
        return r;
    }
    let (version, bytes) = Spi::connect(|client| {
        let t = client.select(
            "SELECT version, weights FROM genome.rankers WHERE id = $1",
            None,
            &[id.into()],
        )?;
        let r = t.first();
        Ok::<_, pgrx::spi::SpiError>((
            r.get::<String>(1)?.unwrap_or_default(),
            r.get::<Vec<u8>>(2)?.unwrap_or_default(),
        ))
    })
    .or_raise("reading a ranker");
    let ranker = Ranker::from_bytes(&bytes).unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!(
                "ranker {version} of catalog \"{}\" cannot be read: {e}",
                lc.row.name
            ),
            Some("train a new version, or roll back with genome.rollback_ranker(catalog)".into()),
        )
    });
    // weights written by other means than train_ranker are checked against the catalog
    let c = &ranker.scorer.cfg;
    let fits = c.query_dim == lc.cat.text_dim
        && c.tool_dim == lc.cat.graph_dim
        && c.cap_dim == lc.cat.text_dim + lc.cat.graph_dim
        && c.n_features == ranker.features.len()
        && c.hidden.iter().all(|h| *h <= 4096)
        && c.heads * c.head_dim <= 1024
        && ranker
            .adapter
            .as_ref()
            .is_none_or(|a| a.dim == lc.cat.text_dim)
        && {
            let k = ranker.config.candidates;
            k.dense + k.lexical + k.memory + k.adapter + k.memory_lexical <= 2000
        };
    if !fits {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!(
                "ranker {version} of catalog \"{}\" does not fit its features",
                lc.row.name
            ),
            Some("train a new version, or roll back with genome.rollback_ranker(catalog)".into()),
        );
    }
    let memory = load_memory(lc, id).with_model(&lc.cat, ranker.adapter.clone());
    let lr = Arc::new(LoadedRanker {
        version,
        ranker,
        memory,
    });
    RANKERS.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() > 16 {
            m.clear();
        }
        m.insert(key, (xmin.to_string(), lr.clone()))
    });
    lr
}

/// What a ranker version remembers (genome.ranker_memory), for the capabilities still in the
/// catalog.
fn load_memory(lc: &LoadedCatalog, ranker: i64) -> Memory {
    let mut mem = Memory::new(lc.cat.text_dim);
    // the intents' texts are remembered since 0.7.1 (a schema not yet updated has none)
    let has_text = crate::collections::has_column("genome.ranker_memory", "intent");
    Spi::connect(|client| {
        let query = if has_text {
            "SELECT embedding, capability, intent FROM genome.ranker_memory WHERE ranker = $1 ORDER BY ctid"
        } else {
            "SELECT embedding, capability, NULL::text FROM genome.ranker_memory WHERE ranker = $1 ORDER BY ctid"
        };
        for r in client.select(query, None, &[ranker.into()])? {
            let cap = r.get::<String>(2)?.unwrap_or_default();
            let Some(ci) = lc.index.get(&cap) else {
                continue;
            };
            let mut v = r.get::<Vector>(1)?.map(|v| v.0).unwrap_or_default();
            if v.len() != mem.dim {
                continue;
            }
            genome_core::base::l2_normalize(&mut v);
            let text = r.get::<String>(3)?.unwrap_or_default();
            mem.push(&v, *ci, &text);
        }
        Ok::<_, pgrx::spi::SpiError>(())
    })
    .or_raise("reading the ranker's memory");
    mem
}

fn check_intent(intent: &str) {
    if intent.trim().is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "intent must not be empty".into(),
            None,
        );
    }
    if intent.len() > MAX_INTENT_BYTES {
        raise(
            PgSqlErrorCode::ERRCODE_STRING_DATA_RIGHT_TRUNCATION,
            format!(
                "intent is {} bytes, more than the {MAX_INTENT_BYTES} accepted",
                intent.len()
            ),
            Some("an intent is a sentence or two; the model reads its first 256 tokens".into()),
        );
    }
}

/// Unit embeddings of intents with the catalog's model, through the backend's LRU.
fn intent_embeddings(model: &str, intents: &[&str]) -> Vec<Arc<Vec<f32>>> {
    let mut out: Vec<Option<Arc<Vec<f32>>>> = INTENTS.with(|c| {
        let mut c = c.borrow_mut();
        intents
            .iter()
            .map(|i| c.get(&(model.to_string(), i.to_string())).cloned())
            .collect()
    });
    let missing: Vec<usize> = (0..intents.len()).filter(|i| out[*i].is_none()).collect();
    if !missing.is_empty() {
        let row = models::resolve(Some(model));
        let texts: Vec<&str> = missing.iter().map(|i| intents[*i]).collect();
        let vecs = models::embed_by_length(&row, &texts);
        INTENTS.with(|c| {
            let mut c = c.borrow_mut();
            for (i, mut v) in missing.into_iter().zip(vecs) {
                genome_core::base::l2_normalize(&mut v);
                let v = Arc::new(v);
                c.put((model.to_string(), intents[i].to_string()), v.clone());
                out[i] = Some(v);
            }
        });
    }
    out.into_iter().map(|v| v.expect("embedded")).collect()
}

/// Dense candidates from the HNSW index of the catalog's feature table.
fn dense_candidates(lc: &LoadedCatalog, q: &[f32], k: usize) -> Vec<u32> {
    let vs = ident(&crate::vector::vector_schema());
    let d = lc.row.dimension;
    let sql = format!(
        "SELECT capability FROM genome.capability_features WHERE catalog = {lit}
          ORDER BY text_embedding::{vs}.vector({d}) OPERATOR({vs}.<=>) $1::{vs}.vector({d}) LIMIT {k}",
        lit = quote_literal(&lc.row.name)
    );
    Spi::connect(|client| {
        crate::plans::with_plan(
            client,
            &sql,
            &[PgOid::from(crate::vector::vector_type_oid())],
            |stmt| {
                let t = spi(
                    "finding dense candidates",
                    client.select(stmt, None, &[Vector(q.to_vec()).into()]),
                );
                t.filter_map(|r| {
                    r.get::<String>(1)
                        .ok()
                        .flatten()
                        .and_then(|c| lc.index.get(&c).copied())
                })
                .collect()
            },
        )
    })
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// One intent ranked: candidates best first with scores, and confidences under a ranker.
struct Ranked {
    caps: Vec<u32>,
    scores: Vec<f32>,
    confidence: Option<Vec<f64>>,
}

const RRF_K: f32 = 60.0;

fn rank_one(lc: &LoadedCatalog, ranker: Option<&LoadedRanker>, q: &Query) -> Ranked {
    let counts = ranker.map_or_else(rt::CandidateCounts::default, |r| r.ranker.config.candidates);
    let dense = dense_candidates(lc, q.emb, counts.dense);
    let lexical = lc.cat.lexical(q.text, counts.lexical);
    let (caps, scores, confidence) = match ranker {
        Some(r) => {
            let sig = r.memory.signals(q, None);
            let cands = rt::memory_candidates_then(dense, lexical, &sig, counts);
            let (s, p) = r.ranker.score(&lc.cat, &sig, q, &cands);
            (cands, s, Some(p))
        }
        None => {
            // reciprocal-rank fusion of the two lists
            let mut fused: HashMap<u32, f32> = HashMap::new();
            for list in [&dense, &lexical] {
                for (r, c) in list.iter().enumerate() {
                    *fused.entry(*c).or_default() += 1.0 / (RRF_K + r as f32 + 1.0);
                }
            }
            let (c, s): (Vec<u32>, Vec<f32>) = fused.into_iter().unzip();
            (c, s, None)
        }
    };
    let mut order: Vec<usize> = (0..caps.len()).collect();
    order.sort_by(|a, b| {
        scores[*b]
            .total_cmp(&scores[*a])
            .then(caps[*a].cmp(&caps[*b]))
    });
    Ranked {
        caps: order.iter().map(|i| caps[*i]).collect(),
        scores: order.iter().map(|i| scores[*i]).collect(),
        confidence: confidence.map(|p| order.iter().map(|i| p[*i]).collect()),
    }
}

/// Stable share in [0, 1) of a session or intent, for the canary split.
fn canary_draw(key: &str) -> f64 {
    let h = Sha256::digest(key.as_bytes());
    u64::from_le_bytes(h[..8].try_into().expect("8 bytes")) as f64 / (u64::MAX as f64 + 1.0)
}

/// Rank a catalog's capabilities for an intent. Candidates: the HNSW index over the catalog's
/// text embeddings, BM25 over its texts and the ranker's memory; then the learned scorer. Before
/// any training: reciprocal-rank fusion of the dense and lexical ranks, with `model_version` and
/// `confidence` NULL. Every call is logged in genome.rankings (`ranking_id`) so that
/// genome.record_outcome can attach what happened. Context tools not in the catalog are ignored.
/// `filter` keeps capabilities whose row in the app's table contains it (jsonb `@>`); only rows
/// the caller may read are returned.
#[pg_extern(volatile, parallel_unsafe)]
pub fn rank_capabilities(
    intent: Option<&str>,
    context_tools: default!(Option<Vec<Option<String>>>, "NULL"),
    top_k: default!(i32, 10),
    catalog: default!(Option<&str>, "NULL"),
    min_score: default!(Option<f32>, "NULL"),
    filter: default!(Option<JsonB>, "NULL"),
    session_id: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(rank, i32),
        name!(capability, String),
        name!(score, f32),
        name!(confidence, Option<f32>),
        name!(model_version, Option<String>),
        name!(ranking_id, i64),
    ),
> {
    let started = std::time::Instant::now();
    let intent = intent.unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "intent must not be NULL".into(),
            None,
        )
    });
    check_intent(intent);
    if !(1..=1000).contains(&top_k) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("top_k must be between 1 and 1000, not {top_k}"),
            None,
        );
    }
    let ctx_names: Vec<String> = context_tools
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect();
    if ctx_names.len() > 1000 || session_id.is_some_and(|s| s.len() > 1000) {
        raise(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            "at most 1000 context tools and a session id of at most 1000 bytes".into(),
            None,
        );
    }
    let row = catalog_row(catalog);
    require_readable(&row);
    // on a coordinator whose catalog is replicated to the data nodes, any node ranks and logs
    if crate::cluster::ranked_on_nodes(&row.name) {
        let ctx = (!ctx_names.is_empty()).then_some(ctx_names);
        let rows =
            crate::cluster::rank(intent, ctx, top_k, &row.name, min_score, filter, session_id);
        return TableIterator::new(rows);
    }
    let lc = loaded_catalog(row);
    let serving = serving_rankers(&lc.row.name);
    let chosen = match (&serving.canary, &serving.production) {
        (Some((id, xmin, share)), _) if canary_draw(session_id.unwrap_or(intent)) < *share => {
            Some((*id, xmin.clone()))
        }
        (_, Some((id, xmin))) => Some((*id, xmin.clone())),
        _ => None,
    };
    let ranker = chosen.map(|(id, xmin)| loaded_ranker(&lc, id, &xmin));
    let emb = intent_embeddings(&lc.row.model, &[intent]).remove(0);
    let ctx: Vec<u32> = ctx_names
        .iter()
        .filter_map(|t| lc.tool_index.get(t).copied())
        .collect();
    let q = Query {
        emb: &emb,
        text: intent,
        context: &ctx,
    };
    let ranked = rank_one(&lc, ranker.as_deref(), &q);
    // what the caller may see of the app's table (its privileges and row policies), and the filter
    let names: Vec<String> = ranked
        .caps
        .iter()
        .map(|c| lc.cat.names[*c as usize].clone())
        .collect();
    let visible: HashSet<String> = visible_capabilities(&lc.row, &names, filter);
    let mut rows = Vec::new();
    for (j, c) in ranked.caps.iter().enumerate() {
        let name = &lc.cat.names[*c as usize];
        let score = ranked.scores[j];
        if !visible.contains(name) || min_score.is_some_and(|m| score < m) {
            continue;
        }
        rows.push((
            name.clone(),
            score,
            ranked.confidence.as_ref().map(|p| p[j] as f32),
        ));
        if rows.len() >= top_k as usize {
            break;
        }
    }
    let version = ranker.as_ref().map(|r| r.version.clone());
    let latency = started.elapsed().as_secs_f64() * 1000.0;
    let shown: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let scores: Vec<f32> = rows.iter().map(|r| r.1).collect();
    let vs = ident(&crate::vector::vector_schema());
    let log_only = log_only_so_far();
    let ranking_id: i64 = required(
        "logging the ranking",
        Spi::get_one_with_args::<i64>(
            &format!(
                "INSERT INTO genome.rankings (catalog, intent, intent_embedding, context_tools, candidates, scores,
                                              model_version, latency_ms, session_id)
                 VALUES ($1, $2, $3::{vs}.vector, $4, $5, $6, $7, $8, $9) RETURNING id"
            ),
            &[
                lc.row.name.as_str().into(),
                intent.into(),
                Vector(emb.to_vec()).into(),
                (!ctx_names.is_empty()).then(|| ctx_names.clone()).into(),
                shown.into(),
                scores.into(),
                version.clone().into(),
                (latency as f32).into(),
                session_id.into(),
            ],
        ),
    );
    if log_only {
        commit_log_asynchronously();
    }
    crate::metrics::record_ranking(started.elapsed(), version.is_none());
    TableIterator::new(
        rows.into_iter()
            .enumerate()
            .map(move |(i, (c, s, p))| (i as i32 + 1, c, s, p, version.clone(), ranking_id)),
    )
}

thread_local! {
    /// (top transaction id, end of this backend's WAL) right after a ranking log row, when the
    /// transaction had written nothing but ranking log rows before it.
    static LOG_ONLY: std::cell::Cell<Option<(pg_sys::TransactionId, u64)>> =
        const { std::cell::Cell::new(None) };
}

fn xact_position() -> (pg_sys::TransactionId, u64) {
    // SAFETY: plain reads of this backend's transaction state
    unsafe { (pg_sys::GetTopTransactionIdIfAny(), pg_sys::XactLastRecEnd) }
}

/// Whether the transaction has written nothing so far but ranking log rows: no WAL yet (a
/// transaction id alone is no write: pgrx assigns one for any statement it runs read-write), or
/// none since the last log row.
fn log_only_so_far() -> bool {
    let now = xact_position();
    now.1 == 0 || LOG_ONLY.with(|c| c.get()) == Some(now)
}

/// At commit: the setting still allows it, synchronous_commit is at its configured value (the
/// session or transaction did not set another one), and no synchronous standby is configured
/// (such a cluster asked for commits that survive a failover).
fn may_relax_commit() -> bool {
    let setting = |name: &std::ffi::CStr, reset: bool| -> Option<String> {
        // SAFETY: GUC lookups by name; the string is copied at once
        unsafe {
            let p = if reset {
                pg_sys::GetConfigOptionResetString(name.as_ptr())
            } else {
                pg_sys::GetConfigOption(name.as_ptr(), true, false)
            };
            (!p.is_null()).then(|| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
        }
    };
    !crate::gucs::SYNCHRONOUS_RANKING_LOG.get()
        && setting(c"synchronous_commit", false) == setting(c"synchronous_commit", true)
        && setting(c"synchronous_standby_names", false).is_none_or(|s| s.trim().is_empty())
}

/// A ranking is a read; its log row must not make the caller wait for a WAL flush (fsync, the
/// tail of the latency: measured p99 49 ms with it, 23 ms without, same run). Unless
/// genome.synchronous_ranking_log is on, a transaction that writes nothing but ranking log rows
/// commits with synchronous_commit = off for that commit only (decided at pre-commit: any other
/// write after the log row moves this backend's WAL end and keeps the commit synchronous). As
/// PostgreSQL documents for asynchronous commit, a crash may then lose the last such
/// transactions (their log rows, and the identity values they took, which may be handed out
/// again), never leave them half-written. Not relaxed when the session or transaction set
/// another synchronous_commit or synchronous standbys are configured ([`may_relax_commit`]).
/// Not seen: writes made inside the log INSERT itself (a trigger someone adds on
/// genome.rankings) and by other extensions' pre-commit callbacks that run after this one.
fn commit_log_asynchronously() {
    let now = xact_position();
    let registered = LOG_ONLY.with(|c| c.get()).is_some_and(|(x, _)| x == now.0);
    LOG_ONLY.with(|c| c.set(Some(now)));
    if registered {
        return;
    }
    pgrx::callbacks::register_xact_callback(
        pgrx::callbacks::PgXactCallbackEvent::PreCommit,
        || {
            if LOG_ONLY.with(|c| c.take()) == Some(xact_position()) && may_relax_commit() {
                // SAFETY: a transaction-local setting of a user-settable parameter, before the
                // commit record is written (pre-commit); it cannot fail
                unsafe {
                    pg_sys::set_config_option(
                        c"synchronous_commit".as_ptr(),
                        c"off".as_ptr(),
                        pg_sys::GucContext::PGC_USERSET,
                        pg_sys::GucSource::PGC_S_SESSION,
                        pg_sys::GucAction::GUC_ACTION_LOCAL,
                        true,
                        0,
                        false,
                    );
                }
            }
        },
    );
}

/// The candidates the caller may read in the app's table (its privileges and row-level
/// security), and that contain `filter` when given.
fn visible_capabilities(
    row: &CatalogRow,
    names: &[String],
    filter: Option<JsonB>,
) -> HashSet<String> {
    if names.is_empty() {
        return HashSet::new();
    }
    let rel = crate::owner::table_name(row.relid);
    let sql = format!(
        "SELECT ({id})::text FROM {rel} t WHERE ({id})::text = ANY($1) AND ($2::jsonb IS NULL OR pg_catalog.to_jsonb(t) @> $2)",
        id = ident(&row.id_col)
    );
    // as the table's owner when the caller is a member of it or a superuser (the owner's casts and
    // policies never run with the caller's privileges), else as the caller: its own privileges
    // and row-level security decide what it sees
    crate::owner::as_table_owner(row.relid, || {
        Spi::connect(|client| {
            let types = [
                PgOid::from(pg_sys::TEXTARRAYOID),
                PgOid::from(pg_sys::JSONBOID),
            ];
            crate::plans::with_plan(client, &sql, &types, |stmt| {
                let mut out = HashSet::new();
                for r in client.select(stmt, None, &[names.to_vec().into(), filter.into()])? {
                    if let Some(s) = r.get::<String>(1)? {
                        out.insert(s);
                    }
                }
                Ok::<_, pgrx::spi::SpiError>(out)
            })
        })
    })
    .or_raise("reading the catalog's capabilities")
}

// ---------------------------------------------------------------------------------------------
// Training and evaluation

/// Labelled (intent, capability) rows of a table, read as the caller.
fn labelled_rows(table: pg_sys::Oid, intent_col: &str, cap_col: &str) -> Vec<(String, String)> {
    let rel = crate::owner::table_name(table);
    for col in [intent_col, cap_col] {
        if !crate::collections::has_column(&rel, col) {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("column \"{col}\" does not exist in table {rel}"),
                None,
            );
        }
    }
    let sql = format!(
        "SELECT ({i})::text, ({c})::text FROM {rel} WHERE {i} IS NOT NULL AND {c} IS NOT NULL",
        i = ident(intent_col),
        c = ident(cap_col)
    );
    Spi::connect(|client| {
        let mut out = Vec::new();
        for r in client.select(&sql, None, &[])? {
            out.push((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .or_raise("reading labelled intents")
}

/// Import labelled pairs as successful experiences (once: an (intent, capability) pair already
/// imported is skipped). Returns how many were added.
fn import_examples(lc: &LoadedCatalog, pairs: &[(String, String)], prog: &mut Progress) -> i64 {
    let existing: HashSet<(String, String)> = Spi::connect(|client| {
        let mut s = HashSet::new();
        for r in client.select(
            "SELECT intent, capability FROM genome.experiences WHERE catalog = $1 AND source = 'import'",
            None,
            &[lc.row.name.as_str().into()],
        )? {
            s.insert((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::SpiError>(s)
    })
    .or_raise("reading imported examples");
    let mut seen = HashSet::new();
    let new: Vec<&(String, String)> = pairs
        .iter()
        .filter(|(i, c)| {
            !i.trim().is_empty()
                && i.len() <= MAX_INTENT_BYTES
                && lc.index.contains_key(c)
                && seen.insert((i.clone(), c.clone()))
                && !existing.contains(&(i.clone(), c.clone()))
        })
        .collect();
    if new.is_empty() {
        return 0;
    }
    prog.stage("embedding labelled intents", new.len() as i64);
    let row = models::resolve(Some(&lc.row.model));
    let vs = ident(&crate::vector::vector_schema());
    let mut added = 0i64;
    for chunk in new.chunks(512) {
        let texts: Vec<&str> = chunk.iter().map(|p| p.0.as_str()).collect();
        let vecs: Vec<String> = models::embed_by_length(&row, &texts)
            .iter()
            .map(|v| vector_literal(v))
            .collect();
        let intents: Vec<String> = chunk.iter().map(|p| p.0.clone()).collect();
        let caps: Vec<String> = chunk.iter().map(|p| p.1.clone()).collect();
        spi(
            "importing labelled intents",
            Spi::run_with_args(
                &format!(
                    "INSERT INTO genome.experiences (catalog, intent, intent_embedding, capability, outcome, reward, source)
                     SELECT $1, u.i, u.v::{vs}.vector, u.c, 'success', 1, 'import'
                       FROM unnest($2::text[], $3::text[], $4::text[]) u(i, v, c)"
                ),
                &[
                    lc.row.name.as_str().into(),
                    intents.into(),
                    vecs.into(),
                    caps.into(),
                ],
            ),
        );
        added += chunk.len() as i64;
        prog.advance(added);
    }
    added
}

/// The experience log of a catalog (rows the caller may read), mapped to the catalog.
/// With `before`, each row also says whether it was created before that time (else false).
fn read_experiences(
    lc: &LoadedCatalog,
    before: Option<&str>,
) -> (Vec<(bool, rt::Experience)>, i64) {
    Spi::connect(|client| {
        let mut out = Vec::new();
        let mut upto = 0i64;
        for r in client.select(
            "SELECT id, intent, intent_embedding, context_tools, capability, reward, session_id, step,
                    coalesce(created_at < $2::timestamptz, false)
               FROM genome.experiences WHERE catalog = $1 ORDER BY id",
            None,
            &[lc.row.name.as_str().into(), before.into()],
        )? {
            let id = r.get::<i64>(1)?.unwrap_or_default();
            upto = upto.max(id);
            let cap = r.get::<String>(5)?.unwrap_or_default();
            let Some(ci) = lc.index.get(&cap) else {
                continue;
            };
            let mut emb = r.get::<Vector>(3)?.map(|v| v.0).unwrap_or_default();
            if emb.len() != lc.cat.text_dim || emb.iter().any(|x| !x.is_finite()) {
                continue;
            }
            genome_core::base::l2_normalize(&mut emb);
            let context = r
                .get::<Vec<Option<String>>>(4)?
                .unwrap_or_default()
                .into_iter()
                .flatten()
                .filter_map(|t| lc.tool_index.get(&t).copied())
                .collect();
            out.push((r.get::<bool>(9)?.unwrap_or(false), rt::Experience {
                emb,
                text: r.get::<String>(2)?.unwrap_or_default(),
                context,
                chosen: *ci,
                reward: r.get::<f32>(6)?.unwrap_or(0.0),
                session: r.get::<String>(7)?,
                step: r.get::<i32>(8)?.unwrap_or(1),
            }));
        }
        Ok::<_, pgrx::spi::SpiError>((out, upto))
    })
    .or_raise("reading the experience log")
}

/// Whether an experience is held out for early stopping when no dev table is given: a stable
/// tenth of the intents.
fn held_out(intent: &str) -> bool {
    canary_draw(&format!("dev:{intent}")) < 0.1
}

fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = l.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Train a ranker version: labelled (intent, capability) pairs of `examples` are imported into
/// the experience log as successes (once), then the scorer is trained on the whole log with
/// prioritized replay and TD(lambda) targets, stopping early on the MRR of `dev` (or of a stable
/// tenth of the log when no dev table is given), and calibrated on it. The version is promoted
/// to production when `promote` (the previous production version is archived). Cancelling
/// leaves the production ranker serving.
#[pg_extern(volatile, parallel_unsafe)]
pub fn train_ranker(
    catalog: &str,
    examples: default!(Option<crate::owner::RegClass>, "NULL"),
    intent_column: default!(&str, "'intent'"),
    capability_column: default!(&str, "'capability'"),
    dev: default!(Option<crate::owner::RegClass>, "NULL"),
    epochs: default!(i32, 8),
    text_weight: default!(Option<f32>, "NULL"),
    promote: default!(bool, true),
    seed: default!(i64, 42),
) -> TableIterator<
    'static,
    (
        name!(version, String),
        name!(stage, String),
        name!(examples, i64),
        name!(dev_examples, i64),
        name!(dev_mrr, f32),
        name!(dev_hit_at_10, f32),
        name!(dev_ece, f32),
        name!(seconds, f32),
    ),
> {
    let started = std::time::Instant::now();
    if !(1..=200).contains(&epochs) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("epochs must be between 1 and 200, not {epochs}"),
            None,
        );
    }
    if text_weight.is_some_and(|w| !(0.0..=1.0).contains(&w)) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "text_weight must be between 0 and 1".into(),
            None,
        );
    }
    let row = catalog_row(Some(catalog));
    require_owned(&row, "train its ranker");
    lock_catalog(&row.name);
    // on a coordinator, the outcomes logged by the data nodes first
    if crate::cluster::ranked_on_nodes(&row.name) {
        crate::cluster::gather_outcomes(&row.name);
    }
    let lc = loaded_catalog(row);
    let mut prog = Progress::start("train_ranker", &lc.row.name);
    if let Some(t) = examples {
        prog.stage("reading labelled examples", 0);
        let pairs = labelled_rows(t.0, intent_column, capability_column);
        let unknown = pairs
            .iter()
            .filter(|p| !lc.index.contains_key(&p.1))
            .count();
        if unknown > 0 {
            notice!(
                "pg_genome: {unknown} of {} labelled examples name capabilities not in catalog \"{}\" and are skipped",
                pairs.len(),
                lc.row.name
            );
        }
        import_examples(&lc, &pairs, &mut prog);
    }
    prog.stage("reading the experience log", 0);
    let (all, upto) = read_experiences(&lc, None);
    let all: Vec<rt::Experience> = all.into_iter().map(|x| x.1).collect();
    let (mut train_x, mut dev_x): (Vec<rt::Experience>, Vec<rt::Labelled>) =
        (Vec::new(), Vec::new());
    match dev {
        Some(t) => {
            train_x = all;
            let pairs: Vec<(String, String)> = labelled_rows(t.0, intent_column, capability_column)
                .into_iter()
                .filter(|p| lc.index.contains_key(&p.1) && !p.0.trim().is_empty())
                .collect();
            prog.stage("embedding dev intents", pairs.len() as i64);
            let texts: Vec<&str> = pairs.iter().map(|p| p.0.as_str()).collect();
            let embs = intent_embeddings(&lc.row.model, &texts);
            for ((i, c), e) in pairs.iter().zip(embs) {
                dev_x.push(rt::Labelled {
                    emb: e.to_vec(),
                    text: i.clone(),
                    context: vec![],
                    label: lc.index[c],
                });
            }
        }
        None => {
            for e in all {
                if e.reward >= 0.5 && e.session.is_none() && held_out(&e.text) {
                    dev_x.push(rt::Labelled {
                        emb: e.emb,
                        text: e.text,
                        context: e.context,
                        label: e.chosen,
                    });
                } else {
                    train_x.push(e);
                }
            }
        }
    }
    const MIN_EXAMPLES: usize = 10;
    if train_x.len() < MIN_EXAMPLES || dev_x.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "catalog \"{}\" has {} training experiences and {} dev intents: training needs at least {MIN_EXAMPLES} and 1",
                lc.row.name,
                train_x.len(),
                dev_x.len()
            ),
            Some("pass labelled (intent, capability) pairs as examples, or record more outcomes".into()),
        );
    }
    let cfg = rt::TrainConfig {
        epochs: epochs as usize,
        text_weight: text_weight.unwrap_or(lc.row.text_weight),
        seed: seed as u64,
        ..Default::default()
    };
    prog.stage("training", (train_x.len() + dev_x.len()) as i64);
    let mut last = String::new();
    let ranker = rt::train(
        &lc.cat,
        &train_x,
        &dev_x,
        &cfg,
        &mut |stage: &str, done, total| {
            if stage != last {
                prog.stage(stage, total as i64);
                last = stage.to_string();
            }
            prog.advance(done as i64);
            interrupt_pending()
        },
    )
    .unwrap_or_else(|_| cancelled("train_ranker"));
    let seconds = started.elapsed().as_secs_f64();
    let d = &ranker.dev;
    let metrics_json = serde_json::json!({
        "dev_mrr": d.mrr, "dev_hit_at_1": d.hit_at_1, "dev_hit_at_3": d.hit_at_3, "dev_hit_at_5": d.hit_at_5,
        "dev_hit_at_10": d.hit_at_10, "dev_ndcg_at_10": d.ndcg_at_10, "dev_ece": ranker.dev_ece,
        "dev_brier": ranker.dev_brier, "temperature": ranker.temperature, "outside_logit": ranker.outside_logit, "examples": train_x.len(),
        "dev_examples": dev_x.len(), "best_epoch": ranker.best_epoch,
        "linear_dev_mrr": ranker.linear_dev_mrr,
        "swa_dev_mrr": ranker.swa_dev_mrr,
        "dev_candidate_recall": ranker.dev_candidate_recall,
        "history": ranker.history.iter().map(|(m, l)| serde_json::json!({"dev_mrr": m, "loss": l})).collect::<Vec<_>>(),
        "seconds": seconds, "peak_rss_mb": peak_rss_mb(),
    });
    let config_json = serde_json::to_value(&ranker.config).unwrap_or_default();
    let (ranker_id, version): (Option<i64>, Option<String>) = spi(
        "registering the ranker",
        Spi::get_two_with_args::<i64, String>(
            "INSERT INTO genome.rankers (catalog, version, weights, memory_upto, metrics, config, feature_version)
             SELECT $1, 'v' || (coalesce(max(substr(r.version, 2)::int) FILTER (WHERE r.version ~ '^v[0-9]+$'), 0) + 1),
                    $2, $3, $4, $5, $6
               FROM genome.rankers r WHERE r.catalog = $1
             RETURNING id, version",
            &[
                lc.row.name.as_str().into(),
                ranker.to_bytes().into(),
                upto.into(),
                JsonB(metrics_json).into(),
                JsonB(config_json).into(),
                lc.row.feature_version.into(),
            ],
        ),
    );
    let (ranker_id, version) = (ranker_id.unwrap_or_default(), version.unwrap_or_default());
    // its memory: the successful experiences it was trained on
    spi(
        "writing the ranker's memory",
        Spi::run_with_args(
            "INSERT INTO genome.ranker_memory (ranker, catalog, capability, embedding, intent)
             SELECT $1, e.catalog, e.capability, e.intent_embedding, e.intent FROM genome.experiences e
              WHERE e.catalog = $2 AND e.id <= $3 AND e.reward >= $4 ORDER BY e.id",
            &[
                ranker_id.into(),
                lc.row.name.as_str().into(),
                upto.into(),
                ranker.config.memory_min_reward.into(),
            ],
        ),
    );
    let stage = if promote {
        spi(
            "promoting the ranker",
            Spi::run_with_args(
                "SELECT genome.promote_ranker($1, $2)",
                &[lc.row.name.as_str().into(), version.as_str().into()],
            ),
        );
        "production"
    } else {
        "staging"
    };
    prog.stage("done", 0);
    TableIterator::once((
        version,
        stage.to_string(),
        train_x.len() as i64,
        dev_x.len() as i64,
        d.mrr as f32,
        d.hit_at_10 as f32,
        ranker.dev_ece as f32,
        seconds as f32,
    ))
}

/// Ranking and calibration metrics of a ranker version (default: production; none trained: the
/// fused retrieval) over a table of labelled intents, ranked as rank_capabilities ranks them
/// (without logging): MRR, Hit@1/3/5/10, NDCG@10, MAP, ECE and Brier of the top-1 confidence,
/// coverage and Gini of the top-k recommendations.
#[pg_extern(volatile, parallel_unsafe)]
pub fn evaluate_ranker(
    catalog: &str,
    examples: crate::owner::RegClass,
    intent_column: default!(&str, "'intent'"),
    capability_column: default!(&str, "'capability'"),
    k: default!(i32, 10),
    version: default!(Option<&str>, "NULL"),
) -> JsonB {
    if !(1..=1000).contains(&k) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("k must be between 1 and 1000, not {k}"),
            None,
        );
    }
    let row = catalog_row(Some(catalog));
    require_readable(&row);
    let lc = loaded_catalog(row);
    let ranker_row: Option<(i64, String)> = Spi::connect(|client| {
        let t = client.select(
            "SELECT id, xmin::text FROM genome.rankers WHERE catalog = $1
                AND (version = $2 OR ($2 IS NULL AND stage = 'production'))",
            None,
            &[lc.row.name.as_str().into(), version.into()],
        )?;
        let mut out = None;
        for r in t {
            out = Some((
                r.get::<i64>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .or_raise("reading the catalog's rankers");
    if let (Some(v), None) = (version, &ranker_row) {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("catalog \"{}\" has no ranker version \"{v}\"", lc.row.name),
            None,
        );
    }
    let ranker = ranker_row.map(|(id, x)| loaded_ranker(&lc, id, &x));
    let pairs: Vec<(String, String)> = labelled_rows(examples.0, intent_column, capability_column)
        .into_iter()
        .filter(|p| !p.0.trim().is_empty() && p.0.len() <= MAX_INTENT_BYTES)
        .collect();
    let unknown = pairs
        .iter()
        .filter(|p| !lc.index.contains_key(&p.1))
        .count();
    let pairs: Vec<&(String, String)> = pairs
        .iter()
        .filter(|p| lc.index.contains_key(&p.1))
        .collect();
    if pairs.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "no labelled intent names a capability of the catalog".into(),
            None,
        );
    }
    let mut prog = Progress::start("evaluate_ranker", &lc.row.name);
    prog.stage("ranking labelled intents", pairs.len() as i64);
    let mut ranks = Vec::with_capacity(pairs.len());
    let mut conf = Vec::new();
    let mut correct = Vec::new();
    let mut recommended = Vec::with_capacity(pairs.len());
    for (n, chunk) in pairs.chunks(256).enumerate() {
        let texts: Vec<&str> = chunk.iter().map(|p| p.0.as_str()).collect();
        let embs = intent_embeddings(&lc.row.model, &texts);
        for (p, e) in chunk.iter().zip(embs) {
            pg_sys::check_for_interrupts!();
            let q = Query {
                emb: &e,
                text: &p.0,
                context: &[],
            };
            let r = rank_one(&lc, ranker.as_deref(), &q);
            let label = lc.index[&p.1];
            ranks.push(r.caps.iter().position(|c| *c == label).map(|i| i + 1));
            if let (Some(pr), Some(top)) = (&r.confidence, r.caps.first()) {
                conf.push(pr[0]);
                correct.push(*top == label);
            }
            recommended.push(
                r.caps
                    .iter()
                    .take(k as usize)
                    .copied()
                    .collect::<Vec<u32>>(),
            );
        }
        prog.advance(((n + 1) * 256).min(pairs.len()) as i64);
    }
    let m = metrics::ranking_metrics(&ranks);
    let mut counts = vec![0f64; lc.cat.len()];
    for r in &recommended {
        for c in r {
            counts[*c as usize] += 1.0;
        }
    }
    prog.stage("done", 0);
    JsonB(serde_json::json!({
        "catalog": lc.row.name,
        "version": ranker.as_ref().map(|r| r.version.clone()),
        "intents": m.n,
        "unknown_labels": unknown,
        "k": k,
        "mrr": m.mrr, "hit_at_1": m.hit_at_1, "hit_at_3": m.hit_at_3, "hit_at_5": m.hit_at_5,
        "hit_at_10": m.hit_at_10, "ndcg_at_10": m.ndcg_at_10, "map": m.map,
        "ece": (!conf.is_empty()).then(|| metrics::ece(&conf, &correct, 15)),
        "brier": (!conf.is_empty()).then(|| metrics::brier(&conf, &correct)),
        "coverage": metrics::coverage(&recommended, lc.cat.len()),
        "gini": metrics::gini(&counts),
        "ranks": ranks,
        "top1_confidence": conf,
    }))
}

/// Feature validation, drift and online figures of a catalog (for genome.health() and
/// genome.metrics()): the feature store's dimensions, unit norms (within 0.01), variance
/// (collapsed below 0.01), NaN and staleness (24 h, or changed since the last refresh); drift
/// between the reference window (`reference` before the recent one) and the recent window
/// (`recent`): Kolmogorov-Smirnov on intent-embedding projections (the catalog's mean text
/// direction and four seeded random directions; drift when the smallest p-value is below 0.01 / 5) and the
/// PSI of the top-1 scores of the production version (drift above 0.2); and the recent window's
/// p50/p99 latency, fallback rate, error rate (failure outcomes / outcomes) and the MRR of the
/// production version on logged outcomes.
#[pg_extern(stable, parallel_safe)]
pub fn ranking_monitor(
    catalog: &str,
    recent: default!(pgrx::datum::Interval, "'1 day'"),
    reference: default!(pgrx::datum::Interval, "'7 days'"),
) -> JsonB {
    let row = catalog_row(Some(catalog));
    require_readable(&row);
    let dim = row.dimension;
    // features
    let (n, text, graph_nan, stats_nan, stale, refreshed) = Spi::connect(|client| {
        let mut text: Vec<Vec<f32>> = Vec::new();
        let mut graph_nan = 0i64;
        let mut stats_nan = 0i64;
        for r in client.select(
            "SELECT text_embedding, graph_embedding, pagerank, clustering, success_rate
               FROM genome.capability_features WHERE catalog = $1",
            None,
            &[catalog.into()],
        )? {
            text.push(r.get::<Vector>(1)?.map(|v| v.0).unwrap_or_default());
            let g = r.get::<Vec<Option<f32>>>(2)?.unwrap_or_default();
            graph_nan += g.iter().any(|x| x.is_none_or(|x| !x.is_finite())) as i64;
            let st = [r.get::<f32>(3)?, r.get::<f32>(4)?, r.get::<f32>(5)?];
            stats_nan += st.iter().flatten().any(|x| !x.is_finite()) as i64;
        }
        let t = client.select(
            "SELECT refreshed_at IS NULL OR refreshed_at < now() - interval '24 hours'
                    OR coalesce(changed_at > refreshed_at, false), refreshed_at::text
               FROM genome.catalogs WHERE name = $1",
            None,
            &[catalog.into()],
        )?;
        let f = t.first();
        Ok::<_, pgrx::spi::SpiError>((
            text.len(),
            text,
            graph_nan,
            stats_nan,
            f.get::<bool>(1)?.unwrap_or(true),
            f.get::<String>(2)?,
        ))
    })
    .or_raise("reading the feature store");
    let wrong_dim = text.iter().filter(|v| v.len() != dim).count();
    let text_nan = text
        .iter()
        .filter(|v| v.iter().any(|x| !x.is_finite()))
        .count();
    let off_norm = text
        .iter()
        .filter(|v| {
            let nn = v
                .iter()
                .map(|x| (*x as f64) * (*x as f64))
                .sum::<f64>()
                .sqrt();
            (nn - 1.0).abs() > 0.01
        })
        .count();
    let variance: f64 = if n < 2 || wrong_dim > 0 {
        0.0
    } else {
        (0..dim)
            .map(|k| {
                let m = text.iter().map(|v| v[k] as f64).sum::<f64>() / n as f64;
                text.iter().map(|v| (v[k] as f64 - m).powi(2)).sum::<f64>() / (n - 1) as f64
            })
            .sum()
    };
    let mut problems = Vec::new();
    if n == 0 {
        problems.push("no features: run genome.refresh_catalog".to_string());
    }
    if wrong_dim > 0 {
        problems.push(format!(
            "{wrong_dim} text embeddings are not of dimension {dim}"
        ));
    }
    if off_norm > 0 {
        problems.push(format!(
            "{off_norm} text embeddings are not unit vectors (within 0.01)"
        ));
    }
    if n > 1 && variance < 0.01 {
        problems.push(format!(
            "text embeddings collapsed: total variance {variance:.4} < 0.01"
        ));
    }
    if text_nan + graph_nan as usize + stats_nan as usize > 0 {
        problems.push(format!(
            "NaN in features: {text_nan} text, {graph_nan} graph, {stats_nan} statistics rows"
        ));
    }
    if stale {
        problems.push(
            "features are stale: not refreshed in 24 h, or the app's tables changed since".into(),
        );
    }
    // drift and online figures
    let windows = Spi::connect(|client| {
        let mut refw: Vec<Vec<f32>> = Vec::new();
        let mut recw: Vec<Vec<f32>> = Vec::new();
        let mut ref_scores = Vec::new();
        let mut rec_scores = Vec::new();
        let mut lat = Vec::new();
        let mut fallbacks = 0i64;
        for r in client.select(
            "SELECT k.intent_embedding, k.created_at >= now() - $2 AS recent, k.scores[1],
                    k.model_version IS NOT DISTINCT FROM (SELECT x.version FROM genome.rankers x
                                                           WHERE x.catalog = $1 AND x.stage = 'production'),
                    k.latency_ms, k.model_version IS NULL
               FROM genome.rankings k
              WHERE k.catalog = $1 AND k.created_at >= now() - $2 - $3",
            None,
            &[catalog.into(), recent.into(), reference.into()],
        )? {
            let v = r.get::<Vector>(1)?.map(|v| v.0).unwrap_or_default();
            let is_recent = r.get::<bool>(2)?.unwrap_or(false);
            let score = r.get::<f32>(3)?;
            let prod = r.get::<bool>(4)?.unwrap_or(false);
            if is_recent {
                lat.push(r.get::<f32>(5)?.unwrap_or(0.0) as f64);
                fallbacks += r.get::<bool>(6)?.unwrap_or(false) as i64;
                recw.push(v);
                if let (Some(s), true) = (score, prod) {
                    rec_scores.push(s as f64);
                }
            } else {
                refw.push(v);
                if let (Some(s), true) = (score, prod) {
                    ref_scores.push(s as f64);
                }
            }
        }
        let t = client.select(
            "SELECT count(*), count(*) FILTER (WHERE e.outcome = 'failure'),
                    avg(CASE WHEN e.outcome = 'success' THEN coalesce(1.0 / e.rank, 0) END)
                      FILTER (WHERE k.model_version = (SELECT x.version FROM genome.rankers x
                                                        WHERE x.catalog = $1 AND x.stage = 'production'))
               FROM genome.experiences e JOIN genome.rankings k ON k.id = e.ranking_id
              WHERE e.catalog = $1 AND e.source = 'outcome' AND e.created_at >= now() - $2",
            None,
            &[catalog.into(), recent.into()],
        )?;
        let f = t.first();
        let outcomes = (
            f.get::<i64>(1)?.unwrap_or(0),
            f.get::<i64>(2)?.unwrap_or(0),
            f.get::<pgrx::AnyNumeric>(3)?.map(|x| x.to_string().parse::<f64>().unwrap_or(0.0)),
        );
        Ok::<_, pgrx::spi::SpiError>((refw, recw, ref_scores, rec_scores, lat, fallbacks, outcomes))
    })
    .or_raise("reading the ranking log");
    let (refw, recw, ref_scores, rec_scores, lat, fallbacks, (n_out, n_fail, mrr_logged)) = windows;
    const MIN_WINDOW: usize = 30;
    let ks = (refw.len() >= MIN_WINDOW && recw.len() >= MIN_WINDOW).then(|| {
        let d = refw[0].len();
        let mut dirs: Vec<Vec<f32>> = Vec::new();
        // the catalog's mean text direction (from neither window: a window's own mean would
        // favour that window's points)
        let mut mean = vec![0f32; d];
        for v in text.iter().filter(|v| v.len() == d) {
            mean.iter_mut().zip(v).for_each(|(a, b)| *a += b);
        }
        genome_core::base::l2_normalize(&mut mean);
        dirs.push(mean);
        let mut rng = genome_core::reduce::rng::Rng::new(0x6d6f6e);
        for _ in 0..4 {
            let mut v: Vec<f32> = (0..d).map(|_| rng.normal() as f32).collect();
            genome_core::base::l2_normalize(&mut v);
            dirs.push(v);
        }
        let proj = |w: &[Vec<f32>], u: &[f32]| -> Vec<f64> {
            w.iter()
                .filter(|v| v.len() == u.len())
                .map(|v| genome_core::base::dot(v, u) as f64)
                .collect()
        };
        dirs.iter()
            .map(|u| metrics::ks_2samp(&proj(&refw, u), &proj(&recw, u)))
            .map(|t| (t.statistic, t.p_value))
            .fold((0.0f64, 1.0f64), |a, b| (a.0.max(b.0), a.1.min(b.1)))
    });
    let psi = (ref_scores.len() >= MIN_WINDOW && rec_scores.len() >= MIN_WINDOW)
        .then(|| metrics::psi(&ref_scores, &rec_scores, 10));
    let q = |p: f64| genome_core::base::quantile_of(lat.clone(), p);
    JsonB(serde_json::json!({
        "catalog": catalog,
        "features": {
            "ok": problems.is_empty(),
            "capabilities": n,
            "dimension": dim,
            "total_variance": variance,
            "refreshed_at": refreshed,
            "stale": stale,
            "problems": problems,
        },
        "drift": {
            "reference_rankings": refw.len(),
            "recent_rankings": recw.len(),
            "ks_statistic": ks.map(|k| k.0),
            "ks_min_p": ks.map(|k| k.1),
            "intent_drift": ks.map(|k| k.1 < 0.01 / 5.0),
            "score_psi": psi,
            "score_drift": psi.map(|p| p > 0.2),
            "min_window": MIN_WINDOW,
        },
        "online": {
            "rankings": lat.len(),
            "p50_ms": q(0.5),
            "p99_ms": q(0.99),
            "fallback_rate": (!lat.is_empty()).then(|| fallbacks as f64 / lat.len() as f64),
            "outcomes": n_out,
            "error_rate": (n_out > 0).then(|| n_fail as f64 / n_out as f64),
            "mrr_logged": mrr_logged,
        },
    }))
}

/// Temporal validation over the experience log: a ranker trained (in memory, not registered) on
/// the experiences before `split_at` (default: the time by which 80% of the logged outcomes had
/// arrived) ranks the successful outcomes after it; dense cosine over the whole catalog on the
/// same intents is the reference.
#[pg_extern(volatile, parallel_unsafe)]
pub fn temporal_validation(
    catalog: &str,
    split_at: default!(Option<pgrx::datum::TimestampWithTimeZone>, "NULL"),
    epochs: default!(i32, 4),
) -> JsonB {
    let row = catalog_row(Some(catalog));
    require_owned(&row, "validate a ranker on its log");
    let lc = loaded_catalog(row);
    let split: String = match split_at {
        Some(t) => t.to_string(),
        None => spi(
            "choosing the split time",
            Spi::get_one_with_args::<String>(
                "SELECT (percentile_disc(0.8) WITHIN GROUP (ORDER BY created_at))::text FROM genome.experiences
                  WHERE catalog = $1 AND source = 'outcome'",
                &[catalog.into()],
            ),
        )
        .unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("catalog \"{catalog}\" has no logged outcomes to split"),
                None,
            )
        }),
    };
    let (all, _) = read_experiences(&lc, Some(&split));
    let (train, after): (Vec<(bool, rt::Experience)>, Vec<(bool, rt::Experience)>) =
        all.into_iter().partition(|(before, _)| *before);
    let train: Vec<rt::Experience> = train.into_iter().map(|x| x.1).collect();
    let tests: Vec<rt::Labelled> = after
        .into_iter()
        .map(|x| x.1)
        .filter(|e| e.reward >= 0.5)
        .map(|e| rt::Labelled {
            emb: e.emb,
            text: e.text,
            context: e.context,
            label: e.chosen,
        })
        .collect();
    // dev for early stopping: a stable tenth of the training experiences
    let (fit, dev): (Vec<rt::Experience>, Vec<rt::Experience>) = train
        .into_iter()
        .partition(|e| !(e.reward >= 0.5 && held_out(&e.text)));
    if fit.len() < 10 || dev.is_empty() || tests.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "split at {split}: {} training experiences, {} dev and {} test intents; need at least 10, 1 and 1",
                fit.len(),
                dev.len(),
                tests.len()
            ),
            None,
        );
    }
    let dev: Vec<rt::Labelled> = dev
        .into_iter()
        .map(|e| rt::Labelled {
            emb: e.emb,
            text: e.text,
            context: e.context,
            label: e.chosen,
        })
        .collect();
    let cfg = rt::TrainConfig {
        epochs: epochs.clamp(1, 200) as usize,
        text_weight: lc.row.text_weight,
        ..Default::default()
    };
    let ranker = rt::train(&lc.cat, &fit, &dev, &cfg, &mut |_, _, _| {
        interrupt_pending()
    })
    .unwrap_or_else(|_| cancelled("temporal_validation"));
    let mem = rt::memory_of(&lc.cat, &fit, cfg.memory_min_reward, ranker.adapter.clone());
    let trained = metrics::ranking_metrics(&rt::evaluate(&lc.cat, &mem, Some(&ranker), &tests));
    let dense = metrics::ranking_metrics(&rt::evaluate(&lc.cat, &mem, None, &tests));
    JsonB(serde_json::json!({
        "catalog": catalog,
        "split_at": split,
        "train_experiences": fit.len(),
        "dev_intents": dev.len(),
        "test_intents": tests.len(),
        "ranker": trained,
        "dense_cosine": dense,
    }))
}

/// The canary's two-proportion test (used by genome.canary_report): candidate successes and
/// outcomes, production successes and outcomes.
#[pg_extern(immutable, parallel_safe)]
pub fn _two_proportion(
    success_a: i64,
    n_a: i64,
    success_b: i64,
    n_b: i64,
) -> TableIterator<
    'static,
    (
        name!(diff, f64),
        name!(p_value, f64),
        name!(ci_low, f64),
        name!(ci_high, f64),
        name!(n_needed_per_arm, Option<i64>),
    ),
> {
    let t = metrics::two_proportion_test(
        success_a.max(0) as u64,
        n_a.max(0) as u64,
        success_b.max(0) as u64,
        n_b.max(0) as u64,
        0.02,
    );
    TableIterator::new(t.into_iter().map(|t| {
        (
            t.diff,
            t.p_value,
            t.ci_low,
            t.ci_high,
            t.n_needed_per_arm.map(|n| n as i64),
        )
    }))
}

extension_sql_file!(
    "ranking.sql",
    name = "ranking",
    requires = [
        "collections",
        refresh_catalog,
        rank_capabilities,
        train_ranker,
        evaluate_ranker,
        ranking_monitor,
        temporal_validation,
        _two_proportion
    ]
);
