"""Model anatomy and hook plumbing for Hugging Face causal LMs.

``get_blocks`` finds the transformer block list of any common causal-LM
family, ``n_layers`` / ``hidden_size`` read the (text) config, and
``add_hooks`` registers forward / forward-pre hooks for the duration of a
``with`` block and always removes them.

Block outputs: depending on the transformers version and family, a decoder
layer returns either the hidden-state tensor ``[batch, seq, d]`` (transformers
5: GPT-2, Llama, ...) or a tuple whose first element is that tensor (4.x).
``block_output_tensor`` / ``edit_block_output`` handle both.

Hook order matters in transformers 5: ``output_hidden_states=True`` is
implemented by forward hooks that transformers registers on every block the
first time hidden states are requested. A forward hook appended after that
runs *after* the capture, so the returned ``hidden_states`` would show the
block's unedited output. ``add_hooks`` therefore prepends forward hooks by
default, so edits are visible in ``hidden_states`` whatever the order.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

__all__ = [
    "add_hooks",
    "block_output_tensor",
    "edit_block_output",
    "get_blocks",
    "hidden_size",
    "make_output_edit_hook",
    "n_layers",
    "text_config",
]

# Attribute paths of the block list, most common first. Paths with a leading
# backbone name (``transformer.``, ``model.``) are for *ForCausalLM wrappers;
# the bare ones cover a backbone passed directly (GPT2Model, LlamaModel, ...).
_BLOCK_PATHS = (
    "transformer.h",  # GPT-2, GPT-J, GPT-Neo, Falcon, Bloom
    "model.layers",  # Llama, Mistral, Qwen, Gemma, Phi-3, OLMo
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "model.language_model.layers",  # multimodal wrappers (Gemma 3, Llava) in transformers 5
    "language_model.model.layers",  # the same in transformers 4
    "transformer.blocks",  # MPT
    "h",
    "layers",
    "decoder.layers",
)


def text_config(model: nn.Module) -> Any:
    """The model's text config (``config.get_text_config()`` when it exists)."""
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"model of type {type(model).__name__} has no .config; expected a Hugging Face model")
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def _config_int(model: nn.Module, name: str) -> int:
    value = getattr(text_config(model), name, None)
    if value is None:
        raise ValueError(f"model config ({type(text_config(model)).__name__}) has no {name!r}")
    return int(value)


def n_layers(model: nn.Module) -> int:
    """Number of transformer blocks L (``num_hidden_layers`` of the text config)."""
    return _config_int(model, "num_hidden_layers")


def hidden_size(model: nn.Module) -> int:
    """Residual-stream width d (``hidden_size`` of the text config)."""
    return _config_int(model, "hidden_size")


def _get_path(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def get_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer block list ``[L]`` of a Hugging Face causal LM (or its backbone).

    Tries the known attribute paths of common families, then falls back to the
    largest (by parameter count) ``ModuleList`` whose length equals
    ``num_hidden_layers``.
    """
    try:
        expected = n_layers(model)
    except ValueError:
        expected = None  # no config: accept the first known path
    for path in _BLOCK_PATHS:
        blocks = _get_path(model, path)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0 and expected in (None, len(blocks)):
            return blocks
    if expected is not None:
        candidates = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == expected]
        if candidates:
            return max(candidates, key=lambda m: sum(p.numel() for p in m.parameters()))
    raise ValueError(
        f"could not find the transformer block list of {type(model).__name__}: none of "
        f"{', '.join(_BLOCK_PATHS)} is a ModuleList"
        + (f" of length num_hidden_layers={expected}" if expected is not None else "")
        + ", and no other ModuleList has that length"
    )


def block_output_tensor(output: Any) -> torch.Tensor:
    """The hidden-state tensor ``[batch, seq, d]`` of a block's output (tensor or tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"unsupported block output of type {type(output).__name__}; expected a tensor or a tuple whose first "
        "element is the hidden-state tensor"
    )


def edit_block_output(output: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``output`` with its hidden-state tensor ``h`` replaced by ``fn(h)``; same container type.

    ``fn`` must keep the shape ``[batch, seq, d]``.
    """
    hidden = block_output_tensor(output)
    new = fn(hidden)
    if not isinstance(new, torch.Tensor) or new.shape != hidden.shape:
        got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
        raise ValueError(f"fn must return a tensor of shape {tuple(hidden.shape)}, got {got}")
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, list):
        return [new, *output[1:]]
    return (new, *output[1:])


def make_output_edit_hook(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    """A forward hook for a block that replaces its hidden-state output ``h`` by ``fn(h)``."""

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        return edit_block_output(output, fn)

    return hook


@contextlib.contextmanager
def add_hooks(
    forward_hooks: Iterable[tuple[nn.Module, Callable]] = (),
    forward_pre_hooks: Iterable[tuple[nn.Module, Callable]] = (),
    *,
    prepend: bool = True,
) -> Iterator[list[torch.utils.hooks.RemovableHandle]]:
    """Register ``(module, fn)`` hooks for the body of a ``with``; remove them on exit, also on error.

    ``prepend=True`` puts each hook before the hooks already on the module, so
    that edits made by a forward hook are seen by transformers' own
    hidden-state capture hooks (see the module docstring). Yields the handles.
    """
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        # Registering inside the try: a failure halfway still removes what was added.
        for module, fn in forward_pre_hooks:
            handles.append(module.register_forward_pre_hook(fn, prepend=prepend))
        for module, fn in forward_hooks:
            handles.append(module.register_forward_hook(fn, prepend=prepend))
        yield handles
    finally:
        for handle in handles:
            handle.remove()
