"""Greedy generation of prompts of mixed length in full batches, for text checkpoints.

:func:`reversion.core.generation.greedy_generate` batches prompts of exactly equal length, which
needs no padding and suits the organism (a handful of prompt lengths). A real prompt set has as
many lengths as prompts, so that rule runs it almost one prompt at a time. Here each batch is
left-padded: an attention mask hides the pads and position ids count from each prompt's first
real token, so a prompt's continuation is the one it gets alone (``tests/test_generation.py``
checks it token for token on a tiny Llama and GPT-2 with mixed lengths). Prompts are sorted by
length first, so a batch pads little.
"""

from __future__ import annotations

from typing import Sequence

import torch

from reversion.core.activations import model_device
from reversion.core.generation import check_prompts

__all__ = ["greedy_generate_left_padded"]


@torch.no_grad()
def greedy_generate_left_padded(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_id: int | None,
                                pad_id: int, batch_size: int = 32) -> list[list[int]]:
    """Greedy continuations (argmax, KV cache) of ``prompts`` in batches of ``batch_size`` whatever
    their lengths, ``max_new_tokens`` each or until all of a batch produced ``eos_id``; tokens after
    a prompt's EOS are left in (judges cut there), as :func:`~reversion.core.generation.greedy_generate`."""
    prompts = check_prompts(prompts)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(pad_id, bool) or not isinstance(pad_id, int):
        raise ValueError(f"pad_id must be a token id, got {pad_id!r}")
    was_training = model.training
    model.eval()
    device = model_device(model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    try:
        for s in range(0, len(order), batch_size):
            idx = order[s: s + batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.tensor([[pad_id] * (width - len(prompts[i])) + prompts[i] for i in idx], device=device)
            mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx], device=device)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)  # each prompt's own positions, from 0
            past, gen = None, []
            done = torch.zeros(len(idx), dtype=torch.bool, device=device)
            step_in, step_pos = ids, pos
            for _ in range(max_new_tokens):
                o = model(input_ids=step_in, attention_mask=mask, position_ids=step_pos, past_key_values=past,
                          use_cache=True)
                past = o.past_key_values
                nxt = o.logits[:, -1].argmax(-1)
                gen.append(nxt)
                if eos_id is not None:
                    done |= nxt == eos_id
                    if bool(done.all()):
                        break
                step_in, step_pos = nxt[:, None], step_pos[:, -1:] + 1
                mask = torch.cat([mask, mask.new_ones(len(idx), 1)], dim=1)
            g = torch.stack(gen, 1).tolist()
            for j, i in enumerate(idx):
                out[i] = g[j]
    finally:
        model.train(was_training)
    return out
