#!/usr/bin/env python3
"""Independent reference for the DAVIS semi-supervised video-object-segmentation metrics (J, F, J&F).

    davis_jf.py --pred <dir> --gt <dir> [--sequences a,b] [--out report.json]

Both folders hold one sub-folder per sequence with one PNG per frame (`<seq>/<frame>.png`, same names).
PNG values are object ids (palette 'P' or greyscale 'L'); a mask whose only non-zero value is 255 (or 1)
is a binary mask of object 1 (DAVIS-2016). In multi-object GT, 255 marks void pixels, ignored by J and F.
The objects of a sequence are the ids present in its first GT frame (the frame the method is given);
an object absent from the prediction scores as an empty mask.

Definitions (Perazzi et al., "A Benchmark Dataset and Evaluation Methodology for Video Object
Segmentation", CVPR 2016; conventions of the DAVIS 2017 evaluation toolkit), restated:

* Region similarity J: the Jaccard index |P n G| / |P u G| of predicted and ground-truth object masks;
  when both are empty the frame scores 1.
* Contour accuracy F: the boundary of each mask is its one-pixel outline (a pixel is on the boundary when
  it differs from its right, lower or lower-right neighbour, the "seg2bmap" rule). A predicted boundary
  pixel is correct when a GT boundary pixel lies within a disk of radius ceil(0.008 * image diagonal)
  pixels, and vice versa for recall (matching by dilating the other boundary with that disk).
  F = 2PR / (P + R). Conventions for empty boundaries: both empty -> P = R = 1; no prediction -> P = 1,
  R = 0; no GT -> P = 0, R = 1.
* The first and the last frame of every sequence are left out (the first is the given annotation).
* Per object and per measure over its frames: mean; recall = fraction of frames scoring > 0.5;
  decay = mean of the first quarter of the frames minus mean of the last quarter (the frames are split
  into 4 bins at round(linspace(1, n, 5)) - 1, each bin including its right edge, as in the toolkit).
* Overall: J mean and F mean are averaged over all objects of all sequences; J&F = (J mean + F mean) / 2.

Prints a JSON report; exits 1 on a missing or differently sized prediction.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
from PIL import Image

try:
    from scipy import ndimage as _ndi
except ImportError:  # numpy fallback below
    _ndi = None


def read_ids(path):
    im = Image.open(path)
    if im.mode not in ("P", "L", "1", "I", "I;16"):
        im = im.convert("L")
    return np.array(im).astype(np.int64)


def to_objects(a, binary):
    """Object-id map (0 background) and void mask (255 in multi-object maps)."""
    if binary:
        return (a > 0).astype(np.int64), np.zeros(a.shape, bool)
    void = a == 255
    return np.where(void, 0, a), void


def is_binary(frames):
    vals = set()
    for a in frames:
        vals.update(np.unique(a).tolist())
    vals.discard(0)
    return vals <= {255} or vals <= {1}


def disk(r):
    r = int(r)
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y) <= r * r


def dilate(b, se):
    if _ndi is not None:
        return _ndi.binary_dilation(b, structure=se)
    out = np.zeros_like(b)
    r = se.shape[0] // 2
    h, w = b.shape
    for dy, dx in zip(*np.nonzero(se)):
        dy -= r
        dx -= r
        ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
        xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        out[yd, xd] |= b[ys, xs]
    return out


def seg2bmap(seg):
    """1-px boundary: pixels that differ from the right, lower or lower-right neighbour (DAVIS toolkit)."""
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def jaccard(p, g, void):
    keep = ~void
    inter = np.sum(p & g & keep)
    union = np.sum((p | g) & keep)
    return 1.0 if union == 0 else inter / union


def f_measure(p, g, void, bound_th=0.008):
    bound_pix = math.ceil(bound_th * math.hypot(*p.shape))
    keep = ~void
    pb = seg2bmap(p & keep)
    gb = seg2bmap(g & keep)
    se = disk(bound_pix)
    n_p, n_g = pb.sum(), gb.sum()
    if n_p == 0 and n_g == 0:
        prec = rec = 1.0
    elif n_p == 0:
        prec, rec = 1.0, 0.0
    elif n_g == 0:
        prec, rec = 0.0, 1.0
    else:
        prec = np.sum(pb & dilate(gb, se)) / n_p
        rec = np.sum(gb & dilate(pb, se)) / n_g
    return 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)


def statistics(v):
    v = np.asarray(v, dtype=np.float64)
    mean = float(np.nanmean(v))
    recall = float(np.nanmean(v > 0.5))
    ids = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(int)
    bins = [v[ids[i] : ids[i + 1] + 1] for i in range(4)]
    decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay


def eval_sequence(pred_dir, gt_dir):
    names = sorted(f for f in os.listdir(gt_dir) if f.lower().endswith(".png"))
    gts = [read_ids(os.path.join(gt_dir, f)) for f in names]
    binary = is_binary(gts)
    first, _ = to_objects(gts[0], binary)
    objs = sorted(int(o) for o in np.unique(first) if o > 0)
    if not objs:
        objs = sorted({int(o) for a in gts for o in np.unique(to_objects(a, binary)[0]) if o > 0})
    frames = names[1:-1]
    J = {o: [] for o in objs}
    F = {o: [] for o in objs}
    for f, g_raw in zip(frames, gts[1:-1]):
        pp = os.path.join(pred_dir, f)
        if not os.path.exists(pp):
            raise FileNotFoundError(f"missing prediction {pp}")
        p_raw = read_ids(pp)
        if p_raw.shape != g_raw.shape:
            raise ValueError(f"{pp}: size {p_raw.shape[::-1]} but GT is {g_raw.shape[::-1]} (w,h)")
        g, void = to_objects(g_raw, binary)
        pv = set(np.unique(p_raw).tolist()) - {0}
        p = (p_raw > 0).astype(np.int64) if (binary or pv <= {255}) and objs == [1] else p_raw
        for o in objs:
            po, go = p == o, g == o
            J[o].append(jaccard(po, go, void))
            F[o].append(f_measure(po, go, void))
    out = {}
    for o in objs:
        jm, jr, jd = statistics(J[o])
        fm, fr, fd = statistics(F[o])
        out[str(o)] = {"J_mean": jm, "J_recall": jr, "J_decay": jd, "F_mean": fm, "F_recall": fr,
                       "F_decay": fd, "frames": len(frames)}
    return out


def main():
    ap = argparse.ArgumentParser(description="DAVIS J / F / J&F (independent reference).")
    ap.add_argument("--pred", required=True, help="folder of <seq>/<frame>.png predictions")
    ap.add_argument("--gt", required=True, help="folder of <seq>/<frame>.png annotations")
    ap.add_argument("--sequences", help="comma-separated sequence names (default: every GT sequence folder)")
    ap.add_argument("--out", help="also write the JSON report to this file")
    a = ap.parse_args()
    if a.sequences:
        seqs = [s for s in a.sequences.split(",") if s]
    else:
        seqs = sorted(d for d in os.listdir(a.gt) if os.path.isdir(os.path.join(a.gt, d)))
    report = {"sequences": {}}
    per_obj = []
    try:
        for s in seqs:
            r = eval_sequence(os.path.join(a.pred, s), os.path.join(a.gt, s))
            report["sequences"][s] = r
            per_obj.extend(r.values())
    except (FileNotFoundError, ValueError) as e:
        print(json.dumps({"error": str(e)}))
        return 1
    if per_obj:
        for k in ["J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay"]:
            report[k] = float(np.mean([o[k] for o in per_obj]))
        report["JF_mean"] = (report["J_mean"] + report["F_mean"]) / 2
    report["objects"] = len(per_obj)
    report["dilation"] = "scipy.ndimage" if _ndi is not None else "numpy"
    text = json.dumps(report, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
