"""Every shell command in the README works as written, or says why a test cannot run it here.

Each fenced ``bash`` block of README.md is split into commands. ``cxrbench`` commands run
in-process against a results folder made by a shrunken copy of the README's own
quickstart grid (same name, components and localizers; fewer, smaller images and one
epoch), in a folder laid out as the README assumes (``results/`` in the working
directory). Commands a test must not run (installs, the test suite itself, a tracking
server) are listed in :data:`NOT_RUN` with the reason and checked otherwise where they can
be. A new README command that is in neither group fails the test, so the README cannot
grow an untested command.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, cli_with

README = REPO / "README.md"

NOT_RUN = {
    "pip install": "installs packages (CI runs the README's install command itself)",
    "pytest": "the test suite or the benchmarks (CI runs the suite; benchmark options are checked below)",
    "nice -n 10 python -m pytest": "the benchmarks (options checked below)",
    "ruff check": "the linter (CI's job)",
    "export ": "environment for the MLflow example (tested in tests/test_mlflow_plugin.py)",
    "cxrbench score": "needs a CheXlocalize folder and a maps file (tests/test_mask_scoring.py runs the command)",
}


def readme_commands() -> list[str]:
    """Every command of every fenced bash block, continuation lines joined, comments dropped."""
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if not line or line.startswith("#"):
                continue
            commands.extend(part.strip() for part in line.split("&&"))
    return commands


def _reason_not_run(command: str) -> str | None:
    return next((why for prefix, why in NOT_RUN.items() if command.startswith(prefix)), None)


def test_every_readme_command_is_run_or_has_a_reason():
    commands = readme_commands()
    assert any(c.startswith("cxrbench leaderboard") for c in commands)
    untested = [c for c in commands if not c.startswith("cxrbench ") and _reason_not_run(c) is None]
    assert not untested, f"README commands neither run by this test nor listed in NOT_RUN: {untested}"


def test_readme_benchmark_options_exist():
    # the benchmark commands are not run here (minutes each), but every option they pass is one
    # that ``pytest benchmarks`` knows (benchmarks/conftest.py's own and pytest-benchmark's)
    import subprocess
    import sys

    options = {flag.split("=")[0] for c in readme_commands() if "benchmarks" in c
               for flag in re.findall(r"(--[a-z][\w=-]*)", c)}
    assert {"--backbones", "--benchmark-only"} <= options, options
    known = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "--help", "-p", "no:cacheprovider"],
                           cwd=REPO, capture_output=True, text=True, timeout=120).stdout
    missing = sorted(o for o in options if not re.search(rf"(^|[\s,]){re.escape(o)}([=\s,]|$)", known, re.M))
    assert not missing, f"README passes {missing} to the benchmarks, which do not define them"


@pytest.fixture(scope="module")
def readme_folder(tmp_path_factory):
    """A working folder with ``results/`` holding a small run of the quickstart grid."""
    from cxrbench.manager import build_plugin_manager

    folder = tmp_path_factory.mktemp("readme")
    grid = yaml.safe_load((REPO / "grids" / "quickstart.yaml").read_text(encoding="utf-8"))
    grid["datasets"][0]["options"].update(num_images=96, image_size=64)
    grid["train"].update(epochs=1, batch_size=16)
    grid["evaluation"] = {"bootstrap": 20}
    (folder / "grids").mkdir()
    (folder / "grids" / "quickstart.yaml").write_text(yaml.safe_dump(grid), encoding="utf-8")
    pm = build_plugin_manager()
    with cli_with(pm) as invoke:
        result = invoke("run", "--grid", folder / "grids" / "quickstart.yaml", "--results", folder / "results",
                        "--no-progress")
    assert result.exit_code == 0, result.output
    return folder, pm


def _run_cxrbench_commands(folder: Path, pm, monkeypatch) -> dict[str, object]:
    monkeypatch.chdir(folder)
    outcomes = {}
    with cli_with(pm) as invoke:
        for command in readme_commands():
            if not command.startswith("cxrbench ") or _reason_not_run(command):
                continue
            args = shlex.split(command)[1:]
            if args[:1] == ["run"]:
                args.append("--dry-run")  # the quickstart itself is the fixture's run, at a smaller size
            outcomes[command] = invoke(*args)
    return outcomes


def test_readme_cxrbench_commands_work_as_written(readme_folder, monkeypatch):
    folder, pm = readme_folder
    outcomes = _run_cxrbench_commands(folder, pm, monkeypatch)
    assert len(outcomes) >= 8, list(outcomes)
    for command, result in outcomes.items():
        assert result.exit_code == 0, f"{command}\n{result.output}"
    by_start = {c.split("  ")[0]: r.output for c, r in outcomes.items()}
    board = outcomes["cxrbench leaderboard --grid quickstart"].output
    assert "Classification leaderboard: quickstart" in board and "Localization leaderboard" in board
    markdown = next(o for c, o in by_start.items() if "--format markdown" in c)
    assert markdown.lstrip().startswith("|")
    grouped = next(o for c, o in by_start.items() if "--group-by backbone" in c)
    assert "Localization leaderboard" in grouped  # --group-by keeps the localization table
    over = next(o for c, o in by_start.items() if "--over seed" in c)
    assert "Localization leaderboard" in over
    assert (folder / "report.html").is_file() and (folder / "report.html").stat().st_size > 10_000
    # the README's quickstart backbones are listed by `cxrbench list backbones`
    listed = next(o for c, o in by_start.items() if c.startswith("cxrbench list backbones"))
    for backbone in ("resnet18", "resnet10t"):
        assert backbone in listed, backbone
    # the quickstart command, as a dry run in the same folder: everything is already done
    dry = outcomes["cxrbench run --grid grids/quickstart.yaml"].output
    assert "3 cells: 0 to train, 3 done" in dry, dry
