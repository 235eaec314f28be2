"""Greedy generation and teacher-forced answer loss, for any Hugging Face causal LM.

The organism's first-token judge reads continuations from :func:`greedy_generate` (prompts
batched by equal length); the judges of text checkpoints (refusal phrases, a guard model) from
:func:`greedy_generate_left_padded` (mixed lengths in full batches); both task costs are
:func:`answer_loss`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from dataclasses import dataclass

import torch

from reversion.core.activations import _eval_mode, model_device
from reversion.core.batches import IGNORE, collate

Pair = tuple[Sequence[int], Sequence[int]]
"""(prompt ids, answer ids) of one example."""


def check_prompts(prompts: Sequence[Sequence[int]]) -> list[list[int]]:
    if isinstance(prompts, (str, bytes)) or not prompts:
        raise ValueError("prompts must be a non-empty list of token-id lists")
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, (str, bytes)):
            raise ValueError(f"prompt {i} is a string; pass token ids (tokenize first)")
        ids = [int(t) for t in p]
        if not ids:
            raise ValueError(f"prompt {i} is empty")
        out.append(ids)
    return out


def _check_lengths(max_new_tokens: int, batch_size: int) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _greedy_batch(model, ids: torch.Tensor, max_new_tokens: int, eos_id: int | None,
                  mask: torch.Tensor | None = None) -> list[list[int]]:
    """Greedy continuations of one batch (argmax, KV cache), until all produced ``eos_id``.
    ``mask``: the attention mask of a left-padded batch (position ids then count from each
    prompt's first real token); None: a batch of equal lengths, no padding."""
    past, gen = None, []
    done = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
    step_in = ids
    step_pos = None if mask is None else (mask.cumsum(-1) - 1).clamp(min=0)
    for _ in range(max_new_tokens):
        padded = {} if mask is None else {"attention_mask": mask, "position_ids": step_pos}
        o = model(input_ids=step_in, past_key_values=past, use_cache=True, **padded)
        past = o.past_key_values
        nxt = o.logits[:, -1].argmax(-1)
        gen.append(nxt)
        if eos_id is not None:
            done |= nxt == eos_id
            if bool(done.all()):
                break
        step_in = nxt[:, None]
        if mask is not None:
            step_pos = step_pos[:, -1:] + 1
            mask = torch.cat([mask, mask.new_ones(len(ids), 1)], dim=1)
    return torch.stack(gen, 1).tolist()


def _generate(model, prompts: list[list[int]], batches: list[list[int]], max_new_tokens: int, eos_id: int | None,
              pad_id: int | None) -> list[list[int]]:
    """Each batch of prompt indices continued by :func:`_greedy_batch` (left-padded with ``pad_id``
    where it is given), in eval mode."""
    device = model_device(model)
    out: list[list[int]] = [[] for _ in prompts]
    with _eval_mode(model):
        for idx in batches:
            if pad_id is None:
                ids, mask = torch.tensor([prompts[i] for i in idx], device=device), None
            else:
                width = max(len(prompts[i]) for i in idx)
                ids = torch.tensor([[pad_id] * (width - len(prompts[i])) + prompts[i] for i in idx], device=device)
                mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx],
                                    device=device)
            for i, g in zip(idx, _greedy_batch(model, ids, max_new_tokens, eos_id, mask)):
                out[i] = g
    return out


@torch.no_grad()
def greedy_generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_id: int | None,
                    batch_size: int = 256) -> list[list[int]]:
    """Greedy continuations (argmax, KV cache), ``max_new_tokens`` each or until all of a
    batch produced ``eos_id``; tokens after a prompt's EOS are left in (judges cut there).

    Prompts are batched by exact length, so no padding is ever needed: every
    continuation equals that of the prompt alone, for any family (no position-id or
    mask conventions involved). That suits the organism (a handful of prompt lengths); a
    real prompt set, with as many lengths as prompts, wants :func:`greedy_generate_left_padded`.
    """
    prompts = check_prompts(prompts)
    _check_lengths(max_new_tokens, batch_size)
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_len[len(p)].append(i)
    batches = [idx[s: s + batch_size] for idx in by_len.values() for s in range(0, len(idx), batch_size)]
    return _generate(model, prompts, batches, max_new_tokens, eos_id, None)


@torch.no_grad()
def greedy_generate_left_padded(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_id: int | None,
                                pad_id: int, batch_size: int = 32) -> list[list[int]]:
    """:func:`greedy_generate` for prompts of mixed length, in full batches: each batch is
    left-padded, an attention mask hides the pads and position ids count from each prompt's first
    real token, so a prompt's continuation is the one it gets alone (``tests/test_generation.py``
    checks it token for token on a tiny Llama and GPT-2). Prompts are sorted by length first, so a
    batch pads little."""
    prompts = check_prompts(prompts)
    _check_lengths(max_new_tokens, batch_size)
    if isinstance(pad_id, bool) or not isinstance(pad_id, int):
        raise ValueError(f"pad_id must be a token id, got {pad_id!r}")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    batches = [order[s: s + batch_size] for s in range(0, len(order), batch_size)]
    return _generate(model, prompts, batches, max_new_tokens, eos_id, pad_id)


def until_eos(tokens: Sequence[int], eos_id: int | None) -> list[int]:
    """``tokens`` up to (not including) the first ``eos_id``."""
    out = []
    for t in tokens:
        if eos_id is not None and int(t) == eos_id:
            break
        out.append(int(t))
    return out


@torch.no_grad()
def answer_loss(model, pairs: Sequence[Pair], pad_id: int, batch_size: int = 256) -> float:
    """Mean cross-entropy (nats) per answer token, teacher forced; prompt tokens carry no
    loss and every answer token counts once, whatever its example's length."""
    if not pairs:
        raise ValueError("answer_loss needs at least one (prompt, answer) pair")
    device = model_device(model)
    total, count = 0.0, 0
    with _eval_mode(model):
        for s in range(0, len(pairs), batch_size):
            chunk = pairs[s: s + batch_size]
            b = collate([p for p, _ in chunk], [a for _, a in chunk], pad_id=pad_id, device=device)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            labels = b["labels"][:, 1:]
            lp = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE,
                reduction="sum")
            total += float(lp)
            count += int((labels != IGNORE).sum())
    if count == 0:
        raise ValueError("no answer tokens to score")
    return total / count


@dataclass(frozen=True)
class EvalWork:
    """The model computations of one evaluation, named so that many models can share them
    (:func:`run_work` for one model; :meth:`reversion.core.grouped.GroupedGPT2.run_work` for a group)."""

    gens: dict[str, list[Sequence[int]]]
    """Name -> prompts to continue greedily."""
    pairs: dict[str, list[Pair]]
    """Name -> (prompt, answer) pairs whose mean answer loss is scored."""
    max_new_tokens: int
    eos_id: int | None
    pad_id: int


def run_work(model, work: EvalWork) -> tuple[dict[str, list[list[int]]], dict[str, float]]:
    """``(continuations, answer losses)`` of ``work`` for one model."""
    cont = {k: greedy_generate(model, v, work.max_new_tokens, work.eos_id) for k, v in work.gens.items()}
    return cont, {k: answer_loss(model, v, work.pad_id) for k, v in work.pairs.items()}
