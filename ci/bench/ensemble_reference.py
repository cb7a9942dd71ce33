"""NumPy reference of `imet ensemble` for the scale benchmark
(BENCHMARKS.md, ensemble section): the same steps, written the way the reference
pipelines write them (a loop over 100 candidate thresholds, scoring F2 per
image with NumPy for each candidate).

Reads the store written by `cargo run --release --example make_bench_preds`:
validates every member file (metadata, ids, folds, duplicates, finite values
in [0, 1]), blends the members (mean), fits every threshold strategy in-sample
and across folds (fit on K-1 folds, score the held-out one), picks by CV, and
writes ensemble_oof.parquet, ensemble_test.parquet, thresholds.json,
report.json and submission.csv (no plots: matplotlib is not a dependency, so
this side does slightly less work).

python ci/bench/ensemble_reference.py STORE_ROOT OUT_DIR [CV_FOLDS]

CV_FOLDS (default: all K) limits how many held-out folds are fitted and
scored; 0 fits in-sample only (the full run takes hours at competition scale).
"""
import csv
import json
import os
import sys
import time
import tomllib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

root, out = sys.argv[1], sys.argv[2]
cv_folds = int(sys.argv[3]) if len(sys.argv) > 3 else None
os.makedirs(out, exist_ok=True)
spec = tomllib.load(open(f"{root}/bench.toml", "rb"))
exp, members, K = spec["experiment"], spec["ensemble"]["members"], spec["folds"]["k"]
T = np.arange(1, 101) / 100.0  # the 100 candidate thresholds
seconds = {}
t_all = time.perf_counter()

# ---- inputs
labels = list(csv.reader(open(f"{root}/data/labels.csv")))[1:]
C = len(labels)
group = np.array([0 if n.startswith("culture::") else 1 for _, n in labels])
cols = [np.where(group == 0)[0], np.where(group == 1)[0]]
train = list(csv.reader(open(f"{root}/data/train.csv")))[1:]
ids = [r[0] for r in train]
index = {i: k for k, i in enumerate(ids)}
N = len(ids)
Y = np.zeros((N, C), dtype=bool)
for k, r in enumerate(train):
    Y[k, [int(a) for a in r[1].split()]] = True
test_ids = [r[0] for r in list(csv.reader(open(f"{root}/data/sample_submission.csv")))[1:]]
tindex = {i: k for k, i in enumerate(test_ids)}
NT = len(test_ids)
ft = pq.read_table(f"{root}/runs/{exp}/folds.parquet")
fold_of = dict(zip(ft.column("id").to_pylist(), ft.column("fold").to_numpy()))
fold = np.array([fold_of[i] for i in ids])
vocab_text = "attribute_id,attribute_name\n" + "".join(f"{a},{n}\n" for a, n in labels)
import hashlib
vh = hashlib.sha256(vocab_text.encode()).hexdigest()


def read(path, kind, model, f, idx, check_fold):
    pf = pq.ParquetFile(path)
    meta = {k.decode(): v.decode() for k, v in pf.metadata.metadata.items() if k != b"ARROW:schema"}
    t = pf.read()
    for key, want in [("kind", kind), ("model", model), ("fold", str(f)), ("class_count", str(C)), ("vocabulary_hash", vh)]:
        if meta[key] != want:
            raise SystemExit(f"{path}: metadata {key} = {meta[key]}, expected {want}")
    P = t.column("probs").combine_chunks().flatten().to_numpy().reshape(-1, C)
    fid = t.column("id").to_pylist()
    bad = ~((P >= 0) & (P <= 1))
    if bad.any():
        raise SystemExit(f"{path}: id {fid[np.where(bad.any(1))[0][0]]} has a value outside [0, 1]")
    rows = np.array([idx[i] for i in fid])
    if check_fold and (fold[rows] != f).any():
        raise SystemExit(f"{path}: id in the wrong fold")
    return rows, P


# ---- read, validate, blend (mean), one member at a time
t = time.perf_counter()
oof = np.zeros((N, C), dtype=np.float32)
for m in members:
    model = np.zeros((N, C), dtype=np.float32)
    seen = np.zeros(N, dtype=np.int32)
    for f in range(K):
        rows, P = read(f"{root}/runs/{exp}/models/{m}/fold={f}/oof.parquet", "oof", m, f, index, True)
        model[rows] = P
        np.add.at(seen, rows, 1)
    if (seen != 1).any():
        raise SystemExit(f"model {m}: id {ids[np.where(seen != 1)[0][0]]} not covered exactly once")
    oof += model
oof /= len(members)
del model
test = np.zeros((NT, C), dtype=np.float32)
for m in members:
    for f in range(K):
        rows, P = read(f"{root}/runs/{exp}/models/{m}/fold={f}/test.parquet", "test", m, f, tindex, False)
        if len(np.unique(rows)) != NT:
            raise SystemExit("test ids do not match sample_submission")
        test[rows] += P
test /= len(members) * K
seconds["read_validate_blend"] = time.perf_counter() - t


# ---- thresholds
def f2_mean(pred, Yr):
    tp = (pred & Yr).sum(1)
    pp = pred.sum(1)
    den = 4 * Yr.sum(1) + pp
    return float(np.where(den > 0, 5 * tp / np.maximum(den, 1), 0.0).mean())


def ranks(P, sel):
    """Rank (0 = highest) of each class among `sel` columns, per row."""
    order = np.argsort(-P[:, sel], axis=1, kind="stable").astype(np.int16)
    r = np.empty_like(order)
    np.put_along_axis(r, order, np.arange(len(sel), dtype=np.int16)[None, :], axis=1)
    return r


class Rows:
    """A matrix restricted to some rows, with what the rules need."""

    def __init__(self, P, Yr):
        self.P, self.Y = P, Yr
        self.top = P.argmax(1)
        self.top_true = Yr[np.arange(len(P)), self.top]
        self.T = Yr.sum(1)
        self.Pg = [np.ascontiguousarray(P[:, cols[g]]) for g in range(2)]
        self.Yg = [np.ascontiguousarray(Yr[:, cols[g]]) for g in range(2)]
        self.R = [ranks(P, cols[0]), ranks(P, cols[1])]
        self.Rall = ranks(P, np.arange(C))
        self.memo = {}

    def counts(self, g, t, limits):
        """(true positives, predicted) per row of group g at threshold t."""
        pred = self.Pg[g] >= t
        if limits.get("groups"):
            lo, hi = limits["groups"][g]
            pred = (pred | (self.R[g] < lo)) & (self.R[g] < hi)
        return (pred & self.Yg[g]).sum(1), pred.sum(1)

    def f2(self, tp, pp):
        """Mean F2 with at least one label per image (empty rows get their top class)."""
        empty = pp == 0
        tp = np.where(empty, self.top_true, tp)
        pp = np.where(empty, 1, pp)
        return float((5 * tp / (4 * self.T + pp)).mean())


def finish(r, pred, limits):
    # per-group limits, then overall min 1 / max
    if limits.get("groups"):
        for g, (lo, hi) in enumerate(limits["groups"]):
            sub = pred[:, cols[g]]
            sub = (sub | (r.R[g] < lo)) & (r.R[g] < hi)
            pred[:, cols[g]] = sub
    lo, hi = limits["total"]
    if hi is not None:
        pred &= r.Rall < hi
    if lo >= 1:
        empty = ~pred.any(1)
        pred[empty, r.top[empty]] = True
    return pred


def apply(r, s):
    kind = s["rule"]["kind"]
    if kind == "global":
        pred = r.P >= s["rule"]["threshold"]
    elif kind == "group":
        pred = np.empty_like(r.Y)
        for g in range(2):
            pred[:, cols[g]] = r.P[:, cols[g]] >= s["rule"][["culture", "tag"][g]]
    elif kind == "class":
        pred = r.P >= np.array(s["rule"]["thresholds"])[None, :]
    elif kind == "ratio":
        pred = r.P >= (r.P.max(1) / s["rule"]["ratio"])[:, None]
    else:  # target_count
        k = int(round(s["rule"]["mean_labels"] * len(r.P)))
        thr = np.partition(r.P.ravel(), -k)[-k]
        pred = r.P >= thr
    return finish(r, pred, s["limits"])


TOTAL = {"total": (1, None)}
GROUPED = {"total": (1, None), "groups": [(0, 3), (1, 8)]}


def fit_global(r, limits):
    # 100 candidates, each scored on every image (both groups at t).
    scores = []
    for t in T:
        (a, b), (c_, d) = r.counts(0, t, limits), r.counts(1, t, limits)
        scores.append(r.f2(a + c_, b + d))
    return float(T[int(np.argmax(scores))])


def fit_group(r, limits):
    key = ("group", json.dumps(limits))
    if key in r.memo:
        return r.memo[key]
    tc = tt = fit_global(r, limits)
    for _ in range(2):
        for g in range(2):
            fixed = r.counts(1 - g, tt if g == 0 else tc, limits)
            scores = []
            for t in T:  # 100 candidates for this group, the other held fixed
                tp, pp = r.counts(g, t, limits)
                scores.append(r.f2(tp + fixed[0], pp + fixed[1]))
            arg = float(T[int(np.argmax(scores))])
            if g == 0:
                tc = arg
            else:
                tt = arg
    r.memo[key] = (float(tc), float(tt))
    return r.memo[key]


def fit_class(r, limits, shrink=20.0):
    tc, tt = fit_group(r, limits)
    th = np.where(group == 0, tc, tt).astype(np.float64)
    pred = r.P >= th[None, :]
    tp = (pred & r.Y).sum(1).astype(np.float64)
    pp = pred.sum(1).astype(np.float64)
    tr = r.Y.sum(1).astype(np.float64)
    for c in range(C):  # one coordinate-ascent pass, 100 candidates per class
        inc = pred[:, c]
        y = r.Y[:, c]
        tp0, pp0 = tp - (inc & y), pp - inc
        new = r.P[:, c][:, None] >= T[None, :]  # the 100 candidates at once
        den = (4 * tr + pp0)[:, None] + new
        v = np.where(den > 0, 5 * (tp0[:, None] + (new & y[:, None])) / np.maximum(den, 1), 0.0).mean(0)
        arg = T[int(np.argmax(v))]
        n = y.sum()
        th[c] = np.round(((n * arg + shrink * th[c]) / (n + shrink)) * 100) / 100
        new = r.P[:, c] >= th[c]
        tp, pp = tp0 + (new & y), pp0 + new
        pred[:, c] = new
    return th.tolist()


def fit_ratio(r, limits):
    Q = r.P / r.P.max(1, keepdims=True)
    keep = r.Rall < limits["total"][1]
    scores = []
    for t in T:
        pred = (Q >= t) & keep
        scores.append(r.f2((pred & r.Y).sum(1), pred.sum(1)))
    return float(1.0 / T[int(np.argmax(scores))])


def fit(kind, r):
    if kind == "global":
        return {"rule": {"kind": "global", "threshold": fit_global(r, TOTAL)}, "limits": TOTAL}
    if kind in ("group", "group_limits"):
        lim = TOTAL if kind == "group" else GROUPED
        tc, tt = fit_group(r, lim)
        return {"rule": {"kind": "group", "culture": tc, "tag": tt}, "limits": lim}
    if kind in ("class", "class_limits"):
        lim = TOTAL if kind == "class" else GROUPED
        return {"rule": {"kind": "class", "thresholds": fit_class(r, lim)}, "limits": lim}
    rl = {"total": (1, 10)}
    if kind == "ratio":
        return {"rule": {"kind": "ratio", "ratio": fit_ratio(r, rl)}, "limits": rl}
    if kind == "ratio_default":
        return {"rule": {"kind": "ratio", "ratio": 7.0}, "limits": rl}
    t = fit_global(r, TOTAL)
    mean = float((r.P >= t).sum(1).mean())
    return {"rule": {"kind": "target_count", "mean_labels": mean}, "limits": TOTAL}


t = time.perf_counter()
kinds = ["global", "group", "group_limits", "class", "class_limits", "ratio", "ratio_default", "target_count"]
# One split at a time (in-sample, then each fold) so memory stays bounded.
res = {k: {"name": k, "cv_f2": 0.0, "seconds": 0.0} for k in kinds}
for f in [None] + list(range(K))[:cv_folds]:
    if f is None:
        fr = hr = Rows(oof, Y)
    else:
        fit_rows, held = np.where(fold != f)[0], np.where(fold == f)[0]
        fr, hr = Rows(oof[fit_rows], Y[fit_rows]), Rows(oof[held], Y[held])
    for kind in kinds:
        tk = time.perf_counter()
        s = fit(kind, fr)
        v = f2_mean(apply(hr, s), hr.Y)
        if f is None:
            res[kind]["strategy"], res[kind]["in_sample_f2"] = s, v
        else:
            res[kind]["cv_f2"] += v * len(hr.P) / N
        res[kind]["seconds"] += time.perf_counter() - tk
        print(f"split {f} {kind}: {v:.4f} ({time.perf_counter() - tk:.1f} s)", file=sys.stderr, flush=True)
    del fr, hr
results = list(res.values())
best = max(results, key=lambda e: e["cv_f2"])
seconds["thresholds"] = time.perf_counter() - t
seconds["cv_folds_run"] = K if cv_folds is None else min(cv_folds, K)

# ---- outputs
t = time.perf_counter()


def write(path, id_list, P, kind):
    values = pa.array(P.reshape(-1), type=pa.float32())
    tbl = pa.table({"id": pa.array(id_list), "probs": pa.FixedSizeListArray.from_arrays(values, C)})
    meta = {"experiment": exp, "model": "ensemble", "fold": "all", "kind": kind, "tta": "2", "spec_hash": "ref",
            "class_count": str(C), "vocabulary_hash": vh}
    tbl = tbl.replace_schema_metadata(meta)
    pq.write_table(tbl, path, compression="zstd", compression_level=1, use_dictionary=["id"],
                   column_encoding={"probs.list.element": "BYTE_STREAM_SPLIT"}, row_group_size=8192)


write(f"{out}/ensemble_oof.parquet", ids, oof, "oof")
write(f"{out}/ensemble_test.parquet", test_ids, test, "test")
tr = Rows(test, np.zeros_like(test, dtype=bool))
pred = apply(tr, best["strategy"])
with open(f"{out}/submission.csv", "w") as fh:
    fh.write("id,attribute_ids\n")
    for i, row in zip(test_ids, pred):
        fh.write(i + "," + " ".join(map(str, np.flatnonzero(row))) + "\n")
json.dump({"chosen": best["strategy"], "cv_f2": best["cv_f2"]}, open(f"{out}/thresholds.json", "w"))
seconds["outputs"] = time.perf_counter() - t
seconds["total"] = time.perf_counter() - t_all
json.dump({"strategies": results, "chosen": best["name"], "seconds": seconds}, open(f"{out}/report.json", "w"), indent=1)
print(json.dumps({"seconds": seconds, "chosen": best["name"], "cv_f2": best["cv_f2"],
                  "strategies": {r["name"]: [r["in_sample_f2"], r["cv_f2"], r["seconds"]] for r in results}}))
