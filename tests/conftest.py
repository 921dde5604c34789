"""Shared test fixtures and markers.

- ``synthetic_root``: a small synthetic SemanticKITTI-layout data set (2 train + 2 val scans),
  written once per test session.
- ``tiny_run``: THE tiny trained checkpoint and run folder of the session (Feature Mixing config,
  :data:`builders.SMALL` model, 2 steps on ``synthetic_root``), for every test that needs a
  checkpoint. Read-only: a test that evaluates or writes beside it works on
  ``builders.copy_run(tiny_run.dir, tmp_path / "run")`` (checked at the end of the session);
  variants (a stored operating point, another synthesis method) come from
  ``builders.checkpoint_variant``.
- ``assert_close(actual, expected, ...)``: numpy / torch comparison that says where it differs.
- markers: ``slow`` (minutes; deselect with ``-m "not slow"``), ``cuda`` (skipped without a GPU:
  the only thing allowed to skip).

Suite-wide rule: a required component that is missing fails the run. Only parts that need a GPU
may skip, and their reason must start with ``GPU-only:``; any other skip is turned into a failure.
The terminal summary ends with one line saying what was skipped and why.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

GPU_ONLY = "GPU-only:"


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A synthetic data root (sequences 00 train, 08 val; 2 scans each, 128 LiDAR columns, 160x48 images)."""
    from segood.synthetic import SyntheticConfig, write_dataset

    root = tmp_path_factory.mktemp("synthetic")
    write_dataset(root, SyntheticConfig(num_train=2, num_val=2, azimuth_columns=128, image_width=160,
                                        image_height=48, seed=3), progress=False)
    return root


@dataclass(frozen=True)
class TinyRun:
    """The session's trained run: its resolved config, ``dir/checkpoint.pt`` and the folder."""

    cfg: dict
    ckpt: Path
    dir: Path


@pytest.fixture(scope="session")
def tiny_run(synthetic_root, tmp_path_factory):
    """Train the session's tiny run once (2 steps; see the module docstring); fail at the end of the
    session if a test wrote into its folder (tests copy it first)."""
    from builders import small_config

    from segood.engine.train import train

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    cfg = small_config("synthetic_feature_mixing.yaml", f"data.root={synthetic_root}", "train.steps=2")
    ckpt = train(cfg, run, progress=False)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    yield TinyRun(cfg, ckpt, run)
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert after == before, (f"a test wrote into the shared tiny run {run} (copy it with builders.copy_run): "
                             f"{sorted(str(p) for p in set(after) ^ set(before) | {p for p in after if after[p] != before.get(p)})}")


@pytest.fixture(scope="session")
def study_root(tmp_path_factory):
    """A synthetic data root for tiny training runs: sequences 00 (2 scans), 08 (1) and 11 (1), 96 LiDAR
    columns, 128x40 images."""
    from segood.synthetic import SyntheticConfig, write_dataset

    root = tmp_path_factory.mktemp("study_data")
    write_dataset(root, SyntheticConfig(num_train=2, num_val=1, num_test=1, azimuth_columns=96, image_width=128,
                                        image_height=40, seed=4), progress=False)
    return root


def assert_close(actual, expected, rtol: float = 1e-6, atol: float = 1e-6, what: str = "") -> None:
    """Elementwise closeness of arrays or tensors; the message names the first differing index and both values."""
    a = np.asarray(actual.detach().cpu() if hasattr(actual, "detach") else actual, dtype=np.float64)
    b = np.asarray(expected.detach().cpu() if hasattr(expected, "detach") else expected, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    bad = ~np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
    if bad.any():
        i = tuple(int(x) for x in np.argwhere(bad)[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {a.size} values differ; first at {i}: "
                             f"{a[i]!r} vs {b[i]!r} (rtol={rtol}, atol={atol})")


@pytest.fixture(name="assert_close")
def _assert_close_fixture():
    return assert_close


def pytest_collection_modifyitems(config, items) -> None:
    """Skip ``cuda`` tests when no GPU is visible (never anything else)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"{GPU_ONLY} needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def _reason(report) -> str:
    longrepr = report.longrepr
    return str(longrepr[2] if isinstance(longrepr, tuple) else longrepr).removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and not _reason(report).startswith(GPU_ONLY):
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid}: a required component is missing (only GPU-only parts may skip): "
                           f"{_reason(report)}")


def pytest_terminal_summary(terminalreporter):
    skipped = terminalreporter.stats.get("skipped", [])
    reasons = sorted({_reason(r) for r in skipped})
    line = (f"skipped {len(skipped)} GPU-only test(s): " + "; ".join(reasons)) if skipped else \
        "skipped 0 tests: every required component is present"
    terminalreporter.write_line(line)
