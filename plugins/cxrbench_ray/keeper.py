"""Cell artifacts between Ray worker nodes and the driver's disk, without a shared filesystem.

A worker node may not see the driver's results folder. Each cell therefore runs in a
temporary folder on its node; an :class:`ArtifactKeeper` actor pinned to the driver's node
(so it writes where the driver reads) hands the cell the files it resumes from (``best.pt``,
``last.pt``), takes ``last.pt`` after every epoch (a retry on another node resumes from it
when a node dies), and takes every file of the finished cell. Writes are atomic (temporary
file, then rename), and a relative path leaving the cell's folder is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

RESUME_FILES = ("best.pt", "last.pt")
"""What a cell resumes from: its trained model (localizer-only tasks) and its last epoch."""


def _inside(cell_dir: str, relpath: str) -> Path:
    root = Path(cell_dir).resolve()
    target = (root / relpath).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"artifact path {relpath!r} leaves the cell folder")
    return target


def read_resume_files(cell_dir: str) -> dict[str, bytes]:
    """The resume files present in ``cell_dir``, by name."""
    out = {}
    for name in RESUME_FILES:
        path = Path(cell_dir) / name
        if path.is_file():
            out[name] = path.read_bytes()
    return out


def write_files(cell_dir: str, files: dict[str, bytes], *, finished: bool = False) -> int:
    """Write ``files`` (relative path -> bytes) into ``cell_dir`` atomically; returns bytes written.

    With ``finished`` the cell is done: a ``last.pt`` it no longer has is removed (the
    pipeline drops it once ``best.pt`` holds the trained model).
    """
    written = 0
    for relpath, data in files.items():
        target = _inside(cell_dir, relpath)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        written += len(data)
    if finished and "last.pt" not in files:
        (Path(cell_dir) / "last.pt").unlink(missing_ok=True)
    return written


class ArtifactKeeper:
    """The Ray actor (created with ``ray.remote`` on the driver's node) that reads and writes cell folders."""

    def fetch(self, cell_dir: str) -> dict[str, bytes]:
        """The files a cell resumes from."""
        return read_resume_files(cell_dir)

    def store(self, cell_dir: str, files: dict[str, bytes], finished: bool = False) -> int:
        """Write files of a cell (see :func:`write_files`)."""
        return write_files(cell_dir, files, finished=finished)
