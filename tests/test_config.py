"""Config loading: inheritance, overrides, and unknown keys refused with the file and the key."""
from __future__ import annotations

import pytest

from segood.config import CONFIG_DIR, ConfigError, load_config


def test_experiment_inherits_base_and_overrides():
    cfg = load_config(CONFIG_DIR / "synthetic_feature_mixing.yaml", ["train.steps=7", "synthesis.n_swap=3"])
    assert cfg["synthesis"]["method"] == "feature_mixing"
    assert cfg["data"]["train_sequences"] == ["00"]  # from synthetic_baseline.yaml
    assert cfg["train"]["steps"] == 7 and cfg["synthesis"]["n_swap"] == 3
    assert cfg["model"]["image"]["depth"] == 18  # from base.yaml


def test_unknown_key_in_file_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"inherit: {CONFIG_DIR / 'base.yaml'}\ntrain:\n  stpes: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'train.stpes'; did you mean 'train.steps'"):
        load_config(bad)


def test_unknown_override_is_refused():
    with pytest.raises(ConfigError, match=r"--set: unknown config key 'synthesis.nswap'"):
        load_config(CONFIG_DIR / "synthetic_baseline.yaml", ["synthesis.nswap=4"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(CONFIG_DIR / "synthetic_baseline.yaml", ["train.steps"])


def test_missing_file_and_inherit_cycle(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("inherit: b.yaml\n")
    b.write_text("inherit: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(a)
