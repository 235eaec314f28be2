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
    seqs = [list(p) + list(t) for p, t in zip(prompts, targets)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        start = 0 if loss_on_prompt else len(p)
        labels[i, start: len(s)] = ids[i, start: len(s)]
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "labels": labels.to(device)}
