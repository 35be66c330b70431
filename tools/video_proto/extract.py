"""Encoder features of the DAVIS-2016 dev-val frames, cached for the readout prototype.

For every frame: the letterboxed 320x320 input (longer side to 320, padded bottom/right, as vprompt's
`model::Letterbox`), the encoder's `mask_feat` (stride 4) and `feat8` (stride 8), each cropped to the
cells that cover the frame, stored as float16 in OUT/SEQ.npz.
Usage: python3 tools/video_proto/extract.py --model models/vprompt-lite0 --out out/readout/feats
"""
import argparse
import os

import numpy as np
import onnxruntime as ort
from PIL import Image

SEQS = ["bear", "car-turn", "dance-jump", "kite-walk", "soccerball", "stroller"]


def letterbox(img, size):
    w, h = img.size
    s = size / max(w, h)
    sw, sh = max(1, round(w * s)), max(1, round(h * s))
    canvas = np.zeros((size, size, 3), np.float32)
    canvas[:sh, :sw] = np.asarray(img.resize((sw, sh), Image.BILINEAR), np.float32)
    x = (canvas / 255.0 - 0.5) / 0.5
    return x.transpose(2, 0, 1)[None], sw, sh


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/vprompt-lite0")
    ap.add_argument("--data", default="../shared/data/davis2016-train-240p")
    ap.add_argument("--out", default="out/readout/feats")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(os.path.join(a.model, "encoder.onnx"), opts)
    for seq in SEQS:
        d = os.path.join(a.data, "JPEGImages", seq)
        names = sorted(os.listdir(d))
        mf, f8 = [], []
        for n in names:
            x, sw, sh = letterbox(Image.open(os.path.join(d, n)).convert("RGB"), 320)
            out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": x})))
            m = out["mask_feat"][0]
            c = out["feat8"][0]
            gw, gh = -(-sw * m.shape[2] // 320), -(-sh * m.shape[1] // 320)
            cw, ch = -(-sw * c.shape[2] // 320), -(-sh * c.shape[1] // 320)
            mf.append(m[:, :gh, :gw].astype(np.float16))
            f8.append(c[:, :ch, :cw].astype(np.float16))
        np.savez(os.path.join(a.out, seq + ".npz"), mask_feat=np.stack(mf), feat8=np.stack(f8),
                 names=np.array(names), scaled=np.array([sw, sh]))
        print(seq, len(names), mf[0].shape, f8[0].shape, flush=True)


if __name__ == "__main__":
    main()
