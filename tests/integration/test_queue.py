"""Background embedding queue (with the real worker of the project's cluster serving this
database), semantic search through the pgvector HNSW index, re-embedding, health and metrics.
Real texts (the sample data), the default model, real PostgreSQL, pgvector and worker processes."""
import re
import threading
import time

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, connect


def texts(n, offset=0):
    out = []
    for line in (REPO / ".genome" / "data" / "fortunes.tsv").read_text().splitlines()[offset:offset + n]:
        i, cat, body = line.split("\t", 2)
        out.append((int(i), cat, body.replace("\\n", "\n").replace("\\t", " ")))
    return out


def wait_for(c, sql, want, timeout=180, args=None):
    deadline = time.time() + timeout
    got = None
    while time.time() < deadline:
        got = c.execute(sql, args).fetchone()[0]
        if got == want:
            return got
        time.sleep(0.2)
    raise AssertionError(f"{sql!r}: waited {timeout} s for {want!r}, last {got!r}")


def worker_pid(c):
    pids = c.execute("""SELECT pid FROM pg_stat_activity
                         WHERE backend_type = 'pg_genome embed worker' AND datname = current_database()""").fetchall()
    return pids[0][0] if pids else None


def vec(s):
    return np.array(s.strip("[]").split(","), dtype=np.float64)


@pytest.fixture(scope="module")
def settings(database):
    """Short retry delays for the failure test; restored afterwards (the worker reloads them)."""
    with connect() as c:
        c.execute("ALTER SYSTEM SET genome.embed_retry_delay = '100ms'")
        c.execute("ALTER SYSTEM SET genome.embed_max_attempts = 3")
        c.execute("ALTER SYSTEM SET genome.embed_worker_naptime = '200ms'")
        c.execute("SELECT pg_reload_conf()")
        # the launcher starts this database's worker within a second of the database appearing
        deadline = time.time() + 30
        while worker_pid(c) is None and time.time() < deadline:
            time.sleep(0.2)
        assert worker_pid(c) is not None, "no embedding worker for this database"
    yield
    with connect() as c:
        for g in ("embed_retry_delay", "embed_max_attempts", "embed_worker_naptime", "embed_queue_batch_size"):
            c.execute(f"ALTER SYSTEM RESET genome.{g}")
        c.execute("SELECT pg_reload_conf()")


@pytest.fixture
def feed(settings):
    with connect() as c:
        c.execute("DROP TABLE IF EXISTS feed CASCADE")
        c.execute("CREATE TABLE feed (id bigint PRIMARY KEY, category text, body text)")
        c.execute("SELECT genome.register_collection('feed', 'feed', 'id', 'body')")
        assert c.execute("SELECT genome.enable_auto_embed('feed')").fetchone()[0] == 0
    yield "feed"
    with connect() as c:
        c.execute("SELECT genome.unregister_collection('feed')")
        c.execute("DROP TABLE IF EXISTS feed CASCADE")


def test_inserted_rows_are_embedded_in_the_background(feed):
    rows = texts(1000)
    with connect() as c:
        with c.cursor().copy("COPY feed (id, category, body) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
        # nothing called: the worker embeds them
        wait_for(c, "SELECT count(*) FROM feed WHERE embedding IS NOT NULL", 1000)
        q = c.execute("SELECT pending, processing, completed, failed FROM genome.embed_queue WHERE collection = 'feed'").fetchone()
        assert q == (0, 0, 1000, 0)
        # the stored vectors are the model's vectors of those texts
        for rid, same in c.execute("""SELECT id, (embedding <=> genome.embed(body)) < 1e-5 FROM feed
                                       WHERE id IN (1, 500, 1000)""").fetchall():
            assert same, rid
        # rows inserted with an embedding keep it
        c.execute("INSERT INTO feed (id, body, embedding) SELECT 5000, 'given', embedding FROM feed WHERE id = 1")
        time.sleep(1)
        assert c.execute("SELECT count(*) FROM genome.embed_queue_items WHERE collection = 'feed' AND row_id = '5000'").fetchone()[0] == 0


def test_new_rows_wake_an_idle_worker_at_once(feed):
    with connect() as c:
        # an idle worker now sleeps a minute between looks at the queue ...
        c.execute("ALTER SYSTEM SET genome.embed_worker_naptime = '60s'")
        c.execute("SELECT pg_reload_conf()")
        time.sleep(1.5)
        try:
            t = time.time()
            c.execute("INSERT INTO feed VALUES (7, 'x', 'A quick wake-up call.')")
            # ... yet the commit's latch wakes it: embedded in well under the nap
            wait_for(c, "SELECT embedding IS NOT NULL FROM feed WHERE id = 7", True, timeout=20)
            assert time.time() - t < 20
        finally:
            c.execute("ALTER SYSTEM SET genome.embed_worker_naptime = '200ms'")
            c.execute("SELECT pg_reload_conf()")


def test_changed_text_replaces_the_embedding(feed):
    with connect() as c:
        c.execute("INSERT INTO feed VALUES (1, 'x', 'The cat sleeps on the warm windowsill.')")
        wait_for(c, "SELECT embedding IS NOT NULL FROM feed WHERE id = 1", True)
        old = c.execute("SELECT embedding::text FROM feed WHERE id = 1").fetchone()[0]
        with c.transaction():
            c.execute("UPDATE feed SET body = 'Interest rates rose again this quarter.' WHERE id = 1")
            # cleared in the same statement: never an old vector next to a new text
            assert c.execute("SELECT embedding IS NULL FROM feed WHERE id = 1").fetchone()[0]
        wait_for(c, "SELECT embedding IS NOT NULL FROM feed WHERE id = 1", True)
        new = c.execute("SELECT embedding::text FROM feed WHERE id = 1").fetchone()[0]
        assert new != old
        assert c.execute("SELECT (embedding <=> genome.embed('Interest rates rose again this quarter.')) < 1e-5 FROM feed WHERE id = 1").fetchone()[0]
        # an update that leaves the text alone does not re-embed
        n = c.execute("SELECT attempts FROM genome.embed_queue_items WHERE collection = 'feed' AND row_id = '1'").fetchone()[0]
        c.execute("UPDATE feed SET category = 'y' WHERE id = 1")
        time.sleep(0.5)
        assert c.execute("SELECT embedding::text FROM feed WHERE id = 1").fetchone()[0] == new
        assert c.execute("SELECT attempts FROM genome.embed_queue_items WHERE collection = 'feed' AND row_id = '1'").fetchone()[0] == n


def test_failures_are_retried_with_backoff_then_left_failed(feed):
    with connect() as c:
        # The app's own rule rejects some rows' embedding writes: a real error in the worker's
        # transaction, for those rows only.
        c.execute("""CREATE FUNCTION feed_guard() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN IF NEW.body LIKE 'poison%' AND NEW.embedding IS NOT NULL THEN
                         RAISE EXCEPTION 'feed_guard rejected row %', NEW.id; END IF; RETURN NEW; END $$""")
        c.execute("CREATE TRIGGER feed_guard BEFORE UPDATE OF embedding ON feed FOR EACH ROW EXECUTE FUNCTION feed_guard()")
        c.execute("INSERT INTO feed (id, body) SELECT i, CASE WHEN i % 5 = 0 THEN 'poison ' ELSE 'fine ' END || i FROM generate_series(1, 20) i")
        wait_for(c, "SELECT count(*) FROM genome.embed_queue_items WHERE collection = 'feed' AND status IN ('completed', 'failed')", 20, timeout=60)
        failed = c.execute("""SELECT row_id, attempts, last_error FROM genome.embed_queue_items
                               WHERE collection = 'feed' AND status = 'failed' ORDER BY row_id::int""").fetchall()
        assert [f[0] for f in failed] == ["5", "10", "15", "20"]
        for rid, attempts, err in failed:
            assert attempts == 3  # genome.embed_max_attempts
            assert f"feed_guard rejected row {rid}" in err
        # the good rows of the same batches went through
        assert c.execute("SELECT count(*) FROM feed WHERE embedding IS NOT NULL").fetchone()[0] == 16
        assert c.execute("SELECT failed FROM genome.embed_queue WHERE collection = 'feed'").fetchone()[0] == 4
        # the backoff doubled: three attempts took at least 100 + 200 ms after the first
        c.execute("DROP TRIGGER feed_guard ON feed")
        c.execute("DROP FUNCTION feed_guard()")


def test_a_worker_killed_mid_batch_loses_nothing(feed):
    with connect() as c:
        c.execute("ALTER SYSTEM SET genome.embed_queue_batch_size = 200")
        c.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)
        pid = worker_pid(c)
        with c.cursor().copy("COPY feed (id, category, body) FROM STDIN") as cp:
            for r in texts(600, offset=1000):
                cp.write_row(r)
        deadline = time.time() + 30
        while time.time() < deadline:
            if c.execute("SELECT count(*) FROM genome.embed_queue_items WHERE collection = 'feed' AND status = 'processing'").fetchone()[0]:
                break
            time.sleep(0.01)
        assert c.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        wait_for(c, "SELECT count(*) FROM feed WHERE embedding IS NOT NULL", 600, timeout=240)
        assert c.execute("SELECT count(*) FROM genome.embed_queue_items WHERE collection = 'feed' AND status = 'completed'").fetchone()[0] == 600
        # the killed batch was taken again: its rows needed a second attempt
        assert c.execute("SELECT count(*) FROM genome.embed_queue_items WHERE collection = 'feed' AND attempts = 2").fetchone()[0] > 0
        assert worker_pid(c) not in (None, pid)
        c.execute("ALTER SYSTEM RESET genome.embed_queue_batch_size")
        c.execute("SELECT pg_reload_conf()")


@pytest.fixture(scope="module")
def searchable(settings):
    """400 real texts embedded by the worker, with categories for filters."""
    with connect() as c:
        c.execute("DROP TABLE IF EXISTS notes CASCADE")
        c.execute("CREATE TABLE notes (id int PRIMARY KEY, category text, body text)")
        c.execute("SELECT genome.register_collection('notes', 'notes', 'id', 'body')")
        c.execute("SELECT genome.enable_auto_embed('notes')")
        with c.cursor().copy("COPY notes (id, category, body) FROM STDIN") as cp:
            for i, (rid, cat, body) in enumerate(texts(2000)):
                if i % 5 == 0:
                    cp.write_row((rid, cat, body))
        wait_for(c, "SELECT count(*) FROM notes WHERE embedding IS NULL", 0)
    return "notes"


def test_search_finds_the_row_with_the_query_text_first(searchable):
    with connect() as c:
        for rid, body in c.execute("SELECT id, body FROM notes WHERE id IN (1, 406, 1801)").fetchall():
            hits = c.execute("SELECT id, score, row FROM genome.search('notes', %s, top_k => 5)", (body,)).fetchall()
            assert hits[0][0] == str(rid)
            assert hits[0][1] > 0.999
            assert hits[0][2]["body"] == body and "embedding" not in hits[0][2]
            assert [h[1] for h in hits] == sorted([h[1] for h in hits], reverse=True)
        # the vector form gives the same answer
        v = c.execute("SELECT embedding::text FROM notes WHERE id = 406").fetchone()[0]
        assert c.execute("SELECT id FROM genome.search('notes', %s::vector, top_k => 1)", (v,)).fetchone()[0] == "406"


def test_search_scores_match_numpy_cosine(searchable):
    with connect() as c:
        rows = c.execute("SELECT id::text, embedding::text FROM notes").fetchall()
        M = np.stack([vec(r[1]) for r in rows])
        q = vec(c.execute("SELECT genome.embed('a story about a dog and its owner')::text").fetchone()[0])
        sims = M @ q / np.linalg.norm(M, axis=1) / np.linalg.norm(q)
        want = [rows[i][0] for i in np.argsort(-sims)[:10]]
        got = c.execute("SELECT id, score FROM genome.search('notes', 'a story about a dog and its owner', top_k => 10, score_threshold => -1)").fetchall()
        # HNSW is approximate: allow one miss in the top 10; scores are exact cosines
        assert len(set(g[0] for g in got) & set(want)) >= 9
        by_id = {rows[i][0]: sims[i] for i in range(len(rows))}
        assert np.allclose([g[1] for g in got], [by_id[g[0]] for g in got], atol=1e-5)
        assert [g[1] for g in got] == sorted([g[1] for g in got], reverse=True)


def test_search_filters_and_threshold(searchable):
    with connect() as c:
        cats = [r[0] for r in c.execute("SELECT DISTINCT category FROM notes ORDER BY 1").fetchall()]
        for cat in cats[:3]:
            hits = c.execute("SELECT id, row FROM genome.search('notes', 'love and money', top_k => 15, score_threshold => -1, filter => %s)",
                             (f'{{"category": "{cat}"}}',)).fetchall()
            n = c.execute("SELECT count(*) FROM notes WHERE category = %s", (cat,)).fetchone()[0]
            assert len(hits) == min(15, n) and all(h[1]["category"] == cat for h in hits)
        # a filter matching few rows still returns all of them (no loss to the index scan)
        c.execute("UPDATE notes SET category = 'rare' WHERE id IN (SELECT id FROM notes ORDER BY id DESC LIMIT 3)")
        hits = c.execute("""SELECT id FROM genome.search('notes', 'anything at all', top_k => 10, score_threshold => -1,
                                                          filter => '{"category": "rare"}')""").fetchall()
        assert len(hits) == 3
        hits = c.execute("""SELECT id FROM genome.search('notes', 'anything at all', top_k => 10, score_threshold => -1,
                                                          filter => '{"category": ["rare", "nope"]}')""").fetchall()
        assert len(hits) == 3
        ths = c.execute("SELECT min(score) FROM genome.search('notes', 'love and money', top_k => 50, score_threshold => 0.3)").fetchone()[0]
        assert ths >= 0.3
        assert c.execute("SELECT count(*) FROM genome.search('notes', 'love and money', score_threshold => 0.999)").fetchone()[0] == 0
        for bad, msg in [("""filter => '{"nope": 1}'""", 'filter column "nope" does not exist'),
                         ("filter => '[1]'", "filter must be a JSON object"),
                         ("top_k => 0", "top_k must be between 1 and 1000")]:
            with pytest.raises(Exception, match=msg):
                c.execute(f"SELECT * FROM genome.search('notes', 'x', {bad})")
        with pytest.raises(Exception, match="query vector has 3 dimensions"):
            c.execute("SELECT * FROM genome.search('notes', '[1,2,3]'::vector)")


def test_search_uses_the_hnsw_index(searchable):
    with connect() as c:
        plans = []
        c.add_notice_handler(lambda d: plans.append(d.message_primary))
        c.execute("LOAD 'auto_explain'")
        c.execute("SET auto_explain.log_min_duration = 0")
        c.execute("SET auto_explain.log_nested_statements = on")
        c.execute("SET auto_explain.log_level = notice")
        c.execute("SELECT * FROM genome.search('notes', 'love and money')").fetchall()
        text = "\n".join(plans)
        assert "Index Scan using genome_hnsw_notes on notes" in text, text
        # with a filter the planner chooses: here 1 row in 13 passes it and a scan of those few is
        # cheaper; made to take the index, the same query runs as an iterative index scan
        plans.clear()
        c.execute("SET enable_seqscan = off")
        c.execute("SELECT * FROM genome.search('notes', 'love and money', filter => '{\"category\": \"love\"}')").fetchall()
        text = "\n".join(plans)
        assert "Index Scan using genome_hnsw_notes on notes" in text and "category = 'love'::text" in text, text


def test_reembed_switches_model_without_mixed_dimensions(searchable):
    with connect() as c:
        errors, stop = [], threading.Event()

        def searcher():
            with connect() as s:
                while not stop.is_set():
                    try:
                        s.execute("SELECT * FROM genome.search('notes', 'love and money', top_k => 3)").fetchall()
                    except Exception as e:  # any error during the switch is a failure
                        errors.append(str(e))
                    time.sleep(0.02)

        t = threading.Thread(target=searcher)
        t.start()
        try:
            assert c.execute("SELECT genome.reembed('notes', 'tiny-bert')").fetchone()[0] == 400
            assert c.execute("SELECT model FROM genome.collections WHERE name = 'notes'").fetchone()[0] == "all-minilm-l6-v2@1"
            wait_for(c, "SELECT model FROM genome.collections WHERE name = 'notes'", "tiny-bert@1")
        finally:
            stop.set()
            t.join()
        assert errors == []
        dim = c.execute("SELECT dimension FROM genome.models WHERE name = 'tiny-bert'").fetchone()[0]
        assert c.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'notes'::regclass AND attname = 'embedding'").fetchone()[0] == f"vector({dim})"
        assert c.execute("SELECT count(*) FROM notes WHERE embedding IS NULL").fetchone()[0] == 0
        assert c.execute("SELECT (embedding <=> genome.embed(body, 'tiny-bert')) < 1e-5 FROM notes WHERE id = 406").fetchone()[0]
        body = c.execute("SELECT body FROM notes WHERE id = 406").fetchone()[0]
        assert c.execute("SELECT id FROM genome.search('notes', %s, top_k => 1)", (body,)).fetchone()[0] == "406"
        with pytest.raises(Exception, match="already uses tiny-bert@1"):
            c.execute("SELECT genome.reembed('notes', 'tiny-bert')")


def test_health_and_metrics(searchable):
    with connect() as c:
        h = c.execute("SELECT genome.health()").fetchone()[0]
        crate = re.search(r'^version = "([^"]+)"', (REPO / "Cargo.toml").read_text(), re.M).group(1)
        assert h["extension_version"] == crate
        assert h["runtime"]["onnxruntime_loaded"] and h["runtime"]["onnxruntime_version"] == "1.31.1"
        assert h["runtime"]["execution_provider"] == "cpu" and h["runtime"]["preloaded"]
        assert any(w["database"] == "genome_it" for w in h["workers"])
        assert {m["name"] for m in h["models"]} >= {"all-minilm-l6-v2", "tiny-bert"}
        assert any(q["collection"] == "notes" for q in h["queue"])
        assert "notes" in h["pending_assignment"]
        assert h["cron_jobs"] is None  # pg_cron lives in the database "genome" (cron.database_name)
        with connect("genome") as g:
            jobs = g.execute("SELECT genome.health()->'cron_jobs'").fetchone()[0]
            assert isinstance(jobs, list)
        text = c.execute("SELECT genome.metrics()").fetchone()[0]
        fams = {f.name: f for f in text_string_to_metric_families(text)}  # a real Prometheus parser
        emb = {s.name: s.value for s in fams["genome_texts_embedded"].samples}
        assert emb["genome_texts_embedded_total"] >= 400
        lat = fams["genome_embed_latency_seconds"]
        assert lat.type == "histogram"
        buckets = [s.value for s in lat.samples if s.name.endswith("_bucket")]
        assert buckets == sorted(buckets) and buckets[-1] > 0
        rows = {(s.labels["collection"], s.labels["status"]): s.value for s in fams["genome_queue_rows"].samples}
        assert rows[("notes", "completed")] >= 400
        assert [s.value for s in fams["genome_workers_alive"].samples][0] >= 1
        assert [s.value for s in fams["genome_counters_shared"].samples][0] == 1


def test_unregister_and_disable_remove_the_triggers(feed):
    with connect() as c:
        q = "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'feed'::regclass AND tgname LIKE 'genome_embed_%'"
        assert c.execute(q).fetchone()[0] == 3
        c.execute("SELECT genome.disable_auto_embed('feed')")
        assert c.execute(q).fetchone()[0] == 0
        c.execute("SELECT genome.enable_auto_embed('feed')")
        assert c.execute("SELECT genome.unregister_collection('feed')").fetchone()[0]
        assert c.execute(q).fetchone()[0] == 0
        c.execute("INSERT INTO feed VALUES (1, 'x', 'still writable')")
