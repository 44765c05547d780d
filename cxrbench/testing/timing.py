"""Where a benchmark runs and how one call is timed there.

:class:`BenchDevice` carries the device's precision and memory format and synchronises
it; :func:`measure` times rounds of a call on it, through pytest-benchmark or without.
This module imports pytest: :func:`bench_device` skips the calling test without a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

__all__ = ["BenchDevice", "bench_device", "measure", "timed_call", "without_warmup"]


@dataclasses.dataclass(frozen=True)
class BenchDevice:
    """Where and how a benchmark runs.

    On CPU: float32, contiguous tensors. On CUDA: autocast mixed precision (bfloat16 where
    the GPU supports it, else float16), channels-last modules and inputs, and a
    ``torch.cuda.synchronize()`` inside every timed call, so the time covers the GPU's
    work and not only the kernel launches.

    Attributes:
        name: ``cpu`` or ``cuda``.
        amp_dtype: autocast dtype, or None for full precision.
        channels_last: convert modules and 4-D inputs to channels-last.

    """

    name: str
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @property
    def device(self) -> torch.device:
        return torch.device(self.name)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context on CUDA; a no-op on CPU (CPU figures stay float32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def synchronize(self) -> None:
        """Wait for the device's queued work (CUDA); nothing on CPU."""
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def module(self, module: nn.Module) -> nn.Module:
        """Move ``module`` (in place) to the device and memory format."""
        module.to(self.device)
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        return module

    def tensor(self, x: Tensor) -> Tensor:
        """Move ``x`` to the device; 4-D tensors in the memory format."""
        x = x.to(self.device)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def bench_device(name: str | BenchDevice = "cpu") -> BenchDevice:
    """The :class:`BenchDevice` for ``cpu`` or ``cuda``; skips the calling test without a GPU."""
    if isinstance(name, BenchDevice):
        return name
    kind = torch.device(name).type
    if kind == "cpu":
        return BenchDevice(str(name))
    if kind != "cuda":
        raise ValueError(f"benchmark devices are cpu and cuda, got {name!r}")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BenchDevice(str(name), amp_dtype=amp, channels_last=True)


def timed_call(fn: Callable[[], Any], device: BenchDevice) -> tuple[Any, float]:
    """Call ``fn()`` under the device's autocast; return its result and the seconds it took.

    The device is synchronised before the clock starts, so work queued earlier (an untimed
    setup) is not counted, and again before it stops, so the GPU's work is.
    """
    device.synchronize()
    start = time.perf_counter()
    with device.autocast():
        out = fn()
    device.synchronize()
    return out, time.perf_counter() - start


def without_warmup(times: list[float], warmup_rounds: int) -> list[float]:
    """The timed rounds of ``times``: those after the warm-up rounds."""
    # A disabled pytest-benchmark calls the target once, without warm-up rounds: keep that one.
    return times[warmup_rounds:] if len(times) > warmup_rounds else times


def measure(benchmark: Any, fn: Callable[[], Any], device: BenchDevice, *, rounds: int = 3, warmup_rounds: int = 1,
            setup: Callable[[], None] | None = None) -> list[float]:
    """Time ``fn()`` for ``rounds`` rounds after ``warmup_rounds``, through pytest-benchmark if given.

    The timed call runs under the device's autocast and ends with a device
    synchronisation. ``setup`` runs before every round, untimed.

    Args:
        benchmark: the ``benchmark`` fixture, or None to time without pytest-benchmark.
        fn: what to time (no arguments).
        device: where it runs.
        rounds: timed rounds.
        warmup_rounds: untimed rounds first (allocations, one-off kernel selection).
        setup: untimed work before each round (e.g. an interleaved reference).

    Returns:
        The seconds of every timed round (one round when benchmarks are disabled).

    """
    times: list[float] = []

    def target() -> Any:
        out, seconds = timed_call(fn, device)
        times.append(seconds)
        return out

    def before() -> None:
        if setup is not None:
            setup()

    if benchmark is None:
        for _ in range(warmup_rounds + rounds):
            before()
            target()
    else:
        benchmark.pedantic(target, setup=before, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    return without_warmup(times, warmup_rounds)
