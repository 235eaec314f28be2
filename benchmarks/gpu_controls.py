"""GPU check (run where CUDA is present; CI never runs it): two rows of numbers.

1. ``bench_large``: a TinyLlama-shape random Llama in bf16 -- extraction of every layer's mean
   activations against a plain ``output_hidden_states`` forward, and a tracking check against
   its floor (the benchmark page's GPU row).
2. Chapter 05's controls on checkpoints with no reversion behind them: a TinyLlama-shape
   random Llama (the demo tokenizer's vocabulary) as theta_P, and theta_H and theta_S as two
   independent small random perturbations of it, so "v_rev" is the difference of two random
   perturbations and means nothing. The block along v_rev, -r_S, v_P and two random
   directions at one calibrated strength, push along v_rev and a random direction, and
   rehearsal, 2 seeds, 10 steps. A block "effect" that random directions match is what the
   controls exist to expose.

    PYTHONPATH=src python3 benchmarks/gpu_controls.py OUT_DIR [--skip-bench] [--tiny] [--trained]

``--trained``: instead of random weights, the demo history (:func:`build_demo`: a witness
trained to comply, then aligned to refuse, on the example files) at the same shape.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from reversion.benchmark import TINYLLAMA, bench_large
from reversion.book.chapters import ch06_interventions as ch05
from reversion.infra import seeding
from reversion.subjects.checkpoints.demo import build_demo, build_tokenizer, example_files
from reversion.subjects.checkpoints.textdata import read_pairs, read_prompts


TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}
"""``--tiny``: a CPU dry run of the same script."""


def random_pair(folder: Path, shape: dict, sigma: float = 0.02) -> dict[str, str]:
    """theta_P random; theta_H, theta_S = theta_P + two independent N(0, (sigma * std)^2) perturbations."""
    files = example_files()
    texts = read_prompts(files["harmful"]) + read_prompts(files["harmless"]) + \
        [t for p in read_pairs(files["benign"]) for t in p]
    tok = build_tokenizer(texts, folder / "tokenizer")
    shape = {**shape, "vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
             "tie_word_embeddings": False}
    seeding.seed_everything(0)
    base = LlamaForCausalLM(LlamaConfig(**shape)).to(torch.bfloat16)
    out = {}
    for name, seed in (("pretrained", None), ("witness", 1), ("aligned", 2)):
        model = base
        if seed is not None:
            g = torch.Generator().manual_seed(seed)
            model = LlamaForCausalLM(LlamaConfig(**shape)).to(torch.bfloat16)
            with torch.no_grad():
                for p, q in zip(model.parameters(), base.parameters()):
                    noise = torch.randn(q.shape, generator=g, dtype=torch.float32)
                    p.copy_((q.float() + sigma * q.float().std().clamp_min(1e-3) * noise).to(p.dtype))
        model.save_pretrained(folder / name)
        tok.save_pretrained(folder / name)
        out[name] = str(folder / name)
    out["tokenizer"] = str(folder / "tokenizer")
    return out


def controls(paths: dict[str, str], steps: int = 10, lr: float = 1e-5) -> dict:
    files = example_files()
    P = ch05.Params(
        world="default", world_overrides={"finetune": {"steps": steps, "batch_size": 8, "lr": lr}},
        checkpoints={**paths, "prompts": str(files["harmful"]), "harmless": str(files["harmless"]),
                     "finetune_data": str(files["benign"]), "max_new_tokens": 8},
        n_histories=1, n_seeds=2, multiple=1.0, objectives=["block"],
        directions=["v_rev", "-r_S", "v_P", "random0+", "random0-"], n_random=1, sites=["all"],
        dose_multiples=[], study_directions=[], study_sites=[], n_study_seeds=1, projection=False, witness_direction=False,
        rehearsal_fraction=0.25, margin=0.02, eval_steps=[0, steps // 2, steps], track_every=max(1, steps // 2))
    t0 = time.perf_counter()
    res = ch05.run(P, progress=False)
    m = ch05.metrics(P, res)
    keep = {k: m[k] for k in ("layer", "T", "n", "multiple", "specificity", "sentences", "calibration")}
    keep["arms"] = {n: {"outcome": a["outcome"], "vs_baseline": a["vs_baseline"], "strength": a["strength"]}
                    for n, a in m["arms"].items()}
    keep["seconds"] = time.perf_counter() - t0
    return keep


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    res = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "torch": torch.__version__}
    tiny = "--tiny" in sys.argv
    if "--skip-bench" not in sys.argv and not tiny:
        res["bench_large"] = bench_large()
        (out / "gpu.json").write_text(json.dumps(res, indent=1))
        print("bench_large", json.dumps(res["bench_large"]["ratio"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("REVERSION_CACHE", str(Path(tmp) / "cache"))
        os.environ.setdefault("REVERSION_RESULTS", str(Path(tmp) / "results"))
        t0 = time.perf_counter()
        if "--trained" in sys.argv:  # the demo history (comply, then refuse) at this shape
            shape = {k: v for k, v in (TINY if tiny else TINYLLAMA).items() if k != "vocab_size"}
            paths = {k: str(v) for k, v in build_demo(Path(tmp) / "models", shape=shape, steps=80, lr=3e-4,
                                                        device="cuda" if torch.cuda.is_available() else "cpu").items()}
        else:
            paths = random_pair(Path(tmp) / "models", TINY if tiny else TINYLLAMA)
        res["build_seconds"] = time.perf_counter() - t0
        print("checkpoints built", res["build_seconds"], flush=True)
        res["controls"] = controls(paths, *((20, 1e-4) if "--trained" in sys.argv else (10, 1e-5)))
    (out / "gpu.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res["controls"]["sentences"], indent=1))


if __name__ == "__main__":
    main()
