-- pg_genome capability ranking: an app's capability and capability-tool tables registered as a
-- catalog, pg_genome's feature store over them, the log of rankings and of their outcomes (the
-- experience log), and the trained rankers with their stages. Rust: src/ranking.rs
-- (refresh_catalog, rank_capabilities, train_ranker, evaluate_ranker); the algorithms are in
-- crates/genome-core/src/rank/.

-- Tables

-- A catalog names the app's capability table (id, text) and its link table (capability, tool),
-- and optionally a tools table (id, description). registered_by: the role that wrote the
-- registration (a trigger sets it); every use checks that it still owns both tables.
-- changed_at: set by the app tables' triggers; refresh_catalog re-embeds the changed rows.
CREATE TABLE catalogs (
    name                   text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$'),
    relid                  regclass NOT NULL,
    id_column              name NOT NULL,
    text_column            name NOT NULL,
    links                  regclass NOT NULL,
    link_capability_column name NOT NULL,
    link_tool_column       name NOT NULL,
    tools                  regclass,
    tool_id_column         name,
    tool_text_column       name,
    model                  text NOT NULL,     -- name@version, fixed at registration
    dimension              integer NOT NULL,
    -- the hybrid embedding's text share; 0 by dev MRR on the tldr data (benches/README.md)
    text_weight            real NOT NULL DEFAULT 0 CHECK (text_weight BETWEEN 0 AND 1),
    feature_version        bigint NOT NULL DEFAULT 0,
    changed_at             timestamptz,
    refreshed_at           timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    registered_by          regrole
);
COMMENT ON TABLE catalogs IS 'pg_genome capability catalogs: app tables of capabilities and their tools, ranked by rank_capabilities';
SELECT pg_catalog.pg_extension_config_dump('catalogs', '');

-- The feature store, one row per capability: what was embedded (description and tool names),
-- the text embedding (HNSW index per catalog, see _catalog_index), the Node2Vec embedding of
-- the capability-tool graph, the graph statistics and the usage statistics from the log.
CREATE TABLE capability_features (
    catalog           text NOT NULL REFERENCES catalogs ON DELETE CASCADE ON UPDATE CASCADE,
    capability        text NOT NULL,     -- the app's id, as text
    content           text NOT NULL,
    content_hash      text NOT NULL,
    text_embedding    vector NOT NULL,
    graph_embedding   real[] NOT NULL CHECK (cardinality(graph_embedding) <= 1024),
    tools             text[] NOT NULL DEFAULT '{}' CHECK (cardinality(tools) <= 10000),
    tool_count        integer NOT NULL DEFAULT 0,
    pagerank          real NOT NULL DEFAULT 0,
    clustering        real NOT NULL DEFAULT 0,
    usage_1d          integer NOT NULL DEFAULT 0,
    usage_7d          integer NOT NULL DEFAULT 0,
    usage_30d         integer NOT NULL DEFAULT 0,
    success_rate      real,
    mean_execution_ms real,
    feature_version   bigint NOT NULL,
    computed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (catalog, capability)
);
COMMENT ON TABLE capability_features IS 'pg_genome feature store: per capability text and graph embeddings, graph and usage statistics';

CREATE TABLE tool_features (
    catalog         text NOT NULL REFERENCES catalogs ON DELETE CASCADE ON UPDATE CASCADE,
    tool            text NOT NULL,
    graph_embedding real[] NOT NULL CHECK (cardinality(graph_embedding) <= 1024),
    n_capabilities  integer NOT NULL,
    pagerank        real NOT NULL,
    feature_version bigint NOT NULL,
    computed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (catalog, tool)
);
COMMENT ON TABLE tool_features IS 'pg_genome feature store: per tool Node2Vec embedding and graph statistics';

-- Every rank_capabilities call: what was asked, what was shown, by which model, how fast.
CREATE TABLE rankings (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    catalog          text NOT NULL REFERENCES catalogs ON DELETE CASCADE ON UPDATE CASCADE,
    intent           text NOT NULL,
    intent_embedding vector NOT NULL,
    context_tools    text[],
    candidates       text[] NOT NULL,   -- shown, best first
    scores           real[] NOT NULL,
    model_version    text,              -- NULL: no trained ranker, the fused retrieval score
    latency_ms       real NOT NULL,
    session_id       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    created_by       regrole NOT NULL DEFAULT current_user::regrole,
    UNIQUE (catalog, id)
);
CREATE INDEX rankings_catalog_time ON rankings (catalog, created_at);
COMMENT ON TABLE rankings IS 'pg_genome ranking log: one row per rank_capabilities call';
-- dumped: the experience log refers to it
SELECT pg_catalog.pg_extension_config_dump('rankings', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('rankings', 'id')::regclass, '');

-- The experience log: state (intent, its embedding, context tools, candidates shown), action
-- (the chosen capability and its rank), reward (from outcome and rating), session and step.
-- Append-only (no UPDATE; DELETE only by the retention prune). source: 'outcome' (record_outcome)
-- or 'import' (labelled pairs given to train_ranker, counted as successes).
CREATE TABLE experiences (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    catalog          text NOT NULL REFERENCES catalogs ON DELETE CASCADE ON UPDATE CASCADE,
    ranking_id       bigint,
    intent           text NOT NULL,
    intent_embedding vector NOT NULL,
    context_tools    text[],
    candidates       text[],
    capability       text NOT NULL,
    rank             integer,
    outcome          text NOT NULL CHECK (outcome IN ('success', 'partial', 'failure')),
    reward           real NOT NULL CHECK (reward BETWEEN 0 AND 1),
    execution_ms     real CHECK (execution_ms >= 0),
    rating           smallint CHECK (rating BETWEEN 1 AND 5),
    session_id       text,
    step             integer NOT NULL DEFAULT 1,
    source           text NOT NULL DEFAULT 'outcome' CHECK (source IN ('outcome', 'import')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    created_by       regrole NOT NULL DEFAULT current_user::regrole,
    -- an outcome names a ranking of its own catalog; a pruned ranking leaves the outcome
    FOREIGN KEY (catalog, ranking_id) REFERENCES rankings (catalog, id) ON DELETE SET NULL (ranking_id)
);
CREATE INDEX experiences_catalog ON experiences (catalog, id);
CREATE INDEX experiences_ranking ON experiences (ranking_id);
COMMENT ON TABLE experiences IS 'pg_genome experience log: outcomes of rankings and imported labelled intents, the ranker''s training data';
SELECT pg_catalog.pg_extension_config_dump('experiences', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('experiences', 'id')::regclass, '');

-- Trained rankers, one row per version, with their stage (staging / production / archived),
-- the training metrics and config, and the model bytes (genome-core's Ranker::to_bytes).
-- memory_upto: the last experience id the model remembers (its memory features).
CREATE TABLE rankers (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    catalog       text NOT NULL REFERENCES catalogs ON DELETE CASCADE ON UPDATE CASCADE,
    version       text NOT NULL,
    stage         text NOT NULL DEFAULT 'staging' CHECK (stage IN ('staging', 'production', 'archived')),
    canary_share  real CHECK (canary_share > 0 AND canary_share < 1),
    canary_since  timestamptz,
    weights       bytea NOT NULL,
    memory_upto   bigint NOT NULL,
    metrics       jsonb NOT NULL,
    config        jsonb NOT NULL,
    feature_version bigint NOT NULL,
    trained_at    timestamptz NOT NULL DEFAULT now(),
    trained_by    regrole NOT NULL DEFAULT current_user::regrole,
    promoted_at   timestamptz,
    UNIQUE (catalog, version)
);
-- What a ranker version remembers: the intent embeddings of the successful experiences it was
-- trained on, with their capabilities (its memory features and prototypes). Written by
-- train_ranker as the catalog's owner; read by whoever may rank with the catalog, which keeps
-- the experience log itself private to its writers and the owner.
CREATE TABLE ranker_memory (
    ranker     bigint NOT NULL REFERENCES rankers ON DELETE CASCADE,
    catalog    text NOT NULL,
    capability text NOT NULL,
    embedding  vector NOT NULL,
    intent     text
);
CREATE INDEX ranker_memory_ranker ON ranker_memory (ranker);
COMMENT ON TABLE ranker_memory IS 'pg_genome ranker memory: intents (embedding and text) of the successful experiences a ranker version was trained on';

CREATE UNIQUE INDEX rankers_one_production ON rankers (catalog) WHERE stage = 'production';
COMMENT ON TABLE rankers IS 'pg_genome trained rankers: versions, stages, metrics and weights';
SELECT pg_catalog.pg_extension_config_dump('rankers', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('rankers', 'id')::regclass, '');

-- Functions

-- Register the app's capability table and its capability-tool link table. Identifiers are
-- checked against pg_attribute and always quoted; the registering role must own both tables.
-- Features are computed by genome.refresh_catalog(name).
CREATE FUNCTION register_catalog(name text, capabilities regclass, id_column name, text_column name,
                                 links regclass, link_capability_column name, link_tool_column name,
                                 model text DEFAULT NULL, tools regclass DEFAULT NULL,
                                 tool_id_column name DEFAULT NULL, tool_text_column name DEFAULT NULL)
RETURNS @extschema@.catalogs
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m record;
    result @extschema@.catalogs;
    col record;
BEGIN
    IF name IS NULL OR capabilities IS NULL OR id_column IS NULL OR text_column IS NULL OR links IS NULL
       OR link_capability_column IS NULL OR link_tool_column IS NULL THEN
        RAISE EXCEPTION 'pg_genome: register_catalog arguments other than model and tools must not be NULL'
              USING ERRCODE = '22004';
    END IF;
    IF name !~ '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'pg_genome: invalid catalog name "%"', name USING ERRCODE = '22023',
              HINT = 'use 1 to 63 letters, digits, "_", "." or "-"';
    END IF;
    IF EXISTS (SELECT 1 FROM @extschema@.catalogs c WHERE c.name = register_catalog.name) THEN
        RAISE EXCEPTION 'pg_genome: catalog "%" is already registered', name
              USING ERRCODE = '42710', HINT = 'genome.unregister_catalog(name) first';
    END IF;
    IF (tools IS NULL) <> (tool_id_column IS NULL) OR (tools IS NULL) <> (tool_text_column IS NULL) THEN
        RAISE EXCEPTION 'pg_genome: tools, tool_id_column and tool_text_column go together' USING ERRCODE = '22023';
    END IF;
    FOR col IN SELECT * FROM (VALUES (capabilities, id_column), (capabilities, text_column), (links, link_capability_column),
                                     (links, link_tool_column), (tools, tool_id_column), (tools, tool_text_column)) v(rel, att)
                WHERE v.rel IS NOT NULL LOOP
        IF (SELECT relkind FROM pg_class WHERE oid = col.rel) NOT IN ('r', 'p') THEN
            RAISE EXCEPTION 'pg_genome: % is not a table', col.rel USING ERRCODE = '42809';
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = col.rel AND attname = col.att AND attnum > 0 AND NOT attisdropped) THEN
            RAISE EXCEPTION 'pg_genome: column "%" does not exist in table %', col.att, col.rel USING ERRCODE = '42703';
        END IF;
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = capabilities AND attname = text_column AND attnum > 0
                   AND atttypid IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype)) THEN
        RAISE EXCEPTION 'pg_genome: column "%" of % must be of type text or varchar', text_column, capabilities
              USING ERRCODE = '42804';
    END IF;
    m := @extschema@.resolve_model(model);
    -- on a coordinator that publishes its catalogs, the row reaches every data node at once: the
    -- nodes must have the tables (pg_genome_cluster; README "Several nodes")
    IF @extschema@._publishes_reference() THEN
        PERFORM genome_cluster._check_on_nodes(ARRAY[capabilities, links, tools], ARRAY[current_user::text]);
    END IF;
    -- the row policy checks that the writer owns the capability and link tables
    INSERT INTO @extschema@.catalogs (name, relid, id_column, text_column, links, link_capability_column, link_tool_column,
                                      tools, tool_id_column, tool_text_column, model, dimension)
    VALUES (name, capabilities, id_column, text_column, links, link_capability_column, link_tool_column,
            tools, tool_id_column, tool_text_column, m.name || '@' || m.version, m.dimension)
    RETURNING * INTO result;
    PERFORM @extschema@._catalog_triggers(name, true);
    PERFORM @extschema@._catalog_index(name);
    RETURN result;
END $$;
COMMENT ON FUNCTION register_catalog IS 'register an app''s capability table and capability-tool link table as a ranking catalog';

CREATE FUNCTION unregister_catalog(name text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@._cron_unschedule(ARRAY['genome_catalog:' || name]);
    IF EXISTS (SELECT 1 FROM @extschema@.catalogs c WHERE c.name = unregister_catalog.name) THEN
        PERFORM @extschema@._catalog_triggers(name, false);
    END IF;
    DELETE FROM @extschema@.catalogs c WHERE c.name = unregister_catalog.name;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM @extschema@._catalog_index(name, false);
    RETURN true;
END $$;
COMMENT ON FUNCTION unregister_catalog IS 'forget a catalog with its features, ranking log, experiences and rankers (the app''s tables stay)';

-- The daily feature refresh (and the retention prune of the experience log) on pg_cron.
CREATE FUNCTION schedule_catalog(name text, refresh_cron text DEFAULT '17 3 * * *') RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE rel regclass := (SELECT c.relid FROM @extschema@.catalogs c WHERE c.name = schedule_catalog.name);
        jobid bigint;
BEGIN
    IF rel IS NULL THEN
        RAISE EXCEPTION 'pg_genome: catalog "%" is not registered', name USING ERRCODE = '42704';
    END IF;
    PERFORM @extschema@._require_catalog_owner(name);
    IF to_regnamespace('cron') IS NULL THEN
        RAISE EXCEPTION 'pg_genome: pg_cron is not installed in this database' USING ERRCODE = '0A000',
              HINT = 'add pg_cron to shared_preload_libraries, set cron.database_name, then CREATE EXTENSION pg_cron';
    END IF;
    -- cron.schedule_in_database upserts by job name (same user): calling again updates.
    EXECUTE 'SELECT cron.schedule_in_database($1, $2, $3, current_database(), $4)' INTO jobid
      USING 'genome_catalog:' || name, refresh_cron,
            format('SELECT %I.refresh_catalog(%L); SELECT %I.prune_experiences(%L)', '@extschema@', name, '@extschema@', name),
            @extschema@._job_user(rel);
    RETURN jobid;
END $$;
COMMENT ON FUNCTION schedule_catalog IS 'schedule the daily refresh of a catalog''s features (and the experience-log prune) on pg_cron';

-- Attach the outcome of a ranking: which capability the user took, how it went. Checks that the
-- ranking exists (in a catalog the caller may read: the row policies) and that the capability
-- was among its candidates or is still in the catalog.
CREATE FUNCTION record_outcome(ranking_id bigint, capability text, outcome text, execution_ms real DEFAULT NULL,
                               rating integer DEFAULT NULL, session_id text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r @extschema@.rankings;
    pos integer;
    base real;
    reward real;
    step integer;
    id bigint;
BEGIN
    -- on a coordinator (pg_genome_cluster) the data node that logged the ranking records it: the
    -- nodes' ranking ids start at 2^40 (genome._replica_prepare)
    IF ranking_id >= (1::bigint << 40) AND @extschema@._coordinator() THEN
        RETURN genome_cluster.record_outcome(ranking_id, capability, outcome, execution_ms, rating, session_id);
    END IF;
    IF ranking_id IS NULL OR capability IS NULL OR outcome IS NULL THEN
        RAISE EXCEPTION 'pg_genome: record_outcome needs ranking_id, capability and outcome' USING ERRCODE = '22004';
    END IF;
    IF outcome NOT IN ('success', 'partial', 'failure') THEN
        RAISE EXCEPTION 'pg_genome: outcome must be success, partial or failure, not "%"', outcome USING ERRCODE = '22023';
    END IF;
    IF rating IS NOT NULL AND rating NOT BETWEEN 1 AND 5 THEN
        RAISE EXCEPTION 'pg_genome: rating must be between 1 and 5' USING ERRCODE = '22003';
    END IF;
    IF execution_ms IS NOT NULL AND (execution_ms < 0 OR execution_ms = 'NaN'::real) THEN
        RAISE EXCEPTION 'pg_genome: execution_ms must be a number >= 0' USING ERRCODE = '22003';
    END IF;
    SELECT * INTO r FROM @extschema@.rankings k WHERE k.id = record_outcome.ranking_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pg_genome: ranking % does not exist (or is in a catalog you cannot read)', ranking_id
              USING ERRCODE = '42704';
    END IF;
    pos := array_position(r.candidates, capability);
    IF pos IS NULL AND NOT EXISTS (SELECT 1 FROM @extschema@.capability_features f
                                    WHERE f.catalog = r.catalog AND f.capability = record_outcome.capability) THEN
        RAISE EXCEPTION 'pg_genome: capability "%" is not in catalog "%"', capability, r.catalog USING ERRCODE = '42704';
    END IF;
    base := CASE outcome WHEN 'success' THEN 1 WHEN 'partial' THEN 0.5 ELSE 0 END;
    -- a rating moves the reward halfway to its own scale (1 -> 0, 5 -> 1)
    reward := CASE WHEN rating IS NULL THEN base ELSE (base + (rating - 1) / 4.0) / 2 END;
    session_id := coalesce(session_id, r.session_id);
    -- steps of a session in order: concurrent calls of one session serialise on this lock
    IF session_id IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(@extschema@._lock_key('ranking'), hashtext(r.catalog || '/' || session_id));
        SELECT coalesce(max(e.step), 0) + 1 INTO step FROM @extschema@.experiences e
         WHERE e.catalog = r.catalog AND e.session_id = record_outcome.session_id;
    END IF;
    INSERT INTO @extschema@.experiences (catalog, ranking_id, intent, intent_embedding, context_tools, candidates, capability,
                                         rank, outcome, reward, execution_ms, rating, session_id, step)
    VALUES (r.catalog, r.id, r.intent, r.intent_embedding, r.context_tools, r.candidates, capability, pos, outcome,
            reward, execution_ms, rating, session_id, coalesce(step, 1))
    RETURNING experiences.id INTO id;
    RETURN id;
END $$;
COMMENT ON FUNCTION record_outcome IS 'log the outcome of a ranking (success, partial, failure; execution time; rating 1-5) in the experience log';

-- Delete experiences and rankings older than genome.experience_retention (0 keeps all).
CREATE FUNCTION prune_experiences(catalog text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE keep interval := make_interval(days => current_setting('genome.experience_retention_days')::int); n bigint;
BEGIN
    IF keep = interval '0' THEN
        RETURN 0;
    END IF;
    DELETE FROM @extschema@.experiences e WHERE e.catalog = prune_experiences.catalog AND e.created_at < now() - keep
       AND e.source = 'outcome';
    GET DIAGNOSTICS n = ROW_COUNT;
    DELETE FROM @extschema@.rankings k WHERE k.catalog = prune_experiences.catalog AND k.created_at < now() - keep;
    -- on a coordinator that publishes its catalogs, the data nodes' logs too: each keeps the
    -- rankings it served and their outcomes (pg_genome_cluster)
    IF @extschema@._publishes_reference() THEN
        n := n + genome_cluster.prune_experiences(catalog);
    END IF;
    RETURN n;
END $$;
COMMENT ON FUNCTION prune_experiences IS 'delete logged outcomes and rankings older than genome.experience_retention_days';

-- Lifecycle: make a version the production ranker (the previous one is archived); rollback
-- brings back the most recently archived one that was in production.
CREATE FUNCTION promote_ranker(catalog text, version text) RETURNS @extschema@.rankers
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE r @extschema@.rankers;
BEGIN
    PERFORM @extschema@._require_catalog_owner(catalog);
    PERFORM pg_advisory_xact_lock(@extschema@._lock_key('ranking'), hashtext(catalog));
    IF NOT EXISTS (SELECT 1 FROM @extschema@.rankers x WHERE x.catalog = promote_ranker.catalog AND x.version = promote_ranker.version) THEN
        RAISE EXCEPTION 'pg_genome: catalog "%" has no ranker version "%"', catalog, version USING ERRCODE = '42704';
    END IF;
    UPDATE @extschema@.rankers x SET stage = 'archived', canary_share = NULL
     WHERE x.catalog = promote_ranker.catalog AND x.stage = 'production' AND x.version <> promote_ranker.version;
    UPDATE @extschema@.rankers x SET stage = 'production', canary_share = NULL, promoted_at = now()
     WHERE x.catalog = promote_ranker.catalog AND x.version = promote_ranker.version RETURNING * INTO r;
    RETURN r;
END $$;
COMMENT ON FUNCTION promote_ranker IS 'make a ranker version the production one (the previous production version is archived)';

CREATE FUNCTION rollback_ranker(catalog text) RETURNS @extschema@.rankers
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE v text;
BEGIN
    PERFORM @extschema@._require_catalog_owner(catalog);
    SELECT x.version INTO v FROM @extschema@.rankers x
     WHERE x.catalog = rollback_ranker.catalog AND x.stage = 'archived' AND x.promoted_at IS NOT NULL
     ORDER BY x.promoted_at DESC LIMIT 1;
    IF v IS NULL THEN
        RAISE EXCEPTION 'pg_genome: catalog "%" has no earlier production ranker to roll back to', catalog
              USING ERRCODE = '55000';
    END IF;
    RETURN @extschema@.promote_ranker(catalog, v);
END $$;
COMMENT ON FUNCTION rollback_ranker IS 'make the previous production ranker version the production one again';

-- Canary: a share of rankings (by a stable hash of the session, else the intent) served by a
-- staging version; share NULL ends it.
CREATE FUNCTION start_canary(catalog text, version text, share real DEFAULT 0.1) RETURNS @extschema@.rankers
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE r @extschema@.rankers;
BEGIN
    IF share IS NOT NULL AND NOT (share > 0 AND share < 1) THEN
        RAISE EXCEPTION 'pg_genome: canary share must be between 0 and 1 (exclusive)' USING ERRCODE = '22003';
    END IF;
    PERFORM @extschema@._require_catalog_owner(catalog);
    PERFORM pg_advisory_xact_lock(@extschema@._lock_key('ranking'), hashtext(catalog));
    UPDATE @extschema@.rankers x SET canary_share = NULL WHERE x.catalog = start_canary.catalog AND x.canary_share IS NOT NULL;
    UPDATE @extschema@.rankers x SET canary_share = share, canary_since = now()
     WHERE x.catalog = start_canary.catalog AND x.version = start_canary.version AND x.stage = 'staging' RETURNING * INTO r;
    IF r.id IS NULL THEN
        RAISE EXCEPTION 'pg_genome: catalog "%" has no staging ranker version "%"', catalog, version USING ERRCODE = '42704';
    END IF;
    RETURN r;
END $$;
COMMENT ON FUNCTION start_canary IS 'serve a share of rankings with a staging ranker version (stable by session or intent)';

-- The canary report: per version serving the catalog since the canary started, the rankings,
-- outcomes, success rate, p99 latency; and the candidate-vs-production two-proportion test.

-- The canary report: since the canary started, per version (canary and production) the
-- rankings served, outcomes, success rate (success outcomes / outcomes), p99 latency and error
-- rate (failure outcomes / outcomes); then the two-proportion test of the success rates
-- (candidate minus production): p-value, 95% CI, and the outcomes needed per arm.
CREATE FUNCTION canary_report(catalog text)
RETURNS TABLE (version text, role text, rankings bigint, outcomes bigint, success_rate real, p99_latency_ms real,
               error_rate real, diff double precision, p_value double precision, ci_low double precision,
               ci_high double precision, n_needed_per_arm bigint)
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE c @extschema@.rankers; p @extschema@.rankers; cs bigint; cn bigint; ps bigint; pn bigint;
BEGIN
    SELECT * INTO c FROM @extschema@.rankers x WHERE x.catalog = canary_report.catalog AND x.canary_share IS NOT NULL;
    SELECT * INTO p FROM @extschema@.rankers x WHERE x.catalog = canary_report.catalog AND x.stage = 'production';
    IF c.id IS NULL OR p.id IS NULL THEN
        RAISE EXCEPTION 'pg_genome: catalog "%" has no canary running (start one with genome.start_canary)', catalog
              USING ERRCODE = '55000';
    END IF;
    RETURN QUERY
    WITH served AS (
        SELECT k.model_version AS v, count(*) AS n, percentile_cont(0.99) WITHIN GROUP (ORDER BY k.latency_ms) AS p99
          FROM @extschema@.rankings k
         WHERE k.catalog = canary_report.catalog AND k.created_at >= c.canary_since AND k.model_version IN (c.version, p.version)
         GROUP BY 1),
    outs AS (
        SELECT k.model_version AS v, count(*) AS n, count(*) FILTER (WHERE e.outcome = 'success') AS s,
               count(*) FILTER (WHERE e.outcome = 'failure') AS f
          FROM @extschema@.experiences e JOIN @extschema@.rankings k ON k.id = e.ranking_id
         WHERE e.catalog = canary_report.catalog AND k.created_at >= c.canary_since AND k.model_version IN (c.version, p.version)
         GROUP BY 1)
    SELECT v.version, v.role, coalesce(s.n, 0), coalesce(o.n, 0), (o.s::real / nullif(o.n, 0))::real, s.p99::real,
           (o.f::real / nullif(o.n, 0))::real, t.diff, t.p_value, t.ci_low, t.ci_high, t.n_needed_per_arm
      FROM (VALUES (c.version, 'canary', 1), (p.version, 'production', 2)) v(version, role, ord)
      LEFT JOIN served s ON s.v = v.version
      LEFT JOIN outs o ON o.v = v.version
      LEFT JOIN LATERAL @extschema@._two_proportion(
                  (SELECT x.s FROM outs x WHERE x.v = c.version), (SELECT x.n FROM outs x WHERE x.v = c.version),
                  (SELECT x.s FROM outs x WHERE x.v = p.version), (SELECT x.n FROM outs x WHERE x.v = p.version)) t
             ON v.role = 'canary'
     ORDER BY v.ord;
END $$;
COMMENT ON FUNCTION canary_report IS 'online comparison of the canary ranker with production: success rate, p99 latency, error rate, two-proportion test';

-- Defined in Rust (src/ranking.rs):
COMMENT ON FUNCTION refresh_catalog IS 'compute a catalog''s features: embeds new and changed capabilities, Node2Vec over the capability-tool graph, graph and usage statistics';
COMMENT ON FUNCTION rank_capabilities IS 'rank a catalog''s capabilities for an intent (retrieval, then the production ranker); every call is logged for outcomes';
COMMENT ON FUNCTION train_ranker IS 'train a ranker version from the experience log and optional labelled (intent, capability) pairs';
COMMENT ON FUNCTION ranking_monitor IS 'feature validation, drift (KS on intent projections, PSI of scores) and online latency, fallback, error rate and logged MRR of a catalog';
COMMENT ON FUNCTION temporal_validation IS 'train on the experience log before a time, rank the successful outcomes after it (ranker against dense cosine)';
COMMENT ON FUNCTION evaluate_ranker IS 'ranking and calibration metrics of a ranker version over a table of labelled intents';

-- Private functions

-- Row-level security helpers: whether the current role may read / owns a catalog's tables.
-- Readable: SELECT on the capability, link and tools tables, none of which hides rows from the
-- caller by row-level security (pg_genome's features describe every row).
CREATE FUNCTION _catalog_readable(catalog text) RETURNS boolean
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(@extschema@._may_read(c.relid) AND @extschema@._may_read(c.links)
                    AND (c.tools IS NULL OR @extschema@._may_read(c.tools))
                    AND NOT row_security_active(c.relid) AND NOT row_security_active(c.links)
                    AND (c.tools IS NULL OR NOT row_security_active(c.tools)), false)
      FROM @extschema@.catalogs c WHERE c.name = catalog
$$;

CREATE FUNCTION _catalog_owned(catalog text) RETURNS boolean
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(@extschema@._owns(c.relid) AND @extschema@._owns(c.links), false)
      FROM @extschema@.catalogs c WHERE c.name = catalog
$$;

-- ranking_monitor for health() and metrics(): a catalog the caller cannot monitor is skipped
-- with the reason, never an error for the whole report.
CREATE FUNCTION _ranking_monitor_or_skip(catalog text) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN @extschema@.ranking_monitor(catalog);
EXCEPTION WHEN OTHERS THEN
    RETURN jsonb_build_object('catalog', catalog, 'skipped', SQLERRM);
END $$;

CREATE FUNCTION _require_catalog_owner(catalog text) RETURNS void
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM @extschema@.catalogs c WHERE c.name = catalog) THEN
        RAISE EXCEPTION 'pg_genome: catalog "%" is not registered', catalog USING ERRCODE = '42704';
    END IF;
    IF NOT @extschema@._catalog_owned(catalog) THEN
        RAISE EXCEPTION 'pg_genome: only the owner of catalog "%"''s tables may do this', catalog USING ERRCODE = '42501';
    END IF;
END $$;

-- Whether this database is a coordinator (pg_genome_cluster) that replicates its model registry
-- and ranking catalogs to the data nodes (genome_cluster.publish made the publication
-- genome_reference): the one rule for what then reaches the nodes too (register_catalog's check
-- of their tables, prune_experiences, the nodes' subscriptions in health, replicate). PL/pgSQL,
-- not Rust: SPI would give the caller a transaction id, which genome_cluster.replicate must not hold.
CREATE FUNCTION _publishes_reference() RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN @extschema@._coordinator() AND EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'genome_reference');
END $$;

-- Ids apart: a sequence's next value made at least lo (it is left alone when already past).
-- The nodes' ranking log ids (below) and the coordinator's family ids
-- (genome_cluster.distribute_collection).
CREATE FUNCTION _sequence_at_least(seq regclass, lo bigint) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF coalesce(pg_sequence_last_value(seq), 0) < lo THEN
        PERFORM setval(seq, lo, false);
    END IF;
END $$;

-- On a data node of a coordinator (pg_genome_cluster), called by genome_cluster.replicate there
-- with the coordinator's published tables. Ready when every one of them is subscribed here and
-- copied, and every model registered by path has its file here; then its rankings and outcomes
-- take ids from a range of its own, [(part + 1) * 2^40, (part + 2) * 2^40), so the coordinator
-- routes an outcome by its ranking id and gathers the logs without collisions; each replicated
-- catalog gets its HNSW index (replication copies rows, not the index register_catalog made
-- there); and what a catalog unregistered on the coordinator left here goes (its log rows and
-- index: the replicated delete does not cascade). Returns what it found and did.
CREATE FUNCTION _replica_prepare(part integer, tables text[]) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE lo bigint := (part::bigint + 1) << 40; missing text[]; copying text[]; files text[];
        indexed integer := 0; c text; ix record;
BEGIN
    SELECT coalesce(array_agg(t.rel ORDER BY t.rel) FILTER (WHERE r.copied IS NULL), '{}'),
           coalesce(array_agg(t.rel ORDER BY t.rel) FILTER (WHERE NOT r.copied), '{}')
      INTO missing, copying
      FROM unnest(tables) t(rel)
      LEFT JOIN LATERAL (SELECT bool_and(x.srsubstate = 'r') AS copied FROM pg_subscription s JOIN pg_subscription_rel x ON x.srsubid = s.oid
                          WHERE s.subname LIKE 'genome\_reference%' AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                            AND x.srrelid = to_regclass(t.rel)) r ON true;
    SELECT coalesce(array_agg(m.name || '@' || m.version || ': ' || m.onnx_path ORDER BY m.name, m.version), '{}') INTO files
      FROM @extschema@.models m WHERE m.onnx_path IS NOT NULL AND pg_stat_file(m.onnx_path, true) IS NULL;
    IF cardinality(missing) + cardinality(copying) + cardinality(files) > 0 THEN
        RETURN jsonb_strip_nulls(jsonb_build_object('ready', false,
            'not_subscribed', nullif(missing, '{}'), 'copying', nullif(copying, '{}'), 'model_files_missing', nullif(files, '{}')));
    END IF;
    PERFORM @extschema@._sequence_at_least(pg_get_serial_sequence('@extschema@.rankings', 'id')::regclass, lo);
    PERFORM @extschema@._sequence_at_least(pg_get_serial_sequence('@extschema@.experiences', 'id')::regclass, lo);
    DELETE FROM @extschema@.experiences e WHERE NOT EXISTS (SELECT 1 FROM @extschema@.catalogs x WHERE x.name = e.catalog);
    DELETE FROM @extschema@.rankings k WHERE NOT EXISTS (SELECT 1 FROM @extschema@.catalogs x WHERE x.name = k.catalog);
    FOR ix IN SELECT i.indexrelid::regclass AS rel FROM pg_index i JOIN pg_class k ON k.oid = i.indexrelid
               WHERE i.indrelid = '@extschema@.capability_features'::regclass AND k.relname LIKE 'capability\_features\_hnsw\_%'
                 AND NOT EXISTS (SELECT 1 FROM @extschema@.catalogs x WHERE k.relname = 'capability_features_hnsw_' || md5(x.name)) LOOP
        EXECUTE format('DROP INDEX %s', ix.rel);
    END LOOP;
    FOR c IN SELECT x.name FROM @extschema@.catalogs x ORDER BY x.name LOOP
        PERFORM @extschema@._catalog_index(c);
        indexed := indexed + 1;
    END LOOP;
    RETURN jsonb_build_object('ready', true, 'catalogs', indexed, 'ids_from', lo);
END $$;

-- A change to the app's capability, link or tools table marks its catalog changed.
-- SECURITY DEFINER: whoever writes the app's table needs no rights on pg_genome's tables; it
-- only stamps the catalogs registered on the table that fired.
CREATE FUNCTION _catalog_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- once per refresh cycle: later writes find it marked and take no row lock
    UPDATE @extschema@.catalogs c SET changed_at = now()
     WHERE c.name = TG_ARGV[0] AND TG_RELID IN (c.relid, c.links, c.tools)
       AND (c.changed_at IS NULL OR c.changed_at <= coalesce(c.refreshed_at, '-infinity'));
    RETURN NULL;
END $$;

CREATE FUNCTION _catalog_triggers(catalog text, present boolean) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE rel regclass; trg text := 'genome_catalog_' || md5(catalog);
BEGIN
    FOR rel IN SELECT DISTINCT r FROM @extschema@.catalogs c, unnest(ARRAY[c.relid, c.links, c.tools]) r
                WHERE c.name = catalog AND r IS NOT NULL AND EXISTS (SELECT 1 FROM pg_class k WHERE k.oid = r) LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trg, rel);
        IF present THEN
            EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %I._catalog_changed(%L)',
                           trg, rel, '@extschema@', catalog);
        END IF;
    END LOOP;
END $$;

-- The HNSW index of a catalog's text embeddings: a partial expression index on pg_genome's
-- feature table (one per catalog, as catalogs may use models of different dimensions).
-- SECURITY DEFINER: the feature table belongs to the extension's owner; the function only
-- creates or drops the index of a registered catalog the caller owns, named from its name.
CREATE FUNCTION _catalog_index(catalog text, present boolean DEFAULT true) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE c @extschema@.catalogs; ix text := 'capability_features_hnsw_' || md5(catalog);
BEGIN
    SELECT * INTO c FROM @extschema@.catalogs x WHERE x.name = catalog;
    -- created (if missing) only for a registration whose registrant owns the table; dropped
    -- only once the registration is gone (unregister_catalog deletes it first, under its policy)
    IF present AND c.name IS NOT NULL AND @extschema@._owned_by(c.relid, c.registered_by) THEN
        EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I.capability_features USING hnsw ((text_embedding::%I.vector(%s)) %I.vector_cosine_ops) WHERE catalog = %L',
                       ix, '@extschema@', @extschema@._vector_schema(), c.dimension, @extschema@._vector_schema(), catalog);
    ELSIF NOT present AND c.name IS NULL THEN
        EXECUTE format('DROP INDEX IF EXISTS %I.%I', '@extschema@', ix);
    END IF;
END $$;

-- Views (after the private functions: the view's row filter calls _catalog_readable)

CREATE VIEW ranker_versions AS
SELECT r.catalog, r.version, r.stage, r.canary_share, r.trained_at, r.promoted_at,
       (r.metrics->>'dev_mrr')::real AS dev_mrr, (r.metrics->>'dev_hit_at_10')::real AS dev_hit_at_10,
       (r.metrics->>'examples')::bigint AS examples
  FROM rankers r
 WHERE _catalog_readable(r.catalog);
COMMENT ON VIEW ranker_versions IS 'ranker versions of each catalog with their stage and dev metrics';

-- Triggers

CREATE TRIGGER catalogs_registrant BEFORE INSERT OR UPDATE OF relid, links, tools, registered_by ON catalogs
    FOR EACH ROW EXECUTE FUNCTION _stamp_registrant();

-- A catalog's name, model and dimension are fixed at registration (its triggers, pg_cron job,
-- index and features are named and computed from them): register again to change them.
CREATE FUNCTION _catalog_fixed() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.name IS DISTINCT FROM OLD.name OR NEW.model IS DISTINCT FROM OLD.model OR NEW.dimension IS DISTINCT FROM OLD.dimension THEN
        RAISE EXCEPTION 'pg_genome: a catalog''s name, model and dimension cannot change' USING ERRCODE = '55000',
              HINT = 'unregister the catalog and register it again';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER catalogs_fixed BEFORE UPDATE ON catalogs FOR EACH ROW EXECUTE FUNCTION _catalog_fixed();

-- On a data node of a coordinator (pg_genome_cluster) a catalog's row goes by the replication of
-- the coordinator's unregister_catalog, which does not run here: the catalog's HNSW index goes
-- with the row (fired only by replication, ENABLE REPLICA), or the rows of a catalog registered
-- again with another dimension would not fit the old index and stop the node's replication.
CREATE FUNCTION _catalog_unindexed() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@._catalog_index(OLD.name, false);
    RETURN NULL;
END $$;
CREATE TRIGGER catalogs_replica_unindexed AFTER DELETE ON catalogs FOR EACH ROW EXECUTE FUNCTION _catalog_unindexed();
ALTER TABLE catalogs ENABLE REPLICA TRIGGER catalogs_replica_unindexed;

CREATE FUNCTION _experiences_append_only() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- the one change allowed: a pruned ranking's id set to NULL by the foreign key
    IF NEW.ranking_id IS NULL AND OLD.ranking_id IS NOT NULL
       AND (to_jsonb(NEW) - 'ranking_id') = (to_jsonb(OLD) - 'ranking_id') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'pg_genome: the experience log is append-only' USING ERRCODE = '55000',
          HINT = 'old rows go with genome.prune_experiences(catalog)';
END $$;
CREATE TRIGGER experiences_append_only BEFORE UPDATE ON experiences FOR EACH ROW EXECUTE FUNCTION _experiences_append_only();

-- Policies

-- Registrations like collections': written only for tables the writer owns; read by all.
ALTER TABLE catalogs ENABLE ROW LEVEL SECURITY;
CREATE POLICY catalogs_read ON catalogs FOR SELECT USING (true);
CREATE POLICY catalogs_insert ON catalogs FOR INSERT
    WITH CHECK (_owns(relid) AND _owns(links) AND (tools IS NULL OR _owns(tools))
                AND (SELECT bool_and(k.relkind IN ('r', 'p')) FROM pg_class k WHERE k.oid IN (relid, links, tools)));
CREATE POLICY catalogs_update ON catalogs FOR UPDATE
    USING (coalesce(_owns(relid), pg_has_role(registered_by::oid, 'USAGE')))
    WITH CHECK (_owns(relid) AND _owns(links) AND (tools IS NULL OR _owns(tools))
                AND (SELECT bool_and(k.relkind IN ('r', 'p')) FROM pg_class k WHERE k.oid IN (relid, links, tools)));
CREATE POLICY catalogs_delete ON catalogs FOR DELETE
    USING (coalesce(_owns(relid), pg_has_role(registered_by::oid, 'USAGE')));

-- Features, logs and models: read by whoever may read the catalog's tables, written by their
-- owner; the logs are written by any reader (that is how rankings and outcomes arrive).
ALTER TABLE capability_features ENABLE ROW LEVEL SECURITY;
CREATE POLICY capability_features_read ON capability_features FOR SELECT USING (_catalog_readable(catalog));
CREATE POLICY capability_features_write ON capability_features FOR ALL USING (_catalog_owned(catalog)) WITH CHECK (_catalog_owned(catalog));
ALTER TABLE tool_features ENABLE ROW LEVEL SECURITY;
CREATE POLICY tool_features_read ON tool_features FOR SELECT USING (_catalog_readable(catalog));
CREATE POLICY tool_features_write ON tool_features FOR ALL USING (_catalog_owned(catalog)) WITH CHECK (_catalog_owned(catalog));
ALTER TABLE rankings ENABLE ROW LEVEL SECURITY;
CREATE POLICY rankings_read ON rankings FOR SELECT USING (pg_has_role(created_by::oid, 'MEMBER') OR _catalog_owned(catalog));
CREATE POLICY rankings_insert ON rankings FOR INSERT
    WITH CHECK (_catalog_readable(catalog) AND created_by = current_user::regrole AND created_at <= now());
CREATE POLICY rankings_delete ON rankings FOR DELETE USING (_catalog_owned(catalog));
ALTER TABLE experiences ENABLE ROW LEVEL SECURITY;
CREATE POLICY experiences_read ON experiences FOR SELECT USING (pg_has_role(created_by::oid, 'MEMBER') OR _catalog_owned(catalog));
-- an outcome is written for one's own ranking; imports by the owner
CREATE POLICY experiences_insert ON experiences FOR INSERT
    WITH CHECK (_catalog_readable(catalog) AND created_by = current_user::regrole AND created_at <= now()
                AND (_catalog_owned(catalog)
                     OR (source = 'outcome' AND EXISTS (SELECT 1 FROM rankings k WHERE k.catalog = experiences.catalog
                                                           AND k.id = experiences.ranking_id
                                                           AND pg_has_role(k.created_by::oid, 'MEMBER')))));
CREATE POLICY experiences_delete ON experiences FOR DELETE USING (_catalog_owned(catalog));
ALTER TABLE rankers ENABLE ROW LEVEL SECURITY;
CREATE POLICY rankers_read ON rankers FOR SELECT USING (_catalog_readable(catalog));
CREATE POLICY rankers_write ON rankers FOR ALL USING (_catalog_owned(catalog)) WITH CHECK (_catalog_owned(catalog));
ALTER TABLE ranker_memory ENABLE ROW LEVEL SECURITY;
CREATE POLICY ranker_memory_read ON ranker_memory FOR SELECT USING (_catalog_readable(catalog));
CREATE POLICY ranker_memory_write ON ranker_memory FOR ALL USING (_catalog_owned(catalog)) WITH CHECK (_catalog_owned(catalog));

-- Grants

GRANT SELECT ON catalogs, ranker_versions TO genome_monitor;
GRANT SELECT, INSERT, UPDATE, DELETE ON catalogs, capability_features, tool_features, rankers, ranker_memory TO genome_user;
GRANT SELECT, INSERT, DELETE ON rankings, experiences TO genome_user;
GRANT SELECT ON ranker_versions TO genome_user;
