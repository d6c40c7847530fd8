-- pg_genome sequences (eDNA): reads cleaned with a report, k-mer featurisers registered as
-- models (genome.models, task 'sequence-embedding') and read embeddings. Rust: src/sequences.rs;
-- the algorithms are genome-core's seq module.

-- Functions

-- The report of a cleaning run: how many reads went in, were kept (unique), and were dropped
-- for each reason.
CREATE FUNCTION clean_sequences_report(sequences text[], forward_primers text[] DEFAULT '{}', reverse_primers text[] DEFAULT '{}',
                                       min_length integer DEFAULT 50, max_length integer DEFAULT 100000,
                                       max_ambiguous float8 DEFAULT 0.01, max_mismatches integer DEFAULT 2,
                                       require_primers boolean DEFAULT false)
RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    WITH r AS (SELECT x.dropped, x.count
                 FROM @extschema@.clean_sequences(sequences, forward_primers, reverse_primers, min_length, max_length,
                                                  max_ambiguous, max_mismatches, require_primers, true) x)
    SELECT jsonb_build_object(
        'input', coalesce(cardinality(sequences), 0),
        'kept', (SELECT coalesce(sum(r.count), 0) FROM r WHERE r.dropped IS NULL),
        'unique', (SELECT count(*) FROM r WHERE r.dropped IS NULL),
        'dropped', (SELECT coalesce(jsonb_object_agg(d.dropped, d.n), '{}') FROM
                      (SELECT r.dropped, count(*) AS n FROM r WHERE r.dropped IS NOT NULL GROUP BY r.dropped) d))
$$;

COMMENT ON FUNCTION clean_sequences IS 'clean DNA reads: IUPAC alphabet in any case (U read as T), optional primer trimming with mismatches, length and ambiguous-base filters, dereplication; one row per kept unique read (members are 1-based input positions) and one per dropped read with its reason';
COMMENT ON FUNCTION clean_sequences_report IS 'what clean_sequences does to reads: input, kept, unique and dropped counts by reason';
COMMENT ON FUNCTION register_kmer_featurizer IS 'register a k-mer featuriser (k, canonical, frequency / tfidf / clr, optional hashed dimension) as a sequence-embedding model (superuser or genome_admin); returns its id';
COMMENT ON FUNCTION embed_sequence IS 'embed one DNA read with a sequence-embedding model; NULL for NULL or a read without an unambiguous k-mer, ERROR for a read that is not DNA';
COMMENT ON FUNCTION embed_sequences IS 'embed many DNA reads in order with a sequence-embedding model; NULL elements give NULL';
COMMENT ON FUNCTION sequence_families IS 'the families of a sequence collection (after full_classify) summarised: size, exemplar reads nearest the centroid, per rank the majority name among members with a lineage and its share, and the mean silhouette (cosine; at most 2,000 clustered reads scored)';
