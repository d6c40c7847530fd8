//! SPI plans kept per backend (SPI_keepplan), by statement text: statements that run on every
//! call (search, locks) are parsed and planned once. PostgreSQL's plan cache replans a kept plan
//! when something it depends on changes (a table, a role for row-level security, search_path).

use std::cell::RefCell;
use std::collections::HashMap;

use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::PgOid;

use crate::errors::spi;

/// More distinct statements than this (collections x filters) start over.
const MAX_PLANS: usize = 256;

thread_local! {
    static PLANS: RefCell<HashMap<String, OwnedPreparedStatement>> = RefCell::new(HashMap::new());
}

/// Run `f` with the kept plan of `sql`, planned on first use with parameter types `types`.
pub fn with_plan<R>(
    client: &SpiClient<'_>,
    sql: &str,
    types: &[PgOid],
    f: impl FnOnce(&OwnedPreparedStatement) -> R,
) -> R {
    PLANS.with(|p| {
        if !p.borrow().contains_key(sql) {
            let stmt = spi("planning a statement", client.prepare(sql, types)).keep();
            let mut p = p.borrow_mut();
            if p.len() >= MAX_PLANS {
                p.clear();
            }
            p.insert(sql.to_string(), stmt);
        }
        let p = p.borrow();
        f(&p[sql])
    })
}
