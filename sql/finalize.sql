-- Registers model.onnx, tokenizer.json and genome.json from a directory on the database server.
-- Reading server files is for superusers and pg_read_server_files: pg_read_binary_file and
-- pg_read_file perform that check themselves (SECURITY INVOKER).
CREATE FUNCTION register_model_dir(name text, version text, dir text,
                                   task text DEFAULT 'text-embedding', copy boolean DEFAULT true)
RETURNS bigint LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg jsonb := pg_read_file(dir || '/genome.json')::jsonb;
    tok text := pg_read_file(dir || '/tokenizer.json');
BEGIN
    IF copy THEN
        RETURN @extschema@.register_model(name, version, pg_read_binary_file(dir || '/model.onnx'), tok, cfg, task);
    END IF;
    RETURN @extschema@.register_model_path(name, version, dir || '/model.onnx', tok, cfg, task);
END $$;
COMMENT ON FUNCTION register_model_dir IS 'register a model from a server directory holding model.onnx, tokenizer.json and genome.json';
