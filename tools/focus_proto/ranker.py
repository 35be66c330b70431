"""Learned choice among the focus candidates of a click (see candidates.py), fitted on training dumps only.

python3 tools/focus_proto/ranker.py fit OUT.json TRAIN.pkl [TRAIN.pkl ...]   # grouped 5-fold CV over a grid, refit best
python3 tools/focus_proto/ranker.py eval RANKER.json DEV.pkl [DEV.pkl ...]   # hand rule vs learned vs oracle

The pool is the runtime's: non-empty candidates of the whole image and of the crops whose side is at least
MIN_SIDE px (focus.min_side x input = 192). Mode `rust` ranks the candidates that are not cut off (all, when every
one is), as `focus::agreed` does (env MIN_SIDE=0 pools every crop of the dump instead); mode `free` ranks the whole pool with the cut flag as a feature.
Each training source (one pkl) counts equally in the CV score (mean over sources of its mIoU).
"""
import json, os, pickle, sys, time
import numpy as np, torch

MIN_SIDE = float(os.environ.get("MIN_SIDE", 192))  # 0: every crop the dump holds
INPUT = 320.0
FEATS = ["pred", "k", "whole", "log_side", "stab", "mlogit", "mean_iou", "max_iou", "iou_whole_best",
         "log_area_crop", "log_area_image", "inside", "cdist", "cut", "top_in_view", "pred_gap", "rank_pool"]


def pool_of(r, min_side=None):
    L = max(r["HW"]); min_side = MIN_SIDE if min_side is None else min_side
    return [i for i, c in enumerate(r["cands"]) if c["area"] > 0 and (c["frac"] == 1.0 or c["frac"] * L >= min_side)]


def features(r, P):
    """Features of the candidates P (indices into r["cands"]) of one click, one row each."""
    H, W = r["HW"]; C = r["cands"]; pair = r["pair"]; n = len(P)
    sub = pair[np.ix_(P, P)].copy(); np.fill_diagonal(sub, np.nan)
    mean_iou = np.nan_to_num(np.nanmean(sub, 1)) if n > 1 else np.zeros(n)
    max_iou = np.nan_to_num(np.nanmax(sub, 1)) if n > 1 else np.zeros(n)
    wh = [i for i in P if C[i]["frac"] == 1.0]
    wb = max(wh, key=lambda i: C[i]["pred"]) if wh else None
    preds = np.array([C[i]["pred"] for i in P])
    order = np.argsort(-preds, kind="stable"); rank = np.empty(n); rank[order] = np.arange(n)
    rows = []
    for a, i in enumerate(P):
        c = C[i]; x0, y0, x1, y1 = c["win"]
        view = [C[j]["pred"] for j in P if C[j]["frac"] == c["frac"]]
        rows.append([c["pred"], c["k"], float(c["frac"] == 1.0), np.log2(max(x1 - x0, y1 - y0) / INPUT), c["stab"], np.clip(c["mlogit"], -5, 20),
                     mean_iou[a], max_iou[a], pair[i, wb] if wb is not None else 0.0,
                     np.log10(c["area"] / ((x1 - x0) * (y1 - y0))), np.log10(c["area"] / (H * W)), float(c["inside"]), min(c["cdist"], 3.0),
                     float(c["touch"]), float(c["pred"] >= max(view)), c["pred"] - preds.max(), rank[a] / max(1, n - 1)])
    return np.array(rows, np.float64)


def prepare(R, mode):
    """Per click: (features of its ranked candidates, their true IoU); the click's pool decides the mean/max IoUs."""
    out = []
    for r in R:
        P = pool_of(r)
        if not P:
            continue
        X = features(r, P); y = np.array([r["cands"][i]["gt"] for i in P])
        if mode == "rust":
            keep = X[:, FEATS.index("cut")] == 0
            if keep.any():
                X, y = X[keep], y[keep]
        out.append((X, y))
    return out


def hand(r, w=1.0):
    """focus::agreed with agreement w (candidates.py `rules`, min crop 192 px)."""
    P = pool_of(r, 192.0)
    if not P:
        return max(range(2), key=lambda i: r["cands"][i]["pred"])
    el = [i for i in P if not r["cands"][i]["touch"]] or P
    return max(el, key=lambda i: r["cands"][i]["pred"] + w * (np.mean([r["pair"][i, j] for j in P if j != i]) if len(P) > 1 else 0))


# ---- models: a scorer s(x) over standardized features; fitted with torch on padded click batches
def pad(data):
    n, m, f = len(data), max(len(X) for X, _ in data), data[0][0].shape[1]
    X = np.zeros((n, m, f)); Y = np.zeros((n, m)); M = np.zeros((n, m), bool)
    for a, (x, y) in enumerate(data):
        X[a, : len(x)] = x; Y[a, : len(y)] = y; M[a, : len(y)] = True
    return torch.tensor(X, dtype=torch.float32), torch.tensor(Y, dtype=torch.float32), torch.tensor(M)


def make_net(f, hidden):
    layers, d = [], f
    for h in hidden:
        layers += [torch.nn.Linear(d, h), torch.nn.ReLU()]; d = h
    layers.append(torch.nn.Linear(d, 1))
    return torch.nn.Sequential(*layers)


def fit(data, wts, cfg, mu, sd):
    torch.manual_seed(0)
    X, Y, M = pad(data); X = (X - torch.tensor(mu, dtype=torch.float32)) / torch.tensor(sd, dtype=torch.float32)
    w = torch.tensor(wts, dtype=torch.float32); w = w / w.sum()
    net = make_net(X.shape[2], cfg["hidden"])
    Mf = M.float()

    def loss_fn():
        s = net(X).squeeze(-1)
        if cfg["loss"] == "ridge":          # least squares on true IoU, per candidate
            l = (((s - Y) ** 2) * Mf).sum(1) / Mf.sum(1)
        elif cfg["loss"] == "logistic":     # cross-entropy of sigmoid(s) towards true IoU, per candidate
            l = (torch.nn.functional.binary_cross_entropy_with_logits(s, Y, reduction="none") * Mf).sum(1) / Mf.sum(1)
        else:                               # listwise: softmax over the click's candidates
            s = s.masked_fill(~M, -1e9); logp = torch.log_softmax(s, 1)
            if cfg["loss"] == "list_best":
                t = torch.zeros_like(Y); t[torch.arange(len(Y)), Y.masked_fill(~M, -1).argmax(1)] = 1
            else:
                t = torch.softmax((Y / cfg["tau"]).masked_fill(~M, -1e9), 1)
            l = -(t * logp.masked_fill(~M, 0)).sum(1)
        reg = sum((p ** 2).sum() for n_, p in net.named_parameters() if n_.endswith("weight"))
        return (l * w).sum() + cfg["l2"] * reg

    if not cfg["hidden"]:
        opt = torch.optim.LBFGS(net.parameters(), lr=1, max_iter=300, line_search_fn="strong_wolfe")
        def closure():
            opt.zero_grad(); l = loss_fn(); l.backward(); return l
        opt.step(closure)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        for _ in range(cfg.get("epochs", 400)):
            opt.zero_grad(); l = loss_fn(); l.backward(); opt.step()
    return net


def chosen_iou(net, data, mu, sd):
    X, Y, M = pad(data)
    X = (X - torch.tensor(mu, dtype=torch.float32)) / torch.tensor(sd, dtype=torch.float32)
    with torch.no_grad():
        s = net(X).squeeze(-1).masked_fill(~M, -1e9)
    return Y[torch.arange(len(Y)), s.argmax(1)].numpy()


def grid():
    """env GRID: comma-separated filters, `linear` (no hidden layer) or a loss name (ridge, logistic, list_best, list_soft)."""
    tokens = [t for t in os.environ.get("GRID", "").split(",") if t]
    for c in full_grid():
        if all((not c["hidden"]) if t == "linear" else c["loss"] == t for t in tokens):
            yield c


def full_grid():
    for mode in ("rust", "free"):
        for bal in (True, False):
            for l2 in (1e-4, 1e-3, 1e-2):
                yield dict(mode=mode, balance=bal, loss="ridge", hidden=[], l2=l2 * 10)
                yield dict(mode=mode, balance=bal, loss="logistic", hidden=[], l2=l2)
                yield dict(mode=mode, balance=bal, loss="list_best", hidden=[], l2=l2)
                for tau in (0.03, 0.1):
                    yield dict(mode=mode, balance=bal, loss="list_soft", tau=tau, hidden=[], l2=l2)
            for hidden in ([16], [16, 16]):
                for l2 in (1e-3, 1e-2):
                    yield dict(mode=mode, balance=bal, loss="list_soft", tau=0.03, hidden=hidden, l2=l2)
                    yield dict(mode=mode, balance=bal, loss="list_best", hidden=hidden, l2=l2)


def folds_of(R, k=5):
    """Images to folds (grouped: all clicks of an image in one fold), a fixed random order."""
    files = sorted({r["file"] for r in R}); rng = np.random.default_rng(0); perm = rng.permutation(len(files))
    f = {files[p]: a % k for a, p in enumerate(perm)}
    return np.array([f[r["file"]] for r in R if pool_of(r)])


def cmd_fit():
    out, paths = sys.argv[2], sys.argv[3:]
    sets = [pickle.load(open(p, "rb")) for p in paths]
    t0 = time.time()
    prepared = {m: [prepare(R, m) for R in sets] for m in ("rust", "free")}
    folds = [folds_of(R) for R in sets]
    hand_cv = [float(np.mean([r["cands"][hand(r)]["gt"] for r in R if pool_of(r)])) for R in sets]
    print("training clicks per source:", [len(d) for d in prepared["rust"]], "hand rule on them:", [round(v, 4) for v in hand_cv])
    results = []
    for cfg in grid():
        data = prepared[cfg["mode"]]
        per_src = [np.zeros(len(d)) for d in data]
        for fo in range(5):
            tr = [x for d, F in zip(data, folds) for x, f in zip(d, F) if f != fo]
            wts = [(1.0 / sum(F != fo) if cfg["balance"] else 1.0) for d, F in zip(data, folds) for f in F if f != fo]
            allx = np.concatenate([x for x, _ in tr]); mu, sd = allx.mean(0), allx.std(0) + 1e-6
            net = fit(tr, wts, cfg, mu, sd)
            for s, (d, F) in enumerate(zip(data, folds)):
                te = [x for x, f in zip(d, F) if f == fo]
                per_src[s][F == fo] = chosen_iou(net, te, mu, sd)
        score = [float(v.mean()) for v in per_src]
        results.append((float(np.mean(score)), score, cfg))
        print(f"cv {np.mean(score):.4f} {[round(v, 4) for v in score]} {cfg}", flush=True)
    results.sort(key=lambda t: -t[0])
    best = results[0][2]
    print("best:", results[0])
    # refit on all training clicks
    data = prepared[best["mode"]]
    tr = [x for d in data for x in d]
    wts = [(1.0 / len(d) if best["balance"] else 1.0) for d in data for _ in d]
    allx = np.concatenate([x for x, _ in tr]); mu, sd = allx.mean(0), allx.std(0) + 1e-6
    net = fit(tr, wts, best, mu, sd)
    layers = [dict(weight=m.weight.detach().numpy().round(6).tolist(), bias=m.bias.detach().numpy().round(6).tolist())
              for m in net if isinstance(m, torch.nn.Linear)]
    doc = dict(what="focus click choice: argmax over candidates of net((x - mean) / std); ReLU between layers", features=FEATS,
               mean=mu.round(6).tolist(), std=sd.round(6).tolist(), layers=layers, config=best, min_side_px=MIN_SIDE,
               trained_on=paths, training_clicks=[len(d) for d in data], cv_score=results[0][1], hand_rule_on_training=hand_cv,
               cv_top5=[dict(score=round(s, 4), per_source=[round(v, 4) for v in sc], config=c) for s, sc, c in results[:5]])
    json.dump(doc, open(out, "w"), indent=1)
    print(f"wrote {out} ({time.time() - t0:.0f}s)")


def load_net(doc):
    hidden = [len(l["bias"]) for l in doc["layers"][:-1]]
    net = make_net(len(doc["features"]), hidden); lin = [m for m in net if isinstance(m, torch.nn.Linear)]
    for m, l in zip(lin, doc["layers"]):
        m.weight.data = torch.tensor(l["weight"], dtype=torch.float32); m.bias.data = torch.tensor(l["bias"], dtype=torch.float32)
    return net


def cmd_eval():
    global MIN_SIDE
    doc = json.load(open(sys.argv[2])); MIN_SIDE = doc["min_side_px"]; net = load_net(doc); mu, sd = np.array(doc["mean"]), np.array(doc["std"])
    print(f"{sys.argv[2]}: {doc['config']}, pool min side {MIN_SIDE} px")
    print(f"{'set':40s} {'clicks':>6s} {'whole':>7s} {'hand':>7s} {'learned':>7s} {'oracle':>7s} {'oracle_all':>10s}")
    for p in sys.argv[3:]:
        R = pickle.load(open(p, "rb"))
        whole = np.mean([r["cands"][max(range(2), key=lambda i: r["cands"][i]["pred"])]["gt"] for r in R])
        h = np.mean([r["cands"][hand(r)]["gt"] for r in R])
        # a click with an empty pool (never seen) would count 0 in both rules
        data = prepare(R, doc["config"]["mode"])
        li = chosen_iou(net, data, mu, sd); learned = li.sum() / len(R)
        hi = np.array([r["cands"][hand(r)]["gt"] for r in R if pool_of(r)])
        d = li - hi; bs = np.random.default_rng(0).choice(len(d), (2000, len(d))); ci = np.percentile(d[bs].mean(1), [2.5, 97.5])
        orc = np.mean([max([r["cands"][i]["gt"] for i in pool_of(r)] or [0]) for r in R])
        orc_all = np.mean([max(c["gt"] for c in r["cands"]) for r in R])
        print(f"{p:40s} {len(R):6d} {whole:7.4f} {h:7.4f} {learned:7.4f} {orc:7.4f} {orc_all:10.4f}  learned-hand 95% CI [{ci[0]:+.4f}, {ci[1]:+.4f}]")


if __name__ == "__main__":
    torch.set_num_threads(1)
    {"fit": cmd_fit, "eval": cmd_eval}[sys.argv[1]]()
