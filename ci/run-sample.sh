#!/usr/bin/env bash
# README's main command: builds imet (installing libtorch if missing) and
# runs the whole pipeline of jobs/sample.toml on the built-in synthetic
# sample in ./out/sample (override the folder with IMET_ROOT).
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/env.sh
bash ci/setup-libtorch.sh
cargo build --release --bin imet
exec target/release/imet run --spec jobs/sample.toml "$@"
