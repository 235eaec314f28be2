"""Stage ``calibrate``: the gradient norms that set a directional term's strength.

For a subject and a set of (direction, layers) pairs: at theta_S, the norm of the task loss's
gradient on the first ``n_batches`` benign batches of seed 0, and of each term's linear part
(:func:`reversion.core.interventions.gradient_norms`). A chapter then sets
``strength = multiple * task / term``, so every direction's term pulls with the same multiple
of the task gradient -- a calibration made before, and blind to, any outcome.

A subject with ``training`` settings (your checkpoints, :mod:`reversion.stages.trainer_loop`) is
calibrated on the model its runs train: LoRA adapters on theta_S in the subject's dtype (the
gradients of the adapters, not of every weight), under the training's autocast; with gradient
checkpointing the task loss is forwarded a sequence at a time, with accumulation in the run's
micro-batches, so calibration needs no more memory than a training step. The settings are in the key.
"""

from __future__ import annotations

import dataclasses
import json
from itertools import islice
from pathlib import Path

import torch

from reversion.core.activations import model_device
from reversion.core.batches import collate
from reversion.core.interventions import Oppose, _digest, gradient_norms
from reversion.core.train_settings import autocast
from reversion.core.training import FinetuneConfig
from reversion.infra import cache, seeding
from reversion.infra.checks import check_int
from reversion.infra.provenance import code_of
from reversion.infra.runtime import set_cpu_threads
from reversion.stages.trainer_loop import model_for_training, training_key
from reversion.subjects.base import Subject

__all__ = ["calibrate"]

CODE = ("reversion.stages.calibrate",)


def calibrate(subject: Subject, ft: FinetuneConfig, terms: dict[str, tuple[torch.Tensor, list[int]]],
              scale: torch.Tensor, n_batches: int = 4) -> dict[str, dict]:
    """``{name: {"task", "term", "ratio"}}`` for ``terms`` ``{name: (direction [L+1, d], layers)}``
    with the per-layer ``scale`` (cached; one model load for all of them)."""
    check_int("n_batches", n_batches, 1)
    if not terms:
        return {}
    ft0 = dataclasses.replace(ft, seed=0)
    settings = getattr(subject, "training", None)
    key = {"subject": subject.key(), "finetune": dataclasses.asdict(ft0), "n_batches": n_batches,
           "scale": _digest(scale),
           "terms": {n: {"v": _digest(v), "layers": sorted(int(x) for x in lay)} for n, (v, lay) in terms.items()}}
    if settings is not None:
        key["training"] = training_key(subject)
    subject.prepare(progress=False)

    def build(out: Path) -> None:
        set_cpu_threads()
        micro = None
        if settings is None:  # the organism's loop: full float32 fine-tuning
            model, cast = subject.load("theta_S", dtype=torch.float32), None
        else:
            with seeding.seeded(ft0.seed):  # the adapters' random start: seed 0's run's
                model, cast = model_for_training(subject)
            if settings.gradient_checkpointing:
                micro = 1
            elif settings.gradient_accumulation_steps > 1:
                micro = -(-ft0.batch_size // settings.gradient_accumulation_steps)
        device = model_device(model)
        prompts = subject.prompts(ft0.n_probe)
        batches = [collate([q for q, _ in b], [a for _, a in b], pad_id=prompts.pad_id, device=device)
                   for b in islice(subject.benign_batches(ft0), n_batches)]
        with autocast(device, cast):
            norms = {n: gradient_norms(model, Oppose(v, scale, 1.0, lay, direction=n), prompts, batches,
                                       micro_batch=micro)
                     for n, (v, lay) in terms.items()}
        (out / "norms.json").write_text(json.dumps(norms, indent=1))

    path = cache.cached("calibrate", key, build, code=code_of(CODE, subject))
    return json.loads((path / "norms.json").read_text())
