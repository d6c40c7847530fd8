-- pg_genome 0.7.0 -> 0.7.1: a ranker remembers the texts of its intents as well as their
-- embeddings (src/ranking.sql), for the lexical memory features (BM25 over each capability's
-- text expanded with its remembered intents). Rankers trained by 0.7.0 have no texts and keep
-- serving with the features they were trained on.

-- Tables

ALTER TABLE ranker_memory ADD COLUMN intent text;
COMMENT ON TABLE ranker_memory IS 'pg_genome ranker memory: intents (embedding and text) of the successful experiences a ranker version was trained on';
