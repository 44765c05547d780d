"""Saliency maps scored against pixel masks as CheXlocalize scores them, fast and in bounded memory.

Reference: Saporta et al., "Benchmarking saliency methods for chest X-ray interpretation",
Nature Machine Intelligence 2022; code ``rajpurkarlab/cheXlocalize`` (``heatmap_to_segmentation.py``,
``eval.py``, ``tune_heatmap_threshold.py``, ``tune_probability_threshold.py``).

Definitions (per (image, class) pair; the mask has the original image's size ``H x W``):

* **Resize**: the map (float32, any ``h x w``) is resized to ``H x W`` as
  ``F.interpolate(mode="bilinear", align_corners=False)`` does on the CPU, bit for bit: the
  same per-axis source indices and weights, and the same fused multiply-adds in the same order
  (see "Resize" below). The result ``v`` is never stored whole.
* **Normalise**: ``m = (v - v.min()) / (v.max() - v.min())`` in float32, as the reference's
  ``cam - cam.min()`` then ``.div(max)``.
* **Binarise** (a "column"; several are counted in one pass): ``otsu``: ``q = uint8(255 * m)``
  (truncated), foreground ``q > t`` with ``t`` OpenCV's ``THRESH_OTSU`` threshold of ``q``
  (computed here from the 256-bin histogram with OpenCV's exact arithmetic); ``fraction``:
  ``m > fraction``; ``seed`` (cxrbench's own rule): ``m > min(mean(m) * factor, high)``.
* **IoU**: ``|pred & gt| / |pred | gt|``. ``true_pos_only=True``: defined when both are
  non-empty; ``False``: defined when either is non-empty (a non-empty prediction on an image
  without the finding scores 0), NaN when both are empty. A class's mIoU is the mean over its
  defined pairs; the overall mIoU is the mean over the classes that have a defined pair.
* **Hit**: the peak is the first maximum of ``v`` in row-major order (``np.argmax``); a hit
  when the Euclidean distance between the peak pixel and the nearest mask pixel (pixel
  centres, mask pixels) is at most the tolerance (0: the mask is true at the peak; cxrbench's
  tolerance follows the pointing game of Zhang et al. 2016). Only pairs with a non-empty mask
  count. The per-class hit rate is averaged over classes with such pairs.
* **Gating** (``tune_probability_threshold.py``): a map is kept when the model's probability
  is above the class's cut-off; otherwise the predicted mask is empty.
* **PxAP** (Choe et al. 2020): per class, pixel precision / recall pooled over the pairs
  with a non-empty mask, at the 256 levels of ``q`` as thresholds
  (:func:`cxrbench.locmetrics.pxap.average_precision_from_histograms`); mean over classes.

Where this module deliberately differs from the reference (docs/metrics.md lists these):

* A map that is constant or holds a non-finite value is **invalid**: it predicts nothing, has
  no peak (a miss) and counts as an all-zero map in PxAP (wsolevaluation's
  ``normalize_scoremap``). The reference divides by zero (NaN) or, for a constant map,
  min-max normalises the ulp-level noise of the resize. A map whose resized copy is constant
  (possible when downsampling) is invalid too.
* Otsu's foreground is ``q > t`` on the thresholded map itself, as the reference's
  ``cam_to_segmentation`` returned it at first. The version of ``heatmap_to_segmentation.py``
  that adds probability cut-offs and smoothing traces the thresholded map's contours
  (``RETR_TREE``) and refills them as PIL polygons, which fills holes and drops one-pixel regions.
* Gating keeps a map when ``prob > cut-off`` (``tune_probability_threshold.py``'s rule); that
  ``heatmap_to_segmentation.py`` keeps it when ``prob >= cut-off`` (they differ only at equality).
* ``m > fraction`` compares the float32 map with the float64 fraction exactly (NumPy >= 2's
  rule for the reference's ``mask > np.float64``; NumPy 1 compared in float32, which differs
  only for pixels exactly equal to ``float32(fraction)``).
* ``seed``'s ``mean(m)`` is ``(mean(v) - min) / (max - min)`` in float64.
* PxAP uses the 256 levels of ``q`` as thresholds (Choe et al. use ``np.arange(0, 1, 0.01)`` on ``m``).

Resize: torch's CPU kernel computes, per axis, ``src = fma(in / out, i + 0.5, -0.5)`` (float32,
clamped at 0), ``i0 = floor(src)``, ``i1 = min(i0 + 1, in - 1)``, ``l1 = src - i0``,
``l0 = 1 - l1``. For a one-channel map it then takes one of two kernels (x86-64 builds contract
the products into FMAs; torch 2.x): when the output's height + width exceeds 128, the generic
one, ``t_r = fma(x[r, j0], l0, x[r, j1] * l1)`` along the width and ``v = fma(t_i0, l0',
t_i1 * l1')`` along the height; otherwise the channels-last one, a single FMA chain over the
four corners with weights ``l_h * l_w``. Both are reproduced here bit for bit (the tests compare
against the installed torch). ``cv2.resize(INTER_LINEAR)`` uses the same half-pixel convention
but other weights and roundings: it differs from torch by up to ~1e-5, enough to move pixels
across the 8-bit levels, so it is not used.

Speed and memory: the width pass ``T`` (``h x W``) is computed once; each output row is then
two rows of ``T`` blended, computed on the fly (levels, and min / max / peak where needed: when
upsampling, only the bands of rows whose bounds can reach the extremes), never stored. The
mask stays run-length encoded: COCO RLE counts are parsed to column runs, turned into row
events, and a one-row "inside" vector is updated row by row. Every pixel adds one count to a
histogram over (inside, q, number of fraction thresholds it exceeds), from which every
column's ``|pred|`` and ``|pred & gt|``, Otsu's threshold and the PxAP histograms follow. A
pair with an empty mask needs only whether each column predicts anything: a valid map always
reaches ``m = 1``, so ``otsu`` and ``fraction < 1`` predict a non-empty mask; that the map is
valid is read off a few resized rows (every pixel is visited only for ``seed`` with
``high >= 1``, or when those rows are constant). Large images are split by rows between threads.
Nothing full-resolution outlives :meth:`MaskCounter.add`; the counts are ``O(pairs)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Protocol

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from cxrbench.locmetrics.pxap import average_precision_from_histograms
from cxrbench.masks import MaskDecodeError, MaskRef

__all__ = [
    "CUTOFF_GRID",
    "Binarisation",
    "FRACTION_GRID",
    "LEVELS",
    "MaskCounter",
    "MaskCounts",
    "hit_rates",
    "mask_pxap",
    "mean_iou",
    "otsu_threshold",
    "pair_ious",
    "resize_bilinear",
    "resize_normalised",
    "tune_cutoffs",
    "tune_fractions",
]

LEVELS = 256
"""8-bit levels of ``q = uint8(255 * m)``."""

FRACTION_GRID = tuple(round(float(f), 1) for f in np.arange(0.2, 0.8, 0.1))
"""``tune_heatmap_threshold.py``'s candidates, ``np.arange(0.2, 0.8, 0.1)`` rounded: 0.2 ... 0.7."""

CUTOFF_GRID = tuple(round(float(c), 1) for c in np.arange(0, 0.9, 0.1))
"""``tune_probability_threshold.py``'s candidates, ``np.arange(0, 0.9, 0.1)`` rounded: 0.0 ... 0.8."""

_POLICIES = ("otsu", "fraction", "seed")
_PARALLEL_PIXELS = 1 << 20
"""Images with fewer output pixels are counted in the calling thread (splitting costs more)."""
_INT32_MIN = np.int32(-(2**31))


class ThresholdLike(Protocol):
    """What a column needs: ``cxrbench.boxes.ThresholdPolicy`` has these attributes."""

    policy: str
    fraction: float
    factor: float
    high: float


class Binarisation(NamedTuple):
    """One column: how a normalised map becomes a predicted mask (see the module docstring)."""

    policy: str
    fraction: float
    factor: float
    high: float


# --------------------------------------------------------------------------- numba kernels


@intrinsic
def _fma32(typingctx, a, b, c):
    """``a * b + c`` rounded once, as torch's compiled kernels compute their weighted sums."""
    if not (a == types.float32 and b == types.float32 and c == types.float32):
        return None

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f32], ir.FunctionType(f32, [f32, f32, f32]))
        return builder.call(fn, args)

    return types.float32(types.float32, types.float32, types.float32), codegen


@njit(cache=True, nogil=True)
def _width_pass(x, j0, j1, l0, l1, out, lo, hi):
    """Rows ``lo:hi`` of ``T``: every source row interpolated along the width."""
    for r in range(lo, hi):
        src = x[r]
        dst = out[r]
        for c in range(dst.size):
            dst[c] = _fma32(src[j0[c]], l0[c], src[j1[c]] * l1[c])


@njit(cache=True, nogil=True)
def _corner_sum(x, i0, i1, w0, w1, j0, j1, l0, l1):
    """The whole output as torch's channels-last kernel computes it: four weighted corners, one FMA chain."""
    out = np.empty((i0.size, j0.size), np.float32)
    for r in range(i0.size):
        xa = x[i0[r]]
        xb = x[i1[r]]
        for c in range(j0.size):
            acc = _fma32(xa[j0[c]], w0[r] * l0[c], xa[j1[c]] * (w0[r] * l1[c]))
            acc = _fma32(xb[j0[c]], w1[r] * l0[c], acc)
            out[r, c] = _fma32(xb[j1[c]], w1[r] * l1[c], acc)
    return out


@njit(cache=True, nogil=True)
def _blend_row(t, i0, i1, w0, w1, r, out):
    """Output row ``r``: two rows of ``T`` blended along the height."""
    ta = t[i0[r]]
    tb = t[i1[r]]
    wa = w0[r]
    wb = w1[r]
    for c in range(out.size):
        out[c] = _fma32(ta[c], wa, tb[c] * wb)


@njit(cache=True, nogil=True)
def _order_keys(bits, keys):
    """int32 keys that sort like the float32 values (+0 and -0 share a key)."""
    for c in range(bits.size):
        b = bits[c]
        b = b if b != _INT32_MIN else np.int32(0)
        keys[c] = b ^ ((b >> 31) & np.int32(0x7FFFFFFF))


@njit(cache=True, nogil=True)
def _key_range(keys):
    lo = keys[0]
    hi = keys[0]
    for c in range(keys.size):
        k = keys[c]
        lo = k if k < lo else lo
        hi = k if k > hi else hi
    return lo, hi


@njit(cache=True, nogil=True, fastmath={"reassoc", "nnan", "ninf", "nsz"})
def _row_sum(row):
    total = 0.0
    for c in range(row.size):
        total += np.float64(row[c])
    return total


@njit(cache=True, nogil=True)
def _extrema(t, i0, i1, w0, w1, lo, hi, want_sum):
    """Minimum, maximum, first argmax (row-major) and optionally the float64 sum of output rows ``lo:hi``."""
    width = t.shape[1]
    row = np.empty(width, np.float32)
    bits = row.view(np.int32)
    keys = np.empty(width, np.int32)
    kmin = np.int32(2**31 - 1)
    kmax = _INT32_MIN
    vmin = np.float32(np.inf)
    vmax = np.float32(-np.inf)
    arg_r = -1
    arg_c = -1
    total = 0.0
    for r in range(lo, hi):
        _blend_row(t, i0, i1, w0, w1, r, row)
        _order_keys(bits, keys)
        klo, khi = _key_range(keys)
        if khi > kmax:
            kmax = khi
            for c in range(width):
                if keys[c] == khi:
                    arg_r = r
                    arg_c = c
                    vmax = row[c]
                    break
        if klo < kmin:
            kmin = klo
            for c in range(width):
                if keys[c] == klo:
                    vmin = row[c]
                    break
        if want_sum:
            total += _row_sum(row)
    return vmin, vmax, arg_r, arg_c, total


@njit(cache=True, nogil=True)
def _table_ranges(t):
    """Minimum and maximum of every row of ``T``."""
    h = t.shape[0]
    lo = np.empty(h, np.float32)
    hi = np.empty(h, np.float32)
    keys = np.empty(t.shape[1], np.int32)
    pair = np.empty(2, np.int32)
    floats = pair.view(np.float32)
    for s in range(h):
        _order_keys(t[s].view(np.int32), keys)
        klo, khi = _key_range(keys)
        pair[0] = klo ^ ((klo >> 31) & np.int32(0x7FFFFFFF))
        pair[1] = khi ^ ((khi >> 31) & np.int32(0x7FFFFFFF))
        lo[s] = floats[0]
        hi[s] = floats[1]
    return lo, hi


@njit(cache=True, nogil=True)
def _sample_range(x, rows, i0, i1, w0, w1, j0, j1, l0, l1):
    """Min and max of a few output rows computed straight from the source map."""
    vmin = np.inf
    vmax = -np.inf
    for k in range(rows.size):
        r = rows[k]
        xa = x[i0[r]]
        xb = x[i1[r]]
        for c in range(j0.size):
            ta = _fma32(xa[j0[c]], l0[c], xa[j1[c]] * l1[c])
            tb = _fma32(xb[j0[c]], l0[c], xb[j1[c]] * l1[c])
            v = np.float64(_fma32(ta, w0[r], tb * w1[r]))
            vmin = min(vmin, v)
            vmax = max(vmax, v)
    return vmin, vmax


@njit(cache=True, nogil=True)
def _level_row(t, i0, i1, w0, w1, r, vmin, span, n_k, inside, n_joint, m, idx):
    ta = t[i0[r]]
    tb = t[i1[r]]
    wa = w0[r]
    wb = w1[r]
    scale = np.float32(255.0)
    for c in range(m.size):
        value = (_fma32(ta[c], wa, tb[c] * wb) - vmin) / span
        m[c] = value
        idx[c] = np.int32(value * scale) * n_k + inside[c] * n_joint


@njit(cache=True, nogil=True)
def _add_exceeded(m, thr, start, idx):
    """Add to ``idx`` how many of the 8 thresholds ``thr[start:start + 8]`` each pixel exceeds."""
    for c in range(m.size):
        value = m[c]
        k = np.int32(0)
        for u in range(8):
            k += np.int32(value > thr[start + u])
        idx[c] += k


@njit(cache=True, nogil=True)
def _histogram_row(idx, hist, n_bins):
    # four interleaved sub-histograms: consecutive pixels of a smooth map share a bin
    n = idx.size
    c = 0
    while c + 4 <= n:
        hist[idx[c]] += 1
        hist[n_bins + idx[c + 1]] += 1
        hist[2 * n_bins + idx[c + 2]] += 1
        hist[3 * n_bins + idx[c + 3]] += 1
        c += 4
    while c < n:
        hist[idx[c]] += 1
        c += 1


@njit(cache=True, nogil=True)
def _joint_histogram(t, i0, i1, w0, w1, lo, hi, vmin, span, thr, n_thr, ev_ptr, ev_col, ev_delta):
    """Counts of output rows ``lo:hi`` over (inside the mask, level q, thresholds exceeded)."""
    width = t.shape[1]
    n_k = np.int32(n_thr + 1)
    n_joint = np.int32(256) * n_k
    n_bins = 2 * n_joint
    inside = np.zeros(width, np.int32)
    for e in range(ev_ptr[0], ev_ptr[lo]):
        inside[ev_col[e]] += ev_delta[e]
    m = np.empty(width, np.float32)
    idx = np.empty(width, np.int32)
    hist = np.zeros(4 * n_bins, np.int32)
    for r in range(lo, hi):
        for e in range(ev_ptr[r], ev_ptr[r + 1]):
            inside[ev_col[e]] += ev_delta[e]
        _level_row(t, i0, i1, w0, w1, r, vmin, span, n_k, inside, n_joint, m, idx)
        for start in range(0, n_thr, 8):
            _add_exceeded(m, thr, start, idx)
        _histogram_row(idx, hist, n_bins)
    out = np.zeros(n_bins, np.int64)
    for s in range(4):
        for b in range(n_bins):
            out[b] += hist[s * n_bins + b]
    return out


@njit(cache=True, nogil=True)
def _otsu_level(hist):
    """OpenCV's ``getThreshVal_Otsu_8u`` on a 256-bin histogram, operation for operation."""
    n = 0.0
    for i in range(256):
        n += hist[i]
    scale = 1.0 / n
    mu = 0.0
    for i in range(256):
        mu += i * np.float64(hist[i])
    mu *= scale
    eps = np.float64(np.finfo(np.float32).eps)
    mu1 = 0.0
    q1 = 0.0
    max_sigma = 0.0
    max_val = 0
    for i in range(256):
        p_i = hist[i] * scale
        # OpenCV rescales mu1 before the skip test, so a skipped level leaves it unnormalised
        mu1 *= q1
        q1 += p_i
        q2 = 1.0 - q1
        if min(q1, q2) < eps or max(q1, q2) > 1.0 - eps:
            continue
        mu1 = (mu1 + i * p_i) / q1
        mu2 = (mu - q1 * mu1) / q2
        sigma = q1 * q2 * (mu1 - mu2) * (mu1 - mu2)
        if sigma > max_sigma:
            max_sigma = sigma
            max_val = i
    return max_val


@njit(cache=True, nogil=True)
def _rle_runs(text):
    """Run lengths of compressed COCO RLE counts (pycocotools ``rleFrString``); error code 0 when valid."""
    runs = np.empty(text.size, np.int64)
    n = 0
    pos = 0
    while pos < text.size:
        value = 0
        shift = 0
        more = True
        while more:
            if pos >= text.size:
                return runs[:n], 1  # ends inside a value
            code = np.int64(text[pos]) - 48
            if code < 0 or code >= 64:
                return runs[:n], 2  # not in the alphabet
            value |= (code & 0x1F) << shift
            more = (code & 0x20) != 0
            pos += 1
            shift += 5
            if not more and (code & 0x10) != 0:
                value |= np.int64(-1) << shift
        if n > 2:
            value += runs[n - 2]
        if value < 0:
            return runs[:n], 3  # negative run
        runs[n] = value
        n += 1
    return runs[:n], 0


@njit(cache=True, nogil=True)
def _runs_to_segments(runs, height):
    """Column segments ``(col, start, end)`` of the foreground runs (column-major pixel order)."""
    n_seg = 0
    pos = 0
    for k in range(runs.size):
        if k % 2 == 1 and runs[k] > 0:
            n_seg += (pos + runs[k] - 1) // height - pos // height + 1
        pos += runs[k]
    col = np.empty(n_seg, np.int64)
    start = np.empty(n_seg, np.int64)
    end = np.empty(n_seg, np.int64)
    s = 0
    pos = 0
    for k in range(runs.size):
        length = runs[k]
        if k % 2 == 1 and length > 0:
            p = pos
            stop = pos + length
            while p < stop:
                c = p // height
                r = p - c * height
                e = min(height, r + (stop - p))
                col[s] = c
                start[s] = r
                end[s] = e
                s += 1
                p += e - r
        pos += length
    return col, start, end


@njit(cache=True, nogil=True)
def _array_segments(columns):
    """Column segments of a mask given transposed (``W x H``, non-zero = foreground)."""
    width, height = columns.shape
    n_seg = 0
    for c in range(width):
        prev = False
        for r in range(height):
            cur = columns[c, r] != 0
            if cur and not prev:
                n_seg += 1
            prev = cur
    col = np.empty(n_seg, np.int64)
    start = np.empty(n_seg, np.int64)
    end = np.empty(n_seg, np.int64)
    s = 0
    for c in range(width):
        r = 0
        while r < height:
            if columns[c, r] != 0:
                e = r
                while e < height and columns[c, e] != 0:
                    e += 1
                col[s] = c
                start[s] = r
                end[s] = e
                s += 1
                r = e
            else:
                r += 1
    return col, start, end


@njit(cache=True, nogil=True)
def _row_events(col, start, end, height):
    """Segments as row events in CSR form: at row r, ``inside[ev_col] += ev_delta``."""
    counts = np.zeros(height + 1, np.int64)
    for s in range(col.size):
        counts[start[s] + 1] += 1
        if end[s] < height:
            counts[end[s] + 1] += 1
    ptr = np.cumsum(counts)
    fill = ptr[:-1].copy()
    n = ptr[-1]
    ev_col = np.empty(n, np.int64)
    ev_delta = np.empty(n, np.int32)
    for s in range(col.size):
        r = start[s]
        ev_col[fill[r]] = col[s]
        ev_delta[fill[r]] = 1
        fill[r] += 1
        if end[s] < height:
            r = end[s]
            ev_col[fill[r]] = col[s]
            ev_delta[fill[r]] = -1
            fill[r] += 1
    return ptr, ev_col, ev_delta


@njit(cache=True, nogil=True)
def _nearest_squared(col, start, end, row, column):
    """Smallest squared distance from pixel ``(row, column)`` to a segment pixel (-1 without segments)."""
    best = -1
    for s in range(col.size):
        dx = col[s] - column
        if row < start[s]:
            dy = start[s] - row
        elif row >= end[s]:
            dy = row - end[s] + 1
        else:
            dy = 0
        d2 = dx * dx + dy * dy
        if best < 0 or d2 < best:
            best = d2
    return best


@njit(cache=True, nogil=True)
def _full_rows(t, i0, i1, w0, w1, out):
    for r in range(out.shape[0]):
        _blend_row(t, i0, i1, w0, w1, r, out[r])


# --------------------------------------------------------------------------- resize geometry


@functools.lru_cache(maxsize=64)
def _axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights along one axis, as torch computes them (``align_corners=False``, given size)."""
    scale = np.float32(n_in) / np.float32(n_out)
    centres = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)).astype(np.float64)
    # fma(scale, i + 0.5, -0.5): the float64 product and difference are exact, then one rounding
    src = (np.float64(scale) * centres - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    l1 = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
    l0 = (np.float32(1.0) - l1).astype(np.float32)
    for a in (i0, i1, l0, l1):
        a.setflags(write=False)
    return i0, i1, l0, l1


_SMALL_OUTPUT = 128
"""torch resizes a one-channel map whose output height + width is at most this with its channels-last kernel."""


class _Geometry(NamedTuple):
    """A map and the index / weight vectors that resize it to ``height x width``."""

    x: np.ndarray
    rows: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    cols: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

    @property
    def height(self) -> int:
        return self.rows[0].size

    @property
    def width(self) -> int:
        return self.cols[0].size

    @property
    def small(self) -> bool:
        """Whether torch computes this output with its channels-last (corner-sum) kernel."""
        return self.height + self.width <= _SMALL_OUTPUT


class _Table(NamedTuple):
    """Output row ``r`` is ``fma(t[i0[r]], w0[r], t[i1[r]] * w1[r])``: the width pass and the height weights."""

    t: np.ndarray
    rows: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

    @property
    def height(self) -> int:
        return self.rows[0].size

    @property
    def width(self) -> int:
        return self.t.shape[1]


@functools.lru_cache(maxsize=8)
def _identity_rows(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rows = (np.arange(n), np.arange(n), np.ones(n, np.float32), np.zeros(n, np.float32))
    for a in rows:
        a.setflags(write=False)
    return rows


def _as_map(map2d) -> np.ndarray:
    arr = np.asarray(map2d, dtype=np.float32)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]  # the reference squeezes (1, 1, h, w) tensors
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"a map must be 2-D (h x w) and non-empty, got shape {np.shape(map2d)}")
    return np.ascontiguousarray(arr)


def _geometry(map2d, height: int, width: int) -> _Geometry:
    x = _as_map(map2d)
    return _Geometry(x, _axis(x.shape[0], int(height)), _axis(x.shape[1], int(width)))


_EXECUTOR: list[ThreadPoolExecutor] = []


def _executor() -> ThreadPoolExecutor:
    if not _EXECUTOR:
        _EXECUTOR.append(ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="maskmetrics"))
    return _EXECUTOR[0]


def _split(n_rows: int, n_pixels: int, threads: int) -> list[tuple[int, int]]:
    parts = max(1, min(threads, n_rows)) if n_pixels >= _PARALLEL_PIXELS else 1
    bounds = np.linspace(0, n_rows, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _run_parts(fn, parts: list[tuple[int, int]], *args) -> list:
    """``fn(*args, lo, hi)`` over row ranges, in worker threads when there are several (the kernels release the GIL)."""
    if len(parts) == 1:
        return [fn(*args, *parts[0])]
    futures = [_executor().submit(fn, *args, lo, hi) for lo, hi in parts]
    return [f.result() for f in futures]


def _table(geo: _Geometry, threads: int) -> _Table:
    """The width pass; a small output is computed whole (as torch does) and blended with identity weights."""
    if geo.small:
        # fma(v, 1, v * 0) == v: the streaming kernels then read the rows unchanged
        return _Table(_corner_sum(geo.x, *geo.rows, *geo.cols), _identity_rows(geo.height))
    h = geo.x.shape[0]
    t = np.empty((h, geo.width), np.float32)
    _run_parts(lambda lo, hi: _width_pass(geo.x, *geo.cols, t, lo, hi), _split(h, h * geo.width, threads))
    return _Table(t, geo.rows)


class _Extrema(NamedTuple):
    vmin: np.float32
    vmax: np.float32
    peak: tuple[int, int]
    total: float


def _extrema_parts(tab: _Table, want_sum: bool, threads: int) -> _Extrema:
    """The output's extremes and first peak; every row is visited only for the sum or when not upsampling."""
    if not want_sum and tab.height >= 2 * tab.t.shape[0]:
        return _banded_extrema(tab)
    parts = _split(tab.height, tab.height * tab.width, threads)
    return _merge_extrema(_run_parts(lambda lo, hi: _extrema(tab.t, *tab.rows, lo, hi, want_sum), parts))


def _merge_extrema(found: list) -> _Extrema:
    """Combine ``_extrema`` results of row ranges given in row order."""
    vmin = min(np.float32(f[0]) for f in found)
    vmax = max(np.float32(f[1]) for f in found)
    # the first range that reaches the maximum holds the first argmax
    first = next(f for f in found if np.float32(f[1]) == vmax)
    return _Extrema(np.float32(vmin), np.float32(vmax), (int(first[2]), int(first[3])), float(sum(f[4] for f in found)))


_ROUNDING = 3.0 * 2.0**-24
"""Bound on ``|v - convex combination of its two T values| / max|T|``: two roundings of 2^-24 each and
``l0 = fl(1 - l1)`` off by at most 2^-25 (the bound is 2.5 * 2^-24)."""


def _banded_extrema(tab: _Table) -> _Extrema:
    """Exact extremes visiting only the bands of output rows whose bounds can reach them.

    A band is a run of output rows blending the same two rows of ``T``; each of its values
    lies within ``_ROUNDING * max|T|`` of the two rows' range. The bands holding the largest
    upper and the smallest lower bound are evaluated first; every band whose bound reaches
    those values is evaluated too, in row order, so the maximum, its first position and the
    minimum are the ones a full pass finds.
    """
    t = tab.t
    lo, hi = (a.astype(np.float64) for a in _table_ranges(t))
    i0, i1 = tab.rows[0], tab.rows[1]
    first = np.flatnonzero(np.r_[True, (np.diff(i0) != 0) | (np.diff(i1) != 0)])
    last = np.r_[first[1:], i0.size]
    a, b = i0[first], i1[first]
    slack = _ROUNDING * np.maximum(np.maximum(np.abs(lo[a]), np.abs(hi[a])), np.maximum(np.abs(lo[b]), np.abs(hi[b])))
    slack += 1e-37  # subnormal products
    upper = np.maximum(hi[a], hi[b]) + slack
    lower = np.minimum(lo[a], lo[b]) - slack

    def band(j: int):
        return _extrema(t, *tab.rows, int(first[j]), int(last[j]), False)

    top, bottom = int(np.argmax(upper)), int(np.argmin(lower))
    reach_max, reach_min = float(band(top)[1]), float(band(bottom)[0])
    chosen = np.flatnonzero((upper >= reach_max) | (lower <= reach_min))
    return _merge_extrema([band(int(j)) for j in chosen])


def resize_bilinear(map2d, height: int, width: int) -> np.ndarray:
    """The map resized to ``height x width`` exactly as torch's ``F.interpolate(mode="bilinear")`` on the CPU.

    Args:
        map2d: ``h x w`` map (leading singleton dimensions are squeezed); converted to float32.
        height: output rows.
        width: output columns.

    Returns:
        ``height x width`` float32.

    """
    geo = _geometry(map2d, height, width)
    tab = _table(geo, 1)
    out = np.empty((tab.height, tab.width), np.float32)
    _full_rows(tab.t, *tab.rows, out)
    return out


def resize_normalised(map2d, height: int, width: int) -> tuple[np.ndarray, bool]:
    """The resized map min-max normalised (float32, as the reference), and whether the map is valid.

    Args:
        map2d: ``h x w`` map.
        height: output rows.
        width: output columns.

    Returns:
        ``(m, valid)``: ``m`` is ``height x width`` in [0, 1], all zeros for an invalid map
        (constant or non-finite, before or after resizing).

    """
    x = _as_map(map2d)
    v = resize_bilinear(x, height, width)
    vmin, vmax = v.min(), v.max()
    if not (np.isfinite(x).all() and x.max() > x.min() and vmax > vmin):
        return np.zeros_like(v), False
    return (v - vmin) / (vmax - vmin), True


def otsu_threshold(hist: np.ndarray) -> int:
    """Otsu's level of an 8-bit image from its 256-bin histogram, as ``cv2.threshold(q, 0, 255, THRESH_OTSU)``.

    Foreground is ``q > level``. An image of one level gives 0, as OpenCV.
    """
    h = np.asarray(hist, dtype=np.int64).ravel()
    if h.size != LEVELS or h.sum() <= 0:
        raise ValueError(f"hist must hold {LEVELS} non-negative counts with a positive sum")
    return int(_otsu_level(h))


# --------------------------------------------------------------------------- masks


class _MaskRuns(NamedTuple):
    """A mask as column segments: pixels ``start <= row < end`` of column ``col``."""

    height: int
    width: int
    col: np.ndarray
    start: np.ndarray
    end: np.ndarray

    @property
    def area(self) -> int:
        return int((self.end - self.start).sum())


def _mask_runs(mask) -> _MaskRuns:
    if isinstance(mask, MaskRef):
        h, w = mask.size
        if mask.encoding == "coco_rle":
            try:
                text = np.frombuffer(str(mask.payload).encode("ascii"), dtype=np.uint8)
            except UnicodeEncodeError:
                text = np.frombuffer(b"\xff", dtype=np.uint8)  # outside the alphabet: reported below
            runs, error = _rle_runs(text)
            if error:
                raise MaskDecodeError(f"mask {mask.image_id}/{mask.class_name}: malformed COCO RLE counts")
            if int(runs.sum()) != h * w:
                raise MaskDecodeError(f"mask {mask.image_id}/{mask.class_name}: COCO RLE runs cover "
                                      f"{int(runs.sum())} pixels, the size {h} x {w} needs {h * w}")
            return _MaskRuns(h, w, *_runs_to_segments(runs, h))
        mask = mask.decode()
    arr = np.asarray(mask)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"a mask must be 2-D (H x W) and non-empty, got shape {arr.shape}")
    columns = np.ascontiguousarray((arr.view(np.uint8) if arr.dtype == np.bool_ else arr != 0).T)
    return _MaskRuns(arr.shape[0], arr.shape[1], *_array_segments(columns))


# --------------------------------------------------------------------------- counting


@dataclasses.dataclass(frozen=True)
class MaskCounts:
    """Everything the mask metrics need, per pair and per class; ``O(pairs)`` memory.

    Attributes:
        columns: the binarisations counted (``policy``, ``fraction``, ``factor``, ``high``).
        n_classes: number of classes.
        max_distance: peak-to-mask distances above it are stored as ``inf``.
        rows: ``(P,)`` image (split row) of each pair.
        classes: ``(P,)`` class index of each pair.
        gt_area: ``(P,)`` mask pixels.
        pred_area: ``(P, B)`` predicted pixels per column; -1 for a pair with an empty mask
            whose prediction was only decided to be empty or not (never needed: its IoU is 0 or NaN).
        inter: ``(P, B)`` predicted pixels inside the mask.
        pred_any: ``(P, B)`` whether the column predicts any pixel.
        peak_distance: ``(P,)`` distance from the map's peak pixel to the nearest mask pixel
            (0 inside; ``inf`` for an empty mask, an invalid map or beyond ``max_distance``).
        valid: ``(P,)`` whether the map is valid (finite and not constant).
        probs: ``(P,)`` the model's probabilities, or None when none were given.
        hist_all: ``(K, 256)`` per class, pixels of the pairs with a non-empty mask at each level of ``q``.
        hist_in: ``(K, 256)`` likewise for the mask pixels only.

    """

    columns: tuple[Binarisation, ...]
    n_classes: int
    max_distance: float
    rows: np.ndarray
    classes: np.ndarray
    gt_area: np.ndarray
    pred_area: np.ndarray
    inter: np.ndarray
    pred_any: np.ndarray
    peak_distance: np.ndarray
    valid: np.ndarray
    probs: np.ndarray | None
    hist_all: np.ndarray
    hist_in: np.ndarray

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        arrays = [getattr(self, f.name) for f in dataclasses.fields(self)]
        return int(sum(a.nbytes for a in arrays if isinstance(a, np.ndarray)))


class _PairCounts(NamedTuple):
    gt_area: int
    pred_area: np.ndarray
    inter: np.ndarray
    pred_any: np.ndarray
    distance: float
    valid: bool
    hist_all: np.ndarray | None
    hist_in: np.ndarray | None


def _columns(columns: Sequence[ThresholdLike]) -> tuple[Binarisation, ...]:
    out = []
    for i, col in enumerate(columns):
        policy = getattr(col, "policy", None)
        if policy not in _POLICIES:
            raise ValueError(f"column {i}: policy must be one of {', '.join(_POLICIES)}, got {policy!r}")
        column = Binarisation(policy, float(col.fraction), float(col.factor), float(col.high))
        needed = {"otsu": (), "fraction": (column.fraction,), "seed": (column.factor, column.high)}[policy]
        if not all(math.isfinite(v) for v in needed):
            raise ValueError(f"column {i}: the {policy} policy needs finite values, got {column}")
        out.append(column)
    if not out:
        raise ValueError("give at least one column (binarisation)")
    return tuple(out)


def _round_down32(value: float) -> np.float32:
    """The largest float32 not above ``value``; a float32 exceeds ``value`` exactly when it exceeds this."""
    down = np.float32(value)
    if not np.isnan(down) and float(down) > value:
        down = np.nextafter(down, np.float32(-np.inf))
    return down


def _sample_rows(geo: _Geometry) -> np.ndarray:
    """Output rows near the source map's maximum and minimum (and the first row)."""
    x = geo.x
    r_max, r_min = np.unravel_index(np.argmax(x), x.shape)[0], np.unravel_index(np.argmin(x), x.shape)[0]
    i0 = geo.rows[0]
    picks = {0}
    for r in (r_max, r_min):
        picks.add(int(min(np.searchsorted(i0, r), i0.size - 1)))
    return np.array(sorted(picks), dtype=np.int64)


class MaskCounter:
    """Counts pairs (map, mask) one at a time, keeping only ``O(1)`` numbers per pair.

    Args:
        n_classes: number of classes (pairs carry class indices ``0 <= k < n_classes``).
        columns: binarisations to count for every pair, e.g. ``[ThresholdPolicy("otsu")] +
            [ThresholdPolicy("fraction", fraction=f) for f in FRACTION_GRID]``; objects with
            ``policy`` (``otsu``, ``fraction``, ``seed``), ``fraction``, ``factor``, ``high``.
        max_distance: peak-to-mask distances above it are stored as ``inf`` (hit tolerances
            above it are refused by :func:`hit_rates`).
        threads: threads for one large pair (None: up to 4, one per CPU). Rows are split
            between them; the numbers do not depend on it.

    """

    def __init__(
        self,
        n_classes: int,
        columns: Sequence[ThresholdLike],
        *,
        max_distance: float = math.inf,
        threads: int | None = None,
    ) -> None:
        if isinstance(n_classes, bool) or not isinstance(n_classes, int | np.integer) or n_classes < 1:
            raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
        if not max_distance >= 0:
            raise ValueError(f"max_distance must be >= 0, got {max_distance}")
        self.n_classes = int(n_classes)
        self.columns = _columns(columns)
        self.max_distance = float(max_distance)
        self.threads = int(threads) if threads else min(4, os.cpu_count() or 1)
        b = len(self.columns)
        self._ints = _Rows(np.int64, 3)  # row, class, gt_area
        self._floats = _Rows(np.float64, 2)  # peak distance, probability
        self._valid = _Rows(np.bool_, 1)
        self._pred_area = _Rows(np.int64, b)
        self._inter = _Rows(np.int64, b)
        self._pred_any = _Rows(np.bool_, b)
        self._with_probs: bool | None = None
        self._hist_all = np.zeros((self.n_classes, LEVELS), np.int64)
        self._hist_in = np.zeros((self.n_classes, LEVELS), np.int64)

    def __len__(self) -> int:
        return len(self._ints)

    def add(self, row: int, class_index: int, map2d, mask, prob: float | None = None) -> None:
        """Count one pair.

        Args:
            row: the image (split row), kept for grouping (bootstrap, counting images).
            class_index: the class, ``0 <= class_index < n_classes``.
            map2d: ``h x w`` saliency map at any resolution (float32 after conversion).
            mask: a :class:`cxrbench.masks.MaskRef` or an ``H x W`` bool array (the image's size).
            prob: the model's probability of the class (needed for gating); give it for
                every pair or for none.

        """
        k = int(class_index)
        if not 0 <= k < self.n_classes:
            raise ValueError(f"class_index must be in [0, {self.n_classes}), got {class_index}")
        if self._with_probs is not None and self._with_probs != (prob is not None):
            raise ValueError("give a probability for every pair or for none")
        runs = _mask_runs(mask)
        geo = _geometry(map2d, runs.height, runs.width)
        counts = self._count_positive(geo, runs) if runs.col.size else self._count_negative(geo)
        if counts.hist_all is not None:
            self._hist_all[k] += counts.hist_all
            self._hist_in[k] += counts.hist_in
        self._with_probs = prob is not None
        self._ints.append((int(row), k, counts.gt_area))
        self._floats.append((counts.distance, math.nan if prob is None else float(prob)))
        self._valid.append((counts.valid,))
        self._pred_area.append(counts.pred_area)
        self._inter.append(counts.inter)
        self._pred_any.append(counts.pred_any)

    # ----------------------------------------------------------------- per pair

    def _empty_prediction(self, gt_area: int, hist: bool, n_pixels: int) -> _PairCounts:
        b = len(self.columns)
        hist_all = hist_in = None
        if hist:  # an invalid map counts as all zeros in PxAP
            hist_all = np.zeros(LEVELS, np.int64)
            hist_in = np.zeros(LEVELS, np.int64)
            hist_all[0], hist_in[0] = n_pixels, gt_area
        return _PairCounts(gt_area, np.zeros(b, np.int64), np.zeros(b, np.int64), np.zeros(b, bool),
                           math.inf, False, hist_all, hist_in)

    def _needs_mean(self) -> bool:
        return any(c.policy == "seed" for c in self.columns)

    def _thresholds(self, vmin: np.float32, vmax: np.float32, total: float, n_pixels: int) -> list[float | None]:
        """The threshold on ``m`` of every column (None for otsu)."""
        mean_m = ((total / n_pixels) - float(vmin)) / (float(vmax) - float(vmin)) if self._needs_mean() else math.nan
        out: list[float | None] = []
        for c in self.columns:
            if c.policy == "otsu":
                out.append(None)
            elif c.policy == "fraction":
                out.append(c.fraction)
            else:
                out.append(min(mean_m * c.factor, c.high))
        return out

    def _count_negative(self, geo: _Geometry) -> _PairCounts:
        """A pair whose mask is empty: only whether each column predicts something matters."""
        b = len(self.columns)
        if not _valid_source(geo.x):
            return self._empty_prediction(0, False, 0)
        # seed with high >= 1 may predict nothing: only its mean says, and that needs every pixel
        needs_pixels = any(c.policy == "seed" and not c.high < 1.0 for c in self.columns)
        valid, found = False, None
        if not needs_pixels and not geo.small:
            lo, hi = _sample_range(geo.x, _sample_rows(geo), *geo.rows, *geo.cols)
            valid = hi > lo
        if not valid:
            found = _extrema_parts(_table(geo, self.threads), self._needs_mean(), self.threads)
            valid = bool(found.vmax > found.vmin) and bool(np.isfinite(found.vmax - found.vmin))
        if not valid:
            return self._empty_prediction(0, False, 0)
        thresholds = None if found is None else self._thresholds(found.vmin, found.vmax, found.total,
                                                                 geo.height * geo.width)
        # a valid map reaches m = 1 exactly: Otsu's level (<= 254) and any threshold below 1 leave it foreground
        pred_any = np.zeros(b, bool)
        for i, c in enumerate(self.columns):
            if c.policy == "otsu":
                pred_any[i] = True
            elif c.policy == "fraction":
                pred_any[i] = c.fraction < 1.0
            else:
                pred_any[i] = c.high < 1.0 or thresholds[i] < 1.0
        return _PairCounts(0, np.full(b, -1, np.int64), np.zeros(b, np.int64), pred_any, math.inf, True, None, None)

    def _count_positive(self, geo: _Geometry, runs: _MaskRuns) -> _PairCounts:
        n_pixels = geo.height * geo.width
        if not _valid_source(geo.x):
            return self._empty_prediction(runs.area, True, n_pixels)
        tab = _table(geo, self.threads)
        found = _extrema_parts(tab, self._needs_mean(), self.threads)
        span = np.float32(found.vmax) - np.float32(found.vmin)
        if not (found.vmax > found.vmin and np.isfinite(span)):
            return self._empty_prediction(runs.area, True, n_pixels)
        thresholds = self._thresholds(found.vmin, found.vmax, found.total, n_pixels)
        # one comparison per distinct float32 threshold; columns share them
        cut = sorted({_round_down32(v) for v in thresholds if v is not None})
        n_thr = len(cut)
        padded = np.full(-(-n_thr // 8) * 8, np.inf, np.float32)
        padded[:n_thr] = cut
        events = _row_events(runs.col, runs.start, runs.end, geo.height)
        parts = _split(geo.height, n_pixels, self.threads)
        hists = _run_parts(lambda lo, hi: _joint_histogram(tab.t, *tab.rows, lo, hi, found.vmin, span, padded, n_thr,
                                                           *events), parts)
        joint = np.sum(hists, axis=0).reshape(2, LEVELS, n_thr + 1)
        return self._from_joint(joint, thresholds, cut, runs, found)

    def _from_joint(self, joint, thresholds, cut, runs: _MaskRuns, found: _Extrema) -> _PairCounts:
        hist_in = joint[1].sum(axis=1)
        hist_all = joint[0].sum(axis=1) + hist_in
        # pixels exceeding at least j of the sorted thresholds, per level: suffix sums over k
        above_all = np.cumsum((joint[0] + joint[1])[:, ::-1], axis=1)[:, ::-1].sum(axis=0)
        above_in = np.cumsum(joint[1][:, ::-1], axis=1)[:, ::-1].sum(axis=0)
        otsu = None
        pred, inter = [], []
        for thr in thresholds:
            if thr is None:
                if otsu is None:
                    level = int(_otsu_level(hist_all))
                    otsu = (int(hist_all[level + 1:].sum()), int(hist_in[level + 1:].sum()))
                pred.append(otsu[0])
                inter.append(otsu[1])
            else:
                j = cut.index(_round_down32(thr)) + 1  # m > cut[j - 1] <=> at least j thresholds exceeded
                pred.append(int(above_all[j]))
                inter.append(int(above_in[j]))
        d2 = _nearest_squared(runs.col, runs.start, runs.end, found.peak[0], found.peak[1])
        distance = math.sqrt(d2)
        if distance > self.max_distance:
            distance = math.inf
        pred_area = np.array(pred, np.int64)
        return _PairCounts(runs.area, pred_area, np.array(inter, np.int64), pred_area > 0, distance, True,
                           hist_all, hist_in)

    # ----------------------------------------------------------------- result

    def result(self) -> MaskCounts:
        """The counts of every pair added so far (copies)."""
        ints, floats = self._ints.array(), self._floats.array()
        return MaskCounts(
            columns=self.columns,
            n_classes=self.n_classes,
            max_distance=self.max_distance,
            rows=ints[:, 0].copy(),
            classes=ints[:, 1].copy(),
            gt_area=ints[:, 2].copy(),
            pred_area=self._pred_area.array(),
            inter=self._inter.array(),
            pred_any=self._pred_any.array(),
            peak_distance=floats[:, 0].copy(),
            valid=self._valid.array()[:, 0].copy(),
            probs=floats[:, 1].copy() if self._with_probs else None,
            hist_all=self._hist_all.copy(),
            hist_in=self._hist_in.copy(),
        )


class _Rows:
    """A table of fixed-width rows that grows by doubling (a few bytes per pair, no object per pair)."""

    def __init__(self, dtype, width: int) -> None:
        self._data = np.zeros((16, width), dtype)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def append(self, values) -> None:
        if self._n == self._data.shape[0]:
            grown = np.zeros((2 * self._n, self._data.shape[1]), self._data.dtype)
            grown[: self._n] = self._data
            self._data = grown
        self._data[self._n] = values
        self._n += 1

    def array(self) -> np.ndarray:
        return self._data[: self._n].copy()


def _valid_source(x: np.ndarray) -> bool:
    return bool(np.isfinite(x).all() and x.max() > x.min())


# --------------------------------------------------------------------------- metrics


def _per_pair_column(counts: MaskCounts, column) -> np.ndarray:
    b = len(counts.columns)
    col = np.asarray(column, dtype=np.int64)
    if col.ndim == 0:
        col = np.full(counts.n_classes, int(col), np.int64)
    if col.shape != (counts.n_classes,):
        raise ValueError(f"column must be an int or one column per class ({counts.n_classes}), got shape {col.shape}")
    if col.size and (col.min() < 0 or col.max() >= b):
        raise ValueError(f"columns must be in [0, {b}), got {col.tolist()}")
    return col[counts.classes]


def _gate(counts: MaskCounts, cutoffs) -> np.ndarray:
    """Per pair, whether the map is kept (probability above its class's cut-off)."""
    if cutoffs is None:
        return np.ones(counts.rows.size, bool)
    if counts.probs is None:
        raise ValueError("gating needs the probabilities: pass prob to MaskCounter.add")
    cut = np.asarray(cutoffs, dtype=np.float64)
    if cut.shape != (counts.n_classes,):
        raise ValueError(f"cutoffs must hold one value per class ({counts.n_classes}), got shape {cut.shape}")
    return counts.probs > cut[counts.classes]


def pair_ious(counts: MaskCounts, column=0, *, true_pos_only: bool = True, cutoffs=None) -> np.ndarray:
    """IoU of every pair (NaN where undefined).

    Args:
        counts: from :meth:`MaskCounter.result`.
        column: the column scored: an int, or one per class (e.g. tuned fractions).
        true_pos_only: only pairs where both the prediction and the mask are non-empty
            (else also a non-empty prediction without a mask, IoU 0, and an empty
            prediction with one, IoU 0).
        cutoffs: per-class probability cut-offs (gating); None: no gating.

    Returns:
        ``(P,)`` float64.

    """
    n = counts.rows.size
    idx = np.arange(n)
    col = _per_pair_column(counts, column)
    kept = _gate(counts, cutoffs)
    pred_any = counts.pred_any[idx, col] & kept
    inter = np.where(kept, counts.inter[idx, col], 0)
    pred = np.where(kept, counts.pred_area[idx, col], 0)
    positive = counts.gt_area > 0
    union = np.where(positive, pred + counts.gt_area - inter, 1)
    iou = np.where(positive, inter / union, 0.0)
    defined = positive & pred_any if true_pos_only else positive | pred_any
    return np.where(defined, iou, np.nan)


def _class_means(values: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean of the finite values of each class (NaN for a class without one)."""
    v = np.asarray(values, dtype=np.float64)
    cls = np.asarray(classes, dtype=np.int64)
    finite = np.isfinite(v)
    sums = np.bincount(cls[finite], weights=v[finite], minlength=n_classes)[:n_classes]
    n = np.bincount(cls[finite], minlength=n_classes)[:n_classes]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, sums / np.maximum(n, 1), np.nan)


def _mean_defined(per_class: np.ndarray) -> float:
    defined = np.isfinite(per_class)
    return float(per_class[defined].mean()) if defined.any() else float("nan")


def mean_iou(ious: np.ndarray, classes: np.ndarray, n_classes: int) -> tuple[float, np.ndarray]:
    """Per-class mIoU (mean of the class's defined pairs) and overall mIoU (mean over classes that have one).

    Returns:
        ``(overall, per_class)``; NaN where nothing is defined.

    """
    per_class = _class_means(ious, classes, n_classes)
    return _mean_defined(per_class), per_class


def hit_rates(counts: MaskCounts, tolerance: float = 0.0) -> tuple[float, np.ndarray, np.ndarray]:
    """Hit rate (pointing game on masks) with a distance tolerance in mask pixels.

    Returns:
        ``(overall, per_class, hits)``: ``hits`` is ``(P,)`` bool (False for pairs with an empty
        mask, which do not count); ``per_class`` the mean over a class's pairs with a mask;
        ``overall`` the mean over classes that have such pairs.

    Raises:
        ValueError: for a tolerance above the counts' ``max_distance`` (those distances were not kept).

    """
    if not 0 <= tolerance <= counts.max_distance:
        raise ValueError(f"tolerance must be in [0, {counts.max_distance:g}] (max_distance), got {tolerance}")
    positive = counts.gt_area > 0
    hits = positive & (counts.peak_distance <= tolerance)
    per_class = _class_means(np.where(positive, hits.astype(np.float64), np.nan), counts.classes, counts.n_classes)
    return _mean_defined(per_class), per_class, hits


def _first_best(scores: np.ndarray, decimals: int | None) -> np.ndarray:
    """Per row, the first index of the largest finite score (-1 where none is finite)."""
    s = np.asarray(scores, dtype=np.float64)
    if decimals is not None:
        s = np.round(s, decimals)
    finite = np.isfinite(s)
    best = np.argmax(np.where(finite, s, -np.inf), axis=1)
    return np.where(finite.any(axis=1), best, -1)


def tune_fractions(
    counts: MaskCounts,
    columns: Sequence[int],
    *,
    default: int = 0,
    true_pos_only: bool = True,
    decimals: int | None = None,
) -> np.ndarray:
    """Per class, the candidate column with the highest mIoU (``tune_heatmap_threshold.py``).

    Args:
        counts: the tuning part's counts.
        columns: candidate columns (e.g. the fractions of :data:`FRACTION_GRID`), in the order
            ties are broken (the first wins; the reference lists the fractions ascending).
        default: the column of a class without any defined pair.
        true_pos_only: the reference tunes on true positives only.
        decimals: round the class mIoU before comparing (None, as the reference).

    Returns:
        ``(K,)`` int64 column per class.

    """
    cand = [int(c) for c in columns]
    if not cand:
        raise ValueError("give at least one candidate column")
    scores = np.stack([mean_iou(pair_ious(counts, c, true_pos_only=true_pos_only), counts.classes,
                                counts.n_classes)[1] for c in cand], axis=1)
    best = _first_best(scores, decimals)
    return np.where(best >= 0, np.asarray(cand, np.int64)[np.maximum(best, 0)], int(default))


def tune_cutoffs(
    counts: MaskCounts,
    column=0,
    *,
    grid: Sequence[float] = CUTOFF_GRID,
    decimals: int | None = 3,
    default: float | None = None,
) -> np.ndarray:
    """Per class, the probability cut-off with the highest mIoU over every pair (``tune_probability_threshold.py``).

    The mIoU counts every pair with a mask or a prediction (``true_pos_only=False``) and is
    rounded to ``decimals`` before comparing, as the reference (``round(miou, 3)``); ties go to
    the first (smallest) cut-off.

    Args:
        counts: the tuning part's counts (with probabilities).
        column: the binarisation gated: an int or one per class.
        grid: candidate cut-offs in tie-breaking order.
        decimals: rounding of the class mIoU; None compares them unrounded.
        default: cut-off of a class without a defined pair at any cut-off (None: ``grid[0]``).

    Returns:
        ``(K,)`` float64 cut-off per class.

    """
    cand = np.asarray([float(g) for g in grid], np.float64)
    if cand.size == 0:
        raise ValueError("grid must hold at least one cut-off")
    k = counts.n_classes
    scores = np.stack([mean_iou(pair_ious(counts, column, true_pos_only=False, cutoffs=np.full(k, c)),
                                counts.classes, k)[1] for c in cand], axis=1)
    best = _first_best(scores, decimals)
    fallback = cand[0] if default is None else float(default)
    return np.where(best >= 0, cand[np.maximum(best, 0)], fallback)


def mask_pxap(counts: MaskCounts) -> tuple[float, np.ndarray]:
    """PxAP per class over the pairs with a mask (levels of ``q`` as thresholds), and their mean.

    Returns:
        ``(mean over classes with mask pixels, per_class)``; NaN where a class has none.

    """
    pos = counts.hist_in.astype(np.float64)
    neg = (counts.hist_all - counts.hist_in).astype(np.float64)
    # a top bin that nothing reaches, so the curve starts at recall 0 (the reference's [2, 3] bin)
    pad = np.zeros((pos.shape[0], 1))
    _, _, ap = average_precision_from_histograms(np.hstack([pos, pad]), np.hstack([neg, pad]))
    per_class = np.asarray(ap, dtype=np.float64).reshape(-1)
    return _mean_defined(per_class), per_class
