"""Side-by-side reference for `imet folds`: runs iterative-stratification's
MultilabelStratifiedKFold (shuffle=True) on a train.csv and reports the same
quality numbers as `imet::data::folds::quality` (fold sizes, mean and max
per-class fold-share deviation from 1/K, classes with >= K images missing a
fold) and the runtime. With --ours FOLDS_PARQUET it also scores that file
with the same code, so both sides are measured identically.

usage: python ci/bench/folds_iterstrat.py TRAIN_CSV [--k 5] [--seed 42] [--ours folds.parquet]
"""
import argparse, csv, json, time
import numpy as np


def load(path):
    ids, rows = [], []
    with open(path) as f:
        r = csv.reader(f)
        next(r)
        for rec in r:
            ids.append(rec[0])
            rows.append([int(a) for a in rec[1].split()])
    classes = 1 + max(max(r) for r in rows)
    y = np.zeros((len(rows), classes), dtype=np.uint8)
    for i, r in enumerate(rows):
        y[i, r] = 1
    return ids, y


def quality(y, folds, k):
    sizes = np.bincount(folds, minlength=k)
    counts = np.stack([y[folds == f].sum(axis=0) for f in range(k)], axis=1).astype(float)  # classes x k
    total = counts.sum(axis=1)
    present = total > 0
    share = counts[present] / total[present][:, None]
    dev = np.abs(share - 1.0 / k)
    missing = int(((total >= k) & (counts == 0).any(axis=1)).sum())
    return {
        "sizes": sizes.tolist(),
        "size_spread": float((sizes.max() - sizes.min()) / (len(folds) / k)),
        "mean_share_deviation": float(dev.mean(axis=1).mean()),
        "max_share_deviation": float(dev.max()),
        "classes_missing_a_fold": missing,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("train_csv")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--ours")
    ap.add_argument("--skip-reference", action="store_true")
    a = ap.parse_args()
    ids, y = load(a.train_csv)
    out = {"rows": len(ids), "classes": int(y.shape[1]), "k": a.k}
    if not a.skip_reference:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
        t = time.perf_counter()
        folds = np.zeros(len(ids), dtype=np.int64)
        mskf = MultilabelStratifiedKFold(n_splits=a.k, shuffle=True, random_state=a.seed)
        for f, (_, test) in enumerate(mskf.split(np.zeros(len(ids)), y)):
            folds[test] = f
        out["iterstrat_seconds"] = time.perf_counter() - t
        out["iterstrat"] = quality(y, folds, a.k)
    if a.ours:
        import pyarrow.parquet as pq
        tbl = pq.read_table(a.ours)
        fold_of = dict(zip(tbl.column("id").to_pylist(), tbl.column("fold").to_pylist()))
        ours = np.array([fold_of[i] for i in ids], dtype=np.int64)
        out["imet"] = quality(y, ours, a.k)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
