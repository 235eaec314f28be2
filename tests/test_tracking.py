"""ProbeTracker returns what mean_activations returns, for less work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reversion.core.activations import mean_activations
from reversion.subjects.organism.config import ModelConfig
from reversion.subjects.organism.model import build_model
from reversion.core.tracking import ProbeTracker

from helpers import make_model, make_tokenizer


def _prompts(vocab: int, n: int = 23, seed: int = 0) -> list[list[int]]:
    g = np.random.default_rng(seed)
    return [g.integers(3, vocab, size=int(g.integers(2, 9))).tolist() for _ in range(n)]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    gpt2 = build_model(ModelConfig(n_embd=32, n_layer=3, n_head=2, n_positions=16), 40)
    llama = make_model("llama", make_tokenizer(None))
    return {"gpt2": gpt2, "llama": llama}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("layers", [[1], [2], [0, 2], [1, 2], "all", [3]])
@pytest.mark.parametrize("position", ["last", "mean"])
def test_equals_mean_activations(models, family, layers, position):
    model = models[family]
    n_layer = model.config.num_hidden_layers
    if layers != "all" and max(layers) > n_layer:
        pytest.skip("layer beyond this model")
    prompts = _prompts(model.config.vocab_size)
    want = mean_activations(model, prompts, layers, position=position, batch_size=5)
    tracker = ProbeTracker(model, prompts, layers, position=position, batch_size=7)
    got = tracker(model)
    assert got.shape == want.shape and got.dtype == torch.float64
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_early_stop_skips_the_blocks_above(models):
    model = models["gpt2"]
    calls = []
    h = model.transformer.h[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        ProbeTracker(model, _prompts(40), [1])(model)
        assert calls == []  # block 3 never ran
        ProbeTracker(model, _prompts(40), "all")(model)
        assert calls  # positive control: the full forward runs it
    finally:
        h.remove()


def test_follows_the_model_as_it_trains_and_keeps_its_mode(models):
    model = models["gpt2"]
    prompts = _prompts(40)
    tracker = ProbeTracker(model, prompts, [2])
    before = tracker(model)
    model.train()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(3.0)
    after = tracker(model)
    assert model.training  # restored
    model.eval()
    assert (before - after).abs().max() > 1e-3
    torch.testing.assert_close(after, mean_activations(model, prompts, [2]), atol=1e-5, rtol=1e-5)


def test_refuses_another_architecture(models):
    tracker = ProbeTracker(models["gpt2"], _prompts(40), [1])
    with pytest.raises(ValueError, match="tracker was built for"):
        tracker(models["llama"])


def test_refuses_bad_input(models):
    with pytest.raises(ValueError, match="prompts is empty"):
        ProbeTracker(models["gpt2"], [], [1])
    with pytest.raises(ValueError, match="layer"):
        ProbeTracker(models["gpt2"], _prompts(40), [9])
