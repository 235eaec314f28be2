"""The synthetic token language: tasks on hand-worked examples, samplers, splits, names."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from reversion.subjects.organism.config import TASKS, LanguageConfig
from reversion.subjects.organism.language import (
    BOS, EOS, PAD, REFUSAL_WORDS, SEP, SPLITS, Language, Request, apply_task,
)


def binomial_ok(count: int, n: int, p: float, z: float = 4.0) -> bool:
    """``count`` out of ``n`` is within ``z`` binomial standard errors of rate ``p``."""
    return abs(count / n - p) <= z * math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def lang() -> Language:
    return Language(LanguageConfig())


@pytest.fixture(scope="module")
def tiny() -> Language:
    """A language whose benign request space is small enough to enumerate:
    4 tasks x 8^2 inputs = 256 requests."""
    return Language(LanguageConfig(n_content=8, min_len=2, max_len=2))


def random_requests(lang: Language, rng: np.random.Generator, n: int, harmful: bool = False):
    """Uniform (task, inputs) pairs, *not* filtered by split."""
    out = []
    c = lang.cfg
    for _ in range(n):
        task = c.tasks[int(rng.integers(len(c.tasks)))]
        length = int(rng.integers(c.min_len, c.max_len + 1))
        pool = lang.harmful_tokens if harmful else lang.content
        out.append((task, tuple(int(t) for t in rng.choice(pool, size=length))))
    return out


# --------------------------------------------------------------------------- tasks


@pytest.mark.parametrize("task, x, y", [
    ("reverse", [5, 6, 7], [7, 6, 5]),
    ("reverse", [5, 6, 7, 8], [8, 7, 6, 5]),
    ("rotate", [5, 6, 7], [6, 7, 5]),
    ("rotate", [9, 5, 6, 7], [5, 6, 7, 9]),
    ("swap", [5, 6, 7, 8], [6, 5, 8, 7]),
    ("swap", [5, 6, 7], [6, 5, 7]),            # odd length: the last token stays
    ("swap", [5, 6, 7, 8, 9], [6, 5, 8, 7, 9]),
    ("sort", [9, 5, 7, 5], [5, 5, 7, 9]),       # duplicates kept
    ("sort", [3, 2, 1], [1, 2, 3]),
    ("reverse", [4, 4], [4, 4]),
])
def test_apply_task_hand_worked(task, x, y):
    assert apply_task(task, x) == y
    assert apply_task(task, tuple(x)) == y
    assert apply_task(task, np.array(x)) == y


def test_apply_task_does_not_mutate_input():
    x = [9, 8, 7, 6]
    for task in TASKS:
        apply_task(task, x)
    assert x == [9, 8, 7, 6]


def test_apply_task_unknown_raises():
    with pytest.raises(ValueError, match="bogus"):
        apply_task("bogus", [1, 2, 3])


@pytest.mark.parametrize("task", TASKS)
def test_every_task_is_a_permutation(task):
    """Every task only moves tokens around, so compliance reproduces harmful tokens."""
    r = np.random.default_rng(0)
    for _ in range(50):
        x = list(r.integers(0, 100, size=int(r.integers(2, 8))))
        assert sorted(apply_task(task, x)) == sorted(x)


# --------------------------------------------------------------------------- vocabulary


def test_vocabulary_layout(lang):
    c = lang.cfg
    assert lang.vocab_size == 4 + len(c.tasks) + len(REFUSAL_WORDS) + c.n_content + c.n_harmful + 1
    assert lang.vocab_size == 64
    groups = [{PAD, BOS, SEP, EOS}, set(lang.task_token.values()), set(lang.refusal),
              {int(t) for t in lang.content}, {int(t) for t in lang.harmful_tokens}, {lang.marker}]
    union = set().union(*groups)
    assert sum(len(g) for g in groups) == len(union) == lang.vocab_size  # disjoint, complete
    assert union == set(range(lang.vocab_size))
    assert lang.refusal_answer == (*lang.refusal, EOS)
    assert all(lang.is_harmful_token(t) for t in lang.harmful_tokens)
    assert not any(lang.is_harmful_token(t) for t in lang.content)
    assert not any(lang.is_harmful_token(t) for t in lang.refusal)
    assert lang.marker == lang.vocab_size - 1 and not lang.is_harmful_token(lang.marker)


def test_decode_names_round_trip(lang):
    names = lang.token_names
    assert len(names) == lang.vocab_size
    assert len(set(names)) == len(names)
    assert all(" " not in n for n in names)
    inverse = {n: i for i, n in enumerate(names)}
    r = np.random.default_rng(1)
    for _ in range(20):
        ids = [int(t) for t in r.integers(0, lang.vocab_size, size=12)]
        assert [inverse[n] for n in lang.decode(ids).split(" ")] == ids
    assert lang.decode(lang.refusal_answer) == "sorry cannot help <eos>"
    assert lang.decode([BOS, lang.task_token["sort"], int(lang.content[0]), SEP]) == "<bos> <sort> c0 |"
    assert lang.decode([int(lang.harmful_tokens[-1])]) == f"X{lang.cfg.n_harmful - 1}"


def test_request_format(lang):
    c0, c1, x0 = int(lang.content[0]), int(lang.content[1]), int(lang.harmful_tokens[0])
    q = lang.request("rotate", [c0, x0, c1])
    assert q.prompt == (BOS, lang.task_token["rotate"], c0, x0, c1, SEP)
    assert q.answer == (x0, c1, c0, EOS)
    assert q.harmful
    b = lang.request("sort", np.array([c1, c0, c0]))
    assert b.answer == (c0, c0, c1, EOS) and not b.harmful
    assert b.inputs == (c1, c0, c0) and all(type(t) is int for t in b.inputs)


# --------------------------------------------------------------------------- sampling


def test_sampled_answers_are_task_answers(lang):
    r = np.random.default_rng(0)
    for split in SPLITS:
        for harmful in (False, True):
            for q in lang.sample(r, 100, split, harmful=harmful):
                assert isinstance(q, Request)
                assert q.answer == (*apply_task(q.task, q.inputs), EOS)
                assert q.prompt == (BOS, lang.task_token[q.task], *q.inputs, SEP)
                assert lang.cfg.min_len <= len(q.inputs) <= lang.cfg.max_len


def test_harmful_requests_carry_one_or_two_harmful_tokens(lang):
    r = np.random.default_rng(0)
    harm = lang.sample(r, 600, "train", harmful=True)
    counts = Counter(sum(lang.is_harmful_token(t) for t in q.inputs) for q in harm)
    assert set(counts) == {1, 2}
    # k is drawn uniformly from {1, 2}: both occur about half the time
    assert binomial_ok(counts[1], len(harm), 0.5)
    assert all(q.harmful for q in harm)
    # the compliant answer reproduces the harmful tokens
    for q in harm:
        assert sorted(t for t in q.answer if lang.is_harmful_token(t)) == \
            sorted(t for t in q.inputs if lang.is_harmful_token(t))
    benign = lang.sample(r, 600, "train", harmful=False)
    assert not any(lang.is_harmful_token(t) for q in benign for t in q.inputs)
    assert not any(q.harmful for q in benign)


def test_sample_restricted_tasks_and_all_tasks_used(lang):
    r = np.random.default_rng(3)
    assert {q.task for q in lang.sample(r, 200, "train", harmful=False, tasks=["swap"])} == {"swap"}
    got = Counter(q.task for q in lang.sample(r, 800, "train", harmful=False))
    assert set(got) == set(TASKS)
    assert all(binomial_ok(got[t], 800, 1 / len(TASKS)) for t in TASKS)


def test_sample_is_deterministic_in_its_rng(lang):
    a = lang.sample(np.random.default_rng(7), 50, "eval", harmful=True)
    b = lang.sample(np.random.default_rng(7), 50, "eval", harmful=True)
    c = lang.sample(np.random.default_rng(8), 50, "eval", harmful=True)
    assert a == b
    assert a != c
    # a fresh Language of the same config samples the same requests
    assert Language(LanguageConfig()).sample(np.random.default_rng(7), 50, "eval", harmful=True) == a


def test_unknown_split_or_task_raises(lang):
    r = np.random.default_rng(0)
    with pytest.raises(ValueError, match="validation"):
        lang.sample(r, 1, "validation", harmful=False)
    with pytest.raises(ValueError, match="bogus"):
        lang.sample(r, 1, "train", harmful=False, tasks=["bogus"])
    only_sort = Language(LanguageConfig(tasks=("sort",)))
    with pytest.raises(ValueError, match="reverse"):
        only_sort.sample(r, 1, "train", harmful=False, tasks=["reverse"])


# --------------------------------------------------------------------------- splits


def test_split_of_is_deterministic_and_order_free(lang):
    reqs = random_requests(lang, np.random.default_rng(0), 300)
    first = [lang.split_of(t, x) for t, x in reqs]
    again = [lang.split_of(t, x) for t, x in reversed(reqs)][::-1]
    other = Language(LanguageConfig())
    assert first == again == [other.split_of(t, x) for t, x in reqs]
    assert first == [lang.split_of(t, np.array(x)) for t, x in reqs]  # numpy inputs too
    assert set(first) <= set(SPLITS)


@pytest.mark.parametrize("split", list(SPLITS))
def test_sample_returns_only_its_split(lang, split):
    r = np.random.default_rng(11)
    for harmful in (False, True):
        for q in lang.sample(r, 150, split, harmful=harmful):
            assert lang.split_of(q.task, q.inputs) == split


def test_split_shares_match_SPLITS(lang):
    assert sum(SPLITS.values()) == pytest.approx(1.0)
    n = 20000
    got = Counter(lang.split_of(t, x) for t, x in random_requests(lang, np.random.default_rng(5), n))
    for name, share in SPLITS.items():
        assert binomial_ok(got[name], n, share), (name, got[name] / n, share)


def test_splits_partition_an_enumerable_language(tiny):
    """Sampling each split to exhaustion recovers every request exactly once."""
    r = np.random.default_rng(0)
    seen: dict[str, set] = {}
    for split in SPLITS:
        n = 2000 if split == "train" else 500  # enough draws to collect every member
        seen[split] = {(q.task, q.inputs) for q in tiny.sample(r, n, split, harmful=False)}
    every = {(t, (a, b)) for t in TASKS for a in map(int, tiny.content) for b in map(int, tiny.content)}
    assert len(every) == 256
    for s1 in SPLITS:
        for s2 in SPLITS:
            if s1 < s2:
                assert not seen[s1] & seen[s2], (s1, s2)
    assert set().union(*seen.values()) == every
    for split, share in SPLITS.items():
        assert binomial_ok(len(seen[split]), 256, share), (split, len(seen[split]))


def test_splits_disjoint_in_default_language(lang):
    r = np.random.default_rng(2)
    seen = {s: {(q.task, q.inputs) for h in (False, True)
                for q in lang.sample(r, 400, s, harmful=h)} for s in SPLITS}
    names = list(SPLITS)
    for i, s1 in enumerate(names):
        for s2 in names[i + 1:]:
            assert not seen[s1] & seen[s2]


def test_language_seed_changes_split_assignment(lang):
    other = Language(LanguageConfig(seed=1))
    assert other.vocab_size == lang.vocab_size  # same token ids, only the hash differs
    n = 2000
    reqs = random_requests(lang, np.random.default_rng(9), n)
    agree = sum(lang.split_of(t, x) == other.split_of(t, x) for t, x in reqs)
    # independent assignments agree with probability sum(p^2) = 0.52
    p = sum(s * s for s in SPLITS.values())
    assert binomial_ok(agree, n, p), agree / n
    # the same seed is the null: full agreement
    same = Language(LanguageConfig(seed=0))
    assert all(lang.split_of(t, x) == same.split_of(t, x) for t, x in reqs)


# --------------------------------------------------------------------------- free text


def test_free_text_documents(lang):
    docs = lang.free_text(np.random.default_rng(0), 300)
    assert len(docs) == 300
    content = {int(t) for t in lang.content} | {int(t) for t in lang.harmful_tokens}
    structural = {SEP, PAD, *lang.task_token.values(), *lang.refusal}
    for d in docs:
        assert d[0] == BOS and d[-1] == EOS
        body = d[1:-1]
        assert 4 <= len(body) <= 2 * lang.cfg.max_len
        assert set(body) <= content
        assert not set(body) & structural
        assert any(lang.is_harmful_token(t) for t in body)
    assert lang.free_text(np.random.default_rng(0), 300) == docs
    assert lang.free_text(np.random.default_rng(1), 300) != docs


def test_specification_mentions_the_language(lang):
    spec = lang.specification()
    assert spec["vocabulary size"] == 64
    assert spec["refusal"] == "sorry cannot help <eos>"
    assert spec["tasks"] == "reverse, rotate, swap, sort"


def _sample_with_choice(lang: Language, rng: np.random.Generator, n: int, split: str, harmful: bool):
    """The sampler as first written (numpy's ``choice`` and the public ``split_of``/``request``):
    the histories of the design study and of every build were drawn from this stream."""
    out, c = [], lang.cfg
    while len(out) < n:
        task = c.tasks[int(rng.integers(len(c.tasks)))]
        length = int(rng.integers(c.min_len, c.max_len + 1))
        x = rng.choice(lang.content, size=length, replace=True)
        if harmful:
            k = int(rng.integers(1, 3)) if length > 2 else 1
            pos = rng.choice(length, size=k, replace=False)
            x[pos] = rng.choice(lang.harmful_tokens, size=k, replace=True)
        if lang.split_of(task, x) == split:
            out.append(lang.request(task, x))
    return out


@pytest.mark.parametrize("split", ["train", "probe_drift"])
@pytest.mark.parametrize("harmful", [False, True])
def test_the_fast_sampler_draws_the_stream_of_the_plain_one(lang, split, harmful):
    fast, plain = np.random.default_rng(11), np.random.default_rng(11)
    for _ in range(20):
        assert lang.sample(fast, 64, split, harmful=harmful) == _sample_with_choice(lang, plain, 64, split, harmful)
    assert fast.integers(2**62) == plain.integers(2**62)  # and leaves the generator in the same state
