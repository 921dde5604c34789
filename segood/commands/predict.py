"""``segood predict``: per-point labels and anomaly scores of a checkpoint, written in the formats the
field's evaluators and tools read, for a data root or for loose point files.

Registered by :mod:`segood.cli` through :func:`add_parser` and :func:`run`. Glue only: the pass is
:func:`segood.engine.predict.predict`, the formats are the writers of
:mod:`segood.report.prediction_writers`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segood.commands.common import add_overrides

EPILOG = """\
INPUT is one of
  a config YAML      its data set (data.dataset, data.root): --split val|test|train or --sequences S ...
  a run folder       its config.yaml, and its checkpoint.pt unless --ckpt is given
  point files        .bin (float32 x y z intensity), .pcd, .ply, .npy (N x 3 or N x 4), or folders of them;
                     --image IMG --calib FILE add one camera (KITTI calib.txt, or YAML/JSON lidar_to_image)
formats (--format, repeatable or comma-separated; default npz):
  semantickitti  OUT/sequences/SS/predictions/NNNNNN.label    uint32 raw ids (semantic-kitti-api)
  real           OUT/sequences/SS/predictions_naive/*.label + scores_softmax_naive/*.label (float32 scores; REAL)
  stu            OUT/<sequence>/<frame>.txt                   one score per line (STU's evaluator)
  nuscenes       OUT/lidarseg/<split>/<token>_lidarseg.bin + OUT/<split>/submission.json (nuscenes-devkit)
  npz            OUT/<sequence>/<frame>.npz                   label, raw_label, anomaly [, flag] (segood viz --pred)
  ply            OUT/<sequence>/<frame>.ply                   x y z intensity anomaly [above] label + heat colours
Loose files take npz and ply. The score is the one of the operating point `segood eval` stored beside the
checkpoint (else anomaly_head, or maxlogit for a model trained without synthesis); --score picks another.
--flag adds score >= threshold (the stored operating point's, or --threshold). Existing outputs are skipped
unless --overwrite; OUT/manifest.json records checkpoint, score, threshold, counts and failures. Exit status 1
when some scan could not be read (each is named), 2 on bad arguments.

examples:
  segood predict configs/semantickitti_feature_mixing.yaml --ckpt runs/fm --split val --format real --out preds
  segood predict configs/stu_eval.yaml --ckpt runs/fm/checkpoint.pt --format stu --out stu_preds
  segood predict configs/nuscenes_baseline.yaml --ckpt runs/nus --sequences val --format nuscenes --out nus_preds
  segood predict scans/ --ckpt runs/fm --format npz,ply --out scored --intensity zero
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict", help="write per-point labels and anomaly scores (SemanticKITTI, REAL, STU, nuScenes, npz, PLY)",
        description="Run a checkpoint over a data root or loose point files and write per-point labels and "
                    "anomaly scores in the formats the evaluators read.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="config YAML, run folder, or point files / folders")
    p.add_argument("--ckpt", default=None, help="checkpoint, or a run folder holding checkpoint.pt")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", action="append", default=None, metavar="FORMAT",
                   help="semantickitti | real | stu | nuscenes | npz | ply (repeatable or comma-separated; default npz)")
    data = p.add_argument_group("data roots")
    data.add_argument("--split", choices=("val", "test", "train"), default=None,
                      help="the config's data.<split>_sequences (default val)")
    data.add_argument("--sequences", nargs="+", default=None, help="sequences / splits / scenes instead of --split")
    add_overrides(data, example="data.root=/data/kitti")
    loose = p.add_argument_group("point files")
    loose.add_argument("--image", default=None, help="camera image for every point file")
    loose.add_argument("--calib", type=Path, default=None, help="its projection: KITTI calib.txt or YAML/JSON")
    loose.add_argument("--intensity", choices=("error", "zero"), default="error",
                       help="a file without an intensity column: error (default), or zero (filled with 0, said once "
                            "per file)")
    score = p.add_argument_group("score")
    score.add_argument("--score", default=None, help="score to write (default: the stored operating point's)")
    score.add_argument("--threshold", type=float, default=None, help="operating point for --flag (score >= T)")
    score.add_argument("--flag", action="store_true", help="also write the binary flag at the operating point")
    p.add_argument("--overwrite", action="store_true", help="rewrite outputs that exist (default: skip them)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Predict and write; 0 when every scan was written or skipped, 1 when some could not be read."""
    from tqdm import tqdm

    from segood.engine.artifacts import checkpoint_sha
    from segood.engine.predict import PredictSummary, build_manifest, check_resume, predict
    from segood.report.prediction_writers import build_writers, check_formats, write_manifest

    formats = [f.strip() for item in (args.format or ["npz"]) for f in item.split(",") if f.strip()]
    cfg, ckpt = _config_and_checkpoint(args)
    check_formats(formats, loose=cfg is None)
    predictor = _predictor(ckpt, cfg, args)
    source, entries = _dataset_source(cfg, args) if cfg is not None else (_loose_source(args), None)
    workers = int(cfg["data"]["num_workers"]) if cfg is not None else 0  # reading overlaps the model (README)
    if not args.overwrite:
        check_resume(args.out, checkpoint_sha(ckpt), predictor.op.score)
    writers = build_writers(formats, args.out, predictor.label_map, predictor.op.score,
                            meta=_nuscenes_meta(predictor, cfg))
    print(f"operating point: {predictor.op.describe()}")
    summary = PredictSummary()

    def manifest() -> Path:
        return write_manifest(args.out, build_manifest(ckpt, cfg, entries, source, predictor, formats, args.flag,
                                                       args.intensity, summary))

    manifest()  # first, so that files of an interrupted run are never taken for another checkpoint's
    try:
        predict(source, predictor, predictor.op.score, writers, args.overwrite,
                predictor.op.above if args.flag else None, workers, not args.no_progress,
                say=lambda m: tqdm.write(m, file=sys.stderr), summary=summary)
    except KeyboardInterrupt:
        summary.status = "interrupted"
        print(f"segood predict: interrupted after {summary.written} scans; the same command resumes "
              f"(manifest: {manifest()})", file=sys.stderr)
        return 130
    print(f"manifest: {manifest()}")
    print(f"{summary.written} scans written ({summary.points} points, "
          f"{summary.points / max(summary.seconds, 1e-9):,.0f} points/s), {summary.skipped_existing} skipped "
          f"(outputs exist), {summary.failed} failed")
    for f in summary.failures:
        print(f"failed: {f['error']}", file=sys.stderr)
    return 1 if summary.failed else 0


def _predictor(ckpt: Path, cfg: dict | None, args: argparse.Namespace):
    """The model, its label map, score and operating point. The model (and its voxel grid) are built from
    the checkpoint's own config; a data root's config says where the scans are, and a model key it states
    (or ``--set``) must agree with the checkpoint's, as in ``segood eval`` (runtime keys such as
    ``model.lidar.backend`` are taken from it)."""
    from segood.engine.inference import Predictor

    predictor = Predictor(ckpt, args.score, args.threshold, config=cfg)
    if args.flag and predictor.op.threshold is None:
        raise ValueError(f"--flag: no threshold for score '{predictor.op.score}' ({predictor.op.source}); give "
                         "--threshold T, or run `segood eval` on the validation split to store an operating point")
    return predictor


def _config_and_checkpoint(args: argparse.Namespace) -> tuple[dict | None, Path]:
    """(the data root's config or None for point files, the checkpoint path)."""
    from segood.engine.families import load_config
    from segood.viz.sources import RUN_CHECKPOINT, run_folder_input

    first = Path(args.inputs[0])
    run_input = run_folder_input(first)
    config = None
    if run_input is not None:
        config = run_input[0]
        args.ckpt = args.ckpt or (str(run_input[1]) if run_input[1] else None)
    elif first.suffix in (".yaml", ".yml"):
        config = first
    if config is not None and len(args.inputs) > 1:
        raise ValueError(f"{config}: give one config (or run folder); the other inputs {args.inputs[1:]} are not used")
    if not args.ckpt:
        raise ValueError("give --ckpt CKPT (a checkpoint, or a run folder holding checkpoint.pt)")
    ckpt = Path(args.ckpt)
    if ckpt.is_dir():
        ckpt = ckpt / RUN_CHECKPOINT
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: checkpoint not found")
    if config is None and (args.set or args.split or args.sequences):
        raise ValueError("--set / --split / --sequences are for a data root: give a config YAML as INPUT")
    if config is not None and (args.image or args.calib):
        raise ValueError("--image / --calib are for point files; a data root's cameras come from its config")
    return (load_config(config, args.set) if config is not None else None), ckpt


def _dataset_source(cfg: dict, args: argparse.Namespace):
    from segood.config import ConfigError
    from segood.engine.builders import build_label_map
    from segood.engine.predict import DatasetSource

    entries = args.sequences or cfg["data"][f"{args.split or 'val'}_sequences"]
    if not entries:
        raise ConfigError(f"data.{args.split or 'val'}_sequences is empty: give --split or --sequences")
    return DatasetSource(cfg["data"], [str(e) for e in entries], build_label_map(cfg)), [str(e) for e in entries]


def _loose_source(args: argparse.Namespace):
    from segood.data.io import read_image
    from segood.engine.predict import LooseSource

    image = matrix = None
    if (args.image is None) != (args.calib is None):
        raise ValueError("a camera needs both --image and --calib")
    if args.image is not None:
        from segood.ros.camera import load_calib, projection_matrix

        image = read_image(Path(args.image))
        matrix = projection_matrix(load_calib(args.calib), None, str(args.calib))
    return LooseSource(args.inputs, args.intensity, image, matrix)


def _nuscenes_meta(predictor, cfg: dict | None) -> dict[str, bool]:
    """The submission's meta block: LiDAR always; camera when the data root feeds images to the model;
    external data when the model's image branch started from pretrained weights."""
    trained = predictor.config
    camera = (cfg or trained)["data"]["camera"]
    return {"use_camera": camera is not None, "use_lidar": True, "use_radar": False, "use_map": False,
            "use_external": trained["model"]["image"].get("pretrained") is not None}
