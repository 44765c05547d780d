import dataclasses
from typing import Literal

import pytest

from cxrbench.errors import ConfigError
from cxrbench.options import coerce, options_to_dict, parse_options


@dataclasses.dataclass(frozen=True)
class Opts:
    size: int = 4
    rate: float = 0.5
    mode: Literal["a", "b"] = "a"
    names: tuple[str, ...] | None = None
    flag: bool = False
    path: bool | str = False

    def validate(self):
        if self.size < 1:
            raise ValueError("size must be positive")


def test_defaults_and_types():
    o = parse_options(Opts, {"size": 3, "rate": 1, "names": ["x", "y"], "path": "w.pth"}, "p", "thing")
    assert o == Opts(size=3, rate=1.0, names=("x", "y"), path="w.pth")
    assert isinstance(o.rate, float)
    assert options_to_dict(o)["names"] == ["x", "y"]
    assert parse_options(Opts, None, "p", "thing") == Opts()


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"bogus": 1}, "p.bogus: unknown option for thing; valid options: flag, mode, names, path, rate, size"),
        ({"size": "3"}, "p.size: expected an integer, got '3'"),
        ({"size": True}, "p.size: expected an integer"),
        ({"mode": "c"}, "p.mode: expected one of 'a' | 'b'"),
        ({"names": "x"}, "p.names: expected list of str | null"),
        ({"names": ["x", 2]}, "expected list of str | null"),
        ({"size": 0}, "p.size: thing: size must be positive"),
        ([1, 2], "p: options of thing must be a mapping"),
    ],
)
def test_errors_are_one_line_with_path(raw, fragment):
    with pytest.raises(ConfigError) as info:
        parse_options(Opts, raw, "p", "thing")
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_required_option():
    @dataclasses.dataclass(frozen=True)
    class Req:
        root: str

    with pytest.raises(ConfigError, match="needs option 'root'"):
        parse_options(Req, {}, "datasets[0].options", "dataset 'nih'")


def test_coerce_bool_vs_literal_true():
    assert coerce(True, Literal[True, "auto"], "x") is True
    with pytest.raises(ConfigError):
        coerce(1, Literal[True, "auto"], "x")


def test_an_option_typo_gets_a_did_you_mean():
    from cxrbench.config import TrainSpec
    from cxrbench.errors import ConfigError
    from cxrbench.options import parse_options

    with pytest.raises(ConfigError, match=r"train\.epocs: unknown option for train; did you mean 'epochs'\?"):
        parse_options(TrainSpec, {"epocs": 3}, "train", "train")
