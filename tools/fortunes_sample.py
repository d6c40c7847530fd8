#!/usr/bin/env python3
"""Write the sample data set: real short texts with a topic label each, from Debian's
`fortunes` and `fortunes-min` packages (fortune-mod's BSD-licensed quotation files; see
/usr/share/doc/fortunes/copyright). Nobody on this project wrote them.

Output: TSV `id<TAB>category<TAB>body`, deterministic (file order, no randomness).
Rules: one quotation per `%`-separated record, whitespace collapsed, 25..300 characters,
exact duplicates dropped, at most PER_CATEGORY per topical category.
"""
import os, re, sys

SRC = "/usr/share/games/fortunes"
# Topical files only: the catch-all files (fortunes, cookie, miscellaneous, zippy...) carry no topic.
CATEGORIES = ["art", "computers", "drugs", "education", "food", "law", "linux", "literature",
              "love", "medicine", "men-women", "pets", "politics", "science", "sports",
              "startrek", "work", "kids", "ethnic", "songs-poems"]


def records(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        for rec in f.read().split("\n%\n"):
            text = re.sub(r"\s+", " ", rec.replace("%", " ")).strip()
            if text:
                yield text


def main():
    out = sys.argv[1]
    per = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    seen, rows = set(), []
    for cat in CATEGORIES:
        n = 0
        for text in records(os.path.join(SRC, cat)):
            if not 25 <= len(text) <= 300 or text in seen or "\t" in text:
                continue
            seen.add(text)
            rows.append((cat, text))
            n += 1
            if n >= per:
                break
    with open(out, "w", encoding="utf-8") as f:
        for i, (cat, text) in enumerate(rows, 1):
            f.write(f"{i}\t{cat}\t{text}\n")
    print(f"{out}: {len(rows)} texts in {len(CATEGORIES)} categories")


if __name__ == "__main__":
    main()
