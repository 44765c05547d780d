"""cxrbench's built-in ``phantom`` plugin: synthetic chest X-rays with exact lesion boxes.

Registers the ``phantom`` dataset and the ``cxrbench phantom`` commands (export the
phantom in NIH ChestX-ray14, CheXpert, CheXlocalize, VinDr-CXR, RSNA Pneumonia or SIIM-ACR
layout, preview a grid of images with boxes), through the same public hooks a third-party
plugin uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cxrbench

from .cohort import CLASSES
from .dataset import Options, PhantomDataset
from .generator import PhantomGenerator

if TYPE_CHECKING:
    import click

__all__ = ["CLASSES", "Options", "PhantomDataset", "PhantomGenerator"]


@cxrbench.hookimpl
def cxrbench_register_datasets() -> list[type]:
    return [PhantomDataset]


@cxrbench.hookimpl
def cxrbench_add_commands(cli: click.Group) -> None:
    from .cli import phantom

    cli.add_command(phantom)
