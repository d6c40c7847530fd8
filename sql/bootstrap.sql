-- pg_genome schema objects that the Rust functions depend on. The extension's schema is
-- `genome` (pg_genome.control); everything here is created in it.

CREATE TABLE models (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL,
    version     text NOT NULL,
    task        text NOT NULL DEFAULT 'text-embedding' CHECK (task IN ('text-embedding')),
    dimension   integer NOT NULL CHECK (dimension BETWEEN 1 AND 16000),
    onnx        bytea,                 -- the ONNX model itself ...
    onnx_path   text,                  -- ... or an absolute path on the database server
    tokenizer   text,                  -- Hugging Face tokenizer.json
    config      jsonb NOT NULL,        -- pooling, normalize, max_tokens, output_name, input_names, dimension
    sha256      text NOT NULL,         -- of the ONNX bytes
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name, version),
    CHECK ((onnx IS NULL) <> (onnx_path IS NULL)),
    CHECK ((config->>'dimension')::int = dimension)
);
COMMENT ON TABLE models IS 'pg_genome model registry: one row per model version; nothing is downloaded at call time';
-- Rows are user data: pg_dump keeps them.
SELECT pg_catalog.pg_extension_config_dump('models', '');
