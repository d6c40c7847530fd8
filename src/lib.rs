//! pg_genome: the pgrx layer. Arguments, SPI, GUCs and errors live here; models and algorithms
//! live in `genome-core` (no PostgreSQL dependency, tested with plain `cargo test`).
//!
//! One module per capability, its hand-written SQL beside it (`models.rs` + `models.sql`, ...),
//! included with `extension_sql_file!`; `owner.sql` comes first and `finalize.sql` last.
//!
//! Where a job is orchestrated (the rule, one for all capabilities):
//! - **Bulk jobs orchestrate in Rust**: read -> core -> write. The core returns a plan
//!   (`genome_core::families::plan -> FamilyPlan`, `genome_core::pets::update_pet -> PetUpdate`),
//!   this layer reads the rows, calls it and writes the plan (full classification, assignment,
//!   search).
//! - **Per-item transactional loops may stay in PL/pgSQL**, for their subtransactions: one bad
//!   photo or queued row fails alone (`cluster_pet`, `_embed_process`). They call Rust for every
//!   rule (`_write_embeddings`, `_resolve_model`, `_check_registrant`, `_lock_key`) and pass typed
//!   values (vectors as `vector[]`), never JSON or text stand-ins.
//! - One source per rule: model specs and defaults (`models::spec_or_default`, `resolve`), the
//!   registrant rule (`owner::owned_by`), a collection's checks (`collections::checked_relation`),
//!   advisory-lock keys (`locks`), the cancel check (`errors::interrupt_pending`), writing a
//!   collection's embeddings (`collections::write_embeddings`), SPI failures (`errors::spi`).

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

pub mod assign;
pub mod bundles;
pub mod cluster;
pub mod collections;
pub mod embed;
pub mod errors;
pub mod families;
pub mod gucs;
pub mod images;
pub mod inference;
pub mod locks;
pub mod metrics;
pub mod models;
pub mod owner;
pub mod pets;
pub mod plans;
pub mod progress;
pub mod queue;
pub mod ranking;
pub mod search;
pub mod sequences;
pub mod taxonomy;
pub mod vector;

/// PostgreSQL's package library directory (`$libdir`).
pub fn pkglib_dir() -> String {
    unsafe {
        std::ffi::CStr::from_ptr(
            std::ptr::addr_of!(pgrx::pg_sys::pkglib_path) as *const std::ffi::c_char
        )
        .to_string_lossy()
        .into_owned()
    }
}

/// PostgreSQL's share directory (models installed by the set-up live under it).
pub fn share_dir() -> String {
    unsafe {
        let mut buf = vec![0 as std::ffi::c_char; pgrx::pg_sys::MAXPGPATH as usize];
        pgrx::pg_sys::get_share_path(
            std::ptr::addr_of!(pgrx::pg_sys::my_exec_path) as *const _,
            buf.as_mut_ptr(),
        );
        std::ffi::CStr::from_ptr(buf.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // The workers, shared memory and postmaster settings exist only when the library is
    // preloaded; loaded later (CREATE EXTENSION or LOAD without it) PostgreSQL would end the
    // session with a FATAL "cannot create PGC_POSTMASTER variables after startup". Say what to do
    // instead, as pg_cron does. With the preload every backend inherits the settings, so the SQL
    // functions read them with plain current_setting() and keep no copies of their defaults.
    if unsafe { !pg_sys::process_shared_preload_libraries_in_progress } {
        errors::raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "pg_genome must be loaded via shared_preload_libraries".into(),
            Some("add pg_genome to shared_preload_libraries in postgresql.conf and restart PostgreSQL".into()),
        );
    }
    // Rust backtraces are for the server log at most, never for clients: pgrx puts a captured
    // backtrace into an ERROR's DETAIL, and RUST_BACKTRACE may be set in the server's environment.
    if std::env::var_os("GENOME_CLIENT_BACKTRACES").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    // Only GUCs here: ONNX Runtime is loaded lazily in the backend that needs it, never in the
    // postmaster (its threads would not survive fork()).
    gucs::init();
    progress::init();
    metrics::init();
    queue::init();
    inference::init();
}

// What must come after every capability: event triggers and the privileges of internal functions.
extension_sql_file!("finalize.sql", name = "finalize", finalize);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    // The tests live in their own file; pgrx's #[pg_schema] needs an inline module.
    include!("pg_tests.rs");
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        // no embedding workers in the throwaway cluster: the #[pg_test]s call the queue directly
        vec![
            "shared_preload_libraries = 'pg_genome'",
            "genome.embed_workers = 0",
            "genome.inference_workers = 0",
        ]
    }
}
