"""Cache the frozen encoder's features of fixed augmented views, for training the local decoder fast.

The encoder (EfficientNet-Lite0 + FPN) and the prompt encoder of the shipped checkpoint stay frozen; what is
trained on top (vp/local.py: mask-feature adapter + local query decoder) reads only these tensors, so every
view is encoded once here instead of once per step.

Every source gives two views (two independent augmentations of one composite, or two frames of one DAVIS
sequence). Each view stores its features, its instance label map and, per instance, the prompt embedding of
that instance computed on the OTHER view (the cross-view matching target). With --taps it also stores the
frozen backbone's stride-4/8/16 outputs (24/40/112 channels, `t4/t8/t16`, ~0.34 MB per view at 256 px), so that
a trained branch of the mask features (vp/local.py, `taps`) can read more than the FPN's 64 + 32 channels.

With --coco-plain N it also caches N pairs per COCO128 pool image as they are (no pastes): real multi-instance
scenes, every non-crowd instance of area > 64 px an instance (as in the composites), crowd and tinier annotations
ignored, geometry-only augmentation (zoom 0.85-1.4 of the letterbox fit, crop, flip). Their views are marked
kind "plain" (train_local.py's --rank-plain). Only the pool half (the 64 files that sort first) is ever read.

python3 cache.py --out cache/v1 --duts 6000 --coco-rep 10 --davis 1200
"""
import argparse
import json
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from vp.data import DATA, Aug, Coco, Davis, coco_split, davis_train_sequences, load_mask, load_rgb
from vp.model import VPrompt

IGNORE = 255


def duts_train_stems():
    root = os.path.join(DATA, "duts-tr-256")
    dev = set(open(os.path.join(root, "dev-val.txt")).read().split())
    stems = sorted(f[:-4] for f in os.listdir(os.path.join(root, "images")) if f.endswith(".jpg"))
    return [s for s in stems if s not in dev], root


def components(mask, min_frac=0.01):
    """bool [H,W] -> list of bool masks: connected parts of at least min_frac of the image; the rest is
    returned as an 'ignore' mask (too small to be an instance, not background either)."""
    lab, n = ndimage.label(mask)
    H, W = mask.shape
    parts, ignore = [], np.zeros_like(mask)
    for i in range(1, n + 1):
        m = lab == i
        if m.sum() >= min_frac * H * W:
            parts.append(m)
        else:
            ignore |= m
    return parts, ignore


def _cut(obj_img, obj_mask):
    """The object's box of its image [3,h,w] and of its mask (float) [h,w]; None for an empty mask."""
    ys, xs = np.nonzero(obj_mask.numpy())
    if len(ys) == 0:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return obj_img[:, y0:y1, x0:x1], obj_mask[y0:y1, x0:x1].float()


def _resized(oi, om, s, H, W):
    """The cut object scaled by s (each side 8 px to the image's side): image [3,nh,nw], bool mask [nh,nw]."""
    oh, ow = om.shape
    nh, nw = max(8, min(H, round(oh * s))), max(8, min(W, round(ow * s)))
    oi = F.interpolate(oi[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    om = F.interpolate(om[None, None], size=(nh, nw), mode="bilinear", align_corners=False)[0, 0] > 0.5
    return oi, om


def paste(img, masks, ignore, obj_img, obj_mask, rng, scale=(0.25, 0.6)):
    """Paste an object (cut by its mask) onto img [3,H,W] at a random scale and place; occludes what is under it."""
    _, H, W = img.shape
    cut = _cut(obj_img, obj_mask)
    if cut is None:
        return img, masks, ignore
    s = rng.uniform(*scale) * max(H, W) / max(cut[1].shape)
    oi, om = _resized(*cut, s, H, W)
    nh, nw = om.shape
    return _place(img, masks, ignore, oi, om, rng.randint(0, H - nh), rng.randint(0, W - nw))


def _place(img, masks, ignore, oi, om, py, px):
    """Put the object oi [3,h,w] (mask om [h,w]) at (py, px) on top of img: a new instance that occludes the others."""
    _, H, W = img.shape
    nh, nw = om.shape
    full = torch.zeros(H, W, dtype=torch.bool)
    full[py:py + nh, px:px + nw] = om
    canvas = torch.zeros_like(img)
    canvas[:, py:py + nh, px:px + nw] = oi
    img = torch.where(full[None], canvas, img)
    masks = [m & ~full for m in masks] + [full]
    return img, masks, ignore & ~full


def paste_row(img, masks, ignore, obj_img, obj_mask, rng, scale=(0.25, 0.6), n=3):
    """Paste n copies of one object in a row, each its own instance, each next to the one before (from a little gap to
    a quarter of its size overlapping; later copies in front), each with its own size jitter and flip: alike objects
    side by side (a pile of fruit, a queue of people), which a click must tell apart; salient-object data has none."""
    _, H, W = img.shape
    cut = _cut(obj_img, obj_mask)
    if cut is None:
        return img, masks, ignore
    oh, ow = cut[1].shape
    theta = rng.uniform(0, 2 * np.pi) if rng.random() < 0.5 else rng.choice([0.0, np.pi / 2])
    c, sn = np.cos(theta), np.sin(theta)
    # the row's extent along its direction stays within the image
    along = abs(c) * ow + abs(sn) * oh
    base = rng.uniform(*scale) * max(H, W) / max(oh, ow)
    base = min(base, 0.95 * (abs(c) * W + abs(sn) * H) / (along * (1 + 0.9 * (n - 1))))
    copies, pos = [], np.zeros(2)
    for i in range(n):
        oi, om = _resized(*cut, base * rng.uniform(0.85, 1.15), H, W)
        nh, nw = om.shape
        if rng.random() < 0.5:
            oi, om = oi.flip(-1), om.flip(-1)
        if i:
            step = (abs(c) * nw + abs(sn) * nh) * rng.uniform(0.75, 1.05)
            pos = pos + step * np.array([sn, c]) + np.array([rng.uniform(-0.1, 0.1) * nh, rng.uniform(-0.1, 0.1) * nw])
        copies.append((oi, om, pos.copy()))
    lo = np.min([p for _, _, p in copies], 0)
    hi = np.max([p + np.array(o.shape) for _, o, p in copies], 0)
    span = hi - lo
    shift = np.array([rng.uniform(0, max(0.0, H - span[0])), rng.uniform(0, max(0.0, W - span[1]))]) - lo
    for oi, om, p in copies:
        nh, nw = om.shape
        py = int(np.clip(round(p[0] + shift[0]), 0, H - nh))
        px = int(np.clip(round(p[1] + shift[1]), 0, W - nw))
        img, masks, ignore = _place(img, masks, ignore, oi, om, py, px)
    return img, masks, ignore


class Sources:
    def __init__(self, seed, paste_scale=(0.25, 0.6), rows=0.0, row_n=(2, 5)):
        self.rng = random.Random(seed)
        self.paste_scale = paste_scale
        self.rows, self.row_n = rows, row_n
        self.duts, self.duts_root = duts_train_stems()
        pool, _ = coco_split()
        self.coco = Coco(pool)
        self.davis = Davis(davis_train_sequences())

    def duts_item(self, stem):
        img = load_rgb(os.path.join(self.duts_root, "images", stem + ".jpg"))
        m = load_mask(os.path.join(self.duts_root, "masks", stem + ".png")).numpy()
        parts, ign = components(m)
        return img, [torch.from_numpy(p) for p in parts], torch.from_numpy(ign)

    def coco_ignore(self, k):
        """bool [H,W]: the pool image's crowd regions and annotations too small to be instances (area <= 64):
        not background either, so the losses skip them."""
        f, anns = self.coco.items[k]
        kept = {a["id"] for a in anns}
        coco = self.coco.coco
        img, _, _ = self.coco.load(k)
        ign = torch.zeros(img.shape[1:], dtype=torch.bool)
        for a in coco.imgToAnns[anns[0]["image_id"]]:
            if a["id"] not in kept:
                ign |= torch.from_numpy(coco.annToMask(a)).bool()
        return ign

    def random_object(self):
        """an object for pasting: a DUTS salient part or a COCO pool instance, in its own image's pixels."""
        rng = self.rng
        for _ in range(10):
            if rng.random() < 0.7:
                img, parts, _ = self.duts_item(rng.choice(self.duts))
                if parts:
                    return img, parts[rng.randrange(len(parts))]
            else:
                img, masks, _ = self.coco.load(rng.randrange(len(self.coco.items)))
                i = rng.randrange(masks.shape[0])
                if masks[i].sum() > 400:
                    return img, masks[i]
        return None

    def composite(self, img, masks, ignore, n_paste):
        for _ in range(n_paste):
            o = self.random_object()
            if o is None:
                continue
            if self.rng.random() < self.rows:
                n = self.rng.randint(*self.row_n)
                img, masks, ignore = paste_row(img, masks, ignore, o[0], o[1], self.rng, self.paste_scale, n)
            else:
                img, masks, ignore = paste(img, masks, ignore, o[0], o[1], self.rng, self.paste_scale)
        return img, masks, ignore


def label_map(masks, ignore, min_area):
    """bool [n,S,S] (later ones on top), ignore [S,S] -> uint8 label [S,S] (0 bg, i+1 instance i, 255 ignore),
    the kept instance indices."""
    S = ignore.shape[-1]
    lab = torch.zeros(S, S, dtype=torch.uint8)
    lab[ignore] = IGNORE
    kept = []
    for i in range(masks.shape[0]):
        m = masks[i]
        if m.sum() >= min_area:
            kept.append(i)
        lab[m] = len(kept) if m.sum() >= min_area else IGNORE
    return lab, kept


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ckpt", default=os.path.join(os.path.dirname(__file__), "checkpoints/last.pt"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--duts", type=int, default=6000, help="DUTS train sources (2 views each)")
    ap.add_argument("--coco-rep", type=int, default=10, help="composites per COCO128 pool image (2 views each)")
    ap.add_argument("--davis", type=int, default=1200, help="DAVIS train frame pairs")
    ap.add_argument("--coco-plain", type=int, default=0,
                    help="pairs per COCO128 pool image as it is, without pastes (light geometric augmentation)")
    ap.add_argument("--chunk", type=int, default=512, help="views per chunk file")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--paste-scale", default="0.25,0.6", help="pasted objects' longer side as a share of the image's")
    ap.add_argument("--pastes", default="0,1,1,2,2,3", help="number of pasted objects, drawn from this list")
    ap.add_argument("--rows", type=float, default=0.0,
                    help="share of the pasted objects that come as a row of --row-n copies of one object side by side, "
                         "each its own instance (alike objects next to each other)")
    ap.add_argument("--row-n", default="2,5", help="A,B: copies per row, drawn from A-B")
    ap.add_argument("--prefix", default="chunk", help="chunk file prefix (several caches can share a folder)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--taps", action="store_true", help="also store the backbone taps t4/t8/t16 (fp16)")
    ap.add_argument("--zoom", default="",
                    help="A,B: the DUTS and COCO composite views are zoomed A-B times the letterbox fit and cropped "
                         "around a random pixel of a random instance (both views around the same one), as the "
                         "runtime's click crops (`job.focus`) see an object; views marked kind 'zoom'")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    S = args.size
    min_area = (S / 64) ** 2 * 4

    st = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    model = VPrompt(**st.get("cfg", {}))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in st["model"].items()})
    model.eval()

    src = Sources(args.seed, tuple(float(v) for v in args.paste_scale.split(",")), args.rows,
                  tuple(int(v) for v in args.row_n.split(",")))
    pastes = [int(v) for v in args.pastes.split(",")]
    rng = src.rng
    aug = Aug(S, rng)
    aug_plain = Aug(S, rng, scale=(0.85, 1.4), color=False)
    zoom = tuple(float(v) for v in args.zoom.split(",")) if args.zoom else None
    aug_zoom = Aug(S, rng, scale=zoom) if zoom else None
    jobs = [("duts", s) for s in rng.sample(src.duts, min(args.duts, len(src.duts)))]
    jobs += [("coco", k) for k in range(len(src.coco.items)) for _ in range(args.coco_rep)]
    jobs += [("davis", None)] * args.davis
    jobs += [("plain", k) for k in range(len(src.coco.items)) for _ in range(args.coco_plain)]
    rng.shuffle(jobs)

    def pair(kind, key):
        """-> two (image [3,S,S], masks bool [n,S,S], ignore [S,S]) views with the same instance order."""
        if kind == "davis":
            seq = rng.choice(list(src.davis.seqs))
            fr = src.davis.seqs[seq]
            i = rng.randrange(len(fr))
            gap = rng.choice([1, 3, 5, 10, 20, 40, 80])
            j = min(len(fr) - 1, max(0, i + rng.randint(-gap, gap)))
            views = []
            obj = src.random_object() if rng.random() < 0.4 else None
            for f in (fr[i], fr[j]):
                img, m = src.davis.img(seq, f), src.davis.mask(seq, f)
                masks, ign = [m], torch.zeros_like(m)
                if obj is not None:
                    state = rng.getstate()
                    img, masks, ign = paste(img, masks, ign, obj[0], obj[1], random.Random(i))
                    rng.setstate(state)
                views.append((img, masks, ign))
        elif kind == "plain":  # a real pool scene as it is: all its non-crowd instances, no pastes
            img, cm, _ = src.coco.load(key)
            views = [(img, list(cm), src.coco_ignore(key))] * 2
        else:
            if kind == "duts":
                img, masks, ign = src.duts_item(key)
            else:
                img, cm, _ = src.coco.load(key)
                masks, ign = list(cm), torch.zeros(img.shape[1:], dtype=torch.bool)
            img, masks, ign = src.composite(img, masks, ign, rng.choice(pastes))
            views = [(img, masks, ign)] * 2
        centre, use = None, aug_plain if kind == "plain" else aug
        if aug_zoom is not None and kind in ("duts", "coco") and views[0][1]:
            obj = views[0][1][rng.randrange(len(views[0][1]))]
            ys, xs = np.nonzero(obj.numpy())
            if len(ys):
                k = rng.randrange(len(ys))
                centre, use = (int(ys[k]), int(xs[k])), aug_zoom
        out = []
        for img, masks, ign in views:
            stack = torch.stack(list(masks) + [ign]) if masks else ign[None]
            a, m = use(img, stack, centre)
            out.append((a, m[:-1], m[-1]))
        return out

    t0 = time.time()
    n_chunks = 0
    for c0 in range(0, len(jobs), args.chunk // 2):
        path = os.path.join(args.out, f"{args.prefix}{n_chunks:04d}")
        if os.path.exists(path + ".json"):
            n_chunks += 1
            continue
        views = []  # (img, lab, kept masks)
        pairs = []
        for kind, key in jobs[c0:c0 + args.chunk // 2]:
            pv = pair(kind, key)
            labs = [label_map(m, ig, min_area) for _, m, ig in pv]
            # instances kept in both views (index in the composite's mask list)
            both = [i for i in labs[0][1] if i in labs[1][1]]
            if not both:
                continue
            for v in range(2):
                img, m, ig = pv[v]
                lab, kept = labs[v]
                views.append(dict(img=img, lab=lab, masks=m, kept=kept, both=both,
                                  kind="zoom" if zoom and kind in ("duts", "coco") else kind))
            pairs.append((len(views) - 2, len(views) - 1))
        imgs = torch.stack([v["img"] for v in views])
        feats = []
        with torch.no_grad():
            for b in range(0, len(views), 32):
                x = imgs[b:b + 32].contiguous(memory_format=torch.channels_last)
                out = model.encoder(x, with_taps=args.taps)
                feats.append([t.contiguous() for t in out[:4] + (out[4] if args.taps else ())])
            f8, f16, f32, mf = (torch.cat([f[i] for f in feats]) for i in range(4))
            # prompt embedding of every kept instance on its view (mask prompt)
            pv_idx, pm = [], []
            for vi, v in enumerate(views):
                for i in v["kept"]:
                    pv_idx.append(vi)
                    pm.append(v["masks"][i].float())
            pe = []
            for b in range(0, len(pm), 64):
                ii = torch.tensor(pv_idx[b:b + 64])
                pe.append(model.prompt_encoder((f8[ii], f16[ii], f32[ii]), torch.stack(pm[b:b + 64])[:, None]))
            pe = torch.cat(pe)
        emb = {}
        for k, (vi, i) in enumerate(zip(pv_idx, [i for v in views for i in v["kept"]])):
            emb[(vi, i)] = pe[k]
        meta = []
        cross = np.zeros((len(views), 16, 64), np.float16)  # embedding of instance (label l) from the other view
        selfe = np.zeros((len(views), 16, 64), np.float16)
        for a, b in pairs:
            for v, o in ((a, b), (b, a)):
                kept = views[v]["kept"][:16]
                for li, i in enumerate(kept):
                    selfe[v, li] = emb[(v, i)].numpy()
                    if (o, i) in emb:
                        cross[v, li] = emb[(o, i)].numpy()
                meta.append(dict(kind=views[v]["kind"], n=len(kept), pair=o,
                                 has_cross=[(o, i) in emb for i in kept]))
        lab = torch.stack([v["lab"] for v in views]).numpy()
        lab = np.where(lab > 16, IGNORE, lab).astype(np.uint8)  # instances past 16: not background, ignored
        np.save(path + ".f8.npy", f8.half().numpy())
        np.save(path + ".f16.npy", f16.half().numpy())
        np.save(path + ".f32.npy", f32.half().numpy())
        np.save(path + ".mf.npy", mf.half().numpy())
        if args.taps:
            for i, k in enumerate(("t4", "t8", "t16")):
                np.save(path + f".{k}.npy", torch.cat([f[4 + i] for f in feats]).half().numpy())
        np.save(path + ".lab.npy", lab)
        np.save(path + ".cross.npy", cross)
        np.save(path + ".self.npy", selfe)
        with open(path + ".json", "w") as f:
            json.dump(meta, f)
        n_chunks += 1
        done = min(len(jobs), c0 + args.chunk // 2)
        el = time.time() - t0
        print(f"chunk {n_chunks}: {len(views)} views, sources {done}/{len(jobs)}, {2 * done / el:.1f} views/s", flush=True)


if __name__ == "__main__":
    main()
