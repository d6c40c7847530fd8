//! Several nodes: the coordinator side of pg_genome. The scale-out itself is the SQL-only
//! extension `pg_genome_cluster` (cluster/pg_genome_cluster.sql: PL/Proxy routing and fan-out,
//! postgres_fdw partitions); once it has a data node, this database is a coordinator and the
//! pg_genome functions that read or write sharded data (pets, search) hand their call to it
//! instead of running locally, under the same names and signatures.
//!
//! One rule says whether a database is a coordinator: PL/Proxy's cluster, the foreign server
//! `genome_cluster`, exists (pg_genome_cluster creates it with the first node).

use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};

use crate::errors::OrRaise;

/// Whether this database routes pg_genome's calls to data nodes: a syscache lookup, no query,
/// so single-node calls pay nothing measurable for the check.
pub fn coordinator() -> bool {
    // SAFETY: a catalog lookup by name; with missing_ok it returns NULL rather than raising
    unsafe { !pg_sys::GetForeignServerByName(c"genome_cluster".as_ptr(), true).is_null() }
}

/// SQL's view of [`coordinator`], for the PL/pgSQL functions that route.
#[pg_extern(stable, parallel_safe)]
fn _coordinator() -> bool {
    coordinator()
}

/// Whether `collection` is a distributed collection of this coordinator
/// (genome_cluster.distribute_collection): its full runs cluster rows gathered from the data
/// nodes, and its assignment runs on the nodes.
pub fn distributed(collection: &str) -> bool {
    coordinator()
        && Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM genome_cluster.collections WHERE name = $1)",
            &[collection.into()],
        )
        .or_raise("reading genome_cluster.collections")
        .unwrap_or(false)
}

/// The model of a distributed collection (registered here by
/// genome_cluster.distribute_collection, with the nodes' model): search embeds a text query
/// with it once, on the coordinator.
pub fn model_of(collection: &str) -> Option<String> {
    Spi::get_one_with_args::<String>(
        "SELECT min(c.model) FROM genome.collections c JOIN genome_cluster.collections d ON d.name = c.name WHERE c.name = $1",
        &[collection.into()],
    )
    .or_raise("reading the collection's model")
}

/// A full run's first step on a coordinator: the data nodes embed their missing rows (when
/// `embed`), and the rows to cluster come from every node into the collection's local table
/// (genome_cluster._gather). The run then clusters them as on one node. Returns how many rows
/// the nodes hold with an embedding (more than were gathered when the run is on a sample).
pub fn gather(collection: &str, embed: bool) -> i64 {
    Spi::get_one_with_args::<i64>(
        "SELECT genome_cluster._gather($1, $2)",
        &[collection.into(), embed.into()],
    )
    .or_raise("gathering the rows from the data nodes")
    .unwrap_or(0)
}

/// A full run's last step on a coordinator: its families, and the family of every row it
/// clustered, go to every data node, which places its other rows (genome_cluster._push_families,
/// genome._install_families on the nodes).
pub fn push(collection: &str) {
    Spi::run_with_args(
        "SELECT genome_cluster._push_families($1)",
        &[collection.into()],
    )
    .or_raise("installing the families on the data nodes");
}

/// Whether rank_capabilities of `catalog` runs on the data nodes: this is a coordinator and the
/// catalog, its features and rankers and its app tables are published to the nodes
/// (genome_cluster.publish; logical replication keeps every node's copy).
/// A role that may not use genome_cluster (not a genome_user) ranks on the coordinator, which
/// holds the same data. Three queries: a schema must be usable before its functions are named,
/// and a function's EXECUTE is checked when the query starts, not when it is reached.
pub fn ranked_on_nodes(catalog: &str) -> bool {
    let ask = |sql: &str, args: &[pgrx::datum::DatumWithOid]| {
        Spi::get_one_with_args::<bool>(sql, args)
            .or_raise("reading whether ranking runs on the data nodes")
            .unwrap_or(false)
    };
    coordinator()
        && ask("SELECT has_schema_privilege('genome_cluster', 'USAGE')", &[])
        && ask(
            "SELECT has_server_privilege('genome_cluster', 'USAGE') \
                AND has_function_privilege('genome_cluster._ranked_on_nodes(text)', 'EXECUTE') \
                AND has_function_privilege('genome_cluster.rank_capabilities(text, text[], integer, text, real, jsonb, text)', 'EXECUTE')",
            &[],
        )
        && ask(
            "SELECT genome_cluster._ranked_on_nodes($1)",
            &[catalog.into()],
        )
}

/// A row of rank_capabilities: rank, capability, score, confidence, model version, ranking id.
pub type RankRow = (i32, String, f32, Option<f32>, Option<String>, i64);

/// rank_capabilities on any data node that answers (genome_cluster.rank_capabilities); the
/// node logs the ranking, under an id of its own range.
pub fn rank(
    intent: &str,
    context_tools: Option<Vec<String>>,
    top_k: i32,
    catalog: &str,
    min_score: Option<f32>,
    filter: Option<JsonB>,
    session_id: Option<&str>,
) -> Vec<RankRow> {
    Spi::connect(|client| {
        let t = client.select(
            "SELECT rank, capability, score, confidence, model_version, ranking_id \
               FROM genome_cluster.rank_capabilities($1, $2, $3, $4, $5, $6, $7)",
            None,
            &[
                intent.into(),
                context_tools.into(),
                top_k.into(),
                catalog.into(),
                min_score.into(),
                filter.into(),
                session_id.into(),
            ],
        )?;
        let mut out = Vec::new();
        for r in t {
            out.push((
                r.get::<i32>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<f32>(3)?.unwrap_or_default(),
                r.get::<f32>(4)?,
                r.get::<String>(5)?,
                r.get::<i64>(6)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .or_raise("ranking on a data node")
}

/// Training on a coordinator: the catalog's rankings and outcomes logged by the data nodes come
/// into this database's log first (genome_cluster.gather_outcomes). That reads every node through
/// postgres_fdw and writes log rows of other roles, so it needs a superuser; anyone else trains
/// on what was gathered before, and is told so.
pub fn gather_outcomes(catalog: &str) {
    // SAFETY: reads the current role's superuser flag
    if !unsafe { pg_sys::superuser() } {
        notice!(
            "pg_genome: outcomes logged on the data nodes since the last genome_cluster.gather_outcomes('{catalog}') are not included: gathering them needs a superuser"
        );
        return;
    }
    let got = Spi::get_one_with_args::<i64>(
        "SELECT genome_cluster.gather_outcomes($1)",
        &[catalog.into()],
    )
    .or_raise("gathering the outcomes from the data nodes")
    .unwrap_or(0);
    notice!("pg_genome: {got} new outcomes of catalog \"{catalog}\" gathered from the data nodes");
}
