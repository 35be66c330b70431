#!/usr/bin/env python3
"""The "Python way" baseline for vprompt's propagate job.

This is the plain, sequential script a user would write to follow one object through a video with a
vprompt model folder, using onnxruntime for the three graphs and PyAV for decoding. It exists so that
the benchmark has a fair point of comparison: it does the same work per frame as vprompt's propagate
job (see docs/model-contract.md and "What happens to a frame" in README.md), one frame after another,
without batching or pipelining.

Per frame:
  1. decode the frame to RGB (PyAV);
  2. letterbox: resize the longer side to `input.size` (bilinear), place it top-left, normalise,
     pad with 0 after normalisation;
  3. encoder, then decoder with the 20x20 interactive point grid;
  4. referring selection: interactive queries with pred_iou > 0.5, box NMS at 0.7, softmax over
     logit_scale * cos against the object's memory embedding, top-1 (a mask of <= 50 pixels gives
     way to the next query, at most 5 tries);
  5. the mask: mask_embed . mask_feat, upsampled (bilinear, half-pixel) to S x S, cropped to the
     letterboxed area, resized to the frame, > 0;
  6. memory: the first prompt's embedding (pinned) plus the 8 most recent predictions with a score of
     at least 0.5, each re-encoded with prompt_encoder on its own frame; lookup = mean, L2-normalised.
On frame 0 the output is the prompt mask itself. Each frame's label PNG (0/1) goes to --out.

Usage:
  python3 benches/python_propagate.py --model models/vprompt-lite0 \
      --video data/demo/car-turn.mp4 --mask data/demo/car-turn-00000.png --out /tmp/pyout \
      [--frames N] [--threads 2] [--min-iou 0.5]

At the end one JSON line is printed: {"frames", "seconds", "fps", "peak_rss_mib"}.
"""

import argparse
import collections
import json
import os
import resource
import time

import av
import numpy as np
import onnxruntime as ort
import yaml
from PIL import Image

MIN_IOU = 0.5  # predicted IoU a query needs to be a candidate
NMS_IOU = 0.7  # box overlap above which the weaker candidate is dropped
MIN_AREA = 50  # a mask of at most this many frame pixels gives way to the next query
TRIES = 5  # ranked queries tried per frame before the object is "not found"
MEMORY = 8  # recent predictions kept in the memory (besides the pinned prompt)
MEMORY_MIN_SCORE = 0.5  # a prediction goes into the memory when its softmax score is at least this


# ---------------------------------------------------------------------------------------------
# Model


def grid_points(g):
    """The g x g point grid: cell centres, row-major (y outer, x inner), (x, y) normalised to the model
    input."""
    return np.array([[(i + 0.5) / g, (j + 0.5) / g] for j in range(g) for i in range(g)], dtype=np.float32)


class Model:
    """The three ONNX graphs of a vprompt model folder and its model.yaml."""

    def __init__(self, folder, threads):
        with open(os.path.join(folder, "model.yaml")) as f:
            self.spec = yaml.safe_load(f)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL

        def load(name):
            path = os.path.join(folder, self.spec["graphs"][name]["file"])
            return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

        self.encoder = load("encoder")
        self.prompt_encoder = load("prompt_encoder")
        self.decoder = load("decoder")

        inp = self.spec["input"]
        self.size = int(inp["size"])
        self.mean = np.array(inp["mean"], dtype=np.float32)
        self.std = np.array(inp["std"], dtype=np.float32)
        q = self.spec["queries"]
        self.generic = int(q["generic"])
        self.points = grid_points(int(q["grid"]))
        self.logit_scale = float(self.spec["classifier"]["logit_scale"])

    @staticmethod
    def _feed(session, feats, **extra):
        """Inputs for a graph: the encoder outputs it asks for by name, plus `extra`."""
        feed = {}
        for i in session.get_inputs():
            feed[i.name] = extra[i.name] if i.name in extra else feats[i.name]
        return feed

    def encode(self, image):
        names = [o.name for o in self.encoder.get_outputs()]
        outs = self.encoder.run(names, {"image": image})
        return dict(zip(names, outs))

    def decode(self, feats):
        names = ["pred_iou", "pred_boxes", "query_embed", "mask_embed"]
        # A decoder of the `anchors` form takes (cx, cy, w, h) rows: a point is a row with w = h = 0.
        anchors = np.concatenate([self.points, np.zeros_like(self.points)], axis=1)
        outs = self.decoder.run(
            names, self._feed(self.decoder, feats, points=self.points, anchors=anchors)
        )
        return {n: o[0] for n, o in zip(names, outs)}  # batch of 1

    def encode_prompt(self, feats, input_mask):
        """One S x S model-input mask -> its L2-normalised prompt embedding."""
        m = input_mask.reshape(1, 1, self.size, self.size).astype(np.float32)
        (embed,) = self.prompt_encoder.run(
            ["prompt_embed"], self._feed(self.prompt_encoder, feats, prompt_mask=m)
        )
        return embed[0]


# ---------------------------------------------------------------------------------------------
# Pixels in and masks out


def letterbox_size(w, h, size):
    """The frame's extent inside the square model input (longer side = size)."""
    s = size / max(w, h)
    return min(max(round(w * s), 1), size), min(max(round(h * s), 1), size)


def letterbox(rgb, model):
    """H x W x 3 uint8 frame -> [1,3,S,S] float32, resized top-left, normalised, zero padding."""
    h, w = rgb.shape[:2]
    sw, sh = letterbox_size(w, h, model.size)
    img = Image.fromarray(rgb)
    if (sw, sh) != (w, h):
        img = img.resize((sw, sh), Image.BILINEAR)
    x = (np.asarray(img, dtype=np.float32) / 255.0 - model.mean) / model.std
    out = np.zeros((1, 3, model.size, model.size), dtype=np.float32)
    out[0, :, :sh, :sw] = x.transpose(2, 0, 1)
    return out


def resize_bilinear(src, crop_w, crop_h, dw, dh):
    """Bilinear resize with half-pixel centres (align_corners=False) of the top-left
    crop_w x crop_h of a 2-d array to dw x dh."""

    def taps(d, n, crop):
        s = np.maximum((np.arange(d, dtype=np.float32) + 0.5) * (crop / d) - 0.5, 0.0)
        i0 = np.minimum(np.floor(s).astype(np.int64), crop - 1)
        i1 = np.minimum(i0 + 1, crop - 1)
        return i0, i1, (s - i0).astype(np.float32)

    x0, x1, tx = taps(dw, src.shape[1], crop_w)
    y0, y1, ty = taps(dh, src.shape[0], crop_h)
    top = src[y0][:, x0] + (src[y0][:, x1] - src[y0][:, x0]) * tx
    bot = src[y1][:, x0] + (src[y1][:, x1] - src[y1][:, x0]) * tx
    return top + (bot - top) * ty[:, None]


def input_logits(mask_feat, mask_embed, size):
    """One query's mask logits at model-input resolution (S x S)."""
    grid = np.tensordot(mask_embed, mask_feat[0], axes=(0, 0))  # [S/4, S/4]
    return resize_bilinear(grid, grid.shape[1], grid.shape[0], size, size)


def frame_logits(in_logits, frame_w, frame_h, size):
    """Model-input logits -> frame logits: crop the letterboxed area, resize to the frame."""
    sw, sh = letterbox_size(frame_w, frame_h, size)
    return resize_bilinear(in_logits, sw, sh, frame_w, frame_h)


def mask_to_input(mask, size):
    """Frame-resolution 0/1 mask -> S x S model-input mask (a model-input pixel is inside when the
    frame pixel under its centre is; padding stays 0)."""
    h, w = mask.shape
    sw, sh = letterbox_size(w, h, size)
    fy = np.minimum(((np.arange(sh) + 0.5) / (sh / h)).astype(np.int64), h - 1)
    fx = np.minimum(((np.arange(sw) + 0.5) / (sw / w)).astype(np.int64), w - 1)
    out = np.zeros((size, size), dtype=np.float32)
    out[:sh, :sw] = mask[fy][:, fx] != 0
    return out


# ---------------------------------------------------------------------------------------------
# Referring selection


def nms(boxes, scores, threshold):
    """Greedy NMS over xyxy boxes: indices kept, best score first (ties: lower index first).
    A box is dropped when it overlaps an already kept one by more than `threshold`."""
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    order = np.argsort(-scores, kind="stable")
    kept = []
    while order.size > 0:
        i, rest = order[0], order[1:]
        kept.append(int(i))
        iw = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        ih = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = iw * ih
        union = area[i] + area[rest] - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
        order = rest[iou <= threshold]
    return kept


def candidates(dec, generic, min_iou=MIN_IOU):
    """Interactive queries with predicted IoU > min_iou that survive box NMS."""
    iou = dec["pred_iou"]
    pool = [i for i in range(generic, len(iou)) if iou[i] > min_iou]
    if not pool:
        return []
    b = dec["pred_boxes"][pool]
    xyxy = np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2,
                     b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], axis=1)
    return [pool[k] for k in nms(xyxy, iou[pool], NMS_IOU)]


def rank(dec, cands, prompt, logit_scale):
    """(query, softmax probability) for every candidate, most probable first."""
    if not cands:
        return []
    logits = logit_scale * (dec["query_embed"][cands] @ prompt)
    e = np.exp(logits - logits.max())
    p = e / e.sum()
    return sorted(zip(cands, p.tolist()), key=lambda t: (-t[1], t[0]))


class Memory:
    """The pinned first-prompt embedding plus the most recent confident predictions."""

    def __init__(self, pinned):
        self.pinned = pinned
        self.recent = collections.deque(maxlen=MEMORY)

    def lookup(self):
        v = self.pinned + sum(self.recent, np.zeros_like(self.pinned))
        n = np.linalg.norm(v)
        return v / n if n > 0 else v


# ---------------------------------------------------------------------------------------------


def peak_rss_kib():
    """This process's peak RSS in KiB. /proc's VmHWM belongs to this program's own address space;
    getrusage's ru_maxrss also keeps the high-water mark of a parent that forked us (for example the
    `vprompt bench` process that starts this script), so it is only the fallback."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="vprompt model folder (model.yaml + 3 graphs)")
    ap.add_argument("--video", required=True)
    ap.add_argument("--mask", required=True, help="first-frame mask PNG (non-zero = object)")
    ap.add_argument("--out", required=True, help="folder for the per-frame label PNGs")
    ap.add_argument("--frames", type=int, default=0, help="stop after this many frames (0 = all)")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    ap.add_argument("--min-iou", type=float, default=MIN_IOU,
                    help="predicted-IoU threshold for candidates (vprompt's job.min_iou)")
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    model = Model(args.model, args.threads)
    size = model.size
    prompt = np.array(Image.open(args.mask)) != 0
    if prompt.ndim == 3:
        prompt = prompt.any(axis=2)

    memory = None
    n = 0
    start = time.perf_counter()
    with av.open(args.video) as container:
        for frame in container.decode(video=0):
            if args.frames and n >= args.frames:
                break
            rgb = frame.to_ndarray(format="rgb24")
            h, w = rgb.shape[:2]
            feats = model.encode(letterbox(rgb, model))
            dec = model.decode(feats)

            if memory is None:
                # Reference frame: pin the prompt's embedding; the output is the prompt itself.
                if prompt.shape != (h, w):
                    raise SystemExit(f"mask is {prompt.shape[1]}x{prompt.shape[0]}, frame is {w}x{h}")
                memory = Memory(model.encode_prompt(feats, mask_to_input(prompt, size)))
                labels = prompt.astype(np.uint8)
            else:
                cands = candidates(dec, model.generic, args.min_iou)
                ranked = rank(dec, cands, memory.lookup(), model.logit_scale)
                labels = np.zeros((h, w), dtype=np.uint8)
                for q, p in ranked[:TRIES]:
                    il = input_logits(feats["mask_feat"], dec["mask_embed"][q], size)
                    fl = frame_logits(il, w, h, size)
                    if np.count_nonzero(fl > 0) > MIN_AREA:
                        labels = (fl > 0).astype(np.uint8)
                        if p >= MEMORY_MIN_SCORE:
                            # Re-encode the prediction as a prompt on this frame. As vprompt does,
                            # the whole S x S input-logit mask is thresholded (padding included).
                            in_mask = (il > 0).astype(np.float32)
                            memory.recent.append(model.encode_prompt(feats, in_mask))
                        break

            Image.fromarray(labels).save(os.path.join(args.out, f"{n:05d}.png"))
            n += 1

    seconds = time.perf_counter() - start
    peak_kib = peak_rss_kib()
    print(json.dumps({
        "frames": n,
        "seconds": round(seconds, 3),
        "fps": round(n / seconds, 3) if seconds > 0 else None,
        "peak_rss_mib": round(peak_kib / 1024, 1),
    }))


if __name__ == "__main__":
    main()
