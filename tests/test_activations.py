"""prompt_activations / mean_activations against plain one-prompt-at-a-time forwards."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from reversion.core.activations import (
    check_compatible, check_same_width, mean_activations, prompt_activations, resolve_layers,
)

VOCAB = 50


def tiny_gpt2(n_layer: int = 2, n_embd: int = 32) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_embd=n_embd, n_layer=n_layer, n_head=2, vocab_size=VOCAB, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(cfg)  # left in train mode on purpose: the functions must switch to eval


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        attention_dropout=0.1,
    )
    return LlamaForCausalLM(cfg)


MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    return MODELS[request.param]()


@pytest.fixture(scope="module")
def prompts():
    # Variable lengths 1..12, including a single-token prompt; ids avoid nothing in particular
    # (a real token equal to pad_id must still count).
    g = np.random.default_rng(0)
    lengths = [5, 1, 12, 3, 8, 8, 2, 11, 6]
    return [g.integers(0, VOCAB, size=n).tolist() for n in lengths]


def reference(model, prompts, layers, position):
    """Plain unpadded output_hidden_states forward of each prompt alone: [n, len(layers), d]."""
    was_training = model.training
    model.eval()
    rows = []
    with torch.no_grad():
        for p in prompts:
            hs = model(torch.tensor([p]), output_hidden_states=True).hidden_states
            pick = (lambda h: h[0, -1]) if position == "last" else (lambda h: h[0].mean(dim=0))
            rows.append(torch.stack([pick(hs[layer]) for layer in layers]))
    model.train(was_training)
    return torch.stack(rows).double()


@pytest.mark.parametrize("position", ["last", "mean"])
def test_matches_unpadded_single_prompt_forwards(model, prompts, position):
    layers = list(range(model.config.num_hidden_layers + 1))
    acts = prompt_activations(model, prompts, "all", position=position, batch_size=4)
    assert acts.shape == (len(prompts), len(layers), 32)
    assert acts.dtype == torch.float64 and acts.device.type == "cpu"
    torch.testing.assert_close(acts, reference(model, prompts, layers, position), atol=1e-5, rtol=1e-5)


def test_layer_subsets_and_order(model, prompts):
    full = prompt_activations(model, prompts, "all")
    torch.testing.assert_close(prompt_activations(model, prompts, [2, 0]), full[:, [2, 0]])
    torch.testing.assert_close(prompt_activations(model, prompts, 1), full[:, [1]])
    torch.testing.assert_close(prompt_activations(model, prompts, np.int64(1)), full[:, [1]])


@pytest.mark.parametrize("position", ["last", "mean"])
def test_mean_activations_is_mean_of_prompt_activations(model, prompts, position):
    per_prompt = prompt_activations(model, prompts, [0, 1, 2], position=position)
    mean = mean_activations(model, prompts, [0, 1, 2], position=position, batch_size=3)
    assert mean.shape == (3, 32) and mean.dtype == torch.float64
    torch.testing.assert_close(mean, per_prompt.mean(dim=0), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("position", ["last", "mean"])
def test_batching_and_pad_id_invariance(model, prompts, position):
    one = prompt_activations(model, prompts, "all", position=position, batch_size=1)
    seven = prompt_activations(model, prompts, "all", position=position, batch_size=7)
    other_pad = prompt_activations(model, prompts, "all", position=position, batch_size=7, pad_id=VOCAB - 1)
    torch.testing.assert_close(one, seven, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seven, other_pad, atol=1e-5, rtol=1e-5)


def test_restores_mode_and_accepts_tensors(model, prompts):
    model.train()
    a = prompt_activations(model, prompts, [1])
    assert model.training  # restored
    b = prompt_activations(model, [torch.tensor(p) for p in prompts], [1])
    torch.testing.assert_close(a, b)  # deterministic: dropout was off
    model.eval()
    prompt_activations(model, prompts, [1])
    assert not model.training


def test_layer_errors(model, prompts):
    L = model.config.num_hidden_layers
    for bad in (-1, L + 1):
        with pytest.raises(ValueError, match=rf"layer {bad} is outside the valid range \[0, {L}\]"):
            prompt_activations(model, prompts, bad)
    with pytest.raises(ValueError, match="layers is empty"):
        mean_activations(model, prompts, [])
    with pytest.raises(ValueError, match="'all'"):
        prompt_activations(model, prompts, "last")
    assert resolve_layers(model, "all") == list(range(L + 1))


def test_prompt_errors(model, prompts):
    with pytest.raises(ValueError, match="prompts is empty"):
        prompt_activations(model, [], [0])
    with pytest.raises(ValueError, match="prompts is empty"):
        mean_activations(model, [], [0])
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        prompt_activations(model, [[1, 2], [], [3]], [0])
    with pytest.raises(ValueError, match="prompt 0 is a string"):
        prompt_activations(model, ["hello"], [0])
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 49\]"):
        prompt_activations(model, [[1, VOCAB]], [0])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        prompt_activations(model, [[1] * 100], [0])
    with pytest.raises(ValueError, match="unknown position rule 'first'"):
        prompt_activations(model, prompts, [0], position="first")
    with pytest.raises(ValueError, match="batch_size"):
        prompt_activations(model, prompts, [0], batch_size=0)


def test_nan_activations_name_the_layer(model, prompts):
    broken = copy.deepcopy(model)
    blocks = broken.transformer.h if hasattr(broken, "transformer") else broken.model.layers
    with torch.no_grad():
        next(blocks[1].parameters()).fill_(float("nan"))  # block 1 feeds hidden_states[2]
    # Layers before the broken block are fine.
    assert torch.isfinite(prompt_activations(broken, prompts, [0, 1])).all()
    with pytest.raises(ValueError, match="non-finite activations .* at layer 2"):
        prompt_activations(broken, prompts, [0, 1, 2])
    with pytest.raises(ValueError, match="non-finite activations .* at layer 2"):
        mean_activations(broken, prompts, [2], position="mean")


def test_width_and_depth_checks():
    a, wide, deep = tiny_gpt2(), tiny_gpt2(n_embd=64), tiny_gpt2(n_layer=3)
    assert check_same_width(a, tiny_llama()) == 32
    assert check_compatible(a, tiny_gpt2()) == (2, 32)
    with pytest.raises(ValueError, match="hidden size"):
        check_same_width(a, wide)
    with pytest.raises(ValueError, match="hidden size"):
        check_compatible(a, wide)
    with pytest.raises(ValueError, match="layer count"):
        check_compatible(a, deep)
