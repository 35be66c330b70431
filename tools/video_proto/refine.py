"""Edge-aware refinement of vprompt's video masks with a guided filter, DAVIS-2016 J / F / J&F.

Each predicted mask (binary, from the stride-4 grid upsampled to frame pixels) is filtered with the guided
filter of He, Sun & Tang ("Guided Image Filtering", ECCV 2010 / TPAMI 2013): the input p is the mask as
floats 0/1, the guide I is the JPEG frame in [0,1], either its gray version (L) or its colour (the
3-channel variant: per-pixel 3x3 covariance + eps*U solved in closed form); box means by cumulative sums,
normalised by the number of in-image pixels in the window. The output q is thresholded (default 0.5).
Scoring follows tools/crosscheck/davis_jf.py (its jaccard / f_measure / statistics; first and last frame
left out). numpy + PIL only (scipy, if present, only speeds up the F dilation inside davis_jf).

Modes:
  grid  -- every guide x r x eps x threshold on --pred, mean J, F, J&F (for tuning; training sequences)
  eval  -- one setting: per-sequence J, F before/after and the means; --write DIR saves refined PNGs
  (guide "none" = control without edges: q = box(box(p)), the eps -> infinity limit)
  time  -- ms per frame of the filter alone (gray and colour) at the frame size, single thread

Commands run (repository root; PY="env PYTHONPATH=.deps/python OMP_NUM_THREADS=1 python3"):
  tools/eval_davis_devval.sh models/vprompt-lite0 out/gf/dev --readout 0.7   # dev-val J&F 0.6760
  SEQS="boat elephant hike lucia rhino swing" tools/eval_davis_devval.sh models/vprompt-lite0 out/gf/tune \
      --readout 0.7                                                        # training sequences: J&F 0.6931
  T="--pred out/gf/tune/pred --sequences boat,elephant,hike,lucia,rhino,swing"
  $PY tools/video_proto/refine.py grid $T --json out/gf/tune_grid.json    # gray,color x r 2,4,8 x eps 1e-4..1e-2 x thr .4,.5,.6
  $PY tools/video_proto/refine.py grid $T --guides none --rs 2,4,8 --epss 1 --thrs 0.4,0.5,0.6,0.7 \
      --json out/gf/tune_control.json                                      # control without edges
  $PY tools/video_proto/refine.py grid $T --guides color --rs 8,12,16 --epss 1e-4 --thrs 0.6,0.7 --json out/gf/tune_ext.json
  $PY tools/video_proto/refine.py grid $T --guides color --rs 24,32 --epss 1e-4 --thrs 0.5,0.6 --json out/gf/tune_ext2.json
  chosen on the tuning set (max tuning J&F, 0.7463): --guide color --r 24 --eps 1e-4 --thr 0.5
  (secondary, best inside r in {2,4,8}: --guide color --r 8 --eps 1e-4 --thr 0.6, tuning 0.7268)
  D="--pred out/gf/dev/pred --sequences bear,car-turn,dance-jump,kite-walk,soccerball,stroller"
  $PY tools/video_proto/refine.py eval $D --guide color --r 24 --eps 1e-4 --thr 0.5 \
      --write out/gf/dev_refined/pred --json out/gf/dev_refined.json       # dev J&F 0.6760 -> 0.7431
  $PY tools/video_proto/refine.py eval $D --guide color --r 8 --eps 1e-4 --thr 0.6 \
      --write out/gf/dev_refined_r8/pred --json out/gf/dev_refined_r8.json # dev J&F 0.6760 -> 0.7173
  ./target/release/vprompt eval davis --pred out/gf/dev_refined/pred \
      --gt ../shared/data/davis2016-train-240p/Annotations --sequences bear,...,stroller   # same numbers
  $PY tools/video_proto/refine.py time --guide color --r 24 --eps 1e-4 --thr 0.5 --guides gray,color,none
      # 427x240, float64, 1 thread: gray 14 ms, color 74 ms, none 2.5 ms per frame
Outputs and the pre-declared choice: out/gf/ (README.txt, *.txt, *.json). The runtime's filter
(src/post/guided.rs, `job.refine`) takes the chosen setting as 4.5 mask-grid cells (24 px at 427x240), with
the fits made on blocks of radius/8 pixels (He & Sun's fast guided filter): dev-val J&F 0.7451 with the
readout, 0.7250 without.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "crosscheck"))
import davis_jf  # noqa: E402

DATA = "../shared/data/davis2016-train-240p"
DEV = ["bear", "car-turn", "dance-jump", "kite-walk", "soccerball", "stroller"]


# ---------------------------------------------------------------- guided filter

def box_sum(x, r):
    """Sum over the (2r+1)^2 window clipped to the image, via cumulative sums along both spatial axes
    (axes 0 and 1; trailing axes are carried along)."""
    h, w = x.shape[:2]
    c = np.cumsum(x, axis=0)
    c = np.concatenate([np.zeros_like(c[:1]), c], axis=0)  # c[i] = sum of rows < i
    lo = np.clip(np.arange(h) - r, 0, h)
    hi = np.clip(np.arange(h) + r + 1, 0, h)
    y = c[hi] - c[lo]
    c = np.cumsum(y, axis=1)
    c = np.concatenate([np.zeros_like(c[:, :1]), c], axis=1)
    lo = np.clip(np.arange(w) - r, 0, w)
    hi = np.clip(np.arange(w) + r + 1, 0, w)
    return c[:, hi] - c[:, lo]


class Box:
    """Box means with the per-pixel window size N cached per (h, w, r)."""
    _n = {}

    def __init__(self, h, w, r):
        key = (h, w, r)
        if key not in Box._n:
            Box._n[key] = box_sum(np.ones((h, w), np.float64), r)
        self.n = Box._n[key]
        self.r = r

    def __call__(self, x):
        s = box_sum(x, self.r)
        return s / (self.n if x.ndim == 2 else self.n[..., None])


def guided_gray(I, p, r, eps):
    """He et al. Algorithm 1, gray guide I (h, w), input p (h, w)."""
    box = Box(*I.shape, r)
    mI, mp = box(I), box(p)
    var = box(I * I) - mI * mI
    cov = box(I * p) - mI * mp
    a = cov / (var + eps)
    b = mp - a * mI
    return box(a) * I + box(b)


def guided_color(I, p, r, eps):
    """Colour guide I (h, w, 3): a_k = (Sigma_k + eps U)^-1 cov_k(I, p), b_k = mean p - a_k . mean I."""
    h, w, _ = I.shape
    box = Box(h, w, r)
    mI = box(I)                                   # h, w, 3
    mp = box(p)
    cov = box(I * p[..., None]) - mI * mp[..., None]  # h, w, 3
    # covariance entries (symmetric 3x3)
    idx = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    prods = np.stack([I[..., i] * I[..., j] for i, j in idx], axis=-1)
    S = box(prods) - np.stack([mI[..., i] * mI[..., j] for i, j in idx], axis=-1)
    rr, rg, rb, gg, gb, bb = (S[..., k] for k in range(6))
    rr = rr + eps
    gg = gg + eps
    bb = bb + eps
    # inverse via the adjugate
    i_rr = gg * bb - gb * gb
    i_rg = gb * rb - rg * bb
    i_rb = rg * gb - gg * rb
    i_gg = rr * bb - rb * rb
    i_gb = rb * rg - rr * gb
    i_bb = rr * gg - rg * rg
    det = rr * i_rr + rg * i_rg + rb * i_rb
    c0, c1, c2 = cov[..., 0], cov[..., 1], cov[..., 2]
    a = np.stack([i_rr * c0 + i_rg * c1 + i_rb * c2,
                  i_rg * c0 + i_gg * c1 + i_gb * c2,
                  i_rb * c0 + i_gb * c1 + i_bb * c2], axis=-1) / det[..., None]
    b = mp - np.sum(a * mI, axis=-1)
    return np.sum(box(a) * I, axis=-1) + box(b)


def refine(frame_rgb, mask, guide, r, eps):
    """frame_rgb: uint8 (h, w, 3); mask: bool (h, w). Returns the filtered float map q."""
    p = mask.astype(np.float64)
    if guide == "none":  # control: the eps -> infinity limit (a = 0), i.e. a double box blur, no edges
        box = Box(*p.shape, r)
        return box(box(p))
    if guide == "gray":
        I = np.asarray(Image.fromarray(frame_rgb).convert("L"), np.float64) / 255.0
        return guided_gray(I, p, r, eps)
    return guided_color(frame_rgb.astype(np.float64) / 255.0, p, r, eps)


# ---------------------------------------------------------------- data and scoring

def load_sequence(pred_root, data, seq):
    """Frames 1..n-2 (the scored ones): RGB frame, predicted mask, GT mask, void."""
    gt_dir = os.path.join(data, "Annotations", seq)
    names = sorted(f for f in os.listdir(gt_dir) if f.endswith(".png"))
    gts = [davis_jf.read_ids(os.path.join(gt_dir, f)) for f in names]
    binary = davis_jf.is_binary(gts)
    assert binary, seq
    out = []
    for f, g_raw in zip(names[1:-1], gts[1:-1]):
        g, void = davis_jf.to_objects(g_raw, binary)
        p = davis_jf.read_ids(os.path.join(pred_root, seq, f)) > 0
        rgb = np.asarray(Image.open(os.path.join(data, "JPEGImages", seq, f.replace(".png", ".jpg"))).convert("RGB"))
        out.append((f, rgb, p, g == 1, void))
    return out


def score(masks, frames):
    J = [davis_jf.jaccard(m, g, v) for m, (_, _, _, g, v) in zip(masks, frames)]
    F = [davis_jf.f_measure(m, g, v) for m, (_, _, _, g, v) in zip(masks, frames)]
    return davis_jf.statistics(J)[0], davis_jf.statistics(F)[0]


def mean_jf(per_seq):
    J = float(np.mean([v[0] for v in per_seq.values()]))
    F = float(np.mean([v[1] for v in per_seq.values()]))
    return J, F, (J + F) / 2


# ---------------------------------------------------------------- modes

def cmd_grid(a):
    seqs = a.sequences.split(",")
    guides, rs, epss, thrs = a.guides.split(","), [int(v) for v in a.rs.split(",")], \
        [float(v) for v in a.epss.split(",")], [float(v) for v in a.thrs.split(",")]
    data = {s: load_sequence(a.pred, a.data, s) for s in seqs}
    base = {s: score([fr[2] for fr in data[s]], data[s]) for s in seqs}
    bJ, bF, bJF = mean_jf(base)
    print(f"unrefined: J {bJ:.4f} F {bF:.4f} J&F {bJF:.4f}", flush=True)
    rows = []
    for gd in guides:
        for r in rs:
            for eps in epss:
                qs = {s: [refine(fr[1], fr[2], gd, r, eps) for fr in data[s]] for s in seqs}
                for t in thrs:
                    per = {s: score([q > t for q in qs[s]], data[s]) for s in seqs}
                    J, F, JF = mean_jf(per)
                    rows.append({"guide": gd, "r": r, "eps": eps, "thr": t, "J": J, "F": F, "JF": JF,
                                 "per_seq": {s: list(v) for s, v in per.items()}})
                    print(f"{gd:5s} r={r} eps={eps:g} thr={t:g}: J {J:.4f} F {F:.4f} J&F {JF:.4f} "
                          f"({JF - bJF:+.4f})", flush=True)
    best = max(rows, key=lambda x: x["JF"])
    print(f"best: {best['guide']} r={best['r']} eps={best['eps']:g} thr={best['thr']:g} J&F {best['JF']:.4f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"unrefined": {"J": bJ, "F": bF, "JF": bJF, "per_seq": {s: list(v) for s, v in base.items()}},
                       "rows": rows}, f, indent=1)


def cmd_eval(a):
    seqs = a.sequences.split(",")
    before, after = {}, {}
    for s in seqs:
        frames = load_sequence(a.pred, a.data, s)
        ref = [refine(fr[1], fr[2], a.guide, a.r, a.eps) > a.thr for fr in frames]
        before[s] = score([fr[2] for fr in frames], frames)
        after[s] = score(ref, frames)
        if a.write:
            src = os.path.join(a.pred, s)
            dst = os.path.join(a.write, s)
            os.makedirs(dst, exist_ok=True)
            done = {fr[0]: m for fr, m in zip(frames, ref)}
            for f in sorted(os.listdir(src)):
                im = Image.open(os.path.join(src, f))
                if f in done:
                    out = Image.fromarray(done[f].astype(np.uint8), "P")
                    out.putpalette(im.getpalette())
                    out.save(os.path.join(dst, f))
                else:  # first / last frame: not scored, copied unchanged
                    im.save(os.path.join(dst, f))
    print(f"setting: guide={a.guide} r={a.r} eps={a.eps:g} thr={a.thr:g}")
    print(f"{'sequence':12s} {'J before':>9s} {'J after':>8s} {'F before':>9s} {'F after':>8s}")
    for s in seqs:
        print(f"{s:12s} {before[s][0]:9.4f} {after[s][0]:8.4f} {before[s][1]:9.4f} {after[s][1]:8.4f}")
    bJ, bF, bJF = mean_jf(before)
    aJ, aF, aJF = mean_jf(after)
    print(f"{'mean':12s} {bJ:9.4f} {aJ:8.4f} {bF:9.4f} {aF:8.4f}")
    print(f"J&F before {bJF:.4f}  after {aJF:.4f}  ({aJF - bJF:+.4f})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"setting": {"guide": a.guide, "r": a.r, "eps": a.eps, "thr": a.thr},
                       "before": {s: list(v) for s, v in before.items()},
                       "after": {s: list(v) for s, v in after.items()},
                       "mean_before": [bJ, bF, bJF], "mean_after": [aJ, aF, aJF]}, f, indent=1)


def cmd_time(a):
    frames = load_sequence(a.pred, a.data, a.seq)[: a.n]
    for gd in a.guides.split(","):
        refine(frames[0][1], frames[0][2], gd, a.r, a.eps)  # warm-up (window counts cached)
        ts = []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            for fr in frames:
                _ = refine(fr[1], fr[2], gd, a.r, a.eps) > a.thr
            ts.append((time.perf_counter() - t0) / len(frames) * 1e3)
        h, w = frames[0][2].shape
        print(f"{gd:5s} r={a.r} eps={a.eps:g} {w}x{h}: {min(ts):.1f} ms/frame (best of {a.reps}; "
              f"all {', '.join(f'{t:.1f}' for t in ts)}), {len(frames)} frames, float64 numpy")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    for name in ["grid", "eval", "time"]:
        p = sub.add_parser(name)
        p.add_argument("--data", default=DATA)
        p.add_argument("--pred", default="out/gf/dev/pred")
        p.add_argument("--sequences", default=",".join(DEV))
        p.add_argument("--json")
        if name == "grid":
            p.add_argument("--guides", default="gray,color")
            p.add_argument("--rs", default="2,4,8")
            p.add_argument("--epss", default="1e-4,1e-3,1e-2")
            p.add_argument("--thrs", default="0.4,0.5,0.6")
        else:
            p.add_argument("--guide", default="gray", choices=["gray", "color", "none"])
            p.add_argument("--r", type=int, default=4)
            p.add_argument("--eps", type=float, default=1e-3)
            p.add_argument("--thr", type=float, default=0.5)
        if name == "eval":
            p.add_argument("--write", help="save refined palette PNGs under DIR/<seq>/")
        if name == "time":
            p.add_argument("--seq", default="bear")
            p.add_argument("--n", type=int, default=40)
            p.add_argument("--reps", type=int, default=3)
            p.add_argument("--guides", default="gray,color")
    a = ap.parse_args()
    {"grid": cmd_grid, "eval": cmd_eval, "time": cmd_time}[a.mode](a)


if __name__ == "__main__":
    main()
