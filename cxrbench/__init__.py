"""cxrbench: benchmark chest X-ray classifiers and their weakly supervised localization.

The public API for plugin authors:

* :data:`hookimpl`: decorate hook implementations with it.
* :mod:`cxrbench.interfaces`: the component contracts (Dataset, Backbone, PoolingHead,
  Localizer, Executor).
* :mod:`cxrbench.testing`: contract tests and fixtures for your own components.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("cxrbench")
"""Marker for cxrbench hook implementations (``@cxrbench.hookimpl``)."""

__all__ = ["__version__", "hookimpl"]
