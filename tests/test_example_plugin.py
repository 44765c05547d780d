"""The README's third-party plugin example: it matches the files, installs as an entry point, runs in a grid."""

import importlib.metadata
import json
import re
from pathlib import Path

import yaml
from click.testing import CliRunner

from cxrbench import cli as cli_module
from cxrbench.manager import build_plugin_manager

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cxrbench-gem"


def readme_blocks():
    text = (REPO / "README.md").read_text()
    return re.findall(r"```(?:python|toml)\n(.*?)```", text, flags=re.S)


def test_readme_shows_the_example_verbatim():
    blocks = readme_blocks()
    assert (EXAMPLE / "cxrbench_gem.py").read_text() in blocks
    assert (EXAMPLE / "pyproject.toml").read_text() in blocks
    assert (EXAMPLE / "tests" / "test_gem.py").read_text() in blocks


def test_the_example_packages_own_tests_pass():
    # what the README tells a plugin author to write: the contract checks and a benchmark
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(EXAMPLE), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
                           "tests/test_gem.py"], cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert re.search(r"\d+ passed", done.stdout), done.stdout[-1000:]


def test_example_plugin_runs_in_a_grid(monkeypatch, tmp_path, tiny_grid_dict):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    entry = importlib.metadata.EntryPoint(name="gem", value="cxrbench_gem", group="cxrbench")
    builtin = list(importlib.metadata.entry_points(group="cxrbench"))
    monkeypatch.setattr("cxrbench.manager._entry_points", lambda: sorted([*builtin, entry], key=lambda e: e.name))
    from tests.plugins import toy

    pm = build_plugin_manager(plugins=[("toy", toy)])
    assert not pm.infos["gem"].builtin
    cli_module.STATE.reset(pm)
    try:
        tiny_grid_dict["heads"] = [{"name": "gem", "options": {"p": 4}}]
        grid = tmp_path / "gem.yaml"
        grid.write_text(yaml.safe_dump(tiny_grid_dict))
        runner = CliRunner()
        result = runner.invoke(cli_module.cli, ["run", "--grid", str(grid), "--results", str(tmp_path / "r"),
                                                "--no-progress"])
        assert result.exit_code == 0, result.output
        records = json.loads(runner.invoke(cli_module.cli, ["leaderboard", "--results", str(tmp_path / "r"),
                                                            "--format", "json"]).output)
        assert {r["head"] for r in records} == {"gem"}  # the grid's only head: its short label
        assert all(r["status"] == "ok" and "iou_mean" in r["metrics"] for r in records)
        listed = runner.invoke(cli_module.cli, ["plugins"]).output
        assert "gem" in listed and "third-party" in listed
    finally:
        cli_module.STATE.reset()
