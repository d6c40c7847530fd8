"""Security and reliability (issue 12): each finding reproduced as an attack with the roles a
shared database has, asserting the safe outcome. Roles, as the report that found them:
  sec_app     owns schema sec_app and its tables, member of genome_user
  sec_other   owns a secret table
  sec_reader  USAGE on genome + SELECT on genome.models
  sec_mini    USAGE on genome only
  sec_op      DML on every genome table (what an operator might be granted)
  sec_mon     member of genome_monitor
Real PostgreSQL, pgvector, pg_cron, the real worker and real ONNX graphs built with onnx.helper."""
import struct
import threading
import time
import zlib

import numpy as np
import onnx
import psycopg
import pytest
from onnx import TensorProto, helper

from conftest import MODELS, PG_BIN, connect, postmaster_start

ROLES = ["sec_app", "sec_other", "sec_reader", "sec_mini", "sec_op", "sec_mon"]


@pytest.fixture(scope="module")
def roles(database):
    with connect() as su:
        su.execute("SET client_min_messages = warning")
        for r in ROLES:
            su.execute(f"DROP OWNED BY {r}" if su.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (r,)).fetchone() else "SELECT 1")
            su.execute(f"DROP ROLE IF EXISTS {r}")
            su.execute(f"CREATE ROLE {r} LOGIN")
        su.execute("GRANT genome_user TO sec_app")
        su.execute("GRANT genome_monitor TO sec_mon")
        su.execute("GRANT USAGE ON SCHEMA genome TO sec_reader, sec_mini, sec_op")
        su.execute("GRANT SELECT ON genome.models TO sec_reader")
        su.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA genome TO sec_op")
        su.execute("GRANT USAGE ON ALL SEQUENCES IN SCHEMA genome TO sec_op")
        su.execute("CREATE SCHEMA sec_app AUTHORIZATION sec_app")
        su.execute("GRANT USAGE ON SCHEMA sec_app TO sec_mini, sec_reader")
        su.execute("CREATE TABLE public.sec_secret (v text)")
        su.execute("ALTER TABLE public.sec_secret OWNER TO sec_other")
        su.execute("INSERT INTO public.sec_secret VALUES ('the other role''s secret')")
    yield
    with connect() as su:
        su.execute("SET client_min_messages = warning")
        for name in su.execute("SELECT name FROM genome.collections WHERE name LIKE 'sec\\_%'").fetchall():
            su.execute("SELECT genome.unregister_collection(%s)", name)
        for name in su.execute("SELECT name FROM genome.pet_media WHERE name LIKE 'sec\\_%'").fetchall():
            su.execute("SELECT genome.unregister_pet_media(%s)", name)
        su.execute("DELETE FROM genome.models WHERE name LIKE 'sec-%'")
        su.execute("DROP TABLE IF EXISTS public.sec_secret")
        su.execute("DROP SCHEMA IF EXISTS sec_app CASCADE")
        su.execute("REVOKE CREATE ON SCHEMA public FROM sec_mini")
        for r in ROLES:
            su.execute(f"DROP OWNED BY {r}")
            su.execute(f"DROP ROLE {r}")


def is_superuser(c, role):
    return c.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,)).fetchone()[0]


def tokenizer():
    return open(f"{MODELS}/tiny-bert/tokenizer.json").read()


# ---- models: privilege first, no external data, bounded runs ------------------------------------

def external_data_model(where):
    """A text model whose tensor reads 64 bytes of global/1260 (SCRAM verifiers) from $PGDATA."""
    w = TensorProto(name="w", data_type=TensorProto.UINT8, dims=[64])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "global/1260"), ("offset", "0"), ("length", "64")):
        e = w.external_data.add()
        e.key, e.value = k, v
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Cast", ["w"], ["out"], to=TensorProto.FLOAT)]
    inits = [w]
    if where == "constant":  # the same tensor as a Constant node's value instead of an initializer
        nodes.insert(0, helper.make_node("Constant", [], ["w"], value=w))
        inits = []
    g = helper.make_graph(nodes, "leak", [ids, mask], [out], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


def endless_loop_model(body_kind="steps"):
    """A text model whose graph runs a Loop of 10^15 iterations before producing its output. The
    body either steps a counter ("steps"), or does nothing ONNX Runtime would run per iteration:
    no node ("empty"), or a condition from constants only, folded at load ("folded")."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    consts = [helper.make_tensor("one_b", TensorProto.FLOAT, [1], [1.0]), helper.make_tensor("zero_b", TensorProto.FLOAT, [1], [0.0])]
    body_nodes, outs = {
        "steps": ([helper.make_node("Add", ["v_in", "one_b"], ["v_out"]),
                   helper.make_node("Greater", ["v_out", "zero_b"], ["cond_out"])], ("cond_out", "v_out")),
        "empty": ([], ("cond_in", "v_in")),
        "folded": ([helper.make_node("Greater", ["one_b", "zero_b"], ["cond_out"])], ("cond_out", "v_in")),
    }[body_kind]
    body = helper.make_graph(
        body_nodes,
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info(outs[0], TensorProto.BOOL, []),
         helper.make_tensor_value_info(outs[1], TensorProto.FLOAT, [1])],
        initializer=consts)
    nodes = [
        helper.make_node("Loop", ["trips", "cond", "v0"], ["v_final"], body=body),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["mask3", "ones4"], ["h"]),
        helper.make_node("Add", ["h", "v_final"], ["out"]),
    ]
    inits = [helper.make_tensor("trips", TensorProto.INT64, [], [10 ** 15]),
             helper.make_tensor("cond", TensorProto.BOOL, [], [True]),
             helper.make_tensor("v0", TensorProto.FLOAT, [1], [0.0]),
             helper.make_tensor("axis2", TensorProto.INT64, [1], [2]),
             helper.make_tensor("ones4", TensorProto.FLOAT, [1, 1, 4], [1.0] * 4), one]
    g = helper.make_graph(nodes, "endless",
                          [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
                           helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "s", 4])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(m)
    return m.SerializeToString()


def memory_hungry_model(floats_per_row, constant=False):
    """A text model that allocates a tensor of batch x floats_per_row floats (4 bytes each) per run
    (its size depends on the input), or of floats_per_row floats from a constant shape (which
    ONNX Runtime's constant folding would compute at load)."""
    nodes = [
        helper.make_node("Shape", ["input_ids"], ["shp"]),
        helper.make_node("Slice", ["shp", "zero", "one"], ["batch"]),
        helper.make_node("Mul", ["one" if constant else "batch", "per_row"], ["n"]),
        helper.make_node("ConstantOfShape", ["n"], ["big"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=1),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["mask3", "ones4"], ["h"]),
        helper.make_node("Add", ["h", "total"], ["out"]),
    ]
    inits = [helper.make_tensor("zero", TensorProto.INT64, [1], [0]), helper.make_tensor("one", TensorProto.INT64, [1], [1]),
             helper.make_tensor("per_row", TensorProto.INT64, [1], [floats_per_row]),
             helper.make_tensor("axis2", TensorProto.INT64, [1], [2]),
             helper.make_tensor("ones4", TensorProto.FLOAT, [1, 1, 4], [1.0] * 4)]
    g = helper.make_graph(nodes, "hungry",
                          [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
                           helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "s", 4])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(m)
    return m.SerializeToString()


LOOP_CONFIG = '{"pooling": "mean", "dimension": 4, "normalize": false, "output_name": "out", "input_names": ["input_ids", "attention_mask"]}'


@pytest.mark.parametrize("where", ["initializer", "constant"])
def test_s1_models_are_registered_by_admins_only_and_never_read_server_files(roles, where):
    onnx_bytes = external_data_model(where)
    for role in ("sec_reader", "sec_mini"):
        with connect(user=role) as c:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="requires superuser or membership in genome_admin"):
                c.execute("SELECT genome.register_model('sec-leak', '1', %s, %s, '{\"pooling\": \"none\", \"dimension\": 64}')",
                          (onnx_bytes, tokenizer()))
    # an administrator (here the superuser) gets a refusal naming the tensor, never the file
    with connect() as c:
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT genome.register_model('sec-leak', '1', %s, %s, '{\"pooling\": \"none\", \"dimension\": 64}')",
                      (onnx_bytes, tokenizer()))
        assert e.value.sqlstate == "22P03" and 'tensor "w" keeps its data in an external file' in str(e.value)
        assert "SCRAM" not in str(e.value) and "shape" not in str(e.value)
        # a row put into the registry by other means is refused at load as well
        c.execute("""INSERT INTO genome.models (name, version, task, dimension, onnx, tokenizer, config, sha256)
                     VALUES ('sec-leak', 'dml', 'text-embedding', 64, %s, %s, '{"pooling": "none", "dimension": 64}', 'x')""",
                  (onnx_bytes, tokenizer()))
        try:
            with pytest.raises(psycopg.Error, match="external file"):
                c.execute("SELECT genome.embed('x', 'sec-leak@dml')")
            assert c.execute("SELECT count(*) FROM genome.models WHERE name = 'sec-leak' AND version = '1'").fetchone()[0] == 0
        finally:
            c.execute("DELETE FROM genome.models WHERE name = 'sec-leak'")


def test_s1_members_of_genome_admin_register_models(roles):
    with connect() as su:
        su.execute("GRANT genome_admin TO sec_reader")
    try:
        with connect(user="sec_reader") as c:
            c.execute("""SELECT genome.register_model('sec-tiny', '1', onnx, tokenizer, config)
                           FROM genome.models WHERE name = 'tiny-bert'""")
            assert c.execute("SELECT vector_dims(genome.embed('hi', 'sec-tiny'))").fetchone()[0] == 32
    finally:
        with connect() as su:
            su.execute("REVOKE genome_admin FROM sec_reader")
            su.execute("DELETE FROM genome.models WHERE name = 'sec-tiny'")


def endless_registered(c):
    if not c.execute("SELECT 1 FROM genome.models WHERE name = 'sec-endless'").fetchone():
        c.execute("SELECT genome.register_model('sec-endless', '1', %s, %s, %s, validate_model => false)",
                  (endless_loop_model(), tokenizer(), LOOP_CONFIG))


@pytest.mark.parametrize("body", ["empty", "folded"])
def test_s2_a_loop_that_no_cancel_could_stop_is_refused(roles, body):
    # ONNX Runtime checks the terminate flag before each kernel: a Loop body that runs none would
    # iterate 10^15 times beyond pg_terminate_backend's reach (0.4.1 accepted it)
    with connect() as su:
        with pytest.raises(psycopg.Error) as e:
            su.execute("SELECT genome.register_model('sec-stuck', '1', %s, %s, %s, validate_model => false)",
                       (endless_loop_model(body), tokenizer(), LOOP_CONFIG))
        assert e.value.sqlstate == "22P03" and "could not be interrupted" in str(e.value)


def test_s2_statement_timeout_stops_an_endless_graph_at_registration_and_use(roles):
    with connect() as c:
        started = postmaster_start(c)
        c.execute("SET statement_timeout = '1s'")
        t0 = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            # registration runs the model once: that run is the endless loop
            c.execute("SELECT genome.register_model('sec-endless', 'x', %s, %s, %s)", (endless_loop_model(), tokenizer(), LOOP_CONFIG))
        assert time.monotonic() - t0 < 3.0
        c.execute("RESET statement_timeout")
        endless_registered(c)
        c.execute("SET statement_timeout = '1s'")
        t0 = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute("SELECT genome.embed('never ends', 'sec-endless')")
        assert time.monotonic() - t0 < 3.0
        c.execute("RESET statement_timeout")
        assert c.execute("SELECT vector_dims(genome.embed('after', 'tiny-bert'))").fetchone()[0] == 32
        assert postmaster_start(c) == started


@pytest.mark.parametrize("how", ["pg_cancel_backend", "pg_terminate_backend"])
def test_s2_cancel_and_terminate_stop_a_running_graph(roles, how):
    with connect() as su:
        endless_registered(su)
        started = postmaster_start(su)
    victim = connect()
    pid = victim.info.backend_pid
    fired = []

    def stop():
        with connect() as k:
            fired.append(time.monotonic())
            k.execute(f"SELECT {how}(%s)", (pid,))

    t = threading.Timer(1.0, stop)
    t.start()
    with pytest.raises(psycopg.Error) as e:
        victim.execute("SELECT genome.embed('never ends', 'sec-endless')")
    stopped = time.monotonic()
    t.join()
    assert stopped - fired[0] < 2.0, f"{how} took {stopped - fired[0]:.1f} s"
    if how == "pg_cancel_backend":
        assert e.value.sqlstate == "57014"
        assert victim.execute("SELECT pg_backend_pid()").fetchone()[0] == pid  # the session goes on
    victim.close()
    with connect() as c:
        alive = c.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0]
        assert alive == 0
        assert postmaster_start(c) == started


@pytest.mark.parametrize("constant", [False, True], ids=["computed shape", "constant shape"])
def test_s2_a_model_run_is_memory_bounded(roles, constant):
    with connect() as su:
        # 256 M floats = 1 GiB: over a 256 MB cap, harmless without one
        su.execute("SELECT genome.register_model('sec-hungry', '1', %s, %s, %s, validate_model => false)",
                   (memory_hungry_model(1 << 28, constant), tokenizer(), LOOP_CONFIG))
        started = postmaster_start(su)
    try:
        with connect() as c:
            c.execute("SET genome.model_memory_limit = '256MB'")  # read when the backend loads ONNX Runtime
            pid = c.info.backend_pid
            with pytest.raises(psycopg.Error) as e:
                c.execute("SELECT genome.embed('x', 'sec-hungry')")
            assert e.value.sqlstate == "38000" and ("memory" in str(e.value).lower() or "alloc" in str(e.value).lower()), str(e.value)
            peak = int([line for line in open(f"/proc/{pid}/status") if line.startswith("VmHWM:")][0].split()[1])
            assert peak < 900_000, f"backend peak {peak} KiB"
            # the same backend goes on with models that fit
            assert c.execute("SELECT vector_dims(genome.embed('x', 'tiny-bert'))").fetchone()[0] == 32
            assert c.execute("SELECT genome._runtime_info() -> 'model_memory_limit_mb'").fetchone()[0] == 256
        with connect(user="sec_mini") as mini:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                mini.execute("SET genome.model_memory_limit = 0")
        with connect() as c:
            assert c.execute("SELECT genome.health() -> 'runtime' -> 'model_memory_limit_mb'").fetchone()[0] == 4096
            assert postmaster_start(c) == started
    finally:
        with connect() as su:
            su.execute("DELETE FROM genome.models WHERE name = 'sec-hungry'")


def test_s2_a_large_user_batch_size_does_not_delay_a_timeout(roles):
    # 0.4.1 took a batch size of 4096 from any user: one model call then ran for 39 s, deaf to
    # cancels. Now the largest is 64, and a call of 64 texts of 256 tokens is stopped mid-run.
    texts = [("a long sentence that the model has to read completely, number %d " % i) * 40 for i in range(2000)]
    with connect(user="sec_reader") as c:
        with pytest.raises(psycopg.Error) as e:
            c.execute("SET genome.batch_size = 4096")
        assert e.value.sqlstate == "22023"
        c.execute("SET genome.batch_size = 64")
        c.execute("SELECT genome.embed('warm up')")
        c.execute("SET statement_timeout = '2s'")
        t0 = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute("SELECT cardinality(genome.embed_batch(%s))", (texts,))
        assert time.monotonic() - t0 < 4.0
        c.execute("RESET statement_timeout")
        assert c.execute("SELECT vector_dims(genome.embed('after'))").fetchone()[0] == 384


# ---- app-table code never runs with pg_genome's rights -------------------------------------------

ESCALATE = """
CREATE TABLE IF NOT EXISTS sec_app.log (who text, at text);
GRANT INSERT, SELECT ON sec_app.log TO PUBLIC;
CREATE OR REPLACE FUNCTION sec_app.escalate(at text) RETURNS void LANGUAGE plpgsql AS $f$
BEGIN
    INSERT INTO sec_app.log VALUES (current_user, at);
    BEGIN
        EXECUTE 'ALTER ROLE sec_app SUPERUSER';
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
END $f$;
"""


def app_setup(c, table, extra_sql=""):
    c.execute(ESCALATE)
    c.execute(f"DROP TABLE IF EXISTS sec_app.{table} CASCADE")
    c.execute(f"CREATE TABLE sec_app.{table} (id bigint PRIMARY KEY, body text)")
    c.execute(f"INSERT INTO sec_app.{table} SELECT i, 'row number ' || i || ' about ' || (ARRAY['cats', 'ships', 'tax'])[1 + i % 3] "
              f"FROM generate_series(1, 60) i")
    if extra_sql:
        c.execute(extra_sql)


def log_of(c, at):
    return [r[0] for r in c.execute("SELECT who FROM sec_app.log WHERE at = %s", (at,)).fetchall()]


TRIGGERS = {
    "before update trigger": """CREATE FUNCTION sec_app.trg_{t}() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN PERFORM sec_app.escalate('{t}'); RETURN NEW; END $f$;
        CREATE TRIGGER x BEFORE UPDATE ON sec_app.{t} FOR EACH ROW EXECUTE FUNCTION sec_app.trg_{t}()""",
    "after statement trigger": """CREATE FUNCTION sec_app.trg_{t}() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN PERFORM sec_app.escalate('{t}'); RETURN NULL; END $f$;
        CREATE TRIGGER x AFTER UPDATE ON sec_app.{t} FOR EACH STATEMENT EXECUTE FUNCTION sec_app.trg_{t}()""",
    "check constraint": """CREATE FUNCTION sec_app.chk_{t}(b text) RETURNS boolean LANGUAGE plpgsql AS $f$
        BEGIN PERFORM sec_app.escalate('{t}'); RETURN true; END $f$;
        ALTER TABLE sec_app.{t} ADD CONSTRAINT c CHECK (sec_app.chk_{t}(body || coalesce(family_id::text, '')))""",
    "index expression": """CREATE FUNCTION sec_app.idx_{t}(b text, f bigint) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $f$
        BEGIN PERFORM sec_app.escalate('{t}'); RETURN b || coalesce(f::text, ''); END $f$;
        CREATE INDEX ON sec_app.{t} (sec_app.idx_{t}(body, family_id))""",
    "rule": """CREATE RULE r AS ON UPDATE TO sec_app.{t} DO ALSO INSERT INTO sec_app.log VALUES (current_user, '{t}')""",
}


@pytest.mark.parametrize("kind", list(TRIGGERS))
def test_s3_s8_worker_and_superuser_jobs_run_the_owners_code_as_the_owner(roles, kind):
    t = "t_" + "_".join(kind.split()[:2])
    with connect(user="sec_app") as app:
        app_setup(app, t)
        app.execute(f"SELECT genome.register_collection('sec_{t}', 'sec_app.{t}', 'id', 'body', model => 'tiny-bert')")
        app.execute(TRIGGERS[kind].format(t=t))
        app.execute(f"SELECT genome.enable_auto_embed('sec_{t}')")
    with connect() as su:
        # the background worker (bootstrap superuser) embeds the rows ...
        deadline = time.time() + 120
        while time.time() < deadline and su.execute(f"SELECT count(*) FROM sec_app.{t} WHERE embedding IS NULL").fetchone()[0]:
            time.sleep(0.3)
        assert su.execute(f"SELECT count(*) FROM sec_app.{t} WHERE embedding IS NULL").fetchone()[0] == 0
        # ... and a superuser runs the weekly job and the assignment by hand
        su.execute(f"SELECT * FROM genome.full_classify('sec_{t}', min_cluster_size => 5)")
        with connect(user="sec_app") as app:
            app.execute(f"UPDATE sec_app.{t} SET family_id = NULL WHERE id <= 10")
        su.execute(f"SELECT * FROM genome.assign_family('sec_{t}', min_pending => 1)")
        who = set(log_of(su, t))
        assert who == {"sec_app"}, who
        assert not is_superuser(su, "sec_app")


def test_s3_pg_cron_jobs_run_as_the_table_owner(roles):
    with connect("genome") as su:
        if not su.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_cron'").fetchone():
            pytest.skip("pg_cron lives in the main job's database")
        su.execute("SET client_min_messages = warning")
        su.execute("DROP TABLE IF EXISTS public.sec_cron")
        su.execute("CREATE TABLE public.sec_cron (id bigint PRIMARY KEY, body text)")
        su.execute("DROP ROLE IF EXISTS sec_cron_owner")
        su.execute("CREATE ROLE sec_cron_owner LOGIN IN ROLE genome_user")
        su.execute("ALTER TABLE public.sec_cron OWNER TO sec_cron_owner")
        try:
            su.execute("SELECT genome.register_collection('sec_cron', 'public.sec_cron', 'id', 'body')")
            su.execute("SELECT * FROM genome.schedule('sec_cron')")
            users = su.execute("SELECT DISTINCT username FROM cron.job WHERE jobname LIKE 'genome\\_%%:sec_cron'").fetchall()
            assert users == [("sec_cron_owner",)]
            # dropping the table takes its registration and its jobs (a job left behind would run
            # on whatever table is registered next under the name)
            su.execute("DROP TABLE public.sec_cron")
            assert su.execute("SELECT count(*) FROM cron.job WHERE jobname LIKE 'genome\\_%%:sec_cron'").fetchone()[0] == 0
        finally:
            su.execute("SELECT genome.unregister_collection('sec_cron')")
            su.execute("DROP TABLE IF EXISTS public.sec_cron")
            su.execute("DROP ROLE sec_cron_owner")


def test_s4_a_trigger_attached_to_another_table_enqueues_nothing(roles):
    with connect(user="sec_app") as app:
        app_setup(app, "victim")
        app.execute("SELECT genome.register_collection('sec_victim', 'sec_app.victim', 'id', 'body', model => 'tiny-bert')")
        app.execute("SELECT genome.enable_auto_embed('sec_victim', backfill => false)")
    with connect(user="sec_mini") as mini:
        mini.execute("CREATE TEMP TABLE spam (id bigint, body text, embedding text)")
        for level in ("ROW", "STATEMENT"):
            ref = "REFERENCING NEW TABLE AS new_rows" if level == "STATEMENT" else ""
            mini.execute(f"CREATE TRIGGER s_{level} AFTER INSERT ON spam {ref} FOR EACH {level} "
                         "EXECUTE FUNCTION genome.auto_embed_enqueue('sec_victim')")
        mini.execute("INSERT INTO spam SELECT i, 'x', NULL FROM generate_series(1, 500) i")
    with connect() as su:
        n = su.execute("SELECT count(*) FROM genome.embed_queue_items WHERE collection = 'sec_victim'").fetchone()[0]
        assert n == 0


# An enum of the app's: to_jsonb and ::text call the casts its owner defines on it.
CASTS = """
CREATE TYPE sec_app.tag_{k} AS ENUM ('a', 'b', 'rex', 't1', 't2', 't3');
CREATE FUNCTION sec_app.tag_text_{k}(sec_app.tag_{k}) RETURNS text LANGUAGE plpgsql AS $f$
    BEGIN PERFORM sec_app.escalate('cast_{k}'); RETURN 'cast:' || $1::name; END $f$;
CREATE CAST (sec_app.tag_{k} AS text) WITH FUNCTION sec_app.tag_text_{k}(sec_app.tag_{k});
CREATE FUNCTION sec_app.tag_json_{k}(sec_app.tag_{k}) RETURNS json LANGUAGE plpgsql AS $f$
    BEGIN PERFORM sec_app.escalate('cast_{k}'); RETURN to_json('cast'::text); END $f$;
CREATE CAST (sec_app.tag_{k} AS json) WITH FUNCTION sec_app.tag_json_{k}(sec_app.tag_{k});
"""


def test_s5_s6_writers_types_and_casts_never_run_with_pg_genomes_rights(roles, ):
    with connect(user="sec_app") as app:
        app.execute(ESCALATE)
        app.execute(CASTS.format(k="q") + CASTS.format(k="p"))
        # a queue collection keyed by the type, and a photo table whose pet is of the type
        app.execute("DROP TABLE IF EXISTS sec_app.tagged, sec_app.pics")
        app.execute("CREATE TABLE sec_app.tagged (id sec_app.tag_q PRIMARY KEY, body text)")
        app.execute("SELECT genome.register_collection('sec_tagged', 'sec_app.tagged', 'id', 'body', model => 'tiny-bert')")
        app.execute("SELECT genome.enable_auto_embed('sec_tagged')")
        app.execute("CREATE TABLE sec_app.pics (pet sec_app.tag_p, pid bigint PRIMARY KEY, img bytea, at timestamptz)")
        app.execute("SELECT genome.register_pet_media('sec_app.pics', 'pet', 'pid', 'img', 'at', name => 'sec_pics')")
        app.execute("INSERT INTO sec_app.tagged VALUES ('a', 'one')")
        app.execute("INSERT INTO sec_app.tagged VALUES ('b', 'two'), ('t1', 'three')")  # row and statement paths
        app.execute("INSERT INTO sec_app.pics VALUES ('rex', 1, NULL, now())")
        app.execute("UPDATE sec_app.tagged SET body = 'changed' WHERE id = 'a'")
    with connect() as su:
        queued = su.execute("SELECT array_agg(row_id ORDER BY row_id) FROM genome.embed_queue_items WHERE collection = 'sec_tagged'").fetchone()[0]
        assert queued == ["a", "b", "t1"]
        assert su.execute("SELECT pet_id FROM genome.pet_dirty WHERE media = 'sec_pics'").fetchall() == [("rex",)]
        # the writer's casts ran as nobody more privileged than the writer
        assert set(log_of(su, "cast_q")) <= {"sec_app"} and set(log_of(su, "cast_p")) <= {"sec_app"}
        assert not is_superuser(su, "sec_app")


def test_s7_a_registration_written_by_dml_grants_nothing(roles):
    with connect() as su:
        su.execute("ALTER ROLE sec_other PASSWORD 'original'")
        before = su.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'sec_other'").fetchone()[0]
    with connect(user="sec_op") as op:
        # DML on genome.collections does not let a role name a table it cannot write
        for relid in ("pg_catalog.pg_authid", "public.sec_secret"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                op.execute("""INSERT INTO genome.collections (name, relid, id_column, text_column, embedding_column, family_column,
                                                              model, dimension, auto_embed, registered_by)
                              VALUES ('sec_evil', %s::regclass, 'rolname', 'rolname', 'rolpassword', 'rolname',
                                      'tiny-bert@1', 32, true, 'postgres')""", (relid,))
        # nor repoint or rewrite another application's registration
        assert op.execute("UPDATE genome.collections SET relid = 'pg_catalog.pg_authid'::regclass WHERE name LIKE 'sec\\_%'").rowcount == 0
    # a registration whose registering role no longer owns the table grants nothing either:
    # sec_app, a member of the owning role sec_other, registers the table, then leaves the role
    with connect() as su:
        su.execute("DROP TABLE IF EXISTS sec_app.sec_lent")
        su.execute("CREATE TABLE sec_app.sec_lent (id bigint PRIMARY KEY, body text, embedding vector(32), family_id bigint)")
        su.execute("INSERT INTO sec_app.sec_lent VALUES (1, 'one'), (2, 'two')")
        su.execute("ALTER TABLE sec_app.sec_lent OWNER TO sec_other")
        su.execute("GRANT SELECT, UPDATE ON sec_app.sec_lent TO sec_mini")
        su.execute("GRANT sec_other TO sec_app")
    with connect(user="sec_mini") as mini:
        # a grantee, not an owner, cannot register the table (it would act on it as its owner)
        su_grant = connect()
        su_grant.execute("GRANT genome_user TO sec_mini")
        try:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                mini.execute("SELECT genome.register_collection('sec_grantee', 'sec_app.sec_lent', 'id', 'body', model => 'tiny-bert')")
        finally:
            su_grant.execute("REVOKE genome_user FROM sec_mini")
            su_grant.close()
    with connect(user="sec_app") as app:
        app.execute("SELECT genome.register_collection('sec_lent', 'sec_app.sec_lent', 'id', 'body', model => 'tiny-bert')")
        assert app.execute("SELECT registered_by::text FROM genome.collections WHERE name = 'sec_lent'").fetchone()[0] == "sec_app"
    with connect() as su:
        su.execute("REVOKE sec_other FROM sec_app")
        su.execute("INSERT INTO genome.embed_queue_items (collection, row_id) VALUES ('sec_lent', '1')")
        try:
            # the worker (superuser) picks the row up and refuses; so does a superuser's call
            deadline = time.time() + 60
            while time.time() < deadline and su.execute(
                    "SELECT last_error IS NULL FROM genome.embed_queue_items WHERE collection = 'sec_lent'").fetchone()[0]:
                time.sleep(0.3)
            err = su.execute("SELECT last_error FROM genome.embed_queue_items WHERE collection = 'sec_lent'").fetchone()[0]
            assert "registered by sec_app, which does not own table" in err, err
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="registered by sec_app"):
                su.execute("SELECT * FROM genome.full_classify('sec_lent')")
            assert su.execute("SELECT count(embedding) FROM sec_app.sec_lent").fetchone()[0] == 0
            # health() names it and goes on
            assert "sec_lent" in su.execute("SELECT genome.health()").fetchone()[0]["refused_collections"]
            assert su.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'sec_other'").fetchone()[0] == before
        finally:
            su.execute("SELECT genome.unregister_collection('sec_lent')")
            su.execute("DROP TABLE sec_app.sec_lent")


def test_s4_a_trigger_without_transition_tables_reads_no_temp_relation(roles):
    with connect(user="sec_app") as app:
        app_setup(app, "tempview")
        app.execute("SELECT genome.register_collection('sec_tempview', 'sec_app.tempview', 'id', 'body', model => 'tiny-bert')")
        app.execute("SELECT genome.enable_auto_embed('sec_tempview', backfill => false)")
        app.execute("""CREATE FUNCTION sec_app.peek() RETURNS text LANGUAGE plpgsql AS $f$
                       BEGIN PERFORM sec_app.escalate('tempview'); RETURN 'x'; END $f$""")
        # the queue trigger function attached again, statement level, without REFERENCING: its
        # "new_rows" would be this temp view, read with the function owner's rights
        app.execute("CREATE TEMP VIEW new_rows AS SELECT sec_app.peek() AS id, NULL::int AS embedding")
        app.execute("CREATE TEMP VIEW old_rows AS SELECT sec_app.peek() AS pet")
        app.execute("""CREATE TRIGGER sneaky AFTER INSERT ON sec_app.tempview FOR EACH STATEMENT
                       EXECUTE FUNCTION genome.auto_embed_enqueue('sec_tempview')""")
        app.execute("INSERT INTO sec_app.tempview VALUES (5000, 'a row')")
        app.execute("DROP TABLE IF EXISTS sec_app.tempview_pics")
        app.execute("CREATE TABLE sec_app.tempview_pics (pet int, pid int PRIMARY KEY, img bytea, at timestamptz)")
        app.execute("SELECT genome.register_pet_media('sec_app.tempview_pics', 'pet', 'pid', 'img', 'at', name => 'sec_tvpics')")
        app.execute("""CREATE TRIGGER sneaky AFTER DELETE ON sec_app.tempview_pics FOR EACH STATEMENT
                       EXECUTE FUNCTION genome._pet_mark_dirty('sec_tvpics')""")
        app.execute("DELETE FROM sec_app.tempview_pics")
    with connect() as su:
        assert log_of(su, "tempview") == []
        assert not is_superuser(su, "sec_app")
        # the real trigger queued the row
        assert su.execute("SELECT count(*) FROM genome.embed_queue_items WHERE collection = 'sec_tempview' AND row_id = '5000'").fetchone()[0] == 1


def test_s3_settings_made_by_the_owners_code_do_not_stay(roles):
    with connect(user="sec_app") as app:
        app_setup(app, "setter")
        app.execute("SELECT genome.register_collection('sec_setter', 'sec_app.setter', 'id', 'body', model => 'tiny-bert')")
        app.execute("""CREATE FUNCTION sec_app.set_it() RETURNS trigger LANGUAGE plpgsql AS $f$
                       BEGIN PERFORM set_config('work_mem', '77kB', false); RETURN NULL; END $f$""")
        app.execute("CREATE TRIGGER setter AFTER UPDATE ON sec_app.setter FOR EACH STATEMENT EXECUTE FUNCTION sec_app.set_it()")
    with connect() as su:
        su.execute("SET work_mem = '4MB'")
        su.execute("SELECT * FROM genome.full_classify('sec_setter', min_cluster_size => 5)")
        assert su.execute("SHOW work_mem").fetchone()[0] == "4MB"


def test_partitioned_tables_queue_row_updates(roles):
    with connect(user="sec_app") as app:
        app.execute("DROP TABLE IF EXISTS sec_app.parted")
        app.execute("CREATE TABLE sec_app.parted (id bigint, body text) PARTITION BY RANGE (id)")
        app.execute("CREATE TABLE sec_app.parted_a PARTITION OF sec_app.parted FOR VALUES FROM (0) TO (100)")
        app.execute("INSERT INTO sec_app.parted VALUES (1, 'one'), (2, 'two')")
        app.execute("ALTER TABLE sec_app.parted ADD PRIMARY KEY (id)")
        app.execute("SELECT genome.register_collection('sec_parted', 'sec_app.parted', 'id', 'body', model => 'tiny-bert')")
        app.execute("SELECT genome.enable_auto_embed('sec_parted', backfill => false)")
        app.execute("UPDATE sec_app.parted SET embedding = genome.embed(body, 'tiny-bert')")
        app.execute("UPDATE sec_app.parted SET body = 'changed' WHERE id = 1")
        # the update cleared the stale embedding, and queued the row to embed it again
        assert app.execute("SELECT embedding IS NULL FROM sec_app.parted WHERE id = 1").fetchone()[0]
        n = app.execute("SELECT count(*) FROM genome.embed_queue_items WHERE collection = 'sec_parted' AND row_id = '1'").fetchone()[0]
        assert n == 1


def test_s1_a_model_path_is_written_only_by_those_who_may_read_server_files(roles):
    with connect() as su:
        su.execute("GRANT genome_admin TO sec_reader")
    try:
        with connect(user="sec_reader") as c:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="onnx_path may be set only by"):
                c.execute("""INSERT INTO genome.models (name, version, task, dimension, onnx_path, tokenizer, config, sha256)
                             SELECT 'sec-path', '1', task, dimension, '/dev/zero', tokenizer, config, sha256
                               FROM genome.models WHERE name = 'tiny-bert'""")
        with connect() as su:
            # and a path that is no regular file is refused at load, not read forever
            su.execute("""INSERT INTO genome.models (name, version, task, dimension, onnx_path, tokenizer, config, sha256)
                          SELECT 'sec-path', '1', task, dimension, '/dev/zero', tokenizer, config, sha256
                            FROM genome.models WHERE name = 'tiny-bert'""")
            with pytest.raises(psycopg.Error, match="not a regular file"):
                su.execute("SELECT genome.embed('x', 'sec-path')")
    finally:
        with connect() as su:
            su.execute("REVOKE genome_admin FROM sec_reader")
            su.execute("DELETE FROM genome.models WHERE name = 'sec-path'")


def test_s8_superuser_search_runs_the_owners_json_casts_as_the_owner(roles):
    with connect(user="sec_app") as app:
        app.execute(ESCALATE)
        app.execute(CASTS.format(k="s"))
        app.execute("DROP TABLE IF EXISTS sec_app.docs")
        app.execute("CREATE TABLE sec_app.docs (id bigint PRIMARY KEY, body text, tag sec_app.tag_s)")
        app.execute("INSERT INTO sec_app.docs SELECT i, 'document ' || i, (ARRAY['t1', 't2', 't3'])[1 + i % 3]::sec_app.tag_s FROM generate_series(1, 20) i")
        app.execute("SELECT genome.register_collection('sec_docs', 'sec_app.docs', 'id', 'body', model => 'tiny-bert')")
        app.execute("UPDATE sec_app.docs SET embedding = genome.embed(body, 'tiny-bert')")
    with connect() as su:
        hits = su.execute("SELECT id, \"row\" FROM genome.search('sec_docs', 'document 3', top_k => 3, score_threshold => -1)").fetchall()
        assert len(hits) == 3
        assert set(log_of(su, "cast_s")) == {"sec_app"}
        assert not is_superuser(su, "sec_app")
    # a role without SELECT on the table sees nothing through pg_genome
    with connect() as su:
        su.execute("GRANT genome_user TO sec_mini")
    try:
        with connect(user="sec_mini") as mini:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
                mini.execute("SELECT * FROM genome.search('sec_docs', 'document 3')")
            # no Rust backtrace reaches the client
            detail = e.value.diag.message_detail or ""
            assert "pgrx" not in detail and "panicking" not in detail, detail
            # nor the families' labels: words of rows it cannot read
            assert mini.execute("SELECT count(*) FROM genome.families WHERE collection = 'sec_docs'").fetchone()[0] == 0
    finally:
        with connect() as su:
            su.execute("REVOKE genome_user FROM sec_mini")


def test_s9_an_operator_in_a_writable_public_schema_never_runs_in_a_superusers_search(roles):
    with connect() as su:
        su.execute("GRANT CREATE ON SCHEMA public TO sec_mini")
    with connect(user="sec_app") as app:
        app.execute(ESCALATE)
        app.execute("DROP TABLE IF EXISTS sec_app.shop")
        app.execute("CREATE TABLE sec_app.shop (id bigint PRIMARY KEY, body text, category varchar(20))")
        app.execute("INSERT INTO sec_app.shop SELECT i, 'item ' || i, (ARRAY['a', 'b'])[1 + i % 2] FROM generate_series(1, 30) i")
        app.execute("SELECT genome.register_collection('sec_shop', 'sec_app.shop', 'id', 'body', model => 'tiny-bert')")
        app.execute("UPDATE sec_app.shop SET embedding = genome.embed(body, 'tiny-bert')")
        app.execute("GRANT SELECT ON sec_app.shop TO PUBLIC")
    try:
        hijack_and_search()
    finally:
        with connect() as su:
            su.execute("DROP OPERATOR IF EXISTS public.= (varchar, varchar)")
            su.execute("DROP OPERATOR IF EXISTS public.- (integer, double precision)")
            su.execute("DROP FUNCTION IF EXISTS public.sec_eq(varchar, varchar), public.sec_minus(integer, double precision)")
            su.execute("REVOKE CREATE ON SCHEMA public FROM sec_mini")


def hijack_and_search():
    with connect(user="sec_mini") as mini:
        mini.execute("""CREATE FUNCTION public.sec_eq(a varchar, b varchar) RETURNS boolean LANGUAGE plpgsql AS $f$
                        BEGIN PERFORM sec_app.escalate('op'); RETURN a::text = b::text; END $f$""")
        mini.execute("CREATE OPERATOR public.= (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = public.sec_eq)")
        mini.execute("""CREATE FUNCTION public.sec_minus(a integer, b double precision) RETURNS double precision LANGUAGE plpgsql AS $f$
                        BEGIN PERFORM sec_app.escalate('op'); RETURN a::float8 - b; END $f$""")
        mini.execute("CREATE OPERATOR public.- (LEFTARG = integer, RIGHTARG = double precision, FUNCTION = public.sec_minus)")
    with connect() as su:
        rows = su.execute("""SELECT id FROM genome.search('sec_shop', genome.embed('item 4', 'tiny-bert'), top_k => 5,
                               score_threshold => -1, filter => '{"category": "a"}')""").fetchall()
        assert len(rows) == 5
        rows = su.execute("""SELECT id FROM genome.search('sec_shop', genome.embed('item 4', 'tiny-bert'), top_k => 5,
                               score_threshold => -1, filter => '{"category": ["a", "b"]}')""").fetchall()
        assert len(rows) == 5
        assert log_of(su, "op") == []


# ---- reliability --------------------------------------------------------------------------------

def test_b1_health_works_for_a_monitoring_role_and_names_what_it_skips(roles):
    with connect(user="sec_app") as app:
        app_setup(app, "private")
        app.execute("SELECT genome.register_collection('sec_private', 'sec_app.private', 'id', 'body', model => 'tiny-bert')")
    with connect(user="sec_mon") as mon:
        h = mon.execute("SELECT genome.health()").fetchone()[0]
        assert "sec_private" in h["skipped_collections"]
        assert "sec_private" not in h["pending_assignment"]
        assert h["runtime"]["onnxruntime_version"] == "1.31.1"
        text = mon.execute("SELECT genome.metrics()").fetchone()[0]
        assert 'genome_families{collection="sec_private"}' in text
        # family labels are words of the app's rows: not readable by monitoring
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            mon.execute("SELECT label FROM genome.families")


def test_b2_zero_vectors_and_nan_thresholds_are_errors(roles):
    with connect(user="sec_app") as app:
        app_setup(app, "zero")
        app.execute("SELECT genome.register_collection('sec_zero', 'sec_app.zero', 'id', 'body', model => 'tiny-bert')")
        app.execute("UPDATE sec_app.zero SET embedding = genome.embed(body, 'tiny-bert')")
        zero = "[" + ",".join(["0"] * 32) + "]"
        with pytest.raises(psycopg.Error) as e:
            app.execute("SELECT * FROM genome.search('sec_zero', %s::vector, score_threshold => 0.9)", (zero,))
        assert e.value.sqlstate == "22023" and "zero length" in str(e.value)
        with pytest.raises(psycopg.Error) as e:
            app.execute("SELECT * FROM genome.search('sec_zero', 'row', score_threshold => 'NaN')")
        assert e.value.sqlstate == "22023"
        # a stored zero vector has no score: never a hit
        app.execute(f"UPDATE sec_app.zero SET embedding = '{zero}' WHERE id = 1")
        ids = [r[0] for r in app.execute("SELECT id FROM genome.search('sec_zero', 'row number 1 about ships', top_k => 60, score_threshold => -1)")]
        assert "1" not in ids and len(ids) >= 50
        with pytest.raises(psycopg.Error) as e:
            app.execute("""SELECT * FROM genome.search('sec_zero', 'row', filter => '{"body": {"nested": 1}}')""")
        assert e.value.sqlstate == "22023"


def worker_pid(c):
    row = c.execute("""SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_genome embed worker'
                        AND datname = current_database()""").fetchone()
    return row[0] if row else None


def test_b4_the_worker_fails_rows_with_the_real_error_and_lives_on(roles):
    with connect(user="sec_app") as app:
        app_setup(app, "renamed")
        app.execute("SELECT genome.register_collection('sec_renamed', 'sec_app.renamed', 'id', 'body', model => 'tiny-bert')")
        app.execute("SELECT genome.enable_auto_embed('sec_renamed', backfill => false)")
        # a dropped text column (a renamed one is followed, see below)
        app.execute("ALTER TABLE sec_app.renamed ADD COLUMN body_v2 text")
        app.execute("ALTER TABLE sec_app.renamed DROP COLUMN body CASCADE")  # with the text-update triggers
        app.execute("INSERT INTO sec_app.renamed (id, body_v2) VALUES (1001, 'queued after the drop')")
        app_setup(app, "castfail")
        app.execute("SELECT genome.register_collection('sec_castfail', 'sec_app.castfail', 'id', 'body', model => 'tiny-bert')")
        app.execute("SELECT genome.enable_auto_embed('sec_castfail', backfill => false)")
    with connect() as su:
        deadline = time.time() + 30
        while worker_pid(su) is None and time.time() < deadline:
            time.sleep(0.2)
        pid = worker_pid(su)
        assert pid is not None
        # an id that does not cast to the table's bigint id, queued with good ones
        su.execute("INSERT INTO genome.embed_queue_items (collection, row_id) VALUES ('sec_castfail', 'not-a-number')")
        su.execute("INSERT INTO genome.embed_queue_items (collection, row_id) SELECT 'sec_castfail', i::text FROM generate_series(1, 5) i")
        deadline = time.time() + 60
        q = """SELECT count(*) FILTER (WHERE last_error LIKE %s), count(*) FILTER (WHERE status = 'completed')
                 FROM genome.embed_queue_items WHERE collection = %s"""
        while time.time() < deadline and (su.execute(q, ("%no longer exists%", "sec_renamed")).fetchone()[0] < 1
                                          or su.execute(q, ("%invalid input syntax%", "sec_castfail")).fetchone() != (1, 5)):
            time.sleep(0.3)
        assert su.execute(q, ("%no longer exists%", "sec_renamed")).fetchone()[0] == 1
        assert su.execute(q, ("%invalid input syntax for type bigint%", "sec_castfail")).fetchone() == (1, 5)
        assert worker_pid(su) == pid, "the worker restarted"
        err = su.execute("SELECT last_error FROM genome.embed_queue WHERE collection = 'sec_renamed'").fetchone()[0]
        assert "no longer exists" in err
        h = su.execute("SELECT genome.health()").fetchone()[0]
        assert {"collection": "sec_renamed", "missing_columns": ["body"]} in h["broken_collections"]


def test_b5_renamed_columns_are_followed(roles):
    with connect(user="sec_app") as app:
        app_setup(app, "moved")
        app.execute("SELECT genome.register_collection('sec_moved', 'sec_app.moved', 'id', 'body', model => 'tiny-bert')")
        app.execute("SELECT genome.enable_auto_embed('sec_moved', backfill => false)")
        app.execute("ALTER TABLE sec_app.moved RENAME COLUMN body TO content")
        app.execute("ALTER TABLE sec_app.moved RENAME COLUMN embedding TO vec")
        row = app.execute("SELECT text_column, embedding_column FROM genome.collections WHERE name = 'sec_moved'").fetchone()
        assert row == ("content", "vec")
        app.execute("INSERT INTO sec_app.moved (id, content) VALUES (2000, 'written after the renames')")
        app.execute("UPDATE sec_app.moved SET vec = genome.embed(content, 'tiny-bert') WHERE id = 1")
        app.execute("UPDATE sec_app.moved SET content = 'edited' WHERE id = 1")
        # the clearing trigger names the renamed embedding column, and both rows are queued
        assert app.execute("SELECT vec IS NULL FROM sec_app.moved WHERE id = 1").fetchone()[0]
        deadline = time.time() + 60  # the worker embeds them, or this session does
        while time.time() < deadline and app.execute("SELECT count(vec) FROM sec_app.moved WHERE id IN (1, 2000)").fetchone()[0] < 2:
            app.execute("SELECT genome.process_embed_queue(10)")
            time.sleep(0.2)
        assert app.execute("SELECT count(vec) FROM sec_app.moved WHERE id IN (1, 2000)").fetchone()[0] == 2
        h = app.execute("SELECT genome.health()").fetchone()[0]
        assert all(b["collection"] != "sec_moved" for b in h["broken_collections"])


def test_b5_a_dropped_column_stops_embedding_not_the_apps_writes(roles):
    with connect(user="sec_app") as app:
        app_setup(app, "dropped")
        app.execute("SELECT genome.register_collection('sec_dropped', 'sec_app.dropped', 'id', 'body', model => 'tiny-bert')")
        app.execute("SELECT genome.enable_auto_embed('sec_dropped', backfill => false)")
        app.execute("ALTER TABLE sec_app.dropped DROP COLUMN embedding")
        app.execute("INSERT INTO sec_app.dropped VALUES (1000, 'still written')")
        app.execute("UPDATE sec_app.dropped SET body = 'edited too' WHERE id = 1")
        assert app.execute("SELECT count(*) FROM sec_app.dropped WHERE id = 1000 OR body = 'edited too'").fetchone()[0] == 2
        h = app.execute("SELECT genome.health()").fetchone()[0]
        assert {"collection": "sec_dropped", "missing_columns": ["embedding"]} in h["broken_collections"]




def test_b6_dump_and_restore_keep_collections_families_and_the_queue(roles, tmp_path):
    import subprocess
    env = {"PGHOST": "127.0.0.1", "PGPORT": str(connect().info.port), "PGUSER": "postgres", "PATH": "/usr/bin:/bin"}
    with connect("postgres") as c:
        c.execute("DROP DATABASE IF EXISTS sec_dump WITH (FORCE)")
        c.execute("DROP DATABASE IF EXISTS sec_restore WITH (FORCE)")
        c.execute("CREATE DATABASE sec_dump")
    try:
        with connect("sec_dump") as d:
            d.execute("CREATE EXTENSION pg_genome CASCADE")
            d.execute("SELECT genome.register_model_dir('tiny-bert', '1', %s)", (f"{MODELS}/tiny-bert",))
            d.execute("CREATE TABLE public.docs (id bigint PRIMARY KEY, body text)")
            d.execute("INSERT INTO docs SELECT i, 'document ' || i || ' about ' || (ARRAY['cats', 'ships', 'tax'])[1 + i % 3] "
                      "FROM generate_series(1, 90) i")
            d.execute("SELECT genome.register_collection('docs', 'public.docs', 'id', 'body', model => 'tiny-bert')")
            d.execute("SELECT * FROM genome.full_classify('docs', min_cluster_size => 5)")
            d.execute("SELECT genome.enable_auto_embed('docs')")
            # no worker serves this database: the queue waits, as it would in a dump taken mid-work
            d.execute("INSERT INTO docs VALUES (1001, 'a new document about ships')")
            before = d.execute("""SELECT (SELECT count(*) FROM genome.families WHERE collection = 'docs'),
                                         (SELECT count(*) FROM genome.embed_queue_items WHERE collection = 'docs'),
                                         (SELECT array_agg(family_id ORDER BY id) FROM docs)""").fetchone()
            assert before[0] > 1 and before[1] == 1
        dump = tmp_path / "sec.dump"
        subprocess.run([f"{PG_BIN}/pg_dump", "-Fc", "-d", "sec_dump", "-f", str(dump)], env=env, check=True)
        with connect("postgres") as c:
            c.execute("CREATE DATABASE sec_restore")
        r = subprocess.run([f"{PG_BIN}/pg_restore", "-d", "sec_restore", str(dump)], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        with connect("sec_restore") as d:
            after = d.execute("""SELECT (SELECT count(*) FROM genome.families WHERE collection = 'docs'),
                                        (SELECT count(*) FROM genome.embed_queue_items WHERE collection = 'docs'),
                                        (SELECT array_agg(family_id ORDER BY id) FROM docs)""").fetchone()
            assert after == before
            assert d.execute("SELECT relid = 'public.docs'::regclass FROM genome.collections").fetchone()[0]
            # the queue goes on, new rows are queued, search and a new full run work (no id collides)
            assert d.execute("SELECT genome.process_embed_queue(10)").fetchone()[0] == 1
            d.execute("INSERT INTO docs VALUES (1002, 'another one')")
            assert d.execute("SELECT genome.process_embed_queue(10)").fetchone()[0] == 1
            assert d.execute("SELECT count(*) FROM genome.search('docs', 'ships', score_threshold => -1)").fetchone()[0] == 10
            d.execute("SELECT * FROM genome.full_classify('docs', min_cluster_size => 5)")
            # re-registering a registration whose table went stale keeps its families
            d.execute("UPDATE genome.collections SET relid = 1 WHERE name = 'docs'")
            n = d.execute("SELECT count(*) FROM genome.families WHERE collection = 'docs'").fetchone()[0]
            d.execute("SELECT genome.register_collection('docs', 'public.docs', 'id', 'body', model => 'tiny-bert')")
            assert d.execute("SELECT count(*) FROM genome.families WHERE collection = 'docs'").fetchone()[0] == n
    finally:
        with connect("postgres") as c:
            c.execute("DROP DATABASE IF EXISTS sec_dump WITH (FORCE)")
            c.execute("DROP DATABASE IF EXISTS sec_restore WITH (FORCE)")


def png_strip(w, h):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + bytes((x * 7) % 256 for x in range(w * 3)) for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def test_b3_an_extreme_aspect_ratio_photo_neither_crashes_nor_balloons(roles):
    strip = png_strip(100000, 1)
    assert len(strip) < 400_000
    with connect() as c:
        started = postmaster_start(c)
        pid = c.info.backend_pid
        assert c.execute("SELECT vector_dims(genome.embed_image(%s))", (strip,)).fetchone()[0] == 1280
        peak = int([line for line in open(f"/proc/{pid}/status") if line.startswith("VmHWM:")][0].split()[1])
        assert peak < 2_000_000, f"backend peak {peak} KiB"
        c.execute("DROP TABLE IF EXISTS sec_app.strips")
        c.execute("CREATE TABLE sec_app.strips (pet int, pid int PRIMARY KEY, img bytea, at timestamptz)")
        c.execute("INSERT INTO sec_app.strips VALUES (1, 1, %s, now()), (1, 2, %s, now())", (strip, png_strip(1, 100000)))
        c.execute("SELECT genome.register_pet_media('sec_app.strips', 'pet', 'pid', 'img', 'at', name => 'sec_strips')")
        r = c.execute("SELECT genome.cluster_dirty_pets('sec_strips')").fetchone()[0]
        assert r["pets"] == 1 and r["errors"] == 0
        assert c.execute("SELECT count(embedding) FROM genome.pet_photos WHERE media = 'sec_strips'").fetchone()[0] == 2
        assert postmaster_start(c) == started


def test_truncate_and_identical_texts(roles):
    with connect(user="sec_app") as app:
        app.execute("DROP TABLE IF EXISTS sec_app.same")
        app.execute("CREATE TABLE sec_app.same (id bigint PRIMARY KEY, body text)")
        app.execute("INSERT INTO sec_app.same SELECT i, 'the very same text' FROM generate_series(1, 200) i")
        app.execute("SELECT genome.register_collection('sec_same', 'sec_app.same', 'id', 'body', model => 'tiny-bert')")
        notices = []
        app.add_notice_handler(lambda d: notices.append(d.message_primary))
        n = app.execute("SELECT n_clusters FROM genome.full_classify('sec_same')").fetchone()[0]
        assert n == 0
        assert any("found no families: all 200 rows have the same embedding" in m for m in notices), notices
        why = app.execute("SELECT params ->> 'no_families_reason' FROM genome.runs WHERE collection = 'sec_same'").fetchone()[0]
        assert "same embedding" in why
        # TRUNCATE: families keep ids and centroids but name no deleted row
        app_setup(app, "trunc")
        app.execute("SELECT genome.register_collection('sec_trunc', 'sec_app.trunc', 'id', 'body', model => 'tiny-bert')")
        app.execute("SELECT * FROM genome.full_classify('sec_trunc', min_cluster_size => 5)")
        assert app.execute("SELECT count(*) FROM genome.families WHERE collection = 'sec_trunc' AND exemplar_ids <> '{}'").fetchone()[0] > 0
        app.execute("TRUNCATE sec_app.trunc")
        row = app.execute("""SELECT count(*) FILTER (WHERE exemplar_ids <> '{}' OR size <> 0), count(*)
                               FROM genome.families WHERE collection = 'sec_trunc'""").fetchone()
        assert row[0] == 0 and row[1] > 1


def test_half_a_jpeg_with_an_end_marker_is_refused(roles):
    import io
    from PIL import Image
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:240, 0:320]
    px = np.stack([xx % 256, yy % 256, (xx * yy) % 251], axis=-1) + rng.integers(0, 40, (240, 320, 3))
    img = Image.fromarray(np.clip(px, 0, 255).astype(np.uint8))
    variants = {"4:2:0": dict(quality=90), "4:4:4": dict(quality=90, subsampling=0), "optimized": dict(optimize=True),
                "restart markers": dict(restart_marker_blocks=4), "grey": dict(), "progressive": dict(progressive=True)}
    with connect() as c:
        for name, opts in variants.items():
            buf = io.BytesIO()
            (img.convert("L") if name == "grey" else img).save(buf, "JPEG", **opts)
            full = buf.getvalue()
            assert c.execute("SELECT vector_dims(genome.embed_image(%s))", (full,)).fetchone()[0] == 1280, name
            half = full[:len(full) // 2] + b"\xff\xd9"
            if name == "progressive":
                continue  # progressive scans are left to the decoder (README)
            with pytest.raises(psycopg.Error) as e:
                c.execute("SELECT genome.embed_image(%s)", (half,))
            assert e.value.sqlstate == "22P03" and "truncated" in str(e.value), (name, str(e.value))


def test_internal_functions_are_closed_to_public(roles):
    with connect(user="sec_mini") as mini:
        for fn in ("genome.progress_slots()", "genome._runtime_info()", "genome._metrics_counters()",
                   "genome.cached_centroids()", "genome.wake_embed_workers()",
                   "genome._owner_value('sec_app.victim'::regclass, 'SELECT ''{}''::jsonb')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                mini.execute(f"SELECT {fn}")
    with connect() as su:
        # as cluster_pet does, a NULL pet is an error (it gave an empty payload before 0.5.0)
        with pytest.raises(psycopg.Error) as e:
            su.execute("SELECT genome.pet_clusters(NULL::int, 'no such media')")
        assert e.value.sqlstate == "22004"


def test_the_owner_assigns_pending_rows_and_others_see_none_of_them(roles):
    """genome.pending_rows (0.8.0): the table's owner, not a superuser, lists, takes and drops
    its pending rows through register_collection and assign_family; a role that cannot read the
    table sees no entry of it, even with every privilege on pg_genome's tables, and cannot list
    rows for it."""
    with connect(user="sec_app") as app:
        app_setup(app, "pendown")
        app.execute("SELECT genome.register_collection('sec_pendown', 'sec_app.pendown', 'id', 'body', model => 'tiny-bert')")
        assert app.execute("SELECT genome.pending_count('sec_pendown')").fetchone()[0] == 60
        app.execute("SELECT * FROM genome.full_classify('sec_pendown', min_cluster_size => 5)")
        app.execute("INSERT INTO sec_app.pendown (id, body) VALUES (9001, 'row about cats'), (9002, 'row about ships')")
        assert app.execute("SELECT genome.pending_count('sec_pendown')").fetchone()[0] == 2
        r = app.execute("SELECT * FROM genome.assign_family('sec_pendown', min_pending => 1)").fetchone()
        assert r[0] == 2, r
        assert app.execute("SELECT genome.pending_count('sec_pendown')").fetchone()[0] == 0
        app.execute("INSERT INTO sec_app.pendown (id, body) VALUES (9003, 'row about tax')")
    with connect(user="sec_op") as op:
        assert op.execute("SELECT count(*) FROM genome.pending_rows WHERE collection = 'sec_pendown'").fetchone()[0] == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            op.execute("INSERT INTO genome.pending_rows (collection, row_id) VALUES ('sec_pendown', 'x')")
        assert op.execute("DELETE FROM genome.pending_rows WHERE collection = 'sec_pendown'").rowcount == 0
    with connect() as su:
        assert su.execute("SELECT row_id FROM genome.pending_rows WHERE collection = 'sec_pendown'").fetchall() == [("9003",)]
