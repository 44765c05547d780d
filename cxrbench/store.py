"""The results store: SQLite for records, a folder per cell for artifacts.

One process writes (the runner's main process); every finished cell, with all its
localizer rows, is written in ONE transaction, so an interrupted run never leaves a
half-written record. Artifacts are written to temporary names and renamed into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from . import transferstore
from .artifacts import DB_NAME, CellArtifacts
from .errors import UsageError
from .records import CellResult, LocalizerResult, json_safe

LOCK_NAME = ".run.lock"

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY,
    dataset TEXT NOT NULL,
    backbone TEXT NOT NULL,
    head TEXT NOT NULL,
    seed INTEGER NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    traceback TEXT,
    metrics TEXT NOT NULL DEFAULT '{}',
    info TEXT NOT NULL DEFAULT '{}',
    started_at REAL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS grid_cells (
    grid TEXT NOT NULL,
    cell_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (grid, cell_id)
);
CREATE TABLE IF NOT EXISTS localizations (
    cell_id TEXT NOT NULL,
    localizer_key TEXT NOT NULL,
    localizer TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    metrics TEXT NOT NULL DEFAULT '{}',
    settings TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (cell_id, localizer_key)
);
CREATE TABLE IF NOT EXISTS grids (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""


OPEN_LOCK_NAME = ".open.lock"


@contextlib.contextmanager
def _opening_lock(root: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold ``root/.open.lock`` while a store is opened (exclusive to write, shared to read).

    A reader takes it only where it already exists: a read-only folder cannot hold a new file,
    and a store whose opener never made one is not being set up now.
    """
    path = root / OPEN_LOCK_NAME
    try:
        handle = open(path, "a+" if exclusive else "r")  # noqa: SIM115 (closed below)
    except OSError:
        if exclusive:
            raise UsageError(f"cannot create {path}: the results directory is not writable") from None
        yield
        return
    with contextlib.suppress(OSError):  # a filesystem without flock: open as before, unserialised
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    try:
        yield
    finally:
        handle.close()


def busy_wait_s() -> float:
    """How long a write waits for another process's lock (``CXRBENCH_STORE_BUSY_S``, default 600 s)."""
    try:
        return max(0.0, float(os.environ.get("CXRBENCH_STORE_BUSY_S", "600")))
    except ValueError:
        return 600.0


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def store_error(db_path: Path, exc: sqlite3.Error) -> UsageError:
    """One line for an environment fault met while writing the store (full disk, damage, ...)."""
    text = str(exc).strip() or type(exc).__name__
    lower = text.lower()
    if "full" in lower:
        return UsageError(f"{db_path}: the disk is full (SQLite: {text}); free some space and rerun: finished cells "
                          "are kept and the run resumes where it stopped")
    if "malformed" in lower or "not a database" in lower or "corrupt" in lower:
        return UsageError(f"{db_path}: the results database is damaged (SQLite: {text}); restore a copy, or "
                          f"recover it with: sqlite3 {db_path} .recover | sqlite3 recovered.sqlite")
    if _is_busy(exc):
        return UsageError(f"{db_path}: the results store stayed locked by another process (SQLite: {text}); "
                          "rerun when it is free")
    return UsageError(f"{db_path}: cannot write the results store (SQLite: {text})")


def dumps(value: Any) -> str:
    """JSON text for the store (NaN -> null, sorted keys)."""
    return json.dumps(json_safe(value), sort_keys=True, default=str)


MIGRATIONS = (
    ("cells", "provenance", "TEXT NOT NULL DEFAULT '{}'"),
    ("cells", "warnings", "TEXT NOT NULL DEFAULT '[]'"),
    ("localizations", "traceback", "TEXT"),
)
"""Columns added after the first stores were written: added in place when an older store opens."""


NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs",
    "fuse.sshfs", "fuse.ceph", "fuse.glusterfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs", "fuse.rclone",
})
"""Filesystems where SQLite's WAL mode is unsafe (its shared-memory index needs one host's memory)."""


def filesystem_type(path: Path, mounts: str | None = None) -> str | None:
    """The type of the filesystem holding ``path`` (from ``/proc/mounts``), or None where unknown."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    target = str(Path(path).resolve())
    best, kind = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


def journal_mode_for(root: Path) -> str:
    """``WAL`` on a local disk, ``DELETE`` (a rollback journal) on a network filesystem.

    SQLite documents WAL as unsafe on network filesystems. ``CXRBENCH_SQLITE_JOURNAL``
    (``wal`` or ``delete``) overrides the detection.
    """
    forced = os.environ.get("CXRBENCH_SQLITE_JOURNAL", "").strip().upper()
    if forced in ("WAL", "DELETE"):
        return forced
    kind = filesystem_type(root)
    return "DELETE" if kind is not None and kind.lower() in NETWORK_FILESYSTEMS else "WAL"


class ResultsStore:
    """The SQLite database and artifact folders under one results directory.

    Args:
        root: the results directory (created if missing, unless ``readonly``).
        readonly: open an existing store for reading only (``leaderboard``, ``show``,
            ``report``): nothing is written, not even a schema migration, so a store on a
            read-only filesystem or folder opens.

    Raises:
        UsageError: one line, when there is no store to read, the folder cannot be written
            (not ``readonly``), or the file is not a results database.

    """

    def __init__(self, root: str | Path, *, readonly: bool = False) -> None:
        self.root = Path(root)
        self.readonly = readonly
        self.db_path = self.root / DB_NAME
        self._lock_file: Any = None
        self._columns: dict[str, set[str]] = {}
        self._tables: set[str] | None = None  # a read-only store's tables (None: every table, made at open)
        if not readonly:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"cannot create results directory {self.root}: {exc.strerror}") from None
            if not os.access(self.root, os.W_OK) or (self.db_path.exists() and not os.access(self.db_path, os.W_OK)):
                raise UsageError(f"{self.root} is read-only: results cannot be recorded there "
                                 "(leaderboard, show and report still read it; run with --results DIR)")
        # one opener at a time sets a store up: another one's new file is empty until its schema
        # lands, and two openers migrating together would add the same column twice
        with _opening_lock(self.root, exclusive=not readonly):
            self._open()

    def _open(self) -> None:
        if self.db_path.is_file() and self.db_path.stat().st_size == 0:
            # SQLite would silently start a new store in it: results believed saved would be gone
            raise UsageError(f"{self.db_path}: empty file, not a cxrbench results database "
                             "(delete it to start a new store)")
        if self.readonly:
            self._conn = self._connect_readonly()
            return
        try:
            # each attempt waits SQLite's own busy timeout; transaction() retries up to busy_wait_s()
            self._conn = sqlite3.connect(self.db_path, timeout=min(60.0, busy_wait_s()), isolation_level=None)
            self.journal_mode = journal_mode_for(self.root)
            self._conn.execute(f"PRAGMA journal_mode={self.journal_mode}")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(SCHEMA + transferstore.SCHEMA)
            self._migrate()
        except sqlite3.OperationalError as exc:
            if "readonly" in str(exc) or "read-only" in str(exc):  # e.g. a read-only file in a writable folder
                raise UsageError(f"{self.db_path} is read-only: results cannot be recorded there "
                                 "(run with --results DIR)") from None
            raise UsageError(f"{self.db_path}: not a cxrbench results database ({exc})") from None
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"{self.db_path}: not a cxrbench results database ({exc})") from None

    # ------------------------------------------------------------------ housekeeping

    def _connect_readonly(self) -> sqlite3.Connection:
        """A connection that never writes: ``mode=ro``, else ``immutable=1``.

        ``mode=ro`` still sees a concurrent run's commits; it needs the WAL index files, which
        a read-only folder may lack, and there ``immutable=1`` (SQLite reads the file as a
        snapshot, taking no locks) is the way in: no process can write such a folder anyway.
        """
        if not self.db_path.is_file():
            raise UsageError(f"{self.root}: no results yet (run 'cxrbench run --grid GRID' first)")
        uri = self.db_path.resolve().as_uri()
        problem: Exception | None = None
        for flags in ("mode=ro", "immutable=1"):
            try:
                conn = sqlite3.connect(f"{uri}?{flags}", uri=True, timeout=60, isolation_level=None)
                tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            except sqlite3.OperationalError as exc:  # unable to open: no WAL index in a read-only folder
                problem = exc
                continue
            except sqlite3.DatabaseError as exc:
                raise UsageError(f"{self.db_path}: not a cxrbench results database ({exc})") from None
            if not {"cells", "localizations", "grid_cells", "grids"} <= tables:
                conn.close()
                raise UsageError(f"{self.db_path}: not a cxrbench results database (no cxrbench tables)")
            self.journal_mode = "read-only"
            self._tables = tables
            self._columns = {t: {row[1] for row in conn.execute(f"PRAGMA table_info({t})")}
                             for t in ("cells", "localizations")}
            return conn
        raise UsageError(f"{self.db_path}: cannot be opened for reading ({problem})")

    def _column(self, table: str, alias: str, column: str, default: str) -> str:
        """``alias.column``, or ``default`` where a read-only store predates that column (no migration)."""
        if self.readonly and column not in self._columns.get(table, {column}):
            return f"{default} AS {column}"
        return f"{alias}.{column}" if alias else column

    def _migrate(self) -> None:
        """Add the columns an older store lacks.

        Two processes may open a fresh store at once (a run and a ``leaderboard`` watching
        it): the check and the ``ALTER`` run under one write lock, so neither adds a column
        the other has just added.
        """
        def missing() -> list[tuple[str, str, str]]:
            have: dict[str, set[str]] = {}
            for table, _, _ in MIGRATIONS:
                if table not in have:
                    have[table] = {row[1] for row in self._conn.execute(f"PRAGMA table_info({table})")}
            return [m for m in MIGRATIONS if m[1] not in have[m[0]]]

        if not missing():  # the common case takes no write lock
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for table, column, decl in missing():
                self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def close(self) -> None:
        self.release_lock()
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def acquire_lock(self, wait: bool = False) -> None:
        """Take the run lock of this results directory (one ``run`` at a time).

        Raises:
            UsageError: another run holds it and ``wait`` is False.

        """
        path = self.root / LOCK_NAME
        handle = open(path, "a+")  # noqa: SIM115 (held for the run's lifetime)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise UsageError(
                f"{self.root} is in use by another cxrbench run ({owner}); wait for it, or use --results DIR"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._lock_file = handle

    def release_lock(self) -> None:
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any exception.

        Waiting for another process's write lock is retried for :func:`busy_wait_s` in all
        (``CXRBENCH_STORE_BUSY_S``, default 600 s); a full disk, a damaged database or a
        lock held for longer is one :class:`UsageError` line. Nothing of the transaction
        is written then, and what was committed before stays: the run can be resumed.
        """
        self._begin()
        try:
            yield self._conn
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise store_error(self.db_path, exc) from None
            raise
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise store_error(self.db_path, exc) from None

    def _begin(self) -> None:
        waited_until = time.monotonic() + busy_wait_s()
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise store_error(self.db_path, exc) from None
                if time.monotonic() >= waited_until:
                    raise UsageError(f"{self.db_path}: another process has held the results store's write lock "
                                     f"for over {busy_wait_s():.0f} s (another cxrbench, or a tool with the "
                                     "database open); finished cells are kept: rerun when it is free, or set "
                                     "CXRBENCH_STORE_BUSY_S to wait longer") from None
                time.sleep(0.5)

    # ------------------------------------------------------------------ artifacts

    def artifacts(self, cell_id: str) -> CellArtifacts:
        """The files of a cell (checkpoint, predictions, overlays)."""
        return CellArtifacts.of(self.root, cell_id)

    def cell_dir(self, cell_id: str) -> Path:
        """The artifact folder of a cell."""
        return self.artifacts(cell_id).folder

    # ------------------------------------------------------------------ writes

    def register_grid(self, name: str, spec: dict[str, Any], cell_ids: Iterable[str]) -> None:
        """Remember a grid's spec and which cells belong to it (in order)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO grids(name, spec, updated_at) VALUES (?, ?, ?)",
                (name, dumps(spec), time.time()),
            )
            # rows filed under a grid by 'cxrbench score' are not the grid's cells: keep them
            conn.execute("DELETE FROM grid_cells WHERE grid = ? AND cell_id NOT LIKE 'score-%'", (name,))
            conn.executemany(
                "INSERT OR IGNORE INTO grid_cells(grid, cell_id, position) VALUES (?, ?, ?)",
                [(name, cid, i) for i, cid in enumerate(cell_ids)],
            )

    def relabel(self, labels: dict[str, tuple[str, str, str]]) -> None:
        """Show stored cells under their grid's current labels: ``{cell_id: (dataset, backbone, head)}``.

        Labels are display names only (a grid's ``label:`` keys, or the short names worked
        out from it), so a cell recorded under an older label is shown, grouped and
        exported under the new one; its id and numbers are untouched.
        """
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE cells SET dataset = ?, backbone = ?, head = ? WHERE cell_id = ? "
                "AND (dataset != ? OR backbone != ? OR head != ?)",
                [(*axes, cid, *axes) for cid, axes in labels.items()],
            )

    def write_result(self, grid: str | None, result: CellResult, *, replace_localizations: bool = False,
                     before_commit: Callable[[], None] | None = None) -> None:
        """Write one finished cell and all its localizer rows atomically.

        Args:
            grid: the grid the cell ran for (None: no grid membership is added, as for a
                merged cell whose memberships are copied on their own).
            result: the cell's result (checked before anything is written).
            replace_localizations: drop the cell's earlier localizer rows first (a retrained
                model makes them stale); done in the same transaction, so a crash keeps the old ones.
            before_commit: called inside the transaction, after the rows are written; if it
                raises, nothing is written (``cxrbench merge`` moves the cell's artifacts into
                place there, so a record and its files arrive together).

        Raises:
            ValueError: for a malformed result (nothing is written).

        """
        if not isinstance(result, CellResult):
            raise ValueError(f"write_result takes a CellResult, got {type(result).__name__}")
        result.check(result.cell_id)
        axes = result.axes
        with self.transaction() as conn:
            if replace_localizations:
                conn.execute("DELETE FROM localizations WHERE cell_id = ?", (result.cell_id,))
            conn.execute(
                """INSERT OR REPLACE INTO cells(cell_id, dataset, backbone, head, seed, config, status,
                   error, traceback, metrics, info, started_at, finished_at, provenance, warnings)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    result.cell_id, axes.dataset, axes.backbone, axes.head, int(axes.seed),
                    dumps(result.config), result.status, result.error, result.traceback, dumps(result.metrics),
                    dumps(result.info), result.started_at, result.finished_at, dumps(result.provenance.to_json()),
                    dumps(list(result.warnings)),
                ),
            )
            if grid is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO grid_cells(grid, cell_id, position) VALUES (?, ?, "
                    "(SELECT COALESCE(MAX(position), -1) + 1 FROM grid_cells WHERE grid = ?))",
                    (grid, result.cell_id, grid),
                )
            for loc in result.localizations:
                conn.execute(
                    """INSERT OR REPLACE INTO localizations(cell_id, localizer_key, localizer, status, error,
                       metrics, settings, traceback) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                    (result.cell_id, loc.key, loc.name, loc.status, loc.error, dumps(loc.metrics),
                     dumps(loc.settings), loc.traceback),
                )
            # cross-dataset evaluations: rows of their own, so a failed one never touches the cell's
            transferstore.write(conn, result.cell_id, result.transfers, replace=replace_localizations)
            if before_commit is not None:
                before_commit()

    # ------------------------------------------------------------------ reads

    def statuses(self) -> dict[str, str]:
        """``{cell_id: status}`` of every recorded cell."""
        return dict(self._conn.execute("SELECT cell_id, status FROM cells").fetchall())

    def data_versions(self) -> dict[str, str | None]:
        """``{cell_id: info.data_version}`` of every ``ok`` cell (None: recorded before versions were)."""
        out: dict[str, str | None] = {}
        for cid, info in self._conn.execute("SELECT cell_id, info FROM cells WHERE status = 'ok'"):
            try:
                version = json.loads(info or "{}").get("data_version")
            except (ValueError, AttributeError):
                version = None
            out[cid] = version if isinstance(version, str) else None
        return out

    def adopt_data_versions(self, versions: dict[str, str]) -> int:
        """Stamp ``ok`` cells recorded before data versions were with the data's version now.

        Such a record cannot tell which data it was computed on; taking today's keeps it
        ``done`` and lets a later change of the data mark it stale. Cells with a version are
        left alone.

        Returns:
            How many records were stamped.

        """
        missing = [cid for cid, version in self.data_versions().items() if version is None and cid in versions]
        if not missing:
            return 0
        with self.transaction() as conn:
            for cid in missing:
                (text,) = conn.execute("SELECT info FROM cells WHERE cell_id = ?", (cid,)).fetchone()
                try:
                    info = json.loads(text or "{}")
                except ValueError:
                    info = {}
                info = info if isinstance(info, dict) else {}
                conn.execute("UPDATE cells SET info = ? WHERE cell_id = ?",
                             (dumps({**info, "data_version": versions[cid]}), cid))
        return len(missing)

    def transfer_statuses(self, cell_id: str) -> dict[str, str]:
        """``{transfer_key: status}`` of one cell's cross-dataset evaluations (``evaluate_on:``)."""
        if self._tables is not None and "transfers" not in self._tables:  # a read-only store from before them
            return {}
        return transferstore.statuses(self._conn, cell_id)

    def localizer_statuses(self, cell_id: str) -> dict[str, str]:
        """``{localizer_key: status}`` recorded for one cell."""
        rows = self._conn.execute(
            "SELECT localizer_key, status FROM localizations WHERE cell_id = ?", (cell_id,)
        ).fetchall()
        return dict(rows)

    def resolve(self, prefix: str) -> str:
        """The one cell id starting with ``prefix`` (as ``cxrbench show`` and ``heatmap`` take it).

        Raises:
            UsageError: when no cell or several cells match.

        """
        matches = [c for c in self.statuses() if c.startswith(prefix)]
        if len(matches) != 1:
            what = "no cells match" if not matches else f"{len(matches)} cells match"
            raise UsageError(f"{what} {prefix!r} in {self.root}")
        return matches[0]

    def cell(self, cell_id: str) -> CellResult | None:
        """One cell's result with its localizer rows, or None."""
        rows = self._cells("WHERE c.cell_id = ?", (cell_id,))
        return rows[0] if rows else None

    def grids(self) -> list[str]:
        """Names of every grid in the store, most recently run first."""
        return [r[0] for r in self._conn.execute("SELECT name FROM grids ORDER BY updated_at DESC")]

    def grid_spec(self, name: str) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT spec FROM grids WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def grids_of(self) -> dict[str, list[str]]:
        """``{cell_id: [grid names]}`` in grid order."""
        out: dict[str, list[str]] = {}
        for g, cid in self._conn.execute("SELECT grid, cell_id FROM grid_cells ORDER BY position"):
            out.setdefault(cid, []).append(g)
        return out

    def _localizations(self, cell_ids: list[str] | None) -> dict[str, list[LocalizerResult]]:
        query = ("SELECT cell_id, localizer_key, localizer, status, error, metrics, settings, "
                 f"{self._column('localizations', '', 'traceback', 'NULL')} "
                 "FROM localizations ORDER BY localizer, localizer_key")
        out: dict[str, list[LocalizerResult]] = {}
        wanted = set(cell_ids) if cell_ids is not None else None
        for cid, key, name, status, error, metrics, settings, tb in self._conn.execute(query):
            if wanted is not None and cid not in wanted:
                continue
            out.setdefault(cid, []).append(LocalizerResult.from_json({
                "key": key, "name": name, "status": status, "error": error, "metrics": json.loads(metrics),
                "settings": json.loads(settings), "traceback": tb}))
        return out

    def _cells(self, where: str = "", params: tuple = (), grid: str | None = None) -> list[CellResult]:
        provenance, warnings = (self._column("cells", "c", name, "''") for name in ("provenance", "warnings"))
        query = (
            "SELECT c.cell_id, c.dataset, c.backbone, c.head, c.seed, c.config, c.status, c.error, "
            f"c.traceback, c.metrics, c.info, c.started_at, c.finished_at, {provenance}, {warnings} FROM cells c "
            + where
        )
        rows = self._conn.execute(query, params).fetchall()
        try:
            return self._decode_cells(rows, grid)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            # values SQLite still returns from damaged pages (NULLs, garbage text) are not records
            raise UsageError(f"{self.db_path}: stored records cannot be read ({type(exc).__name__}: "
                             f"{str(exc)[:160]}); the database looks damaged: restore a copy, or recover it with: "
                             f"sqlite3 {self.db_path} .recover | sqlite3 recovered.sqlite") from None

    def _decode_cells(self, rows: list[tuple], grid: str | None) -> list[CellResult]:
        locs = self._localizations([r[0] for r in rows] if len(rows) < 500 else None)
        transfers = transferstore.read(self._conn, [r[0] for r in rows] if len(rows) < 500 else None) \
            if self._tables is None or "transfers" in self._tables else {}  # a read-only store from before them
        grids = self.grids_of() if grid is None else {}
        out = []
        for (cid, ds, bb, hd, seed, config, status, error, tb, metrics, info, started, finished, prov,
             warnings) in rows:
            out.append(CellResult.from_json({
                "cell_id": cid, "grid": grid or ",".join(grids.get(cid, [])),
                "axes": {"dataset": ds, "backbone": bb, "head": hd, "seed": seed},
                "config": json.loads(config), "status": status, "error": error, "traceback": tb,
                "metrics": json.loads(metrics), "info": json.loads(info),
                "started_at": started, "finished_at": finished, "provenance": json.loads(prov or "{}"),
                "warnings": json.loads(warnings or "[]"),
            }).replace(localizations=tuple(locs.get(cid, ())), transfers=tuple(transfers.get(cid, ()))))
        return out

    def cells(self, grid: str | None = None) -> list[CellResult]:
        """Cell results (of one grid, in grid order, when ``grid`` is given)."""
        if grid is None:
            return self._cells("ORDER BY c.finished_at")
        return self._cells("JOIN grid_cells g ON g.cell_id = c.cell_id WHERE g.grid = ? ORDER BY g.position",
                           (grid,), grid=grid)

    def grid_cell_ids(self, name: str) -> list[str]:
        """Every cell id registered for grid ``name``, in grid order, recorded or not."""
        rows = self._conn.execute("SELECT cell_id FROM grid_cells WHERE grid = ? ORDER BY position", (name,))
        return [row[0] for row in rows]

    def add_grid_members(self, name: str, spec: dict[str, Any] | None, cell_ids: Iterable[str]) -> list[str]:
        """Add cells to grid ``name`` without dropping any it has (unlike :meth:`register_grid`).

        The spec is stored only when the store does not know the grid yet; new members are
        appended after the existing ones, in the order given.

        Returns:
            The cell ids that were not members before.

        """
        with self.transaction() as conn:
            if spec is not None:
                conn.execute("INSERT OR IGNORE INTO grids(name, spec, updated_at) VALUES (?, ?, ?)",
                             (name, dumps(spec), time.time()))
            have = {row[0] for row in conn.execute("SELECT cell_id FROM grid_cells WHERE grid = ?", (name,))}
            start = conn.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM grid_cells WHERE grid = ?",
                                 (name,)).fetchone()[0]
            added = [cid for cid in dict.fromkeys(cell_ids) if cid not in have]
            conn.executemany("INSERT INTO grid_cells(grid, cell_id, position) VALUES (?, ?, ?)",
                             [(name, cid, start + i) for i, cid in enumerate(added)])
        return added
