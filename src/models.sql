-- pg_genome models: the registry of ONNX models (text and image embedding). Registration,
-- session building and embedding are in src/models.rs, src/embed.rs and src/images.rs.

-- Tables

CREATE TABLE models (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL,
    version     text NOT NULL,
    task        text NOT NULL DEFAULT 'text-embedding' CHECK (task IN ('text-embedding', 'image-embedding', 'sequence-embedding', 'sequence-classifier')),
    dimension   integer NOT NULL CHECK (dimension BETWEEN 1 AND 16000),
    onnx        bytea,                 -- the ONNX model itself ...
    onnx_path   text,                  -- ... or an absolute path on the database server
    tokenizer   text,                  -- Hugging Face tokenizer.json (text models)
    config      jsonb NOT NULL,        -- pooling, normalize, max_tokens, output_name, input_names, dimension
    sha256      text NOT NULL,         -- of the ONNX bytes (sequence models: of their config and weights)
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- lifecycle (0.7.0): NULL = unmanaged; a name given without a version resolves to its
    -- production version, else its newest version that is not archived
    stage       text CHECK (stage IN ('staging', 'production', 'archived')),
    promoted_at timestamptz,
    UNIQUE (name, version),
    -- ONNX models hold their model; k-mer featurisers and sequence classifiers (0.8.0) are
    -- computed by pg_genome itself from their config and weights
    CHECK ((onnx IS NULL) <> (onnx_path IS NULL) OR (config->>'kind' IN ('kmer', 'sequence-classifier') AND onnx IS NULL AND onnx_path IS NULL)),
    CHECK ((config->>'dimension')::int = dimension),
    weights     bytea,                 -- 0.8.0: a featuriser's fitted weights, a classifier's bytes
    metrics     jsonb,                 -- 0.8.0: evaluation metrics of a trained model
    CHECK (task <> 'sequence-classifier' OR (config->>'kind' = 'sequence-classifier' AND weights IS NOT NULL)),
    CHECK (config->>'kind' IS DISTINCT FROM 'kmer' OR task = 'sequence-embedding')
);
COMMENT ON TABLE models IS 'pg_genome model registry: one row per model version; nothing is downloaded at call time';
-- Rows are user data: pg_dump keeps them, and the identity sequence (restored ids never collide).
SELECT pg_catalog.pg_extension_config_dump('models', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('models', 'id')::regclass, '');
GRANT SELECT ON models TO genome_monitor;
GRANT SELECT, INSERT, UPDATE, DELETE ON models TO genome_admin;

-- Functions

-- Lifecycle of registry models (text and image): promote a version to production (the previous
-- production version is archived), roll back to the previous one. Writes genome.models, which
-- needs genome_admin (SECURITY INVOKER).
CREATE FUNCTION promote_model(name text, version text) RETURNS @extschema@.models
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE r @extschema@.models;
BEGIN
    PERFORM pg_advisory_xact_lock(@extschema@._lock_key('ranking'), hashtext('model:' || name));
    IF NOT EXISTS (SELECT 1 FROM @extschema@.models m WHERE m.name = promote_model.name AND m.version = promote_model.version) THEN
        RAISE EXCEPTION 'pg_genome: model "%" version "%" is not registered', name, version USING ERRCODE = '42704';
    END IF;
    UPDATE @extschema@.models m SET stage = 'archived'
     WHERE m.name = promote_model.name AND m.stage = 'production' AND m.version <> promote_model.version;
    UPDATE @extschema@.models m SET stage = 'production', promoted_at = now()
     WHERE m.name = promote_model.name AND m.version = promote_model.version RETURNING * INTO r;
    RETURN r;
END $$;
COMMENT ON FUNCTION promote_model IS 'make a model version the one its name resolves to (production); the previous production version is archived';

CREATE FUNCTION rollback_model(name text) RETURNS @extschema@.models
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE v text;
BEGIN
    SELECT m.version INTO v FROM @extschema@.models m
     WHERE m.name = rollback_model.name AND m.stage = 'archived' AND m.promoted_at IS NOT NULL
     ORDER BY m.promoted_at DESC LIMIT 1;
    IF v IS NULL THEN
        RAISE EXCEPTION 'pg_genome: model "%" has no earlier production version to roll back to', name USING ERRCODE = '55000';
    END IF;
    RETURN @extschema@.promote_model(name, v);
END $$;
COMMENT ON FUNCTION rollback_model IS 'make the previous production version of a model the production one again';

-- Registers model.onnx, tokenizer.json and genome.json from a directory on the database server.
-- Reading server files is for superusers and pg_read_server_files: pg_read_binary_file and
-- pg_read_file perform that check themselves (SECURITY INVOKER).
CREATE FUNCTION register_model_dir(name text, version text, dir text,
                                   task text DEFAULT 'text-embedding', copy boolean DEFAULT true)
RETURNS bigint LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg jsonb := pg_read_file(dir || '/genome.json')::jsonb;
    -- image models have no tokenizer (text models and DNA language models do)
    tok text := CASE WHEN task IN ('text-embedding', 'sequence-embedding') THEN pg_read_file(dir || '/tokenizer.json') END;
BEGIN
    IF copy THEN
        RETURN @extschema@.register_model(name, version, pg_read_binary_file(dir || '/model.onnx'), tok, cfg, task);
    END IF;
    RETURN @extschema@.register_model_path(name, version, dir || '/model.onnx', tok, cfg, task);
END $$;
COMMENT ON FUNCTION register_model_dir IS 'register a model from a server directory holding model.onnx, genome.json and (text models) tokenizer.json';

-- Defined in Rust (src/models.rs, src/embed.rs, src/images.rs):
COMMENT ON FUNCTION register_model IS 'register a model from its ONNX bytes, tokenizer and config (superuser or genome_admin); returns its id';
COMMENT ON FUNCTION register_model_path IS 'register a model whose ONNX file stays on the server, read at load time (also needs pg_read_server_files); returns its id';
COMMENT ON FUNCTION clear_model_cache IS 'drop every model session this backend has cached (they reload on next use)';
COMMENT ON FUNCTION loaded_models IS 'the model sessions this backend has loaded, with the row version they were built from';
COMMENT ON FUNCTION onnxruntime_version IS 'the ONNX Runtime version this backend loaded (NULL before the first model run)';
COMMENT ON FUNCTION embed IS 'embed one text with a registered model (default genome.default_model); NULL gives NULL';
COMMENT ON FUNCTION embed_batch IS 'embed many texts in order, genome.batch_size per model call; NULL elements give NULL';
COMMENT ON FUNCTION embed_image IS 'embed one image (JPEG, PNG or WebP bytes) with an image model (default genome.default_image_model)';
COMMENT ON FUNCTION embed_images IS 'embed many images in order, genome.batch_size per model call; a bad image is an ERROR naming its position';
COMMENT ON FUNCTION image_quality IS 'photo quality of an image: sharpness, exposure, contrast, resolution and a combined 0..1 score';

-- The model a spec names (name or name@version, the newest version when none is given; NULL =
-- genome.default_model). The rule is Rust's (genome._resolve_model, src/models.rs).
CREATE FUNCTION resolve_model(spec text DEFAULT NULL, OUT name text, OUT version text, OUT dimension integer)
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT m.name, m.version, m.dimension FROM @extschema@.models m WHERE m.id = @extschema@._resolve_model(spec)
$$;
COMMENT ON FUNCTION resolve_model IS 'the registered model a spec names (name or name@version, newest version when none; NULL: genome.default_model)';

-- What a deployed model is, as one document (the design's GET /models/current): the version a
-- name resolves to, its stage, when it was trained and promoted, its metrics, thresholds and
-- featuriser.
CREATE FUNCTION model_info(name text) RETURNS jsonb
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object(
        'name', m.name, 'version', m.version, 'task', m.task, 'stage', m.stage,
        'trained_at', m.created_at, 'promoted_at', m.promoted_at, 'dimension', m.dimension,
        'sha256', m.sha256, 'metrics', m.metrics,
        'thresholds', jsonb_strip_nulls(jsonb_build_object('cutoff', m.config->'cutoff')),
        'featurizer', m.config->'featurizer',
        'ranks', m.config->'ranks', 'training', m.config->'training', 'fallback', m.config->'fallback',
        'cluster_summary', m.config->'cluster_summary',
        'versions', (SELECT jsonb_agg(jsonb_build_object('version', o.version, 'stage', o.stage, 'created_at', o.created_at)
                                      ORDER BY o.created_at, o.id)
                       FROM @extschema@.models o WHERE o.name = m.name))
      FROM @extschema@.models m WHERE m.id = @extschema@._resolve_model(model_info.name)
$$;
COMMENT ON FUNCTION model_info IS 'the model version a name resolves to, as one document: version, stage, trained_at, promoted_at, metrics, thresholds, featuriser, ranks, training data, cluster summary and the other versions';

-- Private functions

-- A model read from a server path is a server file read: whoever writes onnx_path into the
-- registry, by register_model_path or by DML, must be a superuser or a member of
-- pg_read_server_files (genome_admin alone may write the bytes, not a path).
CREATE FUNCTION _models_path_check() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.onnx_path IS NOT NULL AND NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user)
       AND NOT pg_has_role('pg_read_server_files', 'USAGE') THEN
        RAISE EXCEPTION 'pg_genome: a model''s onnx_path may be set only by superusers and members of pg_read_server_files'
              USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END $$;

-- Triggers

CREATE TRIGGER models_path_check BEFORE INSERT OR UPDATE OF onnx_path ON models
    FOR EACH ROW EXECUTE FUNCTION _models_path_check();

