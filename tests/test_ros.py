"""Bag replay: PointCloud2 decoding of any layout, round trips through all three bag formats, dropped
frames, camera pairing, and the command line's errors. Bags are generated from the KITTI fixture."""
from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from builders import checkpoint_variant

from segood.data.labels import load_label_map
from segood.data.io import read_bin, read_image
from segood.commands import replay as ros_cli
from segood.ros.bagio import BagError, BagWriter, messages, open_bag, topics, typestore_for
from segood.ros.export import SensorFrame, make_header, write_sensor_bag
from segood.ros.frames import scan_from_points
from segood.ros.pointcloud2 import CloudError, decode_xyzi, from_records, point_records, xyzi_records
from segood.ros.replay import ReplayOptions, replay, summary_path
from segood.engine.checkpoint import load_checkpoint
from segood.engine.inference import Predictor

FIXTURES = Path(__file__).parent / "fixtures"
KITTI = FIXTURES / "kitti_000008"
TS1, TS2 = typestore_for("ros1"), typestore_for("sqlite3")


@pytest.fixture(scope="module")
def ckpt(tiny_run, tmp_path_factory) -> Path:
    """The session's tiny checkpoint as a model trained without synthesis carries it."""
    return checkpoint_variant(tiny_run.ckpt, tmp_path_factory.mktemp("ckpt") / "tiny.pt", synthesis="none")


@pytest.fixture(scope="module")
def predictor(ckpt) -> Predictor:
    p = Predictor(ckpt)
    assert p.op.score == "maxlogit"  # no synthesis, no stored operating point: not the untrained anomaly head
    return p


def kitti_points() -> np.ndarray:
    return read_bin(KITTI / "000008.bin")


def kitti_frames(n: int = 3, stride: int = 8, image_dt: list[float] | None = None) -> tuple[list[SensorFrame], dict]:
    """``n`` frames at 10 Hz, frame k = every stride-th point from k, with the (half-size) image."""
    calib = json.loads((KITTI / "calib_000008.json").read_text())
    image = read_image(KITTI / "000008.png")[::2, ::2].copy()
    s = np.diag([0.5, 0.5, 1.0])
    s[:2, 2] = -0.25  # pixel-centre convention under 2x subsampling
    p = s @ np.asarray(calib["P2_cam2img_4x4"])[:3]
    pts = kitti_points()
    t0 = 1_000 * 10**9
    frames = []
    for k in range(n):
        dt = 0.0 if image_dt is None else image_dt[k]
        frames.append(SensorFrame(t0 + k * 10**8, xyzi_records(pts[k::stride]), image=image,
                                  image_stamp_ns=t0 + k * 10**8 + int(dt * 1e9), projection=p))
    return frames, {"lidar_to_camera": calib["lidar2cam_4x4 (=R0_rect @ Tr_velo_to_cam)"]}


def segood_clouds(path: Path, topic: str = "/points/segood") -> list[np.ndarray]:
    with open_bag(path) as r:
        return [point_records(r.deserialize(raw, c.msgtype)) for c, _, raw in messages(r) if c.topic == topic]


# ---------------------------------------------------------------------------------------------
# PointCloud2 decoding


def _msg(data: bytes, fields: list[tuple[str, int, int, int]], point_step: int, width: int, height: int = 1,
         row_step: int | None = None, big: bool = False) -> SimpleNamespace:
    """A duck-typed PointCloud2 built by hand (no segood encoder involved)."""
    return SimpleNamespace(
        height=height, width=width, point_step=point_step, row_step=row_step or width * point_step, is_bigendian=big,
        fields=[SimpleNamespace(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields],
        data=np.frombuffer(data, np.uint8), is_dense=True, header=None)


def test_decode_big_endian_reordered_padded_cloud_built_by_hand():
    pts = np.array([[1.5, -2.0, 0.25, 7.0], [3.0, 4.0, -1.0, 0.5], [-8.0, 0.0, 2.0, 100.0]], np.float32)
    # layout: intensity (f8) @0, pad 4, z @12, ring u16 @16, pad 2, y @20, x @24, point_step 32, big-endian
    data = b"".join(struct.pack(">d4xfH2xff4x", p[3], p[2], 9, p[1], p[0]) for p in pts)
    fields = [("intensity", 0, 8, 1), ("z", 12, 7, 1), ("ring", 16, 4, 1), ("y", 20, 7, 1), ("x", 24, 7, 1)]
    out = decode_xyzi(_msg(data, fields, 32, 3, big=True))
    np.testing.assert_array_equal(out, pts)


def test_decode_organised_cloud_with_row_padding_and_extra_fields():
    rng = np.random.default_rng(0)
    dt = np.dtype({"names": ["t", "x", "y", "z", "rgb"], "formats": ["<f8", "<f4", "<f4", "<f4", ("<u1", (4,))],
                   "offsets": [0, 8, 12, 16, 24], "itemsize": 40})
    rec = np.zeros(12, dtype=dt)
    for n in "xyz":
        rec[n] = rng.normal(size=12)
    msg = from_records(rec, TS2, make_header(TS2, 0, "l"), height=3, row_padding=5)
    assert msg.row_step == 4 * 40 + 5 and len(msg.data) == 3 * msg.row_step
    out = decode_xyzi(msg)
    np.testing.assert_array_equal(out[:, :3], np.stack([rec["x"], rec["y"], rec["z"]], 1))
    assert (out[:, 3] == 0).all()  # no intensity field -> 0


@pytest.mark.parametrize("order", [">", "<"])
def test_decode_float64_and_integer_fields_in_either_byte_order(order):
    dt = np.dtype([("z", order + "f8"), ("intensity", order + "u2"), ("x", order + "f8"), ("y", order + "i4")])
    rec = np.zeros(5, dtype=dt)
    rec["x"], rec["y"], rec["z"], rec["intensity"] = np.arange(5) * 1.5, -np.arange(5), 0.125, 40000
    out = decode_xyzi(from_records(rec, TS1, make_header(TS1, 0, "l")))
    np.testing.assert_array_equal(out, np.stack([rec["x"], rec["y"], rec["z"], rec["intensity"]], 1).astype(np.float32))


def test_decode_refuses_truncated_buffer_and_missing_xyz():
    msg = from_records(xyzi_records(np.ones((10, 4), np.float32)), TS2, make_header(TS2, 0, "l"))
    msg.data = msg.data[:-3]
    with pytest.raises(CloudError, match="truncated data: 157 bytes, expected height 1 x row_step 160"):
        decode_xyzi(msg)
    rec = np.zeros(4, dtype=[("x", "<f4"), ("y", "<f4"), ("intensity", "<f4")])
    with pytest.raises(CloudError, match=r"fields \['z'\] are missing"):
        decode_xyzi(from_records(rec, TS2, make_header(TS2, 0, "l")))


def test_common_layout_decodes_as_a_view_and_finite_rows_finds_nan_and_inf():
    from segood.ros.frames import finite_rows

    pts = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    ring, t = np.arange(50, dtype=np.uint16), np.ones(50, np.float32)
    for extra, view in (({}, True), ({"t": t}, True), ({"t": t, "ring": ring}, False)):  # point_step 16, 20, 22
        msg = from_records(xyzi_records(pts, extra), TS2, make_header(TS2, 0, "l"))
        out = decode_xyzi(msg)
        assert np.shares_memory(out, msg.data) == view  # no copy of the points where float32 rows align
        np.testing.assert_array_equal(out, pts)
    big = np.zeros(50, dtype=[(n, ">f4") for n in ("x", "y", "z", "intensity")])
    for k, n in enumerate(("x", "y", "z", "intensity")):
        big[n] = pts[:, k]
    np.testing.assert_array_equal(decode_xyzi(from_records(big, TS2, make_header(TS2, 0, "l"))), pts)
    assert finite_rows(pts).all()
    bad = pts.copy()
    bad[3, 1], bad[7, 3], bad[9, 0] = np.nan, np.inf, -np.inf
    np.testing.assert_array_equal(finite_rows(bad), np.isfinite(bad).all(axis=1))
    assert finite_rows(bad).sum() == 47 and finite_rows(bad[:0]).shape == (0,)


# ---------------------------------------------------------------------------------------------
# Round trips through the three formats


@pytest.mark.parametrize("name", ["k.bag", "k.db3", "k.mcap", "k_ros2_folder"])
def test_replay_round_trip_keeps_points_order_and_original_messages(name, tmp_path, ckpt, predictor):
    frames, calib = kitti_frames()
    bag = write_sensor_bag(tmp_path / name, frames, in_format="mcap" if "folder" in name else None)
    out = tmp_path / f"out_{name}"
    s = replay(ReplayOptions(bag, out, ckpt, progress=False), predictor)
    assert s["frames"]["processed"] == 3 and s["frames"]["dropped"] == 0
    assert s["output_topic"] == "/points/segood"
    clouds = segood_clouds(out)
    assert len(clouds) == 3
    raw_ids = set(load_label_map("semantickitti").learning_map_inv.values())
    for k, rec in enumerate(clouds):
        orig = kitti_points()[k::8]
        np.testing.assert_array_equal(np.stack([rec[n] for n in ("x", "y", "z", "intensity")], 1), orig)
        assert rec["anomaly"].dtype == np.dtype("<f4") and rec["label"].dtype == np.dtype("<u2")
        assert np.isfinite(rec["anomaly"]).all() and set(np.unique(rec["label"])) <= raw_ids
        # the score of each point is the model's score of that point (no reordering anywhere)
        expect = predictor(scan_from_points(orig, None, None, "direct")).scores[predictor.op.score]
        np.testing.assert_allclose(rec["anomaly"], expect, rtol=1e-5, atol=1e-6)
    with open_bag(bag) as a, open_bag(out) as b:  # every original message, byte for byte
        orig_msgs = [(c.topic, t, bytes(raw)) for c, t, raw in messages(a)]
        copied = [(c.topic, t, bytes(raw)) for c, t, raw in messages(b) if not c.topic.endswith("/segood")]
        assert sorted(orig_msgs) == sorted(copied)
        assert topics(b)["/points/segood"] == "sensor_msgs/msg/PointCloud2"
    summary = json.loads(summary_path(out).read_text())
    assert summary["points"]["total"] == sum(len(kitti_points()[k::8]) for k in range(3))
    model = load_checkpoint(ckpt)["config"]["model"]  # builders.SMALL: hidden 32, channels [8, 16, 16]
    assert summary["model"]["fusion"]["hidden"] == model["fusion"]["hidden"] == 32
    assert summary["model"]["lidar"]["channels"] == model["lidar"]["channels"] == [8, 16, 16]


def test_replay_with_camera_pairs_nearest_image_within_max_dt(tmp_path, ckpt, predictor):
    frames, calib = kitti_frames(image_dt=[0.03, -0.02, 0.2])  # third image too far from its cloud
    bag = write_sensor_bag(tmp_path / "cam.mcap", frames)
    (tmp_path / "calib.yaml").write_text(f"lidar_to_camera: {calib['lidar_to_camera']}\n")
    s = replay(ReplayOptions(bag, tmp_path / "out.mcap", ckpt, image_topic="/camera/image/compressed",
                             info_topic="/camera/camera_info", calib=tmp_path / "calib.yaml", progress=False), predictor)
    assert s["frames"]["processed"] == 3 and s["frames"]["lidar_only"] == 1
    assert list(s["lidar_only_reasons"]) == ["no image within max_dt 0.05 s"]
    clouds = segood_clouds(tmp_path / "out.mcap")
    lidar_only = [predictor(scan_from_points(kitti_points()[k::8], None, None, "x")).scores[predictor.op.score]
                  for k in (0, 2)]
    assert not np.allclose(clouds[0]["anomaly"], lidar_only[0], atol=1e-4)  # the image was used
    np.testing.assert_allclose(clouds[2]["anomaly"], lidar_only[1], rtol=1e-5, atol=1e-6)  # no image


def test_truncated_and_nan_clouds(tmp_path, ckpt, predictor):
    """A truncated message is dropped with its reason and the replay goes on; NaN points keep their place."""
    pts = kitti_points()[::20]
    good = from_records(xyzi_records(pts), TS1, make_header(TS1, 10**9, "l"))
    bad = from_records(xyzi_records(pts), TS1, make_header(TS1, 2 * 10**9, "l"))
    bad.data = bad.data[: len(bad.data) // 2]
    holes = pts.copy()
    holes[::7, :3] = np.nan
    nan = from_records(xyzi_records(holes), TS1, make_header(TS1, 3 * 10**9, "l"), is_dense=False)
    with BagWriter(tmp_path / "in.bag", "ros1") as w:
        c = w.add_connection("/velodyne_points", "sensor_msgs/msg/PointCloud2")
        for k, m in enumerate((good, bad, nan)):
            w.write(c, (k + 1) * 10**9, w.serialize(m, "sensor_msgs/msg/PointCloud2"))
    s = replay(ReplayOptions(tmp_path / "in.bag", tmp_path / "out.bag", ckpt, progress=False), predictor)
    assert s["frames"]["processed"] == 2 and s["frames"]["dropped"] == 1
    assert s["dropped_frames"][0]["index"] == 1 and "truncated data" in s["dropped_frames"][0]["reason"]
    first, third = segood_clouds(tmp_path / "out.bag", "/velodyne_points/segood")
    holes_mask = np.zeros(len(pts), bool)
    holes_mask[::7] = True
    assert np.isnan(third["anomaly"][holes_mask]).all() and (third["label"][holes_mask] == 0).all()
    assert np.isfinite(third["anomaly"][~holes_mask]).all() and (third["label"][~holes_mask] > 0).all()
    assert s["points"]["finite"] == 2 * len(pts) - holes_mask.sum()


def test_window_every_and_checkpoint_operating_point(tmp_path, ckpt):
    ckpt = checkpoint_variant(ckpt, tmp_path / "op.pt", {"score": "anomaly_head", "threshold": 0.0})
    frames, _ = kitti_frames(n=6, stride=40)
    bag = write_sensor_bag(tmp_path / "w.db3", frames)
    s = replay(ReplayOptions(bag, tmp_path / "o", ckpt, start=0.15, duration=0.3, every=2, progress=False))
    # clouds at 0.0 .. 0.5 s: the window [0.15, 0.45) holds 0.2, 0.3, 0.4; every 2nd -> 0.2 and 0.4
    assert s["frames"] | {"lidar_only": 0} == {"processed": 2, "dropped": 0, "skipped_outside_window": 3,
                                               "skipped_every": 1, "lidar_only": 0}
    assert s["operating_point"]["source"] == "checkpoint operating_point"
    assert s["points"]["fraction_above"] == 1.0  # sigmoid scores are all > 0
    assert (tmp_path / "o" / "metadata.yaml").is_file()  # ROS 2 folder output
    # the replayed scores and labels are the model's on those clouds (frames 2 and 4), point for point
    direct = Predictor(ckpt)
    for k, cloud in zip((2, 4), segood_clouds(tmp_path / "o")):
        pts = np.stack([frames[k].records[n] for n in ("x", "y", "z", "intensity")], axis=1).astype(np.float32)
        want = direct(scan_from_points(pts, None, None, f"frame {k}", {}))
        np.testing.assert_allclose(cloud["anomaly"], want.scores["anomaly_head"], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(cloud["label"], direct.label_map.train_to_raw(want.label))


# ---------------------------------------------------------------------------------------------
# Command line


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="segood")
    ros_cli.add_parser(parser.add_subparsers(dest="command"))
    return ros_cli.run(parser.parse_args(argv))


def test_cli_errors_name_the_problem(tmp_path, ckpt, capsys):
    bag = write_sensor_bag(tmp_path / "in.bag", kitti_frames(n=1, stride=40)[0])
    assert _cli(["replay", str(bag), "--ckpt", str(ckpt), "--out", str(tmp_path / "o.bag"), "--topic", "/lidar",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{bag}: topic '/lidar' does not exist; topics: " in err
    for listed in ("/points [sensor_msgs/msg/PointCloud2, 1 msgs]", "/camera/camera_info [sensor_msgs/msg/CameraInfo",
                   "/camera/image/compressed [sensor_msgs/msg/CompressedImage, 1 msgs]"):
        assert listed in err

    junk = tmp_path / "junk.bag"
    junk.write_bytes(b"#ROSBAG V2.0\n" + bytes(100))
    assert _cli(["replay", str(junk), "--ckpt", str(ckpt), "--out", str(tmp_path / "j.bag")]) == 2
    assert f"{junk}: not a readable ROS 1 (.bag) bag (" in capsys.readouterr().err

    out = tmp_path / "o.bag"
    assert _cli(["replay", str(bag), "--ckpt", str(ckpt), "--out", str(out), "--no-progress"]) == 0
    assert "1 processed, 0 dropped" in capsys.readouterr().out
    assert _cli(["replay", str(bag), "--ckpt", str(ckpt), "--out", str(out), "--no-progress"]) == 2
    assert f"{out}: output exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert _cli(["replay", str(bag), "--ckpt", str(ckpt), "--out", str(out), "--no-progress", "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left

    assert _cli(["replay", str(bag), "--ckpt", str(ckpt), "--out", str(tmp_path / "x.mcap")]) == 2
    assert "a ROS 1 input is written as a ROS 1 bag" in capsys.readouterr().err


def test_open_bag_missing_and_bad_suffix(tmp_path):
    with pytest.raises(BagError, match="bag not found"):
        with open_bag(tmp_path / "nope.bag"):
            pass
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(BagError, match="unknown bag format '.txt'"):
        with open_bag(tmp_path / "a.txt"):
            pass


@pytest.mark.parametrize("name", ["kitti000008_derived.bag", "nuscenes0061_derived.mcap"])
def test_committed_fixture_bags_replay_with_camera(name, tmp_path, ckpt, predictor):
    bag = FIXTURES / "bags" / name
    calib = FIXTURES / "bags" / (name.split(".")[0] + "_calib.yaml")
    out = tmp_path / ("out" + bag.suffix)
    s = replay(ReplayOptions(bag, out, ckpt, image_topic="/camera/image/compressed",
                             info_topic="/camera/camera_info", calib=calib, progress=False), predictor)
    assert s["frames"]["processed"] == 2 and s["frames"]["lidar_only"] == 0
    with open_bag(bag) as r:
        src = [decode_xyzi(r.deserialize(raw, c.msgtype)) for c, _, raw in messages(r) if c.topic == "/points"]
    for a, rec in zip(src, segood_clouds(out), strict=True):
        np.testing.assert_array_equal(np.stack([rec[n] for n in ("x", "y", "z", "intensity")], 1), a)


def test_decode_raw_images_and_calibration_files(tmp_path):
    from segood.ros.camera import CameraError, decode_image, load_calib

    rgb = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    padded = np.zeros((4, 5 * 3 + 3), np.uint8)  # step with 3 bytes of row padding
    padded[:, :15] = rgb[:, :, ::-1].reshape(4, 15)
    img = SimpleNamespace(height=4, width=5, step=18, encoding="bgr8", is_bigendian=0, data=padded.reshape(-1))
    np.testing.assert_array_equal(decode_image(img, "sensor_msgs/msg/Image"), rgb)
    mono = SimpleNamespace(height=4, width=5, step=5, encoding="mono8", is_bigendian=0, data=rgb[:, :, 0].reshape(-1))
    np.testing.assert_array_equal(decode_image(mono, "sensor_msgs/msg/Image"), np.repeat(rgb[:, :, :1], 3, axis=2))
    with pytest.raises(CameraError, match="encoding 'yuv422' is not supported"):
        decode_image(SimpleNamespace(height=1, width=1, step=2, encoding="yuv422", is_bigendian=0, data=np.zeros(2, np.uint8)),
                     "sensor_msgs/msg/Image")
    kitti = json.loads((KITTI / "calib_000008.json").read_text())
    np.testing.assert_array_equal(load_calib(KITTI / "calib_000008.json")["lidar_to_image"],
                                  np.asarray(kitti["lidar2img_4x4"])[:3])  # mmdetection3d key names accepted
    (tmp_path / "c.yaml").write_text("lidar_to_camera: [[1, 0, 0], [0, 1, 0]]\n")
    with pytest.raises(CameraError, match=r"'lidar_to_camera' has shape \(2, 3\), expected \(4, 4\)"):
        load_calib(tmp_path / "c.yaml")


# ---------------------------------------------------------------------------------------------
# What the counts and times say


def test_counts_lidar_only_frames_lists_drops_and_uses_bag_relative_times(tmp_path, ckpt, capsys):
    """Without a camera topic every processed frame is LiDAR-only; a dropped cloud is named by its
    index and its time from the bag's start, the clock --start uses."""
    pts = kitti_points()[::20]
    with BagWriter(tmp_path / "in.bag", "ros1") as w:
        c = w.add_connection("/velodyne_points", "sensor_msgs/msg/PointCloud2")
        for k in range(4):  # receive times 100.0 .. 100.3 s (epoch-like), cloud 2 truncated
            m = from_records(xyzi_records(pts), TS1, make_header(TS1, 100 * 10**9 + k * 10**8, "l"))
            if k == 2:
                m.data = m.data[: len(m.data) // 2]
            w.write(c, 100 * 10**9 + k * 10**8, w.serialize(m, "sensor_msgs/msg/PointCloud2"))
    out = tmp_path / "out.bag"
    assert _cli(["replay", str(tmp_path / "in.bag"), "--ckpt", str(ckpt), "--out", str(out), "--start", "0.1",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "2 processed, 1 dropped, 2 LiDAR-only" in text
    assert "  LiDAR-only 2: no camera topic given" in text
    assert "  dropped message 2 (t = 0.200 s): truncated data" in text
    s = json.loads(summary_path(out).read_text())
    assert s["frames"]["skipped_outside_window"] == 1  # cloud 0 at t = 0.0 s is before --start 0.1
    assert s["dropped_frames"][0]["index"] == 2 and s["dropped_frames"][0]["time_s"] == pytest.approx(0.2)
    assert "from the bag's first message" in s["times"]


def test_operating_point_warning_when_most_points_are_flagged(tmp_path, ckpt, capsys):
    ckpt = checkpoint_variant(ckpt, tmp_path / "op.pt", {"score": "anomaly_head", "threshold": 0.0, "fpr": 0.05})
    bag = write_sensor_bag(tmp_path / "in.bag", kitti_frames(n=1, stride=40)[0])
    assert _cli(["replay", str(bag), "--ckpt", str(ckpt), "--out", str(tmp_path / "o.bag"), "--no-progress"]) == 0
    cap = capsys.readouterr()
    assert "it flagged 5.0% of ID points on validation" in cap.out
    assert "warning: 100.0% of the points are flagged, more than 25%" in cap.err
    s = json.loads(summary_path(tmp_path / "o.bag").read_text())
    assert s["operating_point"]["warning"].startswith("warning: 100.0%") and s["operating_point"]["fpr"] == 0.05


def test_kitti_calib_txt_in_both_layouts(tmp_path):
    from segood.ros.camera import CameraError, load_calib

    calib = json.loads((KITTI / "calib_000008.json").read_text())
    p2 = np.asarray(calib["P2_cam2img_4x4"])[:3]
    l2c = np.asarray(calib["lidar2cam_4x4 (=R0_rect @ Tr_velo_to_cam)"])
    rot = np.array([[0.999, -0.04, 0.0], [0.04, 0.999, 0.0], [0.0, 0.0, 1.0]])  # an R0_rect that is not I
    tr = np.linalg.inv(np.block([[rot, np.zeros((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]])) @ l2c

    def line(k, m):
        return f"{k}: " + " ".join(f"{v:.12e}" for v in np.asarray(m).reshape(-1))

    (tmp_path / "odometry.txt").write_text("\n".join([line("P0", p2), line("P2", p2), line("Tr", l2c[:3])]) + "\n")
    (tmp_path / "object.txt").write_text("\n".join([line("P2", p2), line("R0_rect", rot), line("Tr_velo_to_cam", tr[:3]),
                                                    line("Tr_imu_to_velo", tr[:3])]) + "\n")
    for name in ("odometry.txt", "object.txt"):
        np.testing.assert_allclose(load_calib(tmp_path / name)["lidar_to_image"], p2 @ l2c, rtol=1e-9, atol=1e-6)
    (tmp_path / "bad.txt").write_text(line("P2", p2) + "\n")
    with pytest.raises(CameraError, match="bad.txt: KITTI calibration has no 'Tr_velo_to_cam'"):
        load_calib(tmp_path / "bad.txt")


def test_background_decode_and_write_give_the_same_bag(tmp_path, ckpt, predictor, monkeypatch):
    """inference.prefetch_decode / background_write: the output bag equals the inline one byte for
    byte (every message, same order), with a camera and a dropped cloud in the stream."""
    from dataclasses import replace

    frames, calib = kitti_frames(image_dt=[0.03, -0.02, 0.2])
    frames[1] = replace(frames[1], records=frames[1].records[:0])  # a cloud without points: dropped
    bag = write_sensor_bag(tmp_path / "cam.mcap", frames)
    (tmp_path / "calib.yaml").write_text(f"lidar_to_camera: {calib['lidar_to_camera']}\n")
    outs, summaries = {}, {}
    for background in (False, True):
        monkeypatch.setattr(predictor, "options", replace(predictor.options, prefetch_decode=background,
                                                          background_write=background))
        out = tmp_path / f"{background}" / "out.mcap"  # one name: MCAP's metadata holds it
        out.parent.mkdir()
        summaries[background] = replay(ReplayOptions(bag, out, ckpt, image_topic="/camera/image/compressed",
                                                     info_topic="/camera/camera_info", calib=tmp_path / "calib.yaml",
                                                     progress=False), predictor)
        outs[background] = out.read_bytes()
    assert outs[True] == outs[False]
    for s in summaries.values():
        assert s["frames"]["processed"] == 2 and s["frames"]["dropped"] == 1
        assert 0 < s["cpu_share_decode"] < 1 and 0 < s["cpu_share_write"] < 1
    assert {"wait_input", "wait_output", "encode", "write"} <= set(summaries[True]["stages_ms"])
    assert "wait_input" not in summaries[False]["stages_ms"] and summaries[True]["share_encode"] == 0.0


def test_pipeline_threads_keep_order_and_hand_errors_over():
    from segood.ros.pipeline import InOrder, Prefetch

    def source():
        yield 1
        yield 2
        raise OSError("read error")

    got = []
    with Prefetch(source(), depth=1) as items:
        with pytest.raises(OSError, match="read error"):
            for x in items:
                got.append(x)
    assert got == [1, 2]
    done = []
    worker = InOrder(depth=2)
    for k in range(5):
        worker.submit(done.append, k)
    worker.close()
    assert done == [0, 1, 2, 3, 4]
    worker = InOrder(depth=1)
    worker.submit(lambda: 1 / 0)
    worker.submit(done.append, "not run")  # may be queued before the failure is seen
    with pytest.raises(ZeroDivisionError):
        worker.close()
    assert "not run" not in done
