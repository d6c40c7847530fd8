-- pg_genome pet photos: an app's photo table registered once, per-pet photo clusters ("looks")
-- updated incrementally as photos arrive, and hero selection. pg_genome keeps its own state in
-- the tables below and never writes to the app's table. Rust: src/pets.rs, src/images.rs.

-- Tables

-- An app's photo table, registered once: which columns hold the pet, the image id, the image
-- bytes, when it was taken and (optionally) a pose score 0..1. pg_genome keeps its own state
-- (embeddings, clusters) in the tables below and never writes to the app's table.
CREATE TABLE pet_media (
    name            text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$'),
    relid           regclass NOT NULL,
    pet_column      name NOT NULL,
    image_id_column name NOT NULL,
    image_column    name NOT NULL,
    taken_at_column name NOT NULL,
    pose_column     name,
    model           text NOT NULL,      -- name@version of the image model, fixed at registration
    dimension       integer NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    registered_by   regrole,            -- the role that registered it (set by a trigger)
    attnums         smallint[]          -- pet, image_id, image, taken_at, pose: a rename follows
);
COMMENT ON TABLE pet_media IS 'pg_genome pet photo tables: registered by genome.register_pet_media';
SELECT pg_catalog.pg_extension_config_dump('pet_media', '');

-- Clusters of one pet's photos ("looks"). Ids never change; a cluster is deleted only when all
-- its photos are gone.
CREATE TABLE pet_photo_clusters (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    media           text NOT NULL REFERENCES pet_media(name) ON DELETE CASCADE ON UPDATE CASCADE,
    pet_id          text NOT NULL,
    centroid        vector,             -- mean of the members' embeddings
    size            integer NOT NULL DEFAULT 0,
    first_taken_at  timestamptz,
    last_taken_at   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pet_photo_clusters_pet ON pet_photo_clusters (media, pet_id);
COMMENT ON TABLE pet_photo_clusters IS 'pg_genome per-pet photo clusters; ids are stable';
SELECT pg_catalog.pg_extension_config_dump('pet_photo_clusters', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('pet_photo_clusters', 'id')::regclass, '');

-- One row per photo seen: its embedding and quality, or the error that stopped it.
CREATE TABLE pet_photos (
    media           text NOT NULL REFERENCES pet_media(name) ON DELETE CASCADE ON UPDATE CASCADE,
    image_id        text NOT NULL,
    pet_id          text NOT NULL,
    embedding       vector,             -- NULL when the image could not be embedded (see error)
    quality         real,               -- genome.image_quality(...)->'score'
    taken_at        timestamptz,
    pose            real,
    cluster_id      bigint REFERENCES pet_photo_clusters(id) ON DELETE SET NULL,
    similarity      real,               -- cosine to the cluster centroid when it joined
    error           text,
    added_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (media, image_id)
);
CREATE INDEX pet_photos_pet ON pet_photos (media, pet_id);
CREATE INDEX pet_photos_cluster ON pet_photos (cluster_id);
COMMENT ON TABLE pet_photos IS 'pg_genome pet photos: embedding, quality and cluster of each photo of a registered media';
SELECT pg_catalog.pg_extension_config_dump('pet_photos', '');

CREATE TABLE pet_state (
    media           text NOT NULL REFERENCES pet_media(name) ON DELETE CASCADE ON UPDATE CASCADE,
    pet_id          text NOT NULL,
    threshold       double precision,   -- the pet's join threshold (cosine), NULL before clusters
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (media, pet_id)
);
SELECT pg_catalog.pg_extension_config_dump('pet_state', '');

-- Pets whose photos changed since their last update (written by the app table's triggers,
-- consumed by genome.cluster_dirty_pets, which pg_cron runs).
CREATE TABLE pet_dirty (
    media           text NOT NULL REFERENCES pet_media(name) ON DELETE CASCADE ON UPDATE CASCADE,
    pet_id          text NOT NULL,
    marked_at       timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    PRIMARY KEY (media, pet_id)
);
CREATE INDEX pet_dirty_marked ON pet_dirty (marked_at);

-- Functions

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
    -- the model genome.embed_image would use
    SELECT x.name, x.version, x.dimension INTO mm FROM @extschema@.models x
     WHERE x.id = @extschema@._resolve_model(model, image => true);
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
COMMENT ON FUNCTION unregister_pet_media IS 'forget a photo table: its photos, clusters and triggers (the app''s table is untouched)';

-- Update one pet's clusters: forget photos gone from the app's table, embed and score new ones,
-- then join them to clusters or form new ones (genome._pet_update, HDBSCAN on that pet's photos
-- only). Reads and writes only this pet's rows, under a per-pet lock, in the caller's
-- transaction. pet_id: any type, a quoted literal is text (cast to the pet column's type, so the app's index is used).
CREATE FUNCTION cluster_pet(pet_id anycompatible, media text DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m @extschema@.pet_media;
    pid text := pet_id::text;
    rel regclass;
    pet_type text;
    t0 timestamptz := clock_timestamp();
    r record;
    added int := 0; failed int := 0; removed int := 0;
    present text[];
    upd record;
    res jsonb;
BEGIN
    IF pid IS NULL THEN
        RAISE EXCEPTION 'pg_genome: pet_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    -- on a coordinator (pg_genome_cluster; src/cluster.rs) the data node holding the pet runs it
    IF @extschema@._coordinator() THEN
        RETURN genome_cluster.cluster_pet(pid, media);
    END IF;
    m := @extschema@._pet_media(media);
    rel := m.relid::regclass;
    SELECT format_type(a.atttypid, a.atttypmod) INTO pet_type FROM pg_attribute a WHERE a.attrelid = m.relid AND a.attname = m.pet_column;
    PERFORM pg_advisory_xact_lock(@extschema@._lock_key('pet'), hashtext(m.name || '/' || pid));
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
            -- one decode gives the embedding and the quality
            INSERT INTO @extschema@.pet_photos (media, image_id, pet_id, embedding, quality, taken_at, pose)
            SELECT m.name, r.image_id, pid, e.embedding, e.quality, r.taken_at, r.pose
              FROM @extschema@._embed_photo(r.img, m.model) e;
            added := added + 1;
        EXCEPTION WHEN OTHERS THEN
            -- a corrupt or oversized photo is recorded and skipped; the pet's other photos go on
            -- (cancellation is not caught by OTHERS)
            INSERT INTO @extschema@.pet_photos (media, image_id, pet_id, taken_at, pose, error)
            VALUES (m.name, r.image_id, pid, r.taken_at, r.pose, SQLERRM);
            failed := failed + 1;
        END;
    END LOOP;
    -- the plan, made by genome-core and written by Rust: photos join or form clusters, and
    -- every cluster gets the core's centroid (genome._pet_update, src/pets.rs); photos too poor
    -- to place (genome.pet_min_quality) neither form nor join clusters
    SELECT * INTO upd FROM @extschema@._pet_update(m.name, pid);
    UPDATE @extschema@.pet_photo_clusters c
       SET size = s.n, first_taken_at = s.f, last_taken_at = s.l, updated_at = now()
      FROM (SELECT p.cluster_id, count(*)::int AS n, min(p.taken_at) AS f, max(p.taken_at) AS l
              FROM @extschema@.pet_photos p WHERE p.media = m.name AND p.pet_id = pid AND p.cluster_id IS NOT NULL
             GROUP BY p.cluster_id) s
     WHERE c.id = s.cluster_id AND c.media = m.name AND c.pet_id = pid
       AND (c.size IS DISTINCT FROM s.n OR c.last_taken_at IS DISTINCT FROM s.l OR c.first_taken_at IS DISTINCT FROM s.f);
    DELETE FROM @extschema@.pet_photo_clusters c WHERE c.media = m.name AND c.pet_id = pid
       AND NOT EXISTS (SELECT 1 FROM @extschema@.pet_photos p WHERE p.cluster_id = c.id);
    INSERT INTO @extschema@.pet_state AS s (media, pet_id, threshold) VALUES (m.name, pid, upd.threshold)
    ON CONFLICT ON CONSTRAINT pet_state_pkey DO UPDATE SET threshold = EXCLUDED.threshold, updated_at = now();
    SELECT jsonb_build_object(
             'media', m.name, 'pet_id', pid, 'added', added, 'failed', failed, 'removed', removed,
             'joined', upd.joined, 'new_clusters', upd.new_clusters,
             'clusters', (SELECT count(*) FROM @extschema@.pet_photo_clusters c WHERE c.media = m.name AND c.pet_id = pid),
             'photos', count(*), 'clustered', count(p.cluster_id),
             'unassigned', count(*) FILTER (WHERE p.cluster_id IS NULL AND p.embedding IS NOT NULL),
             'threshold', upd.threshold, 'ms', round(extract(epoch FROM clock_timestamp() - t0) * 1000::numeric))
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
    -- on a coordinator (pg_genome_cluster; src/cluster.rs) every data node runs its own, totals here
    IF @extschema@._coordinator() THEN
        RETURN genome_cluster.cluster_dirty_pets(media, max_pets);
    END IF;
    FOR d IN SELECT x.media, x.pet_id FROM @extschema@.pet_dirty x
              WHERE (cluster_dirty_pets.media IS NULL OR x.media = cluster_dirty_pets.media)
              ORDER BY x.marked_at, x.media, x.pet_id LIMIT max_pets LOOP
        IF NOT pg_try_advisory_xact_lock(@extschema@._lock_key('pet'), hashtext(d.media || '/' || d.pet_id)) THEN
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

CREATE FUNCTION unschedule_pet_clustering(media text) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN @extschema@._cron_unschedule(ARRAY['genome_pets:' || media]);
END $$;
COMMENT ON FUNCTION unschedule_pet_clustering IS 'remove the pg_cron job of a photo table; returns how many were removed';

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
DECLARE m @extschema@.pet_media; pid text := pet_id::text;
        newest timestamptz; min_q real := current_setting('genome.hero_min_quality')::real;
BEGIN
    IF n IS NULL OR n < 1 THEN
        RAISE EXCEPTION 'pg_genome: n must be at least 1, got %', n USING ERRCODE = '22023';
    END IF;
    -- on a coordinator (pg_genome_cluster; src/cluster.rs) the data node holding the pet runs it
    IF @extschema@._coordinator() THEN
        IF pid IS NULL THEN
            RETURN;
        END IF;
        RETURN QUERY SELECT * FROM genome_cluster.select_heroes(pid, n, media, w_quality, w_centrality, w_recency, w_pose);
        RETURN;
    END IF;
    m := @extschema@._pet_media(media);
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
    -- on a coordinator (pg_genome_cluster; src/cluster.rs) the data node holding the pet runs it
    IF @extschema@._coordinator() THEN
        RETURN genome_cluster.pet_clusters(pid, media, n);
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

-- Defined in Rust (src/pets.rs):
COMMENT ON FUNCTION hero_score_of IS 'a photo''s hero score from its quality, similarity to its cluster, age and pose (weights default to the genome.hero_weight_* settings)';

-- Private functions

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

-- Triggers

CREATE TRIGGER pet_media_registrant BEFORE INSERT OR UPDATE OF relid, registered_by, pet_column, image_id_column,
    image_column, taken_at_column, pose_column, model ON pet_media
    FOR EACH ROW EXECUTE FUNCTION _stamp_registrant();

CREATE TRIGGER pet_media_columns BEFORE INSERT OR UPDATE OF relid, pet_column, image_id_column, image_column, taken_at_column,
    pose_column ON pet_media FOR EACH ROW EXECUTE FUNCTION _track_columns();

-- Policies

-- A registration can be written only by a role that owns its table; every role may read it.
ALTER TABLE pet_media ENABLE ROW LEVEL SECURITY;
CREATE POLICY pet_media_read ON pet_media FOR SELECT USING (true);
CREATE POLICY pet_media_insert ON pet_media FOR INSERT WITH CHECK (@extschema@._owns(relid));
CREATE POLICY pet_media_update ON pet_media FOR UPDATE
    USING (coalesce(@extschema@._owns(relid), pg_has_role(registered_by::oid, 'USAGE')))
    WITH CHECK (@extschema@._owns(relid));
CREATE POLICY pet_media_delete ON pet_media FOR DELETE
    USING (coalesce(@extschema@._owns(relid), pg_has_role(registered_by::oid, 'USAGE')));

-- What pg_genome derives from an app's rows is visible to a role for the tables it can read,
-- and written only by roles with the privileges of the table's owner; a role that only
-- monitors (genome_monitor, not genome_user) sees every row of the columns granted to it,
-- which are counts and states, never labels, exemplars, embeddings or error messages.
ALTER TABLE pet_photos ENABLE ROW LEVEL SECURITY;
CREATE POLICY pet_photos_read ON pet_photos FOR SELECT
    USING (@extschema@._monitor_only() OR EXISTS (SELECT 1 FROM @extschema@.pet_media r WHERE r.name = media AND @extschema@._may_read(r.relid)));
CREATE POLICY pet_photos_write ON pet_photos FOR ALL
    USING (EXISTS (SELECT 1 FROM @extschema@.pet_media r WHERE r.name = media AND @extschema@._owns(r.relid)));
ALTER TABLE pet_photo_clusters ENABLE ROW LEVEL SECURITY;
CREATE POLICY pet_photo_clusters_read ON pet_photo_clusters FOR SELECT
    USING (@extschema@._monitor_only() OR EXISTS (SELECT 1 FROM @extschema@.pet_media r WHERE r.name = media AND @extschema@._may_read(r.relid)));
CREATE POLICY pet_photo_clusters_write ON pet_photo_clusters FOR ALL
    USING (EXISTS (SELECT 1 FROM @extschema@.pet_media r WHERE r.name = media AND @extschema@._owns(r.relid)));
ALTER TABLE pet_state ENABLE ROW LEVEL SECURITY;
CREATE POLICY pet_state_read ON pet_state FOR SELECT
    USING (@extschema@._monitor_only() OR EXISTS (SELECT 1 FROM @extschema@.pet_media r WHERE r.name = media AND @extschema@._may_read(r.relid)));
CREATE POLICY pet_state_write ON pet_state FOR ALL
    USING (EXISTS (SELECT 1 FROM @extschema@.pet_media r WHERE r.name = media AND @extschema@._owns(r.relid)));
ALTER TABLE pet_dirty ENABLE ROW LEVEL SECURITY;
CREATE POLICY pet_dirty_read ON pet_dirty FOR SELECT
    USING (@extschema@._monitor_only() OR EXISTS (SELECT 1 FROM @extschema@.pet_media r WHERE r.name = media AND @extschema@._may_read(r.relid)));
CREATE POLICY pet_dirty_write ON pet_dirty FOR ALL
    USING (EXISTS (SELECT 1 FROM @extschema@.pet_media r WHERE r.name = media AND @extschema@._owns(r.relid)));

-- Grants

GRANT SELECT ON pet_media, pet_state TO genome_monitor;
GRANT SELECT (media, pet_id, marked_at, attempts) ON pet_dirty TO genome_monitor;
-- photos and clusters: counts and states, not embeddings or image ids
GRANT SELECT (media, pet_id, cluster_id, quality, error, added_at) ON pet_photos TO genome_monitor;
GRANT SELECT (id, media, pet_id, size, created_at, updated_at) ON pet_photo_clusters TO genome_monitor;
GRANT SELECT, INSERT, UPDATE, DELETE ON pet_media, pet_photo_clusters, pet_photos, pet_state, pet_dirty TO genome_user;
