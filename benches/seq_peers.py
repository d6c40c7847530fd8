"""pg_genome's taxonomy classifier side by side with the tools bioinformaticians use, on the same
split of the real 16S gold set (Debian's microbiomeutil-data), in the same run:

  - pg_genome: genome.train_sequence_classifier / genome.classify_sequences inside PostgreSQL
    (the project's cluster), one backend with genome.cluster_threads = 1 (per core) and 2;
  - RDP Classifier (Debian's rdp-classifier), retrained on the train part with its own `train`;
  - SINTAX (vsearch --sintax --threads 1) over 10 random seeds;
  - blastn top hit (ncbi-blast+), no confidence.

The split is by genus and seeded: whole genera are held out as "novel" (their family keeps
another genus), a fifth of each other genus with two or more reads is "test" (known genera), the
rest trains. Tune on seed 1 (dev); the held-back seed (7) is reported once. Every tool's output is
scored by the same code here.

    benches/seq_peers.sh [--seed N] [--no-blast]     (installs the peers, then runs this)
"""
import argparse
import collections
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

import psycopg

GOLD = pathlib.Path("/usr/share/microbiomeutil-data/RESOURCES/rRNA16S.gold.fasta")
RDP_JAR = "/usr/share/rdp-classifier/rdp_classifier.jar"
RANKS = ["phylum", "class", "order", "family", "genus"]
CUT = 0.8
PORT = int(os.environ.get("GENOME_PORT", "55432"))
DB = "genome_bench_seq"


def h(seed, s):
    return int(hashlib.sha256(f"{seed}:{s}".encode()).hexdigest()[:8], 16) / 2**32


def read_gold():
    recs, rec = [], None
    for line in GOLD.read_text().splitlines():
        if line.startswith(">"):
            lin = [x.strip() for x in line.split("\t")[-1].split(";")]
            rec = [line[1:].split()[0], [], lin[-5:]]
            recs.append(rec)
        else:
            rec[1].append(line.strip())
    return [(r[0], "".join(r[1]).upper(), r[2]) for r in recs]


def split(recs, seed):
    genera = collections.defaultdict(list)
    for r in recs:
        genera[tuple(r[2])].append(r)
    families = collections.defaultdict(list)
    for g in genera:
        families[g[:4]].append(g)
    novel = set()
    for gs in families.values():
        if len(gs) > 1:
            for g in sorted(gs, key=lambda g: h(seed, ";".join(g)))[:-1]:
                if h(seed, "novel" + ";".join(g)) < 0.1:
                    novel.add(g)
    parts = {"train": [], "test": [], "novel": []}
    for g, rs in genera.items():
        for i, r in enumerate(sorted(rs, key=lambda r: h(seed, r[0]))):
            if g in novel:
                parts["novel"].append(r)
            elif len(rs) > 1 and i < round(len(rs) * 0.2):
                parts["test"].append(r)
            else:
                parts["train"].append(r)
    return parts


def peak_rss_mib(cmd, **kw):
    """Run cmd under /usr/bin/time; returns (seconds, peak RSS MiB, stdout)."""
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, capture_output=True, text=True, **kw)
    secs = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed: {p.stderr[-2000:]}")
    rss = int(p.stderr.strip().splitlines()[-1]) / 1024
    return secs, rss, p.stdout


def write_fasta(path, recs, header=lambda r: r[0]):
    with open(path, "w") as f:
        for r in recs:
            f.write(f">{header(r)}\n{r[1]}\n")


# ---- scoring: one function for every tool ----

def ece(conf, ok, bins=10):
    tot = [0.0] * bins
    acc = [0.0] * bins
    for c, y in zip(conf, ok):
        b = min(int(c * bins), bins - 1)
        tot[b] += c
        acc[b] += y
    return sum(abs(a - t) for a, t in zip(acc, tot)) / max(len(conf), 1)


def score(parts, pred, has_conf=True):
    """pred: id -> (names per rank, confidence per rank); a read missing from it (no hit) is
    wrong and has confidence 0. has_conf: whether the tool gives confidences."""
    known, novel = parts["test"], parts["novel"]

    def right(r, d):
        p = pred.get(r[0])
        return p is not None and p[0][:d + 1] == r[2][:d + 1]

    def conf(r, d):
        p = pred.get(r[0])
        return 0.0 if p is None or p[1] is None else p[1][d]
    out = {}
    g, f = 4, 3
    out["genus_accuracy_known"] = sum(right(r, g) for r in known) / len(known)
    out["family_accuracy_known"] = sum(right(r, f) for r in known) / len(known)
    if has_conf:
        called = [r for r in known if conf(r, g) >= CUT]
        out["genus_called_known"] = len(called) / len(known)
        out["genus_called_right"] = sum(right(r, g) for r in called) / max(len(called), 1)
        out["known_withheld"] = 1 - out["genus_called_known"]
        out["novel_withheld"] = sum(conf(r, g) < CUT for r in novel) / len(novel)
        out["genus_ece_known"] = ece([conf(r, g) for r in known], [right(r, g) for r in known])
        mixed = known + novel
        out["genus_ece_mixed"] = ece([conf(r, g) for r in mixed], [right(r, g) for r in mixed])
        out["family_ece_mixed"] = ece([conf(r, f) for r in mixed], [right(r, f) for r in mixed])
    out["novel_family_right"] = sum(right(r, f) for r in novel) / len(novel)
    return out


def mean(dicts):
    return {k: sum(d[k] for d in dicts) / len(dicts) for k in dicts[0]}


# ---- the tools ----

def ours(parts, tmp):
    with psycopg.connect(host="127.0.0.1", port=PORT, user="postgres", dbname="postgres", autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {DB}")
    conn = lambda: psycopg.connect(host="127.0.0.1", port=PORT, user="postgres", dbname=DB, autocommit=True)
    with conn() as c:
        c.execute("CREATE EXTENSION pg_genome CASCADE")
        c.execute("CREATE TABLE train (id text, sequence text, lineage text[])")
        with c.cursor().copy("COPY train FROM STDIN") as cp:
            for r in parts["train"]:
                cp.write_row((r[0], r[1], r[2]))
    res = {}
    with conn() as c:
        c.execute("SET genome.cluster_threads = 2")
        t = time.perf_counter()
        c.execute("SELECT genome.train_sequence_classifier('bench16s', 'train', 'sequence', 'lineage')")
        res["train_seconds"] = time.perf_counter() - t
    queries = parts["test"] + parts["novel"]
    seqs = [r[1] for r in queries]
    for threads in (1, 2):
        with conn() as c:
            c.execute(f"SET genome.cluster_threads = {threads}")
            # load the bundle once (first call), then time the classification of every read
            c.execute("SELECT count(*) FROM genome.classify_sequences('bench16s', %s, fallback_k => 0)", (seqs[:1],))
            pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
            t0 = time.perf_counter()
            rows = c.execute("SELECT ord, lineage FROM genome.classify_sequences('bench16s', %s, fallback_k => 0) "
                             "ORDER BY ord", (seqs,)).fetchall()
            secs = time.perf_counter() - t0
            # the backend's peak resident memory (same machine): the loaded bundle and the batch
            hwm = re.search(r"VmHWM:\s+(\d+) kB", pathlib.Path(f"/proc/{pid}/status").read_text())
            res[f"backend_peak_rss_mib_{threads}_threads"] = int(hwm.group(1)) / 1024 if hwm else None
        res[f"seq_per_s_{threads}_threads"] = len(seqs) / secs
    pred = {}
    for (ord_, lin), r in zip(rows, queries):
        if lin is None:
            continue
        pred[r[0]] = ([lin[k]["name"] for k in RANKS], [lin[k]["confidence"] for k in RANKS])
    res.update(score(parts, pred))
    return res


def unique_names(lineages):
    """RDP needs a taxon's (name, rank) unique: a name used under two parents gets its parent's
    name appended. Returns lineage tuple -> renamed names."""
    out = {}
    seen = collections.defaultdict(set)  # (depth, name) -> parents
    for lin in lineages:
        for d in range(5):
            seen[(d, lin[d])].add(tuple(lin[:d]))
    for lin in lineages:
        names = []
        for d in range(5):
            n = lin[d]
            if len(seen[(d, n)]) > 1:
                n = f"{n}~{lin[d - 1]}" if d else n
            names.append(f"{RANKS[d][0]}__{n}")
        out[tuple(lin)] = names
    return out


def rdp(parts, tmp):
    lineages = sorted({tuple(r[2]) for r in parts["train"]})
    ren = unique_names(lineages)
    back = {tuple(v): list(k) for k, v in ren.items()}
    # taxonomy file: taxid*name*parent*depth*rank
    ids = {("Root",): 0}
    lines = ["0*Root*-1*0*rootrank"]
    for lin in lineages:
        path = ("Root",)
        for d, name in enumerate(ren[lin]):
            node = path + (name,)
            if node not in ids:
                ids[node] = len(ids)
                lines.append(f"{ids[node]}*{name}*{ids[path]}*{d + 1}*{RANKS[d]}")
            path = node
    (tmp / "rdp_tax.txt").write_text("\n".join(lines) + "\n")
    write_fasta(tmp / "rdp_train.fa", parts["train"], lambda r: f"{r[0]}\tRoot;" + ";".join(ren[tuple(r[2])]))
    out_dir = tmp / "rdp_model"
    secs, rss_train, _ = peak_rss_mib(["java", "-Xmx2g", "-cp", RDP_JAR, "edu.msu.cme.rdp.classifier.cli.ClassifierMain",
                                       "train", "-o", str(out_dir), "-s", str(tmp / "rdp_train.fa"),
                                       "-t", str(tmp / "rdp_tax.txt")])
    (out_dir / "rRNAClassifier.properties").write_text(
        "bergeyTree=bergeyTrainingTree.xml\nprobabilityList=genus_wordConditionalProbList.txt\n"
        "probabilityIndex=wordConditionalProbIndexArr.txt\nwordPrior=logWordPrior.txt\n"
        "classifierVersion=RDP Naive Bayesian rRNA Classifier Version 2.10\n")
    queries = parts["test"] + parts["novel"]
    write_fasta(tmp / "query.fa", queries)
    csecs, rss, _ = peak_rss_mib(["java", "-Xmx2g", "-cp", RDP_JAR, "edu.msu.cme.rdp.classifier.cli.ClassifierMain",
                                  "classify", "-t", str(out_dir / "rRNAClassifier.properties"), "-f", "allrank",
                                  "-o", str(tmp / "rdp_out.tsv"), str(tmp / "query.fa")])
    # start-up: classify one read
    ssecs, _, _ = peak_rss_mib(["java", "-Xmx2g", "-cp", RDP_JAR, "edu.msu.cme.rdp.classifier.cli.ClassifierMain",
                                "classify", "-t", str(out_dir / "rRNAClassifier.properties"), "-f", "allrank",
                                "-o", str(tmp / "rdp_one.tsv"), str(tmp / "one.fa")]) if write_one(tmp, queries) else (0, 0, 0)
    pred = {}
    for line in (tmp / "rdp_out.tsv").read_text().splitlines():
        f = line.split("\t")
        # seqname, orientation, then (name, rank, confidence) triples from the root
        trip = [(f[i], f[i + 1], float(f[i + 2])) for i in range(2, len(f) - 2, 3)]
        named = [(n, c) for n, rk, c in trip if rk in RANKS]
        if len(named) != 5:
            continue
        names = back.get(tuple(n for n, _ in named))
        pred[f[0]] = (names, [c for _, c in named])
    res = {"train_seconds": secs, "seq_per_s": len(queries) / csecs, "startup_seconds": ssecs,
           "seq_per_s_after_startup": len(queries) / max(csecs - ssecs, 1e-9), "peak_rss_mib": rss,
           "train_peak_rss_mib": rss_train}
    res.update(score(parts, pred))
    return res


def write_one(tmp, queries):
    write_fasta(tmp / "one.fa", queries[:1])
    return True


def sintax(parts, tmp, seeds=10):
    def tax(r):
        return "tax=" + ",".join(f"{k[0]}:{re.sub(r'[^A-Za-z0-9_.-]', '_', n)}" for k, n in zip(RANKS, r[2]))
    write_fasta(tmp / "sintax_db.fa", parts["train"], lambda r: f"{r[0]};{tax(r)};")
    clean = {}
    for r in parts["train"]:
        clean[tuple(re.sub(r'[^A-Za-z0-9_.-]', '_', n) for n in r[2])] = r[2]
    queries = parts["test"] + parts["novel"]
    write_fasta(tmp / "query.fa", queries)
    runs, speeds, rsss = [], [], []
    for s in range(1, seeds + 1):
        secs, rss, _ = peak_rss_mib(["vsearch", "--sintax", str(tmp / "query.fa"), "--db", str(tmp / "sintax_db.fa"),
                                     "--tabbedout", str(tmp / "sintax.tsv"), "--sintax_cutoff", str(CUT),
                                     "--threads", "1", "--randseed", str(s), "--quiet"])
        speeds.append(len(queries) / secs)
        rsss.append(rss)
        pred = {}
        for line in (tmp / "sintax.tsv").read_text().splitlines():
            f = line.split("\t")
            if len(f) < 2 or not f[1]:
                continue
            items = [re.match(r"(\w):(.*)\(([\d.]+)\)$", x) for x in f[1].split(",")]
            if len(items) != 5 or not all(items):
                continue
            names = tuple(m.group(2) for m in items)
            pred[f[0]] = (clean.get(names, list(names)), [float(m.group(3)) for m in items])
        runs.append(score(parts, pred))
    res = mean(runs)
    res.update({"seq_per_s": sum(speeds) / len(speeds), "peak_rss_mib": max(rsss), "seeds": seeds})
    return res


def blast(parts, tmp):
    write_fasta(tmp / "blast_db.fa", parts["train"])
    subprocess.run(["makeblastdb", "-in", str(tmp / "blast_db.fa"), "-dbtype", "nucl", "-out", str(tmp / "blastdb")],
                   check=True, capture_output=True)
    queries = parts["test"] + parts["novel"]
    write_fasta(tmp / "query.fa", queries)
    secs, rss, out = peak_rss_mib(["blastn", "-query", str(tmp / "query.fa"), "-db", str(tmp / "blastdb"),
                                   "-outfmt", "6 qseqid sseqid bitscore", "-max_target_seqs", "5", "-num_threads", "1"])
    lin = {r[0]: r[2] for r in parts["train"]}
    best = {}
    for line in out.splitlines():
        q, s, b = line.split("\t")
        if q not in best or float(b) > best[q][1]:
            best[q] = (s, float(b))
    pred = {q: (lin[s], None) for q, (s, _) in best.items()}
    res = {"seq_per_s": len(queries) / secs, "peak_rss_mib": rss}
    res.update(score(parts, pred, has_conf=False))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-blast", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    recs = read_gold()
    parts = split(recs, a.seed)
    print(f"seed {a.seed}: train {len(parts['train'])}, test (known genera) {len(parts['test'])}, "
          f"novel genera {len(parts['novel'])} reads", flush=True)
    results = {"seed": a.seed, "sizes": {k: len(v) for k, v in parts.items()}}
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        for name, fn in [("pg_genome", ours), ("rdp", rdp), ("sintax", sintax)] + ([] if a.no_blast else [("blastn", blast)]):
            print(f"running {name} ...", flush=True)
            results[name] = fn(parts, tmp)
            print(json.dumps(results[name], indent=1), flush=True)
    ours_r, rdp_r, sx = results["pg_genome"], results["rdp"], results["sintax"]
    print("\nratios:")
    print(f"  speed per core: pg_genome {ours_r['seq_per_s_1_threads']:.0f} seq/s = "
          f"{ours_r['seq_per_s_1_threads'] / rdp_r['seq_per_s']:.1f}x RDP (with its start-up), "
          f"{ours_r['seq_per_s_1_threads'] / rdp_r['seq_per_s_after_startup']:.1f}x RDP after start-up, "
          f"{ours_r['seq_per_s_1_threads'] / sx['seq_per_s']:.2f}x SINTAX")
    print(f"  training: pg_genome {ours_r['train_seconds']:.1f} s, RDP {rdp_r['train_seconds']:.1f} s")
    if a.out:
        pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(a.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
