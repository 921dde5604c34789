"""The config schema: every key segood reads, with its default, type, range and one line of doc.

This is the ONE place a config key and its default are declared (with :class:`segood.options.Opt`).
``configs/base.yaml`` is generated from it (``segood config --base > configs/base.yaml``; a test fails
when the file and the schema disagree) and ``segood config --show`` lists it. :func:`segood.config.load_config`
checks every value of every file, of the inherited files and of ``--set`` against it before any work.

A section is a dict of keys; a key is an :class:`Opt` or a nested section. The key :data:`MEMBERS`
(``<member>``) in a section says that the section's other keys are the option sections of a registry
family's members (``synthesis.<method>``: the synthesizer's options); what each member takes is declared
by the member itself, in its registry, and checked by :mod:`segood.config` with the families that
the commands pass in (:mod:`segood.engine.families`). A leaf: imports only :mod:`segood.options`.
"""
from __future__ import annotations

import copy
import json
import textwrap
from typing import Any, Iterator

import yaml

from segood.options import Opt

__all__ = ["SCHEMA", "SECTION_DOCS", "MEMBERS", "defaults", "walk"]

MEMBERS = "<member>"
"""Key of a section whose other keys are registry members' option sections."""

_NUMBER = float
_RATE = dict(min=0.0, max=1.0)

SCHEMA: dict[str, Any] = {
    "seed": Opt(0, int, "seed of weights, data order, augmentation and synthesis", min=0),
    "deterministic": Opt(False, bool, "deterministic algorithms (same config + seed -> same weights on the CPU)"),
    "data": {
        "dataset": Opt("semantickitti", str, "the reader (segood config --show data lists them)"),
        "root": Opt("datasets/synthetic", str, "relative paths: against the repository root (checkout) or the "
                                               "current directory (installed)"),
        "label_map": Opt("semantickitti", str, "segood/labels/<name>.yaml, or a path to a YAML label map"),
        "train_sequences": Opt(["00", "01", "02", "03", "04", "05", "06", "07", "09", "10"], list,
                               "sequences (or splits) trained on"),
        "val_sequences": Opt(["08"], list, "chooses scores, thresholds and recipes"),
        "test_sequences": Opt([], list, "reported only (segood study); empty = no test split"),
        "camera": Opt("image_2", (str, list), "image_2|image_3 (semantickitti), all|CAM_* (nuscenes), rgb "
                                              "(carla_ood), null = LiDAR only", nullable=True),
        "train_fov_only": Opt(True, bool, "train on camera-visible points only (PMF / Feature Mixing protocol)"),
        "voxel_size": Opt(0.2, _NUMBER, "metres", min=0.01),
        "point_range": Opt([-80.0, -80.0, -5.0, 80.0, 80.0, 5.0], list,
                           "xmin ymin zmin xmax ymax zmax; outside -> border voxels"),
        "augment": {
            "rotate_z_deg": Opt(5.0, _NUMBER, "random rotation about z, +-degrees", min=0.0, max=180.0),
            "flip_y": Opt(False, bool, "random mirror y -> -y"),
            "scale": Opt([0.95, 1.05], list, "random scale range [lo, hi]"),
            "jitter": Opt(0.0, _NUMBER, "std of Gaussian point jitter, metres", min=0.0),
            "camera_dropout": Opt(0.2, _NUMBER, "share of visible points fed as camera-less, so out-of-FOV points "
                                                "are seen in training", **_RATE),
        },
        "num_workers": Opt(1, int, "data loader worker processes", min=0),
        "reader_options": Opt({}, dict, "the options of the reader named by data.dataset (segood config --show "
                                        "data lists each reader's)"),
        "max_points": Opt(None, int, "training: cap on points per scan (contiguous crop, labels kept aligned)",
                          min=1, nullable=True),
        "max_voxels": Opt(None, int, "training: cap on voxels per batch (every scan cropped by the same factor)",
                          min=1, nullable=True),
    },
    "model": {
        "num_classes": Opt(18, int, "must equal the label map's ID classes", min=1),
        "lidar": {
            "in_channels": Opt(7, int, "per-point input features of the U-Net", min=1),
            "channels": Opt([16, 32, 48], list, "U-Net widths per level (one stride-2 step between levels)"),
            "out_channels": Opt(64, int, "d_l", min=1),
            "point_hidden": Opt(16, int, "width of the per-point MLP on raw x, y, z, intensity", min=1),
            "skip": Opt("add", str, "U-Net skip connections", choices=("add", "concat")),
            "backend": Opt("auto", str, "sparse-conv implementation, same weights (auto: spconv if it can run "
                                        "here, else torch)", choices=("auto", "spconv", "torch")),
        },
        "image": {
            "depth": Opt(18, int, "ResNet-18 or 34 (torchvision parameter names)", choices=(18, 34)),
            "out_channels": Opt(64, int, "d_c", min=1),
            "pretrained": Opt(None, str, "path to a torchvision ImageNet state dict on disk; never downloaded",
                              nullable=True),
            "width_scale": Opt(0.5, _NUMBER, "channel multiplier (1.0 = torchvision widths, needed for pretrained "
                                             "weights)", min=0.01),
        },
        "fusion": {
            "hidden": Opt(64, int, "width of the fusion MLP", min=1),
            "modality_norm": Opt("none", str, "make both modalities' features alike before heads, fusion and "
                                              "synthesis: per point, or per dim with no final ReLU",
                                 choices=("none", "layernorm", "standardize")),
            "out_of_view": Opt("placeholder", str, "camera feature of points the camera does not see: placeholder "
                                                   "(one learned vector) | predicted (MSeg3D-style: an MLP predicts it "
                                                   "from the point's LiDAR feature, fitted to the detached camera "
                                                   "features of visible points with weight loss.out_of_view_mse)",
                               choices=("placeholder", "predicted")),
            "completion_trains_lidar": Opt(True, bool, "out_of_view: predicted: the MSE of the completion also trains "
                                                       "the LiDAR branch (true, MSeg3D) or only the completion MLP "
                                                       "(false: the LiDAR branch keeps learning segmentation alone)"),
            "extra_logit": Opt(False, bool, "a (K+1)-th 'outlier class' logit (needed by loss.outlier: k_plus_one); "
                                            "scores and mIoU read the K ID logits"),
        },
    },
    "synthesis": {
        "method": Opt("none", str, "the outlier synthesizer (segood config --show synthesis lists them)"),
        "n_swap": Opt(16, int, "N: dims swapped per modality and point (feature_mixing, feature_mixing_shared)",
                      min=1),
        "max_points": Opt(4096, int, "outliers per step (anchors: camera-visible ID points); null = all",
                          min=1, nullable=True),
        "start_fraction": Opt(0.0, _NUMBER, "share of training steps before synthesis starts", **_RATE),
        "mix_points": Opt("visible", str, "anchors of Feature Mixing outliers: visible (camera-visible ID points) | "
                                          "all (every ID point; needs model.fusion.out_of_view: predicted)",
                          choices=("visible", "all")),
        MEMBERS: Opt({}, dict, "synthesis.<method>: that synthesizer's own options"),
    },
    "loss": {
        "id_loss": Opt("ce", str, "segmentation loss on ID points", choices=("ce", "focal")),
        "lovasz": Opt(1.0, _NUMBER, "weight of Lovasz-softmax on the fused head", min=0.0),
        "lovasz_sort": Opt("keys", str, "how its errors are sorted; the same loss (README \"Performance\")",
                           choices=("torch", "keys")),
        "modality": Opt(0.5, _NUMBER, "weight of CE on each per-modality head", min=0.0),
        "outlier": Opt("entropy", str, "outlier loss on the fused logits (segood/ood/outlier_losses: the "
                                       "OUTLIER_LOSSES registry; segood config --show loss lists them)"),
        "outlier_options": {
            MEMBERS: Opt({}, dict, "loss.outlier_options.<loss>: that outlier loss's own options"),
        },
        "entropy": Opt(0.5, _NUMBER, "weight of entropy maximisation on outliers (fused head; loss.outlier: "
                                     "entropy)", min=0.0),
        "anomaly": Opt(1.0, _NUMBER, "weight of BCE on the anomaly head (ID 0, outliers 1), with every outlier "
                                     "loss", min=0.0),
        "out_of_view_mse": Opt(1.0, _NUMBER, "weight of the MSE of predicted camera features on visible points "
                                             "(model.fusion.out_of_view: predicted)", min=0.0),
        "a2d": Opt(0.0, _NUMBER, "A2D on ID points: maximise modality discrepancy without the GT class "
                                 "(MultiOOD: 0.5)", min=0.0),
        "discrepancy": Opt(0.0, _NUMBER, "outliers: maximise Hellinger distance between modality heads "
                                         "(MultiOOD: 0.5)", min=0.0),
        "modality_entropy": Opt(0.0, _NUMBER, "outliers: entropy maximisation on each modality head "
                                              "(MultiOOD: 0.5)", min=0.0),
    },
    "train": {
        "steps": Opt(400, int, "optimizer steps", min=1),
        "batch_size": Opt(2, int, "scans per batch", min=1),
        "lr": Opt(0.002, _NUMBER, "peak learning rate (AdamW)", min=0.0),
        "weight_decay": Opt(0.0001, _NUMBER, "AdamW weight decay", min=0.0),
        "warmup_steps": Opt(20, int, "linear warm-up steps", min=0),
        "grad_clip": Opt(10.0, _NUMBER, "max gradient norm", min=0.0),
        "accumulate": Opt(1, int, "gradient accumulation: batches per optimizer step", min=1),
        "amp": Opt("none", str, "mixed precision: bf16 also on a CPU with native bf16 (AVX512-BF16/AMX), else refused; "
                                "fp16 GPU only (grad scaler). Not exact: see README \"Performance\" before switching",
                   choices=("none", "bf16", "fp16")),
        "keep_freed_memory": Opt(True, bool, "exact: keep freed memory for the next step instead of page-faulting it "
                                             "in again"),
        "threads": Opt(None, int, "torch threads for the torch parts (null: torch's default); spconv runs "
                                  "single-threaded", min=1, nullable=True),
        "channels_last": Opt(False, bool, "image branch convolutions in NHWC (not bit-exact: other conv kernels)"),
        "parallel_branches": Opt("auto", str, "exact: the LiDAR and image branches' forward and backward on two "
                                              "cores at once (auto: on a CPU with >= 2 torch threads, no DDP)",
                                 choices=("auto", "always", "never")),
        "sync_bn": Opt(False, bool, "SyncBatchNorm under DDP (GPU)"),
        "log_every": Opt(10, int, "steps between log lines", min=1),
        "ckpt_every": Opt(100, int, "also writes checkpoint_stepNNNNNNN.pt every N steps, keeping the last `keep_last` "
                                    "(0 = only at the end)", min=0),
        "keep_last": Opt(2, int, "numbered checkpoints kept (0 = all)", min=0),
        "val_every": Opt(0, int, ">0: validation mIoU every N steps, best.pt keeps the best", min=0),
        "outlier_phase": Opt(0, int, "last K of train.steps: encoders frozen (eval mode), only fusion + heads "
                                     "train, with outliers; the main cosine schedule ends before it", min=0),
        "outlier_phase_lr": Opt(0.1, _NUMBER, "learning rate of the outlier phase, as a fraction of train.lr "
                                              "(constant; with outlier_phase_schedule: overlay, its floor)", min=0.0),
        "outlier_phase_schedule": Opt("own", str, "own: the main cosine ends before the outlier phase; overlay: the "
                                                  "main cosine spans all train.steps, as without a phase, and the "
                                                  "phase runs at max(cosine, outlier_phase_lr)",
                                      choices=("own", "overlay")),
        "outlier_phase_trains": Opt("fusion_and_heads", str, "what the outlier phase trains: the fusion MLP (and "
                                                             "camera completion) and the heads, or the heads only",
                                    choices=("fusion_and_heads", "heads")),
        "monitor": Opt(True, bool, "shortcut monitor at every validation step and the last step: each cheap score's "
                       "AUROC on the step's synthetic outliers vs its val AUROC on real OOD (monitor.jsonl)"),
    },
    "eval": {
        "batch_size": Opt(2, int, "scans per batch", min=1),
        "scores": Opt(["anomaly_head", "maxlogit", "energy", "msp", "entropy", "gen"], list,
                      "scores evaluated (segood config --show eval lists them and their options)"),
        "fit_points": Opt(20000, int, "class-balanced ID training points for the fitted scores", min=1),
        "score_options": {
            MEMBERS: Opt({}, dict, "eval.score_options.<score>: that score's own options"),
        },
        "hist_bins": Opt(65536, int, "histogram bins per score (binned metrics, printed error bounds)", min=2),
        "protocol": Opt("segood", (str, list), "segood | real | nuscenes_devkit | stu, or a list: reference "
                                               "evaluators reproduced beside segood's own numbers"),
        "operating_tpr": Opt(0.95, _NUMBER, "operating point: threshold at this OOD recall on the validation "
                                            "split", **_RATE),
        "operating_score": Opt(None, str, "null = the headline score on val: highest AUROC on all points; the "
                                          "anomaly head only for models trained with synthesis (segood/metrics/headline.py)", nullable=True),
    },
    "inference": {
        "fold_bn": Opt(True, bool, "BatchNorm folded into the layer before it (scores equal within the tolerance of "
                                   "tests/test_speed.py)"),
        "lean_heads": Opt(True, bool, "only the heads the label and the chosen score read (exact)"),
        "channels_last": Opt(True, bool, "the image branch in NHWC, oneDNN's layout (other conv kernels: scores "
                                         "equal within the tolerance of tests/test_speed.py)"),
        "amp": Opt("none", str, "bf16: a CPU with native bf16; sparse U-Net and scores stay fp32",
                   choices=("none", "bf16")),
        "keep_freed_memory": Opt(True, bool, "exact: freed memory kept for the next frame"),
        "threads": Opt(None, int, "torch threads for the torch parts (null: torch's default); spconv "
                                  "single-threaded", min=1, nullable=True),
        "parallel_branches": Opt(True, bool, "a frame with a camera: voxelising + the LiDAR branch (one thread) "
                                             "beside the image branch (the other threads); needs lean_heads and >= 2 "
                                             "threads (scores equal within the tolerance of tests/test_speed.py)"),
        "prefetch_decode": Opt(True, bool, "segood replay: the next cloud (message, image, projection) read and "
                                           "decoded in a background thread while the model runs (exact; .db3 input: "
                                           "inline)"),
        "background_write": Opt(False, bool, "segood replay: each frame's output encoded and every message written "
                                            "in a background thread, in order (exact: the same bag; .db3 output: "
                                            "inline); off: its CPU time competes with the model's, no frames/s "
                                            "gained on 2 cores (README)"),
    },
}

SECTION_DOCS: dict[str, str] = {
    "data": "the data set, its splits and the training augmentation",
    "model": "sized for a <= 1 s training step on a 2-core CPU: 2 scans x 32k points (~48k voxels at 0.2 m) + "
             "2 images 188x621 measured 0.93-0.97 s forward+backward (LiDAR ~0.4 s single-threaded spconv, image "
             "~0.3 s); a 4th LiDAR level [16, 32, 48, 64] costs ~+0.1-0.2 s; width_scale 0.5 halves every ResNet "
             "layer, ImageNet weights need 1.0",
    "synthesis": "outliers synthesized during training (segood/ood/synthesis: the SYNTHESIZERS registry)",
    "loss": "weights of the training losses",
    "train": "the optimizer and the run",
    "eval": "scores, fitted scores, binning, protocols and the operating point",
    "inference": "segood replay / viz (segood/engine/inference.py); `segood replay --plain` turns all off",
}


def walk(schema: dict[str, Any] | None = None, prefix: str = "") -> Iterator[tuple[str, Opt]]:
    """(dotted key, Opt) for every key of the schema, in declaration order (member wildcards included)."""
    for key, node in (SCHEMA if schema is None else schema).items():
        if isinstance(node, dict):
            yield from walk(node, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", node


def defaults(schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every key with its default (a fresh nested dict; member wildcards left out)."""
    out: dict[str, Any] = {}
    for key, node in (SCHEMA if schema is None else schema).items():
        if key == MEMBERS:
            continue
        out[key] = defaults(node) if isinstance(node, dict) else copy.deepcopy(node.default)
    return out


BASE_HEADER = """\
# Every key segood knows, with its default, type and range. GENERATED from segood/config_schema.py
# (`segood config --base > configs/base.yaml`): edit the schema, not this file. Experiment configs start
# with `inherit: base.yaml` and override what differs; a key that is not here is an error (with the
# closest valid key), and so is a value of the wrong type or out of range. Registry members' options
# (synthesis.<method>, eval.score_options.<score>, data.reader_options) are declared by the members
# themselves: `segood config --show` lists them.
"""


def yaml_value(value: Any, in_list: bool = False) -> str:
    """A value in YAML flow style on one line (``[16, 32, 48]``, ``null``, ``["00", "08"]``)."""
    if isinstance(value, str):
        plain = value and not in_list and not value[0].isdigit() and yaml.safe_load(value) == value
        return value if plain else json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(yaml_value(v, True) for v in value) + "]"
    if isinstance(value, dict) and value:
        return "{" + ", ".join(f"{k}: {yaml_value(v, True)}" for k, v in value.items()) + "}"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def describe(opt: Opt) -> str:
    """``<expectation>: <doc>`` (what ``--show`` and base.yaml print after a key)."""
    return f"{opt.expected()}: {opt.doc}" if opt.doc else opt.expected()


def render_base(schema: dict[str, Any] | None = None, indent: int = 0) -> str:
    """The text of ``configs/base.yaml``: every key with its default and, as a comment, its type,
    range and doc."""
    lines = [BASE_HEADER.rstrip("\n")] if schema is None else []
    pad = "  " * indent
    for key, node in (SCHEMA if schema is None else schema).items():
        if key == MEMBERS:
            continue
        if isinstance(node, dict):
            doc = SECTION_DOCS.get(key, "") if indent == 0 else ""
            if not [k for k in node if k != MEMBERS]:
                lines.append(_commented(f"{pad}{key}: {{}}", _members_doc(node)))
                continue
            if indent == 0:
                lines.append("")
            lines.append(_commented(f"{pad}{key}:", doc))
            lines.append(render_base(node, indent + 1))
        else:
            lines.append(_commented(f"{pad}{key}: {yaml_value(node.default)}", describe(node)))
    if schema is not None and MEMBERS in schema:
        lines.append(f"{pad}# {MEMBERS}: {schema[MEMBERS].doc} (`segood config --show` lists them)")
    return "\n".join(lines) + ("\n" if schema is None else "")


def _members_doc(section: dict[str, Any]) -> str:
    return f"{section[MEMBERS].doc} (`segood config --show` lists them)" if MEMBERS in section else ""


def _commented(text: str, comment: str, width: int = 110) -> str:
    """``text`` with ``comment`` from column 32, wrapped onto comment lines at ``width``; a ``text``
    too long for that column gets the whole comment on the lines below."""
    if not comment:
        return text
    pad = " " * 32 + "# "
    lines = textwrap.wrap(comment, width - len(pad))
    if len(text) > 31:
        return "\n".join([text] + [pad + line for line in lines])
    return "\n".join([f"{text:<31} # {lines[0]}"] + [pad + line for line in lines[1:]])
