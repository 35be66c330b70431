"""The local decoder: interactive queries that segment what lies under their point or inside their box.

Why the first decoder collapsed: its point queries differed only by a positional embedding, attended to the
whole image and produced masks by appearance alone, so every query learned "the salient object". Here
locality is built in, so that a few CPU-hours of training suffice:
- a query starts from the features sampled under its anchor (a bilinear tent at a point, a pyramid over a
  box) at stride 8 and stride 4;
- its cross-attention carries a Gaussian bias around its anchor (per head, learned strength);
- its mask logit is appearance (the frozen stride-4 mask features plus a small trained adapter) plus a
  positional term from tent bases along x and y that the query weights to push the logit down outside its
  predicted box, so a mask stays where the query is.
The mask formula of the model contract is unchanged (logit = mask_embed . mask_feat): the positional bases
are extra channels of `mask_feat`, the weights extra entries of `mask_embed`.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import MLP, Attention, FFN, grid_pos, inverse_sigmoid, sine_embed


def tent_basis(n, knots, device=None):
    """[knots, n]: piecewise-linear hat functions with knots at j/(knots-1), sampled at cell centres of n cells."""
    x = (torch.arange(n, dtype=torch.float32, device=device) + 0.5) / n
    c = torch.arange(knots, dtype=torch.float32, device=device) / (knots - 1)
    return (1 - (x[None, :] - c[:, None]).abs() * (knots - 1)).clamp(min=0)


def axis_centres(n, device=None):
    return (torch.arange(n, dtype=torch.float32, device=device) + 0.5) / n


def pool(anchors, f):
    """Features pooled under each anchor: a tent one cell wide at a point, a pyramid over a box.
    anchors [B,N,4] cxcywh, f [B,c,h,w] -> [B,N,c]. The weights are separable in x and y."""
    h, w = f.shape[-2], f.shape[-1]
    cx, cy, bw, bh = anchors.unbind(-1)
    wx = (1 - (axis_centres(w, f.device) - cx[..., None]).abs() / (bw / 2 + 1.0 / w)[..., None]).clamp(min=0)
    wy = (1 - (axis_centres(h, f.device) - cy[..., None]).abs() / (bh / 2 + 1.0 / h)[..., None]).clamp(min=0)
    wx = wx / (wx.sum(-1, keepdim=True) + 1e-6)  # [B,N,w]
    wy = wy / (wy.sum(-1, keepdim=True) + 1e-6)  # [B,N,h]
    t = torch.einsum("bcyx,bnx->bncy", f, wx)
    return torch.einsum("bncy,bny->bnc", t, wy)


TAP_CHANNELS = (24, 40, 112)  # EfficientNet-Lite0 stage outputs at stride 4, 8, 16 (vp/model.py)
TAP_SCALE = 0.125  # the taps are linear-bottleneck outputs with std ~8 (cache.py); scaled to ~1 for the default init


def _branch(width, out):
    """ReLU, 3x3 depthwise, 1x1, dilated 3x3 depthwise, a last 1x1 to `out` channels that starts at zero."""
    head = nn.Sequential(
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, padding=1, groups=width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, padding=2, dilation=2, groups=width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, out, 1),
    )
    nn.init.zeros_(head[-1].weight)
    nn.init.zeros_(head[-1].bias)
    return head


class MaskFeatures(nn.Module):
    """mask_feat for the contract: frozen stride-4 features (M0), a trained adapter (A), tent bases along x and y."""

    def __init__(self, C=64, M0=32, A=32, knots=32, refine=0, taps=0):
        super().__init__()
        self.knots = knots
        self.adapt = nn.Sequential(
            nn.Conv2d(M0 + C, 64, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1, groups=64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, A, 1),
        )
        # optional wider residual branch (refine channels) that also sees feat16 and a larger receptive field
        # (a 3x3 and a dilated 3x3 depthwise conv); its last conv starts at zero, so a checkpoint trained
        # without it is the starting point
        self.refine = None
        if refine:
            self.refine = nn.Sequential(nn.Conv2d(M0 + 2 * C, refine, 1), *_branch(refine, A))
        # optional residual branch (taps channels) on the frozen backbone's stride-4/8/16 taps rather than the
        # FPN's outputs: the FPN squeezes 176 backbone channels into 64 + 32 trained for the v1 decoder, which
        # limits the masks (run 1 plateaued). A small FPN of its own: 1x1 laterals summed at stride 4, then a 3x3
        # and a dilated 3x3 depthwise conv; the last conv starts at zero, so a checkpoint without it is the start
        self.tap_lat, self.tap_head = None, None
        if taps:
            self.tap_lat = nn.ModuleList(nn.Conv2d(c, taps, 1) for c in TAP_CHANNELS)
            self.tap_head = _branch(taps, A)

    def forward(self, feat8, mask_feat, feat16=None, taps=None):
        """taps: the backbone's (x4, x8, x16), needed only with the taps branch."""
        B, _, h, w = mask_feat.shape
        up = F.interpolate(feat8, size=(h, w), mode="bilinear", align_corners=False)
        a = self.adapt(torch.cat((mask_feat, up), 1))
        if self.refine is not None:
            up16 = F.interpolate(feat16, size=(h, w), mode="bilinear", align_corners=False)
            a = a + self.refine(torch.cat((mask_feat, up, up16), 1))
        if self.tap_head is not None:
            x4, x8, x16 = (x * TAP_SCALE for x in taps)
            t = self.tap_lat[0](x4)
            for lat, x in zip(self.tap_lat[1:], (x8, x16)):
                t = t + F.interpolate(lat(x), size=(h, w), mode="bilinear", align_corners=False)
            a = a + self.tap_head(t)
        bx = tent_basis(w, self.knots, mask_feat.device)  # [k, w]
        by = tent_basis(h, self.knots, mask_feat.device)  # [k, h]
        px = bx[:, None, :].expand(self.knots, h, w)
        py = by[:, :, None].expand(self.knots, h, w)
        pos = torch.cat((px, py), 0)[None].expand(B, 2 * self.knots, h, w)
        return torch.cat((mask_feat, a, pos), 1)


class DecoderFeatures(nn.Module):
    """The decoder's own view of the image: the frozen FPN outputs (feat8/16/32, shared with the frozen prompt
    encoder) plus a trained residual from the backbone's stride-8/16 taps at each of the three scales. The FPN was
    trained with the first decoder, whose queries collapsed to the salient object; this lets the decoder's
    cross-attention and query pooling read instance cues the FPN squeezed out, without moving the prompt encoder's
    inputs. Every residual starts at zero, so a checkpoint without it is the start."""

    def __init__(self, C=64, width=64):
        super().__init__()
        self.lat8 = nn.Conv2d(TAP_CHANNELS[1], width, 1)
        self.lat16 = nn.Conv2d(TAP_CHANNELS[2], width, 1)
        self.heads = nn.ModuleList(_branch(width, C) for _ in range(3))

    def forward(self, f8, f16, f32, taps):
        _, x8, x16 = (x * TAP_SCALE for x in taps)
        l8, l16 = self.lat8(x8), self.lat16(x16)
        t8 = l8 + F.interpolate(l16, size=l8.shape[-2:], mode="bilinear", align_corners=False)
        t16 = l16 + F.avg_pool2d(l8, 2)
        t32 = F.avg_pool2d(l16, 2)
        return tuple(f + h(t) for f, h, t in zip((f8, f16, f32), self.heads, (t8, t16, t32)))


class LocalLayer(nn.Module):
    def __init__(self, C, heads):
        super().__init__()
        self.self_attn = Attention(C, heads)
        self.n1 = nn.LayerNorm(C)
        self.cross = Attention(C, heads)
        self.n2 = nn.LayerNorm(C)
        self.ffn = FFN(C, 2 * C)
        self.n3 = nn.LayerNorm(C)

    def forward(self, q, qpos, mem, mpos, bias, G):
        # self-attention among the generic queries only; interactive queries stay independent of each other
        g = q[:, :G]
        gp = qpos[:, :G]
        g = self.n1(g + self.self_attn(g + gp, g + gp, g))
        q = torch.cat((g, q[:, G:]), 1)
        q = self.n2(q + self.cross(q + qpos, mem + mpos, mem, bias))
        return self.n3(q + self.ffn(q))


class LocalDecoder(nn.Module):
    def __init__(self, C=64, M0=32, A=32, D=64, G=50, K=2, heads=4, anchor_sizes=(0.06, 0.25), knots=32):
        super().__init__()
        self.C, self.M0, self.A, self.G, self.K, self.H, self.knots = C, M0, A, G, K, heads, knots
        self.level_content = nn.Parameter(torch.randn(K, C) * 0.1)
        self.box_content = nn.Parameter(torch.randn(K, C) * 0.1)
        self.generic_content = nn.Parameter(torch.randn(G, C) * 0.1)
        self.generic_anchor = nn.Parameter(inverse_sigmoid(torch.rand(G, 4) * 0.6 + 0.2))
        self.register_buffer("anchor_wh", torch.tensor(anchor_sizes[:K], dtype=torch.float32))
        self.sample_proj = MLP(C + M0, C, C, 2)
        self.anchor_pos = MLP(2 * C, C, C, 2)
        self.level_embed = nn.Parameter(torch.zeros(3, C))
        # per layer and head: strength of the Gaussian locality bias (softplus); heads from broad to sharp
        init = torch.tensor([-4.0, 0.0, 1.0, 2.0])[:heads]
        self.locality = nn.Parameter(init[None].repeat(3, 1))
        self.layers = nn.ModuleList(LocalLayer(C, heads) for _ in range(3))
        self.norm = nn.LayerNorm(C)
        self.app_head = MLP(C, C, M0 + A, 3)
        self.edge_head = MLP(C, C, 4, 2)
        self.box_head = MLP(C, C, 4, 3)
        self.iou_head = MLP(C, C, 1, 2)
        self.embed_head = MLP(C, C, D, 2)

    def anchors(self, rows):
        """rows [B,N,4] (cx,cy,w,h; w = h = 0 for a point) -> per-query anchors [B,N*K,4], box flags [B,N,1,1]."""
        B, N, _ = rows.shape
        K = self.K
        is_box = ((rows[..., 2] > 0) & (rows[..., 3] > 0)).float()[..., None, None]  # [B,N,1,1]
        pts = rows[..., None, :2].expand(B, N, K, 2)
        lvl = self.anchor_wh[None, None, :, None].expand(B, N, K, 2)
        boxwh = rows[..., None, 2:].expand(B, N, K, 2)
        wh = is_box * boxwh + (1 - is_box) * lvl
        return torch.cat((pts, wh), -1).clamp(1e-3, 1.0).reshape(B, N * K, 4), is_box

    def forward(self, feats, rows):
        """feats: (f8, f16, f32, mask_feat_raw [B,M0,..]); rows [B,N,4]."""
        f8, f16, f32, mf = feats
        B, N, _ = rows.shape
        C, K, G = self.C, self.K, self.G
        ia, is_box = self.anchors(rows)
        # content of each interactive query: level token (point or box) + features sampled under its anchor
        s8 = pool(rows, f8)
        s4 = pool(rows, mf[:, : self.M0])
        init = self.sample_proj(torch.cat((s8, s4), -1))[:, :, None, :]  # [B,N,1,C]
        tok = is_box * self.box_content[None, None] + (1 - is_box) * self.level_content[None, None]  # [B,N,K,C]
        qi = (tok + init).reshape(B, N * K, C)
        ga = self.generic_anchor.sigmoid()[None].expand(B, G, 4)
        anchors = torch.cat((ga, ia), 1)  # [B,Q,4]
        q = torch.cat((self.generic_content[None].expand(B, G, C), qi), 1)
        qpos = self.anchor_pos(sine_embed(anchors, C // 2))
        beta = F.softplus(self.locality)
        for i, f in enumerate((f32, f16, f8)):
            h, w = f.shape[-2], f.shape[-1]
            mem = f.flatten(2).transpose(1, 2)
            mpos = grid_pos(h, w, C, f.device)[None] + self.level_embed[i]
            sx = (anchors[..., 2:3] / 2).clamp(min=1.0 / w)
            sy = (anchors[..., 3:4] / 2).clamp(min=1.0 / h)
            dx2 = ((axis_centres(w, f.device) - anchors[..., 0:1]) / sx) ** 2  # [B,Q,w]
            dy2 = ((axis_centres(h, f.device) - anchors[..., 1:2]) / sy) ** 2  # [B,Q,h]
            d2 = (dy2[..., :, None] + dx2[..., None, :]).flatten(-2)  # [B,Q,h*w], row-major like the memory
            bias = -beta[i][None, :, None, None] * d2[:, None]  # [B,H,Q,L]
            q = self.layers[i](q, qpos, mem, mpos, bias, G)
        q = self.norm(q)
        boxes = (inverse_sigmoid(anchors) + self.box_head(q)).sigmoid()
        iou = self.iou_head(q)[..., 0].sigmoid()
        emb = F.normalize(self.embed_head(q), dim=-1)
        app = self.app_head(q)
        e = self.edge_head(q)
        c = torch.arange(self.knots, dtype=torch.float32, device=q.device) / (self.knots - 1)
        s = self.knots - 1

        def edge(center, size, alpha, mu):
            out = (c - center[..., None]).abs() - size[..., None] / 2  # distance outside the box edge
            return -F.softplus(alpha)[..., None] * F.relu(out * s + mu[..., None])

        ex = edge(boxes[..., 0], boxes[..., 2], e[..., 0], e[..., 1])
        ey = edge(boxes[..., 1], boxes[..., 3], e[..., 2], e[..., 3])
        mask_embed = torch.cat((app, ex, ey), -1)
        return iou, boxes, emb, mask_embed


class LocalModel(nn.Module):
    """What is trained: the mask-feature adapter and the local decoder (the encoder and prompt encoder are frozen)."""

    def __init__(self, **cfg):
        super().__init__()
        self.cfg = dict(C=64, M0=32, A=32, D=64, G=50, K=2, knots=32, refine=0, taps=0, dec=0)
        self.cfg.update(cfg)
        c = self.cfg
        self.mask_features = MaskFeatures(c["C"], c["M0"], c["A"], c["knots"], c["refine"], c["taps"])
        self.decoder = LocalDecoder(c["C"], c["M0"], c["A"], c["D"], c["G"], c["K"], knots=c["knots"])
        self.dec_features = DecoderFeatures(c["C"], c["dec"]) if c["dec"] else None
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def decoder_inputs(self, f8, f16, f32, taps):
        """feat8/16/32 as the decoder reads them (with the `dec` branch: plus its residuals)."""
        if self.dec_features is None:
            return f8, f16, f32
        return self.dec_features(f8, f16, f32, taps)

    def scale(self):
        return self.logit_scale.exp().clamp(max=100.0)
