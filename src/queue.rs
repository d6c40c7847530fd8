//! Background embedding: the workers that drain `genome.embed_queue_items`, their wake-up, and
//! `genome._runtime_info()` for `genome.health()`.
//!
//! The queue logic itself is SQL (`_embed_claim`, `_embed_process`, `_embed_recover` in
//! src/queue.sql: per-row subtransactions), so that a worker, `genome.process_embed_queue()` and the tests run the same
//! code. A worker is a loop of short transactions: put back rows of dead workers, claim a batch
//! (committed: the rows show as 'processing' with the worker's pid), embed and write it (second
//! transaction). Killed in between, its rows are found by the next loop of any worker.
//!
//! Waking: the queue triggers call `genome.wake_embed_workers()`, which sets the latches of the
//! database's workers when the writing transaction commits (before that, a worker would find
//! nothing to claim). Without new work a worker sleeps `genome.embed_worker_naptime`, which also
//! paces retries and the recovery of dead workers' rows.

use pgrx::bgworkers::*;
use pgrx::lwlock::PgLwLock;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::pg_sys::PgTryBuilder;
use pgrx::prelude::*;
use pgrx::shmem::*;
use pgrx::{
    pg_shmem_init, pg_sys, register_xact_callback, PgMemoryContexts, PgSqlErrorCode,
    PgXactCallbackEvent,
};
use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::errors::OrRaise;
use crate::gucs;

pub const MAX_WORKERS: usize = 64;
const RESTART_PAUSE: Duration = Duration::from_secs(5);

#[derive(Copy, Clone, Default)]
#[repr(C)]
struct Slot {
    pid: i32,
    dboid: u32,
    procno: i32,
}

#[derive(Copy, Clone)]
pub struct Slots([Slot; MAX_WORKERS]);
impl Default for Slots {
    fn default() -> Self {
        Self([Slot::default(); MAX_WORKERS])
    }
}
unsafe impl PGRXSharedMemory for Slots {}

static SLOTS: PgLwLock<Slots> = unsafe { PgLwLock::new(c"pg_genome_workers") };
thread_local! {
    static WAKE_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// From _PG_init (always preloading: it refuses otherwise), after the GUCs: shared memory and
/// the launcher.
pub fn init() {
    pg_shmem_init!(SLOTS);
    if (gucs::EMBED_WORKERS.get() <= 0 && gucs::INFERENCE_WORKERS.get() <= 0)
        || gucs::worker_databases().is_empty()
    {
        return;
    }
    // One static launcher; it starts the per-database workers as dynamic workers once their
    // database exists (a static worker for a missing database would fail and restart forever).
    BackgroundWorkerBuilder::new("pg_genome worker launcher")
        .set_type("pg_genome launcher")
        .set_library("pg_genome")
        .set_function("genome_worker_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// Keeps genome.embed_workers workers running in every database of genome.worker_databases that
/// exists; a worker that ends (terminated, error, its database dropped) is started again within
/// a second if its database is still there.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn genome_worker_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some("postgres"), None);
    // embed workers in 0..MAX_WORKERS, inference workers after them
    let mut running: Vec<Option<DynamicBackgroundWorker>> =
        (0..2 * MAX_WORKERS).map(|_| None).collect();
    // a worker that keeps failing is started again at most every RESTART_PAUSE
    let mut started: Vec<Option<Instant>> = vec![None; 2 * MAX_WORKERS];
    let mut first = true;
    while first || BackgroundWorker::wait_latch(Some(Duration::from_secs(1))) {
        first = false;
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let dbs = gucs::worker_databases();
        let per_db = gucs::EMBED_WORKERS.get().max(0) as usize;
        let present: Vec<String> = BackgroundWorker::transaction(|| {
            Spi::connect(|c| {
                let mut v = Vec::new();
                for r in c.select(
                    "SELECT datname::text FROM pg_database WHERE datallowconn AND datname = ANY($1)",
                    None,
                    &[dbs.clone().into()],
                )? {
                    v.extend(r.get::<String>(1)?);
                }
                Ok::<_, pgrx::spi::SpiError>(v)
            })
            .unwrap_or_default()
        });
        let kinds = [
            (0, per_db, "embed", "genome_embed_worker_main"),
            (
                MAX_WORKERS,
                gucs::INFERENCE_WORKERS.get().max(0) as usize,
                "inference",
                "genome_inference_worker_main",
            ),
        ];
        for (base, per_db, kind, function) in kinds {
            let mut index = 0usize;
            for db in &dbs {
                for i in 0..per_db {
                    if index >= MAX_WORKERS {
                        break;
                    }
                    let slot = base + index;
                    let alive = match running[slot].as_ref().map(|h| h.pid()) {
                        None => false,
                        Some(Ok(_)) | Some(Err(BackgroundWorkerStatus::NotYetStarted)) => true,
                        Some(Err(_)) => false,
                    };
                    let rested = started[slot].is_none_or(|t| t.elapsed() >= RESTART_PAUSE);
                    if !alive && rested && present.contains(db) {
                        started[slot] = Some(Instant::now());
                        let me = unsafe { pg_sys::MyProcPid };
                        // the handle must outlive this loop's transactions
                        running[slot] = unsafe {
                            PgMemoryContexts::TopMemoryContext.switch_to(|_| {
                                BackgroundWorkerBuilder::new(&format!(
                                    "pg_genome {kind} worker {i} for {db}"
                                ))
                                .set_type(&format!("pg_genome {kind} worker"))
                                .set_library("pg_genome")
                                .set_function(function)
                                .set_argument(Some(pg_sys::Datum::from(index)))
                                .set_extra(db)
                                .enable_spi_access()
                                .set_restart_time(None)
                                .set_notify_pid(me)
                                .load_dynamic()
                                .ok()
                            })
                        };
                    }
                    index += 1;
                }
            }
        }
    }
}

/// Ask this database's workers to look at the queue once the current transaction commits.
#[pg_extern(volatile, parallel_unsafe)]
fn wake_embed_workers() {
    if WAKE_REGISTERED.with(|w| w.replace(true)) {
        return;
    }
    register_xact_callback(PgXactCallbackEvent::Commit, || {
        WAKE_REGISTERED.with(|w| w.set(false));
        wake_now();
    });
    register_xact_callback(PgXactCallbackEvent::Abort, || {
        WAKE_REGISTERED.with(|w| w.set(false))
    });
}

fn wake_now() {
    let me = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let slots = SLOTS.share();
    for s in slots.0.iter().filter(|s| s.pid != 0 && s.dboid == me) {
        // Setting a latch is harmless even if that process is gone; the slot is cleared on exit.
        unsafe {
            pg_sys::SetLatch(
                &mut (*(*pg_sys::ProcGlobal).allProcs.add(s.procno as usize)).procLatch,
            )
        };
    }
}

unsafe extern "C-unwind" fn clear_slot(_code: i32, arg: pg_sys::Datum) {
    let i = arg.value();
    if i < MAX_WORKERS {
        SLOTS.exclusive().0[i] = Slot::default();
    }
}

fn log_line(fields: serde_json::Value) {
    // one JSON object per line: easy to grep and to ship to a log pipeline
    log!("pg_genome worker: {fields}");
}

/// # Safety
/// Installed as a signal handler only; PostgreSQL's `die` is async-signal-safe.
unsafe extern "C-unwind" fn on_sigterm(signal: i32) {
    // PostgreSQL's own handler for backends: sets ProcDiePending and the latch
    // SAFETY: called from a signal handler, as `die` is meant to be
    unsafe { pg_sys::die(signal) }
}

/// The worker's entry point (bgw_function_name).
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn genome_embed_worker_main(arg: pg_sys::Datum) {
    let slot = arg.value();
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    // SIGTERM (pg_terminate_backend, shutdown) as in a normal backend: it interrupts the batch at
    // the next CHECK_FOR_INTERRUPTS, the transaction aborts, the process exits and is restarted.
    unsafe { pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(on_sigterm)) };
    let db = BackgroundWorker::get_extra().to_string();
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    unsafe {
        SLOTS.exclusive().0[slot] = Slot {
            pid: pg_sys::MyProcPid,
            dboid: pg_sys::MyDatabaseId.to_u32(),
            procno: (*pg_sys::MyProc).pgprocno,
        };
        pg_sys::on_shmem_exit(Some(clear_slot), pg_sys::Datum::from(slot));
    }
    log_line(serde_json::json!({"event": "start", "database": db, "slot": slot}));
    let mut busy = false;
    loop {
        if !busy {
            let nap = gucs::EMBED_WORKER_NAPTIME.get().max(10) as i64;
            unsafe {
                pg_sys::WaitLatch(
                    pg_sys::MyLatch,
                    (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH)
                        as i32,
                    nap as _,
                    pg_sys::PG_WAIT_EXTENSION,
                );
                pg_sys::ResetLatch(pg_sys::MyLatch);
            }
        }
        pg_sys::check_for_interrupts!();
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        busy = step(&db);
    }
}

fn set_activity(what: &std::ffi::CStr, running: bool) {
    let state = if running {
        pg_sys::BackendState::STATE_RUNNING
    } else {
        pg_sys::BackendState::STATE_IDLE
    };
    unsafe { pg_sys::pgstat_report_activity(state, what.as_ptr()) };
}

/// One claim-and-embed round; true when a batch was processed (so look again at once).
fn step(db: &str) -> bool {
    let batch = gucs::EMBED_QUEUE_BATCH_SIZE.get().max(1);
    set_activity(c"pg_genome: claiming queued rows", true);
    let ids: Vec<i64> = BackgroundWorker::transaction(|| {
        // installed, and at a version with the queue (an older one waits for ALTER EXTENSION UPDATE)
        let installed = Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_genome') \
                    AND to_regprocedure('genome._embed_claim(integer)') IS NOT NULL",
        )
        .or_raise("checking that pg_genome is installed")
        .unwrap_or(false);
        if !installed {
            return Vec::new();
        }
        let _ = Spi::run("SELECT genome._embed_recover()");
        Spi::get_one_with_args::<Vec<i64>>("SELECT genome._embed_claim($1)", &[batch.into()])
            .or_raise("claiming queued rows")
            .unwrap_or_default()
    });
    if ids.is_empty() {
        set_activity(c"pg_genome: idle", false);
        return false;
    }
    set_activity(c"pg_genome: embedding a batch", true);
    let t = Instant::now();
    let out = BackgroundWorker::transaction(|| {
        let r = in_subtransaction(|| {
            Spi::get_one_with_args::<pgrx::JsonB>(
                "SELECT genome._embed_process($1)",
                &[ids.clone().into()],
            )
            .or_raise("embedding a batch")
        });
        match r {
            Ok(j) => j,
            Err(msg) => {
                // An ERROR outside _embed_process's own handling: the batch's rows fail with the
                // real message (and back off); the worker goes on with other collections.
                let _ = Spi::run_with_args(
                    "SELECT genome._embed_failed($1, $2)",
                    &[ids.clone().into(), format!("pg_genome: {msg}").into()],
                );
                Some(pgrx::JsonB(serde_json::json!([{
                    "collection": null, "target": null, "model": null, "rows": ids.len(),
                    "completed": 0, "failed": ids.len(), "error": msg,
                }])))
            }
        }
    });
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    for g in out
        .and_then(|j| j.0.as_array().cloned())
        .unwrap_or_default()
    {
        let completed = g["completed"].as_u64().unwrap_or(0);
        let failed = g["failed"].as_u64().unwrap_or(0);
        crate::metrics::record_worker_batch(completed, failed);
        log_line(serde_json::json!({
            "event": "embed_batch", "database": db, "collection": g["collection"], "target": g["target"],
            "model": g["model"], "batch_size": g["rows"], "completed": completed, "failed": failed,
            "embed_ms": g["embed_ms"], "latency_ms": (ms * 10.0).round() / 10.0, "error": g.get("error"),
        }));
    }
    set_activity(c"pg_genome: idle", false);
    true
}

/// Run `f` in a subtransaction, as a PL/pgSQL EXCEPTION block does: an ERROR inside rolls back
/// what `f` did and comes back as its message. A cancel or termination is not caught.
fn in_subtransaction<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    in_subtransaction_report(f, true).map_err(|e| e.message)
}

/// An ERROR caught by [`in_subtransaction_report`].
pub(crate) struct Caught {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub hint: Option<String>,
}

/// [`in_subtransaction`], with the ERROR's SQLSTATE and hint. With `rethrow_cancel` false, an
/// ERROR with the query-canceled code is caught too when this process has no interrupt pending
/// (an inference worker's run stopped because every request in it was withdrawn).
pub(crate) fn in_subtransaction_report<T>(
    f: impl FnOnce() -> T,
    rethrow_cancel: bool,
) -> Result<T, Caught> {
    let (cxt, owner) = unsafe { (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner) };
    unsafe {
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(cxt);
    }
    let restore = move || unsafe {
        pg_sys::MemoryContextSwitchTo(cxt);
        pg_sys::CurrentResourceOwner = owner;
    };
    PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
        let v = f();
        unsafe { pg_sys::ReleaseCurrentSubTransaction() };
        restore();
        Ok(v)
    }))
    .catch_others(|e| {
        let report = match &e {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
            CaughtError::RustPanic { ereport, .. } => ereport,
        };
        if (rethrow_cancel && report.sql_error_code() == PgSqlErrorCode::ERRCODE_QUERY_CANCELED)
            || crate::errors::interrupt_pending()
        {
            e.rethrow();
        }
        let caught = Caught {
            code: report.sql_error_code(),
            message: report.message().to_string(),
            hint: report.hint().map(str::to_string),
        };
        unsafe {
            pg_sys::MemoryContextSwitchTo(cxt);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        restore();
        Err(caught)
    })
    .execute()
}

/// What genome.health() reports about this backend's runtime and the worker settings.
#[pg_extern(volatile, name = "_runtime_info")]
fn runtime_info() -> pgrx::JsonB {
    let lib = gucs::onnxruntime_library();
    let (loaded, version, error, cap) = match crate::models::try_runtime() {
        Ok(r) => (
            true,
            Some(r.version.clone()),
            None,
            r.memory_limit.map(|b| b >> 20),
        ),
        Err(e) => (false, None, Some(e.to_string()), None),
    };
    pgrx::JsonB(serde_json::json!({
        "onnxruntime_library": lib,
        "onnxruntime_loaded": loaded,
        "onnxruntime_version": version,
        "onnxruntime_error": error,
        "execution_provider": gucs::provider_name(),
        "intra_op_threads": gucs::INTRA_OP_THREADS.get(),
        "model_memory_limit_mb": cap,
        // always so since 0.4.1 (_PG_init refuses to load otherwise); kept in the report's shape
        "preloaded": true,
        "counters": "shared memory (cluster-wide)",
        "embed_workers_per_database": gucs::EMBED_WORKERS.get(),
        "worker_databases": gucs::worker_databases(),
    }))
}

// The SQL objects of this capability, in their current shape: src/queue.sql.
extension_sql_file!(
    "queue.sql",
    name = "queue",
    requires = ["collections", wake_embed_workers]
);
