-- Bad input: a clear ERROR with its SQLSTATE, never a crash. err() runs a statement and shows
-- the SQLSTATE and message it raised.
CREATE TABLE regress_t (id int PRIMARY KEY, body text, embedding vector(32), family_id bigint);
SELECT q, err(q) FROM (VALUES
    ($$SELECT genome.embed('x', 'no-such-model')$$),
    ($$SELECT genome.embed('x', 'tiny-bert@9')$$),
    ($$SELECT genome.embed_image('\x00'::bytea, 'efficientnet-lite0')$$),
    ($$SELECT genome.embed_image('x'::bytea, 'tiny-bert')$$),
    ($$SELECT * FROM genome.search('nope', 'x')$$),
    ($$SELECT * FROM genome.full_classify('nope')$$),
    ($$SELECT * FROM genome.assign_family('nope')$$),
    ($$SELECT genome.register_collection('bad name!', 'regress_t', 'id', 'body', model => 'tiny-bert')$$),
    ($$SELECT genome.register_collection('r', 'regress_t', 'nope', 'body', model => 'tiny-bert')$$),
    ($$SELECT genome.register_collection('r', 'regress_t', 'id', 'body', model => 'all-minilm-l6-v2')$$),
    ($$SELECT genome.cluster_pet(1, 'nope')$$),
    ($$SET genome.batchsize = 3$$),
    ($$SET genome.batch_size = 1000$$),
    ($$SELECT genome._lock_key('nope')$$)
) v(q);
SELECT name, model FROM genome.register_collection('r', 'regress_t', 'id', 'body', model => 'tiny-bert');
SELECT q, err(q) FROM (VALUES
    ($$SELECT * FROM genome.search('r', 'x', top_k => 0)$$),
    ($$SELECT * FROM genome.search('r', 'x', score_threshold => 'NaN')$$),
    ($$SELECT * FROM genome.search('r', '[1,2,3]'::vector)$$),
    ($$SELECT * FROM genome.search('r', array_fill(0, ARRAY[32])::vector)$$),
    ($$SELECT * FROM genome.search('r', 'x', filter => '[1]')$$),
    ($$SELECT * FROM genome.search('r', 'x', filter => '{"nope": 1}')$$),
    ($$SELECT * FROM genome.search('r', 'x', filter => '{"body": {"a": 1}}')$$),
    ($$SELECT * FROM genome.full_classify('r', min_cluster_size => 1)$$)
) v(q);
SELECT genome.unregister_collection('r');
DROP TABLE regress_t;
