-- Registers model.onnx, tokenizer.json and genome.json from a directory on the database server.
-- Reading server files is for superusers and pg_read_server_files: pg_read_binary_file and
-- pg_read_file perform that check themselves (SECURITY INVOKER).
CREATE FUNCTION register_model_dir(name text, version text, dir text,
                                   task text DEFAULT 'text-embedding', copy boolean DEFAULT true)
RETURNS bigint LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg jsonb := pg_read_file(dir || '/genome.json')::jsonb;
    -- image models have no tokenizer
    tok text := CASE WHEN task = 'text-embedding' THEN pg_read_file(dir || '/tokenizer.json') END;
BEGIN
    IF copy THEN
        RETURN @extschema@.register_model(name, version, pg_read_binary_file(dir || '/model.onnx'), tok, cfg, task);
    END IF;
    RETURN @extschema@.register_model_path(name, version, dir || '/model.onnx', tok, cfg, task);
END $$;
COMMENT ON FUNCTION register_model_dir IS 'register a model from a server directory holding model.onnx, genome.json and (text models) tokenizer.json';

-- ---------------------------------------------------------------------------------------------
-- 0.2.0: collections, families, schedules.

-- The model a spec names (name or name@version; NULL = genome.default_model), as resolve() in
-- Rust does it: the newest registered version when none is given.
CREATE FUNCTION resolve_model(spec text DEFAULT NULL, OUT name text, OUT version text, OUT dimension integer)
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s text := coalesce(spec, nullif(current_setting('genome.default_model'), ''));
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
    stale boolean := false;
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
        -- The table behind it is gone (dropped with event triggers off, or a registration restored
        -- from a dump made before 0.5.0, when it was an OID): the registration is stale. Below,
        -- registered again with the same model it keeps its families and runs (0.5.0).
        stale := true;
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
    IF stale AND existing.model = m.name || '@' || m.version THEN
        UPDATE @extschema@.collections c
           SET relid = source, id_column = register_collection.id_column, text_column = register_collection.text_column,
               embedding_column = register_collection.embedding_column, family_column = register_collection.family_column,
               created_at_column = register_collection.created_at_column, auto_embed = false, reembed_model = NULL,
               reembed_column = NULL, generation = c.generation + 1
         WHERE c.name = register_collection.name
        RETURNING * INTO result;
    ELSE
        -- another model: the families' centroids are in another space and cannot carry over
        DELETE FROM @extschema@.collections c WHERE c.name = register_collection.name;
        INSERT INTO @extschema@.collections (name, relid, id_column, text_column, embedding_column, family_column,
                                             created_at_column, model, dimension)
        VALUES (name, source, id_column, text_column, embedding_column, family_column, created_at_column,
                m.name || '@' || m.version, m.dimension)
        RETURNING * INTO result;
        INSERT INTO @extschema@.families (collection, label, is_unclustered) VALUES (name, 'Unclustered', true);
    END IF;
    -- genome.search goes through a pgvector HNSW index (since 0.3.0)
    PERFORM @extschema@.create_search_index(name);
    -- TRUNCATE empties the families' exemplars and sizes (0.5.0)
    PERFORM @extschema@._truncate_trigger(name, true);
    RETURN result;
END $$;
COMMENT ON FUNCTION register_collection IS 'register an app table as a pg_genome collection (adds embedding and family columns if missing)';

CREATE FUNCTION unregister_collection(name text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF to_regnamespace('cron') IS NOT NULL THEN
        PERFORM @extschema@.unschedule(name);
    END IF;
    -- the background-embedding triggers go too (since 0.3.0), and the TRUNCATE one (0.5.0)
    IF EXISTS (SELECT 1 FROM @extschema@.collections c JOIN pg_class k ON k.oid = c.relid
                WHERE c.name = unregister_collection.name) THEN
        PERFORM @extschema@._set_triggers(name, false);
        PERFORM @extschema@._truncate_trigger(name, false);
    END IF;
    DELETE FROM @extschema@.collections c WHERE c.name = unregister_collection.name;
    RETURN FOUND;
END $$;
COMMENT ON FUNCTION unregister_collection IS 'forget a collection and its families and runs (the table and its columns stay)';

-- A dropped table takes its registration with it. SECURITY DEFINER because whoever drops the
-- table may not own the registry; the function only deletes rows naming the dropped relation.
CREATE FUNCTION on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE jobs text[];
BEGIN
    WITH gone AS (DELETE FROM @extschema@.collections
                   WHERE relid IN (SELECT objid FROM pg_event_trigger_dropped_objects()
                                    WHERE classid = 'pg_class'::regclass AND objsubid = 0)
                  RETURNING name)
    SELECT array_agg(j) INTO jobs FROM gone, LATERAL unnest(ARRAY['genome_full:' || name, 'genome_assign:' || name]) j;
    -- pet photo tables too (their photos and clusters go with them)
    WITH gone AS (DELETE FROM @extschema@.pet_media
                   WHERE relid IN (SELECT objid FROM pg_event_trigger_dropped_objects()
                                    WHERE classid = 'pg_class'::regclass AND objsubid = 0)
                  RETURNING name)
    SELECT coalesce(jobs, '{}') || coalesce(array_agg('genome_pets:' || name), '{}') INTO jobs FROM gone;
    -- and their pg_cron jobs (0.5.0): a job left behind would run under the same name on
    -- whatever table is registered next under it
    IF cardinality(jobs) > 0 THEN
        PERFORM @extschema@._cron_unschedule(jobs);
    END IF;
END $$;
CREATE EVENT TRIGGER genome_collections_drop ON sql_drop
    WHEN TAG IN ('DROP TABLE', 'DROP SCHEMA', 'DROP OWNED') EXECUTE FUNCTION on_sql_drop();

-- The collection's table, after the checks every use makes (0.5.0): it still exists, and the
-- role that registered it (genome.collections.registered_by, set by a trigger to the writing role)
-- may still read and write it. A row written into genome.collections by other means names a
-- table its writer cannot write, and is refused here: registrations grant nothing.
CREATE FUNCTION collection_relation(collection text) RETURNS regclass
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE r oid; who regrole;
BEGIN
    SELECT c.relid, c.registered_by INTO r, who FROM @extschema@.collections c WHERE c.name = collection;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pg_genome: collection "%" is not registered', collection USING ERRCODE = '42704',
              HINT = 'see genome.collections; register with genome.register_collection(...)';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = r) THEN
        RAISE EXCEPTION 'pg_genome: the table of collection "%" no longer exists', collection USING ERRCODE = '42P01';
    END IF;
    PERFORM @extschema@._check_registrant('collection', collection, r, who);
    RETURN r::regclass;
END $$;

CREATE FUNCTION pending_count(collection text) RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE c @extschema@.collections; n bigint;
BEGIN
    PERFORM @extschema@.collection_relation(collection);
    SELECT * INTO c FROM @extschema@.collections x WHERE x.name = collection;
    -- as the table's owner when the caller is more privileged (0.5.0), see genome._owner_value
    n := @extschema@._owner_value(c.relid, format('SELECT to_jsonb(count(*)) FROM %s WHERE %I IS NULL',
                                                 c.relid::regclass, c.family_column));
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
        who text;
BEGIN
    who := @extschema@._job_user(@extschema@.collection_relation(collection));
    IF to_regnamespace('cron') IS NULL THEN
        RAISE EXCEPTION 'pg_genome: pg_cron is not installed in this database' USING ERRCODE = '0A000',
              HINT = 'add pg_cron to shared_preload_libraries, set cron.database_name, then CREATE EXTENSION pg_cron';
    END IF;
    -- cron.schedule_in_database upserts by job name (same user): calling again updates.
    IF full_cron IS NOT NULL THEN
        job_name := full_name; schedule := full_cron;
        EXECUTE 'SELECT cron.schedule_in_database($1, $2, $3, current_database(), $4)' INTO jobid
          USING full_name, full_cron,
                format('SELECT genome.run_full_job(%L, %s)', collection, min_cluster_size), who;
        RETURN NEXT;
    END IF;
    IF incremental_cron IS NOT NULL THEN
        job_name := inc_name; schedule := incremental_cron;
        EXECUTE 'SELECT cron.schedule_in_database($1, $2, $3, current_database(), $4)' INTO jobid
          USING inc_name, incremental_cron,
                format('SELECT * FROM genome.assign_family(%L, batch_size => %s, min_pending => %s, threshold => %s)',
                       collection, batch_size, min_pending, coalesce(threshold::text, 'NULL')), who;
        RETURN NEXT;
    END IF;
END $$;
COMMENT ON FUNCTION schedule IS 'create or update the pg_cron jobs of a collection: weekly full classification, 10-minute assignment';

CREATE FUNCTION unschedule(collection text) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN @extschema@._cron_unschedule(ARRAY['genome_full:' || collection, 'genome_assign:' || collection]);
END $$;
COMMENT ON FUNCTION unschedule IS 'remove the pg_cron jobs of a collection; returns how many were removed';

CREATE VIEW progress AS
    SELECT p.* FROM @extschema@.progress_slots() p
      JOIN pg_catalog.pg_stat_activity a ON a.pid = p.pid AND a.state = 'active';
COMMENT ON VIEW progress IS 'full classifications and assignments running now: stage, rows done of total';

-- ---------------------------------------------------------------------------------------------
-- 0.3.0: background embedding queue, re-embedding, semantic search, health and metrics.

-- The schema pgvector lives in. Functions here run with search_path = pg_catalog, pg_temp; those
-- that need pgvector's operators add this schema for their own duration (set_config(..., true)
-- inside a function with a SET search_path clause is undone when the function returns).
CREATE FUNCTION _vector_schema() RETURNS name
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'
$$;

CREATE FUNCTION _use_vector_schema() RETURNS void
LANGUAGE sql VOLATILE SECURITY INVOKER AS $$
    SELECT set_config('search_path', format('pg_catalog, %I, pg_temp', @extschema@._vector_schema()), true)
$$;

-- The pgvector HNSW index (cosine) on a collection's embedding column, used by genome.search.
CREATE FUNCTION create_search_index(collection text) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE c @extschema@.collections; rel regclass := @extschema@.collection_relation(collection);
        idx text := left('genome_hnsw_' || collection, 63);
BEGIN
    SELECT * INTO c FROM @extschema@.collections x WHERE x.name = collection;
    IF NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam
                    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                   WHERE i.indrelid = rel AND am.amname = 'hnsw' AND a.attname = c.embedding_column) THEN
        EXECUTE format('CREATE INDEX %I ON %s USING hnsw (%I %I.vector_cosine_ops)', idx, rel, c.embedding_column,
                       @extschema@._vector_schema());
    END IF;
    RETURN idx;
END $$;
COMMENT ON FUNCTION create_search_index IS 'create the pgvector HNSW (cosine) index genome.search uses, unless the embedding column has one';

-- Queue rows of a collection (ids as text) for the targets its state asks for.
CREATE FUNCTION _enqueue(coll text, ids text[], targets text[] DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE c @extschema@.collections; n bigint;
BEGIN
    SELECT * INTO c FROM @extschema@.collections x WHERE x.name = coll;
    INSERT INTO @extschema@.embed_queue_items AS q (collection, target, row_id)
    SELECT coll, t, i FROM unnest(ids) i,
           unnest(coalesce(targets, CASE WHEN c.auto_embed THEN ARRAY['embedding'] ELSE '{}' END
                                    || CASE WHEN c.reembed_model IS NOT NULL THEN ARRAY['reembed'] ELSE '{}' END)) t
     WHERE i IS NOT NULL
    ON CONFLICT ON CONSTRAINT embed_queue_items_collection_target_row_id_key DO UPDATE
       SET status = 'pending', attempts = 0, last_error = NULL, enqueued_at = now(), next_attempt_at = now(),
           started_at = NULL, worker_pid = NULL, completed_at = NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM @extschema@.wake_embed_workers();
    END IF;
    RETURN n;
END $$;

-- Trigger function on the app's table. SECURITY DEFINER: whoever writes to the app's table
-- needs no rights on pg_genome's queue; it only enqueues the written rows' ids. Since 0.5.0 it
-- acts only on the table registered under its argument (attached to another table it does
-- nothing), and it evaluates none of the writer's code: ids are taken with their type's output
-- function (format's %s), never through a cast or to_jsonb, which a table owner can define on
-- its own types.
CREATE FUNCTION auto_embed_enqueue() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE c @extschema@.collections; ids text[]; one text;
BEGIN
    SELECT * INTO c FROM @extschema@.collections x WHERE x.name = TG_ARGV[0];
    IF NOT FOUND OR NOT (c.auto_embed OR c.reembed_model IS NOT NULL)
       OR NOT @extschema@._fires_for(TG_RELID, TG_NAME, c.relid, TG_LEVEL = 'STATEMENT', false) THEN
        RETURN NULL;
    END IF;
    BEGIN
        IF TG_LEVEL = 'STATEMENT' THEN
            -- rows inserted with an embedding keep it (unless a re-embedding needs them all)
            EXECUTE format('SELECT array_agg(format(''%%s'', %I)) FROM new_rows WHERE %s', c.id_column,
                           CASE WHEN c.reembed_model IS NULL THEN format('%I IS NULL', c.embedding_column) ELSE 'true' END) INTO ids;
        ELSE
            EXECUTE format('SELECT format(''%%s'', ($1).%I)', c.id_column) INTO one USING NEW;
            ids := ARRAY[one];
        END IF;
    EXCEPTION WHEN undefined_column THEN
        -- a registered column was dropped or renamed: the collection is broken (health() and
        -- the queue say so), the app's writes go on (0.5.0)
        RAISE WARNING 'pg_genome: collection "%": %; rows are not queued for embedding', c.name, SQLERRM;
        RETURN NULL;
    END;
    IF ids IS NOT NULL THEN
        PERFORM @extschema@._enqueue(c.name, ids);
    END IF;
    RETURN NULL;
END $$;

-- The text changed: its old embedding(s) no longer describe it. SECURITY INVOKER since 0.5.0:
-- the columns to clear come as trigger arguments (embedding column, then the re-embedding's
-- shadow column or ''), so it reads nothing of pg_genome's and runs with the writer's rights.
CREATE FUNCTION auto_embed_clear() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_NARGS >= 2 THEN
        NEW := jsonb_populate_record(NEW, jsonb_build_object(TG_ARGV[1], NULL)
               || CASE WHEN coalesce(TG_ARGV[2], '') = '' THEN '{}'::jsonb ELSE jsonb_build_object(TG_ARGV[2], NULL) END);
    END IF;
    RETURN NEW;
END $$;

CREATE FUNCTION _set_triggers(collection text, present boolean) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
SET client_min_messages = warning  -- no "trigger does not exist, skipping" notices
AS $$
-- Installing triggers needs a valid registration; removing them never does (unregistering a
-- collection whose registering role lost the table must work).
DECLARE c @extschema@.collections;
        rel regclass := CASE WHEN present THEN @extschema@.collection_relation(collection)
                             ELSE (SELECT x.relid FROM @extschema@.collections x WHERE x.name = collection) END;
        ins text := left('genome_embed_ins_' || collection, 63);
        upd text := left('genome_embed_upd_' || collection, 63);
        clr text := left('genome_embed_clr_' || collection, 63);
BEGIN
    SELECT * INTO c FROM @extschema@.collections x WHERE x.name = collection;
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', ins, rel);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', upd, rel);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', clr, rel);
    IF present THEN
        -- inserts: one statement-level trigger over the transition table (a bulk insert is one
        -- queue insert, not one per row); text updates: per row, only when the text changed.
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION %I.auto_embed_enqueue(%L)', ins, rel, '@extschema@', collection);
        EXECUTE format('CREATE TRIGGER %I AFTER UPDATE OF %I ON %s FOR EACH ROW WHEN (OLD.%I IS DISTINCT FROM NEW.%I) '
                       'EXECUTE FUNCTION %I.auto_embed_enqueue(%L)', upd, c.text_column, rel, c.text_column, c.text_column,
                       '@extschema@', collection);
        EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OF %I ON %s FOR EACH ROW WHEN (OLD.%I IS DISTINCT FROM NEW.%I) '
                       'EXECUTE FUNCTION %I.auto_embed_clear(%L, %L, %L)', clr, c.text_column, rel, c.text_column, c.text_column,
                       '@extschema@', collection, c.embedding_column, coalesce(c.reembed_column, ''));
    END IF;
END $$;

CREATE FUNCTION enable_auto_embed(collection text, backfill boolean DEFAULT true) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE c @extschema@.collections; rel regclass := @extschema@.collection_relation(collection); ids text[];
BEGIN
    UPDATE @extschema@.collections x SET auto_embed = true WHERE x.name = collection RETURNING * INTO c;
    PERFORM @extschema@._set_triggers(collection, true);
    IF backfill THEN
        SELECT array_agg(x) INTO ids FROM jsonb_array_elements_text(@extschema@._owner_value(rel,
            format('SELECT coalesce(jsonb_agg(format(''%%s'', %I)), ''[]'') FROM %s WHERE %I IS NULL', c.id_column, rel, c.embedding_column))) x;
        RETURN coalesce(@extschema@._enqueue(collection, ids, ARRAY['embedding']), 0);
    END IF;
    RETURN 0;
END $$;
COMMENT ON FUNCTION enable_auto_embed IS 'embed inserted rows and rows whose text changed in the background (queues rows without embedding when backfill); returns rows queued';

CREATE FUNCTION disable_auto_embed(collection text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE c @extschema@.collections; n bigint;
BEGIN
    PERFORM @extschema@.collection_relation(collection);
    UPDATE @extschema@.collections x SET auto_embed = false WHERE x.name = collection RETURNING * INTO c;
    IF c.reembed_model IS NULL THEN
        PERFORM @extschema@._set_triggers(collection, false);
    END IF;
    DELETE FROM @extschema@.embed_queue_items q
     WHERE q.collection = disable_auto_embed.collection AND q.target = 'embedding' AND q.status IN ('pending', 'failed');
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
COMMENT ON FUNCTION disable_auto_embed IS 'stop background embedding of a collection; returns queued rows dropped (rows being embedded finish)';

-- Put back rows claimed by workers that are gone (killed, crashed): nothing is lost. The attempt
-- still counts, so a row that kills its worker every time ends up failed, not in a loop.
CREATE FUNCTION _embed_recover() RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE n bigint; maxa int := current_setting('genome.embed_max_attempts')::int;
BEGIN
    UPDATE @extschema@.embed_queue_items q
       SET status = CASE WHEN q.attempts >= maxa THEN 'failed' ELSE 'pending' END,
           last_error = 'worker ' || q.worker_pid || ' ended while embedding this row', worker_pid = NULL,
           next_attempt_at = now()
     WHERE q.status = 'processing'
       AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = q.worker_pid AND a.backend_start <= q.started_at);
    GET DIAGNOSTICS n = ROW_COUNT;
    -- completed rows are kept an hour for genome.embed_queue's throughput figures
    DELETE FROM @extschema@.embed_queue_items q WHERE q.status = 'completed' AND q.completed_at < now() - interval '1 hour';
    RETURN n;
END $$;

-- Claim up to batch_size due rows of one (collection, target): status 'processing', this pid.
CREATE FUNCTION _embed_claim(batch_size integer) RETURNS bigint[]
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE head record; ids bigint[];
BEGIN
    SELECT q.collection, q.target INTO head FROM @extschema@.embed_queue_items q
     WHERE q.status = 'pending' AND q.next_attempt_at <= now()
     ORDER BY q.next_attempt_at, q.id LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN '{}';
    END IF;
    WITH c AS (SELECT q.id FROM @extschema@.embed_queue_items q
                WHERE q.status = 'pending' AND q.next_attempt_at <= now()
                  AND q.collection = head.collection AND q.target = head.target
                ORDER BY q.next_attempt_at, q.id LIMIT batch_size FOR UPDATE SKIP LOCKED),
         u AS (UPDATE @extschema@.embed_queue_items q
                  SET status = 'processing', attempts = q.attempts + 1, started_at = now(), worker_pid = pg_backend_pid()
                 FROM c WHERE q.id = c.id
               RETURNING q.id)
    SELECT array_agg(u.id ORDER BY u.id) INTO ids FROM u;
    RETURN coalesce(ids, '{}');
END $$;

-- A failed attempt: back to pending after an exponential backoff, or failed for good.
CREATE FUNCTION _embed_failed(ids bigint[], error text) RETURNS void
LANGUAGE sql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE @extschema@.embed_queue_items q
       SET status = CASE WHEN q.attempts >= current_setting('genome.embed_max_attempts')::int
                         THEN 'failed' ELSE 'pending' END,
           last_error = error, worker_pid = NULL,
           -- the setting reads back with its unit ('1s', '100ms'): an interval
           next_attempt_at = now() + current_setting('genome.embed_retry_delay')::interval
                                     * 2 ^ greatest(q.attempts - 1, 0)
     WHERE q.id = ANY (ids) AND q.status = 'processing' AND q.worker_pid = pg_backend_pid()
$$;

-- Embed and store the claimed rows. Returns what happened, for the worker's log line and metrics.
-- A model error fails the batch's attempt; a write error (a constraint or trigger of the app's
-- table) is narrowed down to the rows that cause it, each retried on its own.
CREATE FUNCTION _embed_process(ids bigint[]) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    g record; c @extschema@.collections; rel regclass; col name; model text; idtype text; vtype text;
    qids bigint[]; rids text[]; texts text[]; vecs text[]; ok bigint[]; done bigint[];
    i int; t0 timestamptz; embed_ms float8; failed int; upd text; out jsonb := '[]';
    rd text; keep_q bigint[]; keep_r text[]; nbad int;
BEGIN
    FOR g IN SELECT q.collection, q.target FROM @extschema@.embed_queue_items q
              WHERE q.id = ANY (ids) AND q.status = 'processing' AND q.worker_pid = pg_backend_pid()
              GROUP BY 1, 2 LOOP
        SELECT * INTO c FROM @extschema@.collections x WHERE x.name = g.collection;
        IF g.target = 'embedding' THEN col := c.embedding_column; model := c.model;
        ELSE col := c.reembed_column; model := c.reembed_model; END IF;
        SELECT array_agg(q.id ORDER BY q.id), array_agg(q.row_id ORDER BY q.id) INTO qids, rids
          FROM @extschema@.embed_queue_items q
         WHERE q.id = ANY (ids) AND q.collection = g.collection AND q.target = g.target
           AND q.status = 'processing' AND q.worker_pid = pg_backend_pid();
        IF col IS NULL THEN
            -- the re-embedding was finished or abandoned meanwhile: nothing to write
            UPDATE @extschema@.embed_queue_items q SET status = 'completed', completed_at = now() WHERE q.id = ANY (qids);
            CONTINUE;
        END IF;
        BEGIN
            -- The checks of every use (table there, registrant may still write it) and the
            -- columns. Since 0.5.0 an error here (a column renamed or dropped, a registration
            -- that grants nothing) fails these rows with its message instead of ending the worker.
            rel := @extschema@.collection_relation(c.name);
            SELECT format_type(a.atttypid, a.atttypmod) INTO idtype FROM pg_attribute a
             WHERE a.attrelid = rel AND a.attname = c.id_column AND a.attnum > 0 AND NOT a.attisdropped;
            SELECT format_type(a.atttypid, a.atttypmod) INTO vtype FROM pg_attribute a
             WHERE a.attrelid = rel AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
            IF idtype IS NULL OR vtype IS NULL OR NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = rel
                   AND a.attname = c.text_column AND a.attnum > 0 AND NOT a.attisdropped) THEN
                RAISE EXCEPTION 'pg_genome: a column of collection "%" (%, % or %) no longer exists in %',
                      c.name, c.id_column, c.text_column, col, rel USING ERRCODE = '42703';
            END IF;
        EXCEPTION WHEN OTHERS THEN
            PERFORM @extschema@._embed_failed(qids, SQLERRM);
            out := out || jsonb_build_object('collection', c.name, 'target', g.target, 'model', model, 'rows', cardinality(qids),
                                             'completed', 0, 'failed', cardinality(qids), 'error', SQLERRM);
            CONTINUE;
        END;
        -- the current texts, read as the table's owner (a row deleted meanwhile gives NULL:
        -- nothing to embed, nothing to write)
        rd := format('SELECT jsonb_agg(t.%I ORDER BY u.o) FROM unnest($1::text[]) WITH ORDINALITY u(rid, o) '
                     'LEFT JOIN %s t ON t.%I OPERATOR(pg_catalog.=) u.rid::%s', c.text_column, rel, c.id_column, idtype);
        nbad := 0;
        BEGIN
            SELECT array_agg(x ORDER BY o) INTO texts
              FROM jsonb_array_elements_text(@extschema@._owner_value(rel, rd, rids)) WITH ORDINALITY e(x, o);
        EXCEPTION WHEN OTHERS THEN
            -- narrowed down to the rows that cause it (an id that does not cast to the id
            -- column's type), each failed with its own message; the others go on (0.5.0)
            keep_q := '{}'; keep_r := '{}'; texts := '{}';
            FOR i IN 1 .. cardinality(qids) LOOP
                BEGIN
                    texts := texts || (SELECT e.x FROM jsonb_array_elements_text(@extschema@._owner_value(rel, rd, ARRAY[rids[i]])) e(x));
                    keep_q := keep_q || qids[i];
                    keep_r := keep_r || rids[i];
                EXCEPTION WHEN OTHERS THEN
                    PERFORM @extschema@._embed_failed(ARRAY[qids[i]], SQLERRM);
                    nbad := nbad + 1;
                END;
            END LOOP;
            qids := keep_q;
            rids := keep_r;
            IF cardinality(qids) = 0 THEN
                out := out || jsonb_build_object('collection', c.name, 'target', g.target, 'model', model, 'rows', nbad,
                                                 'completed', 0, 'failed', nbad, 'error', 'no row could be read');
                CONTINUE;
            END IF;
        END;
        t0 := clock_timestamp();
        BEGIN
            vecs := @extschema@.embed_batch(texts, model)::text[];
        EXCEPTION WHEN OTHERS THEN
            PERFORM @extschema@._embed_failed(qids, SQLERRM);
            out := out || jsonb_build_object('collection', c.name, 'target', g.target, 'model', model, 'rows', cardinality(qids),
                                             'completed', 0, 'failed', cardinality(qids), 'error', SQLERRM);
            CONTINUE;
        END;
        embed_ms := extract(epoch FROM clock_timestamp() - t0) * 1000;
        -- only if the text is still the one embedded: a concurrent edit re-queued the row.
        -- Written as the table's owner: its triggers and constraints never run with the worker's
        -- rights (0.5.0).
        upd := format('UPDATE %s t SET %I = u.v::%s FROM unnest($1::text[], $2::text[], $3::text[]) u(rid, v, txt) '
                      'WHERE t.%I OPERATOR(pg_catalog.=) u.rid::%s AND t.%I IS NOT DISTINCT FROM u.txt AND u.v IS NOT NULL',
                      rel, col, vtype, c.id_column, idtype, c.text_column);
        done := qids; failed := nbad;
        BEGIN
            PERFORM @extschema@._owner_exec(rel, upd, rids, vecs, texts);
        EXCEPTION WHEN OTHERS THEN
            done := '{}';
            FOR i IN 1 .. cardinality(qids) LOOP
                BEGIN
                    PERFORM @extschema@._owner_exec(rel, upd, ARRAY[rids[i]], ARRAY[vecs[i]], ARRAY[texts[i]]);
                    done := done || qids[i];
                EXCEPTION WHEN OTHERS THEN
                    PERFORM @extschema@._embed_failed(ARRAY[qids[i]], SQLERRM);
                    failed := failed + 1;
                END;
            END LOOP;
        END;
        UPDATE @extschema@.embed_queue_items q SET status = 'completed', completed_at = now(), last_error = NULL, worker_pid = NULL
         WHERE q.id = ANY (done) AND q.status = 'processing' AND q.worker_pid = pg_backend_pid();
        out := out || jsonb_build_object('collection', c.name, 'target', g.target, 'model', model, 'rows', cardinality(qids) + nbad,
                                         'completed', cardinality(done), 'failed', failed, 'embed_ms', round(embed_ms::numeric, 1));
        IF g.target = 'reembed' AND NOT EXISTS (SELECT 1 FROM @extschema@.embed_queue_items q
                                                 WHERE q.collection = c.name AND q.target = 'reembed'
                                                   AND q.status IN ('pending', 'processing')) THEN
            PERFORM @extschema@._reembed_finish(c.name);
        END IF;
    END LOOP;
    RETURN out;
END $$;

-- One claim-and-embed step in the caller's transaction: what the worker does, for use without
-- shared_preload_libraries (e.g. from pg_cron) or in tests. Returns rows completed.
CREATE FUNCTION process_embed_queue(batch_size integer DEFAULT 32) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE r jsonb; n bigint := 0; e jsonb;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'pg_genome: batch_size must be at least 1' USING ERRCODE = '22023';
    END IF;
    PERFORM @extschema@._embed_recover();
    r := @extschema@._embed_process(@extschema@._embed_claim(batch_size));
    FOR e IN SELECT * FROM jsonb_array_elements(r) LOOP
        n := n + (e->>'completed')::bigint;
    END LOOP;
    RETURN n;
END $$;
COMMENT ON FUNCTION process_embed_queue IS 'embed one batch of queued rows in this transaction (the background worker does this by itself)';

-- genome.embed_queue, the queue per collection: in the 0.5.0 section below (its current shape).

-- Re-embed a whole collection with another model in the background. The new vectors go to a
-- shadow column; search and assignment keep using the old column and model until every row is
-- done, then one transaction swaps the columns (search index built before), moves the
-- collection to the new model and recomputes family centroids and thresholds in the new space.
-- So no query ever sees mixed dimensions.
CREATE FUNCTION reembed(collection text, model text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE c @extschema@.collections; rel regclass := @extschema@.collection_relation(collection); m record;
        shadow name; ids text[];
BEGIN
    SELECT * INTO c FROM @extschema@.collections x WHERE x.name = collection FOR UPDATE;
    IF c.reembed_model IS NOT NULL THEN
        RAISE EXCEPTION 'pg_genome: collection "%" is already being re-embedded with %', collection, c.reembed_model
              USING ERRCODE = '55006', HINT = 'see genome.embed_queue';
    END IF;
    m := @extschema@.resolve_model(model);
    IF m.name || '@' || m.version = c.model THEN
        RAISE EXCEPTION 'pg_genome: collection "%" already uses %', collection, c.model USING ERRCODE = '22023';
    END IF;
    shadow := left(c.embedding_column || '_genome_next', 63);
    EXECUTE format('ALTER TABLE %s DROP COLUMN IF EXISTS %I', rel, shadow);
    EXECUTE format('ALTER TABLE %s ADD COLUMN %I %I.vector(%s)', rel, shadow, @extschema@._vector_schema(), m.dimension);
    UPDATE @extschema@.collections x SET reembed_model = m.name || '@' || m.version, reembed_column = shadow
     WHERE x.name = collection;
    PERFORM @extschema@._set_triggers(collection, true);
    SELECT array_agg(x) INTO ids FROM jsonb_array_elements_text(@extschema@._owner_value(rel,
        format('SELECT coalesce(jsonb_agg(format(''%%s'', %I)), ''[]'') FROM %s', c.id_column, rel))) x;
    DELETE FROM @extschema@.embed_queue_items q WHERE q.collection = reembed.collection AND q.target = 'reembed';
    IF ids IS NULL THEN
        PERFORM @extschema@._reembed_finish(collection);
        RETURN 0;
    END IF;
    RETURN @extschema@._enqueue(collection, ids, ARRAY['reembed']);
END $$;
COMMENT ON FUNCTION reembed IS 're-embed a collection with another model in the background; switches over atomically when every row is done';

CREATE FUNCTION _reembed_finish(collection text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE c @extschema@.collections; rel regclass; m record; q float8; nsp name; vs name := @extschema@._vector_schema();
        idx text := left('genome_hnsw_' || collection, 63);
        tmp text := left('genome_hnsw_next_' || collection, 63);
BEGIN
    -- no full classification or assignment of this collection meanwhile (their lock), and no
    -- search between reading the collection's model and querying its column (the swap lock)
    PERFORM pg_advisory_xact_lock(1734700655, hashtext(collection));
    PERFORM pg_advisory_xact_lock(1734700656, hashtext(collection));
    SELECT * INTO c FROM @extschema@.collections x WHERE x.name = collection FOR UPDATE;
    rel := c.relid::regclass;
    SELECT n.nspname INTO nsp FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace WHERE k.oid = rel;
    m := @extschema@.resolve_model(c.reembed_model);
    -- the new column's index first (readers go on meanwhile); the old one goes with its column
    EXECUTE format('DROP INDEX IF EXISTS %I.%I', nsp, tmp);
    EXECUTE format('CREATE INDEX %I ON %s USING hnsw (%I %I.vector_cosine_ops)', tmp, rel, c.reembed_column,
                   @extschema@._vector_schema());
    EXECUTE format('ALTER TABLE %s DROP COLUMN %I', rel, c.embedding_column);
    EXECUTE format('ALTER TABLE %s RENAME COLUMN %I TO %I', rel, c.reembed_column, c.embedding_column);
    EXECUTE format('ALTER INDEX %I.%I RENAME TO %I', nsp, tmp, idx);
    -- (embedding_column set again: the column has a new number now, see _track_columns)
    UPDATE @extschema@.collections x
       SET model = c.reembed_model, dimension = m.dimension, reembed_model = NULL, reembed_column = NULL,
           generation = x.generation + 1, embedding_column = x.embedding_column
     WHERE x.name = collection;
    -- families keep their members and ids; centroids and thresholds move to the new space
    q := current_setting('genome.threshold_quantile')::float8;
    -- read as the table's owner (0.5.0), with pgvector's objects named by schema
    EXECUTE format('UPDATE @extschema@.families f SET centroid = (s ->> ''centroid'')::%I.vector, threshold = (s ->> ''threshold'')::real,
                           updated_at = now()
                      FROM jsonb_array_elements($2) s
                     WHERE f.collection = $1 AND f.id = (s ->> ''fid'')::bigint AND NOT f.is_unclustered', vs)
      USING collection, @extschema@._owner_value(rel, format(
        'SELECT coalesce(jsonb_agg(s), ''[]'') FROM (SELECT m.fid, m.centroid::text AS centroid,
                percentile_cont(($1[1])::float8) WITHIN GROUP (ORDER BY 1 - (t.%1$I OPERATOR(%4$I.<=>) m.centroid))::real AS threshold
           FROM (SELECT %2$I AS fid, %4$I.l2_normalize(%4$I.avg(%1$I)) AS centroid FROM %3$s
                  WHERE %1$I IS NOT NULL AND %2$I IS NOT NULL GROUP BY 1) m
           JOIN %3$s t ON t.%2$I OPERATOR(pg_catalog.=) m.fid AND t.%1$I IS NOT NULL
          GROUP BY m.fid, m.centroid) s', c.embedding_column, c.family_column, rel, vs), ARRAY[q::text]);
    -- families without embedded members cannot be placed in the new space
    UPDATE @extschema@.families f SET retired_at = now(), updated_at = now()
     WHERE f.collection = c.name AND NOT f.is_unclustered AND f.retired_at IS NULL AND f.updated_at < now();
    -- the triggers again, for the columns as they are now (or none without auto_embed)
    PERFORM @extschema@._set_triggers(collection, c.auto_embed);
    RAISE LOG 'pg_genome: collection "%" now uses % (re-embedding finished)', collection, c.reembed_model;
END $$;

-- Semantic search. The query goes through the pgvector HNSW index of the embedding column
-- (cosine); with a filter, pgvector 0.8's iterative index scan keeps fetching candidates until
-- top_k rows pass the filter, and when it stops short (hnsw.max_scan_tuples) an exact scan of the
-- filtered rows makes sure nothing that matches is lost.
CREATE FUNCTION _search(collection text, query_vector text, top_k integer, score_threshold real, filter jsonb)
RETURNS TABLE (id text, score real, "row" jsonb)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp SET hnsw.ef_search = 40 SET hnsw.iterative_scan = 'relaxed_order' AS $$
DECLARE c @extschema@.collections; rel regclass := @extschema@.collection_relation(collection);
        vs name := @extschema@._vector_schema(); conds text := ''; k text; v jsonb; ty text; base text;
        args text[]; hits jsonb; nrm float8;
BEGIN
    IF top_k IS NULL OR top_k < 1 OR top_k > 1000 THEN
        RAISE EXCEPTION 'pg_genome: top_k must be between 1 and 1000' USING ERRCODE = '22023';
    END IF;
    IF score_threshold = 'NaN'::real THEN
        RAISE EXCEPTION 'pg_genome: score_threshold must be a number (a cosine between -1 and 1), not NaN' USING ERRCODE = '22023';
    END IF;
    IF query_vector IS NULL THEN
        RETURN;
    END IF;
    -- cosine similarity to a zero vector is undefined (NaN, which passes every threshold)
    -- (from the vector's text form: static SQL, planned once per session)
    SELECT sum(x::float8 * x::float8) INTO nrm FROM unnest(string_to_array(btrim(query_vector, '[]'), ',')) x;
    IF nrm = 0 OR nrm = 'NaN'::float8 THEN
        RAISE EXCEPTION 'pg_genome: the query vector has zero length; cosine similarity is undefined' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO c FROM @extschema@.collections x WHERE x.name = collection;
    -- pgvector returns at most ef_search rows per scan
    PERFORM set_config('hnsw.ef_search', greatest(40, top_k)::text, true);
    IF filter IS NOT NULL THEN
        IF jsonb_typeof(filter) <> 'object' THEN
            RAISE EXCEPTION 'pg_genome: filter must be a JSON object of column: value pairs' USING ERRCODE = '22023';
        END IF;
        FOR k, v IN SELECT * FROM jsonb_each(filter) LOOP
            SELECT format_type(a.atttypid, a.atttypmod) INTO ty FROM pg_attribute a
             WHERE a.attrelid = rel AND a.attname = k AND a.attnum > 0 AND NOT a.attisdropped;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'pg_genome: filter column "%" does not exist in %', k, rel USING ERRCODE = '42703';
            END IF;
            IF jsonb_typeof(v) = 'object' OR (jsonb_typeof(v) = 'array' AND EXISTS (
                   SELECT 1 FROM jsonb_array_elements(v) e WHERE jsonb_typeof(e) IN ('object', 'array'))) THEN
                RAISE EXCEPTION 'pg_genome: filter value for "%" must be a scalar or an array of scalars', k USING ERRCODE = '22023';
            END IF;
            -- pg_catalog's = (the statement runs with search_path = pg_catalog, pg_temp): no
            -- operator from a schema other roles can create in is ever picked
            conds := conds || CASE jsonb_typeof(v)
                WHEN 'null' THEN format(' AND t.%I IS NULL', k)
                WHEN 'array' THEN format(' AND t.%I OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT jsonb_array_elements_text(($1[3])::jsonb -> %L))::%s[])', k, k, ty)
                ELSE format(' AND t.%I OPERATOR(pg_catalog.=) ((($1[3])::jsonb) ->> %L)::%s', k, k, ty) END;
        END LOOP;
    END IF;
    -- read as the table's owner when the caller is more privileged, as the caller otherwise
    -- (genome._owner_value): a role sees only rows it could read itself
    args := ARRAY[query_vector, top_k::text, filter::text];
    base := format('SELECT format(''%%s'', t.%1$I) AS id, (t.%2$I OPERATOR(%3$I.<=>) ($1[1])::%3$I.vector) AS dist, '
                   'to_jsonb(t) - %2$L AS payload FROM %4$s t WHERE t.%2$I IS NOT NULL%5$s ORDER BY ',
                   c.id_column, c.embedding_column, vs, rel, conds);
    hits := @extschema@._owner_value(rel, format('SELECT coalesce(jsonb_agg(h), ''[]'') FROM (%s t.%I OPERATOR(%I.<=>) ($1[1])::%I.vector LIMIT ($1[2])::int) h',
                                                 base, c.embedding_column, vs, vs), args);
    IF filter IS NOT NULL AND jsonb_array_length(hits) < top_k THEN
        -- "+ 0" keeps the planner off the index: an exact scan over the rows that pass the filter
        hits := @extschema@._owner_value(rel, format('SELECT coalesce(jsonb_agg(h), ''[]'') FROM (%s (t.%I OPERATOR(%I.<=>) ($1[1])::%I.vector) + 0, 1 LIMIT ($1[2])::int) h',
                                                     base, c.embedding_column, vs, vs), args);
    END IF;
    -- rows whose stored embedding has zero length have no defined score (NaN): left out
    RETURN QUERY SELECT e ->> 'id', (1 - (e ->> 'dist')::float8)::real, e -> 'payload' FROM jsonb_array_elements(hits) e
                  WHERE (e ->> 'dist')::float8 <> 'NaN'::float8 AND 1 - (e ->> 'dist')::float8 >= coalesce(score_threshold, -1)
                  ORDER BY (e ->> 'dist')::float8, e ->> 'id';
END $$;

CREATE FUNCTION search(collection text, query text, top_k integer DEFAULT 10, score_threshold real DEFAULT 0.5,
                       filter jsonb DEFAULT NULL)
RETURNS TABLE (id text, score real, "row" jsonb)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE m text;
BEGIN
    PERFORM @extschema@.collection_relation(collection);
    -- a re-embedding's switch-over cannot happen between reading the model and the query
    PERFORM pg_advisory_xact_lock_shared(1734700656, hashtext(collection));
    SELECT x.model INTO m FROM @extschema@.collections x WHERE x.name = collection;
    RETURN QUERY SELECT * FROM @extschema@._search(collection, @extschema@.embed(query, m)::text, top_k, score_threshold, filter);
END $$;
COMMENT ON FUNCTION search(text, text, integer, real, jsonb) IS 'semantic search: rows of a collection most similar to a text (cosine), best first, with optional equality filters';

CREATE FUNCTION search(collection text, query_vector vector, top_k integer DEFAULT 10, score_threshold real DEFAULT 0.5,
                       filter jsonb DEFAULT NULL)
RETURNS TABLE (id text, score real, "row" jsonb)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE d int;
BEGIN
    PERFORM @extschema@.collection_relation(collection);
    PERFORM pg_advisory_xact_lock_shared(1734700656, hashtext(collection));
    SELECT x.dimension INTO d FROM @extschema@.collections x WHERE x.name = collection;
    -- the length through pgvector's cast to real[] (casts are found by type, not search_path)
    IF query_vector IS NOT NULL AND cardinality(query_vector::real[]) <> d THEN
        RAISE EXCEPTION 'pg_genome: query vector has % dimensions, collection "%" has %',
              cardinality(query_vector::real[]), collection, d USING ERRCODE = '22000';
    END IF;
    RETURN QUERY SELECT * FROM @extschema@._search(collection, query_vector::text, top_k, score_threshold, filter);
END $$;
COMMENT ON FUNCTION search(text, vector, integer, real, jsonb) IS 'semantic search with a precomputed query vector';

-- Health: one jsonb for a dashboard or a probe.
CREATE FUNCTION health() RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE h jsonb; cron jsonb := NULL;
BEGIN
    -- What the caller may not read is skipped and named, never an error (0.5.0): pg_cron's jobs
    -- need USAGE on its schema, a collection's pending count SELECT on its table.
    IF to_regclass('cron.job') IS NOT NULL AND has_schema_privilege('cron', 'USAGE')
       AND has_table_privilege('cron.job', 'SELECT') AND has_table_privilege('cron.job_run_details', 'SELECT') THEN
        EXECUTE $q$SELECT coalesce(jsonb_agg(jsonb_build_object('jobname', j.jobname, 'schedule', j.schedule, 'active', j.active,
                       'last_status', d.status, 'last_start', d.start_time, 'last_end', d.end_time, 'last_message', d.return_message)
                       ORDER BY j.jobname), '[]')
                   FROM cron.job j
                   LEFT JOIN LATERAL (SELECT * FROM cron.job_run_details r WHERE r.jobid = j.jobid ORDER BY r.runid DESC LIMIT 1) d ON true
                  WHERE j.jobname LIKE 'genome\_%'$q$ INTO cron;
    END IF;
    SELECT jsonb_build_object(
        'extension_version', (SELECT extversion FROM pg_extension WHERE extname = 'pg_genome'),
        'pgvector_version', (SELECT extversion FROM pg_extension WHERE extname = 'vector'),
        'database', current_database(),
        'default_model', nullif(current_setting('genome.default_model'), ''),
        'models', (SELECT coalesce(jsonb_agg(jsonb_build_object('name', m.name, 'version', m.version, 'dimension', m.dimension,
                                   'task', m.task) ORDER BY m.name, m.created_at), '[]') FROM @extschema@.models m),
        'runtime', @extschema@._runtime_info(),
        'workers', (SELECT coalesce(jsonb_agg(jsonb_build_object('pid', a.pid, 'database', a.datname, 'state', a.state,
                                    'backend_start', a.backend_start) ORDER BY a.pid), '[]')
                      FROM pg_stat_activity a WHERE a.backend_type = 'pg_genome embed worker'),
        'cron_jobs', cron,
        'cron_jobs_readable', to_regclass('cron.job') IS NULL OR cron IS NOT NULL,
        'queue', (SELECT coalesce(jsonb_agg(to_jsonb(q) ORDER BY q.collection), '[]') FROM @extschema@.embed_queue q),
        'pending_assignment', (SELECT coalesce(jsonb_object_agg(c.name, @extschema@.pending_count(c.name)), '{}')
                                 FROM @extschema@.collections c WHERE EXISTS (SELECT 1 FROM pg_class WHERE oid = c.relid)
                                  AND @extschema@._may_read(c.relid) AND @extschema@._owned_by(c.relid, c.registered_by)
                                  AND NOT EXISTS (SELECT 1 FROM unnest(ARRAY[c.id_column, c.family_column]) col
                                                   WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.relid
                                                                       AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped))),
        -- collections whose registered columns were dropped or renamed (0.5.0): not embedded
        -- or assigned until registered again; the app's writes go on
        'broken_collections', (SELECT coalesce(jsonb_agg(jsonb_build_object('collection', c.name, 'missing_columns', x.miss)
                                                         ORDER BY c.name), '[]')
                                 FROM @extschema@.collections c
                                 CROSS JOIN LATERAL (SELECT array_agg(col) AS miss
                                                       FROM unnest(ARRAY[c.id_column, c.text_column, c.embedding_column, c.family_column]) col
                                                      WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.relid
                                                                          AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped)) x
                                WHERE EXISTS (SELECT 1 FROM pg_class WHERE oid = c.relid) AND x.miss IS NOT NULL),
        -- registrations refused at every use: their registering role no longer owns the table (0.5.0)
        'refused_collections', (SELECT coalesce(jsonb_agg(c.name ORDER BY c.name), '[]') FROM @extschema@.collections c
                                 WHERE EXISTS (SELECT 1 FROM pg_class WHERE oid = c.relid)
                                   AND NOT @extschema@._owned_by(c.relid, c.registered_by)),
        'skipped_collections', (SELECT coalesce(jsonb_agg(c.name ORDER BY c.name), '[]') FROM @extschema@.collections c
                                 WHERE EXISTS (SELECT 1 FROM pg_class WHERE oid = c.relid)
                                  AND NOT @extschema@._may_read(c.relid)),
        -- pet photo media (since 0.4.0): photos seen, failed, clusters, pets waiting for the background update
        'pet_media', (SELECT coalesce(jsonb_agg(jsonb_build_object('media', pm.name, 'model', pm.model,
                          'photos', ph.n, 'failed', ph.failed,
                          'clusters', (SELECT count(*) FROM @extschema@.pet_photo_clusters c WHERE c.media = pm.name),
                          'pets_waiting', dt.n, 'oldest_waiting', dt.oldest)
                          ORDER BY pm.name), '[]')
                        FROM @extschema@.pet_media pm
                        -- one pass over each table per media (0.4.1; 0.4.0 scanned them twice)
                        CROSS JOIN LATERAL (SELECT count(*) AS n, count(*) FILTER (WHERE p.error IS NOT NULL) AS failed
                                              FROM @extschema@.pet_photos p WHERE p.media = pm.name) ph
                        CROSS JOIN LATERAL (SELECT count(*) AS n, min(d.marked_at) AS oldest
                                              FROM @extschema@.pet_dirty d WHERE d.media = pm.name) dt))
      INTO h;
    RETURN h;
END $$;
COMMENT ON FUNCTION health IS 'versions, ONNX Runtime, workers, pg_cron jobs, queue depth and pending assignments as jsonb';

-- Prometheus text exposition: counters from shared memory (Rust) plus gauges read here.
CREATE FUNCTION metrics() RETURNS text
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
-- label values are collection names, which register_collection limits to [A-Za-z0-9_.-]
DECLARE out text := @extschema@._metrics_counters(); r record;
BEGIN
    out := out || E'# HELP genome_queue_rows Rows in the background embedding queue by status.\n# TYPE genome_queue_rows gauge\n';
    FOR r IN SELECT q.collection, s.status, s.n FROM @extschema@.embed_queue q,
             LATERAL (VALUES ('pending', q.pending), ('processing', q.processing), ('completed', q.completed), ('failed', q.failed)) s(status, n)
             ORDER BY 1, 2 LOOP
        out := out || format(E'genome_queue_rows{collection="%s",status="%s"} %s\n', r.collection, r.status, r.n);
    END LOOP;
    out := out || E'# HELP genome_queue_oldest_pending_seconds Age of the oldest row waiting to be embedded.\n# TYPE genome_queue_oldest_pending_seconds gauge\n';
    FOR r IN SELECT q.collection, coalesce(extract(epoch FROM q.oldest_pending_age), 0) AS s FROM @extschema@.embed_queue q ORDER BY 1 LOOP
        out := out || format(E'genome_queue_oldest_pending_seconds{collection="%s"} %s\n', r.collection, round(r.s::numeric, 3));
    END LOOP;
    out := out || E'# HELP genome_families Live families per collection (Unclustered not counted).\n# TYPE genome_families gauge\n';
    FOR r IN SELECT c.name, count(f.id) FILTER (WHERE NOT f.is_unclustered AND f.retired_at IS NULL) AS n
               FROM @extschema@.collections c LEFT JOIN @extschema@.families f ON f.collection = c.name GROUP BY 1 ORDER BY 1 LOOP
        out := out || format(E'genome_families{collection="%s"} %s\n', r.name, r.n);
    END LOOP;
    out := out || E'# HELP genome_last_run_seconds Duration of the last successful full run.\n# TYPE genome_last_run_seconds gauge\n';
    FOR r IN SELECT DISTINCT ON (x.collection) x.collection, x.kind, extract(epoch FROM x.finished_at - x.started_at) AS s, x.n_clusters, x.n_noise
               FROM @extschema@.runs x WHERE x.status = 'succeeded' ORDER BY x.collection, x.id DESC LOOP
        out := out || format(E'genome_last_run_seconds{collection="%s",kind="%s"} %s\n', r.collection, r.kind, round(r.s::numeric, 3));
    END LOOP;
    out := out || E'# HELP genome_last_run_clusters Clusters found by the last successful full run.\n# TYPE genome_last_run_clusters gauge\n';
    FOR r IN SELECT DISTINCT ON (x.collection) x.collection, x.n_clusters FROM @extschema@.runs x
              WHERE x.status = 'succeeded' ORDER BY x.collection, x.id DESC LOOP
        out := out || format(E'genome_last_run_clusters{collection="%s"} %s\n', r.collection, coalesce(r.n_clusters, 0));
    END LOOP;
    out := out || E'# HELP genome_workers_alive Background embedding workers running in this cluster.\n# TYPE genome_workers_alive gauge\n'
               || format(E'genome_workers_alive %s\n', (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_genome embed worker'));
    RETURN out;
END $$;
COMMENT ON FUNCTION metrics IS 'Prometheus text exposition of pg_genome counters and gauges';

-- Search indexes for collections registered before 0.3.0 (none on a fresh install).
SELECT @extschema@.create_search_index(c.name) FROM @extschema@.collections c WHERE EXISTS (SELECT 1 FROM pg_class WHERE oid = c.relid);

-- ---------------------------------------------------------------------------------------------
-- 0.4.0: image embeddings, pet photo media, per-pet incremental clusters, heroes.

-- Image models are registered without a tokenizer (register_model takes NULL for it since 0.4.0).
ALTER FUNCTION register_model(text, text, bytea, text, jsonb, text, boolean) CALLED ON NULL INPUT;
ALTER FUNCTION register_model_path(text, text, text, text, jsonb, text, boolean) CALLED ON NULL INPUT;

-- The media a call names; NULL names the only one registered.
CREATE FUNCTION _pet_media(media text) RETURNS @extschema@.pet_media
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE m @extschema@.pet_media; names text;
BEGIN
    IF media IS NULL THEN
        SELECT string_agg(name, ', ' ORDER BY name) INTO names FROM @extschema@.pet_media;
        IF names IS NULL THEN
            RAISE EXCEPTION 'pg_genome: no pet media is registered' USING ERRCODE = '42704',
                  HINT = 'register the photo table with genome.register_pet_media(...)';
        ELSIF position(',' IN names) > 0 THEN
            RAISE EXCEPTION 'pg_genome: several pet media are registered (%); name one', names USING ERRCODE = '22023';
        END IF;
        media := names;
    END IF;
    SELECT * INTO m FROM @extschema@.pet_media x WHERE x.name = media;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pg_genome: pet media "%" is not registered', media USING ERRCODE = '42704',
              HINT = 'see genome.pet_media';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = m.relid) THEN
        RAISE EXCEPTION 'pg_genome: the table of pet media "%" no longer exists', media USING ERRCODE = '42P01';
    END IF;
    -- the role that registered it may still read it (0.5.0): registrations grant nothing
    PERFORM @extschema@._check_registrant('pet media', m.name, m.relid, m.registered_by);
    RETURN m;
END $$;

-- Statement-level triggers on the app's photo table mark the pets whose photos were written.
-- SECURITY DEFINER: whoever writes photos needs no rights on pg_genome's tables. Since 0.5.0 it
-- acts only on the table registered under its argument, and takes pet ids with their type's
-- output function (format's %s), never through a cast the table owner could define.
CREATE FUNCTION _pet_mark_dirty() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE m @extschema@.pet_media; src text;
BEGIN
    SELECT * INTO m FROM @extschema@.pet_media x WHERE x.name = TG_ARGV[0];
    IF NOT FOUND OR NOT @extschema@._fires_for(TG_RELID, TG_NAME, m.relid, TG_OP IN ('INSERT', 'UPDATE'), TG_OP IN ('DELETE', 'UPDATE')) THEN
        RETURN NULL;
    END IF;
    src := CASE TG_OP WHEN 'INSERT' THEN format('SELECT format(''%%s'', %I) FROM new_rows', m.pet_column)
                      WHEN 'DELETE' THEN format('SELECT format(''%%s'', %I) FROM old_rows', m.pet_column)
                      ELSE format('SELECT format(''%%s'', %1$I) FROM new_rows UNION SELECT format(''%%s'', %1$I) FROM old_rows', m.pet_column) END;
    EXECUTE format('INSERT INTO @extschema@.pet_dirty AS d (media, pet_id) SELECT DISTINCT $1, p FROM (%s) q(p) WHERE p IS NOT NULL
                    ON CONFLICT (media, pet_id) DO UPDATE SET marked_at = now(), attempts = 0, last_error = NULL', src)
      USING m.name;
    RETURN NULL;
END $$;

CREATE FUNCTION _pet_triggers(m @extschema@.pet_media, install boolean) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE rel regclass := m.relid::regclass; base text := left('genome_pets_' || m.name, 58);
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', base || '_ins', rel);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', base || '_upd', rel);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', base || '_del', rel);
    IF install THEN
        -- one trigger per event: transition tables allow only one event per trigger
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._pet_mark_dirty(%L)', base || '_ins', rel, m.name);
        EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._pet_mark_dirty(%L)', base || '_upd', rel, m.name);
        EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._pet_mark_dirty(%L)', base || '_del', rel, m.name);
    END IF;
END $$;

-- Register an app's photo table. Columns are checked against the catalog and always quoted.
-- Every pet already in the table is marked for the background update.
CREATE FUNCTION register_pet_media(source regclass, pet_column name, image_id_column name, image_column name,
                                   taken_at_column name, pose_column name DEFAULT NULL,
                                   name text DEFAULT NULL, model text DEFAULT NULL)
RETURNS @extschema@.pet_media
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mname text := coalesce(name, (SELECT c.relname FROM pg_class c WHERE c.oid = source));
    mm record;
    result @extschema@.pet_media;
    col name;
    ty oid;
    kind "char";
BEGIN
    IF source IS NULL OR pet_column IS NULL OR image_id_column IS NULL OR image_column IS NULL OR taken_at_column IS NULL THEN
        RAISE EXCEPTION 'pg_genome: source, pet_column, image_id_column, image_column and taken_at_column are required'
              USING ERRCODE = '22004';
    END IF;
    SELECT c.relkind INTO kind FROM pg_class c WHERE c.oid = source;
    IF kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'pg_genome: "%" is not a table', source USING ERRCODE = '42809';
    END IF;
    FOREACH col IN ARRAY ARRAY[pet_column, image_id_column, image_column, taken_at_column, pose_column] LOOP
        CONTINUE WHEN col IS NULL;
        IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = source AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped) THEN
            RAISE EXCEPTION 'pg_genome: column "%" does not exist in "%"', col, source USING ERRCODE = '42703';
        END IF;
    END LOOP;
    SELECT a.atttypid INTO ty FROM pg_attribute a WHERE a.attrelid = source AND a.attname = image_column;
    IF ty <> 'bytea'::regtype THEN
        RAISE EXCEPTION 'pg_genome: image column "%" is %, not bytea', image_column, format_type(ty, NULL) USING ERRCODE = '42804';
    END IF;
    SELECT a.atttypid INTO ty FROM pg_attribute a WHERE a.attrelid = source AND a.attname = taken_at_column;
    IF ty NOT IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype) THEN
        RAISE EXCEPTION 'pg_genome: taken_at column "%" is %, not a timestamp or date', taken_at_column, format_type(ty, NULL)
              USING ERRCODE = '42804';
    END IF;
    IF pose_column IS NOT NULL THEN
        SELECT a.atttypid INTO ty FROM pg_attribute a WHERE a.attrelid = source AND a.attname = pose_column;
        IF ty NOT IN ('real'::regtype, 'double precision'::regtype, 'numeric'::regtype, 'smallint'::regtype, 'integer'::regtype) THEN
            RAISE EXCEPTION 'pg_genome: pose column "%" is %, not a number (a pose score 0..1)', pose_column, format_type(ty, NULL)
                  USING ERRCODE = '42804';
        END IF;
    END IF;
    -- as genome.embed_image does (0.4.0 fell back to a copy of the setting's default here)
    model := coalesce(model, nullif(current_setting('genome.default_image_model'), ''));
    IF model IS NULL THEN
        RAISE EXCEPTION 'pg_genome: no model given and genome.default_image_model is empty' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO mm FROM @extschema@.resolve_model(model);
    IF (SELECT x.task FROM @extschema@.models x WHERE x.name = mm.name AND x.version = mm.version) <> 'image-embedding' THEN
        RAISE EXCEPTION 'pg_genome: model "%@%" is not an image-embedding model', mm.name, mm.version USING ERRCODE = '42809';
    END IF;
    IF EXISTS (SELECT 1 FROM @extschema@.pet_media x WHERE x.name = mname AND x.relid <> source) THEN
        RAISE EXCEPTION 'pg_genome: pet media "%" is registered for another table', mname USING ERRCODE = '42710',
              HINT = 'pass another name, or genome.unregister_pet_media(...) first';
    END IF;
    INSERT INTO @extschema@.pet_media AS x (name, relid, pet_column, image_id_column, image_column, taken_at_column, pose_column, model, dimension)
    VALUES (mname, source, pet_column, image_id_column, image_column, taken_at_column, pose_column, mm.name || '@' || mm.version, mm.dimension)
    ON CONFLICT ON CONSTRAINT pet_media_pkey DO UPDATE SET pet_column = EXCLUDED.pet_column, image_id_column = EXCLUDED.image_id_column,
        image_column = EXCLUDED.image_column, taken_at_column = EXCLUDED.taken_at_column, pose_column = EXCLUDED.pose_column
    RETURNING * INTO result;
    IF result.model <> mm.name || '@' || mm.version THEN
        RAISE EXCEPTION 'pg_genome: pet media "%" is embedded with %; it cannot switch models in place', mname, result.model
              USING ERRCODE = '55000', HINT = 'unregister it and register it again to re-embed every photo';
    END IF;
    PERFORM @extschema@._pet_triggers(result, true);
    INSERT INTO @extschema@.pet_dirty (media, pet_id)
    SELECT DISTINCT mname, x FROM jsonb_array_elements_text(@extschema@._owner_value(source,
        format('SELECT coalesce(jsonb_agg(DISTINCT format(''%%s'', %I)), ''[]'') FROM %s WHERE %I IS NOT NULL',
               pet_column, source, pet_column))) x
    ON CONFLICT (media, pet_id) DO NOTHING;
    RETURN result;
END $$;
COMMENT ON FUNCTION register_pet_media IS 'register an app''s photo table (pet, image id, image bytes, taken at, optional pose score) for per-pet clusters';

CREATE FUNCTION unregister_pet_media(media text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE m @extschema@.pet_media;
BEGIN
    SELECT * INTO m FROM @extschema@.pet_media x WHERE x.name = media;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_class WHERE oid = m.relid) THEN
        PERFORM @extschema@._pet_triggers(m, false);
    END IF;
    PERFORM @extschema@.unschedule_pet_clustering(media);
    DELETE FROM @extschema@.pet_media x WHERE x.name = media;   -- photos, clusters, state cascade
    RETURN true;
END $$;

-- Update one pet's clusters: forget photos gone from the app's table, embed and score new ones,
-- then join them to clusters or form new ones (genome._pet_plan, HDBSCAN on that pet's photos
-- only). Reads and writes only this pet's rows, under a per-pet lock, in the caller's
-- transaction. pet_id: any type, a quoted literal is text (cast to the pet column's type, so the app's index is used).
CREATE FUNCTION cluster_pet(pet_id anycompatible, media text DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m @extschema@.pet_media := @extschema@._pet_media(media);
    pid text := pet_id::text;
    rel regclass;
    pet_type text;
    t0 timestamptz := clock_timestamp();
    r record;
    added int := 0; failed int := 0; removed int := 0;
    ids text[]; embs real[]; cls bigint[]; present text[];
    thr double precision;
    plan jsonb;
    new_ids bigint[] := '{}';
    k int;
    nid bigint;
    res jsonb;
BEGIN
    IF pid IS NULL THEN
        RAISE EXCEPTION 'pg_genome: pet_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    rel := m.relid::regclass;
    SELECT format_type(a.atttypid, a.atttypmod) INTO pet_type FROM pg_attribute a WHERE a.attrelid = m.relid AND a.attname = m.pet_column;
    PERFORM pg_advisory_xact_lock(1734700657, hashtext(m.name || '/' || pid));
    -- consumed first: a write committed while this runs marks the pet again (see pet_dirty)
    DELETE FROM @extschema@.pet_dirty d WHERE d.media = m.name AND d.pet_id = pid;
    -- The pet's photos in the app's table, read as the table's owner when the caller is more
    -- privileged (0.5.0, genome._owner_value): ids first, then one photo's bytes at a time.
    present := ARRAY(SELECT jsonb_array_elements_text(@extschema@._owner_value(m.relid, format(
        'SELECT coalesce(jsonb_agg(format(''%%s'', s.%I)), ''[]'') FROM %s s WHERE s.%I OPERATOR(pg_catalog.=) ($1[1])::%s',
        m.image_id_column, rel, m.pet_column, pet_type), ARRAY[pid])));
    DELETE FROM @extschema@.pet_photos p WHERE p.media = m.name AND p.pet_id = pid AND p.image_id <> ALL (present);
    GET DIAGNOSTICS removed = ROW_COUNT;
    FOR r IN SELECT (ph ->> 'image_id') AS image_id, decode(substr(ph ->> 'img', 3), 'hex') AS img,
                    (ph ->> 'taken_at')::timestamptz AS taken_at, (ph ->> 'pose')::real AS pose
               FROM (SELECT u.image_id FROM unnest(present) AS u(image_id)
                      WHERE NOT EXISTS (SELECT 1 FROM @extschema@.pet_photos p WHERE p.media = m.name AND p.image_id = u.image_id)) i
              CROSS JOIN LATERAL (SELECT @extschema@._owner_value(m.relid, format(
                  'SELECT to_jsonb(x) FROM (SELECT format(''%%s'', s.%1$I) AS image_id, s.%2$I AS img, s.%3$I::timestamptz AS taken_at, %4$s AS pose
                     FROM %5$s s WHERE s.%6$I OPERATOR(pg_catalog.=) ($1[1])::%7$s AND format(''%%s'', s.%1$I) OPERATOR(pg_catalog.=) $1[2]
                    ORDER BY s.%3$I LIMIT 1) x',
                  m.image_id_column, m.image_column, m.taken_at_column,
                  CASE WHEN m.pose_column IS NULL THEN 'NULL::real' ELSE format('s.%I::real', m.pose_column) END,
                  rel, m.pet_column, pet_type), ARRAY[pid, i.image_id]) AS ph) q
              WHERE ph IS NOT NULL
              ORDER BY (ph ->> 'taken_at')::timestamptz, i.image_id LOOP
        IF r.img IS NULL THEN
            INSERT INTO @extschema@.pet_photos (media, image_id, pet_id, taken_at, pose, error)
            VALUES (m.name, r.image_id, pid, r.taken_at, r.pose, 'the image is NULL');
            failed := failed + 1;
            CONTINUE;
        END IF;
        BEGIN
            INSERT INTO @extschema@.pet_photos (media, image_id, pet_id, embedding, quality, taken_at, pose)
            VALUES (m.name, r.image_id, pid, @extschema@.embed_image(r.img, m.model),
                    (@extschema@.image_quality(r.img) ->> 'score')::real, r.taken_at, r.pose);
            added := added + 1;
        EXCEPTION WHEN OTHERS THEN
            -- a corrupt or oversized photo is recorded and skipped; the pet's other photos go on
            -- (cancellation is not caught by OTHERS)
            INSERT INTO @extschema@.pet_photos (media, image_id, pet_id, taken_at, pose, error)
            VALUES (m.name, r.image_id, pid, r.taken_at, r.pose, SQLERRM);
            failed := failed + 1;
        END;
    END LOOP;
    SELECT s.threshold INTO thr FROM @extschema@.pet_state s WHERE s.media = m.name AND s.pet_id = pid;
    SELECT array_agg(p.image_id ORDER BY p.taken_at NULLS LAST, p.image_id),
           array_agg(p.embedding::real[] ORDER BY p.taken_at NULLS LAST, p.image_id),
           array_agg(p.cluster_id ORDER BY p.taken_at NULLS LAST, p.image_id)
      INTO ids, embs, cls
      FROM @extschema@.pet_photos p WHERE p.media = m.name AND p.pet_id = pid AND p.embedding IS NOT NULL
       -- photos too poor to place (blurred, dark: their features follow the defect, not the look)
       -- neither form nor join clusters; they stay unassigned
       AND coalesce(p.quality, 0) >= current_setting('genome.pet_min_quality')::real;
    IF ids IS NOT NULL THEN
        plan := @extschema@._pet_plan(embs, cls, thr);
        FOR k IN 1 .. jsonb_array_length(plan -> 'new_clusters') LOOP
            INSERT INTO @extschema@.pet_photo_clusters (media, pet_id) VALUES (m.name, pid) RETURNING id INTO nid;
            new_ids := new_ids || nid;
        END LOOP;
        UPDATE @extschema@.pet_photos p
           SET cluster_id = coalesce((a ->> 1)::bigint, new_ids[(a ->> 2)::int]), similarity = (a ->> 3)::real
          FROM jsonb_array_elements(plan -> 'assign') a
         WHERE p.media = m.name AND p.image_id = ids[(a ->> 0)::int];
        thr := (plan ->> 'threshold')::double precision;
    END IF;
    PERFORM @extschema@._use_vector_schema();
    UPDATE @extschema@.pet_photo_clusters c
       SET centroid = s.centroid, size = s.n, first_taken_at = s.f, last_taken_at = s.l, updated_at = now()
      FROM (SELECT p.cluster_id, avg(p.embedding) AS centroid, count(*)::int AS n, min(p.taken_at) AS f, max(p.taken_at) AS l
              FROM @extschema@.pet_photos p WHERE p.media = m.name AND p.pet_id = pid AND p.cluster_id IS NOT NULL
             GROUP BY p.cluster_id) s
     WHERE c.id = s.cluster_id AND c.media = m.name AND c.pet_id = pid
       AND (c.size IS DISTINCT FROM s.n OR c.centroid IS NULL OR c.last_taken_at IS DISTINCT FROM s.l OR c.first_taken_at IS DISTINCT FROM s.f);
    DELETE FROM @extschema@.pet_photo_clusters c WHERE c.media = m.name AND c.pet_id = pid
       AND NOT EXISTS (SELECT 1 FROM @extschema@.pet_photos p WHERE p.cluster_id = c.id);
    INSERT INTO @extschema@.pet_state AS s (media, pet_id, threshold) VALUES (m.name, pid, thr)
    ON CONFLICT ON CONSTRAINT pet_state_pkey DO UPDATE SET threshold = EXCLUDED.threshold, updated_at = now();
    SELECT jsonb_build_object(
             'media', m.name, 'pet_id', pid, 'added', added, 'failed', failed, 'removed', removed,
             'joined', (SELECT count(*) FROM jsonb_array_elements(plan -> 'assign') a WHERE a ->> 1 IS NOT NULL),
             'new_clusters', coalesce(jsonb_array_length(plan -> 'new_clusters'), 0),
             'clusters', (SELECT count(*) FROM @extschema@.pet_photo_clusters c WHERE c.media = m.name AND c.pet_id = pid),
             'photos', count(*), 'clustered', count(p.cluster_id),
             'unassigned', count(*) FILTER (WHERE p.cluster_id IS NULL AND p.embedding IS NOT NULL),
             'threshold', thr, 'ms', round(extract(epoch FROM clock_timestamp() - t0) * 1000::numeric))
      INTO res
      FROM @extschema@.pet_photos p WHERE p.media = m.name AND p.pet_id = pid;
    RETURN res;
END $$;
COMMENT ON FUNCTION cluster_pet IS 'update one pet''s photo clusters incrementally: new photos join the nearest cluster or, once enough gather, form new ones';

-- The background path: pets marked by the triggers, oldest first, each in a subtransaction (one
-- pet's failure is recorded on its mark and the others go on). Pets locked by another run are
-- skipped. pg_cron runs it (genome.schedule_pet_clustering).
CREATE FUNCTION cluster_dirty_pets(media text DEFAULT NULL, max_pets integer DEFAULT 100) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE d record; done int := 0; errors int := 0; skipped int := 0; err text; t0 timestamptz := clock_timestamp();
BEGIN
    FOR d IN SELECT x.media, x.pet_id FROM @extschema@.pet_dirty x
              WHERE (cluster_dirty_pets.media IS NULL OR x.media = cluster_dirty_pets.media)
              ORDER BY x.marked_at, x.media, x.pet_id LIMIT max_pets LOOP
        IF NOT pg_try_advisory_xact_lock(1734700657, hashtext(d.media || '/' || d.pet_id)) THEN
            skipped := skipped + 1;
            CONTINUE;
        END IF;
        BEGIN
            PERFORM @extschema@.cluster_pet(d.pet_id, d.media);
            done := done + 1;
        EXCEPTION WHEN OTHERS THEN
            err := SQLERRM;
            UPDATE @extschema@.pet_dirty x SET attempts = x.attempts + 1, last_error = err
             WHERE x.media = d.media AND x.pet_id = d.pet_id;
            RAISE WARNING 'pg_genome: updating pet % of "%" failed: %', d.pet_id, d.media, err;
            errors := errors + 1;
        END;
    END LOOP;
    RETURN jsonb_build_object('pets', done, 'errors', errors, 'skipped_locked', skipped,
                              'still_dirty', (SELECT count(*) FROM @extschema@.pet_dirty),
                              'ms', round(extract(epoch FROM clock_timestamp() - t0) * 1000::numeric));
END $$;
COMMENT ON FUNCTION cluster_dirty_pets IS 'update the clusters of pets with new or removed photos (the pg_cron job''s body)';

CREATE FUNCTION schedule_pet_clustering(media text DEFAULT NULL, cron text DEFAULT '* * * * *', max_pets integer DEFAULT 200)
RETURNS TABLE (job_name text, jobid bigint, schedule text)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE m @extschema@.pet_media := @extschema@._pet_media(media);
BEGIN
    IF to_regnamespace('cron') IS NULL THEN
        RAISE EXCEPTION 'pg_genome: pg_cron is not installed in this database' USING ERRCODE = '0A000',
              HINT = 'add pg_cron to shared_preload_libraries, set cron.database_name, then CREATE EXTENSION pg_cron';
    END IF;
    job_name := 'genome_pets:' || m.name; schedule := cron;
    -- runs as the photo table's owner when a superuser schedules it (0.5.0)
    EXECUTE 'SELECT cron.schedule_in_database($1, $2, $3, current_database(), $4)' INTO jobid
      USING job_name, cron, format('SELECT genome.cluster_dirty_pets(%L, %s)', m.name, max_pets), @extschema@._job_user(m.relid::regclass);
    RETURN NEXT;
END $$;
COMMENT ON FUNCTION schedule_pet_clustering IS 'create or update the pg_cron job that keeps pets with new photos up to date';

-- Remove pg_cron jobs by name; 0 when pg_cron is not installed. (unschedule uses it since 0.4.0.)
CREATE FUNCTION _cron_unschedule(names text[]) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE n integer := 0; j bigint;
BEGIN
    IF to_regnamespace('cron') IS NULL THEN
        RETURN 0;
    END IF;
    FOR j IN EXECUTE 'SELECT jobid FROM cron.job WHERE jobname = ANY($1)' USING names LOOP
        EXECUTE 'SELECT cron.unschedule($1)' USING j;
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

CREATE FUNCTION unschedule_pet_clustering(media text) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN @extschema@._cron_unschedule(ARRAY['genome_pets:' || media]);
END $$;

-- Per cluster, the top n photos by hero score (genome.hero_score_of; formula in the README):
-- quality, centrality (cosine to the centroid), recency (half-life decay from the pet's newest
-- photo) and pose when the media has a pose column. Photos below genome.hero_min_quality are
-- never heroes. NULL weights take the genome.hero_weight_* settings.
CREATE FUNCTION select_heroes(pet_id anycompatible, n integer DEFAULT 3, media text DEFAULT NULL,
                              w_quality double precision DEFAULT NULL, w_centrality double precision DEFAULT NULL,
                              w_recency double precision DEFAULT NULL, w_pose double precision DEFAULT NULL)
RETURNS TABLE (cluster_id bigint, rank integer, image_id text, score double precision, quality real,
               centrality double precision, recency_days double precision, pose real, taken_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE m @extschema@.pet_media := @extschema@._pet_media(media); pid text := pet_id::text;
        newest timestamptz; min_q real := current_setting('genome.hero_min_quality')::real;
BEGIN
    IF n IS NULL OR n < 1 THEN
        RAISE EXCEPTION 'pg_genome: n must be at least 1, got %', n USING ERRCODE = '22023';
    END IF;
    PERFORM @extschema@._use_vector_schema();
    SELECT max(p.taken_at) INTO newest FROM @extschema@.pet_photos p
     WHERE p.media = m.name AND p.pet_id = pid AND p.embedding IS NOT NULL;
    RETURN QUERY
    SELECT s.cluster_id, s.rank::integer, s.image_id, s.score, s.quality, s.centrality, s.age, s.pose, s.taken_at
      FROM (SELECT x.*, row_number() OVER (PARTITION BY x.cluster_id ORDER BY x.score DESC, x.image_id) AS rank
              FROM (SELECT p.cluster_id, p.image_id, p.quality, p.pose, p.taken_at, y.centrality, y.age,
                           @extschema@.hero_score_of(p.quality, y.centrality, y.age,
                                                     CASE WHEN m.pose_column IS NOT NULL THEN p.pose END,
                                                     w_quality, w_centrality, w_recency, w_pose) AS score
                      FROM @extschema@.pet_photos p
                      JOIN @extschema@.pet_photo_clusters c ON c.id = p.cluster_id
                     -- operands typed exactly as pg_catalog's operators (pgvector's schema is on the
                     -- path here): no operator another role creates there is ever a better match
                     CROSS JOIN LATERAL (SELECT 1::float8 - (p.embedding <=> c.centroid) AS centrality,
                                                coalesce(extract(epoch FROM newest - p.taken_at) / 86400::numeric, 'Infinity')::double precision AS age) y
                     WHERE p.media = m.name AND p.pet_id = pid AND p.quality >= min_q) x) s
     WHERE s.rank <= n
     ORDER BY s.cluster_id, s.rank;
END $$;
COMMENT ON FUNCTION select_heroes IS 'top n photos per cluster of a pet by hero score (quality, centrality, recency, pose)';

-- The payload an internal API serves for one pet.
CREATE FUNCTION pet_clusters(pet_id anycompatible, media text DEFAULT NULL, n integer DEFAULT 3) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE m @extschema@.pet_media; pid text := pet_id::text; res jsonb;
BEGIN
    IF pid IS NULL THEN
        RAISE EXCEPTION 'pg_genome: pet_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    m := @extschema@._pet_media(media);
    PERFORM @extschema@._use_vector_schema();
    WITH heroes AS (SELECT * FROM @extschema@.select_heroes(pid, n, m.name)),
         photos AS (SELECT * FROM @extschema@.pet_photos p WHERE p.media = m.name AND p.pet_id = pid),
         counts AS (SELECT count(*) AS total, count(embedding) AS embedded, count(error) AS failed,
                           count(cluster_id) AS clustered,
                           count(*) FILTER (WHERE cluster_id IN (SELECT h.cluster_id FROM heroes h)) AS in_hero_clusters
                      FROM photos),
         cl AS (SELECT c.*, (SELECT avg(1::float8 - (p.embedding <=> c.centroid)) FROM photos p WHERE p.cluster_id = c.id) AS cohesion
                  FROM @extschema@.pet_photo_clusters c WHERE c.media = m.name AND c.pet_id = pid)
    SELECT jsonb_build_object(
        'pet_id', pid, 'media', m.name, 'model', m.model,
        'photos', k.total, 'embedded', k.embedded, 'failed', k.failed, 'clustered', k.clustered,
        'unassigned', k.embedded - k.clustered,
        'coverage', jsonb_build_object(
            'clustered_share', CASE WHEN k.embedded > 0 THEN round(k.clustered::numeric / k.embedded::numeric, 4) END,
            'hero_cluster_share', CASE WHEN k.embedded > 0 THEN round(k.in_hero_clusters::numeric / k.embedded::numeric, 4) END),
        'threshold', (SELECT s.threshold FROM @extschema@.pet_state s WHERE s.media = m.name AND s.pet_id = pid),
        'updated_at', (SELECT s.updated_at FROM @extschema@.pet_state s WHERE s.media = m.name AND s.pet_id = pid),
        'clusters', coalesce((SELECT jsonb_agg(jsonb_build_object(
                'id', c.id, 'size', c.size, 'first_taken_at', c.first_taken_at, 'last_taken_at', c.last_taken_at,
                'centroid', jsonb_build_object('dimension', m.dimension, 'norm', round((SELECT sqrt(sum(x * x)::float8) FROM unnest(c.centroid::real[]) x)::numeric, 4),
                                               'cohesion', round(c.cohesion::numeric, 4)),
                'heroes', coalesce((SELECT jsonb_agg(jsonb_build_object('image_id', h.image_id, 'rank', h.rank,
                                        'score', round(h.score::numeric, 4), 'quality', round(h.quality::numeric, 4),
                                        'centrality', round(h.centrality::numeric, 4), 'taken_at', h.taken_at) ORDER BY h.rank)
                                      FROM heroes h WHERE h.cluster_id = c.id), '[]'))
              ORDER BY c.size DESC, c.id) FROM cl c), '[]'))
      INTO res FROM counts k;
    RETURN res;
END $$;
COMMENT ON FUNCTION pet_clusters IS 'one pet''s clusters with sizes, time spans, centroid summary and heroes, coverage and model: an API payload';

-- ---------------------------------------------------------------------------------------------
-- 0.5.0: security. Roles for using, administering and monitoring pg_genome; registrations
-- re-checked at every use; app-table statements run as the table's owner (genome._owner_value,
-- genome._owner_exec, src/owner.rs); pg_cron jobs run as the table's owner; internal functions
-- closed to PUBLIC. The README's "Security model" says who can do what.

-- Cluster-wide roles (made once; a second database's CREATE EXTENSION reuses them), in the
-- manner of pg_monitor: genome_monitor reads health and metrics; genome_user registers its own
-- tables, embeds, searches and runs jobs; genome_admin also registers models.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'genome_monitor') THEN
        CREATE ROLE genome_monitor NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'genome_user') THEN
        CREATE ROLE genome_user NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'genome_admin') THEN
        CREATE ROLE genome_admin NOLOGIN;
    END IF;
    IF NOT pg_has_role('genome_user', 'genome_monitor', 'MEMBER') THEN
        GRANT genome_monitor TO genome_user;
    END IF;
    IF NOT pg_has_role('genome_admin', 'genome_user', 'MEMBER') THEN
        GRANT genome_user TO genome_admin;
    END IF;
END $roles$;

-- Refuses a registration whose registering role no longer has the privileges of the table's
-- owner (is not the owner or a member of its role): every use of a collection or pet media goes
-- through it. Ownership, not a grant: pg_genome works on the table as its owner (triggers, DDL
-- of a re-embedding, rows the owner's row-level security would hide from a grantee).
CREATE FUNCTION _check_registrant(kind text, name text, rel oid, who regrole) RETURNS void
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT @extschema@._owned_by(rel, who) THEN
        RAISE EXCEPTION 'pg_genome: % "%" was registered by %, which does not own table %', kind, name,
              coalesce(who::text, 'an unknown role'), rel::regclass
              USING ERRCODE = '42501',
                    HINT = 'register it again as the table''s owner (or a member of the owning role)';
    END IF;
END $$;

-- Row-level security helpers (policies below): whether the current role has the privileges of a
-- table's owner, may read a table, or only monitors pg_genome. NULL for a table that is gone.
CREATE FUNCTION _owns(rel oid) RETURNS boolean
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_has_role(k.relowner, 'USAGE') FROM pg_class k WHERE k.oid = rel
$$;
CREATE FUNCTION _may_read(rel oid) RETURNS boolean
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT has_table_privilege(rel, 'SELECT') AND has_schema_privilege(k.relnamespace, 'USAGE')
      FROM pg_class k WHERE k.oid = rel
$$;
-- Whether a role (a registration's registered_by) has the privileges of a table's owner: the
-- one rule _check_registrant enforces and health() reports.
CREATE FUNCTION _owned_by(rel oid, who regrole) RETURNS boolean
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(pg_has_role(who::oid, (SELECT k.relowner FROM pg_class k WHERE k.oid = rel), 'USAGE'), false)
$$;
CREATE FUNCTION _monitor_only() RETURNS boolean
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT NOT pg_has_role('genome_user', 'MEMBER')
$$;

-- Whether a queue or pet trigger fired for the registered table (or one of its partitions) and
-- holds the transition tables its body reads: fired by a trigger without them, new_rows or
-- old_rows would resolve to whatever relation of that name the writer made in pg_temp.
CREATE FUNCTION _fires_for(fired oid, trigger name, registered oid, needs_new boolean, needs_old boolean) RETURNS boolean
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT (fired = registered OR EXISTS (SELECT 1 FROM pg_partition_ancestors(fired) a WHERE a.relid = registered))
       AND EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = fired AND t.tgname = trigger
                      AND (NOT needs_new OR t.tgnewtable = 'new_rows') AND (NOT needs_old OR t.tgoldtable = 'old_rows'))
$$;

-- The registering role: whoever writes the registration row, whatever the row says. A superuser
-- may write any value (pg_restore keeps the dumped one).
CREATE FUNCTION _stamp_registrant() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.registered_by IS NULL OR NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user) THEN
        NEW.registered_by := current_user::regrole;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER collections_registrant BEFORE INSERT OR UPDATE OF relid, registered_by, id_column, text_column,
    embedding_column, family_column, model, reembed_column ON collections
    FOR EACH ROW EXECUTE FUNCTION _stamp_registrant();
CREATE TRIGGER pet_media_registrant BEFORE INSERT OR UPDATE OF relid, registered_by, pet_column, image_id_column,
    image_column, taken_at_column, pose_column, model ON pet_media
    FOR EACH ROW EXECUTE FUNCTION _stamp_registrant();

-- After TRUNCATE of a collection's table its families keep their ids and centroids (rows
-- loaded again are assigned to them) but no longer name deleted rows as exemplars, nor count
-- them. SECURITY DEFINER: whoever truncates the app's table needs no rights on pg_genome's
-- tables; it acts only on the table registered under its argument and runs none of its code.
CREATE FUNCTION _collection_truncated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE @extschema@.families f SET size = 0, exemplar_ids = '{}', updated_at = now()
      FROM @extschema@.collections c
     WHERE c.name = TG_ARGV[0] AND c.relid = TG_RELID AND f.collection = c.name;
    DELETE FROM @extschema@.embed_queue_items q USING @extschema@.collections c
     WHERE c.name = TG_ARGV[0] AND c.relid = TG_RELID AND q.collection = c.name;
    RETURN NULL;
END $$;

CREATE FUNCTION _truncate_trigger(collection text, present boolean) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE rel regclass := (SELECT c.relid FROM @extschema@.collections c WHERE c.name = collection);
        trg text := left('genome_truncate_' || collection, 63);
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg, rel);
    IF present THEN
        EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %I._collection_truncated(%L)',
                       trg, rel, '@extschema@', collection);
    END IF;
END $$;

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
CREATE TRIGGER models_path_check BEFORE INSERT OR UPDATE OF onnx_path ON models
    FOR EACH ROW EXECUTE FUNCTION _models_path_check();

-- Registered columns are tracked by number: this trigger records the numbers of the names a
-- registration is written with, and the event trigger below renames the registration when the
-- app renames a column, so embedding and assignment go on (0.5.0; a rename broke them before).
CREATE FUNCTION _track_columns() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE names name[];
BEGIN
    -- (IF, not CASE: a PL/pgSQL expression naming a field NEW lacks fails to plan)
    IF TG_TABLE_NAME = 'collections' THEN
        names := ARRAY[NEW.id_column, NEW.text_column, NEW.embedding_column, NEW.family_column, NEW.created_at_column];
    ELSE
        names := ARRAY[NEW.pet_column, NEW.image_id_column, NEW.image_column, NEW.taken_at_column, NEW.pose_column];
    END IF;
    NEW.attnums := ARRAY(SELECT (SELECT a.attnum FROM pg_attribute a WHERE a.attrelid = NEW.relid AND a.attname = n
                                   AND a.attnum > 0 AND NOT a.attisdropped)
                           FROM unnest(names) WITH ORDINALITY u(n, o) ORDER BY o);
    RETURN NEW;
END $$;
CREATE TRIGGER collections_columns BEFORE INSERT OR UPDATE OF relid, id_column, text_column, embedding_column, family_column,
    created_at_column ON collections FOR EACH ROW EXECUTE FUNCTION _track_columns();
CREATE TRIGGER pet_media_columns BEFORE INSERT OR UPDATE OF relid, pet_column, image_id_column, image_column, taken_at_column,
    pose_column ON pet_media FOR EACH ROW EXECUTE FUNCTION _track_columns();
-- registrations made before 0.5.0
UPDATE collections SET id_column = id_column;
UPDATE pet_media SET pet_column = pet_column;

-- The current names of a table's columns by number; a column gone keeps its registered name.
CREATE FUNCTION _column_names(rel oid, attnums smallint[], names name[]) RETURNS name[]
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY(SELECT coalesce((SELECT a.attname FROM pg_attribute a
                                   WHERE a.attrelid = rel AND a.attnum = u.n AND NOT a.attisdropped), names[u.o])
                   FROM unnest(attnums) WITH ORDINALITY u(n, o) ORDER BY u.o)
$$;

-- After an ALTER TABLE on a registered table: the names of its registered columns, by number.
-- SECURITY DEFINER: whoever alters the app's table needs no rights on pg_genome's tables; it
-- reads the catalog and writes only the registrations of the altered tables. It never fails
-- the app's ALTER TABLE (a problem is a WARNING).
CREATE FUNCTION on_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE c record; now_names name[];
BEGIN
    FOR c IN SELECT x.name, x.relid, x.attnums, x.auto_embed OR x.reembed_model IS NOT NULL AS triggers,
                    ARRAY[x.id_column, x.text_column, x.embedding_column, x.family_column, x.created_at_column] AS names
               FROM @extschema@.collections x
              WHERE x.relid IN (SELECT objid FROM pg_event_trigger_ddl_commands() WHERE classid = 'pg_class'::regclass) LOOP
        now_names := @extschema@._column_names(c.relid, c.attnums, c.names);
        CONTINUE WHEN now_names IS NOT DISTINCT FROM c.names OR cardinality(now_names) <> 5;
        BEGIN
            UPDATE @extschema@.collections x
               SET id_column = now_names[1], text_column = now_names[2], embedding_column = now_names[3],
                   family_column = now_names[4], created_at_column = now_names[5]
             WHERE x.name = c.name;
            IF c.triggers THEN
                PERFORM @extschema@._set_triggers(c.name, true);   -- the clearing trigger names the embedding column
            END IF;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'pg_genome: collection "%" could not follow the change of its table: %', c.name, SQLERRM;
        END;
    END LOOP;
    FOR c IN SELECT x.name, x.relid, x.attnums,
                    ARRAY[x.pet_column, x.image_id_column, x.image_column, x.taken_at_column, x.pose_column] AS names
               FROM @extschema@.pet_media x
              WHERE x.relid IN (SELECT objid FROM pg_event_trigger_ddl_commands() WHERE classid = 'pg_class'::regclass) LOOP
        now_names := @extschema@._column_names(c.relid, c.attnums, c.names);
        CONTINUE WHEN now_names IS NOT DISTINCT FROM c.names OR cardinality(now_names) <> 5;
        BEGIN
            UPDATE @extschema@.pet_media x
               SET pet_column = now_names[1], image_id_column = now_names[2], image_column = now_names[3],
                   taken_at_column = now_names[4], pose_column = now_names[5]
             WHERE x.name = c.name;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'pg_genome: pet media "%" could not follow the change of its table: %', c.name, SQLERRM;
        END;
    END LOOP;
END $$;
CREATE EVENT TRIGGER genome_follow_renames ON ddl_command_end WHEN TAG IN ('ALTER TABLE') EXECUTE FUNCTION on_ddl_end();

-- The role a pg_cron job on this table runs as: the table's owner when a superuser schedules it
-- (pg_cron would otherwise run it as the superuser), else the scheduling role itself.
CREATE FUNCTION _job_user(rel regclass) RETURNS text
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    -- an owner that cannot log in cannot run a pg_cron job: then it runs as the scheduler, and
    -- pg_genome still switches to the owner for every statement on the table (src/owner.rs)
    SELECT CASE WHEN (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user)
                THEN coalesce((SELECT r.rolname::text FROM pg_class k JOIN pg_roles r ON r.oid = k.relowner
                                WHERE k.oid = rel AND r.rolcanlogin), current_user::text)
                ELSE current_user::text END
$$;

-- Collections registered before 0.5.0 get their TRUNCATE trigger.
SELECT @extschema@._truncate_trigger(c.name, true) FROM @extschema@.collections c
 WHERE EXISTS (SELECT 1 FROM pg_class k WHERE k.oid = c.relid);

-- A registration can be written only for a table its writer may write (collections) or read
-- (pet media): a role with DML on these tables cannot point pg_genome at another role's table,
-- nor change another application's registration. Every role may read them (names and columns).
ALTER TABLE collections ENABLE ROW LEVEL SECURITY;
CREATE POLICY collections_read ON collections FOR SELECT USING (true);
CREATE POLICY collections_insert ON collections FOR INSERT WITH CHECK (@extschema@._owns(relid));
-- a stale registration (its table gone: NULL) only by whoever registered it
CREATE POLICY collections_update ON collections FOR UPDATE
    USING (coalesce(@extschema@._owns(relid), pg_has_role(registered_by::oid, 'USAGE')))
    WITH CHECK (@extschema@._owns(relid));
CREATE POLICY collections_delete ON collections FOR DELETE
    USING (coalesce(@extschema@._owns(relid), pg_has_role(registered_by::oid, 'USAGE')));
ALTER TABLE pet_media ENABLE ROW LEVEL SECURITY;
CREATE POLICY pet_media_read ON pet_media FOR SELECT USING (true);
CREATE POLICY pet_media_insert ON pet_media FOR INSERT WITH CHECK (@extschema@._owns(relid));
CREATE POLICY pet_media_update ON pet_media FOR UPDATE
    USING (coalesce(@extschema@._owns(relid), pg_has_role(registered_by::oid, 'USAGE')))
    WITH CHECK (@extschema@._owns(relid));
CREATE POLICY pet_media_delete ON pet_media FOR DELETE
    USING (coalesce(@extschema@._owns(relid), pg_has_role(registered_by::oid, 'USAGE')));

-- What pg_genome derives from an app's rows (family labels and exemplars, runs, queued ids,
-- photo embeddings and clusters) is visible to a role for the tables it can read, and written
-- only by roles with the privileges of the table's owner; a role that only monitors
-- (genome_monitor, not genome_user) sees every row of the columns granted to it, which are counts
-- and states, never labels, exemplars or embeddings.
DO $policies$
DECLARE t record;
BEGIN
    FOR t IN SELECT * FROM (VALUES ('families', 'collections', 'collection'), ('runs', 'collections', 'collection'),
                                   ('embed_queue_items', 'collections', 'collection'),
                                   ('pet_photos', 'pet_media', 'media'), ('pet_photo_clusters', 'pet_media', 'media'),
                                   ('pet_state', 'pet_media', 'media'), ('pet_dirty', 'pet_media', 'media')) v(tab, reg, col)
    LOOP
        EXECUTE format('ALTER TABLE @extschema@.%I ENABLE ROW LEVEL SECURITY', t.tab);
        EXECUTE format('CREATE POLICY %I ON @extschema@.%I FOR SELECT USING (@extschema@._monitor_only()
                          OR EXISTS (SELECT 1 FROM @extschema@.%I r WHERE r.name = %I AND @extschema@._may_read(r.relid)))',
                       t.tab || '_read', t.tab, t.reg, t.col);
        EXECUTE format('CREATE POLICY %I ON @extschema@.%I FOR ALL
                          USING (EXISTS (SELECT 1 FROM @extschema@.%I r WHERE r.name = %I AND @extschema@._owns(r.relid)))',
                       t.tab || '_write', t.tab, t.reg, t.col);
    END LOOP;
END $policies$;

-- Jobs scheduled before 0.5.0 ran as whoever scheduled them: move them to the table's owner.
DO $jobs$
DECLARE j record;
BEGIN
    IF to_regclass('cron.job') IS NULL THEN
        RETURN;
    END IF;
    FOR j IN EXECUTE $q$SELECT j.jobid, r.rolname::text AS owner FROM cron.job j
                        JOIN @extschema@.collections c ON j.jobname IN ('genome_full:' || c.name, 'genome_assign:' || c.name)
                        JOIN pg_class k ON k.oid = c.relid JOIN pg_roles r ON r.oid = k.relowner
                       WHERE j.username <> r.rolname AND r.rolcanlogin
                      UNION ALL
                      SELECT j.jobid, r.rolname::text FROM cron.job j
                        JOIN @extschema@.pet_media m ON j.jobname = 'genome_pets:' || m.name
                        JOIN pg_class k ON k.oid = m.relid JOIN pg_roles r ON r.oid = k.relowner
                       WHERE j.username <> r.rolname AND r.rolcanlogin$q$ LOOP
        EXECUTE 'UPDATE cron.job SET username = $2 WHERE jobid = $1' USING j.jobid, j.owner;
    END LOOP;
END $jobs$;

-- The queue per collection, with the newest error of its waiting or failed rows (0.5.0): a
-- collection the worker cannot embed says why in health() and embed_queue.
CREATE OR REPLACE VIEW embed_queue AS
SELECT c.name AS collection, c.auto_embed, c.model, c.reembed_model,
       count(q.id) FILTER (WHERE q.status = 'pending')    AS pending,
       count(q.id) FILTER (WHERE q.status = 'processing') AS processing,
       count(q.id) FILTER (WHERE q.status = 'completed')  AS completed,
       count(q.id) FILTER (WHERE q.status = 'failed')     AS failed,
       now() - min(q.enqueued_at) FILTER (WHERE q.status IN ('pending', 'processing')) AS oldest_pending_age,
       round(count(q.id) FILTER (WHERE q.status = 'completed' AND q.completed_at > now() - interval '1 minute') / 60.0, 2)
           AS rows_per_s_last_minute,
       -- error messages can quote the app's values: shown to roles that may read the table
       CASE WHEN @extschema@._may_read(c.relid) THEN
           (SELECT e.last_error FROM @extschema@.embed_queue_items e
             WHERE e.collection = c.name AND e.status IN ('pending', 'failed') AND e.last_error IS NOT NULL
             ORDER BY e.next_attempt_at DESC, e.id DESC LIMIT 1) END AS last_error
  FROM @extschema@.collections c LEFT JOIN @extschema@.embed_queue_items q ON q.collection = c.name
 GROUP BY c.name, c.auto_embed, c.model, c.reembed_model;
COMMENT ON VIEW embed_queue IS 'background embedding per collection: rows by status, oldest waiting, throughput over the last minute, newest error';

-- Privileges. Internal functions (a leading underscore, and the worker and cache helpers) are
-- closed to PUBLIC and open to genome_user; health and metrics helpers to genome_monitor.
DO $grants$
DECLARE f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = '@extschema@'::regnamespace AND p.prokind = 'f'
                AND (p.proname LIKE '\_%' OR p.proname IN ('progress_slots', 'cached_centroids', 'wake_embed_workers'))
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO genome_user', f);
    END LOOP;
END $grants$;
GRANT EXECUTE ON FUNCTION progress_slots(), _runtime_info(), _metrics_counters(), _vector_schema(),
    _check_registrant(text, text, oid, regrole), _owner_value(oid, text, text[], text[], text[]) TO genome_monitor;
-- row-level security policies call these as the querying role; they only answer privilege questions
GRANT EXECUTE ON FUNCTION _owns(oid), _may_read(oid), _owned_by(oid, regrole), _monitor_only() TO PUBLIC;
GRANT USAGE ON SCHEMA @extschema@ TO genome_monitor, genome_user;
GRANT SELECT ON models, collections, pet_media, pet_state, embed_queue, progress TO genome_monitor;
-- runs, the queue and marked pets: counts and states, not row ids or error messages (which can
-- quote the app's values)
GRANT SELECT (id, collection, kind, status, n_rows, n_embedded, n_clusters, n_noise, n_kept, n_new, n_retired, approximate,
              timings, started_at, finished_at) ON runs TO genome_monitor;
GRANT SELECT (id, collection, target, status, attempts, enqueued_at, next_attempt_at, started_at, worker_pid, completed_at)
    ON embed_queue_items TO genome_monitor;
GRANT SELECT (media, pet_id, marked_at, attempts) ON pet_dirty TO genome_monitor;
-- photos and clusters: counts and states, not embeddings or image ids
GRANT SELECT (media, pet_id, cluster_id, quality, error, added_at) ON pet_photos TO genome_monitor;
GRANT SELECT (id, media, pet_id, size, created_at, updated_at) ON pet_photo_clusters TO genome_monitor;
-- family labels and exemplars are words and ids of the app's rows: not for monitoring
GRANT SELECT (id, collection, size, is_unclustered, run_id, created_at, updated_at, retired_at) ON families TO genome_monitor;
GRANT SELECT, INSERT, UPDATE, DELETE ON collections, runs, families, embed_queue_items, pet_media, pet_photo_clusters,
    pet_photos, pet_state, pet_dirty TO genome_user;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA @extschema@ TO genome_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON models TO genome_admin;
