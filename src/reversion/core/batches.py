"""Batches for training and evaluation: right-padded token ids with masks and labels."""

from __future__ import annotations

from typing import Sequence

import torch

IGNORE = -100  # label value ignored by the cross-entropy of HF causal LMs


def collate(prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]] | None = None,
            *, pad_id: int, loss_on_prompt: bool = False, device: torch.device | str = "cpu") -> dict:
    """Right-pad ``prompt + target`` sequences.

    Labels cover the target only (answer-only loss), or every real token when
    ``loss_on_prompt`` (plain language modelling). Right padding is safe for a causal
    model: pads come after every real token and never influence it.
    """
    if targets is None:
        targets = [()] * len(prompts)
    seqs = [(*p, *t) for p, t in zip(prompts, targets)]
    width = max(len(s) for s in seqs)
    # rows built as lists, one tensor per field (a per-row tensor costs more than the row)
    ids, mask, labels = [], [], []
    for p, s in zip(prompts, seqs):
        n, rest = len(s), width - len(s)
        start = 0 if loss_on_prompt else len(p)
        ids.append([*s] + [pad_id] * rest)
        mask.append([1] * n + [0] * rest)
        labels.append([IGNORE] * start + [*s[start:]] + [IGNORE] * rest)
    return {"input_ids": torch.tensor(ids, dtype=torch.long, device=device),
            "attention_mask": torch.tensor(mask, dtype=torch.long, device=device),
            "labels": torch.tensor(labels, dtype=torch.long, device=device)}
