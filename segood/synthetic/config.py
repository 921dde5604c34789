"""Constants of the generator (raw ids, OOD kinds, sensor placement) and :class:`SyntheticConfig`."""
from __future__ import annotations

from dataclasses import dataclass

GENERATOR_VERSION = 1

# SemanticKITTI raw ids used by the generator.
UNLABELED, OUTLIER = 0, 1
CAR, BICYCLE, TRUCK, OTHER_VEHICLE, PERSON = 10, 11, 18, 20, 30
ROAD, PARKING, SIDEWALK, BUILDING, FENCE = 40, 44, 48, 50, 51
VEGETATION, TRUNK, TERRAIN, POLE, TRAFFIC_SIGN = 70, 71, 72, 80, 81
OOD_RAW_ID = OTHER_VEHICLE  # learning_map sends 20 -> 5, the OOD class

RAW_CLASSES: dict[int, str] = {
    UNLABELED: "unlabeled", OUTLIER: "outlier", CAR: "car", BICYCLE: "bicycle", TRUCK: "truck",
    OTHER_VEHICLE: "other-vehicle", PERSON: "person", ROAD: "road", PARKING: "parking",
    SIDEWALK: "sidewalk", BUILDING: "building", FENCE: "fence", VEGETATION: "vegetation",
    TRUNK: "trunk", TERRAIN: "terrain", POLE: "pole", TRAFFIC_SIGN: "traffic-sign",
}

# Which modality mainly separates each ID class from its look-alikes (documentation, see module doc).
SEPARATED_BY: dict[str, str] = {
    "road": "appearance vs terrain/parking (same height), geometry vs sidewalk",
    "sidewalk": "geometry (curb step), colour overlaps road",
    "parking": "appearance (lighter grey, perpendicular stall lines)",
    "terrain": "appearance (green-brown), flat like road, overlapping intensity",
    "building": "appearance vs fence (facade, windows), also size",
    "fence": "appearance vs building (slats), overlapping intensity",
    "pole": "geometry vs trunk (thin, tall, lamp arm), overlapping colour and intensity",
    "trunk": "geometry vs pole (thick, short, crown on top)",
    "vegetation": "both (bumpy sphere clusters, green noise, range jitter)",
    "traffic-sign": "both (thin plate on a post, high intensity)",
    "car": "both", "truck": "both (size)", "person": "geometry (thin upright stacks)",
    "bicycle": "geometry (thin wheels and frame)",
}

OOD_KINDS_NOVEL = ("tetra", "pyramid", "ring", "tilted_slab", "stack", "big_sphere")
OOD_KINDS_MIXED = ("veg_car", "road_pole", "novel_wall", "brick_bush")
OOD_KINDS = OOD_KINDS_NOVEL + OOD_KINDS_MIXED
# The near-OOD benchmark's held-out family: ID-like vehicles (ID paint colours, ID vehicle reflectivity)
# that are unlabelled (raw 0) in the train sequence and OOD (raw 20) in val and test, like REAL's
# other-vehicle on SemanticKITTI. Each kind is its own row in per-kind results.
NEAR_KINDS = ("bus", "tram")
OOD_KIND_FAMILY = {**{k: "novel" for k in OOD_KINDS_NOVEL}, **{k: "mixed" for k in OOD_KINDS_MIXED},
                   **{k: "near" for k in NEAR_KINDS}}
BENCHMARKS = ("standard", "near")  # standard: OOD_KINDS (README tables); near: NEAR_KINDS held out

TRAIN_SEQUENCE, VAL_SEQUENCE, TEST_SEQUENCE = "00", "08", "11"  # 08: SemanticKITTI's validation sequence; 11: its first test one
SCAN_PERIOD = 0.1  # s, 10 Hz like KITTI
NOMINAL_SPEED = 10.0  # m/s, only for the nominal poses
MISS, GROUND = -1, -2  # primitive ids of a ray that hit nothing / the ground plane
EPS = 1e-6
X_MIN, X_MAX = -90.0, 170.0  # street extent along x (the camera looks towards +x)

# Camera rotation relative to the ideal LiDAR->camera axis swap (roll, pitch, yaw in degrees).
CAMERA_TILT_DEG = (0.25, 0.6, -0.35)
CAMERA_IN_LIDAR = (0.27, 0.0, -0.08)  # camera-0 centre in the LiDAR frame (m)
STEREO_OFFSET = 0.06  # P2[0, 3] = fx * STEREO_OFFSET (colour camera 6 cm left of camera 0)


@dataclass
class SyntheticConfig:
    """All knobs of the generator; everything written is a function of this and the seed."""

    num_train: int = 24  # scans in sequence "00"
    num_val: int = 8  # scans in sequence "08" (held out, the SemanticKITTI validation sequence)
    num_test: int = 0  # scans in sequence "11" (held out: reported; val chooses scores and thresholds)
    azimuth_columns: int = 1024
    image_width: int = 621
    image_height: int = 188
    seed: int = 0
    # LiDAR (KITTI HDL-64E-like)
    beams: int = 64
    fov_up_deg: float = 2.0
    fov_down_deg: float = -24.8
    lidar_height: float = 1.73
    max_range: float = 80.0
    min_range: float = 2.0
    range_noise: float = 0.02  # m, Gaussian sigma
    dropout: float = 0.07  # fraction of returns randomly lost
    outlier_fraction: float = 0.005  # returns with a large range error, labelled raw 1 (outlier)
    intensity_noise: float = 0.03
    # camera
    camera_hfov_deg: float = 82.0
    camera_max_range: float = 400.0
    image_noise: float = 1.5  # Gaussian sigma in 8-bit levels
    # OOD objects
    ood_min: int = 1
    ood_max: int = 4
    ood_distance: tuple[float, float] = (5.0, 35.0)
    ood_in_fov_prob: float = 0.8
    occluded_ood_prob: float = 0.35
    # benchmark (BENCHMARKS): "standard" scenes are unchanged by the fields below
    benchmark: str = "standard"
    near_min: int = 1  # held-out vehicles per scene of the near benchmark
    near_max: int = 2

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"SyntheticConfig.benchmark: unknown benchmark '{self.benchmark}', "
                             f"expected one of {list(BENCHMARKS)}")
