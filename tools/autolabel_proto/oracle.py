"""The same proposals with the class of the ground-truth instance each overlaps most (an oracle), scored by
predicted IoU: what the proposals allow when classification is perfect. Takes classify.py's arguments."""
import os
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "classify.py")).read().split("res = []")[0])
res = []
import numpy as np
for i in ev:
    d = data[i]
    idx = proposals(d)
    if len(idx) == 0: continue
    G = gt_iou(d, idx)
    lg = torch.from_numpy(d["logits"][idx].astype(np.float32))
    nh, nw = d["nh"], d["nw"]
    up = F.interpolate(lg[None], size=(320, 320), mode="bilinear", align_corners=False)[0][:, :nh, :nw]
    full = F.interpolate(up[None], size=(d["h"], d["w"]), mode="bilinear", align_corners=False)[0] > 0
    for r in range(len(idx)):
        if G.shape[1] == 0: continue
        g = int(G[r].argmax())
        rle = mu.encode(np.asfortranarray(full[r].numpy().astype(np.uint8))); rle["counts"] = rle["counts"].decode()
        res.append({"image_id": int(i), "category_id": int(d["gt_cat"][g]), "segmentation": rle, "score": float(d["iou"][idx][r])})
with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(os.path.join(a.split, "eval.json")); dt = gt.loadRes(res)
    E = COCOeval(gt, dt, "segm"); E.params.catIds = [c for c in cats if gt.getAnnIds(catIds=[c])]
    E.evaluate(); E.accumulate(); E.summarize()
print(f"ORACLE class {vars(a)['iou_min']} {a.nms} dets {len(res)} AP {E.stats[0]:.4f} AP50 {E.stats[1]:.4f} AR100 {E.stats[8]:.4f}")
