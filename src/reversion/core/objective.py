"""A term added to any ``transformers.Trainer``'s loss: :class:`ObjectiveMixin`.

It lives in core because the stage that fine-tunes real checkpoints
(:mod:`reversion.stages.trainer_loop`) and the users' own trainers
(:mod:`reversion.subjects.checkpoints.trainer_hooks` re-exports it, with ``BlockTrainer``) use the
same class.
"""

from __future__ import annotations

from torch.nn.parallel import DistributedDataParallel

__all__ = ["ObjectiveMixin"]


class ObjectiveMixin:
    """Adds ``block.aux_loss(model, inputs, step)`` to the training loss of any ``Trainer``
    subclass: ``class MySFT(ObjectiveMixin, trl.SFTTrainer)`` (the mixin first, so its
    ``compute_loss`` wraps theirs).

    ``block``: any object with ``aux_loss(model, batch, step) -> tensor | None`` (e.g.
    :func:`block_term`); step is the optimizer step being taken (1-based). The term is
    added in training only (not in evaluation) and once per optimizer step in
    total: with gradient accumulation it is divided over the micro-batches exactly as
    the Trainer divides its own loss. ``last_block_term`` keeps its latest value.

    Under DDP the term's forward runs through the wrapped module (``model.module``), not
    through the ``DistributedDataParallel`` wrapper. The loss's forward went through the
    wrapper, which readies its reducer for one backward; the term's graph ends on the same
    parameters, whose gradient hooks fire once per backward with both contributions already
    summed, so that one backward averages the term's gradient over the ranks together with
    the loss's. A second forward through the wrapper would redo the reducer's per-step
    bookkeeping (buffer broadcast, the unused-parameter search under
    ``find_unused_parameters``) mid-step on the term's output alone; it gives the same
    numbers in the tested run, but nothing requires it. Averaging is right because every
    rank computes the same term (see :class:`ShardedTerm`). FSDP2 (``fully_shard``) shards
    the module in place: its forward is the module's own.
    """

    def __init__(self, *args, block=None, **kwargs):
        if block is not None and not callable(getattr(block, "aux_loss", None)):
            raise ValueError(f"block must have an aux_loss(model, batch, step) method (e.g. block_term(...)), "
                             f"got {type(block).__name__}")
        super().__init__(*args, **kwargs)
        self.block = block
        self.last_block_term: float | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                   num_items_in_batch=num_items_in_batch)
        if self.block is None or not model.training:
            return out
        loss, outputs = out if return_outputs else (out, None)
        inner = model.module if isinstance(model, DistributedDataParallel) else model
        term = self.block.aux_loss(inner, inputs, self.state.global_step + 1)
        if term is not None:
            self.last_block_term = float(term.detach())
            # The Trainer divides a per-batch loss by the accumulation steps itself; a loss it
            # treats as already normalized over the accumulated batch is not divided, so the
            # term must be divided here to count once per optimizer step.
            if self.loss_is_normalised_over_the_step(num_items_in_batch):
                ga = getattr(self, "current_gradient_accumulation_steps", None) or self.args.gradient_accumulation_steps
                term = term / ga
            loss = loss + term.to(device=loss.device, dtype=loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def loss_is_normalised_over_the_step(self, num_items_in_batch) -> bool:
        """Whether the Trainer's loss of a micro-batch is already normalised over the whole
        accumulated batch (then the micro-batches' losses sum to the step's) rather than a
        per-micro-batch mean (which the Trainer divides by the accumulation steps itself)."""
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None) \
                or getattr(self, "compute_loss_func", None) is not None
        return bool(scaled)
