"""A catalogue of bad inputs: each is refused with a message naming the problem, and writes nothing.

One row per bad input; ``pytest -k <id>`` runs one, and the test ids read as the catalogue
(``test_bad_input_is_refused_and_writes_nothing[cli-estimate-different-widths]``). Every
case runs with ``REVERSION_CACHE`` and ``REVERSION_RESULTS`` in a temporary folder and
asserts (a) the error, matched on the parameter / flag it names or the specific issue, and
(b) that neither folder holds a file afterwards (for the command line: that ``--out`` does
not exist either). Package cases call an entry point that *would* write -- a chapter's
``run`` + ``save``, ``finetune``, ``train_history``, ``reversion estimate|track`` -- so a
case whose validation were removed would do work, write, and fail here.

Categories (prefix of the id):

* ``nb-``  -- notebooks through papermill (a kernel start each, so few): an unknown
  parameter (papermill only warns; ``reversion.book.nb.collect`` refuses it), a wrong type,
  values out of range in a chapter's ``Params`` (chapter 04's alpha, chapter 05's
  intervention strength and layers).
* ``api-`` -- the package: worlds and their overrides (unknown world, unknown field,
  wrong types, n_seeds 0), configurations (T < 1, negative learning rate), chapter
  parameters (NaN strength, NaN alpha, n_seeds 0), chapters 02-05's ``checkpoints``
  mapping (an old parameter name, a missing or unknown key, no fine-tuning set where the
  chapter fine-tunes, checkpoints of different widths: the message names the key,
  ``checkpoints['aligned']``), and the geometry of activations: NaN or empty activations
  given to ``reversion.core.activations``, ``reversion.core.directions``,
  ``reversion.core.drift`` and ``reversion.core.stats``, a layer out of range, a zero-norm
  v_rev (identical witness and aligned checkpoints, through stage ``estimate``, which caches).
* ``cli-`` -- ``reversion estimate|track`` in-process through ``reversion.cli.main``
  (exit status 2, the message names the flag): missing, corrupt (garbage config.json,
  truncated weights) and mismatched checkpoints (width, family), empty and missing
  prompt files, a layer out of range, identical checkpoints (zero-norm v_rev), too few
  bootstrap draws, a missing
  direction file, one with the wrong layer count, one whose v_rev is zero or NaN at its layer.

Also part of this catalogue, by reference: the seven papermill cases of chapter 01 in
``tests/test_reproducibility.py::test_bad_parameters_fail_before_any_work`` (unknown
parameter ``seed``, ``n_seeds`` of a wrong type, unknown world, negative ``finetune.lr``,
``finetune.steps`` 0, ``n_embd`` not divisible by ``n_head``, unknown task).
"""

from __future__ import annotations

import importlib
import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import papermill as pm
import pytest
import torch
import yaml

from reversion.book import nb
from reversion.cli import main
from reversion.core import stats
from reversion.core.directions import Directions, directions_from_acts, unit_rows
from reversion.core.drift import alignment

from helpers import LAYERS

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = {stem: f"ch{stem}" for stem in ("01_training_history", "02_vrev_estimation", "03_alignment",
                                            "04_null_test", "06_interventions")}
"""Notebook stem -> its page module (``reversion.book.chapters.ch<stem>``)."""
NAN = float("nan")


# --------------------------------------------------------------------------- helpers


def notebook_defaults(stem: str) -> dict:
    """The notebook's parameters cell, evaluated."""
    cells = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())["cells"]
    (cell,) = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    ns: dict[str, Any] = {}
    exec("".join(cell["source"]), {}, ns)
    return ns


def smoke(stem: str) -> dict:
    return yaml.safe_load((ROOT / "notebooks" / "params" / "smoke" / f"{stem}.yaml").read_text())


@dataclass
class Ctx:
    """What a case may use: its temporary folder, the shared tiny models (built on first use)."""

    tmp: Path
    get_tiny: Callable[[], Any]
    track: bool = False
    """A ``reversion track`` command line (its ``--out`` is a CSV file)."""

    @property
    def tiny(self):
        return self.get_tiny()

    @property
    def out(self) -> Path:
        """The ``--out`` file of a command-line case."""
        return self.tmp / "out" / ("track.csv" if self.track else "v_rev.safetensors")


@dataclass(frozen=True)
class Case:
    id: str
    attempt: Callable[[Ctx], Any]
    """Does the bad thing: runs a notebook, calls the package, or returns a command line."""
    match: str
    """Regex the error message must match (for the command line: its stderr)."""
    error: type[BaseException] = ValueError
    marks: tuple = field(default=())

    @property
    def kind(self) -> str:
        return self.id.split("-")[0]


# --------------------------------------------------------------------------- notebooks


def notebook(stem: str, **changes) -> Callable[[Ctx], Any]:
    def attempt(ctx: Ctx):
        pm.execute_notebook(str(ROOT / "notebooks" / f"{stem}.ipynb"), str(ctx.tmp / "out.ipynb"),
                            parameters={**smoke(stem), **changes}, kernel_name="python3", cwd=str(ROOT),
                            progress_bar=False, log_output=False)
    return attempt


def nb_case(id: str, stem: str, changes: dict, match: str) -> Case:
    return Case(id, notebook(stem, **changes), match, pm.PapermillExecutionError, (pytest.mark.notebooks,))


# --------------------------------------------------------------------------- package


def chapter(stem: str, **changes) -> Callable[[Ctx], Any]:
    """The chapter as its notebook runs it -- parameters cell, smoke values, ``changes``;
    ``nb.collect``; ``run`` then ``save`` -- without a kernel. A callable value is called
    with the case's context (e.g. for the tiny models' paths)."""
    def attempt(ctx: Ctx):
        ch = importlib.import_module(f"reversion.book.chapters.{CHAPTERS[stem]}")
        given = {k: v(ctx) if callable(v) else v for k, v in changes.items()}
        P = nb.collect(ch.Params, {**notebook_defaults(stem), **smoke(stem), **given})
        return ch.save(P, ch.run(P, progress=False))
    return attempt


def tiny_checkpoints(**changes) -> Callable[[Ctx], dict]:
    """The chapters' ``checkpoints`` mapping for the tiny Llama pair, with ``changes``."""
    def value(ctx: Ctx) -> dict:
        t = ctx.tiny
        return {"witness": str(t.llama.witness), "aligned": str(t.llama.aligned), "prompts": str(t.harmful),
                **changes}
    return value


def estimate_on_identical_checkpoints(ctx: Ctx):
    """Stage ``estimate`` (which caches what it measures) on witness = aligned."""
    from reversion.stages.estimate import estimate
    from reversion.subjects.checkpoints.subject import from_parameters

    same = str(ctx.tiny.llama.aligned)
    subject = from_parameters({"witness": same, "aligned": same, "prompts": str(ctx.tiny.harmful)})
    return estimate(subject, n_boot=4, progress=False)


def finetune_with(**changes) -> Callable[[Ctx], Any]:
    def attempt(ctx: Ctx):
        from reversion.stages.finetune import finetune
        from reversion.subjects.organism.worlds import make_world

        world = make_world("smoke")
        return finetune(world.history, world.finetune_config(0, **changes), progress=False)
    return attempt


def history_with(overrides: dict) -> Callable[[Ctx], Any]:
    def attempt(ctx: Ctx):
        from reversion.subjects.organism.history import train_history
        from reversion.subjects.organism.worlds import make_world

        return train_history(make_world("smoke", overrides).history, progress=False)
    return attempt


def tiny_model(ctx: Ctx, family: str = "gpt2", which: str = "aligned"):
    from reversion.core.models import load_model

    return load_model(getattr(getattr(ctx.tiny, family), which), "cpu")


def tiny_ids(ctx: Ctx) -> list[list[int]]:
    from reversion.subjects.checkpoints.textdata import encode_prompts, load_tokenizer, read_prompts

    return encode_prompts(load_tokenizer(ctx.tiny.tokenizer), read_prompts(ctx.tiny.harmful))


def acts_with_nan(ctx: Ctx):
    """A model whose first block emits NaN: its activations are refused at that layer."""
    from reversion.core.activations import prompt_activations
    from reversion.core.hooks import get_blocks

    model = tiny_model(ctx)
    with torch.no_grad():
        next(get_blocks(model)[0].mlp.parameters()).fill_(NAN)
    return prompt_activations(model, tiny_ids(ctx), "all")


def acts_layer_out_of_range(ctx: Ctx):
    from reversion.core.activations import prompt_activations

    return prompt_activations(tiny_model(ctx), tiny_ids(ctx), [1, LAYERS + 1])


def acts_no_prompts(ctx: Ctx):
    from reversion.core.activations import mean_activations

    return mean_activations(tiny_model(ctx), [], "all")


def directions_from_no_prompts(ctx: Ctx):
    none = torch.empty(0, LAYERS + 1, 8, dtype=torch.float64)
    return directions_from_acts({"H": none, "S": none})


def unit_rows_of_nan(ctx: Ctx):
    x = torch.randn(LAYERS + 1, 8, dtype=torch.float64)
    x[1, 3] = NAN
    return unit_rows(x, "v_rev = mu_H - mu_S")


def alignment_of_nan_drift(ctx: Ctx):
    v = torch.nn.functional.normalize(torch.randn(LAYERS + 1, 8, dtype=torch.float64), dim=-1)
    drift = torch.randn(4, LAYERS + 1, 8, dtype=torch.float64)
    drift[2, 1, 0] = NAN
    return alignment(drift, v)


def stability_of_nan_acts(ctx: Ctx):
    a = np.random.default_rng(0).standard_normal((10, 8))
    b = a + 1.0
    b[3, 2] = NAN
    return stats.split_half_stability(a, b, 10, np.random.default_rng(0))


def null_of_empty_acts(ctx: Ctx):
    return stats.sample_matched_directions(np.empty((0, 8)), 100, np.random.default_rng(0), kind="samples")


def cosine_with_zero_v_rev(ctx: Ctx):
    return stats.null_cosines(stats.sample_isotropic_directions(8, 10, np.random.default_rng(0)), np.zeros(8))


# --------------------------------------------------------------------------- command line

FAST = ["--device", "cpu", "--n-null", "50", "--n-boot", "5"]


def corrupt(ctx: Ctx, src: Path, name: str, how: str) -> Path:
    """A copy of the checkpoint ``src`` with a garbage config.json or truncated weights."""
    dst = ctx.tmp / "checkpoints" / name
    shutil.copytree(src, dst)
    if how == "config":
        (dst / "config.json").write_text("{ this is not json")
    else:
        w = dst / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 3])
    return dst


def estimate(witness=None, aligned=None, prompts=None, *extra) -> Callable[[Ctx], list]:
    """``reversion estimate`` with the tiny Llama pair, the given parts replaced."""
    def argv(ctx: Ctx) -> list:
        t = ctx.tiny
        pick = lambda part, default: default if part is None else part(ctx)  # noqa: E731
        return ["estimate", "--witness", pick(witness, t.llama.witness), "--aligned", pick(aligned, t.llama.aligned),
                "--prompts", pick(prompts, t.harmful), "--out", ctx.out, *FAST, *extra]
    return argv


def directions_file(ctx: Ctx, layers: int = LAYERS, spoil: tuple[int, float] | None = None) -> Path:
    """A direction file for the tiny Llama (width 32) with ``layers`` layers, chosen layer 1;
    ``spoil = (layer, value)`` fills that layer's v_rev with the value."""
    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(layers + 1, 32, generator=g, dtype=torch.float64), dim=-1)
    if spoil is not None:
        v[spoil[0]] = spoil[1]
    ones = torch.ones(layers + 1, dtype=torch.float64)
    path = ctx.tmp / "directions" / f"L{layers}-{spoil}.safetensors"
    meta = {"layer": 1, "model_type": "llama", "position": "last"}
    return Directions(v, None, None, ones, ones.clone(), meta).save(path)


def track(directions=None, aligned=None, checkpoint=None) -> Callable[[Ctx], list]:
    """``reversion track`` of the tiny Llama witness, the given parts replaced."""
    def argv(ctx: Ctx) -> list:
        ctx.track = True
        t = ctx.tiny
        pick = lambda part, default: (default if part is None else part)(ctx)  # noqa: E731
        return ["track", "--directions", pick(directions, directions_file), "--aligned",
                pick(aligned, lambda c: t.llama.aligned), "--prompts", t.harmful, "--device", "cpu",
                "--out", ctx.out, pick(checkpoint, lambda c: t.llama.witness)]
    return argv


def cli_case(id: str, argv: Callable[[Ctx], list], match: str) -> Case:
    return Case(id, argv, match, SystemExit)


# --------------------------------------------------------------------------- the catalogue

CASES = [
    # notebooks (papermill): refused in the notebook's first code cell after the parameters
    nb_case("nb-03-unknown-parameter", "03_alignment", {"n_seed": 3}, r"unknown parameter\(s\) 'n_seed'"),
    nb_case("nb-02-wrong-type", "02_vrev_estimation", {"n_probe": "16"}, r"parameter 'n_probe' must be <class 'int'>"),
    nb_case("nb-04-alpha-out-of-range", "04_null_test", {"alpha": 0.7}, r"alpha must be a finite number in \(0, 0\.5\), got 0\.7"),
    nb_case("nb-05-negative-multiple", "06_interventions", {"multiple": -1.0},
            r"multiple must be a finite number > 0, got -1\.0"),
    nb_case("nb-05-unknown-site", "06_interventions", {"sites": ["top"]},
            r"sites must be a list of layer, intermediate, all, got \['top'\]"),

    # package: worlds, configurations, chapter parameters (through run + save)
    Case("api-unknown-world", chapter("03_alignment", world="giant"), r"unknown world 'giant' \(known: .*smoke"),
    Case("api-world-overrides-unknown-field",
         chapter("03_alignment", world_overrides={"finetune": {"learning_rate": 1e-4}}),
         r"world_overrides\.finetune: unknown field 'learning_rate'"),
    Case("api-world-overrides-phase-not-a-mapping",
         chapter("02_vrev_estimation", world_overrides={"history": {"safety": 100}}),
         r"world_overrides\.history\.safety must be a mapping of its fields, got 100"),
    Case("api-world-overrides-wrong-type",
         chapter("04_null_test", world_overrides={"finetune": {"batch_size": 8.5}}),
         r"finetune\.batch_size must be an int >= 1, got 8\.5"),
    Case("api-n-seeds-zero", chapter("01_training_history", n_seeds=0), r"n_seeds must be an int >= 1, got 0"),
    Case("api-n-seeds-zero-in-world", chapter("02_vrev_estimation", world_overrides={"n_seeds": 0}),
         r"n_seeds must be an int >= 1, got 0"),
    Case("api-finetune-steps-zero", finetune_with(steps=0), r"finetune\.steps \(T\) must be an int >= 1, got 0"),
    Case("api-finetune-negative-lr", finetune_with(lr=-3e-4), r"finetune\.lr must be a finite number > 0"),
    Case("api-history-negative-lr", history_with({"history": {"safety": {"lr": -5e-4}}}), r"safety\.lr must be a finite number > 0"),
    Case("api-05-multiple-nan", chapter("06_interventions", multiple=NAN),
         r"multiple must be a finite number > 0, got nan"),
    Case("api-05-unknown-direction", chapter("06_interventions", directions=["v_rev", "witness"]),
         r"directions: \['witness'\] not available here"),
    Case("api-05-rehearsal-fraction-out-of-range", chapter("06_interventions", rehearsal_fraction=1.5),
         r"rehearsal_fraction must be a finite number in \[0, 1\], got 1\.5"),
    Case("api-04-alpha-nan", chapter("04_null_test", alpha=NAN), r"alpha must be a finite number in \(0, 0\.5\), got nan"),
    Case("api-03-position-mean", chapter("03_alignment", position="mean"), r"position must be 'last' here"),

    # package: chapters 02-05 on checkpoints (the ``checkpoints`` mapping), before any work
    Case("api-03-old-checkpoint-parameter", chapter("03_alignment", witness="models/witness"),
         r"parameter 'witness' is now a key of 'checkpoints': pass checkpoints=\{"),
    Case("api-02-checkpoints-aligned-missing", chapter("02_vrev_estimation", checkpoints={"witness": "models/w"}),
         r"checkpoints\['aligned'\] missing: give both"),
    Case("api-03-checkpoints-unknown-key",
         chapter("03_alignment", checkpoints={"witness": "w", "aligned": "a", "prompt": "p.jsonl"}),
         r"checkpoints: unknown key\(s\) 'prompt' \(known: witness"),
    Case("api-04-checkpoints-no-finetune-data", chapter("04_null_test", checkpoints=tiny_checkpoints()),
         r"checkpoints\['finetune_data'\] is empty: this chapter fine-tunes"),
    Case("api-05-checkpoints-different-widths",
         chapter("06_interventions", checkpoints=lambda c: tiny_checkpoints(witness=str(c.tiny.llama_wide),
                                                                            finetune_data=str(c.tiny.benign))(c)),
         r"checkpoints\['witness'\]: width \(hidden_size\) 48 differs from checkpoints\['aligned'\]'s 32"),

    # package: activations and the geometry / statistics of them
    Case("api-activations-nan", acts_with_nan, r"non-finite activations \(NaN or inf\) at layer 1"),
    Case("api-activations-layer-out-of-range", acts_layer_out_of_range,
         rf"layer {LAYERS + 1} is outside the valid range \[0, {LAYERS}\]"),
    Case("api-activations-no-prompts", acts_no_prompts, r"prompts is empty"),
    Case("api-geometry-no-prompts", directions_from_no_prompts, r"harmful probe prompt set is empty"),
    Case("api-geometry-nan-displacement", unit_rows_of_nan,
         r"v_rev = mu_H - mu_S: non-finite values \(NaN or inf\) at layer\(s\) \[1\]"),
    Case("api-geometry-nan-drift", alignment_of_nan_drift, r"alignment: drift contains NaN"),
    Case("api-estimate-zero-v_rev-identical-checkpoints", estimate_on_identical_checkpoints,
         r"checkpoints\['witness'\]/checkpoints\['aligned'\]: v_rev = mu_H - mu_S: zero-norm displacement "
         r"at layer\(s\) \[1, 2\]"),
    Case("api-stats-nan-activations", stability_of_nan_acts, r"acts_b contains NaN or infinite values"),
    Case("api-stats-empty-activations", null_of_empty_acts, r"cov_or_samples is empty"),
    Case("api-stats-zero-v_rev", cosine_with_zero_v_rev, r"b has zero norm: cosine is undefined"),

    # command line: reversion estimate
    cli_case("cli-estimate-missing-checkpoint", estimate(witness=lambda c: c.tmp / "no_such_ckpt"),
             r"--witness: path not found: .*no_such_ckpt"),
    cli_case("cli-estimate-corrupt-config",
             estimate(witness=lambda c: corrupt(c, c.tiny.llama.witness, "garbled", "config")),
             r"--witness: cannot read the config of .*garbled"),
    cli_case("cli-estimate-truncated-weights",
             estimate(witness=lambda c: corrupt(c, c.tiny.llama.witness, "truncated", "weights")),
             r"--witness: could not load the model at .*truncated"),
    cli_case("cli-estimate-different-widths", estimate(witness=lambda c: c.tiny.llama_wide),
             r"--witness: width \(hidden_size\) 48 differs from --aligned's 32"),
    cli_case("cli-estimate-different-families", estimate(witness=lambda c: c.tiny.gpt2.witness),
             r"--witness: model family 'gpt2' differs from --aligned's 'llama'"),
    cli_case("cli-estimate-empty-prompt-file", estimate(prompts=lambda c: c.tiny.empty),
             r"--prompts: .*empty\.jsonl: no prompts found"),
    cli_case("cli-estimate-missing-prompt-file", estimate(prompts=lambda c: c.tmp / "nowhere.jsonl"),
             r"--prompts: .*not found: .*nowhere\.jsonl"),
    cli_case("cli-estimate-layer-out-of-range", estimate(None, None, None, "--layer", "9"),
             r"--layer: layer 9 is out of range \[0, 2\]"),
    cli_case("cli-estimate-layer-not-an-integer", estimate(None, None, None, "--layer", "middle"),
             r"--layer: expected an integer or 'auto', got 'middle'"),
    cli_case("cli-estimate-zero-v_rev-identical-checkpoints", estimate(witness=lambda c: c.tiny.llama.aligned),
             r"--witness/--aligned: v_rev = mu_H - mu_S: zero-norm displacement"),
    cli_case("cli-estimate-n-null-zero", estimate(None, None, None, "--n-null", "0"),
             r"--n-null: must be an int >= 1, got 0"),
    cli_case("cli-estimate-n-boot-one", estimate(None, None, None, "--n-boot", "1"),
             r"--n-boot: must be an int >= 2, got 1"),

    # command line: reversion track
    cli_case("cli-track-missing-directions", track(directions=lambda c: c.tmp / "none.safetensors"),
             r"--directions: no direction file at .*none\.safetensors"),
    cli_case("cli-track-directions-wrong-layer-count", track(directions=lambda c: directions_file(c, layers=3)),
             r"--directions: v_rev has 3 layers but --aligned has 2"),
    cli_case("cli-track-zero-v_rev", track(directions=lambda c: directions_file(c, spoil=(1, 0.0))),
             r"--directions: v_rev is zero at layer 1"),
    cli_case("cli-track-nan-v_rev", track(directions=lambda c: directions_file(c, spoil=(1, NAN))),
             r"--directions: v_rev has NaN or infinite values at layer\(s\) \[1\]"),
    cli_case("cli-track-missing-checkpoint", track(checkpoint=lambda c: c.tmp / "gone"),
             r"CHECKPOINT .*gone: path not found"),
    cli_case("cli-track-truncated-aligned-weights",
             track(aligned=lambda c: corrupt(c, c.tiny.llama.aligned, "truncated", "weights")),
             r"--aligned: could not load the model at .*truncated"),
]


def test_the_catalogue_is_complete():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 18
    assert {c.kind for c in CASES} == {"nb", "api", "cli"}
    assert sum(c.kind == "nb" for c in CASES) <= 6  # a kernel start each


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture
def ctx(isolated, request) -> Ctx:
    return Ctx(isolated, lambda: request.getfixturevalue("tiny"))


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_is_refused_and_writes_nothing(case: Case, ctx: Ctx, capsys):
    if case.kind == "cli":
        argv = [str(a) for a in case.attempt(ctx)]
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"reversion {argv[0]}: error: " in err
        assert "Traceback" not in err
        assert re.search(case.match, err), f"{case.match!r} not in stderr:\n{err}"
        assert not ctx.out.exists(), f"{ctx.out} was written"
        assert not ctx.out.parent.exists() or not any(ctx.out.parent.iterdir())
    else:
        with pytest.raises(case.error, match=case.match):
            case.attempt(ctx)
    for folder in ("results", "cache"):
        assert files_under(ctx.tmp / folder) == [], f"{folder} written"


def test_a_good_track_still_writes_its_file(tiny, isolated):
    """The positive control of the track cases: the same command line, valid, writes --out
    (the file now appears with the first rows, not before the models load)."""
    tmp_path = isolated
    ctx = Ctx(tmp_path, lambda: tiny)
    argv = [str(a) for a in track()(ctx)]
    assert main(argv) == 0
    rows = ctx.out.read_text().splitlines()
    assert rows[0].startswith("checkpoint,step,layer,alignment") and len(rows) == 2
    assert math.isfinite(float(rows[1].split(",")[3]))
    # a finished run that found nothing to track still leaves its (header-only) file
    (tmp_path / "empty_run").mkdir()
    header_only = tmp_path / "header_only.csv"
    assert main([*argv[:-3], "--out", str(header_only), "--watch", str(tmp_path / "empty_run"),
                 "--interval", "0", "--max-polls", "1"]) == 0
    assert header_only.read_text().splitlines() == [rows[0]]
