#!/usr/bin/env bash
# Installs what building the `lightgbm3` crate (LightGBM compiled from the
# C++ sources it ships, for the second-level model) needs: CMake >= 3.28
# (Debian 12 has 3.25, so the CMake wheel from PyPI, linked into
# $IMET_DEPS_DIR/bin, which ci/env.sh puts on PATH) and libclang for
# bindgen (Debian's libclang-dev), plus a C++ compiler.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
cmake_ok() {
  command -v cmake >/dev/null 2>&1 || return 1
  local v
  v="$(cmake --version | head -1 | awk '{print $3}')"
  [ "$(printf '%s\n3.28\n' "$v" | sort -V | head -1)" = "3.28" ]
}
if cmake_ok; then
  echo "cmake $(cmake --version | head -1 | awk '{print $3}') present"
else
  echo "installing cmake 3.31 (PyPI wheel) into $IMET_DEPS_DIR/venv-cmake"
  mkdir -p "$IMET_DEPS_DIR/bin"
  python3 -m venv "$IMET_DEPS_DIR/venv-cmake"
  "$IMET_DEPS_DIR/venv-cmake/bin/python" -m pip install --quiet --no-input "cmake>=3.28,<4"
  ln -sf "$IMET_DEPS_DIR/venv-cmake/bin/cmake" "$IMET_DEPS_DIR/bin/cmake"
  cmake_ok
fi
if ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1; then
  echo "libclang and a C++ compiler present"
else
  echo "installing libclang-dev, clang and g++ with apt-get"
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq libclang-dev clang g++ >/dev/null
fi
