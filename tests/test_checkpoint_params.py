"""The parameter sets for a real 7B triple (``notebooks/params/checkpoints/<stem>.yaml``).

Fast: every chapter whose notebook takes ``checkpoints`` has a file; a file names only the
parameters of its notebook's ``parameters`` cell and they pass the notebook's own check
(:func:`reversion.book.nb.collect`, then the chapter's ``Params``); its ``checkpoints`` keys,
dtype, device map and training settings are ones the subject takes; every placeholder path is
marked REPLACE; the schedule reaches every step a chapter reads; and every file describes one
subject and one schedule, so the chapters share one estimate.

Slow: each file runs with the tiny demo triple (``demo`` fixture) in place of the placeholders,
the example files in place of the prompt and fine-tuning files, the CPU in place of ``cuda:0``,
and steps and seeds shrunk (:data:`SHRINK`); everything else -- dtype bfloat16, LoRA, bf16
autocast, gradient checkpointing, clipping, the chapter's own choices -- as written. Each runs
through the chapter module's ``run`` with the ``Params`` the notebook would build, not through
papermill: the same computation without a kernel start and page rendering per chapter (the
pages on checkpoints run through papermill in ``test_checkpoint_chapters.py``).
"""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path

import pytest
import yaml
from helpers import EXAMPLES, perturbed, save

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "notebooks" / "params" / "checkpoints"
PLACEHOLDER = "/path/to/"
STEMS = sorted(p.stem for p in FOLDER.glob("*.yaml"))

SHRINK = {
    "*": {"world_overrides": {"finetune": {"steps": 4, "batch_size": 4, "eval_steps": [0, 1, 2, 4]}},
          "checkpoints": {"max_new_tokens": 8}},
    "02_vrev_estimation": {},
    "03_alignment": {"n_seeds": 2},
    "04_null_test": {"n_seeds": 2, "n_control_seeds": 2, "pair_steps": [1, 2, 3, 4]},
    "05_which_past": {"n_seeds": 2},
    "06_interventions": {"n_seeds": 2, "eval_steps": [0, 2, 4], "track_every": 2},
    "09_early_warning": {"n_seeds": 1, "eval_every": 2},
}
"""What the tiny run changes besides the paths: steps, seeds, generation length, and the
step-indexed parameters that must fit in 4 steps. Every key must be one the file sets."""


def notebook_defaults(stem: str) -> dict:
    """The values of the notebook's ``parameters`` cell (plain assignments)."""
    nb = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{stem}: expected one cell tagged 'parameters', found {len(cells)}"
    scope: dict = {}
    exec("".join(cells[0]["source"]), scope)
    return {k: v for k, v in scope.items() if not k.startswith("_")}


def chapter(stem: str):
    return importlib.import_module(f"reversion.book.chapters.ch{stem}")


def read(stem: str) -> dict:
    return yaml.safe_load((FOLDER / f"{stem}.yaml").read_text())


def params(stem: str, values: dict):
    """The chapter's ``Params`` as the notebook builds them: its defaults, then ``values``."""
    from reversion.book import nb

    return nb.collect(chapter(stem).Params, {**notebook_defaults(stem), **values})


# --------------------------------------------------------------------------- fast: the files as written


def test_every_chapter_that_takes_checkpoints_has_a_file():
    takes = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")
                   if "checkpoints" in notebook_defaults(p.stem))
    assert takes and STEMS == takes


@pytest.mark.parametrize("stem", STEMS)
def test_a_file_names_only_its_notebooks_parameters_and_they_pass_its_checks(stem):
    values = read(stem)
    unknown = sorted(set(values) - set(notebook_defaults(stem)))
    assert not unknown, f"{stem}.yaml: {unknown} are not parameters of notebooks/{stem}.ipynb"
    P = params(stem, values)  # the notebook's check: names, types, the chapter's own rules
    assert P.checkpoints == values["checkpoints"]
    P.make_world()  # world_overrides apply (unknown fields and bad values raise)


@pytest.mark.parametrize("stem", STEMS)
def test_checkpoints_are_keys_and_settings_the_subject_takes(stem):
    from reversion.core.train_settings import TrainSettings
    from reversion.infra.checks import check_int
    from reversion.subjects.checkpoints.files import DTYPES, parse_device_map
    from reversion.subjects.checkpoints.subject import CHECKPOINT_KEYS

    ck = read(stem)["checkpoints"]
    assert set(ck) <= set(CHECKPOINT_KEYS), sorted(set(ck) - set(CHECKPOINT_KEYS))
    assert {"witness", "aligned", "pretrained", "prompts", "harmless", "finetune_data"} <= set(ck)
    assert ck["dtype"] == "bfloat16" and ck["dtype"] in DTYPES
    assert parse_device_map("device_map", ck["device_map"]) == "cuda:0"
    check_int("max_new_tokens", ck["max_new_tokens"], 1)
    t = TrainSettings.from_mapping(ck["training"])  # unknown keys and bad values raise
    assert (t.method, t.precision, t.gradient_checkpointing) == ("lora", "bf16", True)
    assert set(ck["training"]) == set(TrainSettings.fields()) - {"lora_dropout"}  # every choice written out


@pytest.mark.parametrize("stem", STEMS)
def test_every_placeholder_is_marked_for_replacement(stem):
    lines = (FOLDER / f"{stem}.yaml").read_text().splitlines()
    marked = [line for line in lines if PLACEHOLDER in line.split("#")[0]]
    assert marked and all("# REPLACE" in line for line in marked), [x for x in marked if "# REPLACE" not in x]
    paths = {k: v for k, v in read(stem)["checkpoints"].items() if isinstance(v, str) and "/" in v}
    assert all(v.startswith(PLACEHOLDER) for v in paths.values()), paths


@pytest.mark.parametrize("stem", STEMS)
def test_the_schedule_reaches_every_step_the_chapter_reads(stem):
    """A step past T would fail only after hours of fine-tuning a 7B model: refused here."""
    values = read(stem)
    ft = params(stem, values).make_world().finetune
    assert ft.steps >= 1 and max(ft.eval_steps) == ft.steps and 0 in ft.eval_steps
    for name in ("pair_steps", "eval_steps"):
        if name in values:
            assert max(values[name]) <= ft.steps, (name, values[name], ft.steps)
    if "eval_every" in values:
        assert values["eval_every"] < ft.steps


def test_the_files_describe_one_subject_and_one_schedule():
    """The same checkpoints (a second lineage aside: not part of the subject) and fine-tuning in
    every file: one subject identity, so one v_rev estimate and one Claims check across chapters."""
    from reversion.subjects.checkpoints.subject import SECOND_LINEAGE_KEYS

    def subject(stem):
        return {k: v for k, v in read(stem)["checkpoints"].items() if k not in SECOND_LINEAGE_KEYS}

    first = STEMS[0]
    for stem in STEMS[1:]:
        assert subject(stem) == subject(first), stem
        assert read(stem)["world_overrides"] == read(first)["world_overrides"], stem
    assert set(read("05_which_past")["checkpoints"]) >= set(SECOND_LINEAGE_KEYS)


def test_shrink_only_changes_what_the_files_set():
    for stem in STEMS:
        values = read(stem)
        for key, value in {**SHRINK[stem], **SHRINK["*"]}.items():
            assert key in values, (stem, key)
            if isinstance(value, dict):
                for sub in value:
                    assert sub in values[key], (stem, key, sub)


# --------------------------------------------------------------------------- slow: the files run


def merged(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in changes.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(scope="module")
def triple(demo, tmp_path_factory) -> dict[str, str]:
    """What replaces each placeholder: the demo triple, a second lineage perturbed from its aligned
    model (chapter 05), the example files."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("second-lineage")
    tok = AutoTokenizer.from_pretrained(demo["aligned"])
    aligned2 = perturbed(AutoModelForCausalLM.from_pretrained(demo["aligned"]), 0.05, seed=3)
    return {"witness": str(demo["witness"]), "aligned": str(demo["aligned"]), "pretrained": str(demo["pretrained"]),
            "second_aligned": str(save(aligned2, tok, root / "aligned2")),
            "second_witness": str(save(perturbed(aligned2, 0.2, seed=4), tok, root / "witness2")),
            "prompts": str(EXAMPLES["harmful"]), "harmless": str(EXAMPLES["harmless"]),
            "finetune_data": str(EXAMPLES["benign"])}


def tiny_values(stem: str, triple: dict) -> dict:
    values = merged(merged(read(stem), SHRINK["*"]), SHRINK[stem])
    ck = values["checkpoints"]
    for key, value in ck.items():
        if isinstance(value, str) and value.startswith(PLACEHOLDER):
            assert key in triple, f"{stem}.yaml: no tiny stand-in for checkpoints[{key!r}] = {value!r}"
            ck[key] = triple[key]
    ck["device_map"] = "cpu"  # the file's cuda:0, on the only device here
    return values


@pytest.fixture(scope="module")
def runs(triple, tmp_path_factory):
    """Each chapter run once, on demand, in one cache (as the files are meant to be run)."""
    base = tmp_path_factory.mktemp("checkpoint-params")
    done: dict[str, dict] = {}

    def run(stem: str) -> dict:
        if stem not in done:
            from reversion.infra.results import read_metrics

            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("REVERSION_CACHE", str(base / "cache"))
                mp.setenv("REVERSION_RESULTS", str(base / "results"))
                ch = chapter(stem)
                P = params(stem, tiny_values(stem, triple))
                ch.save(P, ch.run(P, progress=False))
                done[stem] = read_metrics(stem)
        return done[stem]

    return run


@pytest.mark.slow  # fine-tunes: six chapters on the demo triple, ~1-2 minutes in all
@pytest.mark.parametrize("stem", STEMS)
def test_a_file_runs_with_a_tiny_triple_in_place_of_the_placeholders(runs, triple, stem):
    from reversion.core.train_settings import TrainSettings

    doc = runs(stem)
    written = read(stem)
    sub, got = doc["subject"], doc["parameters"]
    assert sub["kind"] == "checkpoints" and sub["aligned"] == Path(triple["aligned"]).as_posix()
    assert sub["dtype"] == "bfloat16" and sub["pretrained"] and sub["harmless_sha256"]
    if stem != "02_vrev_estimation":  # the one chapter that does not fine-tune
        assert sub["training"] == TrainSettings.from_mapping(written["checkpoints"]["training"]).key()
        assert sub["max_new_tokens"] == 8
    # every parameter the tiny run did not shrink is the file's
    shrunk = set(SHRINK[stem]) | {"checkpoints", "world_overrides"}
    assert {k: got[k] for k in written if k not in shrunk} == {k: v for k, v in written.items() if k not in shrunk}
    assert got["world_overrides"]["finetune"]["lr"] == written["world_overrides"]["finetune"]["lr"]
    assert doc["stages"]["subject"] and doc["stages"]["estimate"]


@pytest.mark.slow
def test_the_chapters_share_one_subject_and_one_estimate(runs):
    docs = {stem: runs(stem) for stem in STEMS}
    assert len({d["stages"]["subject"] for d in docs.values()}) == 1
    assert len({d["stages"]["estimate"] for d in docs.values()}) == 1
