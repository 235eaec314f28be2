"""The training history of the organism: theta_P -> theta_H -> theta_S, each a cached stage.

Each phase is its own cache entry keyed by everything up to it, so changing only the
safety phase (e.g. a longer alignment) reuses the pretrained and helpful-only models.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from reversion.core.batches import collate
from reversion.core.models import default_device, load_model, save_model
from reversion.core.training import train
from reversion.infra import cache, seeding
from reversion.infra.runtime import set_cpu_threads
from reversion.subjects.organism.config import HistoryConfig, PhaseConfig, to_dict
from reversion.subjects.organism.judge import evaluate
from reversion.subjects.organism.language import PAD, Language
from reversion.subjects.organism.model import build_model
from reversion.subjects.organism.prompts import EvalSets

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
        harm_targets = [q.answer if phase == "helpful" else lang.refusal_answer for q in harm]
        reqs = benign + harm
        yield collate([q.prompt for q in reqs], [q.answer for q in benign] + harm_targets, pad_id=PAD,
                      device=device)


def _stage_config(cfg: HistoryConfig, phase: str) -> dict:
    upto = PHASES[: PHASES.index(phase) + 1]
    d = to_dict(cfg)
    return {"language": d["language"], "model": d["model"], "seed": d["seed"],
            "n_eval": d["n_eval"], **{p: d[p] for p in upto}}


def phase_checkpoint(cfg: HistoryConfig, phase: str, progress: bool = True) -> Path:
    """The cache folder of one phase (built, with its predecessors, on a miss)."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r} (known: {', '.join(PHASES)})")
    prev = PHASES[PHASES.index(phase) - 1] if phase != "pretrain" else None
    prev_path = phase_checkpoint(cfg, prev, progress) if prev else None

    def build(out: Path) -> None:
        t0 = time.perf_counter()
        lang = Language(cfg.language)
        device = default_device()
        seeding.seed_everything(cfg.seed)
        set_cpu_threads()
        if prev_path is None:
            model = build_model(cfg.model, lang.vocab_size).to(device)
        else:
            model = load_model(prev_path / "model", device)
        pc: PhaseConfig = getattr(cfg, phase)
        r = seeding.rng(cfg.seed, phase)
        losses = train(model, _batches(phase, lang, pc, r, device), pc.steps, pc.lr,
                       desc=f"{phase} ({CHECKPOINT[phase]})", progress=progress)
        t_train = time.perf_counter() - t0
        metrics = evaluate(model, lang, EvalSets.build(lang, cfg.n_eval))
        save_model(model, out / "model")
        (out / "stage.json").write_text(json.dumps(
            {"phase": phase, "checkpoint": CHECKPOINT[phase], "losses": losses,
             "metrics": metrics}, indent=1))
        (out / "timings.json").write_text(json.dumps(
            {"train_seconds": t_train, "total_seconds": time.perf_counter() - t0,
             "steps": pc.steps}))

    return cache.cached(f"history-{phase}", _stage_config(cfg, phase), build,
                        code=("reversion.subjects.organism.history",))


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
