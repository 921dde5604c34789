"""Writing the SemanticKITTI layout (velodyne, labels, image_2, calib, poses, times, summary)."""
from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from segood.atomic import atomic_write
from segood.synthetic.config import (GENERATOR_VERSION, NEAR_KINDS, NOMINAL_SPEED, OOD_KIND_FAMILY, OOD_KINDS_MIXED,
                                     OOD_KINDS_NOVEL, OOD_RAW_ID, RAW_CLASSES, SCAN_PERIOD, SyntheticConfig, TEST_SEQUENCE,
                                     TRAIN_SEQUENCE, UNLABELED, VAL_SEQUENCE)
from segood.synthetic.calibration import _calib_text
from segood.synthetic.render import generate_scene, render_scan

def scan_rng(seed: int, sequence: str, index: int) -> np.random.Generator:
    """Generator of one scan, independent of how many other scans are generated."""
    return np.random.default_rng([int(seed), int(sequence), int(index)])


def _atomic_write(path: Path, data: bytes) -> None:
    """Bytes to ``path`` through :func:`segood.atomic.atomic_write` (never a half-written file)."""
    atomic_write(path, lambda p: p.write_bytes(data))


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def _check_out_dir(out: Path) -> None:
    """Refuse to write into an existing non-empty folder unless it is a previous synthetic output."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "synthetic.json").is_file():
        raise ValueError(f"{out}: refusing to write into a non-empty folder that is not a previous "
                         "synthetic output (no synthetic.json)")


SCAN_FILES = (("velodyne", ".bin"), ("labels", ".label"), ("image_2", ".png"), ("ood_kinds", ".json"))


def _remove_stale(seq_dir: Path, count: int) -> None:
    """Delete scans beyond ``count`` left by a larger previous synthetic output in this folder."""
    for folder, ext in SCAN_FILES:
        d = seq_dir / folder
        if not d.is_dir():
            continue
        for f in d.iterdir():
            if f.suffix == ext and f.stem.isdigit() and int(f.stem) >= count:
                f.unlink()


def _sequence_text(count: int) -> tuple[str, str]:
    """poses.txt (nominal straight drive along camera z) and times.txt for ``count`` scans."""
    poses, times = [], []
    for i in range(count):
        pose = np.hstack([np.eye(3), [[0.0], [0.0], [i * SCAN_PERIOD * NOMINAL_SPEED]]])
        poses.append(" ".join(f"{v:.6e}" for v in pose.ravel()))
        times.append(f"{i * SCAN_PERIOD:.6e}")
    return "".join(p + "\n" for p in poses), "".join(t + "\n" for t in times)


def _write_scan(seq_dir: Path, index: int, points: np.ndarray, labels: np.ndarray, image: np.ndarray) -> None:
    name = f"{index:06d}"
    _atomic_write(seq_dir / "velodyne" / f"{name}.bin", points.astype("<f4").tobytes())
    _atomic_write(seq_dir / "labels" / f"{name}.label", labels.astype("<u4").tobytes())
    _atomic_write(seq_dir / "image_2" / f"{name}.png", _png_bytes(image))


def ood_kinds_json(objects: list[dict]) -> bytes:
    """``ood_kinds/NNNNNN.json`` of one scan: ``{"instances": {instance id: kind}}`` for its OOD objects
    (the instance id is the high 16 bits of the ``.label`` entries; kinds: ``OOD_KIND_FAMILY``)."""
    inst = {str(o["instance"]): o["kind"] for o in objects if o["label"] == OOD_RAW_ID}
    return (json.dumps({"instances": inst}, sort_keys=True) + "\n").encode()


def hold_out(labels: np.ndarray) -> np.ndarray:
    """Train-split labels of the near benchmark: the held-out family (raw 20) becomes raw 0 (unlabelled,
    ignored by training), instance bits kept."""
    raw = labels & np.uint32(0xFFFF)
    return np.where(raw == OOD_RAW_ID, (labels & ~np.uint32(0xFFFF)) | np.uint32(UNLABELED), labels).astype(np.uint32)


def _drop_sequence(seq_dir: Path) -> None:
    """Remove a sequence a previous synthetic output wrote but the new config has no scans for."""
    _remove_stale(seq_dir, 0)
    for name in ("calib.txt", "poses.txt", "times.txt"):
        (seq_dir / name).unlink(missing_ok=True)
    for folder, _ in SCAN_FILES:
        if (seq_dir / folder).is_dir() and not any((seq_dir / folder).iterdir()):
            (seq_dir / folder).rmdir()
    if seq_dir.is_dir() and not any(seq_dir.iterdir()):
        seq_dir.rmdir()


def _prepare_sequence(out: Path, seq: str, count: int, cfg: SyntheticConfig) -> Path:
    """Folders, calib, poses and times of one sequence; stale scans of an older output removed."""
    seq_dir = out / "sequences" / seq
    if count == 0:
        _drop_sequence(seq_dir)
        return seq_dir
    for folder, _ in SCAN_FILES:
        (seq_dir / folder).mkdir(parents=True, exist_ok=True)
    _remove_stale(seq_dir, count)
    poses, times = _sequence_text(count)
    _atomic_write(seq_dir / "calib.txt", _calib_text(cfg).encode())
    _atomic_write(seq_dir / "poses.txt", poses.encode())
    _atomic_write(seq_dir / "times.txt", times.encode())
    return seq_dir


def write_dataset(out_dir: str | Path, cfg: SyntheticConfig, progress: bool = True) -> dict:
    """Generate ``cfg.num_train`` scans in sequence 00, ``cfg.num_val`` in 08 and ``cfg.num_test`` in 11.

    Returns the summary that is also written to ``out_dir/synthetic.json`` (last, so an interrupted
    run never looks complete). Same config and seed -> byte-identical files.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    _check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {TRAIN_SEQUENCE: cfg.num_train, VAL_SEQUENCE: cfg.num_val, TEST_SEQUENCE: cfg.num_test}
    seq_dirs = {seq: _prepare_sequence(out, seq, n, cfg) for seq, n in counts.items()}
    class_points = np.zeros(1 << 16, dtype=np.int64)
    ood_kinds: dict[str, int] = {}
    scans_with_ood = 0
    jobs = [(seq, i) for seq, n in counts.items() for i in range(n)]
    for seq, i in tqdm(jobs, desc="synthetic scans", unit="scan", disable=not progress):
        scene = generate_scene(scan_rng(cfg.seed, seq, i), cfg)
        points, labels, image = render_scan(scene, cfg)
        if cfg.benchmark == "near" and seq == TRAIN_SEQUENCE:
            labels = hold_out(labels)
        _write_scan(seq_dirs[seq], i, points, labels, image)
        _atomic_write(seq_dirs[seq] / "ood_kinds" / f"{i:06d}.json", ood_kinds_json(scene.objects))
        raw = labels & 0xFFFF
        class_points += np.bincount(raw, minlength=class_points.size)
        scans_with_ood += bool((raw == OOD_RAW_ID).any())
        for obj in scene.objects:
            if obj["label"] == OOD_RAW_ID:
                ood_kinds[obj["kind"]] = ood_kinds.get(obj["kind"], 0) + 1
    summary = _summary(cfg, counts, class_points, scans_with_ood, ood_kinds)
    _atomic_write(out / "synthetic.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _summary(cfg: SyntheticConfig, counts: dict[str, int], class_points: np.ndarray, scans_with_ood: int,
             ood_kinds: dict[str, int]) -> dict:
    return {
        "generator": "segood.synthetic",
        "version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "config": json.loads(json.dumps(asdict(cfg))),  # tuples -> lists, as read back from JSON
        "counts": counts,
        "splits": {"train": [TRAIN_SEQUENCE], "val": [VAL_SEQUENCE], "test": [TEST_SEQUENCE]},
        "classes": {str(k): v for k, v in RAW_CLASSES.items()},
        "ood_raw_ids": [OOD_RAW_ID],
        "benchmark": cfg.benchmark,
        "ood_kinds": {"novel": list(OOD_KINDS_NOVEL), "mixed": list(OOD_KINDS_MIXED), "near": list(NEAR_KINDS)},
        "ood_kind_family": dict(OOD_KIND_FAMILY),
        "ood_kind_files": "sequences/SS/ood_kinds/NNNNNN.json: {instances: {instance id: kind}} of each scan's OOD "
                          "objects (the .label's high 16 bits are the instance id)",
        "points_per_class": {RAW_CLASSES[k]: int(class_points[k]) for k in RAW_CLASSES},
        "scans_with_ood": scans_with_ood,
        "ood_objects": dict(sorted(ood_kinds.items())),
        "notes": "Scans are independent scenes; poses.txt is a nominal straight-line trajectory only. "
                 "Labels: instance << 16 | raw id; raw 20 (other-vehicle -> learning 5) is the OOD class."
                 + (" Near benchmark: the held-out buses and trams are raw 0 (unlabelled) in the train sequence "
                    "and raw 20 in val and test." if cfg.benchmark == "near" else ""),
    }


def _same_config(have: dict | None, cfg: SyntheticConfig) -> bool:
    """Whether a ``synthetic.json`` config equals ``cfg``; fields an older output lacks count as their default."""
    want = json.loads(json.dumps(asdict(cfg)))  # tuples as JSON lists
    if not isinstance(have, dict) or not set(have) <= set(want):
        return False
    defaults = json.loads(json.dumps(asdict(SyntheticConfig())))
    return {k: have.get(k, defaults[k]) for k in want} == want


def _backfill_ood_kinds(out: Path, cfg: SyntheticConfig, counts: dict[str, int]) -> None:
    """Write the ``ood_kinds`` files an older output lacks, from the scenes alone (no rendering)."""
    for seq, n in counts.items():
        for i in range(int(n)):
            path = out / "sequences" / seq / "ood_kinds" / f"{i:06d}.json"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                _atomic_write(path, ood_kinds_json(generate_scene(scan_rng(cfg.seed, seq, i), cfg).objects))


def ensure_dataset(out_dir: str | Path, cfg: SyntheticConfig, progress: bool = True) -> bool:
    """Generate the synthetic set in ``out_dir`` unless one with the same generator config is
    already there (its ``synthetic.json``); an older one without per-scan OOD kinds gets them.
    Returns True when it generated."""
    marker = Path(out_dir) / "synthetic.json"
    if marker.exists():
        summary = json.loads(marker.read_text())
        if _same_config(summary.get("config"), cfg):
            _backfill_ood_kinds(Path(out_dir), cfg, summary.get("counts", {}))
            return False
    write_dataset(out_dir, cfg, progress)
    return True
