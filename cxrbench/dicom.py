"""Reading DICOM chest X-rays (pydicom) into 2-D ``uint8`` grey arrays.

:func:`cxrbench.imageio.read_grey` and :func:`cxrbench.imageio.image_size` call this
module for files named ``*.dcm`` / ``*.dicom`` (any case) or whose bytes 128-131 are the
``DICM`` magic, so datasets, ``cxrbench prepare`` and its cache treat DICOM like any
other image. The rules, in the order the DICOM grey pipeline applies them (PS3.3
C.11 and PS3.4 N.2.1.1):

1. **Checks, on the header, before decoding**: one frame (``NumberOfFrames`` absent or
   1), one sample per pixel with ``PhotometricInterpretation`` ``MONOCHROME1`` or
   ``MONOCHROME2`` (colour, palette and multi-frame files are refused with one line), and
   at most :data:`cxrbench.imageio.MAX_IMAGE_PIXELS` pixels.
2. **Decoding**: ``Dataset.pixel_array``. Native (uncompressed) and RLE Lossless files
   decode with pydicom alone, baseline JPEG and JPEG 2000 also through Pillow; the other
   compressed transfer syntaxes (JPEG lossless and 12-bit, JPEG-LS, HTJ2K) need a decoder
   plugin: ``pip install "cxrbench[dicom]"`` installs pylibjpeg with its libjpeg,
   OpenJPEG and RLE plugins. A file whose transfer syntax no installed plugin reads fails
   with one line naming the file, the syntax and that command.
3. **Modality transform**: ``RescaleSlope`` / ``RescaleIntercept`` (or a Modality LUT)
   with pydicom's ``apply_modality_lut``.
4. **VOI transform (windowing)**, when the file has one, as pydicom's ``apply_voi_lut``
   chooses it: the first ``VOILUTSequence`` item if present, else the first
   ``WindowCenter`` / ``WindowWidth`` pair with its ``VOILUTFunction`` (``LINEAR``,
   ``LINEAR_EXACT``, ``SIGMOID``). The transform's whole output range (for a window, the
   range pydicom maps onto; for a LUT, its lowest to highest entry) becomes 0-255, so a
   window keeps its meaning: values below it are 0, above it 255. A window pydicom
   refuses (width below 1 for ``LINEAR``) is ignored.
5. **Without a VOI transform**: 8-bit data (``BitsStored`` <= 8) whose values lie in
   0-255 is kept as stored (RSNA and SIIM-ACR images are 8-bit re-encodings of PNGs, so
   they stay identical to those PNGs); anything else is scaled min-max over the image's
   own values, ``round(255 * (v - min) / (max - min))`` (a constant image is all 0). Not
   by bit depth: detectors rarely fill their ``BitsStored`` (VinDr-CXR files store 12-16
   bits with values in a fraction of that range), so a bit-depth scaling gives dark,
   flat images. This is the preprocessing most VinDr-CXR work uses (apply the VOI LUT,
   fix MONOCHROME1, min-max to 8 bits).
6. **MONOCHROME1** (0 = white) is inverted last, ``255 - v``, so bone is bright as in
   MONOCHROME2 and as in the PNG/JPEG datasets.

Safe to call from several threads (each call reads its own file).
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, get_decoder
from pydicom.uid import UID

from .errors import one_line
from .imageio import DICOM_SUFFIXES, MAX_IMAGE_PIXELS, ImageReadError

__all__ = [
    "DICOM_MAGIC_OFFSET",
    "DICOM_SUFFIXES",
    "INSTALL_DECODERS",
    "decoder_available",
    "dicom_header",
    "dicom_size",
    "dicom_to_uint8",
    "has_dicom_magic",
    "has_dicom_suffix",
    "read_dicom",
    "read_dicom_bytes",
    "write_dicom",
]

DICOM_MAGIC_OFFSET = 128
"""A DICOM file (PS3.10 7.1) has a 128-byte preamble, then ``DICM``."""
INSTALL_DECODERS = 'pip install "cxrbench[dicom]"'
"""What installs the decoders of compressed transfer syntaxes."""

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_PIXEL_ELEMENTS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

Source = str | os.PathLike[str] | BinaryIO


def has_dicom_suffix(path: str | os.PathLike[str]) -> bool:
    """Whether the file name ends in ``.dcm`` or ``.dicom`` (any case)."""
    return os.fspath(path).lower().endswith(DICOM_SUFFIXES)


def has_dicom_magic(head: bytes) -> bool:
    """Whether the first bytes of a file (at least 132) carry the ``DICM`` magic."""
    return head[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"


def decoder_available(transfer_syntax: str) -> bool:
    """Whether an installed pydicom decoder plugin reads pixel data of this transfer syntax."""
    try:
        return bool(get_decoder(UID(transfer_syntax)).is_available)
    except NotImplementedError:  # a syntax pydicom has no decoder for at all
        return False


def _read(source: Source, name: str, *, header_only: bool) -> Dataset:
    try:
        # force: files written without the 128-byte preamble (older exports) still parse;
        # the checks below refuse what is not an image.
        # defer_size: a header read leaves large values (icons, overlays) on disk, unread
        return pydicom.dcmread(source, force=True, stop_before_pixels=header_only,
                               defer_size=1024 if header_only else None)
    except FileNotFoundError:
        raise ImageReadError(f"cannot read DICOM {name}: no such file") from None
    except OSError as exc:
        raise ImageReadError(f"cannot read DICOM {name}: {exc.strerror or _reason(exc)}") from None
    except (InvalidDicomError, ValueError, KeyError, TypeError, EOFError) as exc:
        raise ImageReadError(f"cannot read DICOM {name}: not a readable DICOM file ({_reason(exc)})") from None


def _size(ds: Dataset, name: str) -> tuple[int, int]:
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise ImageReadError(f"cannot read DICOM {name}: no Rows / Columns in its header (not an image?)") from None
    if rows <= 0 or columns <= 0:
        raise ImageReadError(f"cannot read DICOM {name}: empty image ({rows} x {columns})")
    return rows, columns


def _check_grey_single_frame(ds: Dataset, name: str) -> tuple[int, int]:
    """Refuse what is not one grey frame, on the header alone; return (rows, columns)."""
    frames = ds.get("NumberOfFrames", 1)
    try:
        frames = int(frames or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        raise ImageReadError(f"cannot read DICOM {name}: {frames} frames; only single-frame images are supported")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if samples != 1 or photometric not in _MONOCHROME:
        raise ImageReadError(f"cannot read DICOM {name}: colour image ({photometric}, {samples} samples per pixel); "
                             "only MONOCHROME1 / MONOCHROME2 grey images are supported")
    rows, columns = _size(ds, name)
    if rows * columns > MAX_IMAGE_PIXELS:
        raise ImageReadError(f"cannot read DICOM {name}: {columns} x {rows} pixels is above the limit of "
                             f"{MAX_IMAGE_PIXELS:,}")
    if not any(element in ds for element in _PIXEL_ELEMENTS):
        raise ImageReadError(f"cannot read DICOM {name}: no pixel data")
    return rows, columns


def _transfer_syntax(ds: Dataset) -> UID | None:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(uid)) if uid else None


def _reason(exc: BaseException) -> str:
    """An exception's message on one line (pydicom lists each plugin's failure on its own line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return one_line("; ".join(lines).replace(":;", ":") or type(exc).__name__)


def _decode(ds: Dataset, name: str) -> np.ndarray:
    syntax = _transfer_syntax(ds)
    if syntax is not None and not syntax.is_transfer_syntax:
        raise ImageReadError(f"cannot read DICOM {name}: {syntax} is not a known transfer syntax")
    if syntax is not None and syntax.is_compressed and not decoder_available(syntax):
        raise ImageReadError(f"cannot read DICOM {name}: its transfer syntax {syntax.name} ({syntax}) is compressed "
                             f"and no installed decoder reads it; {INSTALL_DECODERS}")
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # decoder errors come in many types; all are one line naming the file
        what = f"{syntax.name} ({syntax})" if syntax is not None else "pixel data"
        raise ImageReadError(f"cannot read DICOM {name}: decoding {what} failed: {_reason(exc)}") from None


def _valid_lut(ds: Dataset) -> bool:
    items = ds.get("VOILUTSequence")
    return bool(items) and None not in (items[0].get("LUTDescriptor"), items[0].get("LUTData"))


def _window(ds: Dataset) -> tuple[float, float] | None:
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None

    def first(value: object) -> float:
        return float(value[0] if isinstance(value, list | tuple | MultiValue) else value)

    try:
        return first(ds.WindowCenter), first(ds.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None


def _to_range(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``[low, high]`` -> 0..255, rounded; a flat range gives zeros."""
    if not high > low:
        return np.zeros(values.shape, np.uint8)
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _apply_voi(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """The VOI transform (as ``apply_voi_lut`` picks it) mapped onto 0..255, or None without one."""
    if _valid_lut(ds):
        descriptor = ds.VOILUTSequence[0].LUTDescriptor
        entries, first_input = int(descriptor[0]) or 2**16, int(descriptor[1])
        # LUT inputs are integers: rescaled values (float64 from apply_modality_lut) are rounded.
        inputs = np.rint(values).astype(np.int64) if values.dtype.kind == "f" else values
        every_output = apply_voi(np.arange(first_input, first_input + entries), ds)
        return _to_range(apply_voi(inputs, ds), float(every_output.min()), float(every_output.max()))
    window = _window(ds)
    if window is None:
        return None
    center, width = window
    # The window's output range, from pydicom itself: inputs far outside the window map to
    # its two ends (exactly for LINEAR, to within e^-256 for SIGMOID).
    reach = 64.0 * max(abs(width), 1.0)
    try:
        low, high = apply_windowing(np.array([center - reach, center + reach]), ds)
        windowed = apply_windowing(values, ds)
    except ValueError:  # a window pydicom refuses (e.g. width < 1): use the image's own range
        return None
    return _to_range(windowed, float(low), float(high))


def dicom_to_uint8(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored pixel values -> display ``uint8`` (modality, VOI, MONOCHROME1; module rules 3-6).

    Args:
        pixels: ``Rows x Columns`` stored values, as ``Dataset.pixel_array`` returns them.
        ds: the dataset they came from (its modality and VOI modules are read).

    Returns:
        ``Rows x Columns`` C-contiguous uint8 array, bright = dense (bone).

    """
    values = apply_modality_lut(pixels, ds)
    out = _apply_voi(values, ds)
    if out is None:
        bits = int(ds.get("BitsStored", 16) or 16)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if bits <= 8 and low >= 0 and high <= 255:
            out = np.rint(values).astype(np.uint8) if values.dtype.kind == "f" else values.astype(np.uint8)
        else:
            out = _to_range(values, low, high)
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        out = 255 - out
    return np.ascontiguousarray(out, dtype=np.uint8)


def read_dicom(source: Source, name: str | os.PathLike[str] | None = None) -> np.ndarray:
    """Decode a single-frame grey DICOM file into a 2-D ``uint8`` array (the module's rules).

    Args:
        source: a path, or a binary file object holding the file's bytes.
        name: how error messages name the file (default: ``source`` when it is a path).

    Returns:
        ``Rows x Columns`` uint8 array.

    Raises:
        ImageReadError: one line naming the file: not DICOM, colour, multi-frame, too
            large, no pixel data, a compressed syntax without a decoder (with what to
            install), or a decoding failure.

    """
    label = os.fspath(name) if name is not None else (os.fspath(source) if isinstance(source, str | os.PathLike)
                                                       else "<bytes>")
    ds = _read(source, label, header_only=False)
    rows, columns = _check_grey_single_frame(ds, label)
    pixels = _decode(ds, label)
    if pixels.shape != (rows, columns):
        raise ImageReadError(f"cannot read DICOM {label}: decoded shape {pixels.shape} is not Rows x Columns "
                             f"({rows} x {columns})")
    return dicom_to_uint8(pixels, ds)


def dicom_size(source: Source, name: str | os.PathLike[str] | None = None) -> tuple[int, int]:
    """``(Rows, Columns)`` of a DICOM file from its header (pixel data is not read).

    Raises:
        ImageReadError: naming the file when it is missing or has no image size.

    """
    label = os.fspath(name) if name is not None else (os.fspath(source) if isinstance(source, str | os.PathLike)
                                                       else "<bytes>")
    return _size(_read(source, label, header_only=True), label)


def dicom_header(source: Source, name: str | os.PathLike[str] | None = None) -> tuple[int, int, str | None]:
    """``(Rows, Columns, PatientID)`` of a DICOM file from its header (pixel data is not read).

    ``PatientID`` is None when the element is absent or blank.

    Raises:
        ImageReadError: naming the file when it is missing or has no image size.

    """
    label = os.fspath(name) if name is not None else (os.fspath(source) if isinstance(source, str | os.PathLike)
                                                       else "<bytes>")
    ds = _read(source, label, header_only=True)
    rows, columns = _size(ds, label)
    patient = str(ds.get("PatientID", "") or "").strip()
    return rows, columns, patient or None


def read_dicom_bytes(data: bytes, name: str | os.PathLike[str]) -> np.ndarray:
    """:func:`read_dicom` of a file already read into memory."""
    return read_dicom(io.BytesIO(data), name)


def write_dicom(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    patient_id: str | None = None,
    sop_instance_uid: str | None = None,
    modality: str = "DX",
) -> None:
    """Write a grey image as an uncompressed single-frame DICOM file (Explicit VR Little Endian).

    For the phantom's DICOM layouts and for tests: what :func:`read_dicom` reads back.
    UIDs are derived from ``sop_instance_uid`` (or the file name), so the same call
    writes the same bytes.

    Args:
        path: the file to write (its folder must exist).
        pixels: ``H x W`` ``uint8``, ``uint16`` or ``int16`` stored values.
        photometric: ``MONOCHROME2`` (0 = black) or ``MONOCHROME1`` (0 = white).
        bits_stored: ``BitsStored`` (default: the dtype's full width).
        rescale: ``(RescaleSlope, RescaleIntercept)``, or None for no modality transform.
        window: ``(WindowCenter, WindowWidth)``, or None for no VOI transform.
        patient_id: ``PatientID`` (default: none written).
        sop_instance_uid: ``SOPInstanceUID`` (default: derived from the file name).
        modality: ``Modality`` (DX, CR, ...).

    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    array = np.ascontiguousarray(pixels)
    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16, np.int16):
        raise ValueError(f"pixels must be a 2-D uint8, uint16 or int16 array, got {array.dtype} {array.shape}")
    seed = sop_instance_uid or os.path.basename(os.fspath(path))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid) if sop_instance_uid else generate_uid(
        entropy_srcs=[seed])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(os.fspath(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[seed, "series"])
    ds.Modality = modality
    if patient_id is not None:
        ds.PatientID = patient_id
    bits = array.dtype.itemsize * 8
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if array.dtype == np.int16 else 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = (f"{float(v):g}" for v in rescale)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = (f"{float(v):g}" for v in window)
    ds.PixelData = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    ds.save_as(path, enforce_file_format=True)
