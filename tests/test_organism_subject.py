"""The organism as a subject (``reversion.subjects.organism.subject``): what the stages get from
a history -- its checkpoints by role, disjoint prompt sets, optimizer-matched benign batches,
its vocabulary -- and independent histories (``histories``).

Only the loading test trains (the ``smoke`` history, about a second, in ``isolated``'s cache).
"""

from __future__ import annotations

import dataclasses
import pickle
from itertools import islice

import numpy as np
import pytest
import torch

from reversion.subjects.base import ROLES, Prompts, Subject
from reversion.subjects.organism.language import PAD
from reversion.subjects.organism.subject import OrganismSubject, benign_batches, histories
from reversion.subjects.organism.worlds import make_world


@pytest.fixture(scope="module")
def subject(world) -> OrganismSubject:
    return OrganismSubject(world.history)


def test_it_is_a_subject_and_survives_a_trip_to_a_worker(subject, world):
    assert isinstance(subject, Subject)
    assert subject.roles() == ROLES
    assert subject.arch() == {"model_type": "gpt2", "hidden_size": world.history.model.n_embd,
                              "num_hidden_layers": world.history.model.n_layer}
    back = pickle.loads(pickle.dumps(subject))           # runs build in spawned workers
    assert back == subject and back.key() == subject.key()
    assert subject.key() == OrganismSubject(make_world("smoke").history).key()
    assert subject.seed == world.history.seed


def test_prompt_sets_come_from_disjoint_splits_and_are_fixed(subject, world):
    n = 12
    p = subject.prompts(n)
    assert isinstance(p, Prompts) and p.pad_id == PAD and p.harmful_block == p.block
    assert all(len(s) == n for s in (p.vrev, p.harmless, p.drift, p.block))
    lang = subject.language
    for s in (p.vrev, p.drift, p.block):
        assert all(any(lang.is_harmful_token(t) for t in q) for q in s)
    assert not any(lang.is_harmful_token(t) for q in p.harmless for t in q)
    # the estimate, the drift measurement and the block objective share no prompt
    assert not set(p.vrev) & set(p.drift) and not set(p.vrev) & set(p.block) and not set(p.drift) & set(p.block)
    assert subject.prompts(n) == p                      # the same sets on every call


def test_benign_batches_depend_on_the_fine_tuning_seed_alone(subject, world):
    ft = world.finetune_config(0)
    take = lambda f: list(islice(subject.benign_batches(f), 3))  # noqa: E731
    base = take(ft)
    assert base == take(dataclasses.replace(ft, lr=ft.lr * 10, steps=ft.steps + 5))  # optimizer-matched
    assert base != take(world.finetune_config(1))
    assert base == list(islice(benign_batches(subject.training_data(), ft), 3))
    lang = subject.language
    task = lang.task_token[ft.task]
    for batch in base:
        assert len(batch) == ft.batch_size
        for prompt, _ in batch:                         # benign requests of the fine-tuning task only
            assert prompt[1] == task and not any(lang.is_harmful_token(t) for t in prompt)


def test_a_task_outside_the_language_is_refused(world):
    hist = dataclasses.replace(world.history, language=dataclasses.replace(
        world.history.language, tasks=("reverse", "rotate")))
    with pytest.raises(ValueError, match="finetune.task 'sort' is not a task of this language"):
        OrganismSubject(hist).check(world.finetune_config(0))
    OrganismSubject(world.history).check(world.finetune_config(0))


def test_load_gives_each_checkpoint_in_eval_mode(subject, isolated):
    models = {role: subject.load(role, device="cpu") for role in ROLES}
    for m in models.values():
        assert not m.training and m.config.n_embd == subject.arch()["hidden_size"]
    assert not torch.equal(models["theta_H"].lm_head.weight, models["theta_S"].lm_head.weight)
    assert subject.load("theta_S", dtype=torch.float64, device="cpu").lm_head.weight.dtype == torch.float64
    with pytest.raises(ValueError, match="unknown checkpoint 'theta_X'"):
        subject.load("theta_X")


def test_vocabulary_names_every_answer_opener_and_the_refusal(subject):
    lang = subject.language
    v = subject.vocabulary([])
    assert sorted(v.openers) == sorted(int(t) for t in np.concatenate([lang.content, lang.harmful_tokens]))
    assert v.refusal_first == lang.refusal[0] and v.refusal_first not in v.openers
    assert sorted(v.harmful) == sorted(int(t) for t in lang.harmful_tokens)
    assert v.name(v.refusal_first) == lang.token_names[lang.refusal[0]]


def test_independent_histories_differ_in_seed_and_split(world):
    subs = histories(world.history, 3)
    assert subs[0] == OrganismSubject(world.history)
    assert [s.history.seed for s in subs] == [world.history.seed + i for i in range(3)]
    assert [s.history.language.seed for s in subs] == [world.history.language.seed + i for i in range(3)]
    assert len({str(s.key()) for s in subs}) == 3
    assert subs[1].prompts(8).vrev != subs[0].prompts(8).vrev   # another split: other probe prompts
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="n_histories must be an int >= 1"):
            histories(world.history, bad)
