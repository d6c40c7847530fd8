-- pg_genome model bundles: one registry entry as a checksummed bytea (versioned format), to
-- move a trained model between databases. Rust: src/bundles.rs; the format is genome-core's
-- bundle module.

-- Defined in Rust (src/bundles.rs):
COMMENT ON FUNCTION export_bundle IS 'a model version (default: the one its name resolves to) as a bundle: its registry row, config, weights or ONNX bytes, metrics, and a SHA-256 checksum';
COMMENT ON FUNCTION import_bundle IS 'register the model a bundle carries as a staging version (superuser or genome_admin); refuses a bundle of another format version, with a bad checksum, or whose parts do not check out; returns the new id';
