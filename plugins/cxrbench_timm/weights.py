"""Pretrained weights for timm backbones: local files, and downloads that fail fast offline.

timm downloads weights from the Hugging Face hub (or, for a few models, a plain URL)
with several retries; offline that takes most of a minute before failing. Here the
host is probed first with a short timeout, and when it cannot be reached only the
local caches are consulted, so ``pretrained: true`` without a network either loads
cached weights or fails within seconds with one clear line.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlparse

import timm
import torch
from timm.models import get_pretrained_cfg, load_state_dict
from timm.models._manipulate import adapt_input_conv
from torch import nn

from cxrbench.api import UsageError

PROBE_TIMEOUT_S = 4.0
"""Longest wait for the weight host to answer (DNS + TCP) before assuming offline."""


def host_reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds.

    The probe runs in a daemon thread because name resolution ignores socket
    timeouts; a resolver that hangs therefore costs ``timeout`` seconds, not minutes.
    """
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True, name=f"cxrbench-probe-{host}")
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _weight_source(arch: str) -> tuple[str, str] | None:
    """(kind, location) timm would download ``arch``'s default weights from, or None."""
    cfg = get_pretrained_cfg(arch)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        return "hf-hub", cfg.hf_hub_id
    if cfg.url:
        return "url", cfg.url
    return None


@contextmanager
def _hf_offline() -> Iterator[None]:
    """Make huggingface_hub answer from its local cache only, for the duration."""
    try:
        import huggingface_hub.constants as hf_constants
    except ImportError:  # timm then downloads by URL, handled separately
        yield
        return
    # huggingface_hub reads this flag at call time (constants.is_offline_mode()).
    with mock.patch.object(hf_constants, "HF_HUB_OFFLINE", True):
        yield


def _hf_host() -> str:
    try:
        import huggingface_hub.constants as hf_constants

        endpoint = hf_constants.ENDPOINT
    except ImportError:
        endpoint = "https://huggingface.co"
    return urlparse(endpoint).hostname or "huggingface.co"


def _url_cached(url: str) -> bool:
    """Whether torch.hub already holds the file ``url`` would download."""
    name = os.path.basename(urlparse(url).path)
    return (Path(torch.hub.get_dir()) / "checkpoints" / name).is_file()


def create_pretrained(arch: str, owner: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(arch, pretrained=True, **kwargs)``, failing fast when offline.

    Args:
        arch: timm model name (with an optional ``.tag``).
        owner: the grid name, for messages (``backbone 'resnet18'``).
        kwargs: passed to ``timm.create_model``.

    Raises:
        UsageError: no pretrained weights exist, the host is unreachable and nothing
            is cached, or the download fails.

    """
    offline_message = (
        f"backbone {owner!r}: could not download pretrained weights (offline?); "
        "pass pretrained: false or a local file path"
    )
    source = _weight_source(arch)
    if source is None:
        raise UsageError(f"backbone {owner!r}: no pretrained weights in timm for {arch!r}; set pretrained: false")
    kind, location = source
    host = _hf_host() if kind == "hf-hub" else (urlparse(location).hostname or "")
    offline = not host_reachable(host)
    if offline and kind == "url" and not _url_cached(location):
        raise UsageError(offline_message)
    guard = _hf_offline() if offline and kind == "hf-hub" else nullcontext()
    try:
        with guard:
            return timm.create_model(arch, pretrained=True, **kwargs)
    except Exception as exc:  # any download or cache failure is reported as one line
        if offline:
            raise UsageError(offline_message) from None
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UsageError(
            f"backbone {owner!r}: could not load pretrained weights: {type(exc).__name__}: {detail}"
        ) from None


def _names(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _adapt_first_convs(model: nn.Module, state: dict[str, Any], in_chans: int) -> None:
    """Convert the input convolutions of ``state`` to the model's input channels, in place.

    Uses timm's own rule (:func:`timm.models._manipulate.adapt_input_conv`): summed over
    the source channels for one-channel models, repeated and rescaled otherwise.
    """
    for conv_name in _names(model.pretrained_cfg.get("first_conv")):
        key = f"{conv_name}.weight"
        if key not in state:
            continue
        target = model.get_submodule(conv_name).weight
        source = state[key]
        if source.ndim != 4 or source.shape == target.shape:
            continue
        # Space-to-depth stems fold k input pixels into channels: keep that factor.
        fold = max(target.shape[1] // in_chans, 1)
        state[key] = adapt_input_conv(in_chans, source, base_chans=max(source.shape[1] // fold, 1))


def _preview(keys: list[str]) -> str:
    shown = ", ".join(keys[:3])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > 3 else ''})"


def load_local_weights(model: nn.Module, path: str, in_chans: int, owner: str) -> None:
    """Load a weights file into a timm model created with ``pretrained=False``.

    The file may be a ``.safetensors`` file or a PyTorch checkpoint (read with
    ``weights_only=True``; a ``state_dict`` / ``model`` entry and DDP ``module.``
    prefixes are unwrapped, EMA weights preferred, as timm does). The input convolution
    is adapted to ``in_chans`` and the pretrained classifier (``pretrained_cfg
    ['classifier']``) is dropped. Every other key must match the model exactly.

    Args:
        model: the freshly created timm model (``num_classes=0``).
        path: the weights file.
        in_chans: the model's input channels.
        owner: the grid name, for messages.

    Raises:
        UsageError: the file is missing or unreadable, or its keys or shapes differ.

    """
    file = Path(path).expanduser()
    where = f"backbone {owner!r} option pretrained"
    if not file.is_file():
        raise UsageError(f"{where}: weights file not found: {file}")
    try:
        state = dict(load_state_dict(str(file), weights_only=True))
    except Exception as exc:  # unpickling refusals, corrupt files, wrong formats
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{where}: could not read {file}: {detail}") from None
    _adapt_first_convs(model, state, in_chans)
    own = model.state_dict()
    classifiers = _names(model.pretrained_cfg.get("classifier"))
    classifier_keys = {f"{c}.{p}" for c in classifiers for p in ("weight", "bias")}
    unexpected = [k for k in state if k not in own and k not in classifier_keys]
    missing = [k for k in own if k not in state]
    mismatched = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if unexpected or missing or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys {_preview(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {_preview(unexpected)}")
        if mismatched:
            first = mismatched[0]
            problems.append(
                f"shape mismatch {_preview(mismatched)}: {first} is {tuple(state[first].shape)} "
                f"in the file, {tuple(own[first].shape)} in the model"
            )
        arch = model.pretrained_cfg.get("architecture", type(model).__name__)
        raise UsageError(f"{where}: {file} does not fit timm model {arch!r}: " + "; ".join(problems))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
