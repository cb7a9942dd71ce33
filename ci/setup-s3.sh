#!/usr/bin/env bash
# Installs s3s-fs, a file-backed S3-compatible server the storage tests start
# on 127.0.0.1 (it keeps objects across restarts and honours If-None-Match).
set -euo pipefail
source "$(dirname "$0")/env.sh"
if [ -x "$IMET_DEPS_DIR/bin/s3s-fs" ]; then
  echo "s3s-fs present at $IMET_DEPS_DIR/bin/s3s-fs"
  exit 0
fi
echo "installing s3s-fs 0.14.1 into $IMET_DEPS_DIR"
cargo install s3s-fs@0.14.1 --locked --features binary --root "$IMET_DEPS_DIR" --quiet
