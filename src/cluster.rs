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
