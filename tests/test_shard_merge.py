"""--shard I/N runs part of a grid; cxrbench merge puts the parts back together."""

import copy
import dataclasses
import random
import shutil

import pytest
import yaml
from helpers import store_records

from cxrbench.config import parse_grid
from cxrbench.errors import UsageError
from cxrbench.grid import expand
from cxrbench.manager import build_plugin_manager
from cxrbench.merge import _StagedFolder, merge_results
from cxrbench.registry import Registry
from cxrbench.shards import Shard, shard_of
from cxrbench.store import ResultsStore
from tests.conftest import TINY_GRID, builtin_plugins, cli_with

TIMING = ("per_s", "_ms", "duration")


def _grid_dict():
    grid = copy.deepcopy(TINY_GRID)
    grid.update(seeds=[0, 1], localizers=["cam"])
    grid["train"].update(epochs=1, threads=1)
    return grid


def _pm():
    from tests.plugins import toy

    return build_plugin_manager(plugins=[*builtin_plugins(), ("toy", toy)], entry_points=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The grid run whole in one folder, and as shards 1/2 and 2/2 in two others (run once)."""
    root = tmp_path_factory.mktemp("shards")
    grid_file = root / "tiny.yaml"
    grid_file.write_text(yaml.safe_dump(_grid_dict()))
    with cli_with(_pm()) as invoke:
        for args in ([], ["--shard", "1/2"], ["--shard", "2/2"]):
            folder = root / ("whole" if not args else f"shard{args[1][0]}")
            result = invoke("run", "--grid", grid_file, "--results", folder, "--no-progress", *args)
            assert result.exit_code == 0, result.output
    return root


def _quality(record):
    return {k: v for k, v in record["metrics"].items() if not any(t in k for t in TIMING)}


def _rows(folder):
    with ResultsStore(folder) as store:
        return {(r["cell_id"], r["localizer_key"]): r for r in store_records(store, "tiny")}


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_shards_partition_the_cells():
    registry = Registry.from_plugin_manager(_pm())
    grid_cells = expand(parse_grid(_grid_dict(), registry), lambda spec: "")
    ids = [c.cell_id for c in grid_cells] + [f"{random.Random(i).getrandbits(48):012x}" for i in range(400)]
    shuffled = random.Random(0).sample(ids, len(ids))
    for n in range(1, 5):
        shards = [Shard(i, n) for i in range(1, n + 1)]
        owners = {cid: [s.index for s in shards if s.contains(cid)] for cid in ids}
        assert all(len(found) == 1 for found in owners.values())  # every cell in exactly one shard
        assert sorted(sum((s.select(grid_cells) for s in shards), []), key=lambda c: c.cell_id) == \
            sorted(grid_cells, key=lambda c: c.cell_id)
        # by id alone: not the grid's order, not which cells are done (a subset picks the same ones)
        ns = [dataclasses.make_dataclass("C", ["cell_id"])(cid) for cid in shuffled]
        for s in shards:
            chosen = {c.cell_id for c in s.select(ns)}
            assert chosen == {cid for cid in ids if owners[cid] == [s.index]}
            half = ns[: len(ns) // 2]
            assert {c.cell_id for c in s.select(half)} == chosen & {c.cell_id for c in half}
        if n > 1:
            assert all(sum(1 for found in owners.values() if found == [s.index]) > 300 / n for s in shards)
    # pinned: shards run by another version of cxrbench must agree with these
    assert [shard_of(x, 4) for x in ("abc", "0123456789ab", "ffffffffffff")] == [3, 4, 4]


def test_shard_option_errors_are_one_line(run_cli, tmp_path):
    grid_file = tmp_path / "tiny.yaml"
    grid_file.write_text(yaml.safe_dump(_grid_dict()))
    for bad in ("0/2", "3/2", "1/0", "2", "a/b", "-1/2", "1/2/3"):
        result = run_cli("run", "--grid", grid_file, "--results", tmp_path / "r", "--shard", bad, "--dry-run")
        assert result.exit_code == 4, (bad, result.output)
        assert result.output.startswith("error: --shard:") and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "r").exists()
    ok = run_cli("run", "--grid", grid_file, "--shard", " 2 / 2 ", "--dry-run")
    assert ok.exit_code == 0 and "(shard 2/2 of its 4)" in ok.output


def test_merged_shards_equal_the_whole_run(runs, run_cli, tmp_path):
    whole, one, two = _rows(runs / "whole"), _rows(runs / "shard1"), _rows(runs / "shard2")
    assert not set(one) & set(two) and set(one) | set(two) == set(whole)
    dest = tmp_path / "merged"
    result = run_cli("merge", "--results", dest, runs / "shard1", runs / "shard2")
    assert result.exit_code == 0, result.output
    cells = {cid for cid, _ in whole}
    assert f"{len(cells)} added, 0 replaced, 0 kept; it holds {len(cells)} cells" in result.output
    merged = _rows(dest)
    assert set(merged) == set(whole)
    for key, row in merged.items():
        assert row["status"] == whole[key]["status"] == "ok"
        assert _quality(row) == pytest.approx(_quality(whole[key]), abs=1e-9, nan_ok=True)
    with ResultsStore(dest) as merged_store, ResultsStore(runs / "whole") as whole_store:
        # the grid's spec and its cells in grid order came along
        assert [c.cell_id for c in merged_store.cells("tiny")] == [c.cell_id for c in whole_store.cells("tiny")]
        assert merged_store.grid_cell_ids("tiny") == whole_store.grid_cell_ids("tiny")
        assert merged_store.grid_spec("tiny") == whole_store.grid_spec("tiny")
        for cid in cells:  # and the artifacts
            artifacts = merged_store.artifacts(cid)
            assert artifacts.best.is_file() and artifacts.predictions.is_file()
    assert not [p for p in (dest / "cells").iterdir() if p.name.startswith(".")]  # no staging left behind
    leaderboard = run_cli("leaderboard", "--results", dest, "--grid", "tiny", "--format", "csv")
    assert leaderboard.exit_code == 0 and all(cid in leaderboard.output for cid in cells)


def test_merge_is_idempotent(runs, run_cli, tmp_path):
    dest = tmp_path / "merged"
    assert run_cli("merge", "--results", dest, runs / "shard1", runs / "shard2").exit_code == 0
    with ResultsStore(dest) as store:
        before = [c.to_json() for c in store.cells()]
    again = run_cli("merge", "--results", dest, runs / "shard2", runs / "shard1", runs / "shard1")
    assert again.exit_code == 0 and "0 added, 0 replaced, 4 kept; it holds 4 cells" in again.output
    with ResultsStore(dest) as store:
        assert [c.to_json() for c in store.cells()] == before


def _write(store, grid_spec, record):
    store.add_grid_members("tiny", grid_spec, [record.cell_id])
    store.write_result("tiny", record, replace_localizations=True)


def test_ok_is_never_replaced_by_failed_and_newer_ok_wins(runs, tmp_path):
    dest_dir = _copy(runs / "shard1", tmp_path / "dest")
    with ResultsStore(dest_dir) as dest, ResultsStore(tmp_path / "other") as other:
        spec = dest.grid_spec("tiny")
        first, second = dest.cells("tiny")[:2]
        later = first.finished_at + 100
        # a newer FAILED record of an ok cell, an OLDER ok record of another
        _write(other, spec, dataclasses.replace(first, status="failed", error="boom", metrics={}, localizations=(),
                                                finished_at=later))
        _write(other, spec, dataclasses.replace(second, metrics={**second.metrics, "auroc_mean": 0.123},
                                                finished_at=second.finished_at - 100))
        report = merge_results(dest, [other])
        assert [c.action for c in report.cells] == ["kept", "kept"]
        assert dest.cell(first.cell_id).ok and dest.cell(first.cell_id).metrics == first.metrics
        assert dest.cell(second.cell_id).metrics == second.metrics
        # a NEWER ok record replaces, with its localizer rows
        newer = dataclasses.replace(second, metrics={**second.metrics, "auroc_mean": 0.987}, finished_at=later)
        _write(other, spec, newer)
        assert {c.cell_id: c.action for c in merge_results(dest, [other]).cells}[second.cell_id] == "replaced"
        assert dest.cell(second.cell_id).metrics["auroc_mean"] == 0.987
        assert dest.cell(second.cell_id).localizations == second.localizations
        # and an ok record replaces a failed one, whatever its age
        failed = dataclasses.replace(first, status="failed", error="boom", metrics={}, localizations=(),
                                     finished_at=later)
        dest.write_result("tiny", failed, replace_localizations=True)
        with ResultsStore(runs / "shard1") as shard:
            report = merge_results(dest, [shard])
        assert {c.cell_id: c.action for c in report.cells}[first.cell_id] == "replaced"
        assert dest.cell(first.cell_id).ok and dest.cell(first.cell_id).localizations == first.localizations


def test_conflicting_grid_specs_are_refused_in_one_line(runs, run_cli, tmp_path):
    changed = _copy(runs / "shard2", tmp_path / "changed")
    with ResultsStore(changed) as store:
        spec = store.grid_spec("tiny")
        store.register_grid("tiny", {**spec, "train": {**spec["train"], "epochs": 5}}, store.grid_cell_ids("tiny"))
    dest = tmp_path / "merged"
    result = run_cli("merge", "--results", dest, runs / "shard1", changed)
    assert result.exit_code == 4
    assert result.output.count("\n") == 1 and "grid 'tiny' differs" in result.output
    assert "train.epochs: 1 vs 5" in result.output
    with ResultsStore(dest) as store:  # refused before anything was written
        assert store.statuses() == {} and store.grids() == []
    # where the grid file was read from is not part of what the grid is
    moved = _copy(runs / "shard2", tmp_path / "moved")
    with ResultsStore(moved) as store:
        spec = store.grid_spec("tiny")
        store.register_grid("tiny", {**spec, "source": "/elsewhere/tiny.yaml"}, store.grid_cell_ids("tiny"))
    assert run_cli("merge", "--results", dest, runs / "shard1", moved).exit_code == 0


def test_merge_refuses_missing_sources_and_itself(runs, run_cli, tmp_path):
    missing = run_cli("merge", "--results", tmp_path / "dest", tmp_path / "nothing")
    assert missing.exit_code == 4 and "no results store" in missing.output
    itself = run_cli("merge", "--results", runs / "shard1", runs / "shard1")
    assert itself.exit_code == 4 and "is the destination" in itself.output


def test_a_cell_that_cannot_be_written_leaves_the_destination_as_it_was(runs, tmp_path, monkeypatch):
    dest_dir = _copy(runs / "shard1", tmp_path / "dest")
    with ResultsStore(dest_dir) as dest, ResultsStore(runs / "shard1") as shard:
        cell = dest.cells("tiny")[0]
        dest.write_result("tiny", dataclasses.replace(cell, status="failed", error="old", metrics={}, localizations=()),
                          replace_localizations=True)
        marker = dest.cell_dir(cell.cell_id) / "marker.txt"
        marker.write_text("the destination's own folder")
        real_swap = _StagedFolder.swap

        def swap_then_fail(self):
            real_swap(self)
            raise OSError("disk full")

        monkeypatch.setattr(_StagedFolder, "swap", swap_then_fail)
        with pytest.raises(OSError, match="disk full"):
            merge_results(dest, [shard])
        assert dest.cell(cell.cell_id).error == "old"  # the record was rolled back
        assert marker.read_text() == "the destination's own folder"  # and its folder put back
        assert not [p for p in (dest_dir / "cells").iterdir() if p.name.startswith(".")]


def test_run_grid_shard_registers_the_whole_grid(runs):
    with ResultsStore(runs / "shard1") as one, ResultsStore(runs / "whole") as whole:
        assert one.grid_cell_ids("tiny") == whole.grid_cell_ids("tiny")
        assert set(one.statuses()) == {c for c in whole.statuses() if Shard(1, 2).contains(c)}
    with pytest.raises(UsageError):
        Shard.parse("5/4")
