"""Training data: DAVIS-2016 train sequences (24, fixed split) and the COCO128 exemplar pool (64 images).

Every sample is turned into model-input space (letterboxed / augmented S x S, normalised) here.
"""
import json
import math
import os
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DATA = os.environ.get("VPROMPT_DATA", os.path.join(os.path.dirname(__file__), "../../../../shared/data"))
DAVIS_DEV_VAL = ["bear", "car-turn", "dance-jump", "kite-walk", "soccerball", "stroller"]
MEAN = 0.5
STD = 0.5


def davis_root():
    return os.path.join(DATA, "davis2016-train-240p")


def davis_train_sequences():
    seqs = sorted(os.listdir(os.path.join(davis_root(), "JPEGImages")))
    return [s for s in seqs if s not in DAVIS_DEV_VAL]


def load_rgb(path):
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255.0


def load_mask(path):
    return torch.from_numpy(np.asarray(Image.open(path).convert("L")) > 127)


def letterbox(img, size):
    """img [3,H,W] in [0,1] -> normalised [3,size,size], top-left placement, padding 0 after normalisation.
    Returns (tensor, scale, (new_h, new_w))."""
    _, H, W = img.shape
    s = size / max(H, W)
    nh, nw = max(1, round(H * s)), max(1, round(W * s))
    r = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    out = torch.zeros(3, size, size)
    out[:, :nh, :nw] = (r - MEAN) / STD
    return out, s, (nh, nw)


class Aug:
    """Random scale / crop / flip / colour jitter, applied identically to an image and its masks."""

    def __init__(self, size, rng, strong=True, scale=(0.7, 1.6), color=True):
        self.size = size
        self.rng = rng
        self.strong = strong
        self.scale = scale  # random zoom relative to the letterbox fit
        self.color = color  # colour jitter (off: geometry only, as `cache.py --coco-plain` uses)

    def __call__(self, img, masks, centre=None):
        """`centre` (y, x) in `img` pixels: the crop window (when the zoomed image exceeds S) holds this
        point, at a random place of its middle 60% (as a crop around a click does); else the window is random."""
        S = self.size
        rng = self.rng
        _, H, W = img.shape
        base = S / max(H, W)
        s = base * (rng.uniform(*self.scale) if self.strong else 1.0)
        nh, nw = max(8, round(H * s)), max(8, round(W * s))
        img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        if masks.shape[0]:
            m = F.interpolate(masks[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)[0] > 0.5
        else:
            m = torch.zeros(0, nh, nw, dtype=torch.bool)
        # crop window (if larger than S) and placement (top-left letterbox or random offset)
        if centre is None:
            y0 = rng.randint(0, max(0, nh - S))
            x0 = rng.randint(0, max(0, nw - S))
        else:
            cy, cx = centre[0] * nh / H, centre[1] * nw / W
            y0 = min(max(0, nh - S), max(0, round(cy - S * rng.uniform(0.2, 0.8))))
            x0 = min(max(0, nw - S), max(0, round(cx - S * rng.uniform(0.2, 0.8))))
        img = img[:, y0:y0 + S, x0:x0 + S]
        m = m[:, y0:y0 + S, x0:x0 + S]
        h, w = img.shape[1:]
        if self.strong and rng.random() < 0.5:
            oy, ox = rng.randint(0, S - h), rng.randint(0, S - w)
        else:
            oy, ox = 0, 0
        if self.strong:
            if rng.random() < 0.5:
                img = img.flip(-1)
                m = m.flip(-1)
        if self.strong and self.color:
            b = rng.uniform(-0.15, 0.15)
            c = rng.uniform(0.75, 1.25)
            sat = rng.uniform(0.7, 1.3)
            g = img.mean(0, keepdim=True)
            img = (g + (img - g) * sat)
            img = ((img - 0.5) * c + 0.5 + b).clamp(0, 1)
        out = torch.zeros(3, S, S)
        out[:, oy:oy + h, ox:ox + w] = (img - MEAN) / STD
        mo = torch.zeros(m.shape[0], S, S, dtype=torch.bool)
        mo[:, oy:oy + h, ox:ox + w] = m
        return out, mo


# ---------------------------------------------------------------- prompts from masks


def _disk(S, cx, cy, r):
    ys = torch.arange(S).view(-1, 1).float()
    xs = torch.arange(S).view(1, -1).float()
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r


def _erode(m, r):
    if r <= 0:
        return m
    return ~(F.max_pool2d((~m)[None, None].float(), 2 * r + 1, 1, r)[0, 0] > 0)


def _dilate(m, r):
    if r <= 0:
        return m
    return F.max_pool2d(m[None, None].float(), 2 * r + 1, 1, r)[0, 0] > 0


def _interior_points(m, n, rng):
    er = _erode(m, 2)
    src = er if er.any() else m
    ys, xs = torch.nonzero(src, as_tuple=True)
    idx = [rng.randrange(len(ys)) for _ in range(n)]
    return [(xs[i].item(), ys[i].item()) for i in idx]


def point_radius(S):
    return max(2, round(S / 64))


def sample_prompt(m, rng, kind=None):
    """m: bool [S,S] (non-empty) -> prompt mask float [S,S] and kind."""
    S = m.shape[-1]
    if kind is None:
        kind = rng.choices(["mask", "box", "point", "scribble"], weights=[0.5, 0.2, 0.15, 0.15])[0]
    if kind == "mask":
        r = rng.choice([0, 0, 0, 1, 2])
        p = _dilate(m, r) if rng.random() < 0.5 else _erode(m, r)
        if not p.any():
            p = m
    elif kind == "box":
        ys, xs = torch.nonzero(m, as_tuple=True)
        x0, x1, y0, y1 = xs.min().item(), xs.max().item(), ys.min().item(), ys.max().item()
        bw, bh = x1 - x0 + 1, y1 - y0 + 1
        j = lambda v, s: v + rng.uniform(-0.08, 0.08) * s
        x0, x1 = int(max(0, j(x0, bw))), int(min(S - 1, j(x1, bw)))
        y0, y1 = int(max(0, j(y0, bh))), int(min(S - 1, j(y1, bh)))
        p = torch.zeros(S, S, dtype=torch.bool)
        p[y0:max(y0 + 1, y1 + 1), x0:max(x0 + 1, x1 + 1)] = True
    elif kind == "point":
        (x, y), = _interior_points(m, 1, rng)
        p = _disk(S, x, y, point_radius(S))
    else:  # scribble: a polyline through 2-4 interior points, kept inside the object
        pts = _interior_points(m, rng.randint(2, 4), rng)
        p = torch.zeros(S, S, dtype=torch.bool)
        for (xa, ya), (xb, yb) in zip(pts[:-1], pts[1:]):
            n = int(max(abs(xb - xa), abs(yb - ya))) + 1
            t = torch.linspace(0, 1, n)
            xs = (xa + (xb - xa) * t).round().long().clamp(0, S - 1)
            ys = (ya + (yb - ya) * t).round().long().clamp(0, S - 1)
            p[ys, xs] = True
        p = _dilate(p, max(1, S // 128)) & m
        if not p.any():
            (x, y), = _interior_points(m, 1, rng)
            p = _disk(S, x, y, point_radius(S))
    return p.float(), kind


# ---------------------------------------------------------------- sources


class Davis:
    def __init__(self, seqs):
        root = davis_root()
        self.seqs = {}
        for s in seqs:
            frames = sorted(os.listdir(os.path.join(root, "JPEGImages", s)))
            self.seqs[s] = [f[:-4] for f in frames]
        self.root = root
        self._mask_cache = {}

    def img(self, s, f):
        return load_rgb(os.path.join(self.root, "JPEGImages", s, f + ".jpg"))

    def mask(self, s, f):
        k = (s, f)
        if k not in self._mask_cache:
            self._mask_cache[k] = load_mask(os.path.join(self.root, "Annotations", s, f + ".png"))
        return self._mask_cache[k]


def coco_split():
    root = os.path.join(DATA, "coco128")
    files = sorted(os.listdir(os.path.join(root, "train2017")))
    return files[:64], files[64:]


class Coco:
    def __init__(self, files):
        from pycocotools.coco import COCO
        import contextlib, io

        root = os.path.join(DATA, "coco128")
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(os.path.join(root, "annotations", "instances_train2017.json"))
        name2id = {im["file_name"]: im["id"] for im in self.coco.imgs.values()}
        self.root = root
        self.items = []  # (file, [ (cat, ann) ... ])
        self.by_cat = {}
        self.all_cats = []
        for f in files:
            iid = name2id[f]
            anns = [a for a in self.coco.imgToAnns[iid] if not a.get("iscrowd", 0) and a["area"] > 64]
            if not anns:
                continue
            k = len(self.items)
            self.items.append((f, anns))
            self.all_cats.append({a["category_id"] for a in self.coco.imgToAnns[iid]})  # incl. crowd / tiny
            for a in anns:
                self.by_cat.setdefault(a["category_id"], set()).add(k)
        self._cache = {}

    def load(self, k):
        if k not in self._cache:
            f, anns = self.items[k]
            img = load_rgb(os.path.join(self.root, "train2017", f))
            masks = torch.from_numpy(np.stack([self.coco.annToMask(a) for a in anns])).bool()
            cats = [a["category_id"] for a in anns]
            self._cache[k] = (img, masks, cats)
        return self._cache[k]


# ---------------------------------------------------------------- sampler


def _paste(img, masks, src_img, src_mask):
    """copy-paste one object (src in the same S x S space) onto img; occludes existing masks."""
    img = torch.where(src_mask[None], src_img, img)
    masks = masks & ~src_mask[None]
    return img, torch.cat((masks, src_mask[None]), 0)


class Sampler:
    def __init__(self, size=256, seed=0, weights=(0.5, 0.1, 0.2, 0.2), neg_frac=0.0):
        self.S = size
        self.neg_frac = neg_frac  # share of generic items whose class is absent from the target (all-negative labels)
        self.rng = random.Random(seed)
        self.davis = Davis(davis_train_sequences())
        pool, _ = coco_split()
        self.coco = Coco(pool)
        self.weights = weights
        self.aug = Aug(size, self.rng)

    def _min_area(self):
        return (self.S / 64) ** 2 * 4

    def _coco_instance(self, exclude=None):
        """a random COCO object, augmented, for copy-paste."""
        for _ in range(10):
            k = self.rng.randrange(len(self.coco.items))
            img, masks, cats = self.coco.load(k)
            i = self.rng.randrange(masks.shape[0])
            a, m = self.aug(img, masks[i:i + 1])
            if m[0].sum() > self._min_area():
                return a, m[0]
        return None

    def davis_pair(self, cross):
        rng = self.rng
        seqs = list(self.davis.seqs)
        while True:
            s = rng.choice(seqs)
            fr = self.davis.seqs[s]
            i = rng.randrange(len(fr))
            if cross:
                gap = rng.choice([1, 2, 5, 10, 20, 40, 80])
                j = min(len(fr) - 1, max(0, i + rng.randint(-gap, gap)))
            else:
                j = i
            mi, mj = self.davis.mask(s, fr[i]), self.davis.mask(s, fr[j])
            if not mi.any():
                continue
            ri, ai = self.aug(self.davis.img(s, fr[i]), mi[None])
            if ai[0].sum() < self._min_area():
                continue
            if cross:
                tj, aj = self.aug(self.davis.img(s, fr[j]), mj[None])
            else:
                tj, aj = ri, ai
            if cross and rng.random() < 0.3:
                p = self._coco_instance()
                if p is not None:
                    tj, aj = _paste(tj, aj, *p)
            return dict(ref=ri if cross else None, ref_masks=[ai[0]], tgt=tj, inst=aj, targets=[0], mode="refer",
                        src=f"davis:{s}:{fr[i]}->{fr[j]}")

    def coco_self(self):
        rng = self.rng
        while True:
            k = rng.randrange(len(self.coco.items))
            img, masks, cats = self.coco.load(k)
            t, m = self.aug(img, masks)
            if rng.random() < 0.3:
                p = self._coco_instance()
                if p is not None:
                    t, m = _paste(t, m, *p)
            area = m.flatten(1).sum(1)
            ok = torch.nonzero(area > self._min_area()).flatten().tolist()
            if not ok:
                continue
            i = rng.choice(ok)
            return dict(ref=None, ref_masks=[m[i]], tgt=t, inst=m, targets=[i], mode="refer", src=f"coco:{k}:{i}")

    def coco_generic(self, nmax=3):
        rng = self.rng
        while True:
            k = rng.randrange(len(self.coco.items))
            img, masks, cats = self.coco.load(k)
            t, m = self.aug(img, masks)
            area = m.flatten(1).sum(1)
            cats_ok = sorted({c for c, a in zip(cats, area.tolist()) if a > self._min_area()})
            if not cats_ok:
                continue
            c = rng.choice(cats_ok)
            targets = [i for i, cc in enumerate(cats) if cc == c and area[i] > 0]
            if self.neg_frac and rng.random() < self.neg_frac:
                # negative item: exemplars of a pool class that does not occur in the target image -> no targets;
                # the generic queries must all score low against that class embedding
                absent = sorted(set(self.coco.by_cat) - self.coco.all_cats[k])
                if absent:
                    c = rng.choice(absent)
                    targets = []
            n = rng.randint(1, nmax)
            refs, rmasks = [], []
            cands = sorted(self.coco.by_cat[c])
            for _ in range(n):
                kk = rng.choice(cands)
                if kk == k and rng.random() < 0.5:
                    i = rng.choice(targets)
                    refs.append(None)
                    rmasks.append(m[i])
                    continue
                im2, ms2, cs2 = self.coco.load(kk)
                idx = [i for i, cc in enumerate(cs2) if cc == c]
                i = rng.choice(idx)
                a, am = self.aug(im2, ms2[i:i + 1])
                if am[0].sum() < self._min_area():
                    continue
                refs.append(a)
                rmasks.append(am[0])
            if not rmasks:
                continue
            return dict(ref=refs, ref_masks=rmasks, tgt=t, inst=m, targets=targets, mode="generic", src=f"cocog:{k}:{c}")

    def sample(self):
        kind = self.rng.choices(range(4), weights=self.weights)[0]
        if kind == 0:
            return self.davis_pair(True)
        if kind == 1:
            return self.davis_pair(False)
        if kind == 2:
            return self.coco_self()
        return self.coco_generic()

    def batch(self, B):
        """-> images [U,3,S,S], tgt_idx [B], prompts (img_idx, mask, item), per-item instances / targets / modes."""
        images, tgt_idx, p_img, p_mask, p_item, inst, targets, modes, kinds = [], [], [], [], [], [], [], [], []
        for b in range(B):
            s = self.sample()
            ti = len(images)
            images.append(s["tgt"])
            tgt_idx.append(ti)
            refs = s["ref"] if isinstance(s["ref"], list) else [s["ref"]] * len(s["ref_masks"])
            for r, rm in zip(refs, s["ref_masks"]):
                if r is None:
                    ii = ti
                else:
                    ii = len(images)
                    images.append(r)
                pm, kind = sample_prompt(rm, self.rng)
                p_img.append(ii)
                p_mask.append(pm)
                p_item.append(b)
                kinds.append(kind)
            inst.append(s["inst"])
            targets.append(s["targets"])
            modes.append(s["mode"])
        return dict(
            images=torch.stack(images),
            tgt_idx=torch.tensor(tgt_idx),
            p_img=torch.tensor(p_img),
            p_mask=torch.stack(p_mask)[:, None],
            p_item=torch.tensor(p_item),
            inst=inst,
            targets=targets,
            modes=modes,
            kinds=kinds,
        )
