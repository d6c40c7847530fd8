-- pg_genome collections: an app's own table registered once (id, text, embedding and family
-- columns, the model), with the checks every use makes. Rust: src/collections.rs.

-- Tables

-- relid (regclass, dumped by name), not the name: a renamed table stays registered, and a
-- dropped one is noticed (genome.on_sql_drop, and register_collection replaces a stale
-- registration). attnums: the registered columns' numbers (id, text, embedding, family,
-- created_at), so that a rename follows (genome.on_ddl_end); set by a trigger from the names.
-- registered_by: the role that wrote the registration (set by a trigger); every use checks that
-- it may still write the table.
CREATE TABLE collections (
    name              text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$'),
    relid             regclass NOT NULL,
    id_column         name NOT NULL,
    text_column       name NOT NULL,
    embedding_column  name NOT NULL,
    family_column     name NOT NULL,
    created_at_column name,
    model             text NOT NULL,     -- name@version, fixed at registration
    dimension         integer NOT NULL,
    generation        bigint NOT NULL DEFAULT 0,   -- bumped by every full run (centroid caches)
    created_at        timestamptz NOT NULL DEFAULT now(),
    auto_embed        boolean NOT NULL DEFAULT false,
    reembed_model     text,              -- name@version being filled in, NULL when none
    reembed_column    name,              -- the shadow column it is written to
    registered_by     regrole,
    attnums           smallint[]
);
COMMENT ON TABLE collections IS 'pg_genome collections: app tables whose rows are embedded and grouped into families';
SELECT pg_catalog.pg_extension_config_dump('collections', '');

-- Rows waiting for a family (family column NULL), in the order they became pending: where
-- assign_family finds them. Kept by triggers on the app's table (genome._pending_triggers), not
-- by an index on the family column: any index naming that column (a partial index's predicate
-- too) makes every family write a non-HOT update, which inserts the row into the collection's
-- HNSW index again (about 1.2 ms a row: a weekly run at 1M rows spent longer writing than
-- classifying). An entry is a hint: assign_family checks the row and drops entries of rows
-- that are gone or have a family (0.8.0; a partial index "genome_pending_<name>" before).
CREATE TABLE pending_rows (
    collection text NOT NULL REFERENCES collections(name) ON DELETE CASCADE ON UPDATE CASCADE,
    row_id     text NOT NULL,
    seq        bigint GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (collection, row_id)
);
CREATE INDEX pending_rows_order ON pending_rows (collection, seq);
COMMENT ON TABLE pending_rows IS 'pg_genome: rows of a collection waiting for a family, oldest first (kept by triggers; read by assign_family)';
SELECT pg_catalog.pg_extension_config_dump('pending_rows', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('pending_rows', 'seq')::regclass, '');

-- Functions

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
    -- rows without a family, listed for assign_family, and the triggers that keep the list (0.8.0)
    PERFORM @extschema@._pending_start(name);
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
        PERFORM @extschema@._pending_triggers(name, false);
    END IF;
    DELETE FROM @extschema@.collections c WHERE c.name = unregister_collection.name;
    RETURN FOUND;
END $$;
COMMENT ON FUNCTION unregister_collection IS 'forget a collection and its families and runs (the table and its columns stay)';

CREATE FUNCTION pending_count(collection text) RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@.collection_relation(collection);
    -- the rows listed as waiting (0.8.0; a count of "family IS NULL" before, which is now a
    -- scan of the table: no index names the family column). A row given a family by the app, or
    -- deleted, counts until assign_family meets its entry.
    RETURN (SELECT count(*) FROM @extschema@.pending_rows p WHERE p.collection = pending_count.collection);
END $$;
COMMENT ON FUNCTION pending_count IS 'rows of the collection waiting for a family (listed in genome.pending_rows)';

-- Defined in Rust (src/collections.rs):
COMMENT ON FUNCTION collection_relation IS 'a collection''s table, after the checks every use makes: registered, table present, registrant still its owner';

-- Private functions

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
    DELETE FROM @extschema@.pending_rows p USING @extschema@.collections c
     WHERE c.name = TG_ARGV[0] AND c.relid = TG_RELID AND p.collection = c.name;
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

-- Rows that become pending go to genome.pending_rows: inserted rows without a family (one
-- statement-level trigger over the transition table: a bulk insert is one insert here; per row
-- on a partitioned table, so that inserts straight into a partition are listed too), and rows
-- whose family is cleared (per row, only then: the WHEN clause costs a family write nothing).
-- An entry already there is updated, not skipped: that waits for, and then sees, a transaction
-- deleting it as stale, which locks it first (collections.rs), so no row is left unlisted.
-- SECURITY DEFINER, as auto_embed_enqueue: whoever writes the app's table needs no rights on
-- pg_genome's tables; it acts only when fired by the trigger of the table registered under its
-- argument (genome._fires_for) and writes only row ids of it (the type's output function).
CREATE FUNCTION _pending_enqueue() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE c @extschema@.collections; one text;
BEGIN
    SELECT * INTO c FROM @extschema@.collections x WHERE x.name = TG_ARGV[0];
    IF NOT FOUND OR NOT @extschema@._fires_for(TG_RELID, TG_NAME, c.relid, TG_LEVEL = 'STATEMENT', false) THEN
        RETURN NULL;
    END IF;
    BEGIN
        IF TG_LEVEL = 'STATEMENT' THEN
            -- once per id (a table without a unique id may insert one twice), in the rows' order
            EXECUTE format('INSERT INTO %I.pending_rows (collection, row_id) SELECT $1, x FROM '
                           '(SELECT format(''%%s'', %I) AS x, row_number() OVER () AS k FROM new_rows WHERE %I IS NULL AND %I IS NOT NULL) s '
                           'GROUP BY x ORDER BY min(k) ON CONFLICT (collection, row_id) DO UPDATE SET row_id = EXCLUDED.row_id',
                           '@extschema@', c.id_column, c.family_column, c.id_column) USING c.name;
        ELSE
            EXECUTE format('SELECT format(''%%s'', ($1).%I)', c.id_column) INTO one USING NEW;
            IF one IS NOT NULL THEN
                INSERT INTO @extschema@.pending_rows (collection, row_id) VALUES (c.name, one)
                ON CONFLICT (collection, row_id) DO UPDATE SET row_id = EXCLUDED.row_id;
            END IF;
        END IF;
    EXCEPTION WHEN undefined_column THEN
        -- a registered column was dropped or renamed: the collection is broken (health() says
        -- so), the app's writes go on
        RAISE WARNING 'pg_genome: collection "%": %; rows are not listed for assign_family', c.name, SQLERRM;
    END;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION _pending_enqueue IS 'trigger: lists rows without a family in genome.pending_rows for assign_family';

-- Start listing a collection's pending rows: the triggers, and every row without a family now
-- (by the created-at column when there is one, then by id), in place of entries left by an
-- earlier registration. The partial index on the family column that found them before 0.8.0
-- goes; an index on the id column comes if the table has none (assign_family looks rows up by
-- id). SECURITY INVOKER: register_collection's caller owns the table. Returns rows listed.
CREATE FUNCTION _pending_start(collection text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE rel regclass := @extschema@.collection_relation(collection);
        c @extschema@.collections; old regclass; n bigint;
BEGIN
    SELECT * INTO c FROM @extschema@.collections x WHERE x.name = collection;
    SELECT i.indexrelid::regclass INTO old FROM pg_index i JOIN pg_class k ON k.oid = i.indexrelid
     WHERE i.indrelid = rel AND k.relname = left('genome_pending_' || collection, 63);
    IF old IS NOT NULL THEN
        EXECUTE format('DROP INDEX %s', old);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                    WHERE i.indrelid = rel AND a.attname = c.id_column AND i.indpred IS NULL) THEN
        EXECUTE format('CREATE INDEX %I ON %s (%I)', left('genome_rows_' || collection, 63), rel, c.id_column);
    END IF;
    PERFORM @extschema@._pending_triggers(collection, true);
    DELETE FROM @extschema@.pending_rows p WHERE p.collection = _pending_start.collection;
    EXECUTE format('INSERT INTO %I.pending_rows (collection, row_id) SELECT $1, format(''%%s'', %I) FROM %s '
                   'WHERE %I IS NULL AND %I IS NOT NULL ORDER BY %s%I ON CONFLICT DO NOTHING',
                   '@extschema@', c.id_column, rel, c.family_column, c.id_column,
                   CASE WHEN c.created_at_column IS NULL THEN '' ELSE format('%I NULLS LAST, ', c.created_at_column) END,
                   c.id_column) USING collection;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- Install (present) or remove the triggers that keep genome.pending_rows. Installing needs a
-- valid registration; removing never does (as _set_triggers).
CREATE FUNCTION _pending_triggers(collection text, present boolean) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
SET client_min_messages = warning AS $$
DECLARE c @extschema@.collections;
        rel regclass := CASE WHEN present THEN @extschema@.collection_relation(collection)
                             ELSE (SELECT x.relid FROM @extschema@.collections x WHERE x.name = collection) END;
        ins text := left('genome_pending_ins_' || collection, 63);
        upd text := left('genome_pending_upd_' || collection, 63);
BEGIN
    IF rel IS NULL OR NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = rel) THEN
        RETURN;
    END IF;
    SELECT * INTO c FROM @extschema@.collections x WHERE x.name = collection;
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', ins, rel);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', upd, rel);
    IF present THEN
        IF (SELECT relkind FROM pg_class WHERE oid = rel) = 'p' THEN
            EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s FOR EACH ROW WHEN (NEW.%I IS NULL) '
                           'EXECUTE FUNCTION %I._pending_enqueue(%L)', ins, rel, c.family_column, '@extschema@', collection);
        ELSE
            EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
                           'FOR EACH STATEMENT EXECUTE FUNCTION %I._pending_enqueue(%L)', ins, rel, '@extschema@', collection);
        END IF;
        EXECUTE format('CREATE TRIGGER %I AFTER UPDATE OF %I ON %s FOR EACH ROW WHEN (NEW.%I IS NULL AND OLD.%I IS NOT NULL) '
                       'EXECUTE FUNCTION %I._pending_enqueue(%L)', upd, c.family_column, rel, c.family_column, c.family_column,
                       '@extschema@', collection);
    END IF;
END $$;

-- Triggers

CREATE TRIGGER collections_registrant BEFORE INSERT OR UPDATE OF relid, registered_by, id_column, text_column,
    embedding_column, family_column, model, reembed_column ON collections
    FOR EACH ROW EXECUTE FUNCTION _stamp_registrant();

CREATE TRIGGER collections_columns BEFORE INSERT OR UPDATE OF relid, id_column, text_column, embedding_column, family_column,
    created_at_column ON collections FOR EACH ROW EXECUTE FUNCTION _track_columns();

-- Policies

-- A registration can be written only for a table its writer owns: a role with DML on this table
-- cannot point pg_genome at another role's table, nor change another application's
-- registration. Every role may read it (names and columns).
ALTER TABLE collections ENABLE ROW LEVEL SECURITY;
CREATE POLICY collections_read ON collections FOR SELECT USING (true);
CREATE POLICY collections_insert ON collections FOR INSERT WITH CHECK (@extschema@._owns(relid));
-- a stale registration (its table gone: NULL) only by whoever registered it
CREATE POLICY collections_update ON collections FOR UPDATE
    USING (coalesce(@extschema@._owns(relid), pg_has_role(registered_by::oid, 'USAGE')))
    WITH CHECK (@extschema@._owns(relid));
CREATE POLICY collections_delete ON collections FOR DELETE
    USING (coalesce(@extschema@._owns(relid), pg_has_role(registered_by::oid, 'USAGE')));

-- A role reads the pending rows of the tables it can read; it takes (FOR UPDATE) and drops them
-- for the tables it may update (assign_family runs with the caller's rights), and lists rows
-- only for the tables it owns (register_collection). Triggers list rows as pg_genome.
ALTER TABLE pending_rows ENABLE ROW LEVEL SECURITY;
CREATE POLICY pending_rows_read ON pending_rows FOR SELECT
    USING (EXISTS (SELECT 1 FROM @extschema@.collections r WHERE r.name = collection AND @extschema@._may_read(r.relid)));
CREATE POLICY pending_rows_insert ON pending_rows FOR INSERT
    WITH CHECK (EXISTS (SELECT 1 FROM @extschema@.collections r WHERE r.name = collection AND @extschema@._owns(r.relid)));
CREATE POLICY pending_rows_update ON pending_rows FOR UPDATE
    USING (EXISTS (SELECT 1 FROM @extschema@.collections r WHERE r.name = collection
                    AND (@extschema@._owns(r.relid) OR has_table_privilege(r.relid, 'UPDATE'))));
CREATE POLICY pending_rows_delete ON pending_rows FOR DELETE
    USING (EXISTS (SELECT 1 FROM @extschema@.collections r WHERE r.name = collection
                    AND (@extschema@._owns(r.relid) OR has_table_privilege(r.relid, 'UPDATE'))));

-- Grants

GRANT SELECT ON collections TO genome_monitor;
GRANT SELECT, INSERT, UPDATE, DELETE ON collections TO genome_user;
-- UPDATE of seq only, which nobody can write (an identity): what FOR UPDATE needs
GRANT SELECT, INSERT, DELETE, UPDATE (seq) ON pending_rows TO genome_user;
