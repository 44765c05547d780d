"""Pixel masks: decoding, rasterising, encoding, resizing, and their bounding boxes.

Three encodings of a binary ``H x W`` mask are read:

* **COCO RLE** (``{"size": [h, w], "counts": str}``): the pycocotools Mask API format, runs
  of alternating 0/1 over the pixels in column-major order, compressed into a string. The
  CheXlocalize ground truth (Saporta et al., Nat. Mach. Intell. 2022) is published in it.
  Decoded with :func:`pycocotools.mask.decode` after a check of our own that the runs
  cover exactly ``h * w`` pixels (pycocotools leaves the tail of a short encoding
  uninitialised).
* **Polygons** (``[[[x, y], ...], ...]``): radiologists' contours in image pixels, pixel
  centres at integer coordinates. Rasterised as the reference code does
  (``rajpurkarlab/cheXlocalize``, ``annotation_to_segmentation.py``, ``create_mask``):
  every polygon is drawn, filled and outlined, with PIL's ``ImageDraw.polygon`` on one
  1-bit image. Polygons of a set are therefore OR-ed (a polygon inside another is no
  hole), and a self-intersecting polygon is filled with the even-odd rule of PIL's
  scanline fill. This reproduces the published ``gt_segmentations_val.json`` bit for bit.
* **SIIM-ACR RLE** (``"start length start length ..."``): the Kaggle Pneumothorax
  challenge's relative format (``mask_functions.py``, ``rle2mask``): pixels numbered
  column-major (``index = x * H + y``); each pair is (offset, length) where the offset of
  the first run counts from pixel 0 and every later one from the end of the previous run.
  ``-1`` is an empty mask. An image with several regions has several rows, OR-ed by
  :func:`combine_siim_rles`.

:class:`MaskRef` keeps a mask encoded (a few kB instead of ``H * W`` bytes) and decodes it
on demand, so a dataset can hold thousands of masks. Decoded masks are C-contiguous
``bool`` arrays, ``H x W``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import cv2
import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as coco_mask

from .errors import UsageError, one_line

__all__ = [
    "MaskDecodeError",
    "MaskEncoding",
    "MaskRef",
    "Polygon",
    "ResizeMethod",
    "coco_rle_area",
    "coco_rle_counts",
    "combine_siim_rles",
    "decode_coco_rle",
    "encode_coco_rle",
    "boxes_from_masks",
    "mask_bbox",
    "mask_region_boxes",
    "mask_to_siim_rle",
    "polygons_to_mask",
    "resize_mask",
    "siim_rle_to_mask",
]

MaskEncoding = Literal["coco_rle", "polygons", "siim_rle"]
ResizeMethod = Literal["area", "nearest"]
Polygon = tuple[tuple[float, float], ...]
"""A closed contour: ``(x, y)`` vertices in image pixels."""

_ENCODINGS = ("coco_rle", "polygons", "siim_rle")
SIIM_EMPTY = "-1"


class MaskDecodeError(UsageError):
    """An encoded mask that is malformed (bad characters, runs not covering the image, ...)."""


def _check_size(height: object, width: object, what: str = "mask") -> tuple[int, int]:
    if isinstance(height, bool) or isinstance(width, bool):
        raise MaskDecodeError(f"{what} size must be two positive integers, got {[height, width]!r}")
    try:
        h, w = int(height), int(width)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise MaskDecodeError(f"{what} size must be two positive integers, got {[height, width]!r}") from None
    if h != height or w != width or h <= 0 or w <= 0:
        raise MaskDecodeError(f"{what} size must be two positive integers, got {[height, width]!r}")
    return h, w


def _as_bool_2d(mask: np.ndarray) -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H x W), got shape {array.shape}")
    # Compare even bool input: a bool array may hold bytes other than 0/1 (PIL's 1-bit
    # images give 255), and the OpenCV calls below read the bytes through a uint8 view.
    return np.ascontiguousarray((array.view(np.uint8) if array.dtype == np.bool_ else array) != 0)


# --------------------------------------------------------------------------- COCO RLE


def coco_rle_counts(counts: str | bytes) -> np.ndarray:
    """The run lengths of a compressed COCO RLE string (0-run first, then alternating).

    The string packs each count in 6-bit characters (offset by 48): 5 bits of value per
    character, bit 6 says "more follows", the last character's bit 5 is a sign; from the
    third count on, the value is stored as a difference to the count two places back
    (pycocotools ``maskApi.c``, ``rleFrString``).

    Raises:
        MaskDecodeError: for a character outside the alphabet, a truncated value or a negative run.

    """
    text = counts.decode("ascii", errors="replace") if isinstance(counts, bytes) else counts
    if not isinstance(text, str):
        raise MaskDecodeError(f"COCO RLE counts must be a string, got {type(counts).__name__}")
    if not text:
        return np.zeros(0, dtype=np.int64)
    # Vectorised over characters (a full-size CheXlocalize mask has ~15k): a Python loop
    # per character cost ~10 ms per mask.
    raw = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64) - 48
    bad = np.flatnonzero((raw < 0) | (raw >= 64))
    if len(bad):
        pos = int(bad[0])
        raise MaskDecodeError(f"COCO RLE counts hold an invalid character {text[pos]!r} at {pos}")
    last = (raw & 0x20) == 0  # a character without the "more" bit ends its value
    if not last[-1]:
        raise MaskDecodeError("COCO RLE counts end in the middle of a value")
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    value_of = np.repeat(np.arange(len(ends)), ends - starts + 1)
    shift = 5 * (np.arange(len(raw)) - starts[value_of])
    if int(shift.max()) > 55:
        raise MaskDecodeError("COCO RLE counts hold a value too large for 64 bits")
    values = np.zeros(len(ends), dtype=np.int64)
    np.add.at(values, value_of, (raw & 0x1F) << shift)
    sign = (raw[ends] & 0x10) != 0
    values[sign] |= -1 << (5 * (ends - starts + 1))[sign]  # sign-extend
    # from the fourth count on, a value is the difference to the count two places back
    runs = values.copy()
    for parity in (1, 2):
        if len(runs) > parity:
            runs[parity::2] = np.cumsum(values[parity::2])
    negative = np.flatnonzero(runs < 0)
    if len(negative):
        raise MaskDecodeError(f"COCO RLE counts decode to a negative run ({int(runs[negative[0]])}) "
                              f"at run {int(negative[0])}")
    return runs


def _rle_parts(rle: Mapping[str, object]) -> tuple[int, int, object]:
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise MaskDecodeError("a COCO RLE must be a mapping with 'size' and 'counts'")
    size = rle["size"]
    if not isinstance(size, Sequence) or isinstance(size, str | bytes) or len(size) != 2:
        raise MaskDecodeError(f"COCO RLE size must be [height, width], got {size!r}")
    h, w = _check_size(size[0], size[1], "COCO RLE")
    return h, w, rle["counts"]


def _checked_runs(h: int, w: int, counts: object) -> np.ndarray:
    if isinstance(counts, str | bytes):
        runs = coco_rle_counts(counts)
    elif isinstance(counts, Sequence):  # uncompressed RLE: a plain list of run lengths
        try:
            runs = np.asarray([int(c) for c in counts], dtype=np.int64)
        except (TypeError, ValueError):
            raise MaskDecodeError("uncompressed COCO RLE counts must be integers") from None
        if (runs < 0).any():
            raise MaskDecodeError("uncompressed COCO RLE counts hold a negative run")
    else:
        raise MaskDecodeError(f"COCO RLE counts must be a string or a list, got {type(counts).__name__}")
    total = int(runs.sum())
    if total != h * w:
        raise MaskDecodeError(f"COCO RLE runs cover {total} pixels, the size {h} x {w} needs {h * w}")
    return runs


def coco_rle_area(rle: Mapping[str, object]) -> int:
    """The number of foreground pixels of a COCO RLE, without decoding it.

    Raises:
        MaskDecodeError: for a malformed RLE.

    """
    h, w, counts = _rle_parts(rle)
    return int(_checked_runs(h, w, counts)[1::2].sum())


def decode_coco_rle(rle: Mapping[str, object]) -> np.ndarray:
    """Decode a COCO RLE (compressed string or uncompressed list ``counts``) to ``H x W`` bool.

    Raises:
        MaskDecodeError: for a malformed RLE.

    """
    h, w, counts = _rle_parts(rle)
    runs = _checked_runs(h, w, counts)
    if isinstance(counts, str | bytes):
        raw = counts.encode("ascii") if isinstance(counts, str) else counts
        decoded = coco_mask.decode({"size": [h, w], "counts": raw})
        return np.ascontiguousarray(decoded, dtype=np.bool_)
    values = np.arange(len(runs)) % 2 == 1
    return np.ascontiguousarray(np.repeat(values, runs).reshape(w, h).T)


def encode_coco_rle(mask: np.ndarray) -> dict[str, object]:
    """Encode a 2-D mask (non-zero = foreground) as a compressed COCO RLE.

    Returns:
        ``{"size": [h, w], "counts": str}``, the JSON form CheXlocalize publishes.

    """
    array = _as_bool_2d(mask)
    encoded = coco_mask.encode(np.asfortranarray(array.view(np.uint8)))
    return {"size": [int(encoded["size"][0]), int(encoded["size"][1])], "counts": encoded["counts"].decode("ascii")}


# --------------------------------------------------------------------------- polygons


def _normalise_polygons(polygons: Iterable[Iterable[Sequence[float]]]) -> tuple[Polygon, ...]:
    if isinstance(polygons, str | bytes | Mapping):
        raise MaskDecodeError("polygons must be a list of polygons, each a list of [x, y] points")
    out = []
    for index, polygon in enumerate(polygons):
        if isinstance(polygon, str | bytes | Mapping):
            raise MaskDecodeError(f"polygon {index} must be a list of [x, y] points")
        points = []
        try:
            for point in polygon:
                if isinstance(point, str | bytes) or len(point) != 2:
                    raise ValueError
                points.append((float(point[0]), float(point[1])))
        except (TypeError, ValueError):
            raise MaskDecodeError(f"polygon {index} must be a list of [x, y] number pairs") from None
        if len(points) < 2:
            raise MaskDecodeError(f"polygon {index} has {len(points)} point(s); a contour needs at least 2")
        if not all(math.isfinite(x) and math.isfinite(y) for x, y in points):
            raise MaskDecodeError(f"polygon {index} has a non-finite coordinate")
        out.append(tuple(points))
    return tuple(out)


def polygons_to_mask(polygons: Iterable[Iterable[Sequence[float]]], height: int, width: int) -> np.ndarray:
    """Rasterise polygons the way CheXlocalize made its published masks.

    Each polygon is filled and outlined on one 1-bit PIL image (``ImageDraw.polygon(...,
    fill=1, outline=1)``), so the result is the union of the polygons; vertices may be
    fractional and outside the image (clipped).

    Args:
        polygons: ``[[[x, y], ...], ...]`` in pixels; an empty list gives an empty mask.
        height: the image height.
        width: the image width.

    Returns:
        ``height x width`` bool.

    Raises:
        MaskDecodeError: for a polygon with fewer than 2 points or a non-numeric coordinate.

    """
    h, w = _check_size(height, width)
    shapes = _normalise_polygons(polygons)
    canvas = Image.new("1", (w, h))
    draw = ImageDraw.Draw(canvas)
    for points in shapes:
        draw.polygon(points, fill=1, outline=1)
    # PIL's 1-bit pixels are bytes 0/255; compare rather than cast to get proper bools.
    return np.ascontiguousarray(np.asarray(canvas.convert("L")) != 0)


# --------------------------------------------------------------------------- SIIM-ACR RLE


def _siim_runs(rle: str, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Absolute (start, end) of every run of a SIIM-ACR relative RLE, validated."""
    if not isinstance(rle, str):
        raise MaskDecodeError(f"a SIIM-ACR RLE must be a string, got {type(rle).__name__}")
    text = rle.strip()
    if text == SIIM_EMPTY or not text:
        empty = np.zeros(0, np.int64)
        return empty, empty
    try:
        values = np.asarray([int(tok) for tok in text.split()], dtype=np.int64)
    except ValueError:
        raise MaskDecodeError(f"SIIM-ACR RLE holds a token that is not an integer: {one_line(text[:40])!r}") from None
    if len(values) % 2:
        raise MaskDecodeError(f"SIIM-ACR RLE has an odd number of values ({len(values)})")
    offsets, lengths = values[0::2], values[1::2]
    if (offsets < 0).any() or (lengths <= 0).any():
        raise MaskDecodeError("SIIM-ACR RLE has a negative offset or a run length below 1")
    # start_i = sum of all earlier offsets and lengths plus offset_i (offsets are relative).
    ends = np.cumsum(offsets + lengths)
    starts = ends - lengths
    if ends[-1] > height * width:
        raise MaskDecodeError(f"SIIM-ACR RLE runs end at pixel {int(ends[-1])}, past the {height} x {width} image")
    return starts, ends


def siim_rle_to_mask(rle: str, height: int, width: int) -> np.ndarray:
    """Decode one SIIM-ACR relative RLE (``-1`` = empty) to an ``height x width`` bool mask.

    Raises:
        MaskDecodeError: for a non-integer token, an odd count, a negative value or runs past the image.

    """
    h, w = _check_size(height, width)
    starts, ends = _siim_runs(rle, h, w)
    flat = np.zeros(h * w + 1, np.int8)
    # Runs never overlap (offsets are >= 0), so +1 at each start and -1 at each end,
    # summed, is 1 exactly inside the runs.
    flat[starts] += 1
    flat[ends] -= 1
    column_major = np.cumsum(flat[:-1], dtype=np.int8).astype(np.bool_)
    return np.ascontiguousarray(column_major.reshape(w, h).T)


def combine_siim_rles(rles: Iterable[str], height: int, width: int) -> np.ndarray:
    """OR the masks of all rows of one image (``-1`` rows add nothing; no rows = empty)."""
    h, w = _check_size(height, width)
    out = np.zeros((h, w), np.bool_)
    for rle in rles:
        out |= siim_rle_to_mask(rle, h, w)
    return out


def mask_to_siim_rle(mask: np.ndarray) -> str:
    """Encode a mask in the SIIM-ACR relative format (maximal runs; ``-1`` when empty)."""
    array = _as_bool_2d(mask)
    flat = array.T.ravel().view(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [0]]).astype(np.int8)))
    if not len(edges):
        return SIIM_EMPTY
    starts, ends = edges[0::2], edges[1::2]
    offsets = starts - np.concatenate([[0], ends[:-1]])
    pairs = np.stack([offsets, ends - starts], axis=1).ravel()
    return " ".join(map(str, pairs.tolist()))


# --------------------------------------------------------------------------- resizing


def _kernel_side(size: int, out: int) -> int:
    """The smallest odd side ``>= sqrt(2) * size / out`` (1 when the axis does not shrink).

    Odd, so that the box is centred and OpenCV's opening (erode then dilate with the same
    anchor) never adds a pixel.
    """
    if out >= size:
        return 1
    side = math.ceil(math.sqrt(2.0) * size / out - 1e-9)
    return side if side % 2 else side + 1


def resize_mask(mask: np.ndarray, out_h: int, out_w: int, method: ResizeMethod = "area") -> np.ndarray:
    """Resize a binary mask to ``out_h x out_w``.

    ``nearest`` samples the source pixel under each output pixel's centre
    (``INTER_NEAREST_EXACT``); it is exact for enlarging, but when shrinking by a factor
    ``s`` it drops any structure thinner than ``s`` pixels with a probability of about
    ``1 - width / s`` (a 10-pixel tube on a 2828-pixel image shrunk to 224 mostly
    disappears).

    ``area`` (the default) is for shrinking masks to a model's resolution without losing
    anything: every output pixel gets the fraction of its footprint that is foreground
    (``INTER_AREA``) and is foreground when that fraction is at least 0.5, so regions
    keep their area. In addition, the source pixels of structures too thin to hold a
    ``k_y x k_x`` box (what a morphological opening with that box removes) mark every
    output pixel they fall in, where ``k`` is ``sqrt(2)`` times the shrink factor ``s``,
    rounded up to an odd integer. A box of side ``>= sqrt(2) s`` covers at least half of
    some output pixel wherever it lies (at worst ``(k / 2s)^2`` of each of four), so the
    two rules together keep every structure: a thick one by area, a thin one as a trace
    a few output pixels wide; only thin parts are widened. Axes that are enlarged are
    resampled with ``nearest``.

    Args:
        mask: ``H x W`` (non-zero = foreground).
        out_h: the output height.
        out_w: the output width.
        method: ``area`` or ``nearest``.

    Returns:
        ``out_h x out_w`` bool.

    """
    array = _as_bool_2d(mask)
    out_h, out_w = _check_size(out_h, out_w, "output")
    if method not in ("area", "nearest"):
        raise ValueError(f"method must be 'area' or 'nearest', got {method!r}")
    h, w = array.shape
    if (h, w) == (out_h, out_w):
        return array.copy()
    as_u8 = array.view(np.uint8)
    if not as_u8.any():
        return np.zeros((out_h, out_w), np.bool_)
    if method == "nearest" or (out_h >= h and out_w >= w):
        return cv2.resize(as_u8, (out_w, out_h), interpolation=cv2.INTER_NEAREST_EXACT).astype(np.bool_)
    # Shrink the shrinking axes by area (one call with both scales >= 1 takes OpenCV's exact
    # area-averaging path), then enlarge the others by nearest neighbour.
    mid_h, mid_w = min(out_h, h), min(out_w, w)
    coverage = cv2.resize(as_u8.astype(np.float32), (mid_w, mid_h), interpolation=cv2.INTER_AREA)
    keep = coverage >= 0.5 - 1e-6
    ky, kx = _kernel_side(h, mid_h), _kernel_side(w, mid_w)
    if ky > 1 or kx > 1:
        # Open only the mask's bounding box plus a kernel of margin (masks are mostly small
        # against the image); zeros around it make the result the same as on the whole image.
        bx, by, bw, bh = cv2.boundingRect(as_u8)
        y0, y1, x0, x1 = max(by - ky, 0), min(by + bh + ky, h), max(bx - kx, 0), min(bx + bw + kx, w)
        crop = as_u8[y0:y1, x0:x1]
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (kx, ky))
        thin = np.zeros_like(as_u8)
        thin[y0:y1, x0:x1] = crop & (cv2.morphologyEx(crop, cv2.MORPH_OPEN, kernel) ^ 1)
        if thin.any():
            thin_cover = cv2.resize(thin.astype(np.float32), (mid_w, mid_h), interpolation=cv2.INTER_AREA)
            keep |= thin_cover > 0
    if (mid_h, mid_w) != (out_h, out_w):
        keep = cv2.resize(keep.view(np.uint8), (out_w, out_h), interpolation=cv2.INTER_NEAREST_EXACT).astype(bool)
    return np.ascontiguousarray(keep)


# --------------------------------------------------------------------------- bounding boxes


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The box ``(x, y, w, h)`` around all foreground pixels, or None for an empty mask.

    A region with columns ``c0..c1`` and rows ``r0..r1`` gives ``(c0, r0, c1 - c0 + 1,
    r1 - r0 + 1)``, the convention of :mod:`cxrbench.boxes` (OpenCV's bounding rectangle).
    """
    x, y, w, h = cv2.boundingRect(_as_bool_2d(mask).view(np.uint8))
    if w == 0 or h == 0:
        return None
    return int(x), int(y), int(w), int(h)


def mask_region_boxes(mask: np.ndarray, connectivity: Literal[4, 8] = 8) -> np.ndarray:
    """``R x 4`` float boxes ``(x, y, w, h)``, one per connected region, in OpenCV's label order.

    8-connectivity (the default) matches :mod:`cxrbench.boxes`, which boxes heatmap
    regions the same way, so mask boxes and predicted boxes are comparable.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    as_u8 = _as_bool_2d(mask).view(np.uint8)
    x, y, w, h = cv2.boundingRect(as_u8)
    if w == 0 or h == 0:
        return np.zeros((0, 4), dtype=np.float64)
    # label only the mask's bounding rectangle: a full-size CheXlocalize image is 6.5 Mpx
    crop = np.ascontiguousarray(as_u8[y : y + h, x : x + w])
    _, _, stats, _ = cv2.connectedComponentsWithStats(crop, connectivity=connectivity, ltype=cv2.CV_32S)
    boxes = stats[1:, :4].astype(np.float64)  # label 0 is the background
    boxes[:, 0] += x
    boxes[:, 1] += y
    return boxes


# --------------------------------------------------------------------------- lazy reference


@dataclasses.dataclass(frozen=True)
class MaskRef:
    """One mask kept encoded; decoded only when asked.

    Attributes:
        image_id: the image the mask belongs to.
        class_name: the finding it outlines.
        encoding: ``coco_rle`` (payload: the compressed counts string), ``polygons``
            (payload: a tuple of polygons, each a tuple of ``(x, y)``) or ``siim_rle``
            (payload: a tuple of SIIM-ACR RLE strings, one per table row, OR-ed).
        payload: the encoded mask, as described for ``encoding``.
        height / width: the mask's (and image's) size in pixels.

    """

    image_id: str
    class_name: str
    encoding: MaskEncoding
    payload: str | tuple[Polygon, ...] | tuple[str, ...]
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.encoding not in _ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(_ENCODINGS)}, got {self.encoding!r}")
        try:
            _check_size(self.height, self.width)
        except MaskDecodeError as exc:
            raise MaskDecodeError(f"{self._where()}: {exc}") from None
        payload = self.payload
        if self.encoding == "coco_rle":
            if isinstance(payload, bytes):
                payload = payload.decode("ascii", errors="replace")
            if not isinstance(payload, str):
                raise MaskDecodeError(f"{self._where()}: COCO RLE counts must be a string")
        elif self.encoding == "polygons":
            try:
                payload = _normalise_polygons(payload)  # type: ignore[arg-type]
            except TypeError:
                raise MaskDecodeError(f"{self._where()}: polygons must be a list of [x, y] lists") from None
            except MaskDecodeError as exc:
                raise MaskDecodeError(f"{self._where()}: {exc}") from None
        else:
            rows = (payload,) if isinstance(payload, str) else tuple(payload)
            if not all(isinstance(r, str) for r in rows):
                raise MaskDecodeError(f"{self._where()}: SIIM-ACR RLE rows must be strings")
            payload = tuple(r.strip() for r in rows)
        object.__setattr__(self, "payload", payload)

    def _where(self) -> str:
        return f"mask {one_line(str(self.image_id))}/{one_line(str(self.class_name))}"

    @classmethod
    def from_coco_rle(cls, image_id: str, class_name: str, rle: Mapping[str, object]) -> MaskRef:
        """A reference to a COCO RLE ``{"size": [h, w], "counts": str}`` (compressed only)."""
        try:
            h, w, counts = _rle_parts(rle)
        except MaskDecodeError as exc:
            raise MaskDecodeError(f"mask {one_line(image_id)}/{one_line(class_name)}: {exc}") from None
        return cls(image_id, class_name, "coco_rle", counts, h, w)  # type: ignore[arg-type]

    @classmethod
    def from_polygons(
        cls, image_id: str, class_name: str, polygons: Iterable[Iterable[Sequence[float]]], height: int, width: int
    ) -> MaskRef:
        """A reference to polygons rasterised as :func:`polygons_to_mask` does."""
        return cls(image_id, class_name, "polygons", polygons, height, width)  # type: ignore[arg-type]

    @classmethod
    def from_siim_rles(cls, image_id: str, class_name: str, rles: Iterable[str], height: int, width: int) -> MaskRef:
        """A reference to the SIIM-ACR RLE rows of one image (OR-ed on decoding)."""
        return cls(image_id, class_name, "siim_rle", tuple(rles), height, width)

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return self.height, self.width

    def decode(self) -> np.ndarray:
        """The mask, ``height x width`` bool.

        Raises:
            MaskDecodeError: naming the image and class, for a malformed payload.

        """
        try:
            if self.encoding == "coco_rle":
                return decode_coco_rle({"size": [self.height, self.width], "counts": self.payload})
            if self.encoding == "polygons":
                return polygons_to_mask(self.payload, self.height, self.width)  # type: ignore[arg-type]
            return combine_siim_rles(self.payload, self.height, self.width)  # type: ignore[arg-type]
        except MaskDecodeError as exc:
            raise MaskDecodeError(f"{self._where()}: {exc}") from None

    def decode_resized(self, out_h: int, out_w: int, method: ResizeMethod = "area") -> np.ndarray:
        """The mask resized to ``out_h x out_w`` (see :func:`resize_mask` for the methods)."""
        return resize_mask(self.decode(), out_h, out_w, method)

    def area(self) -> int:
        """Foreground pixels; run-length encodings are not decoded for it."""
        try:
            if self.encoding == "coco_rle":
                return coco_rle_area({"size": [self.height, self.width], "counts": self.payload})
            if self.encoding == "siim_rle" and len(self.payload) <= 1:
                starts, ends = _siim_runs(self.payload[0] if self.payload else SIIM_EMPTY, self.height, self.width)
                return int((ends - starts).sum())
        except MaskDecodeError as exc:
            raise MaskDecodeError(f"{self._where()}: {exc}") from None
        # Polygons and several SIIM rows may overlap: count the decoded pixels.
        return int(np.count_nonzero(self.decode()))

    @property
    def is_empty(self) -> bool:
        """True when the mask has no foreground pixel."""
        if self.encoding == "polygons" and not self.payload:
            return True
        if self.encoding == "siim_rle":
            return all(r in (SIIM_EMPTY, "") for r in self.payload)  # type: ignore[union-attr]
        return self.area() == 0

    def bbox(self) -> tuple[int, int, int, int] | None:
        """The box ``(x, y, w, h)`` around the whole mask, or None when empty."""
        return mask_bbox(self.decode())

    def region_boxes(self) -> np.ndarray:
        """``R x 4`` boxes of the mask's 8-connected regions (computed once per mask and process)."""
        return _region_boxes(self).copy()


@functools.lru_cache(maxsize=16384)
def _region_boxes(ref: MaskRef) -> np.ndarray:
    # A split's boxes are derived from its masks each time the split is built (the test and
    # boxes splits of one dataset share masks): decoding a full-size mask costs ~10 ms.
    return mask_region_boxes(ref.decode())


def boxes_from_masks(masks: Mapping[tuple[int, int], MaskRef], image_sizes: np.ndarray | None = None):
    """A split's box table from its masks: one box per 8-connected region of each mask.

    Masks are decoded one at a time (memory stays at one mask). A box is in the mask's
    pixels, scaled to the image's when ``image_sizes`` (``N x 2`` height, width) says the
    image was stored at another size. Empty masks give no box.

    Returns:
        A ``pandas.DataFrame`` with ``cxrbench.interfaces.BOX_COLUMNS``, sorted by row and class.

    """
    from .interfaces import empty_boxes

    records: list[tuple[int, int, float, float, float, float]] = []
    for (row, klass) in sorted(masks):
        ref = masks[(row, klass)]
        if ref.is_empty:
            continue
        sx = sy = 1.0
        if image_sizes is not None:
            ih, iw = (float(v) for v in np.asarray(image_sizes)[row])
            sy, sx = ih / ref.height, iw / ref.width
        for x, y, w, h in ref.region_boxes():
            records.append((int(row), int(klass), x * sx, y * sy, w * sx, h * sy))
    if not records:
        return empty_boxes()
    import pandas as pd

    table = pd.DataFrame.from_records(records, columns=["index", "class_index", "x", "y", "w", "h"])
    return table.astype({"index": "int64", "class_index": "int64"})
