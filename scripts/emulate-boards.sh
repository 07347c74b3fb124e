#!/usr/bin/env bash
# Proves the boards' install paths by emulation (not part of the normal test run; minutes
# to build each root, then minutes to run): an arm64 root (Debian bookworm, Python 3.11,
# onnxruntime and the rest from PyPI's aarch64 wheels: the Jetson Nano's CPU path) and an
# armhf root (Debian trixie, its python3-onnxruntime and the rest from Debian: PyPI has no
# armv7 wheels; the Odroid-XU3's path; on the board, a --system-site-packages venv). In each, the project is installed with pip
# and scripts/emulate_boards.py runs `dnnscale platform`, `serve` on the Nano and XU3 trees,
# `infer`, `status`, SIGTERM, and compares the logits with this x86 machine.
#
#   sudo scripts/emulate-boards.sh [arm64|armhf|all]     (WORK=/var/tmp/dnnscale-emu)
#
# Needs: Debian bookworm with bookworm-backports (qemu-user 10: bookworm's 7.2 segfaults
# importing onnxruntime on aarch64) and mmdebstrap. No binfmt_misc or chroot: the
# interpreter runs under qemu-aarch64/qemu-arm with -L <root>.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=${WORK:-/var/tmp/dnnscale-emu}
WHICH=${1:-all}
mkdir -p "$WORK"

need_host() {
  if ! qemu-aarch64 --version 2>/dev/null | grep -qE "version (9|1[0-9])\."; then
    echo "== host: qemu-user from bookworm-backports, mmdebstrap"
    echo "deb http://deb.debian.org/debian bookworm-backports main" > /etc/apt/sources.list.d/dnnscale-backports.list
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports qemu-user >/dev/null
  fi
  command -v mmdebstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
  qemu-aarch64 --version | head -1
}

root() {   # root ARCH SUITE PACKAGES
  local arch=$1 suite=$2 pkgs=$3 dir="$WORK/$1-root"
  if [ ! -x "$dir/usr/bin/python3" ]; then
    echo "== $arch: Debian $suite root ($pkgs)"
    rm -rf "$dir"
    mmdebstrap --quiet --variant=extract --architectures="$arch" --include="$pkgs" "$suite" "$dir" \
      http://deb.debian.org/debian
  fi
  for d in bin sbin lib; do   # merged /usr: extract installs no base-files, so no /lib -> usr/lib
    [ -e "$dir/$d" ] || ln -s "usr/$d" "$dir/$d"
  done
  # extract runs no maintainer scripts, so update-alternatives never made libblas.so.3/liblapack.so.3
  for f in "$dir"/usr/lib/*/blas/libblas.so.3 "$dir"/usr/lib/*/lapack/liblapack.so.3; do
    [ -e "$f" ] && [ ! -e "$(dirname "$(dirname "$f")")/$(basename "$f")" ] && \
      ln -s "$(basename "$(dirname "$f")")/$(basename "$f")" "$(dirname "$(dirname "$f")")/$(basename "$f")"
  done
  true
}

run_arch() {   # run_arch ARCH QEMU
  # No venv: pip --python and setuptools builds exec the interpreter, which without binfmt_misc
  # only qemu can run. The project is a pure-Python wheel built here; pip installs wheels in-process.
  local arch=$1 qemu=$2 dir="$WORK/$1-root" site="$WORK/$1-site"
  local py="$qemu -L $dir $dir/usr/bin/python3"
  mkdir -p "$site" "$WORK/wheel"
  rm -f "$WORK"/wheel/dnnscale-*.whl
  python3 -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/wheel" "$REPO"
  if [ "$arch" = arm64 ] && [ ! -d "$site/onnxruntime" ]; then
    echo "== $arch: PyPI aarch64 wheels"
    $py -m pip install -q --target "$site" --only-binary=:all: onnxruntime numpy pyzmq pyyaml psutil pillow tqdm
  fi
  echo "== $arch: the project"
  $py -m pip install -q --target "$site" --no-deps --upgrade "$WORK"/wheel/dnnscale-*.whl
  echo "== $arch: run"
  python3 scripts/emulate_boards.py --python "$py" --site "$site" --arch "$arch" --work "$WORK/$arch-run"
}

need_host
if [ "$WHICH" = all ] || [ "$WHICH" = arm64 ]; then
  root arm64 bookworm "python3,python3-pip,libgomp1,libstdc++6"
  run_arch arm64 qemu-aarch64
fi
if [ "$WHICH" = all ] || [ "$WHICH" = armhf ]; then
  root armhf trixie "python3,python3-pip,python3-onnxruntime,python3-numpy,python3-zmq,python3-yaml,python3-psutil,python3-pil,python3-tqdm"
  run_arch armhf qemu-arm
fi
