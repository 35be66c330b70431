"""Would tiles help the proposals? For every COCO128 evaluation image: the shipped model's proposals on the
whole image and on T x T overlapping crops (each crop letterboxed to the model's 320 input, so small objects
are seen T times larger), joined on a half-resolution canvas by mask NMS, then scored with the class of the
ground-truth instance each overlaps most (an oracle) and ranked by predicted IoU: the mask AP the proposals
allow when classification is perfect. Compare with T = 1 (the whole image only).

    python3 tiles_oracle.py --split split --tiles 2 [--overlap 0.2]
"""
import argparse, io, contextlib, json, os, sys
import numpy as np, torch, torch.nn.functional as F
from pycocotools import mask as mu
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "train"))
from export_local import load, grid_rows
from vp.data import letterbox, load_rgb

ap = argparse.ArgumentParser()
ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "..", "shared", "data"))
ap.add_argument("--split", required=True)
ap.add_argument("--tiles", type=int, default=2)
ap.add_argument("--overlap", type=float, default=0.2)
ap.add_argument("--grid", type=int, default=12)
ap.add_argument("--min-iou", type=float, default=0.3)
ap.add_argument("--nms", type=float, default=0.7)
ap.add_argument("--limit", type=int, default=0)
a = ap.parse_args()
torch.set_num_threads(1)
ck = os.path.join(HERE, "..", "train", "checkpoints")
base, local, _ = load(os.path.join(ck, "last.pt"), os.path.join(ck, "local_run1.pt"))
rows = grid_rows(a.grid)
gt = COCO(os.path.join(a.split, "eval.json"))
pool = json.load(open(os.path.join(a.split, "pool.json")))
cats = sorted({x["category_id"] for x in pool["annotations"]})
D = os.path.join(a.data, "coco128", "train2017")


def proposals(img):
    """img [3,h,w] in [0,1] -> (logits at h x w [P,h,w] > 0 masks, pred iou [P])"""
    x, s, (nh, nw) = letterbox(img, 320)
    with torch.no_grad():
        f8, f16, f32, mf, taps = base.encoder(x[None], with_taps=True)
        m = local.mask_features(f8, mf, f16, taps)
        iou, _, _, me = local.decoder((f8, f16, f32, m), rows[None])
    keep = (iou[0] >= a.min_iou).nonzero()[:, 0]
    if len(keep) == 0:
        return torch.zeros(0, nh, nw), iou[0, keep]
    lg = torch.einsum("qc,chw->qhw", me[0, keep], m[0])
    up = F.interpolate(lg[None], size=(320, 320), mode="bilinear", align_corners=False)[0][:, :nh, :nw]
    return up, iou[0, keep]


res = []
ids = sorted(gt.getImgIds())[: a.limit or None]
for n, iid in enumerate(ids):
    info = gt.loadImgs(iid)[0]
    img = load_rgb(os.path.join(D, info["file_name"]))
    H, W = img.shape[1:]
    ch, cw = H // 2, W // 2  # canvas
    crops = [(0, 0, H, W)]
    T = a.tiles
    if T > 1:
        th, tw = int(H / T * (1 + a.overlap)), int(W / T * (1 + a.overlap))
        for i in range(T):
            for j in range(T):
                y0 = min(H - th, int(i * (H - th) / (T - 1)))
                x0 = min(W - tw, int(j * (W - tw) / (T - 1)))
                crops.append((y0, x0, y0 + th, x0 + tw))
    masks, scores = [], []
    for (y0, x0, y1, x1) in crops:
        up, iou = proposals(img[:, y0:y1, x0:x1])
        if len(iou) == 0:
            continue
        cy0, cx0, cy1, cx1 = y0 // 2, x0 // 2, y1 // 2, x1 // 2
        part = F.interpolate(up[None], size=(cy1 - cy0, cx1 - cx0), mode="bilinear", align_corners=False)[0] > 0
        full = torch.zeros(len(iou), ch, cw, dtype=torch.bool)
        full[:, cy0:cy0 + part.shape[1], cx0:cx0 + part.shape[2]] = part[:, : ch - cy0, : cw - cx0]
        masks.append(full)
        scores.append(iou)
    M = torch.cat(masks)
    S = torch.cat(scores)
    order = torch.argsort(-S)
    flat = M[order].flatten(1).float()
    area = flat.sum(1)
    kept = []
    for i in range(len(order)):
        if area[i] < 4:
            continue
        if kept:
            K = flat[kept]
            inter = K @ flat[i]
            iou = inter / (K.sum(1) + area[i] - inter)
            if (iou > a.nms).any():
                continue
        kept.append(i)
        if len(kept) >= 100:
            break
    anns = gt.loadAnns(gt.getAnnIds(imgIds=iid, iscrowd=False))
    if not anns:
        continue
    G = torch.stack([torch.from_numpy(gt.annToMask(x)).float() for x in anns])
    Gs = F.interpolate(G[None], size=(ch, cw), mode="bilinear", align_corners=False)[0] > 0.5
    g = Gs.flatten(1).float()
    for i in kept:
        m = flat[i]
        inter = g @ m
        iou = inter / (g.sum(1) + m.sum() - inter).clamp(min=1)
        k = int(iou.argmax())
        big = F.interpolate(M[order[i]][None, None].float(), size=(H, W), mode="nearest")[0, 0] > 0.5
        rle = mu.encode(np.asfortranarray(big.numpy().astype(np.uint8)))
        rle["counts"] = rle["counts"].decode()
        res.append({"image_id": iid, "category_id": anns[k]["category_id"], "segmentation": rle,
                    "score": float(S[order[i]])})
    if n % 16 == 0:
        print(n, len(kept), file=sys.stderr, flush=True)
with contextlib.redirect_stdout(io.StringIO()):
    dt = gt.loadRes(res)
    E = COCOeval(gt, dt, "segm")
    E.params.imgIds = ids
    E.params.catIds = [c for c in cats if gt.getAnnIds(catIds=[c])]
    E.evaluate(); E.accumulate(); E.summarize()
print(f"oracle classes, tiles {a.tiles} overlap {a.overlap} grid {a.grid}: {len(res)} dets, AP {E.stats[0]:.4f} "
      f"AP50 {E.stats[1]:.4f} AR100 {E.stats[8]:.4f} (small/medium/large AR {E.stats[9]:.3f}/{E.stats[10]:.3f}/{E.stats[11]:.3f})")
