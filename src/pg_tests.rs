// `#[pg_test]`s: the SQL surface inside a real backend (each test runs in a transaction that
// is rolled back). Models come from the directory the set-up installs under PostgreSQL's share dir.

use pgrx::prelude::*;

fn model_dir(name: &str) -> String {
    format!("{}/pg_genome/models/{name}", crate::share_dir())
}

fn register(name: &str) {
    Spi::run(&format!(
        "SELECT genome.register_model_dir('{name}', '1', '{}')",
        model_dir(name)
    ))
    .unwrap();
}

fn one<T: pgrx::IntoDatum + pgrx::FromDatum>(sql: &str) -> Option<T> {
    Spi::get_one::<T>(sql).unwrap()
}

#[pg_test]
fn embed_returns_a_384_d_unit_vector_that_round_trips_through_pgvector() {
    register("all-minilm-l6-v2");
    assert_eq!(one::<i32>("SELECT vector_dims(genome.embed('hello world'))"), Some(384));
    let norm = one::<f64>("SELECT vector_norm(genome.embed('hello world'))").unwrap();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    Spi::run(
        "CREATE TABLE t (id int, body text, e vector(384));
         INSERT INTO t SELECT i, 'text number ' || i, NULL FROM generate_series(1, 50) i;
         UPDATE t SET e = genome.embed(body);
         CREATE INDEX ON t USING hnsw (e vector_cosine_ops);",
    )
    .unwrap();
    assert_eq!(one::<i64>("SELECT count(*) FROM t WHERE e IS NOT NULL"), Some(50));
    // text form -> vector -> same values (the datum we build is a valid pgvector value)
    assert_eq!(one::<bool>("SELECT e = e::text::vector FROM t WHERE id = 7"), Some(true));
    assert_eq!(one::<f64>("SELECT round((genome.embed('text number 7') <=> e)::numeric, 6)::float8 FROM t WHERE id = 7"), Some(0.0));
    assert_eq!(
        one::<i32>("SELECT id FROM t ORDER BY e <=> genome.embed('text number 23') LIMIT 1"),
        Some(23)
    );
}

#[pg_test]
fn default_model_reproduces_sentence_transformers_in_sql() {
    register("all-minilm-l6-v2");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/minilm-reference.jsonl");
    let text = std::fs::read_to_string(fixture).expect("fixture");
    let mut worst: f64 = 1.0;
    let mut n = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let cos = Spi::get_one_with_args::<f64>(
            "SELECT 1 - (genome.embed($1) <=> $2::vector)",
            &[v["text"].as_str().unwrap().into(), v["embedding"].to_string().into()],
        )
        .unwrap()
        .unwrap();
        worst = worst.min(cos);
        n += 1;
    }
    assert_eq!(n, 73);
    assert!(worst >= 0.9999, "minimum cosine {worst}");
}

#[pg_test]
fn nulls_and_order_in_batches() {
    register("tiny-bert");
    Spi::run("SET LOCAL genome.default_model = 'tiny-bert'; SET LOCAL genome.batch_size = 2").unwrap();
    assert_eq!(one::<bool>("SELECT genome.embed(NULL) IS NULL"), Some(true));
    assert_eq!(one::<bool>("SELECT genome.embed_batch(NULL) IS NULL"), Some(true));
    assert_eq!(one::<i32>("SELECT cardinality(genome.embed_batch('{}'::text[]))"), Some(0));
    let ok = one::<bool>(
        "WITH b AS (SELECT genome.embed_batch(ARRAY['one', NULL, 'a much longer text than the others', '', NULL, 'two']) v)
         SELECT v[2] IS NULL AND v[5] IS NULL
            AND v[1] = genome.embed('one') AND v[3] = genome.embed('a much longer text than the others')
            AND v[4] = genome.embed('') AND v[6] = genome.embed('two') AND cardinality(v) = 6
           FROM b",
    );
    // batched and single runs differ only by float rounding; compare by distance instead of '='
    if ok != Some(true) {
        let d = one::<f64>(
            "WITH b AS (SELECT genome.embed_batch(ARRAY['one', NULL, 'a much longer text than the others', '', NULL, 'two']) v)
             SELECT greatest(v[1] <=> genome.embed('one'), v[3] <=> genome.embed('a much longer text than the others'),
                             v[4] <=> genome.embed(''), v[6] <=> genome.embed('two'))
               FROM b WHERE v[2] IS NULL AND v[5] IS NULL AND cardinality(v) = 6",
        );
        assert!(d.is_some_and(|d| d < 1e-6), "batch order or NULL positions wrong: {d:?}");
    }
}

#[pg_test(error = "pg_genome: model \"nope\" is not registered")]
fn unknown_model_is_an_error() {
    register("tiny-bert");
    one::<i32>("SELECT vector_dims(genome.embed('x', 'nope'))");
}

#[pg_test(error = "pg_genome: model \"all-minilm-l6-v2\" is not registered: the model registry genome.models is empty")]
fn empty_registry_is_an_error() {
    Spi::run("DELETE FROM genome.models").unwrap();
    one::<i32>("SELECT vector_dims(genome.embed('x'))");
}

#[pg_test]
fn versions_and_name_at_version() {
    register("tiny-bert");
    Spi::run(&format!("SELECT genome.register_model_dir('tiny-bert', '2', '{}')", model_dir("tiny-bert"))).unwrap();
    assert_eq!(one::<i32>("SELECT vector_dims(genome.embed('x', 'tiny-bert@1'))"), Some(32));
    assert_eq!(one::<i64>("SELECT count(*) FROM genome.models WHERE name = 'tiny-bert'"), Some(2));
}

#[pg_test(error = "pg_genome: model \"tiny-bert\" version \"1\" is already registered")]
fn duplicate_version_is_an_error() {
    register("tiny-bert");
    register("tiny-bert");
}

#[pg_test(error = "pg_genome: ONNX model could not be loaded: not a valid ONNX model (field number 0)")]
fn corrupt_onnx_bytes_are_refused_at_registration() {
    register("tiny-bert");
    Spi::run(
        "SELECT genome.register_model('broken', '1', '\\x00010203'::bytea, tokenizer, config) FROM genome.models WHERE name = 'tiny-bert'",
    )
    .unwrap();
}

#[pg_test(error = "pg_genome: model does not match its config: output \"last_hidden_state\" is not [batch, tokens, dimension] (it has 3 dimensions; config: pooling Mean, dimension 64)")]
fn output_that_does_not_fit_the_config_is_refused() {
    register("tiny-bert");
    Spi::run(
        "SELECT genome.register_model('misfit', '1', onnx, tokenizer, jsonb_set(config, '{dimension}', '64'))
           FROM genome.models WHERE name = 'tiny-bert'",
    )
    .unwrap();
}

#[pg_test(error = "pg_genome: model does not match its config: config names output \"pooled\" but the model's outputs are [\"last_hidden_state\"]")]
fn a_model_edited_after_registration_fails_cleanly_at_use() {
    register("tiny-bert");
    // bypass the registration check: a row edited by hand to a wrong output name
    Spi::run(
        "UPDATE genome.models SET config = jsonb_set(config, '{output_name}', '\"pooled\"') WHERE name = 'tiny-bert'",
    )
    .unwrap();
    one::<i32>("SELECT vector_dims(genome.embed('x', 'tiny-bert'))");
}

#[pg_test]
fn sessions_are_cached_and_invalidated_when_the_row_changes() {
    register("tiny-bert");
    Spi::run("SELECT genome.clear_model_cache()").unwrap();
    one::<i32>("SELECT vector_dims(genome.embed('x', 'tiny-bert'))");
    one::<i32>("SELECT vector_dims(genome.embed('y', 'tiny-bert'))");
    assert_eq!(one::<i64>("SELECT count(*) FROM genome.loaded_models()"), Some(1));
    let v1 = one::<String>("SELECT row_version FROM genome.loaded_models()").unwrap();
    Spi::run("UPDATE genome.models SET config = jsonb_set(config, '{normalize}', 'false') WHERE name = 'tiny-bert'").unwrap();
    let norm = one::<f64>("SELECT vector_norm(genome.embed('some words', 'tiny-bert'))").unwrap();
    assert!((norm - 1.0).abs() > 1e-3, "unnormalised output expected after the config change, got norm {norm}");
    let v2 = one::<String>("SELECT row_version FROM genome.loaded_models()").unwrap();
    assert_ne!(v1, v2);
    assert_eq!(one::<i64>("SELECT count(*) FROM genome.loaded_models()"), Some(1));
    assert_eq!(one::<i32>("SELECT intra_op_threads FROM genome.loaded_models()"), Some(1));
}

#[pg_test(error = "pg_genome: execution provider \"cuda\" is not available: pg_genome was built without the `cuda` cargo feature")]
fn cuda_without_the_feature_is_reported() {
    register("tiny-bert");
    Spi::run("SET LOCAL genome.execution_provider = 'cuda'").unwrap();
    one::<i32>("SELECT vector_dims(genome.embed('x', 'tiny-bert'))");
}

#[pg_test]
fn embed_is_not_immutable() {
    let vol = one::<String>(
        "SELECT string_agg(DISTINCT provolatile::text, '') FROM pg_proc WHERE pronamespace = 'genome'::regnamespace AND proname LIKE 'embed%'",
    );
    assert_eq!(vol.as_deref(), Some("s"));
}

fn three_topics() {
    register("all-minilm-l6-v2");
    Spi::run(
        "CREATE TABLE docs (id bigint PRIMARY KEY, topic int, body text);
         INSERT INTO docs SELECT i, i % 3, (ARRAY['my cat %s sleeps on the warm sofa all day',
                                                  'the stock market index fell %s points today',
                                                  'our football team won the match %s to nil'])[1 + i % 3]
                                   FROM generate_series(1, 90) i;
         UPDATE docs SET body = format(body, id);
         SELECT genome.register_collection('docs', 'docs', 'id', 'body');",
    )
    .unwrap();
}

#[pg_test]
fn full_classify_groups_topics_and_assign_family_follows_centroids() {
    three_topics();
    assert_eq!(one::<i64>("SELECT genome.pending_count('docs')"), Some(90));
    // before any full run there are no families: assignment waits instead of dumping rows
    assert_eq!(one::<i64>("SELECT processed FROM genome.assign_family('docs', min_pending => 0)"), Some(0));
    let k = one::<i32>("SELECT n_clusters FROM genome.full_classify('docs', min_cluster_size => 10)").unwrap();
    assert_eq!(k, 3);
    // each topic is exactly one family, and the three differ
    assert_eq!(one::<i64>("SELECT count(DISTINCT family_id) FROM docs"), Some(3));
    assert_eq!(one::<i64>("SELECT count(*) FROM (SELECT topic FROM docs GROUP BY topic HAVING count(DISTINCT family_id) > 1) x"), Some(0));
    Spi::run("INSERT INTO docs VALUES (1000, 0, 'my cat 1000 sleeps on the warm sofa all day'), (1001, 2, 'our football team won the match 1001 to nil')").unwrap();
    // an explicit threshold is honoured exactly (the calibrated ones of such tight template families sit near 0.9)
    assert_eq!(one::<i64>("SELECT assigned FROM genome.assign_family('docs', min_pending => 1, threshold => 0.5)"), Some(2));
    assert_eq!(one::<bool>("SELECT (SELECT family_id FROM docs WHERE id = 1000) = (SELECT family_id FROM docs WHERE id = 3)"), Some(true));
    assert_eq!(one::<bool>("SELECT (SELECT family_id FROM docs WHERE id = 1001) = (SELECT family_id FROM docs WHERE id = 5)"), Some(true));
    assert_eq!(one::<i64>("SELECT sum(size)::bigint FROM genome.families WHERE collection = 'docs'"), Some(92));
}

#[pg_test]
fn progress_slots_are_empty_when_nothing_runs_and_drop_removes_registration() {
    three_topics();
    assert_eq!(one::<i64>("SELECT count(*) FROM genome.progress_slots()"), Some(0));
    Spi::run("DROP TABLE docs").unwrap();
    assert_eq!(one::<i64>("SELECT count(*) FROM genome.collections"), Some(0));
    assert_eq!(one::<i64>("SELECT count(*) FROM genome.families"), Some(0));
}

#[pg_test(error = "pg_genome: collection \"nope\" is not registered")]
fn unknown_collection_is_an_error() {
    Spi::run("SELECT * FROM genome.assign_family('nope')").unwrap();
}

#[pg_test]
fn auto_embed_queues_inserts_and_text_changes_and_the_queue_step_embeds_them() {
    register("tiny-bert");
    Spi::run(
        "CREATE TABLE q (id int PRIMARY KEY, body text);
         SELECT genome.register_collection('q', 'q', 'id', 'body', model => 'tiny-bert');
         SELECT genome.enable_auto_embed('q');
         INSERT INTO q SELECT i, 'row ' || i FROM generate_series(1, 10) i;",
    )
    .unwrap();
    assert_eq!(one::<i64>("SELECT pending FROM genome.embed_queue WHERE collection = 'q'"), Some(10));
    // no worker in this cluster: one queue step in this transaction does what a worker does
    assert_eq!(one::<i64>("SELECT genome.process_embed_queue(100)"), Some(10));
    assert_eq!(one::<i64>("SELECT count(*) FROM q WHERE embedding IS NOT NULL"), Some(10));
    assert_eq!(one::<bool>("SELECT (embedding <=> genome.embed('row 3', 'tiny-bert')) < 1e-6 FROM q WHERE id = 3"), Some(true));
    Spi::run("UPDATE q SET body = 'changed' WHERE id = 3").unwrap();
    assert_eq!(one::<bool>("SELECT embedding IS NULL FROM q WHERE id = 3"), Some(true));
    assert_eq!(one::<i64>("SELECT pending FROM genome.embed_queue WHERE collection = 'q'"), Some(1));
    assert_eq!(one::<i64>("SELECT genome.process_embed_queue()"), Some(1));
    assert_eq!(one::<bool>("SELECT (embedding <=> genome.embed('changed', 'tiny-bert')) < 1e-6 FROM q WHERE id = 3"), Some(true));
    // the search finds it, through the index the registration created
    assert_eq!(one::<String>("SELECT id FROM genome.search('q', 'changed', top_k => 1)"), Some("3".into()));
    assert_eq!(one::<i64>("SELECT count(*) FROM pg_indexes WHERE tablename = 'q' AND indexname = 'genome_hnsw_q'"), Some(1));
    assert_eq!(one::<i64>("SELECT genome.disable_auto_embed('q')"), Some(0));
    Spi::run("INSERT INTO q VALUES (11, 'not queued')").unwrap();
    assert_eq!(one::<i64>("SELECT pending FROM genome.embed_queue WHERE collection = 'q'"), Some(0));
}

#[pg_test]
fn health_and_metrics_report_without_workers() {
    register("tiny-bert");
    let h = one::<pgrx::JsonB>("SELECT genome.health()").unwrap().0;
    assert_eq!(h["extension_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(h["runtime"]["onnxruntime_loaded"], true);
    assert_eq!(h["workers"].as_array().map(|a| a.len()), Some(0));
    Spi::run("SELECT genome.embed('x', 'tiny-bert')").unwrap();
    let m = one::<String>("SELECT genome.metrics()").unwrap();
    assert!(m.contains("# TYPE genome_embed_latency_seconds histogram"), "{m}");
    assert!(m.contains("genome_workers_alive 0"), "{m}");
}

#[pg_test(error = "pg_genome: top_k must be between 1 and 1000")]
fn search_rejects_a_bad_top_k() {
    three_topics();
    Spi::run("SELECT * FROM genome.search('docs', 'cat', top_k => 0)").unwrap();
}

fn register_image_model() {
    Spi::run(&format!(
        "SELECT genome.register_model_dir('efficientnet-lite0', '1', '{}', task => 'image-embedding')",
        model_dir("efficientnet-lite0")
    ))
    .unwrap();
}

/// A 2x2 PNG made by hand (signature, IHDR, one zlib IDAT, IEND) so the test needs no encoder.
fn tiny_png_hex() -> String {
    // produced by Pillow: Image.new("RGB", (2, 2), (200, 30, 60)).save(b, "PNG")
    "89504e470d0a1a0a0000000d4948445200000002000000020802000000fdd49a730000001649444154789c633c2167c3c0c0c0c4c0c0c0c0c000000e4e0126476849220000000049454e44ae426082"
        .to_string()
}

#[pg_test]
fn embed_image_gives_a_unit_vector_and_quality_is_jsonb() {
    register_image_model();
    let png = tiny_png_hex();
    assert_eq!(
        one::<i32>(&format!("SELECT vector_dims(genome.embed_image('\\x{png}'::bytea))")),
        Some(1280)
    );
    let norm = one::<f64>(&format!("SELECT vector_norm(genome.embed_image('\\x{png}'::bytea))")).unwrap();
    assert!((norm - 1.0).abs() < 1e-5);
    let q = one::<pgrx::JsonB>(&format!("SELECT genome.image_quality('\\x{png}'::bytea)")).unwrap().0;
    assert_eq!(q["resolution"]["width"], 2);
    // a flat colour: no edges, no contrast
    assert_eq!(q["sharpness"]["laplacian_variance"].as_f64(), Some(0.0));
    assert_eq!(q["contrast"]["rms"].as_f64(), Some(0.0));
    let batch = one::<i64>(&format!(
        "SELECT count(v) FROM unnest(genome.embed_images(ARRAY['\\x{png}'::bytea, NULL])) v"
    ));
    assert_eq!(batch, Some(1));
}

#[pg_test(error = "pg_genome: invalid image: not a JPEG, PNG or WebP image (unrecognised header)")]
fn embed_image_rejects_non_images() {
    register_image_model();
    Spi::run("SELECT genome.embed_image('\\x00010203040506070809'::bytea)").unwrap();
}

#[pg_test(error = "pg_genome: image 2: invalid image: empty input (0 bytes)")]
fn embed_images_names_the_bad_element() {
    register_image_model();
    Spi::run(&format!(
        "SELECT genome.embed_images(ARRAY['\\x{}'::bytea, ''::bytea])",
        tiny_png_hex()
    ))
    .unwrap();
}

#[pg_test]
fn hero_score_and_pet_update_edges() {
    // (0.4 * 0.8 + 0.3 * 0.9 + 0.2 * 0.5) / 0.9 with the default weights and 90-day half-life
    let s = one::<f64>("SELECT genome.hero_score_of(0.8, 0.9, 90)").unwrap();
    assert!((s - (0.4 * 0.8 + 0.3 * 0.9 + 0.2 * 0.5) / 0.9).abs() < 1e-12, "{s}");
    // a pet with no photos: nothing to plan
    assert_eq!(
        one::<i32>("SELECT joined + new_clusters FROM genome._pet_update('none', '1')"),
        Some(0)
    );
    // three photos, fewer than genome.pet_min_pending: nothing happens yet, nothing is written
    Spi::run("CREATE TABLE ph (pet int, id int, img bytea, at timestamptz)").unwrap();
    Spi::run(
        "INSERT INTO genome.pet_media (name, relid, pet_column, image_id_column, image_column, taken_at_column, model, dimension)
         VALUES ('m', 'ph', 'pet', 'id', 'img', 'at', 'x@1', 2)",
    )
    .unwrap();
    Spi::run(
        "INSERT INTO genome.pet_photos (media, image_id, pet_id, embedding, quality, taken_at)
         VALUES ('m', 'a', '1', '[1,0]', 1, now()), ('m', 'b', '1', '[0.9,0.1]', 1, now()), ('m', 'c', '1', '[0,1]', 1, now())",
    )
    .unwrap();
    let r = Spi::get_three::<i32, i32, f64>("SELECT * FROM genome._pet_update('m', '1')").unwrap();
    assert_eq!(r, (Some(0), Some(0), None));
    assert_eq!(
        one::<i64>("SELECT count(*) FROM genome.pet_photos WHERE cluster_id IS NOT NULL"),
        Some(0)
    );
    assert_eq!(one::<i64>("SELECT count(*) FROM genome.pet_photo_clusters"), Some(0));
}
