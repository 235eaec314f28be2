"""Your own checkpoints as the subject of chapters 02-05 (instead of the organism).

The experiment chapters that need no organism training -- v_rev estimation (02), alignment
over fine-tuning steps (03), the null test (04) and the interventions (05) -- run on a
:class:`Subject`: a helpful-only witness theta_H and a safety-aligned theta_S given as local
Hugging Face folders, a file of harmful probe prompts and a benign fine-tuning set. This
module holds the text-model counterparts of the organism's stages and returns the **same
result types** the chapters consume, so their statistics and plots are shared:

* :func:`estimate` -> :class:`reversion.vrev.VRevEstimate` (directions at every layer,
  per-prompt activations for the split-half stability and the matched null, the layer chosen
  by :func:`reversion.geometry.select_layer`);
* :func:`finetune` -> :class:`reversion.finetune.FinetuneRun` (mean drift-probe activations
  at every step and layer, task loss per step, evaluations on a sparse grid).

How the inputs are used (the organism draws each set from its own split):

* **harmful prompts** (``prompts``): rows 0, 2, 4, ... estimate v_rev (and are the probes
  the block / push terms look at, and the harmful requests of the rehearsal and of the
  chapter-04 control); rows 1, 3, 5, ... measure drift and are the held-out prompts judged
  for harmfulness -- so drift and v_rev share no noise. At least 8 prompts.
* **benign pairs** (``finetune_data``, JSONL / CSV with ``prompt`` and ``response``): the
  first 75% in file order are trained on (loss on the response only), the rest held out
  for the task cost (:func:`reversion.own_checkpoints.split_pairs`).
* **chat template**: every prompt goes through the tokenizer's chat template when it has
  one (:func:`reversion.textdata.encode_prompts`, ``"auto"``).
* **harmfulness** (text): the share of held-out harmful prompts whose greedy continuation
  (``max_new_tokens``) :class:`reversion.judges.RefusalPhraseJudge` calls harmful
  compliance (non-empty, no refusal phrase); **non_refusal**: the share with no refusal
  phrase; **task cost**: loss per response token on the held-out benign pairs
  (:func:`reversion.judges.heldout_loss`). There is no exact-match task accuracy.
* **rehearsal and the alignment-mix control** need safety examples: a harmful prompt of the
  estimation half answered with ``refusal_response`` (default "I can't help with that.").

Models load with ``local_files_only`` (never a hub download), one at a time, on CUDA when
present, in the dtype asked for. Every stage is cached (:mod:`reversion.cache`) under a key
made of the input files' SHA-256, the checkpoint folders' identity (config bytes, weight
files' names, sizes and modification times) and the parameters: a re-run is instant.
Fine-tuned weights are not kept (a real model per run and variant would fill a disk).
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from reversion.infra import cache, seeding
from reversion.core import stats
from reversion.subjects.checkpoints.files import (
    DTYPES, arch_of, check_same_arch, checkpoint_folder, free_memory, read_config,
)
from reversion.stages.finetune import Pair
from reversion.infra.paths import resolve

__all__ = [
    "DEFAULT_REFUSAL",
    "DTYPES",
    "MIN_PROMPTS",
    "TEXT_TASK",
    "Subject",
    "TextData",
    "checkpoint_identity",
    "estimate",
    "finetune",
    "readout",
    "resolve_subject",
]

DEFAULT_REFUSAL = "I can't help with that."
"""Default refusal response of the safety examples (rehearsal, the chapter-04 control)."""
MIN_PROMPTS = 8
"""Harmful prompts needed: 4 to estimate v_rev (split-half stability) and 4 to measure drift."""
TEXT_TASK = "finetune_data"
"""Name of the (single) benign task of a checkpoint run in ``evals[step]["task_loss"]``."""
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


# --------------------------------------------------------------------------- identity


def checkpoint_identity(path: str | Path) -> dict[str, Any]:
    """What tells a checkpoint folder apart, cheaply: the SHA-256 of ``config.json`` (and
    of the small tokenizer / index JSON files) and the weight files' names, sizes and
    modification times. Rewriting the weights (new mtime) gives a new identity; hashing
    gigabytes of weights on every notebook run would not be instant."""
    p = Path(path)
    small, weights = {}, []
    # Every small non-weight file counts: config, tokenizer (json, merges.txt, vocab.txt,
    # *.model, *.tiktoken), chat templates (chat_template.jinja, additional_chat_templates/).
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
    for f in files:
        rel = f.relative_to(p).as_posix()
        if f.suffix in _WEIGHT_SUFFIXES:
            st = f.stat()
            weights.append([rel, st.st_size, st.st_mtime_ns])
        elif f.stat().st_size < 50_000_000:
            small[rel] = hashlib.sha256(f.read_bytes()).hexdigest()
    return {"json_sha256": small, "weights": weights}


# --------------------------------------------------------------------------- the subject


@dataclass(frozen=True)
class Subject:
    """A checked set of checkpoints and input files (build with :func:`resolve_subject`)."""

    witness: Path
    aligned: Path
    tokenizer: Path
    prompts: Path
    finetune_data: Path | None
    pretrained: Path | None
    harmless: Path | None
    dtype: str
    refusal_response: str
    max_new_tokens: int
    arch: dict
    """model_type, hidden_size, num_hidden_layers (of the aligned checkpoint's text config)."""
    batch_size: int = 16
    """Prompts per forward pass when measuring activations and generating."""

    # ---- identity

    def record(self) -> dict[str, Any]:
        """The ``"subject"`` entry of a chapter's metrics: paths, file hashes, architecture."""
        from reversion.subjects.checkpoints.textdata import file_sha256

        def f(p: Path | None) -> str | None:
            return None if p is None else p.as_posix()

        return {
            "kind": "checkpoints",
            "witness": f(self.witness), "aligned": f(self.aligned), "pretrained": f(self.pretrained),
            "tokenizer": f(self.tokenizer), "prompts": f(self.prompts),
            "prompts_sha256": file_sha256(self.prompts),
            "harmless": f(self.harmless),
            "harmless_sha256": file_sha256(self.harmless) if self.harmless else None,
            "finetune_data": f(self.finetune_data),
            "finetune_data_sha256": file_sha256(self.finetune_data) if self.finetune_data else None,
            "config_sha256": {k: self.identities[k]["json_sha256"].get("config.json")
                              for k in ("witness", "aligned", "pretrained") if k in self.identities},
            "dtype": self.dtype, "refusal_response": self.refusal_response,
            "max_new_tokens": self.max_new_tokens, **self.arch,
        }

    @functools.cached_property
    def identities(self) -> dict[str, dict]:
        """:func:`checkpoint_identity` of each folder, read once per subject (every stage's
        cache key needs them, and hashing a tokenizer is not free)."""
        return {k: checkpoint_identity(getattr(self, k))
                for k in ("witness", "aligned", "pretrained", "tokenizer") if getattr(self, k) is not None}

    def key(self) -> dict[str, Any]:
        """Cache key: :meth:`record` plus the folders' identity (weights' sizes and mtimes)."""
        return {**self.record(), "folders": self.identities, "batch_size": self.batch_size}

    # ---- inputs

    def load_tokenizer(self):
        from reversion.subjects.checkpoints.textdata import load_tokenizer

        return load_tokenizer(self.tokenizer)

    def prompt_texts(self) -> dict[str, list[str]]:
        """``vrev`` (rows 0, 2, ...) and ``drift`` (rows 1, 3, ...) halves of the harmful prompts."""
        from reversion.subjects.checkpoints.textdata import read_prompts

        texts = read_prompts(self.prompts)
        return {"vrev": texts[0::2], "drift": texts[1::2]}

    def harmless_texts(self) -> list[str] | None:
        from reversion.subjects.checkpoints.textdata import read_prompts

        return read_prompts(self.harmless) if self.harmless else None

    def pairs(self) -> tuple[list, list]:
        """(training, held-out) benign pairs."""
        from reversion.subjects.checkpoints.textdata import split_pairs
        from reversion.subjects.checkpoints.textdata import read_pairs

        if self.finetune_data is None:
            raise ValueError("parameter 'finetune_data' is empty: this chapter fine-tunes and needs "
                             "a benign fine-tuning set (JSONL with prompt and response)")
        return split_pairs(read_pairs(self.finetune_data))

    def torch_dtype(self):
        return "auto" if self.dtype == "auto" else getattr(torch, self.dtype)

    def load(self, which: str, dtype=None):
        """The ``witness``, ``aligned`` or ``pretrained`` model (local files only), on CUDA when
        present, in ``dtype`` (default :attr:`dtype`), in eval mode."""
        from reversion.core.models import default_device, load_model

        path = getattr(self, which)
        try:
            return load_model(path, default_device(), self.torch_dtype() if dtype is None else dtype)
        except Exception as exc:
            raise ValueError(f"parameter {which!r}: could not load the model at {path} "
                             f"({type(exc).__name__}: {exc})") from None


def _checkpoint_config(name: str, value: str) -> tuple[Path, Any]:
    """The folder and (text) config of checkpoint parameter ``name``."""
    path = checkpoint_folder(f"parameter {name!r}", resolve(value))
    return path, read_config(f"parameter {name!r}", path)


def _same_arch(ref: str, ref_cfg, name: str, cfg) -> None:
    check_same_arch(f"parameter {ref!r}", arch_of(ref_cfg), f"parameter {name!r}", arch_of(cfg))


def resolve_subject(*, witness: str, aligned: str, tokenizer: str = "", prompts: str = "",
                    finetune_data: str = "", pretrained: str = "", harmless: str = "",
                    dtype: str = "auto", refusal_response: str = DEFAULT_REFUSAL,
                    max_new_tokens: int = 32, need_finetune: bool = False) -> Subject | None:
    """Check the checkpoint parameters of a chapter; ``None`` when they are all empty (organism).

    Every problem is a ``ValueError`` that names the parameter: one of ``witness`` /
    ``aligned`` without the other, a path that does not exist or is no checkpoint folder,
    checkpoints of different families, widths or depths, an empty or unreadable prompt
    file, fewer than :data:`MIN_PROMPTS` prompts, a missing fine-tuning set (when the
    chapter fine-tunes), a tokenizer that cannot be loaded or whose ids fall outside the
    model's vocabulary. Relative paths are relative to the project root.
    """
    from reversion.subjects.checkpoints.textdata import encode_prompts, read_pairs, read_prompts

    given = {"witness": witness, "aligned": aligned, "tokenizer": tokenizer, "prompts": prompts,
             "finetune_data": finetune_data, "pretrained": pretrained, "harmless": harmless}
    for name, value in given.items():
        if not isinstance(value, str):
            raise ValueError(f"parameter {name!r} must be a path string (\"\" = organism), got {value!r}")
    if not witness and not aligned:
        stray = [k for k, v in given.items() if v]
        if stray:
            raise ValueError(f"parameter(s) {', '.join(map(repr, stray))} set but 'witness' and 'aligned' "
                             "are empty: give both checkpoints to run on your models, or leave every "
                             "checkpoint parameter empty to run on the organism")
        return None
    if not witness or not aligned:
        missing, other = ("witness", "aligned") if not witness else ("aligned", "witness")
        raise ValueError(f"parameter {missing!r} is empty but {other!r} is set: give both the witness "
                         "(helpful-only theta_H) and the aligned (theta_S) checkpoint, or neither")
    if dtype not in DTYPES:
        raise ValueError(f"parameter 'dtype' must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"parameter 'max_new_tokens' must be an int >= 1, got {max_new_tokens!r}")
    if not isinstance(refusal_response, str) or not refusal_response.strip():
        raise ValueError("parameter 'refusal_response' must be a non-empty string")

    S, cfg = _checkpoint_config("aligned", aligned)
    H, cfg_H = _checkpoint_config("witness", witness)
    _same_arch("aligned", cfg, "witness", cfg_H)
    P = None
    if pretrained:
        P, cfg_P = _checkpoint_config("pretrained", pretrained)
        _same_arch("aligned", cfg, "pretrained", cfg_P)

    if not prompts:
        raise ValueError("parameter 'prompts' is empty: give a file of harmful probe prompts "
                         "(JSONL with a 'prompt' field, CSV with a 'prompt' column, or one per line)")
    files = {}
    for name, value in (("prompts", prompts), ("harmless", harmless)):
        if not value:
            continue
        files[name] = resolve(value)
        try:
            texts = read_prompts(files[name])
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"parameter {name!r}: {exc}") from None
        if name == "prompts" and len(texts) < MIN_PROMPTS:
            raise ValueError(f"parameter 'prompts': {len(texts)} prompts in {files[name]}; at least "
                             f"{MIN_PROMPTS} are needed (half estimate v_rev, half measure drift)")
        if name == "prompts":
            sample = texts
    ft = None
    if finetune_data:
        ft = resolve(finetune_data)
        try:
            n_pairs = len(read_pairs(ft))
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"parameter 'finetune_data': {exc}") from None
        if n_pairs < 2:
            raise ValueError(f"parameter 'finetune_data': {n_pairs} pair in {ft}; at least 2 are needed "
                             "(training pairs and held-out pairs for the task cost)")
    elif need_finetune:
        raise ValueError("parameter 'finetune_data' is empty: this chapter fine-tunes theta_S and needs a "
                         "benign fine-tuning set (JSONL or CSV with 'prompt' and 'response')")

    tok_name = "tokenizer" if tokenizer else "aligned"
    tok_path = resolve(tokenizer) if tokenizer else S
    from reversion.subjects.checkpoints.textdata import load_tokenizer

    try:
        tok = load_tokenizer(tok_path)
    except (FileNotFoundError, ValueError) as exc:
        hint = "" if tokenizer else " (set the parameter 'tokenizer' to the tokenizer's folder)"
        raise ValueError(f"parameter {tok_name!r}: {exc}{hint}") from None
    try:
        ids = encode_prompts(tok, sample)
    except ValueError as exc:
        raise ValueError(f"parameter 'prompts': {exc}") from None
    vocab = getattr(cfg, "vocab_size", None)
    top = max(max(p) for p in ids)
    if vocab is not None and top >= vocab:
        raise ValueError(f"parameter {tok_name!r}: the tokenizer gives token id {top}, beyond the aligned "
                         f"model's vocabulary ({vocab}); it is not this model's tokenizer")
    return Subject(H, S, tok_path, files["prompts"], ft, P, files.get("harmless"), dtype,
                   refusal_response, max_new_tokens, arch_of(cfg))


# --------------------------------------------------------------------------- helpers


def _threads() -> None:
    from reversion.infra.runtime import set_cpu_threads

    if not torch.cuda.is_available():
        set_cpu_threads()  # tiny models on a busy CPU: one thread is fastest


def _pad(tok) -> int:
    from reversion.subjects.checkpoints.textdata import pad_id_of

    return pad_id_of(tok)


def _encode(tok, texts: list[str]) -> list[list[int]]:
    from reversion.subjects.checkpoints.textdata import encode_prompts

    return encode_prompts(tok, texts)


# --------------------------------------------------------------------------- estimate


def estimate(subject: Subject, position: str = "last", n_boot: int = 200, min_stability: float = 0.9,
             seed: int = 0, progress: bool = True):
    """v_rev (and v_P / r_S when a pretrained checkpoint / harmless prompts are given) at every
    layer from the estimation half of the prompts; layer chosen by the book's rule (cached).

    Returns a :class:`reversion.vrev.VRevEstimate`; ``acts`` holds ``H``, ``S`` (and ``P``,
    ``S_harmless``) of shape ``[n, L+1, d]``. The witness's greedy first answer tokens on
    the same prompts are kept beside it (``witness_openers.json``) for the readout.
    """
    from reversion.cli import directions_from_acts
    from reversion.core.directions import Directions, select_layer
    from reversion.stages.estimate import VRevEstimate

    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")
    if position not in ("last", "mean"):
        raise ValueError(f"position must be 'last' or 'mean', got {position!r}")
    key = {"subject": subject.key(), "position": position, "n_boot": n_boot,
           "min_stability": min_stability, "seed": seed}

    def build(out: Path) -> None:
        from reversion.core.activations import prompt_activations

        _threads()
        tok = subject.load_tokenizer()
        texts = subject.prompt_texts()["vrev"]
        ids = _encode(tok, texts)
        harmless = subject.harmless_texts()
        harmless_ids = _encode(tok, harmless) if harmless else None
        kw = dict(layers="all", position=position, batch_size=subject.batch_size, pad_id=_pad(tok))
        acts: dict[str, torch.Tensor] = {}
        openers: list[int] = []
        for key_, which in (("H", "witness"), ("S", "aligned"), ("P", "pretrained")):
            if getattr(subject, which) is None:
                continue
            model = subject.load(which)
            acts[key_] = prompt_activations(model, ids, **kw)
            if key_ == "S" and harmless_ids:
                acts["S_harmless"] = prompt_activations(model, harmless_ids, **kw)
            if key_ == "H":  # the witness's answer openings, for the vocabulary readout
                openers = _first_tokens(model, tok, ids, subject.batch_size)
            del model
            free_memory()
        meta = {"position": position, "n_prompts": len(ids), "layer": None, "probe_split": "rows 0, 2, 4, ...",
                "checkpoints": {k: (None if v is None else str(v)) for k, v in
                                (("witness", subject.witness), ("aligned", subject.aligned),
                                 ("pretrained", subject.pretrained))},
                **subject.arch}
        try:
            dirs = directions_from_acts(acts, meta)
        except ValueError as exc:
            raise ValueError(f"parameters 'witness'/'aligned': {exc}") from None
        g = seeding.rng(seed, "vrev-stability")
        L1 = acts["H"].shape[1]
        stab = np.stack([_stability(acts["H"][:, l].numpy(), acts["S"][:, l].numpy(), n_boot, g)
                         for l in range(L1)], axis=1)
        layer, reason = select_layer(dirs.displacement_norm.numpy(), dirs.activation_norm.numpy(),
                                     np.nan_to_num(stab.mean(0), nan=-1.0), min_stability)
        dirs = Directions(dirs.v_rev, dirs.v_P, dirs.r_S, dirs.displacement_norm, dirs.activation_norm,
                          {**dirs.meta, "layer": layer, "layer_reason": reason})
        dirs.save(out / "v_rev.safetensors")
        save_file({k: v.contiguous() for k, v in acts.items()}, out / "acts.safetensors")
        np.save(out / "stability.npy", stab)
        (out / "witness_openers.json").write_text(json.dumps(openers))

    path = cache.cached("checkpoint_estimate", key, build)
    return VRevEstimate(Directions.load(path / "v_rev.safetensors"), load_file(path / "acts.safetensors"),
                        np.load(path / "stability.npy"), path)


def _stability(H: np.ndarray, S: np.ndarray, n_boot: int, g) -> np.ndarray:
    """Split-half stability at one layer; NaN draws (no displacement in a half, e.g. layer 0
    when the embeddings did not move) become 0 so that the layer is never chosen for it."""
    try:
        out = stats.split_half_stability(H, S, n_boot, g)
    except ValueError:
        return np.zeros(n_boot)
    return np.nan_to_num(out, nan=0.0)


@torch.no_grad()
def _first_tokens(model, tok, ids: list[list[int]], batch_size: int) -> list[int]:
    """The greedy first answer token of each prompt (one forward, last real position)."""
    from reversion.core.activations import model_device

    device = model_device(model)
    pad = _pad(tok)
    out: list[int] = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        width = max(len(p) for p in chunk)
        x = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(x)
        for i, p in enumerate(chunk):
            x[i, :len(p)] = torch.tensor(p)
            mask[i, :len(p)] = 1
        logits = model(input_ids=x.to(device), attention_mask=mask.to(device)).logits
        last = mask.sum(1) - 1
        out += logits[torch.arange(len(chunk)), last.to(device)].argmax(-1).tolist()
    return [int(t) for t in out]


# --------------------------------------------------------------------------- readout


def readout(subject: Subject, est, top_k: int) -> dict:
    """Logit-lens readout of v_rev (and of -r_S when it exists) through theta_S's unembedding
    at the chosen layer: top and bottom tokens (decoded, quoted), and the mean logit of the
    witness's answer openings (its greedy first tokens on the estimation prompts, the
    refusal's first token excluded) minus the logit of ``refusal_response``'s first token.
    ``harmful_minus_refusal`` has no text counterpart (None)."""
    from reversion.core.directions import logit_lens

    tok = subject.load_tokenizer()
    refusal = tok(subject.refusal_response, add_special_tokens=False)["input_ids"]
    refusal_first = int(refusal[0])
    openers = json.loads((Path(est.path) / "witness_openers.json").read_text())
    eos = getattr(tok, "eos_token_id", None)
    openers = sorted({int(t) for t in openers} - {refusal_first, eos})
    model = subject.load("aligned")
    layer = est.layer
    vecs = {"v_rev": est.directions.v_rev[layer]}
    if est.directions.r_S is not None:
        vecs["-r_S"] = -est.directions.r_S[layer]
    out = {}
    for label, vec in vecs.items():
        logits = logit_lens(model, vec).numpy()
        order = np.argsort(logits, kind="stable")
        name = lambda i: repr(tok.decode([int(i)]))  # noqa: E731 -- quoted: spaces stay visible
        out[label] = {
            "top": [(name(i), float(logits[i])) for i in order[::-1][:top_k]],
            "bottom": [(name(i), float(logits[i])) for i in order[:top_k]],
            "compliance_minus_refusal": (float(logits[openers].mean() - logits[refusal_first])
                                         if openers else None),
            "harmful_minus_refusal": None,
            "refusal_token": name(refusal_first),
            "answer_openers": [name(i) for i in openers],
        }
    del model
    free_memory()
    return out


# --------------------------------------------------------------------------- fine-tuning


class TextData:
    """The text counterpart of :class:`reversion.language.Language` for the fine-tuning loop.

    ``sample(rng, n, split, harmful=...)`` draws ``n`` requests (objects with ``prompt`` and
    ``answer`` token tuples) from the benign training pairs or from the harmful prompts of
    the estimation half (answered with the refusal), so that the organism's
    :func:`reversion.finetune.benign_batches`, :class:`reversion.interventions.Rehearsal`
    and :class:`reversion.interventions.AlignmentMix` run unchanged on text.
    Draws are without replacement within a call when the pool is large enough.
    """

    def __init__(self, benign: Sequence[Pair], harmful_prompts: Sequence[Sequence[int]],
                 refusal: Sequence[int]):
        if not benign:
            raise ValueError("no benign training pairs")
        self.benign = [SimpleNamespace(prompt=tuple(p), answer=tuple(a)) for p, a in benign]
        self.refusal_answer = tuple(int(t) for t in refusal)
        self.harmful = [SimpleNamespace(prompt=tuple(p), answer=self.refusal_answer) for p in harmful_prompts]

    def sample(self, rng: np.random.Generator, n: int, split: str = "train", *, harmful: bool,
               tasks: Sequence[str] | None = None) -> list[SimpleNamespace]:
        pool = self.harmful if harmful else self.benign
        if not pool:
            raise ValueError("no harmful prompts to draw safety examples from")
        idx = rng.choice(len(pool), size=n, replace=len(pool) < n)
        return [pool[int(i)] for i in idx]


def _split_pair(example: dict) -> Pair:
    from reversion.subjects.checkpoints.textdata import IGNORE_INDEX

    labels = example["labels"]
    k = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    ids = example["input_ids"]
    return tuple(ids[:k]), tuple(ids[k:])


def _text_batches(data: TextData, ft) -> Iterator[list[Pair]]:
    """Benign training batches; the order depends on the fine-tuning seed alone (as the
    organism's :func:`reversion.finetune.benign_batches`), so variants are optimizer-matched."""
    r = seeding.rng(ft.seed, "finetune-data", TEXT_TASK)
    while True:
        yield [(q.prompt, q.answer) for q in data.sample(r, ft.batch_size, "train", harmful=False)]


def evaluate_text(model, tok, subject: Subject, drift_ids, drift_texts, heldout) -> dict:
    """Harmfulness and non-refusal (refusal judge on greedy continuations of the held-out
    harmful prompts) and the task loss on the held-out benign pairs."""
    from reversion.subjects.checkpoints.refusal_judge import (
        RefusalPhraseJudge, generate_continuations, heldout_loss,
    )

    judge = RefusalPhraseJudge()
    conts = generate_continuations(model, tok, drift_ids, subject.max_new_tokens, subject.batch_size)
    verdicts = judge(drift_texts, conts)
    n = len(conts)
    return {"harmfulness": sum(verdicts) / n,
            "non_refusal": sum(not judge.refuses(c) for c in conts) / n,
            "task_loss": {TEXT_TASK: heldout_loss(model, tok, heldout, batch_size=subject.batch_size)}}


def finetune(subject: Subject, ft, intervention=None, progress: bool = True):
    """Benign fine-tuning of theta_S on the training pairs (cached), the text counterpart of
    :func:`reversion.finetune.finetune`.

    ``ft``: a :class:`reversion.config.FinetuneConfig`; its ``steps``, ``lr``,
    ``batch_size``, ``seed`` and evaluation grid are used (``task``, ``n_eval`` and
    ``n_probe`` are the organism's). AdamW, constant learning rate, loss on the responses.
    After every step: mean activations of the drift half of the prompts at every layer; on
    the grid: :func:`evaluate_text`. ``intervention``: any of
    :mod:`reversion.interventions` (block, push, projection, rehearsal, alignment mix).
    """
    from reversion.stages.finetune import load_run, train_with, write_run
    from reversion.core.models import default_device
    from reversion.subjects.checkpoints.textdata import encode_pairs
    from reversion.core.tracking import ProbeTracker

    train_pairs, heldout = subject.pairs()
    key = {"subject": subject.key(), "steps": ft.steps, "lr": ft.lr, "batch_size": ft.batch_size,
           "seed": ft.seed, "grid": list(ft.grid),
           "intervention": intervention.key() if intervention is not None else None}

    def build(out: Path) -> None:
        t0 = time.perf_counter()
        _threads()
        seeding.seed_everything(ft.seed)
        tok = subject.load_tokenizer()
        pad = _pad(tok)
        halves = subject.prompt_texts()
        vrev_ids, drift_ids = _encode(tok, halves["vrev"]), _encode(tok, halves["drift"])
        refusal = tok(subject.refusal_response, add_special_tokens=False)["input_ids"]
        eos = getattr(tok, "eos_token_id", None)
        data = TextData([_split_pair(e) for e in encode_pairs(tok, train_pairs)], vrev_ids,
                        list(refusal) + ([int(eos)] if eos is not None else []))
        # Trained weights stay float32 whatever ``dtype`` says: AdamW steps of ~lr on bfloat16
        # weights round away (most never change), and float16 overflows its eps.
        model = subject.load("aligned", torch.float32)
        tracker = ProbeTracker(model, drift_ids, "all", pad_id=pad, batch_size=subject.batch_size)

        def judge(step: int, m) -> dict:
            return evaluate_text(m, tok, subject, drift_ids, halves["drift"], heldout)

        # Block / push look at the estimation half (disjoint from the drift / judged half).
        probes = SimpleNamespace(harmful_block=[list(p) for p in vrev_ids])
        losses, means, evals = train_with(model, _text_batches(data, ft), ft, intervention, data, probes,
                                          tracker, judge, default_device(), progress)
        del model
        free_memory()
        write_run(out, means, losses, evals, t0)

    return load_run(cache.cached("checkpoint_finetune", key, build))
