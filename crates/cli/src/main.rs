//! `genome`: pg_genome's jobs from a shell. Connects with a URL (--url / DATABASE_URL) or the
//! usual libpq variables (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD).
//!
//!   genome full-classify --collection NAME [--min-cluster-size 15]
//!   genome classify-worker [--collection NAME] --interval 10 --batch-size 500
//!   genome cluster-pets [--media NAME] [--pet ID] [--max-pets 100]
//!   genome pet ID [--media NAME] [--heroes 3]
//!   genome status
//!   genome rank "INTENT" [--catalog NAME] [--top-k 10] [--context-tool TOOL ...]
//!   genome train-ranker --catalog NAME [--examples TABLE] [--dev TABLE] [--epochs 8] [--no-promote]
//!   genome models
//!   genome load-seqs --table TABLE FILE.fasta
//!   genome train-seqs --name NAME --source TABLE [--evaluate-on TABLE] [--fallback-collection C]
//!   genome classify-seqs --model NAME [--fallback-k 3] FILE.fasta      (TSV on stdout)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use postgres::{Client, NoTls};

#[derive(Parser)]
#[command(name = "genome", version, about = "Run and watch pg_genome jobs")]
struct Cli {
    /// postgres://user@host:port/db; default: the libpq environment variables
    #[arg(long, env = "DATABASE_URL", global = true)]
    url: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Embed what is missing, cluster, update families and re-assign every row (one transaction).
    FullClassify {
        #[arg(long)]
        collection: String,
        #[arg(long, default_value_t = 15)]
        min_cluster_size: i32,
        #[arg(long, default_value = "umap")]
        reduction: String,
        /// Skip the embedding step (genome.hdbscan_recluster).
        #[arg(long)]
        no_embed: bool,
    },
    /// Loop: assign pending rows to families, then sleep. Stops cleanly on Ctrl-C.
    ClassifyWorker {
        /// Collections to serve (default: all).
        #[arg(long)]
        collection: Vec<String>,
        /// Minutes between passes.
        #[arg(long, default_value_t = 10.0)]
        interval: f64,
        #[arg(long, default_value_t = 500)]
        batch_size: i32,
        #[arg(long, default_value_t = 500)]
        min_pending: i32,
        /// Explicit cosine threshold (default: each family's calibrated one).
        #[arg(long)]
        threshold: Option<f32>,
        /// Stop after this many passes (default: run until Ctrl-C).
        #[arg(long)]
        passes: Option<u64>,
    },
    /// Update the clusters of pets with new or removed photos (what the pg_cron job runs),
    /// batch after batch until none is left; or one pet with --pet.
    ClusterPets {
        /// Pet media to serve (default: all).
        #[arg(long)]
        media: Option<String>,
        /// Update this pet only (its id as text; it is cast to the pet column's type).
        #[arg(long)]
        pet: Option<String>,
        /// Pets per call (one transaction each).
        #[arg(long, default_value_t = 100)]
        max_pets: i32,
    },
    /// A pet's clusters, heroes and coverage (genome.pet_clusters), as JSON.
    Pet {
        pet: String,
        #[arg(long)]
        media: Option<String>,
        /// Heroes per cluster.
        #[arg(long, default_value_t = 3)]
        heroes: i32,
    },
    /// Collections, pending counts, families, pet media, last runs, scheduled jobs.
    Status,
    /// Rank a catalog's capabilities for an intent (genome.rank_capabilities).
    Rank {
        intent: String,
        #[arg(long)]
        catalog: Option<String>,
        #[arg(long, default_value_t = 10)]
        top_k: i32,
        /// Tools already in use (repeat the option).
        #[arg(long)]
        context_tool: Vec<String>,
    },
    /// Train a ranker version (genome.train_ranker), with progress; Ctrl-C cancels and leaves
    /// the production ranker serving.
    TrainRanker {
        #[arg(long)]
        catalog: String,
        /// Table of labelled (intent, capability) pairs to import as successes.
        #[arg(long)]
        examples: Option<String>,
        /// Table of labelled pairs for early stopping and calibration.
        #[arg(long)]
        dev: Option<String>,
        #[arg(long, default_value_t = 8)]
        epochs: i32,
        /// Register the version as staging instead of promoting it to production.
        #[arg(long)]
        no_promote: bool,
    },
    /// Registered models (text and image) and ranker versions with their stages.
    Models,
    /// Load a FASTA file into a table (id, sequence, lineage), created when missing. The
    /// lineage is the header's last tab-separated field when it has tabs (RDP style), else the
    /// header after the id.
    LoadSeqs {
        #[arg(long)]
        table: String,
        fasta: String,
    },
    /// Train a sequence taxonomy classifier (genome.train_sequence_classifier), with progress;
    /// Ctrl-C cancels and leaves the production classifier serving.
    TrainSeqs {
        #[arg(long)]
        name: String,
        /// Table (or view) of labelled reads.
        #[arg(long)]
        source: String,
        #[arg(long, default_value = "sequence")]
        sequence_column: String,
        #[arg(long, default_value = "lineage")]
        lineage_column: String,
        /// Ranks, top first, comma-separated.
        #[arg(long, default_value = "phylum,class,order,family,genus")]
        ranks: String,
        /// Held-out table with the same columns: its metrics go into the model's.
        #[arg(long)]
        evaluate_on: Option<String>,
        /// Sequence collection whose nearest references serve reads below the cut-off.
        #[arg(long)]
        fallback_collection: Option<String>,
        #[arg(long, default_value_t = 0.8)]
        cutoff: f64,
        /// Register the version as staging instead of promoting it to production.
        #[arg(long)]
        no_promote: bool,
    },
    /// Classify the reads of a FASTA file (genome.classify_sequences): a TSV on stdout, one row
    /// per read: id, label, rank, confidence, needs_fallback, lineage, confidences, nearest.
    ClassifySeqs {
        #[arg(long)]
        model: String,
        #[arg(long, default_value_t = 3)]
        fallback_k: i32,
        /// Reads per call.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        fasta: String,
    },
}

fn connect(url: &Option<String>) -> Client {
    let res = match url {
        Some(u) => Client::connect(u, NoTls),
        None => {
            let mut cfg = postgres::Config::new();
            let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            cfg.host(&env("PGHOST").unwrap_or_else(|| "localhost".into()));
            cfg.port(env("PGPORT").and_then(|p| p.parse().ok()).unwrap_or(5432));
            let user = env("PGUSER")
                .or_else(|| env("USER"))
                .unwrap_or_else(|| "postgres".into());
            cfg.user(&user);
            cfg.dbname(&env("PGDATABASE").unwrap_or(user));
            if let Some(p) = env("PGPASSWORD") {
                cfg.password(p);
            }
            cfg.application_name("genome-cli");
            cfg.connect(NoTls)
        }
    };
    res.unwrap_or_else(|e| {
        eprintln!("genome: cannot connect: {e}");
        std::process::exit(2)
    })
}

fn fail(e: postgres::Error) -> ! {
    match e.as_db_error() {
        Some(db) => {
            eprintln!("genome: ERROR: {}", db.message());
            if let Some(h) = db.hint() {
                eprintln!("genome: HINT: {h}");
            }
        }
        None => eprintln!("genome: {e}"),
    }
    std::process::exit(1)
}

fn full_classify(
    url: &Option<String>,
    collection: &str,
    mcs: i32,
    reduction: &str,
    no_embed: bool,
) {
    let mut client = connect(url);
    // Ctrl-C cancels the statement on the server (the run rolls back) and then we exit.
    let (_, cancelled) = cancel_on_ctrl_c(&mut client);
    let func = if no_embed {
        "hdbscan_recluster"
    } else {
        "full_classify"
    };
    let (coll, red) = (collection.to_string(), reduction.to_string());
    let run = std::thread::spawn(move || {
        client.query_one(
            &format!("SELECT run_id, n_rows, n_embedded, n_clusters, n_noise, n_kept, n_new, n_retired, seconds \
                      FROM genome.{func}($1, min_cluster_size => $2, reduction => $3)"),
            &[&coll, &mcs, &red],
        )
    });
    // Watch genome.progress from a second connection.
    let mut watcher = connect(url);
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} {msg:<28} [{bar:30}] {pos}/{len}")
            .unwrap()
            .progress_chars("=> "),
    );
    while !run.is_finished() {
        if let Ok(rows) = watcher.query(
            "SELECT stage, done, total FROM genome.progress WHERE collection = $1 AND job = $2",
            &[&collection, &func],
        ) {
            if let Some(r) = rows.first() {
                let (stage, done, total): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
                bar.set_message(stage);
                bar.set_length(total.max(0) as u64);
                bar.set_position(done.max(0) as u64);
            }
        }
        bar.tick();
        std::thread::sleep(Duration::from_millis(200));
    }
    bar.finish_and_clear();
    match run.join().expect("worker thread") {
        Ok(r) => {
            let (id, rows, emb, k, noise, kept, new, ret, secs): (
                i64,
                i64,
                i64,
                i32,
                i64,
                i32,
                i32,
                i32,
                f64,
            ) = (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
                r.get(8),
            );
            println!("run {id}: {rows} rows ({emb} embedded), {k} families ({kept} kept, {new} new, {ret} retired), {noise} unclustered, {secs:.1} s");
        }
        Err(e) if cancelled.load(Ordering::SeqCst) => {
            eprintln!("genome: cancelled; nothing was changed ({e})");
            std::process::exit(130)
        }
        Err(e) => fail(e),
    }
}

#[allow(clippy::too_many_arguments)]
fn worker(
    url: &Option<String>,
    only: &[String],
    interval: f64,
    batch: i32,
    min_pending: i32,
    threshold: Option<f32>,
    passes: Option<u64>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            eprintln!("genome: stopping after the current pass");
            stop.store(true, Ordering::SeqCst);
        })
        .expect("Ctrl-C handler");
    }
    let mut client = connect(url);
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let names: Vec<String> = if only.is_empty() {
            client
                .query("SELECT name FROM genome.collections ORDER BY name", &[])
                .unwrap_or_else(|e| fail(e))
                .iter()
                .map(|r| r.get(0))
                .collect()
        } else {
            only.to_vec()
        };
        for name in &names {
            // One call per batch, until less than min_pending is left (or nothing moved).
            loop {
                match client.query_one(
                    "SELECT processed, assigned, unclustered FROM genome.assign_family($1, $2, $3, $4)",
                    &[name, &batch, &min_pending, &threshold],
                ) {
                    Ok(r) => {
                        let (p, a, u): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
                        if p == 0 {
                            break;
                        }
                        println!("{name}: {p} rows, {a} assigned, {u} unclustered");
                    }
                    Err(e) => {
                        eprintln!("genome: {name}: {}", e.as_db_error().map(|d| d.message().to_string()).unwrap_or(e.to_string()));
                        break;
                    }
                }
                if stop.load(Ordering::SeqCst) {
                    break;
                }
            }
        }
        n += 1;
        if passes.is_some_and(|p| n >= p) {
            break;
        }
        let until = Instant::now() + Duration::from_secs_f64(interval * 60.0);
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn cluster_pets(url: &Option<String>, media: &Option<String>, pet: &Option<String>, max_pets: i32) {
    let mut c = connect(url);
    if let Some(pet) = pet {
        let r = c
            .query_one(
                "SELECT jsonb_pretty(genome.cluster_pet($1::text, $2))",
                &[pet, media],
            )
            .unwrap_or_else(|e| fail(e));
        println!("{}", r.get::<_, String>(0));
        return;
    }
    // Each call is its own transaction over up to max_pets marked pets; a pet that fails stays
    // marked with its error, so stop when a call updates nobody.
    let mut failed = 0;
    loop {
        let r = c
            .query_one(
                "SELECT (r->>'pets')::int, (r->>'errors')::int, (r->>'skipped_locked')::int, (r->>'still_dirty')::bigint,
                        (r->>'ms')::float8 FROM genome.cluster_dirty_pets($1, $2) r",
                &[media, &max_pets],
            )
            .unwrap_or_else(|e| fail(e));
        let (done, errors, locked, left, ms): (i32, i32, i32, i64, f64) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        failed += errors;
        println!("{done} pets updated, {errors} failed, {locked} locked by another run, {left} still marked ({ms:.0} ms)");
        if done == 0 || left == 0 {
            break;
        }
    }
    if failed > 0 {
        eprintln!(
            "genome: {failed} pet updates failed; their errors are in genome.pet_dirty.last_error"
        );
        std::process::exit(1);
    }
}

fn pet(url: &Option<String>, pet: &str, media: &Option<String>, heroes: i32) {
    let mut c = connect(url);
    let r = c
        .query_one(
            "SELECT jsonb_pretty(genome.pet_clusters($1::text, $2, $3))",
            &[&pet, media, &heroes],
        )
        .unwrap_or_else(|e| fail(e));
    println!("{}", r.get::<_, String>(0));
}

fn status(url: &Option<String>) {
    let mut c = connect(url);
    println!("collections:");
    for r in c
        .query(
            "SELECT c.name, c.relid::regclass::text, c.model, genome.pending_count(c.name),
                    (SELECT count(*) FROM genome.families f WHERE f.collection = c.name AND retired_at IS NULL AND NOT is_unclustered),
                    (SELECT size FROM genome.families f WHERE f.collection = c.name AND is_unclustered)
               FROM genome.collections c ORDER BY 1",
            &[],
        )
        .unwrap_or_else(|e| fail(e))
    {
        let (n, t, m, p, f, u): (String, String, String, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        println!("  {n:<20} table {t}, model {m}, {p} pending, {f} families, {u} unclustered");
    }
    println!("largest families:");
    for r in c
        .query(
            "SELECT collection, id, size, label FROM genome.families WHERE retired_at IS NULL AND NOT is_unclustered
              ORDER BY size DESC LIMIT 10",
            &[],
        )
        .unwrap_or_else(|e| fail(e))
    {
        let (col, id, size, label): (String, i64, i64, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
        println!("  {col:<20} #{id:<6} {size:>7}  {label}");
    }
    println!("pet media:");
    for r in c
        .query(
            "SELECT m.name, m.relid::regclass::text, m.model,
                    (SELECT count(*) FROM genome.pet_photo_clusters x WHERE x.media = m.name), d.marked, d.failing
               FROM genome.pet_media m
              CROSS JOIN LATERAL (SELECT count(*) AS marked, count(*) FILTER (WHERE x.last_error IS NOT NULL) AS failing
                                    FROM genome.pet_dirty x WHERE x.media = m.name) d
              ORDER BY 1",
            &[],
        )
        .unwrap_or_else(|e| fail(e))
    {
        let (n, t, m, k, d, e): (String, String, String, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        println!("  {n:<20} table {t}, model {m}, {k} clusters, {d} pets marked ({e} with an error)");
    }
    println!("last runs:");
    for r in c
        .query(
            "SELECT collection, kind, status, to_char(finished_at, 'YYYY-MM-DD HH24:MI:SS'), coalesce(n_rows, 0), coalesce(n_clusters, 0),
                    coalesce(extract(epoch FROM finished_at - started_at)::float8, 0), coalesce(error, '')
               FROM genome.runs ORDER BY id DESC LIMIT 5",
            &[],
        )
        .unwrap_or_else(|e| fail(e))
    {
        let (col, kind, st, at, rows, k, secs, err): (String, String, String, String, i64, i32, f64, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6), r.get(7));
        println!("  {at} {col:<20} {kind:<18} {st:<9} {rows} rows, {k} families, {secs:.1} s {err}");
    }
    println!("running now:");
    for r in c
        .query(
            "SELECT job, collection, stage, done, total FROM genome.progress",
            &[],
        )
        .unwrap_or_else(|e| fail(e))
    {
        let (j, col, st, d, t): (String, String, String, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        println!("  {j} {col}: {st} {d}/{t}");
    }
    let has_cron: bool = c
        .query_one("SELECT to_regnamespace('cron') IS NOT NULL", &[])
        .map(|r| r.get(0))
        .unwrap_or(false);
    println!("scheduled jobs:");
    if has_cron {
        for r in c.query("SELECT jobname, schedule, active FROM cron.job WHERE jobname LIKE 'genome_%' ORDER BY 1", &[]).unwrap_or_else(|e| fail(e)) {
            let (n, s, a): (String, String, bool) = (r.get(0), r.get(1), r.get(2));
            println!("  {n:<32} {s:<16} {}", if a { "active" } else { "inactive" });
        }
    } else {
        println!("  (pg_cron is not installed in this database)");
    }
}

fn rank(
    url: &Option<String>,
    intent: &str,
    catalog: &Option<String>,
    top_k: i32,
    tools: &[String],
) {
    let mut c = connect(url);
    let tools: Option<Vec<String>> = (!tools.is_empty()).then(|| tools.to_vec());
    let rows = c
        .query(
            "SELECT rank, capability, score, confidence, model_version, ranking_id
               FROM genome.rank_capabilities($1, $2, $3, $4)",
            &[&intent, &tools, &top_k, catalog],
        )
        .unwrap_or_else(|e| fail(e));
    let version = rows
        .first()
        .and_then(|r| r.get::<_, Option<String>>(4))
        .unwrap_or_else(|| "none (fused retrieval)".into());
    let id: i64 = rows.first().map(|r| r.get(5)).unwrap_or(0);
    println!("ranker {version}, ranking_id {id}");
    for r in rows {
        let (k, cap, score, conf): (i32, String, f32, Option<f32>) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let conf = conf.map_or("-".to_string(), |p| format!("{:.1}%", p * 100.0));
        println!("  {k:>3}  {cap:<32} score {score:>9.4}  confidence {conf}");
    }
}

fn train_ranker(
    url: &Option<String>,
    catalog: &str,
    examples: &Option<String>,
    dev: &Option<String>,
    epochs: i32,
    promote: bool,
) {
    let mut c = connect(url);
    let (pid, cancelled) = cancel_on_ctrl_c(&mut c);
    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch_progress(url, pid, format!("train-ranker {catalog}"), done.clone());
    let started = Instant::now();
    let res = c.query_one(
        "SELECT version, stage, examples, dev_examples, dev_mrr, dev_hit_at_10, dev_ece
           FROM genome.train_ranker($1, $2::text::regclass, dev => $3::text::regclass, epochs => $4, promote => $5)",
        &[&catalog, examples, dev, &epochs, &promote],
    );
    done.store(true, Ordering::SeqCst);
    let _ = watcher.join();
    match res {
        Ok(r) => {
            let (v, st, n, nd, mrr, h10, ece): (String, String, i64, i64, f32, f32, f32) = (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            );
            println!(
                "ranker {v} ({st}): {n} examples, dev {nd}: MRR {mrr:.3}, Hit@10 {h10:.3}, ECE {ece:.3}; {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
        Err(_) if cancelled.load(Ordering::SeqCst) => {
            eprintln!("genome: training cancelled; the production ranker still serves");
            std::process::exit(130)
        }
        Err(e) => fail(e),
    }
}

fn models(url: &Option<String>) {
    let mut c = connect(url);
    println!("models:");
    for r in c
        .query(
            "SELECT name, version, task, dimension, coalesce(stage, '-') FROM genome.models ORDER BY name, created_at",
            &[],
        )
        .unwrap_or_else(|e| fail(e))
    {
        let (n, v, t, d, st): (String, String, String, i32, String) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        println!("  {n}@{v:<12} {t:<16} {d:>5} dimensions  stage {st}");
    }
    println!("rankers:");
    for r in c
        .query(
            "SELECT catalog, version, stage, coalesce(canary_share, 0)::float8, coalesce(dev_mrr, 0)::float8,
                    coalesce(dev_hit_at_10, 0)::float8, to_char(trained_at, 'YYYY-MM-DD HH24:MI')
               FROM genome.ranker_versions ORDER BY catalog, trained_at",
            &[],
        )
        .unwrap_or_else(|e| fail(e))
    {
        let (cat, v, st, share, mrr, h10, at): (String, String, String, f64, f64, f64, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6));
        let canary = if share > 0.0 { format!(" (canary {:.0}%)", share * 100.0) } else { String::new() };
        println!("  {cat:<16} {v:<6} {st:<10}{canary} dev MRR {mrr:.3}, Hit@10 {h10:.3}, trained {at}");
    }
}

/// FASTA records: (id, header after the id, sequence lines joined).
fn read_fasta(path: &str) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        eprintln!("genome: cannot read {path}: {e}");
        std::process::exit(2)
    });
    let mut out: Vec<(String, String, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if let Some(h) = line.strip_prefix('>') {
            let h = h.trim_start();
            let (id, rest) = h.split_once(char::is_whitespace).unwrap_or((h, ""));
            out.push((id.to_string(), rest.to_string(), String::new()));
        } else if !line.trim().is_empty() {
            match out.last_mut() {
                Some(r) => r.2.push_str(line.trim()),
                None => {
                    eprintln!(
                        "genome: {path}:{}: sequence data before the first '>' header",
                        n + 1
                    );
                    std::process::exit(2)
                }
            }
        }
    }
    out
}

fn load_seqs(url: &Option<String>, table: &str, fasta: &str) {
    let recs = read_fasta(fasta);
    let mut c = connect(url);
    let mut tx = c.transaction().unwrap_or_else(|e| fail(e));
    // the table name as the server reads it (quoted by the server, never pasted raw)
    let exists: bool = tx
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .unwrap_or_else(|e| fail(e))
        .get(0);
    if !exists {
        let (schema, rel) = table
            .rsplit_once('.')
            .map_or((None, table), |(s, r)| (Some(s), r));
        let sql: String = tx
            .query_one(
                "SELECT format('CREATE TABLE %s%I (id text PRIMARY KEY, sequence text NOT NULL, lineage text)', \
                        CASE WHEN $1::text IS NULL THEN '' ELSE format('%I.', $1::text) END, $2::text)",
                &[&schema, &rel],
            )
            .unwrap_or_else(|e| fail(e))
            .get(0);
        tx.batch_execute(&sql).unwrap_or_else(|e| fail(e));
    }
    let copy: String = tx
        .query_one(
            "SELECT format('COPY %s (id, sequence, lineage) FROM STDIN', $1::text::regclass)",
            &[&table],
        )
        .unwrap_or_else(|e| fail(e))
        .get(0);
    let mut w = tx.copy_in(&copy).unwrap_or_else(|e| fail(e));
    use std::io::Write;
    let esc = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('\t', "\\t")
            .replace('\n', "\\n")
    };
    for (id, rest, seq) in &recs {
        let lineage = if rest.contains('\t') {
            rest.rsplit('\t').next().unwrap_or("")
        } else {
            rest.as_str()
        };
        let lineage = if lineage.trim().is_empty() {
            "\\N".to_string()
        } else {
            esc(lineage.trim())
        };
        writeln!(w, "{}\t{}\t{}", esc(id), esc(seq), lineage).expect("COPY stream");
    }
    w.finish().unwrap_or_else(|e| fail(e));
    tx.commit().unwrap_or_else(|e| fail(e));
    println!("loaded {} reads into {table}", recs.len());
}

struct TrainSeqs<'a> {
    name: &'a str,
    source: &'a str,
    sequence_column: &'a str,
    lineage_column: &'a str,
    ranks: &'a str,
    evaluate_on: &'a Option<String>,
    fallback_collection: &'a Option<String>,
    cutoff: f64,
    promote: bool,
}

fn train_seqs(url: &Option<String>, a: &TrainSeqs) {
    let mut c = connect(url);
    let (pid, cancelled) = cancel_on_ctrl_c(&mut c);
    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch_progress(url, pid, format!("train-seqs {}", a.name), done.clone());
    let ranks: Vec<String> = a.ranks.split(',').map(|r| r.trim().to_string()).collect();
    let res = c.query_one(
        "SELECT version, stage, sequences, skipped, taxa, seconds, metrics::text
           FROM genome.train_sequence_classifier($1, $2::text::regclass, $3, $4, $5, \
                evaluate_on => $6::text::regclass, cutoff => $7, fallback_collection => $8, promote => $9)",
        &[
            &a.name,
            &a.source,
            &a.sequence_column,
            &a.lineage_column,
            &ranks,
            a.evaluate_on,
            &a.cutoff,
            a.fallback_collection,
            &a.promote,
        ],
    );
    done.store(true, Ordering::SeqCst);
    let _ = watcher.join();
    match res {
        Ok(r) => {
            let (v, st, n, skipped, taxa, secs): (String, String, i64, i64, i32, f64) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
            println!(
                "{}@{v} ({st}): {n} reads ({skipped} skipped), {taxa} taxa at the deepest rank, {secs:.1} s",
                a.name
            );
            let m: serde_json::Value =
                serde_json::from_str(&r.get::<_, String>(6)).unwrap_or_default();
            let ev = &m["evaluation"];
            if let Some(ranks) = ev["ranks"].as_array() {
                println!(
                    "held-out ({} reads, {} of genera not trained on): accuracy on known genera, calls at the cut-off, ECE",
                    ev["n"], ev["n_novel"]
                );
                for rk in ranks {
                    let f = |k: &str| rk[k].as_f64().unwrap_or(f64::NAN);
                    println!(
                        "  {:<8} accuracy {:.3}  called {:.3} of which right {:.3}  ECE {:.3}  macro F1 {:.3}",
                        rk["rank"].as_str().unwrap_or_default(),
                        f("accuracy_known"),
                        f("coverage"),
                        f("called_accuracy"),
                        f("ece"),
                        f("f1_macro")
                    );
                }
                let f = |k: &str| ev[k].as_f64().unwrap_or(f64::NAN);
                println!(
                    "  deepest rank withheld: {:.3} of known, {:.3} of novel (novel with the rank above right: {:.3})",
                    f("known_withheld"),
                    f("novel_withheld"),
                    f("novel_parent_right")
                );
            }
        }
        Err(_) if cancelled.load(Ordering::SeqCst) => {
            eprintln!("genome: training cancelled; the production classifier still serves");
            std::process::exit(130)
        }
        Err(e) => fail(e),
    }
}

/// Cancel the statement running on `c` when Ctrl-C is pressed; returns its backend pid (for
/// [`watch_progress`]) and a flag set once cancelled.
fn cancel_on_ctrl_c(c: &mut Client) -> (i32, Arc<AtomicBool>) {
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap_or_else(|e| fail(e))
        .get(0);
    let cancel_token = c.cancel_token();
    let cancelled = Arc::new(AtomicBool::new(false));
    let flag = cancelled.clone();
    ctrlc::set_handler(move || {
        flag.store(true, Ordering::SeqCst);
        let _ = cancel_token.cancel_query(NoTls);
    })
    .expect("Ctrl-C handler");
    (pid, cancelled)
}

/// Print the stages of a job (genome.progress, read on a second connection) to stderr until
/// `done`.
fn watch_progress(
    url: &Option<String>,
    pid: i32,
    what: String,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let url = url.clone();
    std::thread::spawn(move || {
        let mut w = connect(&url);
        let mut last = String::new();
        while !done.load(Ordering::SeqCst) {
            if let Ok(rows) = w.query(
                "SELECT stage, done, total FROM genome.progress WHERE pid = $1",
                &[&pid],
            ) {
                for r in rows {
                    let (st, d, t): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
                    let line = format!("{what}: {st} {d}/{t}");
                    if line != last {
                        eprintln!("{line}");
                        last = line;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

fn classify_seqs(url: &Option<String>, model: &str, k: i32, batch: usize, fasta: &str) {
    let recs = read_fasta(fasta);
    let mut c = connect(url);
    let ranks: Vec<String> = c
        .query_one(
            "SELECT ARRAY(SELECT jsonb_array_elements_text(m.config->'ranks')) FROM genome.models m \
              WHERE m.id = genome._resolve_model($1)",
            &[&model],
        )
        .unwrap_or_else(|e| fail(e))
        .get(0);
    println!(
        "id\tlabel\trank\tconfidence\tneeds_fallback\tlineage\tconfidences\tnearest\tmodel_version"
    );
    for chunk in recs.chunks(batch.max(1)) {
        let seqs: Vec<&str> = chunk.iter().map(|r| r.2.as_str()).collect();
        let rows = c
            .query(
                "SELECT ord, label, rank, confidence, needs_fallback, lineage::text, fallback::text, model_version \
                   FROM genome.classify_sequences($1, $2, $3) ORDER BY ord",
                &[&model, &seqs, &k],
            )
            .unwrap_or_else(|e| {
                // name the read the server's "sequence N" means
                if let Some(db) = e.as_db_error() {
                    if let Some(n) = db.message().split("sequence ").nth(1).and_then(|t| t.split(' ').next()).and_then(|t| t.parse::<usize>().ok()) {
                        if let Some(r) = chunk.get(n.wrapping_sub(1)) {
                            eprintln!("genome: read {}: {}", r.0, db.message());
                            std::process::exit(1)
                        }
                    }
                }
                fail(e)
            });
        for r in rows {
            let ord: i32 = r.get(0);
            let id = &chunk[ord as usize - 1].0;
            let label: Option<String> = r.get(1);
            let rank: Option<String> = r.get(2);
            let conf: Option<f64> = r.get(3);
            let needs: Option<bool> = r.get(4);
            let lineage: Option<String> = r.get(5);
            let fallback: Option<String> = r.get(6);
            let version: String = r.get(7);
            let (names, confs) = match lineage.as_deref().map(parse_lineage) {
                Some(l) => (
                    ranks
                        .iter()
                        .map(|k| l.get(k).map_or("", |x| x.0.as_str()).to_string())
                        .collect::<Vec<_>>()
                        .join(";"),
                    ranks
                        .iter()
                        .map(|k| l.get(k).map_or(String::new(), |x| format!("{:.3}", x.1)))
                        .collect::<Vec<_>>()
                        .join(";"),
                ),
                None => (String::new(), String::new()),
            };
            let nearest = fallback.as_deref().map(first_nearest).unwrap_or_default();
            println!(
                "{id}\t{}\t{}\t{}\t{}\t{names}\t{confs}\t{nearest}\t{version}",
                label.unwrap_or_default(),
                rank.unwrap_or_default(),
                conf.map_or(String::new(), |c| format!("{c:.3}")),
                needs.map_or(String::new(), |b| b.to_string()),
            );
        }
    }
}

/// rank -> (name, confidence) from classify_sequences' lineage.
fn parse_lineage(s: &str) -> std::collections::HashMap<String, (String, f64)> {
    let v: serde_json::Value = serde_json::from_str(s).unwrap_or_default();
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, x)| {
                    (
                        k.clone(),
                        (
                            x["name"].as_str().unwrap_or_default().to_string(),
                            x["confidence"].as_f64().unwrap_or(f64::NAN),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The nearest reference of a fallback list, as "id (similarity) lineage".
fn first_nearest(s: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(s).unwrap_or_default();
    match v.get(0) {
        Some(n) => format!(
            "{} ({:.3}) {}",
            n["id"].as_str().unwrap_or_default(),
            n["similarity"].as_f64().unwrap_or(f64::NAN),
            n["lineage"].as_str().unwrap_or_default()
        ),
        None => String::new(),
    }
}

fn main() {
    let cli = Cli::parse();
    match &cli.cmd {
        Cmd::FullClassify {
            collection,
            min_cluster_size,
            reduction,
            no_embed,
        } => full_classify(
            &cli.url,
            collection,
            *min_cluster_size,
            reduction,
            *no_embed,
        ),
        Cmd::ClassifyWorker {
            collection,
            interval,
            batch_size,
            min_pending,
            threshold,
            passes,
        } => worker(
            &cli.url,
            collection,
            *interval,
            *batch_size,
            *min_pending,
            *threshold,
            *passes,
        ),
        Cmd::ClusterPets {
            media,
            pet: p,
            max_pets,
        } => cluster_pets(&cli.url, media, p, *max_pets),
        Cmd::Pet {
            pet: p,
            media,
            heroes,
        } => pet(&cli.url, p, media, *heroes),
        Cmd::Status => status(&cli.url),
        Cmd::Rank {
            intent,
            catalog,
            top_k,
            context_tool,
        } => rank(&cli.url, intent, catalog, *top_k, context_tool),
        Cmd::TrainRanker {
            catalog,
            examples,
            dev,
            epochs,
            no_promote,
        } => train_ranker(&cli.url, catalog, examples, dev, *epochs, !*no_promote),
        Cmd::Models => models(&cli.url),
        Cmd::LoadSeqs { table, fasta } => load_seqs(&cli.url, table, fasta),
        Cmd::TrainSeqs {
            name,
            source,
            sequence_column,
            lineage_column,
            ranks,
            evaluate_on,
            fallback_collection,
            cutoff,
            no_promote,
        } => train_seqs(
            &cli.url,
            &TrainSeqs {
                name,
                source,
                sequence_column,
                lineage_column,
                ranks,
                evaluate_on,
                fallback_collection,
                cutoff: *cutoff,
                promote: !*no_promote,
            },
        ),
        Cmd::ClassifySeqs {
            model,
            fallback_k,
            batch,
            fasta,
        } => classify_seqs(&cli.url, model, *fallback_k, *batch, fasta),
    }
}
