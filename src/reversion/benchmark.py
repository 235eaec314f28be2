"""Benchmarks: what each piece costs against what a user would write instead.

``python benchmarks/run.py`` (``make benchmark``) measures, in one run on this machine,
and writes ``benchmarks/results.json``; the book's Performance page shows the latest
file (the book build never runs the benchmark). Per-step costs are *ratios* to a
plain step measured in the same run, interleaved (A B C A B C ...) and summarised by
medians, so machine noise cancels. Timing does not depend on the weights, so the
per-step benchmarks use freshly initialised models of the world's architecture: they
need no trained history.

Measured:

* drift tracking at the chosen layer every step, and at every layer, against the same
  fine-tuning loop without it (target: <= 5% per step);
* the block objective against the baseline step (target: <= 25%);
* activation extraction (:func:`~reversion.core.activations.mean_activations` and
  :class:`~reversion.core.tracking.ProbeTracker`) against a plain
  ``output_hidden_states=True`` forward over the same prompts (target: at least as fast);
* the whole book from an empty cache and again with nothing changed (targets: 15 min
  and 60 s), and the peak memory of the build's process tree (target: 2 GiB);
* how step and tracking time grow with model width and number of probes;
* a LoRA (peft) fine-tuning step of a small random GPT-2 inside a ``transformers.Trainer``, with
  and without a :class:`~reversion.subjects.checkpoints.trainer_hooks.ReversionMonitor` check, the
  check against its floor: a plain no-grad forward of the same probes through the same model
  (target: at most 1.2 times it), and both against their matrix FLOPs at the machine's rate.

Where a target is missed, a pyinstrument profile of the step is saved beside the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PrinterCallback,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from reversion.core.activations import mean_activations
from reversion.core.batches import collate
from reversion.core.grouped import GroupedGPT2, stack_batches, stack_prompts
from reversion.core.interventions import Block
from reversion.core.models import default_device
from reversion.core.tracking import ProbeTracker
from reversion.core.training import adamw
from reversion.infra import kernels, paths, seeding
from reversion.infra.parallel import n_workers
from reversion.infra.runtime import set_cpu_threads
from reversion.stages import finetune as ftm
from reversion.stages.finetune import _collated
from reversion.subjects.base import Prompts
from reversion.subjects.checkpoints.trainer_hooks import ReversionMonitor
from reversion.subjects.checkpoints.textdata import PairCollator
from reversion.subjects.organism.language import PAD, Language
from reversion.subjects.organism.model import build_model
from reversion.subjects.organism import history as hm
from reversion.subjects.organism.history import train_histories
from reversion.subjects.organism.lineages import lineages
from reversion.subjects.organism.subject import OrganismSubject, benign_batches, histories
from reversion.subjects.organism.worlds import World, make_world

TARGETS = {
    "histories_lineages_to_floor": 2.5,
    "workload_runs_to_floor": 2.5,
    "histories_lineages_seconds": 300.0,
    "tracking_chosen_layer_overhead": 0.05,
    "block_overhead": 0.25,
    "extraction_ratio": 1.0,
    "book_cold_seconds": 900.0,  # the power issue: ten histories with their lineages in every chapter
    "book_warm_seconds": 30.0,  # the power issue: a re-run with nothing changed
    "book_peak_memory_gib": 2.0,
    "seeds_batched_to_one_seed": 1.5,
    "seeds_batched_to_one_per_worker": 0.4,
    "workload_seconds": 720.0,
    "lora_monitor_check_to_floor": 1.2,
}


def _median_ms(xs: list[float]) -> float:
    return float(np.median(xs) * 1000)


def interleaved(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds per call of each function, the calls interleaved round-robin."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: _median_ms(v) for k, v in times.items()}


@dataclasses.dataclass
class _Loop:
    """One benign fine-tuning loop (the package's batches, AdamW) on a fresh model."""

    world: World
    model: torch.nn.Module
    probes: Prompts
    lang: Language

    @classmethod
    def build(cls, world: World, n_probe: int | None = None, seed: int = 0) -> "_Loop":
        lang = Language(world.history.language)
        seeding.seed_everything(seed)
        model = build_model(world.history.model, lang.vocab_size)
        probes = OrganismSubject(world.history).prompts(n_probe or world.finetune.n_probe)
        return cls(world, model, probes, lang)

    def stepper(self, aux: Callable | None = None, after: Callable | None = None) -> Callable[[], None]:
        ft = self.world.finetune_config(0)
        batches = _collated(benign_batches(self.lang, ft), PAD, torch.device("cpu"))
        opt = adamw(self.model.parameters(), ft.lr)
        count = [0]

        def step() -> None:
            count[0] += 1
            self.model.train()
            batch = next(batches)
            loss = self.model(**batch).loss
            if aux is not None:
                extra = aux(self.model, batch, count[0])
                loss = loss if extra is None else loss + extra
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if after is not None:
                after(self.model)
        return step


def chosen_layer(world: World, world_name: str) -> int:
    """The v_rev chapter's chosen layer when its results are of this world (the organism, not a
    user's checkpoints, and no world overrides), else L - 1."""
    L = world.history.model.n_layer
    f = paths.results_dir() / "02_vrev_estimation" / "metrics.json"
    try:
        doc = json.loads(f.read_text())
        params, m = doc["parameters"], doc["metrics"]
        organism = (doc.get("subject") or {}).get("kind", "organism") == "organism"
        if params.get("world") == world_name and not params.get("world_overrides") and organism \
                and 1 <= int(m["layer"]) <= L:
            return int(m["layer"])
    except (OSError, KeyError, ValueError, TypeError):
        pass
    return L - 1


def bench_steps(world: World, repeats: int = 60, world_name: str = "default") -> dict:
    """Per-step milliseconds: plain, tracked (chosen layer / all layers / the old way), block."""
    set_cpu_threads()
    layer = chosen_layer(world, world_name)
    L = world.history.model.n_layer
    loop = _Loop.build(world)
    drift = loop.probes.drift
    at_layer = ProbeTracker(loop.model, drift, [layer], pad_id=PAD)
    every = ProbeTracker(loop.model, drift, "all", pad_id=PAD)
    v = torch.nn.functional.normalize(torch.randn(L + 1, world.history.model.n_embd, dtype=torch.float64), dim=1)
    block = Block(v, torch.ones(L + 1, dtype=torch.float64), 1.0, list(range(1, L + 1)))
    block.setup(loop.model, loop.lang, loop.probes)
    fns = {
        "plain": loop.stepper(),
        "tracked_chosen_layer": loop.stepper(after=at_layer),
        "tracked_all_layers": loop.stepper(after=every),
        "tracked_all_layers_mean_activations": loop.stepper(
            after=lambda m: mean_activations(m, drift, "all", pad_id=PAD)),
        "block": loop.stepper(aux=block.aux_loss),
    }
    ms = interleaved(fns, repeats)
    tokens = {"train_tokens_per_step": int(collate(*_one_batch(loop), pad_id=PAD).get("attention_mask").sum()),
              "probe_tokens": int(sum(len(p) for p in drift))}
    return {"layer": layer, "n_layer": L, "width": world.history.model.n_embd,
            "n_probe": len(drift), "batch_size": world.finetune.batch_size, "repeats": repeats,
            "ms": ms, "overhead": {k: ms[k] / ms["plain"] - 1 for k in ms if k != "plain"}, **tokens}


def matmul_gflops(threads: int, n: int = 512, repeats: int = 20) -> float:
    """The machine's float32 matrix rate (GFLOP/s) with ``threads`` torch threads: an ``n x n``
    product, the yardstick of every floor on the page."""
    set_cpu_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    ms = interleaved({"mm": lambda: a @ b}, repeats)["mm"]
    return 2 * n ** 3 / (ms / 1000) / 1e9


def count_flops(fn: Callable[[], object]) -> int:
    """Matrix FLOPs of one call of ``fn`` (``torch.utils.flop_counter``; attention's small share and
    element-wise work are not counted)."""
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def run_flops(world: World) -> dict:
    """Matrix FLOPs (``torch.utils.flop_counter``; attention's small share is not counted) of one
    fine-tuning run's pieces, on a fresh model: a training step (forward and backward), a drift
    tracking forward, an evaluation of the fine-tuning task; and of one history's training steps."""
    loop = _Loop.build(world)
    group = GroupedGPT2([loop.model])
    ft = world.finetune_config(0)
    subject = OrganismSubject(world.history)
    widths = subject.pad_widths()
    count = count_flops
    ids, labels = stack_batches([collate(*_one_batch(loop), pad_id=PAD)], PAD, widths[1])
    step = count(lambda: group.losses(ids, labels).sum().backward())
    pid, plen = stack_prompts([loop.probes.drift], PAD, width=widths[0])
    track = count(lambda: group.last_token_means(pid, plen, range(group.L + 1)))
    ev = count(lambda: group.run_work([subject.eval_work(ft, False)], widths))
    full = count(lambda: group.run_work([subject.eval_work(ft, True)], widths))
    per_run = ft.steps * (step + track) + track + (len(ft.grid) - 2) * ev + full
    h = world.history
    tokens = {p: getattr(h, p).batch_size * getattr(h, p).steps for p in ("pretrain", "helpful", "safety")}
    history = int(sum(tokens.values()) / ft.batch_size * step)  # same width per sequence
    return {"step": step, "track": track, "eval": ev, "eval_full": full, "run": per_run, "history": history}


def profile_group_step(world: World, k: int = 10, steps: int = 10) -> str:
    """``torch.profiler``'s operator table of ``k`` fine-tuning runs' grouped training steps (fresh
    models): where a step's time goes once per-operator overhead is shared by the runs."""
    kernels.pin_threads()  # as a group computes (reversion.infra.kernels)
    loops = [_Loop.build(world, seed=i) for i in range(k)]
    group = GroupedGPT2([lp.model for lp in loops])
    width = OrganismSubject(world.history).pad_widths()[1]
    batch = stack_batches([collate(*_one_batch(lp), pad_id=PAD) for lp in loops], PAD, width)
    opt = adamw(group.parameters(), world.finetune.lr)

    def step() -> None:
        loss = group.losses(*batch).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


TINYLLAMA = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
             "num_key_value_heads": 4, "vocab_size": 32000}
"""The shape of the issue's GPU measurements (random weights: timing does not depend on them)."""


def bench_large(shape: dict = TINYLLAMA, device: str = "cuda", dtype: torch.dtype = torch.bfloat16,
                n_prompts: int = 516, n_probe: int = 128, batch_size: int = 64, repeats: int = 10) -> dict:
    """A large random Llama (``make benchmark`` runs it when CUDA is present): extraction
    (:func:`mean_activations`, every layer) against a plain ``output_hidden_states`` forward over the
    same prompts, and a tracking check (:class:`ProbeTracker` at the middle layer, ``n_probe`` probes)
    against its floor, a plain no-grad forward of the same probes with hidden states. Ratios are
    ours / reference."""
    seeding.seed_everything(0)
    model = LlamaForCausalLM(LlamaConfig(**shape)).to(device=device, dtype=dtype).eval()
    g = np.random.default_rng(0)
    prompts = [g.integers(1, shape["vocab_size"], size=int(g.integers(8, 41))).tolist() for _ in range(n_prompts)]
    layer = shape["num_hidden_layers"] // 2

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def plain(ps) -> None:
        plain_means(model, ps, batch_size, pad_id=0)
        sync()

    tracker = ProbeTracker(model, prompts[:n_probe], [layer], batch_size=batch_size)
    ms = interleaved({"plain_forward": lambda: plain(prompts),
                      "mean_activations": lambda: (mean_activations(model, prompts, "all", batch_size=batch_size), sync()),
                      "probe_forward": lambda: plain(prompts[:n_probe]),
                      "tracking_check": lambda: (tracker(model), sync())}, repeats, warmup=2)
    return {"shape": shape, "device": device, "dtype": str(dtype), "n_prompts": n_prompts, "n_probe": n_probe,
            "layer": layer, "ms": ms,
            "ratio": {"extraction_to_plain": ms["mean_activations"] / ms["plain_forward"],
                      "tracking_to_floor": ms["tracking_check"] / ms["probe_forward"]}}


LORA_GPT2 = {"n_embd": 128, "n_layer": 4, "n_head": 4, "vocab_size": 512, "n_positions": 128}
"""The LoRA row's model: a small random GPT-2 (timing does not depend on the weights)."""


class _Clock(TrainerCallback):
    """The wall clock at each ``on_step_end``, by step; where it sits in the Trainer's callback list
    decides which callbacks' work a mark includes."""

    def __init__(self) -> None:
        self.marks: dict[int, float] = {}

    def on_step_end(self, args, state, control, **kwargs):
        self.marks[state.global_step] = time.perf_counter()


class _EndClock(_Clock):
    """The same clock, last in the list (its own class: the Trainer warns of a second instance of one)."""


class _PlainForward(TrainerCallback):
    """What a user would write instead of the monitor's check: at the steps ``step % period == phase``
    a plain no-grad forward of the probes through the model being trained (eval mode, the monitor's
    batch size; :func:`plain_means`), timed."""

    def __init__(self, probes, batch_size: int, pad_id: int, period: int, phase: int) -> None:
        self.probes, self.batch_size, self.pad_id, self.period, self.phase = probes, batch_size, pad_id, period, phase
        self.ms: dict[int, float] = {}

    def __call__(self, model) -> torch.Tensor:
        was = model.training
        model.eval()
        try:
            return plain_means(model, self.probes, self.batch_size, self.pad_id)
        finally:
            model.train(was)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.period == self.phase:
            t = time.perf_counter()
            self(model)
            self.ms[state.global_step] = (time.perf_counter() - t) * 1000


def bench_lora(shape: dict = LORA_GPT2, n_probe: int = 128, batch_size: int = 8, n_train: int = 64,
               lora_r: int = 8, repeats: int = 60, warmup: int = 3) -> dict:
    """A LoRA fine-tuning step of a small random GPT-2 inside ``transformers.Trainer`` (peft's
    ``get_peft_model`` on ``c_attn``, ``c_proj``, ``c_fc``; AdamW), with and without a
    :class:`ReversionMonitor` check (middle layer, ``n_probe`` random probes, its log file written).

    One run, its steps in cycles of three, interleaved as the other rows' variants: step ``3k + 1``
    also runs the floor, a plain no-grad forward of the same probes through the same model
    (:func:`plain_means`, eval mode, the monitor's batch size of 32: what a user would write);
    step ``3k + 2`` is a plain step; step ``3k + 3`` carries the monitor's check (``every=3``).
    A step's time is the wall clock from the previous step's end to its own (data, forward,
    backward, optimizer, callbacks); the check's and the floor's own times are clocked around
    them. Medians over ``repeats`` cycles after ``warmup``. FLOP floors: the counted matrix FLOPs
    of a training step, the floor forward and the check at the machine's matrix rate on the
    threads the run uses."""
    threads = set_cpu_threads()
    rate = matmul_gflops(threads) * 1e9
    seeding.seed_everything(0)
    cfg = GPT2Config(**shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0, bos_token_id=1,
                     eos_token_id=1)
    lora = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules=["c_attn", "c_proj", "c_fc"],
                      fan_in_fan_out=True, task_type="CAUSAL_LM")
    model = get_peft_model(GPT2LMHeadModel(cfg), lora)
    g = np.random.default_rng(0)
    vocab, pad = shape["vocab_size"], 0

    def tokens(lo: int, hi: int) -> list[int]:
        return g.integers(1, vocab, size=int(g.integers(lo, hi + 1))).tolist()

    probes = [tokens(8, 40) for _ in range(n_probe)]
    train = []
    for _ in range(n_train):
        prompt, response = tokens(8, 24), tokens(8, 24)
        train.append({"input_ids": prompt + response, "labels": [-100] * len(prompt) + response})
    L, d, layer, period = shape["n_layer"], shape["n_embd"], shape["n_layer"] // 2, 3
    v = torch.nn.functional.normalize(torch.randn(L + 1, d, dtype=torch.float64), dim=1)
    floor = _PlainForward(probes, 32, pad, period, 1)
    steps = period * (warmup + repeats)
    with tempfile.TemporaryDirectory(prefix="reversion-bench-lora-") as tmp:
        args = TrainingArguments(
            output_dir=tmp, max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=1e-3,
            lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, logging_strategy="no",
            save_strategy="no", report_to=[], use_cpu=True, seed=0, data_seed=0, disable_tqdm=True,
            dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=PairCollator(pad))
        for cb in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(cb)
        before, after = _Clock(), _EndClock()
        trainer.add_callback(before)
        monitor = ReversionMonitor(v, probes, layer=layer, every=period, threshold=0.5, pad_id=pad,
                                   log_path=Path(tmp) / "monitor.csv").attach(trainer)
        trainer.add_callback(floor)
        trainer.add_callback(after)
        set_cpu_threads(threads)
        trainer.train()
        checks = len(monitor.history)
    end, pre = after.marks, before.marks
    kept = range(period * warmup + 1, steps + 1)

    def median(xs) -> float:
        return float(np.median(list(xs)))

    ms = {"step_plain": median((end[s] - end[s - 1]) * 1000 for s in kept if s % period == 2),
          "step_monitored": median((end[s] - end[s - 1]) * 1000 for s in kept if s % period == 0),
          "monitor_check": median((end[s] - pre[s]) * 1000 for s in kept if s % period == 0),
          "plain_forward": median(floor.ms[s] for s in kept if s % period == 1)}
    batch = PairCollator(pad)(train[:batch_size])
    model.train()
    flops = {"train_step": count_flops(lambda: model(**batch).loss.backward()),
             "plain_forward": count_flops(lambda: floor(model)),
             "monitor_check": count_flops(lambda: monitor.measure(model))}
    model.zero_grad(set_to_none=True)
    floor_ms = {k: f / rate * 1000 for k, f in flops.items()}
    return {"model": {"family": "gpt2", **shape}, "trainer": "transformers.Trainer",
            "lora": {"r": lora_r, "alpha": 2 * lora_r, "target_modules": ["c_attn", "c_proj", "c_fc"]},
            "params": int(sum(p.numel() for p in model.parameters())),
            "trainable_params": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
            "n_probe": n_probe, "probe_tokens": int(sum(map(len, probes))), "batch_size": batch_size,
            "train_tokens_per_step": int(batch["attention_mask"].sum()), "layer": layer, "every": period,
            "checks": checks, "repeats": repeats, "threads": threads, "matmul_gflops": rate / 1e9,
            "ms": ms, "flops": flops, "floor_ms": floor_ms,
            "overhead": {"monitored_step": ms["step_monitored"] / ms["step_plain"] - 1,
                         "check_to_step": ms["monitor_check"] / ms["step_plain"]},
            "ratio": {"check_to_floor": ms["monitor_check"] / ms["plain_forward"],
                      "check_to_flop_floor": ms["monitor_check"] / floor_ms["monitor_check"],
                      "plain_forward_to_flop_floor": ms["plain_forward"] / floor_ms["plain_forward"],
                      "step_to_flop_floor": ms["step_plain"] / floor_ms["train_step"]}}


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def trained_sequences(cfgs) -> int:
    """Sequences the history phases of ``cfgs`` train when built together: each phase once per
    distinct configuration, a phase that is a shorter run of another (a dose) not at all
    (:func:`reversion.subjects.organism.history.train_histories` saves it from the longer run)."""
    total = 0
    for phase in hm.PHASES:
        longest: dict[str, int] = {}
        for c in cfgs:
            pc = getattr(c, phase)
            pre = hm._prefix(c, phase)
            longest[pre] = max(longest.get(pre, 0), pc.steps * pc.batch_size)
        total += sum(longest.values())
    return total


def bench_batched(world: World, n_seeds: int = 5, n_histories: int = 10, workload_seeds: int = 2,
                  log: Callable[[str], None] = print) -> dict:
    """Batched runs against the same runs one at a time and against their floor, each from an
    empty cache.

    * fine-tuning: one seed alone; ``n_seeds`` seeds as one group; the same number of seeds the
      way the package built them before batching (one run per worker process, two workers);
    * histories: one history alone; ``n_histories`` histories, each with its lineages (second
      witness, no witness, the dose snapshots), grouped -- the power issue's histories;
    * the workload from nothing: those histories and ``workload_seeds`` fine-tuning runs of every
      lineage of every history (the power issue's runs of the baseline; the interventions' arms
      come on top).

    Floors: the counted matrix FLOPs of the sequences trained (at the padded width) at the
    machine's matrix rate on every core (a 512 x 512 float32 product, measured here).
    """
    cores = n_workers()
    rate = matmul_gflops(cores) * 1e9
    flops = run_flops(world)
    per_seq = flops["step"] / world.finetune.batch_size
    saved = os.environ.get("REVERSION_CACHE")
    out: dict = {"cores": cores, "matmul_gflops_all_cores": rate / 1e9, "matmul_gflops_one_core": matmul_gflops(1),
                 "flops": flops, "n_seeds": n_seeds, "n_histories": n_histories, "workload_seeds": workload_seeds,
                 "device": str(default_device()), "seconds": {}}
    if default_device().type == "cuda":
        out["card"] = torch.cuda.get_device_name(0)
    sec = out["seconds"]
    subs = histories(world.history, n_histories)
    family = [c for s in subs for c in lineages(world, s.history).values()]
    out["n_history_configs"] = len(family)
    out["sequences"] = {"one_history": trained_sequences([world.history]), "histories_lineages": trained_sequences(family)}
    try:
        with tempfile.TemporaryDirectory(prefix="reversion-bench-batched-") as tmp:
            os.environ["REVERSION_CACHE"] = f"{tmp}/one"
            log("  one history ...")
            sec["one_history"] = _timed(lambda: train_histories([world.history], progress=False))
            s0 = subs[0]
            log("  fine-tuning: one seed, a group, one run per worker ...")
            sec["one_seed"] = _timed(lambda: ftm.finetune_many([(s0, world.finetune_config(100), None)], progress=False))
            sec["seeds_batched"] = _timed(lambda: ftm.finetune_many(
                [(s0, world.finetune_config(200 + i), None) for i in range(n_seeds)], progress=False))
            real = ftm._groupable
            ftm._groupable = lambda *a: False
            try:
                sec["seeds_one_per_worker"] = _timed(lambda: ftm.finetune_many(
                    [(s0, world.finetune_config(300 + i), None) for i in range(n_seeds)], progress=False))
            finally:
                ftm._groupable = real
            os.environ["REVERSION_CACHE"] = f"{tmp}/many"
            log(f"  {n_histories} histories with their lineages ({len(family)} histories in all) ...")
            sec["histories_lineages"] = _timed(lambda: train_histories(family, progress=False))
            log(f"  {workload_seeds} fine-tuning runs of each ...")
            jobs = [(OrganismSubject(c), world.finetune_config(i), None) for c in family for i in range(workload_seeds)]
            out["workload_runs"] = len(jobs)
            sec["workload_runs"] = _timed(lambda: ftm.finetune_many(jobs, progress=False))
    finally:
        if saved is None:
            os.environ.pop("REVERSION_CACHE", None)
        else:
            os.environ["REVERSION_CACHE"] = saved
    sec["workload"] = sec["histories_lineages"] + sec["workload_runs"]
    floor = {"one_seed": flops["run"] / rate, "seeds_batched": n_seeds * flops["run"] / rate,
             "one_history": out["sequences"]["one_history"] * per_seq / rate,
             "histories_lineages": out["sequences"]["histories_lineages"] * per_seq / rate,
             "workload_runs": out["workload_runs"] * flops["run"] / rate}
    floor["workload"] = floor["histories_lineages"] + floor["workload_runs"]
    out["floor_seconds"] = floor
    out["ratio"] = {
        "seeds_batched_to_one_seed": sec["seeds_batched"] / sec["one_seed"],
        "seeds_batched_to_one_per_worker": sec["seeds_batched"] / sec["seeds_one_per_worker"],
        **{f"{k}_to_floor": sec[k] / floor[k] for k in floor},
    }
    # the cost of one history of the workload (with its lineages) and of one fine-tuning run
    out["per_history"] = {"seconds": sec["histories_lineages"] / n_histories,
                          "to_floor": out["ratio"]["histories_lineages_to_floor"]}
    out["per_run"] = {"seconds": sec["workload_runs"] / len(jobs), "to_floor": out["ratio"]["workload_runs_to_floor"]}
    return out


def _one_batch(loop: _Loop):
    ft = loop.world.finetune_config(0)
    pairs = next(benign_batches(loop.lang, ft))
    return [p for p, _ in pairs], [t for _, t in pairs]


def plain_means(model, prompts, batch_size: int = 64, pad_id: int = PAD) -> torch.Tensor:
    """What a user would write: batches of ``batch_size`` prompts in the given order, each padded,
    a plain ``output_hidden_states=True`` forward of the full model, the last-token states of every
    layer summed in float64; the mean ``[L+1, d]`` on the model's device."""
    device = next(model.parameters()).device
    total = None
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            lens = torch.tensor([len(p) for p in chunk])
            x = torch.nn.utils.rnn.pad_sequence([torch.tensor(p) for p in chunk], batch_first=True,
                                                padding_value=pad_id).to(device)
            mask = (torch.arange(x.shape[1])[None] < lens[:, None]).long().to(device)
            hs = model(input_ids=x, attention_mask=mask, output_hidden_states=True).hidden_states
            rows, last = torch.arange(len(chunk), device=device), (lens - 1).to(device)
            part = torch.stack([h[rows, last] for h in hs], 1).double().sum(0)
            total = part if total is None else total + part
    return total / len(prompts)


def bench_extraction(world: World, n_probe: int = 512, repeats: int = 15) -> dict:
    """Mean last-token activation at every layer over ``n_probe`` prompts: ours against a
    plain ``output_hidden_states=True`` forward of the full model (batches of 64, the
    prompts padded per batch in the given order, as a user would write it)."""
    set_cpu_threads()
    loop = _Loop.build(world, n_probe)
    model = loop.model.eval()
    prompts = loop.probes.vrev

    def plain() -> torch.Tensor:
        return plain_means(model, prompts)

    tracker = ProbeTracker(model, prompts, "all", pad_id=PAD)
    ours = mean_activations(model, prompts, "all", pad_id=PAD)
    same = bool(torch.allclose(plain(), ours, atol=1e-5)) and bool(torch.allclose(tracker(model), ours, atol=1e-5))
    ms = interleaved({"plain_forward": plain,
                      "mean_activations": lambda: mean_activations(model, prompts, "all", pad_id=PAD),
                      "probe_tracker": lambda: tracker(model)}, repeats)
    return {"n_probe": len(prompts), "same_values": same, "ms": ms,
            "ratio_to_plain": {k: ms[k] / ms["plain_forward"] for k in ("mean_activations", "probe_tracker")}}


def bench_scaling(world: World, widths=(32, 64, 128, 256), n_probes=(16, 64, 128, 512),
                  repeats: int = 20) -> list[dict]:
    """Step and tracking (every layer) milliseconds against width (at the world's n_probe)
    and against the number of probes (at the world's width)."""
    set_cpu_threads()
    rows = []
    base = world.history.model
    cases = [("width", w, dataclasses.replace(base, n_embd=w), None) for w in widths]
    cases += [("n_probe", n, base, n) for n in n_probes]
    for kind, value, mc, n_probe in cases:
        w = dataclasses.replace(world, history=dataclasses.replace(world.history, model=mc))
        loop = _Loop.build(w, n_probe)
        tracker = ProbeTracker(loop.model, loop.probes.drift, "all", pad_id=PAD)
        ms = interleaved({"step": loop.stepper(), "tracking": lambda: tracker(loop.model)}, repeats)
        rows.append({"vary": kind, "value": value, "width": mc.n_embd,
                     "n_probe": len(loop.probes.drift), "step_ms": ms["step"],
                     "tracking_ms": ms["tracking"], "overhead": ms["tracking"] / ms["step"]})
    return rows


def profile_step(world: World, layer: int, steps: int = 40) -> str | None:
    """A pyinstrument profile (text) of tracked fine-tuning steps; None without pyinstrument."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        return None
    set_cpu_threads()
    loop = _Loop.build(world)
    tracker = ProbeTracker(loop.model, loop.probes.drift, [layer], pad_id=PAD)
    step = loop.stepper(after=tracker)
    step()
    prof = Profiler(interval=0.0005)
    prof.start()
    for _ in range(steps):
        step()
    prof.stop()
    return prof.output_text(unicode=False, color=False, show_all=False)


class _PeakRSS(threading.Thread):
    """Samples the summed resident memory of a process and all its descendants (``peak``, the
    page's measure) and their summed proportional set size (``peak_pss``: a page shared by n
    processes, e.g. torch's library code, counted 1/n in each, so it is counted once)."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak, self._stop_event = pid, interval, 0, threading.Event()
        self._since_mark = self._segment = 0
        self.peak_pss = 0

    def mark(self) -> int:
        """The peak since the previous mark (or the start); starts a new segment (a sample begun
        before the mark does not count in it)."""
        out, self._since_mark = self._since_mark, 0
        self._segment += 1
        return out

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop_event.is_set():
            total = pss = 0
            segment = self._segment
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        full = p.memory_full_info()
                        total += full.rss
                        pss += getattr(full, "pss", full.rss)
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            self.peak = max(self.peak, total)
            self.peak_pss = max(self.peak_pss, pss)
            if segment == self._segment:
                self._since_mark = max(self._since_mark, total)
            self._stop_event.wait(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def _timed_book(args: list[str], env: dict) -> dict:
    # unbuffered: each notebook's log line arrives when it is printed, closing that notebook's peak
    return _timed_build([sys.executable, "-u", "-m", "reversion.book", *args], env)


def _timed_build(command: list[str], env: dict) -> dict:
    """Run a book build's ``command``: its time, peak memory (the build's and each notebook's,
    split where the executor logs a notebook's end) and each notebook's seconds."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, cwd=paths.project_root(),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    mon = _PeakRSS(proc.pid)
    mon.start()
    lines, per_notebook = [], {}
    for line in proc.stdout:  # a notebook's peak is the tree's while it ran (up to its log line)
        lines.append(line)
        m = _EXECUTED.search(line)
        if m and m[1] not in per_notebook:  # its first line; the build's summary repeats it at the end
            per_notebook[m[1]] = mon.mark() / 2**30
    proc.wait()
    peak = mon.stop()
    out = "".join(lines)
    if proc.returncode != 0:
        raise RuntimeError(f"book build failed (exit {proc.returncode}):\n{out[-4000:]}")
    return {"seconds": time.perf_counter() - t0, "peak_memory_gib": peak / 2**30,
            "peak_memory_pss_gib": mon.peak_pss / 2**30,
            "notebook_seconds": notebook_seconds(out), "notebook_peak_memory_gib": per_notebook}


_EXECUTED = re.compile(r"\[book\]\s+(\d\d[a-z]?_\w+):?\s+executed in\s+([\d.]+) s")


def notebook_seconds(log: str) -> dict[str, float]:
    """Each executed notebook's seconds, from the book executor's log (a stem is two digits, an
    optional letter and a name)."""
    return {m[1]: float(m[2]) for m in _EXECUTED.finditer(log)}


def bench_book() -> dict:
    """The whole book from an empty cache (``--force``: every notebook re-executed), then
    again with nothing changed. Writes the project's book, as ``make book`` does."""
    with tempfile.TemporaryDirectory(prefix="reversion-bench-cache-") as cache:
        env = {**os.environ, "REVERSION_CACHE": cache}
        cold = _timed_book(["--force"], env)
        warm = _timed_book([], env)
    return {"cold": cold, "warm": warm, "workers": n_workers()}


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cpus": len(os.sched_getaffinity(0)),
            "torch_threads": int(os.environ.get("REVERSION_THREADS", "1")), "workers": n_workers(),
            "cuda": torch.cuda.is_available()}


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=paths.project_root(),
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=paths.project_root(),
                               capture_output=True, text=True).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def run(out: Path, book: bool = True, world: str = "default", repeats: int = 60,
        log: Callable[[str], None] = print, batched: bool = True, histories: int = 10) -> dict:
    """Every benchmark; the JSON written to ``out`` (and profiles beside it). ``histories``: the
    batched workload's histories (each with its lineages)."""
    w = make_world(world)
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": _commit(),
                 "world": world, "machine": machine(), "targets": TARGETS}
    log("per-step costs ...")
    res["steps"] = bench_steps(w, repeats, world)
    log("extraction ...")
    res["extraction"] = bench_extraction(w)
    log("scaling ...")
    res["scaling"] = bench_scaling(w)
    if batched:
        log("batched runs (minutes) ...")
        res["batched"] = bench_batched(w, n_histories=histories, log=log)
        (out.parent / "profile_group_step.txt").write_text(profile_group_step(w))
        res["batched"]["profile"] = "profile_group_step.txt"
    if res["steps"]["overhead"]["tracked_chosen_layer"] > TARGETS["tracking_chosen_layer_overhead"]:
        log("profiling the tracked step ...")
        text = profile_step(w, res["steps"]["layer"])
        if text is not None:
            (out.parent / "profile_tracked_step.txt").write_text(text)
            res["profile"] = "profile_tracked_step.txt"
    log("a LoRA step in a Trainer, with and without the monitor ...")
    res["lora"] = bench_lora(repeats=repeats)
    if torch.cuda.is_available():
        log("a TinyLlama-shape model on the GPU ...")
        res["gpu"] = bench_large()
    if book:
        log("book, cold and warm (minutes) ...")
        res["book"] = bench_book()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, out)  # a killed benchmark never leaves half a file
    return res
