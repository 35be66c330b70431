#!/usr/bin/env python3
"""Two models on the same prompts, instance by instance: the mean IoU of each, their difference and its 95%
paired-bootstrap interval, from the files of `vprompt eval prompts --instances` (tools/eval_model.sh keeps them).

    python3 tools/paired.py A.jsonl B.jsonl [--boot 10000] [--seed 0]

Instances are matched by (file, annotation); both files must hold the same instances (same ground truth, split,
prompt kind and --min-size), else it says which are missing. A difference whose interval holds 0 is noise at this
number of instances.
"""
import argparse
import json
import sys

import numpy as np


def load(path):
    rows = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                rows[(r["file"], r["annotation"])] = float(r["iou"])
            except (ValueError, KeyError) as e:
                sys.exit(f"{path}:{n}: not a line of `vprompt eval prompts --instances` ({e})")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--boot", type=int, default=10000, help="bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    a, b = load(args.a), load(args.b)
    only_a, only_b = a.keys() - b.keys(), b.keys() - a.keys()
    if only_a or only_b:
        ex = sorted(only_a or only_b)[0]
        sys.exit(f"the files hold different instances ({len(only_a)} only in {args.a}, {len(only_b)} only in "
                 f"{args.b}; e.g. {ex}): evaluate both with the same --gt, --split, --prompt and --min-size")
    keys = sorted(a)
    if not keys:
        sys.exit(f"{args.a}: no instances")
    x = np.array([a[k] for k in keys])
    y = np.array([b[k] for k in keys])
    d = y - x
    rng = np.random.default_rng(args.seed)
    idx = rng.integers(0, len(d), size=(args.boot, len(d)))
    lo, hi = np.percentile(d[idx].mean(1), [2.5, 97.5])
    print(f"{len(keys)} instances")
    print(f"A {args.a}: mIoU {x.mean():.4f}")
    print(f"B {args.b}: mIoU {y.mean():.4f}")
    print(f"B - A: {d.mean():+.4f}, 95% paired bootstrap [{lo:+.4f}, {hi:+.4f}]; B better on {(d > 0.01).sum()}, "
          f"worse on {(d < -0.01).sum()}, within 0.01 on {(np.abs(d) <= 0.01).sum()}")


if __name__ == "__main__":
    main()
