#!/usr/bin/env python3
"""Turn the cheat sheets shipped by PyPI `cheat` 2.5.1 (MIT/GPL-3) into a capability catalog.

One sheet = one capability; each "# comment" block followed by command lines = one intent (the
comment's last line, "To " and a trailing colon removed) labelled with the sheet; the tools are
the first words of the commands' segments (split at |, ||, &&, ;), after `sudo`, `env`, `time` and
VAR=value. A capability's text is "<sheet>: <the sheet's first intent>" (the sheets have no
description of their own).

Usage: cheat_catalog.py OUT_DIR [SHEETS_DIR]   (default: where pip installed the package's sheets,
site-packages/usr/share/cheat: its data_files have a relative path)
Writes capabilities.tsv (capability, description), links.tsv (capability, tool) and
intents.tsv (intent, capability, split) with split = train (80%) or test by a hash of the intent.
"""
import hashlib
import os
import re
import sys

PREFIXES = {"sudo", "env", "time", "nohup", "exec", "command"}


def tools_of(command):
    out = []
    for seg in re.split(r"\|\||&&|\||;|`|\$\(", command):
        words = seg.strip().split()
        while words and (words[0] in PREFIXES or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0])
                         or words[0].startswith("-")):
            words = words[1:]
        if not words:
            continue
        w = words[0].strip("()'\"")
        w = w.rsplit("/", 1)[-1]
        if re.match(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", w) and not w.isdigit():
            out.append(w)
    return out


def clean(comment):
    c = comment.strip().lstrip("#").strip()
    c = re.sub(r"^(To|to)\s+", "", c).rstrip(":").strip()
    return c[:1].upper() + c[1:] if c else c


def parse(path):
    name = os.path.basename(path)
    intents, tools = [], []
    comment, commands = None, []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines() + [""]
    for line in lines:
        s = line.strip()
        if s.startswith("#"):
            if commands and comment:
                intents.append(clean(comment))
            if commands:
                comment, commands = None, []
            comment = s
        elif s:
            commands.append(s)
            tools.extend(tools_of(s))
        else:
            if comment and commands:
                intents.append(clean(comment))
            comment, commands = (None, []) if commands else (comment, commands)
    seen, uniq = set(), []
    for i in intents:
        k = i.lower()
        if len(i) >= 3 and k not in seen:
            seen.add(k)
            uniq.append(i)
    return name, uniq, sorted(set(tools))


def main():
    out = sys.argv[1]
    if len(sys.argv) > 2:
        sheets = sys.argv[2]
    else:
        import sysconfig
        sheets = os.path.join(sysconfig.get_paths()["purelib"], "usr", "share", "cheat")
    os.makedirs(out, exist_ok=True)
    caps, links, intents = [], [], []
    for fn in sorted(os.listdir(sheets)):
        p = os.path.join(sheets, fn)
        if not os.path.isfile(p) or fn.startswith((".", "__")):
            continue
        name, its, tools = parse(p)
        if not its:
            continue
        caps.append((name, f"{name}: {its[0]}"))
        links.extend((name, t) for t in tools)
        for i in its:
            h = int(hashlib.sha256(f"cheat-v1:{i}".encode()).hexdigest()[:8], 16) / 2**32
            intents.append((i, name, "train" if h < 0.8 else "test"))
    seen = {}
    for i, c, s in intents:
        seen.setdefault(i.lower(), set()).add(c)
    # an intent text found in two sheets has no single right answer: dropped (as in the tldr data)
    intents = [x for x in intents if len(seen[x[0].lower()]) == 1]
    for fname, rows, head in (("capabilities.tsv", caps, "capability\tdescription"),
                              ("links.tsv", links, "capability\ttool"),
                              ("intents.tsv", intents, "intent\tcapability\tsplit")):
        with open(os.path.join(out, fname), "w", encoding="utf-8") as f:
            f.write(head + "\n")
            for r in rows:
                f.write("\t".join(x.replace("\t", " ") for x in r) + "\n")
    print(f"cheat sheets: {len(caps)} capabilities, {len(set(t for _, t in links))} tools, "
          f"{len(links)} links, {len(intents)} intents "
          f"({sum(1 for x in intents if x[2] == 'train')} train)")


if __name__ == "__main__":
    main()
