"""genome.embed / genome.embed_batch through a real client: reference fixture, errors (each one
leaves the backend alive), cancellation, privileges and the runtime library setting."""
import time

import psycopg
import pytest

from conftest import MODELS, connect, postmaster_start


def vec(s):
    return [float(x) for x in s.strip("[]").split(",")]


def cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)


def test_default_model_matches_sentence_transformers(conn, reference):
    texts = [r["text"] for r in reference]
    rows = conn.execute("SELECT e::text FROM unnest(genome.embed_batch(%s)) e", (texts,)).fetchall()
    assert len(rows) == 73
    cosines = [cos(vec(r[0]), ref["embedding"]) for r, ref in zip(rows, reference)]
    assert min(cosines) >= 0.9999, min(cosines)
    # the one text longer than 256 tokens, alone, through genome.embed
    longest = max(reference, key=lambda r: len(r["text"]))
    one = conn.execute("SELECT genome.embed(%s)::text", (longest["text"],)).fetchone()[0]
    assert cos(vec(one), longest["embedding"]) >= 0.9999


def test_update_fills_a_vector_column_and_hnsw_index_is_used(conn):
    conn.execute("DROP TABLE IF EXISTS docs")
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text, embedding vector(384))")
    conn.execute("INSERT INTO docs SELECT i, 'document about topic ' || i FROM generate_series(1, 300) i")
    conn.execute("UPDATE docs SET embedding = genome.embed(body)")
    conn.execute("CREATE INDEX ON docs USING hnsw (embedding vector_cosine_ops)")
    conn.execute("ANALYZE docs")
    conn.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in conn.execute(
        "EXPLAIN SELECT id FROM docs ORDER BY embedding <=> genome.embed('document about topic 42') LIMIT 5"))
    assert "docs_embedding_idx" in plan, plan
    top = conn.execute("SELECT id FROM docs ORDER BY embedding <=> genome.embed('document about topic 42') LIMIT 1").fetchone()[0]
    assert top == 42


ERRORS = [
    ("SELECT genome.embed('x', 'no-such-model')", "model \"no-such-model\" is not registered"),
    ("SELECT genome.embed('x', 'tiny-bert@9')", "version \"9\" is not registered"),
    ("SELECT genome.register_model('bad', '1', '\\xdeadbeef'::bytea, tokenizer, config) FROM genome.models WHERE name='tiny-bert'",
     "ONNX model could not be loaded"),
    ("SELECT genome.register_model('bad', '1', onnx, '{}', config) FROM genome.models WHERE name='tiny-bert'",
     "invalid tokenizer"),
    ("SELECT genome.register_model('bad', '1', onnx, tokenizer, config || '{\"pooling\": \"max\"}') FROM genome.models WHERE name='tiny-bert'",
     "unknown variant `max`"),
    ("SELECT genome.register_model('bad', '1', onnx, tokenizer, config || '{\"output_name\": \"logits\"}') FROM genome.models WHERE name='tiny-bert'",
     "config names output \"logits\""),
    ("SELECT genome.register_model('bad', '1', onnx, tokenizer, config || '{\"dimension\": 384}') FROM genome.models WHERE name='tiny-bert'",
     "is not [batch, tokens, dimension] (it has 3 dimensions"),
    ("SELECT genome.register_model('bad name', '1', onnx, tokenizer, config) FROM genome.models WHERE name='tiny-bert'",
     "invalid model name"),
    ("SELECT genome.register_model_path('bad', '1', 'relative/model.onnx', '', '{}')", "must be absolute"),
    ("SELECT genome.register_model_dir('bad', '1', '/nonexistent')", "could not open file"),
    ("SET genome.execution_provider = 'tpu'", "invalid value for parameter \"genome.execution_provider\""),
]


@pytest.mark.parametrize("sql,message", ERRORS, ids=[m for _, m in ERRORS])
def test_bad_input_is_a_clear_error_and_the_backend_survives(conn, sql, message):
    started = postmaster_start(conn)
    pid = conn.info.backend_pid
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql)
    assert message in str(e.value), str(e.value)
    # same backend, still usable, no crash-restart of the server
    assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
    assert conn.execute("SELECT vector_dims(genome.embed('still alive', 'tiny-bert'))").fetchone()[0] == 32
    assert postmaster_start(conn) == started
    assert conn.execute("SELECT count(*) FROM genome.models WHERE name = 'bad'").fetchone()[0] == 0


def test_hand_edited_model_row_fails_at_use_without_crash(conn):
    conn.execute("""INSERT INTO genome.models (name, version, task, dimension, onnx, tokenizer, config, sha256)
                    SELECT 'edited', '1', task, dimension, onnx, tokenizer, config || '{"pooling": "none"}', sha256
                      FROM genome.models WHERE name = 'tiny-bert'""")
    try:
        with pytest.raises(psycopg.Error, match=r"is not \[batch, dimension\] as pooling none needs"):
            conn.execute("SELECT genome.embed('x', 'edited')")
        conn.execute("UPDATE genome.models SET onnx = '\\x0102'::bytea WHERE name = 'edited'")
        with pytest.raises(psycopg.Error, match="ONNX model could not be loaded"):
            conn.execute("SELECT genome.embed('x', 'edited')")
    finally:
        conn.execute("DELETE FROM genome.models WHERE name = 'edited'")


def test_large_empty_and_null_inputs(conn):
    big = "the quick brown fox jumps over the lazy dog " * 2300  # ~101 kB
    n = conn.execute("SELECT vector_dims(genome.embed(%s))", (big,)).fetchone()[0]
    assert n == 384
    # documented: texts are truncated at the model's max_tokens (256), like sentence-transformers
    head = "the quick brown fox jumps over the lazy dog " * 40
    d = conn.execute("SELECT genome.embed(%s) <=> genome.embed(%s)", (big, head)).fetchone()[0]
    assert d < 1e-3
    assert conn.execute("SELECT vector_dims(genome.embed(''))").fetchone()[0] == 384
    assert conn.execute("SELECT genome.embed(NULL) IS NULL").fetchone()[0]
    v = conn.execute("SELECT array_length(genome.embed_batch(ARRAY[NULL, 'a', NULL]), 1), "
                     "(genome.embed_batch(ARRAY[NULL, 'a', NULL]))[1] IS NULL").fetchone()
    assert v == (3, True)


def test_statement_timeout_cancels_a_large_batch_promptly(conn):
    texts = ["a moderately long sentence that the model has to read completely, number %d" % i for i in range(20000)]
    conn.execute("SET genome.batch_size = 16")
    conn.execute("SELECT genome.embed('warm up the session')")
    conn.execute("SET statement_timeout = '1500ms'")
    t0 = time.monotonic()
    with pytest.raises(psycopg.errors.QueryCanceled):
        conn.execute("SELECT cardinality(genome.embed_batch(%s))", (texts,))
    elapsed = time.monotonic() - t0
    conn.execute("RESET statement_timeout")
    # 20000 texts take minutes; a cancel is honoured at the next batch boundary
    assert elapsed < 4.0, elapsed
    assert conn.execute("SELECT vector_dims(genome.embed('after cancel'))").fetchone()[0] == 384


def test_pg_cancel_backend_stops_embedding_rows(database):
    with connect() as victim, connect() as killer:
        victim.execute("CREATE TEMP TABLE many AS SELECT 'row number ' || i AS body FROM generate_series(1, 50000) i")
        pid = victim.info.backend_pid
        import threading
        timer = threading.Timer(1.0, lambda: killer.execute("SELECT pg_cancel_backend(%s)", (pid,)))
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            victim.execute("SELECT count(genome.embed(body)) FROM many")
        assert time.monotonic() - t0 < 3.0
        timer.cancel()


def test_wrong_runtime_library_is_an_error_in_a_fresh_backend(database):
    with connect() as c:
        # the backend's own runtime (a session on the inference workers loads none)
        c.execute("SET genome.inference = local")
        c.execute("SET genome.onnxruntime_library = '/nonexistent/libonnxruntime.so'")
        with pytest.raises(psycopg.Error, match="ONNX Runtime library could not be loaded from \"/nonexistent/libonnxruntime.so\": no such file"):
            c.execute("SELECT genome.embed('x')")
        c.execute("SET genome.onnxruntime_library = '/usr/lib/x86_64-linux-gnu/libz.so.1'")
        with pytest.raises(psycopg.Error, match="OrtGetApiBase"):
            c.execute("SELECT genome.embed('x')")
        c.execute("RESET genome.onnxruntime_library")
        assert c.execute("SELECT vector_dims(genome.embed('x'))").fetchone()[0] == 384
        assert c.execute("SELECT genome.onnxruntime_version()").fetchone()[0] == "1.31.1"


def test_only_privileged_roles_register_from_server_files(database):
    with connect() as su:
        su.execute("DROP ROLE IF EXISTS genome_app")
        su.execute("CREATE ROLE genome_app LOGIN")
        su.execute("GRANT USAGE ON SCHEMA genome TO genome_app")
        su.execute("GRANT SELECT ON genome.models TO genome_app")
    try:
        with connect(user="genome_app") as app:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute("SELECT genome.register_model_dir('x', '1', %s)", (f"{MODELS}/tiny-bert",))
            # registering a model at all needs genome_admin (0.5.0), checked before any byte is read
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="requires superuser or membership in genome_admin"):
                app.execute("SELECT genome.register_model_path('x', '1', %s, '', '{}')", (f"{MODELS}/tiny-bert/model.onnx",))
            with connect() as su:
                su.execute("GRANT genome_admin TO genome_app")
            # and by server path also pg_read_server_files
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="requires superuser or pg_read_server_files"):
                app.execute("SELECT genome.register_model_path('x', '1', %s, '', '{}')", (f"{MODELS}/tiny-bert/model.onnx",))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute("SET genome.onnxruntime_library = '/tmp/evil.so'")
            # reading models and embedding are open to a plain role with access to the registry
            assert app.execute("SELECT vector_dims(genome.embed('hi', 'tiny-bert'))").fetchone()[0] == 32
    finally:
        with connect() as su:
            su.execute("DROP OWNED BY genome_app")
            su.execute("DROP ROLE genome_app")


def test_server_path_registration_reads_the_file_at_load(conn):
    conn.execute("SELECT genome.register_model_dir('tiny-by-path', '1', %s, copy => false)", (f"{MODELS}/tiny-bert",))
    try:
        row = conn.execute("SELECT onnx IS NULL, onnx_path FROM genome.models WHERE name = 'tiny-by-path'").fetchone()
        assert row == (True, f"{MODELS}/tiny-bert/model.onnx")
        same = conn.execute("SELECT genome.embed('abc', 'tiny-by-path') <=> genome.embed('abc', 'tiny-bert')").fetchone()[0]
        assert same < 1e-6
    finally:
        conn.execute("DELETE FROM genome.models WHERE name = 'tiny-by-path'")


def test_model_is_loaded_once_per_backend(conn):
    # the in-process path (the shared one holds no session in the backend: test_inference.py)
    conn.execute("SET genome.inference = local")
    conn.execute("SELECT genome.clear_model_cache()")
    t0 = time.monotonic()
    conn.execute("SELECT genome.embed('first call loads the model')")
    first = time.monotonic() - t0
    t0 = time.monotonic()
    for i in range(20):
        conn.execute("SELECT genome.embed(%s)", (f"later call {i}",))
    later = (time.monotonic() - t0) / 20
    assert conn.execute("SELECT count(*) FROM genome.loaded_models()").fetchone()[0] == 1
    # not a speed target: loading a 90 MB session per call would make every call as slow as the first
    assert later < first / 3, (first, later)


def test_without_preload_create_extension_is_a_clear_error():
    """A throwaway cluster without shared_preload_libraries: CREATE EXTENSION (and LOAD) give an
    ERROR that says what to do, the session survives, nothing is created. (0.4.0 ended the
    session with a FATAL "cannot create PGC_POSTMASTER variables after startup".)"""
    import pathlib
    import shutil
    import socket
    import subprocess
    import tempfile
    pg_bin = "/usr/lib/postgresql/15/bin"
    # under /tmp itself: the server runs as postgres, which cannot enter pytest's root-only tmp_path
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="genome-nopreload-"))
    data, sock = tmp_path / "data", tmp_path / "sock"
    sock.mkdir()
    for d in (tmp_path, sock):
        shutil.chown(d, "postgres", "postgres")
    with socket.socket() as s:  # a free loopback port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run(as_pg + [f"{pg_bin}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True)
    subprocess.run(as_pg + [f"{pg_bin}/pg_ctl", "-D", str(data), "-w", "-l", str(tmp_path / "log"), "-o",
                            f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as c:
            for stmt in ("CREATE EXTENSION pg_genome CASCADE", "LOAD 'pg_genome'"):
                with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState,
                                   match="pg_genome must be loaded via shared_preload_libraries") as e:
                    c.execute(stmt)
                assert "shared_preload_libraries in postgresql.conf" in e.value.diag.message_hint
            assert c.execute("SELECT 1").fetchone()[0] == 1  # the session is still there
            assert c.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_genome'").fetchone()[0] == 0
    finally:
        subprocess.run(as_pg + [f"{pg_bin}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(tmp_path, ignore_errors=True)
