//! Stopping a model run from outside: ONNX Runtime's `RunOptions` terminate flag, set by a
//! watchdog thread when the host asks for it.
//!
//! A session run is one long C++ call: PostgreSQL's cancel, `statement_timeout` and
//! `pg_terminate_backend` only set flags, which the backend reads when the call returns. So every
//! run goes through [`run`]: while it is in flight, one watchdog thread per process polls the
//! host's check (the pgrx layer passes one that reads PostgreSQL's `QueryCancelPending` and
//! `ProcDiePending`) every [`POLL`] and, when it says so, sets the run's terminate flag. ONNX
//! Runtime then fails the run at its next kernel (inside `Loop`/`Scan`/`If` bodies too), and the
//! host raises its own cancel ERROR. The watchdog never calls into the host: it only reads flags.
#![allow(unsafe_code)] // pthread_sigmask for the watchdog thread

use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use ort::session::RunOptions;
use ort::session::{Session, SessionInputs, SessionOutputs};

use crate::{Error, Result};

/// How often a run in flight is checked.
pub const POLL: Duration = Duration::from_millis(20);

/// Tells whether the host wants the current run stopped. Called from the watchdog thread.
pub type StopCheck = fn() -> bool;

struct Watch {
    /// The runs in flight (several when a model runs as parallel sessions) and their checks.
    current: Mutex<Vec<(Arc<RunOptions>, StopCheck)>>,
    wake: Condvar,
}

static WATCH: OnceLock<Arc<Watch>> = OnceLock::new();

fn watch() -> &'static Arc<Watch> {
    WATCH.get_or_init(|| {
        let w = Arc::new(Watch {
            current: Mutex::new(Vec::new()),
            wake: Condvar::new(),
        });
        let w2 = Arc::clone(&w);
        spawn_without_signals(move || loop {
            let mut cur = w2.current.lock().unwrap_or_else(|p| p.into_inner());
            while cur.is_empty() {
                cur = w2.wake.wait(cur).unwrap_or_else(|p| p.into_inner());
            }
            for (opts, check) in cur.iter() {
                if check() {
                    let _ = opts.terminate();
                }
            }
            let (_cur, _) = w2
                .wake
                .wait_timeout(cur, POLL)
                .unwrap_or_else(|p| p.into_inner());
        });
        w
    })
}

/// Run `f` with every signal blocked in the calling thread, then restore the mask: a thread
/// started inside inherits the blocked mask, so the host's signal handlers stay on its own
/// thread.
pub fn without_signals<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: sigset_t is plain data; the mask is restored before returning
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let r = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

/// The host's signal handlers must run on its own thread: the watchdog blocks every signal.
fn spawn_without_signals(f: impl FnOnce() + Send + 'static) {
    without_signals(|| {
        std::thread::Builder::new()
            .name("genome-watchdog".into())
            .spawn(f)
    })
    .expect("starting the model-run watchdog thread");
}

/// Run `session` on `inputs` and hand the outputs to `f`; when `stop` says so while the run is
/// in flight, it fails with [`Error::Interrupted`].
pub fn run<'i, 'v: 'i, const N: usize, R>(
    session: &mut Session,
    inputs: impl Into<SessionInputs<'i, 'v, N>>,
    stop: Option<StopCheck>,
    f: impl FnOnce(SessionOutputs<'_>) -> Result<R>,
) -> Result<R> {
    let Some(check) = stop else {
        let out = session
            .run(inputs)
            .map_err(|e| Error::Inference(e.to_string()))?;
        return f(out);
    };
    if check() {
        return Err(Error::Interrupted);
    }
    let opts = Arc::new(RunOptions::new().map_err(|e| Error::Inference(e.to_string()))?);
    let w = watch();
    {
        let mut cur = w.current.lock().unwrap_or_else(|p| p.into_inner());
        cur.push((Arc::clone(&opts), check));
        w.wake.notify_all();
    }
    let out = session.run_with_options(inputs, &*opts);
    w.current
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|(o, _)| !Arc::ptr_eq(o, &opts));
    match out {
        Ok(o) => f(o),
        Err(_) if check() => Err(Error::Interrupted),
        Err(e) => Err(Error::Inference(e.to_string())),
    }
}
