//! `genome.embed(text)` and `genome.embed_batch(text[])`.

use pgrx::prelude::*;
use pgrx::{pg_sys, PgMemoryContexts};

use crate::models::{embed_by_length, embed_texts, resolve, ModelRow};
use crate::vector::Vector;

/// The model a call site resolved, kept in `fn_extra` for the rest of the statement so that
/// `UPDATE t SET e = genome.embed(body)` looks the model up once, not once per row.
struct CallSite {
    spec: Option<String>,
    row: ModelRow,
}

/// Never from a set-returning function: there `fn_extra` holds pgrx's `FuncCallContext`.
///
/// # Safety
/// `fcinfo` is the current call's (pgrx passes it to the `#[pg_extern]`): its `flinfo`, when not
/// NULL, is valid for the whole statement and owns `fn_extra` and `fn_mcxt`.
pub(crate) unsafe fn resolve_cached(
    fcinfo: pg_sys::FunctionCallInfo,
    spec: Option<&str>,
) -> ModelRow {
    unsafe {
        let flinfo = (*fcinfo).flinfo;
        if !flinfo.is_null() {
            let extra = (*flinfo).fn_extra as *mut CallSite;
            if !extra.is_null() && (*extra).spec.as_deref() == spec {
                return (*extra).row.clone();
            }
            let row = resolve(spec);
            let site = CallSite {
                spec: spec.map(str::to_string),
                row: row.clone(),
            };
            // Freed (and dropped) with the function's memory context at the end of the query.
            let ptr = PgMemoryContexts::For((*flinfo).fn_mcxt).leak_and_drop_on_delete(site);
            (*flinfo).fn_extra = ptr as *mut std::ffi::c_void;
            return row;
        }
    }
    resolve(spec)
}

/// Embed one text. NULL text gives NULL; NULL model means `genome.default_model`.
/// STABLE (not IMMUTABLE: the model behind a name can change), so that
/// `ORDER BY embedding <=> genome.embed('query')` can use a pgvector index.
#[pg_extern(stable, parallel_safe)]
fn embed(
    input: Option<&str>,
    model: default!(Option<&str>, "NULL"),
    fcinfo: pg_sys::FunctionCallInfo,
) -> Option<Vector> {
    let text = input?;
    // SAFETY: the fcinfo pgrx passed to this call
    let row = unsafe { resolve_cached(fcinfo, model) };
    // text models only: reads go through embed_sequence (collections' jobs take either)
    crate::models::require_task(&row, "text-embedding");
    let mut out = embed_texts(&row, &[text]);
    Some(Vector(out.pop().expect("one vector per text")))
}

/// Embed many texts, in order; NULL elements give NULL. The model runs `genome.batch_size`
/// texts at a time (texts of similar length together, which wastes less padding), and a
/// cancel (statement_timeout, pg_cancel_backend) is honoured between batches.
#[pg_extern(stable, parallel_safe)]
fn embed_batch(
    inputs: Option<Array<&str>>,
    model: default!(Option<&str>, "NULL"),
    fcinfo: pg_sys::FunctionCallInfo,
) -> Option<Vec<Option<Vector>>> {
    let inputs = inputs?;
    let texts: Vec<Option<&str>> = inputs.iter().collect();
    let present: Vec<usize> = (0..texts.len()).filter(|i| texts[*i].is_some()).collect();
    let mut result: Vec<Option<Vector>> = vec![None; texts.len()];
    if present.is_empty() {
        return Some(result);
    }
    // SAFETY: the fcinfo pgrx passed to this call
    let row = unsafe { resolve_cached(fcinfo, model) };
    crate::models::require_task(&row, "text-embedding");
    let slice: Vec<&str> = present.iter().map(|i| texts[*i].unwrap()).collect();
    for (i, v) in present.iter().zip(embed_by_length(&row, &slice)) {
        result[*i] = Some(Vector(v));
    }
    Some(result)
}
