-- Registers model.onnx, tokenizer.json and genome.json from a directory on the database server.
-- Reading server files is for superusers and pg_read_server_files: pg_read_binary_file and
-- pg_read_file perform that check themselves (SECURITY INVOKER).
CREATE FUNCTION register_model_dir(name text, version text, dir text,
                                   task text DEFAULT 'text-embedding', copy boolean DEFAULT true)
RETURNS bigint LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg jsonb := pg_read_file(dir || '/genome.json')::jsonb;
    tok text := pg_read_file(dir || '/tokenizer.json');
BEGIN
    IF copy THEN
        RETURN @extschema@.register_model(name, version, pg_read_binary_file(dir || '/model.onnx'), tok, cfg, task);
    END IF;
    RETURN @extschema@.register_model_path(name, version, dir || '/model.onnx', tok, cfg, task);
END $$;
COMMENT ON FUNCTION register_model_dir IS 'register a model from a server directory holding model.onnx, tokenizer.json and genome.json';

-- ---------------------------------------------------------------------------------------------
-- 0.2.0: collections, families, schedules.

-- The model a spec names (name or name@version; NULL = genome.default_model), as resolve() in
-- Rust does it: the newest registered version when none is given.
CREATE FUNCTION resolve_model(spec text DEFAULT NULL, OUT name text, OUT version text, OUT dimension integer)
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s text := coalesce(spec, nullif(current_setting('genome.default_model', true), ''));
    n text := btrim(split_part(s, '@', 1));
    v text := nullif(btrim(substr(s, length(split_part(s, '@', 1)) + 2)), '');
BEGIN
    IF s IS NULL THEN
        RAISE EXCEPTION 'pg_genome: no model given and genome.default_model is empty' USING ERRCODE = '22023';
    END IF;
    SELECT m.name, m.version, m.dimension INTO name, version, dimension
      FROM @extschema@.models m
     WHERE m.name = n AND (v IS NULL OR m.version = v)
     ORDER BY m.created_at DESC, m.id DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pg_genome: model "%" is not registered', s USING ERRCODE = '42704',
              HINT = 'register it with genome.register_model_dir(...); see genome.models';
    END IF;
END $$;

-- Register an existing table. Identifiers are checked against pg_attribute and always quoted
-- (format %I / regclass); missing embedding/family columns are added.
CREATE FUNCTION register_collection(name text, source regclass, id_column name, text_column name,
                                    embedding_column name DEFAULT 'embedding', family_column name DEFAULT 'family_id',
                                    created_at_column name DEFAULT NULL, model text DEFAULT NULL)
RETURNS @extschema@.collections
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m record;
    existing @extschema@.collections;
    result @extschema@.collections;
    kind "char";
    t text;
    tm int;
    ty oid;
    vec oid := (SELECT d.objid FROM pg_depend d JOIN pg_type y ON y.oid = d.objid
                 WHERE d.refclassid = 'pg_extension'::regclass AND d.classid = 'pg_type'::regclass
                   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'vector') AND y.typname = 'vector');
BEGIN
    IF name IS NULL OR source IS NULL OR id_column IS NULL OR text_column IS NULL
       OR embedding_column IS NULL OR family_column IS NULL THEN
        RAISE EXCEPTION 'pg_genome: register_collection arguments other than created_at_column and model must not be NULL'
              USING ERRCODE = '22004';
    END IF;
    IF name !~ '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'pg_genome: invalid collection name "%"', name USING ERRCODE = '22023',
              HINT = 'use 1 to 63 letters, digits, "_", "." or "-"';
    END IF;
    SELECT * INTO existing FROM @extschema@.collections c WHERE c.name = register_collection.name FOR UPDATE;
    IF FOUND THEN
        IF EXISTS (SELECT 1 FROM pg_class WHERE oid = existing.relid) THEN
            RAISE EXCEPTION 'pg_genome: collection "%" is already registered (table %)', name, existing.relid::regclass
                  USING ERRCODE = '42710', HINT = 'genome.unregister_collection(name) first';
        END IF;
        -- The table behind it was dropped: the registration is stale, replace it.
        DELETE FROM @extschema@.collections c WHERE c.name = register_collection.name;
    END IF;
    SELECT relkind INTO kind FROM pg_class WHERE oid = source;
    IF kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'pg_genome: % is not a table', source USING ERRCODE = '42809';
    END IF;
    m := @extschema@.resolve_model(model);
    FOREACH t IN ARRAY ARRAY[id_column, text_column] || CASE WHEN created_at_column IS NULL THEN '{}'::name[] ELSE ARRAY[created_at_column] END LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = source AND attname = t AND attnum > 0 AND NOT attisdropped) THEN
            RAISE EXCEPTION 'pg_genome: column "%" does not exist in table %', t, source USING ERRCODE = '42703';
        END IF;
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = source AND attname = text_column AND attnum > 0
                   AND atttypid IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype)) THEN
        RAISE EXCEPTION 'pg_genome: column "%" of % must be of type text or varchar', text_column, source USING ERRCODE = '42804';
    END IF;
    SELECT a.atttypid, a.atttypmod, format_type(a.atttypid, a.atttypmod) INTO ty, tm, t FROM pg_attribute a
     WHERE a.attrelid = source AND a.attname = embedding_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I %s(%s)', source, embedding_column, vec::regtype, m.dimension);
    ELSIF ty <> vec OR tm <> m.dimension THEN
        RAISE EXCEPTION 'pg_genome: column "%" of % is %, the model % needs vector(%)', embedding_column, source, t,
              m.name || '@' || m.version, m.dimension USING ERRCODE = '42804';
    END IF;
    SELECT a.atttypid, format_type(a.atttypid, a.atttypmod) INTO ty, t FROM pg_attribute a
     WHERE a.attrelid = source AND a.attname = family_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I bigint', source, family_column);
    ELSIF ty <> 'bigint'::regtype THEN
        RAISE EXCEPTION 'pg_genome: column "%" of % is %, family ids need bigint', family_column, source, t USING ERRCODE = '42804';
    END IF;
    -- pending rows are found by "family IS NULL"; a partial index keeps that cheap
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %s (%I) WHERE %I IS NULL',
                   left('genome_pending_' || name, 63), source, id_column, family_column);
    INSERT INTO @extschema@.collections (name, relid, id_column, text_column, embedding_column, family_column,
                                         created_at_column, model, dimension)
    VALUES (name, source, id_column, text_column, embedding_column, family_column, created_at_column,
            m.name || '@' || m.version, m.dimension)
    RETURNING * INTO result;
    INSERT INTO @extschema@.families (collection, label, is_unclustered) VALUES (name, 'Unclustered', true);
    RETURN result;
END $$;
COMMENT ON FUNCTION register_collection IS 'register an app table as a pg_genome collection (adds embedding and family columns if missing)';

CREATE FUNCTION unregister_collection(name text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF to_regnamespace('cron') IS NOT NULL THEN
        PERFORM @extschema@.unschedule(name);
    END IF;
    DELETE FROM @extschema@.collections c WHERE c.name = unregister_collection.name;
    RETURN FOUND;
END $$;
COMMENT ON FUNCTION unregister_collection IS 'forget a collection and its families and runs (the table and its columns stay)';

-- A dropped table takes its registration with it. SECURITY DEFINER because whoever drops the
-- table may not own the registry; the function only deletes rows naming the dropped relation.
CREATE FUNCTION on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM @extschema@.collections
     WHERE relid IN (SELECT objid FROM pg_event_trigger_dropped_objects()
                      WHERE classid = 'pg_class'::regclass AND objsubid = 0);
END $$;
CREATE EVENT TRIGGER genome_collections_drop ON sql_drop
    WHEN TAG IN ('DROP TABLE', 'DROP SCHEMA', 'DROP OWNED') EXECUTE FUNCTION on_sql_drop();

CREATE FUNCTION collection_relation(collection text) RETURNS regclass
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE r oid;
BEGIN
    SELECT c.relid INTO r FROM @extschema@.collections c WHERE c.name = collection;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pg_genome: collection "%" is not registered', collection USING ERRCODE = '42704',
              HINT = 'see genome.collections; register with genome.register_collection(...)';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = r) THEN
        RAISE EXCEPTION 'pg_genome: the table of collection "%" no longer exists', collection USING ERRCODE = '42P01';
    END IF;
    RETURN r::regclass;
END $$;

CREATE FUNCTION pending_count(collection text) RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE c @extschema@.collections; n bigint;
BEGIN
    PERFORM @extschema@.collection_relation(collection);
    SELECT * INTO c FROM @extschema@.collections x WHERE x.name = collection;
    EXECUTE format('SELECT count(*) FROM %s WHERE %I IS NULL', c.relid::regclass, c.family_column) INTO n;
    RETURN n;
END $$;
COMMENT ON FUNCTION pending_count IS 'rows of the collection without a family yet';

-- What pg_cron runs. A failed full run is rolled back (the subtransaction), then recorded.
-- A cancel (statement_timeout) is not caught: query_canceled is not in OTHERS.
CREATE FUNCTION run_full_job(collection text, min_cluster_size integer DEFAULT 15) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    PERFORM @extschema@.full_classify(collection, min_cluster_size => min_cluster_size);
EXCEPTION WHEN OTHERS THEN
    INSERT INTO @extschema@.runs (collection, kind, status, params, error, started_at)
    VALUES (collection, 'full_classify', 'failed', jsonb_build_object('min_cluster_size', min_cluster_size), SQLERRM, t0);
    RAISE WARNING 'pg_genome: full classification of "%" failed: %', collection, SQLERRM;
END $$;

CREATE FUNCTION schedule(collection text, full_cron text DEFAULT '0 0 * * 0', incremental_cron text DEFAULT '*/10 * * * *',
                         batch_size integer DEFAULT 500, min_pending integer DEFAULT 500,
                         min_cluster_size integer DEFAULT 15, threshold real DEFAULT NULL)
RETURNS TABLE (job_name text, jobid bigint, schedule text)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE full_name text := 'genome_full:' || collection; inc_name text := 'genome_assign:' || collection;
BEGIN
    PERFORM @extschema@.collection_relation(collection);
    IF to_regnamespace('cron') IS NULL THEN
        RAISE EXCEPTION 'pg_genome: pg_cron is not installed in this database' USING ERRCODE = '0A000',
              HINT = 'add pg_cron to shared_preload_libraries, set cron.database_name, then CREATE EXTENSION pg_cron';
    END IF;
    -- cron.schedule_in_database upserts by job name (same user): calling again updates.
    IF full_cron IS NOT NULL THEN
        job_name := full_name; schedule := full_cron;
        EXECUTE 'SELECT cron.schedule_in_database($1, $2, $3, current_database())' INTO jobid
          USING full_name, full_cron,
                format('SELECT genome.run_full_job(%L, %s)', collection, min_cluster_size);
        RETURN NEXT;
    END IF;
    IF incremental_cron IS NOT NULL THEN
        job_name := inc_name; schedule := incremental_cron;
        EXECUTE 'SELECT cron.schedule_in_database($1, $2, $3, current_database())' INTO jobid
          USING inc_name, incremental_cron,
                format('SELECT * FROM genome.assign_family(%L, batch_size => %s, min_pending => %s, threshold => %s)',
                       collection, batch_size, min_pending, coalesce(threshold::text, 'NULL'));
        RETURN NEXT;
    END IF;
END $$;
COMMENT ON FUNCTION schedule IS 'create or update the pg_cron jobs of a collection: weekly full classification, 10-minute assignment';

CREATE FUNCTION unschedule(collection text) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE n integer := 0; j bigint;
BEGIN
    IF to_regnamespace('cron') IS NULL THEN
        RETURN 0;
    END IF;
    FOR j IN EXECUTE 'SELECT jobid FROM cron.job WHERE jobname = ANY($1)'
             USING ARRAY['genome_full:' || collection, 'genome_assign:' || collection] LOOP
        EXECUTE 'SELECT cron.unschedule($1)' USING j;
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;
COMMENT ON FUNCTION unschedule IS 'remove the pg_cron jobs of a collection; returns how many were removed';

CREATE VIEW progress AS
    SELECT p.* FROM @extschema@.progress_slots() p
      JOIN pg_catalog.pg_stat_activity a ON a.pid = p.pid AND a.state = 'active';
COMMENT ON VIEW progress IS 'full classifications and assignments running now: stage, rows done of total';
