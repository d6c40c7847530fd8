-- pg_genome sequence taxonomy classifiers (eDNA): trained from a table of labelled reads into a
-- registry model (genome.models, task 'sequence-classifier'), classifying reads with a
-- confidence per rank and a nearest-reference fallback, evaluated against known lineages.
-- Rust: src/taxonomy.rs; the algorithms are genome-core's seq::classify and seq::eval.

-- Defined in Rust (src/taxonomy.rs):
COMMENT ON FUNCTION train_sequence_classifier IS 'train a taxonomy classifier (naive Bayes over 8-mers, bootstrap confidence, per-rank calibration on held-out genera) on a table of labelled reads read as the caller (superuser or genome_admin); a lineage (text with names separated by ;, text[] or jsonb array or object by rank) longer than the ranks is read from its end, so name every rank down to the deepest one it holds; registers a new version of the model, promoted unless promote => false; with evaluate_on its held-out metrics go into the model''s metrics';
COMMENT ON FUNCTION evaluate_sequence_classifier IS 'metrics of a sequence classifier on a table of labelled reads: per rank accuracy, precision / recall / F1 per taxon and macro, ECE and Brier, coverage at the cut-off; for genera the model never saw, how often the genus is withheld and the family right';
COMMENT ON FUNCTION classify_sequences IS 'classify DNA reads: per read (ord, 1-based) its lineage (rank -> name and calibrated confidence), the deepest rank at or above the model''s cut-off (label, its rank and confidence; when no rank reaches the cut-off, label and rank are NULL and confidence is the top rank''s), whether the deepest rank was withheld (needs_fallback) with its nearest references from the model''s reference collection, and the model version';
