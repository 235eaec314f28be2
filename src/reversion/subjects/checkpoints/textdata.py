"""Text prompts and fine-tuning pairs for real (Hugging Face) checkpoints.

The organism the book's chapters study speaks a token language of its own; this module is
the bridge to ordinary text models (Llama, Qwen, GPT-2, ...):

* :func:`read_prompts` -- a prompt file: JSONL (one object per line with a
  ``"prompt"`` field), JSON (a list of strings or of such objects), CSV (a
  ``prompt`` column), or plain text (one prompt per line; blank lines skipped);
* :func:`read_pairs` -- a fine-tuning set: JSONL (or CSV) with ``"prompt"`` and
  ``"response"``;
* :func:`load_tokenizer` -- a local tokenizer folder (never a hub download);
* :func:`encode_prompts` -- prompts as token ids, through the tokenizer's chat
  template when it has one (``use_chat_template="auto"``);
* :func:`encode_pairs` and :class:`PairCollator` -- supervised examples (loss on the
  response only) and a right-padding collator, ready for ``transformers.Trainer``.

Errors name what is wrong: a missing file is a ``FileNotFoundError`` naming the path;
an empty file, a missing field (with its line) or an undecodable line is a
``ValueError``.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch

from reversion.core.batches import IGNORE

__all__ = [
    "IGNORE_INDEX",
    "Example",
    "PairCollator",
    "encode_pairs",
    "encode_prompts",
    "file_sha256",
    "has_chat_template",
    "load_tokenizer",
    "pad_id_of",
    "read_pairs",
    "read_prompts",
    "split_pair",
    "split_pairs",
]

IGNORE_INDEX = IGNORE
"""Label value the cross-entropy of Hugging Face causal LMs ignores."""

CHAT_TEMPLATE_CHOICES = ("auto", True, False)


class Example(NamedTuple):
    """One fine-tuning example: a user prompt and the response to train on."""

    prompt: str
    response: str


# --------------------------------------------------------------------------- files


def _existing_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not path.is_file():
        raise FileNotFoundError(f"{what} is not a file: {path}")
    return path


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json"
    if suffix in (".csv", ".tsv"):
        return "csv"
    return "txt"


def _text_value(record: Any, field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with a {field!r} field, got {type(record).__name__}")
    if field not in record:
        keys = ", ".join(map(repr, record)) or "none"
        raise ValueError(f"{where}: missing field {field!r} (fields present: {keys})")
    value = record[field]
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{where}: field {field!r} is empty")
    return value


def _records(path: Path, fields: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a JSONL / JSON / CSV file as ``{field: text}`` dicts, checked."""
    kind = _kind(path)
    rows: list[dict[str, str]] = []
    if kind == "jsonl":
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}, line {n}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
                rows.append({k: _text_value(record, k, where) for k in fields})
    elif kind == "json":
        try:
            data = json.loads(path.read_text(encoding="utf-8").strip() or "[]")
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        for i, record in enumerate(data):
            where = f"{path}, item {i}"
            if isinstance(record, str) and list(fields) == ["prompt"]:
                record = {"prompt": record}
            rows.append({k: _text_value(record, k, where) for k in fields})
    elif kind == "csv":
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            header = reader.fieldnames or []
            for k in fields:
                if header and k not in header:
                    raise ValueError(f"{path}, line 1: missing column {k!r} (columns: {', '.join(header)})")
            for record in reader:
                if not any((v or "").strip() for v in record.values() if isinstance(v, str)):
                    continue
                where = f"{path}, line {reader.line_num}"
                rows.append({k: _text_value({kk: vv for kk, vv in record.items() if vv is not None}, k, where)
                             for k in fields})
    else:
        raise ValueError(f"{path}: a plain-text file holds prompts only; use JSONL or CSV with fields "
                         f"{', '.join(map(repr, fields))}")
    return rows


def read_prompts(path: str | Path, field: str = "prompt") -> list[str]:
    """The prompts of a file, in file order.

    ``.jsonl``: one JSON object per line, text in ``field``; ``.json``: a list of
    strings or objects; ``.csv`` / ``.tsv``: a ``field`` column; anything else: plain
    text, one prompt per line (blank lines skipped, surrounding whitespace stripped).
    """
    path = _existing_file(path, "prompt file")
    if _kind(path) == "txt":
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        prompts = [r[field] for r in _records(path, [field])]
    if not prompts:
        raise ValueError(f"{path}: no prompts found (the file is empty)")
    return prompts


def read_pairs(path: str | Path, prompt_field: str = "prompt", response_field: str = "response") -> list[Example]:
    """The ``(prompt, response)`` examples of a JSONL / JSON / CSV fine-tuning file."""
    path = _existing_file(path, "fine-tuning file")
    rows = _records(path, [prompt_field, response_field])
    if not rows:
        raise ValueError(f"{path}: no examples found (the file is empty)")
    return [Example(r[prompt_field], r[response_field]) for r in rows]


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (recorded with an estimate, to tell prompt sets apart)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- tokenizer


def load_tokenizer(path: str | Path):
    """``AutoTokenizer.from_pretrained(path, local_files_only=True)``, with a clear error."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer folder not found: {path}")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ... here
        raise ValueError(f"could not load a tokenizer from {path} ({type(exc).__name__}: {exc}); "
                         "pass the folder that holds tokenizer.json / tokenizer_config.json") from None


def pad_id_of(tokenizer) -> int:
    """The id used for padding: the pad token, else the EOS token, else 0.

    Padding positions are always masked out, so any id inside the vocabulary works.
    """
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0


def has_chat_template(tokenizer) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def _use_template(tokenizer, use_chat_template: Any) -> bool:
    if use_chat_template not in CHAT_TEMPLATE_CHOICES or not isinstance(use_chat_template, (bool, str)):
        raise ValueError(f"use_chat_template must be 'auto', True or False, got {use_chat_template!r}")
    if use_chat_template == "auto":
        return has_chat_template(tokenizer)
    if use_chat_template and not has_chat_template(tokenizer):
        raise ValueError("use_chat_template=True but the tokenizer has no chat template")
    return bool(use_chat_template)


def _as_id_list(encoded: Any) -> list[int]:
    """Token ids from whatever a tokenizer returned (list, BatchEncoding, nested list, tensor)."""
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    if encoded and isinstance(encoded[0], (list, tuple)):
        if len(encoded) != 1:
            raise ValueError(f"expected one encoded sequence, got {len(encoded)}")
        encoded = encoded[0]
    return [int(t) for t in encoded]


def encode_prompts(tokenizer, texts: Sequence[str], use_chat_template: Any = "auto",
                   max_length: int | None = None) -> list[list[int]]:
    """Token ids of each prompt, as a model will see it at generation time.

    With a chat template (``"auto"`` and the tokenizer has one, or ``True``) each text
    becomes ``apply_chat_template([{"role": "user", "content": text}],
    add_generation_prompt=True, tokenize=True)``: the probe's last token is then the
    template's assistant header, the position from which the model answers. Without
    (``"auto"`` and none, or ``False``) it is ``tokenizer(text)["input_ids"]``, with
    the tokenizer's usual special tokens (e.g. Llama's BOS).

    ``max_length`` keeps the *last* ``max_length`` tokens (the end of the prompt,
    where the last-token activation is read).
    """
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, got a single string")
    if not texts:
        raise ValueError("no prompts to encode")
    templated = _use_template(tokenizer, use_chat_template)
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"prompt {i} is not a string ({type(text).__name__})")
        if templated:
            ids = _as_id_list(tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True,
                return_dict=False))
        else:
            ids = _as_id_list(tokenizer(text)["input_ids"])
        if not ids:
            raise ValueError(f"prompt {i} ({text[:40]!r}) encodes to no tokens")
        if max_length is not None:
            ids = ids[-max_length:]
        out.append(ids)
    return out


def encode_pairs(tokenizer, pairs: Sequence[Example | tuple[str, str]], use_chat_template: Any = "auto",
                 max_length: int | None = None, add_eos: bool = True) -> list[dict[str, list[int]]]:
    """Supervised examples ``{"input_ids", "labels"}`` with the loss on the response only.

    The prompt is encoded as in :func:`encode_prompts` (so training sees the same
    prompt format as the probes); the response follows as plain tokens
    (``add_special_tokens=False``), then the EOS token when ``add_eos`` and the
    tokenizer has one. Prompt positions carry label ``-100``. ``max_length`` truncates
    the *end* of the response.
    """
    if not pairs:
        raise ValueError("no fine-tuning pairs to encode")
    prompts = encode_prompts(tokenizer, [p[0] for p in pairs], use_chat_template)
    eos = getattr(tokenizer, "eos_token_id", None)
    out = []
    for i, (prompt_ids, (_, response)) in enumerate(zip(prompts, pairs)):
        resp = _as_id_list(tokenizer(response, add_special_tokens=False)["input_ids"])
        if add_eos and eos is not None:
            resp = resp + [int(eos)]
        if not resp:
            raise ValueError(f"pair {i}: the response encodes to no tokens")
        ids = prompt_ids + resp
        labels = [IGNORE_INDEX] * len(prompt_ids) + resp
        if max_length is not None:
            if len(prompt_ids) >= max_length:
                raise ValueError(f"pair {i}: the prompt alone has {len(prompt_ids)} tokens >= max_length={max_length}")
            ids, labels = ids[:max_length], labels[:max_length]
        out.append({"input_ids": ids, "labels": labels})
    return out


@dataclass
class PairCollator:
    """Right-pads ``{"input_ids", "labels"}`` examples into a batch (a ``Trainer`` ``data_collator``).

    Adds ``attention_mask``; padded labels are ``-100``. Right padding is safe for a
    causal LM: pads come after every real token and are masked out.
    """

    pad_id: int

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("empty batch")
        width = max(len(f["input_ids"]) for f in features)
        n = len(features)
        ids = torch.full((n, width), int(self.pad_id), dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            ids[i, :k] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            mask[i, :k] = 1
            lab = f.get("labels", f["input_ids"])
            labels[i, :k] = torch.as_tensor(lab, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def split_pairs(pairs: list[Example]) -> tuple[list[Example], list[Example]]:
    """Fine-tuning pairs split in file order: the first 75% to train on, the rest held out."""
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 fine-tuning pairs (train + held out), got {len(pairs)}")
    k = min(len(pairs) - 1, max(1, round(0.75 * len(pairs))))
    return list(pairs[:k]), list(pairs[k:])


def split_pair(example: dict) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(prompt ids, response ids) of an encoded example (:func:`~reversion.subjects.checkpoints.textdata.encode_pairs`)."""
    labels = example["labels"]
    k = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    ids = example["input_ids"]
    return tuple(ids[:k]), tuple(ids[k:])
