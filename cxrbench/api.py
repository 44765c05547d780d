"""The public API: everything a plugin (dataset, backbone, head, localizer, executor) may import.

Plugins import from here only (``from cxrbench.api import Dataset, Split``); everything
else in ``cxrbench`` is the host's and may change between versions. The built-in plugins in
``plugins/`` follow the same rule, so whatever they can do a third-party package can do.
Test helpers for plugin authors are in :mod:`cxrbench.testing`.
"""

from __future__ import annotations

from . import __version__, hookimpl
from .artifacts import CellArtifacts
from .covariates import covariate_frame
from .errors import CellError, ConfigError, CxrbenchError, PluginError, UsageError, one_line
from .events import NULL_EVENTS, CellReporter, Event, Progress, QueueEvents, RunEvents
from .filedataset import FileDataset, FileLayout, LoadedSplits
from .imageio import IMAGE_SUFFIXES, ImageHeader, image_header, image_size, read_grey, safe_join, scan_files
from .interfaces import (
    BOX_COLUMNS,
    Backbone,
    Classifier,
    Component,
    Dataset,
    DatasetContext,
    Executor,
    Localizer,
    PoolingHead,
    Split,
    empty_boxes,
)
from .masks import MaskDecodeError, MaskRef, boxes_from_masks, decode_coco_rle, encode_coco_rle, polygons_to_mask
from .options import NoOptions, options_to_dict
from .overlap import OverlapKeys
from .pipeline import failed_result
from .records import CellAxes, CellResult, Environment, LocalizerResult, Provenance
from .registry import ComponentSpec
from .splits import check_split_fractions, hashed_split, patient_split
from .synonyms import ClassMatch, canonical, shared_classes
from .tasks import CellTask, LocalizerTask
from .tuning import TuningPopulation
from .worker import execute_cell

__all__ = [
    "BOX_COLUMNS",
    "IMAGE_SUFFIXES",
    "NULL_EVENTS",
    "Backbone",
    "CellArtifacts",
    "CellAxes",
    "CellError",
    "CellReporter",
    "CellResult",
    "CellTask",
    "ClassMatch",
    "Classifier",
    "Component",
    "ComponentSpec",
    "ConfigError",
    "CxrbenchError",
    "Dataset",
    "DatasetContext",
    "Environment",
    "Event",
    "Executor",
    "FileDataset",
    "FileLayout",
    "ImageHeader",
    "LoadedSplits",
    "Localizer",
    "LocalizerResult",
    "LocalizerTask",
    "MaskDecodeError",
    "MaskRef",
    "NoOptions",
    "OverlapKeys",
    "PluginError",
    "PoolingHead",
    "Progress",
    "Provenance",
    "QueueEvents",
    "RunEvents",
    "Split",
    "TuningPopulation",
    "UsageError",
    "__version__",
    "boxes_from_masks",
    "canonical",
    "covariate_frame",
    "decode_coco_rle",
    "encode_coco_rle",
    "empty_boxes",
    "execute_cell",
    "failed_result",
    "check_split_fractions",
    "hashed_split",
    "hookimpl",
    "image_header",
    "image_size",
    "one_line",
    "options_to_dict",
    "patient_split",
    "polygons_to_mask",
    "read_grey",
    "safe_join",
    "scan_files",
    "shared_classes",
]
