#!/usr/bin/env python3
"""Makes a large image set from COCO128 for scale runs: random crop (40-100% of each side), horizontal
flip, resize to at most --max-side, brightness/contrast jitter, JPEG q90. Deterministic for a seed.

    augment.py --n 10000 --out DIR [--data ../shared/data] [--max-side 512] [--seed 0]
"""
import argparse
import os
import random

from PIL import Image, ImageEnhance, ImageOps


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--data", default=os.path.join(here, "..", "..", "..", "shared", "data"))
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-side", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    src = os.path.join(a.data, "coco128", "train2017")
    names = sorted(os.listdir(src))
    rng = random.Random(a.seed)
    os.makedirs(a.out, exist_ok=True)
    cache = {}
    for i in range(a.n):
        name = names[i % len(names)]
        if name not in cache:
            cache[name] = Image.open(os.path.join(src, name)).convert("RGB")
        img = cache[name]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.4, 1.0)), int(h * rng.uniform(0.4, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        out = img.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            out = ImageOps.mirror(out)
        s = min(1.0, a.max_side / max(out.size))
        if s < 1.0:
            out = out.resize((max(1, int(out.width * s)), max(1, int(out.height * s))), Image.BILINEAR)
        out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.7, 1.3))
        out = ImageEnhance.Contrast(out).enhance(rng.uniform(0.7, 1.3))
        out.save(os.path.join(a.out, f"aug{i:05d}.jpg"), quality=90)
    print(f"{a.n} images in {a.out}")


if __name__ == "__main__":
    main()
