"""Reading X-ray image files, and joining untrusted paths to a dataset root safely.

Public helpers for dataset plugins (built-in and third-party):

* :func:`read_grey` decodes any PNG/JPEG the way published chest X-ray sets store them
  (grey, RGB or RGBA, 8 or 16 bit), and DICOM files (:mod:`cxrbench.dicom`: ``.dcm`` /
  ``.dicom``, or the ``DICM`` magic), into one 2-D ``uint8`` array.
* :func:`safe_join` refuses paths from label tables that would leave the dataset root.
* :func:`scan_files` lists the image files under a root in one directory walk (a
  partial download is found without one ``stat`` call per table row).
* :func:`png_size` and :func:`image_size` read an image's size from its header (a
  DICOM file's ``Rows`` / ``Columns``), so boxes can be scaled to the file on disk
  without decoding the pixels.
* :func:`image_header` adds what a DICOM header says about the patient (``PatientID``).
* :data:`IMAGE_SUFFIXES` are the file names every reader here decodes, for
  :func:`scan_files`.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from .errors import UsageError

__all__ = [
    "DICOM_SUFFIXES",
    "IMAGE_SUFFIXES",
    "ImageHeader",
    "ImageReadError",
    "image_header",
    "image_size",
    "png_size",
    "read_grey",
    "safe_join",
    "scan_files",
    "to_grey_uint8",
]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DICOM_SUFFIXES = (".dcm", ".dicom")
"""File names read as DICOM by :mod:`cxrbench.dicom` (lower-cased; VinDr-CXR uses ``.dicom``, the others ``.dcm``)."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", *DICOM_SUFFIXES)
"""File names :func:`read_grey` decodes, as a ``suffixes`` argument of :func:`scan_files`."""
_DICOM_HEAD = 132  # the 128-byte preamble, then b"DICM"
# JPEG start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC)
# share the range but are not frames.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length field.
_JPEG_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}


class ImageReadError(UsageError):
    """An image file that is missing, unreadable or of an unsupported pixel type."""


def to_grey_uint8(image: np.ndarray, source: str | os.PathLike[str] = "<array>") -> np.ndarray:
    """Convert a decoded image (as OpenCV returns it) to a 2-D ``uint8`` grey array.

    Colour is converted with OpenCV's BT.601 luma weights (alpha is ignored): for the
    grey-stored-as-RGB(A) files found in NIH ChestX-ray14 this returns the grey value
    exactly. 16-bit data is scaled over its full range, ``round(v * 255 / 65535)``, so
    that 65535 maps to 255 (a plain cast would keep only the low byte).

    Args:
        image: ``H x W``, ``H x W x C`` (C = 1, 2, 3 or 4; BGR(A) order) uint8 or uint16.
        source: the file name used in error messages.

    Returns:
        ``H x W`` uint8 array.

    Raises:
        ImageReadError: for other shapes or pixel types.

    """
    if image.ndim == 3:
        channels = image.shape[2]
        if channels in (1, 2):  # grey (+ alpha)
            image = image[:, :, 0]
        elif channels == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        elif channels == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
        else:
            raise ImageReadError(f"cannot read image {source}: unsupported {channels}-channel image")
    elif image.ndim != 2:
        raise ImageReadError(f"cannot read image {source}: unsupported shape {image.shape}")
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if image.dtype == np.uint16:
        # Exact integer rounding of v * 255 / 65535 (= v / 257).
        scaled = (image.astype(np.uint32) * 255 + 32767) // 65535
        return scaled.astype(np.uint8)
    raise ImageReadError(f"cannot read image {source}: unsupported pixel type {image.dtype}")


MAX_IMAGE_PIXELS = 100_000_000
"""Images above this many pixels (10,000 x 10,000) are refused by name before decoding: a
crafted 860 KB PNG can claim 30,000 x 30,000 pixels and take gigabytes to decode."""


def read_grey(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file into a 2-D ``uint8`` grey array.

    The bytes are read with NumPy and decoded from memory, which also works for
    non-ASCII paths where ``cv2.imread`` fails. Safe to call from several threads.

    Args:
        path: PNG, JPEG or any other format OpenCV decodes, or a DICOM file (named
            ``*.dcm`` / ``*.dicom``, or with the ``DICM`` magic at byte 128), read by
            :func:`cxrbench.dicom.read_dicom` (its windowing and MONOCHROME1 rules).

    Returns:
        ``H x W`` uint8 array (see :func:`to_grey_uint8` for the conversion).

    Raises:
        ImageReadError: naming the file when it is missing, empty, undecodable, or
            larger than :data:`MAX_IMAGE_PIXELS` (checked on the header, before decoding).

    """
    if _has_dicom_suffix(path):
        from .dicom import read_dicom  # pydicom loads only when a DICOM file is read

        return read_dicom(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"cannot read image {path}: {exc.strerror or exc}") from None
    if data[128:_DICOM_HEAD].tobytes() == b"DICM":  # a DICOM file under another name
        from .dicom import read_dicom_bytes

        return read_dicom_bytes(data.tobytes(), path)
    claimed = _png_header_size(data[:24].tobytes())
    if claimed is not None and claimed[0] * claimed[1] > MAX_IMAGE_PIXELS:
        raise ImageReadError(f"cannot read image {path}: {claimed[1]} x {claimed[0]} pixels is above the limit of "
                             f"{MAX_IMAGE_PIXELS:,} (a chest X-ray is at most a few thousand pixels a side)")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ImageReadError(f"cannot read image {path}: not a decodable image ({data.size} bytes)")
    return to_grey_uint8(image, path)


def safe_join(root: str | os.PathLike[str], relative: str | os.PathLike[str]) -> Path:
    """Join ``relative`` to ``root`` and refuse the result if it leaves ``root``.

    Use it for every path read from a label table: a crafted CSV must not make the
    loader read files elsewhere. Symbolic links are resolved, so a link inside the root
    pointing outside it is refused too.

    Args:
        root: the dataset root.
        relative: a relative path from a CSV or list file.

    Returns:
        The resolved absolute path (it need not exist).

    Raises:
        UsageError: naming the path, when it is absolute, or ``..`` or a symbolic link
            takes it outside ``root``.

    """
    rel = Path(relative)
    if rel.is_absolute() or rel.anchor or str(relative).startswith(("/", "\\")):
        raise UsageError(f"path {str(relative)!r} is absolute; paths must stay inside {root}")
    root_resolved = Path(root).resolve()
    target = (root_resolved / rel).resolve()
    if target != root_resolved and not target.is_relative_to(root_resolved):
        raise UsageError(f"path {str(relative)!r} leads outside the dataset root {root}")
    return target


def scan_files(
    root: str | os.PathLike[str],
    subdirs: Iterable[str] = (".",),
    suffixes: Iterable[str] | None = None,
    *,
    by_name: bool = False,
    skipped: list[str] | None = None,
) -> dict[str, str]:
    """Every regular file under ``root/subdir`` (recursively), found in one directory walk.

    Symbolic links are checked with :func:`safe_join`: a link (file or folder) that
    resolves outside ``root`` is refused, one inside it is followed once.

    Args:
        root: the dataset root.
        subdirs: folders, relative to ``root``, to walk; missing ones are skipped.
        suffixes: keep only files whose lower-cased name ends with one of these
            (e.g. ``(".png",)``); None keeps every file.
        by_name: key the result by file name alone (the first file found of each
            name wins), for datasets whose tables name files without folders.
        skipped: when given, receives the paths of entries that are not regular files
            (FIFOs, sockets, devices: reading one could block forever).

    Returns:
        ``{path relative to root with "/" separators (or file name): absolute path}``.

    Raises:
        UsageError: when a subdir or a link inside it leads outside ``root``.

    """
    root_resolved = Path(root).resolve()
    ends = tuple(s.lower() for s in suffixes) if suffixes is not None else None
    found: dict[str, str] = {}
    seen_dirs: set[str] = set()
    stack: list[tuple[str, str]] = []  # (relative posix prefix, absolute folder)
    for sub in subdirs:
        folder = safe_join(root_resolved, sub)
        if folder.is_dir():
            rel = folder.relative_to(root_resolved).as_posix()
            stack.append(("" if rel == "." else rel + "/", str(folder)))
    while stack:
        prefix, folder = stack.pop()
        if folder in seen_dirs:  # a link cycle, or the same folder listed twice
            continue
        seen_dirs.add(folder)
        with os.scandir(folder) as entries:
            for entry in entries:
                # d_type answers these two without a system call on common file systems.
                if entry.is_symlink():
                    target = safe_join(root_resolved, prefix + entry.name)
                    if target.is_dir():
                        stack.append((prefix + entry.name + "/", str(target)))
                        continue
                    if not target.is_file():
                        continue
                    path = str(target)
                elif entry.is_dir(follow_symlinks=False):
                    stack.append((prefix + entry.name + "/", entry.path))
                    continue
                elif not entry.is_file(follow_symlinks=False):
                    if skipped is not None:
                        skipped.append(prefix + entry.name)
                    continue
                else:
                    path = entry.path
                name = entry.name
                if ends is not None and not (name.endswith(ends) or name.lower().endswith(ends)):
                    continue
                found.setdefault(name if by_name else prefix + name, path)
    return found


def _decoded_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    image = read_grey(path)
    return int(image.shape[0]), int(image.shape[1])


def _png_header_size(head: bytes) -> tuple[int, int] | None:
    # Signature, then the IHDR chunk: length, b"IHDR", width, height (big endian).
    if len(head) >= 24 and head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return height, width
    return None


def png_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """The (height, width) of a PNG from its IHDR header, without decoding.

    Args:
        path: a PNG file (anything else is decoded as a fallback).

    Returns:
        ``(height, width)`` in pixels.

    Raises:
        ImageReadError: when the file is missing or cannot be decoded.

    """
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as exc:
        raise ImageReadError(f"cannot read image {path}: {exc.strerror or exc}") from None
    size = _png_header_size(head)
    return size if size is not None else _decoded_size(path)


def _jpeg_header_size(f: object) -> tuple[int, int] | None:
    read = f.read  # type: ignore[attr-defined]
    if read(2) != b"\xff\xd8":
        return None
    while True:
        byte = read(1)
        if not byte:
            return None
        if byte != b"\xff":
            continue  # not at a marker: tolerate stray bytes
        marker = read(1)
        while marker == b"\xff":  # fill bytes before a marker
            marker = read(1)
        if not marker:
            return None
        code = marker[0]
        if code in _JPEG_STANDALONE or code == 0x00:
            continue
        if code == 0xD9:  # end of image before any frame
            return None
        length_bytes = read(2)
        if len(length_bytes) < 2:
            return None
        (length,) = struct.unpack(">H", length_bytes)
        if code in _JPEG_SOF:
            body = read(5)  # precision, height, width
            if len(body) < 5:
                return None
            _, height, width = struct.unpack(">BHH", body)
            return (height, width) if height and width else None
        f.seek(length - 2, os.SEEK_CUR)  # type: ignore[attr-defined]


def _has_dicom_suffix(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path).lower().endswith(DICOM_SUFFIXES)


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """The (height, width) of a PNG, JPEG or DICOM file from its header, without decoding pixels.

    A DICOM file (by name or magic) gives its ``Rows`` / ``Columns``, read with pydicom
    up to the pixel data. Other formats (or headers this parser does not understand) are
    decoded instead.

    Args:
        path: the image file.

    Returns:
        ``(height, width)`` in pixels.

    Raises:
        ImageReadError: when the file is missing or cannot be decoded.

    """
    if _has_dicom_suffix(path):
        from .dicom import dicom_size  # pydicom loads only when a DICOM file is read

        return dicom_size(path)
    try:
        with open(path, "rb") as f:
            head = f.read(_DICOM_HEAD)
            if head[128:_DICOM_HEAD] == b"DICM":
                from .dicom import dicom_size

                f.seek(0)
                return dicom_size(f, path)
            size = _png_header_size(head)
            if size is None and head[:2] == b"\xff\xd8":
                f.seek(0)
                size = _jpeg_header_size(f)
    except OSError as exc:
        raise ImageReadError(f"cannot read image {path}: {exc.strerror or exc}") from None
    return size if size is not None else _decoded_size(path)


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, read without decoding pixels.

    Attributes:
        height / width: the image's size in pixels.
        patient_id: the DICOM ``PatientID`` (None for PNG / JPEG, or when blank).

    """

    height: int
    width: int
    patient_id: str | None = None


def image_header(path: str | os.PathLike[str]) -> ImageHeader:
    """Size (and, for DICOM, ``PatientID``) of an image file from its header alone.

    A DICOM file (by name or magic) is read with pydicom up to its pixel data (about
    0.4 ms a file); other files as :func:`image_size` reads them.

    Raises:
        ImageReadError: when the file is missing or cannot be read.

    """
    if not _has_dicom_suffix(path):
        try:
            with open(path, "rb") as f:
                is_dicom = f.read(_DICOM_HEAD)[128:_DICOM_HEAD] == b"DICM"
        except OSError as exc:
            raise ImageReadError(f"cannot read image {path}: {exc.strerror or exc}") from None
        if not is_dicom:
            return ImageHeader(*image_size(path))
    from .dicom import dicom_header  # pydicom loads only when a DICOM file is read

    return ImageHeader(*dicom_header(path))
