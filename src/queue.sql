-- pg_genome background embedding queue: rows embedded by worker processes as they are written
-- (triggers on the app's table enqueue their ids), and re-embedding a collection with another
-- model. Rust: src/queue.rs (the workers, the batch embedder).

-- Tables

-- One row per (collection, target, row) waiting to be embedded. 'embedding' fills the collection's
-- embedding column; 'reembed' fills the shadow column of a re-embedding in progress. The worker
-- claims rows (status 'processing', its pid) in one short transaction and completes them in the
-- next; a dead worker's rows are put back to 'pending' by the next worker loop.
CREATE TABLE embed_queue_items (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    collection      text NOT NULL REFERENCES collections(name) ON DELETE CASCADE ON UPDATE CASCADE,
    target          text NOT NULL DEFAULT 'embedding' CHECK (target IN ('embedding', 'reembed')),
    row_id          text NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    enqueued_at     timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    worker_pid      integer,
    completed_at    timestamptz,
    UNIQUE (collection, target, row_id)
);
CREATE INDEX embed_queue_items_due ON embed_queue_items (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX embed_queue_items_processing ON embed_queue_items (worker_pid) WHERE status = 'processing';
CREATE INDEX embed_queue_items_completed ON embed_queue_items (completed_at) WHERE status = 'completed';
COMMENT ON TABLE embed_queue_items IS 'pg_genome background embedding queue: one row per row to embed, with status, attempts and last error';
-- Queued work and its sequence are dumped too: a restored queue goes on.
SELECT pg_catalog.pg_extension_config_dump('embed_queue_items', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('embed_queue_items', 'id')::regclass, '');

-- Views

-- The queue per collection, with the newest error of its waiting or failed rows: a
-- collection the worker cannot embed says why in health() and embed_queue.
CREATE VIEW embed_queue AS
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

-- Functions

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
COMMENT ON FUNCTION auto_embed_enqueue IS 'trigger: queues inserted rows and rows whose text changed for background embedding';

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
COMMENT ON FUNCTION auto_embed_clear IS 'trigger: clears the embedding of a row whose text changed (it no longer describes it)';

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

-- Defined in Rust (src/queue.rs):
COMMENT ON FUNCTION wake_embed_workers IS 'ask this database''s embedding workers to look at the queue once the current transaction commits';

-- Private functions

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
    qids bigint[]; rids text[]; texts text[]; batch record; ok bigint[]; done bigint[];
    i int; t0 timestamptz; embed_ms float8; failed int; out jsonb := '[]';
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
            -- a record keeps the vectors' type (vector[]) without naming pgvector's schema
            SELECT @extschema@.embed_batch(texts, model) AS v INTO batch;
        EXCEPTION WHEN OTHERS THEN
            PERFORM @extschema@._embed_failed(qids, SQLERRM);
            out := out || jsonb_build_object('collection', c.name, 'target', g.target, 'model', model, 'rows', cardinality(qids),
                                             'completed', 0, 'failed', cardinality(qids), 'error', SQLERRM);
            CONTINUE;
        END;
        embed_ms := extract(epoch FROM clock_timestamp() - t0) * 1000;
        -- only where the text is still the one embedded (a concurrent edit re-queued the row), as
        -- the table's owner: genome._write_embeddings, the one way embeddings are written
        done := qids; failed := nbad;
        BEGIN
            PERFORM @extschema@._write_embeddings(c.name, g.target, rids, texts, batch.v);
        EXCEPTION WHEN OTHERS THEN
            done := '{}';
            FOR i IN 1 .. cardinality(qids) LOOP
                BEGIN
                    PERFORM @extschema@._write_embeddings(c.name, g.target, ARRAY[rids[i]], ARRAY[texts[i]], (batch.v)[i:i]);
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

CREATE FUNCTION _reembed_finish(collection text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE c @extschema@.collections; rel regclass; m record; q float8; nsp name; vs name := @extschema@._vector_schema();
        idx text := left('genome_hnsw_' || collection, 63);
        tmp text := left('genome_hnsw_next_' || collection, 63);
BEGIN
    -- no full classification or assignment of this collection meanwhile (their lock), and no
    -- search between reading the collection's model and querying its column (the swap lock)
    PERFORM pg_advisory_xact_lock(@extschema@._lock_key('collection'), hashtext(collection));
    PERFORM pg_advisory_xact_lock(@extschema@._lock_key('embedding'), hashtext(collection));
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

-- Policies

-- What pg_genome derives from an app's rows is visible to a role for the tables it can read,
-- and written only by roles with the privileges of the table's owner; a role that only
-- monitors (genome_monitor, not genome_user) sees every row of the columns granted to it,
-- which are counts and states, never labels, exemplars, embeddings or error messages.
ALTER TABLE embed_queue_items ENABLE ROW LEVEL SECURITY;
CREATE POLICY embed_queue_items_read ON embed_queue_items FOR SELECT
    USING (@extschema@._monitor_only() OR EXISTS (SELECT 1 FROM @extschema@.collections r WHERE r.name = collection AND @extschema@._may_read(r.relid)));
CREATE POLICY embed_queue_items_write ON embed_queue_items FOR ALL
    USING (EXISTS (SELECT 1 FROM @extschema@.collections r WHERE r.name = collection AND @extschema@._owns(r.relid)));

-- Grants

GRANT SELECT ON embed_queue TO genome_monitor;
-- the queue: counts and states, not row ids or error messages
GRANT SELECT (id, collection, target, status, attempts, enqueued_at, next_attempt_at, started_at, worker_pid, completed_at)
    ON embed_queue_items TO genome_monitor;
GRANT SELECT, INSERT, UPDATE, DELETE ON embed_queue_items TO genome_user;
