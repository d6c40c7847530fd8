-- pg_genome 0.5.0 -> 0.6.0: what the install script cannot say.

-- genome.search is Rust now (src/search.rs); its PL/pgSQL helper goes.
DROP FUNCTION IF EXISTS _search(text, text, integer, real, jsonb);

-- cluster_pet's plan step is Rust end to end now (genome._pet_update: rows, not JSON, and the
-- core's centroids); the JSON one goes.
DROP FUNCTION IF EXISTS _pet_plan(real[], bigint[], double precision);
