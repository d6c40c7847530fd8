-- genome.search(): columns, order, threshold, filters, the row payload without the embedding.
-- Vectors made by hand (tiny-bert's dimension, 32): row i points along axis i, a little towards
-- axis 1, so the cosine to axis 1 falls as i grows.
CREATE TABLE regress_docs (id int PRIMARY KEY, body text, tag text, embedding vector(32), family_id bigint);
INSERT INTO regress_docs (id, body, tag, embedding)
SELECT i, 'doc ' || i, CASE WHEN i % 2 = 0 THEN 'even' ELSE 'odd' END,
       (SELECT array_agg(CASE WHEN k = 1 THEN 1.0 WHEN k = i THEN i * 0.5 ELSE 0 END ORDER BY k)
          FROM generate_series(1, 32) k)::vector
  FROM generate_series(2, 9) i;
SELECT name, dimension FROM genome.register_collection('regress_docs', 'regress_docs', 'id', 'body', model => 'tiny-bert');
\df genome.search
SELECT id, round(score::numeric, 4) AS score, "row" FROM genome.search('regress_docs', (SELECT array_agg(CASE WHEN k = 1 THEN 1.0 ELSE 0 END ORDER BY k) FROM generate_series(1, 32) k)::vector, 3, -1);
-- a threshold leaves out the rows under it
SELECT id, round(score::numeric, 4) AS score FROM genome.search('regress_docs', (SELECT array_agg(CASE WHEN k = 1 THEN 1.0 ELSE 0 END ORDER BY k) FROM generate_series(1, 32) k)::vector, 10, 0.3);
-- equality filters: a scalar, an array, a NULL
SELECT id FROM genome.search('regress_docs', (SELECT array_agg(CASE WHEN k = 1 THEN 1.0 ELSE 0 END ORDER BY k) FROM generate_series(1, 32) k)::vector, 3, -1, '{"tag": "odd"}');
SELECT id FROM genome.search('regress_docs', (SELECT array_agg(CASE WHEN k = 1 THEN 1.0 ELSE 0 END ORDER BY k) FROM generate_series(1, 32) k)::vector, 10, -1, '{"id": [4, 7, 99]}');
SELECT count(*) FROM genome.search('regress_docs', (SELECT array_agg(CASE WHEN k = 1 THEN 1.0 ELSE 0 END ORDER BY k) FROM generate_series(1, 32) k)::vector, 10, -1, '{"tag": null}');
-- a NULL query gives no rows
SELECT count(*) FROM genome.search('regress_docs', NULL::vector);
SELECT genome.unregister_collection('regress_docs');
DROP TABLE regress_docs;
