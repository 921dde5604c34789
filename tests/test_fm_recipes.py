"""Feature Mixing recipes: predicted camera features for out-of-view points, mixing every point,
the (K+1)-th logit dropped at test time, and the outlier phase."""
from __future__ import annotations

import json

import pytest
import torch

from segood.config import CONFIG_DIR
from segood.engine.families import load_config
from segood.engine.checkpoint import load_checkpoint
from segood.engine.evaluate import evaluate
from segood.engine.objective import compute_losses
from segood.engine.step import train_step
from segood.engine.train import freeze_encoders, lr_lambda, train
from segood.models import build_model
from segood.ood.feature_mixing import FeatureMixing, KernelFeatureMixing, select_anchors

from builders import SMALL
from test_models import SMALL_CFG, make_batch

PREDICTED = {**SMALL_CFG, "fusion": {"hidden": 32, "out_of_view": "predicted"}}


def test_predicted_camera_features_replace_only_the_out_of_view_ones():
    batch = make_batch(800)
    torch.manual_seed(0)
    model = build_model(PREDICTED).eval()
    vis = batch["visible"]
    with torch.no_grad():
        out = model(batch)
        camera = model.encode(batch)["feat_image"]
        predicted = model.camera_completion(out["feat_lidar"])
    assert 0 < int(vis.sum()) < len(vis)
    assert torch.equal(out["feat_image"][vis], camera[vis])
    assert torch.equal(out["feat_image"][~vis], predicted[~vis])
    assert torch.equal(out["feat_image_predicted"], predicted)
    assert not torch.equal(predicted[~vis], model.image.placeholder.expand(int((~vis).sum()), -1))


def test_a_lidar_only_frame_gets_predicted_camera_features_everywhere():
    batch = make_batch(500)
    del batch["images"]
    torch.manual_seed(0)
    model = build_model(PREDICTED).eval()
    with torch.no_grad():
        out = model(batch)
        predicted = model.camera_completion(out["feat_lidar"])
    assert torch.equal(out["feat_image"], predicted)
    assert out["logits"].shape == (len(batch["points"]), 18) and torch.isfinite(out["logits"]).all()


def test_completion_mse_is_on_visible_points_against_detached_camera_features():
    batch = make_batch(800)
    torch.manual_seed(0)
    model = build_model(PREDICTED)
    out = model(batch)
    terms = compute_losses(out, batch, {**load_config(CONFIG_DIR / "base.yaml")["loss"], "lovasz": 0.0,
                                        "modality": 0.0, "anomaly": 0.0, "out_of_view_mse": 2.0})
    vis = batch["visible"]
    hand = 2.0 * ((out["feat_image_predicted"][vis] - out["feat_image"][vis]) ** 2).mean()
    torch.testing.assert_close(terms["out_of_view_mse"], hand)
    model.zero_grad()
    terms["out_of_view_mse"].backward()
    image_grads = [p.grad for p in model.image.parameters() if p.grad is not None]
    assert all(g.abs().sum() == 0 for g in image_grads)  # the camera target is detached
    assert model.camera_completion[0].weight.grad.abs().sum() > 0
    # the prediction on out-of-view points does not enter the MSE
    with torch.no_grad():
        out["feat_image_predicted"][~vis] += 100.0
    torch.testing.assert_close(compute_losses(out, batch, {**load_config(CONFIG_DIR / "base.yaml")["loss"],
                                                           "out_of_view_mse": 2.0})["out_of_view_mse"], hand.detach())


@pytest.mark.parametrize("trains_lidar", [True, False])
def test_completion_trains_lidar_decides_whether_the_mse_reaches_the_lidar_branch(trains_lidar):
    batch = make_batch(800)
    torch.manual_seed(0)
    model = build_model({**SMALL_CFG, "fusion": {"hidden": 32, "out_of_view": "predicted",
                                                 "completion_trains_lidar": trains_lidar}})
    out = model(batch)
    model.zero_grad()
    compute_losses(out, batch, {**load_config(CONFIG_DIR / "base.yaml")["loss"], "lovasz": 0.0, "modality": 0.0,
                                "anomaly": 0.0})["out_of_view_mse"].backward()
    lidar_grad = sum(float(p.grad.abs().sum()) for p in model.lidar.parameters() if p.grad is not None)
    assert (lidar_grad > 0) == trains_lidar
    assert model.camera_completion[0].weight.grad.abs().sum() > 0
    torch.testing.assert_close(out["feat_image_predicted"], model.camera_completion(out["feat_lidar"]))


def test_mix_points_all_mixes_out_of_view_points_and_keeps_their_flag():
    batch = make_batch(800)
    labelled, vis = batch["target"] >= 0, batch["visible"]
    g = torch.Generator().manual_seed(0)
    assert set(select_anchors(batch, None, g).tolist()) == set(torch.nonzero(labelled & vis)[:, 0].tolist())
    everyone = select_anchors(batch, None, g, "all")
    assert set(everyone.tolist()) == set(torch.nonzero(labelled)[:, 0].tolist())
    torch.manual_seed(0)
    model = build_model(PREDICTED)
    synth = KernelFeatureMixing(4, seed=0, mix_points="all")
    seen = {}

    def score_outliers(index, mixed_image, mixed_lidar, visible=None):
        seen.update(index=index, image=mixed_image, lidar=mixed_lidar, visible=visible)
        return {}
    model.score_outliers = score_outliers
    with torch.no_grad():
        out = model(batch, synthesize=lambda fi, fl, b: synth(fi, fl, b, 3))
    idx = seen["index"]
    outside = ~vis[idx]
    assert outside.any() and torch.equal(seen["visible"], vis[idx])
    fi, fl = out["feat_image"][idx][outside], out["feat_lidar"][idx][outside]
    changed = (seen["image"][outside] != fi).any(dim=1) | (seen["lidar"][outside] != fl).any(dim=1)
    assert changed.float().mean() > 0.5  # (a swap of two equal values, e.g. two ReLU zeros, changes nothing)
    with pytest.raises(ValueError, match="synthesis.mix_points: 'some'"):
        select_anchors(batch, None, g, "some")


def test_extra_logit_is_dropped_at_test_time(synthetic_root, tmp_path):
    cfg = load_config(CONFIG_DIR / "synthetic_fm_kplus1_pred_all.yaml", SMALL + [
        f"data.root={synthetic_root}", "train.steps=2", "eval.scores=[maxlogit, energy, msp, gen, rba, vim, knn]"])
    ckpt = train(cfg, tmp_path / "run", progress=False)
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert all("k_plus_one" in h and "out_of_view_mse" in h for h in history)
    state = load_checkpoint(ckpt)
    assert state["model"]["seg_head.weight"].shape[0] == 18 and state["model"]["extra_head.weight"].shape[0] == 1
    metrics = evaluate(cfg, ckpt, tmp_path / "eval", progress=False)
    # rba reads the logits' level, which the softmax-based K+1 loss leaves free: skipped, with the reason
    assert set(metrics["ood"]) == set(cfg["eval"]["scores"]) - {"rba"}
    assert "loss.outlier k_plus_one" in metrics["skipped_scores"]["rba"]
    assert 0.0 <= metrics["miou"]["all"]["miou"] <= 1.0
    model = build_model(cfg["model"]).eval()
    model.load_state_dict(state["model"])
    with torch.no_grad():
        out = model(make_batch(300))
    assert out["logits"].shape[1] == 18 and out["extra_logit"].shape == (600,)


@pytest.mark.parametrize("heads_only, trained", [
    (False, {"fusion", "camera_completion", "seg_head", "anomaly_head", "lidar_head", "image_head"}),
    (True, {"seg_head", "anomaly_head", "lidar_head", "image_head"})])
def test_outlier_phase_freezes_exactly_the_encoders_and_with_heads_only_the_fusion(heads_only, trained):
    batch = make_batch(600)
    torch.manual_seed(0)
    model = build_model(PREDICTED).train()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    freeze_encoders(model, True, heads_only=heads_only)
    assert not model.lidar.training and not model.image.training and model.fusion.training != heads_only
    synth = FeatureMixing(4, seed=0)
    train_step(model, [batch], opt, load_config(CONFIG_DIR / "base.yaml")["loss"], 10.0,
               synthesize=lambda fi, fl, b: synth(fi, fl, b, 0))
    changed = {k.split(".")[0] for k, v in model.state_dict().items()
               if not torch.equal(v, before[k]) and not k.endswith("num_batches_tracked")}
    assert changed == trained
    freeze_encoders(model, False, heads_only=heads_only)
    assert model.lidar.training and model.fusion.training and all(p.requires_grad for p in model.parameters())


def test_outlier_phase_schedule_ends_the_cosine_before_the_phase():
    plain, phased = lr_lambda(5, 100), lr_lambda(5, 100, phase=20, phase_lr=0.1)
    assert [plain(s) for s in range(100)] == [lr_lambda(5, 100, 0, 0.5)(s) for s in range(100)]
    assert phased(79) == pytest.approx(lr_lambda(5, 80)(79)) and phased(79) < 0.02
    assert [phased(s) for s in (80, 90, 99)] == [0.1, 0.1, 0.1]


def test_overlay_phase_schedule_keeps_the_main_cosine_and_floors_the_phase():
    plain, overlay = lr_lambda(5, 100), lr_lambda(5, 100, phase=20, phase_lr=0.1, schedule="overlay")
    assert [overlay(s) for s in range(80)] == [plain(s) for s in range(80)]
    assert overlay(80) == pytest.approx(max(plain(80), 0.1)) and overlay(80) > 0.1
    assert overlay(99) == 0.1 and plain(99) < 0.1
