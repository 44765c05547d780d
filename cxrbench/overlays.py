"""Pictures: the X-ray, a localizer's heatmap, the true box (red) and predicted boxes (green)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .boxes import ThresholdPolicy, heatmap_to_boxes

RED = (0, 0, 255)  # OpenCV is BGR
GREEN = (0, 200, 0)


def render_overlay(image: np.ndarray, heatmap: np.ndarray, true_boxes: np.ndarray, pred_boxes: np.ndarray,
                   title: str = "", alpha: float = 0.45, scale: int = 1) -> np.ndarray:
    """One BGR picture: grey image blended with a JET heatmap, boxes drawn on top.

    Args:
        image: ``S x S`` uint8 grey image.
        heatmap: ``S x S`` float map in [0, 1].
        true_boxes: ``T x 4`` (x, y, w, h) drawn in red.
        pred_boxes: ``M x 4`` drawn in green.
        title: text written in the top-left corner.
        alpha: heatmap opacity.
        scale: integer upscaling for legibility of small images.

    """
    grey = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    colour = cv2.applyColorMap(np.clip(heatmap * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    picture = cv2.addWeighted(grey, 1 - alpha, colour, alpha, 0)
    if scale > 1:
        picture = cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    for boxes, colour_bgr in ((pred_boxes, GREEN), (true_boxes, RED)):
        for x, y, w, h in np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale:
            cv2.rectangle(picture, (int(round(x)), int(round(y))), (int(round(x + w)) - 1, int(round(y + h)) - 1),
                          colour_bgr, max(1, scale))
    if title:
        cv2.putText(picture, title, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return picture


def safe_name(text: str) -> str:
    """A file-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def save_overlays(data: Any, run: Any, policy: ThresholdPolicy, class_names: list[str], out_dir: Path,
                  limit: int) -> list[Path]:
    """Save overlays for the first ``limit`` images of a localization run; returns the files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    images = list(dict.fromkeys(int(r) for r in run.pair_rows))[:limit]
    scale = max(1, 256 // max(data.size, 1))
    for p in range(len(run.pair_rows)):
        row = int(run.pair_rows[p])
        if row not in images:
            continue
        cls = class_names[int(run.pair_classes[p])]
        pred = heatmap_to_boxes(run.maps[p], policy)
        picture = render_overlay(np.asarray(data.images[row]), run.maps[p], run.true_boxes[p], pred,
                                 title=cls, scale=scale)
        path = out_dir / f"{safe_name(str(data.split.ids[row]))}_{safe_name(cls)}.png"
        cv2.imwrite(str(path), picture)
        written.append(path)
    return written
