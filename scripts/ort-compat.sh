#!/usr/bin/env bash
# The test suite's serving half against an old onnxruntime (default 1.15.1, the oldest PyPI
# wheel for Python 3.11; it has no set_global_thread_pool_sizes, so ModelSet runs the
# per-session fallback for real). Not part of the normal test run.
#   scripts/ort-compat.sh [ONNXRUNTIME_VERSION] [pytest args]   (PYTHON=python3, VENV=...)
# e.g. PYTHON=~/.pyenv/versions/3.8.18/bin/python scripts/ort-compat.sh 1.11.0   (JetPack 4.6's version)
set -euo pipefail
cd "$(dirname "$0")/.."
V=${1:-1.15.1}
PYTHON=${PYTHON:-python3}
VENV=${VENV:-/tmp/dnnscale-ort-compat-$V}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q "onnxruntime==$V" "numpy<2" "onnx<1.15" "protobuf<4" pyzmq pyyaml psutil Pillow tqdm \
  pytest hypothesis
"$VENV/bin/python" -c "import onnxruntime as o; from models.modelset import spin_mode; print('onnxruntime', o.__version__, 'spinning', spin_mode())"
# torch is not installed there: the training tests are left out, the serving ones all run
PYTHONPATH=$PWD "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_daemon.py tests/test_boards.py \
  tests/test_hostile.py tests/test_platforms.py "${@:2}"
