"""The typed results of a run: what a cell returns, what the store keeps, what crosses processes.

A :class:`CellResult` is built by the cell pipeline (in this process, a worker process or a
Ray task), travels back to the driver as it is (frozen dataclasses of plain values pickle),
is written by the store in one transaction and read back as the same type, with its
:class:`LocalizerResult` rows nested. Only renderers flatten it (``cxrbench.reporting``).
``to_json`` / ``from_json`` give the JSON form used by the store and by exports, as
pytest's ``reports.py`` does for test reports.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from collections.abc import Mapping
from typing import Any, Literal

Status = Literal["ok", "failed"]
STATUSES: tuple[str, ...] = ("ok", "failed")


def json_safe(value: Any) -> Any:
    """``value`` with NaN / inf replaced by None and tuples by lists (standard JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _floats(mapping: Mapping[str, Any] | None) -> dict[str, float]:
    """A metric mapping read back from JSON: None (a stored NaN) becomes NaN again."""
    out: dict[str, float] = {}
    for key, value in (mapping or {}).items():
        out[str(key)] = math.nan if value is None else float(value)
    return out


@dataclasses.dataclass(frozen=True)
class CellAxes:
    """The display values of a cell's grid axes."""

    dataset: str
    backbone: str
    head: str
    seed: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Environment:
    """Where a number was produced: what decides whether a rerun is bit-identical.

    Attributes:
        device: ``cpu``, ``cuda:0``, ...
        device_name: the GPU's name, or the CPU architecture.
        dtype: ``float32``, or the autocast dtype (``bfloat16``, ``float16``) when AMP ran.
        threads: torch CPU threads.
        torch: torch version.
        timm: timm version.
        cxrbench: cxrbench version.
        python: Python version.
        executor: the executor that ran the cell.

    """

    device: str = ""
    device_name: str = ""
    dtype: str = "float32"
    threads: int = 0
    torch: str = ""
    timm: str = ""
    cxrbench: str = ""
    python: str = ""
    executor: str = ""

    @classmethod
    def current(cls, device: Any, dtype: Any = None, executor: str = "") -> Environment:
        """The environment of this process for a cell on ``device`` with autocast ``dtype``."""
        import timm
        import torch

        from . import __version__

        device = torch.device(device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
        return cls(
            device=str(device), device_name=name,
            dtype=str(dtype).replace("torch.", "") if dtype is not None else "float32",
            threads=torch.get_num_threads(), torch=torch.__version__, timm=timm.__version__,
            cxrbench=__version__, python=platform.python_version(), executor=executor,
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Environment:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})

    def numerics(self) -> tuple[str, ...]:
        """What must match for two runs to be bit-identical (see the README)."""
        return (self.device_name, self.dtype, str(self.threads), self.torch, self.timm)


@dataclasses.dataclass(frozen=True)
class Provenance:
    """The settings a cell's numbers were computed with, as they were read.

    Attributes:
        train: the ``train:`` block.
        evaluation: the ``evaluation:`` block (CI level, replicates, seed, cut-off rule).
        resampling_unit: what the bootstrap resamples (``patient`` or ``image``).
        cutoff: the classification cut-off rule (``youden`` or ``seed``), chosen on validation.
        environment: where the cell ran.

    """

    train: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    evaluation: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    resampling_unit: str = "patient"
    cutoff: str = "youden"
    environment: Environment = dataclasses.field(default_factory=Environment)

    def to_json(self) -> dict[str, Any]:
        return json_safe(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Provenance:
        data = dict(data or {})
        return cls(
            train=dict(data.get("train") or {}), evaluation=dict(data.get("evaluation") or {}),
            resampling_unit=str(data.get("resampling_unit") or "patient"),
            cutoff=str(data.get("cutoff") or "youden"),
            environment=Environment.from_json(data.get("environment")),
        )


@dataclasses.dataclass(frozen=True)
class LocalizerResult:
    """One localizer evaluated on one trained cell.

    Attributes:
        key: the localizer choice's stable key (name + options + threshold).
        name: the localizer's grid name.
        status: ``ok`` or ``failed``.
        error: one line saying why it failed.
        metrics: localization metrics (keys declared in ``cxrbench.catalogue``).
        settings: how the numbers were made: the split, the threshold policy actually used
            and how it was chosen, the pointing-game tolerance, the localizer's options.
        traceback: the failure's traceback.

    """

    key: str
    name: str
    status: Status = "ok"
    error: str | None = None
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def failure(cls, key: str, name: str, error: str, traceback: str | None = None) -> LocalizerResult:
        return cls(key=key, name=name, status="failed", error=error, traceback=traceback)

    def to_json(self) -> dict[str, Any]:
        return json_safe(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LocalizerResult:
        settings = dict(data.get("settings") or {})
        tb = data.get("traceback") or settings.pop("traceback", None)  # stores before 0.2 kept it in settings
        return cls(key=str(data["key"]), name=str(data["name"]), status=_status(data.get("status")),
                   error=data.get("error"), metrics=_floats(data.get("metrics")), settings=settings,
                   traceback=tb)


@dataclasses.dataclass(frozen=True)
class TransferResult:
    """One trained cell scored on another dataset's test split (``evaluate_on:``), without retraining.

    Attributes:
        key: the evaluation's stable key (``cxrbench.crosseval.transfer_key``): the target
            dataset, its data fingerprint and the settings that change the numbers.
        target: the target's display label (``vindr``); the leaderboard shows ``source -> target``.
        target_name: the target dataset's registered name.
        status: ``ok`` or ``failed``.
        error: one line saying why it failed.
        metrics: AUROC on the shared classes (``auroc_mean``, ``auroc/<target class>``, intervals).
        localizations: the grid's localizers scored on the target's boxes or masks, where it has them.
        settings: the class matches (``cxrbench.synonyms.ClassMatch``), split sizes, settings used.
        traceback: the failure's traceback.
        finished_at: UNIX time it finished (the leaderboard shows the latest per target).

    """

    key: str
    target: str
    target_name: str
    status: Status = "ok"
    error: str | None = None
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    localizations: tuple[LocalizerResult, ...] = ()
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    traceback: str | None = None
    finished_at: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def failure(cls, key: str, target: str, target_name: str, error: str,
                traceback: str | None = None) -> TransferResult:
        return cls(key=key, target=target, target_name=target_name, status="failed", error=error,
                   traceback=traceback, finished_at=time.time())

    def to_json(self) -> dict[str, Any]:
        out = json_safe(dataclasses.asdict(self))
        out["localizations"] = [loc.to_json() for loc in self.localizations]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TransferResult:
        return cls(key=str(data["key"]), target=str(data["target"]), target_name=str(data.get("target_name") or ""),
                   status=_status(data.get("status")), error=data.get("error"), metrics=_floats(data.get("metrics")),
                   localizations=tuple(LocalizerResult.from_json(loc) for loc in data.get("localizations") or ()),
                   settings=dict(data.get("settings") or {}), traceback=data.get("traceback"),
                   finished_at=data.get("finished_at"))


def _status(value: Any) -> Status:
    if value not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class CellResult:
    """A finished (or failed) cell with its localizer rows.

    Attributes:
        cell_id: the cell's content-derived id.
        grid: the grid it ran for.
        axes: dataset / backbone / head / seed labels.
        config: the resolved configuration that defines the cell (its id is its digest).
        status: ``ok`` or ``failed``.
        error: one line saying why the cell failed.
        traceback: the failure's traceback.
        metrics: classification metrics (keys declared in ``cxrbench.catalogue``).
        info: facts about the run: input size, classes, parameters, speed, training history.
        localizations: one :class:`LocalizerResult` per localizer evaluated.
        transfers: one :class:`TransferResult` per other dataset the trained cell was scored
            on (``evaluate_on:``; only those evaluated in this run, on a result just made).
        provenance: the settings and environment the numbers came from.
        warnings: one-line warnings raised while the cell ran.
        started_at: UNIX time the cell started.
        finished_at: UNIX time it finished.

    """

    cell_id: str
    grid: str
    axes: CellAxes
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    status: Status = "ok"
    error: str | None = None
    traceback: str | None = None
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    localizations: tuple[LocalizerResult, ...] = ()
    provenance: Provenance = dataclasses.field(default_factory=Provenance)
    warnings: tuple[str, ...] = ()
    transfers: tuple[TransferResult, ...] = ()
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def replace(self, **changes: Any) -> CellResult:
        return dataclasses.replace(self, **changes)

    def localizer(self, name_or_key: str) -> LocalizerResult | None:
        """The localizer row with this key, else the first with this name."""
        for loc in self.localizations:
            if loc.key == name_or_key:
                return loc
        return next((loc for loc in self.localizations if loc.name == name_or_key), None)

    def failed_localizers(self) -> list[LocalizerResult]:
        return [loc for loc in self.localizations if not loc.ok]

    def to_json(self) -> dict[str, Any]:
        out = json_safe(dataclasses.asdict(self))
        out["localizations"] = [loc.to_json() for loc in self.localizations]
        out["transfers"] = [t.to_json() for t in self.transfers]
        out["provenance"] = self.provenance.to_json()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CellResult:
        axes = data["axes"]
        return cls(
            cell_id=str(data["cell_id"]), grid=str(data.get("grid") or ""),
            axes=CellAxes(dataset=str(axes["dataset"]), backbone=str(axes["backbone"]), head=str(axes["head"]),
                          seed=int(axes["seed"])),
            config=dict(data.get("config") or {}), status=_status(data.get("status")), error=data.get("error"),
            traceback=data.get("traceback"), metrics=_floats(data.get("metrics")), info=dict(data.get("info") or {}),
            localizations=tuple(LocalizerResult.from_json(loc) for loc in data.get("localizations") or ()),
            provenance=Provenance.from_json(data.get("provenance")),
            warnings=tuple(str(w) for w in data.get("warnings") or ()),
            started_at=data.get("started_at"), finished_at=data.get("finished_at"),
            transfers=tuple(TransferResult.from_json(t) for t in data.get("transfers") or ()),
        )

    def check(self, cell_id: str) -> None:
        """Refuse a malformed result before it reaches the store (e.g. from a plugin's hook).

        Raises:
            ValueError: naming what is wrong.

        """
        if self.cell_id != cell_id:
            raise ValueError(f"result names cell {self.cell_id!r}, expected {cell_id!r}")
        _status(self.status)
        for field, mapping in (("metrics", self.metrics), ("info", self.info)):
            if not isinstance(mapping, Mapping):
                raise ValueError(f"{field} must be a mapping, got {type(mapping).__name__}")
        for key, value in self.metrics.items():
            if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"metric {key!r} must be a number, got {type(value).__name__}")
        for loc in self.localizations:
            if not isinstance(loc, LocalizerResult):
                raise ValueError(f"localizations must be LocalizerResult, got {type(loc).__name__}")
            _status(loc.status)
            for key, value in loc.metrics.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"localizer {loc.name!r} metric {key!r} must be a number")
        for transfer in self.transfers:
            if not isinstance(transfer, TransferResult):
                raise ValueError(f"transfers must be TransferResult, got {type(transfer).__name__}")
            _status(transfer.status)
            for key, value in transfer.metrics.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"transfer {transfer.target!r} metric {key!r} must be a number")
