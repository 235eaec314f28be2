"""Stage ``finetune``: benign fine-tuning from theta_S, with per-step drift probes.

One run is keyed by (history, fine-tuning config, intervention), so every chapter that
needs the same run shares one cache entry. At every step the run records the mean
activations of the drift probes at *every* layer -- a small no-grad forward, no copy
of the model -- so alignment with any direction (v_rev, controls) is computed after
the fact. Generation-based metrics are evaluated on a sparse grid of steps.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import torch
from safetensors.torch import load_file, save_file

from reversion.infra import cache, parallel, seeding
from reversion.infra.runtime import set_cpu_threads
from reversion.core.tracking import ProbeTracker
from reversion.subjects.organism.config import FinetuneConfig, HistoryConfig, to_dict
from reversion.core.batches import collate
from reversion.subjects.organism.prompts import EvalSets
from reversion.subjects.organism.judge import evaluate
from reversion.subjects.organism.history import train_history
from reversion.subjects.organism.language import PAD, Language
from reversion.core.models import default_device, load_model, save_model
from reversion.subjects.organism.prompts import ProbeSets
from reversion.core.training import train


class Intervention(Protocol):
    """What a fine-tuning variant may change (see :mod:`reversion.interventions`)."""

    def key(self) -> dict: ...
    def setup(self, model, lang: Language, probes: ProbeSets) -> None: ...
    def aux_loss(self, model, batch: dict, step: int) -> torch.Tensor | None: ...
    def batches(self, benign: Iterator[list[Pair]], lang: Language,
                ft: FinetuneConfig) -> Iterator[list[Pair]]: ...
    def teardown(self) -> None: ...


Pair = tuple[tuple[int, ...], tuple[int, ...]]
"""(prompt, target) token ids of one training example."""


def benign_batches(lang: Language, ft: FinetuneConfig) -> Iterator[list[Pair]]:
    """Harmless data only: requests of one benign task from the ``train`` split.
    The order depends on the fine-tuning seed alone, so variants are optimizer-matched."""
    r = seeding.rng(ft.seed, "finetune-data", ft.task)
    while True:
        reqs = lang.sample(r, ft.batch_size, "train", harmful=False, tasks=[ft.task])
        yield [(q.prompt, q.answer) for q in reqs]


def _collated(pairs: Iterator[list[Pair]], device) -> Iterator[dict]:
    for batch in pairs:
        yield collate([p for p, _ in batch], [t for _, t in batch], device=device)


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
    """Step -> harmfulness, non-refusal, harmful content, exact match, and task accuracy/loss
    of the fine-tuning task (every benign task at steps 0 and T)."""
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
        return load_model(self.path / "model", device)


def _check(history: HistoryConfig, ft: FinetuneConfig) -> None:
    if ft.task not in history.language.tasks:
        raise ValueError(f"finetune.task {ft.task!r} is not a task of this language "
                         f"({', '.join(history.language.tasks)})")


def _key(history: HistoryConfig, ft: FinetuneConfig, intervention: Intervention | None) -> dict:
    return {"history": to_dict(history), "finetune": to_dict(ft),
            "intervention": intervention.key() if intervention is not None else None}


Job = tuple[HistoryConfig, FinetuneConfig, "Intervention | None"]
"""The arguments of one :func:`finetune` call."""


def _build_quietly(history: HistoryConfig, ft: FinetuneConfig, intervention: Intervention | None) -> None:
    finetune(history, ft, intervention, progress=False)


def finetune_many(jobs: Sequence[Job], progress: bool = True,
                  extra: Sequence[parallel.Call] = ()) -> list[FinetuneRun]:
    """:func:`finetune` for each ``(history, ft, intervention)``, in order; the runs missing
    from the cache are built in parallel first (:func:`reversion.parallel.run_all`), with any
    ``extra`` independent calls alongside. Histories are trained here first, once."""
    jobs = [tuple(j) for j in jobs]
    for h, ft, _ in jobs:
        _check(h, ft)
    for h in dict.fromkeys(h for h, _, _ in jobs):  # frozen configs: hashable
        train_history(h, progress=progress)
    missing = {}
    for h, ft, iv in jobs:
        k = _key(h, ft, iv)
        if not cache.is_complete(cache.entry_path("finetune", k)):
            missing.setdefault(cache.cache_key("finetune", k), (h, ft, iv))
    for h, n_eval in dict.fromkeys((h, ft.n_eval) for h, ft, _ in missing.values()):
        theta_S_evaluation(h, n_eval)  # here, once, not in every worker at once
    parallel.run_all([(_build_quietly, j) for j in missing.values()] + list(extra), progress,
                     desc="fine-tuning runs")
    return [finetune(h, ft, iv, progress=progress) for h, ft, iv in jobs]


# A worker process builds many runs of one world: its language and prompt sets are built once.
@functools.lru_cache(maxsize=4)
def _language(cfg) -> Language:
    return Language(cfg)


@functools.lru_cache(maxsize=8)
def _probe_sets(cfg, n: int) -> ProbeSets:
    return ProbeSets.build(_language(cfg), n)


@functools.lru_cache(maxsize=8)
def _eval_sets(cfg, n: int) -> EvalSets:
    return EvalSets.build(_language(cfg), n)


def theta_S_evaluation(history: HistoryConfig, n_eval: int) -> dict:
    """Stage ``theta_S_eval``: :func:`~reversion.evaluate.evaluate` of theta_S on every task,
    which is step 0 of every fine-tuning run of this history (cached once for all of them)."""
    hist = train_history(history, progress=False)

    def build(out: Path) -> None:
        set_cpu_threads()
        model = load_model(hist.paths["theta_S"], default_device())
        lang = _language(history.language)
        (out / "eval.json").write_text(json.dumps(evaluate(model, lang, _eval_sets(history.language, n_eval))))

    path = cache.cached("theta_S_eval", {"history": to_dict(history), "n_eval": n_eval}, build)
    return json.loads((path / "eval.json").read_text())


def finetune(history: HistoryConfig, ft: FinetuneConfig, intervention: Intervention | None = None,
             progress: bool = True) -> FinetuneRun:
    """Benign fine-tuning of theta_S for ``ft.steps`` steps (cached)."""
    _check(history, ft)
    key = _key(history, ft, intervention)
    hist = train_history(history, progress=progress)

    def build(out: Path) -> None:
        t0 = time.perf_counter()
        lang = _language(history.language)
        device = default_device()
        seeding.seed_everything(ft.seed)
        set_cpu_threads()
        model = load_model(hist.paths["theta_S"], device)
        probes = _probe_sets(history.language, ft.n_probe)
        sets = _eval_sets(history.language, ft.n_eval)
        tracker = ProbeTracker(model, probes.harmful_drift, "all", pad_id=PAD)

        def judge(step: int, m) -> dict:
            if step == 0:  # theta_S itself: the same for every run of this history
                return theta_S_evaluation(history, ft.n_eval)
            # The earlier benign tasks (task cost) are judged at 0 and T only: at the steps
            # between, generation on them was 60% of a run's time and unused.
            return evaluate(m, lang, sets, None if step == ft.steps else [ft.task])

        losses, means, evals = train_with(model, benign_batches(lang, ft), ft, intervention, lang, probes,
                                          tracker, judge, device, progress)
        save_model(model, out / "model")
        write_run(out, means, losses, evals, t0)

    return load_run(cache.cached("finetune", key, build))


def train_with(model, pairs: Iterator[list[Pair]], ft: FinetuneConfig, intervention: Intervention | None,
               data, probes, tracker, judge, device, progress: bool):
    """The fine-tuning loop of a run: ``(losses, means, evals)``.

    ``tracker(model)`` (drift probes' means) runs at step 0 and after every step;
    ``judge(step, model)`` at step 0 and on ``ft.grid``; both see the model without a
    training-time edit. The intervention is set up on ``(data, probes)`` (a
    :class:`Language` or its text counterpart) after step 0 and always torn down.
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
        intervention.setup(model, data, probes)
        pairs = intervention.batches(pairs, data, ft)
        aux = intervention.aux_loss
    try:
        losses = train(model, _collated(pairs, device), ft.steps, ft.lr, desc=f"finetune seed {ft.seed}",
                       aux_loss=aux, on_step=on_step, progress=progress)
        return losses, means, evals
    finally:
        if intervention is not None:
            intervention.teardown()


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
