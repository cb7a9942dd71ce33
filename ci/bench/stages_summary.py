"""Summarises one run of ci/bench/stages.sh as a JSON line: what each stage
scored against the sample's truth (truth/ files the pipeline never reads)."""
import csv, json, sys, glob, os
import numpy as np
import pyarrow.parquet as pq

kind, root, exp, seconds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
run = f"{root}/runs/{exp}"

def labels(path):
    with open(path) as f:
        return {r["id"]: set(int(a) for a in r["attribute_ids"].split()) for r in csv.DictReader(f)}

def preds(path):
    t = pq.read_table(path)
    ids = t.column("id").to_pylist()
    probs = np.array(t.column("probs").to_pylist(), dtype=np.float32)
    return ids, probs

def f2(pred, true):
    tp = len(pred & true)
    return 0.0 if 4 * len(true) + len(pred) == 0 else 5 * tp / (4 * len(true) + len(pred))

def best_global_f2(ids, probs, truth):
    """F2 per image at the best of the thresholds j/100, an image with
    nothing above it predicting its top class (the project's definition)."""
    best = (0.0, 0.0)
    for j in range(1, 101):
        t = j / 100
        s = 0.0
        for i, id_ in enumerate(ids):
            row = probs[i]
            pred = set(np.nonzero(row >= t)[0].tolist()) or {int(row.argmax())}
            s += f2(pred, truth[id_])
        best = max(best, (s / len(ids), t))
    return round(best[0], 4), best[1]

def submission_f2(path, truth):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return round(sum(f2(set(int(a) for a in r["attribute_ids"].split()), truth[r["id"]]) for r in rows) / len(rows), 4)

def stage_dir(stage):
    return run if stage == "main" else f"{run}/stages/{stage}"

def member_test(stage, model):
    files = sorted(glob.glob(f"{stage_dir(stage)}/models/{model}/fold=*/test.parquet"))
    ids, total = None, None
    for p in files:
        i, pr = preds(p)
        ids, total = i, pr if total is None else total + pr
    return ids, total / len(files)

def member_oof(stage, model):
    ids, rows = [], []
    for p in sorted(glob.glob(f"{stage_dir(stage)}/models/{model}/fold=*/oof.parquet")):
        i, pr = preds(p)
        ids += i
        rows.append(pr)
    return ids, np.concatenate(rows)

out = {"run": exp, "seconds": seconds}
test_truth = labels(f"{root}/truth/test.csv")
clean_truth = labels(f"{root}/truth/train.csv")
stages = ["main"] + [os.path.basename(d) for d in sorted(glob.glob(f"{run}/stages/*"))]
for st in stages:
    d = stage_dir(st)
    oof_ids, oof = preds(f"{d}/ensemble/ensemble_oof.parquet")
    test_ids, test = preds(f"{d}/ensemble/ensemble_test.parquet")
    report = json.load(open(f"{d}/ensemble/report.json"))
    out[st] = {
        "oof_f2_given_labels": round(report["scores"]["samples"]["f"], 4),
        "oof_f2_clean_labels": best_global_f2(oof_ids, oof, clean_truth)[0],
        "test_f2_submission": submission_f2(f"{d}/ensemble/submission.csv", test_truth),
        "test_f2_best_threshold": best_global_f2(test_ids, test, test_truth)[0],
    }
if kind == "noise":
    noisy = {r["id"] for r in csv.DictReader(open(f"{root}/truth/noisy.csv"))}
    dropped = set(pq.read_table(f"{run}/stages/clean/data/dropped.parquet").column("id").to_pylist())
    hit = len(dropped & noisy)
    out["dropped"] = len(dropped)
    out["noisy"] = len(noisy)
    out["precision"] = round(hit / max(len(dropped), 1), 4)
    out["recall"] = round(hit / max(len(noisy), 1), 4)
if kind == "pseudo":
    t = pq.read_table(f"{run}/stages/pseudo/data/pseudo_targets.parquet")
    ids = t.column("id").to_pylist()
    targets = np.array(t.column("probs").to_pylist())
    out["pseudo_labelled"] = len(ids)
    out["pseudo_label_f2"] = round(sum(f2(set(np.nonzero(targets[i] >= 0.5)[0].tolist()), test_truth[x]) for i, x in enumerate(ids)) / max(len(ids), 1), 4)
if kind == "distill":
    for st, model in [("main", "r18"), ("main", "r34"), ("student", "r18")]:
        ids, p = member_test(st, model)
        oids, o = member_oof(st, model)
        out[f"{st}/{model}"] = {"oof_f2": best_global_f2(oids, o, clean_truth)[0], "test_f2_best_threshold": best_global_f2(ids, p, test_truth)[0]}
print(json.dumps(out))
