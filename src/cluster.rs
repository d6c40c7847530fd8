//! Several nodes: the coordinator side of pg_genome. The scale-out itself is the SQL-only
//! extension `pg_genome_cluster` (cluster/pg_genome_cluster.sql: PL/Proxy routing and fan-out,
//! postgres_fdw partitions); once it has a data node, this database is a coordinator and the
//! pg_genome functions that read or write sharded data (pets, search) hand their call to it
//! instead of running locally, under the same names and signatures.
//!
//! One rule says whether a database is a coordinator: PL/Proxy's cluster, the foreign server
//! `genome_cluster`, exists (pg_genome_cluster creates it with the first node).

use pgrx::pg_sys;
use pgrx::prelude::*;

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
