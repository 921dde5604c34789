"""One model config per checkpoint: eval and viz build the model the checkpoint was trained with and
record that one; a config or --set that states another model is refused with both values; resume
refuses a mismatching model before loading any weight."""
from __future__ import annotations

import json

import pytest
import yaml

from segood.cli import main
from segood.config import CONFIG_DIR, ConfigError, load_config
from segood.data.labels import load_label_map
from segood.engine.checkpoint import save_checkpoint
from segood.models import build_model

SMALL = ["model.lidar.channels=[8, 16, 16]", "model.lidar.out_channels=16", "model.image.out_channels=16",
         "model.image.width_scale=0.25", "train.batch_size=1", "data.num_workers=0", "eval.scores=[maxlogit]",
         "eval.hist_bins=64"]


def _run_folder(tmp_path, data_root, *extra: str):
    """What `segood train --out RUN` leaves: config.yaml and checkpoint.pt (untrained weights: the
    model's shapes are what matters here)."""
    cfg = load_config(CONFIG_DIR / "synthetic_baseline.yaml", [*SMALL, f"data.root={data_root}", *extra])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    save_checkpoint(run / "checkpoint.pt", {"model": build_model(cfg["model"]).state_dict(), "config": cfg, "step": 0,
                                            "label_map": load_label_map("semantickitti").checksum()})
    return run, cfg


def _eval(run, data_root, out, *sets: str) -> int:
    args = ["eval", str(CONFIG_DIR / "synthetic_baseline.yaml"), "--ckpt", str(run / "checkpoint.pt"),
            "--out", str(out), "--no-progress"]
    for s in [*SMALL, f"data.root={data_root}", *sets]:
        args += ["--set", s]
    return main(args)


def test_eval_records_the_checkpoints_model_and_refuses_a_set_that_disagrees(tmp_path, synthetic_root, capsys):
    run, _ = _run_folder(tmp_path, synthetic_root, "model.fusion.hidden=24")
    # the eval config does not state fusion.hidden (base.yaml's 64): the checkpoint's 24 is used and recorded
    assert _eval(run, synthetic_root, tmp_path / "ok", "eval.batch_size=1", "model.lidar.backend=torch") == 0, \
        capsys.readouterr().err
    resolved = json.loads((tmp_path / "ok" / "metrics.json").read_text())["resolved_config"]
    assert resolved["model"]["fusion"]["hidden"] == 24
    assert resolved["model"]["lidar"]["backend"] == "torch"  # a runtime key: applied
    assert resolved["eval"]["batch_size"] == 1  # keys that do not change the model are applied
    capsys.readouterr()
    assert _eval(run, synthetic_root, tmp_path / "bad", "model.fusion.hidden=128") == 2
    err = capsys.readouterr().err
    assert "model.fusion.hidden: 128 in" in err and "24 in the checkpoint" in err and "--set" in err
    assert not (tmp_path / "bad" / "metrics.json").exists()


def test_viz_refuses_a_run_folder_whose_config_differs_from_its_checkpoint(tmp_path, synthetic_root, capsys):
    run, cfg = _run_folder(tmp_path, synthetic_root)
    cfg["model"]["fusion"]["modality_norm"] = "layernorm"  # config.yaml edited (or overwritten) after training
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["viz", str(run), "--sequence", "08", "--ply", str(tmp_path / "r.ply")]) == 2
    err = capsys.readouterr().err
    assert "model.fusion.modality_norm: 'layernorm' in" in err and "'none' in the checkpoint" in err
    assert not (tmp_path / "r.ply").exists()


def test_resume_refuses_another_model_before_loading_naming_the_keys(tmp_path, synthetic_root):
    from segood.engine.train import train

    run, cfg = _run_folder(tmp_path, synthetic_root)
    other = load_config(CONFIG_DIR / "synthetic_baseline.yaml",
                        [*SMALL, f"data.root={synthetic_root}", "model.fusion.hidden=16", "model.lidar.skip=concat"])
    with pytest.raises(ConfigError) as e:
        train(other, run, resume=True, progress=False)
    msg = str(e.value)
    assert "cannot resume" in msg and "model.fusion.hidden: 16 in the config, 64 in the checkpoint" in msg
    assert "model.lidar.skip: 'concat' in the config, 'add' in the checkpoint" in msg


def test_a_checkpoint_path_to_imagenet_weights_is_never_loaded(tmp_path):
    from segood.engine.model_config import model_config_from_checkpoint

    cfg = load_config(CONFIG_DIR / "synthetic_baseline.yaml", ["model.image.pretrained=/nowhere/r18.pth",
                                                               "model.image.width_scale=1.0"])
    run = model_config_from_checkpoint({"config": cfg})
    assert run["model"]["image"]["pretrained"] is None and run["model"]["image"]["width_scale"] == 1.0
