//! The model registry (`genome.models`) and the per-process session cache.
//!
//! Models are registered explicitly; nothing is downloaded. A backend loads a model's ONNX
//! session and tokenizer once and keeps it in an LRU cache keyed by the row id; the row's xmin
//! (changes whenever the row is updated) and the session settings are checked on every statement,
//! so re-registering or editing a model invalidates the cached session.

use std::cell::RefCell;
use std::num::NonZeroUsize;

use genome_core::embed::{ExecutionProvider, ModelConfig, Runtime, SessionSettings, TextEmbedder};
use genome_core::image::{ImageConfig, ImageEmbedder};
use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};
use sha2::{Digest, Sha256};

use crate::errors::{raise, OrRaise, OrReport};
use crate::gucs;

/// One registry row, without the (large) model bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRow {
    pub id: i64,
    pub name: String,
    pub version: String,
    pub task: String,
    pub dimension: i32,
    pub config: String,
    /// `xmin:ctid` of the row: changes whenever the row is updated, even inside one transaction.
    pub row_version: String,
}

/// A loaded model of either task. Held once per cached session (never moved around in bulk),
/// so the size difference between the variants costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
pub enum Embedder {
    Text(TextEmbedder),
    Image(ImageEmbedder),
}

struct Loaded {
    row_version: String,
    threads: usize,
    provider: ExecutionProvider,
    embedder: Embedder,
}

thread_local! {
    static CACHE: RefCell<lru::LruCache<i64, Loaded>> =
        RefCell::new(lru::LruCache::new(NonZeroUsize::new(64).unwrap()));
}

/// A per-process LRU of things loaded from registry rows (featurisers, classifiers), keyed by
/// row id and valid for one row version; holds `genome.model_cache_size` entries, as the ONNX
/// sessions' cache. Use it from a `thread_local!`.
pub struct RowCache<T>(RefCell<lru::LruCache<i64, (String, std::rc::Rc<T>)>>);

impl<T> RowCache<T> {
    pub fn new() -> Self {
        RowCache(RefCell::new(lru::LruCache::new(
            NonZeroUsize::new(64).unwrap(),
        )))
    }

    /// The cached value of `row`, or `load()` cached under the row's version. `load` runs
    /// outside the borrow (it may raise an ERROR).
    pub fn get_or_load(&self, row: &ModelRow, load: impl FnOnce() -> T) -> std::rc::Rc<T> {
        let hit = {
            let mut c = self.0.borrow_mut();
            c.resize(NonZeroUsize::new(gucs::MODEL_CACHE_SIZE.get().max(1) as usize).unwrap());
            c.get(&row.id)
                .filter(|(v, _)| *v == row.row_version)
                .map(|(_, m)| m.clone())
        };
        if let Some(m) = hit {
            return m;
        }
        let m = std::rc::Rc::new(load());
        self.0
            .borrow_mut()
            .put(row.id, (row.row_version.clone(), m.clone()));
        m
    }

    /// Drop every entry; returns how many there were.
    pub fn clear(&self) -> usize {
        let mut c = self.0.borrow_mut();
        let n = c.len();
        c.clear();
        n
    }
}

impl<T> Default for RowCache<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// The model a call means: the spec given, else the task's default setting
/// (`genome.default_model`, or `genome.default_image_model` for images). The one place the
/// defaults are read: SQL reaches it through `genome._resolve_model`.
pub fn spec_or_default(spec: Option<&str>, image: bool) -> String {
    let setting = if image {
        &gucs::DEFAULT_IMAGE_MODEL
    } else {
        &gucs::DEFAULT_MODEL
    };
    spec.map(str::to_string)
        .or_else(|| gucs::string(setting))
        .unwrap_or_else(|| {
            let name = if image {
                "genome.default_image_model"
            } else {
                "genome.default_model"
            };
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("no model given and {name} is empty"),
                None,
            )
        })
}

/// `name` or `name@version`; NULL means `genome.default_model`.
pub fn parse_spec(spec: Option<&str>) -> (String, Option<String>) {
    let spec = spec_or_default(spec, false);
    match spec.split_once('@') {
        Some((n, v)) => (n.trim().to_string(), Some(v.trim().to_string())),
        None => (spec.trim().to_string(), None),
    }
}

/// The registry row with this id, as this transaction sees it.
pub fn row_by_id(id: i64) -> Option<ModelRow> {
    Spi::connect(|client| {
        let t = client.select(
            "SELECT id, name, version, task, dimension, config::text, xmin::text || ':' || ctid::text \
               FROM genome.models WHERE id = $1",
            None,
            &[id.into()],
        )?;
        let mut out = None;
        for r in t {
            out = Some(row_of(&r)?);
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .or_raise("reading genome.models")
}

fn row_of(r: &pgrx::spi::SpiHeapTupleData) -> Result<ModelRow, pgrx::spi::SpiError> {
    Ok(ModelRow {
        id: r.get::<i64>(1)?.unwrap_or_default(),
        name: r.get::<String>(2)?.unwrap_or_default(),
        version: r.get::<String>(3)?.unwrap_or_default(),
        task: r.get::<String>(4)?.unwrap_or_default(),
        dimension: r.get::<i32>(5)?.unwrap_or_default(),
        config: r.get::<String>(6)?.unwrap_or_default(),
        row_version: r.get::<String>(7)?.unwrap_or_default(),
    })
}

/// Find the registry row for a model spec; when no version is given, the production version,
/// else the newest that is not archived. A database still on an install script older than 0.7.0
/// (created or upgraded with this library) has no `stage` column: then the newest.
pub fn resolve(spec: Option<&str>) -> ModelRow {
    let (name, version) = parse_spec(spec);
    let has_stage = crate::collections::has_column("genome.models", "stage");
    let order = if has_stage {
        "CASE stage WHEN 'production' THEN 0 WHEN 'archived' THEN 2 ELSE 1 END, created_at DESC, id DESC"
    } else {
        "created_at DESC, id DESC"
    };
    let sql = format!(
        "SELECT id, name, version, task, dimension, config::text, xmin::text || ':' || ctid::text \
           FROM genome.models WHERE name = $1 AND ($2::text IS NULL OR version = $2) \
          ORDER BY {order} LIMIT 1"
    );
    let row = Spi::connect(|client| {
        let t = client.select(&sql, None, &[name.as_str().into(), version.clone().into()])?;
        let mut out = None;
        for r in t {
            out = Some(row_of(&r)?);
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .or_raise("reading genome.models");
    match row {
        Some(r) => r,
        None => {
            let names = Spi::get_one::<String>(
                "SELECT string_agg(DISTINCT name || '@' || version, ', ') FROM genome.models",
            )
            .or_raise("reading genome.models");
            let what = match &version {
                Some(v) => format!("model \"{name}\" version \"{v}\" is not registered"),
                None => format!("model \"{name}\" is not registered"),
            };
            match names {
                None => raise(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                    format!("{what}: the model registry genome.models is empty"),
                    Some("register a model with genome.register_model(...) or genome.register_model_dir(...)".into()),
                ),
                Some(list) => raise(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                    what,
                    Some(format!("registered models: {list}")),
                ),
            }
        }
    }
}

fn current_settings() -> SessionSettings {
    let provider = match gucs::EXECUTION_PROVIDER.get() {
        gucs::Provider::Cpu => ExecutionProvider::Cpu,
        gucs::Provider::Cuda => ExecutionProvider::Cuda,
    };
    let intra_threads = gucs::INTRA_OP_THREADS.get().max(1) as usize;
    SessionSettings {
        intra_threads,
        provider,
        // an inference worker spreads a batch's runs over one single-threaded session per
        // thread (sharing the weights); a backend runs one session
        parallel_sessions: if crate::inference::in_worker() {
            intra_threads
        } else {
            1
        },
        // cancel, statement_timeout and pg_terminate_backend stop a run in flight (in an
        // inference worker: its termination, or every waiting statement withdrawn)
        stop: Some(if crate::inference::in_worker() {
            crate::inference::worker_stop
        } else {
            crate::errors::interrupt_pending
        }),
    }
}

/// The process's ONNX Runtime, loaded on first use from genome.onnxruntime_library with the
/// arena cap of genome.model_memory_limit.
pub fn try_runtime() -> genome_core::Result<&'static Runtime> {
    Runtime::get_or_load_with(&gucs::onnxruntime_library(), gucs::model_memory_limit())
}

pub fn runtime() -> &'static Runtime {
    try_runtime().or_report()
}

/// Embed texts with `row`'s model (ERROR on failure), counted in genome.metrics(): texts, model
/// calls, errors and the latency histogram.
pub fn embed_texts(row: &ModelRow, texts: &[&str]) -> Vec<Vec<f32>> {
    if row.task == "sequence-embedding" {
        return crate::sequences::embed_reads(row, texts);
    }
    embed_onnx(row, texts)
}

/// One call of an ONNX text model (or DNA language model) over `texts`: through the inference
/// workers when genome.inference says so (src/inference.rs), else in this backend.
fn embed_onnx(row: &ModelRow, texts: &[&str]) -> Vec<Vec<f32>> {
    if row.task != "sequence-embedding" {
        require_task(row, "text-embedding");
    }
    if let Some(v) = crate::inference::embed_shared(row, crate::inference::Items::Texts(texts)) {
        return v;
    }
    crate::metrics::record_inference_request(false, texts.len());
    embed_local(row, texts)
}

/// One model call over `texts` in this process (a backend, or an inference worker for its
/// batch), counted in metrics().
pub fn embed_local(row: &ModelRow, texts: &[&str]) -> Vec<Vec<f32>> {
    let t = std::time::Instant::now();
    let out = with_embedder(row, |e| e.embed(texts));
    crate::metrics::record_embed(texts.len(), t.elapsed(), out.is_ok());
    out.or_report()
}

/// Embed preprocessed images with `row`'s image model: through the inference workers when
/// genome.inference says so, else in this backend.
pub fn embed_images(row: &ModelRow, images: &[ndarray::Array3<f32>]) -> Vec<Vec<f32>> {
    require_task(row, "image-embedding");
    if let Some(v) = crate::inference::embed_shared(row, crate::inference::Items::Images(images)) {
        return v;
    }
    crate::metrics::record_inference_request(false, images.len());
    embed_images_local(row, images)
}

/// One image model call in this process.
pub fn embed_images_local(row: &ModelRow, images: &[ndarray::Array3<f32>]) -> Vec<Vec<f32>> {
    with_image_embedder(row, |e| e.embed(images)).or_report()
}

/// [`embed_by_length`] straight to the ONNX model: a DNA language model's k-mer sentences.
pub fn embed_by_length_onnx(row: &ModelRow, texts: &[&str]) -> Vec<Vec<f32>> {
    by_length(row, texts, embed_onnx)
}

/// Embed texts in model batches of `genome.batch_size`, longest first (texts of similar length
/// together waste less padding), honouring a cancel between batches; vectors in input order.
pub fn embed_by_length(row: &ModelRow, texts: &[&str]) -> Vec<Vec<f32>> {
    by_length(row, texts, embed_texts)
}

fn by_length(
    row: &ModelRow,
    texts: &[&str],
    embed: fn(&ModelRow, &[&str]) -> Vec<Vec<f32>>,
) -> Vec<Vec<f32>> {
    // genome.batch_size bounds a run in this backend (a cancel waits for the run); on the
    // inference workers a call waits on its latch, cancellable at any time, and the worker
    // batches what it gets: send it as many texts as it runs at once
    let batch = match crate::inference::shared_batch(row) {
        Some(n) => n.max(gucs::BATCH_SIZE.get().max(1) as usize),
        None => gucs::BATCH_SIZE.get().max(1) as usize,
    };
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|i| std::cmp::Reverse(texts[*i].len()));
    let mut out = vec![Vec::new(); texts.len()];
    for sub in order.chunks(batch) {
        pg_sys::check_for_interrupts!();
        let slice: Vec<&str> = sub.iter().map(|i| texts[*i]).collect();
        for (i, v) in sub.iter().zip(embed(row, &slice)) {
            out[*i] = v;
        }
    }
    out
}

pub(crate) fn require_task(row: &ModelRow, task: &str) {
    if row.task != task {
        raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!(
                "model \"{}@{}\" is a {} model, not a {task} model",
                row.name, row.version, row.task
            ),
            None,
        );
    }
}

/// Run `f` with the loaded text embedder for `row`, loading it on first use or after a change.
pub fn with_embedder<R>(row: &ModelRow, f: impl FnOnce(&mut TextEmbedder) -> R) -> R {
    if row.task != "sequence-embedding" {
        require_task(row, "text-embedding");
    }
    with_loaded(row, |e| match e {
        Embedder::Text(t) => f(t),
        Embedder::Image(_) => unreachable!("task checked"),
    })
}

/// Run `f` with the loaded image embedder for `row`.
pub fn with_image_embedder<R>(row: &ModelRow, f: impl FnOnce(&mut ImageEmbedder) -> R) -> R {
    require_task(row, "image-embedding");
    with_loaded(row, |e| match e {
        Embedder::Image(i) => f(i),
        Embedder::Text(_) => unreachable!("task checked"),
    })
}

fn with_loaded<R>(row: &ModelRow, f: impl FnOnce(&mut Embedder) -> R) -> R {
    let settings = current_settings();
    let fresh = CACHE.with(|c| {
        let mut c = c.borrow_mut();
        c.resize(NonZeroUsize::new(gucs::MODEL_CACHE_SIZE.get().max(1) as usize).unwrap());
        matches!(c.get(&row.id), Some(l) if l.row_version == row.row_version
            && l.threads == settings.intra_threads && l.provider == settings.provider)
    });
    if !fresh {
        // Drop the stale session before building the new one: two 90 MB sessions at once
        // would double the backend's peak memory for nothing.
        CACHE.with(|c| c.borrow_mut().pop(&row.id));
        let embedder = load_embedder(row, settings);
        CACHE.with(|c| {
            c.borrow_mut().put(
                row.id,
                Loaded {
                    row_version: row.row_version.clone(),
                    threads: settings.intra_threads,
                    provider: settings.provider,
                    embedder,
                },
            )
        });
    }
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let loaded = c.get_mut(&row.id).expect("model just cached");
        f(&mut loaded.embedder)
    })
}

fn load_embedder(row: &ModelRow, settings: SessionSettings) -> Embedder {
    let (onnx, path, tokenizer) = Spi::connect(|client| {
        let t = client.select(
            "SELECT onnx, onnx_path, tokenizer FROM genome.models WHERE id = $1",
            None,
            &[row.id.into()],
        )?;
        let mut out = None;
        for r in t {
            out = Some((
                r.get::<Vec<u8>>(1)?,
                r.get::<String>(2)?,
                r.get::<String>(3)?,
            ));
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .or_raise("reading genome.models")
    .unwrap_or_else(|| {
        // deleted by a transaction that committed after this call resolved it
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!(
                "model \"{}@{}\" was removed while it was being loaded",
                row.name, row.version
            ),
            None,
        )
    });
    let onnx = match (onnx, path) {
        (Some(b), _) => b,
        (None, Some(p)) => read_model_file(&p).unwrap_or_else(|e| {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_FILE,
                format!(
                    "model \"{}@{}\": cannot read ONNX file \"{p}\": {e}",
                    row.name, row.version
                ),
                None,
            )
        }),
        (None, None) => raise(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!(
                "model \"{}@{}\" has neither ONNX bytes nor a path",
                row.name, row.version
            ),
            None,
        ),
    };
    let embedder = if row.task == "image-embedding" {
        let config = ImageConfig::from_json(&row.config).or_report();
        Embedder::Image(ImageEmbedder::new(runtime(), &onnx, config, settings).or_report())
    } else {
        let config = ModelConfig::from_json(&row.config).or_report();
        let tokenizer = tokenizer.unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "text model \"{}@{}\" has no tokenizer",
                    row.name, row.version
                ),
                None,
            )
        });
        Embedder::Text(
            TextEmbedder::new(runtime(), &onnx, tokenizer.as_bytes(), config, settings).or_report(),
        )
    };
    log!(
        "pg_genome: loaded model {}@{} ({} bytes, provider {})",
        row.name,
        row.version,
        onnx.len(),
        settings.provider.name()
    );
    embedder
}

/// Largest ONNX file read from a server path (the registry's bytea holds at most 1 GB).
const MAX_MODEL_FILE: u64 = 4 << 30;

/// A model file named by `onnx_path`: a regular file of bounded size, never a device or a FIFO
/// (which would block or never end).
fn read_model_file(p: &str) -> std::io::Result<Vec<u8>> {
    let meta = std::fs::metadata(p)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > MAX_MODEL_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("larger than {MAX_MODEL_FILE} bytes"),
        ));
    }
    std::fs::read(p)
}

/// Names must be usable in specs (`name@version`) and file names.
fn check_name(what: &str, s: &str) {
    let ok = !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !ok {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid model {what} \"{s}\": use 1-100 characters of letters, digits, '.', '_' and '-'"),
            None,
        );
    }
}

/// Parse the config, and load + run the model once so that a model that cannot load, or whose
/// output does not fit its config, is refused at registration rather than at first use.
/// Returns the embedding dimension.
fn validate(
    onnx: &[u8],
    tokenizer: Option<&str>,
    config: &str,
    task: &str,
    check_run: bool,
) -> usize {
    // no external data, no uninterruptible loop: checked even when the model is not run here
    genome_core::embed::guard::check_self_contained(onnx).or_report();
    match task {
        // a DNA language model is a text model whose input is a read (as k-mer words with
        // dna_kmer): the same session, tokenizer and pooling
        "text-embedding" | "sequence-embedding" => {
            let tokenizer = tokenizer.unwrap_or_else(|| {
                raise(
                    PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                    format!("a {task} ONNX model needs a tokenizer (tokenizer.json)"),
                    None,
                )
            });
            let cfg = ModelConfig::from_json(config).or_report();
            if task == "text-embedding" && cfg.dna_kmer.is_some() {
                raise(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    "dna_kmer is for DNA language models (task sequence-embedding)".into(),
                    None,
                );
            }
            if check_run {
                // embed() checks the output's shape against the config (pooling, dimension).
                let mut e = TextEmbedder::new(
                    runtime(),
                    onnx,
                    tokenizer.as_bytes(),
                    cfg.clone(),
                    current_settings(),
                )
                .or_report();
                let probe = if task == "text-embedding" {
                    "pg_genome registration check".to_string()
                } else {
                    genome_core::seq::kmer_sentence(b"ACGTACGGTTCAGCATTAGCCA", cfg.dna_kmer)
                };
                e.embed(&[probe.as_str()]).or_report();
            }
            cfg.dimension
        }
        "image-embedding" => {
            let cfg = ImageConfig::from_json(config).or_report();
            if check_run {
                let mut e = ImageEmbedder::new(runtime(), onnx, cfg.clone(), current_settings())
                    .or_report();
                e.self_check().or_report();
            }
            cfg.dimension
        }
        other => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown task \"{other}\" (supported: text-embedding, image-embedding, sequence-embedding)"),
            None,
        ),
    }
}

/// Refuse a (name, version) that exists before the model is loaded for validation (seconds for
/// a large model); SPI would raise the unique violation only at INSERT, with a rawer message.
pub(crate) fn ensure_new(name: &str, version: &str) {
    check_name("name", name);
    check_name("version", version);
    let exists = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM genome.models WHERE name = $1 AND version = $2)",
        &[name.into(), version.into()],
    )
    .or_raise("reading genome.models")
    .unwrap_or(false);
    if exists {
        raise(
            PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
            format!("model \"{name}\" version \"{version}\" is already registered"),
            Some("register a new version, or DELETE FROM genome.models the old row first".into()),
        )
    }
}

pub(crate) fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn insert(
    name: &str,
    version: &str,
    task: &str,
    dimension: usize,
    onnx: Option<&[u8]>,
    path: Option<&str>,
    tokenizer: Option<&str>,
    config: &str,
    sha: &str,
) -> i64 {
    Spi::get_one_with_args::<i64>(
        "INSERT INTO genome.models (name, version, task, dimension, onnx, onnx_path, tokenizer, config, sha256) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9) RETURNING id",
        &[
            name.into(),
            version.into(),
            task.into(),
            (dimension as i32).into(),
            onnx.map(|b| b.to_vec()).into(),
            path.into(),
            tokenizer.into(),
            config.into(),
            sha.into(),
        ],
    )
    .or_raise("registering the model")
    .expect("INSERT ... RETURNING gives a row")
}

/// The role whose members may register models (README, "Security model").
pub const ADMIN_ROLE: &std::ffi::CStr = c"genome_admin";

/// Registering a model is a privileged act: a model is code that every role embedding with it
/// runs. Checked before a byte of the model is parsed.
pub(crate) fn require_admin(what: &str) {
    let ok = unsafe {
        let admin = pg_sys::get_role_oid(ADMIN_ROLE.as_ptr(), true);
        pg_sys::superuser()
            || (admin != pg_sys::InvalidOid
                && pg_sys::has_privs_of_role(pg_sys::GetUserId(), admin))
    };
    if !ok {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("{what} requires superuser or membership in genome_admin"),
            Some("a superuser can GRANT genome_admin TO the role that manages models".into()),
        );
    }
}

/// Register a model from its bytes. Returns the new row's id.
#[pg_extern(volatile)]
pub fn register_model(
    name: &str,
    version: &str,
    onnx: &[u8],
    tokenizer: Option<&str>,
    config: pgrx::JsonB,
    task: default!(&str, "'text-embedding'"),
    validate_model: default!(bool, true),
) -> i64 {
    require_admin("registering a model");
    ensure_new(name, version);
    let config = config.0.to_string();
    let dim = validate(onnx, tokenizer, &config, task, validate_model);
    insert(
        name,
        version,
        task,
        dim,
        Some(onnx),
        None,
        tokenizer,
        &config,
        &sha256_hex(onnx),
    )
}

/// Register a model whose ONNX file stays on the server (`onnx_path`), read at load time.
/// For superusers and members of pg_read_server_files, as reading server files is.
#[pg_extern(volatile)]
pub fn register_model_path(
    name: &str,
    version: &str,
    onnx_path: &str,
    tokenizer: Option<&str>,
    config: pgrx::JsonB,
    task: default!(&str, "'text-embedding'"),
    validate_model: default!(bool, true),
) -> i64 {
    require_admin("registering a model");
    let allowed = unsafe {
        pg_sys::superuser()
            || pg_sys::has_privs_of_role(
                pg_sys::GetUserId(),
                pg_sys::Oid::from(pg_sys::ROLE_PG_READ_SERVER_FILES),
            )
    };
    if !allowed {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "registering a model by server path requires superuser or pg_read_server_files".into(),
            None,
        );
    }
    if !std::path::Path::new(onnx_path).is_absolute() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("onnx_path \"{onnx_path}\" must be absolute"),
            None,
        );
    }
    ensure_new(name, version);
    let onnx = read_model_file(onnx_path).unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_FILE,
            format!("cannot read \"{onnx_path}\": {e}"),
            None,
        )
    });
    let config = config.0.to_string();
    let dim = validate(&onnx, tokenizer, &config, task, validate_model);
    insert(
        name,
        version,
        task,
        dim,
        None,
        Some(onnx_path),
        tokenizer,
        &config,
        &sha256_hex(&onnx),
    )
}

/// The registry id of the model a spec names (`name` or `name@version`, the newest version when
/// none is given; NULL: the task's default setting): model-spec resolution for the SQL side.
#[pg_extern(stable, parallel_safe)]
pub fn _resolve_model(spec: Option<&str>, image: default!(bool, false)) -> i64 {
    resolve(Some(&spec_or_default(spec, image))).id
}

/// Drop every model this backend has cached: ONNX sessions, k-mer featurisers and sequence
/// classifiers (they reload on next use). Returns how many there were.
#[pg_extern(volatile)]
pub fn clear_model_cache() -> i64 {
    let sessions = CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let n = c.len() as i64;
        c.clear();
        n
    });
    sessions + crate::sequences::clear_cache() as i64 + crate::taxonomy::clear_cache() as i64
}

/// What this backend has loaded: for tests of the cache and for health checks.
#[pg_extern(volatile)]
pub fn loaded_models() -> TableIterator<
    'static,
    (
        name!(model_id, i64),
        name!(row_version, String),
        name!(intra_op_threads, i32),
        name!(execution_provider, String),
    ),
> {
    let rows: Vec<_> = CACHE.with(|c| {
        c.borrow()
            .iter()
            .map(|(id, l)| {
                (
                    *id,
                    l.row_version.clone(),
                    l.threads as i32,
                    l.provider.name().to_string(),
                )
            })
            .collect()
    });
    TableIterator::new(rows)
}

/// The ONNX Runtime this backend loaded (NULL when none yet).
#[pg_extern(volatile)]
pub fn onnxruntime_version() -> Option<String> {
    Runtime::loaded().map(|r| r.version.clone())
}

// The SQL objects of this capability, in their current shape: src/models.sql.
extension_sql_file!(
    "models.sql",
    name = "models",
    requires = [
        _resolve_model,
        register_model,
        register_model_path,
        clear_model_cache,
        loaded_models,
        onnxruntime_version,
        embed::embed,
        embed::embed_batch,
        images::embed_image,
        images::embed_images,
        images::image_quality
    ]
);
