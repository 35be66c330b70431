"""Train the local decoder (vp/local.py) on cached frozen features (cache.py), time-budgeted and resumable.

python3 train_local.py --cache cache/v1 --out runs/local --minutes 80

Every step: B cached views; per view, query rows sampled afresh: one box per instance (exact or jittered),
points inside instances (the most interior pixel of each, the rest uniform) and points on the background.
Losses (see README): best-of-K mask loss (BCE + dice) and box loss for rows on an instance, predicted IoU
against the real IoU of every level's mask (rows on the background: 0), Hungarian-matched generic queries,
and the prompt-embedding matching in both directions against the frozen prompt encoder's embeddings of the
same instance in the other view.
"""
import argparse
import glob
import json
import math
import os
import random
import re
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from vp.local import LocalModel

IGNORE = 255


class Cache:
    """The cached views, chunk by chunk; chunks that cache.py finishes later are picked up by refresh()."""

    KEYS = ("f8", "f16", "f32", "mf", "lab", "cross", "self")
    TAPS = ("t4", "t8", "t16")  # the backbone taps, in caches made with `cache.py --taps`

    def __init__(self, root, taps=False):
        self.root = root
        self.KEYS = self.KEYS + (self.TAPS if taps else ())
        self.chunks, self.meta, self.index, self.files = [], [], [], set()
        self.prefix = []  # per chunk: its file prefix (cache.py --prefix), for --src-weight
        self.refresh()

    def refresh(self):
        for p in sorted(glob.glob(os.path.join(self.root, "*.json"))):
            if p in self.files:
                continue
            base = p[:-5]
            m = json.load(open(p))
            c = len(self.chunks)
            # memory-mapped: the page cache holds what fits, so a cache larger than RAM still trains
            self.chunks.append({k: np.load(f"{base}.{k}.npy", mmap_mode="r") for k in self.KEYS})
            self.meta.append(m)
            self.prefix.append(re.sub(r"\d+$", "", os.path.basename(base)))
            self.index += [(c, i) for i in range(len(m))]
            self.files.add(p)
        return len(self.index)

    def probs(self, weights):
        """sampling probability of every view: its chunk prefix's weight (default 1), normalised."""
        w = np.array([weights.get(self.prefix[c], 1.0) for c, _ in self.index])
        return w / w.sum()

    def batch(self, idx):
        views = [self.index[i] for i in idx]
        out = {k: torch.from_numpy(np.stack([self.chunks[c][k][i] for c, i in views])) for k in self.KEYS}
        return out, [self.meta[c][i] for c, i in views]


def box_of(m):
    ys, xs = np.nonzero(m)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], np.float32)


def sample_rows(lab, n_inst, rng, N=48, n_bg=8):
    """lab uint8 [S,S] -> rows [N,4] (normalised), row targets [N] (0 = background), inst boxes [16,4]."""
    S = lab.shape[0]
    rows, tgt = [], []
    boxes = np.zeros((17, 4), np.float32)
    ids = [i for i in range(1, n_inst + 1) if (lab == i).any()]
    rng.shuffle(ids)
    ids = ids[:8]
    per = max(1, (N - n_bg - len(ids)) // max(1, len(ids))) if ids else 0
    for i in ids:
        m = lab == i
        b = box_of(m)
        boxes[i] = b / S
        jb = b.copy()
        if rng.random() < 0.6:
            jb[:2] += rng.uniform(-0.06, 0.06, 2) * b[2:]
            jb[2:] *= rng.uniform(0.9, 1.12, 2)
        rows.append(jb / S)
        tgt.append(i)
        dt = ndimage.distance_transform_edt(np.pad(m[::2, ::2], 1))[1:-1, 1:-1]  # at half resolution: cheaper
        y, x = np.unravel_index(np.argmax(dt), dt.shape)
        y, x = 2 * y, 2 * x
        pts = [(x, y)]
        ys, xs = np.nonzero(m)
        for k in rng.integers(0, len(ys), per - 1):
            pts.append((xs[k], ys[k]))
        for x, y in pts[:per]:
            rows.append(np.array([(x + 0.5) / S, (y + 0.5) / S, 0, 0], np.float32))
            tgt.append(i)
    ys, xs = np.nonzero(lab == 0)
    while len(rows) < N:
        if len(ys):
            k = rng.integers(len(ys))
            rows.append(np.array([(xs[k] + 0.5) / S, (ys[k] + 0.5) / S, 0, 0], np.float32))
        else:
            rows.append(np.array([rng.random(), rng.random(), 0, 0], np.float32))
        tgt.append(0)
    rows, tgt = rows[:N], tgt[:N]
    return np.stack(rows), np.array(tgt), boxes


def cxcywh_to_xyxy(b):
    cx, cy, w, h = b.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1)


def giou(a, b):
    a, b = cxcywh_to_xyxy(a), cxcywh_to_xyxy(b)
    lt = torch.max(a[..., :2], b[..., :2])
    rb = torch.min(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    aa = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    ab = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    union = aa + ab - inter
    iou = inter / union.clamp(min=1e-6)
    hull = (torch.max(a[..., 2:], b[..., 2:]) - torch.min(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-6)


def mask_terms(logit, tgt, valid):
    """logit, tgt (soft), valid: [..., hw] -> bce, dice, iou of the binary mask (per row)."""
    bce = (F.binary_cross_entropy_with_logits(logit, tgt, reduction="none") * valid).sum(-1) / valid.sum(-1).clamp(min=1)
    p = logit.sigmoid() * valid
    t = tgt * valid
    dice = 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)
    with torch.no_grad():
        pb = (logit > 0).float() * valid
        tb = (tgt > 0.5).float() * valid
        inter = (pb * tb).sum(-1)
        iou = inter / (pb.sum(-1) + tb.sum(-1) - inter).clamp(min=1)
    return bce, dice, iou


def near_weights(inst_boxes, h, w, boost, grow=2.0):
    """[B,h*w] sampling weights of the stride-4 cells: 1, plus `boost` inside any instance's box grown `grow` times
    about its centre (where a mask bleeds into its neighbours)."""
    B = inst_boxes.shape[0]
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    cx, cy, bw, bh = (inst_boxes[..., k][..., None] for k in range(4))  # [B,17,1]
    inx = ((xs[None, None] - cx).abs() <= bw * grow / 2) & (bw > 0)  # [B,17,w]
    iny = ((ys[None, None] - cy).abs() <= bh * grow / 2) & (bh > 0)  # [B,17,h]
    near = (iny[..., :, None] & inx[..., None, :]).any(1).flatten(1)  # [B,h*w]
    return 1.0 + boost * near.float()


def step_losses(model, data, meta, rng, N, n_cells=1024, rank_w=0.0, gc_w=0.0, rank_plain=None, near=0.0):
    B = len(meta)
    f8 = data["f8"].float()
    f16 = data["f16"].float()
    f32 = data["f32"].float()
    mf = data["mf"].float()
    lab = data["lab"].numpy()
    S = lab.shape[-1]
    rows, tgts, boxes = [], [], []
    for b in range(B):
        r, t, bx = sample_rows(lab[b], meta[b]["n"], rng, N)
        rows.append(r)
        tgts.append(t)
        boxes.append(bx)
    rows = torch.from_numpy(np.stack(rows))
    tgts = torch.from_numpy(np.stack(tgts))  # [B,N]
    inst_boxes = torch.from_numpy(np.stack(boxes))  # [B,17,4]
    taps = tuple(data[k].float() for k in Cache.TAPS) if "t4" in data else None
    mfeat = model.mask_features(f8, mf, f16, taps)
    d8, d16, d32 = model.decoder_inputs(f8, f16, f32, taps)
    iou_p, pbox, emb, me = model.decoder((d8, d16, d32, mf), rows)
    h, w = mfeat.shape[-2:]
    # losses on P random cells of the stride-4 grid per view (the same cells for every query of the view)
    P = min(n_cells, h * w)
    if near > 0:  # more of them near the instances (--near)
        cells = torch.multinomial(near_weights(inst_boxes, h, w, near), P, replacement=False)  # [B,P]
    else:
        cells = torch.stack([torch.randperm(h * w)[:P] for _ in range(B)])  # [B,P]
    mfs = torch.gather(mfeat.flatten(2), 2, cells[:, None, :].expand(B, mfeat.shape[1], P))
    logits = torch.einsum("bqm,bmp->bqp", me, mfs)  # [B,Q,P]
    G, K = model.cfg["G"], model.cfg["K"]
    # targets at the mask resolution (stride 4): soft instance masks and the valid (non-ignored) pixels
    labt = torch.from_numpy(lab).long()
    onehot = F.one_hot(labt.clamp(max=17) * (labt != IGNORE), 18).permute(0, 3, 1, 2).float()[:, :17]  # [B,17,S,S]
    soft = F.adaptive_avg_pool2d(onehot, (h, w)).flatten(2)  # [B,17,hw]
    soft = torch.gather(soft, 2, cells[:, None, :].expand(B, 17, P))
    ign = F.adaptive_avg_pool2d(torch.from_numpy(lab == IGNORE).float()[:, None], (h, w)).flatten(1)
    valid = (torch.gather(ign, 1, cells) < 0.5).float()[:, None, :]  # [B,1,P]

    li = logits[:, G:].reshape(B, N, K, -1)
    tmask = torch.gather(soft, 1, tgts[..., None].expand(B, N, soft.shape[-1]))[:, :, None, :]  # [B,N,1,hw]
    bce, dice, iou_real = mask_terms(li, tmask.expand_as(li), valid[:, :, None])
    on = (tgts > 0).float()  # [B,N]
    ml = bce + dice  # [B,N,K]
    # box of each level vs its instance
    tb = torch.gather(inst_boxes, 1, tgts[..., None].expand(B, N, 4))[:, :, None, :].expand(B, N, K, 4)
    pb = pbox[:, G:].reshape(B, N, K, 4)
    bl = (pb - tb).abs().sum(-1) + (1 - giou(pb, tb))
    best = (ml + 0.5 * bl).argmin(-1, keepdim=True)  # [B,N,1]
    l_mask = (torch.gather(ml, 2, best)[..., 0] * on).sum() / on.sum().clamp(min=1)
    l_box = (torch.gather(bl, 2, best)[..., 0] * on).sum() / on.sum().clamp(min=1)
    ip = iou_p[:, G:].reshape(B, N, K)
    iou_t = iou_real * on[..., None]
    wrow = on + 0.5 * (1 - on)
    l_iou = (((ip - iou_t) ** 2).mean(-1) * wrow).sum() / wrow.sum()
    # ranking: on an instance row, the level whose mask is better must score higher (margin 0.05), weighted by
    # how much better it is; this is what picks the answer among the K candidates
    gap = iou_real[..., :, None] - iou_real[..., None, :]  # [B,N,K,K]: level a better than level b
    dp = ip[..., :, None] - ip[..., None, :]
    per_row = (F.relu(0.05 - dp) * gap.clamp(min=0)).sum((-1, -2)) * on
    l_rank = per_row.sum() / on.sum().clamp(min=1)
    # weighted: --rank on every view, --rank-plain instead on the real COCO scenes (cache.py --coco-plain)
    rw = torch.tensor([rank_plain if rank_plain is not None and m.get("kind") == "plain" else rank_w for m in meta])
    l_rank_w = (per_row * rw[:, None]).sum() / on.sum().clamp(min=1)

    # generic queries: Hungarian matching to the instances
    lg = logits[:, :G]
    l_gen = torch.zeros(())
    gen_match = []
    with torch.no_grad():
        pg = lg.sigmoid() * valid
    for b in range(B):
        ids = [i for i in range(1, 17) if soft[b, i].sum() > 0]
        if not ids:
            gen_match.append(([], []))
            continue
        t = soft[b, ids]  # [n,hw]
        with torch.no_grad():
            dc = 1 - (2 * pg[b] @ t.T + 1) / (pg[b].sum(-1, keepdim=True) + t.sum(-1)[None] + 1)
            l1 = (pbox[b, :G, None, :] - inst_boxes[b, ids][None]).abs().sum(-1)
            qi, ti = linear_sum_assignment((dc + 2 * l1).numpy())
        gen_match.append((qi.tolist(), [ids[j] for j in ti]))
    gi_t = torch.zeros(B, G)
    terms = []
    for b, (qi, ti) in enumerate(gen_match):
        if not qi:
            continue
        qi_t = torch.tensor(qi)
        bce_g, dice_g, iou_g = mask_terms(lg[b, qi_t], soft[b, ti], valid[b])
        bl_g = (pbox[b, qi_t] - inst_boxes[b, ti]).abs().sum(-1) + (1 - giou(pbox[b, qi_t], inst_boxes[b, ti]))
        terms.append((bce_g + dice_g + 0.5 * bl_g).mean())
        gi_t[b, qi_t] = iou_g
    if terms:
        l_gen = torch.stack(terms).mean()
    l_gen_iou = ((iou_p[:, :G] - gi_t) ** 2).mean()

    # matching: prompt embeddings of this view's instances made on the other view
    cross = data["cross"].float()  # [B,16,64] for labels 1..16
    selfe = data["self"].float()
    has = torch.zeros(B, 16, dtype=torch.bool)
    for b in range(B):
        for l, hc in enumerate(meta[b]["has_cross"][:16]):
            has[b, l] = hc
    pe = torch.where(has[..., None], cross, selfe)  # [B,16,D]
    present = torch.zeros(B, 16, dtype=torch.bool)
    for b in range(B):
        for l in set(tgts[b].tolist()) - {0}:
            present[b, l - 1] = True
    scale = model.scale()
    qe = emb[:, G:].reshape(B, N, K, -1)
    qbest = torch.gather(qe, 2, best[..., None].expand(B, N, 1, qe.shape[-1]))[:, :, 0]  # [B,N,D]
    # (a) each on-instance row's best query picks its instance among every prompt of the batch
    P = pe[present]  # [P,D]
    pid = torch.full((B, 16), -1, dtype=torch.long)
    pid[present] = torch.arange(P.shape[0])
    rsel = on.bool()
    bidx = torch.nonzero(rsel)[:, 0]
    lbl = pid[bidx, tgts[rsel] - 1]
    l_cg = F.cross_entropy(scale * qbest[rsel] @ P.T, lbl) if P.shape[0] > 1 else torch.zeros(())
    # (b) each prompt picks, among its view's queries, those on its instance (softmax over all K levels too)
    l_cr = []
    allq = emb[:, G:]  # [B,N*K,D]
    for b in range(B):
        s = scale * allq[b] @ pe[b].T  # [N*K,16]
        logp = s.log_softmax(0)
        for l in set(tgts[b].tolist()) - {0}:
            pos = (tgts[b] == l).repeat_interleave(K) & (iou_real[b].reshape(-1) >= 0.5)
            if pos.any():
                l_cr.append(-torch.logsumexp(logp[pos, l - 1], 0))
    l_cr = torch.stack(l_cr).mean() if l_cr else torch.zeros(())
    # (c) each matched generic query picks its instance's prompt among every instance of the batch, so that
    # generic queries can be classified against exemplar (prompt) embeddings, as auto-labeling does
    l_gc = torch.zeros(())
    if gc_w > 0:
        allp = torch.zeros(B, 16, dtype=torch.bool)
        for b in range(B):
            allp[b, : min(meta[b]["n"], 16)] = True
        Pall = pe[allp]
        pid_all = torch.full((B, 16), -1, dtype=torch.long)
        pid_all[allp] = torch.arange(Pall.shape[0])
        ge, gl = [], []
        for b, (qi, ti) in enumerate(gen_match):
            for q, t in zip(qi, ti):
                if t <= 16 and allp[b, t - 1]:
                    ge.append(emb[b, q])
                    gl.append(pid_all[b, t - 1])
        if ge and Pall.shape[0] > 1:
            l_gc = F.cross_entropy(scale * torch.stack(ge) @ Pall.T, torch.stack(gl))
    losses = dict(mask=l_mask, box=l_box, iou=l_iou, rank=l_rank, gen=l_gen, gen_iou=l_gen_iou, cg=l_cg, cr=l_cr, gc=l_gc)
    total = gc_w * l_gc + 2 * l_mask + l_box + 2 * l_iou + l_rank_w + 0.5 * l_gen + l_gen_iou + 0.3 * l_cg + 0.3 * l_cr
    # a quick training metric: IoU of the best-predicted-IoU level on instance rows
    with torch.no_grad():
        pick = ip.argmax(-1, keepdim=True)
        m_iou = (torch.gather(iou_real, 2, pick)[..., 0] * on).sum() / on.sum().clamp(min=1)
    return total, losses, m_iou.item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=80)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ckpt-minutes", type=float, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 when other work shares the cores)")
    ap.add_argument("--init", default="")
    ap.add_argument("--refine", type=int, default=0, help="channels of the residual refinement branch of the mask features (0: none)")
    ap.add_argument("--taps", type=int, nargs="?", const=64, default=0,
                    help="channels of the mask features' branch on the backbone taps (needs a cache.py --taps cache; 0: none)")
    ap.add_argument("--dec", type=int, nargs="?", const=64, default=0,
                    help="channels of the decoder's own residual features on the backbone taps (needs --taps; 0: none)")
    ap.add_argument("--rank", type=float, default=0.0, help="weight of the predicted-IoU ranking loss across levels")
    ap.add_argument("--rank-plain", type=float, default=None,
                    help="weight of the ranking loss on the real COCO views (kind 'plain'; default: --rank)")
    ap.add_argument("--src-weight", action="append", default=[], metavar="PREFIX=W",
                    help="sample views of chunks with this file prefix W times as often (e.g. c=2.5)")
    ap.add_argument("--gc", type=float, default=0.0, help="weight of the generic queries' prompt-matching loss")
    ap.add_argument("--cells", type=int, default=1024, help="stride-4 cells per view the mask losses are computed on")
    ap.add_argument("--near", type=float, default=0.0,
                    help="cells inside an instance's box grown 2x are drawn 1 + NEAR times as often (0: uniform)")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--expect-views", type=int, default=0, help="look for new cache chunks every 200 steps until this many")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    t_load = time.time()
    cache = Cache(args.cache, taps=args.taps > 0)
    V = len(cache.index)
    print(f"cache: {V} views in {len(cache.chunks)} chunks loaded in {time.time() - t_load:.0f} s", flush=True)
    src_w = {k: float(v) for k, v in (a.split("=") for a in args.src_weight)}
    probs = cache.probs(src_w)
    for p in sorted(set(cache.prefix)):
        sel = [cache.prefix[c] == p for c, _ in cache.index]
        print(f"  prefix {p}: {sum(sel)} views, {probs[sel].sum():.1%} of the samples", flush=True)
    assert not args.dec or args.taps, "--dec reads the backbone taps: give --taps too"
    model = LocalModel(refine=args.refine, taps=args.taps, dec=args.dec)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    step, elapsed, seen = 0, 0.0, 0
    ck = os.path.join(args.out, "last_full.pt")
    if os.path.exists(ck):
        st = torch.load(ck, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, elapsed, seen = st["step"], st["elapsed"], st["seen"]
        print(f"resumed at step {step}, {elapsed / 60:.1f} min", flush=True)
    elif args.init:
        st = torch.load(args.init, map_location="cpu", weights_only=False)
        missing, unexpected = model.load_state_dict({k: v.float() for k, v in st["model"].items()}, strict=False)
        assert not unexpected, unexpected
        new = ("mask_features.refine.", "mask_features.tap_lat.", "mask_features.tap_head.", "dec_features.")
        assert all(k.startswith(new) for k in missing), missing
        print(f"init from {args.init} (step {st['step']}); new: {len(missing)} tensors", flush=True)
    budget = args.minutes * 60
    log = open(os.path.join(args.out, "train_log.jsonl"), "a")
    rng = np.random.default_rng(args.seed + step)
    t0 = time.time() - elapsed
    last_ck = time.time()
    acc, acc_n, t_win, n_win = {}, 0, time.time(), 0

    def save():
        st = dict(model=model.state_dict(), opt=opt.state_dict(), step=step, elapsed=time.time() - t0, seen=seen,
                  cfg=model.cfg)
        torch.save(st, ck + ".tmp")
        os.replace(ck + ".tmp", ck)
        small = dict(model={k: v.half() for k, v in model.state_dict().items()}, step=step, cfg=model.cfg,
                     elapsed=time.time() - t0, seen=seen)
        torch.save(small, os.path.join(args.out, "last.pt"))

    while time.time() - t0 < budget:
        frac = (time.time() - t0) / budget
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 200 == 0 and V < args.expect_views:
            V = cache.refresh()
            probs = cache.probs(src_w)
        idx = rng.choice(V, args.batch, p=probs) if src_w else rng.integers(0, V, args.batch)  # (uniform: as before)
        data, meta = cache.batch(idx.tolist())
        total, losses, m_iou = step_losses(model, data, meta, rng, args.rows, args.cells, args.rank, args.gc,
                                           args.rank_plain, args.near)
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seen += args.batch
        n_win += args.batch
        for k, v in losses.items():
            acc[k] = acc.get(k, 0.0) + float(v.detach())
        acc["miou"] = acc.get("miou", 0.0) + m_iou
        acc_n += 1
        if step % 25 == 0:
            rate = n_win / (time.time() - t_win)
            rec = {k: round(v / acc_n, 4) for k, v in acc.items()}
            rec.update(step=step, lr=round(lr, 6), views_per_s=round(rate, 1), minutes=round((time.time() - t0) / 60, 1))
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            acc, acc_n, t_win, n_win = {}, 0, time.time(), 0
        if time.time() - last_ck > args.ckpt_minutes * 60:
            save()
            last_ck = time.time()
    save()
    print(f"done: {step} steps, {seen} views, {seen / (time.time() - t0):.1f} views/s", flush=True)


if __name__ == "__main__":
    main()
