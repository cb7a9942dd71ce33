# Sourced by the other ci/ scripts: where installed dependencies live.
# Everything installed goes under one cache folder outside the checkout, so a
# fresh clone on the same machine reuses it.
export IMET_DEPS_DIR="${IMET_DEPS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/imet-deps}"
export TORCH_VERSION=2.11.0
# libtorch: full CUDA set when an NVIDIA GPU is present, CPU-only minimal set otherwise.
if [ -z "${IMET_LIBTORCH_FLAVOUR:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    IMET_LIBTORCH_FLAVOUR=cuda
  else
    IMET_LIBTORCH_FLAVOUR=cpu
  fi
fi
export IMET_LIBTORCH_FLAVOUR
export IMET_VENV="$IMET_DEPS_DIR/venv"
# On a GPU machine that already has torch 2.11.0 for Python (with its CUDA
# wheels), build against it instead of downloading the same 3-5 GB again.
if [ -z "${LIBTORCH:-}" ] && [ "$IMET_LIBTORCH_FLAVOUR" = cuda ]; then
  preinstalled="$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__) if torch.__version__.split("+")[0] == "'"$TORCH_VERSION"'" else "")' 2>/dev/null || true)"
  if [ -n "$preinstalled" ] && [ -f "$preinstalled/lib/libtorch_cuda.so" ]; then
    export LIBTORCH="$preinstalled"
  fi
fi
export LIBTORCH="${LIBTORCH:-$IMET_DEPS_DIR/libtorch-$TORCH_VERSION-$IMET_LIBTORCH_FLAVOUR/torch}"
unset LIBTORCH_USE_PYTORCH LIBTORCH_BYPASS_VERSION_CHECK
export PATH="$IMET_DEPS_DIR/bin:$PATH"
