"""Threshold-free and literature-exact localization metrics (pure numpy / OpenCV / numba).

Conventions: maps are ``N x H x W`` float arrays, one per (image, class) pair; boxes are
``x, y, w, h`` floats in the SAME pixel space as the maps; pixel ``(col, row)`` covers
``[col, col + 1) x [row, row + 1)``, so its centre is ``(col + 0.5, row + 0.5)``.

* ``peaks``: border-unbiased heatmap peaks; constant or NaN maps have none.
* ``pointing``: pointing game (Zhang et al. 2016 / TorchRay), boxes or masks.
* ``wang``: ChestX-ray8 accuracy at T(IoBB) / T(IoU) (Wang et al. 2017) and ``cxr_afp``.
* ``maxboxacc``: MaxBoxAcc and MaxBoxAccV2 (Choe et al. 2020, wsolevaluation), fast and reference.
* ``pxap``: pixel average precision (Choe et al. 2020).
* ``bootstrap``: patient-level percentile intervals and paired differences.

``maxboxacc.maxboxacc`` and ``pxap.pxap`` are not re-exported here, so that
``cxrbench.locmetrics.maxboxacc`` and ``cxrbench.locmetrics.pxap`` stay the modules.

See ``docs/metrics-localization-draft.md`` for formulas and where we differ from the papers.
"""

from cxrbench.locmetrics.bootstrap import (
    BootstrapCI,
    PairedDiff,
    bootstrap_max_accuracy,
    bootstrap_mean,
    paired_bootstrap_diff,
)
from cxrbench.locmetrics.maxboxacc import (
    V2_DELTAS,
    MaxBoxAccResult,
    best_iou_curves,
    best_iou_curves_reference,
    cam_thresholds,
    maxboxacc_reference,
    maxboxacc_v2,
)
from cxrbench.locmetrics.peaks import Peaks, map_peaks
from cxrbench.locmetrics.pointing import PointingResult, pointing_game, pointing_game_masks
from cxrbench.locmetrics.pxap import PxAPResult, boxes_to_masks
from cxrbench.locmetrics.wang import WANG_IOBB_THRESHOLDS, WANG_IOU_THRESHOLDS, WangResult, wang_accuracy

__all__ = [
    "V2_DELTAS",
    "WANG_IOBB_THRESHOLDS",
    "WANG_IOU_THRESHOLDS",
    "BootstrapCI",
    "MaxBoxAccResult",
    "PairedDiff",
    "Peaks",
    "PointingResult",
    "PxAPResult",
    "WangResult",
    "best_iou_curves",
    "best_iou_curves_reference",
    "bootstrap_max_accuracy",
    "bootstrap_mean",
    "boxes_to_masks",
    "cam_thresholds",
    "map_peaks",
    "maxboxacc_reference",
    "maxboxacc_v2",
    "paired_bootstrap_diff",
    "pointing_game",
    "pointing_game_masks",
    "wang_accuracy",
]
