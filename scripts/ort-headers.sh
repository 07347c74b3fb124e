#!/usr/bin/env bash
# onnxruntime's C headers (onnxruntime_c_api.h ...) for bench/hotpath.c, where no onnxruntime
# release's include/ is at hand: unpacks Debian's libonnxruntime-dev (trixie; bookworm has
# none) from the Debian mirror into DIR, without installing it. The headers' API version may
# be older than the installed library's; hotpath.c asks the library for the newest both have.
#   scripts/ort-headers.sh [DIR]   (default bench/build/include; MIRROR=http://deb.debian.org/debian)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-bench/build/include}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
curl -fsS -o "$TMP/Packages.xz" "$MIRROR/dists/trixie/main/binary-$ARCH/Packages.xz"
xz -d "$TMP/Packages.xz"
DEB=$(awk '/^Package: libonnxruntime-dev$/{p=1} p && /^Filename:/{print $2; exit}' "$TMP/Packages")
[ -n "$DEB" ] || { echo "ort-headers: no libonnxruntime-dev in trixie's $ARCH index" >&2; exit 1; }
curl -fsS -o "$TMP/dev.deb" "$MIRROR/$DEB"
dpkg-deb -x "$TMP/dev.deb" "$TMP/root"
mkdir -p "$DIR"
cp "$TMP"/root/usr/include/onnxruntime/*.h "$DIR"/
echo "ort-headers: $(basename "$DEB") -> $DIR ($(grep -m1 '#define ORT_API_VERSION' "$DIR/onnxruntime_c_api.h"))"
