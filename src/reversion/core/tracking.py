"""Mean probe activations cheap enough to measure at every training step.

:func:`reversion.core.activations.mean_activations` is the general tool: it validates and
pads the prompts on every call and runs the whole model. A tracker that runs each
step of a fine-tuning run does that work once: :class:`ProbeTracker` pads the
prompts into length-sorted batches at construction, runs under ``inference_mode``,
and, when every requested layer is below the last, stops the forward after the
deepest one (the blocks above it cannot change what is read). It returns the same
values as ``mean_activations`` (tested to float32 rounding).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from reversion.core.activations import (
    Layers,
    _acc_dtype,
    _backbone,
    _eval_mode,
    _validate,
    model_device,
)
from reversion.core.hooks import (
    add_hooks,
    block_output_tensor,
    get_blocks,
    hidden_size,
    n_layers,
)


class _Stop(Exception):
    """Raised by the hook of the deepest layer needed: the rest of the forward is skipped."""


class ProbeTracker:
    """``tracker(model) -> [len(layers), d]`` float64: mean probe activation at ``layers``.

    ``prompts``: token-id sequences; ``layers``: int, list of ints in ``[0, L]`` or
    ``"all"``; ``position``: ``"last"`` prompt token or ``"mean"`` over the prompt.
    The model passed at each call must have the architecture of the one given here
    (it is normally the same model, mid-training); its train/eval mode is restored.
    """

    def __init__(self, model: nn.Module, prompts: Sequence[Sequence[int]], layers: Layers,
                 position: str = "last", pad_id: int = 0, batch_size: int = 256):
        ids, self.layers, pad_id = _validate(model, prompts, layers, position, batch_size, pad_id)
        self.position = position
        self.n = len(ids)
        self.L = n_layers(model)
        self.d = hidden_size(model)
        self.device = device = model_device(model)
        lengths = torch.tensor([len(x) for x in ids])
        order = torch.argsort(lengths, stable=True)
        self.batches = []
        for start in range(0, len(ids), batch_size):
            idx = order[start:start + batch_size]
            lens = lengths[idx]
            x = torch.nn.utils.rnn.pad_sequence([ids[i] for i in idx.tolist()], batch_first=True,
                                                padding_value=pad_id)  # [B, T]
            mask = torch.arange(x.shape[1])[None, :] < lens[:, None]  # [B, T]
            self.batches.append((x.to(device), mask.to(device=device, dtype=torch.long),
                                 (lens - 1).to(device), mask.to(device)[:, :, None]))
        # Hooks read layers 1..L-1 at the block outputs; layer L (after the final norm in
        # most families) and layer 0 (embeddings) come from the full hidden-state tuple.
        self.early = max(self.layers) < self.L and min(self.layers) >= 1

    def _reduce(self, h: torch.Tensor, last: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, T, d]`` -> ``[d]`` summed over the batch rows, in the accumulation dtype."""
        acc = _acc_dtype(h.device)
        if self.position == "last":
            return h[torch.arange(h.shape[0], device=h.device), last].to(acc).sum(0)
        denom = mask.sum(1).to(acc)  # [B, 1]
        return (h.to(acc).masked_fill(~mask, 0.0).sum(1) / denom).sum(0)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        if n_layers(model) != self.L or hidden_size(model) != self.d:
            raise ValueError(f"model has {n_layers(model)} layers of width {hidden_size(model)}; "
                             f"the tracker was built for {self.L} of width {self.d}")
        backbone = _backbone(model)
        # Summed on the model's device; one transfer per call, not one per batch.
        total = torch.zeros((len(self.layers), self.d), dtype=_acc_dtype(self.device), device=self.device)
        with torch.inference_mode(), _eval_mode(model):
            for x, attn, last, mask in self.batches:
                sums = self._early(model, backbone, x, attn, last, mask) if self.early else \
                    self._full(backbone, x, attn, last, mask)
                total += torch.stack(sums)
        total = total.to("cpu", torch.float64)
        if not torch.isfinite(total).all():
            bad = [l for l, row in zip(self.layers, total) if not torch.isfinite(row).all()]
            raise ValueError(f"non-finite activations (NaN or inf) at layer(s) {bad}")
        return total / self.n

    def _full(self, backbone, x, attn, last, mask) -> list[torch.Tensor]:
        hs = backbone(input_ids=x, attention_mask=attn, output_hidden_states=True, use_cache=False,
                      return_dict=True).hidden_states
        return [self._reduce(hs[l], last, mask) for l in self.layers]

    def _early(self, model, backbone, x, attn, last, mask) -> list[torch.Tensor]:
        blocks = get_blocks(model)
        deepest = max(self.layers)
        got: dict[int, torch.Tensor] = {}

        def reader(layer: int):
            def hook(module, args, output):
                got[layer] = self._reduce(block_output_tensor(output), last, mask)
                if layer == deepest:
                    raise _Stop
            return hook

        with add_hooks([(blocks[l - 1], reader(l)) for l in self.layers]):
            try:
                backbone(input_ids=x, attention_mask=attn, use_cache=False, return_dict=True)
            except _Stop:
                pass
        return [got[l] for l in self.layers]
