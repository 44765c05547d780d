"""The scene of one phantom image: anatomy, pose and lesions as canonical polygons.

A scene is cheap to sample (a few hundred random numbers, no pixels) and fully decides
where everything is; :mod:`.render` turns it into pixels and lesion masks at any size.
Patient-level anatomy (body habitus, lung and heart size) comes from the patient's own
stream, so follow-up images of one patient look alike, as real ones do.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from . import geometry as g
from .cohort import STREAM_PATIENT, STREAM_SCENE

# Image-left lung (the patient's right) in canonical coordinates: apex, lateral wall
# down to the costophrenic angle, the diaphragm dome back to the midline, medial border.
_LUNG_RIGHT = np.array(
    [
        (0.40, 0.13), (0.33, 0.14), (0.26, 0.19), (0.20, 0.28), (0.165, 0.40), (0.145, 0.53),
        (0.135, 0.65), (0.14, 0.76), (0.155, 0.83), (0.20, 0.79), (0.28, 0.745), (0.36, 0.72),
        (0.43, 0.715), (0.455, 0.67), (0.46, 0.50), (0.45, 0.36), (0.44, 0.22), (0.425, 0.15),
    ]
)  # fmt: skip
_BODY = np.array(
    [
        (0.40, -0.05), (0.60, -0.05), (0.62, 0.05), (0.74, 0.08), (0.90, 0.11), (0.97, 0.20),
        (0.965, 0.50), (0.95, 1.05), (0.05, 1.05), (0.035, 0.50), (0.03, 0.20), (0.10, 0.11),
        (0.26, 0.08), (0.38, 0.05),
    ]
)  # fmt: skip
_MEDIASTINUM = np.array(
    [
        (0.445, -0.05), (0.555, -0.05), (0.56, 0.22), (0.595, 0.27), (0.59, 0.33), (0.575, 0.40),
        (0.58, 0.75), (0.42, 0.75), (0.425, 0.40), (0.435, 0.22),
    ]
)  # fmt: skip

_RIB_T = np.linspace(0.0, 1.0, 9)
_CLAVICLE = np.array([(0.465, 0.155), (0.36, 0.13), (0.24, 0.115), (0.13, 0.12)])
VERTEBRAE = np.array(
    [[(0.47, v), (0.53, v), (0.53, v + 0.034), (0.47, v + 0.034)] for v in np.arange(-0.02, 1.05, 0.043)]
)
"""The vertebral bodies, canonical ``n x 4 x 2`` (the same for everyone)."""


@dataclasses.dataclass(frozen=True)
class Lesion:
    """One planted lesion, as canonical shapes.

    The drawn mask is ``include`` (union of polygons), intersected with the lung on
    ``side`` when ``clip_to_lung``, minus ``exclude``. Its box is that mask's tight
    bounding rectangle.

    Attributes:
        name: the finding (one of ``CLASSES``).
        side: 0 for the image-left lung, 1 for the image-right lung.
        include: polygons whose union is the shape.
        clip_to_lung: intersect with the lung field.
        exclude: polygons removed from the shape (the collapsed lung of a pneumothorax).
        contrast: attenuation added inside the mask at difficulty 0 (negative = darker).
        seed: seed of this lesion's own texture stream (so one lesion's pixels do not
            depend on the others).

    """

    name: str
    side: int
    include: tuple[np.ndarray, ...]
    clip_to_lung: bool = True
    exclude: tuple[np.ndarray, ...] = ()
    contrast: float = 0.25
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Scene:
    """Everything that decides where things are in one image.

    Attributes:
        findings: finding names present (sorted as in ``CLASSES``).
        pose: (scale, angle in degrees, dx, dy) of the film.
        body, mediastinum, trachea: canonical polygons.
        lungs: (image-left lung, image-right lung) polygons.
        heart: polygons whose union is the cardiac silhouette.
        hila: the two hilar points, where vessels start.
        ribs: ``n x k x 2``, one band polygon per rib (both sides).
        clavicles: ``2 x k x 2``, two open polylines.
        lesions: the planted lesions.

    """

    findings: tuple[str, ...]
    pose: tuple[float, float, float, float]
    body: np.ndarray
    mediastinum: np.ndarray
    trachea: np.ndarray
    lungs: tuple[np.ndarray, np.ndarray]
    heart: tuple[np.ndarray, ...]
    hila: np.ndarray
    ribs: np.ndarray
    clavicles: np.ndarray
    lesions: tuple[Lesion, ...]

    def matrix(self, size: int) -> np.ndarray:
        """Affine map from canonical coordinates to pixels of a ``size`` x ``size`` image."""
        return g.pose_matrix(size, *self.pose)


def _mirror(points: np.ndarray) -> np.ndarray:
    out = points.copy()
    out[:, 0] = 1.0 - out[:, 0]
    return out[::-1]


_LUNG_CONTROL = np.stack([_LUNG_RIGHT, _mirror(_LUNG_RIGHT)])
_SMOOTH = g.chaikin(np.eye(len(_LUNG_RIGHT)), 2)
"""Two passes of corner cutting as a matrix: smoothed outline = ``_SMOOTH @ control points``."""


def _lungs(prng: np.random.Generator, rng: np.random.Generator, lift: tuple[float, float]) -> tuple:
    """Both lung fields: patient habitus, this image's inspiration, volume loss per side."""
    sx, sy = prng.uniform(0.93, 1.06), prng.uniform(0.93, 1.06)
    breath = rng.uniform(0.97, 1.03)
    p = g.scale_about(_LUNG_CONTROL, (0.5, 0.13), sx, sy * breath)
    p = p + rng.normal(0.0, 0.004, p.shape)
    v = p[..., 1]
    v[1] += 0.015 * np.clip((v[1] - 0.5) / 0.3, 0.0, 1.0)  # the left hemidiaphragm sits lower
    # Volume loss (atelectasis): the base of that side rises.
    v -= np.array(lift)[:, None] * np.clip((v - 0.45) / 0.35, 0.0, 1.0)
    smooth = _SMOOTH @ p  # corner cutting is linear in the control points
    return smooth[0], smooth[1]


def _heart(prng: np.random.Generator, rng: np.random.Generator, enlarge: float) -> tuple[np.ndarray, ...]:
    size = prng.uniform(0.93, 1.07) * rng.uniform(0.98, 1.02)
    cx = 0.545 + prng.uniform(-0.012, 0.012)
    angle = prng.uniform(-32.0, -18.0)
    # Normal cardiothoracic ratio ~0.38-0.48 (mean ~0.42), measured on the canonical shapes.
    ventricles = g.ellipse(cx, 0.61, 0.155 * size, 0.112 * size, angle)
    atrium = g.ellipse(0.452, 0.62, 0.056 * size, 0.088 * size, 0.0)
    # Cardiomegaly: the silhouette widens (mostly to the patient's left) and lengthens,
    # about the cardiac base, so the cardiothoracic ratio rises past 0.5.
    base = (0.49, 0.55)
    sy = 1.0 + 0.6 * (enlarge - 1.0)
    return (
        g.scale_about(ventricles, base, enlarge, sy),
        g.scale_about(atrium, base, 1.0 + 0.7 * (enlarge - 1.0), sy),
    )


def _ribs(prng: np.random.Generator, lungs: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Posterior ribs, ``20 x k x 2`` band polygons: from the spine outwards, turning down."""
    top = min(lungs[0][:, 1].min(), lungs[1][:, 1].min())
    spacing = prng.uniform(0.058, 0.066)
    droop = prng.uniform(0.10, 0.14)
    k = np.arange(10)[:, None]
    u = np.broadcast_to(0.455 - 0.34 * _RIB_T, (10, len(_RIB_T)))
    # Lower ribs run more steeply, as the chest widens.
    v = top - 0.03 + k * spacing - 0.02 * np.sin(np.pi * _RIB_T) + (droop + 0.004 * k) * _RIB_T**3
    centre = np.stack([u, v], axis=-1)
    # Each rib is a band of constant width around its centre line: a polygon that one
    # fillPoly call draws far faster than thick polylines.
    tangent = np.gradient(centre, axis=1)
    normal = np.stack([-tangent[..., 1], tangent[..., 0]], axis=-1)
    normal *= prng.uniform(0.006, 0.008) / np.linalg.norm(normal, axis=-1, keepdims=True)
    right = np.concatenate([centre + normal, (centre - normal)[:, ::-1]], axis=1)
    left = right * (-1.0, 1.0) + (1.0, 0.0)
    return np.concatenate([right, left])


@dataclasses.dataclass(frozen=True)
class _Thorax:
    """What lesions are placed in: both lung outlines and the heart they must avoid."""

    lungs: tuple[np.ndarray, np.ndarray]
    heart: tuple[np.ndarray, ...]


def _point_in(
    rng: np.random.Generator, thorax: _Thorax, side: int, vlo: float, vhi: float, margin: float
) -> tuple[float, float]:
    """A random point of lung ``side``, between fractions vlo..vhi of its height.

    The point lies at least ``margin`` inside the lung outline and outside the heart, so
    a lesion centred there is visible in the aerated lung (the heart shadow hides the
    lung behind it, and lung-bound lesions are clipped to the visible lung).
    """
    polygon = thorax.lungs[side]
    (u0, v0), (u1, v1) = polygon.min(0), polygon.max(0)
    contour = polygon.astype(np.float32).reshape(-1, 1, 2)
    hearts = [h.astype(np.float32).reshape(-1, 1, 2) for h in thorax.heart]
    for _ in range(80):
        u = rng.uniform(u0, u1)
        v = rng.uniform(v0 + vlo * (v1 - v0), v0 + vhi * (v1 - v0))
        if cv2.pointPolygonTest(contour, (u, v), True) >= margin and all(
            cv2.pointPolygonTest(h, (u, v), True) < -margin for h in hearts
        ):
            return float(u), float(v)
    # Practically unreachable: a point at mid-height, a third of the way in from the
    # lateral wall, is inside the lung and lateral to the heart.
    lateral = u0 if side == 0 else u1
    return float(lateral + (0.5 - lateral) / 3.0), float((v0 + v1) / 2.0)


def _nodule(rng: np.random.Generator, thorax: _Thorax) -> Lesion:
    side = int(rng.integers(2))
    u, v = _point_in(rng, thorax, side, 0.1, 0.85, 0.02)
    shape = g.blob(u, v, rng.uniform(0.02, 0.03), rng.uniform(0.0, 0.06, 2), rng.uniform(0, 6.3, 2), 28)
    return Lesion("Nodule", side, (shape,), clip_to_lung=False, contrast=0.36)


def _mass(rng: np.random.Generator, thorax: _Thorax) -> Lesion:
    side = int(rng.integers(2))
    u, v = _point_in(rng, thorax, side, 0.15, 0.8, 0.05)
    shape = g.blob(u, v, rng.uniform(0.05, 0.08), rng.uniform(0.0, 0.09, 3), rng.uniform(0, 6.3, 3), 48)
    return Lesion("Mass", side, (shape,), clip_to_lung=False, contrast=0.30)


def _effusion(rng: np.random.Generator, lungs: tuple, side: int) -> Lesion:
    lung = lungs[side]
    lateral_u = lung[:, 0].min() if side == 0 else lung[:, 0].max()
    medial_u = 0.5
    lowest = lung[:, 1].max()
    level = lowest - rng.uniform(0.13, 0.24)  # where the fluid climbs the lateral wall
    rise = rng.uniform(0.03, 0.07)  # the meniscus falls towards the midline
    u = np.linspace(lateral_u - 0.05 * (1 - 2 * side), medial_u, 24)
    s = np.abs(u - lateral_u) / abs(medial_u - lateral_u)
    v = level + rise * np.sqrt(np.clip(s, 0.0, 1.0))
    region = np.concatenate([np.stack([u, v], 1), [(medial_u, 1.2), (u[0], 1.2)]])
    return Lesion("Effusion", side, (region,), contrast=0.36)


def _pneumothorax(rng: np.random.Generator, lungs: tuple) -> Lesion:
    side = int(rng.integers(2))
    lung = lungs[side]
    apex_v = lung[:, 1].min()
    height = lung[:, 1].max() - apex_v
    extent = rng.uniform(0.35, 0.7) * height  # how far down the air reaches
    depth = rng.uniform(0.12, 0.3)  # how much the lung has fallen away from the wall
    hilum = np.array([0.40 if side == 0 else 0.60, apex_v + 0.45 * height])
    w = np.clip(1.0 - (lung[:, 1] - apex_v) / extent, 0.0, 1.0) ** 0.8
    collapsed = hilum + (lung - hilum) * (1.0 - depth * w)[:, None]
    return Lesion("Pneumothorax", side, (lung,), exclude=(collapsed,), contrast=-0.12)


def _infiltration(rng: np.random.Generator, thorax: _Thorax) -> Lesion:
    side = int(rng.integers(2))
    u, v = _point_in(rng, thorax, side, 0.2, 0.9, 0.03)
    parts = [g.ellipse(u, v, rng.uniform(0.045, 0.07), rng.uniform(0.045, 0.08), rng.uniform(0, 180), 24)]
    for _ in range(int(rng.integers(1, 3))):
        du, dv = rng.normal(0.0, 0.035, 2)
        parts.append(g.ellipse(u + du, v + dv, rng.uniform(0.03, 0.055), rng.uniform(0.03, 0.055), 0.0, 20))
    return Lesion("Infiltration", side, tuple(parts), contrast=0.30)


def _pneumonia(rng: np.random.Generator, thorax: _Thorax) -> Lesion:
    side = int(rng.integers(2))
    upper = rng.random() < 0.35
    vlo, vhi = (0.1, 0.45) if upper else (0.45, 0.85)
    u, v = _point_in(rng, thorax, side, vlo, vhi, 0.04)
    lobe = g.ellipse(u, v, rng.uniform(0.08, 0.11), rng.uniform(0.07, 0.10), rng.uniform(-20, 20), 40)
    # A fissure bounds lobar consolidation with one straight edge.
    tilt = np.deg2rad(rng.uniform(-15, 15))
    normal = np.array([np.sin(tilt), -np.cos(tilt) if not upper else np.cos(tilt)])
    edge = np.array([u, v]) + normal * rng.uniform(0.02, 0.045)
    along = np.array([normal[1], -normal[0]])
    half_plane = np.array([edge + along, edge - along, edge - along - normal, edge + along - normal])
    parts = (_clip_convex(lobe, half_plane),)
    return Lesion("Pneumonia", side, parts, contrast=0.34)


def _clip_convex(polygon: np.ndarray, convex: np.ndarray) -> np.ndarray:
    """Intersection of a polygon with a convex polygon (both canonical)."""
    _, inter = cv2.intersectConvexConvex(polygon.astype(np.float32), convex.astype(np.float32))
    return polygon if inter is None else inter.reshape(-1, 2).astype(np.float64)


def _atelectasis(rng: np.random.Generator, thorax: _Thorax, side: int) -> Lesion:
    u, v = _point_in(rng, thorax, side, 0.5, 0.9, 0.03)
    length = rng.uniform(0.10, 0.17)
    angle = rng.uniform(-25.0, 25.0)
    if rng.random() < 0.6:  # plate-like band
        half = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)]) * (length / 2, rng.uniform(0.009, 0.016))
    else:  # wedge narrowing towards the hilum
        tip = 1.0 if side == 0 else -1.0
        half = np.array([(-tip, -1.0), (tip, -0.15), (tip, 0.15), (-tip, 1.0)]) * (length / 2, 0.035)
    band = g.rotate(half, angle) + (u, v)
    return Lesion("Atelectasis", side, (band,), contrast=0.30)


def sample_scene(
    index: int,
    patient: int,
    seed: int,
    findings: tuple[str, ...],
    difficulty: float,
) -> Scene:
    """Sample the scene of image ``index`` (cheap: no pixels).

    Args:
        index: the image's number in the data set (its own random stream).
        patient: its patient number (the stream of the patient's habitus).
        seed: the data set's seed.
        findings: the findings this image shows.
        difficulty: 0..1; higher makes cardiomegaly subtler (contrast is the renderer's).

    Returns:
        The :class:`Scene`.

    """
    rng = np.random.default_rng([seed, STREAM_SCENE, index])
    prng = np.random.default_rng([seed, STREAM_PATIENT, patient])
    pose = (
        rng.uniform(0.9, 1.06),
        rng.uniform(-5.0, 5.0),
        rng.uniform(-0.04, 0.04),
        rng.uniform(-0.04, 0.03),
    )

    # Findings that change anatomy are decided first: volume loss moves the lung base
    # the other lesions are placed in, and cardiomegaly enlarges the heart.
    atelectasis_sides = []
    lift = [0.0, 0.0]
    if "Atelectasis" in findings:
        atelectasis_sides = [int(rng.integers(2))]
        if rng.random() < 0.2:
            atelectasis_sides.append(1 - atelectasis_sides[0])
        for s in atelectasis_sides:
            lift[s] = rng.uniform(0.02, 0.045) * (1.0 - 0.5 * difficulty)
    enlarge = 1.0
    if "Cardiomegaly" in findings:
        enlarge = 1.0 + (0.42 - 0.36 * difficulty) * rng.uniform(0.8, 1.2)

    lungs = _lungs(prng, rng, (lift[0], lift[1]))
    heart = _heart(prng, rng, enlarge)
    ribs = _ribs(prng, lungs)
    clavicle = _CLAVICLE + (0.0, prng.uniform(-0.015, 0.015))
    clavicles = np.stack([clavicle, _mirror(clavicle)[::-1]])
    trachea = np.array([(0.485, -0.05), (0.515, -0.05), (0.515, 0.30), (0.485, 0.30)])
    hila = np.array([(0.41, 0.42), (0.59, 0.42)]) + rng.normal(0.0, 0.006, (2, 2))

    thorax = _Thorax(lungs, heart)
    lesions: list[Lesion] = []
    for name in findings:
        if name == "Atelectasis":
            lesions += [_atelectasis(rng, thorax, s) for s in atelectasis_sides]
        elif name == "Cardiomegaly":
            lesions.append(Lesion("Cardiomegaly", 1, heart, clip_to_lung=False, contrast=0.0))
        elif name == "Effusion":
            sides = [int(rng.integers(2))]
            if rng.random() < 0.25:
                sides.append(1 - sides[0])
            lesions += [_effusion(rng, lungs, s) for s in sides]
        elif name == "Nodule":
            lesions += [_nodule(rng, thorax) for _ in range(int(rng.choice([1, 1, 1, 2, 2, 3])))]
        elif name == "Mass":
            lesions.append(_mass(rng, thorax))
        elif name == "Pneumothorax":
            lesions.append(_pneumothorax(rng, lungs))
        elif name == "Infiltration":
            lesions += [_infiltration(rng, thorax) for _ in range(int(rng.choice([1, 1, 2])))]
        elif name == "Pneumonia":
            lesions += [_pneumonia(rng, thorax) for _ in range(int(rng.choice([1, 1, 1, 2])))]
        else:  # pragma: no cover - findings come from CLASSES
            raise ValueError(f"unknown finding {name!r}")
    seeds = rng.integers(0, 2**63, size=len(lesions))
    lesions = [dataclasses.replace(lesion, seed=int(s)) for lesion, s in zip(lesions, seeds, strict=True)]
    return Scene(
        findings=tuple(findings),
        pose=pose,
        body=_BODY,
        mediastinum=_MEDIASTINUM,
        trachea=trachea,
        lungs=lungs,
        heart=heart,
        hila=hila,
        ribs=ribs,
        clavicles=clavicles,
        lesions=tuple(lesions),
    )
