"""What the data of a file dataset IS, byte-wise: its version, and a full check of it.

A cell's id follows the data's *identity* (:meth:`cxrbench.interfaces.Dataset.fingerprint`:
options, table and image names and sizes), so moving a dataset keeps its cells. Its
*version* (:meth:`cxrbench.interfaces.Dataset.data_version`) follows the content: a cell
or a cache made from one version is stale once the version changes. For a file dataset
the version digests:

* every label table in full (SHA-256 of its bytes): a relabelled row changes it;
* every image used by a split by its quick key (:func:`quick_key`): byte size, modification
  time (``st_mtime_ns``) and a SHA-256 of its first and last ``SAMPLE_BYTES`` bytes. Two
  swapped images differ in their first block (PNG and JPEG headers and the start of the
  compressed data), and a PNG whose pixels change ends in another checksum (zlib's Adler-32
  and the chunk CRC are in its last bytes). Reading 8 KiB of each file keeps the key cheap;
  the time catches a same-size edit in the middle of a file. ``mv``, ``cp -a``, ``rsync -a``
  and ``shutil.copytree`` keep modification times (a copy that does not, e.g. ``cp -r``,
  makes finished cells stale: their data then cannot be told from changed data);
* a *generation* counter, kept by ``cxrbench prepare --verify`` (:func:`verify_files`):
  it hashes every file in full, and when a file's full hash changed although its quick key
  did not (an edit the quick key could not see), the generation goes up, so the version
  changes: the dataset's cache is rebuilt and its finished cells are stale.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["SAMPLE_BYTES", "VerifyReport", "full_sha256", "quick_key", "verify_files", "version_digest"]

SAMPLE_BYTES = 4096
"""Bytes read from each end of an image for its quick key."""

VERIFIED_NAME = "verified.json"
"""The record of the last ``prepare --verify`` in a dataset's cache folder."""


def full_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a whole file (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def quick_key(path: str | os.PathLike[str]) -> str:
    """``size:mtime_ns:sha256(first and last SAMPLE_BYTES)`` of a file (the whole file when smaller)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        stat = os.fstat(fd)
        head = os.pread(fd, SAMPLE_BYTES, 0)
        tail = os.pread(fd, SAMPLE_BYTES, max(SAMPLE_BYTES, stat.st_size - SAMPLE_BYTES))
    finally:
        os.close(fd)
    return f"{stat.st_size}:{stat.st_mtime_ns}:{hashlib.sha256(head + tail).hexdigest()[:16]}"


def version_digest(tables: Mapping[str, Path], images: Iterable[tuple[str, str]], generation: int = 0) -> str:
    """The version of a file dataset (see the module's docstring).

    Args:
        tables: the label tables, in a fixed order (each hashed in full).
        images: ``(name in the digest, absolute path)`` of every image used, in a fixed order.
        generation: hidden changes found by ``prepare --verify`` so far (0: none, left out).

    """
    digest = hashlib.sha256()
    for path in tables.values():
        digest.update(f"{path.name}\t{full_sha256(path)}\n".encode())
    for name, path in images:
        digest.update(f"{name}\t{quick_key(path)}\n".encode())
    if generation:
        digest.update(f"verify-generation\t{generation}\n".encode())
    return digest.hexdigest()[:16]


def read_generation(folder: Path | None) -> int:
    """The verify generation recorded in ``folder`` (0 when none, or unreadable)."""
    record = _read_record(folder / VERIFIED_NAME) if folder is not None else None
    return int(record.get("generation", 0)) if record else 0


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("files"), dict) else None


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """What one ``prepare --verify`` found for one dataset.

    Attributes:
        files: files hashed in full (tables and images).
        first: no earlier verify was recorded (nothing to compare with).
        changed: names whose full hash differs from the last verify's.
        hidden: those of ``changed`` whose quick key did not change (the quick key missed them).
        generation: the verify generation after this verify.

    """

    files: int
    first: bool
    changed: tuple[str, ...]
    hidden: tuple[str, ...]
    generation: int

    def line(self, name: str) -> str:
        """One line for the user."""
        head = f"{name}: {self.files:,} files hashed in full (SHA-256)"
        if self.first:
            return f"{head}; recorded, so that the next --verify can compare"
        if not self.changed:
            return f"{head}: none changed since the last --verify"
        text = f"{head}: {len(self.changed):,} changed since the last --verify (e.g. {self.changed[0]})"
        if self.hidden:
            text += (f"; {len(self.hidden):,} of them kept their size, time and sampled bytes (e.g. "
                     f"{self.hidden[0]}): the cache is rebuilt and finished cells on this data are stale")
        return text


def verify_files(folder: Path, files: Mapping[str, str], *, workers: int | None = None,
                 progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Hash ``files`` in full and compare with the record of the last verify in ``folder``.

    The new record (each file's quick key and full hash, and the generation) replaces the
    old one atomically.

    Args:
        folder: the dataset's cache folder (created if missing).
        files: ``{name: absolute path}`` of every table and image.
        workers: hashing threads (default: CPU count, at most 8).
        progress: called with the number of files hashed since the last call.

    """
    old = _read_record(folder / VERIFIED_NAME)
    before = {name: tuple(entry) for name, entry in (old["files"] if old else {}).items()
              if isinstance(entry, list) and len(entry) == 2}  # (quick key, full hash)

    def work(item: tuple[str, str]) -> tuple[str, list[str]]:
        name, path = item
        entry = [quick_key(path), full_sha256(path)]
        if progress:
            progress(1)
        return name, entry

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 2)) as pool:
        now = dict(pool.map(work, sorted(files.items())))
    changed = tuple(n for n, (_, sha) in now.items() if n in before and before[n][1] != sha)
    hidden = tuple(n for n in changed if before[n][0] == now[n][0])
    generation = int(old.get("generation", 0)) if old else 0
    generation += 1 if hidden else 0
    folder.mkdir(parents=True, exist_ok=True)
    write_json_unique(folder / VERIFIED_NAME, {"generation": generation, "files": now})
    return VerifyReport(len(now), old is None, changed, hidden, generation)


def write_json_unique(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` through a temporary file of a name no other process uses."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
