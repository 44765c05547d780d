"""Run cells: build data and model, train, evaluate, localize, and record.

:func:`execute_cell` is what every executor calls for a task (in this process, in a
worker process or in a Ray task); it never raises for a failing cell: the failure, with
its traceback, is part of the result (as pytest's ``CallInfo.from_call`` captures a test
outcome). :func:`run_grid` drives a whole grid and is the single writer of the store.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import hookimpl
from .config import ComponentSpec, EvaluationSpec, GridSpec, LocalizationSpec, TrainSpec
from .errors import CellError, UsageError
from .grid import Cell, expand, localizer_key
from .interfaces import Dataset, DatasetContext
from .model import Classifier
from .options import options_to_dict

ProgressFn = Callable[[str, int, int], None]
_progress: contextvars.ContextVar[ProgressFn | None] = contextvars.ContextVar("cxrbench_progress", default=None)
_warn: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar("cxrbench_warn", default=None)


@dataclasses.dataclass
class LocalizerTask:
    """One localizer to evaluate on a cell."""

    key: str
    spec: ComponentSpec


@dataclasses.dataclass
class CellTask:
    """Everything a worker needs to run one cell (picklable).

    Attributes:
        cell: the cell.
        localizers: localizers to evaluate (only the missing ones on a resumed cell).
        train: training settings.
        evaluation: classification evaluation settings.
        localization: localization settings.
        cell_dir: the cell's artifact folder.
        cache_root: prepared-image cache root, or None.
        retrain: False when the cell is finished and only localizers are missing (the
            saved checkpoint is loaded instead of training).

    """

    cell: Cell
    localizers: list[LocalizerTask]
    train: TrainSpec
    evaluation: EvaluationSpec
    localization: LocalizationSpec
    cell_dir: str
    cache_root: str | None = None
    retrain: bool = True


CellResult = dict
"""A cell's result: the dict :meth:`cxrbench.store.ResultsStore.write_result` takes."""


def build_dataset(spec: ComponentSpec, cache_root: str | Path | None = None,
                  warn: Callable[[str], None] | None = None) -> Dataset:
    """Instantiate a dataset choice."""
    context = DatasetContext(cache_dir=Path(cache_root) if cache_root else None,
                             warn=warn or (lambda message: None))
    return spec.cls(spec.options, context)


def build_model(backbone: ComponentSpec, head: ComponentSpec, classes: list[str]) -> Classifier:
    """Backbone + pooling head for ``classes``."""
    net = backbone.cls(backbone.options, name=backbone.name)
    pooling = head.cls(net.num_features, len(classes), head.options)
    return Classifier(net, pooling, classes)


def input_size(train: TrainSpec, dataset: Dataset) -> int:
    """Model input size: the grid's, else the dataset's native one, else 224."""
    return int(train.image_size or dataset.native_size or 224)


def _save_npz_atomic(path: Path, **arrays: Any) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def _write_json_atomic(path: Path, payload: Any) -> None:
    from .store import dumps

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps(payload))
    os.replace(tmp, path)


def _report(phase: str, done: int, total: int) -> None:
    fn = _progress.get()
    if fn is not None:
        fn(phase, done, total)


def run_cell_core(task: CellTask) -> CellResult:
    """The core's cell: data -> model -> train (or load) -> predict -> AUROC -> localize."""
    from .data import load_split
    from .metrics import classification_metrics
    from .training import amp_dtype, predict, resolve_device, seed_everything, train_model

    cell, spec = task.cell, task.train
    cell_dir = Path(task.cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(cell_dir / "config.json", cell.config)
    device = resolve_device(spec)
    seed_everything(cell.seed)
    warn = _warn.get()
    dataset = build_dataset(cell.dataset, task.cache_root, warn)
    size = input_size(spec, dataset)
    classes = list(dataset.classes)
    info: dict[str, Any] = {"input_size": size, "device": str(device), "classes": classes}

    def load(name: str):
        _report(f"load {name}", 0, 1)
        return load_split(dataset, name, size, cache_root=Path(task.cache_root) if task.cache_root else None,
                          workers=spec.num_workers)

    model = build_model(cell.backbone, cell.head, classes).to(device)
    info["parameters"] = int(sum(p.numel() for p in model.parameters()))
    best_path = cell_dir / "best.pt"
    if task.retrain or not best_path.exists():
        train_data = load("train")
        val_data = load("val") if "val" in dataset.split_names else None
        outcome = train_model(model, train_data, val_data, spec, seed=cell.seed, device=device,
                              checkpoint_dir=cell_dir, progress=_report)
        torch.save({"model": model.state_dict(), "config": cell.config, "classes": classes},
                   cell_dir / "best.pt.tmp")
        os.replace(cell_dir / "best.pt.tmp", best_path)
        (cell_dir / "last.pt").unlink(missing_ok=True)  # the cell is trained; resume state no longer needed
        info.update(best_epoch=outcome.best_epoch, epochs_run=outcome.epochs_run, history=outcome.history,
                    train_images_per_s=outcome.train_images_per_s, resumed_from_epoch=outcome.resumed_from_epoch)
        del train_data
    else:
        state = torch.load(best_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
    dtype = amp_dtype(spec, device)
    eval_batch = spec.eval_batch_size or 2 * spec.batch_size
    metrics: dict[str, float] = {}
    if task.retrain:
        test = load("test")
        val = load("val") if "val" in dataset.split_names else None
        t0 = time.perf_counter()
        scores = predict(model, test, eval_batch, device, dtype=dtype, progress=_report)
        info["inference_images_per_s"] = len(test) / max(time.perf_counter() - t0, 1e-9)
        val_scores = predict(model, val, eval_batch, device, dtype=dtype) if val is not None and len(val) else None
        labels = np.asarray(test.split.labels, dtype=np.float32)
        metrics = classification_metrics(
            labels, scores, classes,
            y_true_val=np.asarray(val.split.labels, dtype=np.float32) if val_scores is not None else None,
            y_score_val=val_scores,
            groups=np.asarray(test.split.patient_ids),
            n_boot=task.evaluation.bootstrap, seed=task.evaluation.bootstrap_seed,
        )
        _save_npz_atomic(cell_dir / "predictions.npz", ids=np.asarray(test.split.ids, dtype=str),
                         patient_ids=np.asarray(test.split.patient_ids, dtype=str), labels=labels,
                         scores=scores.astype(np.float32), classes=np.asarray(classes, dtype=str))
    localizations = []
    if task.localizers:
        split_name = task.localization.split
        if split_name not in dataset.split_names:
            message = f"dataset '{cell.dataset.name}' has no '{split_name}' split with boxes"
            localizations = [_loc_failure(lt, message) for lt in task.localizers]
        else:
            boxed = load(split_name)
            tune_on = load("val") if task.localization.tune and "val" in dataset.split_names else None
            for lt in task.localizers:
                localizations.append(_run_localizer(lt, model, boxed, classes, task, eval_batch, device, tune_on))
    return {"metrics": metrics, "info": info, "localizations": localizations}


def _loc_failure(lt: LocalizerTask, message: str, tb: str | None = None) -> dict[str, Any]:
    return {"key": lt.key, "name": lt.spec.name, "status": "failed", "error": message,
            "metrics": {}, "settings": {"traceback": tb} if tb else {}}


def _run_localizer(lt: LocalizerTask, model: Classifier, boxed: Any, classes: list[str], task: CellTask,
                   batch_size: int, device: torch.device, tune_on: Any) -> dict[str, Any]:
    from .localization import evaluate, resolve_policy

    try:
        localizer = lt.spec.cls(lt.spec.options)
        reason = localizer.unsupported_reason(model)
        if reason:
            return _loc_failure(lt, f"localizer '{lt.spec.name}' cannot explain this model: {reason}")
        policy = resolve_policy(lt.spec.cls, lt.spec.threshold, task.localization.threshold)
        overlay_dir = Path(task.cell_dir) / "overlays" / lt.spec.name if task.localization.save_overlays else None
        _report(f"localize {lt.spec.name}", 0, 1)
        metrics, settings = evaluate(
            model, localizer, boxed, classes, policy, batch_size=batch_size, device=device,
            hit_tolerance=task.localization.hit_tolerance, max_images=task.localization.max_images,
            tune_on=tune_on, overlay_dir=overlay_dir, overlays=task.localization.save_overlays,
        )
        settings["options"] = options_to_dict(lt.spec.options)
        return {"key": lt.key, "name": lt.spec.name, "status": "ok", "error": None,
                "metrics": metrics, "settings": settings}
    except Exception as exc:  # a broken localizer fails its row, not the cell
        return _loc_failure(lt, f"{type(exc).__name__}: {exc}", traceback.format_exc())


class CorePlugin:
    """The host's own hook implementations (the default way to run a cell)."""

    @hookimpl(trylast=True)
    def cxrbench_run_cell(self, task: CellTask) -> CellResult:
        return run_cell_core(task)


_worker_pm: Any = None


def _plugin_manager() -> Any:
    """The plugin manager of this process (built once per worker process)."""
    global _worker_pm
    if _worker_pm is None:
        from .manager import build_plugin_manager

        _worker_pm = build_plugin_manager()
    return _worker_pm


def set_plugin_manager(pm: Any) -> None:
    """Use ``pm`` for cells run in this process (the CLI and tests call this)."""
    global _worker_pm
    _worker_pm = pm


def failed_result(task: CellTask, error: str, tb: str | None = None) -> CellResult:
    """A ``failed`` result for a task whose worker died or could not return a result."""
    cell = task.cell
    now = time.time()
    return {"cell_id": cell.cell_id, "axes": cell.axes, "config": cell.config, "grid": cell.grid,
            "started_at": now, "finished_at": now, "status": "failed", "error": error, "traceback": tb,
            "metrics": {}, "info": {}, "localizations": []}


def execute_cell(task: CellTask, progress: ProgressFn | None = None,
                 warn: Callable[[str], None] | None = None) -> CellResult:
    """Run one cell through the ``cxrbench_run_cell`` hook; never raises for a cell failure.

    ``KeyboardInterrupt`` is re-raised (an interrupted run), every other exception
    becomes a ``failed`` result with its message and traceback.
    """
    cell = task.cell
    base = {"cell_id": cell.cell_id, "axes": cell.axes, "config": cell.config, "grid": cell.grid,
            "started_at": time.time()}
    token_p = _progress.set(progress)
    token_w = _warn.set(warn)
    try:
        outcome = _plugin_manager().hook.cxrbench_run_cell(task=task)
        if outcome is None:
            raise CellError("no plugin ran the cell (every cxrbench_run_cell returned None)")
        result = {**base, "status": "ok", "error": None, "traceback": None, **outcome}
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        result = {**base, "status": "failed", "error": f"{type(exc).__name__}: {message}".rstrip(": "),
                  "traceback": traceback.format_exc(), "metrics": {}, "info": {}, "localizations": []}
    finally:
        _progress.reset(token_p)
        _warn.reset(token_w)
    result["finished_at"] = time.time()
    result.setdefault("info", {})["duration_s"] = result["finished_at"] - result["started_at"]
    return result


# --------------------------------------------------------------------------- grids


@dataclasses.dataclass
class RunSummary:
    """How a ``run`` went."""

    total: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    localizers_failed: int = 0
    interrupted: bool = False
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def fingerprint_datasets(grid: GridSpec, cache_root: str | None, warn: Callable[[str], None]) -> Callable:
    """A function giving each dataset choice's data fingerprint (datasets built once)."""
    cache: dict[int, str] = {}

    def fingerprint(spec: ComponentSpec) -> str:
        key = id(spec)
        if key not in cache:
            try:
                cache[key] = build_dataset(spec, cache_root, warn).fingerprint()
            except UsageError as exc:
                raise UsageError(f"{spec.path}: {exc}") from None
        return cache[key]

    return fingerprint


def plan_tasks(grid: GridSpec, cells: list[Cell], store: Any, *, force: bool = False, rerun_failed: bool = False,
               cache_root: str | None = None) -> tuple[list[CellTask], int]:
    """Decide what to run: pending cells, and finished cells missing a localizer.

    Returns:
        (tasks, number of cells skipped because they are complete).

    """
    statuses = store.statuses()
    default_threshold = grid.localization.threshold
    tasks, skipped = [], 0
    for cell in cells:
        wanted = [LocalizerTask(localizer_key(spec, default_threshold), spec) for spec in grid.localizers]
        status = statuses.get(cell.cell_id)
        retrain = True
        if status == "ok" and not force:
            done = store.localizer_keys(cell.cell_id)
            wanted = [lt for lt in wanted if done.get(lt.key) != "ok"] if rerun_failed else \
                [lt for lt in wanted if lt.key not in done]
            if not wanted:
                skipped += 1
                continue
            retrain = False
        elif status == "failed" and not (force or rerun_failed):
            skipped += 1
            continue
        tasks.append(CellTask(cell=cell, localizers=wanted, train=grid.train, evaluation=grid.evaluation,
                              localization=grid.localization, cell_dir=str(store.cell_dir(cell.cell_id)),
                              cache_root=cache_root, retrain=retrain))
    return tasks, skipped


def merge_partial(store: Any, task: CellTask, result: CellResult) -> CellResult:
    """For a localizer-only task, keep the stored classification metrics and info."""
    if task.retrain or result["status"] != "ok":
        return result
    previous = store.cell(task.cell.cell_id) or {}
    merged = dict(result)
    merged["metrics"] = previous.get("metrics", {})
    merged["info"] = {**previous.get("info", {}), **{k: v for k, v in result.get("info", {}).items()
                                                     if k not in ("history",)}}
    merged["started_at"] = previous.get("started_at", result["started_at"])
    return merged


def grid_summary(grid: GridSpec) -> dict[str, Any]:
    """A JSON-friendly description of the grid for the store."""
    def comp(specs: tuple) -> list:
        return [s.key() for s in specs]

    return {"name": grid.name, "description": grid.description, "seeds": list(grid.seeds),
            "datasets": comp(grid.datasets), "backbones": comp(grid.backbones), "heads": comp(grid.heads),
            "localizers": comp(grid.localizers), "train": options_to_dict(grid.train),
            "evaluation": options_to_dict(grid.evaluation), "localization": options_to_dict(grid.localization),
            "source": grid.source}


def run_grid(
    grid: GridSpec,
    pm: Any,
    store: Any,
    *,
    executor: ComponentSpec | None = None,
    force: bool = False,
    rerun_failed: bool = False,
    cache_root: str | None = None,
    ui: Any = None,
    warn: Callable[[str], None] | None = None,
) -> RunSummary:
    """Run every pending cell of ``grid`` and record each result as it arrives.

    Args:
        grid: the validated grid.
        pm: the plugin manager (lifecycle hooks).
        store: the results store (this process is its only writer).
        executor: overrides the grid's executor.
        force: rerun every cell, finished or not.
        rerun_failed: rerun failed cells (and failed localizers of finished cells).
        cache_root: prepared-image cache root.
        ui: an object with ``start(total, pending)``, ``progress(phase, done, total)``,
            ``cell_started(cell)``, ``cell_finished(cell, result)`` and ``stop()`` (or None).
        warn: one-line warnings from datasets.

    Returns:
        The :class:`RunSummary`; ``interrupted`` is True after Ctrl-C (the cell in
        flight is lost, every finished one is stored).

    """
    warn = warn or (lambda message: None)
    set_plugin_manager(pm)
    cells = expand(grid, fingerprint_datasets(grid, cache_root, warn))
    store.register_grid(grid.name, grid_summary(grid), [c.cell_id for c in cells])
    # --force keeps the old records until each cell's new one replaces them: an interrupted
    # forced run loses nothing
    tasks, skipped = plan_tasks(grid, cells, store, force=force, rerun_failed=rerun_failed, cache_root=cache_root)
    summary = RunSummary(total=len(cells), skipped=skipped)
    pm.hook.cxrbench_cells_collected(grid=grid, cells=cells, pending=[t.cell for t in tasks])
    executor_spec = executor or grid.executor
    runner = executor_spec.cls(executor_spec.options)
    by_id = {t.cell.cell_id: t for t in tasks}

    def on_result(result: CellResult) -> None:
        task = by_id[result["cell_id"]]
        result = merge_partial(store, task, result)
        store.write_result(grid.name, result, replace_localizations=task.retrain)
        if result["status"] == "ok":
            summary.ok += 1
            # a trained cell whose localizer failed is not a clean run either (exit code 1)
            for loc in result.get("localizations") or []:
                if loc.get("status") == "failed":
                    summary.localizers_failed += 1
                    summary.failures.append((task.cell.cell_id, f"localizer {loc.get('name')}: {loc.get('error')}"))
        else:
            summary.failed += 1
            summary.failures.append((task.cell.cell_id, result.get("error") or "failed"))
        pm.hook.cxrbench_cell_finished(task=task, result=result)
        if ui is not None:
            ui.cell_finished(task.cell, result)

    if ui is not None:
        ui.start(len(cells), len(tasks), skipped)
    try:
        context = {"progress": ui.progress if ui is not None else None, "warn": warn,
                   "cell_started": ui.cell_started if ui is not None else None}
        runner.run(tasks, on_result, **_accepted(runner.run, context))
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        if ui is not None:
            ui.stop()
    return summary


def _accepted(fn: Callable, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``kwargs`` that ``fn`` accepts (optional executor features)."""
    import inspect

    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def dumps_task(task: CellTask) -> str:
    """Readable JSON of a task's cell (for ``--dry-run`` and logs)."""
    return json.dumps({"cell_id": task.cell.cell_id, **task.cell.axes}, sort_keys=True)

