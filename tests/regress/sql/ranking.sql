-- Capability ranking with the tiny test model: the result's shape before training (the fused
-- retrieval, flagged by NULL model_version and confidence), the log, and bad input with SQLSTATEs.
SET client_min_messages = warning;
CREATE TABLE regress_caps (name text PRIMARY KEY, description text NOT NULL);
CREATE TABLE regress_links (capability text NOT NULL, tool text NOT NULL);
INSERT INTO regress_caps VALUES
    ('tar', 'tar: archive files into a tarball and extract them'),
    ('ls', 'ls: list the files of a directory'),
    ('df', 'df: show free disk space of file systems'),
    ('ssh', 'ssh: open a secure shell on a remote host'),
    ('grep', 'grep: search files for lines matching a pattern');
INSERT INTO regress_links VALUES ('tar', 'tar'), ('tar', 'gzip'), ('ls', 'ls'), ('df', 'df'), ('ssh', 'ssh'),
    ('ssh', 'ssh-keygen'), ('grep', 'grep'), ('grep', 'xargs');
SELECT name, model, dimension, feature_version FROM genome.register_catalog('regress', 'regress_caps', 'name', 'description',
    'regress_links', 'capability', 'tool', model => 'tiny-bert');
SELECT genome.refresh_catalog('regress') AS embedded;
SELECT genome.refresh_catalog('regress') AS embedded_again;
SELECT capability, tool_count, cardinality(graph_embedding) AS graph_dims, tools
  FROM genome.capability_features WHERE catalog = 'regress' ORDER BY capability;
SELECT rank, capability, round(score::numeric, 5) AS score, confidence, model_version
  FROM genome.rank_capabilities('extract files from a tarball archive', top_k => 3, catalog => 'regress');
SELECT intent, candidates, model_version FROM genome.rankings WHERE catalog = 'regress' ORDER BY id;
SELECT jsonb_object_keys(genome.ranking_monitor('regress')) AS key ORDER BY 1;
SELECT q, err(q) FROM (VALUES
    ($$SELECT * FROM genome.rank_capabilities('', catalog => 'regress')$$),
    ($$SELECT * FROM genome.rank_capabilities(NULL, catalog => 'regress')$$),
    ($$SELECT * FROM genome.rank_capabilities('x', catalog => 'nope')$$),
    ($$SELECT * FROM genome.rank_capabilities('x', top_k => 0, catalog => 'regress')$$),
    ($$SELECT genome.record_outcome(0, 'tar', 'success')$$),
    ($$SELECT genome.record_outcome((SELECT max(id) FROM genome.rankings), 'tar', 'maybe')$$),
    ($$SELECT * FROM genome.train_ranker('regress')$$),
    ($$SELECT * FROM genome.train_ranker('regress', epochs => 0)$$),
    ($$SELECT genome.rollback_ranker('regress')$$),
    ($$SELECT genome.register_catalog('regress', 'regress_caps', 'name', 'description', 'regress_links', 'capability', 'tool')$$),
    ($$SELECT genome.register_catalog('bad name!', 'regress_caps', 'name', 'description', 'regress_links', 'capability', 'tool')$$),
    ($$SELECT genome.register_catalog('x', 'regress_caps', 'nope', 'description', 'regress_links', 'capability', 'tool')$$)
) v(q);
SELECT genome.unregister_catalog('regress');
