"""Sequences (eDNA) end to end: reads cleaned with a report, k-mer featurisers registered as
models and their embeddings, on real 16S rRNA sequences (Debian's microbiomeutil-data, installed
by the set-up). K-mer counts and TF-IDF are checked against scikit-learn, primer trimming against
an independent regular-expression search."""
import collections
import itertools
import pathlib
import re

import numpy as np
import psycopg
import pytest
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

from conftest import connect

GOLD = pathlib.Path("/usr/share/microbiomeutil-data/RESOURCES/rRNA16S.gold.fasta")
# the Earth Microbiome Project's V4 primers
F515 = "GTGYCAGCMGCCGCGGTAA"
R806 = "GGACTACNVGGGTWTCTAAT"
IUPAC = {"A": "A", "C": "C", "G": "G", "T": "T", "R": "AG", "Y": "CT", "S": "CG", "W": "AT", "K": "GT",
         "M": "AC", "B": "CGT", "D": "AGT", "H": "ACT", "V": "ACG", "N": "ACGT"}
COMP = str.maketrans("ACGTRYSWKMBDHVN", "TGCAYRSWMKVHDBN")


def revcomp(s):
    return s.translate(COMP)[::-1]


def gold(n):
    """The first n records of the 16S gold set: (id, sequence as stored, lineage)."""
    assert GOLD.exists(), "microbiomeutil-data is installed by scripts/setup.sh"
    out, rec = [], None
    for line in GOLD.read_text().splitlines():
        if line.startswith(">"):
            if rec:
                out.append(rec)
                if len(out) == n:
                    break
            rec = [line[1:].split()[0], "", line.split("\t")[-1]]
        else:
            rec[1] += line.strip()
    return out


@pytest.fixture(scope="module")
def reads():
    return gold(200)


def kmers(k):
    """Every ACGT k-mer in the order of pg_genome's dimensions (A, C, G, T as 0-3, first base
    most significant)."""
    return ["".join(p) for p in itertools.product("ACGT", repeat=k)]


def vec(text):
    return np.array([float(x) for x in text.strip("[]").split(",")])


def test_kmer_frequencies_equal_scikit_learn_counts(conn, reads):
    conn.execute("SELECT genome.register_kmer_featurizer('it_k4', '1', k => 4, canonical => false)")
    seqs = [s for _, s, _ in reads]
    got = conn.execute("SELECT e::text FROM unnest(genome.embed_sequences(%s, 'it_k4')) e", (seqs,)).fetchall()
    cv = CountVectorizer(analyzer="char", ngram_range=(4, 4), lowercase=False, vocabulary=kmers(4))
    # upper case, as pg_genome reads any case; k-mers with N or other codes are not in the vocabulary
    counts = cv.transform([s.upper() for s in seqs]).toarray().astype(float)
    want = counts / np.linalg.norm(counts, axis=1, keepdims=True)
    ours = np.array([vec(r[0]) for r in got])
    assert ours.shape == (200, 256)
    np.testing.assert_allclose(ours, want, atol=2e-6)


def test_canonical_tfidf_equals_scikit_learn_with_reverse_complements_merged(conn, reads):
    seqs = [s.upper() for _, s, _ in reads]
    corpus, queries = seqs[:150], seqs[150:]
    conn.execute("SELECT genome.register_kmer_featurizer('it_k5', '1', k => 5, normalization => 'tfidf', fit_on => %s)",
                 (corpus,))
    # canonical 5-mers: a k-mer and its reverse complement are one term; scikit-learn's smooth IDF
    canon = sorted({min(w, revcomp(w)) for w in kmers(5)}, key=kmers(5).index)
    cv = CountVectorizer(analyzer="char", ngram_range=(5, 5), lowercase=False, vocabulary=kmers(5))

    def merged(texts):
        c = cv.transform(texts).toarray().astype(float)
        idx = {w: i for i, w in enumerate(kmers(5))}
        return np.stack([c[:, idx[w]] + (c[:, idx[revcomp(w)]] if revcomp(w) != w else 0) for w in canon], axis=1)

    from sklearn.feature_extraction.text import TfidfTransformer
    tf = TfidfTransformer(smooth_idf=True, norm="l2").fit(merged(corpus))
    want = tf.transform(merged(queries)).toarray()
    got = conn.execute("SELECT e::text FROM unnest(genome.embed_sequences(%s, 'it_k5')) e", (queries,)).fetchall()
    ours = np.array([vec(r[0]) for r in got])
    assert ours.shape == (50, len(canon)) == (50, 512)
    np.testing.assert_allclose(ours, want, atol=2e-6)
    # strand-independent: a read and its reverse complement embed alike
    a, b = conn.execute("SELECT genome.embed_sequence(%s, 'it_k5')::text, genome.embed_sequence(%s, 'it_k5')::text",
                        (queries[0], revcomp(queries[0]))).fetchone()
    np.testing.assert_allclose(vec(a), vec(b), atol=1e-6)
    assert TfidfVectorizer  # the vectoriser and the transformer share the IDF formula


def test_embeddings_are_pgvector_vectors_searchable_by_an_hnsw_index(conn, reads):
    # 8-mers hashed to 1,024 dimensions (pgvector's HNSW indexes at most 2,000)
    conn.execute("SELECT genome.register_kmer_featurizer('it_k6', '1', k => 8, dimension => 1024)")
    conn.execute("DROP TABLE IF EXISTS it_reads")
    conn.execute("CREATE TABLE it_reads (id text PRIMARY KEY, seq text, lineage text, e vector(1024))")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO it_reads (id, seq, lineage) VALUES (%s, %s, %s)", reads)
    conn.execute("UPDATE it_reads SET e = genome.embed_sequence(seq, 'it_k6')")
    conn.execute("CREATE INDEX ON it_reads USING hnsw (e vector_cosine_ops)")
    conn.execute("SET enable_seqscan = off")
    q = reads[17][1]
    top = conn.execute("SELECT id FROM it_reads ORDER BY e <=> genome.embed_sequence(%s, 'it_k6') LIMIT 1", (q,)).fetchone()
    assert top[0] == reads[17][0]
    plan = "\n".join(r[0] for r in conn.execute(
        "EXPLAIN SELECT id FROM it_reads ORDER BY e <=> genome.embed_sequence('ACGTACGTAC', 'it_k6') LIMIT 1"))
    assert "Index Scan using it_reads_e_idx" in plan, plan
    conn.execute("RESET enable_seqscan")


def iupac_regex(p):
    return "".join(f"[{IUPAC[c]}]" for c in p)


def test_primers_are_trimmed_and_every_read_is_accounted_for(conn, reads):
    # amplicons: the real 16S around the V4 primers, found by an exact IUPAC search
    fwd, rev = re.compile(iupac_regex(F515)), re.compile(iupac_regex(revcomp(R806)))
    raw, want = [], {}
    for _, s, _ in reads[:60]:
        s = s.upper()
        f, r = fwd.search(s), rev.search(s)
        if not (f and r and f.end() < r.start()):
            continue
        amplicon = s[max(0, f.start() - 10):r.end() + 10]
        raw.append(amplicon.lower())
        want[len(raw)] = s[f.end():r.start()]
    assert len(raw) >= 30
    bad = [None, "", ">S000001 Escherichia coli", "ACGTQACGT" * 10, "N" * 300]
    rows = conn.execute(
        "SELECT sequence, count, members, dropped, detail, changes FROM genome.clean_sequences("
        "%s, ARRAY[%s], ARRAY[%s], min_length => 100, max_length => 400)",
        (raw + bad, F515, R806)).fetchall()
    seen = {}
    for seq, count, members, dropped, detail, changes in rows:
        for m in members:
            assert m not in seen
            seen[m] = (seq, dropped, detail, changes)
        if dropped is None:
            assert count == len(members)
    assert sorted(seen) == list(range(1, len(raw) + len(bad) + 1)), "every input comes out once"
    for i, amp in want.items():
        seq, dropped, _, changes = seen[i]
        assert dropped is None and seq == amp, i
        assert "lower_case" in changes and any(c.startswith("trimmed_5:") for c in changes)
    n = len(raw)
    assert [seen[n + j][1] for j in range(1, 6)] == ["null", "empty", "fasta_header", "not_dna", "too_ambiguous"]
    assert seen[n + 4][2] == "'Q' at position 5"
    report = conn.execute("SELECT genome.clean_sequences_report(%s, ARRAY[%s], ARRAY[%s], min_length => 100, max_length => 400)",
                          (raw + bad, F515, R806)).fetchone()[0]
    assert report["input"] == n + 5 and report["kept"] == n
    assert report["dropped"] == {"null": 1, "empty": 1, "fasta_header": 1, "not_dna": 1, "too_ambiguous": 1}


def test_dereplication_counts_identical_reads_after_cleaning(conn):
    rows = conn.execute("SELECT sequence, count, members, changes FROM genome.clean_sequences("
                        "ARRAY['ACGUACGUACGUAAACCCGGGUUU', 'acgtacgtacgtaaacccgggttt', 'ACGTACGTACGTAAACCCGGGTTT', "
                        "'GGGGACGTACGTAAACCCGGGTTT'], min_length => 10) WHERE dropped IS NULL ORDER BY count DESC").fetchall()
    assert rows[0] == ("ACGTACGTACGTAAACCCGGGTTT", 3, [1, 2, 3], ["lower_case", "rna"])
    assert rows[1][1:3] == (1, [4])


@pytest.mark.parametrize("read,message", [
    ("hello world", "is not DNA"),
    ("", "is empty"),
    (">S000005078 Geobacillus", "FASTA header"),
    ("A" * 1_000_001, "longer than 1000000"),
])
def test_bad_reads_are_clear_errors(conn, read, message):
    conn.execute("SELECT genome.register_kmer_featurizer('it_bad', '1', k => 3) "
                 "WHERE NOT EXISTS (SELECT 1 FROM genome.models WHERE name = 'it_bad')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        conn.execute("SELECT genome.embed_sequence(%s, 'it_bad')", (read,))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="sequence 2 "):
        conn.execute("SELECT genome.embed_sequences(ARRAY['ACGT', %s], 'it_bad')", (read,))


def test_lowercase_rna_and_n_rich_reads_are_read_not_refused(conn):
    conn.execute("SELECT genome.register_kmer_featurizer('it_k3', '1', k => 3)")
    a, b, c, d = conn.execute(
        "SELECT genome.embed_sequence('ACGTTGCAAGGT', 'it_k3')::text, genome.embed_sequence('acguugcaaggu', 'it_k3')::text, "
        "genome.embed_sequence('NNNNNNN', 'it_k3') IS NULL, genome.embed_sequence(NULL, 'it_k3') IS NULL").fetchone()
    assert a == b and c and d


def test_a_featurizer_is_reloaded_when_its_row_changes(conn):
    conn.execute("SELECT genome.register_kmer_featurizer('it_idf', '1', k => 2, canonical => false, "
                 "normalization => 'tfidf', fit_on => ARRAY['AAAAAAAA', 'ACACACAC', 'AAAACCCC'])")
    before = vec(conn.execute("SELECT genome.embed_sequence('AACCAACC', 'it_idf')::text").fetchone()[0])
    # every IDF set to 1: TF-IDF becomes plain frequencies
    ones = np.ones(16, dtype="<f4").tobytes()
    conn.execute("UPDATE genome.models SET weights = %s WHERE name = 'it_idf'", (ones,))
    after = vec(conn.execute("SELECT genome.embed_sequence('AACCAACC', 'it_idf')::text").fetchone()[0])
    counts = np.zeros(16)
    for i in range(7):
        counts[kmers(2).index("AACCAACC"[i:i + 2])] += 1
    np.testing.assert_allclose(after, counts / np.linalg.norm(counts), atol=1e-6)
    assert not np.allclose(before, after)
    conn.execute("UPDATE genome.models SET weights = '\\x00'::bytea WHERE name = 'it_idf'")
    with pytest.raises(psycopg.errors.DataCorrupted, match="IDF weights"):
        conn.execute("SELECT genome.embed_sequence('AACCAACC', 'it_idf')")


def test_the_registry_refuses_bad_featurizers_and_roles_that_may_not_register(conn):
    for args, message in [("k => 14", "needs a hashed dim"), ("normalization => 'tfidf'", "needs fit_on"),
                          ("normalization => 'softmax'", "unknown normalization"), ("k => 0", "between 1 and 32")]:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
            conn.execute(f"SELECT genome.register_kmer_featurizer('it_refused', '1', {args})")
    with pytest.raises(psycopg.errors.WrongObjectType, match="not a text-embedding model"):
        conn.execute("SELECT genome.register_kmer_featurizer('it_task', '1', k => 3); SELECT genome.embed('x', 'it_task')")
    with pytest.raises(psycopg.errors.WrongObjectType, match="not a sequence-embedding model"):
        conn.execute("SELECT genome.embed_sequence('ACGT', 'tiny-bert')")
    conn.execute("DROP ROLE IF EXISTS it_seq_user")
    conn.execute("CREATE ROLE it_seq_user LOGIN IN ROLE genome_user")
    with connect(user="it_seq_user") as u:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            u.execute("SELECT genome.register_kmer_featurizer('it_mine', '1')")
        # embedding is for every genome_user
        assert u.execute("SELECT vector_dims(genome.embed_sequence('ACGTACGT', 'it_k3'))").fetchone()[0] == 32
    conn.execute("DROP ROLE it_seq_user")


def test_families_of_a_sequence_collection_are_summarised_by_lineage_and_silhouette(conn):
    """full_classify runs on a sequence collection (a k-mer featuriser as its model); the summary's
    majority lineages are counted here, its silhouettes are scikit-learn's on the same vectors."""
    from sklearn.metrics import silhouette_samples
    recs = gold(600)
    conn.execute("DROP TABLE IF EXISTS it_seqfam")
    conn.execute("CREATE TABLE it_seqfam (id text PRIMARY KEY, seq text, lineage text)")
    with conn.cursor().copy("COPY it_seqfam FROM STDIN") as cp:
        for r in recs:
            cp.write_row(r)
    conn.execute("SELECT genome.register_kmer_featurizer('it_fam6', '1', k => 6, dimension => 512)")
    conn.execute("SELECT genome.register_collection('it_seqfam', 'it_seqfam', 'id', 'seq', model => 'it_fam6')")
    n_rows, k = conn.execute("SELECT n_rows, n_clusters FROM genome.full_classify('it_seqfam', min_cluster_size => 8)").fetchone()
    assert n_rows == 600 and k >= 3
    out = conn.execute("SELECT family_id, label, size, exemplar_ids, exemplar_sequences, majority, silhouette "
                       "FROM genome.sequence_families('it_seqfam', 'lineage')").fetchall()
    assert len(out) == k and all(re.fullmatch(r"family \d+", o[1]) for o in out)
    rows = conn.execute("SELECT id, seq, lineage, family_id, embedding::text FROM it_seqfam").fetchall()
    unclustered = conn.execute("SELECT id FROM genome.families WHERE collection = 'it_seqfam' AND is_unclustered").fetchone()[0]
    clustered = [r for r in rows if r[3] != unclustered]
    x = np.array([vec(r[4]) for r in clustered])
    s = silhouette_samples(x, [r[3] for r in clustered], metric="cosine")
    by_id = {r[0]: r for r in rows}
    for fid, _, size, ex, ex_seqs, majority, sil in out:
        members = [r for r in rows if r[3] == fid]
        assert size == len(members)
        assert sil == pytest.approx(np.mean([v for v, r in zip(s, clustered) if r[3] == fid]), abs=1e-4)
        assert ex and [by_id[e][1] for e in ex] == ex_seqs and all(by_id[e][3] == fid for e in ex)
        # per rank, the most common path (ties: the first path in order), its last name and share
        for d, rank in enumerate(["phylum", "class", "order", "family", "genus"]):
            paths = collections.Counter(";".join(x.strip() for x in r[2].split(";")[1:][:d + 1]) for r in members)
            top, n = sorted(paths.items(), key=lambda p: (-p[1], p[0]))[0]
            assert majority[rank] == {"name": top.split(";")[-1], "share": pytest.approx(n / len(members))}
    conn.execute("SELECT genome.unregister_collection('it_seqfam')")
    conn.execute("DROP TABLE it_seqfam")



def test_a_dna_language_model_embeds_reads_as_onnxruntime_does(conn, reads):
    """The ONNX path for DNA language models, with the tiny DNABERT-style model the set-up makes
    (random weights, 3-mer vocabulary): reads go to its tokenizer as overlapping 3-mers; the
    reference runs the same files with Python's tokenizers and onnxruntime."""
    import onnxruntime as ort
    from tokenizers import Tokenizer
    from conftest import MODELS
    d = f"{MODELS}/tiny-dnabert"
    conn.execute("SELECT genome.register_model_dir('it_dnabert', '1', %s, task => 'sequence-embedding')", (d,))
    seqs = [s for _, s, _ in reads[:12]] + ["acgunnacgt"]
    got = [vec(r[0]) for r in conn.execute(
        "SELECT e::text FROM unnest(genome.embed_sequences(%s, 'it_dnabert')) e", (seqs,)).fetchall()]
    tok = Tokenizer.from_file(f"{d}/tokenizer.json")
    sess = ort.InferenceSession(f"{d}/model.onnx")
    for s, ours in zip(seqs, got):
        up = s.upper().replace("U", "T")
        enc = tok.encode(" ".join(up[i:i + 3] for i in range(len(up) - 2)))
        ids = np.array([enc.ids], dtype=np.int64)
        mask = np.array([enc.attention_mask], dtype=np.int64)
        h = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask,
                                              "token_type_ids": np.zeros_like(ids)})[0][0]
        want = (h * mask[0][:, None]).sum(0) / mask.sum()
        np.testing.assert_allclose(ours, want / np.linalg.norm(want), atol=2e-5)
    assert len(enc.ids) == 10 and enc.tokens[3] == "[UNK]", "3-mers with N are unknown words"
    # full-length reads are truncated at the model's 512 tokens, as its tokenizer says
    assert len(tok.encode(" ".join("A" * 3 for _ in range(1500))).ids) == 512
    # text functions refuse it, sequence functions refuse text models
    with pytest.raises(psycopg.errors.WrongObjectType, match="not a text-embedding model"):
        conn.execute("SELECT genome.embed('hello', 'it_dnabert')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="sequence 1 is not DNA"):
        conn.execute("SELECT genome.embed_sequences(ARRAY['hello'], 'it_dnabert')")
