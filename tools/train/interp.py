"""Weight-space interpolation of two decoder checkpoints of one lineage (the later one fine-tuned from the earlier).

    python3 interp.py --a checkpoints/local_run1.pt --b checkpoints/local_run8.pt --alpha 0.5 --out runs/mix/a50.pt

The result is (1 - alpha) * A + alpha * B, tensor by tensor (the idea of WiSE-FT, Wortsman et al., CVPR 2022:
averaging a model with its fine-tuned descendant often keeps what each is good at). A branch that B has and A lacks
(`train_local.py --init` added it, its last conv starting at zero) is taken from B with that last conv scaled by
alpha, i.e. A's zero interpolated with B's value, so alpha = 0 is exactly A and alpha = 1 exactly B.
"""
import argparse
import os

import torch

from vp.local import LocalModel


def zero_start(cfg):
    """Names of the tensors a fresh model of this configuration starts at zero (the branches' last convs)."""
    fresh = LocalModel(**cfg).state_dict()
    return {k for k, v in fresh.items() if v.is_floating_point() and not v.any()}


def mix(a, b, alpha, zeros):
    out = {}
    for k, vb in b["model"].items():
        vb = vb.float()
        if k in a["model"]:
            va = a["model"][k].float()
            assert va.shape == vb.shape, (k, va.shape, vb.shape)
            out[k] = (1 - alpha) * va + alpha * vb if vb.is_floating_point() else vb
        elif k in zeros:
            out[k] = alpha * vb
        else:
            out[k] = vb
    extra = set(a["model"]) - set(b["model"])
    assert not extra, f"A has tensors B lacks: {sorted(extra)[:5]}"
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="the earlier checkpoint")
    ap.add_argument("--b", required=True, help="the later checkpoint, fine-tuned from A (may add branches)")
    ap.add_argument("--alpha", type=float, required=True, help="0: A, 1: B")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    a = torch.load(args.a, map_location="cpu", weights_only=False)
    b = torch.load(args.b, map_location="cpu", weights_only=False)
    model = mix(a, b, args.alpha, zero_start(b["cfg"]))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    torch.save(dict(model={k: v.half() for k, v in model.items()}, step=b["step"], cfg=b["cfg"], elapsed=b["elapsed"],
                    seen=b["seen"], mixed=f"{1 - args.alpha:g} x {args.a} + {args.alpha:g} x {args.b} (interp.py)"),
               args.out)
    print(f"{args.out}: {args.alpha:g} x {args.b} + {1 - args.alpha:g} x {args.a}", flush=True)


if __name__ == "__main__":
    main()
