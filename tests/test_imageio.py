"""cxrbench.imageio: decoding to grey, header sizes, safe paths, directory scans."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrbench.errors import UsageError
from cxrbench.imageio import ImageReadError, image_size, png_size, read_grey, safe_join, scan_files

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _write(path: Path, image: np.ndarray, params: tuple[int, ...] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image, list(params))
    return path


def _luma(bgr: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma, computed independently of OpenCV, in float."""
    b, g, r = (bgr[..., i].astype(np.float64) for i in range(3))
    return 0.299 * r + 0.587 * g + 0.114 * b


# --------------------------------------------------------------------------- read_grey


def test_grey_png_round_trips_exactly(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (7, 11), dtype=np.uint8)
    out = read_grey(_write(tmp_path / "g.png", image))
    assert out.dtype == np.uint8 and out.shape == (7, 11)
    np.testing.assert_array_equal(out, image)


def test_rgba_png_becomes_luma_and_ignores_alpha(tmp_path):
    rng = np.random.default_rng(1)
    bgra = rng.integers(0, 256, (6, 9, 4), dtype=np.uint8)
    out = read_grey(_write(tmp_path / "c.png", bgra))
    assert out.shape == (6, 9) and out.dtype == np.uint8
    assert np.abs(out.astype(np.float64) - _luma(bgra)).max() <= 1.0
    other_alpha = bgra.copy()
    other_alpha[..., 3] = 255 - other_alpha[..., 3]
    np.testing.assert_array_equal(read_grey(_write(tmp_path / "d.png", other_alpha)), out)


def test_grey_stored_as_rgba_or_rgb_is_returned_exactly(tmp_path):
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    np.testing.assert_array_equal(read_grey(_write(tmp_path / "a.png", rgba)), grey)
    np.testing.assert_array_equal(read_grey(_write(tmp_path / "b.png", rgba[..., :3])), grey)


def test_sixteen_bit_png_is_scaled_over_the_full_range(tmp_path):
    values = np.array([[0, 1, 128, 129, 256, 257], [1000, 32768, 40000, 65279, 65534, 65535]], dtype=np.uint16)
    out = read_grey(_write(tmp_path / "s.png", values))
    assert out.dtype == np.uint8
    expected = np.floor(values.astype(np.float64) * 255.0 / 65535.0 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    # A plain cast would keep the low byte: 256 -> 0, 32768 -> 0.
    assert out[0, 4] == 1 and out[1, 1] == 128 and out[1, 5] == 255


def test_sixteen_bit_colour_png(tmp_path):
    rng = np.random.default_rng(2)
    bgr = rng.integers(0, 65536, (5, 4, 3), dtype=np.uint16)
    out = read_grey(_write(tmp_path / "c16.png", bgr))
    expected = _luma(bgr) * 255.0 / 65535.0
    assert out.shape == (5, 4) and np.abs(out - expected).max() <= 1.0


def test_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="nope.png"):
        read_grey(tmp_path / "nope.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="junk.png"):
        read_grey(junk)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.png"):
        read_grey(empty)
    assert issubclass(ImageReadError, UsageError)


# --------------------------------------------------------------------------- sizes


def test_png_size_reads_the_header_of_a_non_square_image(tmp_path):
    path = _write(tmp_path / "r.png", np.zeros((37, 53), np.uint8))
    assert png_size(path) == (37, 53)
    # Independent check of the IHDR layout: width then height, big endian, at byte 16.
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    assert (height, width) == (37, 53)


@pytest.mark.parametrize("progressive", [0, 1])
def test_image_size_parses_jpeg_headers(tmp_path, progressive):
    image = np.random.default_rng(3).integers(0, 256, (41, 67), dtype=np.uint8)
    path = _write(tmp_path / "x.jpg", image, (cv2.IMWRITE_JPEG_PROGRESSIVE, progressive))
    assert image_size(path) == (41, 67) == read_grey(path).shape


def test_sizes_fall_back_to_decoding_other_formats(tmp_path):
    bmp = _write(tmp_path / "x.bmp", np.zeros((9, 14), np.uint8))
    assert image_size(bmp) == (9, 14)
    jpg = _write(tmp_path / "y.jpg", np.zeros((12, 5), np.uint8))
    assert png_size(jpg) == (12, 5)  # not a PNG: decoded instead
    with pytest.raises(ImageReadError, match="missing.png"):
        image_size(tmp_path / "missing.png")


# --------------------------------------------------------------------------- safe paths


def test_safe_join_accepts_paths_inside_the_root(tmp_path):
    assert safe_join(tmp_path, "a/b.png") == (tmp_path / "a" / "b.png").resolve()
    assert safe_join(tmp_path, "a/../b.png") == (tmp_path / "b.png").resolve()


@pytest.mark.parametrize("bad", ["../secret.png", "a/../../secret.png", "/etc/passwd"])
def test_safe_join_refuses_escapes_naming_the_path(tmp_path, bad):
    with pytest.raises(UsageError, match=bad.replace(".", r"\.")):
        safe_join(tmp_path / "root", bad)


def test_safe_join_refuses_links_that_lead_outside(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    (root / "link.png").symlink_to(outside)
    with pytest.raises(UsageError, match="link.png"):
        safe_join(root, "link.png")
    (root / "inner.png").write_bytes(b"y")
    (root / "ok.png").symlink_to(root / "inner.png")
    assert safe_join(root, "ok.png") == (root / "inner.png").resolve()


def test_scan_files_walks_once_filters_and_checks_links(tmp_path):
    root = tmp_path / "root"
    for rel in ["images/a.png", "images/sub/b.PNG", "images/c.txt", "other/d.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "images" / "alias").symlink_to(root / "other")  # inside: followed
    found = scan_files(root, ["images", "absent"], suffixes=(".png",))
    assert set(found) == {"images/a.png", "images/sub/b.PNG", "images/alias/d.png"}
    assert all(os.path.isfile(p) for p in found.values())
    (tmp_path / "secret.png").write_bytes(b"s")
    (root / "images" / "evil.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(UsageError, match="evil.png"):
        scan_files(root, ["images"], suffixes=(".png",))
    with pytest.raises(UsageError, match=r"\.\./elsewhere"):
        scan_files(root, ["../elsewhere"])


# --------------------------------------------------------------------------- real files


def _png_colour_type(path: Path) -> int:
    with open(path, "rb") as f:
        return f.read(26)[25]


def test_real_nih_rgba_pngs_read_as_grey():
    folder = DATA / "nih" / "images"
    if not folder.is_dir():
        pytest.skip(f"real data not found at {DATA}")
    rgba = sorted(p for p in folder.glob("*.png") if _png_colour_type(p) == 6)
    assert len(rgba) == 6
    for path in rgba:
        out = read_grey(path)
        assert out.shape == (256, 256) and out.dtype == np.uint8
        # OpenCV's own grey decode is an independent reference for 8-bit files.
        np.testing.assert_array_equal(out, cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
        assert png_size(path) == (256, 256)


def test_real_chexpert_jpeg_sizes_match_decoding():
    folder = DATA / "chexpert" / "CheXpert-v1.0-small" / "train"
    if not folder.is_dir():
        pytest.skip(f"real data not found at {DATA}")
    paths = sorted(folder.rglob("*.jpg"))
    assert paths
    for path in paths:
        assert image_size(path) == read_grey(path).shape
