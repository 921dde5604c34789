"""The config schema: every value checked once at load, before any work, with the file (or --set), the
key, the value and what was expected; base.yaml is the schema's defaults, word for word."""
from __future__ import annotations

import pytest
import yaml

from segood.cli import main
from segood.config import BASE_CONFIG, CONFIG_DIR, ConfigError, load_config
from segood.config_schema import MEMBERS, defaults, render_base, walk

PARENT = CONFIG_DIR / "synthetic_baseline.yaml"

# (section YAML, expected message after "<key>: <value> in <file>: ") - types, ranges and enums
BAD = [
    ("train: {steps: -5}", "train.steps: -5", "expected an integer >= 1"),
    ("train: {steps: five}", "train.steps: 'five'", "expected an integer >= 1"),
    ("train: {lr: fast}", "train.lr: 'fast'", "expected a number >= 0.0"),
    ("train: {amp: fp8}", "train.amp: 'fp8'", "expected one of 'none', 'bf16', 'fp16'"),
    ("data: {voxel_size: 0}", "data.voxel_size: 0", "expected a number >= 0.01"),
    ("data: {augment: {camera_dropout: 1.5}}", "data.augment.camera_dropout: 1.5", "expected a number in [0.0, 1.0]"),
    ("model: {lidar: {skip: mul}}", "model.lidar.skip: 'mul'", "expected one of 'add', 'concat'"),
    ("model: {image: {depth: 50}}", "model.image.depth: 50", "expected one of 18, 34"),
    ("synthesis: {max_points: 0}", "synthesis.max_points: 0", "expected an integer >= 1 or null"),
    ("loss: {id_loss: dice}", "loss.id_loss: 'dice'", "expected one of 'ce', 'focal'"),
    ("eval: {hist_bins: 1.5}", "eval.hist_bins: 1.5", "expected an integer >= 2"),
    ("deterministic: 'yes'", "deterministic: 'yes'", "expected a boolean"),
    ("eval: {operating_score: 3}", "eval.operating_score: 3", "expected a string or null"),
]


@pytest.mark.parametrize("text,key_value,expected", BAD, ids=[b[1].split(":")[0] for b in BAD])
def test_a_bad_value_is_one_line_naming_file_key_value_and_expectation_and_no_work_starts(
        tmp_path, capsys, text, key_value, expected):
    bad = tmp_path / "x.yaml"
    bad.write_text(f"inherit: {PARENT}\n{text}\n")
    out = tmp_path / "run"
    assert main(["train", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"segood train: error: {key_value} in {bad}: {expected}"
    assert not out.exists()  # refused before the run folder, the data or the model


def test_the_message_names_the_file_that_gave_the_value(tmp_path):
    parent = tmp_path / "parent.yaml"
    parent.write_text(f"inherit: {PARENT}\ntrain: {{steps: 0}}\n")
    child = tmp_path / "child.yaml"
    child.write_text("inherit: parent.yaml\ntrain: {lr: 0.1}\n")
    with pytest.raises(ConfigError, match=rf"^train.steps: 0 in {parent}: expected an integer >= 1$"):
        load_config(child)
    with pytest.raises(ConfigError, match=r"^train.steps: -5 in --set: expected an integer >= 1$"):
        load_config(PARENT, ["train.steps=-5"])
    assert load_config(child, ["train.steps=3"])["train"]["steps"] == 3  # a good override fixes the parent's
    with pytest.raises(ConfigError, match=r"^model.fusion: 3 in --set: expected a mapping"):
        load_config(PARENT, ["model.fusion=3"])


def test_values_are_returned_in_their_declared_type():
    cfg = load_config(PARENT, ["train.lr=1", "data.camera=null"])
    assert cfg["train"]["lr"] == 1.0 and isinstance(cfg["train"]["lr"], float)
    assert cfg["data"]["camera"] is None and cfg["_set"] == ["train.lr=1", "data.camera=null"]


def test_base_yaml_is_the_schema_rendered():
    """Defaults live in the schema; base.yaml is generated from it (`segood config --base`)."""
    assert BASE_CONFIG.read_text() == render_base(), "run: segood config --base > configs/base.yaml"
    assert yaml.safe_load(BASE_CONFIG.read_text()) == defaults()


def test_every_key_has_a_type_and_a_doc_line_and_a_valid_default():
    from segood.options import check_value

    keys = [(k, opt) for k, opt in walk() if not k.endswith(MEMBERS)]
    assert len(keys) > 60
    for key, opt in keys:
        assert opt.doc, key
        check_value(key, opt.default, opt)


def test_shipped_configs_load():
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        load_config(path)
