//! Counters behind `genome.metrics()`: texts embedded, model calls, errors, a latency histogram
//! and the background workers' batches. In shared memory (pg_genome is always preloaded): one set
//! for the whole cluster, what a Prometheus scrape wants.

use pgrx::lwlock::PgLwLock;
use pgrx::pg_shmem_init;
use pgrx::prelude::*;
use pgrx::shmem::*;
use std::fmt::Write;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram's buckets; one model call is one observation.
pub const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Copy, Clone, Default)]
pub struct Counters {
    pub texts_embedded: u64,
    pub embed_calls: u64,
    pub embed_errors: u64,
    pub latency_buckets: [u64; 12],
    pub latency_sum_us: u64,
    pub worker_batches: u64,
    pub worker_rows_completed: u64,
    pub worker_rows_failed: u64,
    /// rank_capabilities calls, those served by the fused retrieval (no ranker), and their
    /// latency (the whole call, intent embedding included).
    pub rank_calls: u64,
    pub rank_fallbacks: u64,
    pub rank_latency_buckets: [u64; 12],
    pub rank_latency_sum_us: u64,
    /// classify_sequences: reads classified, those that needed the fallback, calls and their
    /// latency (0.8.0).
    pub seq_classified: u64,
    pub seq_fallbacks: u64,
    pub seq_calls: u64,
    pub seq_latency_buckets: [u64; 12],
    pub seq_latency_sum_us: u64,
    /// Inference requests (0.8.0): model calls made in the backend ("local") and requests
    /// served by the inference workers ("shared"), with their items; the workers' batches, their
    /// sizes, how long the first request waited for its batch and how long the batch ran; requests
    /// that failed in a worker and those whose worker ended under them.
    pub inference_local_calls: u64,
    pub inference_local_items: u64,
    pub inference_shared_requests: u64,
    pub inference_shared_items: u64,
    pub inference_batches: u64,
    pub inference_batch_items: u64,
    pub inference_batch_buckets: [u64; 12],
    pub inference_wait_buckets: [u64; 12],
    pub inference_wait_sum_us: u64,
    pub inference_run_buckets: [u64; 12],
    pub inference_run_sum_us: u64,
    pub inference_failed: u64,
    pub inference_lost: u64,
}
unsafe impl PGRXSharedMemory for Counters {}

static SHARED: PgLwLock<Counters> = unsafe { PgLwLock::new(c"pg_genome_metrics") };
/// From _PG_init, while shared_preload_libraries is processed (the only time an extension may
/// ask for shared memory; _PG_init refuses to load otherwise).
pub fn init() {
    pg_shmem_init!(SHARED);
}

fn update(f: impl FnOnce(&mut Counters)) {
    f(&mut SHARED.exclusive());
}

fn snapshot() -> Counters {
    *SHARED.share()
}

/// One model call over `n` texts.
pub fn record_embed(n: usize, elapsed: Duration, ok: bool) {
    update(|c| {
        c.embed_calls += 1;
        if ok {
            c.texts_embedded += n as u64;
        } else {
            c.embed_errors += 1;
        }
        observe(&mut c.latency_buckets, &mut c.latency_sum_us, elapsed);
    });
}

/// One rank_capabilities call.
pub fn record_ranking(elapsed: Duration, fallback: bool) {
    update(|c| {
        c.rank_calls += 1;
        c.rank_fallbacks += fallback as u64;
        observe(
            &mut c.rank_latency_buckets,
            &mut c.rank_latency_sum_us,
            elapsed,
        );
    });
}

/// One classify_sequences call over `reads` reads, `fallbacks` of them below the cut-off at
/// their deepest rank.
pub fn record_classify(reads: usize, fallbacks: usize, elapsed: Duration) {
    update(|c| {
        c.seq_calls += 1;
        c.seq_classified += reads as u64;
        c.seq_fallbacks += fallbacks as u64;
        observe(
            &mut c.seq_latency_buckets,
            &mut c.seq_latency_sum_us,
            elapsed,
        );
    });
}

/// One background worker batch.
pub fn record_worker_batch(completed: u64, failed: u64) {
    update(|c| {
        c.worker_batches += 1;
        c.worker_rows_completed += completed;
        c.worker_rows_failed += failed;
    });
}

/// Upper bounds of the batch-size histogram's buckets.
pub const BATCH_BUCKETS: [u64; 12] = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256];

/// One inference request made by a backend: run in the backend (`shared` false) or served by
/// an inference worker.
pub fn record_inference_request(shared: bool, items: usize) {
    update(|c| {
        if shared {
            c.inference_shared_requests += 1;
            c.inference_shared_items += items as u64;
        } else {
            c.inference_local_calls += 1;
            c.inference_local_items += items as u64;
        }
    });
}

/// One batch run by an inference worker: its items, how long its first request waited, how
/// long the model ran.
pub fn record_inference_batch(items: usize, waited: Duration, ran: Duration) {
    update(|c| {
        c.inference_batches += 1;
        c.inference_batch_items += items as u64;
        for (i, le) in BATCH_BUCKETS.iter().enumerate() {
            if items as u64 <= *le {
                c.inference_batch_buckets[i] += 1;
            }
        }
        observe(
            &mut c.inference_wait_buckets,
            &mut c.inference_wait_sum_us,
            waited,
        );
        observe(
            &mut c.inference_run_buckets,
            &mut c.inference_run_sum_us,
            ran,
        );
    });
}

/// A request that failed in a worker (`lost`: its worker ended while running it).
pub fn record_inference_failure(lost: bool) {
    update(|c| {
        if lost {
            c.inference_lost += 1;
        } else {
            c.inference_failed += 1;
        }
    });
}

/// A latency histogram in Prometheus text exposition (cumulative buckets of [`BUCKETS`]).
fn histogram(o: &mut String, name: &str, help: &str, buckets: &[u64; 12], sum_us: u64, count: u64) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (i, le) in BUCKETS.iter().enumerate() {
        let _ = writeln!(o, "{name}_bucket{{le=\"{le}\"}} {}", buckets[i]);
    }
    let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(o, "{name}_sum {}", sum_us as f64 / 1e6);
    let _ = writeln!(o, "{name}_count {count}");
}

/// Count one observation into a histogram's buckets and sum.
fn observe(buckets: &mut [u64; 12], sum_us: &mut u64, elapsed: Duration) {
    let s = elapsed.as_secs_f64();
    for (i, le) in BUCKETS.iter().enumerate() {
        if s <= *le {
            buckets[i] += 1;
        }
    }
    *sum_us += elapsed.as_micros() as u64;
}

/// The counters as Prometheus text exposition (genome.metrics() appends the gauges it reads
/// from tables).
pub fn exposition(c: &Counters) -> String {
    let mut o = String::new();
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    };
    counter(
        "genome_texts_embedded_total",
        "Texts embedded (SQL functions, jobs and workers).",
        c.texts_embedded,
    );
    counter(
        "genome_embed_calls_total",
        "Model calls (one call embeds a batch of texts).",
        c.embed_calls,
    );
    counter(
        "genome_embed_errors_total",
        "Model calls that failed.",
        c.embed_errors,
    );
    counter(
        "genome_worker_batches_total",
        "Batches processed by the background embedding workers.",
        c.worker_batches,
    );
    let _ = writeln!(
        o,
        "# HELP genome_worker_rows_total Queued rows the background workers finished, by result.\n\
         # TYPE genome_worker_rows_total counter\n\
         genome_worker_rows_total{{result=\"completed\"}} {}\ngenome_worker_rows_total{{result=\"failed\"}} {}",
        c.worker_rows_completed, c.worker_rows_failed
    );
    histogram(
        &mut o,
        "genome_embed_latency_seconds",
        "Latency of one model call.",
        &c.latency_buckets,
        c.latency_sum_us,
        c.embed_calls,
    );
    let _ = writeln!(
        o,
        "# HELP genome_rank_fallbacks_total rank_capabilities calls served by the fused retrieval score (no trained ranker).\n\
         # TYPE genome_rank_fallbacks_total counter\ngenome_rank_fallbacks_total {}",
        c.rank_fallbacks
    );
    histogram(
        &mut o,
        "genome_rank_latency_seconds",
        "Latency of rank_capabilities.",
        &c.rank_latency_buckets,
        c.rank_latency_sum_us,
        c.rank_calls,
    );
    let _ = writeln!(
        o,
        "# HELP genome_sequences_classified_total Reads classified by classify_sequences, by whether their deepest rank was withheld (needs_fallback).\n\
         # TYPE genome_sequences_classified_total counter\n\
         genome_sequences_classified_total{{fallback=\"false\"}} {}\ngenome_sequences_classified_total{{fallback=\"true\"}} {}",
        c.seq_classified.saturating_sub(c.seq_fallbacks),
        c.seq_fallbacks
    );
    histogram(
        &mut o,
        "genome_classify_latency_seconds",
        "Latency of one classify_sequences call.",
        &c.seq_latency_buckets,
        c.seq_latency_sum_us,
        c.seq_calls,
    );
    let _ = writeln!(
        o,
        "# HELP genome_inference_requests_total Inference requests by path: model calls run in the backend (local) and requests served by the inference workers (shared).\n\
         # TYPE genome_inference_requests_total counter\n\
         genome_inference_requests_total{{path=\"local\"}} {}\ngenome_inference_requests_total{{path=\"shared\"}} {}\n\
         # HELP genome_inference_items_total Texts and images embedded, by path.\n\
         # TYPE genome_inference_items_total counter\n\
         genome_inference_items_total{{path=\"local\"}} {}\ngenome_inference_items_total{{path=\"shared\"}} {}\n\
         # HELP genome_inference_failures_total Requests that failed in an inference worker (error) or whose worker ended while running them (lost).\n\
         # TYPE genome_inference_failures_total counter\n\
         genome_inference_failures_total{{reason=\"error\"}} {}\ngenome_inference_failures_total{{reason=\"lost\"}} {}",
        c.inference_local_calls,
        c.inference_shared_requests,
        c.inference_local_items,
        c.inference_shared_items,
        c.inference_failed,
        c.inference_lost
    );
    let name = "genome_inference_batch_size";
    let _ = writeln!(
        o,
        "# HELP {name} Items per model run of the inference workers.\n# TYPE {name} histogram"
    );
    for (i, le) in BATCH_BUCKETS.iter().enumerate() {
        let _ = writeln!(
            o,
            "{name}_bucket{{le=\"{le}\"}} {}",
            c.inference_batch_buckets[i]
        );
    }
    let _ = writeln!(
        o,
        "{name}_bucket{{le=\"+Inf\"}} {b}\n{name}_sum {}\n{name}_count {b}",
        c.inference_batch_items,
        b = c.inference_batches
    );
    histogram(
        &mut o,
        "genome_inference_wait_seconds",
        "How long the first request of an inference batch waited before the batch ran.",
        &c.inference_wait_buckets,
        c.inference_wait_sum_us,
        c.inference_batches,
    );
    histogram(
        &mut o,
        "genome_inference_run_seconds",
        "How long an inference worker's model run took.",
        &c.inference_run_buckets,
        c.inference_run_sum_us,
        c.inference_batches,
    );
    let _ = writeln!(
        o,
        // always 1 since the preload became mandatory (0.4.1); kept for existing dashboards
        "# HELP genome_counters_shared 1: the counters above are cluster-wide (shared memory).\n\
         # TYPE genome_counters_shared gauge\ngenome_counters_shared 1"
    );
    o
}

#[pg_extern(volatile, parallel_safe, name = "_metrics_counters")]
fn metrics_counters() -> String {
    let mut o = exposition(&snapshot());
    if let Some((pending, running, workers)) = crate::inference::queue_depth() {
        let _ = writeln!(
            o,
            "# HELP genome_inference_workers Inference workers running (all databases).\n\
             # TYPE genome_inference_workers gauge\ngenome_inference_workers {workers}\n\
             # HELP genome_inference_queue_depth Inference requests waiting for a worker (pending) and being run (running).\n\
             # TYPE genome_inference_queue_depth gauge\n\
             genome_inference_queue_depth{{state=\"pending\"}} {pending}\ngenome_inference_queue_depth{{state=\"running\"}} {running}"
        );
    }
    o
}

#[cfg(test)]
mod tests {
    #[test]
    fn histogram_buckets_are_cumulative() {
        let c = super::Counters {
            embed_calls: 2,
            latency_buckets: [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2],
            ..Default::default()
        };
        let t = super::exposition(&c);
        assert!(t.contains("genome_embed_latency_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(t.contains("genome_embed_latency_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(t.contains("genome_counters_shared 1\n"));
    }
}

// The SQL objects of this capability, in their current shape: src/health.sql.
extension_sql_file!(
    "health.sql",
    name = "health",
    requires = ["queue", progress::progress_slots]
);
