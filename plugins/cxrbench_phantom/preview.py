"""A contact sheet of phantom images with their boxes, for a person to look at."""

from __future__ import annotations

import cv2
import numpy as np

from .cohort import CLASSES
from .generator import PhantomGenerator

# One colour (BGR) per finding, distinct on grey.
COLOURS = {
    "Atelectasis": (255, 128, 0),
    "Cardiomegaly": (0, 0, 255),
    "Effusion": (255, 255, 0),
    "Infiltration": (0, 200, 255),
    "Mass": (255, 0, 255),
    "Nodule": (0, 255, 0),
    "Pneumonia": (0, 128, 255),
    "Pneumothorax": (200, 200, 255),
}
SHORT = {
    "Atelectasis": "Atel", "Cardiomegaly": "Card", "Effusion": "Eff", "Infiltration": "Inf",
    "Mass": "Mass", "Nodule": "Nod", "Pneumonia": "Pna", "Pneumothorax": "Ptx",
}  # fmt: skip
"""Box captions: the usual radiology abbreviations, so Pneumonia and Pneumothorax differ."""


def pick_images(gen: PhantomGenerator, count: int) -> list[int]:
    """Up to ``count`` image numbers that between them show every finding, plus a normal one.

    Greedy: walk the images in order and take one whenever it adds a finding not yet
    shown; fill the rest of the sheet in order.
    """
    chosen: list[int] = []
    shown: set[str] = set()
    normal = None
    for i in range(len(gen)):
        findings = set(gen.findings(i))
        if not findings and normal is None:
            normal = i
        elif findings - shown and len(chosen) < count - 1:
            chosen.append(i)
            shown |= findings
        if len(chosen) >= count - 1 and normal is not None:
            break
    if normal is not None:
        chosen.append(normal)
    rest = (i for i in range(len(gen)) if i not in chosen)
    while len(chosen) < min(count, len(gen)):
        chosen.append(next(rest))
    return sorted(chosen[:count])


def contact_sheet(gen: PhantomGenerator, images: list[int], columns: int = 4) -> np.ndarray:
    """Tile ``images`` with every lesion's box and finding name drawn in colour.

    Returns:
        A BGR uint8 image.

    """
    columns = max(1, min(columns, len(images)))
    size = gen.image_size
    scale = max(1.0, 256 / size)  # small phantoms are enlarged so the text stays legible
    tile = round(size * scale)
    rows = -(-len(images) // columns)
    sheet = np.zeros((rows * (tile + 18), columns * tile, 3), np.uint8)
    for n, i in enumerate(images):
        img = cv2.resize(gen.image(i), (tile, tile), interpolation=cv2.INTER_NEAREST)
        bgr = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        for name, x, y, w, h in gen.boxes(i):
            p0 = (int(x * scale), int(y * scale))
            p1 = (int((x + w) * scale) - 1, int((y + h) * scale) - 1)
            cv2.rectangle(bgr, p0, p1, COLOURS[name], 1)
            cv2.putText(bgr, SHORT[name], (p0[0], max(10, p0[1] - 3)), cv2.FONT_HERSHEY_PLAIN, 0.8, COLOURS[name], 1)
        r, c = divmod(n, columns)
        y0 = r * (tile + 18)
        sheet[y0 : y0 + tile, c * tile : (c + 1) * tile] = bgr
        caption = f"{gen.cohort.image_id(i)}: {', '.join(gen.findings(i)) or 'No Finding'}"
        cv2.putText(
            sheet,
            caption[:48],
            (c * tile + 3, y0 + tile + 13),
            cv2.FONT_HERSHEY_PLAIN,
            0.8,
            (230, 230, 230),
            1,
        )
    return sheet


__all__ = ["CLASSES", "COLOURS", "SHORT", "contact_sheet", "pick_images"]
