"""A guard model as the harmfulness judge of real checkpoints
(:mod:`reversion.subjects.checkpoints.guard_judge`) and its wiring into the checkpoint subject.

No guard weights can be downloaded here, so the guards are tiny random Llamas built in the test
(a causal LM whose tokenizer has a chat template, and sequence classifiers), saved with
``save_pretrained`` and read back by the judge. Random weights say nothing, so their outputs are
planted: once the judge has loaded a guard, its LM head (or score head) is replaced by one that
answers what the test decides from the rendered input ids -- ``unsafe`` (or the unsafe class)
exactly when they hold a trigger token -- so the right answer of every pair is known.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import GPT2ForSequenceClassification, LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel

from reversion.core.training import FinetuneConfig
from reversion.subjects.checkpoints import demo as demo_models
from reversion.subjects.checkpoints import subject as cs
from reversion.subjects.checkpoints.guard_judge import (
    CAUSAL,
    CLASSIFIER,
    DEFAULT_JUDGE_NAME,
    GuardJudge,
    first_word_verdict,
)
from reversion.subjects.checkpoints.refusal_judge import generate_continuations

from helpers import EXAMPLES, make_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

TRIGGER = "<|trigger|>"
FT = FinetuneConfig(steps=3, lr=1e-3, batch_size=4, eval_steps=(0, 1, 3))

# Prompts of mixed lengths; the trigger sits in the response (which the guard must see), in the
# prompt, or nowhere.
PAIRS = [
    ("How?", f"Here it is {TRIGGER} step one."),
    ("Tell me, in as much detail as you can manage, how the thing that you know of is done.", "No."),
    ("Explain it", TRIGGER),
    (f"A request {TRIGGER} with the trigger in the prompt, of middling length.", "Sure."),
    ("Why would anyone ask a question like this one, which goes on for quite a while?", "Because."),
    ("Hm", "Fine then."),
]


def expected(pairs) -> list[bool]:
    return [TRIGGER in p or TRIGGER in c for p, c in pairs]


def guard_tokenizer(folder: Path, chat_template: str | None = demo_models.CHAT_TEMPLATE):
    tok = make_tokenizer(None, chat_template=chat_template)
    tok.add_tokens([TRIGGER], special_tokens=True)
    tok.save_pretrained(folder)
    return tok


def tiny_config(tok, family: str = "llama", **fields):
    cfg = demo_models.tiny_config(family, len(tok), hidden_size=32, n_layers=2, n_heads=4,
                                  pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    for k, v in fields.items():
        setattr(cfg, k, v)
    return cfg


def build_guard(folder: Path, kind: str = "causal", chat_template: str | None = demo_models.CHAT_TEMPLATE,
                labels: dict | None = None, problem_type: str | None = None, family: str = "llama") -> Path:
    """A tiny random guard saved to ``folder``: ``causal`` (LlamaForCausalLM), ``classifier``
    (a Llama, or GPT-2, sequence classifier with ``labels`` as id2label) or ``base`` (a bare LlamaModel)."""
    folder.mkdir(parents=True)
    tok = guard_tokenizer(folder, chat_template)
    torch.manual_seed(0)
    if kind == "classifier":
        labels = labels or {0: "safe", 1: "unsafe"}
        cfg = tiny_config(tok, family, id2label=labels, label2id={v: k for k, v in labels.items()})
        if problem_type:
            cfg.problem_type = problem_type
        model = (GPT2ForSequenceClassification if family == "gpt2" else LlamaForSequenceClassification)(cfg)
    else:
        model = (LlamaForCausalLM if kind == "causal" else LlamaModel)(tiny_config(tok))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def guards(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("guards")
    return {
        "causal": build_guard(root / "causal"),
        "classifier": build_guard(root / "classifier", "classifier"),
        # GPT-2: absolute positions, so padding on the wrong side would change its scores.
        "pair_classifier": build_guard(root / "pair_classifier", "classifier", chat_template=None,
                                       labels={0: "benign", 1: "toxic"}, problem_type="multi_label_classification",
                                       family="gpt2"),
        "unnamed": build_guard(root / "unnamed", "classifier", labels={0: "LABEL_0", 1: "LABEL_1"}),
        "two_unsafe": build_guard(root / "two_unsafe", "classifier",
                                  labels={0: "safe", 1: "unsafe", 2: "harmful"}),
        "no_template": build_guard(root / "no_template", chat_template=None),
        "base": build_guard(root / "base", "base"),
    }


# --------------------------------------------------------------------------- planting answers


def _real_ids(kwargs) -> list[list[int]]:
    ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    return [row[m.bool()].tolist() for row, m in zip(ids, mask)]


class PlantedLMHead(torch.nn.Module):
    """Emits, row by row, the tokens of the answer planted for that row's input, then EOS."""

    def __init__(self, vocab: int, eos: int):
        super().__init__()
        self.vocab, self.eos, self.answers, self.step = vocab, eos, [], 0

    def forward(self, h):
        out = torch.full((*h.shape[:2], self.vocab), -1e4, dtype=h.dtype)
        for b, seq in enumerate(self.answers):
            out[b, :, seq[self.step] if self.step < len(seq) else self.eos] = 1e4
        self.step += 1
        return out


def plant_causal(judge: GuardJudge, answer) -> list[list[int]]:
    """The judge's guard answers ``answer(input ids of the row) -> str``; returns the inputs seen."""
    tok, model = judge.tokenizer, judge.model
    head = PlantedLMHead(model.config.vocab_size, tok.eos_token_id)
    seen = []

    def pre(module, args, kwargs):
        if kwargs.get("past_key_values") is None:  # the prompt's forward: decide each row's answer
            rows = _real_ids(kwargs)
            seen.extend(rows)
            head.answers = [tok(answer(r), add_special_tokens=False)["input_ids"] for r in rows]
            head.step = 0

    model.lm_head = head
    model.register_forward_pre_hook(pre, with_kwargs=True)
    return seen


class PlantedScore(torch.nn.Module):
    """Class logits chosen per row from that row's input (every position alike)."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def forward(self, h):
        return torch.stack([torch.tensor(r, dtype=h.dtype).expand(h.shape[1], -1) for r in self.rows])


def plant_classifier(judge: GuardJudge, logits) -> None:
    """The judge's classifier gives ``logits(input ids of the row) -> list[float]``."""
    model = judge.model
    score = PlantedScore()

    def pre(module, args, kwargs):
        score.rows = [logits(r) for r in _real_ids(kwargs)]

    model.score = score
    model.register_forward_pre_hook(pre, with_kwargs=True)


def trigger_id(judge: GuardJudge) -> int:
    return judge.tokenizer.convert_tokens_to_ids(TRIGGER)


def judge_of(guards, name: str, batch_size: int = 16, **kw) -> GuardJudge:
    return GuardJudge(guards[name], batch_size=batch_size, device="cpu", name="checkpoints['judge']", **kw)


# --------------------------------------------------------------------------- the causal (Llama-Guard-style) guard


def test_first_word_decides():
    assert first_word_verdict("\n\nunsafe\nS1") is True
    assert first_word_verdict("  Safe.") is False
    assert first_word_verdict("UNSAFE") is True
    for other in ("", "   ", "safety first", "I think unsafe", "un safe"):
        assert first_word_verdict(other) is None, other


@pytest.mark.parametrize("batch_size", [1, 4])
def test_causal_guard_gives_the_planted_verdicts(guards, batch_size):
    judge = judge_of(guards, "causal", batch_size)
    assert judge.kind == CAUSAL
    t = trigger_id(judge)
    seen = plant_causal(judge, lambda ids: "\n\nunsafe\nS1" if t in ids else "safe")
    prompts, conts = map(list, zip(*PAIRS))
    want = expected(PAIRS)
    assert True in want and False in want  # both verdicts, in the same batch at batch size 4
    assert judge(prompts, conts) == want
    # Each pair went in as a user turn and an assistant turn, with the generation prompt after.
    text = judge.tokenizer.decode(seen[0])
    assert "<|user|>" in text and "<|assistant|>" in text and text.endswith("<|assistant|>")
    assert len(seen) == len(PAIRS)


def test_an_empty_continuation_is_not_compliance(guards):
    """The guard would say unsafe (trigger in the prompt); an empty answer complies with nothing."""
    judge = judge_of(guards, "causal")
    t = trigger_id(judge)
    plant_causal(judge, lambda ids: "unsafe" if t in ids else "safe")
    assert judge([f"{TRIGGER} do it", f"{TRIGGER} do it"], ["  ", "ok"]) == [False, True]
    assert judge([f"{TRIGGER} x"], [""]) == [False]


def test_an_unparseable_answer_raises_with_its_text(guards):
    judge = judge_of(guards, "causal")
    plant_causal(judge, lambda ids: "maybe so")
    with pytest.raises(ValueError, match=r"answered 'maybe so' to prompt 0.*'safe' or 'unsafe'"):
        judge(["How?"], ["Like this."])


# --------------------------------------------------------------------------- sequence-classifier guards


@pytest.mark.parametrize("batch_size", [1, 4])
def test_classifier_guard_gives_the_planted_class(guards, batch_size):
    judge = judge_of(guards, "classifier", batch_size)
    assert judge.kind == CLASSIFIER and judge.unsafe_index == 1 and not judge.multi_label
    t = trigger_id(judge)
    plant_classifier(judge, lambda ids: [0.0, 5.0] if t in ids else [5.0, 0.0])
    prompts, conts = map(list, zip(*PAIRS))
    assert judge(prompts, conts) == expected(PAIRS)


def test_multi_label_classifier_reads_the_sigmoid_not_the_argmax(guards):
    """Labels ``benign`` / ``toxic``, multi-label: a pair is unsafe when sigmoid(toxic) > 0.5. The
    planted safe rows have toxic as the *largest* logit but negative: argmax would call them unsafe."""
    judge = judge_of(guards, "pair_classifier", 3)
    assert judge.unsafe_label == "toxic" and judge.multi_label
    t = trigger_id(judge)
    plant_classifier(judge, lambda ids: [-9.0, 3.0] if t in ids else [-20.0, -3.0])
    prompts, conts = map(list, zip(*PAIRS))
    assert judge(prompts, conts) == expected(PAIRS)
    assert "text pair" in judge.describe() and "sigmoid" in judge.describe()


@pytest.mark.parametrize("name", ["classifier", "pair_classifier"])
def test_classifier_scores_do_not_depend_on_the_batch(guards, name):
    """Unplanted random weights: each pair's unsafe score is the same alone as padded in a batch
    of mixed lengths (a chat-templated Llama, a text-pair GPT-2)."""
    prompts, conts = map(list, zip(*PAIRS))
    alone = judge_of(guards, name, 1).unsafe_scores(prompts, conts)
    batched = judge_of(guards, name, len(PAIRS)).unsafe_scores(prompts, conts)
    assert torch.allclose(torch.tensor(alone), torch.tensor(batched), atol=1e-5)
    assert len({round(x, 6) for x in alone}) > 1  # the inputs really differ


def test_the_unsafe_class_comes_from_the_labels_or_is_named(guards):
    with pytest.raises(ValueError, match=r"checkpoints\['judge'\]: cannot tell which class.*none of its labels "
                                         r"\('LABEL_0', 'LABEL_1'\).*name it with unsafe_label"):
        judge_of(guards, "unnamed")
    with pytest.raises(ValueError, match=r"cannot tell which class.*2 of its labels"):
        judge_of(guards, "two_unsafe")
    assert judge_of(guards, "unnamed", unsafe_label="LABEL_1").unsafe_index == 1
    assert judge_of(guards, "two_unsafe", unsafe_label="harmful").unsafe_index == 2
    with pytest.raises(ValueError, match=r"unsafe_label: 'LABEL_7' is not one of the labels"):
        judge_of(guards, "unnamed", unsafe_label="LABEL_7")
    with pytest.raises(ValueError, match=r"applies to a sequence-classifier guard only"):
        judge_of(guards, "causal", unsafe_label="unsafe")


# --------------------------------------------------------------------------- the checkpoint subject


def checkpoints_of(demo, **changes) -> dict:
    base = dict(witness=str(demo["witness"]), aligned=str(demo["aligned"]), prompts=str(EXAMPLES["harmful"]),
                finetune_data=str(EXAMPLES["benign"]), max_new_tokens=8)
    return {**base, **changes}


def test_a_folder_that_is_no_guard_is_refused_when_the_subject_is_built(demo, guards, tmp_path, isolated):
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "README.md").write_text("not a model")
    cases = [(guards["base"], r"is neither a causal LM nor a sequence classifier \(LlamaModel\)"),
             (guards["no_template"], r"causal LM whose tokenizer has no chat template"),
             (not_a_model, r"is not a model folder \(no config.json\)"),
             (tmp_path / "missing", r"path not found")]
    for path, message in cases:
        with pytest.raises(ValueError, match=r"checkpoints\['judge'\]: .*" + message):
            cs.from_parameters(checkpoints_of(demo, judge=str(path)))
    with pytest.raises(ValueError, match=r"--judge: .*no chat template"):
        cs.from_parameters(checkpoints_of(demo, judge=str(guards["no_template"])), naming="flag")
    with pytest.raises(ValueError, match=r"checkpoints\['judge_unsafe_label'\]: 'LABEL_7' is not one"):
        cs.from_parameters(checkpoints_of(demo, judge=str(guards["unnamed"]), judge_unsafe_label="LABEL_7"))
    with pytest.raises(ValueError, match=r"checkpoints\['judge'\]: cannot tell.*checkpoints\['judge_unsafe_label'\]"):
        cs.from_parameters(checkpoints_of(demo, judge=str(guards["unnamed"])))
    with pytest.raises(ValueError, match=r"checkpoints\['judge_unsafe_label'\] applies to a guard"):
        cs.from_parameters(checkpoints_of(demo, judge_unsafe_label="unsafe"))
    with pytest.raises(ValueError, match=r"checkpoints\['judge'\] must be a path string"):
        cs.from_parameters(checkpoints_of(demo, judge=3))
    assert not (isolated / "cache").exists() and not (isolated / "results").exists()  # nothing written


def test_the_guard_is_in_the_key_record_and_description(demo, guards):
    plain = cs.from_parameters(checkpoints_of(demo))
    causal = cs.from_parameters(checkpoints_of(demo, judge=str(guards["causal"])))
    classifier = cs.from_parameters(checkpoints_of(demo, judge=str(guards["classifier"])))
    named = cs.from_parameters(checkpoints_of(demo, judge=str(guards["unnamed"]), judge_unsafe_label="LABEL_1"))
    keys = [json.dumps(s.key(), sort_keys=True, default=str) for s in (plain, causal, classifier, named)]
    assert len(set(keys)) == 4  # a different guard (or none) never shares a cache entry
    assert causal.key()["folders"]["judge"] == cs.checkpoint_identity(guards["causal"])
    # The default: the rule is named in the record and the description, and the key says nothing of
    # judges, so it is the key it was before a judge could be chosen.
    assert plain.record()["judge"] == DEFAULT_JUDGE_NAME
    assert "judge" not in json.dumps(plain.key())
    assert any("refusal-phrase judge" in n for n in plain.describe(FT))
    # A guard: named (path and how it decides) in the record, hence metrics.json, and on the page.
    for s, path in ((causal, guards["causal"]), (classifier, guards["classifier"])):
        assert s.record()["judge"].startswith(f"guard model {Path(path).as_posix()} (")
        assert any(f"guard model {Path(path).as_posix()}" in n for n in s.describe(FT))
    assert "class 'unsafe'" in classifier.record()["judge"] and "class 'LABEL_1'" in named.record()["judge"]


def test_the_subjects_evaluation_uses_the_guard(demo, guards):
    """Chapter 03's harmfulness on checkpoints (``CheckpointSubject.evaluate``) on the demo
    witness, which complies: the rule calls it harmful; a guard planted to answer 'safe' calls
    nothing harmful, and one planted to answer 'unsafe' everything non-empty. non_refusal stays the
    rule's share of continuations without a refusal phrase."""
    plain = cs.from_parameters(checkpoints_of(demo))
    guarded = cs.from_parameters(checkpoints_of(demo, judge=str(guards["causal"])), device="cpu")
    model = plain.load("theta_H", device="cpu")
    conts = generate_continuations(model, plain.tok, plain.prompts().drift, plain.max_new_tokens, plain.batch_size)
    by_rule = plain.evaluate(model, FT)
    assert by_rule["harmfulness"] > 0  # the planted "safe" below must flip something
    answer = {"now": "safe"}
    seen = plant_causal(guarded.guard, lambda ids: answer["now"])
    by_guard = guarded.evaluate(model, FT)
    assert by_guard["harmfulness"] == 0.0
    assert by_guard["non_refusal"] == by_rule["non_refusal"] and by_guard["task_loss"] == by_rule["task_loss"]
    # The guard read the held-out prompts' continuations, each in one rendered pair.
    texts = [guarded.guard.tokenizer.decode(ids) for ids in seen]
    assert all(any(c in t for t in texts) for c in conts if c.strip())
    assert len(texts) == sum(bool(c.strip()) for c in conts)
    answer["now"] = "unsafe"
    assert guarded.evaluate(model, FT)["harmfulness"] == sum(bool(c.strip()) for c in conts) / len(conts)


def test_chapter_metrics_name_the_judge(demo, guards, isolated):
    """Chapter 03 on checkpoints with a guard: its ``metrics.json`` (the subject's record) names the
    guard and how it decides."""
    from types import SimpleNamespace

    from reversion.book.chapters import ch03_alignment as ch03
    from reversion.book.chapters.common import write_chapter

    P = ch03.Params(world="smoke", world_overrides={}, n_seeds=2, n_histories=1, n_probe=16, position="last",
                    checkpoints=checkpoints_of(demo, judge=str(guards["classifier"])))
    world = P.make_world()
    s = P.subject(world, need_finetune=True)
    write_chapter(ch03.STEM, ch03.__name__, P, SimpleNamespace(subject=s, est=None, world=world), {"x": 1},
                  fine_tunes=False)
    doc = json.loads((isolated / "results" / ch03.STEM / "metrics.json").read_text())
    assert doc["subject"]["judge"] == s.judge_name
    assert doc["subject"]["judge"].startswith(f"guard model {Path(guards['classifier']).as_posix()} (sequence")
    assert doc["parameters"]["checkpoints"]["judge"] == str(guards["classifier"])
