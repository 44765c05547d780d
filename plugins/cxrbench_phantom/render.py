"""Pixels and lesion masks of a phantom scene.

The image is an attenuation map (bright = dense), built in float32 at the output size:
painted anatomy (body, mediastinum, lungs, heart), additive bones and lung markings, one
anatomical blur, then each lesion added inside its own region of interest, then
low-frequency texture, quantum noise and a random global intensity transform. Masks are
drawn from the same posed polygons the pixels come from, so a box is exact.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from . import geometry as g
from .scene import VERTEBRAE, Lesion, Scene

NOISE_SIGMA = 0.022
"""Standard deviation of the per-pixel noise, in attenuation units (lung ~0.13, heart ~0.6)."""


def contrast_scale(difficulty: float) -> float:
    """Multiplier of every lesion's contrast: 1.8 at difficulty 0, ~1.1 at 0.3, noise level at 1.

    At 1 a nodule adds about 0.04 to the attenuation, barely more than the pixel noise
    (:data:`NOISE_SIGMA`) and well inside the texture and exposure variation.
    """
    return 0.12 + 1.7 * (1.0 - difficulty) ** 1.5


def _sigma(size: int, fraction: float) -> float:
    return max(0.3, fraction * size)


@functools.lru_cache(maxsize=8)
def _vignette(size: int) -> np.ndarray:
    """Thinner soft tissue towards the film's sides: shared by every image of a size."""
    x = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    profile = 1.0 - 0.9 * (2.0 * x) ** 4
    return np.broadcast_to(profile[None, :], (size, size))


def lung_masks(scene: Scene, size: int, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 0/1 masks of the two visible lung fields (the heart shadow excluded)."""
    heart = 1 - g.mask_of(size, list(scene.heart), matrix)
    return g.mask_of(size, [scene.lungs[0]], matrix) & heart, g.mask_of(size, [scene.lungs[1]], matrix) & heart


def lesion_mask(lesion: Lesion, size: int, matrix: np.ndarray, lungs: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The drawn shape of one lesion: uint8 0/1, never empty.

    Args:
        lesion: the lesion.
        size: image size in pixels.
        matrix: the scene's pose matrix for ``size``.
        lungs: the scene's lung masks (:func:`lung_masks`).

    """
    mask = g.mask_of(size, list(lesion.include), matrix)
    if lesion.clip_to_lung:
        mask &= lungs[lesion.side]
    if lesion.exclude:
        mask &= 1 - g.mask_of(size, list(lesion.exclude), matrix)
    if not mask.any():
        # A shape thinner than a pixel at a tiny image size: keep the pixel under its
        # first vertex, so a labelled finding always has a drawn, boxed lesion.
        x, y = g.to_pixels(lesion.include[0][:1], matrix)[0] >> g.SHIFT
        mask[np.clip(y, 0, size - 1), np.clip(x, 0, size - 1)] = 1
    return mask


def lesion_masks(scene: Scene, size: int) -> list[np.ndarray]:
    """Masks of every lesion of ``scene``, in ``scene.lesions`` order."""
    matrix = scene.matrix(size)
    lungs = lung_masks(scene, size, matrix)
    return [lesion_mask(lesion, size, matrix, lungs) for lesion in scene.lesions]


def boxes(scene: Scene, size: int) -> list[tuple[str, int, int, int, int]]:
    """``(finding, x, y, w, h)`` of every lesion: the tight bounding rectangle of its mask."""
    return [
        (lesion.name, *cv2.boundingRect(mask))
        for lesion, mask in zip(scene.lesions, lesion_masks(scene, size), strict=True)
    ]


def _vessels(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Branching lung markings radiating from the hila: ``n x 5 x 2`` canonical polylines."""
    n = 16
    # A fan of directions towards each lung's periphery (away from the midline).
    fan = np.linspace(-80.0, 80.0, n) + rng.normal(0.0, 6.0, (2, n))
    angles = np.deg2rad(np.stack([180.0 - fan[0], fan[1]]))  # image-left lung points left
    lengths = rng.uniform(0.12, 0.28, (2, n, 1, 1))
    steps = np.linspace(0.0, 1.0, 5)[None, None, :, None]
    direction = np.stack([np.cos(angles), np.sin(angles)], axis=-1)[:, :, None, :]
    wiggle = rng.normal(0.0, 0.012, (2, n, 5, 2)) * steps
    pts = scene.hila[:, None, None, :] + direction * lengths * steps + wiggle
    return pts.reshape(2 * n, 5, 2)


@functools.lru_cache(maxsize=8)
def _smooth_basis(size: int, knots: int = 5) -> np.ndarray:
    """``size x knots`` smooth interpolation weights: a low-frequency field is ``W C W^T``."""
    x = (np.arange(size) + 0.5) / size
    centres = np.linspace(0.0, 1.0, knots)
    w = np.exp(-0.5 * ((x[:, None] - centres[None, :]) / (0.8 / (knots - 1))) ** 2)
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


def _noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Zero-mean float32 noise with standard deviation ``sigma``.

    The sum of two uniform bytes (a triangular distribution) looks like quantum mottle
    and is several times cheaper than Gaussian sampling; the raw PCG64 output is read
    as little-endian bytes, so it is the same on every machine.
    """
    raw = rng.bit_generator.random_raw((2 * size * size + 7) // 8).astype("<u8", copy=False)
    b = raw.view(np.uint8)[: 2 * size * size].reshape(2, size, size)
    c = sigma / np.sqrt(2.0 * (256.0**2 - 1.0) / 12.0)
    return cv2.addWeighted(b[0], c, b[1], c, -255.0 * c, dtype=cv2.CV_32F)


def _lesion_layer(
    lesion: Lesion, mask: np.ndarray, size: int, k: float, rng: np.random.Generator
) -> tuple[slice, slice, np.ndarray] | None:
    """The attenuation a lesion adds, inside a padded region around its mask."""
    if lesion.name == "Cardiomegaly":
        return None  # drawn as the (enlarged) heart itself
    blur = {"Nodule": 0.004, "Mass": 0.005, "Atelectasis": 0.004, "Pneumonia": 0.007}.get(lesion.name, 0.009)
    sigma = _sigma(size, blur)
    pad = int(3 * sigma) + 2
    x, y, w, h = cv2.boundingRect(mask)
    ys = slice(max(0, y - pad), min(size, y + h + pad))
    xs = slice(max(0, x - pad), min(size, x + w + pad))
    m = mask[ys, xs].astype(np.float32)
    amp = lesion.contrast * k
    if lesion.name == "Infiltration":
        # Patchy, reticular haze: blotches of low-resolution noise, thresholded softly.
        cells = max(2, int(m.shape[0] / (0.02 * size))), max(2, int(m.shape[1] / (0.02 * size)))
        noise = cv2.resize(rng.random(cells, dtype=np.float32), (m.shape[1], m.shape[0]))
        m *= 0.25 + 0.75 * np.clip((noise - 0.35) * 2.5, 0.0, 1.0)
    elif lesion.name == "Effusion":
        # Denser towards the base, where the fluid is deepest.
        rows = np.linspace(0.0, 1.0, m.shape[0], dtype=np.float32)[:, None]
        m *= 0.7 + 0.3 * rows
    elif lesion.name == "Mass":
        m *= 0.85 + 0.15 * cv2.resize(rng.random((3, 3), dtype=np.float32), (m.shape[1], m.shape[0]))
    elif lesion.name == "Pneumonia":
        # Air bronchograms: dark branching tubes through the consolidation.
        tubes = np.zeros_like(m)
        cy, cx = m.shape[0] / 2, m.shape[1] / 2
        for _ in range(3):
            a = rng.uniform(0, 2 * np.pi)
            r = rng.uniform(0.3, 0.5) * min(m.shape)
            p0 = (int(cx - r * np.cos(a)), int(cy - r * np.sin(a)))
            p1 = (int(cx + r * np.cos(a)), int(cy + r * np.sin(a)))
            cv2.line(tubes, p0, p1, 1.0, max(1, round(0.006 * size)))
        m *= 1.0 - 0.5 * tubes
    layer = cv2.GaussianBlur(m, (0, 0), sigma) * amp
    return ys, xs, layer


def render(scene: Scene, size: int, difficulty: float, rng: np.random.Generator) -> np.ndarray:
    """Render ``scene`` as a ``size x size`` uint8 radiograph.

    Args:
        scene: the scene (where everything is).
        size: output size in pixels.
        difficulty: 0 = conspicuous lesions, 1 = lesion contrast near the noise level.
        rng: the image's pixel stream (noise, textures, intensity transform).

    Returns:
        ``size x size`` uint8 array.

    """
    matrix = scene.matrix(size)
    scale = scene.pose[0] * size

    def px(points: np.ndarray) -> np.ndarray:
        return g.to_pixels(points, matrix)

    lungs = lung_masks(scene, size, matrix)
    masks = [lesion_mask(lesion, size, matrix, lungs) for lesion in scene.lesions]

    # Painted anatomy: each layer covers the ones before it.
    img = np.full((size, size), 0.03, np.float32)
    g.fill(img, [px(scene.body)], 0.42)
    img *= _vignette(size)
    g.fill(img, [px(scene.mediastinum)], 0.53)
    g.fill(img, [px(p) for p in scene.lungs], 0.13, disjoint=True)
    g.fill(img, [px(p) for p in scene.heart], 0.55)
    g.fill(img, [px(scene.trachea)], 0.36)

    # Additive layers: bones over everything, markings inside the aerated lung only.
    extra = np.zeros((size, size), np.float32)
    g.fill(extra, px(scene.ribs), 0.06, disjoint=True)
    g.lines(extra, px(scene.clavicles), 0.11, round(0.022 * scale))
    g.fill(extra, px(VERTEBRAE), 0.07, disjoint=True)
    vessels = g.lines(np.zeros((size, size), np.float32), px(_vessels(scene, rng)), 0.11, round(0.004 * scale))
    aerated = lungs[0] | lungs[1]
    for lesion, mask in zip(scene.lesions, masks, strict=True):
        if lesion.name == "Pneumothorax":  # no lung markings beyond the collapsed lung
            aerated &= 1 - mask
    extra += vessels * aerated
    img += extra
    img = cv2.GaussianBlur(img, (0, 0), _sigma(size, 0.005))

    k = contrast_scale(difficulty)
    for lesion, mask in zip(scene.lesions, masks, strict=True):
        # Each lesion's texture comes from its own stream, so the anatomy, noise and
        # exposure of an image, and its other lesions, do not depend on this one (which
        # also lets a test remove one lesion and see exactly its pixels change).
        placed = _lesion_layer(lesion, mask, size, k, np.random.default_rng(lesion.seed))
        if placed is not None:
            ys, xs, layer = placed
            img[ys, xs] += layer
        if lesion.name == "Pneumothorax":
            # The visceral pleural line: the edge of the collapsed lung, inside the chest.
            line = g.lines(np.zeros((size, size), np.float32), [px(lesion.exclude[0])], 1.0, round(0.004 * scale))
            line *= cv2.dilate(mask, np.ones((3, 3), np.uint8)) & lungs[lesion.side]
            img += cv2.GaussianBlur(line, (0, 0), _sigma(size, 0.003)) * (0.12 * k)

    basis = _smooth_basis(size)
    img += basis @ (0.035 * rng.standard_normal((basis.shape[1],) * 2).astype(np.float32)) @ basis.T
    img += _noise(rng, size, NOISE_SIGMA)

    # Exposure and processing differ between films: gain, offset and gamma.
    gain, offset, gamma = rng.uniform(0.8, 1.2), rng.uniform(-0.08, 0.08), rng.uniform(0.8, 1.25)
    # One saturating, rounding pass to uint8 (negative values clip to 0, not |x|).
    img = cv2.addWeighted(img, 255.0 * gain, img, 0.0, 255.0 * offset, dtype=cv2.CV_8U)
    lut = (255.0 * (np.arange(256) / 255.0) ** gamma).round().astype(np.uint8)
    return cv2.LUT(img, lut)
