//! SPI plans kept per backend (SPI_keepplan), by statement text: statements that run on every
//! call (search, locks) are parsed and planned once. PostgreSQL's plan cache replans a kept plan
//! when something it depends on changes (a table, a role for row-level security, search_path).

use std::cell::RefCell;
use std::collections::HashMap;

use std::ffi::CString;

use pgrx::pg_sys;
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

thread_local! {
    static FRESH: RefCell<HashMap<String, usize>> = RefCell::new(HashMap::new());
}

/// Run the kept plan of the query `sql` with a snapshot taken now, as a read-write statement
/// would, and map each row with `row` (column number -> datum, 1-based; None for NULL). For
/// reads that must see what committed while this call waited for a lock: pgrx runs statements
/// read-only until the transaction writes, and a read-only statement reuses the snapshot of the
/// statement that called us, taken before the lock. Call inside `Spi::connect`.
pub fn select_fresh<R>(
    sql: &str,
    argtypes: &[pg_sys::Oid],
    args: &[Option<pg_sys::Datum>],
    mut row: impl FnMut(&dyn Fn(usize) -> Option<pg_sys::Datum>) -> R,
) -> Vec<R> {
    let plan = FRESH.with(|p| {
        if let Some(plan) = p.borrow().get(sql) {
            return *plan as *mut pg_sys::_SPI_plan;
        }
        let c = CString::new(sql).expect("no NUL in a statement");
        let mut types = argtypes.to_vec();
        // SAFETY: SPI is connected (see above); the plan is kept in TopMemoryContext for reuse.
        let plan = unsafe {
            let plan = pg_sys::SPI_prepare(c.as_ptr(), types.len() as i32, types.as_mut_ptr());
            if plan.is_null() || pg_sys::SPI_keepplan(plan) != 0 {
                pgrx::error!("pg_genome: planning a statement failed: {sql}");
            }
            plan
        };
        p.borrow_mut().insert(sql.to_string(), plan as usize);
        plan
    });
    let mut values: Vec<pg_sys::Datum> = args
        .iter()
        .map(|a| a.unwrap_or(pg_sys::Datum::from(0usize)))
        .collect();
    let nulls: Vec<std::ffi::c_char> = args
        .iter()
        .map(|a| if a.is_some() { b' ' } else { b'n' } as std::ffi::c_char)
        .collect();
    let mut out = Vec::new();
    // SAFETY: a kept plan with args.len() parameters; the result table is read before the next
    // SPI call and freed after.
    unsafe {
        let rc = pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_ptr(), false, 0);
        if rc != pg_sys::SPI_OK_SELECT as i32 {
            pgrx::error!("pg_genome: a statement failed (SPI code {rc}): {sql}");
        }
        let tt = pg_sys::SPI_tuptable;
        for i in 0..pg_sys::SPI_processed as usize {
            let tup = *(*tt).vals.add(i);
            let desc = (*tt).tupdesc;
            let get = |col: usize| {
                let mut isnull = false;
                let d = pg_sys::SPI_getbinval(tup, desc, col as i32, &mut isnull);
                (!isnull).then_some(d)
            };
            out.push(row(&get));
        }
        pg_sys::SPI_freetuptable(tt);
    }
    out
}
