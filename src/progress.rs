//! Progress of long jobs, visible to other sessions while the job's transaction is still open:
//! a small array of slots in shared memory (pg_genome is always preloaded: `_PG_init` refuses
//! otherwise), and a NOTICE per stage for the caller. Read through the `genome.progress` view.

use pgrx::lwlock::PgLwLock;
use pgrx::prelude::*;
use pgrx::shmem::*;
use pgrx::{pg_shmem_init, pg_sys};

const SLOTS: usize = 32;
const TEXT: usize = 64;

#[derive(Copy, Clone)]
#[repr(C)]
pub struct Slot {
    pid: i32,
    started_us: i64,
    stage_started_us: i64,
    done: i64,
    total: i64,
    /// Steps of the stage (epochs, rounds) when its rows are not what measures it.
    steps_done: i64,
    steps_total: i64,
    /// When the stage reported its first step (its set-up before that is not paced by steps).
    steps_started_us: i64,
    job: [u8; 32],
    collection: [u8; TEXT],
    stage: [u8; 32],
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            pid: 0,
            started_us: 0,
            stage_started_us: 0,
            done: 0,
            total: 0,
            steps_done: 0,
            steps_total: 0,
            steps_started_us: 0,
            job: [0; 32],
            collection: [0; TEXT],
            stage: [0; 32],
        }
    }
}

#[derive(Copy, Clone)]
pub struct Slots([Slot; SLOTS]);
impl Default for Slots {
    fn default() -> Self {
        Self([Slot::default(); SLOTS])
    }
}
unsafe impl PGRXSharedMemory for Slots {}

static PROGRESS: PgLwLock<Slots> = unsafe { PgLwLock::new(c"pg_genome_progress") };

/// From _PG_init, while shared_preload_libraries is processed (the only time an extension may
/// ask for shared memory; _PG_init refuses to load otherwise).
pub fn init() {
    pg_shmem_init!(PROGRESS);
}

fn put(dst: &mut [u8], s: &str) {
    dst.fill(0);
    let mut n = s.len().min(dst.len() - 1);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

fn get(src: &[u8]) -> String {
    let end = src.iter().position(|b| *b == 0).unwrap_or(src.len());
    String::from_utf8_lossy(&src[..end]).into_owned()
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A claimed slot; cleared on drop, which also runs when an ERROR unwinds the job.
pub struct Progress {
    slot: Option<usize>,
    job: &'static str,
    collection: String,
}

impl Progress {
    pub fn start(job: &'static str, collection: &str) -> Self {
        let mut p = Progress {
            slot: None,
            job,
            collection: collection.to_string(),
        };
        {
            let pid = unsafe { pg_sys::MyProcPid };
            let mut g = PROGRESS.exclusive();
            // our own stale slot first (an earlier job of this backend), else a free one
            let idx =
                g.0.iter()
                    .position(|s| s.pid == pid)
                    .or_else(|| g.0.iter().position(|s| s.pid == 0));
            if let Some(i) = idx {
                let s = &mut g.0[i];
                *s = Slot::default();
                s.pid = pid;
                s.started_us = now_us();
                put(&mut s.job, job);
                put(&mut s.collection, collection);
                p.slot = Some(i);
            }
        }
        p
    }

    /// Enter a stage: a NOTICE for the caller, the slot for everyone else.
    pub fn stage(&mut self, stage: &str, total: i64) {
        notice!(
            "pg_genome: {} \"{}\": {}{}",
            self.job,
            self.collection,
            stage,
            if total > 0 {
                format!(" ({total} rows)")
            } else {
                String::new()
            }
        );
        if let Some(i) = self.slot {
            let mut g = PROGRESS.exclusive();
            let s = &mut g.0[i];
            put(&mut s.stage, stage);
            s.stage_started_us = now_us();
            s.done = 0;
            s.total = total;
            s.steps_done = 0;
            s.steps_total = 0;
        }
    }

    /// Steps of a stage that rows do not measure (layout epochs, kNN rounds): `done` of `total`.
    pub fn steps(&mut self, done: i64, total: i64) {
        if let Some(i) = self.slot {
            let mut g = PROGRESS.exclusive();
            let s = &mut g.0[i];
            if s.steps_total == 0 {
                s.steps_started_us = now_us();
            }
            s.steps_done = done;
            s.steps_total = total;
        }
    }

    pub fn advance(&mut self, done: i64) {
        if let Some(i) = self.slot {
            PROGRESS.exclusive().0[i].done = done;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(i) = self.slot.take() {
            PROGRESS.exclusive().0[i] = Slot::default();
        }
    }
}

/// How far the stage has got: its steps when it counts them, else its rows; None when it
/// reports neither (a stage that is one step).
fn stage_fraction(s: &Slot) -> Option<f64> {
    if s.steps_total > 0 {
        Some(s.steps_done as f64 / s.steps_total as f64)
    } else if s.total > 0 && s.done > 0 {
        Some((s.done as f64 / s.total as f64).min(1.0))
    } else {
        None
    }
}

/// The raw slots; `genome.progress` joins them with pg_stat_activity. A stage's time left is
/// estimated from its pace so far: its seconds (since its first step, when it counts steps)
/// x (1 - fraction) / fraction.
#[pg_extern(volatile, parallel_safe)]
pub fn progress_slots() -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(job, String),
        name!(collection, String),
        name!(stage, String),
        name!(done, i64),
        name!(total, i64),
        name!(running_seconds, f64),
        name!(stage_seconds, f64),
        name!(stage_fraction, Option<f64>),
        name!(stage_seconds_left, Option<f64>),
    ),
> {
    let mut rows = Vec::new();
    {
        let now = now_us();
        for s in PROGRESS.share().0.iter().filter(|s| s.pid != 0) {
            let stage_seconds = (now - s.stage_started_us) as f64 / 1e6;
            let fraction = stage_fraction(s);
            // paced from the first step when the stage counts steps (its set-up before that,
            // e.g. the layout's initialisation, is not part of the pace)
            let paced = if s.steps_total > 0 {
                (now - s.steps_started_us) as f64 / 1e6
            } else {
                stage_seconds
            };
            rows.push((
                s.pid,
                get(&s.job),
                get(&s.collection),
                get(&s.stage),
                s.done,
                s.total,
                (now - s.started_us) as f64 / 1e6,
                stage_seconds,
                fraction,
                fraction.filter(|f| *f > 0.0).map(|f| paced * (1.0 - f) / f),
            ));
        }
    }
    TableIterator::new(rows)
}
