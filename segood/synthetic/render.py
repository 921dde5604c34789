"""Scene generation entry point and rendering: LiDAR scan, camera image and per-point labels."""
from __future__ import annotations

import math

import numpy as np

from segood.synthetic.config import OUTLIER, SyntheticConfig
from segood.synthetic.scene import Lighting, Scene
from segood.synthetic.raycast import CameraRays, cast, LidarRays, sensor_rays, shade, surface
from segood.synthetic.builder import SceneBuilder
from segood.synthetic.road_users import add_clutter, add_people, add_vehicles
from segood.synthetic.roadside import add_roadside
from segood.synthetic.street import add_buildings, add_sidewalks, make_ground, sample_street
from segood.synthetic.near_objects import add_near_ood
from segood.synthetic.ood_objects import add_ood

def _sample_lighting(rng: np.random.Generator) -> Lighting:
    el, az = math.radians(rng.uniform(20.0, 65.0)), rng.uniform(0.0, 2 * np.pi)
    sun = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    overcast = rng.random() < 0.25
    ambient = rng.uniform(0.55, 0.7) if overcast else rng.uniform(0.35, 0.5)
    zenith = np.array([0.62, 0.64, 0.68]) if overcast else np.array([0.3, 0.48, 0.82])
    horizon = np.array([0.8, 0.81, 0.83]) if overcast else np.array([0.74, 0.82, 0.92])
    return Lighting(sun=sun, ambient=ambient, diffuse=(1.05 - ambient) * (0.5 if overcast else 1.0),
                    zenith=zenith * rng.uniform(0.85, 1.05), horizon=horizon * rng.uniform(0.9, 1.05),
                    fog_distance=rng.uniform(150.0, 450.0), exposure=rng.uniform(0.8, 1.2),
                    tint=1.0 + rng.normal(0.0, 0.04, 3))


def generate_scene(rng: np.random.Generator, cfg: SyntheticConfig) -> Scene:
    """Sample one street scene: layout, buildings, roadside objects, vehicles, OOD objects, people.

    The OOD objects are the standard benchmark's (novel and cross-modal kinds) or, with
    ``cfg.benchmark == "near"``, the held-out buses and trams (:mod:`segood.synthetic.near_objects`)."""
    noise_seed = int(rng.integers(2**62))
    b = SceneBuilder(rng, cfg)
    st = sample_street(rng)
    st.ground = make_ground(b, st)
    add_sidewalks(b, st)
    add_buildings(b, st)
    add_roadside(b, st)
    add_vehicles(b, st)
    (add_near_ood if cfg.benchmark == "near" else add_ood)(b, st)
    add_people(b, st)
    add_clutter(b, st)
    return Scene(st.ground, b.prims, b.materials, _sample_lighting(rng), noise_seed, b.objects)


# ---------------------------------------------------------------------------------------------
# Rendering


def _render_lidar(scene: Scene, cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Spinning-LiDAR returns: (points (N, 4) float32 in the LiDAR frame, labels (N,) uint32)."""
    rays = sensor_rays(LidarRays, cfg)
    t, pid = cast(scene, rays, cfg.max_range)
    _, hits = surface(scene, rays, t, pid)
    _, refl = shade(scene, hits)
    n = len(hits.dist)
    jitter = np.array([m.depth_jitter for m in scene.materials])[hits.material]
    r = hits.dist + rng.normal(0.0, cfg.range_noise, n) + jitter * np.abs(rng.normal(0.0, 1.0, n))
    outlier = rng.random(n) < cfg.outlier_fraction
    r = np.where(outlier, r + rng.normal(0.0, 1.0, n) * np.maximum(1.0, 0.15 * r), r)
    keep = (rng.random(n) >= cfg.dropout) & (hits.dist >= cfg.min_range) & (r > 0.5) & (r <= cfg.max_range)
    cos = np.abs((hits.normal * hits.dir).sum(axis=1))
    intensity = np.clip(refl * (0.75 + 0.25 * cos) + rng.normal(0.0, cfg.intensity_noise, n), 0.0, 1.0)
    xyz = hits.dir * r[:, None]  # the LiDAR frame is the world frame shifted to the sensor
    raw = np.where(outlier, OUTLIER, hits.label).astype(np.uint32)
    inst = np.where(outlier, 0, hits.instance).astype(np.uint32)
    points = np.concatenate([xyz, intensity[:, None]], axis=1).astype(np.float32)
    return points[keep], ((inst << np.uint32(16)) | raw)[keep]


def _sky(dirs: np.ndarray, light: Lighting) -> np.ndarray:
    s = np.clip(dirs[:, 2] / 0.45, 0.0, 1.0) ** 0.6
    return light.horizon * (1 - s)[:, None] + light.zenith * s[:, None]


def _render_camera(scene: Scene, cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Front camera: (image (H, W, 3) uint8, per-pixel raw label (H, W) uint32, 0 for sky)."""
    rays = sensor_rays(CameraRays, cfg)
    t, pid = cast(scene, rays, cfg.camera_max_range)
    idx, hits = surface(scene, rays, t, pid)
    albedo, _ = shade(scene, hits)
    light = scene.lighting
    lambert = np.clip(hits.normal @ light.sun, 0.0, None)
    radiance = albedo * (light.ambient * (0.8 + 0.2 * hits.normal[:, 2]) + light.diffuse * lambert)[:, None]
    fog = (1.0 - np.exp(-hits.dist / light.fog_distance))[:, None]
    rgb = _sky(rays.dirs, light)
    rgb[idx] = radiance * (1 - fog) + light.horizon * fog
    h, w = cfg.image_height, cfg.image_width
    img = (rgb * light.exposure * light.tint).reshape(h, w, 3) * 255.0 + rng.normal(0.0, cfg.image_noise, (h, w, 3))
    label_image = np.zeros(h * w, dtype=np.uint32)
    label_image[idx] = hits.label
    return np.clip(np.round(img), 0, 255).astype(np.uint8), label_image.reshape(h, w)


def render_scan(scene: Scene, cfg: SyntheticConfig, return_label_image: bool = False):
    """Render one scan: (points (N, 4) float32, labels (N,) uint32 [instance << 16 | raw], image (H, W, 3) uint8).

    With ``return_label_image`` a fourth array (H, W) uint32 gives each pixel's raw label (0 = sky),
    which is what a LiDAR point projecting to that pixel should carry unless occluded.
    Sensor noise is drawn from ``scene.noise_seed``, so rendering a scene twice gives identical arrays.
    """
    rng = np.random.default_rng(scene.noise_seed)
    points, labels = _render_lidar(scene, cfg, rng)
    image, label_image = _render_camera(scene, cfg, rng)
    if return_label_image:
        return points, labels, image, label_image
    return points, labels, image
