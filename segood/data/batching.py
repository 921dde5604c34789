"""Scans -> network batches: augmentation, voxelisation, image normalisation, collation.

The batch layout (all tensors, P points and V voxels over B scans) is documented in DEVELOPERS.md.
Voxels are a view for the sparse network only: every original point keeps its own entry and its
index into the voxels (``point2voxel``), so predictions and metrics are always per original point.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import Dataset

from segood.data.batch import Batch
from segood.data.errors import DataError
from segood.data.labels import LabelMap
from segood.data.scan import Scan

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class VoxelGrid:
    """A fixed grid: points outside ``point_range`` are clamped into the border voxels (never dropped)."""

    voxel_size: float
    point_range: tuple[float, float, float, float, float, float]  # xmin, ymin, zmin, xmax, ymax, zmax

    @property
    def spatial_shape(self) -> list[int]:
        """[Z, Y, X] in voxels (spconv's order)."""
        lo, hi = np.array(self.point_range[:3]), np.array(self.point_range[3:])
        x, y, z = np.ceil((hi - lo) / self.voxel_size).astype(int).tolist()
        return [z, y, x]

    def coords(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 3) integer [z, y, x] voxel coordinates."""
        lo = np.array(self.point_range[:3], dtype=np.float64)
        ijk = np.floor((xyz - lo) / self.voxel_size).astype(np.int64)
        zyx = ijk[:, ::-1]
        return np.clip(zyx, 0, np.array(self.spatial_shape) - 1)


@dataclass(frozen=True)
class Augment:
    """Training-time geometric augmentation; the camera projection is computed before it, so the
    image features stay attached to the right points."""

    rotate_z_deg: float = 0.0
    flip_y: bool = False
    scale: tuple[float, float] = (1.0, 1.0)
    jitter: float = 0.0
    camera_dropout: float = 0.0  # share of camera-visible points treated as unseen (trains the placeholder path)

    def __call__(self, xyz: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        a = np.deg2rad(rng.uniform(-self.rotate_z_deg, self.rotate_z_deg))
        c, s = np.cos(a), np.sin(a)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        if self.flip_y and rng.random() < 0.5:
            rot = rot @ np.diag([1.0, -1.0, 1.0])
        out = xyz @ rot.T * rng.uniform(*self.scale)
        if self.jitter > 0:
            out = out + rng.normal(0.0, self.jitter, out.shape)
        return out.astype(np.float32)


def normalize_image(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32, ImageNet mean/std."""
    return ((image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def crop_to_fov(scan: Scan) -> Scan:
    """The camera-visible points of a scan (the fusion training protocol), labels kept aligned."""
    keep = scan.visible
    sub = lambda a: None if a is None else a[keep]  # noqa: E731
    return replace(scan, points=scan.points[keep], raw_labels=sub(scan.raw_labels),
                   learning_labels=sub(scan.learning_labels), pixel_uv=sub(scan.pixel_uv),
                   camera_id=sub(scan.camera_id), ood_kind=sub(scan.ood_kind))


def scan_to_sample(scan: Scan, label_map: LabelMap | None, augment: Augment | None = None,
                   rng: np.random.Generator | None = None) -> dict:
    """One scan as numpy arrays ready for :func:`collate`."""
    xyz = scan.points[:, :3]
    visible = scan.visible.copy()
    uv = scan.pixel_uv.copy() if scan.pixel_uv is not None else np.zeros((scan.num_points, 2), np.float32)
    if augment is not None:
        rng = rng if rng is not None else np.random.default_rng()
        xyz = augment(xyz, rng)
        drop = visible & (rng.random(len(visible)) < augment.camera_dropout)
        visible[drop] = False
        uv[drop] = 0.0
    sample = {
        "points": np.concatenate([xyz, scan.points[:, 3:4]], axis=1).astype(np.float32),
        "visible": visible,
        "pixel_uv": uv,
        "source": scan.source,
    }
    if scan.images:
        sample["images"] = [normalize_image(im) for im in scan.images]
        sample["camera_id"] = (scan.camera_id if scan.camera_id is not None
                               else np.full(scan.num_points, -1, np.int8)).astype(np.int64)
    if scan.learning_labels is not None and label_map is not None:
        sample["target"] = label_map.to_train(scan.learning_labels)
        sample["ood_target"] = label_map.to_ood_target(scan.learning_labels)
        if scan.raw_labels is not None:
            sample["raw_label"] = scan.raw_labels.astype(np.int64)
        if scan.ood_kind is not None:
            sample["ood_kind"] = scan.ood_kind.astype(np.int64)
    return sample


PER_POINT_KEYS = ("points", "visible", "pixel_uv", "camera_id", "target", "ood_target", "raw_label", "ood_kind")


def take_points(sample: dict, keep: np.ndarray) -> dict:
    """The sample restricted to the points in ``keep`` (all per-point arrays stay aligned)."""
    return {k: (v[keep] if k in PER_POINT_KEYS else v) for k, v in sample.items()}


def crop_nearest(sample: dict, max_points: int, rng: np.random.Generator) -> dict:
    """Keep the ``max_points`` points nearest (in the ground plane) to a random point of the scan:
    a spatially contiguous crop, so local structure survives (unlike random subsampling)."""
    n = len(sample["points"])
    if n <= max_points:
        return sample
    xy = sample["points"][:, :2]
    d = np.linalg.norm(xy - xy[rng.integers(n)], axis=1)
    keep = np.sort(np.argpartition(d, max_points - 1)[:max_points])
    return take_points(sample, keep)


def collate(samples: list[dict], grid: VoxelGrid, max_voxels: int | None = None,
            rng: np.random.Generator | None = None) -> Batch:
    """Concatenate samples and voxelise them (mean point features + offset to the voxel centre);
    every key, dtype and shape of the result: :class:`segood.data.batch.Batch`.

    With ``max_voxels`` (training only), a batch with more voxels is cropped around one random
    point per scan, shrinking every scan by the same factor, so memory stays bounded."""
    for s in samples:
        if len(s["points"]) == 0:  # spconv would fail later with "tensor must not empty", naming nothing
            raise DataError(f"{s.get('source') or 'a scan'}: no points reach the network (the scan is empty, "
                            f"or nothing was left of it); a scan needs at least one point")
    batch = _collate(samples, grid)
    v = len(batch["voxel_coords"])
    if max_voxels is None or v <= max_voxels:
        return batch
    rng = rng if rng is not None else np.random.default_rng()
    factor = max_voxels / v * 0.95
    cropped = [crop_nearest(s, max(1, int(len(s["points"]) * factor)), rng) for s in samples]
    return collate(cropped, grid, max_voxels, rng)


def _unique_voxels(batch_idx: np.ndarray, zyx: np.ndarray, shape: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Occupied voxels ``[b, z, y, x]`` (sorted) and each point's voxel index.

    One int64 key per point (same order as the rows' lexicographic order) and a 1-D ``np.unique``:
    the row-wise ``np.unique(axis=0)`` it replaces took most of a 120k-point replay frame."""
    z, y, x = (int(s) for s in shape)
    key = ((batch_idx * z + zyx[:, 0]) * y + zyx[:, 1]) * x + zyx[:, 2]
    ukey, point2voxel = np.unique(key, return_inverse=True)
    coords = np.empty((len(ukey), 4), dtype=np.int64)
    rest, coords[:, 3] = np.divmod(ukey, x)
    rest, coords[:, 2] = np.divmod(rest, y)
    coords[:, 0], coords[:, 1] = np.divmod(rest, z)
    return coords, point2voxel.reshape(-1)


def _collate(samples: list[dict], grid: VoxelGrid) -> dict:
    batch_idx = np.concatenate([np.full(len(s["points"]), b, dtype=np.int64) for b, s in enumerate(samples)])
    points = np.concatenate([s["points"] for s in samples])
    zyx = grid.coords(points[:, :3])
    voxel_keys, point2voxel = _unique_voxels(batch_idx, zyx, grid.spatial_shape)
    v = len(voxel_keys)
    counts = np.bincount(point2voxel, minlength=v).astype(np.float32)[:, None]
    # per-column bincount sums in point order in float64, as np.add.at did (same bits, ~30x faster)
    mean = np.stack([np.bincount(point2voxel, weights=points[:, c], minlength=v) for c in range(4)], axis=1)
    mean = (mean / counts).astype(np.float32)
    lo = np.array(grid.point_range[:3], dtype=np.float32)
    centre = (voxel_keys[:, 1:][:, ::-1].astype(np.float32) + 0.5) * grid.voxel_size + lo
    batch = {
        "points": torch.from_numpy(points),
        "batch_idx": torch.from_numpy(batch_idx),
        "voxel_coords": torch.from_numpy(voxel_keys.astype(np.int32)),
        "voxel_feats": torch.from_numpy(np.concatenate([mean, mean[:, :3] - centre], axis=1)),
        "point2voxel": torch.from_numpy(point2voxel.astype(np.int64)),
        "spatial_shape": grid.spatial_shape,
        "batch_size": len(samples),
        "sources": [s["source"] for s in samples],
        **_camera_part(samples, batch_idx),
    }
    if all("target" in s for s in samples):
        batch["target"] = torch.from_numpy(np.concatenate([s["target"] for s in samples]))
        batch["ood_target"] = torch.from_numpy(np.concatenate([s["ood_target"] for s in samples]))
    for key in ("raw_label", "ood_kind"):
        if all(key in s for s in samples):
            batch[key] = torch.from_numpy(np.concatenate([s[key] for s in samples]))
    return batch


def _camera_part(samples: list[dict], batch_idx: np.ndarray) -> dict:
    """``visible``, ``pixel_uv`` and, when every sample has images, ``images`` and ``image_idx``."""
    part = {"visible": torch.from_numpy(np.concatenate([s["visible"] for s in samples])),
            "pixel_uv": torch.from_numpy(np.concatenate([s["pixel_uv"] for s in samples]).astype(np.float32))}
    if all("images" in s for s in samples):
        # every camera image of every scan, flattened; each point samples the image of its camera
        offsets = np.cumsum([0] + [len(s["images"]) for s in samples])[:-1]
        part["images"] = torch.from_numpy(_pad_stack([im for s in samples for im in s["images"]]))
        cam = np.concatenate([s["camera_id"] for s in samples])
        part["image_idx"] = torch.from_numpy(offsets[batch_idx] + np.maximum(cam, 0))
    return part


def camera_inputs(samples: list[dict]) -> dict:
    """What the image branch reads of :func:`collate`'s batch (``points``, ``batch_idx``,
    ``visible``, ``pixel_uv``, ``images``, ``image_idx``), the same values, without voxelising:
    inference runs the image branch on it while :func:`collate` voxelises."""
    batch_idx = np.concatenate([np.full(len(s["points"]), b, dtype=np.int64) for b, s in enumerate(samples)])
    points = np.concatenate([s["points"] for s in samples])
    return {"points": torch.from_numpy(points), "batch_idx": torch.from_numpy(batch_idx),
            **_camera_part(samples, batch_idx)}


def _pad_stack(images: list[np.ndarray]) -> np.ndarray:
    """Stack (3, H, W) images of possibly different sizes (KITTI sequences differ by a pixel),
    zero-padding at the bottom/right so pixel coordinates stay valid."""
    h = max(im.shape[1] for im in images)
    w = max(im.shape[2] for im in images)
    out = np.zeros((len(images), 3, h, w), dtype=np.float32)
    for k, im in enumerate(images):
        out[k, :, : im.shape[1], : im.shape[2]] = im
    return out


class ScanDataset(Dataset):
    """Wraps a reader (anything with ``__len__`` and ``__getitem__ -> Scan``) into samples.

    Augmentation randomness is seeded per (seed, epoch, index) so a run is reproducible whatever
    the number of loader workers. ``fov_only`` crops every scan to its camera-visible points;
    ``max_points`` caps the points per scan with a contiguous crop (training memory bound).
    """

    def __init__(self, reader, label_map: LabelMap | None, augment: Augment | None = None, seed: int = 0,
                 fov_only: bool = False, max_points: int | None = None):
        self.reader = reader
        self.fov_only = fov_only
        self.max_points = max_points
        self.label_map = label_map
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        scan = self.reader[i]
        sample = scan_to_sample(crop_to_fov(scan) if self.fov_only else scan, self.label_map, self.augment, rng)
        return sample if self.max_points is None else crop_nearest(sample, self.max_points, rng)
