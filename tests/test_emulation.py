"""The boards' install paths by emulation (scripts/emulate-boards.sh), on purpose only:
``python -m pytest -m emulation tests/test_emulation.py`` (root, a Debian bookworm host with
access to deb.debian.org and PyPI; tens of minutes the first time)."""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.daemon_harness import ROOT

pytestmark = pytest.mark.emulation


@pytest.mark.parametrize("arch", ["arm64", "armhf"])
def test_board_install_path_by_emulation(arch):
    if os.geteuid() != 0:
        pytest.skip("needs root (apt, mmdebstrap)")
    r = subprocess.run([os.path.join(ROOT, "scripts", "emulate-boards.sh"), arch], cwd=ROOT,
                       capture_output=True, text=True, timeout=6 * 3600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "PASS" in r.stdout
