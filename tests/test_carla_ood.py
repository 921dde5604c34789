"""CARLA-OOD: the generated default layout, configurable layouts, and errors that say what was
looked for and what was found."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from builders import write_carla_ood_sample
from segood.data.readers.carla_ood import DEFAULT_LAYOUT, CarlaOodReader
from segood.data.errors import DataError
from segood.data.labels import load_label_map


@pytest.fixture(scope="module")
def label_map():
    return load_label_map("carla_ood")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_carla_ood_sample(tmp_path_factory.mktemp("carla"), {"train_00": 2, "val_00": 1})


def test_generated_sample_reads(root, label_map):
    r = CarlaOodReader(root, ["train_00", "val_00"], label_map)
    assert len(r) == 3 and r.frames[0] == ("train_00", "000000")
    s = r[0]
    assert s.points.dtype == np.float32 and s.points.shape[1] == 4
    assert len(s.raw_labels) == s.num_points and s.images[0].shape == (48, 160, 3)
    assert 0 < s.visible.sum() < s.num_points
    ood = np.concatenate([label_map.to_ood_target(r[i].learning_labels) for i in range(3)])
    assert (ood == 1).any() and (ood == 0).any()  # OOD objects (tag 29) are present
    assert label_map.num_classes == 15 and label_map.ood_names == ["anomaly"]


def test_layout_from_config_and_layout_file(root, label_map, tmp_path):
    # npy points + uint8 labels in another folder structure, given as the layout argument
    alt = tmp_path / "alt"
    src = CarlaOodReader(root, ["val_00"], label_map)
    s = src[0]
    (alt / "val_00" / "velo").mkdir(parents=True)
    (alt / "val_00" / "sem").mkdir()
    (alt / "val_00" / "cam").mkdir()
    np.save(alt / "val_00" / "velo" / "f7.npy", np.c_[s.points, np.zeros(s.num_points, np.float32)])
    s.raw_labels.astype(np.uint8).tofile(alt / "val_00" / "sem" / "f7.bin")
    (alt / "val_00" / "cam" / "f7.png").write_bytes((root / "sequences/val_00/rgb/000000.png").read_bytes())
    (alt / "val_00" / "calib.yaml").write_text((root / "sequences/val_00/calib.yaml").read_text())
    layout = {"points": "{sequence}/velo/{frame}.npy", "points_format": "npy", "labels": "{sequence}/sem/{frame}.bin",
              "label_format": "uint8", "image": "{sequence}/cam/{frame}.png", "calib": "{sequence}/calib.yaml"}
    r = CarlaOodReader(alt, ["val_00"], label_map, layout=layout)
    t = r[0]
    assert r.frames == [("val_00", "f7")]
    np.testing.assert_array_equal(t.points, s.points)
    np.testing.assert_array_equal(t.raw_labels, s.raw_labels)
    np.testing.assert_array_equal(t.camera_id, s.camera_id)
    (alt / "layout.yaml").write_text(yaml.safe_dump(layout))  # the same layout from the data root
    assert len(CarlaOodReader(alt, ["val_00"], label_map)) == 1


def test_errors_say_what_was_expected_and_found(root, label_map, tmp_path):
    with pytest.raises(DataError) as e:
        CarlaOodReader(root, ["test_00"], label_map)
    msg = str(e.value)
    assert "sequences/test_00/lidar/*.bin" in msg and "no scans found" in msg and "train_00/" in msg
    with pytest.raises(DataError, match="unknown layout key"):
        CarlaOodReader(root, ["val_00"], label_map, layout={"pointz": "x/{frame}.bin"})
    with pytest.raises(DataError, match="label_format"):
        CarlaOodReader(root, ["val_00"], label_map, layout={"label_format": "int7"})
    with pytest.raises(DataError, match=r"labels but the scan has .* points \(label_format uint16"):
        CarlaOodReader(root, ["val_00"], label_map, layout={"label_format": "uint16"})[0]


def test_bad_files(root, label_map, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    seq = bad / "sequences" / "val_00"
    (seq / "calib.yaml").write_text(yaml.safe_dump({"lidar_to_image": np.zeros((3, 4)).tolist()}))
    with pytest.raises(DataError, match="calib.yaml: projection matrix is singular"):
        CarlaOodReader(bad, ["val_00"], label_map)[0]
    (seq / "calib.yaml").write_text(yaml.safe_dump({"P": [1, 2]}))
    with pytest.raises(DataError, match=r"expected key 'lidar_to_image'.*found keys \['P'\]"):
        CarlaOodReader(bad, ["val_00"], label_map)[0]
    (seq / "rgb" / "000000.png").unlink()
    r = CarlaOodReader(bad, ["val_00"], label_map)
    problems, _, _ = r.check_scan(0)
    assert any("calib.yaml" in p for p in problems) and any("000000.png: camera image is missing" in p for p in problems)


def test_default_layout_documented():
    from segood.data.readers import carla_ood

    for v in DEFAULT_LAYOUT.values():
        if "/" in v:
            assert v.replace("sequences/{sequence}/", "").split("/")[0] in carla_ood.__doc__
