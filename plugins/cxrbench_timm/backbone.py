"""Every timm model as a cxrbench backbone.

One class, :class:`TimmBackbone`, serves every timm model name through ``matches``
(``convnext_tiny``, ``timm/convnext_tiny``, ``resnet18.tv_in1k``); the backbones the
seed project used are also registered under their own names so that ``cxrbench list``
shows them. Nothing here branches on architecture families: timm's
``forward_features`` contract gives every model's unpooled feature map.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import timm
from torch import Tensor, nn

from cxrbench.api import Backbone, UsageError

from .attention import build_attention
from .weights import create_pretrained, load_local_weights

PREFIX = "timm/"
"""Optional prefix of grid names (``timm/convnext_tiny``), to make the source explicit."""

RESERVED_KWARGS = ("pretrained", "in_chans", "num_classes", "global_pool", "pretrained_cfg_overlay")
"""``timm.create_model`` arguments the backbone sets itself."""

SEED_BACKBONES = (
    "resnet10t",
    "resnet18",
    "resnet34",
    "resnet50",
    "densenet121",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
)
"""timm models registered under their own name (the seed project's choices and kin, and the
quickstart's ``resnet10t``), so ``cxrbench list backbones`` shows them; any other timm model works too."""


def timm_model_name(name: str) -> str:
    """The timm model name a grid name refers to (``timm/x`` -> ``x``)."""
    return name[len(PREFIX) :] if name.startswith(PREFIX) else name


@dataclasses.dataclass(frozen=True)
class TimmOptions:
    """Options of a timm backbone.

    Attributes:
        pretrained: False for random initialisation; True for timm's default
            pretrained weights (downloaded, or read from the local cache when offline);
            a path to a local weights file (``.safetensors`` or a PyTorch state dict).
        in_chans: 1 (the first convolution takes the grey image; pretrained weights
            are summed over RGB) or 3 (the grey image is repeated as a view).
        freeze: train the head only: the timm network's parameters get
            ``requires_grad=False`` and its BatchNorm / dropout layers stay in eval
            mode. A newly initialised attention module stays trainable.
        drop_rate: timm's ``drop_rate`` for the network (its meaning is the model's:
            usually dropout before timm's own classifier, which is not used here, so
            the pooling head's ``dropout`` is the one that acts on the pooled features).
        attention: module applied to the feature map: ``se`` (channel attention),
            ``spatial`` (non-local self-attention), ``fpa`` (feature pyramid attention).
        output_stride: input pixels per feature-map cell for models that support it
            (ResNets: 32 by default; 16 or 8 dilate the last stages, giving finer maps for
            localization at more compute); null = the model's own.
        model_kwargs: extra keyword arguments for ``timm.create_model`` (e.g.
            ``drop_path_rate`` or ``dynamic_img_size`` for vision transformers).

    """

    pretrained: bool | str = False
    in_chans: int = 1
    freeze: bool = False
    drop_rate: float = 0.0
    attention: Literal["none", "se", "spatial", "fpa"] = "none"
    output_stride: int | None = None
    model_kwargs: dict = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        """Check value ranges that the types cannot express."""
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {self.in_chans}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
        if isinstance(self.pretrained, str) and not self.pretrained.strip():
            raise ValueError("pretrained must be true, false or a weights file path, got an empty string")
        if isinstance(self.pretrained, str) and not Path(self.pretrained).expanduser().is_file():
            # caught when the grid is validated, not once per cell after the run has started
            raise ValueError(f"pretrained weights file not found: {self.pretrained}")
        if self.output_stride is not None and self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32 (or null), got {self.output_stride}")
        reserved = sorted(set(self.model_kwargs) & set(RESERVED_KWARGS))
        if reserved:
            raise ValueError(f"model_kwargs may not set {', '.join(reserved)}: use the backbone options")


def tokens_to_map(features: Tensor, num_prefix_tokens: int, image_hw: tuple[int, int], owner: str) -> Tensor:
    """Turn transformer tokens ``N x L x C`` into a feature map ``N x C x h x w``.

    Prefix tokens (class, register tokens) are dropped; the patch grid's shape follows
    the input's aspect ratio.

    Raises:
        UsageError: when the remaining tokens do not form a grid of that aspect ratio.

    """
    n, length, channels = features.shape
    patches = length - num_prefix_tokens
    height, width = image_hw
    h = max(round(math.sqrt(patches * height / width)), 1)
    w = patches // h
    if patches <= 0 or h * w != patches:
        raise UsageError(
            f"backbone {owner!r}: forward_features returned {length} tokens "
            f"({num_prefix_tokens} prefix); they do not form a {height}x{width}-shaped patch grid"
        )
    return features[:, num_prefix_tokens:].transpose(1, 2).reshape(n, channels, h, w)


class TimmBackbone(Backbone):
    """Any timm model (``timm/<model>`` or its bare name); feature map of forward_features.

    The feature map is the output of the submodule ``feature_map`` (an identity placed
    after the optional attention module), which is what gradient localizers hook by
    default and exactly what the pooling head pools.
    """

    NAME = "timm"
    ID_NEUTRAL_DEFAULTS: ClassVar[dict[str, Any]] = {"output_stride": None}
    """Options added after results stores existed: left out of cell ids at these values."""
    EXAMPLES: ClassVar[tuple[str, ...]] = ("mobilenetv3_small_050", "timm/resnet10t")
    """Family members that contract tests and ``cxrbench list`` can show for this class."""
    Options = TimmOptions

    @classmethod
    def matches(cls, name: str) -> bool:
        """Whether ``name`` (optionally ``timm/``-prefixed, optionally ``.tag``ged) is a timm model."""
        model = timm_model_name(str(name))
        return bool(model) and timm.is_model(model)

    def __init__(self, options: TimmOptions | None = None, *, name: str | None = None) -> None:
        options = options if options is not None else self.Options()
        super().__init__(options, name=name)
        arch = timm_model_name(self.name)
        if not timm.is_model(arch):
            hint = " (that is the family: name a model, e.g. 'timm/convnext_tiny')" if arch == "timm" else ""
            raise UsageError(f"backbone {self.name!r}: not a timm model name{hint}")
        self.in_chans = options.in_chans
        self.model = self._create(arch, options)
        self.num_features = int(self.model.num_features)
        # Some timm models (e.g. Swin) declare channels-last feature maps.
        self._channels_last = getattr(self.model, "output_fmt", "NCHW") == "NHWC"
        self._num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0) or 0)
        self.attention = build_attention(options.attention, self.num_features)
        self.feature_map = nn.Identity()
        if options.freeze:
            self.model.requires_grad_(False)

    def _create(self, arch: str, options: TimmOptions) -> nn.Module:
        kwargs: dict[str, Any] = dict(options.model_kwargs)
        if options.output_stride is not None:
            kwargs["output_stride"] = options.output_stride
        kwargs.update(in_chans=options.in_chans, num_classes=0, global_pool="")
        if options.drop_rate:  # only when set: not every timm model takes drop_rate
            kwargs["drop_rate"] = options.drop_rate
        if options.pretrained is True:
            return create_pretrained(arch, self.name, **kwargs)
        try:
            model = timm.create_model(arch, pretrained=False, **kwargs)
        except TypeError as exc:  # an option the architecture does not take
            raise UsageError(f"backbone {self.name!r}: timm refused the options: {exc}") from None
        if isinstance(options.pretrained, str):
            load_local_weights(model, options.pretrained, options.in_chans, self.name)
        return model

    def train(self, mode: bool = True) -> TimmBackbone:
        """Set training mode; a frozen network stays in eval mode (BatchNorm statistics fixed)."""
        super().train(mode)
        if self.options.freeze:
            self.model.eval()
        return self

    def forward_features(self, x: Tensor) -> Tensor:
        """``N x 1 x H x W`` -> ``N x C x h x w``: what the network's own global pool would pool."""
        if self.in_chans == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # a view: no copy of the batch
        features = self.model.forward_features(x)
        if features.ndim == 3:
            features = tokens_to_map(features, self._num_prefix_tokens, tuple(x.shape[-2:]), self.name)
        elif features.ndim == 4 and self._channels_last:
            features = features.permute(0, 3, 1, 2)
        elif features.ndim != 4:
            raise UsageError(
                f"backbone {self.name!r}: forward_features returned shape {tuple(features.shape)}, "
                "not a feature map or token sequence"
            )
        return self.feature_map(self.attention(features))


def _named_backbone(arch: str) -> type[TimmBackbone]:
    """A subclass of :class:`TimmBackbone` registered under ``arch`` (no family matching)."""
    doc = f"timm {arch}; feature map of forward_features (any timm model also works via 'timm/<name>')."
    return type(
        f"TimmBackbone_{arch}",
        (TimmBackbone,),
        {"NAME": arch, "EXAMPLES": (), "__doc__": doc, "__module__": __name__},
    )


NAMED_BACKBONES: tuple[type[TimmBackbone], ...] = tuple(_named_backbone(arch) for arch in SEED_BACKBONES)
"""One registered class per entry of :data:`SEED_BACKBONES`."""

# Module globals, so that the classes pickle by reference (executors may send them to workers).
globals().update({cls.__name__: cls for cls in NAMED_BACKBONES})
