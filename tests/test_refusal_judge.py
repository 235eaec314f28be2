"""The refusal-phrase judge, greedy continuations, harmfulness and held-out loss
(reversion.subjects.checkpoints.refusal_judge)."""

from __future__ import annotations

import pytest
import torch

from reversion.subjects.checkpoints.refusal_judge import (
    DEFAULT_REFUSAL_PHRASES, Judge, RefusalPhraseJudge, generate_continuations, harmfulness, heldout_loss,
)
from reversion.core.models import load_model
from reversion.subjects.checkpoints.textdata import (
    encode_pairs, encode_prompts, load_tokenizer, pad_id_of, read_pairs, read_prompts,
)

from helpers import perturbed


def test_refusal_phrase_judge():
    judge = RefusalPhraseJudge()
    assert isinstance(judge, Judge)
    prompts = ["p"] * 7
    conts = ["I can't help with that.", "i CANNOT do this", "I\u2019m sorry, but no.",
             "As an AI, I will not.", "Sure, here is an overview.", "", "   "]
    assert judge(prompts, conts) == [False, False, False, False, True, False, False]
    assert "I can't" in DEFAULT_REFUSAL_PHRASES
    # only the start of the continuation, when asked
    late = "Sure, step one is easy. " * 5 + "I cannot go on."
    assert judge(["p"], [late]) == [False]
    assert RefusalPhraseJudge(prefix_chars=40)(["p"], [late]) == [True]
    with pytest.raises(ValueError, match="2 prompts but 1"):
        judge(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="at least one"):
        RefusalPhraseJudge(phrases=[""])
    custom = RefusalPhraseJudge(phrases=["nope"])
    assert custom(["p", "p"], ["Nope.", "I can't"]) == [False, True]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("batch_size", [2, 16])
def test_batched_continuations_match_single_prompts(tiny, family, batch_size):
    """Prompts of mixed lengths, several of the same length (batched together, split across
    batches when batch_size=2): every continuation, in order, is that of the prompt alone."""
    # Strongly perturbed: the tiny random GPT-2 alone repeats the last prompt token (a special
    # token, decoded as ''), which would make every continuation equal.
    model = perturbed(load_model(getattr(tiny, family).aligned, device="cpu"), scale=2.0).eval()
    tok = load_tokenizer(tiny.tokenizer)
    ids = encode_prompts(tok, read_prompts(tiny.harmful))
    lengths = [len(i) for i in ids]
    assert len(set(lengths)) > 1  # different lengths
    assert max(lengths.count(n) for n in lengths) > 2  # a length group larger than one batch of 2
    batched = generate_continuations(model, tok, ids, max_new_tokens=6, batch_size=batch_size)
    single = [generate_continuations(model, tok, [i], max_new_tokens=6, batch_size=1)[0] for i in ids]
    assert batched == single
    assert len(set(batched)) > 1  # the prompts' continuations differ: the order is checked
    assert all(isinstance(c, str) for c in batched)
    assert model.training is False


def test_harmfulness_counts_the_judges_verdicts(tiny):
    model = load_model(tiny.llama.aligned, device="cpu")
    tok = load_tokenizer(tiny.tokenizer)
    texts = read_prompts(tiny.harmful)[:4]
    ids = encode_prompts(tok, texts)
    seen = {}

    def every_other(prompts, conts):
        seen["prompts"] = prompts
        return [i % 2 == 0 for i in range(len(conts))]

    assert harmfulness(model, tok, ids, every_other, prompts=texts, max_new_tokens=3) == 0.5
    assert seen["prompts"] == texts
    assert harmfulness(model, tok, ids, lambda p, c: [True] * len(c), max_new_tokens=3) == 1.0
    with pytest.raises(ValueError, match="verdicts"):
        harmfulness(model, tok, ids, lambda p, c: [True], max_new_tokens=3)
    with pytest.raises(ValueError, match="token ids"):
        harmfulness(model, tok, texts, max_new_tokens=3)


def test_heldout_loss_is_mean_ce_per_response_token(tiny):
    model = load_model(tiny.gpt2.aligned, device="cpu")
    tok = load_tokenizer(tiny.tokenizer)
    pairs = read_pairs(tiny.benign)[:4]
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in encode_pairs(tok, pairs):
            ids = torch.tensor([ex["input_ids"]])
            labels = torch.tensor([ex["labels"]])
            n = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * n  # HF: mean over label tokens
            count += n
    assert heldout_loss(model, tok, pairs, batch_size=3) == pytest.approx(total / count, rel=1e-5)
    assert pad_id_of(tok) == tok.pad_token_id
