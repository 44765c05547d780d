"""Score heatmaps made elsewhere (pytorch-grad-cam, Captum, another model) without a model.

``cxrbench score`` reads a maps file, matches it to a dataset split by image id and class
name, computes the same localization metrics, intervals and settings as a grid cell
(boxes through :mod:`cxrbench.localization`, masks through :mod:`cxrbench.maskscoring`)
and stores them as a row of their own in the results store.

The maps file (``.npz``, read with ``allow_pickle=False``):

* ``maps``: ``N x K x H x W`` float (float16 is enough), finite, in ``[0, 1]`` (a map is
  min-max normalised before scoring anyway; the range check catches unnormalised or
  corrupt files). Any resolution: for masks each map is resized (bilinear, half-pixel) to
  its mask's size, as cheXlocalize does; for boxes to the square scoring size ``S x S``
  (``S = H`` for square maps, else ``max(H, W)``), the boxes scaled to it per axis.
* ``ids``: ``N`` image ids of the split (strings).
* ``classes``: ``K`` class names (the dataset's, or a spelling it declares as an alias).
* ``probs`` (optional): ``N x K`` the model's probabilities, in ``[0, 1]`` (probability gating).

``localization.save_maps`` writes this format (plus its box arrays, which are ignored here).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .boxes import ThresholdPolicy
from .errors import UsageError, one_line
from .interfaces import Dataset, Split
from .locmetrics.peaks import map_peaks
from .maskscoring import MaskColumns, MaskSink, MaskTuning, score_masks, tune_masks
from .options import options_to_dict, parse_options
from .records import CellAxes, CellResult, Environment, LocalizerResult, Provenance

RANGE_SLACK = 1e-3
"""How far outside [0, 1] a stored value may be (float16 rounding) before the file is refused."""
SHOWN = 3
"""How many unknown ids or classes an error names."""


@dataclasses.dataclass(frozen=True)
class MapsFile:
    """A validated maps file.

    Attributes:
        path: where it was read.
        sha256: digest of its bytes (part of the row's id).
        maps: ``N x K x H x W`` float32.
        ids: ``N`` image ids.
        classes: ``K`` class names as written.
        probs: ``N x K`` probabilities, or None.

    """

    path: Path
    sha256: str
    maps: np.ndarray
    ids: tuple[str, ...]
    classes: tuple[str, ...]
    probs: np.ndarray | None


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _names(values: np.ndarray, what: str, where: str) -> tuple[str, ...]:
    if values.ndim != 1 or values.dtype.kind not in "US":
        raise UsageError(f"{where}: '{what}' must be a 1-D array of strings, got {values.dtype} {values.shape}")
    names = tuple(str(v) for v in values.tolist())
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UsageError(f"{where}: '{what}' lists {one_line(name)!r} twice")
        seen.add(name)
    return names


def load_maps_file(path: str | Path) -> MapsFile:
    """Read and check a maps file (see the module docstring for the format).

    Raises:
        UsageError: one line naming the file and what is wrong.

    """
    path = Path(path)
    where = f"maps file {path}"
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files if key in ("maps", "ids", "classes", "probs")}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UsageError(f"{where}: not a readable .npz file ({one_line(str(exc))[:120]})") from None
    missing = [key for key in ("maps", "ids", "classes") if key not in arrays]
    if missing:
        raise UsageError(f"{where}: missing array(s) {', '.join(missing)} (needs maps, ids, classes)")
    maps = arrays["maps"]
    if maps.ndim != 4 or maps.dtype.kind != "f":
        raise UsageError(f"{where}: 'maps' must be a float N x K x H x W array, got {maps.dtype} {maps.shape}")
    ids = _names(arrays["ids"], "ids", where)
    classes = _names(arrays["classes"], "classes", where)
    n, k = maps.shape[:2]
    if len(ids) != n or len(classes) != k:
        raise UsageError(f"{where}: 'maps' is {n} x {k} x ... but there are {len(ids)} ids and {len(classes)} classes")
    maps = maps.astype(np.float32, copy=False)
    _check_values(maps, ids, classes, where, "maps")
    probs = arrays.get("probs")
    if probs is not None:
        if probs.shape != (n, k) or probs.dtype.kind != "f":
            raise UsageError(f"{where}: 'probs' must be a float {n} x {k} array, got {probs.dtype} {probs.shape}")
        probs = probs.astype(np.float64)
        _check_values(probs[..., None, None], ids, classes, where, "probs")
    return MapsFile(path, _digest(path), maps, ids, classes, probs)


def _check_values(values: np.ndarray, ids: tuple[str, ...], classes: tuple[str, ...], where: str, what: str) -> None:
    """Refuse NaN / inf and values outside [0, 1], naming the first offending map."""
    flat = values.reshape(values.shape[0], values.shape[1], -1)
    finite = np.isfinite(flat).all(axis=-1)
    if not finite.all():
        i, c = np.argwhere(~finite)[0]
        raise UsageError(f"{where}: {int((~finite).sum())} {what} contain NaN or inf "
                         f"(first: {one_line(ids[i])} / {one_line(classes[c])})")
    low, high = flat.min(axis=-1), flat.max(axis=-1)
    bad = (low < -RANGE_SLACK) | (high > 1 + RANGE_SLACK)
    if bad.any():
        i, c = np.argwhere(bad)[0]
        raise UsageError(f"{where}: {int(bad.sum())} {what} have values outside [0, 1] (first: {one_line(ids[i])} / "
                         f"{one_line(classes[c])}: {float(low[i, c]):.4g} .. {float(high[i, c]):.4g}); "
                         "min-max normalise each map before saving")


def _listing(values: list[str]) -> str:
    shown = ", ".join(repr(one_line(v)) for v in values[:SHOWN])
    return shown + (f" and {len(values) - SHOWN} more" if len(values) > SHOWN else "")


def match_classes(names: tuple[str, ...], dataset: Dataset) -> np.ndarray:
    """The dataset class index of each maps-file class (exact name, an alias, or case-insensitive)."""
    classes = list(dataset.classes)
    aliases = {str(k).lower(): v for k, v in (getattr(dataset, "class_aliases", None) or {}).items()}
    lower = {c.lower(): i for i, c in enumerate(classes)}
    out, unknown = [], []
    for name in names:
        target = aliases.get(name.lower(), name)
        index = lower.get(str(target).lower())
        if index is None:
            unknown.append(name)
        out.append(-1 if index is None else index)
    if unknown:
        raise UsageError(f"maps file: {len(unknown)} classes unknown to dataset '{dataset.NAME}': {_listing(unknown)} "
                         f"(its classes: {', '.join(classes)})")
    return np.asarray(out, dtype=np.int64)


def match_ids(ids: tuple[str, ...], split: Split, split_name: str, dataset: Dataset) -> np.ndarray:
    """The split row of each maps-file image id."""
    row_of = {str(i): r for r, i in enumerate(split.ids)}
    unknown = [i for i in ids if i not in row_of]
    if unknown:
        raise UsageError(f"maps file: {len(unknown)} ids are not images of dataset '{dataset.NAME}' split "
                         f"'{split_name}': {_listing(unknown)}")
    return np.asarray([row_of[i] for i in ids], dtype=np.int64)


def _resize(map2d: np.ndarray, size: int) -> np.ndarray:
    if map2d.shape == (size, size):
        return map2d
    return cv2.resize(map2d, (size, size), interpolation=cv2.INTER_LINEAR)


def _normalised(map2d: np.ndarray) -> np.ndarray:
    low, high = float(map2d.min()), float(map2d.max())
    return (map2d - low) / (high - low) if high > low else np.zeros_like(map2d)


def _image_sizes(split: Split, dataset: Dataset, split_name: str, rows: np.ndarray) -> np.ndarray:
    """``(height, width)`` of the given rows: the split's, else their masks', else decoded."""
    sizes = np.zeros((len(split.ids), 2), dtype=np.float64)
    known = np.zeros(len(split.ids), dtype=bool)
    if split.image_sizes is not None:
        sizes[:] = np.asarray(split.image_sizes, dtype=np.float64)
        known[:] = True
    for (row, _c), ref in split.masks.items():
        if not known[row]:
            sizes[row], known[row] = ref.size, True
    for row in np.unique(rows):
        if not known[row]:
            sizes[row], known[row] = dataset.read_image(split_name, int(row)).shape[:2], True
    return sizes


def box_run(maps_file: MapsFile, split: Split, dataset: Dataset, split_name: str, rows: np.ndarray,
            class_index: np.ndarray) -> Any:
    """A :class:`cxrbench.localization.LocalizationRun` of the boxed pairs the file covers."""
    from .localization import LocalizationRun

    n_maps, _k, h, w = maps_file.maps.shape
    size = h if h == w else max(h, w)
    boxes = split.boxes
    map_of_row = {int(r): i for i, r in enumerate(rows)}
    position = {int(c): j for j, c in enumerate(class_index)}
    if not boxes.empty:
        boxes = boxes[boxes["index"].isin(map_of_row) & boxes["class_index"].isin(position)]
    groups = list(boxes.groupby(["index", "class_index"], sort=True)) if not boxes.empty else []
    pair_rows = np.array([int(key[0]) for key, _ in groups], dtype=np.int64)
    pair_classes = np.array([int(key[1]) for key, _ in groups], dtype=np.int64)
    sizes = _image_sizes(split, dataset, split_name, pair_rows)[pair_rows] if len(pair_rows) else np.zeros((0, 2))
    maps = np.zeros((len(groups), size, size), dtype=np.float32)
    true = []
    for p, ((row, klass), group) in enumerate(groups):
        maps[p] = _normalised(_resize(maps_file.maps[map_of_row[int(row)], position[int(klass)]], size))
        xywh = group[["x", "y", "w", "h"]].to_numpy(dtype=np.float64)
        sy, sx = size / sizes[p, 0], size / sizes[p, 1]
        true.append(xywh * np.array([sx, sy, sx, sy]))
    found = map_peaks(maps, None)
    scale = np.column_stack([sizes[:, 1] / size, sizes[:, 0] / size]) if len(groups) else np.zeros((0, 2))
    patients = np.asarray(split.patient_ids, dtype=str)[pair_rows]
    return LocalizationRun(maps, pair_rows, pair_classes, true, found.xy, float("nan"), len(np.unique(pair_rows)),
                           found.valid, scale, patients)


def count_masks(maps_file: MapsFile, split: Split, rows: np.ndarray, class_index: np.ndarray, n_classes: int,
                columns: MaskColumns, *, probabilities: bool) -> Any:
    """Counts of every annotated pair the file covers (each map resized to its mask)."""
    sink = MaskSink(n_classes, columns, probabilities=probabilities)
    position = {int(c): j for j, c in enumerate(class_index)}
    try:
        for i, row in enumerate(rows):
            here = [(int(c), position[int(c)]) for (r, c) in split.masks if r == row and int(c) in position]
            if not here:
                continue
            here.sort()
            klass = np.array([c for c, _ in here], dtype=np.int64)
            cols = [j for _, j in here]
            probs = maps_file.probs[i, cols] if probabilities and maps_file.probs is not None else None
            refs = [split.masks[(int(row), c)] for c in klass]
            sink.submit(np.full(len(klass), row, dtype=np.int64), klass, maps_file.maps[i, cols], refs, probs)
    finally:
        sink.flush()
    return sink.counts()


@dataclasses.dataclass(frozen=True)
class ScoreRequest:
    """What ``cxrbench score`` was asked to do.

    Attributes:
        name: the row's name on the leaderboard.
        dataset_entry: the dataset as a grid entry (name and options).
        split: the split scored.
        threshold: the binarisation for boxes and masks (a ``localization.threshold`` mapping).
        hit_tolerance: pointing-game tolerance in original image pixels.
        true_pos_only: mIoU over true positives only (cheXlocalize's default).
        box_thresholds: thresholds of the MaxBoxAcc sweeps.
        n_boot: bootstrap replicates.
        boot_seed: their seed.
        ci: their level.
        tune_split: the split the tuning maps belong to.
        gate: probability gating (needs ``probs`` in both files).

    """

    name: str
    dataset_entry: dict[str, Any]
    split: str = "boxes"
    threshold: dict[str, Any] = dataclasses.field(default_factory=lambda: {"policy": "otsu"})
    hit_tolerance: float = 15.0
    true_pos_only: bool = True
    box_thresholds: int = 100
    n_boot: int = 1000
    boot_seed: int = 0
    ci: float = 0.95
    tune_split: str = "val"
    gate: bool = False


def _mask_spec(request: ScoreRequest, tune: bool) -> Any:
    from .config import MaskSpec

    return MaskSpec(threshold=request.threshold, tune=tune, gate=request.gate, true_pos_only=request.true_pos_only)


def score_file(request: ScoreRequest, dataset: Dataset, maps_file: MapsFile,
               tune_file: MapsFile | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """Every localization metric of a maps file on ``request.split``, and how it was computed."""
    from .localization import score

    if request.split not in dataset.split_names:
        raise UsageError(f"dataset '{dataset.NAME}' has no split {request.split!r} "
                         f"(splits: {', '.join(dataset.split_names)})")
    split = dataset.split(request.split)
    rows = match_ids(maps_file.ids, split, request.split, dataset)
    class_index = match_classes(maps_file.classes, dataset)
    names = list(dataset.classes)
    if request.gate and (maps_file.probs is None or tune_file is None or tune_file.probs is None):
        raise UsageError("--gate needs 'probs' in the maps file and in the --tune-maps file")
    policy = parse_options(ThresholdPolicy, request.threshold, "--threshold", "threshold policy")
    run = box_run(maps_file, split, dataset, request.split, rows, class_index)
    metrics, extra = score(run, policy, names, request.hit_tolerance, box_thresholds=request.box_thresholds,
                           n_boot=request.n_boot, boot_seed=request.boot_seed, ci=request.ci)
    extra.pop("_pair_scores", None)
    settings: dict[str, Any] = {"policy": options_to_dict(policy), "tuned": False, "split": request.split,
                                "hit_tolerance": request.hit_tolerance,
                                "hit_tolerance_unit": "original image pixels", **extra,
                                "maps_file": str(maps_file.path), "maps_sha256": maps_file.sha256,
                                "maps_shape": list(maps_file.maps.shape), "boxes_from_masks": split.boxes_from_masks}
    if split.masks:
        tuning = None
        spec = _mask_spec(request, tune=tune_file is not None)
        columns = MaskColumns.of(spec)
        if tune_file is not None:
            tuning = _tune(request, dataset, tune_file, spec, columns)
        counts = count_masks(maps_file, split, rows, class_index, len(names), columns, probabilities=request.gate)
        mask_metrics, mask_settings = score_masks(
            counts, names, spec, columns, patients=np.asarray(split.patient_ids, dtype=str),
            hit_tolerance=request.hit_tolerance, tuning=tuning, n_boot=request.n_boot, boot_seed=request.boot_seed,
            ci=request.ci)
        metrics.update(mask_metrics)
        settings["masks"] = mask_settings
    metrics["loc_images"] = float(len(rows))
    return metrics, settings


def _tune(request: ScoreRequest, dataset: Dataset, tune_file: MapsFile, spec: Any,
          columns: MaskColumns) -> MaskTuning:
    if request.tune_split == request.split:
        raise UsageError(f"--tune-split: tuning on the scored split '{request.split}' would make its scores "
                         "optimistic; tune on another split (e.g. val)")
    if request.tune_split not in dataset.split_names:
        raise UsageError(f"--tune-split: dataset '{dataset.NAME}' has no split {request.tune_split!r}")
    split = dataset.split(request.tune_split)
    if not split.masks:
        raise UsageError(f"--tune-maps: split '{request.tune_split}' of dataset '{dataset.NAME}' has no masks")
    rows = match_ids(tune_file.ids, split, request.tune_split, dataset)
    class_index = match_classes(tune_file.classes, dataset)
    counts = count_masks(tune_file, split, rows, class_index, len(dataset.classes), columns,
                         probabilities=request.gate)
    return tune_masks(counts, columns, spec, len(dataset.classes), request.tune_split)


def scored_result(request: ScoreRequest, dataset_spec: Any, grid: str, metrics: dict[str, float],
                  settings: dict[str, Any], started: float) -> CellResult:
    """The store row of a scored maps file: a cell of its own, with one localizer row."""
    from .grid import stable_digest

    payload = {"name": request.name, "dataset": dataset_spec.key(), "request": dataclasses.asdict(request),
               "maps_sha256": settings.get("maps_sha256"), "tune_sha256": settings.get("tune_sha256")}
    payload["request"].pop("dataset_entry", None)
    cell_id = f"score-{stable_digest(payload, 12)}"
    localizer = LocalizerResult(key=stable_digest(payload, 10), name=request.name, metrics=metrics,
                                settings=settings)
    return CellResult(
        cell_id=cell_id, grid=grid, axes=CellAxes(dataset=dataset_spec.label(), backbone=request.name,
                                                  head="(maps file)", seed=0),
        config={"kind": "scored maps", "dataset": request.dataset_entry, "request": payload["request"]},
        info={"kind": "scored maps", "maps_file": settings.get("maps_file"), "images": metrics.get("loc_images")},
        localizations=(localizer,),
        provenance=Provenance(evaluation={"bootstrap": request.n_boot, "bootstrap_seed": request.boot_seed,
                                          "ci": request.ci}, environment=Environment.current("cpu")),
        started_at=started, finished_at=time.time(),
    )
