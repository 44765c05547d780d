"""Regression tests for the faults the attack on cxrbench found (issue 18), one per item."""

from __future__ import annotations

import pytest
import yaml

from cxrbench.store import ResultsStore


def _grid(tmp_path, grid_dict):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid_dict))
    return path


def test_item1_a_rerun_exits_1_while_cells_of_the_grid_are_failed(run_cli, tmp_path, tiny_grid_dict):
    tiny_grid_dict.update(heads=["avg"], localizers=[])
    tiny_grid_dict["backbones"] = [{"name": "exploding"}]  # the toy plugin's backbone that raises
    grid, results = _grid(tmp_path, tiny_grid_dict), tmp_path / "r"
    first = run_cli("run", "--grid", grid, "--results", results, "--no-progress")
    assert first.exit_code == 1
    again = run_cli("run", "--grid", grid, "--results", results, "--no-progress")
    assert "0 ok, 0 failed, 1 already done" in again.output
    assert again.exit_code == 1 and "are failed in the store" in again.output  # before: exit 0


def test_item5_a_failed_localizer_only_pass_keeps_the_cell_record(run_cli, tmp_path, tiny_grid_dict):
    tiny_grid_dict.update(heads=["avg"], localizers=["cam"])
    grid, results = _grid(tmp_path, tiny_grid_dict), tmp_path / "r"
    assert run_cli("run", "--grid", grid, "--results", results, "--no-progress").exit_code == 0
    with ResultsStore(results) as store:
        (cell,) = store.cells("tiny")
        store.artifacts(cell.cell_id).best.write_bytes(b"tampered")  # an unreadable checkpoint
    tiny_grid_dict["localizers"] = ["cam", "gradcam"]
    grid = _grid(tmp_path, tiny_grid_dict)
    rerun = run_cli("run", "--grid", grid, "--results", results, "--no-progress")
    assert rerun.exit_code == 1
    with ResultsStore(results) as store:
        after = store.cell(cell.cell_id)
    assert after.status == "ok" and after.metrics["auroc_mean"] == cell.metrics["auroc_mean"]  # before: failed, null
    by_name = {loc.name: loc for loc in after.localizations}
    assert by_name["cam"].ok and by_name["cam"].metrics == cell.localizations[0].metrics  # the good row stays
    assert not by_name["gradcam"].ok and by_name["gradcam"].error  # the new one failed, with its reason


def _bomb(levels: int = 8, width: int = 9) -> str:
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\nname: *a{levels}\n"


def test_item3_a_yaml_alias_bomb_is_refused_fast_in_one_short_line(run_cli, tmp_path):
    import time

    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())  # 0.9 KB; before: 35 s, 4.9 GB and a 351 MB "one-line" error
    started = time.perf_counter()
    result = run_cli("validate", path)
    assert result.exit_code == 4 and time.perf_counter() - started < 5
    assert "expands to more than 100,000 values" in result.output and len(result.output) < 400


def test_item11_configuration_faults_are_usage_errors(run_cli, tmp_path):
    cases = {
        "dup.yaml": b"name: a\nname: b\n",
        "deep.yaml": b"name: x\ndatasets: " + b"[" * 1500 + b"]" * 1500 + b"\n",
        "latin1.yaml": b"name: caf\xe9\n",
        "nan.yaml": b"name: t\ndatasets: [toy]\nbackbones: [tiny]\nheads: [avg]\nlocalization: {hit_tolerance: .nan}\n",
    }
    expected = {"dup.yaml": "duplicate key 'name'", "deep.yaml": "nesting too deep", "latin1.yaml": "not UTF-8",
                "nan.yaml": "hit_tolerance must be a finite number"}
    for name, text in cases.items():
        path = tmp_path / name
        path.write_bytes(text)
        result = run_cli("validate", path)
        assert result.exit_code == 4, (name, result.output)
        assert expected[name] in result.output and result.output.count("\n") == 1, (name, result.output)


def test_long_values_are_cut_in_error_messages(run_cli, tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text("name: t\ndatasets: [toy]\nbackbones: [tiny]\nheads: [avg]\nseeds: " + "x" * 5000 + "\n")
    result = run_cli("validate", path)
    assert result.exit_code == 4 and "(cut)" in result.output and len(result.output) < 500


@pytest.mark.parametrize("signals", [("SIGTERM",), ("SIGINT", "SIGINT"), ("SIGINT", "SIGTERM", "SIGINT")])
def test_item16_signals_end_a_run_with_exit_2_and_keep_finished_cells(tmp_path, tiny_grid_dict, signals):
    # before: SIGTERM gave rc -15 and no message; a second Ctrl-C during shutdown rc -2 in 3 of 5 trials
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    tiny_grid_dict["seeds"] = [0, 1, 2, 3, 4, 5]  # far more than can finish before the signal lands
    tiny_grid_dict["localizers"] = []
    tiny_grid_dict["train"]["epochs"] = 3
    grid, results = _grid(tmp_path, tiny_grid_dict), tmp_path / "r"
    env = dict(os.environ, CXRBENCH_PLUGINS="tests.plugins.toy", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", "from cxrbench.cli import main; main()", "run", "--grid", str(grid),
           "--results", str(results), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (results / "cxrbench.sqlite").exists():
            with ResultsStore(results) as store:
                if store.statuses():
                    break
        time.sleep(0.1)
    for i, name in enumerate(signals):
        if i:
            time.sleep(0.05)  # the next one lands while the first is being handled
        proc.send_signal(getattr(signal, name))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (proc.returncode, err)
    assert "interrupted" in err
    with ResultsStore(results) as store:
        assert "ok" in store.statuses().values()


def test_item15_a_plugin_cannot_replace_a_builtin_command_or_fail_unnamed(toy_pm):
    import click

    import cxrbench
    from cxrbench import cli as cli_module
    from cxrbench.errors import PluginError
    from cxrbench.manager import build_plugin_manager
    from tests.conftest import builtin_plugins

    class Hijack:
        @cxrbench.hookimpl
        def cxrbench_add_commands(self, cli):
            cli.add_command(click.Command("run", callback=lambda: None))

    class Broken:
        @cxrbench.hookimpl
        def cxrbench_add_commands(self, cli):
            raise SystemExit(0)

    for plugin, expected in ((Hijack(), "tried to replace the built-in command 'run'"),
                             (Broken(), "cxrbench_add_commands failed: SystemExit")):
        pm = build_plugin_manager(plugins=[*builtin_plugins(), ("evil", plugin)], entry_points=False)
        cli_module.STATE.reset(pm)
        group = cli_module.cli
        saved = dict(group.commands)
        try:
            import pytest

            with pytest.raises(PluginError, match=expected) as caught:
                group._add_plugin_commands()
            assert "'evil'" in str(caught.value)
            assert group.commands["run"] is saved["run"]  # the built-in stays
        finally:
            group.commands = saved
            cli_module.STATE.reset()


def test_item11_bad_seeds_and_exclude_values_are_config_errors(run_cli, tmp_path, tiny_grid_dict):
    for change, expected in (({"seeds": [9223372036854775808]}, "seeds[0]: expected an integer from 0 to 2**32 - 1"),
                             ({"exclude": [{"backbone": [1]}]}, "exclude[0].backbone: [1] is not in")):
        grid = _grid(tmp_path, {**tiny_grid_dict, **change})
        result = run_cli("validate", grid)
        assert result.exit_code == 4 and expected in result.output, result.output


def test_item9_a_plugins_malformed_result_fails_its_cell_naming_the_plugin(tmp_path, tiny_grid_dict):
    import cxrbench
    from cxrbench.config import parse_grid
    from cxrbench.driver import run_grid
    from cxrbench.manager import build_plugin_manager
    from cxrbench.registry import Registry
    from tests.conftest import builtin_plugins
    from tests.plugins import toy

    class Malformed:
        @cxrbench.hookimpl
        def cxrbench_run_cell(self, task):
            return {"metrics": "not a mapping"}

    pm = build_plugin_manager(plugins=[*builtin_plugins(), ("toy", toy), ("malformed", Malformed())],
                              entry_points=False)
    tiny_grid_dict.update(heads=["avg"], localizers=[])
    grid = parse_grid(tiny_grid_dict, Registry.from_plugin_manager(pm))
    with ResultsStore(tmp_path) as store:
        summary = run_grid(grid, pm, store)
        (cell,) = store.cells(grid.name)
    assert summary.failed == 1 and cell.status == "failed"  # before: stored as ok, every leaderboard broken
    assert "plugin 'malformed'" in cell.error and "not a CellResult" in cell.error


def test_item10_a_zero_byte_store_is_an_error_not_an_empty_store(tmp_path):
    import pytest

    from cxrbench.errors import UsageError

    (tmp_path / "cxrbench.sqlite").write_bytes(b"")
    with pytest.raises(UsageError, match="empty file, not a cxrbench results database"):
        ResultsStore(tmp_path)


def test_item7_a_fifo_named_like_an_image_is_skipped_with_a_warning_not_read(tmp_path):
    import os
    import threading

    import pytest

    from tests.test_filedataset import PairsDataset, load, pairs_root

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    for follow in (False, True):
        root = pairs_root(tmp_path / f"pairs{follow}", absent=("images/e.png",))
        os.mkfifo(root / "images" / "e.png")  # before: opening it blocked dry-run, prepare and run forever
        dataset, warnings = load(PairsDataset, root, follow_symlinks=follow)
        done = threading.Event()

        def build(dataset=dataset, done=done):
            dataset.split("test")
            done.set()

        threading.Thread(target=build, daemon=True).start()
        assert done.wait(20), "building the splits blocked on the FIFO"
        assert dataset.split("test").ids == ["images/f.png"]  # the FIFO is not an image of the split
        assert any("not regular files" in w and "e.png" in w for w in warnings), warnings


def test_item14_an_image_claiming_too_many_pixels_is_refused_by_name_before_decoding(tmp_path):
    import struct
    import zlib

    import pytest

    from cxrbench.imageio import ImageReadError, read_grey

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 200_000, 200_000, 8, 0, 0, 0, 0)  # claims 200000 x 200000 grey pixels
    path = tmp_path / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IEND", b""))
    with pytest.raises(ImageReadError, match=r"huge\.png: 200000 x 200000 pixels is above the limit"):
        read_grey(path)


def test_item15_sys_exit_at_import_is_a_plugin_error_naming_it(monkeypatch, tmp_path):
    from cxrbench.errors import PluginError
    from cxrbench.manager import build_plugin_manager

    (tmp_path / "cxrbench_test_exits.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CXRBENCH_PLUGINS", "cxrbench_test_exits")
    import pytest

    with pytest.raises(PluginError, match=r"plugin 'cxrbench_test_exits'.*SystemExit"):
        build_plugin_manager()


def test_item15_bad_matches_and_non_dataclass_options_name_the_plugin():
    import pytest

    from cxrbench.errors import PluginError
    from cxrbench.interfaces import PoolingHead
    from cxrbench.registry import Registry

    class NotADataclass:
        pass

    class Odd(PoolingHead):
        NAME = "odd"
        Options = NotADataclass

    with pytest.raises(PluginError, match=r"plugin 'evil': .*Odd\.Options must be a dataclass"):
        Registry().add("head", Odd, "evil")

    class Family(PoolingHead):
        NAME = "family"

        @classmethod
        def matches(cls, name):
            raise RuntimeError("boom")

    registry = Registry()
    registry.add("head", Family, "evil")
    with pytest.raises(PluginError, match=r"plugin 'evil': .*Family\.matches\('other'\) failed: RuntimeError: boom"):
        registry.get("head", "other")


def test_item15_control_characters_in_plugin_columns_are_shown_not_obeyed(toy_pm, run_cli, tmp_path,
                                                                           tiny_grid_dict):
    import yaml

    import cxrbench
    from cxrbench.reporting.rows import add_plugin_columns, printable, rows_from_cells
    from cxrbench.store import ResultsStore

    assert printable("ok\x1b]0;pwned\x07\n") == "ok\\x1b]0;pwned\\x07\\n"

    class Columns:
        @cxrbench.hookimpl
        def cxrbench_leaderboard_columns(self, records):
            return {"note\x1b[2J": ["\x1b[31mred\x1b[0m"] * len(records)}

    tiny_grid_dict.update(heads=["avg"], localizers=[])
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid_dict))
    assert run_cli("run", "--grid", grid, "--results", tmp_path / "r", "--no-progress").exit_code == 0
    toy_pm.register(Columns(), name="columns")
    try:
        with ResultsStore(tmp_path / "r") as store:
            rows = add_plugin_columns(rows_from_cells(store.cells()), toy_pm)
    finally:
        toy_pm.unregister(name="columns")
    assert rows[0].columns == {"note\\x1b[2J": "\\x1b[31mred\\x1b[0m"}


@pytest.fixture
def builtin_cli():
    """The command line with every installed plugin (the phantom and NIH datasets among them)."""
    from cxrbench.manager import build_plugin_manager
    from tests.conftest import cli_with

    with cli_with(build_plugin_manager()) as invoke:
        yield invoke


def test_item11_a_huge_num_images_fails_validate_not_memory(builtin_cli, tmp_path):
    run_cli = builtin_cli
    path = tmp_path / "big.yaml"
    path.write_text("name: big\ndatasets: [{name: phantom, options: {num_images: 1000000000000}}]\n"
                    "backbones: [resnet18]\nheads: [avg]\n")
    result = run_cli("validate", path)  # before: ok, then MemoryError allocating 7.28 TiB in --dry-run
    assert result.exit_code == 4 and "num_images must be between 1 and 10,000,000" in result.output


def test_item11_a_non_utf8_label_table_is_one_line_naming_it(builtin_cli, tmp_path):
    run_cli = builtin_cli
    root = tmp_path / "nih"
    from cxrbench_phantom.export import write_nih_layout

    write_nih_layout(root, num_images=40, image_size=64, seed=0)
    table = root / "Data_Entry_2017_v2020.csv"
    lines = table.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"M", b"\xe9", 1)  # one Latin-1 byte
    table.write_bytes(b"\n".join(lines))
    grid = tmp_path / "g.yaml"
    grid.write_text(f"name: g\ndatasets: [{{name: nih, options: {{root: {root}}}}}]\nbackbones: [resnet18]\n"
                    "heads: [avg]\n")
    result = run_cli("run", "--grid", grid, "--results", tmp_path / "r", "--dry-run")
    assert result.exit_code == 4, result.output  # before: internal error: UnicodeDecodeError (exit 3)
    assert f"{table}: not UTF-8 text" in result.output and result.output.count("\n") == 1


def test_item14_one_unreadable_image_is_left_out_not_the_whole_cell(run_cli, tmp_path, tiny_grid_dict):
    import json

    import yaml

    tiny_grid_dict.update(heads=["avg"], localizers=[])
    tiny_grid_dict["datasets"][0]["options"]["unreadable"] = [3]  # a training image (rows 0-31 train)
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid_dict))
    prepared = run_cli("prepare", "--grid", grid, "--results", tmp_path / "r")
    assert prepared.exit_code == 1 and "1 unreadable" in prepared.output, prepared.output  # reported, skipped
    result = run_cli("run", "--grid", grid, "--results", tmp_path / "r", "--no-progress")
    assert result.exit_code == 0, result.output  # before: the cell failed although prepare had skipped it
    assert "split 'train': 1 of 32 images cannot be read and are left out (first:" in result.output
    (record,) = json.loads(run_cli("leaderboard", "--results", tmp_path / "r", "--format", "json").output)
    assert record["status"] == "ok"
