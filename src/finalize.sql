-- pg_genome: what must come after every capability (pgrx `finalize`): the event triggers, which
-- read the registration tables of several capabilities, and the privileges of the internal
-- functions, computed over the catalog so that every function, Rust-defined ones included, is
-- covered. The roles and the checks they use are in src/owner.sql.

-- Event triggers

CREATE EVENT TRIGGER genome_collections_drop ON sql_drop
    WHEN TAG IN ('DROP TABLE', 'DROP SCHEMA', 'DROP OWNED') EXECUTE FUNCTION on_sql_drop();

CREATE EVENT TRIGGER genome_follow_renames ON ddl_command_end WHEN TAG IN ('ALTER TABLE') EXECUTE FUNCTION on_ddl_end();

-- Privileges

GRANT USAGE ON SCHEMA @extschema@ TO genome_monitor, genome_user;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA @extschema@ TO genome_user;

-- Internal functions (a leading underscore, and the worker and cache helpers) are closed to
-- PUBLIC and open to genome_user; health and metrics helpers to genome_monitor.
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
GRANT EXECUTE ON FUNCTION progress_slots(), _coordinator(), _publishes_reference(), _runtime_info(), _inference_info(), _metrics_counters(), _vector_schema(), _ranking_monitor_or_skip(text),
    _check_registrant(text, text, oid, regrole), _owner_value(oid, text, text[], text[], text[]) TO genome_monitor;
-- resolve_model (open to all, as before 0.6.0) calls it; it reads genome.models as the caller
GRANT EXECUTE ON FUNCTION _resolve_model(text, boolean) TO PUBLIC;
-- row-level security policies call these as the querying role; they only answer privilege questions
GRANT EXECUTE ON FUNCTION _owns(oid), _may_read(oid), _owned_by(oid, regrole), _monitor_only() TO PUBLIC;
GRANT EXECUTE ON FUNCTION _catalog_readable(text), _catalog_owned(text) TO PUBLIC;
