"""Malformed grids never crash with a traceback: exit code 4 and one line (hypothesis)."""

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cxrbench import cli as cli_module
from tests.conftest import TINY_GRID

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=6))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                      max_leaves=6)
keys = st.sampled_from([*TINY_GRID.keys(), "localization", "executor", "exclude", "bogus"])


def mutated_grid():
    """The tiny grid with one key replaced by an arbitrary value, or nested options broken."""
    return st.one_of(
        st.builds(lambda k, v: {**TINY_GRID, k: v}, keys, values),
        st.builds(lambda v: {**TINY_GRID, "train": {**TINY_GRID["train"], "epochs": v}}, values),
        st.builds(lambda v: {**TINY_GRID, "datasets": [{"name": "toy", "options": v}]}, values),
        st.builds(lambda v: {**TINY_GRID, "heads": v}, st.lists(values, max_size=3)),
        st.builds(lambda k: {key: val for key, val in TINY_GRID.items() if key != k}, keys),
    )


def check(runner, path, text):
    path.write_text(text)
    result = runner.invoke(cli_module.cli, ["validate", str(path)])
    assert result.exit_code in (0, 4), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 4:
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), result.output


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(grid=mutated_grid())
@example(grid={**TINY_GRID, "datasets": [{"name": "toy", "options": {"\x1e": None}}]})  # a key that splits lines
@example(grid={**TINY_GRID, "datasets": [{"name": "toy", "options": {"[red]x": 1}}]})  # a key that looks like markup
def test_malformed_grids_give_one_line(grid, toy_pm, tmp_path):
    cli_module.STATE.reset(toy_pm)
    try:
        check(CliRunner(), tmp_path / "g.yaml", yaml.safe_dump(grid))
    finally:
        cli_module.STATE.reset()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet="{}[]:,-'\"\n #&*!|>abc01", max_size=40))
def test_broken_yaml_gives_one_line(text, toy_pm, tmp_path):
    cli_module.STATE.reset(toy_pm)
    try:
        check(CliRunner(), tmp_path / "g.yaml", text)
    finally:
        cli_module.STATE.reset()
