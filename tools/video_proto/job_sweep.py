"""DAVIS-2016 J&F of the propagate job under job settings that `vprompt propagate` has no flag for.

For each setting and sequence it writes a pipeline (the propagate job with the given `job:` keys, a
palette PNG sink), runs `vprompt run` on it, and scores the masks with `vprompt eval davis`; one line per
setting: J&F over the sequences and per sequence. Tune on training sequences only (the default: the 24
that are not dev-val); measure dev-val once, with the chosen setting.

Usage (repository root, after make build):
  python3 tools/video_proto/job_sweep.py --model DIR --out OUT \
      --setting 'default=' --setting 'prev1=target.previous=1.0' \
      --setting 'agr2=target.agreement=2.0,target.previous=0.5' [--seqs a,b,c] [--json OUT/sweep.json]
A setting is NAME=KEY=VALUE[,KEY=VALUE...] with dotted keys under `job:` (values parsed as YAML scalars).
"""
import argparse
import json
import os
import subprocess
import sys

DEV = ["bear", "car-turn", "dance-jump", "kite-walk", "soccerball", "stroller"]


def scalar(text):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text, text)


def parse_setting(text):
    name, _, rest = text.partition("=")
    job = {"kind": "propagate"}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        node = job
        *path, leaf = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = scalar(value)
    return name, job


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
        name, job = parse_setting(text)
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
                "job": job,
                "sinks": [{"kind": "palette_png", "dir": os.path.join(tmp, s)}],
            }
            path = os.path.join(tmp, f"{s}.json")
            with open(path, "w") as f:
                json.dump(spec, f)
            done = subprocess.run([args.bin, "run", path, "--quiet"], capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{name} / {s}: vprompt run failed:\n{done.stderr}")
            os.makedirs(pred, exist_ok=True)
            os.rename(os.path.join(root, "tmp", s), os.path.join(pred, s))
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
