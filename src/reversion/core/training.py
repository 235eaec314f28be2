"""The training loop shared by every phase and by benign fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from reversion.infra.checks import check_choice, check_float, check_int

Batch = dict


def adamw(params, lr: float) -> torch.optim.Optimizer:
    """The one optimizer of every phase and run: AdamW, no weight decay, constant ``lr``, fused
    (one kernel over all parameters instead of about ten operators per parameter) where the
    parameters' device has the fused kernel."""
    params = list(params)
    fused = bool(params) and params[0].device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=fused or None)


def train(model: torch.nn.Module, batches: Iterator[Batch], steps: int, lr: float, *,
          desc: str = "train", aux_loss: Callable[[torch.nn.Module, Batch, int], torch.Tensor] | None = None,
          on_step: Callable[[int, torch.nn.Module], None] | None = None,
          optimizer: torch.optim.Optimizer | None = None, progress: bool = True) -> list[float]:
    """AdamW (no weight decay, constant lr) for ``steps`` steps; returns the task loss per step.

    ``aux_loss(model, batch, step)`` is added to the task loss (interventions);
    ``on_step(step, model)`` runs after each optimizer step (probes, evaluation).
    """
    opt = optimizer or adamw(model.parameters(), lr)
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


@dataclass(frozen=True)
class FinetuneConfig:
    """Benign fine-tuning from theta_S on one harmless task (any subject: the organism names one of
    its language's tasks, which it checks; checkpoints train on their fine-tuning pairs, and
    ``task``, ``n_eval`` and ``n_probe`` are the organism's)."""

    task: str = "sort"
    """The benign fine-tuning task (no harmful prompt anywhere in its data)."""
    steps: int = 100
    """T, the number of optimizer steps."""
    lr: float = 3e-4
    """Learning rate (AdamW, constant)."""
    batch_size: int = 32
    """Sequences per step."""
    seed: int = 0
    """Fine-tuning seed: data order. Every variant with this seed sees the same batches."""
    eval_steps: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 10, 15, 20, 30, 50, 75, 100)
    """Steps at which generation-based metrics are evaluated (see :attr:`grid`)."""
    n_eval: int = 200
    """Held-out harmful prompts judged at each evaluation step (and benign prompts per task)."""
    n_probe: int = 128
    """Drift-probe prompts whose mean activations are recorded at every step."""
    track_every: int = 1
    """Record the drift probes every this many steps (and at 0 and T); the steps between hold
    NaN. 1 (every step) for trajectories; runs read only at T need fewer forwards."""
    judge_between: str = "all"
    """What the judge scores at the evaluated steps strictly between 0 and T: ``"all"`` (every
    harmfulness measure and the trained task) or ``"first_token"`` (first-token harmfulness alone,
    from a continuation two tokens long: the organism, whose judge reads the first token; a
    checkpoint's judge reads whole answers and judges in full either way). Steps 0 and T are always
    judged in full."""

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise ValueError(f"finetune.task must be a task name, got {self.task!r}")
        check_int("finetune.steps (T)", self.steps, 1)
        check_float("finetune.lr", self.lr, 0.0, lo_open=True)
        check_int("finetune.batch_size", self.batch_size, 1)
        check_int("finetune.seed", self.seed, 0)
        check_int("finetune.n_eval", self.n_eval, 1)
        check_int("finetune.n_probe", self.n_probe, 2)
        check_int("finetune.track_every", self.track_every, 1)
        check_choice("finetune.judge_between", self.judge_between, ("all", "first_token"))
        if isinstance(self.eval_steps, list):
            object.__setattr__(self, "eval_steps", tuple(self.eval_steps))
        if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in self.eval_steps):
            raise ValueError(f"finetune.eval_steps must be ints >= 0, got {self.eval_steps}")

    def tracked(self, step: int) -> bool:
        """Whether the drift probes are recorded after ``step``."""
        return step % self.track_every == 0 or step == self.steps

    @property
    def grid(self) -> tuple[int, ...]:
        """Evaluation steps actually used: ``eval_steps`` up to T, plus 0 and T."""
        return tuple(sorted({s for s in self.eval_steps if s <= self.steps} | {0, self.steps}))
