-- pg_genome security: roles, the ownership and privilege checks every capability uses, and the
-- registrations' bookkeeping (who registered, which columns). Emitted first (pgrx `bootstrap`):
-- the capability files' triggers and policies call these functions. The rest of the security
-- model is beside the objects it guards (each table's policies and grants in its own file) and in
-- src/owner.rs (app-table statements run as the table's owner). The README's "Security model"
-- says who can do what. Event triggers and the privileges of internal functions are in
-- src/finalize.sql: they must come after every capability.

-- Roles

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

-- Functions

-- A dropped table takes its registration with it. SECURITY DEFINER because whoever drops the
-- table may not own the registry; the function only deletes rows naming the dropped relation.
CREATE FUNCTION on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE jobs text[]; catalogs text[]; c text;
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
    -- ranking catalogs on any of their tables (0.7.0): features, logs and rankers go with them
    WITH gone AS (DELETE FROM @extschema@.catalogs
                   WHERE relid IN (SELECT objid FROM pg_event_trigger_dropped_objects() WHERE classid = 'pg_class'::regclass AND objsubid = 0)
                      OR links IN (SELECT objid FROM pg_event_trigger_dropped_objects() WHERE classid = 'pg_class'::regclass AND objsubid = 0)
                      OR tools IN (SELECT objid FROM pg_event_trigger_dropped_objects() WHERE classid = 'pg_class'::regclass AND objsubid = 0)
                  RETURNING name)
    SELECT coalesce(jobs, '{}') || coalesce(array_agg('genome_catalog:' || name), '{}'), array_agg(name) INTO jobs, catalogs FROM gone;
    FOREACH c IN ARRAY coalesce(catalogs, '{}') LOOP
        PERFORM @extschema@._catalog_index(c, false);
    END LOOP;
    -- and their pg_cron jobs (0.5.0): a job left behind would run under the same name on
    -- whatever table is registered next under it
    IF cardinality(jobs) > 0 THEN
        PERFORM @extschema@._cron_unschedule(jobs);
    END IF;
END $$;
COMMENT ON FUNCTION on_sql_drop IS 'event trigger: forgets registrations (and unschedules their pg_cron jobs) of dropped tables';

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
COMMENT ON FUNCTION on_ddl_end IS 'event trigger: keeps registered column names in step with renames';

-- Private functions

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

-- The current names of a table's columns by number; a column gone keeps its registered name.
CREATE FUNCTION _column_names(rel oid, attnums smallint[], names name[]) RETURNS name[]
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY(SELECT coalesce((SELECT a.attname FROM pg_attribute a
                                   WHERE a.attrelid = rel AND a.attnum = u.n AND NOT a.attisdropped), names[u.o])
                   FROM unnest(attnums) WITH ORDINALITY u(n, o) ORDER BY u.o)
$$;

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
