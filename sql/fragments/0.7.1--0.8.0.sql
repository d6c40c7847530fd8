-- pg_genome 0.7.1 -> 0.8.0: sequence models in the registry (src/models.sql): k-mer featurisers
-- (task 'sequence-embedding', config kind 'kmer') and, later, sequence classifiers hold no ONNX
-- model but their config and weights; src/sequences.sql brings the functions.

-- Tables

ALTER TABLE models ADD COLUMN weights bytea;
ALTER TABLE models ADD COLUMN metrics jsonb;
ALTER TABLE models DROP CONSTRAINT models_task_check;
ALTER TABLE models ADD CONSTRAINT models_task_check
    CHECK (task IN ('text-embedding', 'image-embedding', 'sequence-embedding', 'sequence-classifier'));
ALTER TABLE models DROP CONSTRAINT models_check;
ALTER TABLE models ADD CONSTRAINT models_check
    CHECK ((onnx IS NULL) <> (onnx_path IS NULL) OR (config->>'kind' IN ('kmer', 'sequence-classifier') AND onnx IS NULL AND onnx_path IS NULL));
ALTER TABLE models ADD CONSTRAINT models_check2
    CHECK (task <> 'sequence-classifier' OR (config->>'kind' = 'sequence-classifier' AND weights IS NOT NULL));
ALTER TABLE models ADD CONSTRAINT models_check3
    CHECK (config->>'kind' IS DISTINCT FROM 'kmer' OR task = 'sequence-embedding');

-- progress_slots gained stage_fraction and stage_seconds_left (issue 17): a function's result
-- columns cannot change in place. The view over it goes first; both are made again here, as
-- src/progress.rs and src/health.sql define them (the view's text is unchanged, so the generated
-- part below would not recreate it).
DROP VIEW IF EXISTS progress;
DROP FUNCTION IF EXISTS progress_slots();
CREATE FUNCTION progress_slots() RETURNS TABLE (
	"pid" INT,
	"job" TEXT,
	"collection" TEXT,
	"stage" TEXT,
	"done" bigint,
	"total" bigint,
	"running_seconds" double precision,
	"stage_seconds" double precision,
	"stage_fraction" double precision,
	"stage_seconds_left" double precision
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'progress_slots_wrapper';
CREATE VIEW progress AS
    SELECT p.* FROM @extschema@.progress_slots() p
      JOIN pg_catalog.pg_stat_activity a ON a.pid = p.pid AND a.state = 'active';
GRANT SELECT ON progress TO genome_monitor;

-- Pending rows are listed in genome.pending_rows, kept by triggers, instead of a partial index on
-- the family column, which made every family write a non-HOT update (issue 17; src/collections.sql).
-- The functions come with the generated part; 0.7.1--0.8.0.post.sql moves existing collections.
CREATE TABLE pending_rows (
    collection text NOT NULL REFERENCES collections(name) ON DELETE CASCADE ON UPDATE CASCADE,
    row_id     text NOT NULL,
    seq        bigint GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (collection, row_id)
);
CREATE INDEX pending_rows_order ON pending_rows (collection, seq);
COMMENT ON TABLE pending_rows IS 'pg_genome: rows of a collection waiting for a family, oldest first (kept by triggers; read by assign_family)';
SELECT pg_catalog.pg_extension_config_dump('pending_rows', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('pending_rows', 'seq')::regclass, '');
ALTER TABLE pending_rows ENABLE ROW LEVEL SECURITY;
CREATE POLICY pending_rows_read ON pending_rows FOR SELECT
    USING (EXISTS (SELECT 1 FROM @extschema@.collections r WHERE r.name = collection AND @extschema@._may_read(r.relid)));
CREATE POLICY pending_rows_insert ON pending_rows FOR INSERT
    WITH CHECK (EXISTS (SELECT 1 FROM @extschema@.collections r WHERE r.name = collection AND @extschema@._owns(r.relid)));
CREATE POLICY pending_rows_update ON pending_rows FOR UPDATE
    USING (EXISTS (SELECT 1 FROM @extschema@.collections r WHERE r.name = collection
                    AND (@extschema@._owns(r.relid) OR has_table_privilege(r.relid, 'UPDATE'))));
CREATE POLICY pending_rows_delete ON pending_rows FOR DELETE
    USING (EXISTS (SELECT 1 FROM @extschema@.collections r WHERE r.name = collection
                    AND (@extschema@._owns(r.relid) OR has_table_privilege(r.relid, 'UPDATE'))));
GRANT SELECT, INSERT, DELETE, UPDATE (seq) ON pending_rows TO genome_user;
