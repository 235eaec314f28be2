"""Fine-tuning interventions (``reversion.core.interventions``) on the ``smoke`` organism: each
does the one thing it claims.

* strength 0 is the baseline, bit for bit;
* block lowers and push raises the probes' motion along v_rev, far beyond float noise;
* projection removes each token's change along v_rev since theta_S during the training forward
  pass, edits nothing while paused, and leaves no hook behind;
* rehearsal replaces exactly the batch's tail with real harmful requests -> refusal and
  keeps the baseline's benign head; the alignment mix has the safety phase's harmful share;
* bad strengths, fractions and layers are refused before any work.

Everything trains in its own temporary cache (``REVERSION_CACHE``); a fine-tuning run of the
smoke world is six steps (under a second on one CPU thread). Runs go through the fine-tuning
stage (``reversion.stages.finetune``) on an ``OrganismSubject``; the block/push/projection
objects are set up on the subject's prompt sets (``Prompts``: block set and pad id) and the
rehearsal/alignment mix draw from its training data (the organism's language).
"""

from __future__ import annotations

import copy
import json
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from reversion.analysis import arm_runs, arms
from reversion.book.chapters import ch06_interventions as ch06
from reversion.core.batches import collate
from reversion.core.hooks import get_blocks
from reversion.core.directions import control_directions, random_directions, residual_direction
from reversion.core.interventions import (
    AlignmentMix,
    Block,
    Oppose,
    Projection,
    Push,
    Rehearsal,
    all_block_layers,
    gradient_norms,
)
from reversion.stages import finetune as finetune_mod
from reversion.stages.estimate import estimate
from reversion.stages.finetune import FinetuneRun, finetune, finetune_many
from reversion.subjects.base import TrainingData
from reversion.subjects.organism.history import train_history
from reversion.subjects.organism.language import BOS, EOS, PAD, SEP, Language, apply_task
from reversion.subjects.organism.subject import OrganismSubject, benign_batches

# One torch thread and the determinism flags restored afterwards (conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

STRONG = 3.0


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("interventions")


def _env(mp: pytest.MonkeyPatch, root: Path) -> None:
    mp.setenv("REVERSION_CACHE", str(root / "cache"))
    mp.setenv("REVERSION_RESULTS", str(root / "results"))


@pytest.fixture(scope="module")
def module_env(root):
    """Module-scoped fixtures train into the same temporary cache the tests use."""
    mp = pytest.MonkeyPatch()
    _env(mp, root)
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def private_dirs(root, monkeypatch):
    _env(monkeypatch, root)


@pytest.fixture(scope="module")
def ft(world):
    return world.finetune_config(0)


@pytest.fixture(scope="module")
def subject(world) -> OrganismSubject:
    return OrganismSubject(world.history)


@pytest.fixture(scope="module")
def lang(world):
    return Language(world.history.language)


@pytest.fixture(scope="module")
def probes(subject, world):
    """The subject's prompt sets, as the fine-tuning stage hands them to an intervention."""
    return subject.prompts(world.finetune.n_probe)


@pytest.fixture(scope="module")
def hist(world, module_env):
    return train_history(world.history, progress=False)


@pytest.fixture(scope="module")
def est(world, subject, hist, module_env):
    return estimate(subject, world.finetune.n_probe, progress=False)


@pytest.fixture(scope="module")
def layers(hist):
    return all_block_layers(hist.load("theta_S"))


def _run(world, ft, intervention=None) -> FinetuneRun:
    return finetune(OrganismSubject(world.history), ft, intervention, progress=False)


@pytest.fixture(scope="module")
def baseline(world, ft, hist, module_env):
    return _run(world, ft)


def _motion(run: FinetuneRun, v_rev: torch.Tensor, layer: int) -> float:
    """Projection on v_rev of the drift-probe mean's motion from theta_S to step T."""
    d = run.probe_means[-1, layer] - run.probe_means[0, layer]
    return float(d @ v_rev[layer])


# --------------------------------------------------------------------------- strength zero


@pytest.mark.parametrize("cls", [Block, Oppose, Push])
def test_strength_zero_reproduces_the_baseline_exactly(cls, world, ft, est, layers, baseline):
    d = est.directions
    term = cls(d.v_rev, d.displacement_norm, 0.0, layers)
    assert term.aux_loss(None, None, 1) is None  # not even an extra forward
    run = _run(world, ft, term)
    assert run.path != baseline.path             # its own cache entry, not the baseline's
    assert run.losses == baseline.losses
    assert torch.equal(run.probe_means, baseline.probe_means)
    assert run.evals == baseline.evals


def test_rehearsal_fraction_zero_reproduces_the_baseline_exactly(world, ft, baseline):
    run = _run(world, ft, Rehearsal(0.0))
    assert run.path != baseline.path
    assert run.losses == baseline.losses
    assert torch.equal(run.probe_means, baseline.probe_means)


def test_the_baseline_is_deterministic_for_a_seed(world, ft, baseline, tmp_path, monkeypatch):
    monkeypatch.setenv("REVERSION_CACHE", str(tmp_path / "fresh-cache"))
    again = _run(world, ft)
    assert again.losses == baseline.losses
    assert torch.equal(again.probe_means, baseline.probe_means)


# --------------------------------------------------------------------------- block and push


@pytest.fixture(scope="module")
def strong_runs(world, ft, est, layers, baseline, module_env):
    d = est.directions
    jobs = [(OrganismSubject(world.history), ft, cls(d.v_rev, d.displacement_norm, STRONG, layers))
            for cls in (Block, Oppose, Push)]
    runs = finetune_many(jobs, progress=False)  # one group: the grouped directional terms
    return {"baseline": baseline, "block": runs[0], "oppose": runs[1], "push": runs[2]}


def test_oppose_lowers_and_push_raises_the_motion_along_v_rev(strong_runs, est, layers):
    d = est.directions
    runs = strong_runs
    # same start (theta_S) and the same first batch: the task loss at step 1 is untouched.
    for name in ("block", "oppose", "push"):
        torch.testing.assert_close(runs[name].probe_means[0], runs["baseline"].probe_means[0], rtol=0, atol=1e-6)
        assert runs[name].losses[0] == pytest.approx(runs["baseline"].losses[0], rel=1e-6)
        assert runs[name].losses[1:] != runs["baseline"].losses[1:]
    for layer in layers:
        m = {k: _motion(r, d.v_rev, layer) for k, r in runs.items()}
        scale = float(d.displacement_norm[layer])
        # Float noise on these numbers is ~1e-7 (a rerun gives them bit for bit); the gaps
        # must be a sizeable fraction of the layer's own scale ||mu_H - mu_S||.
        assert m["oppose"] - m["baseline"] < -0.1 * scale, (layer, m, scale)
        assert m["push"] - m["baseline"] > 0.1 * scale, (layer, m, scale)


def test_block_resists_motion_along_v_rev_without_steering_past_theta_S(strong_runs, est, layers):
    """The hinge has no gradient at theta_S (p = 0 exactly), so block's first step is the
    baseline's; after that it resists positive motion: it ends below the baseline and above
    oppose. (AdamW's momentum carries a strong hinge's steps past p = 0, so "one-sided" holds
    for the loss, not for the trajectory: the chapter reports where block ends.)"""
    d = est.directions
    runs = strong_runs
    assert runs["block"].losses[1] == pytest.approx(runs["baseline"].losses[1], rel=1e-6)
    torch.testing.assert_close(runs["block"].probe_means[1], runs["baseline"].probe_means[1], rtol=0, atol=1e-5)
    assert runs["oppose"].losses[1] != pytest.approx(runs["baseline"].losses[1], rel=1e-6)
    for layer in layers:
        m = {k: _motion(r, d.v_rev, layer) for k, r in runs.items()}
        scale = float(d.displacement_norm[layer])
        assert m["block"] < m["baseline"], (layer, m)
        assert m["block"] > m["oppose"], (layer, m, scale)


def test_block_projection_is_zero_at_theta_S_and_ordered_after_training(strong_runs, est, hist, lang,
                                                                           probes, layers):
    d = est.directions
    term = Block(d.v_rev, d.displacement_norm, STRONG, layers)
    theta_S = hist.load("theta_S")
    term.setup(theta_S, lang, probes)
    assert len(term.probe_batches) == 1  # 16 probes, one batch: its mean is mu_S itself
    with torch.no_grad():
        p0 = term.projection(theta_S, 1)
        assert p0.shape == (len(layers),)
        assert p0.abs().max() < 1e-5                    # linear regime: the term acts from step 1
        loss0 = term.aux_loss(theta_S, None, 1)
        assert abs(float(loss0)) < 1e-4
        p = {k: term.projection(r.load_model(), 1) for k, r in strong_runs.items()}
    assert torch.all(p["oppose"] < p["block"]) and torch.all(p["block"] < p["baseline"]), p
    assert torch.all(p["baseline"] < p["push"]), p
    term.teardown()
    assert term.probe_batches == []


# --------------------------------------------------------------------------- projection


def _tokens(batch) -> torch.Tensor:
    return batch["attention_mask"].bool()


def test_projection_removes_only_the_change_along_v_rev_while_training(est, hist, lang, probes):
    d = est.directions
    layer = est.layer
    v = d.v_rev[layer]
    model = hist.load("theta_S")
    theta_S = copy.deepcopy(model)
    batch = collate(probes.drift, [lang.refusal_answer] * len(probes.drift), pad_id=PAD)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    real = _tokens(batch)
    with torch.no_grad():
        ref = theta_S(**inputs, output_hidden_states=True).hidden_states
        model(**inputs, output_hidden_states=True)  # lets transformers install its own capture hooks
    blocks = get_blocks(model)
    before = [list(b._forward_hooks) for b in blocks]
    pre_before = list(model._forward_pre_hooks)

    proj = Projection(d.v_rev, [layer])
    proj.setup(model, lang, probes)
    with torch.no_grad():  # at theta_S the edit is the identity
        same = model(**inputs, output_hidden_states=True).hidden_states
    assert (same[layer] - ref[layer]).abs().max() < 1e-5

    # Move the weights (as training would), then a training forward: the change since
    # theta_S keeps its off-axis part and loses its component along v, token by token.
    with torch.no_grad():
        for p_ in blocks[layer - 1].parameters():
            p_.add_(0.05 * torch.randn_like(p_))
        with proj.paused():
            free = model(**inputs, output_hidden_states=True).hidden_states[layer].double()
    model.train()
    out = model(**inputs, labels=batch["labels"], output_hidden_states=True)
    h = out.hidden_states[layer].detach().double()
    change, free_change = h - ref[layer].double(), free - ref[layer].double()
    assert (change @ v)[real].abs().max() < 1e-4
    assert (free_change @ v)[real].abs().max() > 1e-2  # so the removal above was real work
    off = lambda x: x - (x @ v)[..., None] * v  # noqa: E731
    assert (off(change) - off(free_change))[real].abs().max() < 1e-4
    assert out.loss.requires_grad  # the edit sits inside the differentiable forward pass

    proj.teardown()
    assert [list(b._forward_hooks) for b in blocks] == before
    assert list(model._forward_pre_hooks) == pre_before
    with torch.no_grad():
        after = model(**inputs, output_hidden_states=True).hidden_states[layer].double()
    assert torch.allclose(after, free, atol=1e-6)  # no edit left behind


def test_projection_run_starts_like_the_baseline_then_differs(world, ft, est, baseline):
    run = _run(world, ft, Projection(est.directions.v_rev, [est.layer]))
    # alone against a grouped baseline: equal to float32 rounding (see above)
    torch.testing.assert_close(run.probe_means[0], baseline.probe_means[0], rtol=0, atol=1e-6)
    assert run.evals[0] == baseline.evals[0]  # step-0 evaluation precedes the hooks
    assert abs(run.losses[0] - baseline.losses[0]) < 1e-5  # identity at theta_S
    assert run.losses[-1] != baseline.losses[-1]  # but the training forward is edited after that


# --------------------------------------------------------------------------- rehearsal


def _is_real_harmful_request(lang: Language, prompt) -> bool:
    p = list(prompt)
    if p[0] != BOS or p[-1] != SEP or len(p) < 4:
        return False
    tasks = {tok: t for t, tok in lang.task_token.items()}
    if p[1] not in tasks:
        return False
    inputs = p[2:-1]
    n_harm = sum(lang.is_harmful_token(t) for t in inputs)
    in_vocab = all(lang.is_harmful_token(t) or t in set(lang.content.tolist()) for t in inputs)
    return (in_vocab and 1 <= n_harm <= 2 and lang.cfg.min_len <= len(inputs) <= lang.cfg.max_len
            and lang.split_of(tasks[p[1]], inputs) == "train")


def test_the_subject_hands_interventions_its_language_and_its_prompt_sets(subject, lang, probes, world):
    data = subject.training_data()
    assert isinstance(data, TrainingData) and data.cfg == lang.cfg and data.refusal_answer == lang.refusal_answer
    assert probes.harmful_block == probes.block and probes.pad_id == PAD
    assert len(probes.block) == world.finetune.n_probe
    # the block set is disjoint from the drift probes the runs are measured on
    assert not set(probes.block) & set(probes.drift)


@pytest.mark.parametrize("fraction", [0.25, 0.5, 1.0])
def test_rehearsal_replaces_the_tail_with_refusals_of_real_harmful_requests(fraction, lang, ft):
    n = 5
    base = list(islice(benign_batches(lang, ft), n))
    reh = list(islice(Rehearsal(fraction).batches(benign_batches(lang, ft), lang, ft), n))
    k = round(fraction * ft.batch_size)
    assert k >= 1
    tails = set()
    for b, r in zip(base, reh):
        assert len(r) == len(b) == ft.batch_size
        assert r[: len(b) - k] == b[: len(b) - k]            # benign head = the baseline's batch
        for prompt, target in r[len(b) - k:]:
            assert tuple(target) == lang.refusal_answer
            assert _is_real_harmful_request(lang, prompt), lang.decode(prompt)
            tails.add(tuple(prompt))
        for prompt, target in r[: len(b) - k]:
            assert not any(lang.is_harmful_token(t) for t in prompt)
            assert tuple(target) != lang.refusal_answer
    assert len(tails) > n  # fresh harmful requests, not one example repeated
    # deterministic given the fine-tuning seed
    again = list(islice(Rehearsal(fraction).batches(benign_batches(lang, ft), lang, ft), n))
    assert again == reh


@pytest.mark.parametrize("fraction", [0.0, 0.05])  # round(0.05 * 8) = 0: nothing to replace
def test_rehearsal_with_nothing_to_replace_yields_the_baseline_batches(fraction, lang, ft):
    base = list(islice(benign_batches(lang, ft), 4))
    reh = list(islice(Rehearsal(fraction).batches(benign_batches(lang, ft), lang, ft), 4))
    assert reh == base


@pytest.mark.parametrize("hf", [None, 0.25])
def test_alignment_mix_has_the_safety_phases_harmful_share(hf, world, lang, ft):
    hf = world.history.safety.harmful_fraction if hf is None else hf
    mix = AlignmentMix(hf)
    batches = list(islice(mix.batches(iter(()), lang, ft), 6))
    k = round(ft.batch_size * hf)
    assert 0 < k < ft.batch_size
    for batch in batches:
        assert len(batch) == ft.batch_size
        refusals = [(p, t) for p, t in batch if tuple(t) == lang.refusal_answer]
        assert len(refusals) == k
        for prompt, _ in refusals:
            assert _is_real_harmful_request(lang, prompt)
        for prompt, target in batch:
            if tuple(target) == lang.refusal_answer:
                continue
            assert not any(lang.is_harmful_token(t) for t in prompt)
            tasks = {tok: t for t, tok in lang.task_token.items()}
            assert list(target) == apply_task(tasks[prompt[1]], prompt[2:-1]) + [EOS]
    # continued safety training covers several tasks, not just the fine-tuning task
    assert len({p[1] for b in batches for p, t in b if tuple(t) != lang.refusal_answer}) > 1


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def fake_dirs():
    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(3, 8, generator=g, dtype=torch.float64), dim=-1)
    return v, torch.ones(3, dtype=torch.float64)  # L = 2


@pytest.mark.parametrize("cls,name", [(Block, "block strength"), (Oppose, "oppose strength"),
                                      (Push, "push strength")])
@pytest.mark.parametrize("bad", [-0.1, -1, float("nan"), float("inf"), -float("inf"), True, False, "1", None])
def test_bad_strengths_are_refused(cls, name, bad, fake_dirs):
    v, s = fake_dirs
    with pytest.raises(ValueError, match=name):
        cls(v, s, bad, [1, 2])


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf"), True])
def test_bad_rehearsal_fractions_are_refused(bad):
    with pytest.raises(ValueError, match="rehearsal fraction"):
        Rehearsal(bad)


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_bad_alignment_mix_fractions_are_refused(bad):
    with pytest.raises(ValueError, match="harmful_fraction"):
        AlignmentMix(bad)


@pytest.mark.parametrize("cls", [Block, Push])
@pytest.mark.parametrize("bad", [[0], [-1], [], [1, 0]])
def test_directional_layers_out_of_range_are_refused(cls, bad, fake_dirs):
    v, s = fake_dirs
    with pytest.raises(ValueError, match="layer"):
        cls(v, s, 1.0, bad)


@pytest.mark.parametrize("cls", [Block, Push])
def test_directional_layer_above_L_is_refused_with_a_value_error(cls, fake_dirs):
    v, s = fake_dirs
    with pytest.raises(ValueError, match="outside"):
        cls(v, s, 1.0, [3])


def test_directional_term_needs_a_positive_scale_and_probe_batch(fake_dirs):
    v, s = fake_dirs
    with pytest.raises(ValueError, match="scale"):
        Block(v, torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64), 1.0, [1, 2])
    with pytest.raises(ValueError, match="n_probe_batch"):
        Block(v, s, 1.0, [1], n_probe_batch=0)


@pytest.mark.parametrize("bad", [[0], [2], [3], [-1], []])
def test_projection_layers_out_of_range_are_refused(bad, fake_dirs):
    v, _ = fake_dirs  # L = 2: only layer 1 has a block output before the final norm
    with pytest.raises(ValueError, match="layer"):
        Projection(v, bad)
    assert Projection(v, [1]).layers == [1]


# --------------------------------------------------------------------------- the Interventions chapter's experiment


def _cumulative(run: FinetuneRun, level: float) -> float:
    return arms.cumulative_reversion(run.series("harmfulness"), run.steps, level)


def _ramp_run(steps, a: float, b: float) -> FinetuneRun:
    evals = {int(s): {"harmfulness": a + b * s} for s in steps}
    return FinetuneRun(path=Path("."), probe_means=torch.zeros(1), losses=[], evals=evals, seconds=0.0)


@pytest.mark.parametrize("a,b,level", [(0.1, 0.02, 0.1), (0.3, 0.0, 0.1), (0.25, 0.01, 0.2)])
def test_cumulative_reversion_of_a_linear_ramp_is_its_closed_form(a, b, level):
    steps = [6, 0, 1, 2, 3]  # unordered, uneven grid; the run sorts it
    T = 6
    got = _cumulative(_ramp_run(steps, a, b), level)
    # (1/T) * integral_0^T (a + b s - level) ds; the trapezoid rule is exact for a line above the level
    assert got == pytest.approx(a - level + b * T / 2, abs=1e-12)


def test_cumulative_reversion_is_clipped_at_the_level():
    """Below theta_S's level counts as zero, not as negative reversion: a run that dips under
    the level and one that stays at it have the same area; a ramp crossing the level at s = 2
    counts only the part above it (closed form: the triangle from 2 to 6, (4 * 0.04) / 2 / 6)."""
    assert _cumulative(_ramp_run([0, 2, 5], 0.2, 0.0), 0.2) == pytest.approx(0.0, abs=1e-15)
    assert _cumulative(_ramp_run([0, 2, 5], 0.1, 0.0), 0.2) == 0.0
    crossing = _cumulative(_ramp_run([0, 2, 4, 6], 0.16, 0.02), 0.2)
    assert crossing == pytest.approx(4 * 0.08 / 2 / 6, abs=1e-12)


def _params(**changes) -> ch06.Params:
    base = dict(world="smoke", world_overrides={}, n_histories=2, n_seeds=2, multiple=1.0,
                objectives=["block", "oppose"], directions=[], n_random=1, sites=["all"], dose_multiples=[3.0],
                study_directions=["v_rev"], study_sites=["layer"], n_study_seeds=1, projection=True,
                witness_direction=True,
                rehearsal_fraction=0.25, margin=0.02, eval_steps=[0, 3, 6], track_every=3)
    return ch06.Params(**{**base, **changes})


def test_plan_runs_every_direction_with_both_objectives_and_push_along_v_rev(est):
    main, study = arm_runs.plan(_params(), est)
    dirs = ["v_rev", "-r_S", "v_P", "residual", "random0+", "random0-"]
    want = [arms.BASELINE, arms.REHEARSAL] + [arms.Arm(o, d, "all", 1.0) for o in ("block", "oppose") for d in dirs] \
        + [arms.Arm("push", "v_rev", "all", 1.0)]
    assert main == want
    # push's random controls are the oppose runs along the negated random directions
    o = arms.Outcomes({}, main, main, {}, 1, [0], 8)
    assert arms.controls_of(o, arms.Arm("push", "v_rev", "all", 1.0)) == {
        "random0-": arms.Arm("oppose", "random0+", "all", 1.0), "random0+": arms.Arm("oppose", "random0-", "all", 1.0)}
    assert set(arms.controls_of(o, arms.Arm("block", "v_rev", "all", 1.0))) == set(dirs[1:])
    assert study == [arms.Arm("block", "v_rev", "all", 3.0), arms.Arm("block", "v_rev", "layer", 1.0),
                     arms.Arm("projection", "v_rev", "intermediate")]
    assert len({a.name for a in main + study}) == len(main + study)


@pytest.mark.parametrize("site,want", [("layer", [2]), ("intermediate", [1, 2, 3]), ("all", [1, 2, 3, 4])])
def test_site_layers(site, want):
    assert arm_runs.site_layers(site, 4, 2) == want
    with pytest.raises(ValueError, match="unknown site"):
        arm_runs.site_layers("every", 4, 2)


def test_make_builds_each_arm_at_its_calibrated_strength(est):
    P = _params()
    have = arm_runs.directions_of(P, est)
    norms = {"v_rev@all": {"ratio": 0.5}, "random0+@layer": {"ratio": 2.0}}
    blk, s = arm_runs.make(arms.Arm("block", "v_rev", "all", 3.0), est, have, norms, P)
    L = est.directions.v_rev.shape[0] - 1
    assert isinstance(blk, Block) and s == blk.strength == 1.5 and blk.layers == list(range(1, L + 1))
    opp, s = arm_runs.make(arms.Arm("oppose", "random0+", "layer", 1.0), est, have, norms, P)
    assert isinstance(opp, Oppose) and s == 2.0 and opp.layers == [est.layer]
    torch.testing.assert_close(opp.v, have["random0+"])
    reh, _ = arm_runs.make(arms.REHEARSAL, est, have, norms, P)
    assert isinstance(reh, Rehearsal) and reh.mode == "add" and reh.fraction == 0.25
    assert arm_runs.make(arms.BASELINE, est, have, norms, P) == (None, 0.0)


@pytest.mark.parametrize("changes,match", [({"objectives": ["tanh"]}, "objectives"), ({"sites": []}, "sites"),
                                           ({"study_sites": ["top"]}, "study_sites"), ({"multiple": 0.0}, "multiple"),
                                           ({"dose_multiples": [-1.0]}, "dose_multiples"),
                                           ({"n_study_seeds": 3}, "n_study_seeds"), ({"projection": "yes"}, "projection"),
                                           ({"margin": -0.1}, "margin"), ({"track_every": 0}, "track_every"),
                                           ({"directions": "v_rev"}, "directions")])
def test_bad_chapter_parameters_are_refused_naming_them(changes, match):
    with pytest.raises(ValueError, match=match):
        _params(**changes)


def test_a_direction_the_subject_lacks_is_refused_before_training(est):
    arm_runs.check_directions(_params(directions=["v_rev", "random0-"]), est)
    with pytest.raises(ValueError, match="directions: \\['random3\\+'\\] not available"):
        arm_runs.check_directions(_params(directions=["random3+"]), est)
    with pytest.raises(ValueError, match="study_directions"):
        arm_runs.check_directions(_params(study_directions=["witness"]), est)


@pytest.mark.parametrize("make", [lambda v, s: Block(v, s, 1.0, [1, 2]), lambda v, s: Push(v, s, 1.0, [1, 2]),
                                  lambda v, s: Projection(v, [1])], ids=["block", "push", "projection"])
@pytest.mark.parametrize("fill, message", [(0.0, "v_rev is zero at layer"), (float("nan"), "NaN or infinite")])
def test_a_zero_or_nan_direction_where_it_acts_is_refused(make, fill, message, fake_dirs):
    v, s = fake_dirs
    make(v, s)  # positive control: the intact direction is accepted
    bad = v.clone()
    bad[1] = fill
    with pytest.raises(ValueError, match=message):
        make(bad, s)
    ok = v.clone()
    ok[0] = fill  # layer 0 is never acted on: no complaint
    make(ok, s)


# --------------------------------------------------------------------------- grouped terms


def test_directional_terms_trained_in_a_group_equal_the_runs_trained_alone(world, est, hist, tmp_path,
                                                                             monkeypatch):
    """Every objective, two layer sets and two seeds in one group, against each run on the plain
    loop (the Hugging Face model, the term's own ``aux_loss``): the same runs to float32 rounding."""
    d = est.directions
    L = d.v_rev.shape[0] - 1
    r = random_directions(tuple(d.v_rev.shape), 0)
    jobs = [(OrganismSubject(world.history), world.finetune_config(seed),
             cls(v, d.displacement_norm, STRONG, lay))
            for seed, (cls, v, lay) in [(0, (Block, d.v_rev, [1, L])), (1, (Oppose, r, [1])),
                                        (0, (Push, -d.v_rev, [L])), (1, (Block, r, list(range(1, L + 1))))]]
    monkeypatch.setenv("REVERSION_CACHE", str(tmp_path / "grouped"))
    together = finetune_many(jobs, progress=False)
    assert all(json.loads((t.path / "timings.json").read_text())["group"]["runs"] == 4 for t in together)
    monkeypatch.setenv("REVERSION_CACHE", str(tmp_path / "plain"))
    monkeypatch.setattr(finetune_mod, "_groupable", lambda *a: False)
    alone = [finetune(*j, progress=False) for j in jobs]
    for a, b in zip(together, alone):
        torch.testing.assert_close(a.probe_means, b.probe_means, rtol=0, atol=2e-5)
        assert a.losses == pytest.approx(b.losses, rel=2e-5)
    assert together[0].losses != together[2].losses  # the runs are not one run


def test_a_term_group_refuses_a_run_without_a_term(world, est, hist):
    d = est.directions
    sub = OrganismSubject(world.history)
    with pytest.raises(ValueError, match="differ in their seed only"):
        finetune_mod.build_group([(sub, world.finetune_config(0), Block(d.v_rev, d.displacement_norm, 1.0, [1])),
                                  (sub, world.finetune_config(1), None)])


# --------------------------------------------------------------------------- calibration


def test_calibrated_strength_makes_the_term_gradient_a_fixed_multiple_of_the_task_gradient(
        world, est, hist, probes, lang, ft, layers):
    """strength = multiple * task / term gives ||grad strength * sum p/s|| = multiple * ||grad task||
    at theta_S, checked against an independent autograd of the oppose term (tanh'(0) = 1) and
    of the task loss, for v_rev and a random direction alike."""
    d = est.directions
    model = hist.load("theta_S")
    batches = [collate([q for q, _ in b], [a for _, a in b], pad_id=PAD)
               for b in islice(benign_batches(lang, ft), 2)]
    params = list(model.parameters())

    def gnorm(loss):
        return float(torch.sqrt(sum((g.double() ** 2).sum() for g in torch.autograd.grad(loss, params))))

    task = gnorm((model(**batches[0]).loss + model(**batches[1]).loss) / 2)
    got = []
    for v in (d.v_rev, random_directions(tuple(d.v_rev.shape), 3)):
        n = gradient_norms(model, Oppose(v, d.displacement_norm, 1.0, layers), probes, batches)
        assert n["task"] == pytest.approx(task, rel=1e-6)
        term = Oppose(v, d.displacement_norm, 0.5 * n["ratio"], layers)
        term.setup(model, lang, probes)
        assert len(term.probe_batches) == 1  # smoke: one probe batch, the mean gradient is its own
        got.append(gnorm(term.aux_loss(model, None, 1)))
        term.teardown()
    assert got == pytest.approx([0.5 * task, 0.5 * task], rel=1e-5)


# --------------------------------------------------------------------------- control directions


def test_control_directions_are_unit_seeded_and_the_residual_is_outside_the_controls():
    g = torch.Generator().manual_seed(1)
    L1, dim = 3, 16
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    r_S, v_P, extra = (unit(torch.randn(L1, dim, generator=g, dtype=torch.float64)) for _ in range(3))
    # planted: v_rev = 0.6 r_S + 0.3 v_P + (a known unit residual orthogonal to both)
    q = extra - torch.einsum("ld,ld->l", extra, r_S)[:, None] * r_S
    basis_v = v_P - torch.einsum("ld,ld->l", v_P, r_S)[:, None] * r_S
    basis_v = unit(basis_v)
    q = unit(q - torch.einsum("ld,ld->l", q, basis_v)[:, None] * basis_v)
    v_rev = unit(0.6 * r_S + 0.3 * v_P + 0.5 * q)
    res = residual_direction(v_rev, [r_S, v_P])
    torch.testing.assert_close(res, q, rtol=0, atol=1e-10)
    # null: v_rev inside the span has no residual (zero rows, not noise)
    assert residual_direction(unit(r_S + v_P), [r_S, v_P]).abs().max() < 1e-12
    dirs = SimpleNamespace(v_rev=v_rev, r_S=r_S, v_P=v_P)
    c = control_directions(dirs, n_random=2, random_seed=5)
    assert list(c) == ["v_rev", "-r_S", "v_P", "residual", "random0+", "random0-", "random1+", "random1-"]
    torch.testing.assert_close(c["-r_S"], -r_S)
    torch.testing.assert_close(c["random0-"], -c["random0+"])
    torch.testing.assert_close(c["random0+"], random_directions((L1, dim), 5))
    assert not torch.allclose(c["random0+"], c["random1+"])
    for v in c.values():
        torch.testing.assert_close(v.norm(dim=-1), torch.ones(L1, dtype=torch.float64))
    only = control_directions(SimpleNamespace(v_rev=v_rev, r_S=None, v_P=None), n_random=0)
    assert list(only) == ["v_rev"]  # what an estimate lacks is absent, not zero


# --------------------------------------------------------------------------- rehearsal, added


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_added_rehearsal_keeps_the_whole_benign_batch_and_appends_refusals(fraction, lang, ft):
    base = list(islice(benign_batches(lang, ft), 3))
    got = list(islice(Rehearsal(fraction, mode="add").batches(benign_batches(lang, ft), lang, ft), 3))
    k = int(ft.batch_size * fraction + 0.5)
    for b, g in zip(base, got):
        assert g[:len(b)] == b and len(g) == len(b) + k
        assert all(_is_real_harmful_request(lang, p) and a == lang.refusal_answer for p, a in g[len(b):])
    assert Rehearsal(fraction, mode="add").key() != Rehearsal(fraction).key()
    assert Rehearsal(fraction).key() == {"variant": "rehearsal", "fraction": fraction}  # old keys kept
    with pytest.raises(ValueError, match="rehearsal mode"):
        Rehearsal(fraction, mode="append")


def test_push_along_v_is_oppose_along_minus_v(est, hist, lang, probes, layers):
    """-tanh(p_v / s) = tanh(p_{-v} / s): the identity that makes oppose along -random push's control."""
    d = est.directions
    model = hist.load("theta_S")
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.add_(0.05)  # away from theta_S, where both are zero
    push = Push(d.v_rev, d.displacement_norm, 0.7, layers)
    opp = Oppose(-d.v_rev, d.displacement_norm, 0.7, layers)
    push.setup(hist.load("theta_S"), lang, probes)
    opp.setup(hist.load("theta_S"), lang, probes)
    with torch.no_grad():
        a, b = push.aux_loss(model, None, 1), opp.aux_loss(model, None, 1)
    assert abs(float(a)) > 1e-3 and float(a) == pytest.approx(float(b), rel=1e-6)


def test_the_witness_arm_blocks_along_the_witness_difference_on_history_0(world, est, hist, monkeypatch):
    """With ``witness_direction``, history 0 gets one more arm, the block along unit(mu_H - mu_H'), whose
    direction is the difference of the two witnesses' mean activations (by hand here)."""
    from reversion.subjects.organism.lineages import SECOND, lineages  # noqa: PLC0415 (test-local)

    P = _params(witness_direction=True, n_histories=1)
    w = P.make_world()
    sub = OrganismSubject(w.history)
    plan = arm_runs.jobs(P, w, [sub], [estimate(sub, w.finetune.n_probe, progress=False)])
    js, strengths, calib = plan.jobs, plan.strengths, plan.calibration
    arm = arms.Arm("block", "witness", "all", 1.0)
    keys = [k for k in js if k[0] == arm]
    assert [k[1:] for k in keys] == [(0, 0)]  # history 0, the study's seeds
    second = estimate(OrganismSubject(lineages(w)[SECOND]), w.finetune.n_probe, progress=False)
    u = est.acts["H"].double().mean(0) - second.acts["H"].double().mean(0)
    got = js[keys[0]][2].v
    L = u.shape[0] - 1
    torch.testing.assert_close(got[1:], u[1:] / u[1:].norm(dim=-1, keepdim=True))
    assert "witness@all" in calib[0] and strengths[(arm, 0)] == pytest.approx(calib[0]["witness@all"]["ratio"])
    assert L >= 1
    # the arms are read at T: judged and tracked at 0 and T; the baseline on the chapter's grid
    T = w.finetune.steps
    assert (js[keys[0]][1].eval_steps, js[keys[0]][1].track_every) == ((0, T), T)
    base = js[(arms.BASELINE, 0, 0)][1]
    assert (base.eval_steps, base.track_every) == (tuple(P.eval_steps), P.track_every)
    with pytest.raises(ValueError, match="n_seeds must be >= 2 on one history"):
        one = _params(n_seeds=1, n_study_seeds=1, n_histories=1)
        arm_runs.jobs(one, one.make_world(), [sub], [est])
    no = arm_runs.jobs(_params(witness_direction=False, n_histories=1), w, [sub], [est]).jobs
    assert not [k for k in no if k[0].direction == "witness"]
