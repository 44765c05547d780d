"""Ray on a real multi-node cluster (head + worker nodes on 127.0.0.1), no shared results folder.

Cells run only on the worker nodes (they need the ``cell`` resource the head lacks), each in a
temporary folder on its node; the driver's results folder gets every artifact through the
keeper actor on the driver's node. Killing the node that runs a cell mid-training makes Ray
retry it on the other node, which resumes from the last epoch the keeper saved.
"""

from __future__ import annotations

import textwrap
import time

import pytest

from cxrbench.config import parse_grid
from cxrbench.driver import run_grid
from cxrbench.store import ResultsStore
from tests.test_executors import RecordingDisplay, _plugins_from_env

SLOW_PLUGIN = textwrap.dedent('''
    """A tiny backbone that trains slowly and tells which Ray node trains it."""
    import os
    import time

    import cxrbench
    from tests.plugins.toy import TinyBackbone


    class SlowTiny(TinyBackbone):
        NAME = "slow_tiny"

        def forward_features(self, x):
            if self.training:
                marker = os.environ.get("CXRBENCH_TEST_NODE_FILE")
                if marker and not os.path.exists(marker):
                    import ray

                    with open(marker + ".tmp", "w") as f:
                        f.write(ray.get_runtime_context().get_node_id())
                    os.replace(marker + ".tmp", marker)
                time.sleep(0.15)
            return super().forward_features(x)


    @cxrbench.hookimpl
    def cxrbench_register_backbones():
        return SlowTiny
''')


@pytest.fixture
def cluster(monkeypatch, tmp_path_factory):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    from ray.cluster_utils import Cluster

    folder = tmp_path_factory.mktemp("plugins")
    (folder / "cxrbench_test_slow_tiny.py").write_text(SLOW_PLUGIN)
    marker = tmp_path_factory.mktemp("marker") / "node"
    monkeypatch.setenv("CXRBENCH_TEST_NODE_FILE", str(marker))
    pm, registry = _plugins_from_env(monkeypatch, ["tests.plugins.toy", "cxrbench_test_slow_tiny"], folder)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})  # the head runs no cell
    workers = [c.add_node(num_cpus=1, resources={"cell": 1}) for _ in range(2)]
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c, workers, pm, registry, marker
    finally:
        ray.shutdown()
        c.shutdown()


def _grid(tiny_grid_dict, backbone, **ray_options):
    tiny_grid_dict.update(heads=["avg"], localizers=["cam"], backbones=[{"name": backbone, "options": {"width": 4}}])
    tiny_grid_dict["executor"] = {"name": "ray", "options": {"resources": {"cell": 1}, **ray_options}}
    return tiny_grid_dict


@pytest.mark.slow
def test_cells_run_on_worker_nodes_and_their_artifacts_reach_the_driver(cluster, tiny_grid_dict, tmp_path):
    c, workers, pm, registry, _marker = cluster
    grid = parse_grid(_grid(tiny_grid_dict, "tiny"), registry)
    with ResultsStore(tmp_path / "results") as store:
        summary = run_grid(grid, pm, store)
        (cell,) = store.cells(grid.name)
        artifacts = store.artifacts(cell.cell_id)
    assert (summary.ok, summary.failed) == (1, 0), cell.error
    assert cell.info["ran_on"] in {w.node_id for w in workers}  # never the driver's (head) node
    assert artifacts.best.is_file() and artifacts.predictions.is_file() and artifacts.config.is_file()
    assert not artifacts.last.exists() and cell.info["artifacts_sent"] >= 3
    assert cell.localizations[0].ok


@pytest.mark.slow
def test_a_node_killed_mid_cell_is_retried_elsewhere_and_resumes_from_its_last_epoch(cluster, tiny_grid_dict,
                                                                                     tmp_path):
    import threading

    c, workers, pm, registry, marker = cluster
    tiny_grid_dict["train"]["epochs"] = 4
    grid = parse_grid(_grid(tiny_grid_dict, "slow_tiny", max_retries=1), registry)
    killed: dict[str, str] = {}

    with ResultsStore(tmp_path / "results") as store:
        def kill_after_first_epoch() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                lasts = list((tmp_path / "results").glob("cells/*/last.pt"))
                if lasts and marker.exists():
                    node = marker.read_text()
                    victim = next(w for w in workers if w.node_id == node)
                    c.remove_node(victim)
                    killed["node"] = node
                    return
                time.sleep(0.1)

        killer = threading.Thread(target=kill_after_first_epoch, daemon=True)
        killer.start()
        display = RecordingDisplay()
        summary = run_grid(grid, pm, store, display=display)
        killer.join(timeout=5)
        (cell,) = store.cells(grid.name)
    assert killed, "the cell finished before its node could be killed"
    # the display is told of the retry (attempt 2), and each start names the node that ran it
    assert [(e[1], e[2]) for e in display.of("cell_retried")] == [(cell.cell_id, 2)]
    starts = [e[2] for e in display.of("cell_started")]
    assert len(starts) == 2 and starts[0] != starts[1] and all(s.startswith("node ") for s in starts), starts
    assert (summary.ok, summary.failed) == (1, 0), cell.error
    assert cell.info["ran_on"] != killed["node"]
    assert cell.info["resumed_from_epoch"] >= 1  # the retry started from the keeper's last.pt
    assert cell.info["epochs_run"] == 4
