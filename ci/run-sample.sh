#!/usr/bin/env bash
# README's main command: builds imet (installing libtorch if missing) and
# runs the whole job DAG of jobs/sample.toml (two jobs at a time) on the built-in synthetic
# sample in ./out/sample (override the folder with IMET_ROOT, the jobs at a
# time with IMET_PARALLEL).
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/env.sh
bash ci/setup-libtorch.sh
bash ci/setup-lightgbm.sh
cargo build --release --bin imet
exec "${CARGO_TARGET_DIR:-target}/release/imet" run --spec jobs/sample.toml --parallel "${IMET_PARALLEL:-2}" "$@"
