-- pg_genome 0.5.0 -> 0.6.0: what the install script cannot say.

-- genome.search is Rust now (src/search.rs); its PL/pgSQL helper goes.
DROP FUNCTION IF EXISTS _search(text, text, integer, real, jsonb);
