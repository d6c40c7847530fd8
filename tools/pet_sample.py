#!/usr/bin/env python3
"""Sample pet photos for the main job: Fashion-MNIST test photos (Debian's dataset-fashion-mnist,
Zalando, MIT) grouped as 4 pets with 2-3 looks each, 10-16 photos per look, written as COPY text
(pet, photo_id, taken_at, look, PNG bytes as bytea hex). Usage: pet_sample.py OUT.tsv"""
import datetime, os, sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
import imageset  # noqa: E402

PETS = {"biscuit": [1, 7], "luna": [8, 5, 9], "max": [0, 1], "tofu": [3]}


def main(out):
    x, y = imageset.fashion()
    rng = np.random.default_rng(7)
    t0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
    pid = 0
    with open(out, "w") as f:
        for k, (pet, looks) in enumerate(PETS.items()):
            for look in looks:
                pool = np.where(y == look)[0][k * 100:(k + 1) * 100]
                for i in rng.choice(pool, size=int(rng.integers(10, 17)), replace=False):
                    pid += 1
                    at = t0 + datetime.timedelta(hours=int(rng.integers(0, 24 * 300)))
                    f.write(f"{pet}\t{pid}\t{at.isoformat()}\t{imageset.FASHION_LABELS[look]}\t\\\\x{imageset.png_of(x[i]).hex()}\n")


if __name__ == "__main__":
    main(sys.argv[1])
