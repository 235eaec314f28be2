"""Stage ``finetune``: benign fine-tuning of a subject's theta_S, with per-step drift probes.

One run is keyed by (subject, fine-tuning config, intervention), so every chapter that
needs the same run shares one cache entry. At every step the run records the mean
activations of the drift probes at *every* layer -- a small no-grad forward, no copy
of the model -- so alignment with any direction (v_rev, controls) is computed after
the fact (:mod:`reversion.core.drift`). The subject's judge runs on a sparse grid of
steps; its evaluation of theta_S (step 0 of every run) is a stage of its own, cached once.
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

from reversion.core.activations import model_device
from reversion.core.batches import collate
from reversion.core.models import load_model, save_model
from reversion.core.tracking import ProbeTracker
from reversion.core.training import FinetuneConfig, train
from reversion.infra import cache, parallel, seeding
from reversion.infra.provenance import code_of
from reversion.infra.runtime import set_cpu_threads
from reversion.subjects.base import Pair, Prompts, Subject, TrainingData, identity

__all__ = ["FinetuneRun", "Intervention", "Job", "aligned_evaluation", "finetune", "finetune_many",
           "load_run", "train_with", "write_run"]

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
    (step 0 = theta_S)."""
    losses: list[float]
    """Task loss per step 1..T."""
    evals: dict[int, dict]
    """Step -> the subject's evaluation: harmfulness (and its other measures) and task cost of
    the fine-tuning task (of every benign task at steps 0 and T)."""
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


def _key(subject: Subject, ft: FinetuneConfig, intervention: Intervention | None) -> dict:
    return {"subject": subject.key(), "finetune": dataclasses.asdict(ft),
            "intervention": intervention.key() if intervention is not None else None}


def aligned_evaluation(subject: Subject, ft: FinetuneConfig) -> dict:
    """Stage ``aligned_eval``: the subject's full evaluation of theta_S, which is step 0 of
    every fine-tuning run of this subject (cached once for all of them)."""
    subject.prepare(progress=False)

    def build(out: Path) -> None:
        set_cpu_threads()
        # float32, as the fine-tuned model every later step evaluates (a bf16 step 0 would put a
        # precision artefact into every "rise from theta_S")
        model = subject.load("theta_S", dtype=torch.float32)
        (out / "eval.json").write_text(json.dumps(subject.evaluate(model, ft, full=True)))

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
    of a small learning rate round away on half-precision weights.
    """
    subject.check(ft)
    key = _key(subject, ft, intervention)
    subject.prepare(progress=progress)

    def build(out: Path) -> None:
        t0 = time.perf_counter()
        seeding.seed_everything(ft.seed)
        set_cpu_threads()
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
               data: TrainingData, prompts: Prompts, tracker, judge, device, progress: bool):
    """The fine-tuning loop of a run: ``(losses, means, evals)``.

    ``tracker(model)`` (drift probes' means) runs at step 0 and after every step;
    ``judge(step, model)`` at step 0 and on ``ft.grid``; both see the model without a
    training-time edit. The intervention is set up on ``(data, prompts)`` after step 0 and
    always torn down.
    """
    means, evals, grid = [tracker(model)], {0: judge(0, model)}, set(ft.grid)
    paused = getattr(intervention, "paused", contextlib.nullcontext)

    def on_step(step: int, m) -> None:
        with paused():
            means.append(tracker(m))
            if step in grid:
                evals[step] = judge(step, m)

    aux = None
    if intervention is not None:
        intervention.setup(model, data, prompts)
        pairs = intervention.batches(pairs, data, ft)
        aux = intervention.aux_loss
    try:
        losses = train(model, _collated(pairs, prompts.pad_id, device), ft.steps, ft.lr,
                       desc=f"finetune seed {ft.seed}", aux_loss=aux, on_step=on_step, progress=progress)
        return losses, means, evals
    finally:
        if intervention is not None:
            intervention.teardown()


def _build_quietly(subject: Subject, ft: FinetuneConfig, intervention: Intervention | None) -> None:
    finetune(subject, ft, intervention, progress=False)


def finetune_many(jobs: Sequence[Job], progress: bool = True,
                  extra: Sequence[parallel.Call] = ()) -> list[FinetuneRun]:
    """:func:`finetune` for each ``(subject, ft, intervention)``, in order.

    The runs missing from the cache are built first -- in worker processes
    (:func:`reversion.infra.parallel.run_all`) when every subject allows it, with any
    ``extra`` independent calls alongside; one after another otherwise (a real model per
    worker would not fit). Subjects are prepared and theta_S evaluated here, once.
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
        evaluated.setdefault(cache.cache_key("aligned_eval", {"subject": s.key(), **s.eval_key(ft)}), (s, ft))
    for s, ft in evaluated.values():
        aligned_evaluation(s, ft)
    if all(s.parallel for s in subjects):
        parallel.run_all([(_build_quietly, j) for j in missing.values()] + list(extra), progress,
                         desc="fine-tuning runs")
    else:
        parallel.run_all(list(extra), progress, workers=1)
    return [finetune(s, ft, iv, progress=progress) for s, ft, iv in jobs]


def write_run(out: Path, means: list[torch.Tensor], losses: list[float], evals: dict, t0: float) -> None:
    """A run's files, as :func:`load_run` reads them."""
    save_file({"probe_means": torch.stack(means).contiguous()}, out / "trajectory.safetensors")
    (out / "run.json").write_text(json.dumps({"losses": losses, "evals": evals}, indent=1))
    (out / "timings.json").write_text(json.dumps({"seconds": time.perf_counter() - t0}))


def load_run(path: Path) -> FinetuneRun:
    run = json.loads((path / "run.json").read_text())
    return FinetuneRun(
        path=path,
        probe_means=load_file(path / "trajectory.safetensors")["probe_means"],
        losses=run["losses"],
        evals={int(k): v for k, v in run["evals"].items()},
        seconds=json.loads((path / "timings.json").read_text())["seconds"],
    )
