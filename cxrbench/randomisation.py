"""The blocks of a classifier and their seeded randomisation, for the model-parameter randomisation test.

Adebayo et al. (NeurIPS 2018, "Sanity checks for saliency maps") re-initialise a
trained network's weights block by block, from the output downwards (cascading) or one block
at a time (independent), and compare the saliency maps before and after. cxrbench does that
on a :func:`copy.deepcopy` of the trained model, never on the model itself.

**Blocks** (:func:`model_blocks`), from the top down: the pooling head (when it has
parameters), then the backbone's children that hold parameters, in reverse order of
registration (timm and torchvision register children in forward order). While a module has
exactly one child holding parameters (a wrapper such as ``TimmBackbone.model``, or
DenseNet's ``features``) the rule descends into that child first. Parameters a module holds
itself, outside its children (e.g. a ViT's ``pos_embed``), are one more block, the lowest.
For timm's ResNet-18 that gives ``head, layer4, layer3, layer2, layer1, bn1, conv1``; for
DenseNet-121 ``head, norm5, denseblock4, transition3, ..., norm0, conv0``.

**Randomisation** (:func:`randomise_block`): every parameter tensor of the block is redrawn
i.i.d. from a normal distribution with the mean and (population) standard deviation of its
own trained values. Buffers (BatchNorm running statistics) are kept. Adebayo et al.
re-initialise the weights from an initialisation distribution; redrawing from each tensor's own
moments is cxrbench's choice: it needs no knowledge of an architecture's initialiser, keeps
every layer's activation scale (so the randomised network neither saturates nor vanishes,
which would make its maps constant for a trivial reason) and destroys every learned
structure. A tensor whose values are all equal (a single value, an untouched BatchNorm
weight) carries no structure and is left as it is. The draws of block ``b`` come from a CPU
generator seeded with ``(seed, b)``, so they are the same on every device and whichever
other blocks are randomised: a block gets the same weights in the cascade and on its own.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

__all__ = ["Block", "model_blocks", "randomise_block", "restore_block"]


@dataclasses.dataclass(frozen=True)
class Block:
    """One unit of randomisation.

    Attributes:
        index: position from the top (0 = the head).
        path: dotted path of the module from the model (``head``, ``backbone.model.layer4``;
            empty for the model itself).
        module: the module whose parameters make up the block.
        own_only: only the module's own parameters, not its children's.

    """

    index: int
    path: str
    module: nn.Module
    own_only: bool = False

    @property
    def name(self) -> str:
        """How the block is shown: its path, ``(own)`` added for a module's own parameters."""
        base = self.path or "model"
        return f"{base} (own)" if self.own_only else base

    def parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name in the model, parameter)`` of the block, in registration order."""
        prefix = f"{self.path}." if self.path else ""
        return [(prefix + n, p) for n, p in self.module.named_parameters(recurse=not self.own_only)]


def _holds_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _backbone_blocks(root: nn.Module, path: str) -> list[tuple[str, nn.Module, bool]]:
    module = root
    while True:
        children = [(name, child) for name, child in module.named_children() if _holds_parameters(child)]
        own = bool(list(module.named_parameters(recurse=False)))
        if len(children) == 1 and not own:
            name, module = children[0]
            path = f"{path}.{name}" if path else name
            continue
        break
    blocks = [(f"{path}.{name}" if path else name, child, False) for name, child in reversed(children)]
    if own:
        blocks.append((path, module, True))
    return blocks


def model_blocks(model: nn.Module) -> list[Block]:
    """The model's randomisation blocks from the top (the head) down (see the module docstring).

    A model without ``head`` and ``backbone`` attributes is treated as a backbone.
    """
    found: list[tuple[str, nn.Module, bool]] = []
    head, backbone = getattr(model, "head", None), getattr(model, "backbone", None)
    if isinstance(head, nn.Module) and isinstance(backbone, nn.Module):
        if _holds_parameters(head):
            found.append(("head", head, False))
        found += _backbone_blocks(backbone, "backbone")
    else:
        found += _backbone_blocks(model, "")
    return [Block(i, path, module, own) for i, (path, module, own) in enumerate(found)]


def _generator(seed: int, index: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


@torch.no_grad()
def randomise_block(block: Block, seed: int) -> None:
    """Redraw every parameter of ``block`` in place from N(its mean, its std), seeded by ``(seed, block)``.

    Call it on a copy of the trained model only: it overwrites the block's parameters.
    """
    generator = _generator(seed, block.index)
    for _name, param in block.parameters():
        values = param.detach().to(torch.float64)
        std = float(values.std(unbiased=False)) if values.numel() else 0.0
        if not (std > 0 and np.isfinite(std)):
            continue
        mean = float(values.mean())
        draw = torch.randn(tuple(param.shape), generator=generator, dtype=torch.float64) * std + mean
        param.copy_(draw.to(device=param.device, dtype=param.dtype))


@torch.no_grad()
def restore_block(block: Block, trained: nn.Module) -> None:
    """Copy the trained values back into ``block`` (of a copy of ``trained``), reading ``trained`` only."""
    source = dict(trained.named_parameters())
    for name, param in block.parameters():
        param.copy_(source[name])
