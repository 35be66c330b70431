#!/usr/bin/env python3
"""Writes a COCO file of a sample of DUTS-TR TRAINING images (never a dev-val stem), for fitting the click choice:

    python3 tools/focus_proto/duts_train_coco.py [--data ../shared/data/duts-tr-256] [--n 800] [--seed 0] --out FILE

The sample: --n stems drawn (numpy default_rng(seed)) from the stems of images/ that are not in dev-val.txt,
then sorted; their list goes to FILE with .txt for .json, and tools/duts_to_coco.py writes the COCO file from it.
"""
import argparse, os, subprocess, sys

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--data", default=os.path.join(here, "..", "..", "..", "shared", "data", "duts-tr-256"))
ap.add_argument("--n", type=int, default=800)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--out", required=True)
a = ap.parse_args()
dev = {s.strip() for s in open(os.path.join(a.data, "dev-val.txt")) if s.strip()}
stems = sorted(f[:-4] for f in os.listdir(os.path.join(a.data, "images")) if f.endswith(".jpg"))
train = [s for s in stems if s not in dev]
pick = sorted(np.random.default_rng(a.seed).choice(train, size=min(a.n, len(train)), replace=False).tolist())
assert not dev.intersection(pick)
lst = os.path.abspath(os.path.splitext(a.out)[0] + ".txt")
with open(lst, "w") as f:
    f.write("\n".join(pick) + "\n")
print(f"{lst}: {len(pick)} of {len(train)} training stems ({len(dev)} dev-val stems excluded)", file=sys.stderr)
sys.exit(subprocess.call([sys.executable, os.path.join(here, "..", "duts_to_coco.py"), "--data", a.data, "--split", lst, "--out", a.out]))
