"""Notebook parameters: unknown, missing and mistyped names are refused before any work; the
parameters that chapters 02-05's ``checkpoints`` mapping replaced are refused with the new form."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path

import pytest

from reversion.book.chapters import ch02_vrev_estimation, ch03_alignment, ch04_null_test, ch06_interventions
from reversion.book.nb import collect
from reversion.subjects.checkpoints.subject import CHECKPOINT_KEYS


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



# --------------------------------------------------------------------------- chapters 02-05: checkpoints

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = {"02_vrev_estimation": ch02_vrev_estimation, "03_alignment": ch03_alignment, "04_null_test": ch04_null_test,
            "06_interventions": ch06_interventions}


def notebook_defaults(stem: str) -> dict:
    """The values of a chapter notebook's own parameters cell."""
    import nbformat

    nb = nbformat.read(str(ROOT / "notebooks" / f"{stem}.ipynb"), as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    scratch: dict = {}
    exec(cell.source, scratch)
    return {k: v for k, v in scratch.items() if not k.startswith("_")}


@pytest.mark.parametrize("stem", CHAPTERS)
def test_chapter_defaults_build_and_checkpoints_default_to_the_organism(stem):
    values = notebook_defaults(stem)
    assert values["checkpoints"] == {}
    P = collect(CHAPTERS[stem].Params, values)
    assert P.checkpoints == {}
    assert "checkpoints" not in P.recorded()  # organism metrics are unchanged by the parameter
    with_ckpt = collect(CHAPTERS[stem].Params, {**values, "checkpoints": {"witness": "w"}})
    assert with_ckpt.recorded()["checkpoints"] == {"witness": "w"}
    with pytest.raises(ValueError, match=r"parameter 'checkpoints' must be"):
        collect(CHAPTERS[stem].Params, {**values, "checkpoints": "path/to/witness"})


@pytest.mark.parametrize("stem", CHAPTERS)
@pytest.mark.parametrize("old", CHECKPOINT_KEYS)
def test_old_checkpoint_parameter_shows_the_new_form(stem, old):
    """Each of the ten parameters that ``checkpoints`` replaced is refused with the new form,
    alone or among the chapter's own values (not as a bare unknown name)."""
    schema = CHAPTERS[stem].Params
    for values in ({**notebook_defaults(stem), old: "x"}, {old: "x"}):
        with pytest.raises(ValueError) as e:
            collect(schema, values)
        msg = str(e.value)
        assert f"parameter {old!r} is now a key of 'checkpoints'" in msg
        assert "checkpoints={" in msg and repr(old) in msg.split("checkpoints={")[1]  # the new form
        assert "unknown parameter" not in msg
