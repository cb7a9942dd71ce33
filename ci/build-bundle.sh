#!/usr/bin/env bash
# Packs the `imet` binary and the shared libraries it loads into a
# relocatable tarball that runs from any folder on any x86-64 Linux with
# glibc and libstdc++ at least as new as BUILD_INFO.json's `requires`:
#
#   imet-<version>-<flavour>-linux-x86_64.tar.gz
#     imet-<version>-<flavour>-linux-x86_64/
#       bin/imet          RUNPATH $ORIGIN/../lib
#       lib/*.so*         RUNPATH $ORIGIN: libtorch, and for cuda the CUDA libraries
#       licenses/         the licence files of the wheels those libraries come from
#       VERSION           one line: imet <version> <flavour> libtorch <version> <commit>
#       BUILD_INFO.json   crate version, git commit, libtorch version and flavour,
#                         required glibc/libstdc++, every file's sha256
#
# Usage: ci/build-bundle.sh [--flavour cpu|cuda] [--out DIR] [--bin PATH]
#   --flavour  which libtorch to link and ship (default: ci/env.sh's choice,
#              cuda on a machine with an NVIDIA GPU, cpu otherwise)
#   --out      where the tarball goes (default: target/dist/)
#   --bin      bundle this already built binary (e.g. target/release/imet)
#              instead of building one; it must have been linked against the
#              flavour's libtorch (its libraries are found the way the loader
#              finds them, through its RUNPATH)
# IMET_BUNDLE_GZIP_LEVEL: gzip level, default 6 (1 packs about three times
# faster and 15% larger). pigz is used when installed.
#
# Without --bin the script builds imet in release mode in its own target
# folder (target/bundle-<flavour>, or $IMET_BUNDLE_TARGET_DIR) with the
# build machine's folders remapped (--remap-path-prefix for Rust,
# -ffile-prefix-map for the C/C++ parts: panic locations and libtorch's
# assertion messages name /cargo/..., /libtorch/..., /imet/... instead of
# this machine's cache, checkout and target folders). A --bin binary keeps
# those names in its messages; the script says so, and checks, either way,
# that no file names a folder libraries are loaded from.
#
# Which libraries go in: everything `ldd` resolves for the binary (NEEDED,
# transitively, as the loader follows it) except the system's C and C++
# runtime (below), plus, for cuda, the libraries torch and cuDNN open with
# dlopen at run time (ldd cannot see them). The system set stays out on
# purpose: glibc cannot be shipped without its own loader, and libstdc++ and
# libgcc_s must be the process's single copy (the same rule as manylinux
# wheels); BUILD_INFO.json records the newest GLIBC_/GLIBCXX_ symbol version
# the bundle needs, so a host can be checked against it. The NVIDIA driver
# (libcuda.so.1, libnvidia-*) always comes from the host.
#
# The cuda flavour needs the full CUDA wheel set (several GB; `IMET_LIBTORCH_FLAVOUR=cuda
# bash ci/setup-libtorch.sh` installs it, no GPU needed; on a machine whose
# Python already has torch 2.11.0 with CUDA, ci/env.sh uses that one).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

flavour="${IMET_LIBTORCH_FLAVOUR:-}"
out="$repo/target/dist"
bin=""
while [ $# -gt 0 ]; do
  case "$1" in
    --flavour) flavour="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-bundle: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$flavour" in
  cpu|cuda|"") ;;
  *) echo "build-bundle: --flavour must be cpu or cuda, not '$flavour'" >&2; exit 2 ;;
esac
[ -n "$flavour" ] && export IMET_LIBTORCH_FLAVOUR="$flavour"
source ci/env.sh
flavour="$IMET_LIBTORCH_FLAVOUR"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

need_tool() { # tool, Debian package
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "build-bundle: installing $2 (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }
  fi
  command -v "$1" >/dev/null 2>&1 || { echo "build-bundle: needs '$1' (Debian package $2)" >&2; exit 1; }
}
need_tool patchelf patchelf
need_tool readelf binutils
need_tool objdump binutils

remapped=false
if [ -z "$bin" ]; then
  bash ci/setup-libtorch.sh
  export CARGO_TARGET_DIR="${IMET_BUNDLE_TARGET_DIR:-$repo/target/bundle-$flavour}"
  cargo_home="${CARGO_HOME:-$HOME/.cargo}"
  torch_root="$(cd "$LIBTORCH" && pwd -P)"
  export RUSTFLAGS="${RUSTFLAGS:-} --remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$repo=/imet --remap-path-prefix=$CARGO_TARGET_DIR=/target"
  maps="-ffile-prefix-map=$torch_root=/libtorch -ffile-prefix-map=$LIBTORCH=/libtorch -ffile-prefix-map=$cargo_home=/cargo -ffile-prefix-map=$CARGO_TARGET_DIR=/target -ffile-prefix-map=$repo=/imet"
  export CFLAGS="${CFLAGS:-} $maps" CXXFLAGS="${CXXFLAGS:-} $maps"
  echo "build-bundle: building imet ($flavour, LIBTORCH=$LIBTORCH) in $CARGO_TARGET_DIR"
  cargo build --release --bin imet
  bin="$CARGO_TARGET_DIR/release/imet"
  remapped=true
fi
[ -x "$bin" ] || { echo "build-bundle: no executable at $bin" >&2; exit 1; }

version="$(awk -F'"' '/^version = / {print $2; exit}' Cargo.toml)"
commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
dirty=false
if [ "$commit" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then dirty=true; fi
commit_time="$(git log -1 --format=%ct 2>/dev/null || echo 0)"
name="imet-$version-$flavour-linux-x86_64"

# Sonames that stay with the host (see the header).
is_system() {
  case "$1" in
    libc.so.*|libm.so.*|libdl.so.*|libpthread.so.*|librt.so.*|libutil.so.*|ld-linux-x86-64.so.*|libresolv.so.*) return 0 ;;
    libstdc++.so.*|libgcc_s.so.*) return 0 ;;
    *) return 1 ;;
  esac
}
is_driver() {
  case "$1" in libcuda.so.*|libnvidia-*|libnvcuvid.so.*) return 0 ;; *) return 1 ;; esac
}

# `soname path` of every library the loader resolves for $1 (a clean
# environment: no LD_LIBRARY_PATH), failing on any that is not found.
closure() {
  local lines
  lines="$(env -i /usr/bin/ldd "$1")" || { echo "build-bundle: ldd $1 failed" >&2; return 1; }
  local missing
  missing="$(printf '%s\n' "$lines" | awk '/=> not found/ {print $1}')"
  for so in $missing; do
    is_driver "$so" || { echo "build-bundle: $1 needs $so, which is not found (flavour $flavour, LIBTORCH=$LIBTORCH)" >&2; return 1; }
  done
  printf '%s\n' "$lines" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}'
}

tmp="$(mktemp -d "$out/.bundle.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
stage="$tmp/$name"
mkdir -p "$stage/bin" "$stage/lib" "$stage/licenses"
declare -A libs=()
add_closure() {
  local so path
  while read -r so path; do
    if is_system "$so" || is_driver "$so"; then continue; fi
    [ -n "${libs[$so]:-}" ] || libs[$so]="$(readlink -f "$path")"
  done < <(closure "$1")
}
add_closure "$bin"

if [ -n "${libs[libtorch_cuda.so]:-}" ]; then has_cuda=true; else has_cuda=false; fi
if [ "$flavour" = cuda ] && ! $has_cuda; then
  echo "build-bundle: $bin does not load libtorch_cuda.so: it was built without CUDA (build it against the cuda libtorch: IMET_LIBTORCH_FLAVOUR=cuda)" >&2
  exit 1
fi
if [ "$flavour" = cpu ] && $has_cuda; then
  echo "build-bundle: $bin loads libtorch_cuda.so; bundle it with --flavour cuda" >&2
  exit 1
fi
torch_lib="$(dirname "${libs[libtorch_cpu.so]:?the binary does not load libtorch_cpu.so}")"
if $has_cuda; then
  # Loaded with dlopen, so ldd does not list them: cuDNN 9's engine and
  # operation libraries (libcudnn.so.9 is a shim that opens them on first
  # use), and NVRTC, which torch opens through libcaffe2_nvrtc.so to compile
  # fused elementwise kernels at run time.
  extra=("$torch_lib/libcaffe2_nvrtc.so")
  cudnn_dir="$(dirname "${libs[libcudnn.so.9]:?libtorch_cuda.so without libcudnn.so.9}")"
  extra+=("$cudnn_dir"/libcudnn_*.so.9)
  cuda_dir="$(dirname "${libs[libcudart.so.13]:?libtorch_cuda.so without libcudart.so.13}")"
  extra+=("$cuda_dir"/libnvrtc-builtins.so.*)
  for f in "${extra[@]}"; do
    [ -f "$f" ] || { echo "build-bundle: $f is missing from the CUDA set" >&2; exit 1; }
    so="$(basename "$f")"
    [ -n "${libs[$so]:-}" ] || libs[$so]="$(readlink -f "$f")"
    add_closure "$f"
  done
fi

cp "$bin" "$stage/bin/imet"
chmod 0755 "$stage/bin/imet"
patchelf --set-rpath '$ORIGIN/../lib' "$stage/bin/imet"
for so in "${!libs[@]}"; do
  cp "${libs[$so]}" "$stage/lib/$so"
  chmod 0644 "$stage/lib/$so"
  patchelf --set-rpath '$ORIGIN' "$stage/lib/$so"
done

# Licences of the wheels the libraries come from (torch and nvidia-*).
site="$(cd "$(dirname "$(dirname "$torch_lib")")" && pwd)"
for d in "$site"/torch-*.dist-info "$site"/nvidia_*.dist-info; do
  [ -d "$d" ] || continue
  dist="$(basename "$d" .dist-info)"
  while IFS= read -r f; do
    mkdir -p "$stage/licenses/$dist"
    cp "$f" "$stage/licenses/$dist/"
  done < <(find "$d" -maxdepth 2 -type f \( -iname 'LICENSE*' -o -iname 'License.txt' -o -iname 'NOTICE*' -o -iname 'COPYING*' \))
done

# Checks: every library resolves inside the bundle, and nothing names the
# folders this machine built from.
resolved="$(closure "$stage/bin/imet")"
stage_real="$(cd "$stage" && pwd -P)"
while read -r so path; do
  if is_system "$so"; then continue; fi
  case "$(readlink -f "$path")" in "$stage_real/lib/"*) ;; *) echo "build-bundle: bundled imet resolves $so to $path, outside the bundle" >&2; exit 1 ;; esac
done <<<"$resolved"
for f in "$stage/bin/imet" "$stage"/lib/*; do
  rp="$(readelf -d "$f" | sed -n 's/.*(\(RUNPATH\|RPATH\)).*\[\(.*\)\]/\2/p')"
  case "$rp" in '$ORIGIN'|'$ORIGIN/../lib') ;; *) echo "build-bundle: $f has RUNPATH '$rp'" >&2; exit 1 ;; esac
done
# Folders libraries were loaded from: never named anywhere.
lib_dirs=("$LIBTORCH/lib")
for so in "${!libs[@]}"; do lib_dirs+=("$(dirname "${libs[$so]}")"); done
while IFS= read -r d; do
  if grep -rlF -- "$d" "$stage" >/dev/null; then
    echo "build-bundle: the bundle names $d: $(grep -rlF -- "$d" "$stage" | tr '\n' ' ')" >&2
    exit 1
  fi
done < <(printf '%s\n' "${lib_dirs[@]}" | sort -u)
# Build folders (source paths in messages): none after a remapped build.
named=()
for p in "$IMET_DEPS_DIR" "${CARGO_HOME:-$HOME/.cargo}" "$repo" "$(dirname "$(dirname "$bin")")"; do
  if grep -qrlF -- "$p" "$stage"; then named+=("$p"); fi
done
if [ ${#named[@]} -gt 0 ]; then
  if $remapped; then
    echo "build-bundle: the remapped build still names ${named[*]}" >&2
    exit 1
  fi
  echo "build-bundle: note: bin/imet names ${named[*]} in panic and assertion messages (source locations of a --bin build); build without --bin for a bundle without them"
fi
env -i "$stage/bin/imet" --version >/dev/null

# Requirements on the host's C and C++ runtime: the newest symbol versions used.
newest() { # prefix
  for f in "$stage/bin/imet" "$stage"/lib/*; do objdump -T "$f" 2>/dev/null; done \
    | grep -o "$1[0-9][0-9.]*" | sed "s/^$1//" | sort -uV | tail -1
}
glibc="$(newest GLIBC_)"
glibcxx="$(newest GLIBCXX_)"
torch_version="$(sed -n "s/^__version__ = '\(.*\)'/\1/p" "$torch_lib/../version.py" 2>/dev/null || echo unknown)"
torch_cuda="$(sed -n "s/^cuda: Optional\[str\] = '\(.*\)'/\1/p" "$torch_lib/../version.py" 2>/dev/null || true)"
torch_git="$(sed -n "s/^git_version = '\(.*\)'/\1/p" "$torch_lib/../version.py" 2>/dev/null || true)"
echo "imet $version $flavour libtorch $torch_version $commit$($dirty && echo -dirty)" > "$stage/VERSION"
python3 - "$stage" "$version" "$commit" "$dirty" "$flavour" "$torch_version" "$torch_cuda" "$torch_git" "$glibc" "$glibcxx" <<'PY'
import hashlib, json, os, sys
stage, version, commit, dirty, flavour, tv, tcuda, tgit, glibc, glibcxx = sys.argv[1:]
def sha(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
files = {}
for sub in ("bin", "lib"):
    for n in sorted(os.listdir(os.path.join(stage, sub))):
        p = os.path.join(stage, sub, n)
        files[f"{sub}/{n}"] = {"bytes": os.path.getsize(p), "sha256": sha(p)}
info = {
    "name": "imet",
    "version": version,
    "git_commit": commit,
    "git_dirty": dirty == "true",
    "flavour": flavour,
    "target": "x86_64-unknown-linux-gnu",
    "libtorch": {"version": tv, "cuda": tcuda or None, "git": tgit or None},
    "requires": {"glibc": glibc, "glibcxx": glibcxx, "nvidia_driver": f"one supporting CUDA {tcuda}" if flavour == "cuda" else None},
    "host_libraries": "glibc (libc, libm, libdl, libpthread, librt, ld-linux), libstdc++, libgcc_s" + (", and the NVIDIA driver's libcuda" if flavour == "cuda" else ""),
    "files": files,
}
with open(os.path.join(stage, "BUILD_INFO.json"), "w") as f:
    json.dump(info, f, indent=2)
    f.write("\n")
PY

# A reproducible tarball: sorted names, no owners, the commit's time.
level="${IMET_BUNDLE_GZIP_LEVEL:-6}"
compress=(gzip -n "-$level")
command -v pigz >/dev/null 2>&1 && compress=(pigz -n "-$level")
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$commit_time" -C "$tmp" -cf - "$name" | "${compress[@]}" > "$tmp/$name.tar.gz"
mv "$tmp/$name.tar.gz" "$out/$name.tar.gz"
echo "bundle: $out/$name.tar.gz"
echo "  $(du -sh "$stage" | cut -f1) unpacked, $(du -h "$out/$name.tar.gz" | cut -f1) packed, ${#libs[@]} libraries; needs glibc >= $glibc, libstdc++ GLIBCXX >= $glibcxx"
