"""Python LightGBM reference of imet's second-level model (docs/bench/level2.md).

Reads the OOF pair table that `cargo run --release --example level2_bench --
--export DIR` writes (pairs.parquet: row, class, fold, target and the
feature columns; images.parquet: each image's fold and true label count;
rust.json: imet's configuration and results), cross-fits LightGBM on the same
folds the way its Python users do, and scores it exactly as imet does:
pair ROC AUC and log-loss over all OOF candidate pairs, and OOF F2 per image at
the best global threshold j/100 (at least one label per image: the top class
when none passes), non-candidates counting as probability 0.

python ci/bench/level2_reference.py DIR [--mode same|tuned|both] [--threads 2] [--tolerance 0.005]

Modes:
- same:  imet's parameters (rust.json `config`: rounds, learning rate, leaves,
  min_data_in_leaf, fractions, seed), `deterministic`, on `--threads` threads.
- tuned: what a LightGBM user would do: learning_rate 0.1, num_leaves 63,
  min_child_samples 100, rounds chosen by early stopping on log-loss
  (patience 30, at most 1000) on fold 1 while training on folds 2..K-1, then
  every fold model trained with that many rounds. The tuning time is
  reported apart.

Exits 1 when imet's AUC or F2 is more than --tolerance below the reference.
"""
import argparse
import json
import os
import sys
import time

import lightgbm as lgb
import numpy as np
import pyarrow.parquet as pq
from sklearn.metrics import log_loss, roc_auc_score

BINS = 100


def best_global_f2(row, prob, target, n_true):
    """imet's ensemble::blend::best_global_f2 on candidate pairs."""
    n = len(n_true)
    b = np.minimum(np.floor(prob.astype(np.float32) * np.float32(BINS)).astype(np.int64), BINS)
    cnt = np.zeros((n, BINS + 1), np.int64)
    pos = np.zeros((n, BINS + 1), np.int64)
    np.add.at(cnt, (row, b), 1)
    np.add.at(pos, (row, b), target)
    k = np.cumsum(cnt[:, ::-1], axis=1)[:, ::-1]
    tp = np.cumsum(pos[:, ::-1], axis=1)[:, ::-1]
    # Top class of each image (highest probability, then lowest class id: pairs are sorted by row, class order
    # within a row does not matter because ties at the maximum are measure-zero for model outputs).
    order = np.lexsort((-prob, row))
    first = np.ones(len(row), bool)
    first[1:] = row[order][1:] != row[order][:-1]
    top_true = np.zeros(n, np.int64)
    top_true[row[order][first]] = target[order][first]
    nt = n_true[:, None].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        f2 = np.where(k == 0, 5.0 * top_true[:, None] / (4 * nt + 1), 5.0 * tp / (4 * nt + k))
    f2 = np.nan_to_num(f2)
    mean = f2.mean(axis=0)
    j = 1 + int(np.argmax(mean[1:]))
    return j / BINS, float(mean[j])


def scores(row, prob, target, n_true):
    t, f2 = best_global_f2(row, prob, target, n_true)
    return {
        "auc": float(roc_auc_score(target, prob)),
        "logloss": float(log_loss(target, np.clip(prob, 1e-15, 1 - 1e-15), labels=[0, 1])),
        "f2": f2,
        "threshold": t,
    }


def cross_fit(x, y, fold, params, rounds):
    oof = np.zeros(len(y), np.float64)
    per_fold = []
    for k in np.unique(fold):
        t = time.perf_counter()
        tr = fold != k
        ds = lgb.Dataset(x[tr], label=y[tr], free_raw_data=True)
        model = lgb.train(params, ds, num_boost_round=rounds)
        oof[~tr] = model.predict(x[~tr], num_threads=params["num_threads"])
        per_fold.append({"fold": int(k), "seconds": time.perf_counter() - t, "trees": model.num_trees(),
                         "auc": float(roc_auc_score(y[~tr], oof[~tr]))})
        gain = model.feature_importance("gain")
        if k == 0:
            total_gain = gain.astype(np.float64)
        else:
            total_gain += gain
    return oof, per_fold, total_gain


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--mode", choices=["same", "tuned", "both"], default="both")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tolerance", type=float, default=0.005)
    a = ap.parse_args()

    t0 = time.perf_counter()
    pairs = pq.read_table(os.path.join(a.dir, "pairs.parquet"))
    images = pq.read_table(os.path.join(a.dir, "images.parquet"))
    rust = json.load(open(os.path.join(a.dir, "rust.json")))
    meta = ["row", "class", "fold", "target"]
    names = [c for c in pairs.column_names if c not in meta]
    x = np.column_stack([pairs.column(c).to_numpy() for c in names]).astype(np.float32)
    row = pairs.column("row").to_numpy().astype(np.int64)
    fold = pairs.column("fold").to_numpy()
    y = pairs.column("target").to_numpy().astype(np.int64)
    n_true = images.column("n_true").to_numpy().astype(np.int64)
    print(f"read {len(y)} pairs x {len(names)} features of {len(n_true)} images in {time.perf_counter() - t0:.1f} s")

    cfg = rust["config"]
    out = {"rust": {"auc": rust["output"]["oof_auc"], "logloss": rust["output"]["oof_logloss"],
                    "f2": rust["level2_f2"], "threshold": rust["level2_threshold"],
                    "seconds_folds": rust["output"]["timings"]["folds"]},
           "blend_f2": rust["blend_f2"]}
    blend = pairs.column("blend").to_numpy().astype(np.float64)
    out["blend"] = scores(row, blend, y, n_true)

    base = {"objective": "binary", "verbosity": -1, "num_threads": a.threads, "seed": cfg["seed"],
            "deterministic": True, "force_col_wise": True}
    if a.mode in ("same", "both"):
        params = dict(base, learning_rate=cfg["learning_rate"], num_leaves=cfg["num_leaves"],
                      max_depth=cfg["max_depth"] or -1, min_data_in_leaf=cfg["min_data_in_leaf"],
                      feature_fraction=cfg["feature_fraction"], bagging_fraction=cfg["bagging_fraction"],
                      bagging_freq=1 if cfg["bagging_fraction"] < 1 else 0, lambda_l2=cfg["lambda_l2"])
        t = time.perf_counter()
        oof, per_fold, gain = cross_fit(x, y, fold, params, cfg["rounds"])
        secs = time.perf_counter() - t
        out["same"] = dict(scores(row, oof, y, n_true), seconds=secs, rounds=cfg["rounds"], folds=per_fold,
                           gain=sorted(zip(names, gain.tolist()), key=lambda v: -v[1])[:8])
    if a.mode in ("tuned", "both"):
        params = dict(base, learning_rate=0.1, num_leaves=63, min_child_samples=100)
        t = time.perf_counter()
        ks = np.unique(fold)
        tr, va = ~np.isin(fold, ks[:2]), fold == ks[1]
        dtr = lgb.Dataset(x[tr], label=y[tr])
        dva = lgb.Dataset(x[va], label=y[va], reference=dtr)
        model = lgb.train(dict(params, metric="binary_logloss"), dtr, num_boost_round=1000, valid_sets=[dva],
                          callbacks=[lgb.early_stopping(30, verbose=False)])
        rounds = model.best_iteration
        tune_s = time.perf_counter() - t
        t = time.perf_counter()
        oof, per_fold, gain = cross_fit(x, y, fold, params, rounds)
        secs = time.perf_counter() - t
        out["tuned"] = dict(scores(row, oof, y, n_true), seconds=secs, tuning_seconds=tune_s, rounds=rounds,
                            folds=per_fold)

    print(json.dumps(out, indent=1))
    print("\n| model | pair AUC | pair log-loss | OOF F2 (t) | cross-fit seconds |")
    print("| --- | ---: | ---: | ---: | ---: |")
    r = out["rust"]
    print(f"| blend | {out['blend']['auc']:.5f} | {out['blend']['logloss']:.5f} | {out['blend']['f2']:.4f} ({out['blend']['threshold']:.2f}) | |")
    print(f"| imet (lightgbm3, {cfg['rounds']} rounds) | {r['auc']:.5f} | {r['logloss']:.5f} | {r['f2']:.4f} ({r['threshold']:.2f}) | {r['seconds_folds']:.1f} |")
    worst = 0.0
    for mode in ("same", "tuned"):
        if mode in out:
            m = out[mode]
            extra = f" + {m['tuning_seconds']:.1f} tuning" if "tuning_seconds" in m else ""
            print(f"| Python LightGBM {mode} ({m['rounds']} rounds) | {m['auc']:.5f} | {m['logloss']:.5f} | {m['f2']:.4f} ({m['threshold']:.2f}) | {m['seconds']:.1f}{extra} |")
            worst = max(worst, m["auc"] - r["auc"], m["f2"] - r["f2"])
    if worst > a.tolerance:
        print(f"imet is {worst:.4f} below the Python LightGBM reference (tolerance {a.tolerance})")
        sys.exit(1)
    print(f"imet within {a.tolerance} of the Python LightGBM reference (largest gap {worst:+.4f})")


if __name__ == "__main__":
    main()
