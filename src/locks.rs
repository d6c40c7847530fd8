//! pg_genome's advisory locks: one key space per kind of job, the second key hashtext(name).
//! The one source of the keys: the SQL functions take them from `genome._lock_key(kind)`.
//!
//! - `Collection`: a full classification holds it exclusively for its transaction, assignment
//!   shared (several assignments split rows with SKIP LOCKED; they skip while a full run works).
//! - `Embedding`: a re-embedding's switch-over holds it exclusively; search and embedding
//!   writes shared, so the model and column they read cannot change under them.
//! - `Pet`: one pet's photo clusters, updated by one transaction at a time.

use pgrx::prelude::*;
use pgrx::{pg_sys, PgOid, PgSqlErrorCode};

use crate::errors::{raise, spi};
use crate::plans::with_plan;

/// The first key of each kind ("geno" in ASCII, then +1, +2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKey {
    Collection = 0x6765_6e6f,
    Embedding = 0x6765_6e70,
    Pet = 0x6765_6e71,
    /// A catalog's feature refresh, training and ranker stages (since 0.7.0).
    Ranking = 0x6765_6e72,
}

impl LockKey {
    fn of(kind: &str) -> Option<LockKey> {
        match kind {
            "collection" => Some(LockKey::Collection),
            "embedding" => Some(LockKey::Embedding),
            "pet" => Some(LockKey::Pet),
            "ranking" => Some(LockKey::Ranking),
            _ => None,
        }
    }

    fn call(self, f: &str, name: &str) -> bool {
        // the waiting forms return void: a row means locked
        let call = format!("pg_catalog.{f}({}, pg_catalog.hashtext($1))", self as i32);
        let sql = if f.starts_with("pg_try") {
            format!("SELECT {call}")
        } else {
            format!("SELECT true FROM {call}")
        };
        let got = Spi::connect(|client| {
            with_plan(client, &sql, &[PgOid::from(pg_sys::TEXTOID)], |stmt| {
                let t = spi(
                    "taking an advisory lock",
                    client.select(stmt, None, &[name.into()]),
                );
                spi("taking an advisory lock", t.first().get::<bool>(1)).unwrap_or(false)
            })
        });
        got
    }

    /// Wait for the lock, exclusive, until the end of the transaction.
    pub fn lock(self, name: &str) {
        self.call("pg_advisory_xact_lock", name);
    }

    /// Wait for the lock, shared, until the end of the transaction.
    pub fn lock_shared(self, name: &str) {
        self.call("pg_advisory_xact_lock_shared", name);
    }

    /// Take the lock without waiting, exclusive or shared; false when another holds it.
    pub fn try_lock(self, name: &str, shared: bool) -> bool {
        let f = if shared {
            "pg_try_advisory_xact_lock_shared"
        } else {
            "pg_try_advisory_xact_lock"
        };
        self.call(f, name)
    }
}

/// The first advisory-lock key of a kind of job ('collection', 'embedding', 'pet').
#[pg_extern(immutable, parallel_safe)]
pub fn _lock_key(kind: &str) -> i32 {
    match LockKey::of(kind) {
        Some(k) => k as i32,
        None => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown lock kind \"{kind}\""),
            None,
        ),
    }
}
