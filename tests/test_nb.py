"""Notebook parameters: unknown, missing and mistyped names are refused before any work."""

from __future__ import annotations

import typing
from dataclasses import dataclass

import pytest

from reversion.book.nb import collect


@dataclass(frozen=True)
class Schema:
    world: str
    n_seeds: int
    lr: float
    verbose: bool
    steps: list[int]
    overrides: dict
    grid: tuple[int, ...]


@dataclass(frozen=True)
class WithOptional:
    cap: typing.Optional[int]


@dataclass(frozen=True)
class WithPep604:
    cap: int | None


GOOD = {"world": "smoke", "n_seeds": 3, "lr": 1e-3, "verbose": False, "steps": [0, 1, 5],
        "overrides": {"finetune": {"lr": 3e-4}}, "grid": (0, 2)}


def good(**changes):
    return {**GOOD, **changes}


def test_valid_values_build_the_schema():
    p = collect(Schema, GOOD)
    assert isinstance(p, Schema)
    assert p == Schema("smoke", 3, 1e-3, False, [0, 1, 5], {"finetune": {"lr": 3e-4}}, (0, 2))


def test_unknown_name_is_listed_with_the_accepted_names():
    with pytest.raises(ValueError) as e:
        collect(Schema, good(n_seed=3, zzz=1))
    msg = str(e.value)
    assert "'n_seed'" in msg and "'zzz'" in msg
    for name in GOOD:
        assert name in msg.split("accepts:")[1]


def test_missing_name():
    values = dict(GOOD)
    del values["lr"]
    with pytest.raises(ValueError, match=r"missing parameter\(s\) 'lr'"):
        collect(Schema, values)


@pytest.mark.parametrize("name, value", [
    ("n_seeds", "3"),        # str for int
    ("n_seeds", True),       # bool for int
    ("n_seeds", 3.0),        # float for int
    ("lr", "1e-3"),          # str for float
    ("lr", False),           # bool for float
    ("lr", None),
    ("world", 1),            # int for str
    ("verbose", 1),          # int for bool
    ("verbose", "yes"),
    ("steps", "0,1,5"),      # str for list
    ("steps", [0, "1"]),     # wrong element type
    ("steps", [0, True]),    # bool element for int
    ("steps", [0, 1.5]),
    ("overrides", []),       # list for dict
    ("overrides", "lr=3e-4"),
    ("grid", [0, "a"]),
])
def test_wrong_type_names_the_parameter(name, value):
    with pytest.raises(ValueError, match=rf"parameter '{name}' must be"):
        collect(Schema, good(**{name: value}))


def test_int_accepted_for_float_and_sequences_for_lists():
    p = collect(Schema, good(lr=1))
    assert p.lr == 1
    assert collect(Schema, good(steps=(0, 1))).steps == (0, 1)
    assert collect(Schema, good(steps=[])).steps == []
    assert collect(Schema, good(grid=[0, 1, 2])).grid == [0, 1, 2]
    assert collect(Schema, good(overrides={})).overrides == {}


def test_optional_typing_union():
    assert collect(WithOptional, {"cap": None}).cap is None
    assert collect(WithOptional, {"cap": 4}).cap == 4
    with pytest.raises(ValueError, match="parameter 'cap'"):
        collect(WithOptional, {"cap": "4"})


def test_optional_pep604_union():
    assert collect(WithPep604, {"cap": None}).cap is None
    assert collect(WithPep604, {"cap": 4}).cap == 4
    with pytest.raises(ValueError, match="parameter 'cap'"):
        collect(WithPep604, {"cap": "4"})


def test_schema_post_init_runs():
    @dataclass(frozen=True)
    class Checked:
        n: int

        def __post_init__(self):
            if self.n < 1:
                raise ValueError(f"n must be >= 1, got {self.n}")

    assert collect(Checked, {"n": 2}).n == 2
    with pytest.raises(ValueError, match="n must be >= 1"):
        collect(Checked, {"n": 0})

