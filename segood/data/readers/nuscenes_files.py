"""nuScenes files and tables (through nuscenes-devkit): poses, intrinsics, point and lidarseg files,
table checks, split -> scenes, a scene's keyframes. The reader is :mod:`segood.data.readers.nuscenes`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

from segood.data.errors import DataError
from segood.data.projection import DEVKIT_VISIBILITY, SEGOOD_VISIBILITY

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
LIDAR = "LIDAR_TOP"
TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose",
          "log", "scene", "sample", "sample_data", "sample_annotation", "map")
SPLIT_VERSION = {"train": "v1.0-trainval", "val": "v1.0-trainval", "test": "v1.0-test",
                 "mini_train": "v1.0-mini", "mini_val": "v1.0-mini"}
POINT_DIMS = 5
VISIBILITY = {"devkit": DEVKIT_VISIBILITY, "segood": SEGOOD_VISIBILITY}


def _devkit():
    try:
        import nuscenes  # noqa: F401
        from nuscenes import NuScenes
        from nuscenes.utils import splits
    except ImportError as e:  # pragma: no cover - depends on the install
        raise DataError(
            "nuScenes needs nuscenes-devkit: pip install 'segood[nuscenes]' "
            "(or: pip install --no-deps nuscenes-devkit==1.2.0 pyquaternion cachetools opencv-python-headless)"
        ) from e
    return NuScenes, splits


# ----------------------------------------------------------------------------------- geometry


def pose_matrix(record: dict, source: str) -> np.ndarray:
    """4x4 from a devkit record's ``rotation`` (w, x, y, z quaternion) and ``translation``."""
    try:
        q = np.asarray(record["rotation"], dtype=np.float64)
        t = np.asarray(record["translation"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{source}: expected 'rotation' (4 numbers, w x y z) and 'translation' (3 numbers)") from e
    if q.shape != (4,) or t.shape != (3,):
        raise DataError(f"{source}: rotation has shape {q.shape} (expected (4,)), translation {t.shape} (expected (3,))")
    if not (np.isfinite(q).all() and np.isfinite(t).all()):
        raise DataError(f"{source}: rotation/translation contains NaN or inf")
    n = np.linalg.norm(q)
    if abs(n - 1.0) > 1e-3:
        raise DataError(f"{source}: rotation quaternion has norm {n:.6g}, expected a unit quaternion "
                        "(a zero quaternion is a singular rotation)")
    w, x, y, z = q / n
    rot = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rot, t
    return out


def intrinsic_matrix(record: dict, source: str) -> np.ndarray:
    k = np.asarray(record.get("camera_intrinsic", []), dtype=np.float64)
    if k.shape != (3, 3):
        raise DataError(f"{source}: camera_intrinsic has shape {k.shape}, expected (3, 3)")
    if not np.isfinite(k).all():
        raise DataError(f"{source}: camera_intrinsic contains NaN or inf")
    if abs(np.linalg.det(k)) < 1e-12:
        raise DataError(f"{source}: camera_intrinsic is singular")
    return k


def read_pcd_bin(path: Path, dims: int = POINT_DIMS) -> np.ndarray:
    """A nuScenes ``.pcd.bin``: (N, dims) float32, finite."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: LiDAR sweep file is missing")
    size = path.stat().st_size
    if size == 0 or size % (4 * dims):
        raise DataError(f"{path}: file size {size} bytes is not a positive multiple of {4 * dims} "
                        f"(expected float32 records of {dims}: x, y, z, intensity, ring)")
    pts = np.fromfile(path, dtype=np.float32).reshape(-1, dims)
    bad = ~np.isfinite(pts).all(axis=1)
    if bad.any():
        raise DataError(f"{path}: {int(bad.sum())} point(s) have NaN or inf values")
    return pts


def read_lidarseg(path: Path, num_points: int) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: lidarseg label file is missing")
    labels = np.fromfile(path, dtype=np.uint8)
    if len(labels) != num_points:
        raise DataError(f"{path}: {len(labels)} labels but the sweep has {num_points} points "
                        "(expected one uint8 class index per point)")
    return labels.astype(np.uint32)


# ----------------------------------------------------------------------------------- tables


def infer_version(entries: list[str], root: Path) -> str:
    versions = {SPLIT_VERSION[e] for e in entries if e in SPLIT_VERSION}
    if len(versions) > 1:
        raise DataError(f"splits {entries} mix table versions {sorted(versions)}; give one version")
    if versions:
        return versions.pop()
    for v in ("v1.0-trainval", "v1.0-mini", "v1.0-test"):  # scene names only: use what is on disk
        if (root / v).is_dir():
            return v
    raise DataError(f"{root}: no table folder found (expected v1.0-trainval/, v1.0-mini/ or v1.0-test/)")


def check_tables(root: Path, version: str, with_labels: bool) -> list[str]:
    """Problems with the table files (all of them, not just the first)."""
    table_dir = root / version
    if not table_dir.is_dir():
        return [f"{table_dir}: table folder is missing (expected the devkit's {version}/*.json)"]
    problems = []
    names = list(TABLES) + (["lidarseg"] if with_labels else [])
    for name in names:
        p = table_dir / f"{name}.json"
        if not p.is_file():
            problems.append(f"{p}: table is missing" + (" (lidarseg labels: install nuScenes-lidarseg)"
                                                         if name == "lidarseg" else ""))
            continue
        try:
            doc = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            problems.append(f"{p}: not valid JSON ({e}); the file may be truncated")
            continue
        if not isinstance(doc, list):
            problems.append(f"{p}: expected a JSON list of records, got {type(doc).__name__}")
        elif name == "map" and (not doc or "log_tokens" not in doc[0]):
            problems.append(f"{p}: expected at least one map record with 'log_tokens'")
        elif name == "category" and doc and "index" not in doc[0]:
            problems.append(f"{p}: category records lack 'index' (use the category.json shipped with nuScenes-lidarseg)")
    if with_labels and not problems:
        lidarseg = json.loads((table_dir / "lidarseg.json").read_text())
        label_dir = root / "lidarseg" / version
        if not label_dir.is_dir():
            problems.append(f"{label_dir}: lidarseg label folder is missing ({len(lidarseg)} lidarseg records)")
        else:
            missing = [r["filename"] for r in lidarseg if not (root / r["filename"]).is_file()]
            if missing:
                problems.append(f"{label_dir}: {len(missing)} of {len(lidarseg)} lidarseg files are missing "
                                f"(first: {missing[0]})")
    return problems


def load_nuscenes(root: Path, version: str, with_labels: bool = True):
    """The devkit's ``NuScenes`` object, with table problems turned into one DataError."""
    NuScenes, _ = _devkit()
    problems = check_tables(root, version, with_labels)
    if problems:
        raise DataError(f"{root}: nuScenes {version} cannot be loaded:\n  " + "\n  ".join(problems))
    try:
        return NuScenes(version=version, dataroot=str(root), verbose=False)
    except (AssertionError, KeyError, IndexError, OSError, ValueError, TypeError) as e:
        raise DataError(f"{root}: nuscenes-devkit failed to load {version} ({type(e).__name__}: {e})") from e


def resolve_scenes(entries: Iterable[str], nusc) -> list[str]:
    """Scene names for split names / scene names, in order, without duplicates."""
    _, splits = _devkit()
    known = {s["name"] for s in nusc.scene}
    out: list[str] = []
    for e in entries:
        if e in SPLIT_VERSION:
            names = getattr(splits, e)
            present = [n for n in names if n in known]
            if not present:
                raise DataError(f"{nusc.dataroot}/{nusc.version}: split '{e}' has {len(names)} scenes, none of "
                                f"them in scene.json (found {sorted(known)[:10]}...)")
            names = present
        elif e in known:
            names = [e]
        else:
            raise DataError(f"{nusc.dataroot}/{nusc.version}: '{e}' is neither a split "
                            f"({sorted(SPLIT_VERSION)}) nor a scene in scene.json (e.g. {sorted(known)[:5]})")
        out += [n for n in names if n not in out]
    return out


def sample_chain(nusc, scene: dict) -> tuple[list[str], str]:
    """The sample tokens of ``scene`` (first_sample_token, then each ``next``), and '' or what is
    wrong with the chain (a token missing from sample.json, a count other than nbr_samples)."""
    tokens, tok = [], scene.get("first_sample_token", "")
    while tok:
        try:
            record = nusc.get("sample", tok)
        except KeyError:
            where = "its first_sample_token" if not tokens else f"the 'next' of sample {tokens[-1]}"
            return tokens, (f"scene {scene['name']}: sample {tok} ({where}) is not in sample.json; expected "
                            f"{scene.get('nbr_samples', '?')} linked samples, found {len(tokens)}")
        tokens.append(tok)
        tok = record.get("next", "")
    if len(tokens) != scene.get("nbr_samples", len(tokens)):
        return tokens, (f"scene {scene['name']}: scene.json says nbr_samples={scene['nbr_samples']} but its sample "
                        f"chain has {len(tokens)}")
    return tokens, ""


# ----------------------------------------------------------------------------------- reader
