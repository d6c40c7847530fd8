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
//! From SQL (PL/pgSQL functions such as `_embed_process` and `cluster_pet`), the same switch is
//! `genome._owner_value(rel, stmt, args...)` and `genome._owner_exec(rel, stmt, args...)`.

use std::ffi::CString;

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::datum::Datum;
use pgrx::prelude::*;
use pgrx::{pg_sys, FromDatum, IntoDatum, PgSqlErrorCode};

use crate::errors::raise;

/// The owner of a relation (ERROR if it is gone).
/// The owner of a relation, None when it does not exist (from the system cache).
pub fn relowner_opt(rel: pg_sys::Oid) -> Option<pg_sys::Oid> {
    // SAFETY: a syscache lookup by OID; the tuple is released before returning.
    unsafe {
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::RELOID as i32,
            pg_sys::Datum::from(rel),
        );
        if tup.is_null() {
            None
        } else {
            let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_class>(tup);
            let owner = (*form).relowner;
            pg_sys::ReleaseSysCache(tup);
            Some(owner)
        }
    }
}

fn relowner(rel: pg_sys::Oid) -> pg_sys::Oid {
    relowner_opt(rel).unwrap_or_else(|| {
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

/// The safe search_path every statement pg_genome builds runs under.
const SAFE_PATH: (&str, &str) = ("search_path", "pg_catalog, pg_temp");

/// Open a GUC nest level and make `settings` in it (GUC_ACTION_SAVE: `Restore` / AtEOXact_GUC
/// puts the previous values back, also those code run inside changed). Returns the level.
fn push_settings(settings: &[(&str, &str)]) -> i32 {
    // SAFETY: valid C strings; the level is closed by `Restore` or by (sub)transaction abort.
    unsafe {
        let nest = pg_sys::NewGUCNestLevel();
        for (name, value) in settings {
            let (n, v) = (CString::new(*name).unwrap(), CString::new(*value).unwrap());
            pg_sys::set_config_option(
                n.as_ptr(),
                v.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        nest
    }
}

/// Run `f` with `settings` made for its duration only (every setting made inside is restored
/// after too), and the safe search_path first.
pub fn with_settings<R>(settings: &[(&str, &str)], f: impl FnOnce() -> R) -> R {
    let mut all = vec![SAFE_PATH];
    all.extend_from_slice(settings);
    let _restore = Restore {
        user: None,
        nest: push_settings(&all),
    };
    f()
}

/// Run `f` with `search_path = pg_catalog, pg_temp` (so that regclass and format_type output is
/// schema-qualified, and no operator or function resolves to a user schema); every setting made
/// inside is restored after.
pub fn with_safe_search_path<R>(f: impl FnOnce() -> R) -> R {
    with_settings(&[], f)
}

/// A table's name as `regclass` prints it under the safe search path (schema-qualified).
pub fn table_name(rel: pg_sys::Oid) -> String {
    with_safe_search_path(|| {
        crate::errors::required(
            "naming a table",
            Spi::get_one_with_args::<String>("SELECT $1::regclass::text", &[rel.into()]),
        )
    })
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
    let nest = push_settings(&[SAFE_PATH]);
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

/// A `regrole` value: a role's OID.
#[derive(Clone, Copy, Debug)]
pub struct RegRole(pub pg_sys::Oid);

pgrx::impl_sql_translatable!(RegRole, "regrole");

impl FromDatum for RegRole {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _oid: pg_sys::Oid,
    ) -> Option<Self> {
        // SAFETY: a regrole datum is an OID by value
        unsafe { pg_sys::Oid::from_polymorphic_datum(datum, is_null, pg_sys::OIDOID) }.map(RegRole)
    }
}

impl IntoDatum for RegRole {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        self.0.into_datum()
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::REGROLEOID
    }
}

unsafe impl<'fcx> ArgAbi<'fcx> for RegRole {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe {
            arg.unbox_arg_using_from_datum()
                .unwrap_or_else(|| panic!("argument {index} must not be null"))
        }
    }
}

/// A `regclass` argument or result: a relation's OID.
#[derive(Clone, Copy, Debug)]
pub struct RegClass(pub pg_sys::Oid);

pgrx::impl_sql_translatable!(RegClass, "regclass");

impl FromDatum for RegClass {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _oid: pg_sys::Oid,
    ) -> Option<Self> {
        // SAFETY: a regclass datum is an OID by value
        unsafe { pg_sys::Oid::from_polymorphic_datum(datum, is_null, pg_sys::OIDOID) }.map(RegClass)
    }
}

unsafe impl<'fcx> ArgAbi<'fcx> for RegClass {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe {
            arg.unbox_arg_using_from_datum()
                .unwrap_or_else(|| panic!("argument {index} must not be null"))
        }
    }
}

impl IntoDatum for RegClass {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        self.0.into_datum()
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::REGCLASSOID
    }
}

unsafe impl BoxRet for RegClass {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        // SAFETY: an OID by value
        unsafe { fcinfo.return_raw_datum(pg_sys::Datum::from(self.0)) }
    }
}

/// The registrant rule: whether `who` (a registration's registered_by) has the privileges of
/// `rel`'s owner (is the owner or a member of its role). False when either is gone. Every use of
/// a collection or pet media checks it (`check_registrant`); health() reports it.
pub fn owned_by(rel: pg_sys::Oid, who: Option<pg_sys::Oid>) -> bool {
    match (who, relowner_opt(rel)) {
        // SAFETY: two role OIDs; has_privs_of_role is pg_has_role(..., 'USAGE')
        (Some(who), Some(owner)) => unsafe { pg_sys::has_privs_of_role(who, owner) },
        _ => false,
    }
}

/// Refuse a registration whose registering role no longer has the privileges of the table's
/// owner. Ownership, not a grant: pg_genome works on the table as its owner (triggers, DDL of a
/// re-embedding, rows the owner's row-level security would hide from a grantee).
pub fn check_registrant(kind: &str, name: &str, rel: pg_sys::Oid, who: Option<pg_sys::Oid>) {
    if owned_by(rel, who) {
        return;
    }
    let names = with_safe_search_path(|| {
        Spi::get_two_with_args::<String, String>(
            "SELECT $1::regrole::text, $2::regclass::text",
            &[who.map(RegRole).into(), rel.into()],
        )
    });
    let (role, table) = crate::errors::spi("naming the registrant", names);
    raise(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!(
            "{kind} \"{name}\" was registered by {}, which does not own table {}",
            role.unwrap_or_else(|| "an unknown role".into()),
            table.unwrap_or_default()
        ),
        Some("register it again as the table's owner (or a member of the owning role)".into()),
    )
}

/// SQL face of [`owned_by`].
#[pg_extern(stable, parallel_safe)]
fn _owned_by(rel: Option<pg_sys::Oid>, who: Option<RegRole>) -> bool {
    rel.is_some_and(|rel| owned_by(rel, who.map(|w| w.0)))
}

/// SQL face of [`check_registrant`].
#[pg_extern(stable, parallel_safe)]
fn _check_registrant(
    kind: Option<&str>,
    name: Option<&str>,
    rel: Option<pg_sys::Oid>,
    who: Option<RegRole>,
) {
    check_registrant(
        kind.unwrap_or_default(),
        name.unwrap_or_default(),
        rel.unwrap_or(pg_sys::InvalidOid),
        who.map(|w| w.0),
    )
}

// The SQL objects of this capability, in their current shape: src/owner.sql.
extension_sql_file!("owner.sql", name = "owner", bootstrap);
