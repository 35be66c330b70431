"""DAVIS-2016 dev-val J&F of an exported model (ONNX Runtime), semi-supervised video propagation.

The first frame's ground-truth mask is the prompt. Per frame: encode, decode the interactive queries,
match them against the memory (first prompt pinned + up to 8 recent confident predictions, each
re-encoded as a prompt on its own frame, averaged and re-normalised), keep predicted IoU > --iou-thr,
drop masks of <= 50 px, softmax over match scores, top-1. First and last frames are excluded.

python3 eval_davis.py --model ../../models/vprompt-lite0
"""
import argparse
import collections
import json
import os
import time

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
import yaml

from vp.data import DAVIS_DEV_VAL, davis_root, letterbox, load_mask, load_rgb
from vp.metrics import f_score, j_score


def grid(g):
    c = (np.arange(g, dtype=np.float32) + 0.5) / g
    yy, xx = np.meshgrid(c, c, indexing="ij")
    return np.stack((xx.reshape(-1), yy.reshape(-1)), -1).astype(np.float32)


class Model:
    def __init__(self, d, threads=2):
        self.cfg = yaml.safe_load(open(os.path.join(d, "model.yaml")))
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        self.s = {g: ort.InferenceSession(os.path.join(d, v["file"]), so, providers=["CPUExecutionProvider"])
                  for g, v in self.cfg["graphs"].items()}
        self.S = self.cfg["input"]["size"]
        self.G = self.cfg["queries"]["generic"]
        self.K = self.cfg["queries"]["levels"]
        self.points = grid(self.cfg["queries"]["grid"])
        self.scale = self.cfg["classifier"]["logit_scale"]
        self.ins = {g: [i.name for i in s.get_inputs()] for g, s in self.s.items()}

    def encode(self, img):
        x, sc, (nh, nw) = letterbox(img, self.S)
        f = self.s["encoder"].run(None, {"image": x[None].numpy()})
        feats = dict(zip(["feat8", "feat16", "feat32", "mask_feat"], f))
        return feats, (nh, nw)

    def decode(self, feats):
        inp = {k: feats[k] for k in self.ins["decoder"] if k != "points"}
        inp["points"] = self.points
        iou, boxes, emb, me = self.s["decoder"].run(None, inp)
        return iou[0], boxes[0], emb[0], me[0]

    def prompt(self, feats, mask_in):
        inp = {k: feats[k] for k in self.ins["prompt_encoder"] if k != "prompt_mask"}
        inp["prompt_mask"] = mask_in[None, None].astype(np.float32)
        return self.s["prompt_encoder"].run(None, inp)[0][0]

    def mask_in(self, m, nh, nw):
        """frame mask (H,W) -> model-input mask (S,S) after the letterbox."""
        t = F.interpolate(torch.from_numpy(m.astype(np.float32))[None, None], size=(nh, nw), mode="nearest")[0, 0]
        out = np.zeros((self.S, self.S), np.float32)
        out[:nh, :nw] = t.numpy()
        return out

    def masks(self, me, mask_feat, q, nh, nw, H, W):
        """logits for queries q -> boolean masks in frame pixels (contract: upsample, crop, resize)."""
        lg = np.einsum("qm,mhw->qhw", me[q], mask_feat[0])
        t = torch.from_numpy(lg)[None]
        t = F.interpolate(t, size=(self.S, self.S), mode="bilinear", align_corners=False)[:, :, :nh, :nw]
        t = F.interpolate(t, size=(H, W), mode="bilinear", align_corners=False)[0]
        return (t > 0).numpy()


def propagate(model, frames, first_mask, iou_thr=0.5, mem_thr=0.7, mem_size=8, min_px=50):
    """frames: list of [3,H,W] tensors; returns list of bool masks (frame 0 = the given mask)."""
    H, W = first_mask.shape
    feats, (nh, nw) = model.encode(frames[0])
    e0 = model.prompt(feats, model.mask_in(first_mask, nh, nw))
    recent = collections.deque(maxlen=mem_size)
    out = [first_mask.astype(bool)]
    G = model.G
    for t in range(1, len(frames)):
        feats, (nh, nw) = model.encode(frames[t])
        iou, boxes, emb, me = model.decode(feats)
        e = np.mean([e0] + list(recent), 0)
        e = e / (np.linalg.norm(e) + 1e-12)
        s = model.scale * emb[G:] @ e
        piou = iou[G:]
        cand = np.nonzero(piou > iou_thr)[0]
        if len(cand) == 0:
            cand = np.arange(len(s))
        order = cand[np.argsort(-s[cand])][:8]
        ms = model.masks(me, feats["mask_feat"], G + order, nh, nw, H, W)
        pick = None
        for j, q in enumerate(order):
            if ms[j].sum() > min_px:
                pick = j
                break
        if pick is None:
            pred = np.zeros((H, W), bool)
            conf = 0.0
        else:
            pred = ms[pick]
            conf = float(piou[order[pick]])
        out.append(pred)
        if pick is not None and conf > mem_thr:
            recent.append(model.prompt(feats, model.mask_in(pred, nh, nw)))
    return out


def load_seq(seq):
    root = davis_root()
    names = sorted(os.listdir(os.path.join(root, "JPEGImages", seq)))
    frames = [load_rgb(os.path.join(root, "JPEGImages", seq, n)) for n in names]
    gts = [load_mask(os.path.join(root, "Annotations", seq, n[:-4] + ".png")).numpy() for n in names]
    return frames, gts


def score(preds, gts):
    J = [j_score(p, g) for p, g in zip(preds[1:-1], gts[1:-1])]
    Fm = [f_score(p, g) for p, g in zip(preds[1:-1], gts[1:-1])]
    return float(np.mean(J)), float(np.mean(Fm))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="../../models/vprompt-lite0")
    ap.add_argument("--seqs", default=",".join(DAVIS_DEV_VAL))
    ap.add_argument("--iou-thr", type=float, nargs="+", default=[0.5])
    ap.add_argument("--mem-thr", type=float, nargs="+", default=[0.7])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = Model(args.model, args.threads)
    seqs = args.seqs.split(",")
    data = {s: load_seq(s) for s in seqs}
    results = []
    for it in args.iou_thr:
        for mt in args.mem_thr:
            t0 = time.time()
            per = {}
            nfr = 0
            for s in seqs:
                frames, gts = data[s]
                preds = propagate(model, frames, gts[0], it, mt)
                J, Fm = score(preds, gts)
                per[s] = dict(J=round(J, 4), F=round(Fm, 4), JF=round((J + Fm) / 2, 4))
                nfr += len(frames)
            mJ = float(np.mean([v["J"] for v in per.values()]))
            mF = float(np.mean([v["F"] for v in per.values()]))
            r = dict(iou_thr=it, mem_thr=mt, J=round(mJ, 4), F=round(mF, 4), JF=round((mJ + mF) / 2, 4), per_seq=per,
                     seconds=round(time.time() - t0, 1), frames=nfr)
            print(json.dumps(r), flush=True)
            results.append(r)
    if args.json:
        json.dump(results, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
