#!/usr/bin/env bash
# Builds the OCI image of imet from a bundle (ci/build-bundle.sh), offline,
# with Debian's buildah as root (vfs storage, nothing run inside the image
# while building):
#
#   imet:<version>-<flavour>   and   localhost/imet:dev
#     /opt/imet/               the bundle (bin/imet, lib/, licenses/, VERSION, BUILD_INFO.json)
#     /usr/lib/...             the C and C++ runtime the bundle needs, copied
#                              from this machine (ldd of every bundled file)
#     /usr/bin/busybox + sh, mkdir, ...   the shell the Kubernetes and AWS
#                              Batch manifests run their commands with (`sh -c`)
#     /etc/ssl/certs/ca-certificates.crt, /etc/passwd, /etc/group (user imet,
#     uid/gid 10001), /etc/imet (writable by imet: AWS Batch jobs write the
#     spec there), /var/lib/imet, /tmp
#     /usr/bin/imet-entrypoint   the entry point (below)
#   PATH=/opt/imet/bin:/usr/bin, USER 10001:10001, WORKDIR /var/lib/imet
#   labels org.opencontainers.image.{version,revision,source,created,title}
#   (revision: the commit the binary was built from, from BUILD_INFO.json;
#   source: $IMET_IMAGE_SOURCE, else the git remote `origin`),
#   imet.libtorch.flavour, imet.libtorch.version
#
# The base is this "distroless" root rather than `debootstrap --variant=minbase`:
# measured on a shared 2-core build machine, `debootstrap --variant=minbase
# bookworm DIR http://deb.debian.org/debian` took 4 min 05 s and 206 MB
# before the bundle is even added, while this root adds 7 MB (glibc,
# libstdc++, libgcc_s, busybox, certificates) and needs no network. It
# holds no package manager and no setuid binary. The trade: no apt inside
# the image (build a derived image FROM it if you need tools).
#
# The user is numeric (10001:10001) so Kubernetes' `runAsNonRoot` can verify
# it. The entry point runs imet: `podman run IMAGE train --spec ...` runs
# `imet train --spec ...`, and no arguments print imet's help. A command
# line that names its program (`imet ...`, `sh -c "..."`, or an absolute
# path) runs as given instead: AWS Batch passes a job definition's
# `command` as the entry point's arguments (it cannot replace the entry
# point), and the rendered Batch definitions run `sh -c "..."`. Kubernetes'
# `command` replaces the entry point, so the rendered pods run as written.
#
# Usage: ci/build-image.sh [--bundle FILE.tar.gz | --flavour cpu|cuda] [--tag NAME]
#                          [--archive FILE.tar] [--no-dev-tag]
#   --bundle      an existing bundle (default: build one with ci/build-bundle.sh)
#   --tag         image name (default imet:<version>-<flavour>); localhost/imet:dev too
#   --archive     also write the image as an OCI archive (docker/podman load-able)
# Environment: IMET_BUILDAH_DRIVER (default vfs: works in containers and
# without kernel overlay support; pass the same --storage-driver to later
# buildah commands, e.g. `buildah --storage-driver vfs push ...`).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
start=$(date +%s)

bundle=""
flavour=""
tag=""
archive=""
dev_tag=true
while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) bundle="$2"; shift 2 ;;
    --flavour) flavour="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --archive) archive="$2"; shift 2 ;;
    --no-dev-tag) dev_tag=false; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-image: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "build-image: run as root (buildah with vfs storage)" >&2; exit 1; }

bash ci/setup-image-tools.sh

if [ -z "$bundle" ]; then
  out="$repo/target/dist"
  bash ci/build-bundle.sh ${flavour:+--flavour "$flavour"} --out "$out" | tee /dev/stderr | sed -n 's/^bundle: //p' > "$out/.last-bundle"
  bundle="$(cat "$out/.last-bundle")"
  rm -f "$out/.last-bundle"
fi
[ -f "$bundle" ] || { echo "build-image: no bundle at $bundle" >&2; exit 1; }
bundle="$(realpath "$bundle")"

bh() { buildah --storage-driver "${IMET_BUILDAH_DRIVER:-vfs}" "$@"; }

tmp="$(mktemp -d)"
container=""
cleanup() {
  if [ -n "$container" ]; then bh rm "$container" >/dev/null 2>&1 || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
root="$tmp/root"
mkdir -p "$root"/{opt,etc/ssl/certs,etc/ld.so.conf.d,etc/imet,var/lib/imet,tmp,usr/bin,usr/lib/x86_64-linux-gnu,usr/lib64}
# Debian's merged /usr: the paths binaries name (/lib64/ld-linux-x86-64.so.2,
# /bin/sh) resolve as on the build machine.
ln -s usr/bin "$root/bin"
ln -s usr/bin "$root/sbin"
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"

tar -xzf "$bundle" -C "$root/opt"
name="$(basename "$bundle" .tar.gz)"
mv "$root/opt/$name" "$root/opt/imet"
info="$root/opt/imet/BUILD_INFO.json"
field() { python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); 
for k in sys.argv[2].split("."): d = d[k]
print(d if d is not None else "")' "$info" "$1"; }
version="$(field version)"
commit="$(field git_commit)"
flavour="$(field flavour)"
torch_version="$(field libtorch.version)"
tag="${tag:-imet:$version-$flavour}"

# The host libraries the bundle leaves out, with their closure, at the
# paths the loader resolves them to here.
copy_host() { # path as the loader names it
  local src real dest
  src="$1"
  real="$(readlink -f "$src")"
  dest="$root$real"
  if [ ! -e "$dest" ]; then
    mkdir -p "$(dirname "$dest")"
    cp "$real" "$dest"
  fi
  # The name it was asked by (a soname symlink such as libstdc++.so.6).
  local want
  want="$(dirname "$real")/$(basename "$src")"
  if [ "$want" != "$real" ] && [ ! -e "$root$want" ]; then ln -s "$(basename "$real")" "$root$want"; fi
}
# busybox (from busybox-static): sh and the tools the manifests' command lines use.
cp /bin/busybox "$root/usr/bin/busybox"
for applet in $("$root/usr/bin/busybox" --list); do
  [ -e "$root/usr/bin/$applet" ] || ln -s busybox "$root/usr/bin/$applet"
done

# The entry point (see the header): imet, unless the command names its program.
cat > "$root/usr/bin/imet-entrypoint" <<'EOF'
#!/bin/sh
# imet's container entry point: `IMAGE ARGS...` runs `imet ARGS...`; a
# command that names its program (imet, sh, an absolute path) runs as given.
case "${1:-}" in
  imet|sh|/*) exec "$@" ;;
  *) exec /opt/imet/bin/imet "$@" ;;
esac
EOF
chmod 0755 "$root/usr/bin/imet-entrypoint"

for f in "$root/opt/imet/bin/imet" "$root"/opt/imet/lib/*.so* "$root/usr/bin/busybox"; do
  while read -r so arrow path _; do
    [ "$arrow" = "=>" ] || continue
    case "$path" in "$root"/*|"") continue ;; /*) copy_host "$path" ;; esac
  done < <(env -i /usr/bin/ldd "$f" 2>/dev/null | grep "=>")
done
interp="$(readelf -l "$root/opt/imet/bin/imet" | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')"
copy_host "$interp"
real="$(readlink -f "$interp")"
[ -e "$root$interp" ] || ln -s "$real" "$root$interp"

cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
cat > "$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/usr/sbin/nologin
imet:x:10001:10001:imet:/var/lib/imet:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat > "$root/etc/group" <<'EOF'
root:x:0:
imet:x:10001:
nogroup:x:65534:
EOF
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
echo 'include /etc/ld.so.conf.d/*.conf' > "$root/etc/ld.so.conf"
echo '/usr/lib/x86_64-linux-gnu' > "$root/etc/ld.so.conf.d/x86_64-linux-gnu.conf"
ldconfig -r "$root"
chown -R 10001:10001 "$root/var/lib/imet" "$root/etc/imet"
chmod 1777 "$root/tmp"

container="$(bh from --name "imet-build-$$" scratch)"
mnt="$(bh mount "$container")"
cp -a "$root"/. "$mnt"/
bh umount "$container" >/dev/null
source_url="${IMET_IMAGE_SOURCE:-$(git remote get-url origin 2>/dev/null || echo local)}"
created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
config=(
  --os linux --arch amd64
  --env PATH=/opt/imet/bin:/usr/bin:/bin
  --env HOME=/var/lib/imet
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
  --user 10001:10001
  --workingdir /var/lib/imet
  --label org.opencontainers.image.title=imet
  --label "org.opencontainers.image.version=$version"
  --label "org.opencontainers.image.revision=$commit"
  --label "org.opencontainers.image.source=$source_url"
  --label "org.opencontainers.image.created=$created"
  --label "imet.libtorch.flavour=$flavour"
  --label "imet.libtorch.version=$torch_version"
)
if [ "$flavour" = cuda ]; then
  # What the NVIDIA container toolkit reads to mount the driver in.
  config+=(--env NVIDIA_VISIBLE_DEVICES=all --env NVIDIA_DRIVER_CAPABILITIES=compute,utility)
fi
config+=(--entrypoint '["/usr/bin/imet-entrypoint"]' --cmd '["--help"]')
bh config "${config[@]}" "$container"
previous="$(bh images --quiet "$tag" 2>/dev/null || true)"
bh commit --quiet --format oci --rm "$container" "$tag" >/dev/null
container=""
if $dev_tag; then bh tag "$tag" localhost/imet:dev; fi
# The image these names pointed to before, unless another name still holds it.
for id in $previous; do
  if [ "$id" != "$(bh images --quiet "$tag")" ]; then bh rmi "$id" >/dev/null 2>&1 || true; fi
done
if [ -n "$archive" ]; then
  rm -f "$archive"
  bh push --quiet "$tag" "oci-archive:$archive:$tag"
fi
size="$(bh images --format '{{.Size}}' "$tag" | sed -n 1p)"
echo "image: $tag$($dev_tag && echo ' (also localhost/imet:dev)'), $size, built in $(( $(date +%s) - start ))s from $(basename "$bundle")"
