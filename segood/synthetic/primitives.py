"""Primitives: exact ray intersection for rays from one origin along unit directions."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from segood.synthetic.config import EPS

class Tag(NamedTuple):
    """What a primitive is: raw label, instance id (0 for stuff) and material index."""

    label: int
    instance: int
    material: int


@dataclass(eq=False, kw_only=True)
class Primitive:
    """Base class: ``intersect`` gives the entry distance (inf = miss), ``normal`` the outward normal."""

    tag: Tag
    aabb: np.ndarray = field(init=False)  # (2, 3) world bounding box, used to cull rays

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def normal(self, p: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@dataclass(eq=False, kw_only=True)
class Convex(Primitive):
    """Convex polyhedron {x : normals @ x <= offsets} (boxes, wedges, tetrahedra, pyramids)."""

    normals: np.ndarray  # (k, 3) unit outward normals
    offsets: np.ndarray  # (k,)
    vertices: np.ndarray  # (m, 3), only for the bounding box

    def __post_init__(self) -> None:
        self.aabb = np.stack([self.vertices.min(0), self.vertices.max(0)])

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        num = self.offsets - self.normals @ o
        den = d @ self.normals.T
        with np.errstate(divide="ignore", invalid="ignore"):
            tt = num / den
        t_in = np.where(den < 0, tt, -np.inf).max(axis=1)
        t_out = np.where(den > 0, tt, np.inf).min(axis=1)
        outside_slab = ((den == 0) & (num < 0)).any(axis=1)
        hit = (t_in <= t_out) & (t_in > EPS) & ~outside_slab
        return np.where(hit, t_in, np.inf)

    def normal(self, p: np.ndarray) -> np.ndarray:
        return self.normals[np.argmax(p @ self.normals.T - self.offsets, axis=1)]


@dataclass(eq=False, kw_only=True)
class Ellipsoid(Primitive):
    """Ellipsoid with centre, rotation (columns = local axes) and semi-axes ``radii``."""

    centre: np.ndarray
    rot: np.ndarray
    radii: np.ndarray

    def __post_init__(self) -> None:
        ext = np.sqrt((self.rot**2) @ self.radii**2)
        self.aabb = np.stack([self.centre - ext, self.centre + ext])

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        ol = (self.rot.T @ (o - self.centre)) / self.radii
        dl = (d @ self.rot) / self.radii
        a = (dl * dl).sum(axis=1)
        b = dl @ ol
        c = ol @ ol - 1.0
        disc = b * b - a * c
        with np.errstate(invalid="ignore"):
            t = (-b - np.sqrt(disc)) / a
        return np.where((disc >= 0) & (t > EPS), t, np.inf)

    def normal(self, p: np.ndarray) -> np.ndarray:
        local = (p - self.centre) @ self.rot / self.radii**2
        n = local @ self.rot.T
        return n / np.linalg.norm(n, axis=1, keepdims=True)


@dataclass(eq=False, kw_only=True)
class Cylinder(Primitive):
    """Capped cylinder: centre, rotation whose third column is the axis, radius, half height."""

    centre: np.ndarray
    rot: np.ndarray
    radius: float
    half_height: float

    def __post_init__(self) -> None:
        axis = self.rot[:, 2]
        ext = np.abs(axis) * self.half_height + self.radius * np.sqrt(np.clip(1.0 - axis**2, 0.0, 1.0))
        self.aabb = np.stack([self.centre - ext, self.centre + ext])

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        ol = self.rot.T @ (o - self.centre)
        dl = d @ self.rot
        a = dl[:, 0] ** 2 + dl[:, 1] ** 2
        b = ol[0] * dl[:, 0] + ol[1] * dl[:, 1]
        c = ol[0] ** 2 + ol[1] ** 2 - self.radius**2
        disc = b * b - a * c
        with np.errstate(invalid="ignore", divide="ignore"):
            t_side = (-b - np.sqrt(disc)) / a
            side_ok = (disc >= 0) & (a > 1e-12) & (t_side > EPS) & (np.abs(ol[2] + t_side * dl[:, 2]) <= self.half_height)
            best = np.where(side_ok, t_side, np.inf)
            for h in (-self.half_height, self.half_height):
                t_cap = (h - ol[2]) / dl[:, 2]
                x, y = ol[0] + t_cap * dl[:, 0], ol[1] + t_cap * dl[:, 1]
                cap_ok = (t_cap > EPS) & (x * x + y * y <= self.radius**2)
                best = np.where(cap_ok & (t_cap < best), t_cap, best)
        return best

    def normal(self, p: np.ndarray) -> np.ndarray:
        local = (p - self.centre) @ self.rot
        rho = np.hypot(local[:, 0], local[:, 1])
        on_cap = np.abs(np.abs(local[:, 2]) - self.half_height) < np.abs(rho - self.radius)
        n = np.zeros_like(local)
        safe = np.maximum(rho, 1e-12)
        n[:, 0], n[:, 1] = local[:, 0] / safe, local[:, 1] / safe
        n[on_cap] = 0.0
        n[on_cap, 2] = np.sign(local[on_cap, 2])
        return n @ self.rot.T


@dataclass(eq=False, kw_only=True)
class SphereCluster(Primitive):
    """Union of spheres intersected together (tree crowns, hedges, rings, blobs): one cull per cluster."""

    centres: np.ndarray  # (k, 3)
    radii: np.ndarray  # (k,)

    def __post_init__(self) -> None:
        r = self.radii[:, None]
        self.aabb = np.stack([(self.centres - r).min(0), (self.centres + r).max(0)])

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        oc = o - self.centres  # (k, 3)
        b = d @ oc.T  # (n, k)
        c = (oc * oc).sum(axis=1) - self.radii**2
        disc = b * b - c
        with np.errstate(invalid="ignore"):
            t = -b - np.sqrt(disc)
        t = np.where((disc >= 0) & (t > EPS), t, np.inf)
        return t.min(axis=1)

    def normal(self, p: np.ndarray) -> np.ndarray:
        dist = np.linalg.norm(p[:, None, :] - self.centres[None], axis=2)  # (n, k)
        k = np.argmin(np.abs(dist - self.radii[None]), axis=1)
        n = p - self.centres[k]
        return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def make_box(centre, size, rot: np.ndarray, tag: Tag) -> Convex:
    """Oriented box: ``size`` full extents along the columns of ``rot``."""
    c, half = np.asarray(centre, float), 0.5 * np.asarray(size, float)
    axes = rot.T  # rows = local axes in world
    normals = np.concatenate([axes, -axes])
    offsets = np.concatenate([axes @ c + half, -(axes @ c) + half])
    signs = np.array(list(itertools.product((-1, 1), repeat=3)), dtype=float)
    vertices = c + (signs * half) @ axes
    return Convex(tag=tag, normals=normals, offsets=offsets, vertices=vertices)


def make_hull(vertices: np.ndarray, tag: Tag) -> Convex:
    """Convex hull of a few points (<= 8) as half-spaces: every vertex triple whose plane has all
    points on one side is a face plane (duplicates from coplanar triples are merged)."""
    v = np.asarray(vertices, float)
    tri = np.array(list(itertools.combinations(range(len(v)), 3)))
    a, b, c = v[tri[:, 0]], v[tri[:, 1]], v[tri[:, 2]]
    n = np.cross(b - a, c - a)
    norm = np.linalg.norm(n, axis=1)
    ok = norm > 1e-9
    n, a = n[ok] / norm[ok, None], a[ok]
    h = (n * a).sum(axis=1)
    side = v @ n.T - h  # (m, T)
    above, below = side.max(axis=0) > 1e-7, side.min(axis=0) < -1e-7
    keep = ~(above & below)
    sign = np.where(above, -1.0, 1.0)[keep]
    planes = np.unique(np.round(np.c_[n[keep] * sign[:, None], h[keep] * sign], 9), axis=0)
    return Convex(tag=tag, normals=planes[:, :3], offsets=planes[:, 3], vertices=v)


def frame_from_axis(axis) -> np.ndarray:
    """A rotation matrix whose third column is the unit vector ``axis``."""
    a = np.asarray(axis, float)
    a = a / np.linalg.norm(a)
    helper = np.array([1.0, 0.0, 0.0]) if abs(a[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(helper, a)
    u /= np.linalg.norm(u)
    return np.stack([u, np.cross(a, u), a], axis=1)


def make_segment(p0, p1, radius: float, tag: Tag) -> Cylinder:
    """Capped cylinder between two points (limbs, poles, frames)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    axis = p1 - p0
    return Cylinder(tag=tag, centre=(p0 + p1) / 2, rot=frame_from_axis(axis), radius=radius,
                    half_height=float(np.linalg.norm(axis) / 2))
