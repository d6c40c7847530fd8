"""Several nodes (pg_genome_cluster): a coordinator and 3 data nodes, each a real PostgreSQL 15
cluster with pg_genome, started here by scripts/nodes.sh on loopback ports. PL/Proxy routes pet
calls to the node holding the pet and fans search out; postgres_fdw partitions carry the app's
rows written on the coordinator to their node. Every answer is compared with a single node (the
main cluster's test database) holding the same rows: real photos (Fashion-MNIST, the real image
model) and real texts (Debian's fortunes, the real text model)."""
import datetime
import subprocess
import sys

import numpy as np
import psycopg
import pytest

import imageset
from conftest import REPO, MODELS, connect as connect_main

SINGLE = "genome_it_single"


def connect():
    """The single node the cluster is compared with: its own database on the main cluster (the
    other test modules' database keeps one pet media)."""
    return connect_main(SINGLE)

COORD = 25440
NODES = {"n1": 25441, "n2": 25442, "n3": 25443}
T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
PHOTOS_DDL = """CREATE TABLE it_multi.photos (pet bigint NOT NULL, photo_id bigint NOT NULL, img bytea,
                shot_at timestamptz NOT NULL, pose real, look int){}"""
DOCS_DDL = "CREATE TABLE it_multi.docs (id bigint NOT NULL, category text NOT NULL, body text NOT NULL){}"
SHARDED = " PARTITION BY LIST (genome_cluster.shard_of(({}) :: text))"


def at(port, dbname="genome", **kw):
    return psycopg.connect(host="127.0.0.1", port=port, user=kw.pop("user", "postgres"), dbname=dbname,
                           autocommit=True, **kw)


def nodes_sh(*args):
    subprocess.run(["bash", str(REPO / "scripts" / "nodes.sh"), *args], check=True, stdout=subprocess.DEVNULL)


def fortunes(tmp_path_factory):
    out = tmp_path_factory.mktemp("fortunes") / "fortunes.tsv"
    subprocess.run([sys.executable, str(REPO / "tools" / "fortunes_sample.py"), str(out), "12"], check=True,
                   stdout=subprocess.DEVNULL)
    return [(int(i), cat, body) for i, cat, body in (line.split("\t") for line in out.read_text().splitlines())]


def pets_and_photos():
    """Pets with two looks each (Fashion-MNIST classes), 10 photos per look, a day apart."""
    x, y = imageset.fashion()
    looks = {101: [1, 7], 102: [8, 5], 103: [1, 9], 104: [0, 7], 105: [3, 8], 106: [5, 1], 107: [2, 9], 108: [6, 4]}
    rows, pid = [], 0
    for pet, ls in looks.items():
        for look in ls:
            idx = np.where(y == look)[0][pet * 3:pet * 3 + 10]
            for i in idx:
                pid += 1
                rows.append((pet, pid, imageset.png_of(x[i]), T0 + datetime.timedelta(days=pid), (pid % 10) / 10, look))
    return list(looks), rows


def prepare_node(port):
    """A data node: a fresh database with pg_genome, the models, and the app's tables registered."""
    with at(port, "postgres") as c:
        c.execute("DROP DATABASE IF EXISTS genome WITH (FORCE)")
        c.execute("CREATE DATABASE genome")
    with at(port) as c:
        c.execute("SET client_min_messages = warning")
        c.execute("CREATE EXTENSION pg_genome CASCADE")
        c.execute("SELECT genome.register_model_dir('all-minilm-l6-v2', '1', %s)", (f"{MODELS}/all-minilm-l6-v2",))
        c.execute("SELECT genome.register_model_dir('efficientnet-lite0', '1', %s, task => 'image-embedding')",
                  (f"{MODELS}/efficientnet-lite0",))
        c.execute("CREATE SCHEMA it_multi")
        c.execute(PHOTOS_DDL.format(""))
        c.execute("CREATE INDEX ON it_multi.photos (pet)")
        c.execute(DOCS_DDL.format(""))
        c.execute("""SELECT genome.register_pet_media('it_multi.photos', 'pet', 'photo_id', 'img', 'shot_at',
                 pose_column => 'pose', name => 'it_multi')""")
        c.execute("SELECT genome.register_collection('it_docs', 'it_multi.docs', 'id', 'body')")


@pytest.fixture(scope="module")
def layout(database, tmp_path_factory):
    """The coordinator and n1..n3 with the same app tables; the single node (genome_it) with the
    same rows. Yields (pets, docs)."""
    nodes_sh("start", str(len(NODES)))
    pets, photos = pets_and_photos()
    docs = fortunes(tmp_path_factory)
    for port in [COORD]:
        with at(port, "postgres") as c:
            c.execute("DROP DATABASE IF EXISTS genome WITH (FORCE)")
            c.execute("CREATE DATABASE genome")
    for port in NODES.values():
        prepare_node(port)
    with at(COORD) as c:
        c.execute("SET client_min_messages = warning")
        c.execute("CREATE EXTENSION pg_genome_cluster CASCADE")
        # the coordinator embeds nothing but clusters with the collection's model's metadata
        c.execute("SELECT genome.register_model_dir('all-minilm-l6-v2', '1', %s)", (f"{MODELS}/all-minilm-l6-v2",))
        for name, port in NODES.items():
            c.execute("SELECT genome_cluster.add_node(%s, '127.0.0.1', %s)", (name, port))
        c.execute("CALL genome_cluster.rebalance()")
        c.execute("CREATE SCHEMA it_multi")
        c.execute(PHOTOS_DDL.format(SHARDED.format("pet")))
        c.execute(DOCS_DDL.format(SHARDED.format("id")))
        assert c.execute("SELECT genome_cluster.attach_nodes('it_multi.photos')").fetchone()[0] == 3
        assert c.execute("SELECT genome_cluster.attach_nodes('it_multi.docs')").fetchone()[0] == 3
        # the app writes on the coordinator; postgres_fdw takes each row to its node
        with c.cursor() as cur:
            cur.executemany("INSERT INTO it_multi.photos VALUES (%s, %s, %s, %s, %s, %s)", photos)
            cur.executemany("INSERT INTO it_multi.docs VALUES (%s, %s, %s)", docs)
    for port in NODES.values():
        with at(port) as c:
            c.execute("UPDATE it_multi.docs SET embedding = genome.embed(body)")
            c.execute("SELECT genome.create_search_index('it_docs')")
    with connect_main("postgres") as c:
        c.execute(f"DROP DATABASE IF EXISTS {SINGLE} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {SINGLE}")
    with connect() as c:
        c.execute("SET client_min_messages = warning")
        c.execute("CREATE EXTENSION pg_genome CASCADE")
        c.execute("SELECT genome.register_model_dir('all-minilm-l6-v2', '1', %s)", (f"{MODELS}/all-minilm-l6-v2",))
        c.execute("SELECT genome.register_model_dir('efficientnet-lite0', '1', %s, task => 'image-embedding')",
                  (f"{MODELS}/efficientnet-lite0",))
        c.execute("CREATE SCHEMA it_multi")
        c.execute(PHOTOS_DDL.format(""))
        c.execute(DOCS_DDL.format(""))
        with c.cursor() as cur:
            cur.executemany("INSERT INTO it_multi.photos VALUES (%s, %s, %s, %s, %s, %s)", photos)
            cur.executemany("INSERT INTO it_multi.docs VALUES (%s, %s, %s)", docs)
        c.execute("""SELECT genome.register_pet_media('it_multi.photos', 'pet', 'photo_id', 'img', 'shot_at',
                     pose_column => 'pose', name => 'it_multi_single')""")
        c.execute("SELECT genome.register_collection('it_docs_single', 'it_multi.docs', 'id', 'body')")
        c.execute("UPDATE it_multi.docs SET embedding = genome.embed(body)")
        c.execute("SELECT genome.create_search_index('it_docs_single')")
    yield pets, docs
    nodes_sh("stop")
    with connect_main("postgres") as c:
        c.execute(f"DROP DATABASE IF EXISTS {SINGLE} WITH (FORCE)")


def node_of(c, key):
    return c.execute("SELECT (genome_cluster.node_of(%s)).name", (str(key),)).fetchone()[0]


def without(d, *keys):
    return {k: v for k, v in d.items() if k not in keys}


def test_rows_written_on_the_coordinator_live_on_their_node(layout):
    pets, docs = layout
    with at(COORD) as c:
        home = {p: node_of(c, p) for p in pets}
        assert c.execute("SELECT count(*) FROM it_multi.photos").fetchone()[0] == 8 * 20
        assert c.execute("SELECT count(*) FROM it_multi.docs").fetchone()[0] == len(docs)
        shards = c.execute("SELECT node, count(*) FROM genome_cluster.shards GROUP BY node ORDER BY node").fetchall()
    assert shards == [("n1", 22), ("n2", 21), ("n3", 21)]
    assert set(home.values()) == set(NODES), "the test's pets cover every node"
    assert_rows_on_their_nodes()


def assert_rows_on_their_nodes():
    """Every node holds exactly the rows of the shards the coordinator maps to it."""
    with at(COORD) as c:
        held = dict(c.execute("SELECT node, array_agg(shard) FROM genome_cluster.shards GROUP BY node").fetchall())
        ports = dict(c.execute("SELECT name, port FROM genome_cluster.nodes").fetchall())
    for name, port in ports.items():
        with at(port) as c:
            for table, key in (("photos", "pet"), ("docs", "id")):
                wrong = c.execute(f"SELECT count(*) FROM it_multi.{table} WHERE (hashtext({key}::text) & 63) <> ALL (%s)",
                                  (held.get(name, []),)).fetchone()[0]
                assert wrong == 0, (name, table)


def test_routed_pet_calls_equal_a_single_node(layout):
    pets, _ = layout
    with at(COORD) as co, connect() as single:
        for pet in pets:
            got = co.execute("SELECT genome.cluster_pet(%s, 'it_multi')", (pet,)).fetchone()[0]
            want = single.execute("SELECT genome.cluster_pet(%s, 'it_multi_single')", (pet,)).fetchone()[0]
            assert got["added"] == 20 and got["media"] == "it_multi"
            assert without(got, "media", "ms") == without(want, "media", "ms")
            # heroes: the same photos with the same scores, per cluster (cluster ids are each node's own)
            def heroes(c, media):
                rows = c.execute("""SELECT cluster_id, rank, image_id, score FROM genome.select_heroes(%s, 3, %s)""",
                                 (pet, media)).fetchall()
                by = {}
                for cid, rank, image, score in rows:
                    by.setdefault(cid, []).append((rank, image, round(score, 9)))
                return sorted(by.values())
            assert heroes(co, "it_multi") == heroes(single, "it_multi_single")
            got = co.execute("SELECT genome.pet_clusters(%s, 'it_multi')", (pet,)).fetchone()[0]
            want = single.execute("SELECT genome.pet_clusters(%s, 'it_multi_single')", (pet,)).fetchone()[0]
            strip = lambda p: sorted((cl["size"], sorted(h["image_id"] for h in cl["heroes"])) for cl in p["clusters"])
            assert strip(got) == strip(want) and got["photos"] == want["photos"] == 20
        # the pet's state is on its node only
        pet = pets[0]
        home = node_of(co, pet)
    for name, port in NODES.items():
        with at(port) as c:
            n = c.execute("SELECT count(*) FROM genome.pet_photos WHERE pet_id = %s", (str(pet),)).fetchone()[0]
            assert n == (20 if name == home else 0)


def test_background_path_runs_on_every_node(layout):
    pets, _ = layout
    with at(COORD) as co:
        # a new photo for every pet, written on the coordinator: each node's trigger marks its pets
        x, y = imageset.fashion()
        with connect() as single:
            for k, pet in enumerate(pets):
                row = (pet, 10_000 + k, imageset.png_of(x[np.where(y == 1)[0][500 + k]]), T0)
                co.execute("INSERT INTO it_multi.photos VALUES (%s, %s, %s, %s, 0.5, 1)", row)
                single.execute("INSERT INTO it_multi.photos VALUES (%s, %s, %s, %s, 0.5, 1)", row)
        res = co.execute("SELECT genome.cluster_dirty_pets('it_multi', 100)").fetchone()[0]
    assert res["nodes"] == 3 and res["pets"] == len(pets) and res["errors"] == 0 and res["still_dirty"] == 0


def search_pair(query, **kw):
    cast = {"top_k": "integer", "score_threshold": "real"}
    args = ", ".join(f"{k} => %({k})s::{cast[k]}" for k in kw)
    sql = "SELECT id, score FROM genome.search(%(c)s::text, %(q)s::text" + (", " + args if args else "") + ")"
    with at(COORD) as co, connect() as single:
        got = co.execute(sql, {"c": "it_docs", "q": query, **kw}).fetchall()
        want = single.execute(sql, {"c": "it_docs_single", "q": query, **kw}).fetchall()
    return got, want


@pytest.mark.parametrize("query,kw", [
    ("my dog ate my homework", {"top_k": 5, "score_threshold": 0.1}),
    ("the law and lawyers", {"top_k": 20, "score_threshold": -1.0}),
    ("computers never work", {"top_k": 10, "score_threshold": 0.2}),
])
def test_fan_out_search_equals_a_single_node_over_the_same_rows(layout, query, kw):
    got, want = search_pair(query, **kw)
    assert got and [r[0] for r in got] == [r[0] for r in want]
    assert np.allclose([r[1] for r in got], [r[1] for r in want], atol=1e-6)
    # the hits come from more than one node
    with at(COORD) as co:
        assert len({node_of(co, r[0]) for r in got}) >= (2 if len(got) >= 10 else 1)


def test_fan_out_search_by_vector_and_filter(layout):
    with connect() as single:
        v = single.execute("SELECT genome.embed('a cat on the sofa')::text").fetchone()[0]
    with at(COORD) as co, connect() as single:
        sql = """SELECT id, score, row FROM genome.search(%s, %s::vector, top_k => 7, score_threshold => -1,
                 filter => '{"category": "pets"}')"""
        got = co.execute(sql, ("it_docs", v)).fetchall()
        want = single.execute(sql, ("it_docs_single", v)).fetchall()
    assert len(got) == 7 and [r[0] for r in got] == [r[0] for r in want]
    assert all(r[2]["category"] == "pets" for r in got)


def families_by_row(ports_or_single, column="family_id"):
    out = {}
    if ports_or_single == "single":
        with connect() as c:
            out.update(c.execute(f"SELECT id, {column} FROM it_multi.docs").fetchall())
        return out
    for port in ports_or_single:
        with at(port) as c:
            out.update(c.execute(f"SELECT id, {column} FROM it_multi.docs").fetchall())
    return out


def test_full_classification_over_three_nodes_agrees_with_one_node(layout):
    from sklearn.metrics import adjusted_rand_score
    _, docs = layout
    with at(COORD) as co:
        co.execute("SET client_min_messages = warning")
        co.execute("SELECT genome_cluster.distribute_collection('it_docs', 'bigint')")
        got = co.execute("SELECT n_rows, n_clusters, n_new FROM genome.full_classify('it_docs', min_cluster_size => 5)").fetchone()
        fams = co.execute("""SELECT id, label, threshold FROM genome.families
                              WHERE collection = 'it_docs' AND NOT is_unclustered AND retired_at IS NULL ORDER BY id""").fetchall()
        unclustered = co.execute("SELECT id FROM genome.families WHERE collection = 'it_docs' AND is_unclustered").fetchone()[0]
    with connect() as single:
        single.execute("SET client_min_messages = warning")
        want = single.execute("SELECT n_rows, n_clusters, n_new FROM genome.full_classify('it_docs_single', min_cluster_size => 5)").fetchone()
    assert got == want and got[0] == len(docs) and got[1] >= 3
    assert all(f[0] >= 10**12 for f in fams) and unclustered >= 10**12
    dist, one = families_by_row(NODES.values()), families_by_row("single")
    assert set(dist) == set(one) == {d[0] for d in docs}
    ids = sorted(one)
    ari = adjusted_rand_score([one[i] for i in ids], [dist[i] for i in ids])
    assert ari >= 0.9, ari
    # every node holds the coordinator's families, with its own sizes
    sizes = {}
    for port in NODES.values():
        with at(port) as c:
            here = c.execute("""SELECT id, label, threshold FROM genome.families
                                 WHERE collection = 'it_docs' AND NOT is_unclustered AND retired_at IS NULL ORDER BY id""").fetchall()
            assert here == fams
            for fid, n in c.execute("SELECT id, size FROM genome.families WHERE collection = 'it_docs' AND retired_at IS NULL"):
                sizes[fid] = sizes.get(fid, 0) + n
    assert sum(sizes.values()) == len(docs) and set(dist.values()) <= set(sizes)
    # a second run keeps every family's id, and every row its family
    with at(COORD) as co:
        co.execute("SET client_min_messages = warning")
        again = co.execute("SELECT n_clusters, n_kept, n_new, n_retired FROM genome.hdbscan_recluster('it_docs', min_cluster_size => 5)").fetchone()
    assert again == (got[1], got[1], 0, 0)
    assert families_by_row(NODES.values()) == dist


def test_assign_family_runs_on_every_node(layout):
    new = [(900_001 + k, "pets", body) for k, body in enumerate([
        "My cat sleeps on the keyboard all day.", "A dog is a man's best friend.",
        "The judge ruled in favour of the defendant.", "Never trust a computer you cannot throw out a window.",
        "The recipe calls for two cups of flour.", "He scored the winning goal in the final minute."])]
    with at(COORD) as co, connect() as single:
        for row in new:
            co.execute("INSERT INTO it_multi.docs VALUES (%s, %s, %s)", row)
            single.execute("INSERT INTO it_multi.docs VALUES (%s, %s, %s)", row)
        got = co.execute("SELECT * FROM genome.assign_family('it_docs', min_pending => 0)").fetchone()
        want = single.execute("SELECT * FROM genome.assign_family('it_docs_single', min_pending => 0)").fetchone()
    assert got == want and got[0] == len(new) and got[1] >= 1
    # the same rows went to the same families (ids differ: each side's own)
    dist, one = families_by_row(NODES.values()), families_by_row("single")
    old = sorted(i for i in one if i < 900_000)
    pair = {one[i]: dist[i] for i in old}
    assert all(pair.get(one[r[0]]) == dist[r[0]] for r in new)


def test_health_on_the_coordinator_reports_every_node(layout):
    with at(COORD) as co:
        h = co.execute("SELECT genome.health()").fetchone()[0]
    assert [n["node"] for n in h["nodes"]] == ["n1", "n2", "n3"]
    assert all(n["answered"] and n["health"]["extension_version"] == h["extension_version"] for n in h["nodes"])
    assert sum(n["shards"] for n in h["nodes"]) == 64


def test_a_node_down_is_a_clear_error_naming_it(layout):
    """Documented behaviour: a routed call to a stopped node fails with SQLSTATE 08006 naming the
    node; calls for pets on other nodes go on; search fails naming the node (never a silently
    partial result); health() reports the node as not answering."""
    pets, _ = layout
    with at(COORD) as co:
        home = {p: node_of(co, p) for p in pets}
    down = "n2"
    nodes_sh("stop", down)
    try:
        with at(COORD) as co:
            for pet, name in home.items():
                if name == down:
                    with pytest.raises(psycopg.errors.ConnectionFailure, match=r"data node n2 \(127.0.0.1:25442\) did not answer"):
                        co.execute("SELECT genome.cluster_pet(%s, 'it_multi')", (pet,))
                else:
                    assert co.execute("SELECT genome.cluster_pet(%s, 'it_multi')", (pet,)).fetchone()[0]["photos"] == 21
            with pytest.raises(psycopg.errors.ConnectionFailure, match="data node n2 .* did not answer"):
                co.execute("SELECT * FROM genome.search('it_docs', 'anything', top_k => 3)").fetchall()
            h = co.execute("SELECT genome.health()").fetchone()[0]
            state = {n["node"]: (n["answered"], n["error"] is not None) for n in h["nodes"]}
            assert state == {"n1": (True, False), "n2": (False, True), "n3": (True, False)}
    finally:
        nodes_sh("start", str(len(NODES)))
    with at(COORD) as co:
        got = co.execute("SELECT id FROM genome.search('it_docs', 'anything', top_k => 3, score_threshold => -1)").fetchall()
        assert len(got) == 3


def test_adding_a_fourth_node_loses_no_row(layout):
    pets, _ = layout
    def snapshot():
        """Every row, read through the coordinator and on the nodes themselves (with the
        embedding and family columns pg_genome keeps there)."""
        with at(COORD) as co:
            ports = [r[0] for r in co.execute("SELECT port FROM genome_cluster.nodes ORDER BY position")]
            photos = sorted(co.execute("SELECT pet, photo_id, md5(img) FROM it_multi.photos").fetchall())
        docs = []
        for port in ports:
            with at(port) as c:
                docs += c.execute("SELECT id, category, body, embedding::text, family_id FROM it_multi.docs").fetchall()
        return photos, sorted(docs)
    before = snapshot()
    nodes_sh("start", "4")
    prepare_node(25444)
    with at(COORD) as co:
        co.execute("SELECT genome_cluster.add_node('n4', '127.0.0.1', 25444)")
        plan = co.execute("SELECT count(*) FROM genome_cluster.rebalance_plan()").fetchone()[0]
        assert plan == 16  # 22 + 21 + 21 shards become 16 each: 6 + 5 + 5 move to n4
        co.execute("CALL genome_cluster.rebalance()")
        assert co.execute("SELECT count(*) FROM genome_cluster.rebalance_plan()").fetchone()[0] == 0
        shards = co.execute("SELECT node, count(*) FROM genome_cluster.shards GROUP BY node ORDER BY node").fetchall()
        home = {p: node_of(co, p) for p in pets}
    assert shards == [("n1", 16), ("n2", 16), ("n3", 16), ("n4", 16)]
    after = snapshot()
    assert after == before and len(after[0]) > 0 and all(r[3] is not None and r[4] is not None for r in after[1])
    assert_rows_on_their_nodes()
    # no row twice: the nodes' counts add up to the coordinator's
    total = 0
    for port in [*NODES.values(), 25444]:
        with at(port) as c:
            total += c.execute("SELECT count(*) FROM it_multi.photos").fetchone()[0]
    assert total == len(before[0])
    # moved pets are clustered anew on their new node by the background path: as one node
    # clusters the same photos from scratch
    moved = [p for p, n in home.items() if n == "n4"]
    assert moved, "some test pet moves to n4"
    strip = lambda p: sorted((cl["size"], sorted(h["image_id"] for h in cl["heroes"])) for cl in p["clusters"])
    with at(COORD) as co, connect() as single:
        res = co.execute("SELECT genome.cluster_dirty_pets('it_multi', 100)").fetchone()[0]
        assert res["errors"] == 0 and res["still_dirty"] == 0 and res["nodes"] == 4
        for pet in moved:
            got = co.execute("SELECT genome.pet_clusters(%s, 'it_multi')", (pet,)).fetchone()[0]
            for t in ("pet_photo_clusters", "pet_photos", "pet_state"):
                single.execute(f"DELETE FROM genome.{t} WHERE media = 'it_multi_single' AND pet_id = %s", (str(pet),))
            single.execute("SELECT genome.cluster_pet(%s, 'it_multi_single')", (pet,))
            want = single.execute("SELECT genome.pet_clusters(%s, 'it_multi_single')", (pet,)).fetchone()[0]
            assert got["photos"] == want["photos"] == 21 and strip(got) == strip(want)
    with at(25444) as c:
        assert c.execute("SELECT count(DISTINCT pet_id) FROM genome.pet_photos").fetchone()[0] == len(moved)
    # their state left the old nodes; search over 4 nodes is still one node's search
    for port in NODES.values():
        with at(port) as c:
            assert c.execute("SELECT count(*) FROM genome.pet_photos WHERE pet_id = ANY(%s)",
                             ([str(p) for p in moved],)).fetchone()[0] == 0
    got, want = search_pair("the law and lawyers", top_k=20, score_threshold=-1.0)
    assert [r[0] for r in got] == [r[0] for r in want]


def test_a_stopped_move_is_cleaned_up_with_nothing_lost(layout):
    """A rebalance stopped between a shard's copy and the deletion on its old node leaves the
    shard's rows on both: clean_up deletes the copy on the node that does not hold the shard, and
    search meanwhile answers each row once."""
    with at(COORD) as co:
        ports = dict(co.execute("SELECT name, port FROM genome_cluster.nodes").fetchall())
        shard, holder = co.execute("""SELECT s.shard, s.node FROM genome_cluster.shards s
                                       WHERE EXISTS (SELECT 1 FROM it_multi.docs d WHERE genome_cluster.shard_of(d.id::text) = s.shard)
                                       ORDER BY s.shard LIMIT 1""").fetchone()
        before = sorted(co.execute("SELECT id, body FROM it_multi.docs").fetchall())
    other = next(n for n in ports if n != holder)
    with at(ports[holder]) as src, at(ports[other]) as dst:
        rows = src.execute("SELECT * FROM it_multi.docs WHERE (hashtext(id::text) & 63) = %s", (shard,)).fetchall()
        cols = len(rows[0])
        with dst.cursor() as cur:
            cur.executemany(f"INSERT INTO it_multi.docs VALUES ({', '.join(['%s'] * cols)})", rows)
    q = "SELECT id FROM genome.search('it_docs', %s::text, top_k => 50, score_threshold => -1)"
    with at(COORD) as co:
        ids = [r[0] for r in co.execute(q, (rows[0][2],)).fetchall()]
        assert len(ids) == len(set(ids)) and str(rows[0][0]) in ids
        co.execute("SET client_min_messages = warning")
        co.execute("CALL genome_cluster.clean_up()")
        assert sorted(co.execute("SELECT id, body FROM it_multi.docs").fetchall()) == before
    with at(ports[other]) as dst:
        assert dst.execute("SELECT count(*) FROM it_multi.docs WHERE (hashtext(id::text) & 63) = %s", (shard,)).fetchone()[0] == 0
    with at(ports[holder]) as src:
        assert src.execute("SELECT count(*) FROM it_multi.docs WHERE (hashtext(id::text) & 63) = %s", (shard,)).fetchone()[0] == len(rows)
