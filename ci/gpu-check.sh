#!/usr/bin/env bash
# Checks imet on a machine with one NVIDIA GPU, in under 8 minutes: CUDA and
# cuDNN seen, SIGKILL-and-resume divergence, a seresnext50 training step
# against PyTorch's on the same machine, the loader's share of train time,
# and the sample DAG end to end. The checks themselves are in
# ci/gpu_check.py (standard library only); each runs on its own, with a time
# limit, and a failure does not stop the others. Prints one line per check
# and writes <check>.json, <check>.log and gpu-check.json to $OUT (or --out).
# Exit status 0 only when every check passed. Needs no network.
#
# What the GPU machine needs:
#   - a Python with torch (2.11.0+cu130, the libtorch imet links) for the
#     reference step (ci/bench/train_step.py; plain torch, no timm);
#   - this checkout (for jobs/sample.toml and the Python files);
#   - imet and the gpu_check binary (examples/gpu_check.rs), one of:
#       * built on the GPU machine: `cargo build --release --bin imet --example gpu_check`
#         (the defaults below find them);
#       * a kit made elsewhere with `ci/gpu-check.sh --pack FILE.tar.xz` (both
#         binaries, stripped, about 17 MB) and passed as `--kit FILE.tar.xz`.
#         A kit built against the CPU-only libtorch set runs against the GPU
#         machine's own torch: the check points LD_LIBRARY_PATH at that
#         torch's lib/ and preloads its libtorch_cuda.so (which nothing in a
#         CPU build needs, so the loader would otherwise skip it);
#       * a CUDA bundle (ci/build-bundle.sh --flavour cuda): --imet
#         DIR/bin/imet, with --checker from a kit (it is given the bundle's
#         lib/ when it cannot load libtorch by itself).
#
# Usage:
#   ci/gpu-check.sh [--kit FILE | --imet PATH --checker PATH] [--python PY] [--out DIR]
#                   [--only info,step,resume,loader,dag] [--deadline-s 440]
#                   [--torch-lib auto|python] [--work DIR] [--cpu]
#   ci/gpu-check.sh --pack FILE.tar.xz [--imet PATH --checker PATH]   # on the build machine
#     (builds both in release mode unless given)
# --out defaults to $OUT, else ./gpu-check-out; it gets the results and logs
# only: the checks' stores (gigabytes of weights and checkpoints on a GPU)
# go to a temporary folder removed at the end, or to --work DIR, which is
# kept. --deadline-s bounds all checks together (each also has its own
# limit); a check that would start past it is reported as skipped. --torch-lib python runs imet on the
# Python torch's libraries even when its own load (how a kit runs on a GPU
# machine; on a CPU machine with torch for Python, --cpu --torch-lib python
# checks that a binary built here runs on those libraries).
# --cpu runs every check on the CPU with tiny sizes (IMET_DEVICE=cpu): a
# machine without a GPU checks the script itself this way (CI does not run
# it; a run takes 3 to 4 minutes on 2 busy cores). Timings are not judged and
# the CUDA assertions are not made in this mode.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
imet="$target/release/imet"
checker="$target/release/examples/gpu_check"
python=""
kit=""
pack=""
given=false
pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    --pack) pack="$2"; shift 2 ;;
    --kit) kit="$2"; shift 2 ;;
    --imet) imet="$2"; given=true; shift 2 ;;
    --checker) checker="$2"; given=true; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) pass+=("$1"); shift ;;
  esac
done
if [ -n "$pack" ]; then
  out="$(realpath -m "$pack")"
  if ! $given; then
    (cd "$repo" && source ci/env.sh && cargo build --release --bin imet --example gpu_check)
  fi
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  strip -o "$tmp/imet" "$imet"
  strip -o "$tmp/gpu_check" "$checker"
  mkdir -p "$(dirname "$out")"
  tar -C "$tmp" -cJf "$out" imet gpu_check
  echo "gpu-check kit: $out ($(du -h "$out" | cut -f1)); on the GPU machine: ci/gpu-check.sh --kit $pack"
  exit 0
fi
if [ -n "$kit" ]; then
  dir="$(mktemp -d)"
  trap 'rm -rf "$dir"' EXIT
  tar -C "$dir" -xJf "$kit"
  imet="$dir/imet"
  checker="$dir/gpu_check"
fi
if [ -z "$python" ]; then
  for p in python3 python; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import torch' >/dev/null 2>&1; then python="$(command -v "$p")"; break; fi
  done
  # Without a torch Python, the reference and the library fallback are off.
  [ -n "$python" ] || { python="$(command -v python3)"; echo "gpu-check: no Python with torch found; the step check will fail" >&2; }
fi
for f in "$imet" "$checker"; do
  [ -x "$f" ] || { echo "gpu-check: no executable at $f (see --help)" >&2; exit 2; }
done
"$python" "$repo/ci/gpu_check.py" --imet "$imet" --checker "$checker" --python "$python" "${pass[@]}"
