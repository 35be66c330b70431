"""Space-time memory readout prototype on cached encoder features (extract.py), DAVIS-2016 dev-val.

Per frame t, every grid cell's feature (L2-normalised) is compared with the cells of memory frames
(frame 0 with its given mask, and the last `--recent` predicted frames) inside a window of `--radius`
cells; the top `--k` affinities, softmaxed at temperature `--tau`, average the memory cells' labels
(object share of the cell). The probability map goes up to frame pixels. With `--fuse DIR` the map is
averaged with a vprompt prediction (binary PNGs, weight `--fuse-weight` on vprompt's mask), and the fused
result is what the memory remembers. Prints J, F, J&F per sequence (tools/crosscheck/davis_jf.py rules).
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as Fn
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "crosscheck"))
import davis_jf  # noqa: E402

SEQS = ["bear", "car-turn", "dance-jump", "kite-walk", "soccerball", "stroller"]


def grid_labels(mask, sw, sh, gw, gh, cell):
    """Object share of each grid cell: the frame mask resized to the letterbox, pooled per cell."""
    m = Image.fromarray((mask * 255).astype(np.uint8)).resize((sw, sh), Image.BILINEAR)
    canvas = np.zeros((gh * cell, gw * cell), np.float32)
    canvas[:sh, :sw] = np.asarray(m, np.float32)[: gh * cell, : gw * cell] / 255.0
    return canvas.reshape(gh, cell, gw, cell).mean(axis=(1, 3))


def to_frame(p, sw, sh, fw, fh, cell):
    """Grid probabilities -> frame pixels (bilinear, cells centred)."""
    t = torch.from_numpy(p)[None, None]
    up = Fn.interpolate(t, scale_factor=cell, mode="bilinear", align_corners=False)[0, 0]
    up = up[:sh, :sw][None, None]
    return Fn.interpolate(up, size=(fh, fw), mode="bilinear", align_corners=False)[0, 0].numpy()


def window(gh, gw, radius):
    ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    ys, xs = ys.ravel(), xs.ravel()
    far = (np.abs(ys[:, None] - ys[None, :]) > radius) | (np.abs(xs[:, None] - xs[None, :]) > radius)
    return torch.from_numpy(far)


def features(z, which):
    mf = torch.from_numpy(z["mask_feat"].astype(np.float32))
    f8 = torch.from_numpy(z["feat8"].astype(np.float32))
    if which == "mask":
        f, cell = mf, 4
    elif which == "f8":
        f, cell = f8, 8
    elif which == "cat":
        up = Fn.interpolate(f8, size=mf.shape[2:], mode="nearest")
        f, cell = torch.cat([Fn.normalize(mf, dim=1), Fn.normalize(up, dim=1)], 1), 4
    elif which == "cat8":
        down = Fn.adaptive_avg_pool2d(mf, f8.shape[2:])
        f, cell = torch.cat([Fn.normalize(down, dim=1), Fn.normalize(f8, dim=1)], 1), 8
    f = Fn.normalize(f, dim=1)
    return f, cell


def run_sequence(seq, a):
    z = np.load(os.path.join(a.feats, seq + ".npz"))
    f, cell = features(z, a.features)
    n, c, gh, gw = f.shape
    sw, sh = (int(v) for v in z["scaled"])
    names = [str(s) for s in z["names"]]
    gt_dir = os.path.join(a.data, "Annotations", seq)
    gts = []
    for nm in names:
        g, void = davis_jf.to_objects(davis_jf.read_ids(os.path.join(gt_dir, nm.replace(".jpg", ".png"))), True)
        gts.append((g == 1, void))
    fh, fw = gts[0][0].shape
    q = f.reshape(n, c, gh * gw).transpose(1, 2)  # n, cells, c
    far = window(gh, gw, a.radius)
    mem = [(0, torch.from_numpy(grid_labels(gts[0][0].astype(np.float32), sw, sh, gw, gh, cell)).ravel())]
    J, F = [], []
    for t in range(1, n):
        vals, labs = [], []
        for (m, lab) in mem:
            aff = q[t] @ q[m].T
            aff.masked_fill_(far, -2.0)
            v, i = aff.topk(a.k, dim=1)
            vals.append(v)
            labs.append(lab[i])
        v, l = torch.cat(vals, 1), torch.cat(labs, 1)
        v, i = v.topk(a.k, dim=1)
        l = l.gather(1, i)
        w = torch.softmax(v / a.tau, dim=1)
        p = (w * l).sum(1).reshape(gh, gw).numpy()
        pf = to_frame(p, sw, sh, fw, fh, cell)
        if a.fuse:
            vp = np.asarray(Image.open(os.path.join(a.fuse, seq, names[t].replace(".jpg", ".png")))) > 0
            pf = (1 - a.fuse_weight) * pf + a.fuse_weight * vp.astype(np.float32)
        pred = pf > 0.5
        lab = torch.from_numpy(grid_labels(pred.astype(np.float32), sw, sh, gw, gh, cell)).ravel()
        mem = [mem[0]] + (mem[1:] + [(t, lab)])[-a.recent:] if a.recent > 0 else [mem[0]]
        if 0 < t < n - 1:
            g, void = gts[t]
            J.append(davis_jf.jaccard(pred, g, void))
            F.append(davis_jf.f_measure(pred, g, void))
    return float(np.mean(J)), float(np.mean(F))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--feats", default="out/readout/feats")
    ap.add_argument("--data", default="../shared/data/davis2016-train-240p")
    ap.add_argument("--features", default="mask", choices=["mask", "f8", "cat", "cat8"])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--tau", type=float, default=0.05)
    ap.add_argument("--radius", type=int, default=12)
    ap.add_argument("--recent", type=int, default=7)
    ap.add_argument("--fuse", default="")
    ap.add_argument("--fuse-weight", type=float, default=0.5)
    ap.add_argument("--seqs", default=",".join(SEQS))
    a = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for seq in a.seqs.split(","):
        j, fm = run_sequence(seq, a)
        rows.append((seq, j, fm))
        print(f"  {seq:12s} J {j:.3f} F {fm:.3f} J&F {(j + fm) / 2:.3f}", flush=True)
    j = np.mean([r[1] for r in rows])
    fm = np.mean([r[2] for r in rows])
    print(f"{vars(a)}\nmean J {j:.4f} F {fm:.4f} J&F {(j + fm) / 2:.4f}")


if __name__ == "__main__":
    main()
