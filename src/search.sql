-- pg_genome semantic search: a collection's rows nearest a query, through pgvector's HNSW index.
-- Rust: src/search.rs.

-- Functions

-- The pgvector HNSW index (cosine) on a collection's embedding column, used by genome.search.
CREATE FUNCTION create_search_index(collection text) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE c @extschema@.collections; rel regclass := @extschema@.collection_relation(collection);
        idx text := left('genome_hnsw_' || collection, 63);
BEGIN
    SELECT * INTO c FROM @extschema@.collections x WHERE x.name = collection;
    IF NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam
                    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                   WHERE i.indrelid = rel AND am.amname = 'hnsw' AND a.attname = c.embedding_column) THEN
        EXECUTE format('CREATE INDEX %I ON %s USING hnsw (%I %I.vector_cosine_ops)', idx, rel, c.embedding_column,
                       @extschema@._vector_schema());
    END IF;
    RETURN idx;
END $$;
COMMENT ON FUNCTION create_search_index IS 'create the pgvector HNSW (cosine) index genome.search uses, unless the embedding column has one';

COMMENT ON FUNCTION search(text, text, integer, real, jsonb) IS 'semantic search: rows of a collection most similar to a text (cosine), best first, with optional equality filters';

COMMENT ON FUNCTION search(text, vector, integer, real, jsonb) IS 'semantic search with a precomputed query vector';

-- Private functions

-- The schema pgvector lives in. Functions here run with search_path = pg_catalog, pg_temp; those
-- that need pgvector's operators add this schema for their own duration (set_config(..., true)
-- inside a function with a SET search_path clause is undone when the function returns).
CREATE FUNCTION _vector_schema() RETURNS name
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'
$$;

CREATE FUNCTION _use_vector_schema() RETURNS void
LANGUAGE sql VOLATILE SECURITY INVOKER AS $$
    SELECT set_config('search_path', format('pg_catalog, %I, pg_temp', @extschema@._vector_schema()), true)
$$;

-- Semantic search. The query goes through the pgvector HNSW index of the embedding column
-- (cosine); with a filter, pgvector 0.8's iterative index scan keeps fetching candidates until
-- top_k rows pass the filter, and when it stops short (hnsw.max_scan_tuples) an exact scan of the
-- filtered rows makes sure nothing that matches is lost.

