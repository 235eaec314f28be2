"""The training loop shared by every phase and by benign fine-tuning."""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from tqdm import tqdm

Batch = dict


def train(model: torch.nn.Module, batches: Iterator[Batch], steps: int, lr: float, *,
          desc: str = "train", aux_loss: Callable[[torch.nn.Module, Batch, int], torch.Tensor] | None = None,
          on_step: Callable[[int, torch.nn.Module], None] | None = None,
          optimizer: torch.optim.Optimizer | None = None, progress: bool = True) -> list[float]:
    """AdamW (no weight decay, constant lr) for ``steps`` steps; returns the task loss per step.

    ``aux_loss(model, batch, step)`` is added to the task loss (interventions);
    ``on_step(step, model)`` runs after each optimizer step (probes, evaluation).
    """
    opt = optimizer or torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses: list[float] = []
    for step in tqdm(range(1, steps + 1), desc=desc, disable=not progress, mininterval=1.0,
                     leave=False):
        batch = next(batches)
        loss = model(**batch).loss
        extra = aux_loss(model, batch, step) if aux_loss is not None else None
        total = loss if extra is None else loss + extra
        if not torch.isfinite(total):
            raise FloatingPointError(f"{desc}: non-finite loss at step {step}")
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, model)
    return losses
