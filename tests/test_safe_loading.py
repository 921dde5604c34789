"""Files from strangers never run code: a pickle whose ``__reduce__`` would write a marker file is
refused by every ``--ckpt`` path (eval, viz, replay) and by the fitted-scores loader, and the
marker stays absent. The payload is real: loading it the unsafe way does write the marker."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segood.cli import main
from segood.engine.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from segood.engine.artifacts import load_fit, scores_path

FIX = Path(__file__).parent / "fixtures"


class Payload:
    """Unpickling this calls ``os.system('touch MARKER')``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "step": 1, "model": Payload(marker)}, path)
    return path, marker


def test_the_payload_is_real_when_loaded_unsafely(evil):
    path, marker = evil
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    assert marker.exists()


@pytest.mark.parametrize("argv", [
    ["eval", "configs/synthetic_baseline.yaml", "--ckpt", "{ckpt}", "--out", "{tmp}/eval"],
    ["viz", str(FIX / "kitti_000008" / "000008.bin"), "--ckpt", "{ckpt}", "--ply", "{tmp}/v.ply"],
    ["replay", str(FIX / "bags" / "kitti000008_derived.bag"), "--ckpt", "{ckpt}", "--out", "{tmp}/o.bag"],
], ids=["eval", "viz", "replay"])
def test_every_ckpt_path_refuses_a_code_carrying_checkpoint(argv, evil, tmp_path, capsys, monkeypatch):
    path, marker = evil
    monkeypatch.chdir(Path(__file__).parent.parent)
    rc = main([a.format(ckpt=path, tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert rc != 0
    assert f"{path}: refused to load this checkpoint" in err and "nothing in it was executed" in err, err
    assert not marker.exists()


def test_fitted_scores_file_with_code_is_refused(evil, tmp_path):
    path, marker = evil
    ckpt = tmp_path / "checkpoint.pt"
    scores_path(ckpt).write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match="refused to load this scores file"):
        load_fit(ckpt)
    assert not marker.exists()


def test_checkpoint_with_numpy_and_paths_round_trips_as_plain_values(tmp_path):
    import numpy as np
    import random

    state = {"rng": {"python": random.getstate(), "numpy": np.random.get_state()},
             "config": {"root": tmp_path, "lr": np.float32(0.5)}, "model": {"w": torch.ones(2)}}
    save_checkpoint(tmp_path / "c.pt", state)
    back = load_checkpoint(tmp_path / "c.pt")
    assert back["config"] == {"root": str(tmp_path), "lr": 0.5}
    np.random.set_state(back["rng"]["numpy"])
    random.setstate(back["rng"]["python"])
    a = np.random.rand(), random.random()
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    assert a == (np.random.rand(), random.random())


def test_an_old_numpy_checkpoint_is_refused_then_upgraded(tmp_path):
    import numpy as np

    old = tmp_path / "old.pt"
    state = np.random.get_state()
    torch.save({"format": CHECKPOINT_FORMAT, "step": 3, "rng": {"numpy": state}}, old)  # pre-weights-only layout
    with pytest.raises(ValueError, match=r"old.pt: refused.*upgrade\('.*old.pt'\)"):
        load_checkpoint(old)
    from segood.engine.checkpoint import upgrade

    upgrade(old)
    back = load_checkpoint(old)
    assert back["step"] == 3
    np.random.set_state(back["rng"]["numpy"])
    a = np.random.rand()
    np.random.set_state(state)
    assert a == np.random.rand()
