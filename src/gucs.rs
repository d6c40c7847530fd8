//! Every `genome.*` setting, in one place. Documented in the README.

use std::ffi::CString;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};

#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Provider {
    #[name = c"cpu"]
    Cpu,
    #[name = c"cuda"]
    Cuda,
}

/// Where a backend runs its ONNX models (genome.inference).
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Inference {
    #[name = c"local"]
    Local,
    #[name = c"shared"]
    Shared,
    #[name = c"auto"]
    Auto,
}

#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Selection {
    #[name = c"leaf"]
    Leaf,
    #[name = c"eom"]
    Eom,
}

pub static DEFAULT_MODEL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"all-minilm-l6-v2"));
pub static ONNXRUNTIME_LIBRARY: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"$libdir/pg_genome/libonnxruntime.so.1.31.1"));
pub static INTRA_OP_THREADS: GucSetting<i32> = GucSetting::<i32>::new(1);
// Since runs are split by token length, batch 1-32 run at the same speed per text (benches/README.md);
// 8 keeps a run, which a cancel waits for, short.
pub static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(8);
/// Days of outcomes and rankings kept by prune_experiences (0 = all).
pub static EXPERIENCE_RETENTION_DAYS: GucSetting<i32> = GucSetting::<i32>::new(90);
/// Whether a transaction that wrote nothing but rank_capabilities' log row waits for its WAL flush.
pub static SYNCHRONOUS_RANKING_LOG: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static EXECUTION_PROVIDER: GucSetting<Provider> = GucSetting::<Provider>::new(Provider::Cpu);
pub static MODEL_CACHE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(2);
/// 0 = one per CPU core.
pub static CLUSTER_THREADS: GucSetting<i32> = GucSetting::<i32>::new(0);
/// Cosine at or above which a new cluster keeps an old family's id.
/// Rows a full run classifies at most; above, an even sample of that many (issue 17).
pub static CLASSIFY_SAMPLE_ROWS: GucSetting<i32> = GucSetting::<i32>::new(1_000_000);
pub static FAMILY_MATCH_THRESHOLD: GucSetting<f64> = GucSetting::<f64>::new(0.9);
/// Quantile of members' similarity to their centroid used as a family's assignment threshold.
pub static THRESHOLD_QUANTILE: GucSetting<f64> = GucSetting::<f64>::new(0.1);
/// Background embedding workers per database in genome.worker_databases (needs preloading).
pub static EMBED_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(1);
pub static WORKER_DATABASES: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));
/// Inference workers per database in genome.worker_databases (src/inference.rs).
pub static INFERENCE_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(1);
/// Request slots of the inference queue (1 MiB of shared memory each).
pub static INFERENCE_QUEUE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(16);
pub static INFERENCE: GucSetting<Inference> = GucSetting::<Inference>::new(Inference::Auto);
/// ONNX Runtime intra-op threads of each inference worker; 0 = one per CPU core.
pub static INFERENCE_THREADS: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static INFERENCE_MAX_BATCH: GucSetting<i32> = GucSetting::<i32>::new(128);
/// Milliseconds a worker waits for more requests after the first of a batch arrives.
pub static INFERENCE_MAX_WAIT: GucSetting<f64> = GucSetting::<f64>::new(2.0);
pub static EMBED_WORKER_NAPTIME: GucSetting<i32> = GucSetting::<i32>::new(2000);
pub static EMBED_QUEUE_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(32);
pub static EMBED_MAX_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(5);
pub static EMBED_RETRY_DELAY: GucSetting<i32> = GucSetting::<i32>::new(1000);
pub static DEFAULT_IMAGE_MODEL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"efficientnet-lite0"));
/// 50 MP: a 48 MP phone photo fits; decoding takes ~3 bytes a pixel (150 MB) at most.
pub static MAX_IMAGE_PIXELS: GucSetting<i32> = GucSetting::<i32>::new(50_000_000);
pub static MAX_IMAGE_BYTES: GucSetting<i32> = GucSetting::<i32>::new(64 << 20);
/// MB all model runs of one backend may hold at once (ONNX Runtime's arena cap).
pub static MODEL_MEMORY_LIMIT: GucSetting<i32> = GucSetting::<i32>::new(4096);
pub static PET_MIN_CLUSTER_SIZE: GucSetting<i32> = GucSetting::<i32>::new(3);
/// Chosen on tuning pets from Fashion-MNIST's train split (tools/evaluate_pets.py --split train):
/// +1.4 to +4.9 points of purity (mean +3.6) over min_samples = min_cluster_size, at the same
/// coverage, with looks split more; the evaluation uses the test split.
pub static PET_MIN_SAMPLES: GucSetting<i32> = GucSetting::<i32>::new(2);
pub static PET_MIN_PENDING: GucSetting<i32> = GucSetting::<i32>::new(8);
pub static PET_MIN_SIMILARITY: GucSetting<f64> = GucSetting::<f64>::new(0.5);
pub static PET_THRESHOLD_QUANTILE: GucSetting<f64> = GucSetting::<f64>::new(0.05);
pub static PET_MIN_QUALITY: GucSetting<f64> = GucSetting::<f64>::new(0.4);
pub static PET_CENTER: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static PET_JOIN_MARGIN: GucSetting<f64> = GucSetting::<f64>::new(0.0);
pub static PET_TRIM_NEW_CLUSTERS: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static PET_CLUSTER_SELECTION: GucSetting<Selection> =
    GucSetting::<Selection>::new(Selection::Leaf);
pub static HERO_WEIGHT_QUALITY: GucSetting<f64> = GucSetting::<f64>::new(0.4);
pub static HERO_WEIGHT_CENTRALITY: GucSetting<f64> = GucSetting::<f64>::new(0.3);
pub static HERO_WEIGHT_RECENCY: GucSetting<f64> = GucSetting::<f64>::new(0.2);
pub static HERO_WEIGHT_POSE: GucSetting<f64> = GucSetting::<f64>::new(0.1);
pub static HERO_HALF_LIFE_DAYS: GucSetting<f64> = GucSetting::<f64>::new(90.0);
pub static HERO_MIN_QUALITY: GucSetting<f64> = GucSetting::<f64>::new(0.4);

pub fn init() {
    GucRegistry::define_string_guc(
        c"genome.default_model",
        c"Model used when a function's model argument is NULL.",
        c"A registered model name, optionally name@version; the newest version when none is given.",
        &DEFAULT_MODEL,
        GucContext::Userset,
        GucFlags::default(),
    );
    // SUSET: loading a shared library runs its code inside the server.
    GucRegistry::define_string_guc(
        c"genome.onnxruntime_library",
        c"Path of the ONNX Runtime shared library (libonnxruntime.so).",
        c"$libdir expands to PostgreSQL's package library directory. Loaded once per backend, on first use.",
        &ONNXRUNTIME_LIBRARY,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"genome.synchronous_ranking_log",
        c"Whether a transaction whose only write is rank_capabilities' log row waits for its WAL flush.",
        c"off (default): such a transaction commits asynchronously (synchronous_commit = off for that commit only), so a ranking does not wait for the disk; a crash may lose the last rankings' log rows, never the app's own writes. on: the session's synchronous_commit applies.",
        &SYNCHRONOUS_RANKING_LOG,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"genome.experience_retention_days",
        c"Days of logged outcomes and rankings that genome.prune_experiences keeps.",
        c"0 keeps everything; imported labelled examples are never pruned.",
        &EXPERIENCE_RETENTION_DAYS,
        0,
        36500,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"genome.intra_op_threads",
        c"ONNX Runtime intra-op threads per backend.",
        c"Default 1: backends share the machine's cores.",
        &INTRA_OP_THREADS,
        1,
        64,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"genome.batch_size",
        c"Texts per model run in batch functions.",
        c"Cancellation is checked between batches.",
        &BATCH_SIZE,
        1,
        // 0.5.0: at most 64 (was 4096). One model call is one batch, and its largest kernel
        // cannot be interrupted: with 4096 texts a run went on 2.3 s past its timeout (measured);
        // kernels shrink with the batch, and the security suite checks a 64-text call of long
        // texts stops within 2 s of its timeout.
        64,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"genome.execution_provider",
        c"ONNX Runtime execution provider: cpu or cuda.",
        c"cuda needs a build with the `cuda` feature and onnxruntime-gpu's provider libraries.",
        &EXECUTION_PROVIDER,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"genome.model_cache_size",
        c"Model sessions kept loaded per backend (least recently used are dropped).",
        c"",
        &MODEL_CACHE_SIZE,
        1,
        64,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"genome.cluster_threads",
        c"Threads for kNN, reduction and HDBSCAN in full classification (0 = one per core).",
        c"",
        &CLUSTER_THREADS,
        0,
        256,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"genome.classify_sample_rows",
        c"Rows a full classification clusters at most (0 = all).",
        c"A collection with more rows is clustered on an even sample of this many (every k-th row by id); every other row then gets its nearest family, as assign_family gives one. Memory stays that of the sample.",
        &CLASSIFY_SAMPLE_ROWS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"genome.family_match_threshold",
        c"Centroid cosine at or above which a new cluster keeps an existing family's id.",
        c"Pairs are matched greedily from the most similar down, each family at most once.",
        &FAMILY_MATCH_THRESHOLD,
        0.0,
        1.0,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"genome.threshold_quantile",
        c"Quantile of a family's member similarities stored as its assignment threshold.",
        c"assign_family with threshold NULL assigns a row to its nearest family when the cosine reaches it.",
        &THRESHOLD_QUANTILE,
        0.0,
        1.0,
        GucContext::Userset,
        GucFlags::default(),
    );
    // Postmaster: the workers are registered once, when the library is preloaded.
    GucRegistry::define_int_guc(
        c"genome.embed_workers",
        c"Background embedding workers per database listed in genome.worker_databases.",
        c"Needs shared_preload_libraries = 'pg_genome'; 0 = none. At most 64 in all.",
        &EMBED_WORKERS,
        0,
        64,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"genome.inference_workers",
        c"Inference workers per database listed in genome.worker_databases: they hold one copy of each ONNX model and batch the backends' requests.",
        c"Needs shared_preload_libraries = 'pg_genome'; 0 = none (every backend runs its models itself).",
        &INFERENCE_WORKERS,
        0,
        16,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"genome.inference_queue_size",
        c"Request slots of the inference queue, 1 MiB of shared memory each; a backend waits for a free one.",
        c"",
        &INFERENCE_QUEUE_SIZE,
        2,
        1024,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"genome.inference",
        c"Where ONNX models run: local (in this backend), shared (the inference workers) or auto (shared when a worker serves this database with this session's execution provider, model memory limit and ONNX Runtime library).",
        c"",
        &INFERENCE,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"genome.inference_threads",
        c"ONNX Runtime intra-op threads of each inference worker; 0 = one per CPU core.",
        c"The workers' sessions are reloaded with the new count after a reload of the configuration.",
        &INFERENCE_THREADS,
        0,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"genome.inference_max_batch",
        c"Most texts or images an inference worker gathers into one batch.",
        c"Texts of a batch run in model runs of similar token length holding at most 8,192 padded tokens.",
        &INFERENCE_MAX_BATCH,
        1,
        1024,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"genome.inference_max_wait",
        c"Milliseconds an inference worker waits for more requests after the first of a batch arrives.",
        c"",
        &INFERENCE_MAX_WAIT,
        0.0,
        1000.0,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"genome.worker_databases",
        c"Comma-separated databases the background embedding workers serve.",
        c"A worker waits idle in a database where pg_genome is not installed.",
        &WORKER_DATABASES,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"genome.embed_worker_naptime",
        c"How long an idle embedding worker sleeps before looking at the queue again.",
        c"New rows wake the workers at once (latch); this paces retries and the recovery of rows left by dead workers.",
        &EMBED_WORKER_NAPTIME,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"genome.embed_queue_batch_size",
        c"Queued rows a worker claims and embeds per transaction.",
        c"",
        &EMBED_QUEUE_BATCH_SIZE,
        1,
        10_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"genome.embed_max_attempts",
        c"Attempts at embedding a queued row before it is left failed.",
        c"",
        &EMBED_MAX_ATTEMPTS,
        1,
        1000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"genome.embed_retry_delay",
        c"Delay before the first retry of a failed row; doubled after each further failure.",
        c"",
        &EMBED_RETRY_DELAY,
        0,
        86_400_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_string_guc(
        c"genome.default_image_model",
        c"Image model used when embed_image's model argument is NULL.",
        c"A registered image-embedding model name, optionally name@version.",
        &DEFAULT_IMAGE_MODEL,
        GucContext::Userset,
        GucFlags::default(),
    );
    // SUSET: these bound a backend's memory; a user must not lift them.
    GucRegistry::define_int_guc(
        c"genome.model_memory_limit",
        c"Memory all model runs of a backend may hold at once; a run that needs more is an ERROR.",
        c"Read when a backend first loads ONNX Runtime; 0 turns the cap off.",
        &MODEL_MEMORY_LIMIT,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_MB,
    );
    GucRegistry::define_int_guc(
        c"genome.max_image_pixels",
        c"Largest image (width x height) that is decoded; larger ones are an ERROR before decoding.",
        c"",
        &MAX_IMAGE_PIXELS,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"genome.max_image_bytes",
        c"Largest encoded image accepted.",
        c"",
        &MAX_IMAGE_BYTES,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_int_guc(
        c"genome.pet_min_cluster_size",
        c"Fewest photos that form a new per-pet cluster (HDBSCAN min_cluster_size).",
        c"",
        &PET_MIN_CLUSTER_SIZE,
        2,
        10_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"genome.pet_min_samples",
        c"HDBSCAN min_samples for a pet's new clusters (0: the same as genome.pet_min_cluster_size).",
        c"",
        &PET_MIN_SAMPLES,
        0,
        10_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"genome.pet_min_pending",
        c"Unassigned photos a pet needs before new clusters are looked for among them.",
        c"",
        &PET_MIN_PENDING,
        2,
        100_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"genome.pet_min_similarity",
        c"Lowest per-pet join threshold (cosine to a cluster centroid).",
        c"",
        &PET_MIN_SIMILARITY,
        -1.0,
        1.0,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"genome.pet_min_quality",
        c"Photos whose image_quality score is below this neither form nor join clusters (they stay unassigned).",
        c"",
        &PET_MIN_QUALITY,
        0.0,
        1.0,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"genome.pet_center",
        c"Compare a pet's photos after subtracting their mean (spreads its looks apart).",
        c"",
        &PET_CENTER,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"genome.pet_trim_new_clusters",
        c"Members of a pet's new cluster must reach the pet's join threshold; the others stay unassigned.",
        c"",
        &PET_TRIM_NEW_CLUSTERS,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"genome.pet_join_margin",
        c"A photo joins its nearest cluster only when it beats the second nearest by this cosine margin.",
        c"",
        &PET_JOIN_MARGIN,
        0.0,
        2.0,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"genome.pet_cluster_selection",
        c"How HDBSCAN picks a pet's new clusters: leaf (finest, purer looks) or eom (excess of mass).",
        c"",
        &PET_CLUSTER_SELECTION,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"genome.pet_threshold_quantile",
        c"Quantile of a pet's clustered photos' similarity to their centroids used as its join threshold.",
        c"",
        &PET_THRESHOLD_QUANTILE,
        0.0,
        1.0,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"genome.hero_weight_quality",
        c"Weight of image_quality's score in a hero's score.",
        c"Weights are divided by their sum over the parts present.",
        &HERO_WEIGHT_QUALITY,
        0.0,
        1000.0,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"genome.hero_weight_centrality",
        c"Weight of the cosine to the cluster centroid in a hero's score.",
        c"Weights are divided by their sum over the parts present.",
        &HERO_WEIGHT_CENTRALITY,
        0.0,
        1000.0,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"genome.hero_weight_recency",
        c"Weight of recency (half-life decay) in a hero's score.",
        c"Weights are divided by their sum over the parts present.",
        &HERO_WEIGHT_RECENCY,
        0.0,
        1000.0,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"genome.hero_weight_pose",
        c"Weight of the app's pose score in a hero's score (when the media has a pose column).",
        c"Weights are divided by their sum over the parts present.",
        &HERO_WEIGHT_POSE,
        0.0,
        1000.0,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"genome.hero_half_life_days",
        c"Age (days before the pet's newest photo) at which a photo's recency is 0.5.",
        c"",
        &HERO_HALF_LIFE_DAYS,
        0.0,
        1e6,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"genome.hero_min_quality",
        c"Photos whose image_quality score is below this are never heroes.",
        c"",
        &HERO_MIN_QUALITY,
        0.0,
        1.0,
        GucContext::Userset,
        GucFlags::default(),
    );
    // genome.* is ours: a mistyped setting (genome.batchsize) is an error, not a silent placeholder
    // SAFETY: a static C string; called once from _PG_init.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"genome".as_ptr()) };
}

/// Databases the embedding workers serve.
pub fn worker_databases() -> Vec<String> {
    string(&WORKER_DATABASES)
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

pub fn provider_name() -> &'static str {
    match EXECUTION_PROVIDER.get() {
        Provider::Cpu => "cpu",
        Provider::Cuda => "cuda",
    }
}

pub fn string(s: &GucSetting<Option<CString>>) -> Option<String> {
    s.get()
        .map(|c| c.to_string_lossy().into_owned())
        .filter(|s| !s.trim().is_empty())
}

/// The runtime library path with `$libdir` expanded.
/// genome.model_memory_limit in bytes, None when 0 (no cap).
pub fn model_memory_limit() -> Option<usize> {
    let mb = MODEL_MEMORY_LIMIT.get().max(0) as usize;
    (mb > 0).then_some(mb << 20)
}

pub fn onnxruntime_library() -> String {
    let raw = string(&ONNXRUNTIME_LIBRARY).unwrap_or_default();
    if let Some(rest) = raw.strip_prefix("$libdir") {
        format!("{}{}", crate::pkglib_dir(), rest)
    } else {
        raw
    }
}
