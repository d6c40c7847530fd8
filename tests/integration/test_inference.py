"""The shared inference service (src/inference.rs) against the project's cluster, whose inference
workers serve genome_it (scripts/cluster.sh: genome.worker_databases, genome.inference_workers):
the vectors it gives are the local path's, many sessions at once are batched together, a worker
terminated mid-batch gives an ERROR at once and is replaced, a cancel stops waiting, a model row
re-registered under load is reloaded, and local / shared / auto behave as documented."""
import threading
import time

import numpy as np
import psycopg
import pytest

import imageset
from conftest import MODELS, connect

TEXTS = [
    "the cat sat on the mat", "a quick brown fox jumps over the lazy dog", "PostgreSQL extensions in Rust",
    "Embeddings map text to vectors", "über naïve café", "短い日本語の文", "x",
    "one model copy per server, shared by every backend that embeds text with it",
] * 3
LONG = [" ".join(f"word{i}-{j} and some filler text to make it long" for j in range(40)) for i in range(128)]


def vec(s):
    return np.array([float(x) for x in s.strip("[]").split(",")], dtype=np.float32)


def info(c):
    return c.execute("SELECT genome._inference_info()").fetchone()[0]


def my_workers(c):
    oid = c.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
    return [w for w in info(c)["workers"] if w["database_oid"] == oid]


def wait_for_worker(c, timeout=30):
    """The workers of genome_it start once the database exists (the launcher looks every second)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if my_workers(c):
            return my_workers(c)
        time.sleep(0.2)
    pytest.fail(f"no inference worker for {c.info.dbname}: {info(c)}")


@pytest.fixture
def shared(database):
    with connect() as c:
        wait_for_worker(c)
        c.execute("SET genome.inference = shared")
        yield c


def embed_one(c, mode, text, model="all-minilm-l6-v2"):
    c.execute(f"SET genome.inference = {mode}")
    return vec(c.execute("SELECT genome.embed(%s, %s)::text", (text, model)).fetchone()[0])


def test_shared_gives_the_local_vectors_and_holds_no_model_in_the_backend(shared):
    c = shared
    c.execute("SELECT genome.clear_model_cache()")
    before = dict(line.rsplit(" ", 1) for line in c.execute("SELECT genome.metrics()").fetchone()[0].splitlines()
                  if line.startswith("genome_inference_requests_total"))
    for t in TEXTS[:8]:
        s = embed_one(c, "shared", t)
        l = embed_one(c, "local", t)
        # one text, one request, one model run on either path: the same bits
        assert np.array_equal(s, l), t
    # embed_batch: the same chunks (genome.batch_size, longest first) on either path
    c.execute("SET genome.inference = shared")
    c.execute("SELECT genome.clear_model_cache()")
    sb = [vec(v) for v in c.execute("SELECT unnest(genome.embed_batch(%s))::text", (TEXTS,)).fetchall() for v in v]
    assert c.execute("SELECT count(*) FROM genome.loaded_models()").fetchone()[0] == 0
    c.execute("SET genome.inference = local")
    lb = [vec(v) for v in c.execute("SELECT unnest(genome.embed_batch(%s))::text", (TEXTS,)).fetchall() for v in v]
    assert c.execute("SELECT count(*) FROM genome.loaded_models()").fetchone()[0] == 1
    assert len(sb) == len(lb) == len(TEXTS)
    for a, b in zip(sb, lb):
        assert np.array_equal(a, b)
    after = dict(line.rsplit(" ", 1) for line in c.execute("SELECT genome.metrics()").fetchone()[0].splitlines()
                 if line.startswith("genome_inference_requests_total"))
    assert int(after['genome_inference_requests_total{path="shared"}']) > int(before['genome_inference_requests_total{path="shared"}'])
    assert int(after['genome_inference_requests_total{path="local"}']) > int(before['genome_inference_requests_total{path="local"}'])


def test_many_sessions_at_once_get_the_local_vectors(shared):
    reference = {t: embed_one(shared, "local", t) for t in set(TEXTS)}
    with connect() as su:
        su.execute("ALTER SYSTEM SET genome.inference_max_wait = 20")
        su.execute("SELECT pg_reload_conf()")
    time.sleep(0.5)
    batches_before = sum(w["batches"] for w in my_workers(shared))
    items_before = sum(w["items"] for w in my_workers(shared))
    out, errors = {}, []

    def client(k):
        try:
            with connect() as c:
                c.execute("SET genome.inference = shared")
                got = []
                for r in range(3):
                    for t in TEXTS[k % 8::2]:
                        got.append((t, vec(c.execute("SELECT genome.embed(%s)::text", (t,)).fetchone()[0])))
                out[k] = got
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    try:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(12)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    finally:
        with connect() as su:
            su.execute("ALTER SYSTEM RESET genome.inference_max_wait")
            su.execute("SELECT pg_reload_conf()")
    assert not errors, errors
    n = 0
    for got in out.values():
        for t, v in got:
            # batched with other sessions' texts: another batch composition, the same vector
            cos = float(v @ reference[t] / np.linalg.norm(v) / np.linalg.norm(reference[t]))
            assert cos >= 0.99999, (t, cos)
            n += 1
    assert n == sum(3 * len(TEXTS[k % 8::2]) for k in range(12))
    batches = sum(w["batches"] for w in my_workers(shared)) - batches_before
    items = sum(w["items"] for w in my_workers(shared)) - items_before
    assert items == n
    # twelve sessions at once share model runs
    assert batches < items, (batches, items)


def test_a_worker_terminated_mid_batch_fails_the_waiting_sessions_at_once(shared):
    pid = wait_for_worker(shared)[0]["pid"]
    result = {}

    def long_call():
        with connect() as c:
            c.execute("SET genome.inference = shared")
            c.execute("SET genome.batch_size = 64")
            try:
                c.execute("SELECT genome.embed_batch(%s)", (LONG,))
                result["error"] = None
            except psycopg.Error as e:
                result["error"] = e
            result["at"] = time.monotonic()

    t = threading.Thread(target=long_call)
    t.start()
    end = time.monotonic() + 20
    while info(shared)["queue"]["running"] == 0 and time.monotonic() < end:
        time.sleep(0.005)
    assert info(shared)["queue"]["running"] > 0, "the long request never ran"
    killed = time.monotonic()
    shared.execute("SELECT pg_terminate_backend(%s)", (pid,))
    t.join(timeout=10)
    assert not t.is_alive()
    e = result["error"]
    assert e is not None and e.sqlstate == "58000" and "inference worker" in str(e), e
    assert result["at"] - killed < 1.0
    # the next call succeeds: auto runs it here until the new worker is up, shared once it is
    shared.execute("SET genome.inference = auto")
    assert shared.execute("SELECT vector_dims(genome.embed('after the crash'))").fetchone()[0] == 384
    new = wait_for_worker(shared)
    assert new[0]["pid"] != pid
    assert embed_one(shared, "shared", "after the crash").shape == (384,)
    # nothing leaked in the queue
    end = time.monotonic() + 5
    while info(shared)["queue"]["free"] != info(shared)["queue"]["slots"] and time.monotonic() < end:
        time.sleep(0.1)
    q = info(shared)["queue"]
    assert q["free"] == q["slots"], q


def test_a_cancelled_statement_stops_waiting_and_its_request_is_dropped(shared):
    c = shared
    c.execute("SET genome.batch_size = 64")
    c.execute("SET statement_timeout = '150ms'")
    t0 = time.monotonic()
    with pytest.raises(psycopg.errors.QueryCanceled):
        c.execute("SELECT genome.embed_batch(%s)", (LONG,))
    assert time.monotonic() - t0 < 1.0
    c.execute("RESET statement_timeout")
    end = time.monotonic() + 10
    while info(c)["queue"]["free"] != info(c)["queue"]["slots"] and time.monotonic() < end:
        time.sleep(0.05)
    q = info(c)["queue"]
    assert q["free"] == q["slots"], q
    assert c.execute("SELECT vector_dims(genome.embed('still fine'))").fetchone()[0] == 384


def test_a_model_re_registered_under_load_is_reloaded_by_the_workers(shared):
    c = shared
    c.execute("SELECT genome.register_model_dir('inf-swap', '1', %s)", (f"{MODELS}/tiny-bert",))
    stop = threading.Event()
    errors, dims = [], set()

    def load():
        with connect() as cc:
            cc.execute("SET genome.inference = shared")
            while not stop.is_set():
                try:
                    dims.add(cc.execute("SELECT vector_dims(genome.embed('under load', 'inf-swap'))").fetchone()[0])
                except psycopg.Error as e:
                    # the row may be gone between resolving it and running it: a clear ERROR
                    if e.sqlstate != "42704":
                        errors.append(repr(e))

    threads = [threading.Thread(target=load) for _ in range(3)]
    [t.start() for t in threads]
    try:
        time.sleep(0.5)
        # an UPDATE gives the row a new version: the workers reload it
        c.execute("UPDATE genome.models SET config = config WHERE name = 'inf-swap'")
        time.sleep(0.3)
        # re-registered as another model under the same name and version
        c.execute("DELETE FROM genome.models WHERE name = 'inf-swap'")
        c.execute("SELECT genome.register_model_dir('inf-swap', '1', %s)", (f"{MODELS}/all-minilm-l6-v2",))
        time.sleep(1.0)
    finally:
        stop.set()
        [t.join() for t in threads]
    try:
        assert not errors, errors[:3]
        assert dims == {32, 384}, dims
        s = embed_one(c, "shared", "after the swap", "inf-swap")
        assert np.array_equal(s, embed_one(c, "local", "after the swap", "inf-swap"))
        assert np.array_equal(s, embed_one(c, "local", "after the swap", "all-minilm-l6-v2"))
    finally:
        c.execute("DELETE FROM genome.models WHERE name = 'inf-swap'")


def test_local_shared_and_auto_without_a_worker():
    """A database no worker serves: local and auto run in the backend, shared is a clear ERROR."""
    with connect("postgres") as su:
        su.execute("DROP DATABASE IF EXISTS genome_it_noinf WITH (FORCE)")
        su.execute("CREATE DATABASE genome_it_noinf")
    try:
        with connect("genome_it_noinf") as c:
            c.execute("CREATE EXTENSION pg_genome CASCADE")
            c.execute("SELECT genome.register_model_dir('tiny-bert', '1', %s)", (f"{MODELS}/tiny-bert",))
            assert info(c)["path"] == "local" and info(c)["mode"] == "auto"
            assert c.execute("SELECT vector_dims(genome.embed('x', 'tiny-bert'))").fetchone()[0] == 32
            c.execute("SET genome.inference = local")
            assert c.execute("SELECT vector_dims(genome.embed('x', 'tiny-bert'))").fetchone()[0] == 32
            c.execute("SET genome.inference = shared")
            with pytest.raises(psycopg.Error) as e:
                c.execute("SELECT genome.embed('x', 'tiny-bert')")
            assert e.value.sqlstate == "55000" and "no inference worker" in str(e.value)
            assert c.execute("SELECT genome.health() -> 'inference' ->> 'path'").fetchone()[0] == "shared"
    finally:
        with connect("postgres") as su:
            su.execute("DROP DATABASE IF EXISTS genome_it_noinf WITH (FORCE)")


def test_a_session_with_its_own_memory_limit_runs_its_models_itself(shared):
    c = shared
    c.execute("SET genome.inference = auto")
    assert info(c)["path"] == "shared"
    c.execute("SET genome.model_memory_limit = '512MB'")
    assert info(c)["path"] == "local"
    c.execute("SET genome.inference = shared")
    with pytest.raises(psycopg.Error) as e:
        c.execute("SELECT genome.embed('x')")
    assert e.value.sqlstate == "55000" and "memory limit" in str(e.value)


def test_model_errors_come_back_with_their_sqlstate(shared):
    c = shared
    with pytest.raises(psycopg.Error) as e:
        c.execute("SELECT genome.embed('x', 'no-such-model')")
    assert e.value.sqlstate == "42704"
    # an image model asked for text is refused in the backend, before any request
    with pytest.raises(psycopg.Error) as e:
        c.execute("SELECT genome.embed('x', 'efficientnet-lite0')")
    assert e.value.sqlstate == "42809"


def test_image_embeddings_go_through_the_workers(shared):
    c = shared
    jpeg = imageset.reference_images()["china.jpg"]
    before = sum(w["items"] for w in my_workers(c))
    s = vec(c.execute("SELECT genome.embed_image(%s)::text", (jpeg,)).fetchone()[0])
    assert sum(w["items"] for w in my_workers(c)) == before + 1
    c.execute("SET genome.inference = local")
    l = vec(c.execute("SELECT genome.embed_image(%s)::text", (jpeg,)).fetchone()[0])
    assert s.shape == (1280,) and np.array_equal(s, l)
    c.execute("SET genome.inference = shared")
    many = c.execute("SELECT genome.embed_images(ARRAY[%s, NULL, %s]::bytea[])::text[]", (jpeg, jpeg)).fetchone()[0]
    assert many[1] is None and np.array_equal(vec(many[0]), l) and np.array_equal(vec(many[2]), l)


def test_health_and_metrics_report_the_service(shared):
    c = shared
    c.execute("SELECT genome.embed('for the counters')")
    h = c.execute("SELECT genome.health() -> 'inference'").fetchone()[0]
    assert h["mode"] == "shared" and h["path"] == "shared" and h["workers_per_database"] == 1
    assert h["queue"]["slots"] >= 2
    w = my_workers(c)
    assert len(w) == 1 and w[0]["provider"] == "cpu" and w[0]["intra_op_threads"] >= 1 and w[0]["items"] >= 1
    # a batch of texts runs as one single-threaded session per thread (sharing the weights)
    assert w[0]["text_sessions"] == max(1, w[0]["intra_op_threads"]), w[0]
    pids = {r[0] for r in c.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_genome inference worker'")}
    assert w[0]["pid"] in pids
    m = c.execute("SELECT genome.metrics()").fetchone()[0]
    for name in ["genome_inference_requests_total{path=\"shared\"}", "genome_inference_batch_size_bucket{le=\"+Inf\"}",
                 "genome_inference_wait_seconds_count", "genome_inference_run_seconds_count",
                 "genome_inference_queue_depth{state=\"pending\"}", "genome_inference_workers"]:
        assert name in m, name
    count = int([line for line in m.splitlines() if line.startswith("genome_inference_batch_size_count")][0].split()[1])
    assert count >= 1


def test_a_terminated_caller_frees_the_worker_from_an_endless_model(shared):
    """A caller terminated while the worker runs its request (FATAL: nothing unwinds in the
    backend) lets go of it on exit; the worker stops the run and serves the next request."""
    from test_security import LOOP_CONFIG, endless_loop_model, tokenizer
    c = shared
    c.execute("SELECT genome.register_model('inf-endless', '1', %s, %s, %s, validate_model => false)",
              (endless_loop_model(), tokenizer(), LOOP_CONFIG))
    try:
        victim = connect()
        victim.execute("SET genome.inference = shared")
        pid = victim.info.backend_pid
        t = threading.Thread(target=lambda: pytest.raises(psycopg.Error, victim.execute,
                                                          "SELECT genome.embed('never ends', 'inf-endless')"))
        t.start()
        end = time.monotonic() + 20
        while info(c)["queue"]["running"] == 0 and time.monotonic() < end:
            time.sleep(0.01)
        assert info(c)["queue"]["running"] > 0
        c.execute("SELECT pg_terminate_backend(%s)", (pid,))
        t.join(timeout=10)
        c.execute("SET statement_timeout = '10s'")
        t0 = time.monotonic()
        assert c.execute("SELECT vector_dims(genome.embed('after', 'tiny-bert'))").fetchone()[0] == 32
        assert time.monotonic() - t0 < 3.0
        c.execute("RESET statement_timeout")
        q = info(c)["queue"]
        assert q["running"] == 0, q
    finally:
        c.execute("DELETE FROM genome.models WHERE name = 'inf-endless'")
