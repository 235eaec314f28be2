"""Block discovery and hook plumbing on tiny random GPT-2 and Llama models."""

from __future__ import annotations

import types

import pytest
import torch
import transformers
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from reversion.core.activations import prompt_activations
from reversion.core.hooks import (
    add_hooks, block_output_tensor, edit_block_output, get_blocks, hidden_size, make_output_edit_hook,
    n_layers,
)


def tiny_gpt2(n_layer: int = 2, n_embd: int = 32) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=n_embd, n_layer=n_layer, n_head=2, vocab_size=50, n_positions=32, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=50,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def gpt2():
    return tiny_gpt2()


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def n_hooks(module: nn.Module) -> int:
    return len(module._forward_hooks) + len(module._forward_pre_hooks)


def test_get_blocks_gpt2_and_llama(gpt2, llama):
    assert get_blocks(gpt2) is gpt2.transformer.h
    assert get_blocks(llama) is llama.model.layers
    assert get_blocks(gpt2.transformer) is gpt2.transformer.h  # a bare backbone works too
    assert get_blocks(llama.model) is llama.model.layers
    assert (n_layers(gpt2), hidden_size(gpt2)) == (2, 32)
    assert (n_layers(llama), hidden_size(llama)) == (3, 32)


def test_get_blocks_fallback_and_error():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = types.SimpleNamespace(num_hidden_layers=3, hidden_size=4)
            self.small = nn.ModuleList([nn.Identity() for _ in range(3)])
            self.stack = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
            self.other = nn.ModuleList([nn.Linear(4, 4) for _ in range(5)])

    odd = Odd()
    assert get_blocks(odd) is odd.stack  # the largest ModuleList of length num_hidden_layers
    odd.config.num_hidden_layers = 7
    with pytest.raises(ValueError, match="could not find the transformer block list"):
        get_blocks(odd)
    with pytest.raises(ValueError, match="no .config"):
        n_layers(nn.Linear(2, 2))


def test_add_hooks_removes_on_exit(gpt2):
    block = get_blocks(gpt2)[0]
    before = n_hooks(block)
    calls = []
    with add_hooks(
        forward_hooks=[(block, lambda m, a, o: calls.append("fwd"))],
        forward_pre_hooks=[(block, lambda m, a: calls.append("pre"))],
    ) as handles:
        assert len(handles) == 2
        assert n_hooks(block) == before + 2
        gpt2(torch.tensor([[1, 2, 3]]))
    assert calls == ["pre", "fwd"]
    assert n_hooks(block) == before
    gpt2(torch.tensor([[1, 2, 3]]))
    assert calls == ["pre", "fwd"]  # no longer called


def test_add_hooks_removes_when_body_raises(gpt2):
    block = get_blocks(gpt2)[1]
    before = n_hooks(block)
    with pytest.raises(RuntimeError, match="boom"):
        with add_hooks(forward_hooks=[(block, lambda m, a, o: None)]):
            assert n_hooks(block) == before + 1
            raise RuntimeError("boom")
    assert n_hooks(block) == before


def test_add_hooks_removes_when_hook_raises(gpt2):
    block = get_blocks(gpt2)[0]
    before = n_hooks(block)

    def bad_hook(module, args, output):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        with add_hooks(forward_hooks=[(block, bad_hook)]):
            gpt2(torch.tensor([[1, 2]]))
    assert n_hooks(block) == before


def test_edit_block_output_tensor_and_tuple():
    h = torch.ones(2, 3, 4)
    assert torch.equal(edit_block_output(h, lambda x: 2 * x), 2 * h)
    extra = object()
    out = edit_block_output((h, extra), lambda x: x + 1)
    assert isinstance(out, tuple) and out[1] is extra and torch.equal(out[0], h + 1)
    assert block_output_tensor((h, None)) is h
    with pytest.raises(ValueError, match="fn must return a tensor of shape"):
        edit_block_output(h, lambda x: x[:, :1])
    with pytest.raises(TypeError, match="unsupported block output"):
        edit_block_output({"h": h}, lambda x: x)


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_edit_hook_shows_in_hidden_states(which, gpt2, llama):
    # An edit of block 0's output must appear in hidden_states[1], also when transformers
    # has already installed its own capture hooks (they are installed on the first
    # output_hidden_states forward; add_hooks prepends, so the edit runs first).
    model = {"gpt2": gpt2, "llama": llama}[which]
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        plain = model(ids, output_hidden_states=True).hidden_states
        shift = torch.full((hidden_size(model),), 0.5)
        with add_hooks(forward_hooks=[(get_blocks(model)[0], make_output_edit_hook(lambda h: h + shift))]):
            edited = model(ids, output_hidden_states=True).hidden_states
            acts = prompt_activations(model, [[1, 2, 3, 4]], [1, 2])
    torch.testing.assert_close(edited[1], plain[1] + shift)
    assert not torch.allclose(edited[2], plain[2])  # the edit propagates downstream
    torch.testing.assert_close(acts[0, 0], edited[1][0, -1].double())


@pytest.mark.skipif(int(transformers.__version__.split(".")[0]) < 5, reason="transformers 5 capture hooks")
def test_transformers5_capture_sees_appended_hook_too_late(gpt2):
    # Documents why add_hooks prepends: an appended edit runs after the capture hook.
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        plain = gpt2(ids, output_hidden_states=True).hidden_states
        hook = make_output_edit_hook(lambda h: h + 1.0)
        with add_hooks(forward_hooks=[(get_blocks(gpt2)[0], hook)], prepend=False):
            late = gpt2(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(late[1], plain[1])  # the capture saw the unedited output
    assert not torch.allclose(late[2], plain[2])  # but the next block got the edited one


def test_block_outputs_are_tensors_or_tuples(gpt2, llama):
    # transformers 5 blocks return a tensor, 4.x a tuple; block_output_tensor handles both.
    seen = []
    for model in (gpt2, llama):
        hook = lambda m, a, o: seen.append(block_output_tensor(o).shape)  # noqa: E731
        with add_hooks(forward_hooks=[(get_blocks(model)[-1], hook)]), torch.no_grad():
            model(torch.tensor([[1, 2, 3]]))
    assert seen == [torch.Size([1, 3, 32])] * 2
