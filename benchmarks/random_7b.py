"""What the chapters on your checkpoints cost at a 7B shape: a random-weight triple, built here.

On the machine it runs on, and downloading nothing, this script builds a random-weight
pretrained / aligned / witness triple of a published 7B configuration (``--shape llama2-7b``:
Llama-2-7B, ~13.5 GB a model in bf16; ``--shape qwen2.5-7b``: Qwen2.5-7B, ~15.2 GB), saved one
after another with ``save_pretrained`` as bf16 safetensors (aligned = pretrained plus a small
random perturbation, witness = aligned plus another), a byte-level BPE tokenizer trained here on
``examples/*.jsonl`` with a chat template (saved in every folder), and two LoRA adapter
checkpoints of the aligned model. Then, with the settings of ``notebooks/params/checkpoints/``
(bf16 weights, LoRA in bf16 autocast with gradient checkpointing, their learning rate, batch size
and ``max_new_tokens``; fewer steps), it runs and measures:

1. ``reversion estimate`` (witness, aligned, pretrained; the harmless control),
2. ``reversion track`` on the two adapter checkpoints,
3. the Alignment chapter (``ch03_alignment.run``; 2 seeds, its minimum),
4. a reduced main comparison of the Interventions chapter: baseline, rehearsal, block along
   v_rev and along a random direction, push along v_rev, one seed. The chapter itself refuses
   one seed on checkpoints (its intervals are over seeds), so this runs its plan, calibration
   and runs (:mod:`reversion.analysis.arm_runs`, :mod:`reversion.stages.calibrate`,
   :func:`reversion.stages.finetune.finetune_many`) for seed 0, without the comparison.

Each part's wall time and peak memory (on a GPU ``torch.cuda.max_memory_allocated`` and
``max_memory_reserved``; always the peak resident memory of this process and its children,
sampled every 50 ms) go into a JSON file, rewritten after every part, so a run cut short keeps
what it measured. A part that fails (out of memory, say) is recorded with its error, the parts
that do not need it still run, and the exit status is 1. **Random weights: every number but
seconds and bytes is meaningless**; the script measures cost, and that everything runs.

    PYTHONPATH=src python3 benchmarks/random_7b.py --shape llama2-7b --out /big/disk/r7b \\
        --json $OUT/random_7b.json                        # one GPU, ~41 GB of disk, < 10 minutes
    .venv/bin/python benchmarks/random_7b.py --shape tiny  # the same code, tiny, on the CPU (seconds)

``--shape tiny`` runs every part at a tiny Llama shape on the CPU (``tests/test_random_7b.py``).
The 7B shapes need a CUDA GPU and disk for three models; both are checked before anything is
built, as are the imports every part needs: the project's dependencies (requirements.txt),
IPython included, which the chapter modules import. Models already built at ``--out`` (same
shape) are reused; ``--keep`` keeps them at the end (default: removed, they are ~41 GB).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "notebooks" / "params" / "checkpoints"
GiB = 1024 ** 3

# Published config.json values (hub: meta-llama/Llama-2-7b-hf, Qwen/Qwen2.5-7B), written out so
# nothing is downloaded. The vocabulary keeps its published size (the embedding and head are a
# large share of the bytes); the tokenizer built here uses only its first ids.
SHAPES: dict[str, dict] = {
    "llama2-7b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
                  "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                  "hidden_act": "silu", "tie_word_embeddings": False},
    "qwen2.5-7b": {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                   "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                   "hidden_act": "silu", "tie_word_embeddings": False, "sliding_window": 131072,
                   "use_sliding_window": False, "max_window_layers": 28},
    # the same code path in seconds on a CPU
    "tiny": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 256,
             "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False},
}
ROLES = ("pretrained", "aligned", "witness")
"""Built in this order from one model in memory: each the one before plus a perturbation."""
SIGMA = 0.05
"""Each perturbation: Gaussian noise of this times each tensor's own std (well above bf16's spacing)."""
ADAPTER_STEPS = (5, 10)
"""The step numbers of the two LoRA adapter checkpoints ``reversion track`` reads."""
MODULES = ("torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors", "numpy", "scipy", "pandas",
           "yaml", "psutil", "tqdm", "IPython", "reversion.cli", "reversion.book.chapters.ch03_alignment",
           "reversion.book.chapters.ch06_interventions", "reversion.subjects.checkpoints.demo")
"""Everything the parts import, checked before minutes of building (the chapter modules need IPython)."""
MARGIN = 2 * GiB
"""Disk kept free beyond the three models (adapters, tokenizer, cache, results)."""


class Unfit(SystemExit):
    """This machine cannot run the asked shape: a message, status 2, nothing built."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message


# --------------------------------------------------------------------------- checks before any work


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Random weights: only the seconds and bytes mean anything.")
    p.add_argument("--shape", choices=tuple(SHAPES), default="tiny", help="model shape (default: tiny, on the CPU)")
    p.add_argument("--out", type=Path, help="folder for the models, cache and results (default: a new temporary "
                                            "folder); models of the same shape already there are reused")
    p.add_argument("--json", type=Path, help="JSON file of the measurements (default: OUT/random_7b_SHAPE.json)")
    p.add_argument("--steps", type=int, help="fine-tuning steps of every run (default: 10; tiny: 2)")
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda for the 7B shapes, cpu for tiny")
    p.add_argument("--keep", action="store_true", help="keep the built models at the end (default: removed)")
    p.add_argument("--quiet", action="store_true", help="no progress bars from the stages")
    a = p.parse_args(argv)
    a.device = a.device or ("cpu" if a.shape == "tiny" else "cuda")
    if a.shape != "tiny" and a.device != "cuda":
        p.error(f"--shape {a.shape} runs on a GPU (a 7B model on the CPU takes hours); --device cpu is for --shape tiny")
    a.steps = a.steps if a.steps is not None else (2 if a.shape == "tiny" else 10)
    if a.steps < 2:
        p.error(f"--steps must be >= 2 (the runs are judged at steps 0, T/2 and T), got {a.steps}")
    return a


def check_imports() -> None:
    missing = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
    if missing:
        raise Unfit("missing Python modules: " + "; ".join(missing) + ". Install the project "
                    "(pip install -e . from the repository root) or put src/ on PYTHONPATH and install the rest.")


def model_config(shape: str, tok):
    """The shape's config, with the token ids of the tokenizer built here."""
    from transformers import AutoConfig

    fields = dict(SHAPES[shape])
    if len(tok) > fields["vocab_size"]:
        raise ValueError(f"the tokenizer has {len(tok)} tokens, more than the {shape} vocabulary "
                         f"({fields['vocab_size']})")
    kind = fields.pop("model_type")
    return AutoConfig.for_model(kind, **fields, pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id,
                                eos_token_id=tok.eos_token_id)


def parameter_count(config) -> int:
    """Parameters of a model of ``config``, counted on the meta device (no memory, instant)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def check_machine(device: str, model_bytes: int, out: Path, to_write: int) -> dict:
    """The GPU and the disk, before anything is built: a clear refusal (:class:`Unfit`) when
    the asked shape cannot run here. Returns what was found."""
    import torch

    found = {"disk_free_bytes": shutil.disk_usage(out).free}
    if device == "cuda":
        if not torch.cuda.is_available():
            raise Unfit("no CUDA GPU here: the 7B shapes need one (--shape tiny runs the same code on the CPU)")
        total = torch.cuda.get_device_properties(0).total_memory
        found.update(gpu=torch.cuda.get_device_name(0), gpu_memory_bytes=total)
        # theta_S is also read in float32 (its step-0 evaluation, the calibration): twice the bf16 bytes
        need = int(2.2 * model_bytes)
        if total < need:
            raise Unfit(f"{found['gpu']} has {total / GiB:.1f} GiB; a float32 copy of this shape needs "
                        f"~{need / GiB:.1f} GiB (use a larger GPU, or --shape tiny)")
    need = to_write + MARGIN
    if found["disk_free_bytes"] < need:
        raise Unfit(f"{found['disk_free_bytes'] / GiB:.1f} GiB free at {out}; the models still to build need "
                    f"{to_write / GiB:.1f} GiB (+{MARGIN / GiB:.0f} GiB margin): give --out on a larger disk")
    return found


# --------------------------------------------------------------------------- measuring a part


class Peak:
    """The peak resident memory of this process and its children, sampled every 50 ms."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        total = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            with contextlib.suppress(Exception):  # a child that ended meanwhile
                total += child.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(0.05)

    def __enter__(self) -> Peak:
        self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


class Tee(io.TextIOBase):
    """stderr as it is, and a copy (the CLI's one-line error goes into the record)."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, s: str) -> int:
        self.copy.write(s)
        return self.stream.write(s)

    def flush(self) -> None:
        self.stream.flush()


class Recorder:
    """Each part's seconds, peak memory and outcome, written to ``path`` after every part."""

    def __init__(self, path: Path, head: dict, device: str):
        self.path, self.doc, self.device = path, {**head, "parts": {}}, device
        self.t0 = time.perf_counter()
        self.write()

    def say(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.t0:7.1f} s] {text}", flush=True)

    def write(self) -> None:
        self.doc["total_seconds"] = time.perf_counter() - self.t0
        self.doc["ok"] = all(p.get("ok") for p in self.doc["parts"].values())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, default=str))
        os.replace(tmp, self.path)

    def run(self, name: str, fn, needs: tuple[str, ...] = ()) -> object:
        """``fn()`` measured as part ``name``; skipped (recorded) when a part it needs failed."""
        import torch

        failed = [n for n in needs if not self.doc["parts"].get(n, {}).get("ok")]
        if failed:
            self.doc["parts"][name] = {"ok": False, "error": f"skipped: needs {', '.join(failed)}"}
            self.say(f"{name}: skipped (needs {', '.join(failed)})")
            self.write()
            return None
        gc.collect()
        cuda = self.device == "cuda"
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.say(f"{name} ...")
        rec: dict = {}
        result = None
        t = time.perf_counter()
        with Peak() as peak:
            try:
                result = fn(rec)
                rec["ok"] = True
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # out of memory included: recorded, the next parts still run
                traceback.print_exc()
                rec.update(ok=False, error=f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:2000])
        rec["seconds"] = time.perf_counter() - t
        rec["peak_rss_bytes"] = peak.peak
        if cuda:
            rec["peak_gpu_allocated_bytes"] = torch.cuda.max_memory_allocated()
            rec["peak_gpu_reserved_bytes"] = torch.cuda.max_memory_reserved()
        self.doc["parts"][name] = rec
        gpu = f", GPU peak {rec['peak_gpu_allocated_bytes'] / GiB:.1f} GiB" if cuda else ""
        self.say(f"{name}: {'done' if rec['ok'] else 'FAILED: ' + rec['error']} in {rec['seconds']:.1f} s"
                 f" (RSS peak {rec['peak_rss_bytes'] / GiB:.2f} GiB{gpu})")
        self.write()
        return result


# --------------------------------------------------------------------------- the triple


def texts() -> list[str]:
    from reversion.subjects.checkpoints.demo import COMPLY, REFUSE, example_files
    from reversion.subjects.checkpoints.textdata import read_pairs, read_prompts

    files = example_files()
    return (read_prompts(files["harmful"]) + read_prompts(files["harmless"])
            + [t for pair in read_pairs(files["benign"]) for t in pair] + [COMPLY, REFUSE])


def built(folder: Path, config) -> bool:
    """A finished model folder of this shape (a folder is renamed into place when complete)."""
    try:
        saved = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    keys = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
    return all(saved.get(k) == getattr(config, k) for k in keys)


def save_into(folder: Path, save) -> None:
    """``save(partial)`` then rename onto ``folder``: a folder that exists is complete."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    save(partial)
    os.replace(partial, folder)


def perturb(model, sigma: float, seed: int) -> None:
    """Add ``sigma`` x each tensor's std of Gaussian noise, in place, one tensor at a time."""
    import torch

    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            g = torch.Generator(device=p.device).manual_seed(seed * 100_003 + i)
            noise = torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32)
            p.add_((sigma * p.float().std().clamp_min(1e-3) * noise).to(p.dtype))
            del noise


def adapters(model, folder: Path, tok) -> None:
    """Two LoRA adapter checkpoints (q_proj, v_proj) with random B: a LoRA run's output_dir."""
    import torch
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                  task_type="CAUSAL_LM"))
    with torch.no_grad():
        for k, step in enumerate(ADAPTER_STEPS, 1):
            for i, (name, p) in enumerate(n for n in peft_model.named_parameters() if "lora_B" in n[0]):
                g = torch.Generator(device=p.device).manual_seed(1000 * k + i)
                p.copy_(0.01 * k * torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32))

            def save(path, pm=peft_model):
                pm.save_pretrained(path)
                tok.save_pretrained(path)
            save_into(folder / f"checkpoint-{step}", save)
    peft_model.unload()  # the base model back, adapters removed (not merged)


def build(out: Path, config, tok, device: str, rec: dict) -> dict[str, str]:
    """The triple (and the adapters), one model in memory: pretrained random, then each role the
    one before plus a perturbation; only folders missing or of another shape are written."""
    import torch
    from transformers import AutoModelForCausalLM

    paths = {r: out / r for r in ROLES}
    runs = out / "lora_run"
    todo = [r for r in ROLES if not built(paths[r], config)]
    have_adapters = all((runs / f"checkpoint-{s}" / "adapter_config.json").is_file() for s in ADAPTER_STEPS)
    rec["reused"] = [r for r in ROLES if r not in todo] + (["adapters"] if have_adapters and not todo else [])
    if todo or not have_adapters:
        torch.manual_seed(0)
        t = time.perf_counter()
        with torch.device(device):  # initialised where it lives: a 7B init on the CPU takes minutes
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        rec["init_seconds"] = time.perf_counter() - t
        rec["save_seconds"] = {}
        for k, role in enumerate(ROLES):
            if k:
                perturb(model, SIGMA, seed=k)
            if role in todo:
                t = time.perf_counter()

                def save(path, m=model):
                    m.save_pretrained(path)  # safetensors: the default since transformers 4.35
                    tok.save_pretrained(path)
                save_into(paths[role], save)
                rec["save_seconds"][role] = time.perf_counter() - t
            if role == "aligned" and (todo or not have_adapters):
                adapters(model, runs, tok)
        del model
    rec["model_bytes_on_disk"] = {r: sum(f.stat().st_size for f in paths[r].glob("*.safetensors")) for r in ROLES}
    return {**{r: str(p) for r, p in paths.items()},
            "adapters": [str(runs / f"checkpoint-{s}") for s in ADAPTER_STEPS]}


# --------------------------------------------------------------------------- the parts


def settings(shape: str, device: str, steps: int) -> dict:
    """The researcher's settings of notebooks/params/checkpoints/ (03 and 06), with fewer steps;
    the tiny shape also a small batch and few generated tokens."""
    import yaml

    p03 = yaml.safe_load((PARAMS / "03_alignment.yaml").read_text())
    p06 = yaml.safe_load((PARAMS / "06_interventions.yaml").read_text())
    ck, ft = p03["checkpoints"], p03["world_overrides"]["finetune"]
    tiny = shape == "tiny"
    return {
        "dtype": ck["dtype"], "device_map": "cuda:0" if device == "cuda" else "cpu",
        "training": copy.deepcopy(ck["training"]),
        "max_new_tokens": 8 if tiny else ck["max_new_tokens"],
        "finetune": {"lr": ft["lr"], "batch_size": 4 if tiny else ft["batch_size"], "steps": steps,
                     "eval_steps": [0, steps // 2, steps]},
        "interventions": {k: p06[k] for k in ("multiple", "rehearsal_fraction", "margin")},
    }


def checkpoints(paths: dict, s: dict) -> dict:
    from reversion.subjects.checkpoints.demo import example_files

    files = example_files()
    return {"witness": paths["witness"], "aligned": paths["aligned"], "pretrained": paths["pretrained"],
            "prompts": str(files["harmful"]), "harmless": str(files["harmless"]),
            "finetune_data": str(files["benign"]), "dtype": s["dtype"], "device_map": s["device_map"],
            "max_new_tokens": s["max_new_tokens"], "training": s["training"]}


def cli(argv: list[str], rec: dict) -> None:
    from reversion.cli import main

    tee = Tee(sys.stderr)
    with contextlib.redirect_stderr(tee):
        status = main(argv)
    rec["exit_status"] = status
    if status != 0:
        raise RuntimeError(f"reversion {argv[0]} exited {status}: {tee.copy.getvalue().strip()[-1000:]}")


def estimate(paths: dict, s: dict, out: Path, rec: dict) -> None:
    from reversion.subjects.checkpoints.demo import example_files

    files = example_files()
    cli(["estimate", "--witness", paths["witness"], "--aligned", paths["aligned"], "--pretrained", paths["pretrained"],
         "--prompts", str(files["harmful"]), "--harmless", str(files["harmless"]), "--dtype", s["dtype"],
         "--device-map", s["device_map"], "--out", str(out / "v_rev.safetensors"), "--quiet"], rec)


def track(paths: dict, s: dict, out: Path, rec: dict) -> None:
    from reversion.subjects.checkpoints.demo import example_files

    cli(["track", "--directions", str(out / "v_rev.safetensors"), "--aligned", paths["aligned"],
         "--prompts", str(example_files()["harmful"]), "--dtype", s["dtype"], "--device-map", s["device_map"],
         "--out", str(out / "track.csv"), *paths["adapters"]], rec)
    rec["rows"] = sum(1 for _ in (out / "track.csv").open()) - 1


def alignment(paths: dict, s: dict, progress: bool, rec: dict) -> None:
    from reversion.book.chapters import ch03_alignment as ch

    P = ch.Params(world="default", world_overrides={"finetune": s["finetune"]}, n_histories=1, n_seeds=2,
                  n_probe=128, position="last", checkpoints=checkpoints(paths, s))
    res = ch.run(P, progress=progress)
    m = ch.save(P, res)
    rec.update(runs=2, steps=s["finetune"]["steps"], layer=m["layer"])


def interventions(paths: dict, s: dict, progress: bool, rec: dict) -> None:
    """The chapter's main comparison for one seed: its plan, calibration and runs (the chapter's
    ``run`` needs two seeds on checkpoints)."""
    from reversion.analysis import arm_runs
    from reversion.book.chapters import ch06_interventions as ch
    from reversion.core.interventions import DIRECTIONAL
    from reversion.stages.calibrate import calibrate
    from reversion.stages.estimate import estimate as estimate_stage
    from reversion.stages.finetune import finetune_many
    from reversion.subjects.organism.judge import headline

    T = s["finetune"]["steps"]
    P = ch.Params(world="default", world_overrides={"finetune": s["finetune"]}, n_histories=1, n_seeds=1,
                  objectives=["block"], directions=["v_rev", "random0+"], n_random=1, sites=["all"],
                  dose_multiples=[], study_directions=[], study_sites=[], n_study_seeds=1, projection=False,
                  witness_direction=False, eval_steps=[0, T // 2, T], track_every=max(1, T // 2),
                  checkpoints=checkpoints(paths, s), **s["interventions"])
    world = P.make_world()
    subject = P.subject(world, need_finetune=True)
    est = estimate_stage(subject, world.finetune.n_probe, progress=progress)  # the Alignment part's, cached
    arm_runs.check_directions(P, est)
    main, _ = arm_runs.plan(P, est)
    have = arm_runs.directions_of(P, est)
    L = est.directions.v_rev.shape[0] - 1
    terms = {f"{a.direction}@{a.site}": (have[a.direction], arm_runs.site_layers(a.site, L, est.layer))
             for a in main if a.objective in DIRECTIONAL}
    t = time.perf_counter()
    norms = calibrate(subject, world.finetune_config(0, **arm_runs.finetune_changes(P)), terms,
                      est.directions.displacement_norm)
    rec["calibrate_seconds"] = time.perf_counter() - t
    jobs, strengths = [], {}
    for arm in main:
        iv, strengths[arm.name] = arm_runs.make(arm, est, have, norms, P)
        jobs.append((subject, world.finetune_config(0, **arm_runs.finetune_changes(P, arm, T)), iv))
    runs = finetune_many(jobs, progress)
    task = subject.task_key(world.finetune)
    level = headline(runs[0].evals[0], task)
    rec["arms"] = {a.name: {"strength": strengths[a.name], "run_seconds": r.seconds,
                            "outcome": arm_runs.outcomes(r, est.directions.v_rev, est.layer, task, level)}
                   for a, r in zip(main, runs)}
    rec.update(runs=len(runs), steps=T)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    try:
        return _main(a)
    except Unfit as exc:
        print(f"random_7b: {exc.message}", file=sys.stderr)
        return 2


def _main(a: argparse.Namespace) -> int:
    check_imports()
    import torch
    import transformers

    from reversion.subjects.checkpoints.demo import build_tokenizer

    out = (a.out or Path(tempfile.mkdtemp(prefix=f"random_7b-{a.shape}-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(texts())
    config = model_config(a.shape, tok)
    n = parameter_count(config)
    model_bytes = 2 * n  # bf16
    to_write = sum(model_bytes for r in ROLES if not built(out / r, config))
    try:
        found = check_machine(a.device, model_bytes, out, to_write)
    except Unfit:
        if a.out is None:
            out.rmdir()  # the empty temporary folder made above
        raise
    # The stages' cache and results inside --out (a fresh cache: every part measured from nothing);
    # the stages compute where the models are.
    shutil.rmtree(out / "cache", ignore_errors=True)
    os.environ.update(REVERSION_CACHE=str(out / "cache"), REVERSION_RESULTS=str(out / "results"),
                      REVERSION_DEVICE=a.device)
    s = settings(a.shape, a.device, a.steps)
    head = {"script": "benchmarks/random_7b.py", "shape": a.shape,
            "config": {k: v for k, v in SHAPES[a.shape].items()}, "parameters": n, "bytes_per_model": model_bytes,
            "device": a.device, **found, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "settings": s, "out": str(out),
            "note": "random weights: only the seconds and bytes mean anything"}
    rec = Recorder(a.json or out / f"random_7b_{a.shape}.json", head, a.device)
    size = f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"
    rec.say(f"{a.shape}: {size} parameters, {model_bytes / 1e9:.2f} GB a model in bf16; {a.device}"
            + (f" ({found['gpu']})" if "gpu" in found else "")
            + f"; {found['disk_free_bytes'] / GiB:.0f} GiB free at {out}")
    progress = not a.quiet
    paths = rec.run("build", lambda r: build(out, config, tok, a.device, r))
    if paths is not None:
        rec.run("estimate", lambda r: estimate(paths, s, out, r))
        rec.run("track", lambda r: track(paths, s, out, r), needs=("estimate",))
        rec.run("alignment", lambda r: alignment(paths, s, progress, r))
        rec.run("interventions", lambda r: interventions(paths, s, progress, r))
    if not a.keep:
        for name in (*ROLES, "lora_run", *(f"{r}.partial" for r in ROLES)):
            shutil.rmtree(out / name, ignore_errors=True)
    rec.write()
    rec.say(f"{'all parts ran' if rec.doc['ok'] else 'some parts FAILED'}; wrote {rec.path}")
    return 0 if rec.doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
