//! Running an app table's statements as the table's owner.
//!
//! pg_genome reads and writes the tables it is registered on from contexts that can have more
//! rights than the table's owner: the embedding workers and pg_cron jobs (often the bootstrap
//! superuser), or a superuser calling `genome.search`. A trigger, index expression, rule, cast or
//! column default the owner put on the table would then run with those rights. So every statement
//! on an app table goes through [`as_table_owner`]: when the current user is not the owner but
//! has the owner's privileges (a superuser, or a member of the owner role), it switches to the
//! owner with `SECURITY_RESTRICTED_OPERATION` and `search_path = pg_catalog, pg_temp` (settings
//! made inside are undone on return), exactly as
//! PostgreSQL's VACUUM, ANALYZE, CREATE INDEX and REFRESH MATERIALIZED VIEW do since
//! CVE-2022-1552 (`SetUserIdAndSecContext`). A caller without the owner's privileges runs the
//! statement as itself: its own grants and row-level security decide what it sees, so pg_genome
//! never shows a role rows it could not read itself.
//!
//! The switch is undone when the closure returns. On an ERROR it is undone by PostgreSQL itself:
//! transaction and subtransaction abort restore the user id, security context and GUC nest level
//! they started with.
//!
//! From SQL (PL/pgSQL functions such as `_embed_process` and `_search`), the same switch is
//! `genome._owner_value(rel, stmt, args...)` and `genome._owner_exec(rel, stmt, args...)`.

use std::ffi::CString;

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use crate::errors::raise;

/// The owner of a relation (ERROR if it is gone).
fn relowner(rel: pg_sys::Oid) -> pg_sys::Oid {
    Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT relowner FROM pg_catalog.pg_class WHERE oid = $1",
        &[rel.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("relation with OID {} does not exist", rel.to_u32()),
            None,
        )
    })
}

/// Restores what [`as_table_owner`] and [`with_safe_search_path`] changed, on the normal path.
/// While unwinding from an ERROR the (sub)transaction abort restores it instead.
struct Restore {
    user: Option<(pg_sys::Oid, i32)>,
    nest: i32,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        unsafe {
            // false: every setting made inside goes back, also a session-level SET run by the
            // owner's code (as VACUUM and CREATE INDEX do after their owner switch)
            pg_sys::AtEOXact_GUC(false, self.nest);
            if let Some((uid, ctx)) = self.user {
                pg_sys::SetUserIdAndSecContext(uid, ctx);
            }
        }
    }
}

fn push_safe_path() -> i32 {
    unsafe {
        let nest = pg_sys::NewGUCNestLevel();
        let name = CString::new("search_path").unwrap();
        let value = CString::new("pg_catalog, pg_temp").unwrap();
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        nest
    }
}

/// Run `f` with `search_path = pg_catalog, pg_temp` (so that regclass and format_type output is
/// schema-qualified, and no operator or function resolves to a user schema); every setting made
/// inside is restored after.
pub fn with_safe_search_path<R>(f: impl FnOnce() -> R) -> R {
    let _restore = Restore {
        user: None,
        nest: push_safe_path(),
    };
    f()
}

/// Run `f` (statements on the table `rel`) with the safe search path, and as the table's owner
/// when the current user is a more privileged role (see the module comment). Statements name
/// every object outside pg_catalog with its schema (pgvector's operators as
/// `OPERATOR(schema.<=>)`): no operator, function or cast resolves to a user schema.
pub fn as_table_owner<R>(rel: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let owner = relowner(rel);
    let (mut uid, mut ctx) = (pg_sys::InvalidOid, 0i32);
    unsafe { pg_sys::GetUserIdAndSecContext(&mut uid, &mut ctx) };
    // membership (which in PostgreSQL 15 includes SET ROLE), not just inherited privileges: the
    // caller could become the owner itself, so running as the owner gives it nothing new
    let switch = uid != owner && unsafe { pg_sys::is_member_of_role(uid, owner) };
    let nest = push_safe_path();
    if switch {
        unsafe {
            pg_sys::SetUserIdAndSecContext(
                owner,
                ctx | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
            );
        }
    }
    let _restore = Restore {
        user: switch.then_some((uid, ctx)),
        nest,
    };
    f()
}

fn args_of(
    a1: Option<Vec<Option<String>>>,
    a2: Option<Vec<Option<String>>>,
    a3: Option<Vec<Option<String>>>,
) -> Vec<pgrx::datum::DatumWithOid<'static>> {
    vec![a1.into(), a2.into(), a3.into()]
}

/// The first column of the first row of `stmt` (a query giving one jsonb), run on `rel` as its
/// owner (see the module comment). `$1`..`$3` are the text[] arguments. Internal: for pg_genome's
/// own PL/pgSQL functions, which build `stmt` from quoted identifiers.
#[pg_extern(volatile, parallel_unsafe, name = "_owner_value")]
fn owner_value(
    rel: pg_sys::Oid,
    stmt: &str,
    a1: default!(Option<Vec<Option<String>>>, "NULL"),
    a2: default!(Option<Vec<Option<String>>>, "NULL"),
    a3: default!(Option<Vec<Option<String>>>, "NULL"),
) -> Option<pgrx::JsonB> {
    let args = args_of(a1, a2, a3);
    as_table_owner(rel, || Spi::get_one_with_args::<pgrx::JsonB>(stmt, &args)).unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("reading the table failed: {e}"),
            None,
        )
    })
}

/// Run `stmt` (a data-changing statement) on `rel` as its owner; returns the rows it processed.
#[pg_extern(volatile, parallel_unsafe, name = "_owner_exec")]
fn owner_exec(
    rel: pg_sys::Oid,
    stmt: &str,
    a1: default!(Option<Vec<Option<String>>>, "NULL"),
    a2: default!(Option<Vec<Option<String>>>, "NULL"),
    a3: default!(Option<Vec<Option<String>>>, "NULL"),
) -> i64 {
    let args = args_of(a1, a2, a3);
    as_table_owner(rel, || {
        Spi::connect_mut(|c| c.update(stmt, None, &args).map(|t| t.len() as i64))
    })
    .unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("writing the table failed: {e}"),
            None,
        )
    })
}

// The SQL objects of this capability, in their current shape: src/owner.sql.
extension_sql_file!("owner.sql", name = "owner", bootstrap);
