"""Prompted segmentation mIoU of an exported model with ONNX Runtime (the Python cross-check of
`vprompt eval prompts`): every instance (bbox >= min-size on both sides) prompted by its box or one click at
its most interior pixel; the candidate with the highest predicted IoU among the K levels is the answer.
Diagnostics beside it: `*_best` the better of the K levels (an oracle), `*_stab` the choice by predicted IoU x
SAM's stability score, `click2` the click's mask box decoded again as a box.

python3 eval_prompts.py --model ../../models/vprompt-lite0 --gt coco.json --images DIR [--files a.jpg,b.jpg]
"""
import argparse
import contextlib
import io
import json
import os

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from pycocotools.coco import COCO
from scipy import ndimage


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--gt", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--split", default="all", help="all | eval (the 64 COCO128 files that sort last)")
    ap.add_argument("--min-size", type=int, default=32)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--diag", default="", help="save per-click-level (row, level, pred IoU, IoU, area ratio, recall) to this .npy")
    args = ap.parse_args()
    spec = yaml.safe_load(open(os.path.join(args.model, "model.yaml")))
    S = spec["input"]["size"]
    G, K = spec["queries"]["generic"], spec["queries"]["levels"]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    enc = ort.InferenceSession(os.path.join(args.model, "encoder.onnx"), so, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(os.path.join(args.model, "decoder.onnx"), so, providers=["CPUExecutionProvider"])
    dec_in = [i.name for i in dec.get_inputs()]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(args.gt)
    imgs = sorted(coco.imgs.values(), key=lambda im: im["file_name"])
    if args.split == "eval":
        imgs = imgs[len(imgs) // 2:]
    if args.limit:
        imgs = imgs[: args.limit]
    kinds = ("box", "click", "filled", "box_best", "click_best", "box_stab", "click_stab", "click2")
    res = {k: [] for k in kinds + ("area",)}
    for im in imgs:
        anns = [a for a in coco.imgToAnns[im["id"]] if not a.get("iscrowd", 0)]
        anns = [a for a in anns if a["bbox"][2] >= args.min_size and a["bbox"][3] >= args.min_size]
        if not anns:
            continue
        rgb = np.asarray(Image.open(os.path.join(args.images, im["file_name"])).convert("RGB"))
        H, W = rgb.shape[:2]
        s = S / max(H, W)
        nh, nw = round(H * s), round(W * s)
        x = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR), np.float32) / 255.0
        x = (x - 0.5) / 0.5
        inp = np.zeros((1, 3, S, S), np.float32)
        inp[0, :, :nh, :nw] = x.transpose(2, 0, 1)
        f = enc.run(None, {"image": inp})
        feats = dict(zip(["feat8", "feat16", "feat32", "mask_feat"], f))
        rows = []
        gts = []
        for a in anns:
            m = coco.annToMask(a).astype(bool)
            if not m.any():
                continue
            ys, xs = np.nonzero(m)
            x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
            box = [(x0 + x1) / 2 * s / S, (y0 + y1) / 2 * s / S, (x1 - x0) * s / S, (y1 - y0) * s / S]
            dt = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
            cy, cx = np.unravel_index(np.argmax(dt), dt.shape)
            click = [(cx + 0.5) * s / S, (cy + 0.5) * s / S, 0.0, 0.0]
            rows += [box, click]
            filled = np.zeros_like(m)
            filled[y0:y1, x0:x1] = True
            gts.append((m, filled))
        if not gts:
            continue
        r = np.array(rows, np.float32)
        if "points" in dec_in:
            inputs = {k: v for k, v in feats.items() if k in dec_in}
            inputs["points"] = r[:, :2].copy()
        else:
            inputs = {k: v for k, v in feats.items() if k in dec_in}
            inputs["anchors"] = r
        iou, boxes, emb, me = dec.run(None, inputs)
        iou, me = iou[0, G:].reshape(-1, K), me[0, G:].reshape(len(r), K, -1)
        mf = torch.from_numpy(f[3][0])

        def grid_logits(embed):
            return torch.einsum("m,mhw->hw", torch.from_numpy(embed), mf)

        def frame_mask(lg):
            """stride-4 logits -> binary mask at the image's size (input crop, then the image's size)."""
            lg = F.interpolate(lg[None, None], size=(S, S), mode="bilinear", align_corners=False)[0, 0, :nh, :nw]
            lg = F.interpolate(lg[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
            return (lg > 0).numpy()

        def iou_with(p, m):
            return (p & m).sum() / max(1, (p | m).sum())

        for n, (m, filled) in enumerate(gts):
            for kind, row in (("box", 2 * n), ("click", 2 * n + 1)):
                ious, stab = [], []
                for k in range(K):
                    lg = grid_logits(me[row, k])
                    # SAM's stability score: cells above logit +1 among those above -1
                    stab.append(float((lg > 1).sum()) / max(1, int((lg > -1).sum())))
                    p = frame_mask(lg)
                    ious.append(iou_with(p, m))
                    if kind == "click":
                        res.setdefault("diag", []).append((n, k, float(iou[row, k]), ious[-1], p.sum() / m.sum(), (p & m).sum() / m.sum()))
                res[kind].append(ious[int(np.argmax(iou[row]))])
                res[kind + "_best"].append(max(ious))  # oracle over the K levels (diagnostic)
                res[kind + "_stab"].append(ious[int(np.argmax(iou[row] * np.array(stab)))])  # choice rule experiment
            # refinement: the box of the click's chosen mask (model-input cells) as a box row, with the click
            row = 2 * n + 1
            lg = grid_logits(me[row, int(np.argmax(iou[row]))])
            ys_, xs_ = np.nonzero((lg > 0).numpy())
            if len(ys_):
                hh, ww = lg.shape
                b2 = [(xs_.min() + xs_.max() + 1) / 2 / ww, (ys_.min() + ys_.max() + 1) / 2 / hh,
                      (xs_.max() + 1 - xs_.min()) / ww, (ys_.max() + 1 - ys_.min()) / hh]
                inputs2 = dict(inputs)
                inputs2["anchors"] = np.array([b2], np.float32)
                i2, _, _, me2 = dec.run(None, inputs2)
                k2 = int(np.argmax(i2[0, G:]))
                res["click2"].append(iou_with(frame_mask(grid_logits(me2[0, G + k2])), m))
            else:
                res["click2"].append(0.0)
            res["filled"].append(iou_with(filled, m))
            res["area"].append(m.sum())
    area = np.array(res["area"])
    buckets = {"small": area < 32 ** 2, "medium": (area >= 32 ** 2) & (area < 96 ** 2), "large": area >= 96 ** 2,
               "all": area >= 0}
    out = {}
    for b, sel in buckets.items():
        out[b] = {"n": int(sel.sum())}
        for kind in kinds:
            v = np.array(res[kind])[sel]
            out[b][kind] = round(float(v.mean()), 4) if len(v) else None
    print(json.dumps(out, indent=1))
    if args.diag:
        np.save(args.diag, np.array(res.get("diag", [])))


if __name__ == "__main__":
    main()
