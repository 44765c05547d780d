"""Pointing game (cxrbench.locmetrics.pointing): hand cases and straightforward loops."""

from __future__ import annotations

import numpy as np
import pytest

from cxrbench.locmetrics.pointing import pointing_game, pointing_game_masks
from cxrbench.locmetrics.pxap import boxes_to_masks


def box(x, y, w, h):
    return np.array([[x, y, w, h]], dtype=float)


def test_inside_and_near_misses_in_original_pixels():
    true = [box(10, 10, 20, 20)] * 4
    peaks = np.array([[15.0, 15.0], [5.0, 15.0], [5.0, 15.0], [40.0, 40.0]])
    # scale 2: 5 map pixels left of the box = 10 original pixels
    r = pointing_game(peaks, true, [0, 0, 1, 1], scale=2.0, tolerance=15)
    np.testing.assert_allclose(r.distance, [0.0, 10.0, 10.0, np.hypot(20, 20)])
    assert r.hits.tolist() == [True, True, True, False]
    np.testing.assert_allclose(r.class_hit_rate, [1.0, 0.5])
    assert r.hit_rate == pytest.approx(0.75)
    assert r.pair_hit_rate == pytest.approx(0.75)
    assert r.n_no_peak == 0
    assert not pointing_game(peaks[1:2], true[:1], [0], scale=4.0, tolerance=15).hits[0]  # 20 > 15


def test_tolerance_zero_still_hits_inside_and_on_the_edge():
    r = pointing_game(
        np.array([[12.0, 12.0], [30.0, 20.0], [30.01, 20.0]]), [box(10, 10, 20, 20)] * 3, [0, 0, 0], tolerance=0
    )
    assert r.hits.tolist() == [True, True, False]


def test_anisotropic_scale_and_several_boxes():
    true = [np.array([[0, 0, 2, 2], [100, 100, 5, 5]], float)]
    r = pointing_game(np.array([[5.0, 3.0]]), true, [0], scale=[(2.0, 3.0)], tolerance=100)
    np.testing.assert_allclose(r.distance, [np.hypot(3 * 2.0, 1 * 3.0)])


def test_pairs_without_a_peak_are_misses():
    peaks = np.array([[np.nan, np.nan], [15.0, 15.0], [15.0, 15.0]])
    valid = np.array([False, True, False])
    r = pointing_game(peaks, [box(10, 10, 20, 20)] * 3, [0, 0, 1], valid=valid, n_classes=3)
    assert r.hits.tolist() == [False, True, False]
    assert r.n_no_peak == 2
    assert np.isinf(r.distance[[0, 2]]).all()
    np.testing.assert_allclose(r.class_hit_rate[:2], [0.5, 0.0])
    assert np.isnan(r.class_hit_rate[2]) and r.class_pairs.tolist() == [2, 1, 0]
    assert r.hit_rate == pytest.approx(0.25)  # mean over the classes that have pairs


def point_to_square_loop(x, y, mask, sx, sy):
    best = np.inf
    for r, c in zip(*np.nonzero(mask), strict=True):
        dx = max(c - x, 0.0, x - (c + 1))
        dy = max(r - y, 0.0, y - (r + 1))
        best = min(best, np.hypot(dx * sx, dy * sy))
    return best


def test_masks_against_a_pixel_loop():
    rng = np.random.default_rng(0)
    n = 40
    masks = rng.random((n, 12, 15)) < 0.05
    masks[0] = False  # empty mask: never hit
    peaks = rng.uniform(-2, 17, (n, 2))
    scale = rng.uniform(0.5, 4, (n, 2))
    classes = rng.integers(0, 3, n)
    r = pointing_game_masks(peaks, masks, classes, scale=scale, tolerance=6.0)
    expected = np.array([point_to_square_loop(*peaks[i], masks[i], *scale[i]) for i in range(n)])
    np.testing.assert_allclose(r.distance, expected)
    assert r.hits.tolist() == (expected <= 6.0).tolist()
    for k in range(3):
        assert r.class_hit_rate[k] == pytest.approx((expected[classes == k] <= 6.0).mean())
    assert r.hit_rate == pytest.approx(np.mean([(expected[classes == k] <= 6.0).mean() for k in range(3)]))


def test_pixel_aligned_boxes_and_their_masks_agree():
    rng = np.random.default_rng(1)
    n = 60
    boxes = [
        np.column_stack([rng.integers(0, 20, (2, 2)), rng.integers(1, 10, (2, 2))]).astype(float) for _ in range(n)
    ]
    peaks = rng.uniform(0, 30, (n, 2))
    scale = rng.uniform(1, 3, (n, 2))
    by_box = pointing_game(peaks, boxes, np.zeros(n, int), scale=scale, tolerance=10)
    by_mask = pointing_game_masks(peaks, boxes_to_masks(boxes, (30, 30)), np.zeros(n, int), scale=scale, tolerance=10)
    np.testing.assert_allclose(by_box.distance, by_mask.distance)


def test_bad_inputs():
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(np.zeros((1, 2)), [box(0, 0, 1, 1)], [0], tolerance=-1)
    with pytest.raises(ValueError, match="scale"):
        pointing_game(np.zeros((1, 2)), [box(0, 0, 1, 1)], [0], scale=0.0)
    with pytest.raises(ValueError, match="N x 2"):
        pointing_game(np.zeros((1, 3)), [box(0, 0, 1, 1)], [0])
