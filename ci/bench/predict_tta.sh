#!/bin/bash
# Predict one fold with 4 TTA views (original, mirror, 2 crops) on 150 OOF
# and 200 test images, alternating two imet binaries (e.g. before and after
# a change), ROUNDS times; prints CPU and wall seconds of each predict and
# whether both binaries wrote identical predictions.
# usage: bash ci/bench/predict_tta.sh SIZE BEFORE_BIN AFTER_BIN [ROUNDS]
set -euo pipefail
size=$1; before=$(realpath "$2"); after=$(realpath "$3"); rounds=${4:-3}
repo=$(cd "$(dirname "$0")/../.." && pwd)
source "$repo/ci/env.sh"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cd "$work"
cat > spec.toml <<TOML
experiment = "tta"
seed = 5
[storage]
root = "$work/store"
[data.sample]
train = 300
test = 200
classes = 30
seed = 3
[folds]
k = 2
[image]
workers = 2
[[models]]
name = "r18"
arch = "resnet18"
size = $size
augment = [{ random_resized_crop = { size = $size, scale = [0.5, 1.0] } }, { hflip = {} }]
tta = { hflip = true, crops = 2 }
[models.train]
batch_size = 16
phases = [{ epochs = 1, optimizer = { kind = "sgd", lr = 0.05, momentum = 0.9 } }]
[ensemble]
members = ["r18"]
TOML
spec=spec.toml
export IMET_DEVICE=cpu RUST_LOG=warn
rm -rf store store-*; $before folds --spec $spec >/dev/null; $before train --spec $spec --model r18 --fold 0 >/dev/null
for round in $(seq $rounds); do
  for which in before after; do
    bin=$before; [ $which = after ] && bin=$after
    rm -rf store-$which; cp -r store store-$which
    sed "s|$work/store\"|$work/store-$which\"|" $spec > spec-p.toml
    /usr/bin/time -f "%U %S %e" $bin predict --spec spec-p.toml --model r18 --fold 0 > /dev/null 2> t.txt
    echo "$which $round user+sys $(awk '{print $1+$2}' t.txt) wall $(awk '{print $3}' t.txt)"
  done
done
"$IMET_VENV/bin/python" - "$work" <<'PY'
import sys, pyarrow.parquet as pq
work = sys.argv[1]
for f in ["oof", "test"]:
    a = pq.read_table(f"{work}/store-before/runs/tta/models/r18/fold=0/{f}.parquet")
    b = pq.read_table(f"{work}/store-after/runs/tta/models/r18/fold=0/{f}.parquet")
    print(f, "identical" if a.equals(b) else "DIFFER", a.num_rows)
PY
