"""The benchmark suite keeps working: it is not part of ``pytest`` (testpaths), so an API change
could break it unseen, as one did (``localization.score`` began returning its settings too)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO


def _pytest(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)


def test_every_benchmark_module_imports_and_collects():
    done = _pytest("benchmarks", "--collect-only")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " tests collected" in done.stdout or "collected" in done.stdout


def test_the_component_benchmarks_run_once_each():
    # --benchmark-disable: every benchmark body runs once, with its assertions, no timing
    done = _pytest("benchmarks/test_components.py", "--benchmark-disable", "-x")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout
