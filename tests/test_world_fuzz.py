"""Every world the configuration accepts builds the whole book.

Valid ``world_overrides`` at their bounds on the smoke world (whose fine-tuning is already shorter
than step 20) -- a helpful phase of no steps and no dose (every lineage's theta_H is theta_P), a
helpful phase without a harmful request (the main lineage is the no-witness one, with nothing to
mark), one of harmful requests only, no pretraining -- and every organism chapter executed with
each through papermill, as ``make book`` runs them: no traceback, and where a measurement is
impossible the chapter and the claims table say "not testable here". (A safety phase of no steps
is refused by the configuration: theta_S would be theta_H.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reversion.analysis.verdicts import NOT_TESTABLE
from reversion.book import build
from reversion.subjects.organism.worlds import make_world

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "notebooks" / "params" / "smoke"

WORLDS = {
    "no helpful phase": ({"history": {"helpful": {"steps": 0}}, "doses": []}, {"H-1", "H-2", "H-3"}),
    "no harmful request to help with": ({"history": {"helpful": {"harmful_fraction": 0.0}}}, {"H-1", "H-2"}),
    "harmful requests only": ({"history": {"helpful": {"harmful_fraction": 1.0}}}, set()),
    "no pretraining": ({"history": {"pretrain": {"steps": 0}}}, set()),
}
"""Name -> (overrides, the rows that must read "not testable here")."""
STEMS = ["01_training_history", "02_vrev_estimation", "03_alignment", "04_null_test", "05_which_past",
         "06_interventions", "07_claims"]


def _params(overrides: dict) -> dict:
    import yaml

    out = {}
    for stem in STEMS:
        f = SMOKE / f"{stem}.yaml"
        p = yaml.safe_load(f.read_text()) if f.is_file() else {}
        if stem != "07_claims":
            p = {**p, "world_overrides": overrides}
            p["n_histories"] = 2
        if stem == "05_which_past" and "doses" in overrides:  # the chapter's own parameter sets the world's
            p["doses"] = overrides["doses"]
        out[stem] = p
    return out


def test_the_fuzzed_worlds_are_valid():
    for o, _ in WORLDS.values():
        make_world("smoke", o)  # each is a world the configuration accepts


@pytest.mark.slow
@pytest.mark.parametrize("name", list(WORLDS))
def test_every_chapter_builds_in_a_world_at_its_bounds(name, isolated, tmp_path):
    overrides, untestable = WORLDS[name]
    runs = build.execute_notebooks(stems=STEMS, out_dir=tmp_path / "executed", parameters=_params(overrides),
                                   force=True, echo=None)
    assert [r.stem for r in runs] == STEMS and all(r.executed for r in runs)
    claims = json.loads((isolated / "results" / "07_claims" / "metrics.json").read_text())["metrics"]["claims"]
    assert len(claims) == 16
    for stem in STEMS:  # no error output anywhere
        cells = json.loads((tmp_path / "executed" / f"{stem}.ipynb").read_text())["cells"]
        assert not [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"], stem
    assert {k for k, c in claims.items() if c["verdict"] == NOT_TESTABLE} == untestable | {"V2-f"}
