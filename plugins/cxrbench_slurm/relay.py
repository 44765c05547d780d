"""Live run events from Slurm jobs: each job appends them to a JSON-lines file the driver tails.

Slurm jobs cannot reach the driver over a socket on many clusters (compute nodes often see
only the shared filesystem), and the nodes already share one: the results folder. So a
job writes its cell's events (start with the host it runs on, phase and epoch progress
with loss and validation AUROC, warnings) to ``<folder>/events/<cell>-<token>.jsonl``,
one JSON object per line, and the driver reads each running job's file from where it
stopped at every poll. JSON, not pickle: the files live on a shared disk, and the driver
never unpickles what it did not write itself.

Batch progress is written at most every :data:`PROGRESS_EVERY_S` per cell (epoch ends and
warnings always), so a job adds a few hundred lines per epoch at most to the shared disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from cxrbench.api import Progress, RunEvents

PROGRESS_EVERY_S = 1.0
"""Batch progress is written at most this often per cell (epoch ends always)."""


class FileEvents(RunEvents):
    """A job's run events, appended to ``path`` as JSON lines (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._last_progress = 0.0

    def _write(self, record: dict[str, Any]) -> None:
        # a full or vanished shared disk must not fail the cell: its result still arrives
        with contextlib.suppress(OSError), open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")

    def cell_started(self, cell_id: str, worker: str | None = None) -> None:
        self._write({"kind": "cell_started", "cell_id": cell_id, "worker": worker})

    def progress(self, cell_id: str, progress: Progress) -> None:
        now = time.monotonic()
        if progress.epoch_end or now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            self._write({"kind": "progress", "cell_id": cell_id, "progress": dataclasses.asdict(progress)})

    def warning(self, cell_id: str | None, message: str) -> None:
        self._write({"kind": "warning", "cell_id": cell_id, "message": str(message)})


def job_worker_label(job_id: str | None) -> str:
    """``slurm job 1234_5 on node017``: what the display shows as the cell's worker."""
    host = socket.gethostname().split(".")[0]
    return f"slurm job {job_id} on {host}" if job_id else f"slurm job on {host}"


_PROGRESS_FIELDS = frozenset(f.name for f in dataclasses.fields(Progress))


class EventTail:
    """The driver's reader of one job's events file: delivers the lines written since the last read.

    Only whole lines are read (a line the job is still writing waits for the next poll),
    and a line that is not a known event is skipped: the file is data, never code.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.offset = 0
        self.warnings = 0

    def deliver(self, events: RunEvents) -> None:
        """Deliver every complete new line of the file to ``events``."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return  # not written yet
        end = chunk.rfind(b"\n")
        if end < 0:
            return
        self.offset += end + 1
        for line in chunk[:end].splitlines():
            with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
                self._deliver_one(json.loads(line), events)

    def _deliver_one(self, record: dict[str, Any], events: RunEvents) -> None:
        kind, cell_id = record["kind"], str(record["cell_id"]) if record.get("cell_id") is not None else None
        if kind == "cell_started" and cell_id is not None:
            events.cell_started(cell_id, str(record.get("worker") or "") or None)
        elif kind == "progress" and cell_id is not None:
            fields = {k: v for k, v in dict(record["progress"]).items() if k in _PROGRESS_FIELDS}
            events.progress(cell_id, Progress(**fields))
        elif kind == "warning":
            self.warnings += 1
            events.warning(cell_id, str(record["message"]))
