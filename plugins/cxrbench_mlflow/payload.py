"""A cell's record as MLflow sees it: run name, tags, params, metrics, history, files.

Pure functions of a :class:`~cxrbench.api.CellResult` (and its task, for the cell's
folder), with no MLflow import, so the mapping is testable on its own and the MLflow
calls in :mod:`cxrbench_mlflow.tracker` stay mechanical.

Naming (every key passes MLflow's name rule, see :func:`mlflow_key`):

- params: the axes' display labels (``dataset``, ``backbone``, ``head``, ``seed``) and the
  cell's resolved configuration flattened with dots (``train.lr``,
  ``backbone.options.width``, ``evaluation.bootstrap``, ``data_fingerprint``). The
  configuration is what the cell id is the digest of, so a run's params never change.
- metrics: the classification metrics under their catalogue keys (``auroc_mean``,
  ``auroc.Effusion``, ``auroc_ci_low.Effusion``: per-class ``/`` becomes ``.``); each ok
  localizer's metrics under ``loc/<localizer>/`` (``loc/gradcam/iou_mean``,
  ``loc/gradcam/acc_iou_at_0.5``, ``loc/gradcam/hit_rate.Effusion``); numeric
  facts of the run under ``info/`` (``info/duration_s``, ``info/parameters``).
- history: each epoch's numbers as stepped metrics ``history/<key>`` at step = epoch
  (``history/loss``, ``history/val_auroc_mean``, ``history/lr``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cxrbench.api import CellArtifacts, CellResult, CellTask, LocalizerResult, __version__, one_line

TAG_PREFIX = "cxrbench."
CELL_ID_TAG = "cxrbench.cell_id"
DIGEST_TAG = "cxrbench.record_sha256"
"""Set last, once everything else is logged: a run without it (or with another digest) is stale."""

MAX_KEY = 250  # mlflow.utils.validation.MAX_ENTITY_KEY_LENGTH
MAX_PARAM_VALUE = 6000  # MAX_PARAM_VAL_LENGTH
MAX_TAG_VALUE = 8000  # MAX_TAG_VAL_LENGTH

_SPELLED = {"@": "_at_", ">": "_gt_", "<": "_lt_", "=": "_eq_", "+": "_plus_"}
# MLflow's rule on Windows (the stricter one: no colon), so a store stays portable
_ALLOWED = re.compile(r"[\w.\- ]")


def mlflow_key(*segments: str) -> str:
    """``segments`` joined by ``/`` into a valid MLflow metric / param key.

    MLflow allows only letters, digits, ``_ - . / space`` (and ``:`` off Windows), and a
    key must not change under ``posixpath.normpath``. Its file store also keeps each key
    as a file path, so no key may be a folder of another (``hit_rate`` and
    ``hit_rate/Bar`` cannot both exist): a ``/`` inside a segment (cxrbench's per-class
    keys, ``auroc/Effusion``) becomes ``.`` (``auroc.Effusion``), and ``/`` only joins the
    plugin's own groups (``loc/gradcam/...``). ``@``, ``>``, ``<``, ``=`` and ``+`` are
    spelled out (``acc_iou@0.5`` -> ``acc_iou_at_0.5``, ``iou>0.3`` -> ``iou_gt_0.3``)
    so keys stay readable; any other character becomes ``_``.
    """
    parts = []
    for segment in segments:
        text = "".join(_SPELLED.get(ch, ch if _ALLOWED.match(ch) else "_") for ch in segment.replace("/", "."))
        parts.append(text if text.strip(".") else text.replace(".", "_") or "_")
    return "/".join(parts)[:MAX_KEY].rstrip("/")


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, leaf value)`` of a nested mapping; lists are leaves."""
    for key, value in mapping.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            yield from flatten(value, name)
        else:
            yield name, value


def _number(value: Any) -> float | None:
    """A finite float, or None for anything else (bools, text, NaN: not a metric value)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class _Keys:
    """Collects ``{mlflow key: value}``, keeping two raw keys that sanitize alike apart."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self._raw: dict[str, str] = {}

    def add(self, segments: tuple[str, ...], value: Any) -> None:
        key, raw = mlflow_key(*segments), "/".join(segments)
        if key in self._raw and self._raw[key] != raw:
            key = f"{key[:MAX_KEY - 9]}_{hashlib.sha1(raw.encode()).hexdigest()[:8]}"
        self._raw[key] = raw
        self.values[key] = value


@dataclasses.dataclass(frozen=True)
class HistoryPoint:
    """One stepped metric value: ``key`` at ``step`` (the epoch)."""

    key: str
    value: float
    step: int


@dataclasses.dataclass(frozen=True)
class RunPayload:
    """Everything one cell's MLflow run holds.

    Attributes:
        cell_id: the cell (also the ``cxrbench.cell_id`` tag the run is found by).
        experiment: the MLflow experiment's name.
        run_name: a short label of the cell.
        tags: ``cxrbench.*`` tags (the digest tag is separate: it is written last).
        params: flattened configuration, values as text.
        metrics: final values (logged at step 0).
        history: per-epoch values.
        record: the cell's record as JSON, attached as ``record.json``; None = not attached.
        digest: SHA-256 of the record's JSON: an unchanged record is not logged twice.
        files: ``(path, artifact folder or None)`` of the cell's files to attach.
        start_ms: the cell's start (UNIX ms), or None.
        end_ms: the cell's end (UNIX ms), or None.

    """

    cell_id: str
    experiment: str
    run_name: str
    tags: Mapping[str, str]
    params: Mapping[str, str]
    metrics: Mapping[str, float]
    history: tuple[HistoryPoint, ...]
    record: Mapping[str, Any] | None
    digest: str
    files: tuple[tuple[Path, str | None], ...] = ()
    start_ms: int | None = None
    end_ms: int | None = None


def run_name(result: CellResult) -> str:
    """``backbone / head / dataset / seed N``: what tells a grid's cells apart at a glance."""
    axes = result.axes
    return f"{axes.backbone} / {axes.head} / {axes.dataset} / seed {axes.seed}"


def localizer_prefixes(localizations: tuple[LocalizerResult, ...]) -> dict[str, str]:
    """``{localizer key: metric prefix}``: the name, or ``name-key`` when a name repeats."""
    names = [loc.name for loc in localizations]
    return {loc.key: loc.name if names.count(loc.name) == 1 else f"{loc.name}-{loc.key}" for loc in localizations}


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(round(seconds * 1000))


def build_payload(task: CellTask, result: CellResult, *, experiment: str, artifacts: tuple[str, ...]) -> RunPayload:
    """The MLflow run of ``result`` (an ``ok`` cell).

    Args:
        task: the cell's task (where its files are).
        result: the record as the store holds it.
        experiment: the experiment's name.
        artifacts: names from :data:`cxrbench_mlflow.settings.ARTIFACTS` to attach.

    """
    params = _Keys()
    for axis, label in result.axes.as_dict().items():
        params.add((axis,), label)
    for key, value in flatten(result.config):
        if key not in params.values:
            params.add((key,), json.dumps(value) if isinstance(value, (list, tuple)) else value)

    metrics = _Keys()
    for key, value in result.metrics.items():
        metrics.add((key,), _number(value))
    prefixes = localizer_prefixes(result.localizations)
    for loc in result.localizations:
        if loc.ok:
            for key, value in loc.metrics.items():
                metrics.add(("loc", prefixes[loc.key], key), _number(value))
    for key, value in result.info.items():
        metrics.add(("info", str(key)), _number(value))

    history: list[HistoryPoint] = []
    for i, epoch in enumerate(result.info.get("history") or ()):
        if not isinstance(epoch, Mapping):
            continue
        step = epoch.get("epoch", i + 1)
        step = int(step) if _number(step) is not None else i + 1
        for key, value in epoch.items():
            number = _number(value)
            if key != "epoch" and number is not None:
                history.append(HistoryPoint(mlflow_key("history", str(key)), number, step))

    env = result.provenance.environment
    tags = {
        CELL_ID_TAG: result.cell_id,
        "cxrbench.grid": result.grid,
        "cxrbench.status": result.status,
        "cxrbench.version": __version__,
        "cxrbench.recorded_by": env.cxrbench or __version__,
        "cxrbench.localizers": ", ".join(f"{prefixes[loc.key]} ({loc.status})" for loc in result.localizations),
        **{f"cxrbench.env.{field}": str(value) for field, value in dataclasses.asdict(env).items() if value != ""},
        **{f"cxrbench.localizer.{mlflow_key(prefixes[loc.key])}.error": one_line(loc.error or "failed")
           for loc in result.localizations if not loc.ok},
    }
    record = result.to_json()
    digest = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()

    folder = CellArtifacts(Path(task.cell_dir))
    wanted = {"predictions": folder.predictions, "checkpoint": folder.best}
    files = tuple((wanted[name], None) for name in artifacts if name in wanted and wanted[name].is_file())
    return RunPayload(
        cell_id=result.cell_id, experiment=experiment, run_name=run_name(result),
        tags={k: str(v)[:MAX_TAG_VALUE] for k, v in tags.items()},
        params={k: str(v)[:MAX_PARAM_VALUE] for k, v in params.values.items()},
        metrics={k: v for k, v in metrics.values.items() if v is not None},
        history=tuple(history), record=record if "record" in artifacts else None, digest=digest, files=files,
        start_ms=_ms(result.started_at), end_ms=_ms(result.finished_at),
    )
