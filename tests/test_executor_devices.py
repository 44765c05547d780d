"""Executors and devices: one GPU per process worker, Ray never joins a stray cluster or hangs."""

from __future__ import annotations

import socket
import sys
import time
import types

import pytest

from cxrbench.errors import UsageError

# --------------------------------------------------------------------------- process executor


@pytest.mark.parametrize("gpus, workers, visible, expected", [
    ("auto", None, ["0", "1", "2"], (3, ["0", "1", "2"])),  # one worker per GPU by default
    ("auto", 5, ["0", "1"], (5, ["0", "1", "0", "1", "0"])),  # dealt round robin
    ("auto", None, [], (2, None)),  # no GPU: not assigned, two workers
    ([1], None, ["0", "1"], (1, ["1"])),
    ("none", 3, ["0", "1"], (3, ["", "", ""])),  # hidden from every worker
])
def test_gpus_are_assigned_one_per_worker(gpus, workers, visible, expected):
    from cxrbench_executors import assign_gpus

    assert assign_gpus(gpus, workers, visible) == expected


def test_a_listed_gpu_that_is_not_visible_is_refused():
    from cxrbench_executors import assign_gpus

    with pytest.raises(ValueError, match="gpus: 3 not visible"):
        assign_gpus([3], None, ["0", "1"])


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    from cxrbench_executors import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_a_worker_pins_its_gpu_before_cuda_starts(monkeypatch):
    import multiprocessing

    import cxrbench_executors
    from cxrbench_executors.pool import WorkerPool

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    cxrbench_executors.pin_gpu("1")
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    # each pool slot keeps its GPU, so a replacement worker is pinned to the same one
    pool = WorkerPool(3, 1, ["0", "1", "0"], multiprocessing.get_context("spawn"))
    assert [s.gpu for s in pool.slots] == ["0", "1", "0"]


def test_process_options_reject_bad_gpus(toy_registry):
    from cxrbench.errors import ConfigError

    with pytest.raises(ConfigError, match="gpus must be"):
        toy_registry.create("executor", {"name": "process", "options": {"gpus": "all"}}, "executor")


# --------------------------------------------------------------------------- ray


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_fails_fast_and_in_one_line_when_nothing_answers():
    pytest.importorskip("ray")
    from cxrbench_ray import check_reachable

    port = _closed_port()
    t0 = time.monotonic()
    with pytest.raises(UsageError, match=f"nothing answers at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}", 1.0)
    assert time.monotonic() - t0 < 5


def test_ray_auto_needs_a_cluster_started_on_this_machine(tmp_path):
    pytest.importorskip("ray")
    from cxrbench_ray import gcs_endpoint

    with pytest.raises(UsageError, match="no Ray cluster was started on this machine"):
        gcs_endpoint("auto", tmp_path / "missing")
    recorded = tmp_path / "ray_current_cluster"
    recorded.write_text("10.0.0.5:6379\n")
    assert gcs_endpoint("auto", recorded) == ("10.0.0.5", 6379)
    assert gcs_endpoint("ray://head:10001") == ("head", 10001)


def test_ray_without_an_address_starts_a_fresh_local_instance(monkeypatch):
    """address null -> ray.init(address='local'): a running cluster is never joined."""
    pytest.importorskip("ray")
    import cxrbench_ray

    calls = {}
    fake = types.SimpleNamespace(
        is_initialized=lambda: False,
        init=lambda **kw: calls.update(kw),
        cluster_resources=lambda: {"CPU": 2.0},
        remote=lambda **kw: (lambda fn: calls.update(remote=kw) or types.SimpleNamespace(remote=lambda *args: "ref-1")),
        wait=lambda refs, num_returns, timeout=None: (refs[:1], refs[1:]),
        get=lambda ref: (_ for _ in ()).throw(RuntimeError("stop")),
        cancel=lambda ref, force: None,
        shutdown=lambda: calls.update(shutdown=True),
        get_runtime_context=lambda: types.SimpleNamespace(get_node_id=lambda: "driver-node"),
    )
    queue_module = types.SimpleNamespace(Queue=lambda **kw: types.SimpleNamespace(), Empty=Exception)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setitem(sys.modules, "ray.util", types.SimpleNamespace(queue=queue_module))
    monkeypatch.setitem(sys.modules, "ray.util.queue", queue_module)
    monkeypatch.setitem(sys.modules, "ray.util.scheduling_strategies", types.SimpleNamespace(
        NodeAffinitySchedulingStrategy=lambda node, soft: ("affinity", node)))
    monkeypatch.setattr(cxrbench_ray, "_drain", lambda queue: [])
    executor = cxrbench_ray.RayExecutor(cxrbench_ray.RayOptions(init={"namespace": "cxr"}, artifacts="shared"))
    task = types.SimpleNamespace(cell_id="c1", cell=types.SimpleNamespace(cell_id="c1"))
    results = []
    monkeypatch.setattr(cxrbench_ray, "failed_result", lambda t, msg, tb=None: types.SimpleNamespace(
        warnings=(), error=msg))
    executor.run([task], results.append, types.SimpleNamespace(cell_started=lambda *a: None,
                                                                 warning=lambda *a: None))
    assert calls["address"] == "local" and calls["namespace"] == "cxr"
    assert calls["remote"]["num_gpus"] == 0  # auto: the cluster has no GPU
    assert calls["shutdown"] and "stop" in results[0].error


def test_ray_init_cannot_override_the_executors_own_options():
    pytest.importorskip("ray")
    from cxrbench_ray import RayOptions

    from cxrbench.errors import ConfigError
    from cxrbench.options import parse_options

    with pytest.raises(ConfigError, match="set address with the executor's own options"):
        parse_options(RayOptions, {"init": {"address": "auto"}}, "executor.options", "executor 'ray'")


# --------------------------------------------------------------------------- numerics


def test_train_threads_pin_the_cells_cpu_threads_and_enter_its_id_only_when_set(toy_pm, toy_registry,
                                                                                 tiny_grid_dict, tmp_path):
    import copy

    import torch

    from cxrbench.config import parse_grid
    from cxrbench.driver import run_grid
    from cxrbench.grid import expand
    from cxrbench.store import ResultsStore

    tiny_grid_dict.update(heads=["avg"], localizers=[])
    plain = parse_grid(copy.deepcopy(tiny_grid_dict), toy_registry)
    tiny_grid_dict["train"]["threads"] = 1
    pinned = parse_grid(tiny_grid_dict, toy_registry)
    default = copy.deepcopy(tiny_grid_dict)
    default["train"]["threads"] = None
    ids = [expand(g, lambda spec: "fp")[0].cell_id for g in (plain, parse_grid(default, toy_registry), pinned)]
    assert ids[0] == ids[1] != ids[2]  # the default leaves older stores' ids alone
    before = torch.get_num_threads()
    with ResultsStore(tmp_path) as store:
        run_grid(pinned, toy_pm, store)
        (cell,) = store.cells(pinned.name)
    assert cell.ok and cell.provenance.environment.threads == 1
    assert torch.get_num_threads() == before  # restored for the next cell
