"""Prompt files, fine-tuning pairs, tokenizers and chat templates (reversion.subjects.checkpoints.textdata)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from reversion.core.batches import IGNORE
from reversion.subjects.checkpoints import demo
from reversion.subjects.checkpoints.textdata import (
    IGNORE_INDEX, PairCollator, encode_pairs, encode_prompts, has_chat_template, load_tokenizer, pad_id_of,
    read_pairs, read_prompts, split_pair, split_pairs,
)

from helpers import write_jsonl


# --------------------------------------------------------------------------- prompt files


def test_read_prompts_jsonl_csv_txt_json(tmp_path):
    j = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "first one", "id": 1}, {"prompt": "second"}])
    (tmp_path / "q.jsonl").write_text(j.read_text().replace("\n", "\n\n"))  # blank lines skipped
    (tmp_path / "p.csv").write_text('id,prompt\n1,first one\n2,"second, with comma"\n')
    (tmp_path / "p.txt").write_text("first one\n\n  second  \n")
    (tmp_path / "p.json").write_text(json.dumps(["first one", {"prompt": "second"}]))
    assert read_prompts(j) == ["first one", "second"]
    assert read_prompts(tmp_path / "q.jsonl") == ["first one", "second"]
    assert read_prompts(tmp_path / "p.csv") == ["first one", "second, with comma"]
    assert read_prompts(tmp_path / "p.txt") == ["first one", "second"]
    assert read_prompts(tmp_path / "p.json") == ["first one", "second"]


def test_example_files_parse():
    files = demo.example_files()
    assert len(read_prompts(files["harmful"])) == 12
    assert len(read_prompts(files["harmless"])) == 12
    pairs = read_pairs(files["benign"])
    assert len(pairs) >= 20 and all(p.prompt and p.response for p in pairs)


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_prompts(missing)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_pairs(missing)


@pytest.mark.parametrize("name", ["e.jsonl", "e.txt", "e.csv", "e.json"])
def test_empty_file_is_an_error(tmp_path, name):
    path = tmp_path / name
    path.write_text("\n  \n" if name != "e.csv" else "prompt\n")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(path)


def test_missing_field_names_field_and_line(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"text": "no prompt key"}])
    with pytest.raises(ValueError, match=r"line 2.*'prompt'"):
        read_prompts(path)
    (tmp_path / "p.csv").write_text("text\nhello\n")
    with pytest.raises(ValueError, match=r"column 'prompt'"):
        read_prompts(tmp_path / "p.csv")
    pairs = write_jsonl(tmp_path / "ft.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c"}])
    with pytest.raises(ValueError, match=r"line 2.*'response'"):
        read_pairs(pairs)


def test_bad_json_line_and_bad_values(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(ValueError, match="line 2.*not valid JSON"):
        read_prompts(tmp_path / "bad.jsonl")
    write_jsonl(tmp_path / "num.jsonl", [{"prompt": 3}])
    with pytest.raises(ValueError, match="must be a string"):
        read_prompts(tmp_path / "num.jsonl")
    write_jsonl(tmp_path / "blank.jsonl", [{"prompt": "  "}])
    with pytest.raises(ValueError, match="is empty"):
        read_prompts(tmp_path / "blank.jsonl")
    (tmp_path / "pairs.txt").write_text("a\n")
    with pytest.raises(ValueError, match="JSONL or CSV"):
        read_pairs(tmp_path / "pairs.txt")


def test_custom_field(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"instruction": "do x"}])
    assert read_prompts(path, field="instruction") == ["do x"]


# --------------------------------------------------------------------------- tokenizers


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        load_tokenizer(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="could not load a tokenizer"):
        load_tokenizer(tmp_path / "empty")


def test_pad_id_fallbacks():
    assert pad_id_of(SimpleNamespace(pad_token_id=5, eos_token_id=7)) == 5
    assert pad_id_of(SimpleNamespace(pad_token_id=None, eos_token_id=7)) == 7
    assert pad_id_of(SimpleNamespace(pad_token_id=None, eos_token_id=[9, 10])) == 9
    assert pad_id_of(SimpleNamespace()) == 0


def test_chat_template_applied_when_present(tiny):
    tok = load_tokenizer(tiny.tokenizer)
    plain = load_tokenizer(tiny.plain_tokenizer)
    assert has_chat_template(tok) and not has_chat_template(plain)
    texts = ["Explain how to pick a lock.", "What do bees make?"]
    templated = encode_prompts(tok, texts)
    raw = encode_prompts(plain, texts)
    user, assistant, end = (tok.convert_tokens_to_ids(t) for t in ("<|user|>", "<|assistant|>", "<|end|>"))
    for t_ids, r_ids, text in zip(templated, raw, texts):
        assert t_ids != r_ids
        assert r_ids == tok(text)["input_ids"]
        # <|user|> text <|end|> <|assistant|>: the plain encoding sits between the template's tokens
        assert t_ids == [user, *r_ids, end, assistant]
    assert encode_prompts(tok, texts, use_chat_template=False) == raw
    with pytest.raises(ValueError, match="no chat template"):
        encode_prompts(plain, texts, use_chat_template=True)
    with pytest.raises(ValueError, match="use_chat_template"):
        encode_prompts(tok, texts, use_chat_template="yes")
    with pytest.raises(ValueError, match="single string"):
        encode_prompts(tok, "a string")
    assert encode_prompts(tok, texts, max_length=3)[0] == templated[0][-3:]


def test_encode_pairs_and_collator(tiny):
    tok = load_tokenizer(tiny.tokenizer)
    pairs = read_pairs(tiny.benign)[:3]
    ex = encode_pairs(tok, pairs)
    prompts = encode_prompts(tok, [p.prompt for p in pairs])
    for e, p_ids, pair in zip(ex, prompts, pairs):
        n = len(p_ids)
        assert e["input_ids"][:n] == p_ids
        assert e["labels"][:n] == [IGNORE_INDEX] * n
        assert e["labels"][n:] == e["input_ids"][n:]
        assert e["input_ids"][-1] == tok.eos_token_id
        assert tok.decode(e["input_ids"][n:-1]) == pair.response
    batch = PairCollator(pad_id_of(tok))(ex)
    width = max(len(e["input_ids"]) for e in ex)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, width)
    for i, e in enumerate(ex):
        k = len(e["input_ids"])
        assert batch["attention_mask"][i].sum() == k
        assert torch.all(batch["labels"][i, k:] == IGNORE_INDEX)
        assert torch.all(batch["input_ids"][i, k:] == pad_id_of(tok))


def test_split_pairs_in_file_order_and_split_pair(tiny):
    pairs = read_pairs(tiny.benign)
    train, held = split_pairs(pairs)
    assert train + held == pairs  # file order, nothing lost
    assert len(train) == round(0.75 * len(pairs)) and held
    assert split_pairs(pairs[:2]) == ([pairs[0]], [pairs[1]])  # always at least one of each
    with pytest.raises(ValueError, match="at least 2"):
        split_pairs(pairs[:1])
    tok = load_tokenizer(tiny.tokenizer)
    for e, p_ids in zip(encode_pairs(tok, pairs[:3]), encode_prompts(tok, [p.prompt for p in pairs[:3]])):
        prompt, answer = split_pair(e)
        assert list(prompt) == p_ids  # the prompt is exactly the label-free head
        assert list(prompt + answer) == e["input_ids"]
        assert answer[-1] == tok.eos_token_id
    assert IGNORE_INDEX == IGNORE
