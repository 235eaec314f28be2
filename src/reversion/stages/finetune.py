"""Stage ``finetune``: benign fine-tuning of a subject's theta_S, with per-step drift probes.

One run is keyed by (subject, fine-tuning config, intervention), so every chapter that
needs the same run shares one cache entry. At every step the run records the mean
activations of the drift probes at *every* layer -- a small no-grad forward, no copy
of the model -- so alignment with any direction (v_rev, controls) is computed after
the fact (:mod:`reversion.core.drift`). The subject's judge runs on a sparse grid of
steps; its evaluation of theta_S (step 0 of every run) is a stage of its own, cached once.

Runs of a grouped subject (the organism) train together: :func:`finetune_many` builds
the missing runs that share a fine-tuning configuration (seeds aside) as one
:class:`~reversion.core.grouped.GroupedGPT2` computation -- training, drift probes and
evaluation batched over runs -- and writes each run's own cache entry. A run's numbers
do not depend on its group beyond float rounding (``tests/test_grouped.py`` compares a
group with each run trained alone), so the group is not part of the key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from reversion.core.activations import model_device
from reversion.core.batches import collate
from reversion.core.drift import weight_motion
from reversion.core.grouped import GroupedGPT2, NonFiniteLoss, stack_batches, stack_prompts
from reversion.core.interventions import GroupTerms
from reversion.core.models import default_device, load_model, save_model
from reversion.core.tracking import ProbeTracker
from reversion.core.train_settings import autocast
from reversion.core.training import FinetuneConfig, adamw, train
from reversion.infra import cache, kernels, parallel, seeding
from reversion.infra.provenance import code_of
from reversion.infra.runtime import set_cpu_threads
from reversion.stages.trainer_loop import model_for_training, trainer_train, training_device, training_key
from reversion.subjects.base import Pair, Prompts, Subject, TrainingData, identity

__all__ = ["FinetuneRun", "Intervention", "Job", "aligned_evaluation", "build_group", "finetune", "finetune_many",
           "load_run", "train_with", "train_with_trainer", "write_run"]

# The modules whose code decides a run (cache keys hash their import closure), with the
# subject's and the intervention's own modules (see ``_code``).
CODE = ("reversion.stages.finetune",)


def _code(*objects) -> tuple[str, ...]:
    return code_of(CODE, *objects)


class Intervention(Protocol):
    """What a fine-tuning variant may change (see :mod:`reversion.core.interventions`)."""

    def key(self) -> dict: ...
    def setup(self, model, data: TrainingData, probes: Prompts) -> None: ...
    def aux_loss(self, model, batch: dict, step: int) -> torch.Tensor | None: ...
    def batches(self, benign: Iterator[list[Pair]], data: TrainingData,
                ft: FinetuneConfig) -> Iterator[list[Pair]]: ...
    def teardown(self) -> None: ...


@dataclass(frozen=True)
class FinetuneRun:
    """A finished fine-tuning run."""

    path: Path
    probe_means: torch.Tensor
    """``[T+1, L+1, d]`` float64: mean drift-probe activation at every step and layer
    (step 0 = theta_S; NaN at the steps a ``track_every > 1`` run skips)."""
    losses: list[float]
    """Task loss per step 1..T."""
    evals: dict[int, dict]
    """Step -> the subject's evaluation: harmfulness (and its other measures) and task cost of
    the fine-tuning task (of every benign task at steps 0 and T); a run with
    ``judge_between = "first_token"`` has first-token harmfulness alone between 0 and T (no task
    cost; harmful content and exact match NaN)."""
    seconds: float

    @property
    def steps(self) -> list[int]:
        return sorted(self.evals)

    def series(self, *keys: str) -> list[float]:
        """A metric along the evaluation grid, e.g. ``series("harmfulness")`` or
        ``series("task_accuracy", "sort")``."""
        out = []
        for s in self.steps:
            v = self.evals[s]
            for k in keys:
                v = v[k]
            out.append(float(v))
        return out

    def load_model(self, device=None):
        if not (self.path / "model").is_dir():
            raise FileNotFoundError(f"{self.path}: this subject's runs keep no fine-tuned weights")
        return load_model(self.path / "model", device)


Job = tuple[Subject, FinetuneConfig, "Intervention | None"]
"""The arguments of one :func:`finetune` call."""


def threads(subject: Subject) -> None:
    """The organism on the pinned thread count (:mod:`reversion.infra.kernels`); a real model on
    ``REVERSION_THREADS`` (default 1) on a CPU."""
    if getattr(subject, "grouped", False):
        kernels.pin_threads()
    else:
        set_cpu_threads()


def _key(subject: Subject, ft: FinetuneConfig, intervention: Intervention | None) -> dict:
    key = {"subject": subject.key(), "finetune": dataclasses.asdict(ft),
           "intervention": intervention.key() if intervention is not None else None}
    training = training_key(subject)  # how a real checkpoint trains (the organism: its loop)
    return key if training is None else {**key, "training": training}


def aligned_evaluation(subject: Subject, ft: FinetuneConfig) -> dict:
    """Stage ``aligned_eval``: the subject's full evaluation of theta_S, which is step 0 of
    every fine-tuning run of this subject (cached once for all of them)."""
    subject.prepare(progress=False)

    def build(out: Path) -> None:
        threads(subject)
        # float32, as the fine-tuned model every later step evaluates (a bf16 step 0 would put a
        # precision artefact into every "rise from theta_S")
        model = subject.load("theta_S", dtype=torch.float32)
        if _groupable(subject, None):  # the arithmetic of every later step's evaluation
            cont, losses = GroupedGPT2([model]).run_work([subject.eval_work(ft, True)], subject.pad_widths())[0]
            result = subject.score(ft, cont, losses)
        else:
            result = subject.evaluate(model, ft, full=True)
        (out / "eval.json").write_text(json.dumps(result))

    path = cache.cached("aligned_eval", {"subject": subject.key(), **subject.eval_key(ft)}, build,
                        code=_code(subject))
    return json.loads((path / "eval.json").read_text())


def _collated(pairs: Iterator[list[Pair]], pad_id: int, device) -> Iterator[dict]:
    for batch in pairs:
        yield collate([p for p, _ in batch], [t for _, t in batch], pad_id=pad_id, device=device)


def finetune(subject: Subject, ft: FinetuneConfig, intervention: Intervention | None = None,
             progress: bool = True) -> FinetuneRun:
    """Benign fine-tuning of the subject's theta_S for ``ft.steps`` steps (cached).

    AdamW at a constant learning rate on the subject's benign batches; after every step the
    mean drift-probe activation at every layer; on ``ft.grid`` the subject's evaluation.
    Trained weights are float32 whatever dtype the subject reads its models in: AdamW steps
    of a small learning rate round away on half-precision weights. A subject with ``training``
    settings (your checkpoints) trains through ``transformers.Trainer`` instead
    (:func:`train_with_trainer`: LoRA by default, whose frozen base keeps the subject's dtype).
    """
    subject.check(ft)
    key = _key(subject, ft, intervention)
    subject.prepare(progress=progress)
    if _groupable(subject, intervention) and not cache.is_complete(
            cache.entry_path("finetune", key, code=_code(subject, intervention))):
        # here, or in a worker where this process's arithmetic is not the pinned one
        parallel.run_all([(build_group, ([(subject, ft, intervention)], progress))], progress, workers=1,
                         pinned=default_device().type == "cpu")

    def build(out: Path) -> None:
        t0 = time.perf_counter()
        if getattr(subject, "training", None) is not None:
            model, losses, means, evals = train_with_trainer(subject, ft, intervention, progress=progress)
            write_run(out, means, losses, evals, t0)
            return
        seeding.seed_everything(ft.seed)
        threads(subject)
        model = subject.load("theta_S", dtype=torch.float32)  # on the subject's device
        device = model_device(model)
        prompts = subject.prompts(ft.n_probe)
        tracker = ProbeTracker(model, prompts.drift, "all", pad_id=prompts.pad_id,
                               batch_size=subject.tracking_batch_size)

        def judge(step: int, m) -> dict:
            if step == 0:  # theta_S itself: the same for every run of this subject
                return aligned_evaluation(subject, ft)
            return subject.evaluate(m, ft, full=step == ft.steps)

        losses, means, evals = train_with(model, subject.benign_batches(ft), ft, intervention,
                                          subject.training_data(), prompts, tracker, judge, device, progress)
        if subject.keep_weights:
            save_model(model, out / "model")
        write_run(out, means, losses, evals, t0)

    return load_run(cache.cached("finetune", key, build, code=_code(subject, intervention)))


def train_with(model, pairs: Iterator[list[Pair]], ft: FinetuneConfig, intervention: Intervention | None,
               data: TrainingData, prompts: Prompts, tracker, judge, device, progress: bool, fit=None):
    """The fine-tuning loop of a run: ``(losses, means, evals)``.

    ``tracker(model)`` (drift probes' means) runs at step 0 and after every step ``ft.tracked``
    (NaN rows between);
    ``judge(step, model)`` at step 0 and on ``ft.grid``; both see the model without a
    training-time edit. The intervention is set up on ``(data, prompts)`` after step 0 and
    always torn down. ``fit(model, batches, on_step)``: the optimizer loop (default
    :func:`reversion.core.training.train` with the intervention's term; the Trainer's is
    :func:`train_with_trainer`'s).
    """
    means, evals, grid = [tracker(model)], {0: judge(0, model)}, set(ft.grid)
    paused = getattr(intervention, "paused", contextlib.nullcontext)

    def on_step(step: int, m) -> None:
        with paused():
            means.append(tracker(m) if ft.tracked(step) else torch.full_like(means[0], float("nan")))
            if step in grid:
                evals[step] = judge(step, m)

    aux = None
    if intervention is not None:
        intervention.setup(model, data, prompts)
        pairs = intervention.batches(pairs, data, ft)
        aux = intervention.aux_loss
    try:
        batches = _collated(pairs, prompts.pad_id, device)
        losses = train(model, batches, ft.steps, ft.lr, desc=f"finetune seed {ft.seed}", aux_loss=aux,
                       on_step=on_step, progress=progress) if fit is None else fit(model, batches, on_step)
        return losses, means, evals
    finally:
        if intervention is not None:
            intervention.teardown()


def train_with_trainer(subject: Subject, ft: FinetuneConfig, intervention: Intervention | None = None, *,
                       callbacks: Sequence = (), progress: bool = False):
    """A run of a subject with ``training`` settings (your checkpoints) through ``transformers.Trainer``
    (:func:`reversion.stages.trainer_loop.trainer_train`): ``(model, losses, means, evals)``.

    theta_S is read in float32 for full fine-tuning and in the subject's dtype under LoRA (only the
    adapters train, in float32). Drift probes and judge run under the training's autocast; step 0
    is the cached evaluation of theta_S only where the run is float32 throughout (elsewhere it is
    judged on the run's own model, so a rise carries no precision offset). ``callbacks``: further
    ``TrainerCallback``s (e.g. a ``ReversionMonitor``).
    """
    settings = subject.training
    seeding.seed_everything(ft.seed)
    threads(subject)
    model, cast = model_for_training(subject)
    device = model_device(model)
    float32 = cast is None and all(p.dtype == torch.float32 for p in model.parameters())
    prompts = subject.prompts(ft.n_probe)
    probe = ProbeTracker(model, prompts.drift, "all", pad_id=prompts.pad_id, batch_size=subject.tracking_batch_size)

    def tracker(m):
        with autocast(device, cast):
            return probe(m)

    def judge(step: int, m) -> dict:
        if step == 0 and float32:
            return aligned_evaluation(subject, ft)
        with autocast(device, cast):
            return subject.evaluate(m, ft, full=step == ft.steps)

    def fit(m, batches, on_step):
        return trainer_train(m, batches, ft.steps, ft.lr, ft.seed, settings, term=intervention, on_step=on_step,
                             callbacks=callbacks, progress=progress)

    losses, means, evals = train_with(model, subject.benign_batches(ft), ft, intervention, subject.training_data(),
                                      prompts, tracker, judge, device, progress, fit=fit)
    return model, losses, means, evals


GROUP_MAX = 8
"""Most runs trained as one group. A group's memory grows with its size, its speed per run does
not: at the default world a run-step costs 14.6, 14.3 and 14.7 ms in groups of 4, 8 and 16 (one
thread, measured side by side), while a group of 16 holds about 340 MiB of activations."""


def _groupable(subject: Subject, intervention: Intervention | None) -> bool:
    """Whether a run trains in a group: a grouped subject, and an intervention that only changes
    the data or is a directional term the group computes itself (:class:`GroupTerms`)."""
    return bool(getattr(subject, "grouped", False)) and (
        intervention is None or bool(getattr(intervention, "batches_only", False))
        or bool(getattr(intervention, "group_term", False)))


def _has_term(intervention: Intervention | None) -> bool:
    return bool(getattr(intervention, "group_term", False)) and not intervention.batches_only


def _group_signature(ft: FinetuneConfig, intervention: Intervention | None = None) -> str:
    """Runs in one group share everything in ``ft`` but the seed (steps, lr, grid, sizes), and
    either all carry a directional term or none does (and their batches have one size)."""
    tag = getattr(intervention, "group_tag", None)
    return json.dumps({**dataclasses.asdict(dataclasses.replace(ft, seed=0)), "term": _has_term(intervention),
                       "tag": tag(ft) if tag is not None else ""}, sort_keys=True)


def build_group(jobs: Sequence[Job], progress: bool = False) -> None:
    """Build the cache entries of ``jobs`` (grouped subjects, one :func:`_group_signature`) as one
    batched computation, on one thread (:mod:`reversion.infra.kernels`)."""
    jobs = [tuple(j) for j in jobs]
    if not jobs or len({_group_signature(ft, iv) for _, ft, iv in jobs}) != 1:
        raise ValueError("a group needs runs that differ in their seed only")
    if not all(_groupable(s, iv) for s, _, iv in jobs):
        raise ValueError("a group's runs need grouped subjects and data-only or directional interventions")
    t0 = time.perf_counter()
    kernels.pin_threads()
    ft0 = jobs[0][1]
    models = [s.load("theta_S", dtype=torch.float32) for s, _, _ in jobs]
    group = GroupedGPT2(models)
    device = group.wte.device
    prompts = [s.prompts(ft.n_probe) for s, ft, _ in jobs]
    widths = jobs[0][0].pad_widths()
    if any(s.pad_widths() != widths for s, _, _ in jobs):
        raise ValueError("a group's subjects must share their pad widths")
    probe_ids, probe_lens = stack_prompts([p.drift for p in prompts], prompts[0].pad_id, device, widths[0])
    layers = list(range(group.L + 1))
    evals = [{0: aligned_evaluation(s, ft)} for s, ft, _ in jobs]
    streams = []
    for (s, ft, iv), model, p in zip(jobs, models, prompts):
        pairs = s.benign_batches(ft)
        if iv is not None:
            if not _has_term(iv):  # a directional term is the group's (below), not the model's
                iv.setup(model, s.training_data(), p)
            pairs = iv.batches(pairs, s.training_data(), ft)
        streams.append(pairs)
    terms = GroupTerms(group, [iv for _, _, iv in jobs], prompts, widths[0]) if _has_term(jobs[0][2]) else None
    means = [[m] for m in group.last_token_means(probe_ids, probe_lens, layers)]
    # Weight space (grouped subjects carry their witness): the S -> H gap each run may close.
    theta_S = group.flat()
    gap = None
    if all("theta_H" in s.roles() for s, _, _ in jobs):
        gap = GroupedGPT2([s.load("theta_H", dtype=torch.float32) for s, _, _ in jobs]).flat() - theta_S
    losses: list[list[float]] = [[] for _ in jobs]
    opt = adamw(group.parameters(), ft0.lr)  # as core.training.train
    grid = set(ft0.grid)
    try:
        for step in tqdm(range(1, ft0.steps + 1), desc=f"finetune {len(jobs)} runs", disable=not progress,
                         mininterval=1.0, leave=False):
            batches = [next(it) for it in streams]
            ids, labels = stack_batches([collate([q for q, _ in b], [a for _, a in b], pad_id=p.pad_id, device=device)
                                         for b, p in zip(batches, prompts)], prompts[0].pad_id, widths[1])
            try:
                step_losses = group.train_step(opt, ids, labels) if terms is None else \
                    _term_step(group, opt, ids, labels, terms, step)
            except NonFiniteLoss as e:
                bad = [jobs[k][1].seed for k in e.runs]
                raise FloatingPointError(f"finetune seed(s) {bad}: non-finite loss at step {step}") from None
            for k, v in enumerate(step_losses):
                losses[k].append(v)
            tracked = group.last_token_means(probe_ids, probe_lens, layers) if ft0.tracked(step) else \
                [torch.full_like(means[0][0], float("nan"))] * len(jobs)
            for k, m in enumerate(tracked):
                means[k].append(m)
            if step in grid:
                full = step == ft0.steps
                with torch.no_grad():
                    results = group.run_work([s.eval_work(ft, full) for s, ft, _ in jobs], widths)
                motion = weight_motion(group.flat() - theta_S, gap) if gap is not None else [None] * len(jobs)
                for k, ((s, ft, _), res) in enumerate(zip(jobs, results)):
                    evals[k][step] = s.score(ft, *res)
                    if motion[k] is not None:
                        evals[k][step]["weight_space"] = motion[k]
    finally:
        for _, _, iv in jobs:
            if iv is not None:
                iv.teardown()
    seconds = time.perf_counter() - t0
    for k, (s, ft, iv) in enumerate(jobs):
        def build(out: Path, k=k, s=s) -> None:
            if s.keep_weights:
                save_model(group.export(k, models[k]), out / "model")
            write_run(out, means[k], losses[k], evals[k], seconds=seconds / len(jobs),
                      group={"runs": len(jobs), "seconds": seconds})
        cache.cached("finetune", _key(s, ft, iv), build, code=_code(s, iv))


def _term_step(group: GroupedGPT2, opt, ids, labels, terms: GroupTerms, step: int) -> list[float]:
    """:meth:`GroupedGPT2.train_step` with each run's directional term added to its loss (the
    runs stay independent: the group minimises the sum of the runs' totals)."""
    loss = group.losses(ids, labels)
    total = loss + terms(step)
    bad = [k for k in range(group.K) if not torch.isfinite(total[k])]
    if bad:
        raise NonFiniteLoss(bad)
    opt.zero_grad(set_to_none=True)
    total.sum().backward()
    opt.step()
    return loss.tolist()


def split_group(runs: list, workers: int, most: int | None = None) -> list[list]:
    """Runs of one signature in chunks of at most ``most`` (:data:`GROUP_MAX`) for ``workers``
    (:func:`reversion.infra.parallel.chunks`)."""
    return parallel.chunks(runs, workers, GROUP_MAX if most is None else most)


SPLIT_FROM = 20_000
"""Sequences (runs x steps x batch) from which a group is split over the workers: below it, a
worker's start (about 3 s of imports) costs more than the second core saves."""


def _size(jobs: Sequence[Job]) -> int:
    return sum(ft.steps * ft.batch_size for _, ft, _ in jobs)


def _build_quietly(subject: Subject, ft: FinetuneConfig, intervention: Intervention | None) -> None:
    finetune(subject, ft, intervention, progress=False)


EVALS_SPLIT_FROM = 8
"""theta_S evaluations (about 0.5 s each on the organism) from which they are shared out over the
workers rather than run here."""


def _may_use_cached_step0(subject: Subject) -> bool:
    """Whether a run of ``subject`` may read the cached float32 evaluation of theta_S as its step 0
    (:func:`train_with_trainer` judges step 0 on its own model when the run is not float32: a
    bf16 LoRA run of a 7B model would load a float32 copy for nothing)."""
    t = getattr(subject, "training", None)
    if t is None:
        return True
    half = t.method == "lora" and getattr(subject, "dtype", "auto") in ("bfloat16", "float16")
    return not half and t.autocast_dtype(training_device(subject)) is None


def _aligned_evaluations(pairs: Sequence[tuple[Subject, FinetuneConfig]]) -> None:
    for s, ft in pairs:
        aligned_evaluation(s, ft)


@parallel.session()
def finetune_many(jobs: Sequence[Job], progress: bool = True,
                  extra: Sequence[parallel.Call] = ()) -> list[FinetuneRun]:
    """:func:`finetune` for each ``(subject, ft, intervention)``, in order.

    The runs missing from the cache are built first -- in worker processes
    (:func:`reversion.infra.parallel.run_all`, one session of workers) when every subject
    allows it, with any ``extra`` independent calls alongside; one after another otherwise (a
    real model per worker would not fit). Subjects are prepared here; theta_S is evaluated
    once per subject, here or, when there are many, in the workers.
    """
    jobs = [tuple(j) for j in jobs]
    for s, ft, _ in jobs:
        s.check(ft)
    subjects = list({identity(s): s for s, _, _ in jobs}.values())
    for s in subjects:
        s.prepare(progress=progress)
    missing = {}
    for s, ft, iv in jobs:
        k = _key(s, ft, iv)
        if not cache.is_complete(cache.entry_path("finetune", k, code=_code(s, iv))):
            missing.setdefault(cache.cache_key("finetune", k, code=_code(s, iv)), (s, ft, iv))
    evaluated = {}
    for s, ft, _ in missing.values():  # here, once, not in every worker at once
        if not _may_use_cached_step0(s):
            continue
        evaluated.setdefault(cache.cache_key("aligned_eval", {"subject": s.key(), **s.eval_key(ft)}), (s, ft))
    pinned = any(s.grouped for s in subjects) and default_device().type == "cpu"
    workers = parallel.n_workers() if all(s.parallel for s in subjects) else 1
    # Many evaluations share the workers the runs then use (one session); a few run here.
    todo = list(evaluated.values())
    ev_workers = workers if len(todo) >= EVALS_SPLIT_FROM else 1
    parallel.run_all([(_aligned_evaluations, (part,)) for part in parallel.chunks(todo, ev_workers, len(todo), ev_workers)],
                     False, desc="theta_S evaluations", workers=ev_workers, pinned=pinned)
    groups: dict[str, list[Job]] = {}
    alone = []
    for j in missing.values():
        if _groupable(j[0], j[2]):
            groups.setdefault(_group_signature(j[1], j[2]), []).append(j)
        else:
            alone.append(j)
    # A group computes on one thread (reversion.infra.kernels): a large one is split so that
    # every worker holds a part. Largest first: the pool's first-come order is then
    # longest-processing-time scheduling.
    grouped = sorted((c for g in groups.values() for c in parallel.chunks(
        g, workers, GROUP_MAX, least=workers if _size(g) >= SPLIT_FROM else 1)), key=len, reverse=True)
    calls = [(build_group, (g,)) for g in grouped]
    if all(s.parallel for s in subjects):
        parallel.run_all(calls + [(_build_quietly, j) for j in alone] + list(extra), progress,
                         desc="fine-tuning runs", pinned=pinned)
    else:  # a real model among them: one at a time (memory), pinned where organism groups are
        parallel.run_all(calls + list(extra), progress, workers=1,
                         pinned=bool(calls) and default_device().type == "cpu")
    return [finetune(s, ft, iv, progress=progress) for s, ft, iv in jobs]


def write_run(out: Path, means: list[torch.Tensor], losses: list[float], evals: dict, t0: float | None = None,
              seconds: float | None = None, group: dict | None = None) -> None:
    """A run's files, as :func:`load_run` reads them. ``seconds``: the run's wall time (its share
    of its ``group``'s), else the time since ``t0``."""
    save_file({"probe_means": torch.stack(means).contiguous()}, out / "trajectory.safetensors")
    (out / "run.json").write_text(json.dumps({"losses": losses, "evals": evals}, indent=1))
    seconds = time.perf_counter() - t0 if seconds is None else seconds
    (out / "timings.json").write_text(json.dumps({"seconds": seconds, "group": group}))


def load_run(path: Path) -> FinetuneRun:
    run = json.loads((path / "run.json").read_text())
    return FinetuneRun(
        path=path,
        probe_means=load_file(path / "trajectory.safetensors")["probe_means"],
        losses=run["losses"],
        evals={int(k): v for k, v in run["evals"].items()},
        seconds=json.loads((path / "timings.json").read_text())["seconds"],
    )
