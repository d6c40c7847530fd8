"""Collections, full classification, incremental assignment, locks, progress, pg_cron and the
upgrade path, against the real cluster with the default model and real sample texts."""
import collections
import threading
import time

import psycopg
import pytest

import catalog
from conftest import MODELS, REPO, connect, release_version

PER_CATEGORY = 60


def sample_rows():
    rows, seen = [], collections.Counter()
    for line in (REPO / ".genome" / "data" / "fortunes.tsv").read_text().splitlines():
        i, cat, body = line.split("\t", 2)
        if seen[cat] < PER_CATEGORY:
            seen[cat] += 1
            rows.append((int(i), cat, body.replace("\\n", "\n").replace("\\t", " ")))
    return rows


@pytest.fixture(scope="module")
def docs(database):
    """public.docs: 1,200 real texts in 20 categories, embedded once for the module."""
    with connect() as c:
        c.execute("DROP TABLE IF EXISTS docs CASCADE")
        c.execute("CREATE TABLE docs (id bigint PRIMARY KEY, category text, body text, created_at timestamptz DEFAULT now())")
        with c.cursor().copy("COPY docs (id, category, body) FROM STDIN") as cp:
            for r in sample_rows():
                cp.write_row(r)
        c.execute("SELECT genome.register_collection('docs', 'docs', 'id', 'body', created_at_column => 'created_at')")
        c.execute("SELECT * FROM genome.full_classify('docs', min_cluster_size => 10)")
    return "docs"


def snapshot(c, table="docs"):
    fams = c.execute("SELECT id, label, size, centroid::text, retired_at FROM genome.families WHERE collection = %s ORDER BY id",
                     (table,)).fetchall()
    rows = c.execute(f"SELECT id, family_id FROM {table} ORDER BY id").fetchall()
    return fams, rows


def purity(c, table="docs"):
    """Purity of a table's families against its category column, and how many rows they hold."""
    return c.execute(f"""
        WITH t AS (SELECT family_id, category, count(*) n FROM {table} d JOIN genome.families f ON f.id = d.family_id
                    WHERE NOT f.is_unclustered GROUP BY 1, 2),
             m AS (SELECT family_id, max(n) mx, sum(n) s FROM t GROUP BY 1)
        SELECT sum(mx)::float / sum(s), sum(s) FROM m""").fetchone()


def test_register_adds_columns_and_rejects_bad_input(conn):
    conn.execute("DROP TABLE IF EXISTS reg_t")
    conn.execute('CREATE TABLE reg_t (key int PRIMARY KEY, "Odd ""col""" text, n int, e2 vector(3), fam text)')
    r = conn.execute("""SELECT name, model, dimension FROM genome.register_collection('reg', 'reg_t', 'key', 'Odd "col"',
                        embedding_column => 'My Emb', family_column => 'fam id')""").fetchone()
    assert r == ("reg", "all-minilm-l6-v2@1", 384)
    types = dict(conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'reg_t'::regclass AND attnum > 0").fetchall())
    assert types["My Emb"].endswith("vector(384)") and types["fam id"] == "bigint"
    assert conn.execute("SELECT count(*) FROM genome.families WHERE collection = 'reg' AND is_unclustered").fetchone()[0] == 1
    bad = [
        ("SELECT genome.register_collection('reg', 'reg_t', 'key', 'Odd \"col\"', 'My Emb', 'fam id')", "already registered"),
        ("SELECT genome.register_collection('x1', 'no_such_table', 'key', 'n')", 'relation "no_such_table" does not exist'),
        ("SELECT genome.register_collection('x2', 'reg_t', 'key', 'nope')", 'column "nope" does not exist'),
        ("SELECT genome.register_collection('x3', 'reg_t', 'key', 'n')", "must be of type text"),
        ("SELECT genome.register_collection('x4', 'reg_t', 'key', 'Odd \"col\"', embedding_column => 'e2')", "needs vector(384)"),
        ("SELECT genome.register_collection('x5', 'reg_t', 'key', 'Odd \"col\"', family_column => 'fam')", "family ids need bigint"),
        ("SELECT genome.register_collection('bad name; drop', 'reg_t', 'key', 'Odd \"col\"')", "invalid collection name"),
        ("SELECT genome.register_collection('x6', 'reg_t', 'key', 'Odd \"col\"', model => 'nope')", 'model "nope" is not registered'),
        ("SELECT * FROM genome.full_classify('missing')", 'collection "missing" is not registered'),
        ("SELECT * FROM genome.full_classify('reg', min_cluster_size => 1)", "min_cluster_size must be at least 2"),
        ("SELECT * FROM genome.full_classify('reg', reduction => 'tsne')", 'unknown reduction "tsne"'),
        ("SELECT * FROM genome.assign_family('reg', threshold => 2)", "threshold must be a cosine"),
    ]
    for sql, msg in bad:
        with pytest.raises(psycopg.Error, match=msg.replace("(", r"\(").replace(")", r"\)")):
            conn.execute(sql)
    assert conn.execute("SELECT count(*) FROM genome.collections WHERE name LIKE 'x%'").fetchone()[0] == 0
    # dropping the table drops the registration; the name is free again
    conn.execute("DROP TABLE reg_t")
    assert conn.execute("SELECT count(*) FROM genome.collections WHERE name = 'reg'").fetchone()[0] == 0
    conn.execute("CREATE TABLE reg_t2 (id bigint PRIMARY KEY, body text)")
    conn.execute("SELECT genome.register_collection('reg', 'reg_t2', 'id', 'body')")
    assert conn.execute("SELECT genome.unregister_collection('reg')").fetchone()[0] is True
    assert conn.execute("SELECT count(*) FROM genome.families WHERE collection = 'reg'").fetchone()[0] == 0


def test_full_classify_finds_meaningful_families(conn, docs):
    n_rows = conn.execute("SELECT count(*) FROM docs").fetchone()[0]
    assert conn.execute("SELECT count(*) FROM docs WHERE family_id IS NULL OR embedding IS NULL").fetchone()[0] == 0
    live = conn.execute("SELECT count(*), sum(size) FROM genome.families WHERE collection = 'docs' AND retired_at IS NULL").fetchone()
    assert live[0] >= 8 and live[1] == n_rows, live
    # sizes agree with the rows
    assert conn.execute("""SELECT count(*) FROM genome.families f WHERE collection = 'docs'
                           AND size <> (SELECT count(*) FROM docs d WHERE d.family_id = f.id)""").fetchone()[0] == 0
    pur, clustered = purity(conn)
    # 20 categories: a random grouping would give purity ~0.1; the Python pipeline ~0.6-0.7
    assert pur > 0.5 and clustered > 0.4 * n_rows, (pur, clustered)
    run = conn.execute("SELECT status, n_rows, n_embedded, n_clusters, n_noise, timings ? 'hdbscan' FROM genome.runs WHERE collection = 'docs' ORDER BY id LIMIT 1").fetchone()
    assert run[0] == "succeeded" and run[1] == n_rows and run[2] == n_rows and run[5]
    fam = conn.execute("""SELECT label, threshold, cardinality(exemplar_ids), vector_dims(centroid) FROM genome.families
                          WHERE collection = 'docs' AND NOT is_unclustered ORDER BY size DESC LIMIT 1""").fetchone()
    assert fam[0] and 0 < fam[1] < 1 and fam[2] == 5 and fam[3] == 384
    # exemplars are members of their own family
    assert conn.execute("""SELECT bool_and(d.family_id = f.id) FROM genome.families f, unnest(f.exemplar_ids) e
                           JOIN docs d ON d.id = e::bigint WHERE f.collection = 'docs'""").fetchone()[0]


def test_family_ids_are_stable_and_vanished_families_retire(conn, docs):
    before = dict(conn.execute("SELECT id, family_id FROM docs").fetchall())
    r = conn.execute("SELECT n_kept, n_new, n_retired FROM genome.hdbscan_recluster('docs', min_cluster_size => 10)").fetchone()
    assert r[1] == 0 and r[2] == 0, r
    after = dict(conn.execute("SELECT id, family_id FROM docs").fetchall())
    assert after == before
    # far fewer, larger clusters: most families vanish and are retired, not deleted
    r = conn.execute("SELECT n_clusters, n_kept, n_new, n_retired FROM genome.hdbscan_recluster('docs', min_cluster_size => 150)").fetchone()
    assert r[3] > 0, r
    assert conn.execute("""SELECT count(*) FROM docs d JOIN genome.families f ON f.id = d.family_id
                           WHERE f.retired_at IS NOT NULL""").fetchone()[0] == 0
    assert conn.execute("SELECT bool_and(size = 0) FROM genome.families WHERE collection = 'docs' AND retired_at IS NOT NULL").fetchone()[0]
    # back to the fine clustering: keeps whatever still matches, the rest comes back as new families
    conn.execute("SELECT * FROM genome.hdbscan_recluster('docs', min_cluster_size => 10)")


def test_failure_and_cancel_leave_previous_families_untouched(conn, docs):
    before = snapshot(conn)
    conn.execute("SET statement_timeout = '300ms'")
    with pytest.raises(psycopg.errors.QueryCanceled):
        conn.execute("SELECT * FROM genome.hdbscan_recluster('docs', min_cluster_size => 10, seed => 7)")
    conn.execute("RESET statement_timeout")
    assert snapshot(conn) == before
    # an ERROR mid-run (a row with a foreign dimension) rolls back too, with a clear message
    conn.execute("BEGIN")
    conn.execute("DROP INDEX genome_hnsw_docs")  # an HNSW index needs one dimension
    conn.execute("ALTER TABLE docs ALTER COLUMN embedding TYPE vector")
    conn.execute("UPDATE docs SET embedding = '[1,2,3]' WHERE id = (SELECT min(id) FROM docs)")
    with pytest.raises(psycopg.Error, match="has a 3-d embedding"):
        conn.execute("SELECT * FROM genome.hdbscan_recluster('docs')")
    conn.execute("ROLLBACK")
    assert snapshot(conn) == before


def test_runs_are_locked_against_each_other(database, docs):
    with connect() as a, connect() as b:
        a.execute("BEGIN")
        a.execute("SELECT * FROM genome.hdbscan_recluster('docs', min_cluster_size => 10)")
        with pytest.raises(psycopg.errors.LockNotAvailable, match="another full classification"):
            b.execute("SELECT * FROM genome.full_classify('docs')")
        assert b.execute("SELECT * FROM genome.assign_family('docs', min_pending => 0)").fetchone() == (0, 0, 0)
        a.execute("COMMIT")


def test_progress_is_visible_from_another_session(database, docs):
    seen = set()
    done = threading.Event()

    def work():
        with connect() as w:
            w.execute("SELECT * FROM genome.hdbscan_recluster('docs', min_cluster_size => 10)")
        done.set()

    t = threading.Thread(target=work)
    with connect() as watcher:
        t.start()
        while not done.is_set():
            for row in watcher.execute("SELECT job, collection, stage, total FROM genome.progress").fetchall():
                seen.add(row[:3])
            time.sleep(0.02)
    t.join()
    assert ("hdbscan_recluster", "docs", "reduce") in seen, seen
    with connect() as c:
        assert c.execute("SELECT count(*) FROM genome.progress").fetchone()[0] == 0


def add_paraphrases(c, n, offset):
    """New rows: existing texts with a sentence appended, so the right family is known."""
    c.execute(f"""INSERT INTO docs (id, category, body, created_at)
                  SELECT id + {offset}, category, body || ' That is what they say.', now() + (id || ' us')::interval
                    FROM docs WHERE id < 1000000 ORDER BY id LIMIT {n}""")


def test_assign_family_batches_oldest_first_and_honours_thresholds(conn, docs):
    add_paraphrases(conn, 120, 1_000_000)
    assert conn.execute("SELECT genome.pending_count('docs')").fetchone()[0] == 120
    assert conn.execute("SELECT * FROM genome.assign_family('docs', min_pending => 500)").fetchone() == (0, 0, 0)
    r = conn.execute("SELECT * FROM genome.assign_family('docs', batch_size => 40, min_pending => 1, threshold => 1.0)").fetchone()
    assert r[0] == 40 and r[2] >= 39, r  # nothing is that close: Unclustered (barring an exact duplicate)
    oldest = conn.execute("SELECT max(id) FROM docs WHERE id >= 1000000 AND family_id IS NOT NULL").fetchone()[0]
    assert oldest == conn.execute("SELECT id FROM docs WHERE id >= 1000000 ORDER BY created_at LIMIT 1 OFFSET 39").fetchone()[0]
    r = conn.execute("SELECT * FROM genome.assign_family('docs', batch_size => 40, min_pending => 1, threshold => -1)").fetchone()
    assert r == (40, 40, 0)
    r = conn.execute("SELECT * FROM genome.assign_family('docs', batch_size => 40, min_pending => 1)").fetchone()
    assert r[0] == 40
    # calibrated thresholds: rows whose original is in a family mostly join that same family
    same, total = conn.execute("""SELECT count(*) FILTER (WHERE n.family_id = o.family_id), count(*)
                                    FROM docs n JOIN docs o ON o.id = n.id - 1000000
                                    JOIN genome.families f ON f.id = o.family_id AND NOT f.is_unclustered
                                   WHERE n.id >= 1000080""").fetchone()
    assert total > 0 and same / total > 0.6, (same, total)
    assert conn.execute("SELECT genome.pending_count('docs')").fetchone()[0] == 0
    assert conn.execute("""SELECT count(*) FROM genome.families f WHERE collection = 'docs'
                           AND size <> (SELECT count(*) FROM docs d WHERE d.family_id = f.id)""").fetchone()[0] == 0


def test_concurrent_assign_family_loses_and_doubles_nothing(database, docs):
    with connect() as c:
        add_paraphrases(c, 300, 2_000_000)
    results = []

    def worker():
        with connect() as w:
            for _ in range(10):
                r = w.execute("SELECT * FROM genome.assign_family('docs', batch_size => 25, min_pending => 1)").fetchone()
                results.append(r[0])

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    # rows keep arriving while they work
    with connect() as c:
        add_paraphrases(c, 50, 3_000_000)
    for t in threads:
        t.join()
    with connect() as c:
        left = c.execute("SELECT genome.pending_count('docs')").fetchone()[0]
        assert sum(results) + left == 350, (sum(results), left)
        assert c.execute("""SELECT count(*) FROM genome.families f WHERE collection = 'docs'
                            AND size <> (SELECT count(*) FROM docs d WHERE d.family_id = f.id)""").fetchone()[0] == 0
        c.execute("SELECT * FROM genome.assign_family('docs', batch_size => 1000, min_pending => 1)")
        assert c.execute("SELECT genome.pending_count('docs')").fetchone()[0] == 0


def listed(c, name):
    return [r[0] for r in c.execute("SELECT row_id FROM genome.pending_rows WHERE collection = %s ORDER BY seq",
                                    (name,)).fetchall()]


def test_pending_rows_are_listed_by_triggers_not_by_an_index_on_the_family_column(conn, docs):
    """Rows without a family are found through genome.pending_rows (issue 17): inserted rows,
    rows whose family is cleared; entries of rows given a family elsewhere or deleted are
    dropped when met; a row another transaction holds keeps its entry."""
    conn.execute("DROP TABLE IF EXISTS pend")
    conn.execute("CREATE TABLE pend (id text PRIMARY KEY, body text, embedding vector(384), family_id bigint)")
    conn.execute("""INSERT INTO pend SELECT 'r' || id, body, embedding, NULL FROM docs WHERE id < 1000000 ORDER BY id LIMIT 60""")
    conn.execute("SELECT genome.register_collection('pend', 'pend', 'id', 'body')")
    # no index names the family column (it would make every family write a non-HOT update)
    assert conn.execute("""SELECT count(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid
                            WHERE i.indrelid = 'pend'::regclass AND a.attname = 'family_id'
                              AND (a.attnum = ANY (i.indkey) OR pg_get_expr(i.indpred, i.indrelid) LIKE '%family_id%')""").fetchone()[0] == 0
    first = listed(conn, "pend")
    assert len(first) == 60 and first == sorted(first)  # listed at registration, by id
    conn.execute("SELECT * FROM genome.full_classify('pend', min_cluster_size => 5)")
    assert listed(conn, "pend") == []
    unc = conn.execute("SELECT id FROM genome.families WHERE collection = 'pend' AND is_unclustered").fetchone()[0]
    with conn.cursor().copy("COPY pend (id, body) FROM STDIN") as cp:
        for i in range(3):
            cp.write_row((f"new{i}", f"a new row number {i}"))
    conn.execute("INSERT INTO pend (id, body, family_id) VALUES ('given', 'comes with a family', %s)", (unc,))
    conn.execute("UPDATE pend SET family_id = NULL WHERE id IN ('r1', 'r2', 'r3')")
    conn.execute("UPDATE pend SET family_id = family_id WHERE id = 'r4'")  # no change: not listed
    assert listed(conn, "pend") == ["new0", "new1", "new2", "r1", "r2", "r3"]
    assert conn.execute("SELECT genome.pending_count('pend')").fetchone()[0] == 6
    conn.execute("UPDATE pend SET family_id = %s WHERE id = 'new0'", (unc,))  # given a family by the app
    conn.execute("DELETE FROM pend WHERE id = 'new1'")
    # r1 is held by another transaction: skipped, and still listed afterwards
    with connect() as other:
        other.execute("BEGIN")
        other.execute("SELECT 1 FROM pend WHERE id = 'r1' FOR UPDATE")
        r = conn.execute("SELECT * FROM genome.assign_family('pend', batch_size => 10, min_pending => 1)").fetchone()
        assert r[0] == 3, r  # new2, r2, r3
        assert listed(conn, "pend") == ["r1"]
        other.execute("ROLLBACK")
    r = conn.execute("SELECT * FROM genome.assign_family('pend', batch_size => 10, min_pending => 1)").fetchone()
    assert r[0] == 1
    assert listed(conn, "pend") == [] and conn.execute("SELECT genome.pending_count('pend')").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM pend WHERE family_id IS NULL").fetchone()[0] == 0
    # min_pending counts the list
    conn.execute("INSERT INTO pend (id, body) VALUES ('x1', 'one more'), ('x2', 'and another')")
    assert conn.execute("SELECT * FROM genome.assign_family('pend', min_pending => 3)").fetchone() == (0, 0, 0)
    conn.execute("TRUNCATE pend")
    assert listed(conn, "pend") == []
    conn.execute("SELECT genome.unregister_collection('pend')")
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'pend'::regclass AND NOT tgisinternal").fetchone()[0] == 0


def test_family_writes_are_hot_updates_with_the_search_index(conn, docs):
    """With room on its pages (fillfactor 50), a full run's family writes are HOT updates: the
    row is not inserted into the collection's HNSW search index again (issue 17). Counted in
    the run's own transaction (pg_stat_get_xact_*)."""
    conn.execute("DROP TABLE IF EXISTS hot")
    conn.execute("CREATE TABLE hot (id bigint PRIMARY KEY, body text, embedding vector(384), family_id bigint) WITH (fillfactor = 50)")
    conn.execute("INSERT INTO hot SELECT id, body, embedding, NULL FROM docs WHERE id < 1000000 AND embedding IS NOT NULL ORDER BY id LIMIT 600")
    conn.execute("SELECT genome.register_collection('hot', 'hot', 'id', 'body')")
    assert conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'hot' AND indexdef LIKE '%USING hnsw%'").fetchone()[0] == 1
    stats = "SELECT pg_stat_get_xact_tuples_updated('hot'::regclass), pg_stat_get_xact_tuples_hot_updated('hot'::regclass)"
    for seed in (42, 7):
        with conn.transaction():
            conn.execute("SELECT * FROM genome.full_classify('hot', min_cluster_size => 8, seed => %s)", (seed,))
            upd, hot = conn.execute(stats).fetchone()
        assert upd > 0 and hot == upd, (seed, upd, hot)
    assert conn.execute("SELECT count(*) FROM hot WHERE family_id IS NULL").fetchone()[0] == 0
    conn.execute("SELECT genome.unregister_collection('hot')")
    conn.execute("DROP TABLE hot")


def test_a_full_run_above_the_sample_size_clusters_a_sample_and_places_the_rest(conn, docs):
    """genome.classify_sample_rows (issue 17's path to 10M rows): a collection with more rows is
    clustered on an even sample; every other row gets its nearest family (or Unclustered) as
    assign_family would; sizes, the run's record and the families' quality follow."""
    conn.execute("DROP TABLE IF EXISTS samp")
    conn.execute("CREATE TABLE samp (id bigint PRIMARY KEY, category text, body text, embedding vector(384), family_id bigint)")
    conn.execute("INSERT INTO samp SELECT id, category, body, embedding, NULL FROM docs WHERE id < 1000000 AND embedding IS NOT NULL")
    n = conn.execute("SELECT count(*) FROM samp").fetchone()[0]
    conn.execute("SELECT genome.register_collection('samp', 'samp', 'id', 'body')")
    # the exact path first, on every row: the sample's families are compared with it below
    conn.execute("SET genome.classify_sample_rows = 0")
    conn.execute("SELECT * FROM genome.full_classify('samp', min_cluster_size => 8)")
    exact = purity(conn, "samp")
    conn.execute("SET genome.classify_sample_rows = 400")
    try:
        r = conn.execute("SELECT n_rows, n_clusters, n_noise FROM genome.full_classify('samp', min_cluster_size => 8)").fetchone()
    finally:
        conn.execute("RESET genome.classify_sample_rows")
    assert r[0] == n and r[1] >= 5, r
    runs = conn.execute("SELECT params->'sample' FROM genome.runs WHERE collection = 'samp' ORDER BY id").fetchall()
    assert runs[0][0] is None  # the exact run clustered every row
    sample = runs[1][0]
    stride = -(-n // 400)
    assert sample["of"] == n and sample["rows"] == -(-n // stride) and sample["placed"] == n - sample["rows"], sample
    assert sample["min_cluster_size"] == -(-8 * sample["rows"] // n)  # 8 rows of the collection, a third on the sample
    assert conn.execute("SELECT count(*) FROM samp WHERE family_id IS NULL").fetchone()[0] == 0
    assert conn.execute("""SELECT count(*) FROM genome.families f WHERE collection = 'samp'
                           AND size <> (SELECT count(*) FROM samp d WHERE d.family_id = f.id)""").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM genome.pending_rows WHERE collection = 'samp'").fetchone()[0] == 0
    assert r[2] == conn.execute("""SELECT count(*) FROM samp d JOIN genome.families f ON f.id = d.family_id
                                    WHERE f.is_unclustered""").fetchone()[0]
    # placed rows (all but every k-th in the order of the ids' text, as the run reads them) are
    # where assign_family would put them: the nearest live centroid at or above its threshold
    wrong = conn.execute("""
        WITH placed AS (SELECT d.id, d.embedding, d.family_id FROM samp d
                         WHERE (SELECT count(*) FROM samp e WHERE e.id::text < d.id::text) %% %s <> 0),
             best AS (SELECT p.id, p.family_id, b.id AS fid, b.sim, b.threshold FROM placed p CROSS JOIN LATERAL (
                         SELECT f.id, 1 - (f.centroid <=> p.embedding) AS sim, f.threshold FROM genome.families f
                          WHERE f.collection = 'samp' AND NOT f.is_unclustered AND f.retired_at IS NULL
                          ORDER BY f.centroid <=> p.embedding LIMIT 1) b)
        SELECT count(*) FILTER (WHERE CASE WHEN sim >= threshold THEN family_id <> fid
                                         ELSE family_id <> (SELECT id FROM genome.families WHERE collection = 'samp' AND is_unclustered) END),
               count(*) FROM best""", (stride,)).fetchone()
    assert wrong[1] == n - sample["rows"] and wrong[0] <= 0.01 * wrong[1], wrong  # ties and float rounding only
    # a third of the rows clustered (20 a category), the rest placed: families nearly as pure as
    # the exact path's, and a third of the rows or more in them
    pur = purity(conn, "samp")
    assert pur[0] > exact[0] - 0.1 and pur[1] > 0.3 * n, (pur, exact)
    conn.execute("SELECT genome.unregister_collection('samp')")
    conn.execute("DROP TABLE samp")


def test_centroids_are_cached_and_invalidated_by_a_full_run(conn, docs):
    add_paraphrases(conn, 5, 4_000_000)
    conn.execute("SELECT * FROM genome.assign_family('docs', min_pending => 1)")
    g1 = conn.execute("SELECT generation FROM genome.cached_centroids() WHERE collection = 'docs'").fetchone()[0]
    conn.execute("SELECT * FROM genome.hdbscan_recluster('docs', min_cluster_size => 10)")
    assert conn.execute("SELECT count(*) FROM genome.cached_centroids() WHERE collection = 'docs'").fetchone()[0] == 0
    add_paraphrases(conn, 5, 5_000_000)
    conn.execute("SELECT * FROM genome.assign_family('docs', min_pending => 1)")
    g2 = conn.execute("SELECT generation FROM genome.cached_centroids() WHERE collection = 'docs'").fetchone()[0]
    assert g2 == g1 + 1


def test_pg_cron_job_runs_and_assigns_rows():
    """pg_cron lives in the database named by cron.database_name (genome): test there, in a
    schema of its own, with a one-minute schedule."""
    with connect("genome") as c:
        c.execute("DROP SCHEMA IF EXISTS it_cron CASCADE")
        c.execute("CREATE SCHEMA it_cron")
        c.execute("CREATE TABLE it_cron.docs (id bigint PRIMARY KEY, category text, body text)")
        rows = sample_rows()[:400]
        with c.cursor().copy("COPY it_cron.docs FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
        c.execute("SELECT genome.unregister_collection('it_cron')")
        c.execute("SELECT genome.register_collection('it_cron', 'it_cron.docs', 'id', 'body')")
        c.execute("SELECT * FROM genome.full_classify('it_cron', min_cluster_size => 8)")
        jobs = c.execute("SELECT * FROM genome.schedule('it_cron', full_cron => '0 3 * * 0', incremental_cron => '* * * * *', min_pending => 1)").fetchall()
        assert [j[0] for j in jobs] == ["genome_full:it_cron", "genome_assign:it_cron"]
        # calling again updates instead of duplicating
        c.execute("SELECT * FROM genome.schedule('it_cron', full_cron => '0 4 * * 0', incremental_cron => '* * * * *', min_pending => 1)")
        assert c.execute("SELECT count(*), min(schedule) FROM cron.job WHERE jobname LIKE 'genome_%:it_cron'").fetchone() == (2, "* * * * *")
        c.execute("INSERT INTO it_cron.docs SELECT id + 1000000, category, body || ' So they say.' FROM it_cron.docs LIMIT 30")
        deadline = time.time() + 150
        while time.time() < deadline and c.execute("SELECT genome.pending_count('it_cron')").fetchone()[0] > 0:
            time.sleep(3)
        pending = c.execute("SELECT genome.pending_count('it_cron')").fetchone()[0]
        # the job's rows commit a moment before pg_cron records how the run ended
        status_sql = """SELECT d.status, d.return_message FROM cron.job_run_details d JOIN cron.job j USING (jobid)
                        WHERE j.jobname = 'genome_assign:it_cron' ORDER BY d.runid DESC LIMIT 1"""
        status = c.execute(status_sql).fetchone()
        settle = time.time() + 30
        while status is not None and status[0] in ("starting", "running") and time.time() < settle:
            time.sleep(1)
            status = c.execute(status_sql).fetchone()
        assert pending == 0, status
        assert status[0] == "succeeded", status
        assert c.execute("SELECT genome.unschedule('it_cron')").fetchone()[0] == 2
        assert c.execute("SELECT count(*) FROM cron.job WHERE jobname LIKE 'genome_%:it_cron'").fetchone()[0] == 0
        c.execute("SELECT genome.unregister_collection('it_cron')")
        c.execute("DROP SCHEMA it_cron CASCADE")


# Every release, in order; the last is the current one (Cargo.toml). sql/README.md: a new release
# is added here.
RELEASES = ["0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.4.1", "0.5.0", "0.6.0", "0.7.0", "0.7.1", "0.8.0"]


def scratch(name):
    with connect("postgres") as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {name}")


def drop(name):
    with connect("postgres") as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_upgrade_chain_matches_a_fresh_install(database):
    assert RELEASES[-1] == release_version()
    with connect() as fresh:
        want = catalog.describe(fresh)
    scratch("genome_upgrade")
    try:
        with connect("genome_upgrade") as u:
            u.execute("CREATE EXTENSION vector")
            u.execute("CREATE EXTENSION pg_genome VERSION '0.1.0'")
            u.execute("ALTER EXTENSION pg_genome UPDATE TO '0.2.0'")
            # a collection registered under 0.2.0 gets its search index from the 0.3.0 upgrade
            u.execute("SELECT genome.register_model_dir('tiny-bert', '1', %s)", (f"{MODELS}/tiny-bert",))
            u.execute("CREATE TABLE public.old_docs (id int PRIMARY KEY, body text)")
            u.execute("SELECT genome.register_collection('old_docs', 'public.old_docs', 'id', 'body', model => 'tiny-bert')")
            u.execute("ALTER EXTENSION pg_genome UPDATE TO '0.3.0'")
            assert u.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'old_docs' AND indexdef LIKE '%USING hnsw%'").fetchone()[0] == 1
            for v in RELEASES[4:]:
                u.execute(f"ALTER EXTENSION pg_genome UPDATE TO '{v}'")
                if v == "0.5.0":
                    # registrations made before 0.5.0 are their table's owner's
                    assert u.execute("SELECT registered_by::text FROM genome.collections WHERE name = 'old_docs'").fetchone()[0] == "postgres"
            assert catalog.differences(catalog.describe(u), want) == []
            # image models (no tokenizer) register after the upgrade
            u.execute("SELECT genome.register_model_dir('efficientnet-lite0', '1', %s, task => 'image-embedding')",
                      (f"{MODELS}/efficientnet-lite0",))
    finally:
        drop("genome_upgrade")


# pg_genome's tables and what identifies a row (bytea and vectors compared by digest).
DATA = {
    "models": "SELECT name, version, task, dimension, sha256, config::text FROM genome.models ORDER BY 1, 2",
    "collections": "SELECT name, relid::text, model, dimension, generation, auto_embed, registered_by::text, attnums::text FROM genome.collections ORDER BY 1",
    "runs": "SELECT id, collection, kind, status, n_rows, n_clusters, n_noise FROM genome.runs ORDER BY 1",
    "families": "SELECT id, collection, label, md5(centroid::text), size, is_unclustered, exemplar_ids::text, threshold FROM genome.families ORDER BY 1",
    "queue": "SELECT id, collection, target, row_id, status, attempts FROM genome.embed_queue_items ORDER BY 1",
    "pet_media": "SELECT name, relid::text, model, registered_by::text, attnums::text FROM genome.pet_media ORDER BY 1",
    "pet_photos": "SELECT media, image_id, pet_id, md5(embedding::text), quality, cluster_id, similarity, error FROM genome.pet_photos ORDER BY 1, 2",
    "pet_clusters": "SELECT id, media, pet_id, md5(centroid::text), size FROM genome.pet_photo_clusters ORDER BY 1",
    "pet_state": "SELECT media, pet_id, threshold FROM genome.pet_state ORDER BY 1, 2",
    "app": "SELECT id, family_id, md5(embedding::text) FROM public.up_docs ORDER BY 1",
}


def test_a_database_with_data_upgrades_from_the_previous_release_intact(database):
    """Real collections, families, queue rows and pets made by the previous release survive the
    upgrade unchanged, and the upgraded database goes on working."""
    import imageset
    prev = RELEASES[-2]
    rows = sample_rows()[:300]
    x, y = imageset.fashion()
    scratch("genome_upgrade_data")
    try:
        with connect("genome_upgrade_data") as u:
            u.execute("SET client_min_messages = warning")
            u.execute("CREATE EXTENSION vector")
            u.execute(f"CREATE EXTENSION pg_genome VERSION '{prev}'")
            u.execute("SELECT genome.register_model_dir('all-minilm-l6-v2', '1', %s)", (f"{MODELS}/all-minilm-l6-v2",))
            u.execute("SELECT genome.register_model_dir('efficientnet-lite0', '1', %s, task => 'image-embedding')",
                      (f"{MODELS}/efficientnet-lite0",))
            u.execute("CREATE TABLE public.up_docs (id bigint PRIMARY KEY, body text, embedding vector(384), family_id bigint)")
            with u.cursor().copy("COPY public.up_docs (id, body) FROM STDIN") as cp:
                for i, _, body in rows[:280]:
                    cp.write_row((i, body))
            u.execute("SELECT genome.register_collection('up', 'public.up_docs', 'id', 'body', "
                      "embedding_column => 'embedding', family_column => 'family_id')")
            u.execute("SELECT genome.full_classify('up', min_cluster_size => 8)")
            u.execute("SELECT genome.enable_auto_embed('up', backfill => false)")
            with u.cursor().copy("COPY public.up_docs (id, body) FROM STDIN") as cp:
                for i, _, body in rows[280:]:
                    cp.write_row((i, body))
            u.execute("CREATE TABLE public.up_photos (pet int, photo_id int PRIMARY KEY, img bytea, shot_at timestamptz)")
            pid = 0
            for pet, look in [(1, 1), (1, 7), (2, 8)]:
                for i in [j for j in range(len(y)) if y[j] == look][:8]:
                    pid += 1
                    u.execute("INSERT INTO public.up_photos VALUES (%s, %s, %s, now() - %s * interval '1 day')",
                              (pet, pid, imageset.png_of(x[i]), pid))
            u.execute("SELECT genome.register_pet_media('public.up_photos', 'pet', 'photo_id', 'img', 'shot_at', name => 'up')")
            u.execute("SELECT genome.cluster_pet(1), genome.cluster_pet(2)")
            before = {k: u.execute(q).fetchall() for k, q in DATA.items()}
            assert len(before["families"]) > 2 and len(before["queue"]) == 20 and len(before["pet_clusters"]) >= 2
            for v in RELEASES[RELEASES.index(prev) + 1:]:
                u.execute(f"ALTER EXTENSION pg_genome UPDATE TO '{v}'")
            after = {k: u.execute(q).fetchall() for k, q in DATA.items()}
            assert after == before
            # 0.8.0 lists pending rows in genome.pending_rows instead of a partial index
            assert u.execute("SELECT count(*) FROM pg_indexes WHERE indexname = 'genome_pending_up'").fetchone()[0] == 0
            assert u.execute("SELECT count(*) FROM genome.pending_rows WHERE collection = 'up'").fetchone()[0] == 20
            # and it goes on: the queue drains, assignment and search use the upgraded objects
            assert u.execute("SELECT genome.process_embed_queue(32)").fetchone()[0] == 20
            processed, assigned, unclustered = u.execute("SELECT * FROM genome.assign_family('up', min_pending => 0)").fetchone()
            assert processed == 20 and assigned + unclustered == 20
            hits = u.execute("SELECT count(*) FROM genome.search('up', %s, top_k => 5, score_threshold => -1)", (rows[0][2],)).fetchone()[0]
            assert hits == 5
            u.execute("INSERT INTO public.up_photos VALUES (2, 999, %s, now())", (imageset.png_of(x[[j for j in range(len(y)) if y[j] == 8][9]]),))
            r = u.execute("SELECT genome.cluster_pet(2)").fetchone()[0]
            assert (r["added"], r["failed"], r["photos"]) == (1, 0, 9), r
    finally:
        drop("genome_upgrade_data")
