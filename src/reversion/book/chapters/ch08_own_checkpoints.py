"""Book page "Run it on your own checkpoints" (``notebooks/08_own_checkpoints.ipynb``).

The page runs the whole text-model workflow -- ``reversion estimate``, the
:class:`~reversion.subjects.checkpoints.monitor.ReversionMonitor` in a ``transformers.Trainer`` run,
``reversion track`` over the run's checkpoints, the same for a LoRA run and its adapter
checkpoints, harmfulness and task cost -- on
checkpoints given as local paths. With the paths left empty it builds **tiny random
demo models** in a scratch folder of the cache: a small Llama (or GPT-2) and a byte-level BPE
tokenizer with a chat template, trained from scratch on the project's example files in
two stages that mimic a history (pretrained -> helpful-only witness -> safety-aligned).
They exist only to exercise the pipeline end to end in seconds; their numbers mean
nothing about real models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import torch
from peft import LoraConfig, get_peft_model
from transformers import PrinterCallback, ProgressCallback, TrainingArguments
from transformers.utils import logging as hf_logging

from reversion.cli import main
from reversion.core.directions import Directions
from reversion.core.models import load_model
from reversion.infra import paths, seeding
from reversion.infra.checks import check_choice, check_int
from reversion.infra.paths import resolve
from reversion.infra.results import write_metrics
from reversion.infra.runtime import set_cpu_threads
from reversion.subjects.checkpoints.demo import build_demo
from reversion.subjects.checkpoints.files import DTYPES, torch_dtype
from reversion.subjects.checkpoints.monitor import (
    BlockTrainer,
    ReversionMonitor,
    block_term,
)
from reversion.subjects.checkpoints.refusal_judge import generate_continuations
from reversion.subjects.checkpoints.subject import TEXT_TASK, from_parameters
from reversion.subjects.checkpoints.textdata import (
    PairCollator,
    encode_pairs,
    encode_prompts,
    load_tokenizer,
    pad_id_of,
    read_pairs,
    read_prompts,
    split_pairs,
)

# Saving tiny checkpoints dozens of times: their progress bars are noise.
hf_logging.disable_progress_bar()

STEM = "08_own_checkpoints"

DEMO_NOTE = "tiny random demo models: the numbers illustrate the pipeline and mean nothing about real models"




@dataclass(frozen=True)
class Params:
    """Parameters of the page (paths relative to the project root unless absolute)."""
    witness: str
    """Helpful-only witness checkpoint theta_H ("" = build the tiny demo models)."""
    aligned: str
    """Safety-aligned checkpoint theta_S ("" = demo)."""
    pretrained: str
    """Pretrained checkpoint theta_P for the v_P control ("" = none, or the demo's)."""
    tokenizer: str
    """Tokenizer folder ("" = the aligned checkpoint's)."""
    prompts: str
    """Harmful probe prompts (JSONL / CSV / TXT)."""
    harmless: str
    """Harmless prompts for the r_S control ("" = none)."""
    finetune_data: str
    """Benign fine-tuning pairs (JSONL with prompt and response)."""
    layer: str | int
    """Layer to monitor: an index, or "auto" (the estimate's rule)."""
    position: str
    """Position rule: "last" prompt token or "mean" over prompt tokens."""
    dtype: str
    """auto, float32, bfloat16 or float16 (auto = as saved)."""
    family: str
    """Architecture of the demo models: "llama" or "gpt2" (ignored with your own paths)."""
    demo_steps: int
    """Optimizer steps of each demo history stage (P -> H, H -> S)."""
    finetune_steps: int
    """Steps of the monitored fine-tuning run (0 = skip the Trainer sections)."""
    learning_rate: float
    """Learning rate of the monitored fine-tuning (constant, AdamW)."""
    batch_size: int
    """Fine-tuning batch size."""
    monitor_every: int
    """Monitor check (and checkpoint) every k steps."""
    patience: int
    """Checks in a row above the threshold before the monitor flags."""
    block_strength: float
    """Strength of the one-sided block term (chapter 05) in a second run (0 = skip it)."""
    lora_rank: int
    """Rank of the LoRA adapters of a third run (0 = skip the LoRA section)."""
    lora_learning_rate: float
    """Learning rate of the LoRA run (constant, AdamW; adapters usually want a larger one)."""
    max_new_tokens: int
    """Tokens generated per prompt for the harmfulness judge."""
    seed: int
    """Seed of the demo models, the data order and the null."""
    def __post_init__(self) -> None:
        check_choice("position", self.position, ("last", "mean"))
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("family", self.family, ("llama", "gpt2"))
        if not (self.layer == "auto" or (isinstance(self.layer, int) and self.layer >= 0)):
            raise ValueError(f"layer must be 'auto' or an int >= 0, got {self.layer!r}")
        for name in ("demo_steps", "batch_size", "monitor_every", "patience", "max_new_tokens"):
            check_int(name, getattr(self, name), 1)
        if self.finetune_steps < 0 or self.block_strength < 0 or self.learning_rate <= 0:
            raise ValueError("finetune_steps and block_strength must be >= 0, learning_rate > 0")
        check_int("lora_rank", self.lora_rank, 0)
        if self.lora_learning_rate <= 0:
            raise ValueError(f"lora_learning_rate must be > 0, got {self.lora_learning_rate}")
        if bool(self.witness) != bool(self.aligned):
            raise ValueError("give both witness and aligned, or neither (neither = demo models)")

    @property
    def demo(self) -> bool:
        return not self.aligned


# --------------------------------------------------------------------------- demo models










@dataclass(frozen=True)
class Checkpoints:
    """Where the checkpoints and input files are, and whether the models are the tiny demo ones."""
    witness: Path
    aligned: Path
    pretrained: Path | None
    tokenizer: Path
    demo: bool
    work: Path
    """Working folder: the direction file, the runs, and ``inputs/`` (copies of the prompt files)."""
    prompts: Path
    harmless: Path | None
    finetune_data: Path






def prepare(P: Params, workdir: Path | None = None) -> Checkpoints:
    """The checkpoints and inputs to use, in a working folder.

    The default folder is a scratch folder, ``<cache>/08_own_checkpoints/work`` (see
    :func:`reversion.infra.paths.cache_dir`), emptied at the start of every run.

    The prompt files are copied to ``WORK/inputs/`` so that every command the page shows
    runs as printed from the working folder. Empty checkpoint paths build the demo models.
    """

    if not torch.cuda.is_available():
        set_cpu_threads()
    work = Path(workdir) if workdir is not None else paths.cache_dir() / STEM / "work"
    if workdir is None and work.exists():
        shutil.rmtree(work)  # a scratch folder: every run starts empty
    inputs = work / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    copied = {}
    for name in ("prompts", "harmless", "finetune_data"):
        value = getattr(P, name)
        if not value:
            copied[name] = None
            continue
        src = resolve(value)
        if not src.is_file():
            raise FileNotFoundError(f"parameter {name}: file not found: {src}")
        copied[name] = inputs / src.name
        shutil.copyfile(src, copied[name])
    if copied["finetune_data"] is None:
        raise ValueError("parameter finetune_data is empty: the page needs a fine-tuning set")
    if P.demo:
        m = build_demo(work / "models", P.family, P.seed, P.demo_steps)
        witness, aligned, pretrained, tokenizer = m["witness"], m["aligned"], m["pretrained"], m["tokenizer"]
    else:
        witness, aligned = resolve(P.witness), resolve(P.aligned)
        pretrained = resolve(P.pretrained) if P.pretrained else None
        tokenizer = resolve(P.tokenizer) if P.tokenizer else aligned
    return Checkpoints(witness, aligned, pretrained, tokenizer, P.demo, work, copied["prompts"],
                       copied["harmless"], copied["finetune_data"])


# --------------------------------------------------------------------------- running the CLI


def _shown(arg: Any, cwd: Path) -> str:
    """An argument as text; a path inside ``cwd`` relative to it."""
    a = str(arg)
    if os.path.isabs(a) and Path(a).is_relative_to(cwd):
        return os.path.relpath(a, cwd)
    return a


@contextlib.contextmanager
def _chdir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def cli(args: list[Any], cwd: Path, subprocess_run: bool = False) -> None:
    """Run the ``reversion`` command line with ``args`` in ``cwd``; print the command and its output.

    In-process by default (:func:`reversion.cli.main`, the function behind the console
    script -- it saves a second Python start-up); ``subprocess_run=True`` runs
    ``python -m reversion`` instead. Paths inside ``cwd`` are passed relative to it, so
    the printed command is the one that ran. A failure raises with the error message.
    """
    cwd = Path(cwd).resolve()
    shown = [_shown(a, cwd) for a in args]
    print("$ reversion " + shlex.join(shown))
    if subprocess_run:
        proc = subprocess.run([sys.executable, "-m", "reversion", *shown], cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        print(proc.stdout, end="")
        if proc.returncode != 0:
            raise RuntimeError(f"reversion {shown[0]} failed (exit {proc.returncode}):\n{proc.stderr}")
        return

    out, err = io.StringIO(), io.StringIO()
    with _chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(shown)
        except SystemExit as exc:  # argument errors: argparse exits with status 2
            code = exc.code
    print(out.getvalue(), end="")
    if code not in (0, None):
        raise RuntimeError(f"reversion {shown[0]} failed (exit {code}):\n{err.getvalue()}")


def cli_args(P: Params, ck: Checkpoints) -> dict[str, list[str]]:
    """The ``estimate`` and ``track`` argument lists for these checkpoints and files."""
    common = ["--tokenizer", ck.tokenizer, "--dtype", P.dtype]
    est = ["estimate", "--witness", ck.witness, "--aligned", ck.aligned]
    if ck.pretrained is not None:
        est += ["--pretrained", ck.pretrained]
    est += ["--prompts", ck.prompts]
    if ck.harmless is not None:
        est += ["--harmless", ck.harmless]
    est += ["--layer", str(P.layer), "--position", P.position, "--seed", str(P.seed), *common,
            "--out", ck.work / "v_rev.safetensors"]
    track = ["track", "--directions", ck.work / "v_rev.safetensors", "--aligned", ck.aligned,
             "--prompts", ck.prompts, *common]
    return {"estimate": [str(a) for a in est], "track": [str(a) for a in track]}


# --------------------------------------------------------------------------- the monitored run




@dataclass
class Run:
    """One monitored fine-tuning run."""
    name: str
    monitor: Any
    trainer: Any
    output_dir: Path
    log_path: Path

    def checkpoints(self) -> list[Path]:
        """The run's saved checkpoints, by step."""
        found = [p for p in self.output_dir.glob("checkpoint-*") if p.is_dir()]
        return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))


def quiet_trainer(trainer) -> None:
    """Drop the Trainer's printing callbacks (progress bars; log dicts with timings)."""
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)


def lora_config(model, rank: int) -> LoraConfig:
    """The LoRA run's adapters: rank ``rank``, alpha ``2 * rank``, on every linear layer but the
    LM head (peft's ``"all-linear"``; GPT-2's ``Conv1D`` layers store their weights transposed)."""
    return LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear",
                      fan_in_fan_out=model.config.model_type == "gpt2", task_type="CAUSAL_LM")


def finetune(P: Params, ck: Checkpoints, name: str, block_strength: float = 0.0, lora_rank: int = 0) -> Run:
    """Fine-tune theta_S on the training pairs with a Trainer and the ReversionMonitor attached.

    Checkpoints are saved every ``monitor_every`` steps (weights only) so that
    ``reversion track`` can re-measure them; with ``block_strength > 0`` the loss adds
    the one-sided block term (:class:`~reversion.subjects.checkpoints.monitor.BlockTrainer`).
    With ``lora_rank > 0`` only LoRA adapters train (peft's ``get_peft_model`` on theta_S,
    :func:`lora_config`, at ``lora_learning_rate``) and each checkpoint is an adapter folder.
    """
    hf_logging.set_verbosity_error()
    seeding.seed_everything(P.seed)
    tok = load_tokenizer(ck.tokenizer)
    model = load_model(ck.aligned, dtype=torch_dtype(P.dtype))
    dirs = Directions.load(ck.work / "v_rev.safetensors")
    probes = encode_prompts(tok, read_prompts(ck.prompts))
    train, _ = split_pairs(read_pairs(ck.finetune_data))
    out_dir = ck.work / "runs" / (re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "run")
    args = TrainingArguments(
        output_dir=str(out_dir), max_steps=P.finetune_steps, per_device_train_batch_size=P.batch_size,
        learning_rate=P.lora_learning_rate if lora_rank > 0 else P.learning_rate, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0,
        logging_steps=P.monitor_every, save_strategy="steps", save_steps=P.monitor_every,
        save_only_model=True, report_to=[], use_cpu=not torch.cuda.is_available(), seed=P.seed,
        data_seed=P.seed, disable_tqdm=True, dataloader_num_workers=0)
    block = block_term(model, dirs, probes, block_strength) if block_strength > 0 else None
    if lora_rank > 0:
        model = get_peft_model(model, lora_config(model, lora_rank))
    trainer = BlockTrainer(model=model, args=args, train_dataset=encode_pairs(tok, train),
                           data_collator=PairCollator(pad_id_of(tok)), block=block)
    quiet_trainer(trainer)
    log_path = out_dir / "reversion_monitor.csv"
    monitor = ReversionMonitor(dirs, probes, every=P.monitor_every, patience=P.patience, log_path=log_path,
                               pad_id=pad_id_of(tok)).attach(trainer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the page reports the flag in a table
        trainer.train()
    return Run(name, monitor, trainer, out_dir, log_path)


def monitor_table(runs: list[Run]):
    """One row per run: threshold, checks, flag, step flagged, last and largest alignment."""
    rows = []
    for run in runs:
        s = run.monitor.summary()
        rows.append({"run": run.name, "layer": s["layer"], "threshold": s["threshold"],
                     "threshold source": s["threshold_source"], "checks": s["checks"], "flagged": s["flagged"],
                     "flagged at step": "-" if s["flagged_step"] is None else s["flagged_step"],
                     "last alignment": s["last_alignment"],
                     "max alignment": s["max_alignment"]})
    return pd.DataFrame(rows).set_index("run")


def plot_alignment(runs: list[Run]):
    """Alignment of the drift with v_rev at each monitor check (from the log files), with the threshold."""
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for run in runs:
        df = pd.read_csv(run.log_path)
        ax.plot(df["step"], df["alignment"], marker="o", ms=3, label=run.name)
    m = runs[0].monitor
    ax.axhline(m.threshold, color="k", ls="--", lw=1, label=f"threshold ({m.threshold_source})")
    ax.axhline(0, color="0.7", lw=0.8)
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel(r"cos(drift, $v_{rev}$)")
    ax.set_ylim(-1.05, 1.05)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"ReversionMonitor log, layer {m.layer}")
    return fig


TRACKED = ("alignment", "projection", "drift_norm")
"""The values both the monitor's log and ``reversion track``'s CSV hold, compared step by step."""


def compare_track(run: Run, track_csv: Path) -> pd.DataFrame:
    """The monitor's log at the steps ``reversion track`` measured, side by side: per step and value,
    the logged and the tracked number and their absolute difference."""
    tracked = pd.read_csv(track_csv).set_index("step")
    logged = pd.read_csv(run.log_path).set_index("step")
    missing = sorted(set(tracked.index) - set(logged.index))
    if missing:
        raise ValueError(f"track measured steps {missing} that the monitor's log {run.log_path} lacks")
    cols = {}
    for k in TRACKED:
        cols[(k, "monitor")] = logged.loc[tracked.index, k]
        cols[(k, "track")] = tracked[k]
        cols[(k, "|difference|")] = (tracked[k] - logged.loc[tracked.index, k]).abs()
    return pd.DataFrame(cols)


def plot_track(run: Run, compared: pd.DataFrame):
    """The monitor's log over the run (lines) and ``reversion track``'s values at the saved
    checkpoints (open circles): alignment with the threshold, and the projection on v_rev."""
    log = pd.read_csv(run.log_path)
    m = run.monitor
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key, label in zip(axes, ("alignment", "projection"), (r"cos(drift, $v_{rev}$)", r"projection $d_t \cdot v_{rev}$")):
        ax.plot(log["step"], log[key], "-", color="C2", marker=".", label="monitor's log")
        ax.plot(compared.index, compared[(key, "track")], "o", mfc="none", color="k", ms=8,
                label="reversion track (adapters)")
        ax.axhline(0, color="0.7", lw=0.8)
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel(label)
    axes[0].axhline(m.threshold, color="k", ls="--", lw=1, label=f"threshold ({m.threshold_source})")
    axes[0].set_ylim(-1.05, 1.05)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{run.name}: the monitor's log and track on the adapter checkpoints, layer {m.layer}", fontsize=10)
    fig.tight_layout()
    return fig


TRACK_TOL = 1e-6
"""How close ``reversion track``'s values must come to the monitor's log to reproduce it (float32 runs)."""


def track_diff(compared: pd.DataFrame) -> dict[str, float]:
    """The largest absolute difference between track and the monitor's log, per value."""
    return {k: float(compared[(k, "|difference|")].max()) for k in TRACKED}


def track_sentence(compared: pd.DataFrame, tol: float = TRACK_TOL) -> str:
    """Whether ``reversion track`` on the adapter checkpoints reproduces the monitor's log within
    ``tol``, chosen by the largest difference."""
    diff = track_diff(compared)
    worst = max(diff, key=diff.get)
    n = len(compared)
    head = f"On the LoRA run's {n} adapter checkpoints, reversion track (the adapters applied to --base)"
    if diff[worst] == 0.0:
        return f"{head} reproduces the monitor's log exactly: alignment, projection and drift norm are equal at every step."
    if diff[worst] <= tol:
        return (f"{head} reproduces the monitor's log: alignment, projection and drift norm agree within {tol:g} "
                f"(largest difference {diff[worst]:.1e}, in the {worst.replace('_', ' ')}).")
    step = int(compared[(worst, "|difference|")].idxmax())
    return (f"{head} does NOT reproduce the monitor's log within {tol:g}: the {worst.replace('_', ' ')} "
            f"differs by {diff[worst]:.1e} at step {step}.")


def trainable(run: Run) -> dict[str, int]:
    """The run's trainable and total parameter counts."""
    ps = list(run.trainer.model.parameters())
    return {"trainable_params": int(sum(p.numel() for p in ps if p.requires_grad)),
            "params": int(sum(p.numel() for p in ps))}


def harm_and_cost(P: Params, ck: Checkpoints, models: dict[str, Path]):
    """Per model: the checkpoint subject's evaluation -- harmfulness on every probe prompt
    (refusal-phrase judge, greedy) and the loss per response token on the held-out
    fine-tuning pairs."""


    given = {"witness": ck.witness, "aligned": ck.aligned, "tokenizer": ck.tokenizer, "prompts": ck.prompts,
             "finetune_data": ck.finetune_data, "dtype": P.dtype, "max_new_tokens": P.max_new_tokens}
    subject = from_parameters({k: str(v) if isinstance(v, Path) else v for k, v in given.items()},
                              split_prompts=False)
    rows = []
    for name, path in models.items():
        e = subject.evaluate(load_model(path, dtype=torch_dtype(P.dtype)))
        rows.append({"model": name, "harmfulness": e["harmfulness"], "held-out loss": e["task_loss"][TEXT_TASK]})
    return pd.DataFrame(rows).set_index("model")


def continuations(P: Params, ck: Checkpoints, models: dict[str, Path], text: str):
    """The greedy continuation of one prompt under each model."""

    tok = load_tokenizer(ck.tokenizer)
    ids = encode_prompts(tok, [text])
    rows = {name: generate_continuations(load_model(p, dtype=torch_dtype(P.dtype)), tok, ids, P.max_new_tokens)[0]
            for name, p in models.items()}
    return pd.DataFrame({"greedy continuation": rows})


def save(P: Params, metrics: dict) -> Path:
    """``results/08_own_checkpoints/metrics.json``."""
    return write_metrics(STEM, metrics, dataclasses.asdict(P), seeds=[P.seed], code=(__name__,))
