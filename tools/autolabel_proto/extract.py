"""Prototype of the proposals labeler (auto-labeling v2), in PyTorch: for every COCO128 image, the shipped
decoder's proposals (queries with predicted IoU > 0.3, masks on the stride-4 grid) and descriptors of
proposals and ground-truth masks pooled from several feature maps (the encoder's outputs, its backbone's
stride-16/32 outputs and ImageNet head, and the same of the pure ImageNet backbone).

    python3 extract.py --out feats.pt        # ~1 min on 2 cores; then classify.py / oracle.py
"""
import argparse, os, sys, numpy as np, torch, torch.nn.functional as F
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "train"))
torch.set_num_threads(1)
ap = argparse.ArgumentParser()
ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "..", "shared", "data"))
ap.add_argument("--out", required=True)
args = ap.parse_args()
from export_local import load, grid_rows
from vp.data import letterbox, load_rgb
from vp.model import EfficientNetLite0, load_imagenet
from pycocotools.coco import COCO
ck = os.path.join(HERE, "..", "train", "checkpoints")
base, local, _ = load(os.path.join(ck, "last.pt"), os.path.join(ck, "local_run1.pt"))
inet = EfficientNetLite0(); load_imagenet(inet); inet.eval()
D = os.path.join(args.data, "coco128")
coco = COCO(f"{D}/annotations/instances_train2017.json")
rows = grid_rows(20)
out = {}
def pool(fm, m):  # fm [C,h,w], m [H,W] float at 80x80 -> masked mean at fm's res
    mm = F.adaptive_avg_pool2d(m[None, None], fm.shape[-2:])[0, 0]
    w = mm.sum()
    return ((fm * mm).sum((1, 2)) / w.clamp(min=1e-6)).numpy()
def head(bb, x32):
    return F.relu6(bb._bn1(bb._conv_head(x32)))
with torch.no_grad():
    for k, iid in enumerate(sorted(coco.getImgIds())):
        info = coco.loadImgs(iid)[0]
        img = load_rgb(f"{D}/train2017/{info['file_name']}")
        x, s, (nh, nw) = letterbox(img, 320)
        x = x[None]
        f8, f16, f32, mf, taps = base.encoder(x, with_taps=True)
        mask_feat = local.mask_features(f8, mf, f16, taps)
        iou, boxes, emb, membed = local.decoder((f8, f16, f32, mask_feat), rows[None])
        logits = torch.einsum("qc,chw->qhw", membed[0], mask_feat[0])  # [Q,80,80]
        xs = base.encoder.backbone(x)
        xi = inet(x)
        feats = {"f8": f8[0], "f16": f16[0], "f32": f32[0], "mf": mask_feat[0, :64],
                 "b16": xs[2][0], "b32": xs[3][0], "h": head(base.encoder.backbone, xs[3])[0],
                 "i16": xi[2][0], "i32": xi[3][0], "ih": head(inet, xi[3])[0]}
        # GT masks at 80x80 on the letterboxed input
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=iid, iscrowd=False))]
        gt = []
        for a in anns:
            m = torch.from_numpy(coco.annToMask(a)).float()
            r = F.interpolate(m[None, None], size=(nh, nw), mode="bilinear", align_corners=False)[0, 0]
            full = torch.zeros(320, 320); full[:nh, :nw] = r
            gt.append(F.adaptive_avg_pool2d(full[None, None], (80, 80))[0, 0])
        def descs(ms):
            return {n: np.stack([pool(fm, m) for m in ms]) if ms else np.zeros((0, fm.shape[0]), np.float32) for n, fm in feats.items()}
        # proposals: keep those with pred iou > 0.3, non-empty
        valid = torch.zeros(80, 80); valid[:(nh + 3) // 4, :(nw + 3) // 4] = 1
        prob = (logits > 0).float() * valid
        area = prob.sum((1, 2))
        keep = ((iou[0] > 0.3) & (area >= 4)).nonzero()[:, 0]
        pm = [prob[q] for q in keep.tolist()]
        out[iid] = dict(file=info["file_name"], w=info["width"], h=info["height"], s=s, nh=nh, nw=nw,
                        q=keep.numpy(), iou=iou[0, keep].numpy(), emb=emb[0, keep].numpy(),
                        logits=logits[keep].half().numpy(), gt_ids=np.array([a["id"] for a in anns]),
                        gt_cat=np.array([a["category_id"] for a in anns]), gt80=np.stack([g.numpy() for g in gt]) if gt else np.zeros((0, 80, 80)),
                        pd=descs(pm), gd=descs(gt))
        if k % 16 == 0:
            print(k, info["file_name"], len(keep), flush=True)
torch.save(out, args.out)
