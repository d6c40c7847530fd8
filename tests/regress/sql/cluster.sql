-- Several nodes (pg_genome_cluster) with data nodes that do not answer (ports where nothing
-- listens): the shard map, rebalancing an empty cluster, and the ERRORs of routed calls, naming
-- the nodes. tests/integration/test_cluster.py runs real nodes.
SET client_min_messages = warning;
CREATE EXTENSION pg_genome_cluster CASCADE;
SELECT genome._coordinator() AS coordinator_without_nodes;
-- a key's shard: PostgreSQL's hashtext of its text, low 6 bits
SELECT k, genome_cluster.shard_of(k) AS shard, (pg_catalog.hashtext(k) & 63) AS expected FROM (VALUES ('1'), ('42'), ('pet-7'), ('')) v(k);
SELECT err($$SELECT genome_cluster.node_of('1')$$);
SELECT name, port, position FROM genome_cluster.add_node('r1', '127.0.0.1', 1);
SELECT name, port, position FROM genome_cluster.add_node('r2', '127.0.0.1', 2);
SELECT name, port, position FROM genome_cluster.add_node('r3', '127.0.0.1', 3);
SELECT genome._coordinator() AS coordinator_with_nodes;
SELECT q, err(q) FROM (VALUES
    ($$SELECT genome_cluster.add_node('r1', '127.0.0.1', 4)$$),
    ($$SELECT genome_cluster.add_node('Bad Name', '127.0.0.1', 4)$$),
    ($$SELECT genome_cluster.add_node('r4', '127.0.0.1', 0)$$)
) v(q);
-- the first node holds every shard; even shares with the fewest moves
SELECT node, count(*) FROM genome_cluster.shards GROUP BY node ORDER BY node;
SELECT from_node, to_node, count(*), min(shard), max(shard) FROM genome_cluster.rebalance_plan() GROUP BY 1, 2 ORDER BY 1, 2;
CALL genome_cluster.rebalance();
SELECT node, count(*), min(shard), max(shard) FROM genome_cluster.shards GROUP BY node ORDER BY node;
SELECT count(*) AS moves_left FROM genome_cluster.rebalance_plan();
SELECT (genome_cluster.node_of('1')).name AS node_of_1, (genome_cluster.node_of('42')).name AS node_of_42;
-- PL/Proxy's cluster: one partition per node
SELECT regexp_replace(x, 'p([0-9])=.*port=([0-9]+).*', 'p\1 -> port \2') AS partition
  FROM pg_foreign_server s, unnest(s.srvoptions) x WHERE s.srvname = 'genome_cluster' AND x ~ '^p[0-9]' ORDER BY 1;
-- tables partitioned by shard only
CREATE TABLE regress_plain (id int);
CREATE TABLE regress_sharded (id bigint NOT NULL, body text) PARTITION BY LIST (genome_cluster.shard_of((id)::text));
SELECT err($$SELECT genome_cluster.attach_nodes('regress_plain')$$);
SELECT genome_cluster.attach_nodes('regress_sharded') AS partitions;
SELECT rel, key_expression FROM genome_cluster.distributed_tables();
SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) ~ '^FOR VALUES IN' AS listed
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'regress_sharded'::regclass ORDER BY 1;
-- routed calls to nodes that do not answer: an ERROR naming them (distribute_collection
-- compares the collection's model with each node's)
SELECT genome.register_kmer_featurizer('regress_k4', '1', k => 4) > 0 AS featuriser;
SELECT q, err(q) FROM (VALUES
    ($$SELECT genome.cluster_pet(1)$$),
    ($$SELECT genome.cluster_pet(42, 'photos')$$),
    ($$SELECT * FROM genome.select_heroes(1)$$),
    ($$SELECT genome.pet_clusters(1)$$),
    ($$SELECT genome.cluster_dirty_pets()$$),
    ($$SELECT * FROM genome.search('docs', 'a query')$$),
    ($$SELECT genome_cluster.distribute_collection('ghost', 'bigint', 'regress_k4')$$)
) v(q);
SELECT n ->> 'node' AS node, n ->> 'shards' AS shards, n ->> 'answered' AS answered, n ? 'error' AS has_error
  FROM jsonb_array_elements(genome.health() -> 'nodes') n;
-- reference data: this cluster runs with wal_level = replica, and nothing is published
SELECT q, err(q) FROM (VALUES
    ($$SELECT genome_cluster.publish()$$),
    ($$CALL genome_cluster.replicate(1)$$),
    ($$SELECT genome_cluster.record_outcome(42, 'x', 'success', NULL, NULL, NULL)$$),
    ($$SELECT genome_cluster.record_outcome((9::bigint << 40) + 1, 'x', 'success', NULL, NULL, NULL)$$),
    ($$SELECT * FROM genome_cluster.rank_capabilities('x', NULL, 5, 'nope', NULL, NULL, NULL)$$),
    ($$SELECT genome_cluster.gather_outcomes('nope')$$)
) v(q);
SELECT node, slot, active, ready_at FROM genome_cluster.replication();
SELECT rel, kind FROM genome_cluster.reference_tables();
DROP TABLE regress_sharded, regress_plain;
DELETE FROM genome.models WHERE name = 'regress_k4';
DROP EXTENSION pg_genome_cluster CASCADE;
SELECT genome._coordinator() AS coordinator_after_drop;
