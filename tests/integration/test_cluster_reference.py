"""Several nodes, reference data (pg_genome_cluster): the coordinator's model registry, a
sequence classifier and k-mer featuriser, and a ranking catalog (its app tables, features and
rankers) reach 3 data nodes by PostgreSQL's logical replication; any node then embeds, classifies
and ranks as the coordinator's data say; rank_capabilities on the coordinator runs on any node
that answers, outcomes go to the node that logged the ranking, and training on the coordinator
gathers them. Real clusters (scripts/nodes.sh), the real text model, the real cheat sheets
catalog and the real 16S gold set."""
import subprocess
import sys
import tempfile
import time

import numpy as np
import psycopg
import pytest

from conftest import MODELS, REPO
from test_cluster import at, nodes_sh
from test_ranking import cheat_sheets_dir
from test_taxonomy import gold_split

DB = "genome_ref"
COORD = 25440
NODES = {"n1": 25441, "n2": 25442, "n3": 25443}
CAT = "cheat"
INTENTS = ["compress a directory into an archive", "show the disk usage of each folder", "find files by name",
           "list running processes", "download a file over http", "change file permissions",
           "search text in files with a regular expression", "show the git commit history",
           "copy files to a remote machine", "kill a process by name", "count lines in a file",
           "create a new user account"]


ROLES = ["ref_reader", "ref_stranger"]


def q(port, sql, args=()):
    with at(port, DB) as c:
        return c.execute(sql, args or None).fetchall()


def drop_database(port):
    """DROP DATABASE refuses while a subscription lives in it: those go first (without their slot
    on the coordinator, which may be gone; the coordinator's slots are dropped there)."""
    with at(port, "postgres") as c:
        if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,)).fetchone():
            for role in ROLES:
                c.execute(f"DROP ROLE IF EXISTS {role}")
            return
    with at(port, DB) as c:
        for (s,) in c.execute("SELECT subname FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid "
                              "WHERE d.datname = %s", (DB,)).fetchall():
            c.execute(f"ALTER SUBSCRIPTION {s} DISABLE")
            c.execute(f"ALTER SUBSCRIPTION {s} SET (slot_name = NONE)")
            c.execute(f"DROP SUBSCRIPTION {s}")
    with at(port, "postgres") as c:
        c.execute(f"DROP DATABASE {DB} WITH (FORCE)")
        c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                  "WHERE database = %s AND NOT active", (DB,))
        for role in ROLES:
            c.execute(f"DROP ROLE IF EXISTS {role}")


APP_DDL = ["CREATE SCHEMA ref_app",
           "CREATE TABLE ref_app.caps (name text PRIMARY KEY, description text NOT NULL)",
           "CREATE TABLE ref_app.cap_tools (capability text, tool text, PRIMARY KEY (capability, tool))"]


def prepare_node(port):
    """A data node: pg_genome and the app's (empty) catalog tables; the rest is replicated."""
    drop_database(port)
    with at(port, "postgres") as c:
        c.execute(f"CREATE DATABASE {DB}")
    with at(port, DB) as c:
        c.execute("SET client_min_messages = warning")
        c.execute("CREATE EXTENSION pg_genome CASCADE")
        for ddl in APP_DDL:
            c.execute(ddl)


def subscribe(name, port):
    with at(port, DB) as c:
        c.execute(f"CREATE SUBSCRIPTION genome_reference_{name} CONNECTION "
                  f"'host=127.0.0.1 port={COORD} dbname={DB} user=postgres' PUBLICATION genome_reference")


def replicate():
    with at(COORD, DB) as c:
        c.execute("CALL genome_cluster.replicate(120)")


def set_up(nodes, classifier=True):
    """The coordinator with `nodes` (name -> port): the registry (the text model, a k-mer
    featuriser and, with `classifier`, a 16S classifier trained here), the cheat catalog with its
    app tables registered and refreshed, published; every node subscribed and ready. Used by
    benches/ranking_nodes_bench.py too."""
    out = tempfile.mkdtemp(prefix="cheat-")
    subprocess.run([sys.executable, str(REPO / "tools" / "cheat_catalog.py"), out, cheat_sheets_dir()],
                   check=True, capture_output=True)
    for port in [*nodes.values(), COORD]:
        prepare_node(port)
    with at(COORD, DB) as c:
        c.execute("SET client_min_messages = warning")
        c.execute("CREATE EXTENSION pg_genome_cluster CASCADE")
        for name, port in nodes.items():
            c.execute("SELECT genome_cluster.add_node(%s, '127.0.0.1', %s)", (name, port))
        # the registry: the text model, a k-mer featuriser and a 16S classifier trained here
        c.execute("SELECT genome.register_model_dir('all-minilm-l6-v2', '1', %s)", (f"{MODELS}/all-minilm-l6-v2",))
        c.execute("SELECT genome.register_kmer_featurizer('ref_k4', '1', k => 4)")
        if classifier:
            c.execute("CREATE TABLE ref_gold (id text PRIMARY KEY, sequence text, lineage text)")
            with c.cursor().copy("COPY ref_gold FROM STDIN") as cp:
                for r in gold_split():
                    if r[3] == "train":
                        cp.write_row(r[:3])
            c.execute("SELECT * FROM genome.train_sequence_classifier('ref_16s', 'ref_gold')")
        # the catalog: the app's tables, registered and refreshed here
        c.execute("CREATE TABLE ref_app.intents (intent text, capability text, split text)")
        c.execute("CREATE TEMP TABLE links (capability text, tool text)")
        for table, f in (("ref_app.caps (name, description)", "capabilities.tsv"), ("links", "links.tsv"),
                         ("ref_app.intents", "intents.tsv")):
            with c.cursor().copy(f"COPY {table} FROM STDIN WITH (FORMAT csv, DELIMITER E'\\t', HEADER true, "
                                 "QUOTE E'\\x01')") as cp:
                cp.write(open(f"{out}/{f}", "rb").read())
        c.execute("INSERT INTO ref_app.cap_tools SELECT DISTINCT capability, tool FROM links")
        c.execute("CREATE TABLE ref_app.train AS SELECT intent, capability FROM ref_app.intents WHERE split = 'train'")
        c.execute("SELECT genome.register_catalog(%s, 'ref_app.caps', 'name', 'description', "
                  "'ref_app.cap_tools', 'capability', 'tool')", (CAT,))
        c.execute("SELECT genome.refresh_catalog(%s)", (CAT,))
        published = {r[0] for r in c.execute("SELECT genome_cluster.publish()::text").fetchall()}
        assert {"genome.models", "genome.catalogs", "genome.rankers", "ref_app.caps", "ref_app.cap_tools"} <= published
    for name, port in nodes.items():
        subscribe(name, port)
    replicate()


@pytest.fixture(scope="module")
def ref(database):
    nodes_sh("start", str(len(NODES)))
    set_up(NODES)
    yield
    nodes_sh("start", "4")
    for port in [*NODES.values(), 25444, COORD]:
        drop_database(port)
    nodes_sh("stop")


def test_the_registry_and_the_catalog_reach_every_node(ref):
    models = q(COORD, "SELECT name, version, task, stage, sha256, md5(coalesce(onnx, weights)) FROM genome.models ORDER BY 1, 2")
    assert [m[0] for m in models] == ["all-minilm-l6-v2", "ref_16s", "ref_k4"]
    catalog = q(COORD, "SELECT name, relid::text, links::text, model, feature_version FROM genome.catalogs")
    features = q(COORD, "SELECT capability, content_hash, text_embedding::text, graph_embedding, pagerank "
                        "FROM genome.capability_features ORDER BY 1")
    caps = q(COORD, "SELECT * FROM ref_app.caps ORDER BY 1")
    assert len(features) == len(caps) > 150
    for port in NODES.values():
        assert q(port, "SELECT name, version, task, stage, sha256, md5(coalesce(onnx, weights)) FROM genome.models ORDER BY 1, 2") == models
        assert q(port, "SELECT name, relid::text, links::text, model, feature_version FROM genome.catalogs") == catalog
        assert q(port, "SELECT capability, content_hash, text_embedding::text, graph_embedding, pagerank "
                       "FROM genome.capability_features ORDER BY 1") == features
        assert q(port, "SELECT * FROM ref_app.caps ORDER BY 1") == caps
        # the node's ranking ids are its own range; the catalog has its HNSW index there
        pos = q(COORD, "SELECT position FROM genome_cluster.nodes WHERE port = %s", (port,))[0][0]
        assert q(port, "SELECT nextval(pg_get_serial_sequence('genome.rankings', 'id')) >> 40")[0][0] == pos + 1
        assert q(port, "SELECT count(*) FROM pg_indexes WHERE tablename = 'capability_features' AND indexname LIKE 'capability_features_hnsw_%'")[0][0] == 1
    lag = q(COORD, "SELECT node, active, ready_at IS NOT NULL FROM genome_cluster.replication()")
    assert lag == [(n, True, True) for n in NODES]
    health = q(COORD, "SELECT genome.health()->'nodes'")[0][0]
    assert [(h["node"], h["reference"]["slot"], h["reference"]["active"]) for h in health] == \
        [(n, f"genome_reference_{n}", True) for n in NODES]


def test_every_node_embeds_and_classifies_as_the_coordinator(ref):
    reads = [r[1] for r in gold_split() if r[3] == "test"][:20]
    text = "the quick brown fox jumps over the lazy dog"
    want_text = np.array(q(COORD, "SELECT genome.embed(%s)::real[]", (text,))[0][0])
    want_kmer = q(COORD, "SELECT genome.embed_sequence(%s, 'ref_k4')::text", (reads[0],))[0][0]
    want_cls = q(COORD, "SELECT ord, label, rank, round(confidence::numeric, 6) FROM genome.classify_sequences('ref_16s', %s) "
                        "ORDER BY ord", (reads,))
    assert len(want_cls) == 20 and sum(1 for r in want_cls if r[1] is not None) >= 10
    for port in NODES.values():
        got = np.array(q(port, "SELECT genome.embed(%s)::real[]", (text,))[0][0])
        assert np.allclose(got, want_text, atol=1e-6)
        assert q(port, "SELECT genome.embed_sequence(%s, 'ref_k4')::text", (reads[0],))[0][0] == want_kmer
        assert q(port, "SELECT ord, label, rank, round(confidence::numeric, 6) FROM genome.classify_sequences('ref_16s', %s) "
                       "ORDER BY ord", (reads,)) == want_cls


def ranked(port, intent, dbname=DB):
    with at(port, dbname) as c:
        return c.execute("SELECT rank, capability, round(score::numeric, 5), model_version, ranking_id "
                         "FROM genome.rank_capabilities(%s, top_k => 5, catalog => %s)", (intent, CAT)).fetchall()


def node_of_ranking(ranking_id):
    return q(COORD, "SELECT name FROM genome_cluster.nodes WHERE position = (%s::bigint >> 40) - 1", (ranking_id,))[0][0]


def test_ranking_on_the_coordinator_is_served_by_any_node(ref):
    served = set()
    for intent in INTENTS:
        rows = ranked(COORD, intent)
        assert len(rows) == 5 and [r[0] for r in rows] == [1, 2, 3, 4, 5]
        node = node_of_ranking(rows[0][4])
        served.add(node)
        # the node logged it, not the coordinator; every node ranks it alike
        assert q(NODES[node], "SELECT intent FROM genome.rankings WHERE id = %s", (rows[0][4],)) == [(intent,)]
        assert not q(COORD, "SELECT 1 FROM genome.rankings WHERE id = %s", (rows[0][4],))
        for port in NODES.values():
            assert [r[:4] for r in ranked(port, intent)] == [r[:4] for r in rows]
    assert len(served) >= 2, served
    # a capability's own description ranks it first, by the coordinator's features
    name, desc = q(COORD, "SELECT name, description FROM ref_app.caps ORDER BY name LIMIT 1 OFFSET 40")[0]
    assert ranked(COORD, desc)[0][1] == name


def test_a_session_stays_on_its_node(ref):
    for session in ("alice-1", "bob-2", "carol-3"):
        with at(COORD, DB) as c:
            ids = [c.execute("SELECT ranking_id FROM genome.rank_capabilities(%s, catalog => %s, session_id => %s)",
                             (intent, CAT, session)).fetchone()[0] for intent in INTENTS[:6]]
        assert len({node_of_ranking(i) for i in ids}) == 1, (session, ids)


def test_a_role_that_is_not_a_superuser_ranks_through_the_nodes_as_itself(ref):
    """PL/Proxy connects to the node as the calling role: on the node it logs as itself and sees
    only what it may read there."""
    for port in [COORD, *NODES.values()]:
        with at(port, DB) as c:
            for role in ROLES:
                c.execute(f"CREATE ROLE {role} LOGIN IN ROLE genome_user")
                c.execute(f"GRANT USAGE ON SCHEMA ref_app TO {role}")
            c.execute(f"GRANT SELECT ON ref_app.caps, ref_app.cap_tools TO {ROLES[0]}")
    with at(COORD, DB, user=ROLES[0]) as c:
        rows = c.execute("SELECT capability, ranking_id FROM genome.rank_capabilities(%s, catalog => %s)",
                         (INTENTS[5], CAT)).fetchall()
        eid = c.execute("SELECT genome.record_outcome(%s, %s, 'success')", (rows[0][1], rows[0][0])).fetchone()[0]
    node = NODES[node_of_ranking(rows[0][1])]
    assert q(node, "SELECT created_by::text FROM genome.rankings WHERE id = %s", (rows[0][1],)) == [(ROLES[0],)]
    assert q(node, "SELECT created_by::text, capability FROM genome.experiences WHERE id = %s", (eid,)) == [(ROLES[0], rows[0][0])]
    # a role that may not read the catalog's tables is refused, as on one node
    with at(COORD, DB, user=ROLES[1]) as c:
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT * FROM genome.rank_capabilities(%s, catalog => %s)", (INTENTS[5], CAT))
    assert e.value.sqlstate == "42501"


def test_outcomes_go_to_their_node_and_training_gathers_them(ref):
    intents = q(COORD, "SELECT intent, capability FROM ref_app.train ORDER BY intent LIMIT 60")
    recorded = 0
    for intent, cap in intents:
        rows = ranked(COORD, intent)
        shown = [r[1] for r in rows]
        outcome = "success" if cap in shown else "failure"
        eid = q(COORD, "SELECT genome.record_outcome(%s, %s, %s)", (rows[0][4], cap if cap in shown else shown[0], outcome))[0][0]
        node = node_of_ranking(rows[0][4])
        assert node_of_ranking(eid) == node, "the outcome is in its ranking's node's log"
        assert q(NODES[node], "SELECT ranking_id FROM genome.experiences WHERE id = %s", (eid,)) == [(rows[0][4],)]
        recorded += 1
    with at(COORD, DB) as c:
        c.execute("SELECT * FROM genome.train_ranker(%s, 'ref_app.train', epochs => 4)", (CAT,))
        on_nodes = c.execute("SELECT count(*) FROM genome.experiences WHERE id >= 1::bigint << 40").fetchone()[0]
        version, stage = c.execute("SELECT version, stage FROM genome.rankers WHERE catalog = %s", (CAT,)).fetchone()
    logged = sum(q(port, "SELECT count(*) FROM genome.experiences")[0][0] for port in NODES.values())
    assert on_nodes == logged >= recorded == 60, "training saw every outcome logged on the nodes"
    assert stage == "production"
    # gathering again adds nothing
    assert q(COORD, "SELECT genome_cluster.gather_outcomes(%s)", (CAT,))[0][0] == 0
    replicate()
    memory = q(COORD, "SELECT count(*), md5(string_agg(capability || embedding::text, ',' ORDER BY capability, embedding::text)) "
                      "FROM genome.ranker_memory")
    for port in NODES.values():
        assert q(port, "SELECT version, stage, md5(weights) FROM genome.rankers") == \
            q(COORD, "SELECT version, stage, md5(weights) FROM genome.rankers")
        assert q(port, "SELECT count(*), md5(string_agg(capability || embedding::text, ',' ORDER BY capability, embedding::text)) "
                       "FROM genome.ranker_memory") == memory
    rows = ranked(COORD, INTENTS[0])
    assert {r[3] for r in rows} == {version}, "the nodes rank with the ranker trained on the coordinator"


def test_a_node_down_ranking_goes_on_and_its_outcomes_are_a_clear_error(ref):
    on_n2 = None
    for _ in range(40):
        rid = ranked(COORD, INTENTS[1])[0][4]
        if node_of_ranking(rid) == "n2":
            on_n2 = rid
            break
    assert on_n2, "n2 served one of 40 rankings"
    nodes_sh("stop", "n2")
    try:
        for intent in INTENTS:
            assert node_of_ranking(ranked(COORD, intent)[0][4]) in ("n1", "n3")
        with at(COORD, DB) as c:
            with pytest.raises(psycopg.Error) as e:
                c.execute("SELECT genome.record_outcome(%s, 'x', 'success')", (on_n2,))
        assert e.value.sqlstate == "08006" and "n2 (127.0.0.1:25442)" in str(e.value)
        # gathering outcomes passes over the node that is down, with a WARNING
        notices = []
        with at(COORD, DB) as c:
            c.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.message_primary)))
            assert c.execute("SELECT genome_cluster.gather_outcomes(%s)", (CAT,)).fetchone()[0] >= 0
        assert any(sev == "WARNING" and "n2 (127.0.0.1:25442) did not answer" in msg for sev, msg in notices), notices
        # written while n2 is down: its slot keeps the WAL for it
        with at(COORD, DB) as c:
            c.execute("SELECT genome.promote_model('ref_k4', '1')")
        assert q(NODES["n1"], "SELECT 1 FROM genome.models WHERE name = 'ref_k4'")
    finally:
        nodes_sh("start", "3")
    replicate()
    assert q(NODES["n2"], "SELECT stage FROM genome.models WHERE name = 'ref_k4'") == [("production",)]
    assert node_of_ranking(ranked(COORD, INTENTS[3])[0][4]) in NODES


def test_pruning_on_the_coordinator_prunes_the_nodes_logs(ref):
    for port in [COORD, *NODES.values()]:
        with at(port, "postgres") as c:
            c.execute(f"ALTER DATABASE {DB} SET genome.experience_retention_days = 30")
    try:
        old = q(NODES["n1"], "INSERT INTO genome.rankings (catalog, intent, intent_embedding, candidates, scores, latency_ms, created_at) "
                             "SELECT catalog, 'an old ranking', intent_embedding, candidates, scores, latency_ms, now() - interval '40 days' "
                             "FROM genome.rankings LIMIT 1 RETURNING id")[0][0]
        kept = q(NODES["n1"], "SELECT count(*) FROM genome.rankings")[0][0] - 1
        q(COORD, "SELECT genome.prune_experiences(%s)", (CAT,))
        assert not q(NODES["n1"], "SELECT 1 FROM genome.rankings WHERE id = %s", (old,))
        assert q(NODES["n1"], "SELECT count(*) FROM genome.rankings")[0][0] == kept > 0
    finally:
        for port in [COORD, *NODES.values()]:
            with at(port, "postgres") as c:
                c.execute(f"ALTER DATABASE {DB} RESET genome.experience_retention_days")


def test_a_node_added_later_gets_the_reference_data(ref):
    nodes_sh("start", "4")
    prepare_node(25444)
    with at(COORD, DB) as c:
        c.execute("SELECT genome_cluster.add_node('n4', '127.0.0.1', 25444)")
    # not ready before replicate() found everything applied there: the others rank meanwhile
    assert all(node_of_ranking(ranked(COORD, i)[0][4]) != "n4" for i in INTENTS)
    subscribe("n4", 25444)
    replicate()
    assert q(25444, "SELECT nextval(pg_get_serial_sequence('genome.rankings', 'id')) >> 40")[0][0] == 4
    for t in ("genome.models", "genome.capability_features", "genome.rankers", "genome.ranker_memory", "ref_app.cap_tools"):
        assert q(25444, f"SELECT count(*) FROM {t}") == q(COORD, f"SELECT count(*) FROM {t}")
    with at(COORD, DB) as c:
        got = c.execute("SELECT rank, capability, round(score::numeric, 5), model_version FROM genome_cluster._rank_on(3, %s, NULL, 5, %s, NULL, NULL, NULL)",
                        (INTENTS[2], CAT)).fetchall()
    assert got == [r[:4] for r in ranked(NODES["n1"], INTENTS[2])]


def test_a_catalog_needs_its_tables_on_every_node_and_a_primary_key(ref):
    ddl = ["CREATE TABLE ref_app.loose (capability text, tool text)",
           "CREATE TABLE ref_app.caps2 (name text PRIMARY KEY, description text)"]
    register = ("SELECT genome.register_catalog('loose', 'ref_app.caps2', 'name', 'description', 'ref_app.loose', "
                "'capability', 'tool')")
    with at(COORD, DB) as c:
        for d in ddl:
            c.execute(d)
        # its row would stop every node's subscription: refused while the nodes lack the tables
        with pytest.raises(psycopg.Error) as e:
            c.execute(register)
        assert e.value.sqlstate == "42P01" and "n1: ref_app.caps2 (no such table)" in str(e.value)
    for port in [*NODES.values(), 25444]:
        with at(port, DB) as c:
            for d in ddl:
                c.execute(d)
    with at(COORD, DB) as c:
        # a node's copy without a primary key could not take the replicated updates
        with pytest.raises(psycopg.Error) as e:
            c.execute(register)
        assert e.value.sqlstate == "42P01" and "n4: ref_app.loose (no primary key)" in str(e.value)
    for port in [*NODES.values(), 25444]:
        with at(port, DB) as c:
            c.execute("ALTER TABLE ref_app.loose ADD PRIMARY KEY (capability, tool)")
    with at(COORD, DB) as c:
        c.execute(register)
        # the coordinator's own table has none: its app's UPDATEs would fail once published
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT genome_cluster.publish()")
        assert e.value.sqlstate == "55000" and "ref_app.loose" in str(e.value) and "primary key" in str(e.value)
    replicate()
    hnsw = "SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'capability_features_hnsw_%'"
    assert q(25444, hnsw) == [(2,)], "the node indexed both catalogs"
    with at(COORD, DB) as c:
        c.execute("SELECT genome.unregister_catalog('loose')")
    # the replicated delete takes its index on the node (no replicate() needed)
    for _ in range(100):
        if q(25444, hnsw) == [(1,)]:
            break
        time.sleep(0.2)
    assert q(25444, hnsw) == [(1,)]
    # the registration came and went on every node; the subscriptions go on
    replicate()
    for port in [*NODES.values(), 25444]:
        assert q(port, "SELECT name FROM genome.catalogs") == [(CAT,)]
    assert len(ranked(COORD, INTENTS[4])) == 5
