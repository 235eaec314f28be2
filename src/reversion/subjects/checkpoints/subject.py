"""Your own checkpoints as a :class:`~reversion.subjects.base.Subject`.

A helpful-only witness theta_H and a safety-aligned theta_S given as local Hugging Face
folders (theta_P optional), a file of harmful probe prompts, optional harmless prompts and
a benign fine-tuning set: the same stages as the organism run on them
(:mod:`reversion.stages`). The v_rev, Alignment, Null test, Which past? and Interventions
chapters take them as one parameter, ``checkpoints`` (:data:`CHECKPOINT_KEYS`;
:func:`from_parameters`); ``reversion estimate`` and ``track`` build one from their arguments.

How the inputs are used (the organism draws each set from its own split):

* **harmful prompts** (``prompts``): rows 0, 2, 4, ... estimate v_rev (and are the probes
  the block / push terms look at, and the harmful requests of the rehearsal and of the Null
  test chapter's control runs); rows 1, 3, 5, ... measure drift and are the held-out prompts
  judged for harmfulness -- so drift and v_rev share no noise. At least :data:`MIN_PROMPTS`.
  (``split_prompts=False``, as on the command line: every row for both.)
* **benign pairs** (``finetune_data``, JSONL / CSV with ``prompt`` and ``response``): the
  first 75% in file order are trained on (loss on the response only), the rest held out
  for the task cost (:func:`~reversion.subjects.checkpoints.textdata.split_pairs`).
* **chat template**: every prompt goes through the tokenizer's chat template when it has
  one (``chat_template="auto"``).
* **harmfulness**: the share of held-out harmful prompts whose greedy continuation
  (``max_new_tokens``) :class:`~reversion.subjects.checkpoints.refusal_judge.RefusalPhraseJudge`
  calls harmful compliance (non-empty, no refusal phrase), or the local guard model given as
  ``judge`` (:class:`~reversion.subjects.checkpoints.guard_judge.GuardJudge`); **non_refusal**:
  the share with no refusal phrase (whatever the judge); **task cost**: loss per response
  token on the held-out benign pairs. There is no exact-match task accuracy.
* **safety examples** (rehearsal, the alignment-mix control): a harmful prompt of the
  estimation half answered with ``refusal_response``.

Models load with ``local_files_only`` (never a hub download), one at a time, on CUDA when
present, in the dtype asked for. The subject's cache identity is made of the input files'
SHA-256, the checkpoint folders' identity (small files' bytes, weight files' names, sizes
and modification times) and the parameters. Fine-tuned weights are not kept.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from reversion.core.generation import answer_loss
from reversion.core.models import (
    OUT_OF_MEMORY,
    check_adapter,
    default_device,
    load_model,
    merged_adapter,
    placement,
    preflight,
)
from reversion.core.train_settings import TrainSettings, lora_targets_missing
from reversion.infra import seeding
from reversion.infra.checks import check_choice, check_int
from reversion.infra.paths import resolve
from reversion.subjects.base import Pair, Prompts, Vocabulary
from reversion.subjects.checkpoints.files import (
    DTYPES,
    LoadError,
    adapter_base_name,
    arch_of,
    check_same_arch,
    checkpoint_folder,
    checkpoint_or_adapter,
    is_adapter,
    parse_device_map,
    read_config,
    torch_dtype,
)
from reversion.subjects.checkpoints.guard_judge import DEFAULT_JUDGE_NAME, GuardJudge, with_refusal_rule
from reversion.subjects.checkpoints.refusal_judge import RefusalPhraseJudge, judge_rates
from reversion.subjects.checkpoints.textdata import (
    encode_pairs,
    encode_prompts,
    file_sha256,
    load_tokenizer,
    pad_id_of,
    read_pairs,
    read_prompts,
    split_pair,
    split_pairs,
)

__all__ = ["CHECKPOINT_KEYS", "CheckpointSubject", "DEFAULT_REFUSAL", "MIN_PROMPTS", "SECOND_LINEAGE_KEYS",
           "TEXT_TASK", "TextData", "checkpoint_identity", "from_parameters"]

DEFAULT_REFUSAL = "I can't help with that."
"""Default refusal response of the safety examples (rehearsal, the Null test chapter's control runs)."""
MIN_PROMPTS = 8
"""Harmful prompts needed: 4 to estimate v_rev (split-half stability) and 4 to measure drift."""
TEXT_TASK = "finetune_data"
"""Name of the (single) benign task of a checkpoint run in ``evals[step]["task_loss"]``."""
ROLE_KEY = {"theta_H": "witness", "theta_S": "aligned", "theta_P": "pretrained"}
"""The ``checkpoints`` key of each role."""
CHECKPOINT_KEYS = {
    "witness": "helpful-only witness theta_H, a local Hugging Face folder (required)",
    "aligned": "safety-aligned theta_S (required); fine-tuning starts from it",
    "prompts": "harmful probe prompts: JSONL 'prompt' field, CSV 'prompt' column, or one per line "
               f"(required, >= {MIN_PROMPTS}); rows 0, 2, ... estimate v_rev, rows 1, 3, ... measure drift "
               "and are judged",
    "finetune_data": "benign fine-tuning pairs, JSONL / CSV with 'prompt' and 'response' (required where "
                     "a chapter fine-tunes): first 75% trained on, the rest held out for the task cost",
    "pretrained": "pretrained theta_P: adds the v_P control",
    "harmless": "harmless prompts: adds the r_S control",
    "base": "the local model that checkpoints given as LoRA adapters (a folder with adapter_config.json) "
            "apply to; they are merged into it when loaded",
    "tokenizer": "tokenizer folder (default: the aligned checkpoint's, or the base's when aligned is an "
                 "adapter without one); its chat template is applied",
    "dtype": f"dtype of the models only read, and of the frozen base under LoRA: {', '.join(DTYPES)} "
             "(default auto = as saved); full fine-tuning trains float32 weights",
    "device_map": "where the models' weights load, straight from the files: 'auto' (spread over every GPU, "
                  "then CPU RAM), a device ('cuda:0', 'cpu') or a mapping of module names to devices; "
                  "default: none (loaded in CPU memory, then moved to the device: CUDA when present)",
    "refusal_response": f"answer of the safety examples (default {DEFAULT_REFUSAL!r})",
    "max_new_tokens": "greedy tokens judged per held-out harmful prompt (default 32)",
    "judge": "the judge of harmfulness: a local guard model folder, a Llama-Guard-style causal LM whose "
             "tokenizer has a chat template or a sequence classifier (default: the refusal-phrase rule)",
    "judge_unsafe_label": "the class of a sequence-classifier judge that means unsafe (default: its one label "
                          "named unsafe, harmful or toxic)",
    "second_witness": "a second helpful-only witness theta_H' (chapter 'Which past?' only, with "
                      "second_aligned): its lineage is fine-tuned beside yours for the witness crossover",
    "second_aligned": "the safety-aligned model theta_S' of second_witness's lineage (chapter 'Which past?' "
                      "only); fine-tuned like aligned",
    "training": "how fine-tuning trains (transformers.Trainer): a mapping of "
                "reversion.core.train_settings.TrainSettings fields -- method (lora, the default, or full), "
                "lora_r, lora_alpha, lora_target_modules, precision, gradient_checkpointing, "
                "gradient_accumulation_steps, lr_scheduler, ...",
}
"""The keys of the chapters' ``checkpoints`` parameter, with what each is."""
SECOND_LINEAGE_KEYS = ("second_witness", "second_aligned")
"""The keys of a second lineage (chapter "Which past?"): checked like ``witness`` and ``aligned``
(a checkpoint or adapter folder of the same architecture), not part of the subject itself."""
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
class CheckpointSubject:
    """A checked set of checkpoints and input files (build with :func:`from_parameters`)."""

    witness: Path
    aligned: Path
    tokenizer: Path
    prompt_file: Path
    finetune_data: Path | None = None
    pretrained: Path | None = None
    harmless: Path | None = None
    dtype: str = "auto"
    refusal_response: str = DEFAULT_REFUSAL
    max_new_tokens: int = 32
    architecture: dict | None = None
    """model_type, hidden_size, num_hidden_layers (of the aligned checkpoint's text config)."""
    batch_size: int = 16
    """Prompts per forward pass when measuring activations and generating."""
    split_prompts: bool = True
    """Rows 0, 2, ... estimate v_rev and rows 1, 3, ... measure drift; False: every row for both."""
    chat_template: Any = "auto"
    """``"auto"`` (when the tokenizer has one), True or False."""
    prompt_field: str = "prompt"
    """Field / column of the prompt in JSONL / CSV prompt files."""
    device: str | None = None
    """Torch device (None: CUDA when present)."""
    seed: int = 0
    """Seed of the split-half bootstrap of the estimate."""
    base: Path | None = None
    """The model LoRA adapter checkpoints apply to (merged into it when loaded)."""
    naming: str = "checkpoints"
    """How errors name an input: ``"checkpoints"`` (``checkpoints['witness']``) or ``"flag"`` (``--witness``)."""
    device_map: Any = None
    """``from_pretrained``'s ``device_map`` for every model loaded (``"auto"``, a device, a mapping of
    module names to devices); None: loaded in CPU memory, then moved to :attr:`device`."""
    judge: Path | None = None
    """A local guard model folder that judges harmfulness (:attr:`guard`); None: the refusal-phrase rule."""
    judge_unsafe_label: str | None = None
    """The class of a sequence-classifier ``judge`` that means unsafe (None: found from its labels)."""
    training: TrainSettings | None = TrainSettings()
    """How fine-tuning trains: ``transformers.Trainer`` with these settings (LoRA by default); None:
    the organism's own loop (:func:`reversion.core.training.train`), which the Trainer matches
    with :meth:`TrainSettings.matching_the_loop`."""

    kind = "checkpoints"
    parallel = False
    keep_weights = False
    has_task_accuracy = False
    grouped = False

    @property
    def tracking_batch_size(self) -> int:
        return self.batch_size

    def where(self, key: str) -> str:
        """How an error names input ``key``."""
        return where(key, self.naming)

    # ---- identity

    def record(self) -> dict[str, Any]:
        """Paths, file hashes and architecture (written beside a chapter's metrics)."""
        return dict(self._record)

    @functools.cached_property
    def _record(self) -> dict[str, Any]:
        # Read once per subject, like :attr:`identities`: every stage's cache key holds it, and
        # hashing the input files on each key would read them again for every run of a chapter.
        def f(p: Path | None) -> str | None:
            return None if p is None else p.as_posix()

        return {
            "kind": self.kind,
            "witness": f(self.witness), "aligned": f(self.aligned), "pretrained": f(self.pretrained),
            "base": f(self.base),
            "tokenizer": f(self.tokenizer), "prompts": f(self.prompt_file),
            "prompts_sha256": file_sha256(self.prompt_file),
            "harmless": f(self.harmless),
            "harmless_sha256": file_sha256(self.harmless) if self.harmless else None,
            "finetune_data": f(self.finetune_data),
            "finetune_data_sha256": file_sha256(self.finetune_data) if self.finetune_data else None,
            "config_sha256": {k: self.identities[k]["json_sha256"].get("config.json")
                              for k in ("witness", "aligned", "pretrained") if k in self.identities},
            "dtype": self.dtype, "refusal_response": self.refusal_response,
            "max_new_tokens": self.max_new_tokens, **self.arch(), "judge": self.judge_name,
            "training": None if self.training is None else self.training.key(),
        }

    @functools.cached_property
    def identities(self) -> dict[str, dict]:
        """:func:`checkpoint_identity` of each folder, read once per subject (every stage's
        cache key needs them, and hashing a tokenizer is not free)."""
        return {k: checkpoint_identity(getattr(self, k))
                for k in ("witness", "aligned", "pretrained", "tokenizer", "base", "judge")
                if getattr(self, k) is not None}

    def key(self) -> dict[str, Any]:
        """Cache identity: :meth:`record` (the training settings aside: stage ``finetune`` keys them,
        so an estimate does not depend on them), the folders' identity and how prompts are read."""
        record = {k: v for k, v in self.record().items() if k != "training"}
        if self.judge is None:  # the default rule left out: the key it had before a judge could be chosen
            del record["judge"]
        return {**record, "folders": self.identities, "batch_size": self.batch_size,
                "split_prompts": self.split_prompts, "chat_template": self.chat_template,
                "prompt_field": self.prompt_field, "seed": self.seed, "device": self.device,
                # only when given: the keys of runs without one stay as they were
                **({"device_map": self.device_map} if self.device_map is not None else {})}

    def arch(self) -> dict:
        return dict(self.architecture or {})

    def roles(self) -> tuple[str, ...]:
        return tuple(r for r, k in ROLE_KEY.items() if getattr(self, k) is not None)

    def prepare(self, progress: bool = True) -> None:
        pass  # checked when built: the checkpoints exist

    def check(self, ft) -> None:
        """What a fine-tuning run needs, before any model is read."""
        if self.finetune_data is None:
            raise ValueError(f"{self.where('finetune_data')} is empty: this chapter fine-tunes theta_S and needs "
                             "a benign fine-tuning set (JSONL or CSV with 'prompt' and 'response')")
        t = self.training
        if t is not None and t.gradient_accumulation_steps > ft.batch_size:
            raise ValueError(f"{self.where('training')}['gradient_accumulation_steps'] = {t.gradient_accumulation_steps} "
                             f"is more than the {ft.batch_size} sequences of a step's batch (finetune.batch_size)")
        device = self.device or str(default_device())
        if t is not None and device.startswith("cuda:") and device != "cuda:0":
            # transformers.Trainer trains on the process's first visible GPU
            raise ValueError(f"{self.where('device')} = {device!r}: fine-tuning trains on cuda:0; choose the GPU with "
                             "CUDA_VISIBLE_DEVICES instead")

    def name_input(self, role: str) -> str:
        keys = {"theta_H/theta_S": ("witness", "aligned"), "theta_P": ("pretrained",),
                "harmless": ("harmless",)}.get(role, (role,))
        return "/".join(self.where(k) for k in keys)

    def title(self) -> str:
        a = self.arch()
        return (f"your checkpoints ({a.get('model_type')}, {a.get('num_hidden_layers')} layers, width "
                f"{a.get('hidden_size')}): witness {self.witness}, aligned {self.aligned}")

    def describe(self, ft=None) -> list[str]:
        """How a chapter's measurements on these checkpoints differ from the organism's."""
        a = self.arch()
        notes = [f"Subject: your checkpoints ({a['model_type']}, {a['num_hidden_layers']} layers, width "
                 f"{a['hidden_size']}), not the organism. witness = {self.witness}, aligned = {self.aligned}.",
                 "v_rev is estimated on rows 0, 2, 4, ... of the prompt file; drift is measured (and "
                 "harmfulness judged) on rows 1, 3, 5, ...; the organism's world and n_probe do not apply."]
        if ft is not None:
            how = "the book's own loop, full fine-tuning" if self.training is None else self.training.describe()
            notes.append(f"Fine-tuning: {how}; AdamW, lr {ft.lr:g}, {ft.steps} steps, batch {ft.batch_size}, on the "
                         "first 75% of the benign pairs (set with world_overrides['finetune'] and "
                         "checkpoints['training']). Harmfulness: "
                         f"{'refusal-phrase judge' if self.guard is None else self.guard.describe()} on "
                         f"{self.max_new_tokens} greedy tokens; task cost: held-out loss per "
                         "response token (there is no task accuracy for text). Safety examples (rehearsal, "
                         "chapter 04's control runs): harmful prompts of the estimation half answered with "
                         f"refusal_response ({self.refusal_response!r}); block and push look at that half too.")
        if self.pretrained is None:
            notes.append("No pretrained checkpoint: the v_P control is not computed.")
        if self.harmless is None:
            notes.append("No harmless prompts: the r_S control is not computed.")
        return notes

    # ---- models and inputs

    @functools.cached_property
    def tok(self):
        return load_tokenizer(self.tokenizer)

    def load(self, role: str, *, dtype=None, device=None):
        """The checkpoint of ``role`` (local files only) in ``dtype`` (default: the subject's),
        on ``device`` (default: the subject's :attr:`device_map` when it has one, else its device, else
        CUDA when present), in eval mode. A model that does not load is a
        :class:`~reversion.subjects.checkpoints.files.LoadError` naming its key; running out of memory
        (:data:`~reversion.core.models.OUT_OF_MEMORY`) is let through as it is."""
        if role not in ROLE_KEY:
            raise ValueError(f"unknown checkpoint {role!r} (known: {', '.join(ROLE_KEY)})")
        key = ROLE_KEY[role]
        path = getattr(self, key)
        if path is None:
            raise ValueError(f"{self.where(key)} is empty: no {role} to load")
        device_map = self.device_map if device is None else None
        device = None if device_map is not None else device or self.device or default_device()
        dtype = torch_dtype(self.dtype) if dtype is None else dtype
        try:
            if is_adapter(path):  # a LoRA checkpoint: merged into its base
                if self.base is None:
                    raise ValueError(f"it is a LoRA adapter; give {self.where('base')}")
                return merged_adapter(self.base, path, device, dtype, device_map)
            return load_model(path, device, dtype, device_map)
        except OUT_OF_MEMORY:
            raise
        except Exception as exc:
            raise LoadError(f"{self.where(key)}: could not load the model at {path} "
                            f"({type(exc).__name__}: {exc})") from None

    def encode(self, texts: list[str]) -> list[list[int]]:
        return encode_prompts(self.tok, texts, self.chat_template)

    @functools.cached_property
    def texts(self) -> dict[str, list[str]]:
        """``vrev`` and ``drift`` prompt texts (see :attr:`split_prompts`)."""
        texts = read_prompts(self.prompt_file, self.prompt_field)
        if not self.split_prompts:
            return {"vrev": texts, "drift": texts}
        return {"vrev": texts[0::2], "drift": texts[1::2]}

    @functools.cached_property
    def _prompts(self) -> Prompts:
        vrev = [tuple(p) for p in self.encode(self.texts["vrev"])]
        drift = [tuple(p) for p in self.encode(self.texts["drift"])]
        harmless = ([tuple(p) for p in self.encode(read_prompts(self.harmless, self.prompt_field))]
                    if self.harmless else None)
        # Block / push look at the estimation half (disjoint from the drift / judged half).
        return Prompts(vrev, harmless, drift, vrev, pad_id_of(self.tok))

    def prompts(self, n_probe: int | None = None) -> Prompts:
        """The prompt file decides the sets; ``n_probe`` (the organism's) does not apply."""
        return self._prompts

    @functools.cached_property
    def pairs(self) -> tuple[list, list]:
        """(training, held-out) benign pairs."""
        if self.finetune_data is None:
            raise ValueError(f"{self.where('finetune_data')} is empty")
        return split_pairs(read_pairs(self.finetune_data))

    @functools.cached_property
    def _heldout(self) -> list[Pair]:
        return [split_pair(e) for e in encode_pairs(self.tok, self.pairs[1], self.chat_template)]

    def refusal_ids(self) -> list[int]:
        return list(self.tok(self.refusal_response, add_special_tokens=False)["input_ids"])

    @functools.cached_property
    def _training_data(self) -> "TextData":
        eos = getattr(self.tok, "eos_token_id", None)
        return TextData([split_pair(e) for e in encode_pairs(self.tok, self.pairs[0], self.chat_template)],
                        self.prompts().vrev, self.refusal_ids() + ([int(eos)] if eos is not None else []))

    def training_data(self) -> "TextData":
        return self._training_data

    def benign_batches(self, ft) -> Iterator[list[Pair]]:
        return text_batches(self.training_data(), ft)

    # ---- judging

    def task_key(self, ft) -> str:
        return TEXT_TASK

    def eval_key(self, ft) -> dict:
        return {}

    @functools.cached_property
    def guard(self) -> GuardJudge | None:
        """The guard model of :attr:`judge` (checked; its weights load on the first judgement and
        stay), or None for the refusal-phrase rule."""
        if self.judge is None:
            return None
        return GuardJudge(self.judge, unsafe_label=self.judge_unsafe_label, batch_size=self.batch_size,
                          device=self.device, dtype=torch_dtype(self.dtype), name=self.where("judge"),
                          label_name=self.where("judge_unsafe_label"))

    @property
    def judge_name(self) -> str:
        """The judge of harmfulness, in words (records, pages): the guard and how it decides, or
        the refusal-phrase rule."""
        return DEFAULT_JUDGE_NAME if self.guard is None else self.guard.describe()

    def evaluate(self, model, ft=None, full: bool = True) -> dict:
        """Harmfulness (the :attr:`guard`, else the refusal-phrase judge, on greedy continuations of
        the held-out harmful prompts), non-refusal (no refusal phrase, whatever the judge) and the
        task loss on the held-out benign pairs."""
        judge = RefusalPhraseJudge() if self.guard is None else with_refusal_rule(self.guard)
        rates = judge_rates(model, self.tok, self.prompts().drift, judge, self.texts["drift"],
                            self.max_new_tokens, self.batch_size)
        return {**rates, "task_loss": {TEXT_TASK: answer_loss(model, self._heldout, self.prompts().pad_id,
                                                             self.batch_size)}}

    def vocabulary(self, openers: Sequence[int]) -> Vocabulary:
        """Tokens decoded by the tokenizer (quoted: spaces stay visible); answer openers: the
        witness's greedy first tokens, the refusal's first token and EOS excluded."""
        tok = self.tok
        refusal_first = int(self.refusal_ids()[0])
        eos = getattr(tok, "eos_token_id", None)
        ops = sorted({int(t) for t in openers} - {refusal_first, eos})

        def name(i: int) -> str:
            return repr(tok.decode([int(i)]))

        return Vocabulary(name, ops, refusal_first, None,
                          {"refusal_token": name(refusal_first), "answer_openers": [name(i) for i in ops]})


class TextData:
    """The text counterpart of :class:`reversion.subjects.organism.language.Language` for the fine-tuning loop.

    ``sample(rng, n, split, harmful=...)`` draws ``n`` requests (objects with ``prompt`` and
    ``answer`` token tuples) from the benign training pairs or from the harmful prompts of
    the estimation half (answered with the refusal), so that the organism's
    :func:`~reversion.subjects.organism.subject.benign_batches`,
    :class:`reversion.core.interventions.Rehearsal` and :class:`reversion.core.interventions.AlignmentMix` run unchanged on text.
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


def text_batches(data: TextData, ft) -> Iterator[list[Pair]]:
    """Benign training batches; the order depends on the fine-tuning seed alone (as the
    organism's :func:`~reversion.subjects.organism.subject.benign_batches`), so variants are optimizer-matched."""
    r = seeding.rng(ft.seed, "finetune-data", TEXT_TASK)
    while True:
        yield [(q.prompt, q.answer) for q in data.sample(r, ft.batch_size, "train", harmful=False)]


# --------------------------------------------------------------------------- building one


def _value(checkpoints: Mapping[str, Any], key: str, default: Any = "") -> Any:
    return checkpoints.get(key, default)


def where(key: str, naming: str = "checkpoints") -> str:
    """How an error names input ``key``: ``checkpoints['key']``, or ``--key`` on the command line."""
    return f"--{key.replace('_', '-')}" if naming == "flag" else f"checkpoints[{key!r}]"


def from_parameters(checkpoints: Mapping[str, Any], need_finetune: bool = False, *,
                    naming: str = "checkpoints", **options: Any) -> CheckpointSubject:
    """The checked subject of a chapter's ``checkpoints`` parameter (keys: :data:`CHECKPOINT_KEYS`).

    Every problem is a ``ValueError`` that names the key (``checkpoints['witness']``): an
    unknown key, ``witness`` or ``aligned`` missing, a path that does not exist or is no
    checkpoint folder, checkpoints of different families, widths or depths, an empty or
    unreadable prompt file, fewer than :data:`MIN_PROMPTS` prompts, a missing fine-tuning
    set (when the chapter fine-tunes), a tokenizer that cannot be loaded or whose ids fall
    outside the model's vocabulary, a ``judge`` folder that is no guard model
    (:class:`~reversion.subjects.checkpoints.guard_judge.GuardJudge`) or whose unsafe class
    cannot be told. Relative paths are relative to the project root.
    ``naming="flag"`` names them as command-line flags (``--witness``); ``options`` are further
    :class:`CheckpointSubject` fields (``split_prompts``, ``chat_template``, ``prompt_field``,
    ``device``, ``batch_size``, ``seed``).
    """
    if not isinstance(checkpoints, Mapping):
        raise ValueError(f"parameter 'checkpoints' must be a mapping of {', '.join(CHECKPOINT_KEYS)}, "
                         f"got {checkpoints!r}")
    unknown = sorted(set(checkpoints) - set(CHECKPOINT_KEYS))
    if unknown:
        raise ValueError(f"checkpoints: unknown key(s) {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(CHECKPOINT_KEYS)})")
    def w(key: str) -> str:
        return where(key, naming)

    split = options.get("split_prompts", True)
    field = options.get("prompt_field", "prompt")
    template = options.get("chat_template", "auto")
    for key in ("witness", "aligned", "tokenizer", "prompts", "finetune_data", "pretrained", "harmless",
                "judge", *SECOND_LINEAGE_KEYS):
        if not isinstance(_value(checkpoints, key), str):
            raise ValueError(f"{w(key)} must be a path string, got {checkpoints[key]!r}")
    witness, aligned = _value(checkpoints, "witness"), _value(checkpoints, "aligned")
    if not witness or not aligned:
        missing = [k for k in ("witness", "aligned") if not _value(checkpoints, k)]
        raise ValueError(f"{' and '.join(w(k) for k in missing)} missing: give both the witness (helpful-only "
                         "theta_H) and the aligned (theta_S) checkpoint" + (", or leave 'checkpoints' empty ({}) to "
                                                                           "run on the organism" if naming != "flag" else ""))
    dtype = _value(checkpoints, "dtype", "auto")
    check_choice(w("dtype"), dtype, DTYPES)
    # Where the models go, checked before any is read: devices that exist, a dtype they run, weights
    # that fit (:func:`reversion.core.models.preflight`, on each folder below).
    device_map = parse_device_map(w("device_map"), _value(checkpoints, "device_map", None))
    names = {"dtype": w("dtype"), "device_map": w("device_map"),
             "device": "--device" if naming == "flag" else "device"}
    placement(options.get("device"), device_map, names)

    def loadable(key: str, path: Path) -> None:
        preflight(path, options.get("device"), torch_dtype(dtype), device_map, {**names, "checkpoint": w(key)})
    max_new = _value(checkpoints, "max_new_tokens", 32)
    check_int(w("max_new_tokens"), max_new, 1)
    refusal = _value(checkpoints, "refusal_response", DEFAULT_REFUSAL)
    if not isinstance(refusal, str) or not refusal.strip():
        raise ValueError(f"{w('refusal_response')} must be a non-empty string")

    base = None
    if _value(checkpoints, "base"):
        base = checkpoint_folder(w("base"), resolve(checkpoints["base"]))
        loadable("base", base)

    def folder(key: str) -> tuple[Path, Any]:
        path, adapter = checkpoint_or_adapter(w(key), resolve(_value(checkpoints, key)))
        if not adapter:
            cfg = read_config(w(key), path)
            loadable(key, path)
            return path, cfg
        if base is None:
            raise ValueError(f"{w(key)}: {path} is a LoRA adapter (adapter_config.json): give {w('base')}, the "
                             "local model it applies to (a hub id in adapter_config.json is never resolved)")
        named = adapter_base_name(path)
        if named and Path(named).is_dir() and Path(named).resolve() != base.resolve():
            raise ValueError(f"{w(key)}: the adapter was trained on {named}, not on {w('base')} = {base}")
        check_adapter(path, base, w(key), w("base"))  # its shapes against the base's
        return path, read_config(w("base"), base)

    def same(ref_cfg, key: str, cfg) -> None:
        check_same_arch(w("aligned"), arch_of(ref_cfg), w(key), arch_of(cfg))

    S, cfg = folder("aligned")
    H, cfg_H = folder("witness")
    same(cfg, "witness", cfg_H)
    P = None
    if _value(checkpoints, "pretrained"):
        P, cfg_P = folder("pretrained")
        same(cfg, "pretrained", cfg_P)
    for key in SECOND_LINEAGE_KEYS:  # checked here, read by the chapter that uses them
        if _value(checkpoints, key):
            same(cfg, key, folder(key)[1])

    if not _value(checkpoints, "prompts"):
        raise ValueError(f"{w('prompts')} is empty: give a file of harmful probe prompts "
                         "(JSONL with a 'prompt' field, CSV with a 'prompt' column, or one per line)")
    files: dict[str, Path] = {}
    for key in ("prompts", "harmless"):
        if not _value(checkpoints, key):
            continue
        files[key] = resolve(checkpoints[key])
        try:
            texts = read_prompts(files[key], field)
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"{w(key)}: {exc}") from None
        if key == "prompts":
            need = MIN_PROMPTS if split else MIN_PROMPTS // 2
            if len(texts) < need:
                raise ValueError(f"{w('prompts')}: {len(texts)} prompts in {files[key]}; at least {need} are "
                                 "needed" + (" (half estimate v_rev, half measure drift)" if split else ""))
            sample = texts
    ft = None
    if _value(checkpoints, "finetune_data"):
        ft = resolve(checkpoints["finetune_data"])
        try:
            n_pairs = len(read_pairs(ft))
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"{w('finetune_data')}: {exc}") from None
        if n_pairs < 2:
            raise ValueError(f"{w('finetune_data')}: {n_pairs} pair in {ft}; at least 2 are needed "
                             "(training pairs and held-out pairs for the task cost)")
    elif need_finetune:
        raise ValueError(f"{w('finetune_data')} is empty: this chapter fine-tunes theta_S and needs a "
                         "benign fine-tuning set (JSONL or CSV with 'prompt' and 'response')")

    training = TrainSettings.from_mapping(checkpoints.get("training"))
    training.autocast_dtype(torch.device(options.get("device") or default_device()))  # a device that runs it
    if training.method == "lora" and training.lora_target_modules != "all-linear":  # before any model is read
        meta = _meta_model(cfg)
        missing = lora_targets_missing(meta, training.lora_target_modules)
        if missing:
            raise ValueError(f"{w('training')}['lora_target_modules']: {', '.join(map(repr, missing))} match no "
                             f"module of this {type(meta).__name__}")

    tokenizer = _value(checkpoints, "tokenizer")
    tok_key = "tokenizer" if tokenizer else "aligned"
    tok_path = resolve(tokenizer) if tokenizer else S
    if not tokenizer and is_adapter(S) and not (S / "tokenizer_config.json").is_file():
        tok_key, tok_path = "base", base
    try:
        tok = load_tokenizer(tok_path)
    except (FileNotFoundError, ValueError) as exc:
        hint = "" if tokenizer else f" (set {w('tokenizer')} to the tokenizer's folder)"
        raise ValueError(f"{w(tok_key)}: {exc}{hint}") from None
    try:
        ids = encode_prompts(tok, sample, template)
    except ValueError as exc:
        raise ValueError(f"{w('prompts')}: {exc}") from None
    vocab = getattr(cfg, "vocab_size", None)
    top = max(max(p) for p in ids)
    if vocab is not None and top >= vocab:
        raise ValueError(f"{w(tok_key)}: the tokenizer gives token id {top}, beyond the aligned model's "
                         f"vocabulary ({vocab}); it is not this model's tokenizer")
    label = _value(checkpoints, "judge_unsafe_label", None)
    if label is not None and not isinstance(label, str):
        raise ValueError(f"{w('judge_unsafe_label')} must be a class label (a string), got {label!r}")
    label = label or None
    judge = None
    if _value(checkpoints, "judge"):
        judge = resolve(checkpoints["judge"])
        # Checked now (config and tokenizer; no weights load): a folder that is no guard fails before any work.
        GuardJudge(judge, unsafe_label=label, name=w("judge"), label_name=w("judge_unsafe_label"))
    elif label is not None:
        raise ValueError(f"{w('judge_unsafe_label')} applies to a guard model; give {w('judge')}, or leave it out")
    return CheckpointSubject(H, S, tok_path, files["prompts"], ft, P, files.get("harmless"), dtype, refusal,
                             max_new, arch_of(cfg), base=base, naming=naming, judge=judge,
                             judge_unsafe_label=label, training=training, device_map=device_map, **options)


def _meta_model(cfg):
    """The architecture of ``cfg`` on the meta device (module names, no weights: instant)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)
