"""The shared base of datasets read from files on disk (public API for dataset plugins).

A file dataset is a folder of label tables and image files, laid out as its publisher
releases it. What differs between datasets is only how the tables are found and read;
:class:`FileDataset` does the rest once, for every such dataset:

* building the splits lazily, once, under a lock (``split``, ``image_path`` and
  ``read_image`` are safe to call from several threads);
* finding the images present in one directory walk (:meth:`FileDataset.find_images`),
  refusing links that leave the root unless the ``follow_symlinks`` option allows them;
* refusing image paths that lead outside the root, with one line naming the file;
* the one warning about a partial download (:meth:`FileDataset.report_missing`);
* the fingerprint: options (without ``root``) plus a digest of the tables' and used
  images' names and byte sizes;
* the data version: the tables' content and each used image's quick key
  (:mod:`cxrbench.dataversion`), which marks cells and caches of changed data stale;
* the data checks of :mod:`cxrbench.datachecks` (repeated rows, an image or a patient in
  two splits, impossible boxes): what they drop is said in one warning line.

A subclass implements :meth:`FileDataset.locate` (where the tables are) and
:meth:`FileDataset.build` (``{split name: (Split, image paths relative to the root)}``).
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .errors import UsageError
from .imageio import read_grey, scan_files
from .interfaces import Dataset, DatasetContext, Split
from .options import options_to_dict

__all__ = ["FileDataset", "FileLayout", "LoadedSplits"]


@dataclasses.dataclass(frozen=True)
class FileLayout:
    """Where a file dataset's files are.

    Attributes:
        root: the folder every image path is relative to, and must stay inside.
        tables: the label and list files read, by a key of the dataset's choosing; their
            names and sizes enter the fingerprint, in this order.

    """

    root: Path
    tables: Mapping[str, Path]


@dataclasses.dataclass(frozen=True)
class LoadedSplits:
    """Every split of a file dataset with the file of each of its images.

    Attributes:
        splits: split name -> records.
        paths: split name -> one path per record, relative to the dataset root ("/"
            separators), aligned with the split's rows.

    """

    splits: Mapping[str, Split]
    paths: Mapping[str, tuple[str, ...]]

    @classmethod
    def from_built(cls, built: Mapping[str, tuple[Split, Sequence[str]]]) -> LoadedSplits:
        """Check and freeze what :meth:`FileDataset.build` returned.

        Raises:
            ValueError: when a split's path list does not have one path per record.

        """
        paths = {name: tuple(files) for name, (_, files) in built.items()}
        for name, (split, _) in built.items():
            if len(paths[name]) != len(split):
                raise ValueError(f"split {name!r} has {len(split)} records but {len(paths[name])} image paths")
        return cls(splits={name: split for name, (split, _) in built.items()}, paths=paths)


class FileDataset(Dataset):
    """Base of datasets read from a folder of tables and images.

    Options must have ``root`` (a folder; ``~`` is expanded) and may have
    ``follow_symlinks`` (default false) and ``validate()``.

    Class attributes:
        NEUTRAL_OPTIONS: options that change neither the data read (the fingerprint's
            digest covers that) nor any result. They are left out of the fingerprint and
            of cell ids, so that adding one keeps existing cell ids. ``root`` is one: the
            digest identifies the data wherever it is mounted, so moving a dataset keeps
            its cells.
        ID_NEUTRAL_DEFAULTS: options added after results stores existed, with the value that
            keeps the old behaviour (as on every component, see ``ComponentSpec.key``): at
            that value they are left out of the fingerprint and of cell ids too.
    """

    NEUTRAL_OPTIONS: ClassVar[frozenset[str]] = frozenset({"follow_symlinks", "root"})

    root: Path
    """The resolved folder image paths are relative to."""
    tables: Mapping[str, Path]
    """The tables :meth:`locate` found."""

    def __init__(self, options: Any, context: DatasetContext | None = None) -> None:
        super().__init__(options, context or DatasetContext())
        validate = getattr(options, "validate", None)
        if callable(validate):
            validate()
        root = Path(os.path.expanduser(options.root)).resolve()
        if not root.is_dir():
            raise UsageError(f"{self.NAME}: root {options.root} is not a folder")
        layout = self.locate(root)
        self.root = layout.root.resolve()
        self.tables = dict(layout.tables)
        self._follow_symlinks = bool(getattr(options, "follow_symlinks", False))
        self._checked: set[str] = set()  # relative paths find_images returned (already checked)
        self._lock = threading.Lock()
        self._loaded: LoadedSplits | None = None
        self._fingerprint: str | None = None
        self._data_version: str | None = None

    # ------------------------------------------------------------------ for subclasses

    @abc.abstractmethod
    def locate(self, root: Path) -> FileLayout:
        """Find the tables under ``root`` (called once, by ``__init__``).

        Args:
            root: the resolved ``root`` option, an existing folder.

        Raises:
            UsageError: naming what is missing, in one line.

        """

    @abc.abstractmethod
    def build(self) -> Mapping[str, tuple[Split, Sequence[str]]]:
        """Read the tables and return ``{split name: (records, image path of each record)}``.

        Called once, under the dataset's lock. Image paths are relative to :attr:`root`;
        take them from :meth:`find_images` (any other path is checked against the root).
        Call :meth:`report_missing` with the count of listed and present images.
        """

    def read_file(self, path: str) -> np.ndarray:
        """Decode one image file as a 2-D grey array (override for DICOM and the like).

        Must be safe to call from several threads at once.
        """
        return read_grey(path)

    def listing_name(self, relative: str) -> str:
        """How an image file is named in the fingerprint's digest (default: its relative path)."""
        return relative

    def find_images(
        self, subdirs: Iterable[str] = (".",), suffixes: Iterable[str] | None = None, *, by_name: bool = False
    ) -> dict[str, str]:
        """Every file under ``root/subdir`` (recursively), found in one directory walk.

        Look table entries up in this index rather than joining them to the root: a
        table can then never name a file outside the root, and no file is stat'ed per
        table row (a partial download is simply what the walk did not find).

        Args:
            subdirs: folders, relative to the root, to walk; missing ones are skipped.
            suffixes: keep only files whose lower-cased name ends with one of these.
            by_name: key the index by file name alone (the first file found wins).

        Returns:
            ``{path relative to the root (or file name): path relative to the root}``.
            The value is where the file really is (a link inside the root is resolved);
            a file reached through a link leaving the root keeps the link's path.

        Raises:
            UsageError: naming the link, when one leaves the root and ``follow_symlinks``
                is false.

        """
        skipped: list[str] = []
        if self._follow_symlinks:
            found = _walk_following_links(self.root, subdirs, suffixes, by_name=by_name, skipped=skipped)
        else:
            try:
                absolute = scan_files(self.root, subdirs, suffixes, by_name=by_name, skipped=skipped)
            except UsageError as exc:
                raise UsageError(f"{self.NAME}: {exc}; set follow_symlinks: true to follow such links") from None
            cut = len(os.path.join(self.root, ""))  # scan_files returns real paths, all under the root
            found = {key: path[cut:] for key, path in absolute.items()}
        if skipped:
            self.context.warn(f"{self.NAME}: skipped {len(skipped)} entries under {self.root} that are not regular "
                              f"files (e.g. {skipped[0]}): FIFOs, sockets and devices are never read")
        self._checked.update(found.values())
        return found

    def report_missing(
        self, listed: int, present: int, what: str = "images", *, searched: str | None = None, notes: Sequence[str] = ()
    ) -> None:
        """Warn once about listed images that are not on disk; refuse when none is.

        Args:
            listed: images the tables list (after the dataset's own filters).
            present: how many of them were found.
            what: what is counted, in the plural (e.g. ``frontal images``).
            searched: where the images were looked for, for the error (default: the root).
            notes: more clauses for the same warning line.

        Raises:
            UsageError: when images are listed but none is present.

        """
        if listed and not present:
            raise UsageError(f"{self.NAME}: none of the {listed:,} listed {what} is under {searched or self.root}")
        parts = list(notes)
        if present < listed:
            parts.insert(
                0,
                f"{listed - present:,} of {listed:,} listed {what} are missing under {self.root} "
                f"(partial download?); using the {present:,} present",
            )
        if parts:
            self.context.warn(f"{self.NAME}: " + "; ".join(parts))

    def absolute(self, relative: str) -> str:
        """The absolute path of an image path relative to the root."""
        return os.path.join(self.root, relative)

    # ------------------------------------------------------------------ contract

    def split(self, name: str) -> Split:
        """Records of split ``name`` (built on first use, then cached)."""
        loaded = self._load()
        if name not in loaded.splits:
            raise UsageError(f"{self.NAME} has no split {name!r}; splits: {', '.join(loaded.splits)}")
        return loaded.splits[name]

    def image_path(self, split: str, index: int) -> str:
        """The file of image ``index`` of ``split``."""
        self.split(split)
        return self.absolute(self._load().paths[split][index])

    def read_image(self, split: str, index: int) -> np.ndarray:
        """Image ``index`` of ``split`` as a 2-D grey array (see :meth:`read_file`)."""
        return self.read_file(self.image_path(split, index))

    def fingerprint(self) -> str:
        """Options (less ``root`` and ``NEUTRAL_OPTIONS``) plus a digest of the tables and used images.

        The digest covers each table's file name and byte size, then each image used by
        any split (once, in path order) by :meth:`listing_name` and byte size, so that a
        cell id follows its data, wherever the data is mounted.
        """
        if self._fingerprint is None:
            loaded = self._load()
            digest = hashlib.sha256()
            for path in self.tables.values():
                digest.update(f"{path.name}\t{path.stat().st_size}\n".encode())
            used = sorted({p for paths in loaded.paths.values() for p in paths})
            listing = "".join(f"{self.listing_name(p)}\t{os.stat(self.absolute(p)).st_size}\n" for p in used)
            digest.update(listing.encode())
            left_out = self.NEUTRAL_OPTIONS | {"root"}  # the digest identifies the data wherever it is
            at_default = getattr(self, "ID_NEUTRAL_DEFAULTS", {})  # options added later, at their old behaviour
            chosen = {k: v for k, v in options_to_dict(self.options).items()
                      if k not in left_out and not (k in at_default and at_default[k] == v)}
            self._fingerprint = f"{self.NAME}:{json.dumps(chosen, sort_keys=True)}:{digest.hexdigest()[:16]}"
        return self._fingerprint

    def data_version(self) -> str:
        """A digest of the content: every table in full, every used image by its quick key.

        See :mod:`cxrbench.dataversion`: relabelled rows or swapped images change it, as does a
        hidden change found by ``cxrbench prepare --verify`` (its record lives in the
        dataset's cache folder, ``context.cache_dir``).
        """
        if self._data_version is None:
            from .data import dataset_cache_dir
            from .dataversion import read_generation, version_digest

            loaded = self._load()
            used = sorted({p for paths in loaded.paths.values() for p in paths})
            cache = self.context.cache_dir
            generation = read_generation(dataset_cache_dir(cache, self) if cache is not None else None)
            self._data_version = version_digest(self.tables, ((self.listing_name(p), self.absolute(p)) for p in used),
                                                generation)
        return self._data_version

    def data_files(self) -> dict[str, str]:
        """``{name: absolute path}`` of every table and used image (what ``prepare --verify`` hashes)."""
        loaded = self._load()
        files = {f"table:{key}": str(path) for key, path in self.tables.items()}
        files.update({self.listing_name(p): self.absolute(p) for paths in loaded.paths.values() for p in paths})
        return files

    def forget_data_version(self) -> None:
        """Compute :meth:`data_version` again on its next call (after ``prepare --verify``)."""
        self._data_version = None

    # ------------------------------------------------------------------ internals

    def _load(self) -> LoadedSplits:
        loaded = self._loaded  # read once: threads that find it built never take the lock
        if loaded is None:
            with self._lock:
                if self._loaded is None:
                    try:
                        built = self.build()
                    except UnicodeDecodeError as exc:  # a plugin read a table without saying which
                        raise UsageError(f"dataset {self.NAME!r} under {self.root}: a table is not UTF-8 text "
                                         f"({exc.reason} at offset {exc.start}); save it as UTF-8") from None
                    loaded = LoadedSplits.from_built(built)
                    self._check_paths(loaded)
                    self._loaded = self._after_data_checks(loaded)
                loaded = self._loaded
        return loaded

    def _after_data_checks(self, loaded: LoadedSplits) -> LoadedSplits:
        """The splits after :func:`cxrbench.datachecks.check_splits`, with one warning line of what it dropped."""
        from .datachecks import check_splits

        checked = check_splits(loaded.splits, loaded.paths)
        if checked.report.clean:
            return loaded
        emptied = "".join(f"; split {name!r} is left empty" for name in checked.emptied)
        self.context.warn(f"{self.NAME}: data checks: {checked.report.line()}{emptied}")
        paths = {name: tuple(files[i] for i in checked.rows[name]) for name, files in loaded.paths.items()}
        return LoadedSplits(splits=dict(checked.splits), paths=paths)

    def _check_paths(self, loaded: LoadedSplits) -> None:
        """Refuse image paths that lead outside the root (those ``find_images`` did not return)."""
        for relative in {p for paths in loaded.paths.values() for p in paths} - self._checked:
            named = f"{self.NAME}: image path {relative!r}"
            if Path(relative).is_absolute() or ".." in Path(relative).parts:
                raise UsageError(f"{named} leads outside the dataset root {self.root}")
            if not (self._follow_symlinks or Path(os.path.realpath(self.absolute(relative))).is_relative_to(self.root)):
                raise UsageError(
                    f"{named} is a link leading outside the dataset root {self.root}; "
                    "set follow_symlinks: true to follow such links"
                )


def _walk_following_links(
    root: Path, subdirs: Iterable[str], suffixes: Iterable[str] | None, *, by_name: bool,
    skipped: list[str] | None = None,
) -> dict[str, str]:
    """:func:`cxrbench.imageio.scan_files`, following links wherever they lead.

    Keys are as ``scan_files`` gives them; values are paths relative to ``root``: where
    the file really is when that is inside ``root``, else the path of the link reaching
    it (so the fingerprint does not depend on where the linked data is mounted).
    """
    ends = tuple(s.lower() for s in suffixes) if suffixes is not None else None
    inside = os.path.join(root, "")

    def relative(real: str, logical: str) -> str:
        return real[len(inside) :] if real.startswith(inside) else logical

    found: dict[str, str] = {}
    seen: set[str] = set()
    stack = []  # (key prefix, real folder); like scan_files, a listed folder's prefix is where it really is
    for sub in subdirs:
        real = os.path.realpath(root / sub)
        prefix = relative(real, sub.strip("/")) if real != str(root) else ""
        stack.append((prefix + "/" if prefix else "", real))
    while stack:
        prefix, folder = stack.pop()
        if folder in seen or not os.path.isdir(folder):  # a link cycle, a folder listed twice, a missing one
            continue
        seen.add(folder)
        with os.scandir(folder) as entries:
            for entry in entries:
                linked = entry.is_symlink()
                real = os.path.realpath(entry.path) if linked else entry.path
                if os.path.isdir(real) if linked else entry.is_dir(follow_symlinks=False):
                    stack.append((prefix + entry.name + "/", real))
                    continue
                name = entry.name
                if ends is not None and not name.lower().endswith(ends):
                    continue
                if not (os.path.isfile(real) if linked else entry.is_file(follow_symlinks=False)):
                    if skipped is not None:
                        skipped.append(prefix + name)
                    continue
                found.setdefault(name if by_name else prefix + name, relative(real, prefix + name))
    return found
