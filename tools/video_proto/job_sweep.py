"""DAVIS-2016 J&F of the propagate job under job settings that `vprompt propagate` has no flag for.

For each sequence it writes a pipeline (the propagate job, a palette PNG sink); for each setting it runs
`vprompt run` on it with the setting's keys as `--set job.KEY=VALUE` (so vprompt parses and checks them), and scores the masks with `vprompt eval davis`; one line per
setting: J&F over the sequences and per sequence. Tune on training sequences only (the default: the 24
that are not dev-val); measure dev-val once, with the chosen setting.

Usage (repository root, after make build):
  python3 tools/video_proto/job_sweep.py --model DIR --out OUT \
      --setting 'default=' --setting 'prev1=target.previous=1.0' \
      --setting 'agr2=target.agreement=2.0,target.previous=0.5' [--seqs a,b,c] [--json OUT/sweep.json]
A setting is NAME=KEY=VALUE[,KEY=VALUE...] with dotted keys under `job:`.
"""
import argparse
import json
import os
import subprocess
import sys

DEV = ["bear", "car-turn", "dance-jump", "kite-walk", "soccerball", "stroller"]


def parse_setting(text):
    """`NAME=K=V,K=V` -> (NAME, the `vprompt run` arguments that set job.K=V)."""
    name, _, rest = text.partition("=")
    return name, [a for item in filter(None, rest.split(",")) for a in ("--set", f"job.{item}")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--setting", action="append", required=True)
    ap.add_argument("--seqs", help="comma-separated; default: the 24 training sequences")
    ap.add_argument("--data", default="../shared/data/davis2016-train-240p")
    ap.add_argument("--bin", default="./target/release/vprompt")
    ap.add_argument("--json")
    args = ap.parse_args()
    every = sorted(os.listdir(os.path.join(args.data, "JPEGImages")))
    seqs = args.seqs.split(",") if args.seqs else [s for s in every if s not in DEV]
    results = {}
    for text in args.setting:
        name, sets = parse_setting(text)
        root = os.path.abspath(os.path.join(args.out, name))
        pred = os.path.join(root, "pred")
        for s in seqs:
            if os.path.isdir(os.path.join(pred, s)):
                continue  # done in an earlier call
            tmp = os.path.join(root, "tmp")
            os.makedirs(tmp, exist_ok=True)
            prompts = os.path.join(tmp, f"{s}-prompts.json")
            mask = os.path.abspath(os.path.join(args.data, "Annotations", s, "00000.png"))
            with open(prompts, "w") as f:
                json.dump({"objects": [{"id": 1, "frame": 0, "mask": mask}]}, f)  # JSON is YAML
            spec = {
                "source": {"frames": os.path.abspath(os.path.join(args.data, "JPEGImages", s))},
                "model": os.path.abspath(args.model),
                "prompts": prompts,
                "job": {"kind": "propagate"},
                "sinks": [{"kind": "palette_png", "dir": os.path.join(tmp, s)}],
            }
            path = os.path.join(tmp, f"{s}.json")
            with open(path, "w") as f:
                json.dump(spec, f)
            done = subprocess.run([args.bin, "run", path, "--quiet", *sets], capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{name} / {s}: vprompt run failed:\n{done.stderr}")
            os.makedirs(pred, exist_ok=True)
            os.rename(os.path.join(tmp, s), os.path.join(pred, s))
        jf = os.path.join(root, "jf.json")
        subprocess.run([args.bin, "eval", "davis", "--pred", pred, "--gt", os.path.join(args.data, "Annotations"),
                        "--sequences", ",".join(seqs), "--json", jf], check=True, capture_output=True)
        with open(jf) as f:
            report = json.load(f)
        results[name] = report
        per = " ".join(f"{s} {v[2]:.3f}" for s, v in report["sequences"].items())
        print(f"{name:12s} J&F {report['jf_mean']:.4f}  {per}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
