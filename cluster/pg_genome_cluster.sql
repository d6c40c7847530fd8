-- pg_genome_cluster: pg_genome on a coordinator and N data nodes, on PostgreSQL's own machinery.
-- Installed on the coordinator only (CREATE EXTENSION pg_genome_cluster CASCADE); every data
-- node runs plain pg_genome. Once this extension is in a database, pg_genome's functions there
-- route instead of running locally (genome._coordinator(), src/cluster.rs): the same names and
-- signatures, so an app switches by connection string only. README "Several nodes" has the
-- layout and the set-up; tests/integration/test_cluster.py runs it on 4 real clusters.
--
-- - Keys (a pet id, a row id) hash to one of 64 shards: genome_cluster.shard_of(key::text).
--   genome_cluster.shards says which node holds a shard.
-- - PL/Proxy routes a call keyed by a pet to the node holding its shard (RUN ON partition), and
--   fans search out to every node (RUN ON ALL); one PL/Proxy partition per node, modular
--   mapping, kept in step with genome_cluster.nodes by sync().
-- - postgres_fdw: one server per node (genome_node_<name>); genome_cluster.attach_nodes turns a
--   table partitioned by LIST (genome_cluster.shard_of(key::text)) into one foreign partition per
--   node, so the app's INSERTs and SELECTs on the coordinator reach the right node.
-- - A routed call runs on its node in that node's own transaction (PL/Proxy's autocommit): it is
--   not undone by a rollback on the coordinator.
\echo Use "CREATE EXTENSION pg_genome_cluster CASCADE" to load this file. \quit

-- Tables

CREATE TABLE nodes (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,30}$'),
    host        text NOT NULL,
    port        integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    dbname      text NOT NULL,
    position    integer NOT NULL UNIQUE CHECK (position >= 0),  -- its PL/Proxy partition (p<position>)
    added_at    timestamptz NOT NULL DEFAULT now(),
    -- when replicate() last found it with every reference table applied (NULL: not yet, or a
    -- table was published since): only such nodes rank (rank_capabilities)
    ready_at    timestamptz
);
COMMENT ON TABLE nodes IS 'pg_genome data nodes: where they are and their PL/Proxy partition number';
SELECT pg_catalog.pg_extension_config_dump('nodes', '');

CREATE TABLE shards (
    shard       integer PRIMARY KEY CHECK (shard >= 0 AND shard < 64),
    node        text NOT NULL REFERENCES nodes(name) ON UPDATE CASCADE
);
COMMENT ON TABLE shards IS 'which data node holds each of the 64 shards (keys hash to shards: genome_cluster.shard_of)';
SELECT pg_catalog.pg_extension_config_dump('shards', '');

CREATE TABLE collections (
    name        text PRIMARY KEY,
    rows_table  regclass NOT NULL,      -- the coordinator's table of the rows a full run clusters
    id_type     text NOT NULL           -- the app's id type: rows are clustered in its order
);
COMMENT ON TABLE collections IS 'distributed collections: registered on every data node, classified through the coordinator';
SELECT pg_catalog.pg_extension_config_dump('collections', '');

-- Where rebalance imports a node's table before naming it (genome_cluster._on_node).
CREATE SCHEMA genome_cluster_import;
REVOKE ALL ON SCHEMA genome_cluster_import FROM PUBLIC;

-- Functions

CREATE FUNCTION shard_count() RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS 'SELECT 64';
COMMENT ON FUNCTION genome_cluster.shard_count IS 'the number of shards keys hash to (fixed: nodes hold whole shards)';

-- The one rule that places a key: PostgreSQL's hashtext of its text form, low 6 bits.
CREATE FUNCTION shard_of(key text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS 'SELECT pg_catalog.hashtext(key) OPERATOR(pg_catalog.&) 63';
COMMENT ON FUNCTION genome_cluster.shard_of IS 'the shard (0-63) of a key, from its text form: partition key of distributed tables and routing key of pet calls';

CREATE FUNCTION node_of(key text) RETURNS genome_cluster.nodes
LANGUAGE plpgsql STABLE STRICT SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE n genome_cluster.nodes;
BEGIN
    SELECT d.* INTO n FROM genome_cluster.shards s JOIN genome_cluster.nodes d ON d.name = s.node
     WHERE s.shard = genome_cluster.shard_of(key);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pg_genome: no data node holds shard % (key %)', genome_cluster.shard_of(key), key
            USING ERRCODE = '55000', HINT = 'add data nodes with genome_cluster.add_node';
    END IF;
    RETURN n;
END $$;
COMMENT ON FUNCTION genome_cluster.node_of IS 'the data node that holds a key (a pet id, a row id)';

-- libpq keyword/value connection string of a node, values quoted as libpq reads them
CREATE FUNCTION _conn_value(v text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT '''' || pg_catalog.replace(pg_catalog.replace(v, '\', '\\'), '''', '\''') || ''''
$$;

CREATE FUNCTION _connstr(n genome_cluster.nodes) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT pg_catalog.format('host=%s port=%s dbname=%s connect_timeout=5 application_name=pg_genome_cluster',
        genome_cluster._conn_value(n.host), n.port, genome_cluster._conn_value(n.dbname))
$$;

-- The PL/Proxy partition of the node holding a key's shard: the routing key of pet calls.
CREATE FUNCTION _partition(key text) RETURNS integer
LANGUAGE sql STABLE STRICT SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT (genome_cluster.node_of(key)).position
$$;

-- PL/Proxy's cluster and postgres_fdw's servers, from genome_cluster.nodes. The PL/Proxy cluster
-- is the foreign server genome_cluster: one partition per data node, p<position> = its
-- connection string, modular mapping (any number of nodes, not only a power of two). It exists
-- from the first node on, and its existence is what makes this database a coordinator
-- (genome._coordinator()). PL/Proxy connects as the calling role (no user= in the mapping): a
-- role reaches on the nodes what it may reach there. The servers are members of this extension
-- (pg_dump leaves them out): after restoring a dump, genome_cluster.sync() makes them again and
-- gives the distributed tables their foreign partitions.
CREATE FUNCTION sync() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE opts text[] := '{}'; parts text[] := '{}'; o text; n genome_cluster.nodes; srv text;
BEGIN
    FOR n IN SELECT * FROM genome_cluster.nodes ORDER BY position LOOP
        parts := parts || format('p%s %L', n.position, genome_cluster._connstr(n));
        srv := 'genome_node_' || n.name;
        IF NOT EXISTS (SELECT 1 FROM pg_foreign_server WHERE srvname = srv) THEN
            EXECUTE format('CREATE SERVER %I FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host %L, port %L, dbname %L, application_name %L, batch_size %L)',
                           srv, n.host, n.port::text, n.dbname, 'pg_genome_cluster', '1000');
            EXECUTE format('ALTER EXTENSION pg_genome_cluster ADD SERVER %I', srv);
            EXECUTE format('CREATE USER MAPPING FOR PUBLIC SERVER %I', srv);
        ELSE
            EXECUTE format('ALTER SERVER %I OPTIONS (SET host %L, SET port %L, SET dbname %L)', srv, n.host, n.port::text, n.dbname);
        END IF;
    END LOOP;
    IF cardinality(parts) = 0 THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_foreign_server WHERE srvname = 'genome_cluster') THEN
        EXECUTE format('CREATE SERVER genome_cluster FOREIGN DATA WRAPPER plproxy OPTIONS (modular_mapping %L, connection_lifetime %L, %s)',
                       '1', '1800', array_to_string(parts, ', '));
        ALTER EXTENSION pg_genome_cluster ADD SERVER genome_cluster;
        CREATE USER MAPPING FOR PUBLIC SERVER genome_cluster;
        GRANT USAGE ON FOREIGN SERVER genome_cluster TO genome_user, genome_monitor;
    ELSE
        FOR o IN SELECT split_part(x, '=', 1) FROM pg_foreign_server s, unnest(s.srvoptions) x
                  WHERE s.srvname = 'genome_cluster' AND x ~ '^p[0-9]+=' LOOP
            opts := opts || format('DROP %I', o);
        END LOOP;
        EXECUTE format('ALTER SERVER genome_cluster OPTIONS (%s)', array_to_string(opts || ARRAY(SELECT 'ADD ' || x FROM unnest(parts) x), ', '));
    END IF;
    -- the distributed tables' foreign partitions (a restored dump has the tables, not the partitions)
    PERFORM genome_cluster.attach_nodes(t.rel) FROM genome_cluster.distributed_tables() t;
END $$;
COMMENT ON FUNCTION genome_cluster.sync IS 'make PL/Proxy''s cluster and the postgres_fdw servers match genome_cluster.nodes (after restoring a dump)';

CREATE FUNCTION add_node(name text, host text, port integer, dbname text DEFAULT current_database())
RETURNS genome_cluster.nodes
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE n genome_cluster.nodes;
BEGIN
    -- one change of the node list at a time
    LOCK TABLE genome_cluster.nodes IN EXCLUSIVE MODE;
    IF EXISTS (SELECT 1 FROM genome_cluster.nodes d WHERE d.name = add_node.name) THEN
        RAISE EXCEPTION 'pg_genome: data node "%" exists', add_node.name USING ERRCODE = '42710';
    END IF;
    INSERT INTO genome_cluster.nodes AS d (name, host, port, dbname, position)
    VALUES (add_node.name, add_node.host, add_node.port, add_node.dbname,
            (SELECT count(*) FROM genome_cluster.nodes))
    RETURNING d.* INTO n;
    -- the first node holds every shard; genome_cluster.rebalance spreads them
    INSERT INTO genome_cluster.shards (shard, node)
    SELECT s, n.name FROM generate_series(0, genome_cluster.shard_count() - 1) s
    ON CONFLICT (shard) DO NOTHING;
    PERFORM genome_cluster.sync();
    RETURN n;
END $$;
COMMENT ON FUNCTION genome_cluster.add_node IS 'register a data node (a database with pg_genome); the first one holds every shard until genome_cluster.rebalance';

-- Even shares with the fewest moves: the node at position p is to hold 64/N shards (one more for
-- the first 64 mod N), a node holding more gives its highest-numbered ones, and nodes holding
-- fewer take them in position order. Adding a node to N moves about 1/(N+1) of the rows.
CREATE FUNCTION rebalance_plan() RETURNS TABLE (shard integer, from_node text, to_node text)
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    WITH n AS (SELECT d.name, d.position,
                      genome_cluster.shard_count() / count(*) OVER ()
                      + CASE WHEN d.position < genome_cluster.shard_count() % count(*) OVER () THEN 1 ELSE 0 END AS quota,
                      (SELECT count(*) FROM genome_cluster.shards s WHERE s.node = d.name) AS held
                 FROM genome_cluster.nodes d),
         give AS (SELECT h.shard, h.node, row_number() OVER (ORDER BY h.node, h.shard) AS g
                    FROM (SELECT s.shard, s.node, row_number() OVER (PARTITION BY s.node ORDER BY s.shard) AS k
                            FROM genome_cluster.shards s) h
                    JOIN n ON n.name = h.node WHERE h.k > n.quota),
         take AS (SELECT n.name, row_number() OVER (ORDER BY n.position, x) AS g
                    FROM n, generate_series(1, greatest(n.quota - n.held, 0)) x)
    SELECT give.shard, give.node, take.name FROM give JOIN take USING (g) ORDER BY give.shard
$$;
COMMENT ON FUNCTION genome_cluster.rebalance_plan IS 'the shards genome_cluster.rebalance would move, and where';

-- The coordinator's distributed tables: partitioned by LIST on the shard of a key.
CREATE FUNCTION distributed_tables() RETURNS TABLE (rel regclass, key_expression text)
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.partrelid::regclass, substring(pg_get_partkeydef(p.partrelid) FROM '^LIST \((.*)\)$')
      FROM pg_partitioned_table p
     WHERE pg_get_partkeydef(p.partrelid) LIKE 'LIST (genome_cluster.shard_of(%'
     ORDER BY p.partrelid
$$;
COMMENT ON FUNCTION genome_cluster.distributed_tables IS 'the tables partitioned by shard (genome_cluster.attach_nodes) and their shard expression';

-- A plain foreign table reading and writing a distributed table's rows on one node, whatever
-- their shard (the partitions only route): what rebalance copies and cleans up with.
CREATE FUNCTION _drop_on_node_tables() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE f regclass;
BEGIN
    -- made again from the tables' current columns by each rebalance and clean-up
    FOR f IN SELECT c.oid::regclass FROM pg_class c
              WHERE c.relnamespace = 'genome_cluster'::regnamespace AND c.relkind = 'f' AND c.relname ~ '^_[0-9]+_on_' LOOP
        EXECUTE format('DROP FOREIGN TABLE %s', f);
    END LOOP;
END $$;

CREATE FUNCTION _on_node(rel regclass, node text) RETURNS regclass
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    name text := format('_%s_on_%s', rel::oid, node);
    nsp name := (SELECT c.relnamespace::regnamespace::name FROM pg_class c WHERE c.oid = rel);
    tbl name := (SELECT c.relname FROM pg_class c WHERE c.oid = rel);
BEGIN
    IF to_regclass(format('genome_cluster.%I', name)) IS NULL THEN
        -- the node's table as it is there (its columns may be more than the coordinator's:
        -- pg_genome adds the embedding and family columns on the node)
        EXECUTE format('IMPORT FOREIGN SCHEMA %I LIMIT TO (%I) FROM SERVER %I INTO genome_cluster_import',
                       nsp, tbl, 'genome_node_' || node);
        IF to_regclass(format('genome_cluster_import.%I', tbl)) IS NULL THEN
            RAISE EXCEPTION 'pg_genome: data node % has no table %.%', node, nsp, tbl USING ERRCODE = '42P01';
        END IF;
        EXECUTE format('ALTER FOREIGN TABLE genome_cluster_import.%I RENAME TO %I', tbl, name);
        EXECUTE format('ALTER FOREIGN TABLE genome_cluster_import.%I SET SCHEMA genome_cluster', name);
    END IF;
    RETURN format('genome_cluster.%I', name)::regclass;
END $$;

-- The columns of a relation, quoted, in order.
CREATE FUNCTION _columns(rel regclass) RETURNS text
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FROM pg_attribute a
     WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
$$;

-- A table partitioned BY LIST (genome_cluster.shard_of((key)::text)) on the coordinator gets
-- one foreign partition per data node (postgres_fdw), holding that node's shards, reading and
-- writing the table of the same name on the node. Partitions made before are replaced.
CREATE FUNCTION attach_nodes(rel regclass) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    nsp name; tbl name; keydef text; n record; made integer := 0; part regclass;
BEGIN
    SELECT c.relnamespace::regnamespace::name, c.relname INTO nsp, tbl FROM pg_class c WHERE c.oid = rel;
    keydef := pg_get_partkeydef(rel);
    IF keydef IS NULL OR keydef !~ '^LIST \(genome_cluster\.shard_of\(' THEN
        RAISE EXCEPTION 'pg_genome: % is not partitioned by the shard of a key', rel
            USING ERRCODE = '42P17', HINT = 'CREATE TABLE ... PARTITION BY LIST (genome_cluster.shard_of((key)::text))';
    END IF;
    FOR part IN SELECT i.inhrelid::regclass FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = rel AND c.relkind = 'f' LOOP
        EXECUTE format('DROP FOREIGN TABLE %s', part);
    END LOOP;
    FOR n IN SELECT d.name, array_agg(s.shard ORDER BY s.shard) AS shards
               FROM genome_cluster.nodes d JOIN genome_cluster.shards s ON s.node = d.name
              GROUP BY d.name ORDER BY d.name LOOP
        EXECUTE format('CREATE FOREIGN TABLE %I.%I PARTITION OF %s FOR VALUES IN (%s) SERVER %I OPTIONS (schema_name %L, table_name %L)',
                       nsp, left(tbl, 40) || '_' || n.name, rel, array_to_string(n.shards, ', '),
                       'genome_node_' || n.name, nsp, tbl);
        made := made + 1;
    END LOOP;
    RETURN made;
END $$;
COMMENT ON FUNCTION genome_cluster.attach_nodes IS 'give a table partitioned by shard one postgres_fdw partition per data node (the same table on each node)';

-- Moves shards to the nodes rebalance_plan() names, one shard at a time. Nothing is lost:
-- - one transaction copies a shard's rows to its new node (first deleting any a move stopped
--   earlier left there) and switches the shard map, the distributed tables locked meanwhile
--   (calls through the coordinator wait for the shard's move);
-- - the next deletes the shard's rows on its old node, after that switch committed and only if
--   the map still says the shard is elsewhere;
-- - at the end clean_up() deletes anything a stopped run left behind.
-- Rebalances and clean-ups take turns, one transaction at a time (an advisory lock), each
-- reading the shard map as it is then. Between a shard's two transactions a fan-out (search)
-- could meet its rows on both nodes: search keeps one hit per id. Write through the coordinator
-- while it runs. Collection rows move with their embedding and family (classify collections
-- through the coordinator, genome_cluster.distribute_collection, so that family ids are the same
-- on every node). On the new node the app table's triggers mark the moved pets for pg_genome's
-- background update (their clusters are formed there anew, with new ids); on the old one the
-- deletions do, and their state goes. A procedure (it commits): CALL genome_cluster.rebalance().
CREATE PROCEDURE rebalance()
LANGUAGE plpgsql AS $$
DECLARE m record; t record; src regclass; dst regclass; moved bigint; total bigint := 0; shards int := 0; holder text;
BEGIN
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pg_genome_cluster.rebalance'));
    PERFORM genome_cluster._drop_on_node_tables();
    COMMIT;
    FOR m IN SELECT * FROM genome_cluster.rebalance_plan() LOOP
        PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pg_genome_cluster.rebalance'));
        SELECT s.node INTO holder FROM genome_cluster.shards s WHERE s.shard = m.shard FOR UPDATE;
        IF holder IS DISTINCT FROM m.from_node THEN
            COMMIT;   -- moved by another run meanwhile
            CONTINUE;
        END IF;
        FOR t IN SELECT * FROM genome_cluster.distributed_tables() LOOP
            EXECUTE pg_catalog.format('LOCK TABLE %s IN EXCLUSIVE MODE', t.rel);
        END LOOP;
        FOR t IN SELECT * FROM genome_cluster.distributed_tables() LOOP
            src := genome_cluster._on_node(t.rel, m.from_node);
            dst := genome_cluster._on_node(t.rel, m.to_node);
            EXECUTE pg_catalog.format('DELETE FROM %s WHERE %s OPERATOR(pg_catalog.=) %s', dst, t.key_expression, m.shard);
            EXECUTE pg_catalog.format('INSERT INTO %s (%s) SELECT %2$s FROM %s WHERE %s OPERATOR(pg_catalog.=) %s',
                                      dst, genome_cluster._columns(src), src, t.key_expression, m.shard);
            GET DIAGNOSTICS moved = ROW_COUNT;
            total := total + moved;
        END LOOP;
        UPDATE genome_cluster.shards s SET node = m.to_node WHERE s.shard = m.shard;
        FOR t IN SELECT * FROM genome_cluster.distributed_tables() LOOP
            PERFORM genome_cluster.attach_nodes(t.rel);
        END LOOP;
        COMMIT;
        -- the old node's copy, once the switch has committed
        PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pg_genome_cluster.rebalance'));
        IF (SELECT s.node FROM genome_cluster.shards s WHERE s.shard = m.shard) IS DISTINCT FROM m.from_node THEN
            FOR t IN SELECT * FROM genome_cluster.distributed_tables() LOOP
                EXECUTE pg_catalog.format('DELETE FROM %s WHERE %s OPERATOR(pg_catalog.=) %s',
                                          genome_cluster._on_node(t.rel, m.from_node), t.key_expression, m.shard);
            END LOOP;
        END IF;
        COMMIT;
        shards := shards + 1;
        RAISE NOTICE 'pg_genome: shard % moved from % to % (% rows so far)', m.shard, m.from_node, m.to_node, total;
    END LOOP;
    CALL genome_cluster.clean_up();
    RAISE NOTICE 'pg_genome: rebalanced: % shards, % rows moved', shards, total;
END $$;
COMMENT ON PROCEDURE genome_cluster.rebalance IS 'spread the shards evenly over the data nodes with the fewest moves, moving their rows; nothing is lost';

-- Deletes, on every node, the rows of the distributed tables whose shard another node holds
-- (left by a rebalance that stopped between a move and its deletion). One transaction per node,
-- taking turns with rebalances, reading the node's shards as they are then.
CREATE PROCEDURE clean_up()
LANGUAGE plpgsql AS $$
DECLARE n record; t record; gone bigint; held integer[];
BEGIN
    FOR n IN SELECT d.name FROM genome_cluster.nodes d ORDER BY d.name LOOP
        PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pg_genome_cluster.rebalance'));
        SELECT coalesce(pg_catalog.array_agg(s.shard), '{}') INTO held FROM genome_cluster.shards s WHERE s.node = n.name;
        FOR t IN SELECT * FROM genome_cluster.distributed_tables() LOOP
            EXECUTE pg_catalog.format('DELETE FROM %s WHERE %s OPERATOR(pg_catalog.<>) ALL (%L::integer[])',
                                      genome_cluster._on_node(t.rel, n.name), t.key_expression, held);
            GET DIAGNOSTICS gone = ROW_COUNT;
            IF gone > 0 THEN
                RAISE NOTICE 'pg_genome: % rows of % left on % deleted (their shards are on other nodes)', gone, t.rel, n.name;
            END IF;
        END LOOP;
        COMMIT;
    END LOOP;
END $$;
COMMENT ON PROCEDURE genome_cluster.clean_up IS 'delete on every data node the rows whose shard another node holds';

-- Routed calls. PL/Proxy runs pg_genome's function of the same name on the node (TARGET); the
-- wrappers below name the node when it cannot be reached.

CREATE FUNCTION _ping(part integer) RETURNS integer AS $$
    CLUSTER 'genome_cluster'; RUN ON part; SELECT 1;
$$ LANGUAGE plproxy;

CREATE FUNCTION _health(part integer) RETURNS jsonb AS $$
    CLUSTER 'genome_cluster'; RUN ON part; SELECT genome.health();
$$ LANGUAGE plproxy;

CREATE FUNCTION _cluster_pet(pet_id text, media text) RETURNS jsonb AS $$
    CLUSTER 'genome_cluster'; RUN ON genome_cluster._partition(pet_id); TARGET genome.cluster_pet;
$$ LANGUAGE plproxy;

CREATE FUNCTION _select_heroes(pet_id text, n integer, media text, w_quality double precision,
                               w_centrality double precision, w_recency double precision, w_pose double precision)
RETURNS TABLE (cluster_id bigint, rank integer, image_id text, score double precision, quality real,
               centrality double precision, recency_days double precision, pose real, taken_at timestamptz) AS $$
    CLUSTER 'genome_cluster'; RUN ON genome_cluster._partition(pet_id); TARGET genome.select_heroes;
$$ LANGUAGE plproxy;

CREATE FUNCTION _pet_clusters(pet_id text, media text, n integer) RETURNS jsonb AS $$
    CLUSTER 'genome_cluster'; RUN ON genome_cluster._partition(pet_id); TARGET genome.pet_clusters;
$$ LANGUAGE plproxy;

CREATE FUNCTION _cluster_dirty_pets(media text, max_pets integer) RETURNS SETOF jsonb AS $$
    CLUSTER 'genome_cluster'; RUN ON ALL; TARGET genome.cluster_dirty_pets;
$$ LANGUAGE plproxy;

CREATE FUNCTION _search(collection text, query text, top_k integer, score_threshold real, filter jsonb)
RETURNS TABLE (id text, score real, "row" jsonb) AS $$
    CLUSTER 'genome_cluster'; RUN ON ALL; TARGET genome.search;
$$ LANGUAGE plproxy;

CREATE FUNCTION _search(collection text, query_vector vector, top_k integer, score_threshold real, filter jsonb)
RETURNS TABLE (id text, score real, "row" jsonb) AS $$
    CLUSTER 'genome_cluster'; RUN ON ALL; TARGET genome.search;
$$ LANGUAGE plproxy;

-- After a routed call failed: the nodes (node_name, else all) that do not answer, as an ERROR
-- naming them; nothing when all answer (the caller then re-raises the node's own error).
CREATE FUNCTION _raise_if_unreachable(node_name text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE n genome_cluster.nodes; down text[] := '{}'; why text;
BEGIN
    FOR n IN SELECT * FROM genome_cluster.nodes d WHERE node_name IS NULL OR d.name = node_name ORDER BY d.position LOOP
        BEGIN
            PERFORM genome_cluster._ping(n.position);
        EXCEPTION WHEN OTHERS THEN
            down := down || format('%s (%s:%s)', n.name, n.host, n.port);
            why := coalesce(why, SQLERRM);
        END;
    END LOOP;
    IF cardinality(down) > 0 THEN
        RAISE EXCEPTION 'pg_genome: data % % did not answer', CASE WHEN cardinality(down) > 1 THEN 'nodes' ELSE 'node' END,
                        array_to_string(down, ', ')
            USING ERRCODE = '08006', DETAIL = why;
    END IF;
END $$;

-- After a per-node step of a periodic job failed: true, with a WARNING naming the node, when
-- the node does not answer (the job goes on; the step is done next time); false when it answers
-- (the caller re-raises the node's own error).
CREATE FUNCTION _passed_over(node_name text, next_time text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM genome_cluster._raise_if_unreachable(node_name);
    RETURN false;
EXCEPTION WHEN SQLSTATE '08006' THEN
    RAISE WARNING '%', SQLERRM USING DETAIL = next_time;
    RETURN true;
END $$;

CREATE FUNCTION cluster_pet(pet_id text, media text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN genome_cluster._cluster_pet(pet_id, media);
EXCEPTION WHEN OTHERS THEN
    PERFORM genome_cluster._raise_if_unreachable((genome_cluster.node_of(pet_id)).name);
    RAISE;
END $$;
COMMENT ON FUNCTION genome_cluster.cluster_pet IS 'genome.cluster_pet on the data node holding the pet';

CREATE FUNCTION select_heroes(pet_id text, n integer, media text, w_quality double precision,
                              w_centrality double precision, w_recency double precision, w_pose double precision)
RETURNS TABLE (cluster_id bigint, rank integer, image_id text, score double precision, quality real,
               centrality double precision, recency_days double precision, pose real, taken_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY SELECT * FROM genome_cluster._select_heroes(pet_id, n, media, w_quality, w_centrality, w_recency, w_pose);
EXCEPTION WHEN OTHERS THEN
    PERFORM genome_cluster._raise_if_unreachable((genome_cluster.node_of(pet_id)).name);
    RAISE;
END $$;
COMMENT ON FUNCTION genome_cluster.select_heroes IS 'genome.select_heroes on the data node holding the pet';

CREATE FUNCTION pet_clusters(pet_id text, media text, n integer) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN genome_cluster._pet_clusters(pet_id, media, n);
EXCEPTION WHEN OTHERS THEN
    PERFORM genome_cluster._raise_if_unreachable((genome_cluster.node_of(pet_id)).name);
    RAISE;
END $$;
COMMENT ON FUNCTION genome_cluster.pet_clusters IS 'genome.pet_clusters on the data node holding the pet';

-- Every node's background pass, summed (the nodes run theirs in parallel).
CREATE FUNCTION cluster_dirty_pets(media text, max_pets integer) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE res jsonb;
BEGIN
    SELECT jsonb_build_object('pets', sum((r ->> 'pets')::bigint), 'errors', sum((r ->> 'errors')::bigint),
                              'skipped_locked', sum((r ->> 'skipped_locked')::bigint),
                              'still_dirty', sum((r ->> 'still_dirty')::bigint), 'ms', max((r ->> 'ms')::numeric),
                              'nodes', count(*))
      INTO res FROM genome_cluster._cluster_dirty_pets(media, max_pets) r;
    RETURN res;
EXCEPTION WHEN OTHERS THEN
    PERFORM genome_cluster._raise_if_unreachable();
    RAISE;
END $$;
COMMENT ON FUNCTION genome_cluster.cluster_dirty_pets IS 'genome.cluster_dirty_pets on every data node, totals';

-- Search fans out to every node and keeps the best top_k of their answers: each node returns
-- its own best top_k, so the merge is the search over the union of the nodes' rows. A node that
-- does not answer fails the search with an ERROR naming it (never a silently partial result).
CREATE FUNCTION search(collection text, query text, top_k integer, score_threshold real, filter jsonb)
RETURNS TABLE (id text, score real, "row" jsonb)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- one hit per id (a shard's rows can be on two nodes for a moment while it moves)
    RETURN QUERY SELECT x.id, x.score, x."row"
                   FROM (SELECT DISTINCT ON (h.id) h.* FROM genome_cluster._search(collection, query, top_k, score_threshold, filter) h
                          ORDER BY h.id, h.score DESC) x
                  ORDER BY x.score DESC, x.id LIMIT top_k;
EXCEPTION WHEN OTHERS THEN
    PERFORM genome_cluster._raise_if_unreachable();
    RAISE;
END $$;
COMMENT ON FUNCTION genome_cluster.search(text, text, integer, real, jsonb) IS 'genome.search on every data node, the best top_k of all';

CREATE FUNCTION search(collection text, query_vector vector, top_k integer, score_threshold real, filter jsonb)
RETURNS TABLE (id text, score real, "row" jsonb)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- one hit per id (a shard's rows can be on two nodes for a moment while it moves)
    RETURN QUERY SELECT x.id, x.score, x."row"
                   FROM (SELECT DISTINCT ON (h.id) h.* FROM genome_cluster._search(collection, query_vector, top_k, score_threshold, filter) h
                          ORDER BY h.id, h.score DESC) x
                  ORDER BY x.score DESC, x.id LIMIT top_k;
EXCEPTION WHEN OTHERS THEN
    PERFORM genome_cluster._raise_if_unreachable();
    RAISE;
END $$;
COMMENT ON FUNCTION genome_cluster.search(text, vector, integer, real, jsonb) IS 'genome.search (query vector) on every data node, the best top_k of all';

-- Every node: where it is, its shards, and its genome.health() or why it did not answer.
CREATE FUNCTION nodes_health() RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE n genome_cluster.nodes; out jsonb := '[]'; h jsonb; err text; t0 timestamptz;
BEGIN
    FOR n IN SELECT * FROM genome_cluster.nodes ORDER BY position LOOP
        h := NULL; err := NULL; t0 := clock_timestamp();
        BEGIN
            h := genome_cluster._health(n.position);
        EXCEPTION WHEN OTHERS THEN
            err := SQLERRM;
        END;
        out := out || jsonb_build_object('node', n.name, 'host', n.host, 'port', n.port, 'dbname', n.dbname,
            'shards', (SELECT count(*) FROM genome_cluster.shards s WHERE s.node = n.name),
            'answered', err IS NULL, 'error', err,
            'ms', round(extract(epoch FROM clock_timestamp() - t0) * 1000::numeric, 1), 'health', h,
            -- its subscription to the reference data (NULL before genome_cluster.publish)
            'reference', (SELECT to_jsonb(r) - 'node' FROM genome_cluster.replication() r
                           WHERE r.node = n.name AND genome._publishes_reference()));
    END LOOP;
    RETURN out;
END $$;
COMMENT ON FUNCTION genome_cluster.nodes_health IS 'each data node''s genome.health(), or why it did not answer';

-- Collections. Rows live on the data nodes, each node's rows in a collection registered there
-- under the same name (genome.register_collection on every node); embedding, the queue and the
-- 10-minute assignment run on each node. The weekly full classification runs on the
-- coordinator (genome.full_classify, as on one node): the nodes embed their missing rows, the
-- rows to cluster come to the coordinator (all of them up to genome.classify_sample_rows, else
-- every k-th row of each node), the coordinator clusters them and keeps the families with
-- their stable ids, and every node takes the families and the rows' families and places its
-- other rows by nearest family (genome._install_families), as one node does outside its
-- sample. Family ids are the coordinator's (from 10^12 up, apart from the nodes' own).

-- The coordinator's side of a collection: a table of the rows its full runs cluster (id, text,
-- and the embedding and family columns genome.register_collection adds), registered under the
-- collection's name with the same model as on the nodes.
-- A collection's model and its checksum on a node ('name@version sha256'), NULL when the
-- collection is not registered there.
CREATE FUNCTION _collection_model_on(part integer, collection text) RETURNS text AS $$
    CLUSTER 'genome_cluster'; RUN ON part;
    SELECT c.model || ' ' || coalesce(m.sha256, '?') FROM genome.collections c
      LEFT JOIN genome.models m ON m.name || '@' || m.version = c.model WHERE c.name = collection;
$$ LANGUAGE plproxy;

CREATE FUNCTION distribute_collection(name text, id_type regtype, model text DEFAULT NULL)
RETURNS genome_cluster.collections
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE rel regclass; r genome_cluster.collections; here text; there text; n genome_cluster.nodes;
BEGIN
    -- family ids apart from any node's own
    PERFORM genome._sequence_at_least(pg_get_serial_sequence('genome.families', 'id')::regclass, 1000000000000);
    EXECUTE format('CREATE TABLE genome_cluster.%I (id %s PRIMARY KEY, body text)', left(name, 50) || '_rows', id_type);
    rel := format('genome_cluster.%I', left(name, 50) || '_rows')::regclass;
    PERFORM genome.register_collection(name, rel, 'id', 'body', model => model);
    -- the coordinator clusters the nodes' vectors and embeds search queries: with their model
    SELECT c.model || ' ' || coalesce(m.sha256, '?') INTO here FROM genome.collections c
      LEFT JOIN genome.models m ON m.name || '@' || m.version = c.model WHERE c.name = distribute_collection.name;
    FOR n IN SELECT * FROM genome_cluster.nodes ORDER BY position LOOP
        BEGIN
            there := genome_cluster._collection_model_on(n.position, name);
        EXCEPTION WHEN OTHERS THEN
            PERFORM genome_cluster._raise_if_unreachable(n.name);
            RAISE;
        END;
        IF there IS NULL THEN
            RAISE EXCEPTION 'pg_genome: collection "%" is not registered on data node %', name, n.name USING ERRCODE = '42704',
                  HINT = 'register it on every data node (genome.register_collection) first';
        ELSIF there <> here THEN
            RAISE EXCEPTION 'pg_genome: collection "%" embeds with another model on data node % (%) than here (%)', name, n.name, there, here
                USING ERRCODE = '22023', HINT = 'give the coordinator the nodes'' model (the same name, version and bytes), or replicate the registry (genome_cluster.publish)';
        END IF;
    END LOOP;
    INSERT INTO genome_cluster.collections VALUES (name, rel, format_type(id_type, NULL)) RETURNING * INTO r;
    RETURN r;
END $$;
COMMENT ON FUNCTION genome_cluster.distribute_collection IS 'make a collection registered on every data node one the coordinator classifies (genome.full_classify) and assigns (genome.assign_family)';

CREATE FUNCTION _embed_missing_all(collection text) RETURNS SETOF bigint AS $$
    CLUSTER 'genome_cluster'; RUN ON ALL; TARGET genome._embed_missing;
$$ LANGUAGE plproxy;

CREATE FUNCTION _embedded_counts(collection text) RETURNS SETOF bigint AS $$
    CLUSTER 'genome_cluster'; RUN ON ALL; TARGET genome._embedded_count;
$$ LANGUAGE plproxy;

CREATE FUNCTION _classify_rows(collection text, stride integer) RETURNS TABLE (id text, body text, embedding vector) AS $$
    CLUSTER 'genome_cluster'; RUN ON ALL; TARGET genome._classify_rows;
$$ LANGUAGE plproxy;

CREATE FUNCTION _install_families(collection text, family_ids bigint[], labels text[], centroids vector[], thresholds real[],
                                  unclustered_id bigint, row_ids text[], row_families bigint[]) RETURNS SETOF jsonb AS $$
    CLUSTER 'genome_cluster'; RUN ON ALL; TARGET genome._install_families;
$$ LANGUAGE plproxy;

CREATE FUNCTION _assign_family(collection text, batch_size integer, min_pending integer, threshold real)
RETURNS TABLE (processed bigint, assigned bigint, unclustered bigint) AS $$
    CLUSTER 'genome_cluster'; RUN ON ALL; TARGET genome.assign_family;
$$ LANGUAGE plproxy;

-- A full run's first step (src/cluster.rs): the nodes embed (full_classify), then the rows to
-- cluster replace the coordinator's table of them, in the app's id order. Returns how many rows
-- the nodes hold with an embedding (the run scales its sizes to them when it clusters a sample).
CREATE FUNCTION _gather(collection text, embed boolean) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE r genome_cluster.collections; total bigint; cap bigint := current_setting('genome.classify_sample_rows')::bigint;
        stride integer := 1; n bigint;
BEGIN
    SELECT * INTO r FROM genome_cluster.collections c WHERE c.name = collection;
    IF embed THEN
        PERFORM sum(x) FROM genome_cluster._embed_missing_all(collection) x;
    END IF;
    SELECT sum(x) INTO total FROM genome_cluster._embedded_counts(collection) x;
    IF cap > 0 AND total > cap THEN
        -- each node gives every stride-th of its rows: at most cap in all
        stride := ceil(total::numeric / greatest(cap - (SELECT count(*) FROM genome_cluster.nodes), 1))::integer;
    END IF;
    EXECUTE format('DELETE FROM %s', r.rows_table);
    EXECUTE format('INSERT INTO %s (id, body, embedding) SELECT x.id::%s, x.body, x.embedding FROM genome_cluster._classify_rows($1, $2) x',
                   r.rows_table, r.id_type) USING collection, stride;
    GET DIAGNOSTICS n = ROW_COUNT;
    RAISE NOTICE 'pg_genome: full run "%": % rows of % on % data nodes to cluster', collection, n, total,
        (SELECT count(*) FROM genome_cluster.nodes);
    RETURN total;
EXCEPTION WHEN OTHERS THEN
    PERFORM genome_cluster._raise_if_unreachable();
    RAISE;
END $$;

-- A full run's last step (src/cluster.rs): the live families, Unclustered's id and the family
-- of every row clustered go to every node.
CREATE FUNCTION _push_families(collection text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE r genome_cluster.collections; fam_col name; unclustered bigint; row_ids text[]; row_fams bigint[]; res jsonb;
BEGIN
    SELECT * INTO r FROM genome_cluster.collections c WHERE c.name = collection;
    SELECT c.family_column INTO fam_col FROM genome.collections c WHERE c.name = collection;
    SELECT f.id INTO unclustered FROM genome.families f WHERE f.collection = _push_families.collection AND f.is_unclustered;
    EXECUTE format('SELECT array_agg(t.id::text ORDER BY t.id), array_agg(t.%I ORDER BY t.id) FROM %s t', fam_col, r.rows_table)
       INTO row_ids, row_fams;
    -- the centroids' array type is read from the column (pgvector's schema is not on this path)
    SELECT jsonb_agg(x) INTO res
      FROM (SELECT coalesce(array_agg(f.id ORDER BY f.id), '{}') AS ids, coalesce(array_agg(f.label ORDER BY f.id), '{}') AS labels,
                   coalesce(array_agg(f.centroid ORDER BY f.id), '{}') AS cents, coalesce(array_agg(f.threshold ORDER BY f.id), '{}') AS ths
              FROM genome.families f
             WHERE f.collection = _push_families.collection AND NOT f.is_unclustered AND f.retired_at IS NULL) a
     CROSS JOIN LATERAL genome_cluster._install_families(collection, a.ids, a.labels, a.cents, a.ths, unclustered,
                                                         coalesce(row_ids, '{}'), coalesce(row_fams, '{}')) x;
    RETURN res;
EXCEPTION WHEN OTHERS THEN
    PERFORM genome_cluster._raise_if_unreachable();
    RAISE;
END $$;

-- The 10-minute job on a coordinator: every node assigns its own pending rows; totals.
CREATE FUNCTION assign_family(collection text, batch_size integer, min_pending integer, threshold real)
RETURNS TABLE (processed bigint, assigned bigint, unclustered bigint)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY SELECT coalesce(sum(a.processed), 0)::bigint, coalesce(sum(a.assigned), 0)::bigint, coalesce(sum(a.unclustered), 0)::bigint
                   FROM genome_cluster._assign_family(collection, batch_size, min_pending, threshold) a;
EXCEPTION WHEN OTHERS THEN
    PERFORM genome_cluster._raise_if_unreachable();
    RAISE;
END $$;
COMMENT ON FUNCTION genome_cluster.assign_family IS 'genome.assign_family on every data node, totals';

-- Reference data: the model registry and the ranking catalogs, written on the coordinator and
-- replicated to every data node by PostgreSQL's logical replication (publication
-- genome_reference here, a subscription genome_reference_<node> on each node). Any node then
-- embeds with the same models, classifies sequences with the same classifiers and ranks with
-- the same catalog, features and rankers; rankings and outcomes stay in the log of the node that
-- served them and come back here for training (gather_outcomes). README "Several nodes".

-- pg_genome's replicated tables, then each ranking catalog's app tables (which must exist, with
-- the same names and owner, on every node; logical replication copies rows, not DDL).
CREATE FUNCTION reference_tables() RETURNS TABLE (rel regclass, kind text)
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT r.rel, 'pg_genome' FROM unnest(ARRAY['genome.models', 'genome.catalogs', 'genome.capability_features',
                                               'genome.tool_features', 'genome.rankers', 'genome.ranker_memory']::regclass[]) r(rel)
    UNION ALL
    SELECT t.rel, 'catalog ' || string_agg(c.name, ', ' ORDER BY c.name)
      FROM genome.catalogs c CROSS JOIN LATERAL unnest(ARRAY[c.relid, c.links, c.tools]) t(rel)
     WHERE t.rel IS NOT NULL
     GROUP BY t.rel
$$;
COMMENT ON FUNCTION genome_cluster.reference_tables IS 'the tables the coordinator replicates to every data node: pg_genome''s model registry and ranking state, and the ranking catalogs'' app tables';

CREATE FUNCTION _missing_on(part integer, rels text[], owners text[], roles text[]) RETURNS text[] AS $$
    CLUSTER 'genome_cluster'; RUN ON part;
    SELECT coalesce(array_agg(x ORDER BY x), '{}') FROM (
        SELECT r.rel || CASE WHEN c.oid IS NULL THEN ' (no such table)'
                             WHEN pg_get_userbyid(c.relowner) <> r.owner THEN ' (owned by ' || pg_get_userbyid(c.relowner) || ')'
                             ELSE ' (no primary key)' END AS x
          FROM unnest(rels, owners) r(rel, owner) LEFT JOIN pg_class c ON c.oid = to_regclass(r.rel)
         WHERE c.oid IS NULL OR pg_get_userbyid(c.relowner) <> r.owner
            OR c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))
        UNION ALL
        SELECT 'role ' || g.role || ' (no such role)' FROM unnest(roles) g(role)
         WHERE NOT EXISTS (SELECT 1 FROM pg_roles o WHERE o.rolname = g.role)) m;
$$ LANGUAGE plproxy;

-- A replicated catalog row names its app tables (regclass travels by name) and its registrant
-- (regrole, by name): every node must have those tables, owned by the same role and with a
-- primary key, and the role, or the node's subscription would stop at that row. Checked by
-- publish() and by register_catalog on a coordinator that publishes.
CREATE FUNCTION _check_on_nodes(rels regclass[], roles text[]) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE n genome_cluster.nodes; names text[]; owners text[]; missing text[]; problems text[] := '{}';
BEGIN
    SELECT coalesce(array_agg(r::text ORDER BY r::text), '{}'), coalesce(array_agg(pg_get_userbyid(c.relowner) ORDER BY r::text), '{}')
      INTO names, owners
      FROM unnest(rels) r JOIN pg_class c ON c.oid = r WHERE r IS NOT NULL;
    FOR n IN SELECT * FROM genome_cluster.nodes ORDER BY position LOOP
        BEGIN
            missing := genome_cluster._missing_on(n.position, names, owners, coalesce(roles, '{}'));
        EXCEPTION WHEN OTHERS THEN
            PERFORM genome_cluster._raise_if_unreachable(n.name);
            RAISE;
        END;
        IF cardinality(missing) > 0 THEN
            problems := problems || format('%s: %s', n.name, array_to_string(missing, ', '));
        END IF;
    END LOOP;
    IF cardinality(problems) > 0 THEN
        RAISE EXCEPTION 'pg_genome: the data nodes need the catalog''s tables (same owner, a primary key) and roles before its rows are replicated: %',
                        array_to_string(problems, '; ') USING ERRCODE = '42P01',
              HINT = 'create them on every data node (as on the coordinator), then try again';
    END IF;
END $$;

-- The publication genome_reference with every reference table (made, or given the tables added
-- since). A table must identify its rows for replicated updates and deletes: pg_genome's have
-- primary keys (ranker_memory is given REPLICA IDENTITY FULL); an app table without one is
-- refused rather than have the app's UPDATEs fail. A table added makes every node not ready
-- until replicate() finds it applied there (the coordinator ranks meanwhile). Returns the
-- tables added.
CREATE FUNCTION publish() RETURNS SETOF regclass
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE t record;
BEGIN
    IF current_setting('wal_level') <> 'logical' THEN
        RAISE EXCEPTION 'pg_genome: the coordinator replicates its registry by logical replication, which needs wal_level = logical (it is %)',
                        current_setting('wal_level') USING ERRCODE = '55000',
              HINT = 'set wal_level = logical in postgresql.conf and restart the coordinator';
    END IF;
    PERFORM genome_cluster._check_on_nodes(ARRAY(SELECT r.rel FROM genome_cluster.reference_tables() r WHERE r.kind <> 'pg_genome'),
                                           ARRAY(SELECT DISTINCT c.registered_by::text FROM genome.catalogs c WHERE c.registered_by IS NOT NULL));
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'genome_reference') THEN
        CREATE PUBLICATION genome_reference;
    END IF;
    ALTER TABLE genome.ranker_memory REPLICA IDENTITY FULL;
    FOR t IN SELECT r.rel, r.kind, c.relreplident,
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = r.rel AND i.indisprimary) AS has_pk
               FROM genome_cluster.reference_tables() r JOIN pg_class c ON c.oid = r.rel
              WHERE NOT EXISTS (SELECT 1 FROM pg_publication_rel p JOIN pg_publication b ON b.oid = p.prpubid
                                 WHERE b.pubname = 'genome_reference' AND p.prrelid = r.rel) LOOP
        IF t.relreplident = 'n' OR (t.relreplident = 'd' AND NOT t.has_pk) THEN
            RAISE EXCEPTION 'pg_genome: table % (%) has no primary key: replicated to the data nodes, its updates and deletes could not be',
                            t.rel, t.kind USING ERRCODE = '55000',
                  HINT = format('give it a primary key, or ALTER TABLE %s REPLICA IDENTITY FULL', t.rel);
        END IF;
        EXECUTE format('ALTER PUBLICATION genome_reference ADD TABLE %s', t.rel);
        UPDATE genome_cluster.nodes SET ready_at = NULL;
        RETURN NEXT t.rel;
    END LOOP;
END $$;
COMMENT ON FUNCTION genome_cluster.publish IS 'publish the reference tables (model registry, ranking catalogs and their app tables) for the data nodes'' subscriptions; returns the tables added';

-- Each node's subscription as the coordinator sees it: its replication slot (named after the
-- subscription, in this database) and how far it has confirmed the coordinator's WAL.
CREATE FUNCTION replication() RETURNS TABLE (node text, slot name, active boolean, confirmed pg_lsn, lag_bytes numeric, ready_at timestamptz)
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT d.name, s.slot_name, coalesce(s.active, false), s.confirmed_flush_lsn,
           pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn), d.ready_at
      FROM genome_cluster.nodes d
      LEFT JOIN pg_replication_slots s ON s.slot_name = 'genome_reference_' || d.name AND s.database = current_database()
     ORDER BY d.position
$$;
COMMENT ON FUNCTION genome_cluster.replication IS 'each data node''s subscription to the reference data: its slot, whether it is connected, its lag, and since when it is ready to rank';

CREATE FUNCTION _published() RETURNS text[]
LANGUAGE sql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY(SELECT format('%I.%I', p.schemaname, p.tablename) FROM pg_publication_tables p
                  WHERE p.pubname = 'genome_reference' ORDER BY 1)
$$;

CREATE FUNCTION _replica_prepare(part integer, tables text[]) RETURNS jsonb AS $$
    CLUSTER 'genome_cluster'; RUN ON part; SELECT genome._replica_prepare(part, tables);
$$ LANGUAGE plproxy;

-- Wait until every node has applied the reference data committed here before the call (its slot
-- past the WAL flushed at the call, every published table subscribed and copied, every model
-- file there), then ready each node to serve (genome._replica_prepare: its ranking log ids in a
-- range of its own, the catalogs' HNSW indexes) and mark the nodes ready. ERROR 57014 after
-- timeout_s seconds, naming what each node lacks (no node is marked then). Call it in a transaction of its own: it waits for what
-- was committed.
CREATE PROCEDURE replicate(timeout_s integer DEFAULT 60)
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE target pg_lsn; deadline timestamptz := clock_timestamp() + make_interval(secs => coalesce(timeout_s, 60));
        tables text[]; behind text[]; n genome_cluster.nodes; state jsonb; why text;
BEGIN
    IF NOT genome._publishes_reference() THEN
        RAISE EXCEPTION 'pg_genome: nothing is published for the data nodes' USING ERRCODE = '55000',
              HINT = 'SELECT genome_cluster.publish(), then subscribe each node (README "Several nodes")';
    END IF;
    IF txid_current_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'pg_genome: genome_cluster.replicate() waits for committed writes: call it outside the transaction that wrote'
            USING ERRCODE = '25001';
    END IF;
    -- the WAL flushed so far holds every change committed before the call (a commit flushes;
    -- an idle walsender reports the flush point to its node, which confirms it)
    target := pg_current_wal_flush_lsn();
    tables := genome_cluster._published();
    LOOP
        SELECT array_agg(format('%s (%s)', r.node, CASE WHEN r.slot IS NULL THEN 'not subscribed' ELSE 'applying' END) ORDER BY r.node)
          INTO behind FROM genome_cluster.replication() r
         WHERE r.confirmed IS NULL OR r.confirmed < target;
        IF behind IS NULL THEN
            FOR n IN SELECT * FROM genome_cluster.nodes ORDER BY position LOOP
                BEGIN
                    state := genome_cluster._replica_prepare(n.position, tables);
                EXCEPTION WHEN OTHERS THEN
                    PERFORM genome_cluster._raise_if_unreachable(n.name);
                    RAISE;
                END;
                IF NOT (state->>'ready')::boolean THEN
                    behind := coalesce(behind, '{}') || format('%s (%s)', n.name, state - 'ready');
                END IF;
            END LOOP;
            IF behind IS NULL AND tables IS DISTINCT FROM genome_cluster._published() THEN
                -- publish() added a table meanwhile: look again
                tables := genome_cluster._published();
                behind := ARRAY['tables published meanwhile'];
            END IF;
            IF behind IS NULL THEN
                -- written only now: a transaction holding an id while it waits would hold up the
                -- nodes' table copies (a new replication slot waits for running transactions)
                UPDATE genome_cluster.nodes d SET ready_at = coalesce(d.ready_at, now());
                EXIT;
            END IF;
        END IF;
        IF clock_timestamp() > deadline THEN
            RAISE EXCEPTION 'pg_genome: data node(s) have not applied the reference data after % s: %', coalesce(timeout_s, 60),
                            array_to_string(behind, ', ')
                USING ERRCODE = '57014',
                      HINT = 'genome_cluster.replication() shows each node''s subscription; a node subscribes with CREATE SUBSCRIPTION genome_reference_<node> ... PUBLICATION genome_reference, and takes tables published later with ALTER SUBSCRIPTION ... REFRESH PUBLICATION';
        END IF;
        PERFORM pg_sleep(0.2);
    END LOOP;
END $$;
COMMENT ON PROCEDURE genome_cluster.replicate IS 'wait until every data node has the coordinator''s reference data (models, catalogs, rankers), then ready it to serve rankings';

-- Whether rank_capabilities runs on the data nodes for this catalog: the registry, the catalog's
-- state and its app tables are published, and a node is ready (src/cluster.rs; otherwise the
-- coordinator, which holds all of it, ranks).
CREATE FUNCTION _ranked_on_nodes(catalog text) RETURNS boolean
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM genome_cluster.nodes d WHERE d.ready_at IS NOT NULL)
       AND coalesce(bool_and(EXISTS (SELECT 1 FROM pg_publication_rel p JOIN pg_publication b ON b.oid = p.prpubid
                                      WHERE b.pubname = 'genome_reference' AND p.prrelid = t.rel)), false)
      FROM genome.catalogs c
     CROSS JOIN LATERAL unnest(ARRAY['genome.models'::regclass, 'genome.catalogs', 'genome.capability_features',
                                     'genome.tool_features', 'genome.rankers', 'genome.ranker_memory', c.relid, c.links, c.tools]) t(rel)
     WHERE c.name = catalog AND t.rel IS NOT NULL
$$;

CREATE FUNCTION _rank_on(part integer, intent text, context_tools text[], top_k integer, catalog text, min_score real,
                         filter jsonb, session_id text)
RETURNS TABLE (rank integer, capability text, score real, confidence real, model_version text, ranking_id bigint) AS $$
    CLUSTER 'genome_cluster'; RUN ON part;
    SELECT * FROM genome.rank_capabilities(intent, context_tools, top_k, catalog, min_score, filter, session_id);
$$ LANGUAGE plproxy;

-- rank_capabilities on a ready node: the session's node (by its id), else one drawn at random;
-- the next one when it does not answer (a node that did not answer is passed over by this
-- session for 30 s, unless none other is left). An ERROR from a node that answers (bad input)
-- is the caller's.
CREATE FUNCTION rank_capabilities(intent text, context_tools text[], top_k integer, catalog text, min_score real,
                                  filter jsonb, session_id text)
RETURNS TABLE (rank integer, capability text, score real, confidence real, model_version text, ranking_id bigint)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE ns genome_cluster.nodes[]; k integer; first integer; n genome_cluster.nodes; down_key text; tried text[] := '{}';
BEGIN
    ns := ARRAY(SELECT d FROM genome_cluster.nodes d WHERE d.ready_at IS NOT NULL ORDER BY d.position);
    k := cardinality(ns);
    IF k = 0 THEN
        RAISE EXCEPTION 'pg_genome: no data node is ready to rank' USING ERRCODE = '55000',
              HINT = 'CALL genome_cluster.replicate()';
    END IF;
    first := CASE WHEN session_id IS NOT NULL THEN abs(hashtext(session_id)::bigint) % k
                  ELSE floor(random() * k)::integer END;
    -- first the nodes this session has not seen down in the last 30 s, then the others
    FOR pass IN 1 .. 2 LOOP
        FOR i IN 0 .. k - 1 LOOP
            n := ns[(first + i) % k + 1];
            down_key := 'genome_cluster.down_' || n.name;
            CONTINUE WHEN n.name = ANY (tried)
                       OR (pass = 1 AND coalesce(nullif(current_setting(down_key, true), ''), '-infinity')::timestamptz > now() - interval '30 s');
            tried := tried || n.name;
            BEGIN
                RETURN QUERY SELECT * FROM genome_cluster._rank_on(n.position, intent, context_tools, top_k, catalog, min_score, filter, session_id);
                PERFORM set_config(down_key, '', false);
                RETURN;
            EXCEPTION WHEN OTHERS THEN
                BEGIN
                    PERFORM genome_cluster._ping(n.position);
                EXCEPTION WHEN OTHERS THEN
                    PERFORM set_config(down_key, clock_timestamp()::text, false);
                    CONTINUE;   -- down: the next node ranks
                END;
                RAISE;
            END;
        END LOOP;
    END LOOP;
    PERFORM genome_cluster._raise_if_unreachable();
    RAISE EXCEPTION 'pg_genome: no data node answered' USING ERRCODE = '08006';
END $$;
COMMENT ON FUNCTION genome_cluster.rank_capabilities IS 'genome.rank_capabilities on a data node that answers (the session''s, else any), the catalog replicated to every node';

CREATE FUNCTION _record_outcome(part integer, ranking_id bigint, capability text, outcome text, execution_ms real,
                                rating integer, session_id text) RETURNS bigint AS $$
    CLUSTER 'genome_cluster'; RUN ON part;
    SELECT genome.record_outcome(ranking_id, capability, outcome, execution_ms, rating, session_id);
$$ LANGUAGE plproxy;

-- An outcome goes to the node that logged its ranking: node ids are ranges of 2^40 per position
-- (genome._replica_prepare), so the ranking id names the node.
CREATE FUNCTION record_outcome(ranking_id bigint, capability text, outcome text, execution_ms real, rating integer, session_id text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE n genome_cluster.nodes;
BEGIN
    SELECT * INTO n FROM genome_cluster.nodes d WHERE d.position = (ranking_id >> 40) - 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pg_genome: ranking % was not logged by a data node of this coordinator', ranking_id USING ERRCODE = '42704';
    END IF;
    RETURN genome_cluster._record_outcome(n.position, ranking_id, capability, outcome, execution_ms, rating, session_id);
EXCEPTION WHEN OTHERS THEN
    IF n.name IS NOT NULL THEN
        PERFORM genome_cluster._raise_if_unreachable(n.name);
    END IF;
    RAISE;
END $$;
COMMENT ON FUNCTION genome_cluster.record_outcome IS 'genome.record_outcome on the data node that logged the ranking';

-- The rankings and outcomes of a catalog logged on the data nodes since the last gathering,
-- copied into this database's log (their ids are the nodes' and never collide), so that
-- train_ranker, refresh_catalog's usage statistics and ranking_monitor see every node's. Rows
-- past the last one gathered, and again those of the last hour (a row committed late, after a
-- higher id was gathered, is not missed); never rows older than the catalog's registration or
-- than genome.experience_retention_days. A node that does not answer is passed over with a
-- WARNING (its rows come next time). Needs a superuser, as postgres_fdw's mapping does: the
-- log's policies let a role write only rows of its own, and these were written by the roles
-- that ranked. Returns the outcomes copied.
CREATE FUNCTION gather_outcomes(catalog text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE n genome_cluster.nodes; lo bigint; hi bigint; since timestamptz; hwm bigint; got bigint; total bigint := 0; t text; sel text;
        keep integer := current_setting('genome.experience_retention_days')::int;
BEGIN
    SELECT c.created_at INTO since FROM genome.catalogs c WHERE c.name = gather_outcomes.catalog;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pg_genome: catalog "%" is not registered', catalog USING ERRCODE = '42704';
    END IF;
    IF keep > 0 THEN
        since := greatest(since, now() - make_interval(days => keep));
    END IF;
    FOR n IN SELECT * FROM genome_cluster.nodes ORDER BY position LOOP
        lo := (n.position::bigint + 1) << 40;
        hi := lo + (1::bigint << 40);
        BEGIN
            -- rankings first: an outcome refers to its ranking
            FOREACH t IN ARRAY ARRAY['rankings', 'experiences'] LOOP
                EXECUTE format('SELECT coalesce(max(k.id), 0) FROM genome.%I k WHERE k.catalog = $1 AND k.id >= $2 AND k.id < $3', t)
                   INTO hwm USING catalog, lo, hi;
                -- an outcome whose ranking is not here (pruned, or older than what is gathered)
                -- keeps no ranking id, as the foreign key's ON DELETE SET NULL would leave it
                SELECT string_agg(CASE WHEN a.attname = 'ranking_id'
                                       THEN '(SELECT k.id FROM genome.rankings k WHERE k.catalog = r.catalog AND k.id = r.ranking_id)'
                                       ELSE 'r.' || quote_ident(a.attname) END, ', ' ORDER BY a.attnum)
                  INTO sel FROM pg_attribute a
                 WHERE a.attrelid = format('genome.%I', t)::regclass AND a.attnum > 0 AND NOT a.attisdropped;
                -- parameters, not expressions, so that postgres_fdw filters on the node
                EXECUTE format('INSERT INTO genome.%1$I (%2$s) OVERRIDING SYSTEM VALUE SELECT %4$s FROM %3$s r
                                 WHERE r.catalog = $1 AND r.id >= $2 AND r.id < $3 AND (r.id > $4 OR r.created_at > $5)
                                   AND r.created_at >= $6
                                 ORDER BY r.id ON CONFLICT DO NOTHING',
                               t, genome_cluster._columns(format('genome.%I', t)::regclass),
                               genome_cluster._on_node(format('genome.%I', t)::regclass, n.name), sel)
                    USING catalog, lo, hi, hwm, now() - interval '1 hour', since;
                GET DIAGNOSTICS got = ROW_COUNT;
                IF t = 'experiences' THEN
                    total := total + got;
                END IF;
            END LOOP;
        EXCEPTION WHEN OTHERS THEN
            CONTINUE WHEN genome_cluster._passed_over(n.name, 'its outcomes are gathered next time');
            RAISE;
        END;
    END LOOP;
    RETURN total;
END $$;
COMMENT ON FUNCTION genome_cluster.gather_outcomes IS 'copy a catalog''s rankings and outcomes logged on the data nodes since the last time into the coordinator''s log (train_ranker does it first)';

CREATE FUNCTION _prune_experiences(part integer, catalog text) RETURNS bigint AS $$
    CLUSTER 'genome_cluster'; RUN ON part; SELECT genome.prune_experiences(catalog);
$$ LANGUAGE plproxy;

-- genome.prune_experiences on a coordinator that publishes prunes every node's log too (each
-- keeps the rankings it served): a node that does not answer is passed over with a WARNING.
CREATE FUNCTION prune_experiences(catalog text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE n genome_cluster.nodes; total bigint := 0;
BEGIN
    FOR n IN SELECT * FROM genome_cluster.nodes ORDER BY position LOOP
        BEGIN
            total := total + genome_cluster._prune_experiences(n.position, catalog);
        EXCEPTION WHEN OTHERS THEN
            CONTINUE WHEN genome_cluster._passed_over(n.name, 'its log is pruned next time');
            RAISE;
        END;
    END LOOP;
    RETURN total;
END $$;
COMMENT ON FUNCTION genome_cluster.prune_experiences IS 'genome.prune_experiences on every data node (called by it on a coordinator that publishes)';

-- Privileges: the routed calls are for pg_genome's roles; the node list is the administrator's.
GRANT USAGE ON SCHEMA genome_cluster TO genome_user, genome_monitor;
GRANT SELECT ON nodes, shards, collections TO genome_user, genome_monitor;
REVOKE EXECUTE ON ALL ROUTINES IN SCHEMA genome_cluster FROM PUBLIC;
GRANT EXECUTE ON FUNCTION shard_count(), shard_of(text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION node_of(text), _partition(text), _ping(integer), _raise_if_unreachable(text),
    _cluster_pet(text, text), cluster_pet(text, text),
    _select_heroes(text, integer, text, double precision, double precision, double precision, double precision),
    select_heroes(text, integer, text, double precision, double precision, double precision, double precision),
    _pet_clusters(text, text, integer), pet_clusters(text, text, integer),
    _cluster_dirty_pets(text, integer), cluster_dirty_pets(text, integer),
    _search(text, text, integer, real, jsonb), search(text, text, integer, real, jsonb),
    _search(text, vector, integer, real, jsonb), search(text, vector, integer, real, jsonb),
    _embed_missing_all(text), _embedded_counts(text), _classify_rows(text, integer),
    _install_families(text, bigint[], text[], vector[], real[], bigint, text[], bigint[]),
    _assign_family(text, integer, integer, real), assign_family(text, integer, integer, real),
    _gather(text, boolean), _push_families(text), _collection_model_on(integer, text),
    _ranked_on_nodes(text), _rank_on(integer, text, text[], integer, text, real, jsonb, text), _check_on_nodes(regclass[], text[]),
    _missing_on(integer, text[], text[], text[]), _prune_experiences(integer, text), prune_experiences(text), _passed_over(text, text),
    rank_capabilities(text, text[], integer, text, real, jsonb, text),
    _record_outcome(integer, bigint, text, text, real, integer, text), record_outcome(bigint, text, text, real, integer, text) TO genome_user;
GRANT EXECUTE ON FUNCTION reference_tables(), replication() TO genome_monitor, genome_user;
GRANT EXECUTE ON FUNCTION _health(integer), nodes_health() TO genome_monitor, genome_user;
