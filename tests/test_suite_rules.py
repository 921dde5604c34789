"""The suite's skip rule (tests/conftest.py): a missing required component fails; only GPU-only
parts skip, and the summary says what was skipped and why."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def test_only_gpu_only_tests_may_skip(tmp_path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "def test_needs_open3d():\n    pytest.skip('open3d missing')\n"
        "def test_needs_gpu():\n    pytest.skip('GPU-only: no CUDA device')\n"
        "def test_fine():\n    pass\n")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    out = res.stdout
    assert res.returncode == 1, out
    assert "a required component is missing" in out and "open3d missing" in out
    assert "1 failed, 1 passed, 1 skipped" in out
    assert "skipped 1 GPU-only test(s): GPU-only: no CUDA device" in out
