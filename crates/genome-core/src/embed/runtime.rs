//! Loading the ONNX Runtime shared library once per process.
//!
//! `ort` is built with `load-dynamic`: the library is dlopen()ed from a path chosen at run time
//! (the `genome.onnxruntime_library` GUC), so a wrong path is an error we can report instead of
//! a failed link. A process can load only one runtime; later calls reuse it.
#![allow(unsafe_code)] // ONNX Runtime C API (arena allocator) and loading its library

use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;

use crate::{Error, Result};

/// Where sessions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionProvider {
    Cpu,
    Cuda,
}

impl ExecutionProvider {
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            other => Err(Error::Config(format!(
                "unknown execution provider \"{other}\" (expected cpu or cuda)"
            ))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

/// The loaded runtime: the library path and the `ort` environment.
pub struct Runtime {
    pub path: String,
    pub version: String,
    pub env: Environment,
    /// Bytes all model runs of this process may hold at once, when capped (see
    /// [`Runtime::get_or_load_with`]); sessions then allocate from the capped arena.
    pub memory_limit: Option<usize>,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

impl Runtime {
    /// The process's runtime, loading it from `path` on first use. Once loaded, a different
    /// `path` is an error (a process cannot swap ONNX Runtime libraries).
    pub fn get_or_load(path: &str) -> Result<&'static Runtime> {
        Self::get_or_load_with(path, None)
    }

    /// As [`Runtime::get_or_load`]; on first load, `memory_limit` (bytes) caps what the process's
    /// model runs may allocate: one CPU arena of at most that size is registered in the
    /// environment and every session allocates from it (`session.use_env_allocators`), so a
    /// graph that asks for more (a 16 GB `ConstantOfShape`) fails with an error instead of
    /// taking the machine's memory.
    pub fn get_or_load_with(path: &str, memory_limit: Option<usize>) -> Result<&'static Runtime> {
        if let Some(rt) = RUNTIME.get() {
            return check_same(rt, path);
        }
        let _guard = INIT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = RUNTIME.get() {
            return check_same(rt, path);
        }
        let load_err = |reason: String| Error::RuntimeLoad {
            path: path.to_string(),
            reason,
        };
        if path.is_empty() {
            return Err(load_err("no path configured".into()));
        }
        if !std::path::Path::new(path).is_file() {
            return Err(load_err("no such file".into()));
        }
        let builder = ort::init_from(path).map_err(|e| load_err(e.to_string()))?;
        let env = builder
            .with_name("pg_genome")
            .with_telemetry(false)
            .build()
            .map_err(|e| load_err(e.to_string()))?;
        let version = library_version(path).unwrap_or_else(|| "unknown".into());
        if let Some(bytes) = memory_limit {
            register_capped_arena(&env, bytes)
                .map_err(|e| load_err(format!("registering the memory-capped arena: {e}")))?;
        }
        let _ = RUNTIME.set(Runtime {
            path: path.to_string(),
            version,
            env,
            memory_limit,
        });
        Ok(RUNTIME.get().expect("runtime just set"))
    }

    /// The runtime if one is loaded in this process.
    pub fn loaded() -> Option<&'static Runtime> {
        RUNTIME.get()
    }
}

fn check_same(rt: &'static Runtime, path: &str) -> Result<&'static Runtime> {
    if path.is_empty() || path == rt.path {
        Ok(rt)
    } else {
        Err(Error::RuntimeLoad {
            path: path.to_string(),
            reason: format!(
                "this process already loaded ONNX Runtime from \"{}\"; start a new session to switch",
                rt.path
            ),
        })
    }
}

/// Registers one CPU arena allocator of at most `bytes` in the environment (ONNX Runtime's
/// `CreateArenaCfgV2` with `max_mem`, growing by what is asked: `arena_extend_strategy` 1).
fn register_capped_arena(env: &Environment, bytes: usize) -> std::result::Result<(), String> {
    use ort::sys::{OrtAllocatorType, OrtMemType, OrtStatusPtr};
    use ort::AsPointer;
    let api = ort::api();
    let check = |s: OrtStatusPtr| -> std::result::Result<(), String> {
        if s.0.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null status from the API, read once and released.
        let msg = unsafe { std::ffi::CStr::from_ptr((api.GetErrorMessage)(s.0)) }
            .to_string_lossy()
            .into_owned();
        unsafe { (api.ReleaseStatus)(s.0) };
        Err(msg)
    };
    let keys = [c"max_mem".as_ptr(), c"arena_extend_strategy".as_ptr()];
    let values = [bytes, 1usize];
    let mut cfg = std::ptr::null_mut();
    // SAFETY: two keys and two values, as the count says; `cfg` is released below.
    check(unsafe { (api.CreateArenaCfgV2)(keys.as_ptr(), values.as_ptr(), keys.len(), &mut cfg) })?;
    let mut info = std::ptr::null_mut();
    let mut r = check(unsafe {
        (api.CreateCpuMemoryInfo)(
            OrtAllocatorType::OrtArenaAllocator,
            OrtMemType::OrtMemTypeDefault,
            &mut info,
        )
    });
    if r.is_ok() {
        // SAFETY: the environment outlives the process's sessions (it is kept in RUNTIME).
        r = check(unsafe { (api.CreateAndRegisterAllocator)(env.ptr().cast_mut(), info, cfg) });
        unsafe { (api.ReleaseMemoryInfo)(info) };
    }
    unsafe { (api.ReleaseArenaCfg)(cfg) };
    r
}

/// The library's own version string (`OrtGetApiBase()->GetVersionString()`), for health reports.
fn library_version(path: &str) -> Option<String> {
    // dlopen of an already loaded library returns the same handle: no second copy is loaded.
    let lib = unsafe { libloading::Library::new(path) }.ok()?;
    let getter: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
        unsafe { lib.get(b"OrtGetApiBase") }.ok()?;
    let base = unsafe { getter() };
    if base.is_null() {
        return None;
    }
    let s = unsafe { std::ffi::CStr::from_ptr(((*base).GetVersionString)()) };
    let v = s.to_str().ok().map(str::to_string);
    std::mem::forget(lib); // keep the refcount: ort holds the library for the process's life anyway
    v
}
