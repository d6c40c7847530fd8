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

CREATE FUNCTION search(collection text, query text, top_k integer DEFAULT 10, score_threshold real DEFAULT 0.5,
                       filter jsonb DEFAULT NULL)
RETURNS TABLE (id text, score real, "row" jsonb)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE m text;
BEGIN
    PERFORM @extschema@.collection_relation(collection);
    -- a re-embedding's switch-over cannot happen between reading the model and the query
    PERFORM pg_advisory_xact_lock_shared(1734700656, hashtext(collection));
    SELECT x.model INTO m FROM @extschema@.collections x WHERE x.name = collection;
    RETURN QUERY SELECT * FROM @extschema@._search(collection, @extschema@.embed(query, m)::text, top_k, score_threshold, filter);
END $$;
COMMENT ON FUNCTION search(text, text, integer, real, jsonb) IS 'semantic search: rows of a collection most similar to a text (cosine), best first, with optional equality filters';

CREATE FUNCTION search(collection text, query_vector vector, top_k integer DEFAULT 10, score_threshold real DEFAULT 0.5,
                       filter jsonb DEFAULT NULL)
RETURNS TABLE (id text, score real, "row" jsonb)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE d int;
BEGIN
    PERFORM @extschema@.collection_relation(collection);
    PERFORM pg_advisory_xact_lock_shared(1734700656, hashtext(collection));
    SELECT x.dimension INTO d FROM @extschema@.collections x WHERE x.name = collection;
    -- the length through pgvector's cast to real[] (casts are found by type, not search_path)
    IF query_vector IS NOT NULL AND cardinality(query_vector::real[]) <> d THEN
        RAISE EXCEPTION 'pg_genome: query vector has % dimensions, collection "%" has %',
              cardinality(query_vector::real[]), collection, d USING ERRCODE = '22000';
    END IF;
    RETURN QUERY SELECT * FROM @extschema@._search(collection, query_vector::text, top_k, score_threshold, filter);
END $$;
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
CREATE FUNCTION _search(collection text, query_vector text, top_k integer, score_threshold real, filter jsonb)
RETURNS TABLE (id text, score real, "row" jsonb)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp SET hnsw.ef_search = 40 SET hnsw.iterative_scan = 'relaxed_order' AS $$
DECLARE c @extschema@.collections; rel regclass := @extschema@.collection_relation(collection);
        vs name := @extschema@._vector_schema(); conds text := ''; k text; v jsonb; ty text; base text;
        args text[]; hits jsonb; nrm float8;
BEGIN
    IF top_k IS NULL OR top_k < 1 OR top_k > 1000 THEN
        RAISE EXCEPTION 'pg_genome: top_k must be between 1 and 1000' USING ERRCODE = '22023';
    END IF;
    IF score_threshold = 'NaN'::real THEN
        RAISE EXCEPTION 'pg_genome: score_threshold must be a number (a cosine between -1 and 1), not NaN' USING ERRCODE = '22023';
    END IF;
    IF query_vector IS NULL THEN
        RETURN;
    END IF;
    -- cosine similarity to a zero vector is undefined (NaN, which passes every threshold)
    -- (from the vector's text form: static SQL, planned once per session)
    SELECT sum(x::float8 * x::float8) INTO nrm FROM unnest(string_to_array(btrim(query_vector, '[]'), ',')) x;
    IF nrm = 0 OR nrm = 'NaN'::float8 THEN
        RAISE EXCEPTION 'pg_genome: the query vector has zero length; cosine similarity is undefined' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO c FROM @extschema@.collections x WHERE x.name = collection;
    -- pgvector returns at most ef_search rows per scan
    PERFORM set_config('hnsw.ef_search', greatest(40, top_k)::text, true);
    IF filter IS NOT NULL THEN
        IF jsonb_typeof(filter) <> 'object' THEN
            RAISE EXCEPTION 'pg_genome: filter must be a JSON object of column: value pairs' USING ERRCODE = '22023';
        END IF;
        FOR k, v IN SELECT * FROM jsonb_each(filter) LOOP
            SELECT format_type(a.atttypid, a.atttypmod) INTO ty FROM pg_attribute a
             WHERE a.attrelid = rel AND a.attname = k AND a.attnum > 0 AND NOT a.attisdropped;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'pg_genome: filter column "%" does not exist in %', k, rel USING ERRCODE = '42703';
            END IF;
            IF jsonb_typeof(v) = 'object' OR (jsonb_typeof(v) = 'array' AND EXISTS (
                   SELECT 1 FROM jsonb_array_elements(v) e WHERE jsonb_typeof(e) IN ('object', 'array'))) THEN
                RAISE EXCEPTION 'pg_genome: filter value for "%" must be a scalar or an array of scalars', k USING ERRCODE = '22023';
            END IF;
            -- pg_catalog's = (the statement runs with search_path = pg_catalog, pg_temp): no
            -- operator from a schema other roles can create in is ever picked
            conds := conds || CASE jsonb_typeof(v)
                WHEN 'null' THEN format(' AND t.%I IS NULL', k)
                WHEN 'array' THEN format(' AND t.%I OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT jsonb_array_elements_text(($1[3])::jsonb -> %L))::%s[])', k, k, ty)
                ELSE format(' AND t.%I OPERATOR(pg_catalog.=) ((($1[3])::jsonb) ->> %L)::%s', k, k, ty) END;
        END LOOP;
    END IF;
    -- read as the table's owner when the caller is more privileged, as the caller otherwise
    -- (genome._owner_value): a role sees only rows it could read itself
    args := ARRAY[query_vector, top_k::text, filter::text];
    base := format('SELECT format(''%%s'', t.%1$I) AS id, (t.%2$I OPERATOR(%3$I.<=>) ($1[1])::%3$I.vector) AS dist, '
                   'to_jsonb(t) - %2$L AS payload FROM %4$s t WHERE t.%2$I IS NOT NULL%5$s ORDER BY ',
                   c.id_column, c.embedding_column, vs, rel, conds);
    hits := @extschema@._owner_value(rel, format('SELECT coalesce(jsonb_agg(h), ''[]'') FROM (%s t.%I OPERATOR(%I.<=>) ($1[1])::%I.vector LIMIT ($1[2])::int) h',
                                                 base, c.embedding_column, vs, vs), args);
    IF filter IS NOT NULL AND jsonb_array_length(hits) < top_k THEN
        -- "+ 0" keeps the planner off the index: an exact scan over the rows that pass the filter
        hits := @extschema@._owner_value(rel, format('SELECT coalesce(jsonb_agg(h), ''[]'') FROM (%s (t.%I OPERATOR(%I.<=>) ($1[1])::%I.vector) + 0, 1 LIMIT ($1[2])::int) h',
                                                     base, c.embedding_column, vs, vs), args);
    END IF;
    -- rows whose stored embedding has zero length have no defined score (NaN): left out
    RETURN QUERY SELECT e ->> 'id', (1 - (e ->> 'dist')::float8)::real, e -> 'payload' FROM jsonb_array_elements(hits) e
                  WHERE (e ->> 'dist')::float8 <> 'NaN'::float8 AND 1 - (e ->> 'dist')::float8 >= coalesce(score_threshold, -1)
                  ORDER BY (e ->> 'dist')::float8, e ->> 'id';
END $$;

