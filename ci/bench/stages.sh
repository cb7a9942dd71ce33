#!/usr/bin/env bash
# The stage measurements of BENCHMARKS.md ("Stages"): cleaning on a noisy
# sample, pseudo-labels on a sample with few training images, distillation
# from a two-model ensemble; each over the seeds given (default 1 2 3).
# Usage: bash ci/bench/stages.sh [noise|pseudo|distill|all] [SEED ...]
# Writes under out/bench-stages/ and prints one JSON summary per run.
set -euo pipefail
cd "$(dirname "$0")/../.."
source ci/env.sh
which=${1:-all}; shift || true
seeds=("$@"); [ ${#seeds[@]} -gt 0 ] || seeds=(1 2 3)
imet=${IMET_BIN:-target/release/imet}
[ -x "$imet" ] || cargo build --release --bin imet
py="$IMET_VENV/bin/python"
for kind in noise pseudo distill; do
  [ "$which" = all ] || [ "$which" = "$kind" ] || continue
  for seed in "${seeds[@]}"; do
    spec="out/bench-stages/$kind-$seed.toml"
    mkdir -p out/bench-stages
    sed "s/SEED/$seed/g" "ci/bench/stages/$kind.toml" > "$spec"
    start=$(date +%s)
    "$imet" run --spec "$spec" --parallel 2 > "out/bench-stages/$kind-$seed.log" 2>&1 || { tail -30 "out/bench-stages/$kind-$seed.log"; exit 1; }
    "$py" ci/bench/stages_summary.py "$kind" "out/bench-stages/$kind-$seed" "$kind-$seed" "$(( $(date +%s) - start ))"
  done
done
