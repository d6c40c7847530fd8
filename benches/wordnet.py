"""WordNet 3.0 glosses as a real labelled corpus of 117k short texts (issue 17's data set).

  .genome/venv/bin/python benches/wordnet.py [--limit N] [--clients 4] [--dump PREFIX]

Source: Debian's `wordnet-base` (WordNet 3.0, Princeton University, the WordNet 3.0 licence:
free use with the copyright notice kept; /usr/share/doc/wordnet-base/copyright). Each synset
becomes one text, "lemma, lemma: gloss", labelled by its lexicographer file (45 of them, such as
noun.animal or verb.motion; lexnames(5WN)). The texts go into `public.bench_wordnet` of the
project's cluster (database genome) and are embedded there with the default model through
`genome.embed_batch` (several clients at once, with progress). `--dump PREFIX` writes
PREFIX.f32 (row-major float32, 384 per row, in id order) and PREFIX.labels (one lexname per line)
for the genome-core examples.
"""
import argparse, os, pathlib, sys, threading, time
import numpy as np
import psycopg

WORDNET = pathlib.Path("/usr/share/wordnet")
LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
]
PORT = int(os.environ.get("GENOME_PORT", "55432"))


def connect():
    return psycopg.connect(host="127.0.0.1", port=PORT, user="postgres", dbname="genome", autocommit=True)


def synsets():
    """(pos, lexname, text) of every synset, in file order (data.noun, verb, adj, adv)."""
    if not (WORDNET / "data.noun").exists():
        sys.exit("WordNet is not installed: apt-get install wordnet-base")
    for pos in ["noun", "verb", "adj", "adv"]:
        for line in open(WORDNET / f"data.{pos}", encoding="latin-1"):
            if line.startswith("  "):  # the licence header
                continue
            head, _, gloss = line.partition("|")
            f = head.split()
            lex = LEXNAMES[int(f[1])]
            count = int(f[3], 16)
            words = [f[4 + 2 * i].replace("_", " ") for i in range(count)]
            # adjective markers such as "(a)" and duplicates out
            words = list(dict.fromkeys(w.split("(")[0] for w in words))
            yield pos, lex, f"{', '.join(words)}: {gloss.strip()}"


def load(limit, clients):
    rows = list(synsets())
    if limit:
        rows = rows[:limit]
    with connect() as c:
        c.execute("CREATE TABLE IF NOT EXISTS public.bench_wordnet "
                  "(id int PRIMARY KEY, pos text, lexname text, body text, embedding vector(384))")
        have = c.execute("SELECT count(*), count(embedding) FROM public.bench_wordnet").fetchone()
        if have == (len(rows), len(rows)):
            print(f"bench_wordnet: {len(rows)} synsets already embedded", flush=True)
            return
        c.execute("TRUNCATE public.bench_wordnet")
        with c.cursor() as cur, cur.copy("COPY public.bench_wordnet (id, pos, lexname, body) FROM STDIN") as cp:
            for i, r in enumerate(rows):
                cp.write_row((i, *r))
    print(f"bench_wordnet: {len(rows)} synsets loaded, embedding with {clients} clients", flush=True)
    ids = list(range(len(rows)))
    done = [0]
    lock = threading.Lock()
    errors = []

    def work(part):
        try:
            with connect() as c:
                for s in range(0, len(part), 256):
                    chunk = part[s:s + 256]
                    c.execute("UPDATE public.bench_wordnet w SET embedding = e.v FROM "
                              "unnest(%s::int[], genome.embed_batch(%s)) AS e(id, v) WHERE w.id = e.id",
                              (chunk, [rows[i][2] for i in chunk]))
                    with lock:
                        done[0] += len(chunk)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    t0 = time.monotonic()
    parts = [ids[k::clients] for k in range(clients)]
    ts = [threading.Thread(target=work, args=(p,)) for p in parts]
    [t.start() for t in ts]
    while any(t.is_alive() for t in ts):
        time.sleep(10)
        el = time.monotonic() - t0
        rate = done[0] / el if el else 0
        left = (len(rows) - done[0]) / rate if rate else 0
        print(f"  embedded {done[0]:,} / {len(rows):,} ({rate:.0f} texts/s, about {left:.0f} s left)", flush=True)
    [t.join() for t in ts]
    if errors:
        sys.exit(f"embedding failed: {errors[0]}")


def dump(prefix):
    with connect() as c:
        rows = c.execute("SELECT lexname, embedding::text FROM public.bench_wordnet ORDER BY id").fetchall()
    X = np.stack([np.array(e.strip("[]").split(","), dtype=np.float32) for _, e in rows])
    X.astype("<f4").tofile(prefix + ".f32")
    pathlib.Path(prefix + ".labels").write_text("".join(f"{l}\n" for l, _ in rows))
    print(f"wrote {prefix}.f32 ({X.shape[0]} x {X.shape[1]}) and {prefix}.labels", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--dump")
    a = ap.parse_args()
    load(a.limit, a.clients)
    if a.dump:
        dump(a.dump)


if __name__ == "__main__":
    main()
