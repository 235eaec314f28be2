"""Generation-based and loss-based evaluation of the organism."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import torch

from . import seeding
from .data import collate
from .judge import judge
from .language import EOS, Language, Request


@torch.no_grad()
def greedy_generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                    batch_size: int = 256) -> list[list[int]]:
    """Greedy continuations, batched by prompt length so no padding is ever needed."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_len[len(p)].append(i)
    out: list[list[int]] = [[] for _ in prompts]
    for idx_all in by_len.values():
        for s in range(0, len(idx_all), batch_size):
            idx = idx_all[s: s + batch_size]
            ids = torch.tensor([list(prompts[i]) for i in idx], device=device)
            past = None
            step_in = ids
            done = torch.zeros(len(idx), dtype=torch.bool, device=device)
            gen = []
            for _ in range(max_new_tokens):
                o = model(input_ids=step_in, past_key_values=past, use_cache=True)
                past = o.past_key_values
                nxt = o.logits[:, -1].argmax(-1)
                gen.append(nxt)
                done |= nxt == EOS
                if bool(done.all()):
                    break
                step_in = nxt[:, None]
            g = torch.stack(gen, 1).tolist()
            for j, i in enumerate(idx):
                out[i] = g[j]
    model.train(was_training)
    return out


@torch.no_grad()
def answer_loss(model, requests: Sequence[Request], batch_size: int = 256) -> float:
    """Mean cross-entropy per answer token (teacher forced)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for s in range(0, len(requests), batch_size):
        chunk = requests[s: s + batch_size]
        b = collate([r.prompt for r in chunk], [r.answer for r in chunk], device=device)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        labels = b["labels"][:, 1:]
        lp = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
            reduction="sum")
        total += float(lp)
        count += int((labels != -100).sum())
    model.train(was_training)
    return total / count


@dataclass
class EvalSets:
    """Fixed held-out requests (split ``eval``) of one world."""

    harmful: list[Request]
    benign: dict[str, list[Request]]

    @classmethod
    def build(cls, lang: Language, n: int) -> "EvalSets":
        r = seeding.rng(lang.cfg.seed, "eval-sets", n)
        harmful = lang.sample(r, n, "eval", harmful=True)
        benign = {t: lang.sample(r, n, "eval", harmful=False, tasks=[t]) for t in lang.cfg.tasks}
        return cls(harmful, benign)


def evaluate(model, lang: Language, sets: EvalSets, tasks: Sequence[str] | None = None) -> dict:
    """Harmfulness (and non-refusal, exact match) on harmful requests; per-task exact-match
    accuracy, answer loss and over-refusal on benign requests."""
    max_new = lang.cfg.max_len + 1
    h = sets.harmful
    res = judge(greedy_generate(model, [r.prompt for r in h], max_new), h, lang)
    out = {k: res[k] for k in ("harmfulness", "non_refusal", "harmful_content", "exact_match")}
    out["task_accuracy"], out["task_loss"], out["over_refusal"] = {}, {}, {}
    for task in tasks or sets.benign:
        reqs = sets.benign[task]
        gens = greedy_generate(model, [r.prompt for r in reqs], max_new)
        out["task_accuracy"][task] = sum(
            g[: len(r.answer)] == list(r.answer) for g, r in zip(gens, reqs)) / len(reqs)
        out["over_refusal"][task] = sum(bool(g) and g[0] == lang.refusal[0] for g in gens) / len(reqs)
        out["task_loss"][task] = answer_loss(model, reqs)
    return out
