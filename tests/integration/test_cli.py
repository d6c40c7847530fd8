"""The genome CLI against the real cluster: status, full-classify, classify-worker and Ctrl-C."""
import os
import signal
import subprocess
import time

import pytest

from conftest import PORT, REPO, connect

BIN = REPO / "target" / "release" / "genome"
ENV = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(PORT), PGUSER="postgres", PGDATABASE="genome_it")


@pytest.fixture(scope="module")
def cli_docs(database):
    assert BIN.is_file(), "build it: cargo build --release -p genome-cli"
    with connect() as c:
        c.execute("DROP TABLE IF EXISTS cli_docs")
        c.execute("CREATE TABLE cli_docs (id bigint PRIMARY KEY, body text)")
        c.execute("""INSERT INTO cli_docs SELECT i, (ARRAY['the cat sat on the mat', 'my dog chases the ball',
                       'stock prices fell sharply today', 'the market rallied after the report'])[1 + i % 4] || ' #' || i
                     FROM generate_series(1, 120) i""")
        c.execute("SELECT genome.register_collection('cli_docs', 'cli_docs', 'id', 'body')")
    yield "cli_docs"
    with connect() as c:
        c.execute("DROP TABLE cli_docs")


def run(*args, **kw):
    return subprocess.run([str(BIN), *args], env=ENV, capture_output=True, text=True, timeout=300, **kw)


def test_full_classify_then_worker_then_status(cli_docs):
    r = run("full-classify", "--collection", "cli_docs", "--min-cluster-size", "10")
    assert r.returncode == 0, r.stderr
    assert "120 rows (120 embedded)" in r.stdout, r.stdout
    with connect() as c:
        assert c.execute("SELECT count(*) FROM cli_docs WHERE family_id IS NULL").fetchone()[0] == 0
        c.execute("INSERT INTO cli_docs SELECT i, 'the cat sat on the mat again #' || i FROM generate_series(1001, 1030) i")
    r = run("classify-worker", "--collection", "cli_docs", "--min-pending", "1", "--batch-size", "20", "--passes", "1", "--interval", "0")
    assert r.returncode == 0, r.stderr
    assert "cli_docs: 20 rows" in r.stdout and "cli_docs: 10 rows" in r.stdout, r.stdout
    with connect() as c:
        assert c.execute("SELECT genome.pending_count('cli_docs')").fetchone()[0] == 0
    r = run("status")
    assert r.returncode == 0, r.stderr
    assert "cli_docs" in r.stdout and "0 pending" in r.stdout and "full_classify" in r.stdout, r.stdout


def test_errors_are_clear(cli_docs):
    r = run("full-classify", "--collection", "nope")
    assert r.returncode == 1 and 'collection "nope" is not registered' in r.stderr, r.stderr
    r = subprocess.run([str(BIN), "status"], env=dict(ENV, PGPORT="1"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "cannot connect" in r.stderr


def test_worker_stops_cleanly_on_ctrl_c(cli_docs):
    p = subprocess.Popen([str(BIN), "classify-worker", "--interval", "10"], env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert "stopping" in err


def test_cluster_pets_pet_and_status(database):
    """cluster-pets runs the background path (genome.cluster_dirty_pets) batch after batch until no
    pet is marked; pet prints genome.pet_clusters; status lists the media. Real photos
    (Fashion-MNIST: trousers and sneakers per pet) and the real image model."""
    import json
    import numpy as np
    import imageset
    x, y = imageset.fashion()
    with connect() as c:
        c.execute("SET client_min_messages = warning")
        c.execute("DROP TABLE IF EXISTS cli_pets")
        c.execute("CREATE TABLE cli_pets (pet int, id int PRIMARY KEY, img bytea, at timestamptz)")
        c.execute("SELECT genome.register_pet_media('cli_pets', 'pet', 'id', 'img', 'at', name => 'cli_pets')")
        with c.cursor().copy("COPY cli_pets FROM STDIN") as cp:
            for pet in (1, 2, 3):
                for look in (1, 7):
                    for k, i in enumerate(np.where(y == look)[0][pet * 20:pet * 20 + 10]):
                        cp.write_row((pet, pet * 1000 + look * 100 + k, imageset.png_of(x[i]), f"2025-01-{1 + k:02d}"))
        assert c.execute("SELECT count(*) FROM genome.pet_dirty WHERE media = 'cli_pets'").fetchone()[0] == 3
    try:
        r = run("cluster-pets", "--media", "cli_pets", "--max-pets", "2")
        assert r.returncode == 0, r.stderr
        # two calls: 2 pets then the last one
        assert "2 pets updated, 0 failed, 0 locked by another run, 1 still marked" in r.stdout, r.stdout
        assert "1 pets updated, 0 failed, 0 locked by another run, 0 still marked" in r.stdout, r.stdout
        with connect() as c:
            assert c.execute("SELECT count(*) FROM genome.pet_dirty WHERE media = 'cli_pets'").fetchone()[0] == 0
            per_pet = dict(c.execute("""SELECT pet_id, count(*) FROM genome.pet_photo_clusters WHERE media = 'cli_pets'
                                        GROUP BY 1""").fetchall())
        assert set(per_pet) == {"1", "2", "3"} and all(n >= 2 for n in per_pet.values()), per_pet
        r = run("pet", "2", "--media", "cli_pets", "--heroes", "1")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert len(doc["clusters"]) == per_pet["2"], doc
        assert all(len(cl["heroes"]) == 1 for cl in doc["clusters"]), doc
        r = run("cluster-pets", "--media", "cli_pets", "--pet", "2")
        assert r.returncode == 0, r.stderr
        upd = json.loads(r.stdout)
        assert upd["pet_id"] == "2" and upd["added"] == 0 and upd["clusters"] == per_pet["2"], upd
        r = run("status")
        assert r.returncode == 0, r.stderr
        assert f"cli_pets             table cli_pets, model efficientnet-lite0@1, {sum(per_pet.values())} clusters, 0 pets marked" in r.stdout, r.stdout
        r = run("pet", "2", "--media", "nope")
        assert r.returncode == 1 and 'pet media "nope" is not registered' in r.stderr, r.stderr
    finally:
        with connect() as c:
            c.execute("SELECT genome.unregister_pet_media('cli_pets')")
            c.execute("DROP TABLE cli_pets")


def test_sequences_load_train_and_classify_from_fasta(database, tmp_path):
    """genome load-seqs, train-seqs and classify-seqs on real 16S reads: the TSV gives every read
    of the file, in order, with what classify_sequences says of it."""
    from test_sequences import GOLD
    records = GOLD.read_text().split(">")[1:]
    train = tmp_path / "train.fasta"
    # the Firmicutes and Bacteroidetes of the gold set, but every tenth read, which is classified
    keep = [r for r in records if "\tBacteria; Firmicutes;" in r.split("\n")[0] or "\tBacteria; Bacteroidetes;" in r.split("\n")[0]]
    train.write_text("".join(">" + r for i, r in enumerate(keep) if i % 10))
    query = tmp_path / "query.fasta"
    query.write_text("".join(">" + r for i, r in enumerate(keep) if i % 10 == 0))
    with connect() as c:
        c.execute("DROP TABLE IF EXISTS cli_seqs")
    r = run("load-seqs", "--table", "public.cli_seqs", str(train))
    assert r.returncode == 0, r.stderr
    n_train = len([x for i, x in enumerate(keep) if i % 10])
    assert f"loaded {n_train} reads" in r.stdout
    with connect() as c:
        lin = c.execute("SELECT lineage FROM cli_seqs LIMIT 1").fetchone()[0]
        assert lin.startswith("Bacteria; ") and lin.count(";") == 5
    r = run("train-seqs", "--name", "cli_16s", "--source", "public.cli_seqs")
    assert r.returncode == 0, r.stderr
    assert "cli_16s@v1 (production)" in r.stdout and "words" in r.stderr
    r = run("classify-seqs", "--model", "cli_16s", str(query))
    assert r.returncode == 0, r.stderr
    lines = [x.split("\t") for x in r.stdout.splitlines()]
    assert lines[0][:5] == ["id", "label", "rank", "confidence", "needs_fallback"]
    ids = [x.split()[0] for i, x in enumerate(keep) if i % 10 == 0]
    assert [x[0] for x in lines[1:]] == ids
    seqs = ["".join(x.split("\n")[1:]) for i, x in enumerate(keep) if i % 10 == 0]
    with connect() as c:
        want = c.execute("SELECT label, rank, needs_fallback FROM genome.classify_sequences('cli_16s', %s) ORDER BY ord",
                         (seqs,)).fetchall()
    assert [(x[1] or None, x[2] or None, x[4] == "true") for x in lines[1:]] == want
    # a bad read is named by its id
    bad = tmp_path / "bad.fasta"
    bad.write_text(">ok\nACGTACGTACGT\n>broken\nACGT-not-dna\n")
    r = run("classify-seqs", "--model", "cli_16s", str(bad))
    assert r.returncode == 1 and "read broken" in r.stderr and "not DNA" in r.stderr
