//! The shared inference service: `genome.inference_workers` background workers per database
//! hold one copy of each ONNX model and run the backends' requests, batched across backends.
//!
//! # Design
//! - **Queue**: a fixed array of `genome.inference_queue_size` request slots in shared memory
//!   (allocated at server start, 1 MiB of payload each, nothing when `inference_workers = 0`).
//!   A slot moves FREE -> FILLING (a backend claimed it and writes the request) -> PENDING ->
//!   RUNNING (a worker claimed it) -> DONE or FAILED (the worker wrote the vectors or an error)
//!   -> FREE (the backend read them). Every move is a compare-and-swap on the slot's state, so no
//!   lock is held while a request is written, run or read; the payload is written before the
//!   state is published (release) and read after it is seen (acquire). The state word carries a
//!   generation bumped by each claim, so a move decided on an earlier look (a sweep freeing the
//!   slot of a backend that has gone) cannot hit a later request of the same slot.
//! - **Waking**: a backend sets the latches of its database's workers after publishing; a worker
//!   sets the latch of the backend whose request it finished. Both wait on their own latch with
//!   a timeout, so nothing is lost to a race: a missed wake-up costs at most the timeout.
//! - **Batching**: a worker takes the oldest pending request, waits up to
//!   `genome.inference_max_wait` after its arrival for more requests of the same model row
//!   version (unless `genome.inference_max_batch` items are already there, or as many requests
//!   as its previous batch held: the clients sending now; a lone client does not wait), claims
//!   them, runs
//!   them as one model call (texts grouped by token length inside it, at most
//!   `MAX_RUN_TOKENS` padded tokens a run, see genome-core's `length_groups`) and scatters the
//!   vectors back. A batch of several texts runs as one single-threaded session per worker
//!   thread, the runs dealt among them and run at once (each part padded as its whole run, so
//!   the vectors have the bits one session gives); the sessions share one copy of the weights
//!   (genome-core's `embed::weights`). A lone text runs in the main session on every thread.
//!   Large batches (default 128) and the parallel sessions are what lets the worker keep up
//!   with one backend per core (benches/README.md).
//! - **Back-pressure**: a backend that finds no free slot waits for one (cancellable); memory
//!   never grows with the load.
//! - **Faults**: a backend waits in a loop that checks, every 20 ms, that the worker running its
//!   request is still registered (a worker clears its entry when it exits), so a terminated
//!   worker gives an ERROR at once; the launcher starts a new worker within a second. A cancel
//!   (or statement_timeout) withdraws a pending request, or marks a running one abandoned (the
//!   worker frees it when done). A worker frees the finished slots of backends that have gone.
//! - **Models**: a request names the model row (id and `xmin:ctid` version) the backend
//!   resolved; the worker loads the row through the same per-process cache as a backend, so an
//!   updated or re-registered row is reloaded as the local cache does. A version the worker cannot
//!   see (the backend's snapshot is older or newer) runs in the backend instead.
//! - **Switch**: `genome.inference = local | shared | auto`. auto uses the workers when one serves
//!   this database with the session's execution provider, model memory limit and ONNX Runtime
//!   library (a session that sets its own runs its models itself); local is the in-process path, the
//!   reference. A worker runs `genome.inference_threads` intra-op threads (default one per
//!   core: the backends that wait for it use none).

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ndarray::Array3;
use pgrx::bgworkers::*;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::errors::raise;
use crate::gucs;
use crate::models::ModelRow;

/// Payload bytes of one request slot: the texts (or image tensors) in, the vectors out.
pub const SLOT_BYTES: usize = 1 << 20;
pub const MAX_WORKERS: usize = 64;
const MSG_BYTES: usize = 480;
const HINT_BYTES: usize = 256;
const VERSION_BYTES: usize = 64;

const FREE: u32 = 0;
const FILLING: u32 = 1;
const PENDING: u32 = 2;
const RUNNING: u32 = 3;
const DONE: u32 = 4;
const FAILED: u32 = 5;
const ABANDONED: u32 = 6;

const KIND_TEXT: u32 = 1;
const KIND_IMAGE: u32 = 2;

/// Failure kinds a worker reports.
const ERR_ERROR: u32 = 1;
/// The worker cannot see the row version asked for: run it in the backend.
const ERR_STALE: u32 = 2;

#[repr(C)]
struct WorkerInfo {
    pid: AtomicI32,
    procno: AtomicI32,
    dboid: AtomicU32,
    /// 0 cpu, 1 cuda
    provider: AtomicU32,
    threads: AtomicU32,
    /// genome.model_memory_limit (MB) of the worker's runtime
    memory_mb: AtomicI32,
    /// a hash of the worker's genome.onnxruntime_library
    library: AtomicU64,
    batches: AtomicU64,
    items: AtomicU64,
    started_us: AtomicI64,
}

/// A slot's state word: the state in its low 8 bits, above them a generation that each claim of
/// the slot bumps. A move decided on what a process saw of a slot it does not own (a worker's
/// sweep of slots whose backend has gone) compares the whole word, so it cannot land on a later
/// request that reached the same state in between.
#[repr(transparent)]
struct SlotState(AtomicU32);

const STATE_BITS: u32 = 0xff;

impl SlotState {
    /// The state, without its generation.
    fn get(&self) -> u32 {
        self.0.load(Ordering::Acquire) & STATE_BITS
    }

    /// The whole word (state and generation), for [`SlotState::cas_seen`].
    fn word(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }

    /// `from` -> `to` within the slot's current generation.
    fn cas(&self, from: u32, to: u32) -> bool {
        let w = self.word();
        w & STATE_BITS == from && self.cas_seen(w, to)
    }

    /// To `to` only if the word is still `seen`: nothing claimed or moved the slot since.
    fn cas_seen(&self, seen: u32, to: u32) -> bool {
        self.0
            .compare_exchange(
                seen,
                (seen & !STATE_BITS) | to,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// FREE -> FILLING in the next generation.
    fn claim(&self) -> bool {
        let w = self.word();
        w & STATE_BITS == FREE
            && self
                .0
                .compare_exchange(
                    w,
                    (w.wrapping_add(STATE_BITS + 1) & !STATE_BITS) | FILLING,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

#[repr(C)]
struct Slot {
    state: SlotState,
    worker_pid: AtomicI32,
    kind: u32,
    owner_pid: i32,
    owner_procno: i32,
    dboid: u32,
    seq: u64,
    enqueued_us: i64,
    model_id: i64,
    version_len: u32,
    version: [u8; VERSION_BYTES],
    n: u32,
    dim: u32,
    len: u32,
    err_kind: u32,
    sqlstate: [u8; 5],
    msg_len: u32,
    msg: [u8; MSG_BYTES],
    hint_len: u32,
    hint: [u8; HINT_BYTES],
}

#[repr(C)]
struct Header {
    nslots: u32,
    seq: AtomicU64,
    workers: [WorkerInfo; MAX_WORKERS],
}

static mut SHARED: *mut u8 = std::ptr::null_mut();
static mut PREV_REQUEST: Option<unsafe extern "C-unwind" fn()> = None;
static mut PREV_STARTUP: Option<unsafe extern "C-unwind" fn()> = None;

fn nslots_setting() -> usize {
    gucs::INFERENCE_QUEUE_SIZE.get().max(2) as usize
}

fn slots_offset() -> usize {
    std::mem::size_of::<Header>().next_multiple_of(64)
}

fn data_offset(nslots: usize) -> usize {
    (slots_offset() + nslots * std::mem::size_of::<Slot>()).next_multiple_of(4096)
}

fn total_size(nslots: usize) -> usize {
    data_offset(nslots) + nslots * SLOT_BYTES
}

/// From _PG_init (preloading): ask for the queue's shared memory when workers are configured.
pub fn init() {
    if gucs::INFERENCE_WORKERS.get() <= 0 {
        return;
    }
    // SAFETY: _PG_init runs once in the postmaster, before any other process exists.
    unsafe {
        PREV_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(on_request);
        PREV_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(on_startup);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_request() {
    // SAFETY: PostgreSQL calls the hook chain once in the postmaster.
    unsafe {
        if let Some(prev) = PREV_REQUEST {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(total_size(nslots_setting()));
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_startup() {
    // SAFETY: called by the postmaster (and again after a crash restart) with shared memory up;
    // AddinShmemInitLock (MainLWLockArray[21]) serialises the initialisation as pgrx does.
    unsafe {
        if let Some(prev) = PREV_STARTUP {
            prev();
        }
        let n = nslots_setting();
        let lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let p = pg_sys::ShmemInitStruct(
            c"pg_genome inference queue".as_ptr(),
            total_size(n),
            &mut found,
        ) as *mut u8;
        if !found {
            std::ptr::write_bytes(p, 0, data_offset(n));
            (*(p as *mut Header)).nslots = n as u32;
        }
        SHARED = p;
        pg_sys::LWLockRelease(lock);
    }
}

fn header() -> Option<&'static Header> {
    // SAFETY: SHARED is set once at startup (inherited by fork) and points at a Header.
    unsafe {
        let p = SHARED;
        (!p.is_null()).then(|| &*(p as *const Header))
    }
}

fn slot_ptr(i: usize) -> *mut Slot {
    // SAFETY: i < nslots (callers iterate over header().nslots)
    unsafe { SHARED.add(slots_offset() + i * std::mem::size_of::<Slot>()) as *mut Slot }
}

fn slot(i: usize) -> &'static Slot {
    // SAFETY: see slot_ptr; the atomics inside are shared, plain fields are read only by the
    // side that owns the slot's current state.
    unsafe { &*slot_ptr(i) }
}

fn data(i: usize) -> *mut u8 {
    let n = header().map_or(0, |h| h.nslots as usize);
    // SAFETY: i < nslots
    unsafe { SHARED.add(data_offset(n) + i * SLOT_BYTES) }
}

fn now_us() -> i64 {
    // SAFETY: a plain clock read
    unsafe { pg_sys::GetCurrentTimestamp() }
}

fn set_latch_of(procno: i32) {
    if procno < 0 {
        return;
    }
    // SAFETY: procno is a PGPROC index written by that process; setting the latch of a process
    // that has gone (or of its successor) is harmless.
    unsafe {
        pg_sys::SetLatch(&mut (*(*pg_sys::ProcGlobal).allProcs.add(procno as usize)).procLatch)
    };
}

fn wait_latch(timeout: Duration) {
    // SAFETY: our own latch
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout.as_millis().max(1) as _,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
}

fn my_db() -> u32 {
    // SAFETY: a plain global of this backend
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

/// Is a worker with this pid registered (it clears its entry when it exits)?
fn worker_alive(h: &Header, pid: i32) -> bool {
    pid != 0
        && h.workers
            .iter()
            .any(|w| w.pid.load(Ordering::Acquire) == pid)
}

/// FNV-1a of the session's genome.onnxruntime_library, as resolved.
fn library_hash() -> u64 {
    gucs::onnxruntime_library()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
}

fn provider_code(p: gucs::Provider) -> u32 {
    match p {
        gucs::Provider::Cpu => 0,
        gucs::Provider::Cuda => 1,
    }
}

/// The workers serving this database with the session's execution provider, model memory limit
/// and ONNX Runtime library (procnos), and whether any serves it at all.
fn serving_workers(h: &Header) -> (Vec<i32>, bool) {
    let db = my_db();
    let provider = provider_code(gucs::EXECUTION_PROVIDER.get());
    let library = library_hash();
    let mut any = false;
    let mut matching = Vec::new();
    for w in &h.workers {
        if w.pid.load(Ordering::Acquire) != 0 && w.dboid.load(Ordering::Acquire) == db {
            any = true;
            if w.provider.load(Ordering::Relaxed) == provider
                && w.memory_mb.load(Ordering::Relaxed) == gucs::MODEL_MEMORY_LIMIT.get()
                && w.library.load(Ordering::Relaxed) == library
            {
                matching.push(w.procno.load(Ordering::Relaxed));
            }
        }
    }
    (matching, any)
}

/// The most texts one request to the workers carries (`genome.inference_max_batch`) when this
/// session's calls of `row` would go to them; None when they run in the backend.
pub fn shared_batch(row: &ModelRow) -> Option<usize> {
    if gucs::INFERENCE.get() == gucs::Inference::Local || crate::sequences::is_kmer(row) {
        return None;
    }
    let h = header()?;
    (!serving_workers(h).0.is_empty()).then(|| gucs::INFERENCE_MAX_BATCH.get().max(1) as usize)
}

/// What a backend asks a worker to run.
pub enum Items<'a> {
    Texts(&'a [&'a str]),
    Images(&'a [Array3<f32>]),
}

impl Items<'_> {
    fn len(&self) -> usize {
        match self {
            Items::Texts(t) => t.len(),
            Items::Images(i) => i.len(),
        }
    }

    /// Bytes item `i` takes in a request.
    fn size(&self, i: usize) -> usize {
        match self {
            Items::Texts(t) => 4 + t[i].len(),
            Items::Images(im) => 12 + 4 * im[i].len(),
        }
    }
}

fn no_worker(why: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("genome.inference = shared, but {why}"),
        Some(
            "start the workers (genome.inference_workers > 0 and this database in genome.worker_databases, then restart), \
             or SET genome.inference = auto or local"
                .into(),
        ),
    )
}

/// Run `items` through the inference workers when genome.inference says so: the vectors in
/// order, or None where the backend must run them itself (local or auto without a worker, a
/// request too large for a slot, a row version the workers cannot see). shared without a worker
/// is an ERROR.
pub fn embed_shared(row: &ModelRow, items: Items) -> Option<Vec<Vec<f32>>> {
    let mode = gucs::INFERENCE.get();
    if mode == gucs::Inference::Local {
        return None;
    }
    let shared = mode == gucs::Inference::Shared;
    let Some(h) = header() else {
        if shared {
            no_worker("this server runs no inference workers (genome.inference_workers = 0)");
        }
        return None;
    };
    let (workers, any) = serving_workers(h);
    if workers.is_empty() {
        if shared {
            no_worker(if any {
                "the inference workers of this database run another execution provider, model memory limit or ONNX Runtime library than this session"
            } else {
                "no inference worker is running for this database"
            });
        }
        return None;
    }
    if items.len() == 0 {
        return Some(Vec::new());
    }
    let dim = row.dimension.max(1) as usize;
    let max_batch = gucs::INFERENCE_MAX_BATCH.get().max(1) as usize;
    // requests of at most max_batch items whose payload and vectors fit a slot
    let mut chunks: Vec<std::ops::Range<usize>> = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for i in 0..items.len() {
        let s = items.size(i);
        if s > SLOT_BYTES || 4 * dim > SLOT_BYTES {
            // one item alone does not fit: the backend runs the call
            return None;
        }
        let n = i - start;
        if n > 0 && (n >= max_batch || bytes + s > SLOT_BYTES || 4 * dim * (n + 1) > SLOT_BYTES) {
            chunks.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += s;
    }
    chunks.push(start..items.len());
    let mut out = Vec::with_capacity(items.len());
    for r in chunks {
        match request(h, row, &items, r, &workers, shared) {
            Some(v) => out.extend(v),
            None => return None,
        }
    }
    crate::metrics::record_inference_request(true, items.len());
    Some(out)
}

/// A claimed slot; dropped before its reply was read (an ERROR, a cancel), it withdraws the
/// request or leaves it to the worker to free.
struct Claim(usize);

thread_local! {
    /// The slots this backend holds now, and whether its exit callback is registered.
    static CLAIMS: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
    static EXIT_HOOK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A backend that exits while it waits (terminated: FATAL unwinds nothing) lets go of its slots,
/// so that a worker running its request stops it and frees the slot.
unsafe extern "C-unwind" fn release_claims(_code: i32, _arg: pg_sys::Datum) {
    for i in CLAIMS.with(|c| std::mem::take(&mut *c.borrow_mut())) {
        let_go(i);
    }
}

/// Withdraw a request (pending: FREE) or leave it to its worker (running: ABANDONED); a
/// finished one is freed.
fn let_go(i: usize) {
    let s = slot(i);
    loop {
        let st = s.state.get();
        let next = match st {
            FILLING | PENDING | DONE | FAILED => FREE,
            RUNNING => ABANDONED,
            _ => return,
        };
        if s.state.cas(st, next) {
            return;
        }
    }
}

impl Claim {
    fn new(i: usize) -> Claim {
        if !EXIT_HOOK.with(|h| h.replace(true)) {
            // SAFETY: registers a callback of this library for this process's exit
            unsafe { pg_sys::on_shmem_exit(Some(release_claims), pg_sys::Datum::from(0)) };
        }
        CLAIMS.with(|c| c.borrow_mut().push(i));
        Claim(i)
    }

    /// The slot was freed by someone else (a lost worker's request): nothing to let go of.
    fn forget(self) {
        CLAIMS.with(|c| c.borrow_mut().retain(|&j| j != self.0));
        std::mem::forget(self);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        CLAIMS.with(|c| c.borrow_mut().retain(|&j| j != self.0));
        let_go(self.0);
    }
}

/// Claim a free slot, waiting (cancellably) while the queue is full.
fn claim(h: &Header) -> Claim {
    let n = h.nslots as usize;
    // SAFETY: a plain global of this backend
    let start = unsafe { pg_sys::MyProcPid } as usize % n;
    loop {
        for k in 0..n {
            let i = (start + k) % n;
            if slot(i).state.claim() {
                return Claim::new(i);
            }
        }
        pg_sys::check_for_interrupts!();
        wait_latch(Duration::from_millis(1));
    }
}

fn request(
    h: &Header,
    row: &ModelRow,
    items: &Items,
    range: std::ops::Range<usize>,
    workers: &[i32],
    shared: bool,
) -> Option<Vec<Vec<f32>>> {
    let c = claim(h);
    let i = c.0;
    let n = range.len();
    // SAFETY: the slot is ours (FILLING) until we publish it as PENDING.
    unsafe {
        let p = slot_ptr(i);
        let d = data(i);
        let mut off = 0usize;
        let mut put = |b: &[u8]| {
            std::ptr::copy_nonoverlapping(b.as_ptr(), d.add(off), b.len());
            off += b.len();
        };
        for k in range.clone() {
            match items {
                Items::Texts(t) => {
                    put(&(t[k].len() as u32).to_le_bytes());
                    put(t[k].as_bytes());
                }
                Items::Images(im) => {
                    let (a, b, cc) = im[k].dim();
                    for x in [a, b, cc] {
                        put(&(x as u32).to_le_bytes());
                    }
                    let std = im[k].as_standard_layout();
                    let floats = std.as_slice().expect("standard layout");
                    put(std::slice::from_raw_parts(
                        floats.as_ptr() as *const u8,
                        floats.len() * 4,
                    ));
                }
            }
        }
        (*p).kind = match items {
            Items::Texts(_) => KIND_TEXT,
            Items::Images(_) => KIND_IMAGE,
        };
        (*p).owner_pid = pg_sys::MyProcPid;
        (*p).owner_procno = (*pg_sys::MyProc).pgprocno;
        (*p).dboid = my_db();
        (*p).seq = h.seq.fetch_add(1, Ordering::Relaxed);
        (*p).enqueued_us = now_us();
        (*p).model_id = row.id;
        let v = row.row_version.as_bytes();
        let vl = v.len().min(VERSION_BYTES);
        (&mut (*p).version)[..vl].copy_from_slice(&v[..vl]);
        (*p).version_len = vl as u32;
        (*p).n = n as u32;
        (*p).dim = 0;
        (*p).len = off as u32;
        (*p).err_kind = 0;
        (*p).msg_len = 0;
        (*p).worker_pid.store(0, Ordering::Relaxed);
    }
    // FILLING is this backend's alone: nothing else moves it
    let published = slot(i).state.cas(FILLING, PENDING);
    debug_assert!(published);
    for &w in workers {
        set_latch_of(w);
    }
    let s = slot(i);
    let waited = Instant::now();
    loop {
        match s.state.get() {
            DONE => {
                // SAFETY: DONE: the worker wrote n x dim floats and let go of the slot.
                // SAFETY: read after DONE was seen
                let dim = unsafe { (*slot_ptr(i)).dim as usize };
                if dim == 0 || 4 * dim * n > SLOT_BYTES {
                    drop(c);
                    raise(
                        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                        format!("an inference worker answered {n} vectors of {dim} dimensions, which do not fit its slot"),
                        None,
                    );
                }
                let out = unsafe {
                    let f = data(i) as *const f32;
                    (0..n)
                        .map(|k| std::slice::from_raw_parts(f.add(k * dim), dim).to_vec())
                        .collect()
                };
                drop(c); // FREE
                return Some(out);
            }
            FAILED => {
                // SAFETY: FAILED: the worker wrote the error and let go of the slot.
                let (kind, code, msg, hint) = unsafe {
                    let p = slot_ptr(i);
                    let ml = ((*p).msg_len as usize).min(MSG_BYTES);
                    let hl = ((*p).hint_len as usize).min(HINT_BYTES);
                    (
                        (*p).err_kind,
                        (*p).sqlstate,
                        String::from_utf8_lossy(&(&(*p).msg)[..ml]).into_owned(),
                        String::from_utf8_lossy(&(&(*p).hint)[..hl]).into_owned(),
                    )
                };
                drop(c);
                if kind == ERR_STALE {
                    return None;
                }
                // the worker's ERROR as it was raised (raise() puts the prefix back)
                let msg = msg.strip_prefix("pg_genome: ").unwrap_or(&msg).to_string();
                raise(
                    sqlstate(code),
                    msg,
                    Some(if hint.is_empty() {
                        "raised by a pg_genome inference worker".into()
                    } else {
                        hint
                    }),
                );
            }
            RUNNING => {
                let wp = s.worker_pid.load(Ordering::Acquire);
                if wp != 0 && !worker_alive(h, wp) {
                    let lost = s.state.cas(RUNNING, FREE);
                    if lost {
                        c.forget();
                        crate::metrics::record_inference_failure(true);
                        raise(
                            PgSqlErrorCode::ERRCODE_SYSTEM_ERROR,
                            format!("the pg_genome inference worker (pid {wp}) ended while running this request"),
                            Some("the request was not completed; a new worker starts within a second: retry, or SET genome.inference = local".into()),
                        );
                    }
                    continue;
                }
            }
            // no worker left to serve it (all ended): withdraw after a grace period
            PENDING
                if waited.elapsed() > Duration::from_millis(500)
                    && serving_workers(h).0.is_empty() =>
            {
                drop(c);
                if shared {
                    no_worker("no inference worker is running for this database now");
                }
                return None;
            }
            _ => {}
        }
        pg_sys::check_for_interrupts!();
        wait_latch(Duration::from_millis(20));
    }
}

fn sqlstate(code: [u8; 5]) -> PgSqlErrorCode {
    let c = |i: usize| (code[i].wrapping_sub(b'0') & 0x3f) as i32;
    let v = c(0) | (c(1) << 6) | (c(2) << 12) | (c(3) << 18) | (c(4) << 24);
    if v == 0 {
        return PgSqlErrorCode::ERRCODE_INTERNAL_ERROR;
    }
    PgSqlErrorCode::from(v)
}

fn sqlstate_text(e: PgSqlErrorCode) -> [u8; 5] {
    let v = e as i32;
    std::array::from_fn(|i| (((v >> (6 * i)) & 0x3f) as u8).wrapping_add(b'0'))
}

// ---- the worker ----

unsafe extern "C-unwind" fn clear_worker(_code: i32, arg: pg_sys::Datum) {
    // SAFETY: a plain global of this process
    let me = unsafe { pg_sys::MyProcPid };
    if let Some(h) = header() {
        let w = &h.workers[arg.value() % MAX_WORKERS];
        if w.pid
            .compare_exchange(me, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            w.dboid.store(0, Ordering::Release);
        }
    }
    // requests this worker held: their backends see it gone and raise the ERROR
    if let Some(h) = header() {
        for i in 0..h.nslots as usize {
            let s = slot(i);
            if s.worker_pid.load(Ordering::Acquire) == me {
                // SAFETY: read before the slot can be freed and reused
                let owner = unsafe { (*slot_ptr(i)).owner_procno };
                let _ = s.state.cas(ABANDONED, FREE);
                set_latch_of(owner);
            }
        }
    }
}

/// # Safety
/// Installed as a signal handler only; PostgreSQL's `die` is async-signal-safe.
unsafe extern "C-unwind" fn on_sigterm(signal: i32) {
    // SAFETY: called from a signal handler, as `die` is meant to be
    unsafe { pg_sys::die(signal) }
}

/// The inference worker's entry point (bgw_function_name); the argument is its index in the
/// workers table.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn genome_inference_worker_main(arg: pg_sys::Datum) {
    let index = arg.value() % MAX_WORKERS;
    IN_WORKER.store(true, Ordering::Relaxed);
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    // SIGTERM (pg_terminate_backend, shutdown): a model run stops at its next check and the
    // requests it held fail at once (clear_worker), then the process exits and is restarted.
    unsafe { pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(on_sigterm)) };
    let db = BackgroundWorker::get_extra().to_string();
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    let Some(h) = header() else {
        return;
    };
    apply_threads();
    // never wait long for a lock on the registry (see run_batch)
    // SAFETY: a core setting, for this process only
    unsafe {
        pg_sys::SetConfigOption(
            c"lock_timeout".as_ptr(),
            c"1s".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        )
    };
    // one snapshot per batch for reading the model row and loading it (as a backend's STABLE
    // call has): a row deleted between the two reads would otherwise look half there
    // SAFETY: a core setting, for this process only
    unsafe {
        pg_sys::SetConfigOption(
            c"default_transaction_isolation".as_ptr(),
            c"repeatable read".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        )
    };
    // SAFETY: plain globals of this process
    let (pid, procno) = unsafe { (pg_sys::MyProcPid, (*pg_sys::MyProc).pgprocno) };
    let w = &h.workers[index];
    // an entry still held by a live worker (a launcher restarted and started this index twice):
    // leave it to that one
    loop {
        match w
            .pid
            .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => break,
            // SAFETY: a lookup in the process array
            Err(other) if !unsafe { pg_sys::BackendPidGetProc(other) }.is_null() => {
                log!("pg_genome inference worker {index} for {db}: pid {other} already serves this entry; exiting");
                return;
            }
            Err(other) => {
                let _ = w
                    .pid
                    .compare_exchange(other, 0, Ordering::AcqRel, Ordering::Acquire);
            }
        }
    }
    unsafe { pg_sys::on_shmem_exit(Some(clear_worker), pg_sys::Datum::from(index)) };
    // the entry is ours: fill it, the database last (backends match on it)
    w.procno.store(procno, Ordering::Relaxed);
    publish_settings(w);
    w.batches.store(0, Ordering::Relaxed);
    w.items.store(0, Ordering::Relaxed);
    w.started_us.store(now_us(), Ordering::Relaxed);
    w.dboid.store(my_db(), Ordering::Release);
    log!("pg_genome inference worker {index} for {db} started");
    let mut last_sweep = Instant::now();
    loop {
        pg_sys::check_for_interrupts!();
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            apply_threads();
            publish_settings(w);
        }
        if !serve(h, w) {
            wait_latch(Duration::from_millis(1000));
        }
        if last_sweep.elapsed() > Duration::from_secs(1) {
            sweep(h);
            last_sweep = Instant::now();
        }
    }
}

/// What a backend's `auto` compares with its own session: the settings this worker runs its
/// models with (again after a reload of the configuration).
fn publish_settings(w: &WorkerInfo) {
    w.provider.store(
        provider_code(gucs::EXECUTION_PROVIDER.get()),
        Ordering::Relaxed,
    );
    w.threads.store(
        gucs::INTRA_OP_THREADS.get().max(1) as u32,
        Ordering::Relaxed,
    );
    w.memory_mb
        .store(gucs::MODEL_MEMORY_LIMIT.get(), Ordering::Relaxed);
    w.library.store(library_hash(), Ordering::Relaxed);
}

/// The worker's sessions use genome.inference_threads (one per core when 0): set as this
/// process's genome.intra_op_threads, which the model cache reads and reloads on a change.
fn apply_threads() {
    let n = match gucs::INFERENCE_THREADS.get() {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(64)),
        n => n.max(1) as usize,
    };
    let v = std::ffi::CString::new(n.to_string()).expect("digits");
    // SAFETY: a known setting of this library, set for this process only
    unsafe {
        pg_sys::SetConfigOption(
            c"genome.intra_op_threads".as_ptr(),
            v.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        )
    };
}

/// Free slots left by processes that have gone: finished requests whose backend ended, and
/// running ones of workers that ended without clearing them.
fn sweep(h: &Header) {
    let db = my_db();
    for i in 0..h.nslots as usize {
        let s = slot(i);
        let seen = s.state.word();
        let st = seen & STATE_BITS;
        // SAFETY: reads of fields written before the state was published; they belong to the
        // request of `seen` when the word is still `seen` at the swap below
        let (owner, sdb) = unsafe { ((*slot_ptr(i)).owner_pid, (*slot_ptr(i)).dboid) };
        if sdb != db {
            continue;
        }
        let owner_gone = unsafe { pg_sys::BackendPidGetProc(owner) }.is_null();
        let free = match st {
            DONE | FAILED => owner_gone,
            ABANDONED => !worker_alive(h, s.worker_pid.load(Ordering::Acquire)),
            // its worker ended and its backend too: nobody else will free it
            RUNNING => owner_gone && !worker_alive(h, s.worker_pid.load(Ordering::Acquire)),
            _ => false,
        };
        if free {
            // not if the slot was claimed or moved since it was looked at
            let _ = s.state.cas_seen(seen, FREE);
        }
    }
}

thread_local! {
    /// Requests in the worker's previous batch.
    static LAST_REQUESTS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The key requests are batched by: kind, model id and row version.
fn key_of(i: usize) -> (u32, i64, Vec<u8>) {
    // SAFETY: fields written before the slot was published as PENDING
    unsafe {
        let p = slot_ptr(i);
        let vl = ((*p).version_len as usize).min(VERSION_BYTES);
        ((*p).kind, (*p).model_id, (&(*p).version)[..vl].to_vec())
    }
}

/// Pending requests of this database, oldest first: (slot, seq, items).
fn pending(h: &Header) -> Vec<(usize, u64, usize)> {
    let db = my_db();
    let mut v: Vec<(usize, u64, usize)> = (0..h.nslots as usize)
        .filter(|&i| slot(i).state.get() == PENDING)
        // SAFETY: published fields
        .filter_map(|i| unsafe {
            let p = slot_ptr(i);
            ((*p).dboid == db).then(|| (i, (*p).seq, (*p).n as usize))
        })
        .collect();
    v.sort_by_key(|x| x.1);
    v
}

/// Gather, run and answer one batch; false when nothing was pending.
fn serve(h: &Header, w: &WorkerInfo) -> bool {
    let first = match pending(h).first() {
        Some(&(i, _, _)) => i,
        None => return false,
    };
    let key = key_of(first);
    let max_batch = gucs::INFERENCE_MAX_BATCH.get().max(1) as usize;
    let max_wait = Duration::from_secs_f64(gucs::INFERENCE_MAX_WAIT.get().max(0.0) / 1000.0);
    // SAFETY: published field
    let enqueued = unsafe { (*slot_ptr(first)).enqueued_us };
    // wait for more requests of the same model until the batch is full or max_wait has passed;
    // only when the previous batch gathered several requests (clients are sending at once: a
    // lone client's request runs at once instead of paying max_wait on every call), and
    // until as many requests are pending as the previous batch held (the clients sending now)
    let expected = LAST_REQUESTS.with(|c| c.get());
    if expected > 1 {
        loop {
            let same: Vec<usize> = pending(h)
                .iter()
                .filter(|p| key_of(p.0) == key)
                .map(|p| p.2)
                .collect();
            let items: usize = same.iter().sum();
            let age = Duration::from_micros((now_us() - enqueued).max(0) as u64);
            if items >= max_batch || same.len() >= expected || age >= max_wait {
                break;
            }
            wait_latch(max_wait - age);
            pg_sys::check_for_interrupts!();
        }
    }
    // claim in arrival order
    // SAFETY: a plain global of this process
    let me = unsafe { pg_sys::MyProcPid };
    let mut claimed: Vec<usize> = Vec::new();
    let mut items = 0usize;
    for (i, seq, n) in pending(h) {
        if key_of(i) != key || (!claimed.is_empty() && items + n > max_batch) {
            continue;
        }
        let s = slot(i);
        if !s.state.cas(PENDING, RUNNING) {
            continue;
        }
        // the slot may have been withdrawn and refilled since it was listed: the request won
        // must be the one listed (arrival number, database, model), else it goes back
        // SAFETY: RUNNING: fields written before it was published
        let same = unsafe { (*slot_ptr(i)).seq == seq && (*slot_ptr(i)).dboid == my_db() }
            && key_of(i) == key;
        if !same {
            if !s.state.cas(RUNNING, PENDING) {
                // withdrawn meanwhile (ABANDONED): nobody waits for it
                let _ = s.state.cas(ABANDONED, FREE);
            }
            continue;
        }
        // only the worker that won the slot names itself on it
        s.worker_pid.store(me, Ordering::Release);
        claimed.push(i);
        items += n;
    }
    if claimed.is_empty() {
        return true;
    }
    LAST_REQUESTS.with(|c| c.set(claimed.len()));
    let waited = Duration::from_micros((now_us() - enqueued).max(0) as u64);
    let t = Instant::now();
    *RUNNING_SLOTS.lock().unwrap_or_else(|e| e.into_inner()) = claimed.clone();
    let result = run_batch(&key, &claimed);
    RUNNING_SLOTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    let ran = t.elapsed();
    match result {
        Ok(vectors) => {
            // counted before the backends are answered: what they read next includes this batch
            w.batches.fetch_add(1, Ordering::Relaxed);
            w.items.fetch_add(items as u64, Ordering::Relaxed);
            crate::metrics::record_inference_batch(items, waited, ran);
            let mut k = 0;
            for &i in &claimed {
                // SAFETY: RUNNING slots are ours to write
                let n = unsafe { (*slot_ptr(i)).n as usize };
                let part = &vectors[k..k + n];
                k += n;
                let dim = part.first().map_or(0, |v| v.len());
                if 4 * dim * n > SLOT_BYTES {
                    // the registry's dimension understated the model's: the caller runs it
                    fail(
                        i,
                        &Failure::stale("the vectors do not fit the request slot"),
                    );
                    continue;
                }
                unsafe {
                    let f = data(i) as *mut f32;
                    for (j, v) in part.iter().enumerate() {
                        std::ptr::copy_nonoverlapping(v.as_ptr(), f.add(j * dim), dim);
                    }
                    (*slot_ptr(i)).dim = dim as u32;
                }
                finish(i, DONE);
            }
        }
        Err(f) => {
            if f.kind == ERR_ERROR {
                crate::metrics::record_inference_failure(false);
            }
            for &i in &claimed {
                fail(i, &f);
            }
        }
    }
    // a termination that stopped the run: exit now (the requests got their ERROR above)
    pg_sys::check_for_interrupts!();
    true
}

/// The longest prefix of `s` that fits `max` bytes, cut at a character boundary.
fn prefix(s: &str, max: usize) -> &[u8] {
    let mut l = s.len().min(max);
    while !s.is_char_boundary(l) {
        l -= 1;
    }
    &s.as_bytes()[..l]
}

fn fail(i: usize, f: &Failure) {
    // SAFETY: RUNNING slots are ours to write
    unsafe {
        let p = slot_ptr(i);
        let m = prefix(&f.message, MSG_BYTES);
        (&mut (*p).msg)[..m.len()].copy_from_slice(m);
        (*p).msg_len = m.len() as u32;
        let h = prefix(f.hint.as_deref().unwrap_or(""), HINT_BYTES);
        (&mut (*p).hint)[..h.len()].copy_from_slice(h);
        (*p).hint_len = h.len() as u32;
        (*p).err_kind = f.kind;
        (*p).sqlstate = sqlstate_text(f.code);
    }
    finish(i, FAILED);
}

/// Publish a result and wake the backend; an abandoned request is freed instead.
fn finish(i: usize, to: u32) {
    let s = slot(i);
    // SAFETY: RUNNING: ours; read before publishing (the backend may free it at once)
    let owner = unsafe { (*slot_ptr(i)).owner_procno };
    if !s.state.cas(RUNNING, to) {
        let _ = s.state.cas(ABANDONED, FREE);
        return;
    }
    set_latch_of(owner);
}

/// Why a batch failed: ERR_STALE (run it in the backend) or ERR_ERROR with the ERROR raised.
struct Failure {
    kind: u32,
    code: PgSqlErrorCode,
    message: String,
    hint: Option<String>,
}

impl Failure {
    fn stale(what: &str) -> Failure {
        Failure {
            kind: ERR_STALE,
            code: PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            message: what.into(),
            hint: None,
        }
    }
}

/// The slots of the batch running now: the run's stop check reads them.
static RUNNING_SLOTS: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

/// Whether this process is an inference worker (the model cache gives its runs [`worker_stop`]).
static IN_WORKER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn in_worker() -> bool {
    IN_WORKER.load(Ordering::Relaxed)
}

/// A worker's model run stops when the worker is interrupted (terminated) or when every request
/// in it has been withdrawn (their statements cancelled or timed out): a model that runs for
/// ever holds the worker only as long as someone waits for it. Polled by genome-core's watchdog
/// thread.
pub fn worker_stop() -> bool {
    if crate::errors::interrupt_pending() {
        return true;
    }
    let slots = RUNNING_SLOTS.lock().unwrap_or_else(|e| e.into_inner());
    !slots.is_empty() && slots.iter().all(|&i| slot(i).state.get() == ABANDONED)
}

/// Read the requests of `claimed` and run them as one model call, in a transaction (the model
/// row is read, and loaded when new, as a backend does).
fn run_batch(key: &(u32, i64, Vec<u8>), claimed: &[usize]) -> Result<Vec<Vec<f32>>, Failure> {
    let (kind, id, version) = key;
    let version = String::from_utf8_lossy(version).into_owned();
    BackgroundWorker::transaction(|| {
        let r = crate::queue::in_subtransaction_report(
            || {
                let Some(row) = crate::models::row_by_id(*id) else {
                    return Err(Failure::stale("model row not visible"));
                };
                if row.row_version != version {
                    return Err(Failure::stale("model row version not visible"));
                }
                let vectors = match *kind {
                    KIND_TEXT => {
                        let texts = read_texts(claimed);
                        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                        crate::models::embed_local(&row, &refs)
                    }
                    _ => {
                        let images = read_images(claimed);
                        crate::models::embed_images_local(&row, &images)
                    }
                };
                let n: usize = claimed
                    .iter()
                    // SAFETY: RUNNING slots are ours
                    .map(|&i| unsafe { (*slot_ptr(i)).n as usize })
                    .sum();
                if vectors.len() != n {
                    return Err(Failure {
                        kind: ERR_ERROR,
                        code: PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
                        message: format!("the model gave {} vectors for {n} inputs", vectors.len()),
                        hint: None,
                    });
                }
                Ok(vectors)
            },
            false,
        );
        match r {
            Ok(v) => v,
            // the registry is locked (an ALTER waiting behind the caller's own lock, which the
            // deadlock detector cannot see through the queue): the caller runs it itself
            Err(e) if e.code == PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE => {
                Err(Failure::stale(&e.message))
            }
            Err(e) => Err(Failure {
                kind: ERR_ERROR,
                code: e.code,
                message: e.message,
                hint: e.hint,
            }),
        }
    })
}

fn read_texts(claimed: &[usize]) -> Vec<String> {
    let mut out = Vec::new();
    for &i in claimed {
        // SAFETY: RUNNING slots are ours; lengths were written by the backend within the slot
        // (each checked against the payload length before use).
        unsafe {
            let p = slot_ptr(i);
            let d = std::slice::from_raw_parts(data(i), ((*p).len as usize).min(SLOT_BYTES));
            let mut off = 0;
            for _ in 0..(*p).n {
                let l = u32::from_le_bytes(d[off..off + 4].try_into().unwrap()) as usize;
                off += 4;
                out.push(String::from_utf8_lossy(&d[off..off + l]).into_owned());
                off += l;
            }
        }
    }
    out
}

fn read_images(claimed: &[usize]) -> Vec<Array3<f32>> {
    let mut out = Vec::new();
    for &i in claimed {
        // SAFETY: as read_texts
        unsafe {
            let p = slot_ptr(i);
            let d = std::slice::from_raw_parts(data(i), ((*p).len as usize).min(SLOT_BYTES));
            let mut off = 0;
            for _ in 0..(*p).n {
                let u = |o: usize| u32::from_le_bytes(d[o..o + 4].try_into().unwrap()) as usize;
                let (a, b, c) = (u(off), u(off + 4), u(off + 8));
                off += 12;
                let floats: Vec<f32> = d[off..off + 4 * a * b * c]
                    .chunks_exact(4)
                    .map(|x| f32::from_le_bytes(x.try_into().unwrap()))
                    .collect();
                off += 4 * a * b * c;
                out.push(Array3::from_shape_vec((a, b, c), floats).expect("shape of the payload"));
            }
        }
    }
    out
}

// ---- what health() shows ----

/// The inference service as `genome.health()` reports it: the mode, the queue and the workers.
#[pg_extern(volatile, parallel_safe, name = "_inference_info")]
fn inference_info() -> pgrx::JsonB {
    let mode = match gucs::INFERENCE.get() {
        gucs::Inference::Local => "local",
        gucs::Inference::Shared => "shared",
        gucs::Inference::Auto => "auto",
    };
    let Some(h) = header() else {
        return pgrx::JsonB(serde_json::json!({
            "mode": mode, "workers_per_database": 0, "workers": [], "queue": null,
            "path": "local",
        }));
    };
    let mut counts = [0usize; 7];
    for i in 0..h.nslots as usize {
        counts[(slot(i).state.get() as usize).min(6)] += 1;
    }
    let workers: Vec<serde_json::Value> = h
        .workers
        .iter()
        .filter(|w| w.pid.load(Ordering::Acquire) != 0)
        .map(|w| {
            serde_json::json!({
                "pid": w.pid.load(Ordering::Relaxed),
                "database_oid": w.dboid.load(Ordering::Relaxed),
                "provider": if w.provider.load(Ordering::Relaxed) == 1 { "cuda" } else { "cpu" },
                "intra_op_threads": w.threads.load(Ordering::Relaxed),
                // text models on the CPU: a batch's runs spread over one single-threaded
                // session per thread, sharing one copy of the weights
                "text_sessions": match (w.provider.load(Ordering::Relaxed), w.threads.load(Ordering::Relaxed)) {
                    (0, t) if t > 1 => t,
                    _ => 1,
                },
                "batches": w.batches.load(Ordering::Relaxed),
                "items": w.items.load(Ordering::Relaxed),
            })
        })
        .collect();
    let (serving, _) = serving_workers(h);
    let path = if mode == "local" || (mode == "auto" && serving.is_empty()) {
        "local"
    } else {
        "shared"
    };
    pgrx::JsonB(serde_json::json!({
        "mode": mode,
        "path": path,
        "workers_per_database": gucs::INFERENCE_WORKERS.get(),
        "workers": workers,
        "max_batch": gucs::INFERENCE_MAX_BATCH.get(),
        "max_wait_ms": gucs::INFERENCE_MAX_WAIT.get(),
        "queue": {
            "slots": h.nslots, "free": counts[FREE as usize],
            "pending": counts[PENDING as usize] + counts[FILLING as usize],
            "running": counts[RUNNING as usize] + counts[ABANDONED as usize],
            "done": counts[DONE as usize] + counts[FAILED as usize],
        },
    }))
}

/// Queue depth for metrics(): requests waiting for a worker, and those running.
pub fn queue_depth() -> Option<(usize, usize, usize)> {
    let h = header()?;
    let mut pending = 0;
    let mut running = 0;
    for i in 0..h.nslots as usize {
        match slot(i).state.get() {
            PENDING | FILLING => pending += 1,
            RUNNING | ABANDONED => running += 1,
            _ => {}
        }
    }
    let workers = h
        .workers
        .iter()
        .filter(|w| w.pid.load(Ordering::Acquire) != 0)
        .count();
    Some((pending, running, workers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_round_trip() {
        for e in [
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        ] {
            assert_eq!(sqlstate(sqlstate_text(e)), e);
        }
    }

    #[test]
    fn a_move_decided_on_an_earlier_look_misses_a_later_request() {
        let s = SlotState(AtomicU32::new(0));
        // one request's life: claimed, published, run, answered
        assert!(s.claim());
        assert!(!s.claim(), "a claimed slot cannot be claimed again");
        assert!(s.cas(FILLING, PENDING));
        assert!(s.cas(PENDING, RUNNING));
        assert!(s.cas(RUNNING, DONE));
        assert_eq!(s.get(), DONE);
        // a sweep looks at the finished slot ...
        let seen = s.word();
        // ... meanwhile its backend reads it, and another request goes through to DONE
        assert!(s.cas(DONE, FREE));
        assert!(s.claim());
        assert!(s.cas(FILLING, PENDING) && s.cas(PENDING, RUNNING) && s.cas(RUNNING, DONE));
        assert_eq!(s.get(), DONE);
        // the sweep's free lands on nothing: the later request's answer stays
        assert!(!s.cas_seen(seen, FREE));
        assert_eq!(s.get(), DONE);
        // a move on the current look does land
        assert!(s.cas_seen(s.word(), FREE));
        assert_eq!(s.get(), FREE);
        // the generation wraps without touching the state
        let s = SlotState(AtomicU32::new(!STATE_BITS | FREE));
        assert!(s.claim());
        assert_eq!(s.get(), FILLING);
        assert_eq!(s.word() & !STATE_BITS, 0);
    }
}
