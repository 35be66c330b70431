"""Prototype of `job.focus` (src/decode/focus.rs) with ONNX Runtime: every click of `vprompt eval prompts` decoded on
the whole image and on square crops of 0.7/0.5/0.35/0.2 of its long side; every candidate's predicted IoU, stability,
cut-off flag, true IoU and the pairwise IoUs of the candidates are saved, and `rules` scores choice rules on them.

MODEL=models/vprompt-lite0 python3 tools/focus_proto/candidates.py dump GT.json IMAGES eval|pool|all OUT.pkl
python3 tools/focus_proto/candidates.py rules A.pkl [B.pkl]
python3 tools/focus_proto/candidates.py priors A.pkl [B.pkl]   # the runtime rule + size priors (min crop, area)
Splits as `vprompt eval prompts --split`: images sorted by file name, `pool` the first half, `eval` the rest.
Crop windows as `focus::window` (click at pixel centre, floor/ceil, clipped). Per candidate also: `win` (crop
x0,y0,x1,y1), `inside` (click in mask), `cdist` (click to mask centroid / sqrt(area)), `mlogit` (mean logit
inside the mask); per record `click` (x, y pixel).
(pip: onnxruntime numpy pillow scipy pycocotools pyyaml)
"""
import contextlib, io, json, os, pickle, sys
import numpy as np, onnxruntime as ort, yaml
from PIL import Image
from pycocotools.coco import COCO
from scipy import ndimage

MODEL = os.environ.get("MODEL", "models/vprompt-lite0")
spec = yaml.safe_load(open(os.path.join(MODEL, "model.yaml")))
S = spec["input"]["size"]; G, K = spec["queries"]["generic"], spec["queries"]["levels"]
so = ort.SessionOptions(); so.intra_op_num_threads = 1
enc = ort.InferenceSession(os.path.join(MODEL, "encoder.onnx"), so, providers=["CPUExecutionProvider"])
dec = ort.InferenceSession(os.path.join(MODEL, "decoder.onnx"), so, providers=["CPUExecutionProvider"])
dec_in = [i.name for i in dec.get_inputs()]
enc_out = [o.name for o in enc.get_outputs()]

def encode(rgb):
    H, W = rgb.shape[:2]; s = S / max(H, W); nh, nw = max(1, round(H * s)), max(1, round(W * s))
    x = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR), np.float32) / 255.0
    x = (x - 0.5) / 0.5
    inp = np.zeros((1, 3, S, S), np.float32); inp[0, :, :nh, :nw] = x.transpose(2, 0, 1)
    f = dict(zip(enc_out, enc.run(None, {"image": inp})))
    return f, s, nh, nw

def decode(f, rows):
    inputs = {k: v for k, v in f.items() if k in dec_in}
    inputs["anchors"] = np.array(rows, np.float32)
    iou, boxes, emb, me = dec.run(None, inputs)
    return iou[0, G:].reshape(len(rows), K), me[0, G:].reshape(len(rows), K, -1)

def frame_logits(f, embed, nh, nw, H, W):
    mf = f["mask_feat"][0]
    lg = np.einsum("m,mhw->hw", embed, mf)
    lg = np.asarray(Image.fromarray(lg.astype(np.float32)).resize((S, S), Image.BILINEAR))[:nh, :nw]
    return np.asarray(Image.fromarray(np.ascontiguousarray(lg)).resize((W, H), Image.BILINEAR))

def iou_with(p, m): return (p & m).sum() / max(1, (p | m).sum())

def crop_of(b, H, W, margin, minside):
    x0, y0, x1, y1 = b; w, h = x1 - x0, y1 - y0
    side_w = max(w * (1 + 2 * margin), minside); side_h = max(h * (1 + 2 * margin), minside)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    cx0 = int(max(0, np.floor(cx - side_w / 2))); cx1 = int(min(W, np.ceil(cx + side_w / 2)))
    cy0 = int(max(0, np.floor(cy - side_h / 2))); cy1 = int(min(H, np.ceil(cy + side_h / 2)))
    return cx0, cy0, cx1, cy1

def best(iou, me, rows_idx):
    cands = [(iou[r, k], r, k) for r in rows_idx for k in range(K)]
    return max(cands)

FRACS = (0.7, 0.5, 0.35, 0.2)
def dump():
    gt, images, split, out = sys.argv[2:6]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(gt)
    imgs = sorted(coco.imgs.values(), key=lambda im: im["file_name"])
    if split == "eval": imgs = imgs[len(imgs) // 2:]
    elif split == "pool": imgs = imgs[: len(imgs) // 2]
    elif split != "all": sys.exit(f"split {split!r}: eval, pool or all")
    recs = []
    for im in imgs:
        anns = [a for a in coco.imgToAnns[im["id"]] if not a.get("iscrowd", 0) and a["bbox"][2] >= 32 and a["bbox"][3] >= 32]
        if not anns: continue
        rgb = np.asarray(Image.open(os.path.join(images, im["file_name"])).convert("RGB"))
        H, W = rgb.shape[:2]; L = max(H, W)
        f, s, nh, nw = encode(rgb)
        crops = {1.0: (f, s, nh, nw, 0, 0, W, H)}
        for a in anns:
            m = coco.annToMask(a).astype(bool)
            if not m.any(): continue
            dt = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
            cy, cx = np.unravel_index(np.argmax(dt), dt.shape)
            cands = []
            for frac in (1.0,) + FRACS:
                if frac == 1.0:
                    f2, s2, nh2, nw2, c0, r0, c1, r1 = crops[1.0]
                else:
                    side = frac * L; px, py = cx + 0.5, cy + 0.5
                    c0 = int(min(max(np.floor(px - side / 2), 0), W - 1)); c1 = max(int(min(np.ceil(px + side / 2), W)), c0 + 1)
                    r0 = int(min(max(np.floor(py - side / 2), 0), H - 1)); r1 = max(int(min(np.ceil(py + side / 2), H)), r0 + 1)
                    f2, s2, nh2, nw2 = encode(np.ascontiguousarray(rgb[r0:r1, c0:c1]))
                h2, w2 = r1 - r0, c1 - c0
                i2, me2 = decode(f2, [[(cx + 0.5 - c0) * s2 / S, (cy + 0.5 - r0) * s2 / S, 0, 0]])
                for k in range(K):
                    lgf = frame_logits(f2, me2[0, k], nh2, nw2, h2, w2)
                    lg = lgf > 0
                    p = np.zeros_like(m); p[r0:r1, c0:c1] = lg
                    touch = (lg[:, 0].any() and c0 > 0) or (lg[:, -1].any() and c1 < W) or (lg[0].any() and r0 > 0) or (lg[-1].any() and r1 < H)
                    stab = float((lgf > 1).sum()) / max(1, int((lgf > -1).sum()))
                    area = int(p.sum())
                    if area:
                        ys, xs = np.nonzero(lg)
                        cdist = float(np.hypot(xs.mean() + c0 - cx, ys.mean() + r0 - cy) / np.sqrt(area))
                        mlogit = float(lgf[lg].mean())
                    else:
                        cdist, mlogit = 0.0, 0.0
                    cands.append(dict(frac=frac, k=k, pred=float(i2[0, k]), touch=bool(touch), stab=stab, area=area, gt=float(iou_with(p, m)),
                                      win=(c0, r0, c1, r1), inside=bool(p[cy, cx]), cdist=cdist, mlogit=mlogit, mask=np.packbits(p)))
            n = len(cands)
            M = [np.unpackbits(c["mask"])[: H * W].astype(bool) for c in cands]
            pair = np.eye(n)
            for i in range(n):
                for j in range(i + 1, n): pair[i, j] = pair[j, i] = iou_with(M[i], M[j])
            for c in cands: del c["mask"]
            recs.append(dict(area=int(m.sum()), cands=cands, pair=pair, HW=(H, W), click=(int(cx), int(cy)), file=im["file_name"]))
    pickle.dump(recs, open(out, "wb"))


def rules():
    sets = [pickle.load(open(p, "rb")) for p in sys.argv[2:]]
    def full(r):
        return max(range(K), key=lambda i: r["cands"][i]["pred"])
    def rule(fracs, w, min_px):
        def f(r):
            L = max(r["HW"])
            ok = [i for i, c in enumerate(r["cands"]) if c["frac"] in fracs and c["area"] > 0 and (c["frac"] == 1.0 or c["frac"] * L >= min_px)]
            if not ok:
                return full(r)
            el = [i for i in ok if not r["cands"][i]["touch"]] or ok
            P = r["pair"]
            return max(el, key=lambda i: r["cands"][i]["pred"] + w * (np.mean([P[i, j] for j in ok if j != i]) if len(ok) > 1 else 0))
        return f
    def ev(f, R):
        return np.mean([r["cands"][f(r)]["gt"] for r in R])
    print("whole image:", [round(float(ev(full, R)), 4) for R in sets])
    print("oracle:", [round(float(np.mean([max(c["gt"] for c in r["cands"]) for r in R])), 4) for R in sets])
    for w in (0.5, 1.0, 2.0):
        for min_px in (0, 160, 192, 240, 320):
            print(f"agreement {w} min crop {min_px}px:", [round(float(ev(rule((1.0,) + FRACS, w, min_px), R)), 4) for R in sets])


def priors():
    """The runtime's click rule (pred + agreement x mean IoU + stability x stab, uncut first) with two dataset priors
    on top: a smaller crop floor (min_side px) and a bonus of `area` x -log2(mask share of the image)."""
    sets = [pickle.load(open(p, "rb")) for p in sys.argv[2:]]
    def choose(r, min_side, area, stab):
        L = max(r["HW"]); C = r["cands"]; pair = r["pair"]
        P = [i for i, c in enumerate(C) if c["area"] > 0 and (c["frac"] == 1.0 or c["frac"] * L >= min_side)]
        if not P:
            return None
        el = [i for i in P if not C[i]["touch"]] or P
        def score(i):
            mi = np.mean([pair[i, j] for j in P if j != i]) if len(P) > 1 else 0.0
            return C[i]["pred"] + mi + stab * C[i]["stab"] - area * np.log2(C[i]["area"] / (r["HW"][0] * r["HW"][1]))
        return max(el, key=score)
    def ev(R, *a):
        return np.mean([r["cands"][i]["gt"] if (i := choose(r, *a)) is not None else 0.0 for r in R])
    for min_side in (128, 192):
        for area in (0.0, 0.05, 0.1, 0.15):
            for stab in (0.5, 1.0, 2.0):
                print(f"min_side {min_side} area {area} stability {stab}:", [round(float(ev(R, min_side, area, stab)), 4) for R in sets])


if __name__ == "__main__":
    {"dump": dump, "rules": rules, "priors": priors}[sys.argv[1]]()
