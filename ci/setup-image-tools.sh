#!/usr/bin/env bash
# Installs what ci/build-bundle.sh and ci/build-image.sh need, from Debian's
# apt, unless present: patchelf (rewrites RUNPATHs), binutils (readelf,
# objdump), pigz (parallel gzip), buildah (builds and runs the image
# offline, as root) and netavark (the network backend buildah looks for
# even with host networking; only a Recommends of buildah, so not pulled in
# by --no-install-recommends), busybox-static (the image's shell) and
# ca-certificates (the image's CA bundle). Needs root and apt; a no-op taking
# well under a second once everything is there. ci/test.sh calls it, so
# tests/it/container_image.rs finds its tools on a fresh CI machine.
set -euo pipefail
missing=()
command -v patchelf >/dev/null 2>&1 || missing+=(patchelf)
command -v pigz >/dev/null 2>&1 || missing+=(pigz)
command -v readelf >/dev/null 2>&1 || missing+=(binutils)
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
dpkg-query -W -f='${Status}' netavark 2>/dev/null | grep -q 'ok installed' || missing+=(netavark)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)
[ -f /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
if [ ${#missing[@]} -eq 0 ]; then
  echo "image tools present (patchelf, pigz, buildah $(buildah --version | cut -d' ' -f3), netavark, busybox-static, ca-certificates)"
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-image-tools: missing ${missing[*]}; install them as root with apt-get (Debian/Ubuntu)" >&2
  exit 1
fi
echo "installing ${missing[*]} (apt)"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
  || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
echo "installed ${missing[*]}"
