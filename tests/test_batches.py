"""Training batches (``reversion.core.batches.collate``): right padding with the caller's pad id,
attention mask over the real tokens, labels on the target only (or on every real token)."""

from __future__ import annotations

import pytest
import torch

from reversion.core.batches import IGNORE, collate


def test_answer_only_labels_and_right_padding_with_the_given_pad_id():
    b = collate([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], pad_id=2)
    assert torch.equal(b["input_ids"], torch.tensor([[5, 6, 7, 9, 10], [8, 11, 12, 13, 2]]))
    assert torch.equal(b["attention_mask"], torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]))
    X = IGNORE
    assert torch.equal(b["labels"], torch.tensor([[X, X, X, 9, 10], [X, 11, 12, 13, X]]))
    assert all(t.dtype == torch.long for t in b.values())


def test_language_modelling_labels_cover_every_real_token_and_no_pad():
    b = collate([[5, 6, 7], [8]], pad_id=0, loss_on_prompt=True)
    assert torch.equal(b["input_ids"], torch.tensor([[5, 6, 7], [8, 0, 0]]))
    assert torch.equal(b["labels"], torch.tensor([[5, 6, 7], [8, IGNORE, IGNORE]]))
    # without targets and without loss_on_prompt, nothing carries a loss
    assert torch.all(collate([[5, 6]], pad_id=0)["labels"] == IGNORE)


def test_the_pad_id_is_the_callers_and_must_be_given():
    a, b = collate([[1], [1, 2, 3]], pad_id=0), collate([[1], [1, 2, 3]], pad_id=99)
    assert a["input_ids"][0, 1:].tolist() == [0, 0] and b["input_ids"][0, 1:].tolist() == [99, 99]
    assert torch.equal(a["attention_mask"], b["attention_mask"]) and torch.equal(a["labels"], b["labels"])
    with pytest.raises(TypeError, match="pad_id"):
        collate([[1, 2]], [[3]])  # keyword-only and required: no silent default pad token
