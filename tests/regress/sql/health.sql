-- genome.health(): the report's keys at each level, what monitoring reads.
SELECT jsonb_object_keys(genome.health()) AS key ORDER BY 1;
SELECT jsonb_object_keys(genome.health() -> 'runtime') AS runtime_key ORDER BY 1;
SELECT jsonb_object_keys(genome.health() -> 'models' -> 0) AS model_key ORDER BY 1;
SELECT name, version, task, dimension FROM jsonb_to_recordset(genome.health() -> 'models')
    AS m(name text, version text, task text, dimension int) ORDER BY 1;
SELECT (genome.health() ->> 'extension_version') = (SELECT extversion FROM pg_extension WHERE extname = 'pg_genome')
    AS version_is_the_installed_one;
-- the Prometheus exposition: its metric names
SELECT DISTINCT split_part(split_part(l, ' ', 1), '{', 1) AS metric
  FROM unnest(string_to_array(genome.metrics(), E'\n')) l
 WHERE l <> '' AND l NOT LIKE '#%' ORDER BY 1;
-- every public function of the extension has a COMMENT (psql \df+ shows what it is for)
SELECT p.oid::regprocedure AS uncommented FROM pg_proc p
 WHERE p.pronamespace = 'genome'::regnamespace AND p.proname !~ '^_'
   AND obj_description(p.oid, 'pg_proc') IS NULL ORDER BY 1;
