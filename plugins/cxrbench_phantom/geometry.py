"""Polygon helpers: shapes are built in canonical [0, 1] coordinates, then posed and drawn.

Every shape of a phantom (body, lungs, heart, lesions) is a closed polygon in canonical
coordinates (u to the image's right, v downwards, the unit square is the whole film).
The image's pose (shift, rotation, scale) is one affine map applied to the points just
before drawing, so a lesion's drawn mask, and hence its box, is exactly where the pixels
are.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

SHIFT = 4
"""Sub-pixel bits for ``cv2.fillPoly``/``polylines``: smooth shapes at any image size."""
_ONE = 1 << SHIFT


@functools.lru_cache(maxsize=32)
def _unit_circle(n: int) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    out = np.stack([np.cos(t), np.sin(t)], axis=1)
    out.flags.writeable = False
    return out


def ellipse(cx: float, cy: float, ax: float, ay: float, angle_deg: float = 0.0, n: int = 40) -> np.ndarray:
    """Points of an ellipse outline.

    Args:
        cx: centre, canonical u.
        cy: centre, canonical v.
        ax: semi-axis along the rotated u direction.
        ay: semi-axis along the rotated v direction.
        angle_deg: rotation, degrees, clockwise on screen (v points down).
        n: number of points.

    Returns:
        ``n x 2`` float array.

    """
    return rotate(_unit_circle(n) * (ax, ay), angle_deg) + (cx, cy)


def blob(cx: float, cy: float, radius: float, harmonics: np.ndarray, phases: np.ndarray, n: int = 48) -> np.ndarray:
    """A round shape whose radius wobbles: ``r(t) = radius * (1 + sum a_k cos(k t + p_k))``.

    Args:
        cx: centre u.
        cy: centre v.
        radius: mean radius.
        harmonics: amplitudes ``a_k`` for k = 2, 3, ... (small: 0.05 is lobulated).
        phases: phases ``p_k``, same length as ``harmonics``.
        n: number of points.

    Returns:
        ``n x 2`` float array.

    """
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    k = np.arange(2, 2 + len(harmonics))[:, None]
    r = radius * (1.0 + (np.asarray(harmonics)[:, None] * np.cos(k * t + np.asarray(phases)[:, None])).sum(0))
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def rotate(points: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rotate points about the origin (clockwise on screen for positive angles)."""
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a), np.sin(a)
    return points @ np.array([[c, s], [-s, c]])


def scale_about(points: np.ndarray, centre: tuple[float, float], sx: float, sy: float) -> np.ndarray:
    """Scale points about ``centre`` by ``sx`` along u and ``sy`` along v."""
    return (points - centre) * (sx, sy) + centre


def chaikin(points: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Smooth a closed polygon (``n x d`` rows) by corner cutting; each pass doubles the rows.

    The operation is linear, so ``chaikin(np.eye(n))`` is the matrix that smooths any
    ``n``-point polygon in one product.
    """
    p = np.asarray(points, dtype=np.float64)
    for _ in range(iterations):
        q = np.roll(p, -1, axis=0)
        p = np.stack([0.75 * p + 0.25 * q, 0.25 * p + 0.75 * q], axis=1).reshape(-1, p.shape[1])
    return p


def pose_matrix(size: int, scale: float, angle_deg: float, dx: float, dy: float) -> np.ndarray:
    """The 2 x 3 affine map from canonical coordinates to pixel coordinates.

    The film is scaled and rotated about its centre, then shifted by (dx, dy) in
    canonical units; the unit square maps onto ``size x size`` pixels.
    """
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a) * scale, np.sin(a) * scale
    linear = np.array([[c, -s], [s, c]]) * size
    centre = np.array([0.5, 0.5])
    offset = (centre + (dx, dy)) * size - linear @ centre
    return np.concatenate([linear, offset[:, None]], axis=1)


def to_pixels(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Canonical points (any ``... x 2`` array) -> fixed-point int32 pixel coordinates.

    The result is for cv2 drawing with ``shift=SHIFT``. Pixel centres sit at integer
    coordinates in OpenCV drawing, so the continuous position ``x`` (0 at the left edge
    of the film) is drawn at ``x - 0.5``.
    """
    px = points @ (matrix[:, :2].T * _ONE) + (matrix[:, 2] - 0.5) * _ONE
    return np.rint(px).astype(np.int32)


def fill(canvas: np.ndarray, polygons: list[np.ndarray], value: float, disjoint: bool = False) -> np.ndarray:
    """Fill fixed-point polygons (from :func:`to_pixels`) into ``canvas`` in place: their union.

    Args:
        canvas: image to draw into.
        polygons: ``k x 2`` int32 arrays (or one ``n x k x 2`` array).
        value: the fill value.
        disjoint: the polygons never overlap, so one cv2 call can draw them all.

    """
    if disjoint:
        cv2.fillPoly(canvas, list(polygons), value, lineType=cv2.LINE_8, shift=SHIFT)
        return canvas
    # One fillPoly call per polygon: a single call with several overlapping polygons
    # leaves their overlap empty (even-odd rule), which would punch holes in unions.
    for p in polygons:
        cv2.fillPoly(canvas, [p], value, lineType=cv2.LINE_8, shift=SHIFT)
    return canvas


def lines(canvas: np.ndarray, polylines: list[np.ndarray], value: float, thickness: int) -> np.ndarray:
    """Draw open fixed-point polylines (``k x 2`` int32 arrays) into ``canvas`` in place."""
    cv2.polylines(
        canvas,
        list(polylines),
        False,
        value,
        thickness=max(1, int(thickness)),
        lineType=cv2.LINE_8,
        shift=SHIFT,
    )
    return canvas


def mask_of(size: int, polygons: list[np.ndarray], matrix: np.ndarray) -> np.ndarray:
    """A ``size x size`` uint8 mask (0/1) of canonical polygons drawn under ``matrix``."""
    mask = np.zeros((size, size), np.uint8)
    return fill(mask, [to_pixels(p, matrix) for p in polygons], 1)
