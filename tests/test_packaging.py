"""A real package: the built wheel ships configs/, cuda_ext/ and the label maps, and works from a
directory outside the repository. The wheel is installed into a fresh venv (no pip of its own;
its dependencies come from the running environment through a .pth file, so nothing is
downloaded), then ``segood --help``, ``segood doctor`` (which builds the Feature Mixing
extension from the packaged sources) and one tiny train + eval run from a temporary directory.
Slow (~2 min: the extension is compiled from the wheel's sources)."""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from builders import SMALL, set_args

from segood.engine.checkpoint import load_checkpoint
from test_engine import assert_auroc_matches_histograms

ROOT = Path(__file__).resolve().parents[1]
RUN = [*SMALL, "train.steps=2", "data.root=data"]


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 600) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp / "dist")], tmp, env)
    wheel, = (tmp / "dist").glob("segood-*.whl")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
    run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
         "--no-index", "-q", str(wheel)], tmp, env)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "_deps_from_test_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    work = tmp / "elsewhere"
    work.mkdir()
    env.update(SEGOOD_EXT_DIR=str(tmp / "ext"), PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}")
    return wheel, venv, work, env


def test_wheel_ships_configs_kernel_sources_and_label_maps(installed):
    wheel, *_ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for top, pattern in (("configs", "*.yaml"), ("cuda_ext", "*.*")):
        for f in (ROOT / top).glob(pattern):
            assert f"segood/_{top}/{f.name}" in names, f
    assert {"segood/labels/semantickitti.yaml", "segood/labels/nuscenes.yaml"} <= names


@pytest.mark.slow
def test_installed_wheel_runs_from_any_directory(installed):
    wheel, venv, work, env = installed
    segood = str(venv / "bin" / "segood")
    where = run([str(venv / "bin" / "python"), "-c", "import segood, segood.config as c; print(segood.__file__, c.CONFIG_DIR)"],
                work, env)
    assert where.startswith(str(venv)) and "/segood/_configs" in where, where
    assert "doctor" in run([segood, "--help"], work, env)
    doctor = run([segood, "doctor"], work, env)
    assert "ok     feature-mixing" in doctor and str(work.parent / "ext") in doctor, doctor
    run([segood, "make-synthetic", "--out", "data", "--train-scans", "1", "--val-scans", "1",
         "--azimuth-columns", "128"], work, env)
    sets = set_args(RUN)
    run([segood, "train", "configs/synthetic_feature_mixing.yaml", "--out", "run", "--no-progress", *sets], work, env)
    run([segood, "eval", "configs/synthetic_feature_mixing.yaml", "--ckpt", "run/checkpoint.pt", "--out", "ev",
         "--no-progress", *sets], work, env)
    assert (work / "run" / "checkpoint.pt").is_file() and (work / "ev" / "metrics.json").is_file()
    # the installed package trained the 2 steps asked for and wrote metrics its own histograms agree with
    assert load_checkpoint(work / "run" / "checkpoint.pt")["step"] == 2
    assert_auroc_matches_histograms(json.loads((work / "ev" / "metrics.json").read_text()), work / "ev" / "histograms.npz")
