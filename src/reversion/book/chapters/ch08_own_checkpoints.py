"""Book page "Run it on your own checkpoints" (``notebooks/08_own_checkpoints.ipynb``).

The page runs the whole text-model workflow -- ``reversion estimate``, the
:class:`~reversion.subjects.checkpoints.trainer_hooks.ReversionMonitor` in a ``transformers.Trainer`` run,
the tracking stage (``reversion track``, :func:`reversion.stages.track.track`) over the run's
checkpoints, the same for a LoRA run and its adapter checkpoints, harmfulness and task cost -- on
checkpoints given as local paths. With the paths left empty it builds **tiny random
demo models** in a scratch folder of the cache: a small Llama (or GPT-2) and a byte-level BPE
tokenizer with a chat template, trained from scratch on the project's example files in
two stages that mimic a history (pretrained -> helpful-only witness -> safety-aligned).
They exist only to exercise the pipeline end to end in seconds; their numbers mean
nothing about real models.

:func:`run` is the page's computation (the notebook and the tests call it); what loads, trains or
runs a model lives below the page (:mod:`reversion.subjects.checkpoints.walkthrough`,
:mod:`reversion.subjects.checkpoints.reader`, :mod:`reversion.stages.track`); ``reversion
estimate`` runs as the command line, in a subprocess.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from reversion.core.directions import Directions
from reversion.infra import paths
from reversion.infra.checks import check_choice, check_int
from reversion.infra.paths import resolve
from reversion.infra.results import write_metrics
from reversion.stages.track import Checkpoint, TrackResult, track
from reversion.subjects.checkpoints import walkthrough
from reversion.subjects.checkpoints.demo import build_demo
from reversion.subjects.checkpoints.files import DTYPES
from reversion.subjects.checkpoints.reader import CheckpointReader
from reversion.subjects.checkpoints.subject import from_parameters
from reversion.subjects.checkpoints.textdata import read_prompts
from reversion.subjects.checkpoints.walkthrough import MonitoredRun

STEM = "08_own_checkpoints"
CODE = (__name__, "reversion.cli")
"""The modules behind the page's numbers: its own (and what it imports) and the command line it runs."""

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
    """Strength of the one-sided block term (the Interventions chapter) in a second run (0 = skip it)."""
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


# --------------------------------------------------------------------------- checkpoints and inputs


@dataclass(frozen=True)
class Checkpoints:
    """Where the checkpoints and input files are, and whether the models are the tiny demo ones."""
    witness: Path
    """Helpful-only witness theta_H."""
    aligned: Path
    """Safety-aligned theta_S (every run starts from it)."""
    pretrained: Path | None
    """Pretrained theta_P (None: none)."""
    tokenizer: Path
    """Tokenizer folder."""
    demo: bool
    """The tiny demo models."""
    work: Path
    """Working folder: the direction file, the runs, and ``inputs/`` (copies of the prompt files)."""
    prompts: Path
    """Harmful probe prompts (copied into ``inputs/``)."""
    harmless: Path | None
    """Harmless prompts (copied; None: none)."""
    finetune_data: Path
    """Benign fine-tuning pairs (copied)."""


def prepare(P: Params, workdir: Path | None = None) -> Checkpoints:
    """The checkpoints and inputs to use, in a working folder.

    The default folder is a scratch folder, ``<cache>/08_own_checkpoints/work`` (see
    :func:`reversion.infra.paths.cache_dir`), emptied at the start of every run.

    The prompt files are copied to ``WORK/inputs/`` so that every command the page shows
    runs as printed from the working folder. Empty checkpoint paths build the demo models.
    """
    walkthrough.use_cpu_threads()
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


# --------------------------------------------------------------------------- the command line


def _shown(arg: Any, cwd: Path) -> str:
    """An argument as text; a path inside ``cwd`` relative to it."""
    a = str(arg)
    if os.path.isabs(a) and Path(a).is_relative_to(cwd):
        return os.path.relpath(a, cwd)
    return a


def shown_command(args: list[Any], cwd: Path) -> str:
    """``$ reversion ARGS`` as printed, paths inside ``cwd`` relative to it."""
    return "$ reversion " + shlex.join(_shown(a, Path(cwd).resolve()) for a in args)


def command(args: list[Any], cwd: Path) -> str:
    """Run ``python -m reversion ARGS`` in ``cwd`` (paths inside it passed relative to it, so the
    printed command is the one that ran); return the command and its output. A failure raises
    with the error message."""
    cwd = Path(cwd).resolve()
    shown = [_shown(a, cwd) for a in args]
    proc = subprocess.run([sys.executable, "-m", "reversion", *shown], cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"reversion {shown[0]} failed (exit {proc.returncode}):\n{proc.stderr}")
    return shown_command(args, cwd) + "\n" + proc.stdout


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


# --------------------------------------------------------------------------- the runs


def finetune(P: Params, ck: Checkpoints, name: str, block_strength: float = 0.0, lora_rank: int = 0) -> MonitoredRun:
    """One monitored fine-tuning run of theta_S (:func:`reversion.subjects.checkpoints.walkthrough.finetune`)
    with the page's schedule: a checkpoint every ``monitor_every`` steps; ``block_strength > 0``
    adds the block term; ``lora_rank > 0`` trains LoRA adapters at ``lora_learning_rate``."""
    out_dir = ck.work / "runs" / (re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "run")
    return walkthrough.finetune(
        name, aligned=ck.aligned, tokenizer=ck.tokenizer, directions=ck.work / "v_rev.safetensors",
        prompts=ck.prompts, finetune_data=ck.finetune_data, output_dir=out_dir, steps=P.finetune_steps,
        batch_size=P.batch_size, learning_rate=P.lora_learning_rate if lora_rank > 0 else P.learning_rate,
        every=P.monitor_every, patience=P.patience, seed=P.seed, dtype=P.dtype, block_strength=block_strength,
        lora_rank=lora_rank)


def track_run(P: Params, ck: Checkpoints, run: MonitoredRun, base: Path | None = None) -> TrackResult:
    """The tracking stage on a run's saved checkpoints (``reversion track`` with :func:`cli_args`'s
    arguments; adapter checkpoints apply to ``base``), labelled by their paths in the working folder."""
    reader = CheckpointReader(ck.aligned, ck.prompts, base=base, tokenizer=ck.tokenizer, dtype=P.dtype)
    return track(ck.work / "v_rev.safetensors", reader,
                 [Checkpoint.at(p, _shown(p, ck.work.resolve())) for p in run.checkpoints()])


def track_command(P: Params, ck: Checkpoints, run: MonitoredRun, base: Path | None = None) -> str:
    """The ``reversion track`` command that gives :func:`track_run`'s readings."""
    extra = ["--base", str(base)] if base is not None else []
    return shown_command(cli_args(P, ck)["track"] + extra + [str(p) for p in run.checkpoints()], ck.work)


@dataclass(frozen=True)
class Result:
    """Everything the page shows (:func:`run`)."""
    checkpoints: Checkpoints
    """The checkpoints and input files."""
    estimate_output: str
    """``reversion estimate``'s command and printed output."""
    directions: Directions
    """The direction file it wrote."""
    runs: tuple[MonitoredRun, ...]
    """The monitored full fine-tuning runs (``finetuned``, ``finetuned+block``; none with finetune_steps = 0)."""
    tracked: TrackResult | None
    """The tracking stage on the first run's checkpoints (None: no run)."""
    track_command: str | None
    """The ``reversion track`` command giving ``tracked``."""
    lora: MonitoredRun | None
    """The LoRA run (None: skipped)."""
    lora_tracked: TrackResult | None
    """The tracking stage on the LoRA run's adapter checkpoints."""
    lora_track_command: str | None
    """The ``reversion track`` command giving ``lora_tracked``."""
    evaluation: dict[str, dict[str, float]]
    """Per model (theta_H, theta_S, each run's last checkpoint): harmfulness and held-out loss."""
    continuations: dict[str, str]
    """Per model: the greedy continuation of the first probe prompt."""


def run(P: Params, workdir: Path | None = None) -> Result:
    """The page's computation: prepare the checkpoints (the demo models when no paths are given),
    ``reversion estimate``, the monitored runs, the tracking stage on their checkpoints, the LoRA
    run and its adapters, harmfulness and task cost."""
    ck = prepare(P, workdir)
    estimate_output = command(cli_args(P, ck)["estimate"], ck.work)
    dirs = Directions.load(ck.work / "v_rev.safetensors")
    runs = []
    if P.finetune_steps > 0:
        runs.append(finetune(P, ck, "finetuned"))
        if P.block_strength > 0:
            runs.append(finetune(P, ck, "finetuned+block", P.block_strength))
    tracked = track_run(P, ck, runs[0]) if runs else None
    lora = finetune(P, ck, "lora", lora_rank=P.lora_rank) if P.finetune_steps > 0 and P.lora_rank > 0 else None
    lora_tracked = track_run(P, ck, lora, base=ck.aligned) if lora else None
    models = {"theta_H": ck.witness, "theta_S": ck.aligned}
    models.update({r.name: r.checkpoints()[-1] for r in runs})  # each run's last checkpoint
    given = {"witness": ck.witness, "aligned": ck.aligned, "tokenizer": ck.tokenizer, "prompts": ck.prompts,
             "finetune_data": ck.finetune_data, "dtype": P.dtype, "max_new_tokens": P.max_new_tokens}
    subject = from_parameters({k: str(v) if isinstance(v, Path) else v for k, v in given.items()},
                              split_prompts=False)
    evaluation = walkthrough.evaluate(subject, models, P.dtype)
    conts = walkthrough.continuations(ck.tokenizer, models, read_prompts(ck.prompts)[0], P.max_new_tokens, P.dtype)
    return Result(ck, estimate_output, dirs, tuple(runs), tracked,
                  track_command(P, ck, runs[0]) if runs else None, lora, lora_tracked,
                  track_command(P, ck, lora, base=ck.aligned) if lora else None, evaluation, conts)


# --------------------------------------------------------------------------- tables and figures


def monitor_table(runs: list[MonitoredRun]):
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


def plot_alignment(runs: list[MonitoredRun]):
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
"""The values both the monitor's log and the tracking stage's readings hold, compared step by step."""


def compare_track(run: MonitoredRun, tracked: TrackResult) -> pd.DataFrame:
    """The monitor's log at the steps the tracking stage read, side by side: per step and value,
    the logged and the tracked number and their absolute difference."""
    at = pd.DataFrame(tracked.records(tracked.layer)).set_index("step")
    logged = pd.read_csv(run.log_path).set_index("step")
    missing = sorted(set(at.index) - set(logged.index))
    if missing:
        raise ValueError(f"track measured steps {missing} that the monitor's log {run.log_path} lacks")
    cols = {}
    for k in TRACKED:
        cols[(k, "monitor")] = logged.loc[at.index, k]
        cols[(k, "track")] = at[k]
        cols[(k, "|difference|")] = (at[k] - logged.loc[at.index, k]).abs()
    return pd.DataFrame(cols)


def plot_track(run: MonitoredRun, compared: pd.DataFrame):
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


def tracked_table(result: TrackResult) -> pd.DataFrame:
    """The readings at the tracked layer, one row per checkpoint."""
    cols = ["checkpoint", "step", "alignment", "projection", "drift_norm", "relative_projection", "above"]
    return pd.DataFrame(result.records(result.layer))[cols].set_index("checkpoint")


def harm_table(res: Result) -> pd.DataFrame:
    """Per model: harmfulness and held-out loss."""
    return pd.DataFrame([{"model": k, "harmfulness": v["harmfulness"], "held-out loss": v["heldout_loss"]}
                         for k, v in res.evaluation.items()]).set_index("model")


def continuation_table(res: Result) -> pd.DataFrame:
    """The greedy continuation of the first probe prompt under each model."""
    return pd.DataFrame({"greedy continuation": res.continuations})


def agree(res: Result, tol: float = TRACK_TOL) -> bool:
    """Whether the tracking stage reproduces the first run's monitor log (alignment within ``tol``)."""
    return track_diff(compare_track(res.runs[0], res.tracked))["alignment"] < tol


# --------------------------------------------------------------------------- metrics and sentences


def metrics(res: Result, P: Params) -> dict:
    """The page's numbers (``metrics.json``): numbers and flags only, no sentences or tables."""
    dirs, layer = res.directions, res.directions.layer
    out = {
        "demo_models": res.checkpoints.demo, "layer": layer, "n_layers": int(dirs.v_rev.shape[0] - 1),
        "hidden_size": int(dirs.v_rev.shape[1]),
        "matched_p99": dirs.meta["matched_p99"][layer], "isotropic_p99": dirs.meta["isotropic_p99"],
        "monitor": {r.name: r.monitor.summary() for r in res.runs},
        "harmfulness": {k: v["harmfulness"] for k, v in res.evaluation.items()},
        "heldout_loss": {k: v["heldout_loss"] for k, v in res.evaluation.items()},
        "lora": None,
    }
    if res.lora is not None:
        compared = compare_track(res.lora, res.lora_tracked)
        diff = track_diff(compared)
        out["lora"] = {"rank": P.lora_rank, **res.lora.trainable(), "monitor": res.lora.monitor.summary(),
                       "adapter_checkpoints": len(compared), "track_max_abs_diff": diff,
                       "track_tolerance": TRACK_TOL, "track_reproduces_monitor": max(diff.values()) <= TRACK_TOL}
    return out


def sentences(res: Result) -> dict[str, Any]:
    """The summary's glued values, chosen by the numbers."""
    out: dict[str, Any] = {"layer": res.directions.layer}
    mon = res.runs[0].monitor.summary() if res.runs else None
    if mon is None:
        out["monitor_sentence"] = "No fine-tuning run was monitored (finetune_steps = 0)."
        out["track_sentence"] = "No checkpoints were tracked."
    else:
        out["monitor_sentence"] = (
            f"In the monitored fine-tuning run the largest alignment was {mon['max_alignment']:.3f} against "
            f"a threshold of {mon['threshold']:.3f} ({mon['threshold_source']}); the monitor "
            + (f"flagged the run at step {mon['flagged_step']}." if mon["flagged"] else "did not flag it."))
        out["track_sentence"] = "Re-measured from the saved checkpoints, reversion track " + (
            "reproduces the monitor's numbers." if agree(res) else "does NOT reproduce the monitor's numbers.")
    if res.lora is None:
        out["lora_track_sentence"] = out["lora_sentence"] = "No LoRA run was made (lora_rank = 0 or finetune_steps = 0)."
    else:
        ls, tr = res.lora.monitor.summary(), res.lora.trainable()
        said = track_sentence(compare_track(res.lora, res.lora_tracked))
        out["lora_track_sentence"] = said
        out["lora_sentence"] = (
            f"The LoRA run trained {tr['trainable_params']:,} of {tr['params']:,} parameters; its largest alignment "
            f"was {ls['max_alignment']:.3f} and the monitor "
            + (f"flagged it at step {ls['flagged_step']}. " if ls["flagged"] else "did not flag it. ") + said)
    return out


def save(P: Params, metrics: dict) -> Path:
    """``results/08_own_checkpoints/metrics.json``."""
    return write_metrics(STEM, metrics, dataclasses.asdict(P), seeds=[P.seed], code=CODE)
