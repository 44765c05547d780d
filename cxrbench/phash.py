"""A 256-bit perceptual image hash (DCT pHash) and Hamming-distance matching.

The hash is the DCT hash of Zauner 2010 ("Implementation and Benchmarking of Perceptual
Image Hash Functions", master's thesis, Upper Austria University of Applied Sciences;
libpHash's ``ph_dct_imagehash``) with a larger block: the grey image is reduced to
32 x 32, its 2-D DCT-II taken, and the 16 x 16 block of the lowest frequencies without the
DC row and column (coefficients ``[1:17, 1:17]``) compared with its median: bit
``16 * r + c`` is 1 where coefficient ``(r + 1, c + 1)`` is above it. libpHash smooths with
a 7 x 7 mean filter before a plain resize; here the reduction is OpenCV's area averaging
(``INTER_AREA``), the same low-pass in one step and independent of the input's size, so
one image hashes alike as a 1024 px PNG, a 1024 px DICOM, a 256 px or 224 px downscale or
a JPEG re-encoding; comparing with the median makes the hash blind to a change of
brightness or contrast (a positive affine map of the grey levels).

**Why 256 bits, not libpHash's 64.** Chest radiographs look alike: on the 830 real NIH
images of ``shared/data`` (343,000 pairs of different images) the 64-bit hash puts two
different images 6 bits apart and 27 pairs at 8, so at NIH scale (10^9 pairs) any
threshold that keeps a re-encoded copy (up to 2 bits apart) would also join thousands of
different images. With 256 bits the same image at 1024 px and as a 256 px PNG, a 224 px
downscale or a quality-75 JPEG differs by at most 4 bits (32 images checked), and
different images by at least 64 (mean 122); :data:`MATCH_DISTANCE` sits between.

Images whose hash has fewer than :data:`MIN_SET_BITS` ones (a flat or nearly flat image:
many coefficients tie at the median, e.g. an all-black placeholder) are *unhashable* and
never matched, so blank images do not all join each other.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

HASH_SIZE = 32
"""The side the image is reduced to before the DCT."""

BLOCK = 16
"""The side of the low-frequency DCT block the bits come from (``BLOCK ** 2`` bits)."""

HASH_BITS = BLOCK * BLOCK
HASH_BYTES = HASH_BITS // 8

HASH_METHOD = "dct-phash-256/v1"
"""Names the hash definition; stored beside every cached hash, so another definition is recomputed."""

MATCH_DISTANCE = 16
"""Largest Hamming distance (of 256 bits) at which two images are taken to be one image.

Four times the largest distance measured between copies of one image, a quarter of the
smallest measured between different images (module docstring).
"""

MIN_SET_BITS = 64
"""A hash with fewer ones than this is of a (nearly) flat image and is never matched."""


def phash(image: np.ndarray) -> np.ndarray:
    """The 256-bit DCT perceptual hash of one 2-D grey image (any size, any dtype), as 32 bytes."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {image.shape}")
    pixels = np.asarray(image, dtype=np.float32)
    shrinking = pixels.shape[0] >= HASH_SIZE and pixels.shape[1] >= HASH_SIZE
    small = cv2.resize(pixels, (HASH_SIZE, HASH_SIZE),
                       interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    block = cv2.dct(small)[1 : BLOCK + 1, 1 : BLOCK + 1].ravel()
    return np.packbits(block > np.median(block))


def phashes(images: Iterable[np.ndarray] | np.ndarray) -> np.ndarray:
    """The hashes of a sequence of images (an ``N x H x W`` array, memory-mapped or not): ``N x 32`` uint8."""
    rows = [phash(np.asarray(image)) for image in images]
    return np.stack(rows) if rows else np.zeros((0, HASH_BYTES), dtype=np.uint8)


def hashable(hashes: np.ndarray) -> np.ndarray:
    """Which hashes may be matched (not those of flat images, :data:`MIN_SET_BITS`)."""
    return np.bitwise_count(np.asarray(hashes, dtype=np.uint8)).sum(axis=-1) >= MIN_SET_BITS


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances of broadcastable ``... x 32`` uint8 hash arrays (over the last axis)."""
    return np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=-1, dtype=np.int64)


def _words(hashes: np.ndarray) -> np.ndarray:
    """``N x 32`` bytes as ``N x 4`` uint64 words (one XOR + popcount per word)."""
    return np.ascontiguousarray(hashes, dtype=np.uint8).view(np.uint64).reshape(len(hashes), -1)


def brute_force_matches(queries: np.ndarray, references: np.ndarray, max_distance: int = MATCH_DISTANCE,
                        chunk: int = 256) -> np.ndarray:
    """Which queries have a reference within ``max_distance`` bits, by comparing every pair.

    The reference implementation of :func:`matches` (and its fallback where the buckets
    are too crowded): about 3 x 10^7 pairs a second.
    """
    found = np.zeros(len(queries), dtype=bool)
    if not len(queries) or not len(references):
        return found
    q, r = _words(queries), _words(references)
    for start in range(0, len(q), chunk):
        part = q[start : start + chunk, None, :]
        distance = np.bitwise_count(np.bitwise_xor(part, r[None])).sum(axis=-1, dtype=np.int64)
        found[start : start + chunk] = (distance <= max_distance).any(axis=1)
    return found


def matches(queries: np.ndarray, references: np.ndarray, max_distance: int = MATCH_DISTANCE,
            max_candidates: int = 5_000_000) -> np.ndarray:
    """Which query hashes have a reference hash within ``max_distance`` bits (unhashable ones never).

    Exact, by the pigeonhole principle (Manku, Jain and Das Sarma 2007, "Detecting
    near-duplicates for web crawling", WWW): the bits are cut into ``max_distance + 1``
    blocks, and two hashes at most ``max_distance`` apart agree on at least one block
    entirely; so only pairs that share a block's value (found by sorting) are compared in
    full. Different radiographs share a 15-bit block rarely, so this looks at a tiny part
    of the pairs a full comparison would; where the candidates exceed ``max_candidates``
    (very alike data) every pair is compared instead.

    Args:
        queries: ``Q x 32`` uint8 hashes (the images that may be excluded).
        references: ``R x 32`` uint8 hashes (the images they are looked up among).
        max_distance: the largest distance that is a match.
        max_candidates: above this many candidate pairs, compare all pairs.

    Returns:
        ``Q`` booleans.

    """
    queries = np.asarray(queries, dtype=np.uint8).reshape(-1, HASH_BYTES)
    references = np.asarray(references, dtype=np.uint8).reshape(-1, HASH_BYTES)
    q_ok, r_ok = np.flatnonzero(hashable(queries)), np.flatnonzero(hashable(references))
    found = np.zeros(len(queries), dtype=bool)
    if not len(q_ok) or not len(r_ok):
        return found
    q, r = queries[q_ok], references[r_ok]
    q_bits, r_bits = np.unpackbits(q, axis=1), np.unpackbits(r, axis=1)
    total = 0
    for bits in np.array_split(np.arange(HASH_BITS), max_distance + 1):
        weights = np.left_shift(np.int64(1), np.arange(len(bits), dtype=np.int64))
        q_key, r_key = q_bits[:, bits] @ weights, r_bits[:, bits] @ weights
        order = np.argsort(r_key, kind="stable")
        low = np.searchsorted(r_key[order], q_key, side="left")
        count = np.searchsorted(r_key[order], q_key, side="right") - low
        total += int(count.sum())
        if total > max_candidates:
            found[q_ok] = brute_force_matches(q, r, max_distance)
            return found
        cand_q = np.repeat(np.arange(len(q)), count)
        cand_r = order[np.repeat(low, count) + np.arange(len(cand_q)) - np.repeat(np.cumsum(count) - count, count)]
        close = hamming(q[cand_q], r[cand_r]) <= max_distance
        found[q_ok[cand_q[close]]] = True
    return found
