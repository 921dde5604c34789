"""``segood doctor``: it reports this machine as it is, and fails (exit 1, naming the library and
the apt command) when open3d's system libraries cannot load. The spconv/cumm/torch-CUDA
combinations this machine cannot have are simulated by replacing the installed-distribution
listing (said in each test)."""
from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segood import doctor
from segood.cli import main

ROOT = Path(__file__).resolve().parents[1]


def by_name(checks):
    return {c.name: c for c in checks}


def test_reports_this_machine(capsys):
    from segood.ood.feature_mixing import build as fm_build

    rc = main(["doctor"])
    out = capsys.readouterr().out
    assert rc == 0, out
    c = by_name(doctor.run_checks())
    assert sys.version.split()[0] in c["python"].detail
    assert torch.__version__ in c["torch"].detail
    assert ("CPU build" in c["torch"].detail) == (torch.version.cuda is None)
    spconv = [d for d in ("spconv", "spconv-cu118", "spconv-cu120", "spconv-cu121", "spconv-cu124", "spconv-cu126")
              if doctor.installed(d)]
    assert c["spconv"].status == "ok" and c["spconv"].detail.startswith(f"{spconv[0]} {md.version(spconv[0])}")
    assert c["spconv-run"].status == "ok"
    assert fm_build.load_extension()
    assert c["feature-mixing"].status == "ok" and torch.ops.segood.cpu_path() in c["feature-mixing"].detail
    assert (c["cuda"].status == "ok") == torch.cuda.is_available()
    for name, dist in (("open3d", "open3d-cpu"), ("rosbags", "rosbags"), ("nuscenes-devkit", "nuscenes-devkit")):
        assert c[name].status == "ok" and md.version(dist) in c[name].detail, c[name]
        assert f"ok     {name}" in out


def test_fails_naming_the_library_when_open3d_cannot_load(tmp_path):
    # Simulates a machine without libusb: `import open3d` raises the loader's real message.
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoLibusb:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'open3d':\n"
        "            raise OSError('libusb-1.0.so.0: cannot open shared object file: No such file or directory')\n"
        "sys.meta_path.insert(0, _NoLibusb())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    res = subprocess.run([sys.executable, "-m", "segood", "doctor"], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAIL   open3d" in res.stdout and "libusb-1.0.so.0" in res.stdout
    assert "fix: sudo apt-get install -y libusb-1.0-0" in res.stdout
    assert "1 problem(s): open3d" in res.stdout


def test_absent_optional_part_fails_only_when_asked_for(monkeypatch):
    monkeypatch.setattr(doctor, "installed", lambda dist: None)  # simulates rosbags not installed
    monkeypatch.setitem(sys.modules, "rosbags", None)
    monkeypatch.setitem(sys.modules, "rosbags.rosbag2", None)
    c = doctor.check_rosbags()
    assert c.status == "absent" and 'pip install -e ".[ros]"' in c.fix
    assert doctor.problems([c], set()) == [] and doctor.problems([c], {"ros"}) == [c]


@pytest.mark.parametrize("spconvs, cumms, cuda, expect", [
    ({"spconv": "2.3.8", "spconv-cu120": "2.3.6"}, {"cumm": "0.7.11"}, False, "several variants installed together"),
    ({"spconv": "2.3.8"}, {"cumm-cu120": "0.4.11"}, False, "needs cumm"),
    ({"spconv": "2.3.8"}, {"cumm": "0.7.11"}, True, "the CPU build on a machine where torch uses the GPU"),
])
def test_spconv_variant_problems(monkeypatch, spconvs, cumms, cuda, expect):
    # Simulates installs this machine does not have by replacing the distribution listing
    # (and torch.cuda.is_available for the GPU case).
    monkeypatch.setattr(doctor, "_dists", lambda pattern: spconvs if pattern.startswith("spconv") else cumms)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    c = doctor.check_spconv_install()
    assert c.status == "FAIL" and expect in c.detail and c.fix.startswith("pip"), c


def test_cumm_outside_spconvs_requirement_is_named(monkeypatch):
    # Simulates cumm 0.8.0 beside spconv 2.3.8 (which requires cumm<0.8.0).
    monkeypatch.setattr(doctor, "_dists", lambda p: {"spconv": "2.3.8"} if p.startswith("spconv") else {"cumm": "0.8.0"})
    monkeypatch.setattr(md, "requires", lambda dist: ["cumm<0.8.0,>=0.7.11"])
    c = doctor.check_spconv_install()
    assert c.status == "FAIL" and "needs cumm" in c.detail and "0.8.0" in c.detail, c
