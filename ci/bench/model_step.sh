#!/usr/bin/env bash
# Training-step time per arch, tch (examples/model_step.rs) against PyTorch
# (ci/bench/model_step.py), batch 2, 96 px, CPU, same thread count; prints a
# markdown table for BENCHMARKS.md, model section. Usage:
#   bash ci/bench/model_step.sh [ARCH...]     (IMET_BENCH_ITERS, IMET_BENCH_THREADS)
set -euo pipefail
cd "$(dirname "$0")/../.."
source ci/env.sh
bash ci/setup-torch-python.sh >/dev/null
py="${IMET_TORCH_PYTHON:-$IMET_DEPS_DIR/venv-torch/bin/python}"
iters="${IMET_BENCH_ITERS:-5}"
threads="${IMET_BENCH_THREADS:-2}"
out="$(mktemp -d)"
cargo build --release --example model_step >/dev/null
bin="${CARGO_TARGET_DIR:-target}/release/examples/model_step"
archs=("$@")
if [ ${#archs[@]} -eq 0 ]; then
  archs=(resnet50 resnet101 resnext50_32x4d resnext101_32x8d seresnext50_32x4d seresnext101_32x4d senet154 densenet121 densenet161 inception_resnet_v2 pnasnet5large)
fi
# Interleave the two sides arch by arch so machine load drifts hit both alike.
for a in "${archs[@]}"; do
  OMP_NUM_THREADS="$threads" "$bin" --iters "$iters" --threads "$threads" "$a" >> "$out/rust.jsonl"
  OMP_NUM_THREADS="$threads" "$py" ci/bench/model_step.py --iters "$iters" --threads "$threads" "$a" >> "$out/python.jsonl"
done
"$py" - "$out" <<'PY'
import json, sys
d = sys.argv[1]
rust = {r["arch"]: r for r in map(json.loads, open(f"{d}/rust.jsonl"))}
py = {r["arch"]: r for r in map(json.loads, open(f"{d}/python.jsonl"))}
print("| arch | timm model | params (M) | GFLOPs/img @96 | GFLOPs/img @recipe | tch step min / median (s) | PyTorch step min / median (s) | tch / PyTorch (min) | (median) | tch / PyTorch (CPU s) |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for arch, p in py.items():
    r = rust[arch]
    assert r["params"] == p["params"], f"{arch}: {r['params']} params in tch, {p['params']} in timm"
    print(f"| {arch} | {p['timm']} | {p['params']/1e6:.1f} | {p['gflops_bench']:.2f} | {p['gflops_recipe']:.1f} "
          f"| {r['min_s']:.3f} / {r['median_s']:.3f} | {p['min_s']:.3f} / {p['median_s']:.3f} "
          f"| {r['min_s']/p['min_s']:.2f} | {r['median_s']/p['median_s']:.2f} "
          f"| {r['cpu_s']:.3f} / {p['cpu_s']:.3f} = {r['cpu_s']/p['cpu_s']:.2f} |")
PY
