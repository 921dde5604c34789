"""nuScenes-lidarseg: label map vs the devkit, the real lidarseg fixture, a generated miniature
nuScenes read by the real devkit and by segood, the six-camera projection chain, and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nuscenes import NuScenes
from nuscenes.utils.color_map import get_colormap
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import transform_matrix
from pyquaternion import Quaternion

from segood.data.errors import DataError
from segood.data.labels import load_label_map
from builders import write_nuscenes_sample
from segood.data.projection import project_points
from segood.data.readers.nuscenes import CAMERAS, NuScenesReader

FIX = Path(__file__).parent / "fixtures"
SCENE = FIX / "nuscenes_scene0061"
SCALE = 0.2  # fixture images are 1600x900 downscaled to 320x180


@pytest.fixture(scope="module")
def label_map():
    return load_label_map("nuscenes")


def fixture_keyframe(shift_us: int = 0, seed: int = 0) -> dict:
    """The real scene-0061 keyframe (every 4th point, 320x180 images) as a writer frame; camera ego
    poses are derived from calib.json (ego2global_cam = ego2global @ lidar2ego @ inv(lidar2cam) @ inv(cam2ego))."""
    calib = json.loads((SCENE / "calib.json").read_text())
    pts = np.fromfile(SCENE / "samples" / "LIDAR_TOP_every4th.pcd.bin", dtype=np.float32).reshape(-1, 5)
    l2e, e2g = np.array(calib["lidar"]["lidar2ego_4x4"]), np.array(calib["ego2global_4x4"])
    cams = {}
    for ch, c in calib["cameras"].items():
        l2c, c2e = np.array(c["lidar2cam_4x4"]), np.array(c["cam2ego_4x4"])
        cams[ch] = dict(image=np.asarray(Image.open(SCENE / "samples" / f"{ch}_320x180.jpg").convert("RGB")),
                        K=np.diag([SCALE, SCALE, 1.0]) @ np.array(c["cam2img_3x3"]), cam2ego=c2e,
                        ego2global=e2g @ l2e @ np.linalg.inv(l2c) @ np.linalg.inv(c2e),
                        timestamp=int(round(c["timestamp"] * 1e6)) + shift_us)
    labels = np.random.default_rng(seed).integers(0, 32, len(pts)).astype(np.uint8)
    return dict(points=pts, labels=labels, lidar2ego=l2e, ego2global=e2g,
                timestamp=int(round(calib["timestamp"] * 1e6)) + shift_us, cameras=cams)


def build_mini(root: Path) -> Path:
    """scene-0061 (mini_train) with two keyframes (one LiDAR sweep after the first), scene-0103 (mini_val) with one."""
    f0, f1, f2 = fixture_keyframe(0, 0), fixture_keyframe(500000, 1), fixture_keyframe(1000000, 2)
    f0["sweeps"] = [f0["points"][:500]]
    return write_nuscenes_sample(root, {"scene-0061": [f0, f1], "scene-0103": [f2]})


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return build_mini(tmp_path_factory.mktemp("nuscenes"))


def test_label_map_is_the_devkit_mapping(label_map):
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper

    mapper = LidarsegClassMapper.__new__(LidarsegClassMapper)
    mapper.ignore_class = LidarsegClassMapper.get_ignore_class()
    fine2coarse, coarse2idx = mapper.get_fine2coarse(), mapper.get_coarse2idx()
    names = list(get_colormap())  # category 'index' order of nuScenes-lidarseg
    assert len(names) == 32 == len(label_map.learning_map)
    for raw, name in enumerate(names):
        assert label_map.learning_map[raw] == coarse2idx[fine2coarse[name]], name
    assert {label_map.learning_names[i] for i in label_map.ood_learning_ids} == \
        {"barrier", "construction_vehicle", "traffic_cone", "trailer"}
    assert label_map.ood_learning_ids == (1, 5, 8, 9) and label_map.num_classes == 12
    assert all(coarse2idx[n] == i for i, n in label_map.learning_names.items() if i)


def test_real_lidarseg_fixture(label_map):
    d = FIX / "nuscenes_lidarseg_40pts"
    pts = np.fromfile(next(d.glob("*.pcd.bin")), dtype=np.float32).reshape(-1, 5)
    raw = np.fromfile(next(d.glob("*_lidarseg.bin")), dtype=np.uint8)
    assert len(pts) == len(raw) == 40
    learning = label_map.to_learning(raw)
    expect = {17: 4, 24: 11, 27: 14, 28: 15, 30: 16, 31: 0}  # car, driveable, terrain, manmade, vegetation, ego
    assert set(np.unique(raw)) == set(expect)
    assert all(learning[raw == r].tolist() == [lid] * int((raw == r).sum()) for r, lid in expect.items())
    ood = label_map.to_ood_target(learning)
    assert (ood[raw == 31] == -1).all() and (ood[raw != 31] == 0).all()
    # the OOD classes through the 32 -> 16 map: barrier 9, trafficcone 12, construction 18, trailer 22
    assert label_map.to_ood_target(label_map.to_learning(np.array([9, 12, 18, 22, 17, 0]))).tolist() == [1, 1, 1, 1, 0, -1]


def test_devkit_and_segood_read_the_same(mini, label_map):
    nusc = NuScenes(version="v1.0-mini", dataroot=str(mini), verbose=False)
    reader = NuScenesReader(mini, ["mini_train", "mini_val"], label_map)
    assert len(reader) == len(nusc.sample) == 3
    for i, sample_token in enumerate(reader.samples):
        scan = reader[i]
        sample = nusc.get("sample", sample_token)
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        pc = LidarPointCloud.from_file(nusc.get_sample_data_path(sd["token"]))
        np.testing.assert_array_equal(scan.points[:, :3], pc.points[:3].T)
        np.testing.assert_allclose(scan.points[:, 3], pc.points[3] / 255.0, rtol=1e-6)
        labels = np.fromfile(Path(mini) / nusc.get("lidarseg", sd["token"])["filename"], dtype=np.uint8)
        np.testing.assert_array_equal(scan.raw_labels, labels)
        cs, ep = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"]), nusc.get("ego_pose", sd["ego_pose_token"])
        pose = transform_matrix(ep["translation"], Quaternion(ep["rotation"])) @ \
            transform_matrix(cs["translation"], Quaternion(cs["rotation"]))
        np.testing.assert_allclose(scan.pose, pose, atol=1e-9)
        assert scan.meta["scene"] == nusc.get("scene", sample["scene_token"])["name"]
        # the devkit's own lidar -> ego -> global -> ego(cam) -> cam -> image chain gives the same pixels
        for k, ch in enumerate(CAMERAS):
            uv_dev, _, im = nusc.explorer.map_pointcloud_to_image(sd["token"], sample["data"][ch])
            w, h = im.size
            cam = scan.lidar_to_image[k]
            hom = scan.points[:, :3].astype(np.float64) @ cam[:, :3].T + cam[:, 3]
            uv = hom[:, :2] / hom[:, 2:3]
            mask = (hom[:, 2] > 1.0) & (uv[:, 0] > 1) & (uv[:, 0] < w - 1) & (uv[:, 1] > 1) & (uv[:, 1] < h - 1)
            assert mask.sum() == uv_dev.shape[1] > 50, ch
            # the devkit moves float32 points through global coordinates (~1 km): ~1e-3 px rounding
            np.testing.assert_allclose(uv[mask], uv_dev[:2].T, atol=1e-2)


def test_projection_chain_against_calib_json(mini, label_map):
    """Independent computation: calib.json's lidar2cam (mmdet3d, both ego poses folded in) + cam2img."""
    calib = json.loads((SCENE / "calib.json").read_text())
    scan = NuScenesReader(mini, ["scene-0061"], label_map)[0]
    xyz = scan.points[:, :3].astype(np.float64)
    inside_any = np.zeros(len(xyz), bool)
    best = np.full(len(xyz), np.inf)
    expect_cam = np.full(len(xyz), -1)
    for k, ch in enumerate(CAMERAS):
        c = calib["cameras"][ch]
        cam = np.c_[xyz, np.ones(len(xyz))] @ np.array(c["lidar2cam_4x4"]).T
        pix = cam[:, :3] @ (np.diag([SCALE, SCALE, 1.0]) @ np.array(c["cam2img_3x3"])).T
        u, v = pix[:, 0] / pix[:, 2], pix[:, 1] / pix[:, 2]
        inside = (cam[:, 2] > 1.0) & (u > 1) & (u < 319) & (v > 1) & (v < 179)  # the devkit's rule
        ours = scan.images[k].shape[:2] == (180, 320)
        assert ours
        hom = xyz @ scan.lidar_to_image[k][:, :3].T + scan.lidar_to_image[k][:, 3]
        uo, vo = hom[:, 0] / hom[:, 2], hom[:, 1] / hom[:, 2]
        ours_inside = (hom[:, 2] > 1.0) & (uo > 1) & (uo < 319) & (vo > 1) & (vo < 179)
        # the fixture's float32 matrices: a handful of points may sit on the image border
        assert abs(int(inside.sum()) - int(ours_inside.sum())) <= 2, ch
        assert inside.sum() > 300, (ch, inside.sum())  # every camera sees points (~9 % of the scan)
        cent = np.hypot(u / 320 - 0.5, v / 180 - 0.5)
        take = inside & (cent < best)
        best[take], expect_cam[take] = cent[take], k
        inside_any |= inside
    assert (scan.camera_id == expect_cam).mean() > 0.999  # rule: closest to the image centre
    assert abs(int(scan.visible.sum()) - int(inside_any.sum())) <= 6
    counts = np.bincount(scan.camera_id[scan.visible], minlength=6)
    assert (counts > 300).all()


def test_visibility_counts_equal_the_devkit_rule(mini, label_map):
    """On the real scene-0061 keyframe: the points each camera sees, and the points any camera sees,
    equal nuscenes-devkit's ``map_pointcloud_to_image`` (depth > 1 m, 1-pixel margin) exactly; the
    ``visibility: segood`` switch keeps the KITTI-style rule (depth > 0.1 m, no margin) and sees more."""
    nusc = NuScenes(version="v1.0-mini", dataroot=str(mini), verbose=False)
    reader = NuScenesReader(mini, ["scene-0061"], label_map)
    scan = reader[0]
    sample = nusc.get("sample", reader.samples[0])
    seen_by_devkit = np.zeros(scan.num_points, bool)
    for k, ch in enumerate(CAMERAS):
        uv_dev, _, im = nusc.explorer.map_pointcloud_to_image(sample["data"]["LIDAR_TOP"], sample["data"][ch])
        # the devkit returns only the kept points' pixels: compare its count with segood's rule per camera
        matrix, _, _ = reader.camera_matrix(0, ch)
        ours = project_points(scan.points[:, :3], matrix, im.size[0], im.size[1], visibility=reader.visibility)[1]
        assert int(ours.sum()) == uv_dev.shape[1] > 50, ch
        seen_by_devkit |= ours
    assert int(scan.visible.sum()) == int(seen_by_devkit.sum())
    loose = NuScenesReader(mini, ["scene-0061"], label_map, visibility="segood")[0]
    assert loose.visible.sum() > scan.visible.sum()
    with pytest.raises(DataError, match="reader_options.visibility"):
        NuScenesReader(mini, ["scene-0061"], label_map, visibility="pmf")


def test_camera_ego_poses_follow_the_cars_motion():
    """The derived per-camera ego poses differ from the LiDAR's by the car's motion over the time
    gap: one speed explains all six cameras (a wrong chain would give an inconsistent displacement)."""
    calib = json.loads((SCENE / "calib.json").read_text())
    frame = fixture_keyframe()
    t0 = frame["timestamp"]
    speeds = []
    for ch, cam in frame["cameras"].items():
        dt = (t0 - cam["timestamp"]) * 1e-6
        d = np.linalg.norm(cam["ego2global"][:3, 3] - frame["ego2global"][:3, 3])
        if dt > 0.01:
            speeds.append(d / dt)
    assert len(speeds) >= 4 and np.ptp(speeds) < 0.5 and 5 < np.mean(speeds) < 15
    assert calib["sample_token"] == "ca9a282c9e77460f8360f564131a8af5"


def test_splits_and_scenes(mini, label_map):
    assert NuScenesReader(mini, ["mini_train"], label_map, camera=None).scenes == ["scene-0061"]
    assert len(NuScenesReader(mini, "mini_val", label_map, camera=None)) == 1
    r = NuScenesReader(mini, ["scene-0103", "scene-0061"], label_map, camera="CAM_BACK", with_labels=False)
    assert r.version == "v1.0-mini" and len(r) == 3
    s = r[0]
    assert s.raw_labels is None and len(s.images) == 1 and s.meta["scene"] == "scene-0103"
    with pytest.raises(DataError, match="neither a split"):
        NuScenesReader(mini, ["scene-9999"], label_map)
    with pytest.raises(DataError, match="none of them"):
        NuScenesReader(mini, ["test"], label_map, version="v1.0-mini")
    with pytest.raises(DataError, match="unknown nuScenes camera"):
        NuScenesReader(mini, ["mini_val"], label_map, camera="CAM_TOP")


def test_bad_tables_are_all_reported(tmp_path, label_map):
    root = write_nuscenes_sample(tmp_path, {"scene-0103": [fixture_keyframe()]})
    (root / "v1.0-mini" / "sample.json").unlink()
    (root / "v1.0-mini" / "ego_pose.json").write_text('[{"token": ')  # truncated
    with pytest.raises(DataError) as e:
        NuScenesReader(root, ["mini_val"], label_map)
    msg = str(e.value)
    assert "sample.json: table is missing" in msg and "ego_pose.json: not valid JSON" in msg


def test_bad_files_give_clear_errors(tmp_path, label_map):
    root = write_nuscenes_sample(tmp_path, {"scene-0103": [fixture_keyframe()]})
    tables = root / "v1.0-mini"
    seg = json.loads((tables / "lidarseg.json").read_text())[0]["filename"]
    np.zeros(10, np.uint8).tofile(root / seg)
    with pytest.raises(DataError, match=r"_lidarseg.bin: 10 labels but the sweep has 8672 points"):
        NuScenesReader(root, ["mini_val"], label_map)[0]
    reader = NuScenesReader(root, ["mini_val"], label_map, with_labels=False)
    image = next((root / "samples" / "CAM_BACK").glob("*.jpg"))
    image.unlink()
    with pytest.raises(DataError, match=r"CAM_BACK__.*\.jpg: camera image is missing"):
        reader[0]
    lidar = next((root / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))
    lidar.write_bytes(lidar.read_bytes()[:-7])
    with pytest.raises(DataError, match=r"pcd.bin: file size .* not a positive multiple of 20"):
        reader[0]


@pytest.mark.parametrize("what", ["singular_K", "nan_rotation", "zero_quaternion"])
def test_bad_calibration(tmp_path, label_map, what):
    root = write_nuscenes_sample(tmp_path, {"scene-0103": [fixture_keyframe()]})
    path = root / "v1.0-mini" / "calibrated_sensor.json"
    cs = json.loads(path.read_text())
    rec = next(r for r in cs if r["camera_intrinsic"])
    if what == "singular_K":
        rec["camera_intrinsic"] = [[1.0, 0, 0], [0, 0, 0], [0, 0, 1]]
    elif what == "nan_rotation":
        rec["rotation"] = [float("nan"), 0, 0, 0]
    else:
        rec["rotation"] = [0, 0, 0, 0]
    path.write_text(json.dumps(cs))
    reader = NuScenesReader(root, ["mini_val"], label_map, with_labels=False)
    pattern = {"singular_K": "camera_intrinsic is singular", "nan_rotation": "NaN",
               "zero_quaternion": "unit quaternion"}[what]
    with pytest.raises(DataError, match=pattern) as e:
        reader[0]
    assert "calibrated_sensor.json" in str(e.value)
