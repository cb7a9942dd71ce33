#!/usr/bin/env bash
# Installs libtorch 2.11.0 from PyPI's torch wheel unless already present.
# cpu: only torch + the two CUDA runtime libraries libtorch_cpu links against
#      (unzipped, no pip install: a few hundred MB instead of 3-5 GB).
# cuda: the full wheel set with pip into a private prefix.
set -euo pipefail
source "$(dirname "$0")/env.sh"
if [ -f "$LIBTORCH/lib/libtorch_cpu.so" ]; then
  echo "libtorch $TORCH_VERSION ($IMET_LIBTORCH_FLAVOUR) present at $LIBTORCH"
  exit 0
fi
mkdir -p "$IMET_DEPS_DIR"
dest="$(dirname "$LIBTORCH")"
tmp="$(mktemp -d "$IMET_DEPS_DIR/.libtorch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "installing libtorch $TORCH_VERSION ($IMET_LIBTORCH_FLAVOUR) into $dest"
if [ "$IMET_LIBTORCH_FLAVOUR" = cuda ]; then
  python3 -m pip install --quiet --no-input --target "$tmp/site" "torch==$TORCH_VERSION"
  mv "$tmp/site" "$tmp/out"
else
  python3 -m pip download --quiet --no-input --no-deps -d "$tmp/wheels" \
    "torch==$TORCH_VERSION" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
  mkdir -p "$tmp/out"
  for w in "$tmp"/wheels/*.whl; do
    python3 -m zipfile -e "$w" "$tmp/out"
  done
  # libtorch_cpu needs libcudart.so.13 and libcupti.so.13 next to it.
  find "$tmp/out/nvidia" -name 'libcudart.so.13*' -o -name 'libcupti.so.13*' | while read -r so; do
    cp -a "$so" "$tmp/out/torch/lib/"
  done
fi
rm -rf "$dest"
mv "$tmp/out" "$dest"
echo "libtorch ready at $LIBTORCH"
