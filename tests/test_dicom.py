"""cxrbench/dicom.py and its hook in imageio: DICOM -> uint8 by the documented rules.

Every file is synthetic, written with pydicom (``cxrbench.dicom.write_dicom`` or a
hand-built dataset); expected values are computed here from the DICOM standard's
formulas (PS3.3 C.11.1 / C.11.2), not with pydicom.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset as PydicomDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from cxrbench import dicom as dicom_module
from cxrbench.data import open_cache, prepare_split, resize_square
from cxrbench.dicom import INSTALL_DECODERS, decoder_available, dicom_size, read_dicom, write_dicom
from cxrbench.filedataset import FileDataset, FileLayout
from cxrbench.imageio import IMAGE_SUFFIXES, ImageReadError, image_size, read_grey, scan_files
from cxrbench.interfaces import DatasetContext, Split


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR) onto 0..255, written from the standard."""
    x = np.asarray(x, np.float64)
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    y = np.where(x <= center - 0.5 - (width - 1) / 2, 0.0, y)
    y = np.where(x > center - 0.5 + (width - 1) / 2, 255.0, y)
    return np.rint(y)


def min_max(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.rint((x - x.min()) * 255.0 / (x.max() - x.min()))


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- the grey rules


def test_8bit_monochrome2_is_kept_as_stored(tmp_path):
    pixels = np.array([[0, 17, 100], [200, 254, 255]], np.uint8)
    write_dicom(tmp_path / "a.dcm", pixels)
    out = read_grey(tmp_path / "a.dcm")
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, pixels)
    # a dark 8-bit image is NOT stretched (it stays identical to the PNG it came from)
    dark = np.array([[10, 20], [30, 40]], np.uint8)
    write_dicom(tmp_path / "dark.dcm", dark)
    np.testing.assert_array_equal(read_grey(tmp_path / "dark.dcm"), dark)


def test_monochrome1_is_inverted(tmp_path):
    pixels = np.array([[0, 1, 128], [200, 254, 255]], np.uint8)
    write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1")
    np.testing.assert_array_equal(read_grey(tmp_path / "m1.dcm"), 255 - pixels)
    # after windowing too: the window is applied, then the result inverted
    wide = np.array([[0, 500, 1000], [1500, 2000, 4095]], np.uint16)
    write_dicom(tmp_path / "m1w.dcm", wide, photometric="MONOCHROME1", bits_stored=12, window=(1000, 1001))
    expected = 255 - linear_window(wide, 1000, 1001)
    np.testing.assert_array_equal(read_grey(tmp_path / "m1w.dcm"), expected)
    assert read_grey(tmp_path / "m1w.dcm")[0, 0] == 255  # below the window: white in MONOCHROME1 -> bright


def test_16bit_without_window_is_min_max_scaled(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(900, 3100, size=(20, 30)).astype(np.uint16)
    write_dicom(tmp_path / "w.dcm", pixels, bits_stored=12)
    out = read_grey(tmp_path / "w.dcm")
    np.testing.assert_array_equal(out, min_max(pixels))
    assert out.min() == 0 and out.max() == 255  # the image's own range, not 0..4095
    # a constant image has no range: all 0, no division by zero
    write_dicom(tmp_path / "flat.dcm", np.full((4, 4), 700, np.uint16), bits_stored=12)
    np.testing.assert_array_equal(read_grey(tmp_path / "flat.dcm"), np.zeros((4, 4), np.uint8))


def test_rescale_slope_and_intercept(tmp_path):
    stored = np.array([[0, 100, 200], [300, 400, 1000]], np.uint16)
    # min-max after the modality transform: y = 2 x - 100, so the same relative scale ...
    write_dicom(tmp_path / "r.dcm", stored, bits_stored=12, rescale=(2.0, -100.0))
    np.testing.assert_array_equal(read_grey(tmp_path / "r.dcm"), min_max(2.0 * stored - 100))
    # ... but a window is in rescaled units: it must see 2 x - 100, not x
    write_dicom(tmp_path / "rw.dcm", stored, bits_stored=12, rescale=(2.0, -100.0), window=(300.0, 401.0))
    np.testing.assert_array_equal(read_grey(tmp_path / "rw.dcm"), linear_window(2.0 * stored - 100, 300, 401))
    # the same window on the raw values would give a different image
    assert not np.array_equal(linear_window(stored, 300, 401), linear_window(2.0 * stored - 100, 300, 401))
    # an 8-bit file with an identity rescale stays as stored
    eight = np.array([[3, 50], [100, 250]], np.uint8)
    write_dicom(tmp_path / "r8.dcm", eight, rescale=(1.0, 0.0))
    np.testing.assert_array_equal(read_grey(tmp_path / "r8.dcm"), eight)


def test_window_center_and_width(tmp_path):
    pixels = np.arange(0, 4096, 64, dtype=np.uint16).reshape(8, 8)
    write_dicom(tmp_path / "w.dcm", pixels, bits_stored=12, window=(2048, 1025))
    out = read_grey(tmp_path / "w.dcm")
    np.testing.assert_array_equal(out, linear_window(pixels, 2048, 1025))
    # hand-computed: 1024 is below the window (<= 2047.5 - 512), 2048 is ((0.5 / 1024) + 0.5) * 255 = 127.6
    assert out.flat[16] == 0 and pixels.flat[16] == 1024
    assert out.flat[32] == 128 and pixels.flat[32] == 2048
    assert out.flat[-1] == 255
    # several windows (VM > 1): the first is used
    ds = pydicom.dcmread(tmp_path / "w.dcm")
    ds.WindowCenter, ds.WindowWidth = ["1000", "3000"], ["501", "2001"]
    ds.save_as(tmp_path / "multi.dcm")
    np.testing.assert_array_equal(read_grey(tmp_path / "multi.dcm"), linear_window(pixels, 1000, 501))


def test_sigmoid_window(tmp_path):
    pixels = np.array([[0, 1000, 2000], [2048, 3000, 4095]], np.uint16)
    write_dicom(tmp_path / "s.dcm", pixels, bits_stored=12, window=(2048, 1000))
    ds = pydicom.dcmread(tmp_path / "s.dcm")
    ds.VOILUTFunction = "SIGMOID"
    ds.save_as(tmp_path / "s.dcm")
    expected = np.rint(255.0 / (1 + np.exp(-4 * (pixels - 2048.0) / 1000.0)))  # PS3.3 C.11.2.1.3.1
    np.testing.assert_array_equal(read_grey(tmp_path / "s.dcm"), expected)


def test_voi_lut_sequence_is_preferred_to_the_window(tmp_path):
    pixels = np.array([[0, 1, 2], [3, 4, 9]], np.uint16)
    write_dicom(tmp_path / "lut.dcm", pixels, bits_stored=12, window=(2, 3))
    ds = pydicom.dcmread(tmp_path / "lut.dcm")
    item = PydicomDataset()
    # 4 entries starting at input 1, 12-bit output: inputs < 1 -> entry 0, > 4 -> last entry
    item.add_new("LUTDescriptor", "US", [4, 1, 12])
    item.add_new("LUTData", "US", [100, 400, 1000, 2600])
    ds.VOILUTSequence = DicomSequence([item])
    ds.save_as(tmp_path / "lut.dcm")
    lut = {0: 100, 1: 100, 2: 400, 3: 1000, 4: 2600, 9: 2600}
    expected = np.rint((np.vectorize(lut.get)(pixels) - 100) * 255.0 / 2500)  # the LUT's own range -> 0..255
    np.testing.assert_array_equal(read_grey(tmp_path / "lut.dcm"), expected)


def test_signed_pixels(tmp_path):
    pixels = np.array([[-1000, -200], [0, 1500]], np.int16)
    write_dicom(tmp_path / "signed.dcm", pixels, bits_stored=16)
    np.testing.assert_array_equal(read_grey(tmp_path / "signed.dcm"), min_max(pixels))


# --------------------------------------------------------------------------- refusals, one line each


def _dataset_from(path: Path, **changes) -> Path:
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(path)
    return path


def test_colour_and_multiframe_files_fail_with_one_line(tmp_path):
    write_dicom(tmp_path / "rgb.dcm", np.zeros((4, 4), np.uint8))
    _dataset_from(tmp_path / "rgb.dcm", SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0,
                  PixelData=bytes(48))
    with pytest.raises(ImageReadError) as excinfo:
        read_grey(tmp_path / "rgb.dcm")
    assert "rgb.dcm" in one_line_error(excinfo) and "colour" in str(excinfo.value)

    write_dicom(tmp_path / "frames.dcm", np.zeros((4, 4), np.uint8))
    _dataset_from(tmp_path / "frames.dcm", NumberOfFrames=3, PixelData=bytes(48))
    with pytest.raises(ImageReadError) as excinfo:
        read_grey(tmp_path / "frames.dcm")
    assert "frames.dcm" in one_line_error(excinfo) and "3 frames" in str(excinfo.value)

    write_dicom(tmp_path / "palette.dcm", np.zeros((4, 4), np.uint8))
    _dataset_from(tmp_path / "palette.dcm", PhotometricInterpretation="PALETTE COLOR")
    with pytest.raises(ImageReadError, match="PALETTE COLOR"):
        read_grey(tmp_path / "palette.dcm")


def test_huge_claimed_size_is_refused_before_decoding(tmp_path):
    write_dicom(tmp_path / "huge.dcm", np.zeros((4, 4), np.uint8))
    _dataset_from(tmp_path / "huge.dcm", Rows=60000, Columns=60000)
    with pytest.raises(ImageReadError) as excinfo:
        read_grey(tmp_path / "huge.dcm")
    assert "above the limit" in one_line_error(excinfo)


def test_not_a_dicom_file_and_missing_file(tmp_path):
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom file at all " * 20)
    with pytest.raises(ImageReadError) as excinfo:
        read_grey(tmp_path / "junk.dcm")
    assert "junk.dcm" in one_line_error(excinfo)
    with pytest.raises(ImageReadError, match="missing.dcm: no such file"):
        read_grey(tmp_path / "missing.dcm")
    with pytest.raises(ImageReadError, match="missing.dicom"):
        image_size(tmp_path / "missing.dicom")


def _encapsulated(tmp_path: Path, name: str, syntax: str, fragment: bytes) -> Path:
    path = tmp_path / name
    write_dicom(path, np.zeros((8, 8), np.uint16), bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([fragment])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path)
    return path


def test_compressed_file_without_a_decoder_names_the_file_syntax_and_extra(tmp_path, monkeypatch):
    path = _encapsulated(tmp_path, "j2k.dcm", JPEG2000Lossless, b"\xff\x4f\xff\x51" + b"junk" * 8)
    monkeypatch.setattr(dicom_module, "decoder_available", lambda syntax: False)  # as on a machine without one
    with pytest.raises(ImageReadError) as excinfo:
        read_grey(path)
    message = one_line_error(excinfo)
    assert str(path) in message
    assert "JPEG 2000 Image Compression (Lossless Only)" in message and JPEG2000Lossless in message
    assert INSTALL_DECODERS in message and 'pip install "cxrbench[dicom]"' in message
    # the header (and so the size) is still read without any decoder
    assert image_size(path) == (8, 8)


def test_compressed_file_with_broken_data_fails_with_one_line(tmp_path):
    path = _encapsulated(tmp_path, "broken.dcm", JPEG2000Lossless, b"\xff\x4f\xff\x51" + b"junk" * 8)
    with pytest.raises(ImageReadError) as excinfo:
        read_grey(path)
    message = one_line_error(excinfo)
    assert str(path) in message and JPEG2000Lossless in message
    # whichever way it fails here: a decoder that chokes on the junk, or none installed
    assert ("failed" in message) == decoder_available(JPEG2000Lossless)
    unknown = _encapsulated(tmp_path, "unknown.dcm", "1.2.3.4.5.6", b"junk")
    with pytest.raises(ImageReadError, match=r"unknown\.dcm: 1\.2\.3\.4\.5\.6 is not a known transfer syntax"):
        read_grey(unknown)


def test_decoder_available_follows_pydicom():
    assert decoder_available(RLELossless)  # pydicom's own RLE decoder needs no plugin
    assert not decoder_available("1.2.3.4.5.6")
    assert decoder_available(JPEGLSLossless) == pydicom.pixels.get_decoder(JPEGLSLossless).is_available


def test_rle_lossless_decodes_without_plugins(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 4096, size=(16, 24)).astype(np.uint16)
    write_dicom(tmp_path / "plain.dcm", pixels, bits_stored=12, window=(2000, 2001))
    ds = pydicom.dcmread(tmp_path / "plain.dcm")
    ds.compress(RLELossless)  # pydicom's native RLE encoder
    ds.save_as(tmp_path / "rle.dcm")
    assert pydicom.dcmread(tmp_path / "rle.dcm").file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(read_grey(tmp_path / "rle.dcm"), linear_window(pixels, 2000, 2001))


# --------------------------------------------------------------------------- dispatch, size, scanning


def test_dispatch_by_suffix_and_by_magic(tmp_path):
    pixels = np.array([[5, 6], [7, 8]], np.uint8)
    for name in ("a.dcm", "b.DICOM", "c.dicom", "no_suffix", "d.img"):
        write_dicom(tmp_path / name, pixels)
        np.testing.assert_array_equal(read_grey(tmp_path / name), pixels)
        np.testing.assert_array_equal(read_grey(str(tmp_path / name)), pixels)
    # a non-ASCII path works too (bytes are read by pydicom, not cv2.imread)
    write_dicom(tmp_path / "röntgen.dcm", pixels)
    np.testing.assert_array_equal(read_grey(tmp_path / "röntgen.dcm"), pixels)


def test_image_size_reads_the_header_only(tmp_path, monkeypatch):
    write_dicom(tmp_path / "s.dcm", np.zeros((30, 50), np.uint16), bits_stored=12)
    write_dicom(tmp_path / "s_magic.bin", np.zeros((7, 3), np.uint8))
    calls = []
    original = pydicom.dcmread

    def spy(*args, **kwargs):
        calls.append(kwargs.get("stop_before_pixels"))
        return original(*args, **kwargs)

    monkeypatch.setattr(dicom_module.pydicom, "dcmread", spy)
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(lambda self: pytest.fail("decoded")))
    assert image_size(tmp_path / "s.dcm") == (30, 50)
    assert image_size(tmp_path / "s_magic.bin") == (7, 3)
    assert dicom_size(tmp_path / "s.dcm") == (30, 50)
    assert calls == [True, True, True]


def test_scan_files_finds_dicom(tmp_path):
    (tmp_path / "study" / "series").mkdir(parents=True)
    for name in ("study/series/1.dcm", "2.dicom", "3.DCM", "4.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = scan_files(tmp_path, suffixes=IMAGE_SUFFIXES)
    assert sorted(found) == ["2.dicom", "3.DCM", "4.png", "study/series/1.dcm"]
    assert sorted(scan_files(tmp_path, suffixes=IMAGE_SUFFIXES, by_name=True)) == ["1.dcm", "2.dicom", "3.DCM", "4.png"]


def test_read_from_several_threads(tmp_path):
    rng = np.random.default_rng(2)
    files = []
    for i in range(6):
        write_dicom(tmp_path / f"{i}.dcm", rng.integers(0, 4096, (32, 32)).astype(np.uint16), bits_stored=12,
                    photometric="MONOCHROME1" if i % 2 else "MONOCHROME2")
        files.append(tmp_path / f"{i}.dcm")
    expected = [read_dicom(f) for f in files]
    results: dict[int, list[np.ndarray]] = {}

    def work(k: int) -> None:
        results[k] = [read_grey(f) for f in files]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got in results.values():
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- prepare caches DICOM


class DicomFolder(FileDataset):
    """Every ``images/*.dcm`` of a root, one class, no labels (the prepare test's dataset)."""

    NAME = "dicom_folder"
    SPLITS = ("train",)

    @dataclasses.dataclass(frozen=True)
    class Options:
        root: str
        follow_symlinks: bool = False

    def __init__(self, options, context=None):
        super().__init__(options, context)
        self.classes = ["Finding"]

    def locate(self, root: Path) -> FileLayout:
        return FileLayout(root=root, tables={})

    def build(self):
        found = self.find_images(["images"], suffixes=IMAGE_SUFFIXES)
        paths = sorted(found.values())
        ids = [Path(p).stem for p in paths]
        split = Split(ids=ids, patient_ids=ids, labels=np.zeros((len(ids), 1), np.float32))
        return {"train": (split, paths)}


def test_prepare_caches_dicom_like_any_image(tmp_path):
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(3)
    written = {}
    for i in range(5):
        pixels = rng.integers(0, 4096, size=(40 + i, 48)).astype(np.uint16)
        kwargs = {"window": (2048, 2049)} if i % 2 else {"photometric": "MONOCHROME1"}
        write_dicom(root / "images" / f"img{i}.dcm", pixels, bits_stored=12, **kwargs)
        written[f"img{i}"] = pixels
    dataset = DicomFolder(DicomFolder.Options(root=str(root)), DatasetContext())
    report = prepare_split(dataset, "train", 16, tmp_path / "cache", workers=2)
    assert report.failed == [] and report.decoded == 5
    cached = open_cache(dataset, "train", 16, tmp_path / "cache")
    assert cached is not None
    for row, image_id in enumerate(cached.split.ids):
        pixels = written[image_id]
        i = int(image_id[-1])
        display = linear_window(pixels, 2048, 2049) if i % 2 else 255 - min_max(pixels)
        np.testing.assert_array_equal(cached.images[row], resize_square(display.astype(np.uint8), 16))
        assert tuple(cached.source_sizes[row]) == pixels.shape


def test_image_header_gives_the_patient_id(tmp_path):
    import cv2

    from cxrbench.imageio import ImageHeader, image_header

    write_dicom(tmp_path / "p.dcm", np.zeros((9, 11), np.uint8), patient_id="  PAT-7 ")
    write_dicom(tmp_path / "blank.dicom", np.zeros((4, 4), np.uint8), patient_id="")
    write_dicom(tmp_path / "none_by_magic", np.zeros((5, 6), np.uint16), bits_stored=12)
    assert cv2.imwrite(str(tmp_path / "x.png"), np.zeros((3, 8), np.uint8))
    assert image_header(tmp_path / "p.dcm") == ImageHeader(9, 11, "PAT-7")
    assert image_header(tmp_path / "blank.dicom") == ImageHeader(4, 4, None)
    assert image_header(tmp_path / "none_by_magic") == ImageHeader(5, 6, None)
    assert image_header(tmp_path / "x.png") == ImageHeader(3, 8, None)
    with pytest.raises(ImageReadError, match="gone.png"):
        image_header(tmp_path / "gone.png")
