"""Capability ranking end to end on real data: the cheat sheets of PyPI `cheat` 2.5.1 (installed
by the set-up; tools/cheat_catalog.py turns them into capabilities, tools and labelled intents),
the real default model (all-MiniLM-L6-v2), pgvector's HNSW index, and the ranker trained in the
database. Metrics are checked against independent implementations (scikit-learn, numpy)."""
import math
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np
import psycopg
import pytest

from conftest import REPO, connect

CAT = "cheat"
ROLES = ["rank_owner", "rank_reader", "rank_stranger"]


def cheat_sheets_dir():
    return f"{sysconfig.get_paths()['purelib']}/usr/share/cheat"


@pytest.fixture(scope="module")
def cheat(database):
    """The cheat catalog registered by rank_owner, features refreshed; yields the intents split."""
    out = tempfile.mkdtemp(prefix="cheat-")
    subprocess.run([sys.executable, str(REPO / "tools" / "cheat_catalog.py"), out, cheat_sheets_dir()],
                   check=True, capture_output=True)
    with connect() as su:
        su.execute("SET client_min_messages = warning")
        for r in ROLES:
            if su.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (r,)).fetchone():
                su.execute(f"DROP OWNED BY {r}")
                su.execute(f"DROP ROLE {r}")
            su.execute(f"CREATE ROLE {r} LOGIN")
        su.execute("GRANT genome_user TO rank_owner, rank_reader, rank_stranger")
        su.execute("CREATE SCHEMA rank_app AUTHORIZATION rank_owner")
        su.execute("GRANT USAGE ON SCHEMA rank_app TO rank_reader, rank_stranger")
    with connect(user="rank_owner") as c:
        c.execute("SET search_path = rank_app")
        c.execute("CREATE TABLE caps (name text PRIMARY KEY, description text NOT NULL, kind text DEFAULT 'cli')")
        c.execute("CREATE TABLE cap_tools (capability text REFERENCES caps ON DELETE CASCADE, tool text)")
        c.execute("CREATE TABLE intents (intent text, capability text, split text)")
        for table, f in (("caps (name, description)", "capabilities.tsv"), ("cap_tools", "links.tsv"),
                         ("intents", "intents.tsv")):
            with c.cursor().copy(f"COPY {table} FROM STDIN WITH (FORMAT csv, DELIMITER E'\\t', HEADER true, QUOTE E'\\x01')") as cp:
                cp.write(open(f"{out}/{f}", "rb").read())
        c.execute("CREATE TABLE train AS SELECT intent, capability FROM intents WHERE split = 'train'")
        c.execute("CREATE TABLE test AS SELECT intent, capability FROM intents WHERE split = 'test'")
        c.execute("GRANT SELECT ON caps, cap_tools, test TO rank_reader")
        c.execute("SELECT genome.register_catalog(%s, 'rank_app.caps', 'name', 'description', "
                  "'rank_app.cap_tools', 'capability', 'tool')", (CAT,))
        c.execute("SELECT genome.refresh_catalog(%s)", (CAT,))
    yield out
    with connect() as su:
        su.execute("SET client_min_messages = warning")
        su.execute("SELECT genome.unregister_catalog(%s)", (CAT,))
        su.execute("DROP SCHEMA rank_app CASCADE")
        for r in ROLES:
            su.execute(f"DROP OWNED BY {r}")
            su.execute(f"DROP ROLE {r}")


def owner():
    c = connect(user="rank_owner")
    c.execute("SET search_path = rank_app, public")
    return c


def sqlstate(c, sql, args=()):
    with pytest.raises(psycopg.Error) as e:
        c.execute(sql, args)
    return e.value.sqlstate, str(e.value)


@pytest.fixture(scope="module")
def trained(cheat):
    """Metrics of the fused retrieval before training, then v1 trained on the train split."""
    with owner() as c:
        before = c.execute("SELECT genome.evaluate_ranker(%s, 'test')", (CAT,)).fetchone()[0]
        row = c.execute("SELECT * FROM genome.train_ranker(%s, 'train', epochs => 6)", (CAT,)).fetchone()
    return before, row


def test_features_are_valid(cheat):
    with owner() as c:
        n_caps = c.execute("SELECT count(*) FROM caps").fetchone()[0]
        rows = c.execute("""SELECT text_embedding::real[], graph_embedding, tool_count, pagerank, clustering, tools
                              FROM genome.capability_features WHERE catalog = %s""", (CAT,)).fetchall()
        assert len(rows) == n_caps > 150
        text = np.array([r[0] for r in rows], dtype=np.float64)
        graph = np.array([r[1] for r in rows], dtype=np.float64)
        assert text.shape[1] == 384 and graph.shape[1] == 64
        assert np.all(np.abs(np.linalg.norm(text, axis=1) - 1) < 0.01), "text embeddings are unit vectors"
        assert np.isfinite(graph).all() and graph.var(axis=0).sum() > 0.01, "graph embeddings are not collapsed"
        # tool counts equal the link table's distinct tools per capability
        links = dict(c.execute("SELECT capability, count(DISTINCT tool) FROM cap_tools GROUP BY 1").fetchall())
        names = [r[0] for r in c.execute("SELECT capability FROM genome.capability_features WHERE catalog = %s",
                                         (CAT,)).fetchall()]
        assert [r[2] for r in rows] == [links.get(n, 0) for n in names]
        assert all(0 <= r[4] <= 1 for r in rows)
        n_tools = c.execute("SELECT count(*) FROM genome.tool_features WHERE catalog = %s", (CAT,)).fetchone()[0]
        assert n_tools == c.execute("SELECT count(DISTINCT tool) FROM cap_tools").fetchone()[0]
        # PageRank over capabilities and tools sums to the number of nodes (stored scaled by n)
        total = c.execute("""SELECT (SELECT sum(pagerank) FROM genome.capability_features WHERE catalog = %s)
                                  + (SELECT sum(pagerank) FROM genome.tool_features WHERE catalog = %s)""",
                          (CAT, CAT)).fetchone()[0]
        assert abs(total - (n_caps + n_tools)) < 0.01 * (n_caps + n_tools)


def test_refresh_is_incremental_and_follows_changes(cheat):
    with owner() as c:
        assert c.execute("SELECT genome.refresh_catalog(%s)", (CAT,)).fetchone()[0] == 0, "nothing changed"
        c.execute("INSERT INTO caps VALUES ('zz-new', 'zz-new: Frobnicate the quantum flux capacitor')")
        c.execute("INSERT INTO cap_tools VALUES ('zz-new', 'frobctl')")
        assert c.execute("SELECT changed_at IS NOT NULL FROM genome.catalogs WHERE name = %s", (CAT,)).fetchone()[0]
        assert c.execute("SELECT genome.refresh_catalog(%s)", (CAT,)).fetchone()[0] == 1, "only the new row"
        top = c.execute("SELECT capability FROM genome.rank_capabilities('frobnicate the flux capacitor', top_k => 1, "
                        "catalog => %s)", (CAT,)).fetchone()[0]
        assert top == "zz-new"
        c.execute("DELETE FROM caps WHERE name = 'zz-new'")
        assert c.execute("SELECT genome.refresh_catalog(%s)", (CAT,)).fetchone()[0] == 0
        assert not c.execute("SELECT 1 FROM genome.capability_features WHERE capability = 'zz-new'").fetchone()


def test_ranking_before_training_is_the_fused_retrieval(cheat):
    with owner() as c:
        if c.execute("SELECT 1 FROM genome.rankers WHERE catalog = %s", (CAT,)).fetchone():
            pytest.skip("a ranker exists already (test order)")
        rows = c.execute("SELECT * FROM genome.rank_capabilities('extract files from a tar archive', top_k => 5, "
                         "catalog => %s)", (CAT,)).fetchall()
        assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
        assert "tar" in [r[1] for r in rows[:3]]
        assert all(r[3] is None and r[4] is None for r in rows), "no confidence, no model: flagged as fallback"
        assert len({r[5] for r in rows}) == 1
        logged = c.execute("SELECT intent, candidates, model_version FROM genome.rankings WHERE id = %s",
                           (rows[0][5],)).fetchone()
        assert logged == ("extract files from a tar archive", [r[1] for r in rows], None)


def test_training_beats_the_fused_retrieval_on_held_out_intents(trained):
    before, row = trained
    version, stage, examples, dev_examples, dev_mrr, dev_hit10, dev_ece, seconds = row
    assert (version, stage) == ("v1", "production")
    assert examples > 600 and dev_examples > 50
    with owner() as c:
        after = c.execute("SELECT genome.evaluate_ranker(%s, 'test')", (CAT,)).fetchone()[0]
    assert after["version"] == "v1" and before["version"] is None
    assert after["intents"] == before["intents"] > 150
    assert after["mrr"] > before["mrr"] + 0.1, (before["mrr"], after["mrr"])
    assert after["hit_at_10"] > before["hit_at_10"]
    assert after["ece"] is not None and before["ece"] is None


def test_the_ranker_remembers_its_intents_texts(trained):
    """The lexical memory (0.7.1): each remembered intent keeps its text, the train split's."""
    with owner() as c:
        rows = c.execute("SELECT m.intent, m.capability FROM genome.ranker_memory m "
                         "JOIN genome.rankers r ON r.id = m.ranker WHERE r.catalog = %s AND r.version = 'v1'",
                         (CAT,)).fetchall()
        train = set(c.execute("SELECT intent, capability FROM train").fetchall())
    assert len(train) > 600
    assert all(r[0] for r in rows), "every remembered intent has its text"
    assert set(rows) == train


def wal_syncs(c):
    """WAL fsyncs so far, the backend's own included (its statistics flushed first)."""
    c.execute("SELECT pg_stat_force_next_flush()")
    return c.execute("SELECT wal_sync FROM pg_stat_wal").fetchone()[0]


def test_a_ranking_alone_does_not_wait_for_the_disk_and_app_writes_still_do(trained):
    """A transaction whose only write is the ranking log row commits asynchronously (the WAL
    flush at commit made the latency's tail); one that also writes the app's rows keeps its
    synchronous commit, and genome.synchronous_ranking_log = on or a synchronous_commit the session
    set itself restores the flush. Counted in
    pg_stat_wal: a synchronous commit fsyncs the WAL itself, asynchronous ones leave it to the
    WAL writer (at most every wal_writer_delay)."""
    n = 20
    intents = [f"list the files of directory number {i}" for i in range(4 * n)]
    rank = "SELECT count(*) FROM genome.rank_capabilities(%s, catalog => %s)"
    with connect() as c:
        if c.execute("SHOW fsync").fetchone()[0] != "on":
            pytest.skip("fsync is off: no WAL flush to count")
        c.execute("CREATE TABLE rank_app.shown (intent text)")
        try:
            c.execute("SET genome.synchronous_ranking_log = on")
            s0 = wal_syncs(c)
            for q in intents[:n]:
                c.execute(rank, (q, CAT))
            s1 = wal_syncs(c)
            c.execute("RESET genome.synchronous_ranking_log")
            for q in intents[n:2 * n]:
                c.execute(rank, (q, CAT))
            s2 = wal_syncs(c)
            for q in intents[2 * n:3 * n]:
                with c.transaction():
                    c.execute(rank, (q, CAT))
                    c.execute("INSERT INTO rank_app.shown VALUES (%s)", (q,))
            s3 = wal_syncs(c)
            # a session that chose its own synchronous_commit keeps it
            c.execute("SET synchronous_commit = local")
            for q in intents[3 * n:]:
                c.execute(rank, (q, CAT))
            s4 = wal_syncs(c)
            c.execute("RESET synchronous_commit")
            logged = c.execute("SELECT count(*) FROM genome.rankings WHERE intent = ANY(%s)", (intents,)).fetchone()[0]
        finally:
            c.execute("DROP TABLE rank_app.shown")
    assert logged == 4 * n, "every ranking is logged, whichever way it commits"
    assert s1 - s0 >= 0.8 * n, ("synchronous log", s1 - s0)
    assert s2 - s1 <= n / 2, ("asynchronous log", s2 - s1)
    assert s3 - s2 >= 0.8 * n, ("a transaction that also writes the app's rows", s3 - s2)
    assert s4 - s3 >= 0.8 * n, ("synchronous_commit set by the session", s4 - s3)


def test_evaluation_metrics_match_scikit_learn_and_numpy(trained):
    from sklearn.metrics import brier_score_loss, ndcg_score
    with owner() as c:
        m = c.execute("SELECT genome.evaluate_ranker(%s, 'test', k => 10)", (CAT,)).fetchone()[0]
    ranks = m["ranks"]
    rr = np.array([1.0 / r if r else 0.0 for r in ranks])
    assert math.isclose(m["mrr"], rr.mean(), rel_tol=1e-9)
    for k in (1, 3, 5, 10):
        assert math.isclose(m[f"hit_at_{k}"], np.mean([bool(r) and r <= k for r in ranks]), rel_tol=1e-9)
    # NDCG@10 with one relevant capability: scikit-learn on one-hot relevance and scores by rank
    width = max(r for r in ranks if r) + 1
    ndcgs = []
    for r in ranks:
        y_true = np.zeros((1, width))
        y_score = -np.arange(width, dtype=float)[None, :]   # position j has the (j+1)-th best score
        if r:
            y_true[0, r - 1] = 1
        else:
            y_true[0, width - 1] = 1                         # not ranked: beyond every cut-off
            y_score[0, width - 1] = -1e9
        ndcgs.append(ndcg_score(y_true, y_score, k=10))
    assert math.isclose(m["ndcg_at_10"], float(np.mean(ndcgs)), rel_tol=1e-9)
    assert math.isclose(m["map"], rr.mean(), rel_tol=1e-9), "one relevant item: AP = reciprocal rank"
    conf = np.array(m["top1_confidence"])
    correct = np.array([r == 1 for r in ranks], dtype=float)
    assert len(conf) == len(ranks)
    assert math.isclose(m["brier"], brier_score_loss(correct, conf), rel_tol=1e-9)
    # ECE, 15 equal-width bins (Guo et al.)
    bins = np.minimum((conf * 15).astype(int), 14)
    ece = sum(abs(correct[bins == b].mean() - conf[bins == b].mean()) * (bins == b).mean()
              for b in range(15) if (bins == b).any())
    assert math.isclose(m["ece"], ece, rel_tol=1e-9, abs_tol=1e-12)
    assert 0 < m["coverage"] <= 1 and 0 <= m["gini"] < 1


def test_confidence_is_the_calibrated_softmax_with_a_none_of_these_option(trained):
    """The confidences served are softmax(score / T) over the candidates with one more option,
    "none of them" (the dev queries whose capability was not generated), recomputed in numpy
    from the registered temperature and outside logit."""
    with connect() as su:
        t, b = su.execute("""SELECT (metrics->>'temperature')::float8, (metrics->>'outside_logit')::float8
                               FROM genome.rankers WHERE catalog = %s AND version = 'v1'""", (CAT,)).fetchone()
    assert t is not None and 0.05 <= t <= 20
    with owner() as c:
        for intent in ("compress a directory into an archive", "show who is logged in"):
            rows = c.execute("SELECT score, confidence FROM genome.rank_capabilities(%s, top_k => 1000, catalog => %s)",
                             (intent, CAT)).fetchall()
            s = np.array([r[0] for r in rows], dtype=np.float64) / t
            conf = np.array([r[1] for r in rows], dtype=np.float64)
            m = max(s.max(), b if b is not None else -np.inf)
            den = np.exp(s - m).sum() + (np.exp(b - m) if b is not None else 0.0)
            assert np.allclose(conf, np.exp(s - m) / den, rtol=1e-5, atol=1e-9)
            if b is None:
                assert math.isclose(conf.sum(), 1.0, rel_tol=1e-5)
            else:
                assert conf.sum() < 1.0


def test_outcomes_are_logged_and_checked(trained):
    with owner() as c:
        rows = c.execute("SELECT * FROM genome.rank_capabilities('show disk usage of a folder', top_k => 3, "
                         "catalog => %s, session_id => 's-1')", (CAT,)).fetchall()
        rid, top = rows[0][5], rows[0][1]
        assert rows[0][4] == "v1" and 0 < rows[0][3] <= 1
        e1 = c.execute("SELECT genome.record_outcome(%s, %s, 'success', execution_ms => 12, rating => 5)",
                       (rid, top)).fetchone()[0]
        e2 = c.execute("SELECT genome.record_outcome(%s, %s, 'partial')", (rid, rows[1][1])).fetchone()[0]
        got = c.execute("SELECT rank, reward, step, session_id, candidates FROM genome.experiences WHERE id IN (%s, %s) "
                        "ORDER BY id", (e1, e2)).fetchall()
        assert got[0][:4] == (1, 1.0, 1, "s-1") and got[1][:4] == (2, 0.5, 2, "s-1")
        assert got[0][4] == [r[1] for r in rows]
        assert sqlstate(c, "SELECT genome.record_outcome(-1, 'tar', 'success')")[0] == "42704"
        assert sqlstate(c, "SELECT genome.record_outcome(%s, 'tar', 'great')", (rid,))[0] == "22023"
        assert sqlstate(c, "SELECT genome.record_outcome(%s, 'no-such-capability', 'success')", (rid,))[0] == "42704"
        assert sqlstate(c, "SELECT genome.record_outcome(%s, 'tar', 'success', rating => 9)", (rid,))[0] == "22003"
        # append-only: no UPDATE privilege, and a trigger for whoever has it
        assert sqlstate(c, "UPDATE genome.experiences SET reward = 0 WHERE id = %s", (e1,))[0] == "42501"
        with connect() as su:
            assert sqlstate(su, "UPDATE genome.experiences SET reward = 0 WHERE id = %s", (e1,))[0] == "55000"
        # a capability removed between ranking and outcome is still accepted when it was shown
        assert c.execute("SELECT genome.record_outcome(%s, %s, 'failure')", (rid, rows[2][1])).fetchone()[0]


def test_bad_input_gives_clear_errors(trained):
    with owner() as c:
        for sql, args, state in [
            ("SELECT * FROM genome.rank_capabilities('', catalog => %s)", (CAT,), "22023"),
            ("SELECT * FROM genome.rank_capabilities(%s, catalog => %s)", ("x" * 100_000, CAT), "22001"),
            ("SELECT * FROM genome.rank_capabilities('list files', catalog => 'nope')", (), "42704"),
            ("SELECT * FROM genome.rank_capabilities('list files', top_k => 0, catalog => %s)", (CAT,), "22023"),
            ("SELECT * FROM genome.train_ranker('nope')", (), "42704"),
            ("SELECT genome.evaluate_ranker(%s, 'test', version => 'v99')", (CAT,), "42704"),
            ("SELECT genome.evaluate_ranker(%s, 'test', intent_column => 'nope')", (CAT,), "42703"),
        ]:
            assert sqlstate(c, sql, args)[0] == state, sql
        # context tools not in the catalog are ignored (documented), known ones are used
        rows = c.execute("SELECT capability FROM genome.rank_capabilities('list files', ARRAY['no-such-tool', 'ls'], "
                         "catalog => %s)", (CAT,)).fetchall()
        assert len(rows) == 10
        c.execute("CREATE TEMP TABLE few AS SELECT * FROM train LIMIT 3")
        c.execute("CREATE TABLE rank_app.empty_caps (name text PRIMARY KEY, description text)")
        c.execute("CREATE TABLE rank_app.empty_links (capability text, tool text)")
        c.execute("SELECT genome.register_catalog('empty', 'rank_app.empty_caps', 'name', 'description', "
                  "'rank_app.empty_links', 'capability', 'tool')")
        state, msg = sqlstate(c, "SELECT genome.refresh_catalog('empty')")
        assert state == "22023" and "no capabilities" in msg
        assert sqlstate(c, "SELECT * FROM genome.rank_capabilities('x', catalog => 'empty')")[0] == "55000"
        c.execute("INSERT INTO rank_app.empty_caps VALUES ('a', 'a: do a thing'), ('b', 'b: do another')")
        c.execute("SELECT genome.refresh_catalog('empty')")   # no tools: a NOTICE, text features only
        state, msg = sqlstate(c, "SELECT * FROM genome.train_ranker('empty', 'few')")
        assert state == "22023" and "at least 10" in msg
        c.execute("SELECT genome.unregister_catalog('empty')")


def test_lifecycle_canary_promote_rollback(trained):
    with owner() as c:
        v2 = c.execute("SELECT version, stage FROM genome.train_ranker(%s, epochs => 2, promote => false)",
                       (CAT,)).fetchone()
        assert v2 == ("v2", "staging")
        c.execute("SELECT genome.start_canary(%s, 'v2', 0.5)", (CAT,))
        served = {}
        for i in range(40):
            r = c.execute("SELECT model_version, ranking_id, capability FROM genome.rank_capabilities(%s, top_k => 1, "
                          "catalog => %s, session_id => %s)", (f"compress a file {i}", CAT, f"sess-{i}")).fetchone()
            served[r[0]] = served.get(r[0], 0) + 1
            c.execute("SELECT genome.record_outcome(%s, %s, %s)", (r[1], r[2], "success" if i % 3 else "failure"))
        assert set(served) == {"v1", "v2"} and min(served.values()) >= 8, served
        # the same session always gets the same version
        again = {c.execute("SELECT model_version FROM genome.rank_capabilities('compress a file 0', top_k => 1, "
                           "catalog => %s, session_id => 'sess-0')", (CAT,)).fetchone()[0] for _ in range(3)}
        assert len(again) == 1
        rep = c.execute("SELECT version, role, rankings, outcomes, success_rate, p_value, ci_low, ci_high, "
                        "n_needed_per_arm FROM genome.canary_report(%s)", (CAT,)).fetchall()
        assert [r[:2] for r in rep] == [("v2", "canary"), ("v1", "production")]
        assert sum(r[2] for r in rep) >= 40 and all(r[3] > 0 for r in rep)
        canary, prod = rep
        assert 0 <= canary[5] <= 1 and canary[6] <= canary[7]
        # the two-proportion test against statsmodels' formula, written out
        succ = {v: c.execute("""SELECT count(*) FILTER (WHERE e.outcome = 'success'), count(*)
                                  FROM genome.experiences e JOIN genome.rankings k ON k.id = e.ranking_id
                                 WHERE k.model_version = %s AND k.created_at >= (SELECT canary_since FROM genome.rankers
                                                                                WHERE catalog = %s AND version = 'v2')""",
                             (v, CAT)).fetchone() for v in ("v2", "v1")}
        (sa, na), (sb, nb) = succ["v2"], succ["v1"]
        p = (sa + sb) / (na + nb)
        z = (sa / na - sb / nb) / math.sqrt(p * (1 - p) * (1 / na + 1 / nb))
        assert math.isclose(canary[5], math.erfc(abs(z) / math.sqrt(2)), rel_tol=1e-6, abs_tol=1e-9)
        c.execute("SELECT genome.promote_ranker(%s, 'v2')", (CAT,))
        stages = dict(c.execute("SELECT version, stage FROM genome.rankers WHERE catalog = %s", (CAT,)).fetchall())
        assert stages == {"v1": "archived", "v2": "production"}
        c.execute("SELECT genome.rollback_ranker(%s)", (CAT,))
        stages = dict(c.execute("SELECT version, stage FROM genome.rankers WHERE catalog = %s", (CAT,)).fetchall())
        assert stages == {"v1": "production", "v2": "archived"}
        r = c.execute("SELECT model_version FROM genome.rank_capabilities('compress a file', catalog => %s)",
                      (CAT,)).fetchone()
        assert r[0] == "v1"


def test_cancelled_training_leaves_production_serving(trained):
    with owner() as c:
        prod = c.execute("SELECT version FROM genome.rankers WHERE catalog = %s AND stage = 'production'",
                         (CAT,)).fetchone()[0]
        n = c.execute("SELECT count(*) FROM genome.rankers WHERE catalog = %s", (CAT,)).fetchone()[0]
        c.execute("SET statement_timeout = '1500ms'")
        state, _ = sqlstate(c, "SELECT * FROM genome.train_ranker(%s, epochs => 50)", (CAT,))
        assert state == "57014"
        c.execute("RESET statement_timeout")
        assert c.execute("SELECT count(*) FROM genome.rankers WHERE catalog = %s", (CAT,)).fetchone()[0] == n
        r = c.execute("SELECT model_version FROM genome.rank_capabilities('compress a file', catalog => %s)",
                      (CAT,)).fetchone()
        assert r[0] == prod


def test_a_role_sees_only_catalogs_it_may_read(trained):
    with connect(user="rank_reader") as c:
        c.execute("SET search_path = rank_app")
        rows = c.execute("SELECT capability, model_version FROM genome.rank_capabilities('compress a file', "
                         "catalog => %s)", (CAT,)).fetchall()
        assert len(rows) == 10
        # a reader may log outcomes, not train or refresh
        assert sqlstate(c, "SELECT genome.refresh_catalog(%s)", (CAT,))[0] == "42501"
        assert sqlstate(c, "SELECT * FROM genome.train_ranker(%s)", (CAT,))[0] == "42501"
        assert sqlstate(c, "INSERT INTO genome.experiences (catalog, intent, intent_embedding, capability, outcome, "
                           "reward, source) SELECT %s, 'x', text_embedding, 'tar', 'success', 1, 'import' "
                           "FROM genome.capability_features LIMIT 1", (CAT,))[0] == "42501"
        rid = c.execute("SELECT max(id) FROM genome.rankings").fetchone()[0]
    with connect(user="rank_stranger") as c:
        assert sqlstate(c, "SELECT * FROM genome.rank_capabilities('compress a file', catalog => %s)", (CAT,))[0] == "42501"
        assert sqlstate(c, "SELECT genome.evaluate_ranker(%s, 'rank_app.test')", (CAT,))[0] in ("42501", "42P01")
        assert c.execute("SELECT count(*) FROM genome.capability_features").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM genome.experiences").fetchone()[0] == 0
        # the outcome log cannot be written for a catalog it cannot use
        assert sqlstate(c, "SELECT genome.record_outcome(%s, 'tar', 'success')", (rid,))[0] == "42704"
        # registering someone else's tables is refused by the row policy
        assert sqlstate(c, "SELECT genome.register_catalog('steal', 'rank_app.caps', 'name', 'description', "
                           "'rank_app.cap_tools', 'capability', 'tool')")[0] == "42501"
    with connect(user="rank_reader") as c:
        # the log is private to its writers and the owner: the reader sees its own rankings only
        mine = c.execute("SELECT count(*), count(*) FILTER (WHERE created_by <> 'rank_reader'::regrole) "
                         "FROM genome.rankings").fetchone()
        assert mine[0] >= 1 and mine[1] == 0
        # an outcome for a ranking that is not its own, or a forged row, is refused
        owners = connect(user="rank_owner")
        theirs = owners.execute("SELECT ranking_id FROM genome.rank_capabilities('list files', catalog => %s)",
                                (CAT,)).fetchone()[0]
        owners.close()
        assert sqlstate(c, "SELECT genome.record_outcome(%s, 'tar', 'success')", (theirs,))[0] == "42704"
        assert sqlstate(c, "INSERT INTO genome.experiences (catalog, ranking_id, intent, intent_embedding, capability, "
                           "outcome, reward) SELECT %s, %s, 'x', embedding, 'tar', 'success', 1 FROM genome.ranker_memory "
                           "LIMIT 1", (CAT, theirs))[0] == "42501"
        # the index helper cannot drop a live catalog's index
        c.execute("SELECT genome._catalog_index(%s, false)", (CAT,))
        assert c.execute("SELECT count(*) FROM pg_indexes WHERE indexname = 'capability_features_hnsw_' || md5(%s)",
                         (CAT,)).fetchone()[0] == 1
    with connect(user="rank_stranger") as c:
        assert c.execute("SELECT count(*) FROM genome.ranker_versions").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM genome.ranker_memory").fetchone()[0] == 0
    with owner() as c:
        assert sqlstate(c, "UPDATE genome.catalogs SET name = 'renamed' WHERE name = %s", (CAT,))[0] == "55000"
        # row-level security on the app's table: a reader it applies to is not a reader of the
        # features (they describe every row); the owner still ranks
        c.execute("ALTER TABLE caps ENABLE ROW LEVEL SECURITY")
        c.execute("CREATE POLICY caps_some ON caps FOR SELECT USING (name < 'm')")
    with connect(user="rank_reader") as c:
        assert sqlstate(c, "SELECT * FROM genome.rank_capabilities('list files', catalog => %s)", (CAT,))[0] == "42501"
        assert c.execute("SELECT count(*) FROM genome.capability_features").fetchone()[0] == 0
    with owner() as c:
        assert len(c.execute("SELECT * FROM genome.rank_capabilities('list files', catalog => %s)", (CAT,)).fetchall()) == 10
        c.execute("DROP POLICY caps_some ON caps")
        c.execute("ALTER TABLE caps DISABLE ROW LEVEL SECURITY")
    with connect() as su:
        internal = su.execute("""SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'genome'::regnamespace
                                    AND p.proname IN ('_two_proportion', '_catalog_index', '_catalog_triggers', '_catalog_changed')
                                    AND has_function_privilege('public', p.oid, 'EXECUTE')""").fetchall()
        assert internal == []


def test_dropping_a_table_forgets_its_catalog(cheat):
    with owner() as c:
        c.execute("CREATE TABLE tmp_caps (name text PRIMARY KEY, description text)")
        c.execute("CREATE TABLE tmp_links (capability text, tool text)")
        c.execute("SELECT genome.register_catalog('tmpcat', 'tmp_caps', 'name', 'description', 'tmp_links', "
                  "'capability', 'tool')")
        ix = "SELECT count(*) FROM pg_indexes WHERE indexname = 'capability_features_hnsw_' || md5('tmpcat')"
        assert c.execute(ix).fetchone()[0] == 1
        c.execute("DROP TABLE tmp_links")
        assert not c.execute("SELECT 1 FROM genome.catalogs WHERE name = 'tmpcat'").fetchone()
        assert c.execute(ix).fetchone()[0] == 0
        c.execute("DROP TABLE tmp_caps")


def test_filter_and_min_score(trained):
    with owner() as c:
        c.execute("UPDATE caps SET kind = 'archive' WHERE name IN ('tar', 'gzip', 'unzip', 'bzip2', '7z')")
        rows = c.execute("""SELECT capability FROM genome.rank_capabilities('compress a directory', catalog => %s,
                                   filter => '{"kind": "archive"}')""", (CAT,)).fetchall()
        assert rows and {r[0] for r in rows} <= {"tar", "gzip", "unzip", "bzip2", "7z"}
        all_rows = c.execute("SELECT score FROM genome.rank_capabilities('compress a directory', top_k => 50, "
                             "catalog => %s)", (CAT,)).fetchall()
        cut = all_rows[3][0]
        kept = c.execute("SELECT score FROM genome.rank_capabilities('compress a directory', top_k => 50, "
                         "catalog => %s, min_score => %s::real)", (CAT, cut)).fetchall()
        assert len(kept) >= 4 and all(s >= cut for (s,) in kept)
        c.execute("UPDATE caps SET kind = 'cli'")


def test_monitoring_validates_features_and_detects_drift(trained):
    with owner() as c:
        c.execute("UPDATE caps SET kind = kind WHERE name = 'tar'")
        m = c.execute("SELECT genome.ranking_monitor(%s)", (CAT,)).fetchone()[0]
        assert m["features"]["stale"] and not m["features"]["ok"], "changed since the last refresh"
        c.execute("SELECT genome.refresh_catalog(%s)", (CAT,))
        m = c.execute("SELECT genome.ranking_monitor(%s)", (CAT,)).fetchone()[0]
        assert m["features"]["ok"], m["features"]
        assert m["features"]["total_variance"] >= 0.01
        test = [r[0] for r in c.execute("SELECT intent FROM test ORDER BY md5(intent) LIMIT 120").fetchall()]
    with connect() as su:
        # the earlier tests' rankings out of both windows
        su.execute("UPDATE genome.rankings SET created_at = now() - interval '30 days' WHERE catalog = %s", (CAT,))
    with owner() as c:
        for q in test[:60]:
            c.execute("SELECT * FROM genome.rank_capabilities(%s, catalog => %s)", (q, CAT)).fetchall()
    with connect() as su:
        # those 60 become the reference window (two days ago)
        su.execute("UPDATE genome.rankings SET created_at = now() - interval '2 days' WHERE catalog = %s "
                   "AND created_at > now() - interval '1 hour'", (CAT,))
    with owner() as c:
        for q in test[60:]:
            c.execute("SELECT * FROM genome.rank_capabilities(%s, catalog => %s)", (q, CAT)).fetchall()
        same = c.execute("SELECT genome.ranking_monitor(%s)", (CAT,)).fetchone()[0]["drift"]
        assert same["reference_rankings"] == 60 and same["recent_rankings"] == 60
        assert same["intent_drift"] is False, same
        for i in range(80):
            c.execute("SELECT * FROM genome.rank_capabilities(%s, catalog => %s)",
                      (f"open an ssh connection to remote host number {i}", CAT)).fetchall()
        shifted = c.execute("SELECT genome.ranking_monitor(%s)", (CAT,)).fetchone()[0]
        assert shifted["drift"]["intent_drift"] is True and shifted["drift"]["ks_min_p"] < 0.002, shifted["drift"]
        assert shifted["drift"]["score_psi"] is not None
        assert shifted["online"]["rankings"] == 140 and shifted["online"]["p99_ms"] >= shifted["online"]["p50_ms"] > 0
        assert shifted["online"]["fallback_rate"] == 0
    with connect() as su:
        h = su.execute("SELECT genome.health()").fetchone()[0]
        assert [x["catalog"] for x in h["ranking"]] == [CAT]
        text = su.execute("SELECT genome.metrics()").fetchone()[0]
        assert f'genome_rank_online{{catalog="{CAT}",figure="intent_drift"}} 1' in text
        assert "genome_rank_latency_seconds_count" in text
        # a NaN in the feature store is reported, not a crash
        su.execute("UPDATE genome.capability_features SET pagerank = 'NaN' WHERE catalog = %s AND capability = 'tar'", (CAT,))
        f = su.execute("SELECT genome.ranking_monitor(%s)", (CAT,)).fetchone()[0]["features"]
        assert not f["ok"] and any("NaN" in p for p in f["problems"])
    with owner() as c:
        rows = c.execute("SELECT * FROM genome.rank_capabilities('create a tar archive', catalog => %s)", (CAT,)).fetchall()
        assert all(math.isfinite(r[2]) for r in rows), "a NaN feature reads as 0"
        c.execute("UPDATE caps SET description = description WHERE name = 'tar'")   # marks the catalog changed
        c.execute("SELECT genome.refresh_catalog(%s)", (CAT,))
        assert c.execute("SELECT genome.ranking_monitor(%s)", (CAT,)).fetchone()[0]["features"]["ok"]


def test_daily_refresh_runs_on_pg_cron():
    """pg_cron lives in the database named by cron.database_name (genome): a small catalog there,
    refreshed by its job on a one-minute schedule."""
    import time
    with connect("genome") as c:
        c.execute("SET client_min_messages = warning")
        c.execute("SELECT genome.unregister_catalog('it_cron_cat')")
        c.execute("DROP SCHEMA IF EXISTS it_rank CASCADE")
        c.execute("CREATE SCHEMA it_rank")
        c.execute("CREATE TABLE it_rank.caps (name text PRIMARY KEY, description text)")
        c.execute("CREATE TABLE it_rank.links (capability text, tool text)")
        c.execute("INSERT INTO it_rank.caps VALUES ('tar', 'tar: archive files'), ('ls', 'ls: list a directory')")
        c.execute("INSERT INTO it_rank.links VALUES ('tar', 'tar'), ('tar', 'gzip'), ('ls', 'ls')")
        c.execute("SELECT genome.register_catalog('it_cron_cat', 'it_rank.caps', 'name', 'description', "
                  "'it_rank.links', 'capability', 'tool')")
        job = c.execute("SELECT genome.schedule_catalog('it_cron_cat', '* * * * *')").fetchone()[0]
        cmd = c.execute("SELECT command FROM cron.job WHERE jobid = %s", (job,)).fetchone()[0]
        assert "refresh_catalog('it_cron_cat')" in cmd and "prune_experiences('it_cron_cat')" in cmd
        deadline = time.time() + 150
        while time.time() < deadline and c.execute(
                "SELECT feature_version FROM genome.catalogs WHERE name = 'it_cron_cat'").fetchone()[0] == 0:
            time.sleep(3)
        status = c.execute("SELECT d.status, d.return_message FROM cron.job_run_details d WHERE d.jobid = %s "
                           "ORDER BY d.runid DESC LIMIT 1", (job,)).fetchone()
        assert c.execute("SELECT count(*) FROM genome.capability_features WHERE catalog = 'it_cron_cat'").fetchone()[0] == 2, status
        c.execute("SELECT genome.unregister_catalog('it_cron_cat')")
        assert not c.execute("SELECT 1 FROM cron.job WHERE jobid = %s", (job,)).fetchone(), "unregister unschedules"
        c.execute("DROP SCHEMA it_rank CASCADE")


def test_temporal_validation_trains_before_and_tests_after(trained):
    with owner() as c:
        for intent, cap in c.execute("SELECT intent, capability FROM train ORDER BY md5(intent) LIMIT 40").fetchall():
            rows = c.execute("SELECT capability, ranking_id FROM genome.rank_capabilities(%s, catalog => %s)",
                             (intent, CAT)).fetchall()
            shown = [r[0] for r in rows]
            c.execute("SELECT genome.record_outcome(%s, %s, %s)",
                      (rows[0][1], cap if cap in shown else shown[0], "success" if cap in shown else "failure"))
        split = c.execute("SELECT clock_timestamp()").fetchone()[0]
        tests = c.execute("SELECT intent, capability FROM test ORDER BY md5(intent) LIMIT 30").fetchall()
        for intent, cap in tests:
            rid = c.execute("SELECT ranking_id FROM genome.rank_capabilities(%s, top_k => 1, catalog => %s)",
                            (intent, CAT)).fetchone()[0]
            c.execute("SELECT genome.record_outcome(%s, %s, 'success')", (rid, cap))
        v = c.execute("SELECT genome.temporal_validation(%s, %s, epochs => 3)", (CAT, split)).fetchone()[0]
        assert v["test_intents"] == len(tests)
        assert v["train_experiences"] > 500
        assert v["ranker"]["n"] == v["dense_cosine"]["n"] == len(tests)
        assert v["ranker"]["mrr"] > v["dense_cosine"]["mrr"], v
        assert sqlstate(c, "SELECT genome.temporal_validation(%s, now() - interval '10 years')", (CAT,))[0] == "22023"


def test_registry_models_have_stages(database):
    from conftest import MODELS
    with connect() as su:
        su.execute("DELETE FROM genome.models WHERE name = 'tiny-stage'")
        for v in ("1", "2", "3"):
            su.execute("SELECT genome.register_model_dir('tiny-stage', %s, %s)", (v, f"{MODELS}/tiny-bert"))
        resolve = lambda: su.execute("SELECT version FROM genome.resolve_model('tiny-stage')").fetchone()[0]
        assert resolve() == "3", "unmanaged: the newest"
        su.execute("SELECT genome.promote_model('tiny-stage', '1')")
        assert resolve() == "1"
        su.execute("SELECT genome.promote_model('tiny-stage', '2')")
        stages = dict(su.execute("SELECT version, stage FROM genome.models WHERE name = 'tiny-stage'").fetchall())
        assert stages == {"1": "archived", "2": "production", "3": None}
        assert resolve() == "2"
        su.execute("SELECT genome.rollback_model('tiny-stage')")
        assert resolve() == "1"
        assert su.execute("SELECT version FROM genome.resolve_model('tiny-stage@3')").fetchone()[0] == "3"
        assert sqlstate(su, "SELECT genome.promote_model('tiny-stage', '9')")[0] == "42704"
        su.execute("DELETE FROM genome.models WHERE name = 'tiny-stage'")
    with connect() as su:
        su.execute("SET client_min_messages = warning")
        su.execute("DROP ROLE IF EXISTS rank_nobody")
        su.execute("CREATE ROLE rank_nobody")
        su.execute("GRANT genome_user TO rank_nobody")
        su.execute("SET ROLE rank_nobody")
        assert sqlstate(su, "SELECT genome.promote_model('all-minilm-l6-v2', '1')")[0] == "42501"
        su.execute("RESET ROLE")
        su.execute("DROP ROLE rank_nobody")


def test_cli_rank_train_and_models(trained):
    import os
    from conftest import PORT
    binary = REPO / "target" / "release" / "genome"
    assert binary.is_file(), "build it: cargo build --release -p genome-cli"
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(PORT), PGUSER="rank_owner", PGDATABASE="genome_it",
               PGOPTIONS="-c search_path=rank_app,public")
    run = lambda *a: subprocess.run([str(binary), *a], env=env, capture_output=True, text=True, timeout=600)
    r = run("rank", "extract a tar archive", "--catalog", CAT, "--top-k", "3")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("ranker v") and len(lines) == 4 and "confidence" in lines[1]
    r = run("train-ranker", "--catalog", CAT, "--epochs", "3", "--no-promote")
    assert r.returncode == 0, r.stderr
    assert "(staging)" in r.stdout and "MRR" in r.stdout and "Hit@10" in r.stdout
    assert "train-ranker cheat:" in r.stderr, "progress lines"
    r = run("models")
    assert r.returncode == 0, r.stderr
    assert "all-minilm-l6-v2@1" in r.stdout and "staging" in r.stdout and "production" in r.stdout
    r = run("rank", "x", "--catalog", "nope")
    assert r.returncode == 1 and "is not registered" in r.stderr
