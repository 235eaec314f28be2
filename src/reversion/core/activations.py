"""Residual-stream activations of prompts, for any Hugging Face causal LM.

Layer convention: layer ``l`` is ``hidden_states[l]`` of a forward with
``output_hidden_states=True``, for ``l`` in ``[0, L]``:

* ``0`` is the embedding output (the input of block 0; for GPT-2 token plus
  position embeddings),
* ``1 <= l < L`` is the output of block ``l - 1`` (``get_blocks(model)[l - 1]``),
* ``L`` is the output of the last block **after the final norm** (GPT-2
  ``ln_f``, Llama ``model.norm``): HF overwrites the last hidden state with
  the backbone's normalized ``last_hidden_state``. It is therefore on a
  different scale from layers ``< L``.

Prompts are token-id sequences of any length. They are batched with right
padding and an attention mask; for a causal model a pad placed after the real
tokens never influences them, so each prompt's activations equal those of an
unpadded forward of that prompt alone (up to float rounding). Position rules:
``"last"`` takes the last real token, ``"mean"`` the mean over real tokens.

Everything is returned as float64 on the CPU; the forward itself runs in the
model's dtype on the model's device, through the backbone (``model.base_model``,
e.g. ``GPT2Model``), which yields the same hidden states without computing the
LM head's logits. Hooks on the blocks (``reversion.core.hooks.add_hooks``) apply.
"""

from __future__ import annotations

import contextlib
import operator
from typing import Iterator, Sequence, Union

import torch
from torch import nn

from reversion.core.hooks import hidden_size, n_layers, text_config

__all__ = [
    "POSITIONS",
    "check_compatible",
    "check_same_width",
    "mean_activations",
    "model_device",
    "prompt_activations",
    "resolve_layers",
]

POSITIONS = ("last", "mean")

Layers = Union[int, Sequence[int], str]


def resolve_layers(model: nn.Module, layers: Layers) -> list[int]:
    """``layers`` (an int, a list of ints, or ``"all"``) as a list of indices in ``[0, L]``."""
    n = n_layers(model)
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be an int, a list of ints or 'all', got {layers!r}")
        return list(range(n + 1))
    if isinstance(layers, bool):
        raise ValueError(f"layers must be an int, a list of ints or 'all', got {layers!r}")
    try:
        items = [operator.index(layers)]  # a single int (Python, numpy or 0-d tensor)
    except TypeError:
        try:
            items = list(layers)
        except TypeError:
            raise ValueError(f"layers must be an int, a list of ints or 'all', got {layers!r}") from None
    if not items:
        raise ValueError("layers is empty")
    out = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"layers must hold ints, got {item!r}")
        try:
            layer = operator.index(item)
        except TypeError:
            raise ValueError(f"layers must hold ints, got {item!r}") from None
        if not 0 <= layer <= n:
            raise ValueError(
                f"layer {layer} is outside the valid range [0, {n}] "
                f"(0 = embeddings, {n} = last block after the final norm)"
            )
        out.append(layer)
    return out


def model_device(model: nn.Module) -> torch.device:
    """Where the model's inputs go: the device of its input embedding (else of its first parameter)."""
    get_emb = getattr(model, "get_input_embeddings", None)
    emb = get_emb() if callable(get_emb) else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return emb.weight.device
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise ValueError(f"model {type(model).__name__} has no parameters") from None


def _vocab_size(model: nn.Module) -> int | None:
    get_emb = getattr(model, "get_input_embeddings", None)
    emb = get_emb() if callable(get_emb) else None
    n = getattr(emb, "num_embeddings", None)
    return int(n) if n is not None else getattr(text_config(model), "vocab_size", None)


def _prepare_prompts(model: nn.Module, prompts: Sequence[Sequence[int]], pad_id: int) -> list[torch.Tensor]:
    """Validate prompts and turn them into 1-D int64 CPU tensors."""
    if isinstance(prompts, (str, bytes)):
        raise ValueError("prompts must be a sequence of token-id sequences, got a string")
    out = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, (str, bytes)):
            raise ValueError(f"prompt {i} is a string; pass token ids (tokenize first)")
        ids = torch.as_tensor(prompt, dtype=torch.long).cpu()
        if ids.ndim != 1:
            raise ValueError(f"prompt {i} must be a 1-D token-id sequence, got shape {tuple(ids.shape)}")
        if ids.numel() == 0:
            raise ValueError(f"prompt {i} is empty (no tokens)")
        out.append(ids)
    if not out:
        raise ValueError("prompts is empty: need at least one prompt")

    # Out-of-range ids are an IndexError on CPU but a device-side assert on CUDA; catch them here.
    flat = torch.cat(out)
    vocab = _vocab_size(model)
    if vocab is not None:
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(f"token ids must lie in [0, {vocab - 1}] (vocab size), got ids in [{lo}, {hi}]")
        if not 0 <= pad_id < vocab:
            raise ValueError(f"pad_id={pad_id} is outside the vocabulary [0, {vocab - 1}]")
    max_pos = getattr(text_config(model), "max_position_embeddings", None)
    longest = max(len(ids) for ids in out)
    if max_pos is not None and longest > max_pos:
        raise ValueError(f"a prompt has {longest} tokens, more than max_position_embeddings={max_pos}")
    return out


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _backbone(model: nn.Module) -> nn.Module:
    # The backbone (GPT2Model, LlamaModel, ...) returns the same hidden states
    # without the LM head, whose [batch, seq, vocab] logits we would throw away.
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) else model


def _acc_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64; there the per-batch token mean is taken in float32.
    return torch.float32 if device.type == "mps" else torch.float64


def _validate(
    model: nn.Module, prompts: Sequence[Sequence[int]], layers: Layers, position: str, batch_size: int, pad_id: int
) -> tuple[list[torch.Tensor], list[int], int]:
    """Check every argument before any forward; return ``(prompt id tensors, layer list, pad_id)``."""
    if position not in POSITIONS:
        raise ValueError(f"unknown position rule {position!r}; expected one of {POSITIONS}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    try:
        pad_id = operator.index(pad_id)
    except TypeError:
        raise ValueError(f"pad_id must be an int token id, got {pad_id!r}") from None
    layer_list = resolve_layers(model, layers)
    return _prepare_prompts(model, prompts, pad_id), layer_list, pad_id


def _iter_batches(
    model: nn.Module,
    ids: list[torch.Tensor],
    layer_list: list[int],
    position: str,
    batch_size: int,
    pad_id: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(indices [B], acts [B, n_layers, d])`` batch by batch, on the model's device in
    the accumulation dtype (float64; float32 on MPS): callers reduce there and move once."""
    n_total = n_layers(model)
    device = model_device(model)
    acc = _acc_dtype(device)
    backbone = _backbone(model)

    lengths = torch.tensor([len(x) for x in ids])
    # Sorting by length keeps similar lengths together, so batches carry little padding.
    order = torch.argsort(lengths, stable=True)

    with torch.no_grad(), _eval_mode(model):
        for start in range(0, len(ids), batch_size):
            idx = order[start : start + batch_size]
            lens = lengths[idx]
            batch = torch.nn.utils.rnn.pad_sequence(
                [ids[i] for i in idx.tolist()], batch_first=True, padding_value=pad_id
            )  # [B, T], right-padded
            mask = torch.arange(batch.shape[1])[None, :] < lens[:, None]  # [B, T]
            out = backbone(
                input_ids=batch.to(device),
                attention_mask=mask.to(device=device, dtype=torch.long),
                output_hidden_states=True,
                use_cache=False,
                return_dict=True,
            )
            hs = out.hidden_states
            if hs is None or len(hs) != n_total + 1:
                got = None if hs is None else len(hs)
                raise ValueError(f"expected {n_total + 1} hidden states (L={n_total} blocks + embeddings), got {got}")

            if position == "last":
                rows = torch.arange(len(idx), device=device)
                last = (lens - 1).to(device)
                acts = torch.stack([hs[layer][rows, last] for layer in layer_list], dim=1).to(acc)
            else:
                m = mask.to(device)[:, :, None]  # [B, T, 1]
                denom = lens.to(device=device, dtype=acc)[:, None]  # [B, 1]
                # masked_fill rather than a multiply: 0 * NaN at a pad position would still be NaN.
                acts = torch.stack(
                    [hs[layer].to(acc).masked_fill(~m, 0.0).sum(dim=1) / denom for layer in layer_list], dim=1
                )

            if not torch.isfinite(acts).all():
                for j, layer in enumerate(layer_list):
                    if not torch.isfinite(acts[:, j]).all():
                        raise ValueError(f"non-finite activations (NaN or inf) at layer {layer}")
            yield idx, acts


def prompt_activations(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    layers: Layers,
    position: str = "last",
    batch_size: int = 64,
    pad_id: int = 0,
) -> torch.Tensor:
    """Per-prompt activations ``[n_prompts, len(layers), d]``, float64 on the CPU, in prompt order.

    ``layers``: an int, a list of ints in ``[0, L]``, or ``"all"``; ``position``:
    ``"last"`` (last real token) or ``"mean"`` (mean over the prompt's tokens).
    """
    ids, layer_list, pad_id = _validate(model, prompts, layers, position, batch_size, pad_id)
    out = torch.empty((len(ids), len(layer_list), hidden_size(model)), dtype=torch.float64)
    for idx, acts in _iter_batches(model, ids, layer_list, position, batch_size, pad_id):
        out[idx] = acts.to("cpu", torch.float64)
    return out


def mean_activations(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    layers: Layers,
    position: str = "last",
    batch_size: int = 64,
    pad_id: int = 0,
) -> torch.Tensor:
    """Mean activation over prompts ``[len(layers), d]``, float64 on the CPU.

    Keeps a running float64 sum on the model's device (one transfer at the end, not one per
    batch), so memory does not grow with the number of prompts.
    """
    ids, layer_list, pad_id = _validate(model, prompts, layers, position, batch_size, pad_id)
    device = model_device(model)
    total = torch.zeros((len(layer_list), hidden_size(model)), dtype=_acc_dtype(device), device=device)
    for _, acts in _iter_batches(model, ids, layer_list, position, batch_size, pad_id):
        total += acts.sum(dim=0)
    return (total / len(ids)).to("cpu", torch.float64)


def check_same_width(model_a: nn.Module, model_b: nn.Module) -> int:
    """Raise ``ValueError`` unless both models have the same hidden size; return it."""
    da, db = hidden_size(model_a), hidden_size(model_b)
    if da != db:
        raise ValueError(f"models differ in hidden size (hidden_size {da} vs {db}); activations are not comparable")
    return da


def check_compatible(model_a: nn.Module, model_b: nn.Module) -> tuple[int, int]:
    """Raise ``ValueError`` unless both models have the same hidden size and layer count; return ``(L, d)``."""
    d = check_same_width(model_a, model_b)
    la, lb = n_layers(model_a), n_layers(model_b)
    if la != lb:
        raise ValueError(f"models differ in layer count (num_hidden_layers {la} vs {lb}); layers do not correspond")
    return la, d
