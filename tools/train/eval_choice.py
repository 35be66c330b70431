"""Choice rules among a prompt's K candidates, compared on one COCO file (an experiment, not the runtime's rule):
predicted IoU (what vprompt does), predicted IoU x stability, stability alone. Stability is SAM's score:
the share of stride-4 cells with logit > 1 among those with logit > -1.

python3 eval_choice.py MODEL_DIR GT.json IMAGES_DIR all|eval      (instances with a bbox >= 32x32)
"""
import sys, json, os, contextlib, io
import numpy as np, torch, torch.nn.functional as F, onnxruntime as ort, yaml
from PIL import Image
from pycocotools.coco import COCO
from scipy import ndimage
model, gt, images, split = sys.argv[1:5]
spec = yaml.safe_load(open(os.path.join(model, "model.yaml"))); S = spec["input"]["size"]; G, K = spec["queries"]["generic"], spec["queries"]["levels"]
so = ort.SessionOptions(); so.intra_op_num_threads = 1
enc = ort.InferenceSession(os.path.join(model, "encoder.onnx"), so); dec = ort.InferenceSession(os.path.join(model, "decoder.onnx"), so)
with contextlib.redirect_stdout(io.StringIO()): coco = COCO(gt)
imgs = sorted(coco.imgs.values(), key=lambda im: im["file_name"])
if split == "eval": imgs = imgs[len(imgs)//2:]
res = {}
for im in imgs:
    anns = [a for a in coco.imgToAnns[im["id"]] if not a.get("iscrowd", 0) and a["bbox"][2] >= 32 and a["bbox"][3] >= 32]
    if not anns: continue
    rgb = np.asarray(Image.open(os.path.join(images, im["file_name"])).convert("RGB")); H, W = rgb.shape[:2]
    s = S / max(H, W); nh, nw = round(H*s), round(W*s)
    x = (np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR), np.float32)/255 - 0.5)/0.5
    inp = np.zeros((1,3,S,S), np.float32); inp[0,:,:nh,:nw] = x.transpose(2,0,1)
    f = enc.run(None, {"image": inp}); feats = dict(zip(["feat8","feat16","feat32","mask_feat"], f))
    rows, ms = [], []
    for a in anns:
        m = coco.annToMask(a).astype(bool)
        ys, xs = np.nonzero(m); x0,x1,y0,y1 = xs.min(), xs.max()+1, ys.min(), ys.max()+1
        dt = ndimage.distance_transform_edt(np.pad(m,1))[1:-1,1:-1]; cy, cx = np.unravel_index(np.argmax(dt), dt.shape)
        rows += [[(x0+x1)/2*s/S,(y0+y1)/2*s/S,(x1-x0)*s/S,(y1-y0)*s/S], [(cx+.5)*s/S,(cy+.5)*s/S,0,0]]; ms.append(m)
    iou, _, _, me = dec.run(None, {**feats, "anchors": np.array(rows, np.float32)})
    iou = iou[0,G:].reshape(-1,K); me = me[0,G:].reshape(len(rows),K,-1); mf = torch.from_numpy(f[3][0])
    for n, m in enumerate(ms):
        for kind, row in (("box",2*n),("click",2*n+1)):
            cand = []
            for k in range(K):
                lg = torch.einsum("m,mhw->hw", torch.from_numpy(me[row,k]), mf)
                stab = float(((lg > 1).sum()) / max(1, int((lg > -1).sum())))
                lg = F.interpolate(lg[None,None], size=(S,S), mode="bilinear", align_corners=False)[0,0,:nh,:nw]
                lg = F.interpolate(lg[None,None], size=(H,W), mode="bilinear", align_corners=False)[0,0]
                p = (lg > 0).numpy(); cand.append(((p&m).sum()/max(1,(p|m).sum()), float(iou[row,k]), stab))
            for rule, key in (("iou", lambda c: c[1]), ("iou_x_stab", lambda c: c[1]*c[2]), ("stab", lambda c: c[2])):
                res.setdefault(f"{kind}_{rule}", []).append(max(cand, key=key)[0])
print(json.dumps({k: round(float(np.mean(v)),4) for k, v in res.items()}))
