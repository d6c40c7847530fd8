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
