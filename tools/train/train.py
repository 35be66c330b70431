"""Train vprompt-lite0 on CPU (time-budgeted, resumable).

python3 train.py --out runs/main --minutes 75 --size 256 --batch 8
"""
import argparse
import json
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from vp.data import Sampler
from vp.model import VPrompt, grid_points, load_imagenet


def masks_to_boxes(m):
    """m bool [n,S,S] -> cxcywh normalised [n,4]"""
    n, S, _ = m.shape
    out = torch.zeros(n, 4)
    for i in range(n):
        ys, xs = torch.nonzero(m[i], as_tuple=True)
        if len(ys) == 0:
            continue
        x0, x1, y0, y1 = xs.min().item(), xs.max().item() + 1, ys.min().item(), ys.max().item() + 1
        out[i] = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]) / S
    return out


def cxcywh_to_xyxy(b):
    cx, cy, w, h = b.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1)


def giou_loss(a, b):
    a, b = cxcywh_to_xyxy(a), cxcywh_to_xyxy(b)
    lt = torch.max(a[:, :2], b[:, :2])
    rb = torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    aa = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    ab = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    union = aa + ab - inter
    iou = inter / union.clamp(min=1e-6)
    lt2 = torch.min(a[:, :2], b[:, :2])
    rb2 = torch.max(a[:, 2:], b[:, 2:])
    hull = (rb2 - lt2).clamp(min=0).prod(-1)
    return (1 - (iou - (hull - union) / hull.clamp(min=1e-6))).mean()


def mask_losses(logit, tgt):
    """logit [n,hw], soft tgt [n,hw] -> per-row bce, dice"""
    bce = F.binary_cross_entropy_with_logits(logit, tgt, reduction="none").mean(-1)
    p = logit.sigmoid()
    dice = 1 - (2 * (p * tgt).sum(-1) + 1) / (p.sum(-1) + tgt.sum(-1) + 1)
    return bce, dice


def compute_losses(model, batch, points, S):
    cfg = model.cfg
    G, K = cfg["G"], cfg["K"]
    N = points.shape[0]
    imgs = batch["images"].contiguous(memory_format=torch.channels_last)
    f8, f16, f32, mf = model.encoder(imgs)
    pi = batch["p_img"]
    pe = model.prompt_encoder((f8[pi], f16[pi], f32[pi]), batch["p_mask"])
    B = len(batch["modes"])
    E = torch.zeros(B, pe.shape[1]).index_add(0, batch["p_item"], pe)
    E = F.normalize(E, dim=-1)
    ti = batch["tgt_idx"]
    pred_iou, boxes, emb, me = model.decoder((f8[ti], f16[ti], f32[ti]), points)
    mfs = mf[ti]
    h, w = mfs.shape[-2:]
    logits = torch.einsum("bqm,bmhw->bqhw", me, mfs).flatten(2)  # [B,Q,hw]
    scale = model.scale()
    px = (points[:, 0] * S).long().clamp(0, S - 1)
    py = (points[:, 1] * S).long().clamp(0, S - 1)
    L = {k: [] for k in ("pt_bce", "pt_dice", "pt_l1", "pt_giou", "iou", "refer", "g_bce", "g_dice", "g_l1", "g_giou", "cls")}
    stats = {"refer_acc": [], "best_iou": []}
    for b in range(B):
        inst = batch["inst"][b]
        n = inst.shape[0]
        keep = inst.flatten(1).any(1)
        t4 = F.avg_pool2d(inst.float()[None], S // h)[0].flatten(1)  # [n,hw]
        tboxes = masks_to_boxes(inst)
        lg = logits[b]
        with torch.no_grad():
            pb = (lg > 0).float()
            inter = pb @ t4.T
            union = pb.sum(-1, keepdim=True) + t4.sum(-1)[None] - inter
            iou_mat = inter / union.clamp(min=1e-6)  # [Q,n]
            iou_mat[:, ~keep] = 0
            iou_t = iou_mat.max(-1).values if n else torch.zeros(lg.shape[0])
        L["iou"].append(F.binary_cross_entropy(pred_iou[b].clamp(1e-6, 1 - 1e-6), iou_t))
        # ---- interactive point queries: each point segments the (smallest) instance under it, best of K levels
        inside = inst[:, py, px]  # [n,N]
        area = inst.flatten(1).sum(1).float()
        lab = torch.full((N,), -1, dtype=torch.long)
        if n:
            a = torch.where(inside, area[:, None], torch.full_like(inside, float("inf"), dtype=torch.float))
            mv, mi = a.min(0)
            lab = torch.where(torch.isfinite(mv), mi, lab)
        sel = torch.nonzero(lab >= 0).flatten()
        li = lg[G:].reshape(N, K, -1)
        if len(sel):
            tl = t4[lab[sel]]  # [s,hw]
            bce, dice = mask_losses(li[sel].flatten(0, 1), tl.repeat_interleave(K, 0))
            tot = (bce + dice).reshape(-1, K)
            kbest = tot.argmin(-1)
            ar = torch.arange(len(sel))
            L["pt_bce"].append(bce.reshape(-1, K)[ar, kbest].mean())
            L["pt_dice"].append(dice.reshape(-1, K)[ar, kbest].mean())
            qb = boxes[b, G:].reshape(N, K, 4)[sel, kbest]
            L["pt_l1"].append(F.l1_loss(qb, tboxes[lab[sel]]))
            L["pt_giou"].append(giou_loss(qb, tboxes[lab[sel]]))
        # ---- referring: softmax over interactive queries, positives = queries best overlapping the target
        s_all = scale * (emb[b] @ E[b])  # [Q]
        if batch["modes"][b] == "refer":
            t = batch["targets"][b][0]
            it = iou_mat[G:, t]
            best = it.max()
            stats["best_iou"].append(best.item())
            if best > 0.3:
                pos = it >= 0.8 * best
            else:
                pos = (lab == t)[:, None].expand(N, K).reshape(-1)
                if not pos.any():
                    pos = it >= best
            si = s_all[G:]
            L["refer"].append(torch.logsumexp(si, 0) - torch.logsumexp(si[pos], 0))
            stats["refer_acc"].append(float(pos[si.argmax()].item()))
        # ---- generic queries: Hungarian matching to all instances, classification against the item's class embedding
        kidx = torch.nonzero(keep).flatten()
        if len(kidx):
            lgg = lg[:G]
            with torch.no_grad():
                p = lgg.sigmoid()
                tk = t4[kidx]
                cd = 1 - (2 * p @ tk.T + 1) / (p.sum(-1)[:, None] + tk.sum(-1)[None] + 1)
                cb = torch.cdist(boxes[b, :G], tboxes[kidx], p=1)
                cost = 2 * cd + cb
                r, c = linear_sum_assignment(cost.numpy())
            r = torch.as_tensor(r)
            c = torch.as_tensor(c)
            bce, dice = mask_losses(lgg[r], t4[kidx[c]])
            L["g_bce"].append(bce.mean())
            L["g_dice"].append(dice.mean())
            L["g_l1"].append(F.l1_loss(boxes[b, r], tboxes[kidx[c]]))
            L["g_giou"].append(giou_loss(boxes[b, r], tboxes[kidx[c]]))
            lab_g = torch.zeros(G)
            tset = set(batch["targets"][b])
            for rr, cc in zip(r.tolist(), c.tolist()):
                if kidx[cc].item() in tset:
                    lab_g[rr] = 1.0
            z = s_all[:G] + model.logit_bias
            L["cls"].append(F.binary_cross_entropy_with_logits(z, lab_g, reduction="sum") / max(1.0, lab_g.sum().item()))
    W = dict(pt_bce=2, pt_dice=2, pt_l1=5, pt_giou=2, iou=2, refer=2, g_bce=2, g_dice=2, g_l1=5, g_giou=2, cls=1)
    out = {k: torch.stack(v).mean() for k, v in L.items() if v}
    total = sum(W[k] * v for k, v in out.items())
    return total, out, stats


class _Stream(torch.utils.data.IterableDataset):
    def __init__(self, sampler, B):
        self.sampler, self.B = sampler, B

    def __iter__(self):
        torch.set_num_threads(1)
        while True:
            yield self.sampler.batch(self.B)


def BatchStream(sampler, B):
    """batches are made in one worker process, overlapping with the training step."""
    return torch.utils.data.DataLoader(_Stream(sampler, B), batch_size=None, num_workers=1, prefetch_factor=4,
                                       persistent_workers=True)


def param_groups(model, lr, bb_lr, wd, cls_lr=0.0):
    """backbone / heads; with cls_lr > 0 the two classifier scalars (logit_bias, logit_scale) get their own group
    (that lr, no weight decay): at the heads' lr they hardly move in ~1k steps."""
    bb, other, cls = [], [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if cls_lr > 0 and n in ("logit_bias", "logit_scale"):
            cls.append(p)
        else:
            (bb if n.startswith("encoder.backbone.") else other).append(p)
    groups = [dict(params=bb, lr=bb_lr, base_lr=bb_lr), dict(params=other, lr=lr, base_lr=lr)]
    if cls:
        groups.append(dict(params=cls, lr=cls_lr, base_lr=cls_lr, weight_decay=0.0))
    return groups


def freeze_early(model, upto_block=4):
    bbm = model.encoder.backbone
    for m in (bbm._conv_stem, bbm._bn0, bbm._conv_head, bbm._bn1, bbm._fc):
        for p in m.parameters():
            p.requires_grad_(False)
    for i, b in enumerate(bbm._blocks):
        if i <= upto_block:
            for p in b.parameters():
                p.requires_grad_(False)


def set_train(model):
    model.train()
    # backbone BatchNorm stays in inference mode (tiny batches)
    for m in model.encoder.backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def save(path, model, opt, step, elapsed, images_seen, sampler, args):
    tmp = path + ".tmp"
    torch.save(dict(model=model.state_dict(), opt=opt.state_dict(), step=step, elapsed=elapsed, images_seen=images_seen,
                    rng=sampler.rng.getstate(), torch_rng=torch.get_rng_state(), cfg=model.cfg, args=vars(args)), tmp)
    os.replace(tmp, path)


def save_small(path, model, step, elapsed, images_seen, args):
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    tmp = path + ".tmp"
    torch.save(dict(model=sd, step=step, elapsed=elapsed, images_seen=images_seen, cfg=model.cfg, args=vars(args)), tmp)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/main")
    ap.add_argument("--minutes", type=float, default=75.0, help="training time budget (wall clock, total over resumes)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--bb-lr", type=float, default=5e-5)
    ap.add_argument("--wd", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ckpt-minutes", type=float, default=10.0)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--init", default="", help="initialise weights from a checkpoint (fp16 last.pt ok)")
    ap.add_argument("--G", type=int, default=50)
    ap.add_argument("--K", type=int, default=2)
    ap.add_argument("--train-points", type=int, default=128, help="random subset of the 20x20 grid per step (speed)")
    ap.add_argument("--warmup", type=int, default=50, help="linear warm-up steps (also after --init / a resume of a fresh run)")
    ap.add_argument("--cls-lr", type=float, default=0.0,
                    help="own lr (no weight decay) for logit_bias / logit_scale; 0 = same group as the heads (first run)")
    ap.add_argument("--mix", default="0.5,0.1,0.2,0.2",
                    help="item weights: cross-frame DAVIS referring, DAVIS self-referring, COCO self-referring, COCO generic")
    ap.add_argument("--neg-frac", type=float, default=0.0,
                    help="share of generic items with a class absent from the target (all-negative classification)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    model = VPrompt(G=args.G, K=args.K)
    load_imagenet(model.encoder.backbone)
    if args.init:
        sd = torch.load(args.init, map_location="cpu")["model"]
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    freeze_early(model)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(param_groups(model, args.lr, args.bb_lr, args.wd, args.cls_lr), weight_decay=args.wd)
    mix = tuple(float(x) for x in args.mix.split(","))
    assert len(mix) == 4
    sampler = Sampler(args.size, seed=args.seed, weights=mix, neg_frac=args.neg_frac)
    ck = os.path.join(args.out, "ckpt.pt")
    step, elapsed, images_seen = 0, 0.0, 0
    if os.path.exists(ck):
        st = torch.load(ck, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, elapsed, images_seen = st["step"], st["elapsed"], st["images_seen"]
        sampler.rng.seed(args.seed * 1000003 + step)  # data order after a resume depends only on (seed, step)
        torch.set_rng_state(st["torch_rng"])
        print(f"resumed step {step} elapsed {elapsed:.0f}s", flush=True)
    budget = args.minutes * 60
    batches = iter(BatchStream(sampler, args.batch))
    log = open(os.path.join(args.out, "log.jsonl"), "a")
    set_train(model)
    base_pts = grid_points(20)
    t_start = time.time() - elapsed
    last_ck = time.time()
    acc = {}
    nacc = 0
    t_log = time.time()
    img_log = 0
    warm = max(1, args.warmup)
    while True:
        elapsed = time.time() - t_start
        if elapsed >= budget or (args.max_steps and step >= args.max_steps):
            break
        prog = elapsed / budget
        f = min(1.0, (step + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * prog)))
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * f
        batch = next(batches)
        jit = (torch.rand(1, 2) - 0.5) * (0.6 / 20)
        pts = (base_pts + jit).clamp(0.001, 0.999)
        if args.train_points and args.train_points < pts.shape[0]:
            pts = pts[torch.randperm(pts.shape[0])[: args.train_points].sort().values]
        total, parts, stats = compute_losses(model, batch, pts, args.size)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        images_seen += batch["images"].shape[0]
        img_log += batch["images"].shape[0]
        for k, v in parts.items():
            acc[k] = acc.get(k, 0.0) + v.item()
        acc["total"] = acc.get("total", 0.0) + total.item()
        for k, v in stats.items():
            if v:
                acc[k] = acc.get(k, 0.0) + float(np.mean(v))
        nacc += 1
        if step % 10 == 0:
            dt = time.time() - t_log
            rec = {k: round(v / nacc, 4) for k, v in acc.items()}
            rec.update(step=step, elapsed=round(time.time() - t_start), img_s=round(img_log / dt, 2), lr=round(f * args.lr, 6),
                       scale=round(model.scale().item(), 3), bias=round(model.logit_bias.item(), 3), images_seen=images_seen)
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            acc, nacc, t_log, img_log = {}, 0, time.time(), 0
        if time.time() - last_ck > args.ckpt_minutes * 60:
            save(ck, model, opt, step, time.time() - t_start, images_seen, sampler, args)
            save_small(os.path.join(args.out, "last.pt"), model, step, time.time() - t_start, images_seen, args)
            last_ck = time.time()
    elapsed = time.time() - t_start
    save(ck, model, opt, step, elapsed, images_seen, sampler, args)
    save_small(os.path.join(args.out, "last.pt"), model, step, elapsed, images_seen, args)
    print(json.dumps(dict(done=True, step=step, elapsed=round(elapsed), images_seen=images_seen)), flush=True)


if __name__ == "__main__":
    main()
