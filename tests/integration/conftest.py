"""Integration tests against the project's real cluster (scripts/cluster.sh): real PostgreSQL 15,
pgvector and the installed pg_genome. Each test session uses its own scratch database."""
import json
import os
import pathlib
import shutil
import subprocess

import psycopg
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
PORT = int(os.environ.get("GENOME_PORT", "55432"))
DB = "genome_it"
# scripts/env.sh exports the PG_CONFIG it found; run by hand, the one on PATH
PG_CONFIG = os.environ.get("PG_CONFIG") or shutil.which("pg_config")
PG_BIN = subprocess.check_output([PG_CONFIG, "--bindir"], text=True).strip()
SHAREDIR = subprocess.check_output([PG_CONFIG, "--sharedir"], text=True).strip()
MODELS = f"{SHAREDIR}/pg_genome/models"
FIXTURE = REPO / "tests" / "fixtures" / "minilm-reference.jsonl"


def connect(dbname=DB, **kw):
    return psycopg.connect(host="127.0.0.1", port=PORT, user=kw.pop("user", "postgres"), dbname=dbname,
                           autocommit=True, **kw)


@pytest.fixture(scope="session")
def database():
    with connect("postgres") as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {DB}")
    with connect() as c:
        c.execute("CREATE EXTENSION pg_genome CASCADE")
        c.execute("SELECT genome.register_model_dir('all-minilm-l6-v2', '1', %s)", (f"{MODELS}/all-minilm-l6-v2",))
        c.execute("SELECT genome.register_model_dir('tiny-bert', '1', %s)", (f"{MODELS}/tiny-bert",))
        c.execute("SELECT genome.register_model_dir('efficientnet-lite0', '1', %s, task => 'image-embedding')",
                  (f"{MODELS}/efficientnet-lite0",))
    yield DB


@pytest.fixture
def conn(database):
    with connect() as c:
        yield c


@pytest.fixture(scope="session")
def reference():
    return [json.loads(line) for line in FIXTURE.read_text().splitlines()]


def postmaster_start(c):
    return c.execute("SELECT pg_postmaster_start_time()").fetchone()[0]


def release_version():
    """The version being built: the workspace's in Cargo.toml."""
    import re
    return re.search(r'^version = "([^"]+)"', (REPO / "Cargo.toml").read_text(), re.M).group(1)
