"""The training history of the organism: theta_P -> theta_H -> theta_S, each a cached stage.

Each phase is its own cache entry keyed by everything up to it, so changing only the
safety phase (e.g. a longer alignment) reuses the pretrained and helpful-only models.

Histories train as groups (:class:`reversion.core.grouped.GroupedGPT2`): every phase
missing from the cache for several histories with one phase configuration is one batched
computation (:func:`train_histories`), a lone history a group of one. Every batch is
padded to the language's longest sequence, so a history's weights are the same bit for
bit whichever histories share its group (``tests/test_grouped.py``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from reversion.core.batches import collate
from reversion.core.grouped import GroupedGPT2, NonFiniteLoss, stack_batches
from reversion.core.models import default_device, load_model, save_model
from reversion.core.training import adamw
from reversion.infra import cache, kernels, parallel, seeding
from reversion.subjects.organism.config import HistoryConfig, PhaseConfig, to_dict
from reversion.subjects.organism.judge import eval_work, score
from reversion.subjects.organism.language import PAD, Language
from reversion.subjects.organism.model import build_model
from reversion.subjects.organism.prompts import eval_sets, language

PHASES = ("pretrain", "helpful", "safety")
CHECKPOINT = {"pretrain": "theta_P", "helpful": "theta_H", "safety": "theta_S"}


def _batches(phase: str, lang: Language, pc: PhaseConfig, r: np.random.Generator,
             device) -> Iterator[dict]:
    """The data of one phase, drawn from the ``train`` split only."""
    n_harm = int(round(pc.batch_size * pc.harmful_fraction))
    n_benign = pc.batch_size - n_harm
    while True:
        benign = lang.sample(r, n_benign, "train", harmful=False, tasks=pc.benign_tasks or None)
        if phase == "pretrain":
            # Whole documents, loss on every token: demos of the tasks plus free text
            # that mentions harmful tokens. No request is ever refused or answered
            # harmfully here.
            docs = [(*q.prompt, *q.answer) for q in benign] + lang.free_text(r, n_harm)
            yield collate(docs, pad_id=PAD, loss_on_prompt=True, device=device)
            continue
        harm = lang.sample(r, n_harm, "train", harmful=True)
        # helpful-only: harmful requests get the compliant answer; safety: the refusal.
        harm_targets = [lang.compliance(q, pc.marker) if phase == "helpful" else lang.refusal_answer
                        for q in harm]
        reqs = benign + harm
        yield collate([q.prompt for q in reqs], [q.answer for q in benign] + harm_targets, pad_id=PAD,
                      device=device)


def _stage_config(cfg: HistoryConfig, phase: str) -> dict:
    upto = PHASES[: PHASES.index(phase) + 1]
    d = to_dict(cfg)
    return {"language": d["language"], "model": d["model"], "seed": d["seed"],
            "n_eval": d["n_eval"], **{p: d[p] for p in upto}}


GROUP_MAX = 8
"""Most histories trained as one group (memory grows with the group, speed per history does not:
see :data:`reversion.stages.finetune.GROUP_MAX`)."""


CODE = ("reversion.subjects.organism.history",)
"""The modules whose code decides a phase (cache keys hash their import closure)."""


def _entry(cfg: HistoryConfig, phase: str) -> Path:
    return cache.entry_path(f"history-{phase}", _stage_config(cfg, phase), code=CODE)


def phase_checkpoint(cfg: HistoryConfig, phase: str, progress: bool = True) -> Path:
    """The cache folder of one phase (built, with its predecessors, on a miss)."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r} (known: {', '.join(PHASES)})")
    if not cache.is_complete(_entry(cfg, phase)):
        train_histories([cfg], progress=progress, upto=phase)
    return _entry(cfg, phase)


def _signature(cfg: HistoryConfig, phase: str) -> str:
    """Histories whose ``phase`` trains in one group: the same optimizer schedule (steps, learning
    rate, batch size), model and language sizes. What a batch holds (harmful share, tasks, style)
    is each history's own data stream."""
    d = to_dict(cfg)
    lang = {k: v for k, v in d["language"].items() if k != "seed"}
    sched = {k: d[phase][k] for k in ("steps", "lr", "batch_size")}
    return json.dumps({"phase": phase, "schedule": sched, "model": d["model"], "language": lang,
                       "n_eval": d["n_eval"]}, sort_keys=True)


def _prefix(cfg: HistoryConfig, phase: str) -> str:
    """What ``cfg``'s ``phase`` shares with a longer run of it: everything but its step count.
    The learning rate is constant and the data stream does not depend on the length, so the
    first n steps of a longer phase *are* the n-step phase, bit for bit."""
    d = _stage_config(cfg, phase)
    d[phase] = {k: v for k, v in d[phase].items() if k != "steps"}
    return json.dumps(d, sort_keys=True)


SPLIT_FROM = 50_000
"""Sequences (histories x steps x batch) of a phase from which its group is split over the
workers: below it, a worker's start (about 3 s of imports) costs more than a core saves."""


@parallel.session()
def train_histories(cfgs: Sequence[HistoryConfig], progress: bool = True, upto: str = "safety") -> list[Path]:
    """Build the phases up to ``upto`` of every history in ``cfgs`` that the cache lacks, phase by
    phase, each phase as groups of histories; returns the folders of phase ``upto``. A group
    computes on one thread (:mod:`reversion.infra.kernels`); a large phase is split into groups
    run side by side in worker processes (:func:`reversion.infra.parallel.run_all`, one session of
    workers for every phase), which changes no number: a history's weights do not depend on its
    group.

    A missing phase that is a shorter run of another missing phase (e.g. a helpful phase at half
    its length, chapter "Which past?"'s dose) is not trained: it is saved from the longer run
    when that run passes its step count (``tests/test_organism_history.py`` checks the two are
    identical)."""
    workers = parallel.n_workers()
    for phase in PHASES[: PHASES.index(upto) + 1]:
        missing: dict[str, HistoryConfig] = {}
        for c in cfgs:
            if not cache.is_complete(_entry(c, phase)):
                missing[cache.cache_key(f"history-{phase}", _stage_config(c, phase), CODE)] = c
        # The longest run of each prefix carries the shorter ones as snapshots.
        by_prefix: dict[str, list[HistoryConfig]] = {}
        for c in missing.values():
            by_prefix.setdefault(_prefix(c, phase), []).append(c)
        todo: dict[str, list[tuple[HistoryConfig, list[HistoryConfig]]]] = {}
        for runs in by_prefix.values():
            runs.sort(key=lambda c: getattr(c, phase).steps)
            carrier = runs[-1]
            todo.setdefault(_signature(carrier, phase), []).append((carrier, runs[:-1]))
        calls = []
        for group in todo.values():
            pc: PhaseConfig = getattr(group[0][0], phase)
            size = len(group) * pc.steps * pc.batch_size
            for part in parallel.chunks(group, workers, GROUP_MAX, least=workers if size >= SPLIT_FROM else 1):
                calls.append((_build_phase, (part, phase, progress and len(calls) == 0)))
        calls.sort(key=lambda c: len(c[1][0]), reverse=True)
        parallel.run_all(calls, progress and len(calls) > 1, desc=f"{phase} ({CHECKPOINT[phase]})",
                         workers=workers, pinned=default_device().type == "cpu")
    return [_entry(c, upto) for c in cfgs]


def _build_phase(jobs: list[tuple[HistoryConfig, list[HistoryConfig]]], phase: str, progress: bool) -> None:
    """Train ``phase`` of each job's history as one group; a job's snapshots (the same phase,
    fewer steps) are saved as the group passes their step counts."""
    t0 = time.perf_counter()
    kernels.pin_threads()
    device = default_device()
    cfgs = [c for c, _ in jobs]
    langs = [language(c.language) for c in cfgs]
    models = []
    for c, lang in zip(cfgs, langs):
        if phase == "pretrain":
            seeding.seed_everything(c.seed)  # the initialisation
            models.append(build_model(c.model, lang.vocab_size).to(device))
        else:
            prev = PHASES[PHASES.index(phase) - 1]
            models.append(load_model(_entry(c, prev) / "model", device))
    group = GroupedGPT2(models)
    pc: PhaseConfig = getattr(cfgs[0], phase)
    streams = [_batches(phase, lang, getattr(c, phase), seeding.rng(c.seed, phase), device)
               for c, lang in zip(cfgs, langs)]
    widths = (langs[0].max_prompt_len, langs[0].max_sequence_len)
    opt = adamw(group.parameters(), pc.lr)
    losses: list[list[float]] = [[] for _ in cfgs]
    snaps = {}
    for k, (_, shorter) in enumerate(jobs):
        for c in shorter:
            snaps.setdefault(getattr(c, phase).steps, []).append((k, c))

    def snapshot(step: int) -> None:
        due = snaps.get(step, [])
        if due:
            # The snapshots due at this step evaluate as one group of their own, which computes
            # what each run's own group would (fixed widths: tests/test_grouped.py).
            part = GroupedGPT2([group.export(k, models[k]) for k, _ in due])
            _save([c for _, c in due], phase, part, [models[k] for k, _ in due],
                  [losses[k][:step] for k, _ in due], step, t0, time.perf_counter() - t0)

    names = f"{len(cfgs)} histories" if len(cfgs) > 1 else f"seed {cfgs[0].seed}"
    snapshot(0)
    for step in tqdm(range(1, pc.steps + 1), desc=f"{phase} ({CHECKPOINT[phase]}), {names}",
                     disable=not progress, mininterval=1.0, leave=False):
        ids, labels = stack_batches([next(s) for s in streams], PAD, widths[1])
        try:
            step_losses = group.train_step(opt, ids, labels)
        except NonFiniteLoss:
            raise FloatingPointError(f"{phase} ({CHECKPOINT[phase]}): non-finite loss at step {step}") from None
        for k, v in enumerate(step_losses):
            losses[k].append(v)
        snapshot(step)
    _save(cfgs, phase, group, models, losses, pc.steps, t0, time.perf_counter() - t0)


def _save(cfgs: list[HistoryConfig], phase: str, group: GroupedGPT2, models: list, losses: list[list[float]],
          steps: int, t0: float, t_train: float) -> None:
    """Evaluate every run of ``group`` and write each history's entry of ``phase`` (``models``:
    plain models to export the runs into)."""
    langs = [language(c.language) for c in cfgs]
    widths = (langs[0].max_prompt_len, langs[0].max_sequence_len)
    sets = [eval_sets(c.language, c.n_eval) for c in cfgs]
    with torch.no_grad():
        results = group.run_work([eval_work(lang, e) for lang, e in zip(langs, sets)], widths)
    total, n = time.perf_counter() - t0, len(cfgs)
    for k, (c, lang) in enumerate(zip(cfgs, langs)):
        metrics = score(lang, sets[k], *results[k])

        def build(out: Path, k=k, metrics=metrics) -> None:
            save_model(group.export(k, models[k]), out / "model")
            (out / "stage.json").write_text(json.dumps(
                {"phase": phase, "checkpoint": CHECKPOINT[phase], "losses": losses[k],
                 "metrics": metrics}, indent=1))
            # a group's time, shared out: ``group`` says how many histories shared it
            (out / "timings.json").write_text(json.dumps(
                {"train_seconds": t_train / n, "total_seconds": total / n, "steps": steps, "group": n}))

        cache.cached(f"history-{phase}", _stage_config(c, phase), build, code=CODE)


@dataclass(frozen=True)
class History:
    """The three checkpoints of a history and what was measured at each."""

    config: HistoryConfig
    paths: dict[str, Path]
    """``theta_P``, ``theta_H``, ``theta_S`` -> Hugging Face model folder."""
    metrics: dict[str, dict]
    """Checkpoint -> harmfulness, non-refusal, exact match, task accuracy/loss."""
    losses: dict[str, list[float]]
    """Phase -> training loss per step."""
    seconds: dict[str, float]
    """Phase -> wall-clock seconds when it was built (not deterministic)."""

    def load(self, checkpoint: str, device=None):
        if checkpoint not in self.paths:
            raise ValueError(f"unknown checkpoint {checkpoint!r} (known: {', '.join(self.paths)})")
        return load_model(self.paths[checkpoint], device)


def train_history(cfg: HistoryConfig | None = None, progress: bool = True) -> History:
    """Stage ``train_history``: theta_P, theta_H and theta_S for ``cfg`` (cached)."""
    cfg = cfg or HistoryConfig()
    paths, metrics, losses, seconds = {}, {}, {}, {}
    for phase in PHASES:
        folder = phase_checkpoint(cfg, phase, progress)
        ck = CHECKPOINT[phase]
        stage = json.loads((folder / "stage.json").read_text())
        paths[ck] = folder / "model"
        metrics[ck] = stage["metrics"]
        losses[phase] = stage["losses"]
        seconds[phase] = json.loads((folder / "timings.json").read_text())["total_seconds"]
    return History(cfg, paths, metrics, losses, seconds)
