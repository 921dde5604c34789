"""The anomaly viewer: headless open3d render (OOD points in the anomaly colour where they project),
camera overlay, PLY round trip, operating point, keys, and ``segood viz`` on files, data sets and bags."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from segood.config import CONFIG_DIR, load_config
from segood.data.labels import load_label_map
from segood.data.scan import Scan
from segood.synthetic import OOD_RAW_ID, SyntheticConfig, generate_scene, lidar_to_image, render_scan, write_dataset
from segood.engine.checkpoint import save_checkpoint
from segood.models import build_model
from segood.commands import viz as viz_cli
from segood.viz.colors import ANOMALY_RGB, gt_colors, raw_id_colors
from segood.viz.frame import VizFrame
from segood.engine.inference import resolve_operating_point
from segood.viz.open3d_view import RenderCamera, render_image
from segood.viz.window import ViewerState
from segood.viz.ply import read_ply, write_ply

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = ["model.lidar.channels=[8, 16]", "model.image.width_scale=0.25", "model.image.out_channels=16",
         "model.lidar.out_channels=16", "model.fusion.hidden=16"]
SYN = SyntheticConfig(azimuth_columns=512, image_width=320, image_height=96)


@pytest.fixture(scope="module")
def scene():
    """A synthetic street with OOD objects (raw id 20): points, raw labels, image, OOD mask."""
    for seed in range(10):
        pts, labels, image = render_scan(generate_scene(np.random.default_rng(seed), SYN), SYN)
        raw = labels & 0xFFFF
        ood = raw == OOD_RAW_ID
        if ood.sum() >= 100:
            return pts, raw, image, ood
    raise AssertionError("no synthetic scene with OOD points")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    cfg = load_config(CONFIG_DIR / "synthetic_baseline.yaml", SMALL)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", {
        "model": build_model(cfg["model"]).state_dict(), "config": cfg,
        "label_map": load_label_map("semantickitti").checksum(), "step": 0})


def nearest_point_per_pixel(cam: RenderCamera, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(point index, (M, 2) integer pixel) of the nearest point in each pixel any point projects to."""
    uv, depth = cam.project(xyz)
    px = np.floor(uv).astype(int)
    ok = np.flatnonzero((depth > 0) & (px[:, 0] >= 0) & (px[:, 0] < cam.width) & (px[:, 1] >= 0) & (px[:, 1] < cam.height))
    order = ok[np.argsort(depth[ok])]
    _, first = np.unique(px[order, 1] * cam.width + px[order, 0], return_index=True)
    near = order[first]
    return near, px[near]


def is_red(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(int)
    return (rgb[:, 0] > 150) & (rgb[:, 1] < 90) & (rgb[:, 2] < 90)


@pytest.mark.parametrize("view", ["hot", "heat"])
def test_headless_render_shows_ood_points_in_the_anomaly_colour(scene, view):
    pts, raw, _, ood = scene
    frame = VizFrame(Scan(points=pts, raw_labels=raw), load_label_map("semantickitti"), None,
                     ood.astype(np.float32), resolve_operating_point(None, "gt_ood", 0.5))
    cam = RenderCamera.look_at(eye=(0.0, 0.0, 12.0), target=pts[ood, :3].mean(0), width=480, height=320, vfov_deg=50)
    img = render_image(pts[:, :3], frame.colors(view), cam, point_size=2)
    assert img.shape == (320, 480, 3)
    near, px = nearest_point_per_pixel(cam, pts[:, :3])
    red = is_red(img[px[:, 1], px[:, 0]])
    assert ood[near].sum() >= 30, "the camera should see OOD points"
    assert red[ood[near]].mean() > 0.9, "OOD points must show in the anomaly colour"
    assert red[~ood[near]].mean() < 0.01, "ID points must not"
    if view == "hot":
        assert (img[px[ood[near], 1], px[ood[near], 0]] == (255 * ANOMALY_RGB).astype(np.uint8)).all(axis=1).mean() > 0.9


def test_cli_png_overlay_and_ply_from_saved_predictions(scene, tmp_path, capsys):
    pts, raw, image, ood = scene
    from PIL import Image

    pts.tofile(tmp_path / "scan.bin")
    Image.fromarray(image).save(tmp_path / "cam.png")
    (tmp_path / "calib.json").write_text(json.dumps({"lidar_to_image": lidar_to_image(SYN).tolist()}))
    label = np.where(ood, 3, 0)
    np.savez(tmp_path / "pred.npz", anomaly=ood.astype(np.float32), label=label)
    code = _cli(["viz", str(tmp_path / "scan.bin"), "--pred", str(tmp_path / "pred.npz"), "--threshold", "0.5",
                 "--view", "hot", "--png", str(tmp_path / "v.png"), "--overlay", str(tmp_path / "o.png"),
                 "--ply", str(tmp_path / "v.ply"), "--image", str(tmp_path / "cam.png"),
                 "--calib", str(tmp_path / "calib.json"), "--size", "640x360"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "operating point: anomaly >= 0.5 (--threshold)\n" in out
    assert f"this scan: threshold 0.5, {100 * ood.mean():.2f}% of {len(pts)} points flagged" in out
    png = np.asarray(Image.open(tmp_path / "v.png").convert("RGB"))
    assert png.shape[1] == 640 and png.shape[0] > 360  # render + caption strip
    # overlay: OOD points' pixels are red, ID points' pixels are not
    ov = np.asarray(Image.open(tmp_path / "o.png").convert("RGB"))
    m = lidar_to_image(SYN)
    cam = pts[:, :3] @ m[:, :3].T + m[:, 3]
    uv = np.round(cam[:, :2] / cam[:, 2:3]).astype(int)
    inside = (cam[:, 2] > 0.1) & (uv[:, 0] >= 0) & (uv[:, 0] < SYN.image_width) & (uv[:, 1] >= 0) & (uv[:, 1] < SYN.image_height)
    red = is_red(ov[uv[inside, 1], uv[inside, 0]])
    assert red[ood[inside]].mean() > 0.9 and red[~ood[inside]].mean() < 0.1
    # PLY: same points and order, scores and labels as fields; open3d reads the custom attributes
    ply = read_ply(tmp_path / "v.ply")
    np.testing.assert_array_equal(np.stack([ply[k] for k in ("x", "y", "z", "intensity")], 1), pts)
    np.testing.assert_array_equal(ply["anomaly"], ood.astype(np.float32))
    np.testing.assert_array_equal(ply["above"], ood.astype(np.uint8))
    np.testing.assert_array_equal(ply["label"], load_label_map("semantickitti").train_to_raw(label))
    import open3d as o3d

    pcd = o3d.t.io.read_point_cloud(str(tmp_path / "v.ply"))
    np.testing.assert_array_equal(pcd.point["anomaly"].numpy().reshape(-1), ood.astype(np.float32))
    np.testing.assert_array_equal(pcd.point["positions"].numpy(), pts[:, :3])


def test_ply_round_trip_keeps_types(tmp_path):
    cols = {"x": np.arange(5, dtype=np.float32), "d": np.linspace(0, 1, 5), "label": np.array([0, 1, 65535, 7, 9], np.uint16),
            "flag": np.array([1, 0, 1, 0, 1], np.uint8), "i": np.array([-3, 0, 3, 4, 5], np.int32)}
    back = read_ply(write_ply(tmp_path / "a.ply", cols))
    assert list(back) == list(cols)
    for k in cols:
        assert back[k].dtype == cols[k].dtype
        np.testing.assert_array_equal(back[k], cols[k])


def test_operating_point_sources(tmp_path, ckpt):
    saved = {"operating_point": {"score": "energy", "threshold": 1.5}}
    op = resolve_operating_point(saved, None, None)
    assert (op.score, op.threshold, op.source) == ("energy", 1.5, "checkpoint operating_point")
    op = resolve_operating_point(saved, None, 0.2)
    assert (op.score, op.threshold, op.source) == ("energy", 0.2, "--threshold")
    op = resolve_operating_point(saved, "msp", None)
    assert op.threshold is None and "the stored operating point is for score 'energy'" in op.source
    op = resolve_operating_point({}, None, None, ckpt)
    assert op.score == "anomaly_head" and op.threshold is None
    assert "top 5%" in op.describe() and "no operating point stored with the checkpoint" in op.describe()
    s = np.arange(1000, dtype=np.float32)
    assert op.above(s).sum() == 50 and op.above(s)[-50:].all()
    assert op.above(np.r_[np.zeros(990), np.ones(10)]).sum() == 10  # ties at the quantile are not flagged
    assert resolve_operating_point(None, "x", 998.0).above(s).sum() == 2  # score >= threshold
    # the file `segood eval` writes beside the checkpoint, checked against the checkpoint's hash
    from segood.engine.artifacts import checkpoint_sha, operating_point_path

    beside = tmp_path / "run.pt"
    beside.write_bytes(ckpt.read_bytes())
    operating_point_path(beside).write_text(json.dumps(
        {"score": "anomaly_head", "threshold": 0.7, "tpr": 0.95, "split": "val", "checkpoint_sha256": checkpoint_sha(beside)}))
    op = resolve_operating_point({}, None, None, beside)
    assert (op.score, op.threshold, op.source) == ("anomaly_head", 0.7, "run.operating_point.json, TPR 0.95 on val")
    operating_point_path(beside).write_text(json.dumps({"score": "anomaly_head", "threshold": 0.7, "checkpoint_sha256": "x"}))
    op = resolve_operating_point({}, None, None, beside)
    assert op.threshold is None and "computed for another version" in op.source


def test_viewer_keys_switch_views_and_frames():
    st = ViewerState(num_frames=3, view="heat")
    st.settle(["pred", "heat", "hot"])
    assert st.key("4") and st.view == "hot"
    assert not st.key("1") and st.view == "hot"  # no ground truth in this frame
    assert st.key("v") and st.view == "pred"
    assert not st.key("p") and st.index == 0
    assert st.key("RIGHT") and st.key("n") and st.index == 2 and not st.key("n")
    st.settle(["gt"])
    assert st.view == "gt"
    assert not st.key("x")


def test_ground_truth_colours_follow_the_label_map():
    lm = load_label_map("semantickitti")
    c = gt_colors(np.array([10, 252, 20, 0, 40]), lm)
    np.testing.assert_array_equal(c[0], c[1])  # moving-car shows as car
    np.testing.assert_allclose(c[2], [0.0, 0.0, 1.0])  # other-vehicle (OOD): palette blue
    assert not np.array_equal(c[3], raw_id_colors(np.array([0]))[0])  # ignored: grey, not black
    assert np.array_equal(raw_id_colors(np.array([12345, 12345]))[0], raw_id_colors(np.array([12345]))[0])


def test_viz_dataset_scan_with_checkpoint(tmp_path, ckpt, capsys):
    write_dataset(tmp_path / "data", SyntheticConfig(num_train=1, num_val=1, azimuth_columns=128, image_width=160,
                                                     image_height=48, seed=1), progress=False)
    args = ["viz", str(CONFIG_DIR / "synthetic_baseline.yaml"), "--set", f"data.root={tmp_path / 'data'}",
            "--sequence", "08", "--frame", "0", "--ckpt", str(ckpt), "--view", "gt", "--png", str(tmp_path / "gt.png"),
            "--ply", str(tmp_path / "gt.ply"), "--size", "320x240"]
    assert _cli(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "per-scan top 5%" in out and (tmp_path / "gt.png").is_file()
    ply = read_ply(tmp_path / "gt.ply")
    assert {"anomaly", "above", "label", "gt_label"} <= set(ply)
    assert ply["above"].mean() == pytest.approx(0.05, abs=0.01)


def test_viz_bag_frame_with_camera(tmp_path, ckpt, capsys):
    bags = FIXTURES / "bags"
    args = ["viz", str(bags / "nuscenes0061_derived.mcap"), "--index", "1", "--ckpt", str(ckpt),
            "--image-topic", "/camera/image/compressed", "--info-topic", "/camera/camera_info",
            "--calib", str(bags / "nuscenes0061_derived_calib.yaml"), "--overlay", str(tmp_path / "o.png"),
            "--ply", str(tmp_path / "f.ply")]
    assert _cli(args) == 0, capsys.readouterr().err
    from segood.ros.bagio import messages, open_bag
    from segood.ros.pointcloud2 import decode_xyzi

    with open_bag(bags / "nuscenes0061_derived.mcap") as r:
        clouds = [decode_xyzi(r.deserialize(raw, c.msgtype)) for c, _, raw in messages(r) if c.topic == "/points"]
    ply = read_ply(tmp_path / "f.ply")
    np.testing.assert_array_equal(np.stack([ply[k] for k in ("x", "y", "z", "intensity")], 1), clouds[1])
    assert (tmp_path / "o.png").is_file()


def test_viz_errors(scene, tmp_path, capsys, monkeypatch):
    pts = scene[0]
    pts.tofile(tmp_path / "s.bin")
    np.savez(tmp_path / "short.npz", anomaly=np.zeros(10, np.float32))
    assert _cli(["viz", str(tmp_path / "s.bin"), "--pred", str(tmp_path / "short.npz"), "--png", str(tmp_path / "x.png")]) == 2
    assert f"10 anomaly score values for a scan of {len(pts)} points" in capsys.readouterr().err
    np.savez(tmp_path / "ok.npz", anomaly=np.zeros(len(pts), np.float32))
    assert _cli(["viz", str(tmp_path / "s.bin"), "--pred", str(tmp_path / "ok.npz"), "--view", "pred",
                 "--png", str(tmp_path / "x.png")]) == 2
    assert "view 'pred' is not available" in capsys.readouterr().err
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert _cli(["viz", str(tmp_path / "s.bin"), "--pred", str(tmp_path / "ok.npz")]) == 2
    assert "no display for the interactive window: DISPLAY is not set; use --png, --overlay or --ply" in capsys.readouterr().err
    assert _cli(["viz", str(tmp_path / "s.bin"), "--png", str(tmp_path / "x.png")]) == 2
    assert "nothing to show" in capsys.readouterr().err


def test_png_has_a_caption_and_colour_legend(scene, tmp_path, capsys):
    """Every PNG says file, frame, view, score, threshold and its source, share flagged, and what the
    colours mean; the heat ramp under the picture is the one the points are drawn with."""
    from PIL import Image

    from segood.viz.colors import heat_ramp, to_uint8

    pts, raw, _, ood = scene
    pts.tofile(tmp_path / "scan.bin")
    np.savez(tmp_path / "pred.npz", anomaly=np.where(ood, 0.9, 0.1).astype(np.float32))
    assert _cli(["viz", str(tmp_path / "scan.bin"), "--pred", str(tmp_path / "pred.npz"), "--threshold", "0.5",
                 "--png", str(tmp_path / "v.png"), "--size", "640x360"]) == 0, capsys.readouterr().err
    png = np.asarray(Image.open(tmp_path / "v.png").convert("RGB"))
    panel = png[360:].astype(int)
    assert panel.shape[0] > 80  # caption lines + legend
    for rgb in to_uint8(heat_ramp(8))[[0, -1]]:
        assert (np.abs(panel - rgb).max(axis=2) <= 6).sum() > 20, f"heat ramp colour {rgb} missing from the legend"
    frame = VizFrame(Scan(points=pts, raw_labels=raw, source=str(tmp_path / "scan.bin")),
                     load_label_map("semantickitti"), None, np.where(ood, 0.9, 0.1).astype(np.float32),
                     resolve_operating_point(None, "anomaly", 0.5), "scan.bin [1/1]")
    lines = frame.caption_lines("heat")
    assert lines[0] == "scan.bin [1/1]   view: heat (anomaly heatmap)"
    assert lines[1] == "score: anomaly   threshold: >= 0.5   from: --threshold"
    assert lines[2].startswith(f"flagged: {100 * ood.mean():.1f}% of {len(pts)} points")
    assert "ID points flagged here (ground truth): 0.0%" in lines[2]
    legend = frame.legend("heat")
    assert "blue = low score, red = high score" in legend["text"] and "1st-99th percentile" in legend["text"]
    assert (legend["lo"], legend["hi"]) == pytest.approx((0.1, 0.9))
    names = [n for _, n in frame.legend("gt")["items"]]
    assert "other-vehicle (OOD)" in names and names[-1] == "ignored / unlabelled"
    assert frame.legend("hot")["items"][0][1] == "flagged (anomaly >= 0.5)"


def test_warning_when_a_scan_is_mostly_flagged(scene, tmp_path, capsys):
    pts = scene[0]
    pts.tofile(tmp_path / "scan.bin")
    np.savez(tmp_path / "pred.npz", anomaly=np.ones(len(pts), np.float32))
    assert _cli(["viz", str(tmp_path / "scan.bin"), "--pred", str(tmp_path / "pred.npz"), "--threshold", "0.5",
                 "--png", str(tmp_path / "v.png"), "--size", "320x240", "--warn-share", "0.3"]) == 0
    assert "warning: 100.0% of the points are flagged, more than 30%" in capsys.readouterr().err


def test_run_folder_input_uses_its_config_and_checkpoint(tmp_path, capsys):
    """What `segood train --out RUN` leaves (config.yaml with its _source key, checkpoint.pt) is an input."""
    import yaml

    write_dataset(tmp_path / "data", SyntheticConfig(num_train=1, num_val=1, azimuth_columns=128, image_width=160,
                                                     image_height=48, seed=1), progress=False)
    cfg = load_config(CONFIG_DIR / "synthetic_feature_mixing.yaml", SMALL + [f"data.root={tmp_path / 'data'}"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert "_source" in cfg
    save_checkpoint(run / "checkpoint.pt", {"model": build_model(cfg["model"]).state_dict(), "config": cfg,
                                            "label_map": load_label_map("semantickitti").checksum(), "step": 0})
    for given in (run, run / "config.yaml"):
        assert _cli(["viz", str(given), "--sequence", "08", "--ply", str(tmp_path / "r.ply")]) == 0, \
            capsys.readouterr().err
        out = capsys.readouterr().out
        assert f"checkpoint: {run / 'checkpoint.pt'} (the run's)" in out
        assert "operating point: anomaly_head > the scan's 95th percentile" in out  # trained with synthesis
        assert {"anomaly", "label", "gt_label"} <= set(read_ply(tmp_path / "r.ply"))


def test_scored_bag_shows_its_anomaly_field_without_a_model(tmp_path, ckpt, capsys):
    """`segood replay` output viewed without --ckpt: the scores and operating point replay wrote."""
    from segood.ros.replay import ReplayOptions, replay

    bags = FIXTURES / "bags"
    out = tmp_path / "scored.mcap"
    replay(ReplayOptions(bags / "nuscenes0061_derived.mcap", out, ckpt, threshold=0.1, progress=False))
    assert _cli(["viz", str(out), "--index", "1", "--ply", str(tmp_path / "s.ply"), "--png", str(tmp_path / "s.png"),
                 "--size", "320x240"]) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "operating point: maxlogit >= 0.1 (scored.mcap.summary.json: --threshold)" in text
    from segood.ros.bagio import messages, open_bag
    from segood.ros.pointcloud2 import point_records

    with open_bag(out) as r:
        scored = [point_records(r.deserialize(raw, c.msgtype)) for c, _, raw in messages(r) if c.topic == "/points/segood"]
    ply = read_ply(tmp_path / "s.ply")
    np.testing.assert_array_equal(ply["anomaly"], scored[1]["anomaly"])
    np.testing.assert_array_equal(ply["above"], (scored[1]["anomaly"] >= 0.1).astype(np.uint8))


def test_point_file_with_a_kitti_calib_txt(scene, tmp_path, capsys):
    pts, _, image, ood = scene
    from PIL import Image

    pts.tofile(tmp_path / "scan.bin")
    Image.fromarray(image).save(tmp_path / "cam.png")
    m = lidar_to_image(SYN)
    (tmp_path / "calib.txt").write_text("P2: " + " ".join(map(str, m.reshape(-1))) + "\nTr: 1 0 0 0 0 1 0 0 0 0 1 0\n")
    np.savez(tmp_path / "pred.npz", anomaly=ood.astype(np.float32))
    assert _cli(["viz", str(tmp_path / "scan.bin"), "--pred", str(tmp_path / "pred.npz"), "--threshold", "0.5",
                 "--image", str(tmp_path / "cam.png"), "--calib", str(tmp_path / "calib.txt"),
                 "--overlay", str(tmp_path / "o.png"), "--view", "hot"]) == 0, capsys.readouterr().err
    ov = np.asarray(Image.open(tmp_path / "o.png").convert("RGB"))
    cam = pts[:, :3] @ m[:, :3].T + m[:, 3]
    uv = np.round(cam[:, :2] / cam[:, 2:3]).astype(int)
    inside = (cam[:, 2] > 0.1) & (uv[:, 0] >= 0) & (uv[:, 0] < SYN.image_width) & (uv[:, 1] >= 0) & (uv[:, 1] < SYN.image_height)
    assert is_red(ov[uv[inside & ood, 1], uv[inside & ood, 0]]).mean() > 0.9
    assert ov.shape[0] > SYN.image_height  # the legend panel under the camera image


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="segood")
    viz_cli.add_parser(parser.add_subparsers(dest="command"))
    return viz_cli.run(parser.parse_args(argv))
