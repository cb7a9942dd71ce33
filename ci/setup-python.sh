#!/usr/bin/env bash
# Creates the Python virtual environment used by tests and benchmarks as
# reference implementations (pyarrow, scikit-learn, ...) and for the S3 test
# server (moto). Reuses it when its requirements file has not changed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
req="$here/requirements-test.txt"
stamp="$IMET_VENV/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ -x "$IMET_VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "python venv present at $IMET_VENV"
  exit 0
fi
echo "creating python venv at $IMET_VENV"
mkdir -p "$IMET_DEPS_DIR"
python3 -m venv "$IMET_VENV"
"$IMET_VENV/bin/python" -m pip install --quiet --no-input --upgrade pip
"$IMET_VENV/bin/python" -m pip install --quiet --no-input -r "$req"
echo "$want" > "$stamp"
