"""Classifies extract.py's proposals of the COCO128 evaluation half against the pool half's ground-truth
descriptors and scores them with pycocotools (mask AP over the classes of the pool half).

    python3 ../coco128/split.py --out split && python3 classify.py --feats feats.pt --split split --feat b32 --temp 10
"""
import os, sys, json, numpy as np, torch, torch.nn.functional as F, argparse, io, contextlib
from pycocotools import mask as mu
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
torch.set_num_threads(1)
ap = argparse.ArgumentParser()
ap.add_argument("--feats", required=True)
ap.add_argument("--split", required=True, help="the folder tools/coco128/split.py wrote")
ap.add_argument("--feat", default="b32", help="maps joined by +: f8 f16 f32 mf b16 b32 h i16 i32 ih")
ap.add_argument("--cls", default="proto")  # proto | logreg
ap.add_argument("--iou-min", type=float, default=0.5)
ap.add_argument("--nms", type=float, default=0.7)
ap.add_argument("--top", type=int, default=100)
ap.add_argument("--neg-iou", type=float, default=0.3)
ap.add_argument("--temp", type=float, default=20.0)
ap.add_argument("--l2", type=float, default=1.0)
ap.add_argument("--alpha", type=float, default=1.0)
ap.add_argument("--k", type=int, default=3)
ap.add_argument("--min-score", type=float, default=0.01)
ap.add_argument("--cal", type=float, default=0.0)
ap.add_argument("--knn", type=int, default=0)
ap.add_argument("--bgc", type=float, default=-2)
ap.add_argument("--bgw", type=float, default=0.0)
a = ap.parse_args()
data = torch.load(a.feats, weights_only=False)
ids = sorted(data, key=lambda i: data[i]["file"])
pool, ev = ids[:64], ids[64:]
def desc(d, which):
    parts = []
    for n in which.split("+"):
        x = torch.from_numpy(np.asarray(d[n], np.float32))
        parts.append(F.normalize(x, dim=-1))
    return F.normalize(torch.cat(parts, -1), dim=-1)
def proposals(d):
    keep = np.nonzero(d["iou"] >= a.iou_min)[0]
    order = keep[np.argsort(-d["iou"][keep])]
    m = torch.from_numpy(d["logits"][order].astype(np.float32) > 0).flatten(1).float()
    inter = m @ m.T; ar = m.sum(1); u = ar[:, None] + ar[None] - inter
    iou = inter / u.clamp(min=1)
    sel = []
    for i in range(len(order)):
        if all(iou[i, j] <= a.nms for j in sel):
            sel.append(i)
        if len(sel) >= a.top: break
    return order[sel]
def gt_iou(d, idx):
    m = torch.from_numpy(d["logits"][idx].astype(np.float32) > 0).flatten(1).float()
    g = torch.from_numpy((d["gt80"] > 0.5).astype(np.float32)).flatten(1)
    if len(g) == 0: return torch.zeros(len(idx), 0)
    inter = m @ g.T; u = m.sum(1)[:, None] + g.sum(1)[None] - inter
    return inter / u.clamp(min=1)
# training set
cats = sorted({int(c) for i in pool for c in data[i]["gt_cat"]})
X, Y = [], []
negs = []  # (desc, set of cats it overlaps)
for i in pool:
    d = data[i]
    if len(d["gt_cat"]):
        X.append(desc(d["gd"], a.feat)); Y += [int(c) for c in d["gt_cat"]]
    idx = proposals(d)
    G = gt_iou(d, idx)
    pdx = desc({k: v[[list(d["q"]).index(d["q"][j]) for j in idx]] if False else v[idx] for k, v in d["pd"].items()}, a.feat)
    for r in range(len(idx)):
        over = {int(d["gt_cat"][g]) for g in range(G.shape[1]) if G[r, g] >= a.neg_iou}
        negs.append((pdx[r], over))
X = torch.cat(X); Y = torch.tensor(Y)
N = torch.stack([n[0] for n in negs])
print(f"exemplars {len(X)}, classes {len(cats)}, pool proposals {len(N)}", file=sys.stderr)
C = len(cats)
if a.cls == "proto":
    P = F.normalize(torch.stack([X[Y == c].mean(0) for c in cats]), dim=-1)
    Nn = F.normalize(N, dim=-1)
    thr = torch.full((C,), -1.0)
    if a.cal > 0:
        cosn = Nn @ P.T
        for k, c in enumerate(cats):
            ok = torch.tensor([c not in over for _, over in negs])
            if ok.any(): thr[k] = torch.quantile(cosn[ok, k], a.cal)
    def score(D):
        z = a.temp * D @ P.T
        if a.knn > 0:
            S = D @ X.T
            z = torch.stack([S[:, Y == c].topk(min(a.knn, int((Y == c).sum())), -1).values.mean(-1) for c in cats], -1) * a.temp
        if a.bgw > 0:
            nb = a.temp * (D @ Nn.T).topk(min(a.k * 0 + 5, len(Nn)), -1).values.mean(-1, keepdim=True) * a.bgw
            return torch.softmax(torch.cat([z, nb], -1), -1)[:, :-1]
        if a.bgc > -1:
            z = torch.cat([z, torch.full_like(z[:, :1], a.temp * a.bgc)], -1)
            p = torch.softmax(z, -1)[:, :-1]
        else:
            p = torch.softmax(z, -1)
        return p * ((D @ P.T) >= thr).float()
    # background: a proposal is scored by class prob; bg evidence by nearest negative (of that class) similarity
elif a.cls == "logreg":
    W = torch.zeros(C, X.shape[1], requires_grad=True); b = torch.zeros(C, requires_grad=True)
    # per class: positives = exemplars of c; negatives = exemplars of other classes + proposals not overlapping c
    T = torch.zeros(len(X) + len(N), C)
    for k, c in enumerate(cats):
        T[:len(X), k] = (Y == c).float()
    A = torch.cat([X, N])
    M = torch.ones_like(T)
    for r, (_, over) in enumerate(negs):
        for k, c in enumerate(cats):
            if c in over: M[len(X) + r, k] = 0  # overlapping proposals: ignored for that class
    pos = (T * M).sum(0); neg = ((1 - T) * M).sum(0)
    wpos = 0.5 / pos.clamp(min=1); wneg = a.bgw * 0.5 / neg.clamp(min=1)
    Wt = M * (T * wpos + (1 - T) * wneg)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=200, line_search_fn="strong_wolfe")
    def closure():
        opt.zero_grad()
        z = A @ W.T + b
        l = (F.binary_cross_entropy_with_logits(z, T, reduction="none") * Wt).sum() / C + a.l2 * 0.5 * (W ** 2).sum() / C * 1e-2
        l.backward(); return l
    opt.step(closure)
    W = W.detach(); b = b.detach()
    def score(D):
        return torch.sigmoid(D @ W.T + b)
res = []
for i in ev:
    d = data[i]
    idx = proposals(d)
    if len(idx) == 0: continue
    D = desc({k: v[idx] for k, v in d["pd"].items()}, a.feat)
    S = score(D)
    q = torch.from_numpy(d["iou"][idx]).clamp(0, 1) ** a.alpha
    dets = []
    for r in range(len(idx)):
        top = torch.topk(S[r], min(a.k, C))
        for p, k in zip(top.values.tolist(), top.indices.tolist()):
            sc = p * float(q[r])
            if sc >= a.min_score: dets.append((sc, cats[k], r))
    # per class nms on masks
    lg = torch.from_numpy(d["logits"][idx].astype(np.float32))
    bm = (lg > 0).flatten(1).float()
    dets.sort(key=lambda t: -t[0])
    kept = []
    for sc, c, r in dets:
        ok = True
        for sc2, c2, r2 in kept:
            if c2 == c:
                inter = (bm[r] * bm[r2]).sum(); u = bm[r].sum() + bm[r2].sum() - inter
                if inter / u > 0.5: ok = False; break
        if ok: kept.append((sc, c, r))
        if len(kept) >= 100: break
    nh, nw = d["nh"], d["nw"]
    up = F.interpolate(lg[None], size=(320, 320), mode="bilinear", align_corners=False)[0][:, :nh, :nw]
    full = F.interpolate(up[None], size=(d["h"], d["w"]), mode="bilinear", align_corners=False)[0] > 0
    for sc, c, r in kept:
        rle = mu.encode(np.asfortranarray(full[r].numpy().astype(np.uint8)))
        rle["counts"] = rle["counts"].decode()
        res.append({"image_id": int(i), "category_id": c, "segmentation": rle, "score": float(sc)})
with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(os.path.join(a.split, "eval.json"))
    dt = gt.loadRes(res)
    E = COCOeval(gt, dt, "segm"); E.params.catIds = [c for c in cats if gt.getAnnIds(catIds=[c])]
    E.evaluate(); E.accumulate(); E.summarize()
img_cats = {i: set(int(c) for c in data[i]["gt_cat"]) for i in ev}
for t in (0.05, 0.1, 0.2):
    sel = [r for r in res if r["score"] >= t]
    fp = sum(r["category_id"] not in img_cats[r["image_id"]] for r in sel)
    print(f"score>={t}: {len(sel)} dets, {fp/max(1,len(sel)):.3f} of a class absent from the image, {len(sel)/len(ev):.1f} per image")
print(f"{vars(a)} dets {len(res)} AP {E.stats[0]:.4f} AP50 {E.stats[1]:.4f} AR100 {E.stats[8]:.4f}")
