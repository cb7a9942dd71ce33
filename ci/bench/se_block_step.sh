#!/usr/bin/env bash
# Forward + backward of SE-ResNeXt-50's pieces (SE module, SE bottleneck,
# bottleneck without SE, first block) stage by stage, tch
# (examples/se_block_step.rs) against PyTorch + timm (ci/bench/se_block_step.py),
# one intra-op thread, process CPU seconds per step. The two sides alternate
# in pairs; prints a markdown table of the median over the pairs. Usage:
#   bash ci/bench/se_block_step.sh [CASE...]   (IMET_BENCH_PAIRS (3), IMET_BENCH_MIN_CPU (0.5 s per case))
set -euo pipefail
cd "$(dirname "$0")/../.."
source ci/env.sh
bash ci/setup-torch-python.sh >/dev/null
py="${IMET_TORCH_PYTHON:-$IMET_DEPS_DIR/venv-torch/bin/python}"
pairs="${IMET_BENCH_PAIRS:-3}"
min_cpu="${IMET_BENCH_MIN_CPU:-0.5}"
out="$(mktemp -d)"
cargo build --release --example se_block_step >/dev/null
bin="${CARGO_TARGET_DIR:-target}/release/examples/se_block_step"
for _ in $(seq "$pairs"); do
  OMP_NUM_THREADS=1 "$bin" --threads 1 --min-cpu "$min_cpu" "$@" >> "$out/rust.jsonl"
  OMP_NUM_THREADS=1 "$py" ci/bench/se_block_step.py --threads 1 --min-cpu "$min_cpu" "$@" >> "$out/python.jsonl"
done
"$py" - "$out" <<'PY'
import json, statistics, sys
d = sys.argv[1]
def load(side):
    runs = {}
    for r in map(json.loads, open(f"{d}/{side}.jsonl")):
        runs.setdefault(r["case"], []).append(r["cpu_s"])
    return runs
rust, py = load("rust"), load("python")
print("| case | tch CPU ms/step (median) | PyTorch CPU ms/step (median) | tch / PyTorch | per-pair ratios |")
print("| --- | ---: | ---: | ---: | --- |")
for case, r in rust.items():
    p = py[case]
    ratios = ", ".join(f"{a / b:.2f}" for a, b in zip(r, p))
    rm, pm = statistics.median(r), statistics.median(p)
    print(f"| {case} | {rm * 1e3:.2f} | {pm * 1e3:.2f} | {rm / pm:.2f} | {ratios} |")
PY
rm -rf "$out"
