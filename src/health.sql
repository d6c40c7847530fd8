-- pg_genome health and metrics: versions, workers, jobs, queue depth, running jobs' progress, and
-- a Prometheus exposition. Rust: src/metrics.rs (counters), src/progress.rs (progress slots).

-- Views

CREATE VIEW progress AS
    SELECT p.* FROM @extschema@.progress_slots() p
      JOIN pg_catalog.pg_stat_activity a ON a.pid = p.pid AND a.state = 'active';
COMMENT ON VIEW progress IS 'full classifications and assignments running now: stage, rows (or steps) done of total, and the time the stage has left at its pace so far';

-- Functions

-- Defined in Rust (src/progress.rs):
COMMENT ON FUNCTION progress_slots IS 'the raw progress slots of running jobs; genome.progress joins them with pg_stat_activity';

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
        'inference', @extschema@._inference_info(),
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
                                              FROM @extschema@.pet_dirty d WHERE d.media = pm.name) dt),
        -- ranking catalogs the caller may read (0.7.0): features, drift, online figures
        'ranking', (SELECT coalesce(jsonb_agg(@extschema@._ranking_monitor_or_skip(c.name) ORDER BY c.name), '[]')
                      FROM @extschema@.catalogs c
                     WHERE @extschema@._catalog_readable(c.name)
                       AND @extschema@._owned_by(c.relid, c.registered_by) AND @extschema@._owned_by(c.links, c.registered_by)))
      INTO h;
    -- on a coordinator (pg_genome_cluster; src/cluster.rs): every data node, its shards and its
    -- own health, or why it did not answer
    IF @extschema@._coordinator() THEN
        h := h || jsonb_build_object('nodes', genome_cluster.nodes_health());
    END IF;
    RETURN h;
END $$;
COMMENT ON FUNCTION health IS 'versions, ONNX Runtime, workers, pg_cron jobs, queue depth and pending assignments as jsonb; on a coordinator every data node''s too';

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
    -- ranking (0.7.0), catalogs the caller may read
    out := out || E'# HELP genome_rank_online Recent (1 day) ranking figures per catalog: p50/p99 latency (ms), fallback and error rates, MRR of the production ranker on logged outcomes, drift flags (1 = drift), features ok.\n# TYPE genome_rank_online gauge\n';
    FOR r IN SELECT c.name, @extschema@._ranking_monitor_or_skip(c.name) AS m FROM @extschema@.catalogs c
              WHERE @extschema@._catalog_readable(c.name) AND c.feature_version > 0
                AND @extschema@._owned_by(c.relid, c.registered_by) AND @extschema@._owned_by(c.links, c.registered_by)
              ORDER BY 1 LOOP
        out := out || (SELECT coalesce(string_agg(format(E'genome_rank_online{catalog="%s",figure="%s"} %s\n', r.name, k, v), '' ORDER BY k), '')
                         FROM (VALUES ('p50_ms', r.m #>> '{online,p50_ms}'), ('p99_ms', r.m #>> '{online,p99_ms}'),
                                      ('fallback_rate', r.m #>> '{online,fallback_rate}'), ('error_rate', r.m #>> '{online,error_rate}'),
                                      ('mrr_logged', r.m #>> '{online,mrr_logged}'),
                                      ('intent_drift', (r.m #>> '{drift,intent_drift}')::boolean::int::text),
                                      ('score_drift', (r.m #>> '{drift,score_drift}')::boolean::int::text),
                                      ('features_ok', (r.m #>> '{features,ok}')::boolean::int::text)) f(k, v)
                        WHERE v IS NOT NULL);
    END LOOP;
    out := out || E'# HELP genome_workers_alive Background embedding workers running in this cluster.\n# TYPE genome_workers_alive gauge\n'
               || format(E'genome_workers_alive %s\n', (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_genome embed worker'));
    RETURN out;
END $$;
COMMENT ON FUNCTION metrics IS 'Prometheus text exposition of pg_genome counters and gauges';

-- Grants

GRANT SELECT ON progress TO genome_monitor;
