"""Mask encodings, rasterising, resizing and boxes: hand-computed cases, plain-loop references, real SIIM rows."""

from __future__ import annotations

import csv
import dataclasses
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxrbench import masks
from cxrbench.errors import UsageError
from cxrbench.masks import (
    MaskDecodeError,
    MaskRef,
    coco_rle_area,
    coco_rle_counts,
    combine_siim_rles,
    decode_coco_rle,
    encode_coco_rle,
    mask_bbox,
    mask_region_boxes,
    mask_to_siim_rle,
    polygons_to_mask,
    resize_mask,
    siim_rle_to_mask,
)

# pycocotools' decode trips NumPy 2's __array__(copy=...) deprecation inside the library.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SIIM_CSV = DATA / "siim" / "train-rle.csv"


# --------------------------------------------------------------------------- plain references


def column_major_runs(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed counts, by walking the pixels column by column."""
    h, w = mask.shape
    runs, current, length = [], 0, 0
    for x in range(w):
        for y in range(h):
            value = int(bool(mask[y, x]))
            if value == current:
                length += 1
            else:
                runs.append(length)
                current, length = value, 1
    runs.append(length)
    return runs


def kaggle_rle2mask(rle: str, height: int, width: int) -> np.ndarray:
    """The SIIM-ACR challenge's decoder semantics, as a plain loop over (offset, length) pairs."""
    flat = np.zeros(width * height, np.uint8)
    if rle.strip() != "-1":
        values = [int(v) for v in rle.split()]
        position = 0
        for i in range(0, len(values), 2):
            position += values[i]
            for p in range(position, position + values[i + 1]):
                flat[p] = 1
            position += values[i + 1]
    out = np.zeros((height, width), bool)
    for p in np.flatnonzero(flat):
        out[p % height, p // height] = True  # pixel p is column p // H, row p % H
    return out


def block_reduce(mask: np.ndarray, fy: int, fx: int, how: str) -> np.ndarray:
    h, w = mask.shape
    out = np.zeros((h // fy, w // fx), bool)
    for oy in range(h // fy):
        for ox in range(w // fx):
            block = mask[oy * fy : (oy + 1) * fy, ox * fx : (ox + 1) * fx]
            out[oy, ox] = block.mean() >= 0.5 if how == "majority" else block.any()
    return out


def even_odd_inside(px: float, py: float, polygon: list[tuple[float, float]]) -> bool:
    """Ray casting: an odd number of edge crossings to the right of the point means inside."""
    inside = False
    n = len(polygon)
    for i in range(n):
        (x0, y0), (x1, y1) = polygon[i], polygon[(i + 1) % n]
        if (y0 > py) != (y1 > py):
            x_cross = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
            if x_cross > px:
                inside = not inside
    return inside


def distance_to_edges(px: float, py: float, polygon: list[tuple[float, float]]) -> float:
    best = math.inf
    n = len(polygon)
    for i in range(n):
        (x0, y0), (x1, y1) = polygon[i], polygon[(i + 1) % n]
        dx, dy = x1 - x0, y1 - y0
        t = max(0.0, min(1.0, ((px - x0) * dx + (py - y0) * dy) / (dx * dx + dy * dy)))
        best = min(best, math.hypot(px - (x0 + t * dx), py - (y0 + t * dy)))
    return best


masks_strategy = st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**32 - 1), st.floats(0, 1)).map(
    lambda t: np.random.default_rng(t[2]).random((t[0], t[1])) < t[3]
)


# --------------------------------------------------------------------------- COCO RLE


def test_coco_decode_is_column_major_hand_case():
    mask = np.array([[0, 1, 0], [0, 1, 1]], bool)
    # Column by column: (0, 0) (1, 1) (0, 1) -> 2 zeros, 2 ones, 1 zero, 1 one.
    assert column_major_runs(mask) == [2, 2, 1, 1]
    np.testing.assert_array_equal(decode_coco_rle({"size": [2, 3], "counts": [2, 2, 1, 1]}), mask)
    encoded = encode_coco_rle(mask)
    assert encoded["size"] == [2, 3] and isinstance(encoded["counts"], str)
    np.testing.assert_array_equal(decode_coco_rle(encoded), mask)
    assert coco_rle_counts(encoded["counts"]).tolist() == [2, 2, 1, 1]


@settings(max_examples=60, deadline=None)
@given(masks_strategy)
def test_coco_round_trip_and_counts_match_a_plain_loop(mask):
    encoded = encode_coco_rle(mask)
    decoded = decode_coco_rle(encoded)
    assert decoded.dtype == np.bool_ and decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, mask)
    assert coco_rle_counts(encoded["counts"]).tolist() == column_major_runs(mask)
    assert coco_rle_area(encoded) == int(mask.sum())


def test_coco_counts_parser_handles_large_runs_and_deltas():
    mask = np.zeros((300, 400), bool)
    mask[10:290, 50:60] = True  # runs of 20..15000 need 1-3 characters and negative deltas
    mask[3, 399] = True
    encoded = encode_coco_rle(mask)
    assert coco_rle_counts(encoded["counts"]).tolist() == column_major_runs(mask)
    np.testing.assert_array_equal(decode_coco_rle(encoded), mask)


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ({"size": [100, 100], "counts": "0"}, "cover 0 pixels"),  # pycocotools would read uninitialised memory
        ({"size": [2, 2], "counts": "0`h9"}, "cover 10000 pixels"),
        ({"size": [2, 2], "counts": "0 1"}, "invalid character"),
        ({"size": [2, 2], "counts": "o"}, "end in the middle"),
        ({"size": [2, 2], "counts": [1, -1, 4]}, "negative"),
        ({"size": [2], "counts": "4"}, "size must be"),
        ({"size": [0, 2], "counts": ""}, "positive integers"),
        ({"counts": "4"}, "'size' and 'counts'"),
        ({"size": [2, 2], "counts": 4}, "string or a list"),
    ],
)
def test_malformed_coco_rle_is_refused(rle, message):
    with pytest.raises(MaskDecodeError, match=message):
        decode_coco_rle(rle)
    assert issubclass(MaskDecodeError, UsageError)


# --------------------------------------------------------------------------- polygons


def test_polygon_fill_includes_its_outline_hand_case():
    got = polygons_to_mask([[[1, 1], [6, 1], [6, 4], [1, 4]]], 7, 8)
    expected = np.zeros((7, 8), bool)
    expected[1:5, 1:7] = True  # columns 1..6 and rows 1..4, both ends included
    np.testing.assert_array_equal(got, expected)


def test_polygons_are_ored_so_nested_ones_make_no_hole():
    outer = [[0, 0], [9, 0], [9, 9], [0, 9]]
    inner = [[3, 3], [6, 3], [6, 6], [3, 6]]
    np.testing.assert_array_equal(polygons_to_mask([outer, inner], 10, 10), np.ones((10, 10), bool))
    a = [[0, 0], [4, 0], [4, 4], [0, 4]]
    b = [[2, 2], [7, 2], [7, 6], [2, 6]]
    expected = np.zeros((8, 9), bool)
    expected[0:5, 0:5] = True
    expected[2:7, 2:8] = True
    np.testing.assert_array_equal(polygons_to_mask([a, b], 8, 9), expected)
    np.testing.assert_array_equal(polygons_to_mask([b, a], 8, 9), expected)


def test_self_intersecting_polygon_fills_by_even_odd_rule():
    size = 80
    star = [
        (40 + 36 * math.cos(math.pi / 2 + k * 4 * math.pi / 5), 40 - 36 * math.sin(math.pi / 2 + k * 4 * math.pi / 5))
        for k in range(5)
    ]
    got = polygons_to_mask([star], size, size)
    assert not got[40, 40]  # the pentagram's centre is crossed twice: outside under even-odd
    checked = 0
    for y in range(size):
        for x in range(size):
            # Pixels within 1.5 px of an edge depend on the scan converter's rounding of
            # fractional vertices and on the outline, most at the acute tips.
            if distance_to_edges(x, y, star) > 1.5:
                assert got[y, x] == even_odd_inside(x, y, star), (x, y)
                checked += 1
    assert checked > 4000


def test_polygon_edge_cases():
    line = polygons_to_mask([[[1, 1], [5, 1]]], 4, 8)  # two points: PIL draws the segment
    assert line[1, 1:6].all() and line.sum() == 5
    clipped = polygons_to_mask([[[-5.5, -5.5], [2.2, -5.5], [2.2, 2.2], [-5.5, 2.2]]], 6, 6)
    assert clipped[:3, :3].all() and clipped.sum() == 9
    assert not polygons_to_mask([], 3, 4).any()
    for bad, message in [
        ([[[1, 1]]], "at least 2"),
        ([[[1, 1], [2, math.nan], [3, 3]]], "non-finite"),
        ([[[1, 1, 1], [2, 2]]], "number pairs"),
        ([[["a", 1], [2, 2]]], "number pairs"),
        (["ab"], "list of"),
        ("abc", "list of polygons"),
    ]:
        with pytest.raises(MaskDecodeError, match=message):
            polygons_to_mask(bad, 5, 5)


# --------------------------------------------------------------------------- SIIM-ACR RLE


def test_siim_relative_column_major_hand_case():
    # H=3, W=2: run 1 = pixels 1..2; the next starts 1 after its end (pixel 3) = pixel 4.
    got = siim_rle_to_mask("1 2 1 1", 3, 2)
    np.testing.assert_array_equal(got, np.array([[0, 0], [1, 1], [1, 0]], bool))
    np.testing.assert_array_equal(got, kaggle_rle2mask("1 2 1 1", 3, 2))
    assert mask_to_siim_rle(got) == "1 2 1 1"
    assert not siim_rle_to_mask("-1", 3, 2).any() and not siim_rle_to_mask(" -1 ", 3, 2).any()
    assert mask_to_siim_rle(np.zeros((3, 2), bool)) == "-1"


@settings(max_examples=60, deadline=None)
@given(masks_strategy)
def test_siim_round_trip_matches_kaggle_loop(mask):
    rle = mask_to_siim_rle(mask)
    h, w = mask.shape
    np.testing.assert_array_equal(kaggle_rle2mask(rle, h, w), mask)
    np.testing.assert_array_equal(siim_rle_to_mask(rle, h, w), mask)


def test_combine_siim_ors_rows():
    a = np.zeros((6, 5), bool)
    a[1:3, 1:3] = True
    b = np.zeros((6, 5), bool)
    b[2:5, 2:4] = True
    got = combine_siim_rles([mask_to_siim_rle(a), "-1", mask_to_siim_rle(b)], 6, 5)
    np.testing.assert_array_equal(got, a | b)
    assert not combine_siim_rles([], 6, 5).any()


@pytest.mark.parametrize(
    ("rle", "message"),
    [("1 2 3", "odd number"), ("5 x", "not an integer"), ("1 -2", "negative"), ("1 0", "below 1"), ("4 3", "past")],
)
def test_malformed_siim_rle_is_refused(rle, message):
    with pytest.raises(MaskDecodeError, match=message):
        siim_rle_to_mask(rle, 3, 2)


@pytest.mark.realdata
def test_real_siim_rows_decode_like_the_kaggle_loop():
    if not SIIM_CSV.is_file():
        pytest.skip(f"real SIIM-ACR table not found at {SIIM_CSV}")
    rows = defaultdict(list)
    with open(SIIM_CSV, newline="") as f:
        reader = csv.reader(f)
        assert [c.strip() for c in next(reader)] == ["ImageId", "EncodedPixels"]
        for image_id, rle in reader:
            rows[image_id].append(rle)
    several = [i for i, r in rows.items() if len(r) > 1][:25]
    single = [i for i, r in rows.items() if len(r) == 1 and r[0].strip() != "-1"][:25]
    negative = [i for i, r in rows.items() if r == ["-1"]][:5]
    assert len(several) == 25 and len(single) == 25 and len(negative) == 5
    for image_id in several + single + negative:
        expected = np.zeros((1024, 1024), bool)
        for rle in rows[image_id]:
            one = kaggle_rle2mask(rle, 1024, 1024)
            np.testing.assert_array_equal(siim_rle_to_mask(rle, 1024, 1024), one)
            expected |= one
        ref = MaskRef.from_siim_rles(image_id, "Pneumothorax", rows[image_id], 1024, 1024)
        decoded = ref.decode()
        np.testing.assert_array_equal(decoded, expected)
        assert ref.area() == expected.sum() and ref.is_empty == (not expected.any())
        if len(rows[image_id]) == 1:
            assert mask_to_siim_rle(decoded) == rows[image_id][0].strip()  # the table's runs are maximal


# --------------------------------------------------------------------------- resizing


def test_nearest_enlarging_repeats_pixels():
    mask = np.array([[1, 0], [0, 1]], bool)
    rect = np.zeros((30, 40), bool)
    rect[5:20, 10:35] = True
    odd_bytes = (rect.view(np.uint8) * 255).view(np.bool_)  # bools stored as 255, as PIL's 1-bit images
    np.testing.assert_array_equal(resize_mask(odd_bytes, 15, 20).view(np.uint8), resize_mask(rect, 15, 20))
    expected = np.kron(mask, np.ones((2, 3), bool))
    np.testing.assert_array_equal(resize_mask(mask, 4, 6, "nearest"), expected)
    np.testing.assert_array_equal(resize_mask(mask, 4, 6, "area"), expected)


def test_area_shrink_of_thick_blocks_is_the_block_majority():
    rng = np.random.default_rng(0)
    mask = np.zeros((120, 96), bool)
    for _ in range(6):  # random rectangles at least 9 pixels (the box side for a factor 6) on each side
        y, x = rng.integers(0, 100), rng.integers(0, 80)
        mask[y : y + rng.integers(9, 30), x : x + rng.integers(9, 30)] = True
    got = resize_mask(mask, 20, 16)
    np.testing.assert_array_equal(got, block_reduce(mask, 6, 6, "majority"))


def test_area_shrink_keeps_a_square_straddling_four_output_pixels():
    mask = np.zeros((24, 24), bool)
    # Side 7 > the shrink factor 6, yet at most (4/6)^2 = 0.44 of any output pixel: a box of
    # side s would not be thin enough to be kept, only the sqrt(2) s box catches it.
    mask[2:9, 2:9] = True
    assert not block_reduce(mask, 6, 6, "majority").any()  # majority alone would drop it
    got = resize_mask(mask, 4, 4)
    np.testing.assert_array_equal(got, block_reduce(mask, 6, 6, "any"))
    bigger = np.zeros((24, 24), bool)
    bigger[2:11, 2:11] = True  # side 9 >= sqrt(2) * 6: thick, and still found by the majority rule
    np.testing.assert_array_equal(resize_mask(bigger, 4, 4), block_reduce(bigger, 6, 6, "majority"))
    assert resize_mask(bigger, 4, 4).any()


def test_area_shrink_keeps_thin_structures_that_nearest_loses():
    mask = np.zeros((600, 600), bool)
    mask[3, 20:580] = True  # a 1-pixel horizontal line on a row nearest neighbour never samples
    for i in range(100, 500):
        mask[i, i + 40] = True  # a 1-pixel diagonal
    mask[300:302, 100] = True  # a 2-pixel speck
    nearest = resize_mask(mask, 50, 50, "nearest")
    area = resize_mask(mask, 50, 50)
    assert not nearest[0].any() and nearest.sum() < 10
    # Every pixel is thin, and no output pixel is half covered: the result is the block "any".
    np.testing.assert_array_equal(area, block_reduce(mask, 12, 12, "any"))
    assert len(mask_region_boxes(area)) == 3


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([(2, 3), (4, 4), (5, 2)]))
def test_area_shrink_lies_between_block_majority_and_block_any(seed, factors):
    rng = np.random.default_rng(seed)
    fy, fx = factors
    mask = np.zeros((fy * 12, fx * 12), bool)
    for _ in range(4):
        y, x = rng.integers(0, mask.shape[0]), rng.integers(0, mask.shape[1])
        mask[y : y + rng.integers(1, 20), x : x + rng.integers(1, 20)] = True
    got = resize_mask(mask, 12, 12)
    majority, anywhere = block_reduce(mask, fy, fx, "majority"), block_reduce(mask, fy, fx, "any")
    assert not (majority & ~got).any(), "a half-covered pixel was dropped"
    assert not (got & ~anywhere).any(), "a pixel with no foreground was set"


def test_resize_mixed_axes_and_non_integer_factors():
    mask = np.zeros((40, 10), bool)
    mask[8:24, 2:7] = True
    got = resize_mask(mask, 10, 20)  # rows shrink by 4, columns grow by 2
    expected = np.repeat(block_reduce(mask, 4, 1, "majority"), 2, axis=1)
    np.testing.assert_array_equal(got, expected)
    disk = np.hypot(*np.mgrid[-500:500, -700:700]) < 300
    small = resize_mask(disk, 224, 224)
    assert small.shape == (224, 224)
    assert abs(small.sum() - disk.mean() * 224 * 224) / (disk.mean() * 224 * 224) < 0.02
    assert not resize_mask(np.zeros((50, 60), bool), 7, 9).any()
    with pytest.raises(ValueError, match="method"):
        resize_mask(disk, 10, 10, "bilinear")


# --------------------------------------------------------------------------- boxes


def test_boxes_per_region_and_overall():
    mask = np.zeros((10, 12), bool)
    mask[1:3, 2:5] = True  # rows 1-2, columns 2-4
    mask[3, 5] = True  # touches the first region diagonally only
    mask[6:9, 8:12] = True
    assert mask_bbox(mask) == (2, 1, 10, 8)
    np.testing.assert_array_equal(mask_region_boxes(mask), [[2, 1, 4, 3], [8, 6, 4, 3]])
    np.testing.assert_array_equal(mask_region_boxes(mask, connectivity=4), [[2, 1, 3, 2], [5, 3, 1, 1], [8, 6, 4, 3]])
    assert mask_bbox(np.zeros((4, 4), bool)) is None
    assert mask_region_boxes(np.zeros((4, 4), bool)).shape == (0, 4)


# --------------------------------------------------------------------------- MaskRef


def test_maskref_decodes_every_encoding_lazily(monkeypatch):
    mask = np.zeros((30, 40), bool)
    mask[5:20, 10:35] = True
    polygons = [[[10, 5], [34, 5], [34, 19], [10, 19]]]
    refs = [
        MaskRef.from_coco_rle("img", "Edema", encode_coco_rle(mask)),
        MaskRef.from_polygons("img", "Edema", polygons, 30, 40),
        MaskRef.from_siim_rles("img", "Edema", ["-1", mask_to_siim_rle(mask)], 30, 40),
    ]
    for ref in refs:
        assert ref.size == (30, 40) and not ref.is_empty
        np.testing.assert_array_equal(ref.decode(), mask)
        assert ref.area() == mask.sum() and ref.bbox() == (10, 5, 25, 15)
        np.testing.assert_array_equal(ref.decode_resized(15, 20), block_reduce(mask, 2, 2, "majority"))
        np.testing.assert_array_equal(ref.region_boxes(), [[10, 5, 25, 15]])
        hash(ref)
        with pytest.raises(dataclasses.FrozenInstanceError):
            ref.payload = "x"  # type: ignore[misc]
    assert isinstance(refs[1].payload, tuple) and isinstance(refs[1].payload[0][0], tuple)

    def refuse(*_):
        raise AssertionError("decoded")

    monkeypatch.setattr(masks.coco_mask, "decode", refuse)
    lazy = MaskRef.from_coco_rle("img", "Edema", encode_coco_rle(mask))
    assert lazy.area() == mask.sum() and not lazy.is_empty  # counted from the runs
    with pytest.raises(AssertionError, match="decoded"):
        lazy.decode()


def test_maskref_empty_and_errors_name_the_mask():
    assert MaskRef.from_polygons("a", "b", [], 5, 5).is_empty
    assert MaskRef.from_siim_rles("a", "b", ["-1"], 5, 5).is_empty
    assert MaskRef.from_coco_rle("a", "b", encode_coco_rle(np.zeros((5, 5), bool))).is_empty
    assert MaskRef.from_polygons("a", "b", [[[-9, -9], [-8, -9], [-8, -8]]], 5, 5).is_empty  # outside the image
    bad = MaskRef("img7", "Edema", "coco_rle", "0", 10, 10)
    with pytest.raises(MaskDecodeError, match=r"^mask img7/Edema: COCO RLE runs cover"):
        bad.decode()
    with pytest.raises(MaskDecodeError, match="img7/Edema: polygon 0"):
        MaskRef.from_polygons("img7", "Edema", [[[1, 1]]], 5, 5)
    with pytest.raises(MaskDecodeError, match="img7/Edema: .*size"):
        MaskRef("img7", "Edema", "siim_rle", ("-1",), 0, 5)
    with pytest.raises(ValueError, match="encoding"):
        MaskRef("img7", "Edema", "png", "", 5, 5)  # type: ignore[arg-type]
