"""No dependency noise on every run, filtered precisely: spconv's torch.fx deprecation notice is
dropped (other torch.fx messages pass), and a missing XDG_RUNTIME_DIR (Mesa's error line under X)
gets a private folder while a valid one is left alone."""
from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import segood.models  # noqa: F401  (installs the filter)
from segood.models.spconv_guard import FX_NOTICE
from segood.viz.open3d_view import ensure_runtime_dir

REPO = Path(__file__).resolve().parent.parent


def test_only_the_fx_tracing_notice_is_dropped():
    import torch.fx._symbolic_trace as st

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("torch.fx._symbolic_trace")
    logger.addHandler(handler)
    try:
        st.is_fx_tracing_warning.cache_clear()
        st.is_fx_tracing()
        logger.warning("another torch.fx warning")
    finally:
        logger.removeHandler(handler)
    assert not any(m.startswith(FX_NOTICE) for m in seen) and seen == ["another torch.fx warning"]


def test_a_model_forward_prints_no_fx_notice(tmp_path):
    """In a fresh process, building and running the model (spconv) writes nothing about torch.fx."""
    code = ("from segood.config import CONFIG_DIR, load_config; from segood.models import build_model;"
            "from segood.synthetic import SyntheticConfig, generate_scene, render_scan;"
            "from segood.data.scan import Scan; from segood.data.batching import collate, scan_to_sample;"
            "from segood.engine.builders import build_grid; import numpy as np;"
            "cfg = load_config(CONFIG_DIR / 'synthetic_baseline.yaml', ['model.lidar.channels=[8, 16]']);"
            "syn = SyntheticConfig(azimuth_columns=128, image_width=160, image_height=48);"
            "pts, _, _ = render_scan(generate_scene(np.random.default_rng(0), syn), syn);"
            "build_model(cfg['model']).eval()(collate([scan_to_sample(Scan(points=pts), None)], build_grid(cfg)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert "is_fx_tracing" not in r.stderr + r.stdout


def test_runtime_dir_is_set_only_when_missing(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    ensure_runtime_dir()
    made = Path(os.environ["XDG_RUNTIME_DIR"])
    assert made.is_dir() and stat.S_IMODE(made.stat().st_mode) == 0o700
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    ensure_runtime_dir()
    assert os.environ["XDG_RUNTIME_DIR"] == str(tmp_path)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "gone"))
    ensure_runtime_dir()
    assert os.environ["XDG_RUNTIME_DIR"] != str(tmp_path / "gone") and Path(os.environ["XDG_RUNTIME_DIR"]).is_dir()
