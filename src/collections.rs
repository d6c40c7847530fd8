//! Collections as the Rust side sees them. Registration itself is SQL (sql/finalize.sql):
//! `register_collection`, `unregister_collection`, `pending_count`, the drop event trigger.

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::errors::raise;

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
    .unwrap_or_else(|e| error!("pg_genome: reading genome.collections failed: {e}"));
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

/// Try the collection's transaction-level advisory lock, key (0x67656e6f "geno", hashtext(name)):
/// exclusive for full runs, shared for assign_family. One query: the key is hashed in SQL.
pub fn try_lock(name: &str, shared: bool) -> bool {
    let f = if shared {
        "pg_try_advisory_xact_lock_shared"
    } else {
        "pg_try_advisory_xact_lock"
    };
    Spi::get_one_with_args::<bool>(
        &format!("SELECT {f}({}, hashtext($1))", 0x6765_6e6f),
        &[name.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}
