"""Training-free baseline for DAVIS-2016 video propagation (ImageNet EfficientNet-Lite0 features only).

Prompt = masked average of encoder features (prototype). Target = cosine-similarity map between the
prototype and every feature vector -> threshold -> mask. For video, the prototype of the previous
frame's predicted mask is added to the first frame's prototype (then re-normalised).
Features: backbone strides 8/16/32 (40/112/320 channels), each L2-normalised, upsampled to stride 8
and concatenated. Same letterbox and normalisation as the model contract.

python3 baseline.py --thr 0.5 0.6 0.7 --seqs <train seqs>     # pick the threshold on train sequences
python3 baseline.py --thr 0.6                                   # dev-val J&F
"""
import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from eval_davis import load_seq, score
from vp.data import DAVIS_DEV_VAL, letterbox
from vp.model import EfficientNetLite0, load_imagenet


class Feats:
    def __init__(self, S=320):
        self.bb = EfficientNetLite0().eval()
        load_imagenet(self.bb)
        self.S = S

    @torch.no_grad()
    def __call__(self, img):
        x, sc, (nh, nw) = letterbox(img, self.S)
        _, f8, f16, f32 = self.bb(x[None])
        h, w = f8.shape[-2:]
        fs = [F.normalize(f8, dim=1),
              F.normalize(F.interpolate(f16, size=(h, w), mode="bilinear", align_corners=False), dim=1),
              F.normalize(F.interpolate(f32, size=(h, w), mode="bilinear", align_corners=False), dim=1)]
        return torch.cat(fs, 1)[0], (nh, nw)


def prototype(feat, mask, nh, nw, S):
    m = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=(nh, nw), mode="nearest")
    full = torch.zeros(1, 1, S, S)
    full[:, :, :nh, :nw] = m
    w = F.adaptive_avg_pool2d(full, feat.shape[-2:])[0, 0]
    if w.sum() <= 0:
        return None
    p = (feat * w).sum((1, 2)) / w.sum()
    return F.normalize(p, dim=0)


def segment(feat, proto, thr, nh, nw, H, W, S):
    sim = torch.einsum("c,chw->hw", proto, F.normalize(feat, dim=0))
    t = F.interpolate(sim[None, None], size=(S, S), mode="bilinear", align_corners=False)[:, :, :nh, :nw]
    t = F.interpolate(t, size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    return (t > thr).numpy()


def propagate(fe, frames, first, thr, use_prev=True):
    """frames: list of images or of cached fe() outputs."""
    H, W = first.shape
    enc = (lambda x: x) if isinstance(frames[0], tuple) else fe
    f0, (nh, nw) = enc(frames[0])
    p0 = prototype(f0, first, nh, nw, fe.S)
    out = [first.astype(bool)]
    prev = None
    for t in range(1, len(frames)):
        f, (nh, nw) = enc(frames[t])
        p = p0 if (prev is None or not use_prev) else F.normalize(p0 + prev, dim=0)
        m = segment(f, p, thr, nh, nw, H, W, fe.S)
        out.append(m)
        if use_prev:
            q = prototype(f, m, nh, nw, fe.S)
            prev = q if q is not None else prev
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", default=",".join(DAVIS_DEV_VAL))
    ap.add_argument("--thr", type=float, nargs="+", default=[0.6])
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--no-prev", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    fe = Feats(args.size)
    seqs = args.seqs.split(",")
    data = {}
    for s in seqs:  # encode every frame once; thresholds re-use the features
        frames, gts = load_seq(s)
        data[s] = ([fe(f) for f in frames], gts)
    for thr in args.thr:
        t0 = time.time()
        per = {}
        for s in seqs:
            frames, gts = data[s]
            J, Fm = score(propagate(fe, frames, gts[0], thr, not args.no_prev), gts)
            per[s] = dict(J=round(J, 4), F=round(Fm, 4), JF=round((J + Fm) / 2, 4))
        mJ = float(np.mean([v["J"] for v in per.values()]))
        mF = float(np.mean([v["F"] for v in per.values()]))
        print(json.dumps(dict(thr=thr, prev=not args.no_prev, J=round(mJ, 4), F=round(mF, 4), JF=round((mJ + mF) / 2, 4),
                              per_seq=per, seconds=round(time.time() - t0, 1))), flush=True)


if __name__ == "__main__":
    main()
