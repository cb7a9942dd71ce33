#!/usr/bin/env bash
# Creates $IMET_DEPS_DIR/venv-torch: PyTorch 2.11.0 (the libtorch version tch
# links against) + timm, the reference side of the model parity tests and of
# the model step benchmark (ci/export_timm.py, ci/bench/model_step.py).
# Reuses the venv when the pinned set below has not changed.
#
# Why the full torch install: PyPI's torch 2.11.0 is a CUDA build whose
# Python extension (_C -> libtorch_python.so -> libtorch_cuda.so) links
# cudnn, cublas, cusparse(Lt), cufft, cufile, curand, nccl and nvshmem even on
# a CPU-only machine, so the "torch --no-deps + cuda runtime" route that
# suffices for libtorch_cpu (ci/setup-libtorch.sh) fails at `import torch`
# with `libcudnn.so.9: cannot open shared object file`. Installing those libs
# one by one is the full install minus triton, so we take the full install.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
venv="$IMET_DEPS_DIR/venv-torch"
pins=(
  "torch==$TORCH_VERSION"
  "torchvision==0.26.0"
  "timm==1.0.31"
  "safetensors==0.8.0"
  "numpy==2.3.5"
)
stamp="$venv/.pins.sha256"
want="$(printf '%s\n' "${pins[@]}" | sha256sum | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "torch python venv present at $venv"
  exit 0
fi
echo "creating torch python venv at $venv (torch $TORCH_VERSION, timm)"
mkdir -p "$IMET_DEPS_DIR"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --no-input --upgrade pip
"$venv/bin/python" -m pip install --quiet --no-input "${pins[@]}"
"$venv/bin/python" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
echo "$want" > "$stamp"
