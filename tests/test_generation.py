"""Greedy generation and teacher-forced answer loss (``reversion.core.generation``), for any
Hugging Face causal LM, against a naive reference on tiny random models.

* ``greedy_generate`` (batched by prompt length, with a KV cache) gives, prompt by prompt, the
  tokens of a plain argmax loop over full forwards of that prompt alone;
* it stops a batch once every prompt produced EOS (tokens after a prompt's EOS are the judges'
  to cut, with ``until_eos``);
* ``answer_loss`` is the mean cross-entropy over answer tokens only, each counted once,
  whatever the batching and the pad id.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from reversion.core.generation import answer_loss, greedy_generate, until_eos

# One torch thread and the determinism flags restored afterwards (conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 48


def _model(family: str):
    torch.manual_seed(0)
    if family == "gpt2":
        cfg = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return GPT2LMHeadModel(cfg).eval()
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request):
    return _model(request.param)


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    """Prompts of several lengths, some sharing a length (so batches hold several)."""
    g = np.random.default_rng(0)
    return [g.integers(1, VOCAB, size=int(n)).tolist() for n in (3, 5, 3, 7, 5, 3, 2)]


@torch.no_grad()
def naive(model, prompt: list[int], n: int) -> list[int]:
    """Argmax of the last position of a full forward, ``n`` times, no cache, no batch."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("batch_size", [1, 2, 256])
def test_greedy_generate_equals_an_argmax_loop_on_each_prompt_alone(model, prompts, batch_size):
    got = greedy_generate(model, prompts, 6, None, batch_size=batch_size)
    want = [naive(model, p, 6) for p in prompts]
    assert got == want
    assert len({tuple(w) for w in want}) > 1   # the prompts' continuations differ: order matters


def test_a_batch_stops_once_every_prompt_produced_eos(model, prompts):
    first = [naive(model, p, 1)[0] for p in prompts]
    eos = first[0]
    same = [p for p, f in zip(prompts, first) if f == eos and len(p) == len(prompts[0])]
    assert greedy_generate(model, same, 8, eos) == [[eos]] * len(same)  # all done at step 1
    # a prompt that does not open with EOS in the same batch keeps the batch going; every
    # continuation up to its EOS is still its own greedy one
    got = greedy_generate(model, prompts, 8, eos)
    full = [naive(model, p, 8) for p in prompts]
    assert [until_eos(g, eos) for g in got] == [until_eos(f, eos) for f in full]
    assert max(len(g) for g in got) > 1


def test_until_eos():
    assert until_eos([3, 4, 2, 5, 2], 2) == [3, 4]
    assert until_eos([2, 3], 2) == []
    assert until_eos(torch.tensor([3, 4]).tolist(), None) == [3, 4]
    assert until_eos([3, 4], 9) == [3, 4]


@torch.no_grad()
def manual_loss(model, pairs) -> float:
    total, count = 0.0, 0
    for p, a in pairs:
        logits = model(input_ids=torch.tensor([list(p) + list(a)])).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        for j, t in enumerate(a):  # answer token j is predicted at position len(p) + j - 1
            total -= float(logp[len(p) + j - 1, t])
            count += 1
    return total / count


def test_answer_loss_is_the_mean_cross_entropy_over_answer_tokens(model, prompts):
    g = np.random.default_rng(1)
    pairs = [(p, g.integers(1, VOCAB, size=int(k)).tolist()) for p, k in zip(prompts, (1, 4, 2, 3, 1, 5, 2))]
    want = manual_loss(model, pairs)
    assert answer_loss(model, pairs, pad_id=0) == pytest.approx(want, rel=1e-5)
    assert answer_loss(model, pairs, pad_id=0, batch_size=2) == pytest.approx(want, rel=1e-5)
    assert answer_loss(model, pairs, pad_id=VOCAB - 1, batch_size=3) == pytest.approx(want, rel=1e-5)
    # tokens are weighted equally, not examples: a per-example mean would differ here
    per_example = np.mean([manual_loss(model, [pr]) for pr in pairs])
    assert abs(per_example - want) > 1e-3


def test_bad_inputs_are_refused_and_the_mode_is_restored():
    model = _model("gpt2").train()
    for bad in ([], "abc", [[]], ["ab"]):
        with pytest.raises(ValueError, match="prompt"):
            greedy_generate(model, bad, 2, None)
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_generate(model, [[1, 2]], 0, None)
    with pytest.raises(ValueError, match="at least one"):
        answer_loss(model, [], pad_id=0)
    with pytest.raises(ValueError, match="no answer tokens"):
        answer_loss(model, [([1, 2], [])], pad_id=0)
    greedy_generate(model, [[1, 2]], 2, None)
    answer_loss(model, [([1, 2], [3])], pad_id=0)
    assert model.training   # both run in eval mode and give the model back as they found it


# ------------------------------------------------------------------ left-padded batches (text checkpoints)


@pytest.fixture(scope="module")
def mixed() -> list[list[int]]:
    """Prompts of many lengths, most of them alone at their length (a real prompt set)."""
    g = np.random.default_rng(1)
    return [g.integers(1, VOCAB, size=int(n)).tolist() for n in (2, 9, 4, 12, 3, 7, 5, 11, 6, 8)]


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_left_padded_batches_equal_each_prompt_alone(model, mixed, batch_size):
    from reversion.core.generation import greedy_generate_left_padded

    got = greedy_generate_left_padded(model, mixed, 6, None, pad_id=0, batch_size=batch_size)
    want = [naive(model, p, 6) for p in mixed]
    assert got == want
    assert len({tuple(w) for w in want}) > 1


def test_left_padded_generation_stops_at_eos_and_refuses_bad_input(model, mixed):
    from reversion.core.generation import greedy_generate_left_padded

    eos = naive(model, mixed[0], 1)[0]
    got = greedy_generate_left_padded(model, mixed, 8, eos, pad_id=0)
    assert [until_eos(g, eos) for g in got] == [until_eos(naive(model, p, 8), eos) for p in mixed]
    with pytest.raises(ValueError, match="pad_id"):
        greedy_generate_left_padded(model, mixed, 2, None, pad_id=None)
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_generate_left_padded(model, mixed, 0, None, pad_id=0)
