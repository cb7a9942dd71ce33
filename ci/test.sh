#!/usr/bin/env bash
# The whole test suite: installs what is missing (libtorch, the Python
# reference tools, the S3 test server), builds, and runs every test in the
# release profile. README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/env.sh
start=$(date +%s)
bash ci/setup-libtorch.sh
bash ci/setup-lightgbm.sh
bash ci/setup-python.sh
bash ci/setup-s3.sh
bash ci/setup-slurm.sh install || echo "Slurm could not be installed; tests/slurm.rs will fail and say why"
bash ci/setup-image-tools.sh || echo "the image tools (buildah, patchelf, busybox-static) could not be installed; tests/it/container_image.rs will fail and say why"
if [ -f ci/setup-torch-python.sh ]; then bash ci/setup-torch-python.sh; fi
export IMET_PYTHON="$IMET_VENV/bin/python"
export IMET_S3S_FS="$IMET_DEPS_DIR/bin/s3s-fs"
if [ -x "$IMET_DEPS_DIR/venv-torch/bin/python" ]; then export IMET_TORCH_PYTHON="$IMET_DEPS_DIR/venv-torch/bin/python"; fi
echo "setup done in $(( $(date +%s) - start ))s"
cargo build --release --all-targets
echo "build done in $(( $(date +%s) - start ))s"
# The tests write whole experiments into temporary folders (a few GB at
# peak): keep them beside the build, on its disk, not in a small /tmp.
export TMPDIR="${IMET_TEST_TMPDIR:-${CARGO_TARGET_DIR:-$PWD/target}/test-tmp}"
mkdir -p "$TMPDIR"
echo "free space for the tests: $(df -h --output=avail "$TMPDIR" | tail -1) in $TMPDIR"
cargo test --release --no-fail-fast -- --test-threads="${IMET_TEST_THREADS:-2}"
echo "tests done in $(( $(date +%s) - start ))s"
