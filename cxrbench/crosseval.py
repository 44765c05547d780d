"""Cross-dataset evaluation (``evaluate_on:``): a trained cell scored on other datasets' test splits.

External validation, as in Zech et al. 2018 ("Variable generalization performance of a deep
learning model to detect pneumonia in chest radiographs", PLOS Medicine) and torchxrayvision's
cross-dataset benchmarks (Cohen et al. 2022): the model trained on one dataset is applied,
unchanged, to another dataset's test images, and scored on the findings the two share.

* **Classes**: :func:`cxrbench.synonyms.shared_classes` pairs the model's classes with the
  target's; the target's classes without a match are not scored. A target class merged
  from several source classes (VinDr's ``Nodule/Mass`` from NIH's ``Nodule`` and ``Mass``)
  is scored by the largest of their probabilities (:func:`cxrbench.synonyms.target_scores`).
* **AUROC**: the cell's own prediction path (images resized to the cell's input size, its
  batch size, device and autocast), on the target's ``test`` split; per shared class AUROC
  with patient-level bootstrap intervals and their mean, by :mod:`cxrbench.metrics` with the
  grid's ``evaluation`` settings. No cut-off is chosen (that needs the target's validation
  split, i.e. adapting to it).
* **Localization**: where the target's ``localization.split`` split has boxes or masks of
  shared classes, each of the cell's localizers explains the source class behind each
  target class (:class:`MappedLocalizer`; for a merged class, the part the model finds most
  probable on that image), scored by :func:`cxrbench.localization.evaluate` with the
  grid's localization settings, untuned: the threshold policy is the localizer's (or the
  grid's) fixed one, mask tuning and gating are off, and the sanity checks are not run.

* **Overlap**: target images that are training images of the cell's dataset (or of its
  training patients) are left out of the AUROC and the localization, by a published mapping or by perceptual
  hashes (:mod:`cxrbench.overlap`); one warning line per pair gives the count.

A transfer is not part of a cell's id (:func:`transfer_key` is its own key), so adding a
target to a finished grid loads each cell's ``best.pt`` and evaluates it without retraining.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CellError, UsageError, one_line
from .grid import Cell, localizer_key, stable_digest
from .options import options_to_dict
from .overlap import TransferAudit
from .pairing import impossible_pairs
from .records import LocalizerResult, TransferResult
from .registry import ComponentSpec
from .synonyms import ClassMatch, shared_classes, target_scores
from .tasks import LocalizerTask, TransferTask

TRANSFER_PROTOCOL = 2
"""Version of the cross-dataset scoring definitions; part of every transfer key.

2: the overlap audit (:mod:`cxrbench.overlap`) leaves the source's training images out.
"""



def target_config(target: ComponentSpec) -> dict[str, Any]:
    """The target dataset choice as it enters a key: name and options, neutral options left out."""
    neutral = getattr(target.cls, "NEUTRAL_OPTIONS", frozenset())
    chosen = target.key()
    return {**chosen, "options": {k: v for k, v in chosen["options"].items() if k not in neutral}}


def transfer_key(target: ComponentSpec, fingerprint: str, evaluation: dict[str, Any],
                 localizer_keys: Sequence[str]) -> str:
    """Stable key of one target evaluation: what changes its numbers, and nothing else.

    Args:
        target: the target dataset choice (name and options).
        fingerprint: the target's data fingerprint (``Dataset.fingerprint``).
        evaluation: the grid's ``evaluation:`` block (bootstrap, CI level, seed).
        localizer_keys: the keys of the localizers scored on it (each already holds the
            localization scoring settings).

    """
    return stable_digest({"target": target_config(target), "data_fingerprint": fingerprint,
                          "evaluation": evaluation, "localizers": sorted(localizer_keys),
                          "protocol": TRANSFER_PROTOCOL}, 10)


@dataclasses.dataclass(frozen=True)
class SkippedPair:
    """A (trained dataset, target) pair that is not evaluated, and why."""

    source: str
    target: str
    reason: str

    def line(self) -> str:
        return f"evaluate_on: {self.source} -> {self.target}: {self.reason}; the pair is not evaluated"


@dataclasses.dataclass(frozen=True)
class TransferPlan:
    """The target evaluations each cell of a grid should have.

    Attributes:
        by_cell: ``{cell_id: (TransferTask, ...)}``, every wanted evaluation (done or not).
        skipped: the pairs left out (no shared class).

    """

    by_cell: dict[str, tuple[TransferTask, ...]] = dataclasses.field(default_factory=dict)
    skipped: tuple[SkippedPair, ...] = ()


def cell_localizers(grid: Any, cell: Cell) -> tuple[LocalizerTask, ...]:
    """The grid's localizers a cell is explained by (pairs its localizer refuses left out)."""
    impossible = {(p.head, p.localizer) for p in impossible_pairs(grid.heads, grid.localizers)}
    scoring = options_to_dict(grid.localization)
    return tuple(LocalizerTask(localizer_key(spec, grid.localization.threshold, scoring), spec)
                 for spec in grid.localizers if (cell.head.label(), spec.label()) not in impossible)


def plan_transfers(grid: Any, cells: Sequence[Cell], cache_root: str | None = None,
                   warn: Callable[[str], None] | None = None) -> TransferPlan:
    """Every (cell, target) evaluation ``grid.evaluate_on`` asks for.

    Each target and each trained dataset is opened once (within
    :func:`cxrbench.pipeline.shared_datasets`, once per run) for its classes and fingerprint.

    Raises:
        UsageError: a target cannot be opened (one line naming its YAML path).

    """
    from .pipeline import open_dataset

    if not grid.evaluate_on or not cells:
        return TransferPlan()
    say = warn or (lambda message: None)
    targets = []
    empty: list[tuple[ComponentSpec, str]] = []
    for target in grid.evaluate_on:
        try:
            dataset = open_dataset(target, cache_root, say)
            reason = no_test_reason(dataset, target)
            if reason is not None:
                empty.append((target, reason))
                continue
            targets.append((target, list(dataset.classes), dataset.fingerprint()))
        except UsageError as exc:
            raise UsageError(f"{target.path}: {exc}") from None
    sources: dict[int, list[str]] = {}
    evaluation = options_to_dict(grid.evaluation)
    by_cell: dict[str, tuple[TransferTask, ...]] = {}
    skipped: dict[tuple[str, str], SkippedPair] = {}
    for cell in cells:
        if id(cell.dataset) not in sources:
            try:
                sources[id(cell.dataset)] = list(open_dataset(cell.dataset, cache_root, say).classes)
            except UsageError as exc:
                raise UsageError(f"{cell.dataset.path}: {exc}") from None
        source, wanted = cell.dataset.label(), []
        localizers = cell_localizers(grid, cell)
        for target, reason in empty:
            skipped.setdefault((source, target.label()), SkippedPair(source, target.label(), reason))
        for target, classes, fingerprint in targets:
            reason = no_match_reason(sources[id(cell.dataset)], classes)
            if reason is not None:
                skipped.setdefault((source, target.label()), SkippedPair(source, target.label(), reason))
                continue
            key = transfer_key(target, fingerprint, evaluation, [lt.key for lt in localizers])
            wanted.append(TransferTask(key=key, target=target, source=source, localizers=localizers))
        by_cell[cell.cell_id] = tuple(wanted)
    return TransferPlan(by_cell=by_cell, skipped=tuple(skipped.values()))


def no_test_reason(dataset: Any, target: ComponentSpec) -> str | None:
    """Why a target has nothing to score (no test split, or an empty one), else None.

    Such a target is skipped with one warning line, as a target sharing no class is, rather
    than failed on every cell at every run: typically a partial download (CheXpert's
    ``valid`` images missing), which the dataset's own warning names.
    """
    if "test" not in dataset.split_names:
        return f"dataset '{target.name}' has no test split (splits: {', '.join(dataset.split_names)})"
    if not len(dataset.split("test")):
        return f"the test split of '{target.label()}' is empty: nothing to score"
    return None


def no_match_reason(source_classes: list[str], target_classes: list[str]) -> str | None:
    """Why a model of ``source_classes`` cannot be scored on ``target_classes`` (None: they share a class)."""
    try:
        matches = shared_classes(source_classes, target_classes)
    except ValueError as exc:
        return str(exc)
    return None if matches else (f"no class in common (model: {', '.join(source_classes)}; "
                                 f"target: {', '.join(target_classes)})")


def skipped_pairs(grid: Any, cache_root: str | None = None) -> list[SkippedPair]:
    """The (dataset, target) pairs without a shared class, for ``validate`` (datasets that do not open are left out)."""
    from .pipeline import open_dataset, shared_datasets

    out: list[SkippedPair] = []
    with shared_datasets():
        try:
            opened = [(t, open_dataset(t, cache_root)) for t in grid.evaluate_on]
            targets = [(t.label(), list(d.classes), no_test_reason(d, t)) for t, d in opened]
        except Exception:  # noqa: BLE001 - validate checks the file; run reports a target it cannot open
            return out
        for dataset in grid.datasets:
            try:
                classes = list(open_dataset(dataset, cache_root).classes)
            except Exception:  # noqa: BLE001 - likewise
                continue
            for label, target_classes, empty in targets:
                reason = empty or no_match_reason(classes, target_classes)
                if reason is not None:
                    out.append(SkippedPair(dataset.label(), label, reason))
    return out


def missing_transfers(wanted: Sequence[TransferTask], done: dict[str, str], rerun_failed: bool) -> list[TransferTask]:
    """The wanted evaluations a trained cell still lacks (failed ones again only with ``rerun_failed``)."""
    return [t for t in wanted if (done.get(t.key) != "ok" if rerun_failed else t.key not in done)]


# --------------------------------------------------------------------------- running


class MappedLocalizer:
    """A localizer asked for target classes that explains the source classes behind them.

    Class ``m`` of the wrapped call is ``matches[m]``: a target class matched to one source
    class gets that class's map; a merged class (``Nodule/Mass`` from ``Nodule`` and
    ``Mass``) gets, on each image, the map of the part the model finds most probable there
    (the part whose probability is the target's score, :meth:`ClassMatch.scores`).
    """

    def __init__(self, inner: Any, matches: Sequence[ClassMatch]) -> None:
        self.inner = inner
        self.matches = list(matches)

    def unsupported_reason(self, model: Any) -> str | None:
        return self.inner.unsupported_reason(model)

    def __call__(self, model: Any, images: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
        chosen = [self.matches[int(c)] for c in classes]
        sources = sorted({s for m in chosen for s in m.source})
        position = {s: i for i, s in enumerate(sources)}
        maps = self.inner(model, images, sources)
        probs = None
        if any(len(m.source) > 1 for m in chosen):
            with torch.no_grad():
                probs = torch.sigmoid(model(images).float())
        rows = torch.arange(images.shape[0], device=maps.device)
        out = []
        for m in chosen:
            if len(m.source) == 1 or probs is None:
                out.append(maps[:, position[m.source[0]]])
                continue
            best = probs[:, list(m.source)].argmax(dim=1).to(maps.device)
            columns = torch.as_tensor([position[s] for s in m.source], device=maps.device)[best]
            out.append(maps[rows, columns])
        return torch.stack(out, dim=1)


def run_transfers(run: Any, model: Any) -> tuple[TransferResult, ...]:
    """Score the cell run's model on each of its task's targets; a failing target fails its row only."""
    results = []
    for transfer in run.task.transfers:
        try:
            results.append(_transfer(run, model, transfer))
        except Exception as exc:  # a target that cannot be read or scored fails its row, not the cell
            message = one_line(f"{type(exc).__name__}: {exc}")
            results.append(TransferResult.failure(transfer.key, transfer.target.label(), transfer.target.name,
                                                  message, traceback.format_exc()))
    return tuple(results)


def _load(run: Any, dataset: Any, name: str) -> Any:
    """A target split at the cell's input size, capped as the cell's own splits are."""
    from .data import load_split

    cache = Path(run.task.cache_root) if run.task.cache_root else None
    data = load_split(dataset, name, run.size, cache_root=cache, workers=run.task.train.num_workers)
    cap = getattr(run.task.train, "max_eval_images", None)
    if cap and len(data) > cap:  # a smoke run: the first images only, as for the cell's own splits
        data = data.subset(np.arange(cap), name)
    return data


def _transfer(run: Any, model: Any, transfer: TransferTask) -> TransferResult:
    from .artifacts import CellArtifacts, save_npz_atomic
    from .covariates import save_covariates
    from .events import Progress
    from .metrics import classification_metrics
    from .pipeline import open_dataset
    from .training import predict

    evaluation = run.task.evaluation
    label = transfer.target.label()
    target = open_dataset(transfer.target, run.task.cache_root, run.reporter.warning)
    matches = shared_classes(run.classes, list(target.classes))
    if not matches:
        raise CellError(f"no class of the model ({', '.join(run.classes)}) is one of the target's")
    if "test" not in target.split_names:
        raise CellError(f"dataset '{transfer.target.name}' has no test split")
    run.reporter.progress(Progress("load", 0, 1, detail=f"{label} test"))
    test = _load(run, target, "test")
    if not len(test):
        raise CellError(f"dataset '{transfer.target.name}' has an empty test split: nothing to evaluate")
    audit = TransferAudit(run.dataset, transfer.source, target, label, run.size,
                          Path(run.task.cache_root) if run.task.cache_root else None, run.task.train.num_workers)
    overlap = audit.check("test", test)
    if overlap.count:
        test = test.subset(overlap.kept_rows(), "test")
    if not len(test):
        audit.warn(run.reporter.warning)
        raise CellError(f"every one of the {overlap.images:,} test images of '{label}' is a training image (or of a "
                        f"training patient) of '{transfer.source}': nothing external to evaluate")
    scores = predict(model, test, run.eval_batch, run.device, dtype=run.dtype, progress=run.reporter.progress,
                     detail=f"{label} test")
    mapped = target_scores(matches, scores)
    labels = np.asarray(test.split.labels, dtype=np.float32)[:, [m.target for m in matches]]
    names = [m.target_name for m in matches]
    patients = np.asarray(test.split.patient_ids, dtype=str)
    metrics = classification_metrics(labels, mapped, names, groups=patients, n_boot=evaluation.bootstrap,
                                     seed=evaluation.bootstrap_seed, ci=evaluation.ci)
    metrics = {**metrics, "overlap_excluded": float(overlap.count)}
    artifacts = CellArtifacts(Path(run.task.cell_dir))
    save_npz_atomic(artifacts.transfer_scores(transfer.key),
                    ids=np.asarray(test.split.ids, dtype=str), patient_ids=patients, labels=labels,
                    scores=mapped.astype(np.float32), classes=np.asarray(names, dtype=str))
    # for 'leaderboard --by' on the target's images (external validation per subgroup)
    save_covariates(artifacts.transfer_covariates(transfer.key), "test", "test", test.split.ids,
                    test.split.covariates)
    settings: dict[str, Any] = {
        "source": transfer.source, "split": "test", "images": len(test), "input_size": run.size,
        "matches": [m.to_json() for m in matches], "source_classes": list(run.classes),
        "target_classes": list(target.classes),
        "unscored_target_classes": [c for i, c in enumerate(target.classes) if i not in {m.target for m in matches}],
        "target_options": options_to_dict(transfer.target.options), "data_fingerprint_of_target": target.fingerprint(),
    }
    localizations: list[LocalizerResult] = []
    if transfer.localizers:
        localizations, settings["localization_split"] = _localize(run, model, target, transfer, matches, audit)
    settings["overlap"] = [r.to_json() for r in audit.results]
    audit.warn(run.reporter.warning)
    return TransferResult(key=transfer.key, target=label, target_name=transfer.target.name, metrics=metrics,
                          localizations=tuple(localizations), settings=settings, finished_at=time.time())


def target_view(data: Any, matches: Sequence[ClassMatch]) -> Any | None:
    """``data`` in the matched classes' space (class m = ``matches[m]``), or None without boxes or masks of them."""
    from .data import PreparedSplit, scale_boxes

    position = {m.target: i for i, m in enumerate(matches)}
    split = data.split
    boxes = split.boxes[split.boxes["class_index"].isin(position)].copy()
    boxes["class_index"] = boxes["class_index"].map(position).astype("int64")
    masks = {(r, position[c]): ref for (r, c), ref in split.masks.items() if c in position}
    if boxes.empty and not masks:
        return None
    view = dataclasses.replace(split, labels=np.asarray(split.labels)[:, [m.target for m in matches]],
                               boxes=boxes.reset_index(drop=True), masks=masks)
    return PreparedSplit(data.name, view, data.images, scale_boxes(view.boxes, data.source_sizes, data.size),
                         data.source_sizes)


def _localize(run: Any, model: Any, target: Any, transfer: TransferTask, matches: Sequence[ClassMatch],
              audit: TransferAudit) -> tuple[list[LocalizerResult], str | None]:
    """The cell's localizers on the target's boxed split, its overlap with the training images left out.

    Returns [] where the split has no boxes or masks of shared classes.
    """
    from .artifacts import CellArtifacts
    from .covariates import save_covariates
    from .events import Progress
    from .localization import evaluate, resolve_policy
    from .pipeline import _channels_last

    spec = run.task.localization
    if spec.split not in target.split_names:
        return [], None
    boxed = _load(run, target, spec.split)
    overlap = audit.check(spec.split, boxed)
    view = target_view(boxed.subset(overlap.kept_rows(), spec.split) if overlap.count else boxed, matches)
    if view is None:
        return [], spec.split
    names = [m.target_name for m in matches]
    masks = dataclasses.replace(spec.masks, tune=False, gate=False) if spec.masks is not None else None
    evaluation = run.task.evaluation
    artifacts = CellArtifacts(Path(run.task.cell_dir))
    # the scored images' covariates and each localizer's per-pair scores: 'leaderboard --by' on the target
    save_covariates(artifacts.transfer_covariates(transfer.key), "localization", spec.split, view.split.ids,
                    view.split.covariates)
    out = []
    for lt in transfer.localizers:
        try:
            localizer = lt.spec.build()
            reason = localizer.unsupported_reason(model)
            if reason:
                out.append(LocalizerResult.failure(lt.key, lt.spec.name,
                                                   f"localizer '{lt.spec.name}' cannot explain this model: {reason}"))
                continue
            policy = resolve_policy(lt.spec.cls, lt.spec.threshold, spec.threshold)
            run.reporter.progress(Progress("localize", 0, 1, detail=f"{lt.spec.name} on {transfer.target.label()}"))
            metrics, settings = evaluate(
                model, MappedLocalizer(localizer, matches), view, names, policy, batch_size=run.eval_batch,
                device=run.device, hit_tolerance=spec.hit_tolerance, max_images=spec.max_images,
                box_thresholds=spec.box_thresholds, n_boot=evaluation.bootstrap, boot_seed=evaluation.bootstrap_seed,
                ci=evaluation.ci, masks=masks, autocast_dtype=run.dtype,
                channels_last=_channels_last(run.task.train, run.device),
                pair_scores_path=artifacts.transfer_pair_scores(transfer.key, lt.key))
            settings = {**settings, "options": options_to_dict(lt.spec.options), "split": spec.split,
                        "hit_tolerance": spec.hit_tolerance, "box_thresholds": spec.box_thresholds,
                        "max_images": spec.max_images, "tuned": False}
            out.append(LocalizerResult(key=lt.key, name=lt.spec.name, metrics=metrics, settings=settings))
        except Exception as exc:  # a broken localizer fails its row, not the transfer
            out.append(LocalizerResult.failure(lt.key, lt.spec.name, f"{type(exc).__name__}: {exc}",
                                               traceback.format_exc()))
    return out, spec.split
