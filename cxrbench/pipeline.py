"""The cell pipeline: data -> model -> train (or load) -> predict -> AUROC -> localize.

:func:`run_cell_core` is the host's own implementation of the ``cxrbench_run_cell`` hook
(:class:`CorePlugin`, registered last, so a plugin may run cells its own way). It returns
a :class:`~cxrbench.records.CellResult` and reports through the cell's
:class:`~cxrbench.events.CellReporter`; it raises for a failing cell, and
:func:`cxrbench.worker.execute_cell` turns that into a failed result.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import hookimpl
from .artifacts import CellArtifacts, save_npz_atomic, save_torch_atomic, write_json_atomic
from .config import TrainSpec
from .covariates import save_covariates
from .errors import CellError
from .events import CellReporter, Progress
from .interfaces import Classifier, Dataset, DatasetContext
from .options import options_to_dict
from .records import CellAxes, CellResult, Environment, LocalizerResult, Provenance
from .registry import ComponentSpec
from .tasks import CellTask, LocalizerTask


class _WarnRelay:
    """A dataset's ``warn``: forwards to whoever opened it last, and replays what it said to each new opener.

    A dataset shared by the cells of a run warns while it is built (e.g. "12 images
    missing"), once; every cell that opens it still records those warnings.
    """

    def __init__(self, target: Any) -> None:
        self.target = target
        self.said: list[str] = []

    def __call__(self, message: str) -> None:
        self.said.append(message)
        if self.target is not None:
            self.target(message)

    def attach(self, target: Any) -> None:
        self.target = target
        if target is not None:
            for message in self.said:
                target(message)


_SHARED_DATASETS: contextvars.ContextVar[dict[str, tuple[Dataset, _WarnRelay]] | None] = contextvars.ContextVar(
    "cxrbench_shared_datasets", default=None)


@contextlib.contextmanager
def shared_datasets() -> Iterator[None]:
    """Within this block, each dataset choice is built (its root scanned) once and shared.

    ``run`` opens every dataset to fingerprint it, to prepare its cache and in every cell
    run in this process; a full NIH root takes seconds to scan, so once per run is enough.
    The sharing ends with the block: a later run sees the files as they are then.
    """
    if _SHARED_DATASETS.get() is not None:
        yield
        return
    token = _SHARED_DATASETS.set({})
    try:
        yield
    finally:
        _SHARED_DATASETS.reset(token)


def open_dataset(spec: ComponentSpec, cache_root: str | Path | None = None, warn: Any = None) -> Dataset:
    """Instantiate a dataset choice with the host's context (shared within :func:`shared_datasets`)."""
    shared = _SHARED_DATASETS.get()
    key = json.dumps([spec.key(), str(cache_root or "")], sort_keys=True, default=str)
    if shared is not None and key in shared:
        dataset, relay = shared[key]
        relay.attach(warn)
        return dataset
    relay = _WarnRelay(warn)
    context = DatasetContext(cache_dir=Path(cache_root) if cache_root else None, warn=relay)
    dataset = spec.build(context)
    if shared is not None:
        shared[key] = (dataset, relay)
    return dataset


def input_size(train: TrainSpec, dataset: Dataset) -> int:
    """Model input size: the grid's, else the dataset's native one, else 224."""
    return int(train.image_size or dataset.native_size or 224)


def provenance_of(task: CellTask, environment: Environment) -> Provenance:
    """The settings a task's numbers are computed with, recorded with them."""
    evaluation = options_to_dict(task.evaluation)
    return Provenance(train=options_to_dict(task.train), evaluation=evaluation,
                      resampling_unit="patient", cutoff=str(evaluation.get("cutoff", "youden")),
                      environment=environment)


class _CellRun:
    """One run of a cell's pipeline: the state its steps share."""

    def __init__(self, task: CellTask, reporter: CellReporter) -> None:
        from .training import amp_dtype, resolve_device

        self.task = task
        self.reporter = reporter
        self.artifacts = CellArtifacts(Path(task.cell_dir)).ensure()
        self.device = resolve_device(task.train)
        self.dtype = amp_dtype(task.train, self.device)
        self.dataset = open_dataset(task.cell.dataset, task.cache_root, reporter.warning)
        self.size = input_size(task.train, self.dataset)
        self.classes = list(self.dataset.classes)
        self.eval_batch = task.train.eval_batch_size or 2 * task.train.batch_size
        self._splits: dict[str, Any] = {}
        self.trained_val_scores: np.ndarray | None = None
        """The selected epoch's validation scores from training (reused, not predicted again)."""

    def split(self, name: str) -> Any:
        """A prepared split, loaded once per cell run."""
        from .data import load_split

        if name not in self._splits:
            self.reporter.progress(Progress("load", 0, 1, detail=name))
            cache = Path(self.task.cache_root) if self.task.cache_root else None
            data = load_split(self.dataset, name, self.size, cache_root=cache, workers=self.task.train.num_workers,
                              warn=self.reporter.warning)
            cap = getattr(self.task.train, "max_eval_images", None)
            if cap and name != "train" and len(data) > cap:  # a smoke run: the first images only
                data = data.subset(np.arange(cap), name)
            self._splits[name] = data
        return self._splits[name]

    def has_split(self, name: str) -> bool:
        return name in self.dataset.split_names

    def drop(self, name: str) -> None:
        self._splits.pop(name, None)

    def train_or_load(self, model: Classifier, info: dict[str, Any]) -> None:
        """Train the cell, or load the model it trained before.

        A localizer-only task (``retrain`` False) never trains: without its ``best.pt`` the
        new localizer's scores would come from another model than the recorded AUROC, so a
        missing checkpoint fails the task (its localizers are recorded failed, with the
        reason). A cell whose training finished but whose evaluation did not (interrupted,
        or failed after training) loads its ``best.pt`` and only re-evaluates, unless forced.
        """
        from .training import train_model

        task, best = self.task, self.artifacts.best
        if not task.retrain:
            if not best.exists():
                raise CellError(f"the trained model {best} is missing, so localizers cannot be evaluated on the "
                                "model whose AUROC is recorded; rerun the cell with --force to retrain it")
            model.load_state_dict(self._load_best(best)["model"])
            return
        finished = None if task.force else self._finished_training(best)
        if finished is not None:
            model.load_state_dict(finished["model"])
            info.update(finished["training"], reused_checkpoint=True)
            self.reporter.warning(f"cell {task.cell.cell_id}: training had finished before (best.pt); "
                                  "evaluating it without retraining")
            return
        if task.force:  # a forced cell trains from scratch: never from an earlier run's resume state
            self.artifacts.last.unlink(missing_ok=True)
        outcome = train_model(model, self.split("train"), self.split("val") if self.has_split("val") else None,
                              task.train, seed=task.cell.seed, device=self.device,
                              checkpoint_dir=self.artifacts.folder, progress=self.reporter.progress,
                              warn=self.reporter.warning)
        training = {"best_epoch": outcome.best_epoch, "epochs_run": outcome.epochs_run, "history": outcome.history,
                    "train_images_per_s": outcome.train_images_per_s,
                    "resumed_from_epoch": outcome.resumed_from_epoch}
        save_torch_atomic({"model": model.state_dict(), "config": task.cell.config, "classes": self.classes,
                           "training": training}, best)
        self.artifacts.last.unlink(missing_ok=True)  # best.pt now holds what a resume needs
        info.update(training)
        self.trained_val_scores = outcome.val_scores
        self.drop("train")

    def _load_best(self, best: Path) -> dict[str, Any]:
        try:
            return torch.load(best, map_location=self.device, weights_only=True)
        except Exception as exc:  # a truncated or foreign file: say which
            raise CellError(f"cannot read the trained model {best}: {type(exc).__name__}: {exc}") from None

    def _finished_training(self, best: Path) -> dict[str, Any] | None:
        """The checkpoint of a finished training of exactly this cell, or None."""
        if not best.exists():
            return None
        try:
            state = torch.load(best, map_location=self.device, weights_only=True)
        except Exception:  # unreadable: train again rather than fail
            return None
        if not isinstance(state, dict) or "training" not in state or state.get("config") != dict(self.task.cell.config):
            return None
        return state

    def classify(self, model: Classifier, info: dict[str, Any]) -> dict[str, float]:
        from .metrics import classification_metrics
        from .training import predict

        evaluation = self.task.evaluation
        test = self.split("test")
        if not len(test):
            raise CellError(f"dataset '{self.task.cell.dataset.name}' has an empty test split: nothing to evaluate")
        val = self.split("val") if self.has_split("val") else None
        t0 = time.perf_counter()
        scores = predict(model, test, self.eval_batch, self.device, dtype=self.dtype,
                         progress=self.reporter.progress, detail="test")
        info["inference_images_per_s"] = len(test) / max(time.perf_counter() - t0, 1e-9)
        val_scores = None
        if val is not None and len(val):
            reuse = self.trained_val_scores
            if reuse is not None and reuse.shape == (len(val), len(self.classes)):
                val_scores, info["val_scores_from_training"] = reuse, True
            else:
                val_scores = predict(model, val, self.eval_batch, self.device, dtype=self.dtype,
                                     progress=self.reporter.progress, detail="val")
        labels = np.asarray(test.split.labels, dtype=np.float32)
        metrics = classification_metrics(
            labels, scores, self.classes,
            y_true_val=np.asarray(val.split.labels, dtype=np.float32) if val_scores is not None else None,
            y_score_val=val_scores, groups=np.asarray(test.split.patient_ids),
            n_boot=evaluation.bootstrap, seed=evaluation.bootstrap_seed, ci=evaluation.ci,
            cutoff=getattr(evaluation, "cutoff", "youden"),
        )
        save_npz_atomic(self.artifacts.predictions, ids=np.asarray(test.split.ids, dtype=str),
                        patient_ids=np.asarray(test.split.patient_ids, dtype=str), labels=labels,
                        scores=scores.astype(np.float32), classes=np.asarray(self.classes, dtype=str))
        save_covariates(self.artifacts.covariates, "test", test.name, test.split.ids, test.split.covariates)
        return metrics

    def localize(self, model: Classifier) -> list[LocalizerResult]:
        task = self.task
        split_name = task.localization.split
        if not self.has_split(split_name):
            message = f"dataset '{task.cell.dataset.name}' has no '{split_name}' split with boxes"
            return [LocalizerResult.failure(lt.key, lt.spec.name, message) for lt in task.localizers]
        try:
            scored, tune_on, protocol = self._parts(split_name)
        except ValueError as exc:
            return [LocalizerResult.failure(lt.key, lt.spec.name, str(exc)) for lt in task.localizers]
        save_covariates(self.artifacts.covariates, "localization", scored.name, scored.split.ids,
                        scored.split.covariates)
        return [self._localizer(lt, model, scored, tune_on, protocol) for lt in task.localizers]

    def _parts(self, split_name: str) -> tuple[Any, Any, dict[str, Any]]:
        """(the part scored, the part tuned on or None, how they were chosen) of the boxed split."""
        from .tuning import TuningPopulation, ids_digest, partition_rows, tuning_ids

        spec = self.task.localization
        wants_part = spec.tune or _tunes_masks(spec)
        boxed = self.split(split_name)
        val_has_boxes = self.has_split("val") and not self.dataset.split("val").boxes.empty
        if val_has_boxes:
            return boxed, self.split("val") if wants_part else None, {"scored_split": split_name, "tune_split": "val"}
        if spec.tune_fraction == 0:
            if wants_part:
                raise ValueError(f"localization.tune: dataset '{self.task.cell.dataset.name}' has no val boxes and "
                                 "tune_fraction is 0: no boxes to tune on")
            return boxed, None, {"scored_split": split_name}
        population = self.dataset.tuning_population(split_name) or \
            TuningPopulation.of_split(boxed.split, self.classes)
        held_out = tuning_ids(population, spec.tune_fraction, spec.tune_seed)
        tune_rows, scored_rows = partition_rows(boxed.split, held_out)
        protocol = {"scored_split": f"{split_name}:test", "tune_split": f"{split_name}:tune",
                    "tune_fraction": spec.tune_fraction, "tune_seed": spec.tune_seed,
                    "tune_ids_digest": ids_digest(held_out), "tune_images": int(len(tune_rows)),
                    "scored_images": int(len(scored_rows))}
        tune_on = None
        if wants_part:
            if not len(tune_rows):
                raise ValueError(f"localization.tune: no image of the held-out part of '{split_name}' is present")
            tune_on = boxed.subset(tune_rows, f"{split_name}:tune")
        return boxed.subset(scored_rows, f"{split_name}:test"), tune_on, protocol

    def _localizer(self, lt: LocalizerTask, model: Classifier, boxed: Any, tune_on: Any,
                   protocol: dict[str, Any]) -> LocalizerResult:
        from .localization import evaluate, resolve_policy

        spec, settings = self.task.localization, {}
        try:
            localizer = lt.spec.build()
            reason = localizer.unsupported_reason(model)
            if reason:
                return LocalizerResult.failure(lt.key, lt.spec.name,
                                               f"localizer '{lt.spec.name}' cannot explain this model: {reason}")
            policy = resolve_policy(lt.spec.cls, lt.spec.threshold, spec.threshold)
            overlay_dir = self.artifacts.overlays(lt.spec.name) if spec.save_overlays else None
            evaluation = self.task.evaluation
            self.reporter.progress(Progress("localize", 0, 1, detail=lt.spec.name))
            metrics, settings = evaluate(
                model, localizer, boxed, self.classes, policy, batch_size=self.eval_batch, device=self.device,
                hit_tolerance=spec.hit_tolerance, max_images=spec.max_images,
                tune_on=tune_on if spec.tune else None, overlay_dir=overlay_dir, overlays=spec.save_overlays,
                box_thresholds=spec.box_thresholds, n_boot=evaluation.bootstrap, boot_seed=evaluation.bootstrap_seed,
                ci=evaluation.ci, maps_path=self.artifacts.maps(lt.key) if spec.save_maps else None,
                pair_scores_path=self.artifacts.pair_scores(lt.key),
                masks=spec.masks, mask_tune_on=tune_on if _tunes_masks(spec) else None,
                sanity=spec.sanity, autocast_dtype=self.dtype,
                channels_last=_channels_last(self.task.train, self.device),
            )
            settings = {**settings, **protocol, "options": options_to_dict(lt.spec.options), "split": spec.split,
                        "hit_tolerance": spec.hit_tolerance, "hit_tolerance_unit": "original image pixels",
                        "box_thresholds": spec.box_thresholds, "max_images": spec.max_images}
            return LocalizerResult(key=lt.key, name=lt.spec.name, metrics=metrics, settings=settings)
        except Exception as exc:  # a broken localizer fails its row, not the cell
            return LocalizerResult.failure(lt.key, lt.spec.name, f"{type(exc).__name__}: {exc}",
                                           traceback.format_exc())


def _channels_last(train: TrainSpec, device: torch.device) -> bool:
    """The cell's memory format for forward passes (as training resolves ``train.channels_last``)."""
    return bool(train.channels_last) if train.channels_last is not None else device.type == "cuda"


def _tunes_masks(spec: Any) -> bool:
    masks = getattr(spec, "masks", None)
    return bool(masks is not None and (masks.tune or masks.gate))


def run_cell_core(task: CellTask, reporter: CellReporter) -> CellResult:
    """The core's cell: data -> model -> train (or load) -> predict -> AUROC -> localize."""
    threads = getattr(task.train, "threads", None)
    if threads:
        previous = torch.get_num_threads()
        torch.set_num_threads(int(threads))
        try:
            return _run_cell(task, reporter)
        finally:
            torch.set_num_threads(previous)
    return _run_cell(task, reporter)


def _run_cell(task: CellTask, reporter: CellReporter) -> CellResult:
    from .training import seed_everything

    cell = task.cell
    started = time.time()
    run = _CellRun(task, reporter)
    write_json_atomic(run.artifacts.config, dict(cell.config))
    seed_everything(cell.seed)
    info: dict[str, Any] = {"input_size": run.size, "device": str(run.device), "classes": run.classes}
    model = Classifier.build(cell.backbone, cell.head, run.classes).to(run.device)
    info["parameters"] = int(sum(p.numel() for p in model.parameters()))
    run.train_or_load(model, info)
    metrics = run.classify(model, info) if task.retrain else {}
    localizations = run.localize(model) if task.localizers else []
    transfers = _transfers(run, model) if getattr(task, "transfers", ()) else ()
    environment = Environment.current(run.device, run.dtype, executor=task.executor)
    return CellResult(
        cell_id=cell.cell_id, grid=cell.grid, axes=axes_of(task), config=dict(cell.config), status="ok",
        metrics=metrics, info=info, localizations=tuple(localizations), transfers=transfers,
        provenance=provenance_of(task, environment), started_at=started, finished_at=time.time(),
    )


def _transfers(run: _CellRun, model: Classifier) -> tuple:
    """The task's cross-dataset evaluations (``evaluate_on:``; :mod:`cxrbench.crosseval`)."""
    from .crosseval import run_transfers

    return run_transfers(run, model)


def axes_of(task: CellTask) -> CellAxes:
    """The display axes of a task's cell."""
    axes = task.cell.axes
    return CellAxes(dataset=str(axes["dataset"]), backbone=str(axes["backbone"]), head=str(axes["head"]),
                    seed=int(axes["seed"]))


def failed_result(task: CellTask, error: str, tb: str | None = None, *, started_at: float | None = None,
                  warnings: tuple[str, ...] = ()) -> CellResult:
    """A ``failed`` result for a task (its worker died, or the cell raised)."""
    now = time.time()
    return CellResult(cell_id=task.cell.cell_id, grid=task.cell.grid, axes=axes_of(task),
                      config=dict(task.cell.config), status="failed", error=error, traceback=tb,
                      provenance=provenance_of(task, Environment(executor=task.executor)),
                      warnings=warnings, started_at=started_at or now, finished_at=now)


def with_duration(result: CellResult) -> CellResult:
    """``result`` with ``info.duration_s`` set from its start and finish times."""
    if result.started_at is None or result.finished_at is None:
        return result
    info = {**result.info, "duration_s": result.finished_at - result.started_at}
    return dataclasses.replace(result, info=info)


class CorePlugin:
    """The host's own hook implementations (the default way to run a cell)."""

    @hookimpl(trylast=True)
    def cxrbench_run_cell(self, task: CellTask, reporter: CellReporter) -> CellResult:
        return run_cell_core(task, reporter)
