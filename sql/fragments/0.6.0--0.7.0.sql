-- pg_genome 0.6.0 -> 0.7.0: capability ranking (src/ranking.sql): the catalog registrations,
-- the feature store, the ranking and experience logs and the rankers, with their triggers,
-- policies and grants; and stages for registry models (src/models.sql). The functions come
-- after this fragment (release.py); those that the policies, triggers and view below need are
-- created here first, as in src/ranking.sql.

-- Tables

-- model lifecycle (src/models.sql)
ALTER TABLE models ADD COLUMN stage text CHECK (stage IN ('staging', 'production', 'archived'));
ALTER TABLE models ADD COLUMN promoted_at timestamptz;

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
    embedding  vector NOT NULL
);
CREATE INDEX ranker_memory_ranker ON ranker_memory (ranker);
COMMENT ON TABLE ranker_memory IS 'pg_genome ranker memory: intent embeddings of the successful experiences a ranker version was trained on';

CREATE UNIQUE INDEX rankers_one_production ON rankers (catalog) WHERE stage = 'production';
COMMENT ON TABLE rankers IS 'pg_genome trained rankers: versions, stages, metrics and weights';
SELECT pg_catalog.pg_extension_config_dump('rankers', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('rankers', 'id')::regclass, '');

-- Row-level security helpers (also in the generated part)
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

-- Views
CREATE VIEW ranker_versions AS
SELECT r.catalog, r.version, r.stage, r.canary_share, r.trained_at, r.promoted_at,
       (r.metrics->>'dev_mrr')::real AS dev_mrr, (r.metrics->>'dev_hit_at_10')::real AS dev_hit_at_10,
       (r.metrics->>'examples')::bigint AS examples
  FROM rankers r
 WHERE _catalog_readable(r.catalog);

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
