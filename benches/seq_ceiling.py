#!/usr/bin/env python3
"""How far the calibration features of the sequence classifier can separate known from novel genera.

Reads the predictions that `crates/genome-core/examples/seq_eval.rs FASTA SEED out.tsv` writes
(dev split only: SEED 1) and fits, on those predictions themselves, a logistic regression and a
boosted-tree model of "the genus is right" on the classifier's features (bootstrap, nearest
similarity inside and outside the predicted genus, its cohesion and size), scored by 5-fold
cross-validation grouped by predicted genus. It prints the share of novel-genus reads each
withholds when it withholds 9% of known-genus reads (the goal: >= 85% at < 10%), next to the
classifier's own calibrated confidence. Fitting on the evaluation reads is optimistic: it bounds
what a better calibrator on these features could reach.

    cargo run --release -p genome-core --example seq_eval -- \
        /usr/share/microbiomeutil-data/RESOURCES/rRNA16S.gold.fasta 1 /tmp/dev1.tsv
    .genome/venv/bin/python benches/seq_ceiling.py /tmp/dev1.tsv
"""
import sys

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_predict

rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
known = np.array([r[1] == "test" for r in rows])
right = np.array([int(r[2]) for r in rows])
genus = np.array([r[3] for r in rows])
conf, boot, s_in, s_out, coh, size = np.array([[float(x) for x in r[4:10]] for r in rows]).T
features = np.column_stack([boot, s_in, s_out, s_in - s_out, s_in - coh, np.log(size), coh])


def novel_withheld(score):
    t = np.quantile(score[known], 0.09)
    return np.mean(score[~known] < t)


print(f"reads: {known.sum()} known, {(~known).sum()} novel")
print(f"the classifier's calibrated confidence: novel withheld {novel_withheld(conf):.3f} at 9% known withheld")
for m in [LogisticRegression(C=1.0, max_iter=2000), HistGradientBoostingClassifier(max_depth=3, max_iter=200)]:
    for cv, groups, how in [(5, None, "5-fold"), (GroupKFold(5), genus, "5-fold grouped by genus")]:
        p = cross_val_predict(m, features, right, cv=cv, groups=groups, method="predict_proba")[:, 1]
        print(f"{type(m).__name__:32} {how:24} novel withheld {novel_withheld(p):.3f} at 9% known withheld")
