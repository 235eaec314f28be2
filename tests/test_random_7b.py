"""``benchmarks/random_7b.py``: the 7B shapes are the published ones, a machine that cannot run
them is refused before anything is built, and ``--shape tiny`` runs every part end to end on the
CPU (slow: a subprocess, as a user runs it)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "random_7b.py"


@pytest.fixture(scope="module")
def r7b():
    spec = importlib.util.spec_from_file_location("random_7b", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tok(r7b):
    from reversion.subjects.checkpoints.demo import build_tokenizer

    return build_tokenizer(r7b.texts())


@pytest.mark.parametrize("shape, parameters", [
    ("llama2-7b", 6_738_415_616),   # Llama-2-7B's published count (13.5 GB in bf16)
    ("qwen2.5-7b", 7_615_616_512),  # Qwen2.5-7B's: 7.61B, 6.53B without the embeddings
])
def test_the_7b_shapes_have_the_published_parameter_counts(r7b, tok, shape, parameters):
    config = r7b.model_config(shape, tok)
    assert r7b.parameter_count(config) == parameters
    assert config.pad_token_id == tok.pad_token_id < config.vocab_size  # the local tokenizer's ids fit


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_a_7b_shape_without_a_gpu_is_refused_before_anything_is_built(r7b, tmp_path, capsys):
    assert r7b.main(["--shape", "llama2-7b", "--out", str(tmp_path)]) == 2
    assert "no CUDA GPU here: the 7B shapes need one (--shape tiny" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_too_little_disk_is_refused_naming_what_is_needed(r7b, tmp_path, capsys, monkeypatch):
    usage = r7b.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(r7b.shutil, "disk_usage", lambda p: usage._replace(free=r7b.GiB))
    assert r7b.main(["--shape", "tiny", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"1.0 GiB free at {tmp_path.resolve()}" in err and "give --out on a larger disk" in err
    assert list(tmp_path.iterdir()) == []


def test_too_few_steps_is_an_argument_error(r7b, capsys):
    with pytest.raises(SystemExit) as exc:
        r7b.main(["--steps", "1"])
    assert exc.value.code == 2 and "--steps must be >= 2" in capsys.readouterr().err


@pytest.mark.slow  # 15-35 s here: imports in a fresh process, then every part at the tiny shape
def test_the_tiny_shape_runs_every_part_end_to_end(tmp_path):
    out, report = tmp_path / "run", tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--shape", "tiny", "--out", str(out), "--json", str(report),
                           "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads(report.read_text())
    assert doc["ok"] and doc["device"] == "cpu" and doc["shape"] == "tiny"
    assert list(doc["parts"]) == ["build", "estimate", "track", "alignment", "interventions"]
    for name, part in doc["parts"].items():
        assert part["ok"] and part["seconds"] > 0 and part["peak_rss_bytes"] > 0, (name, part)
    # the researcher's training settings (notebooks/params/checkpoints/), on the CPU
    written = yaml.safe_load((ROOT / "notebooks/params/checkpoints/03_alignment.yaml").read_text())["checkpoints"]
    assert doc["settings"]["training"] == written["training"] and doc["settings"]["dtype"] == "bfloat16"
    assert doc["settings"]["device_map"] == "cpu"
    assert doc["parts"]["build"]["model_bytes_on_disk"]["aligned"] >= 2 * doc["parameters"]  # bf16
    assert doc["parts"]["track"]["rows"] == 2 and (out / "v_rev.safetensors").is_file()
    assert doc["parts"]["alignment"]["runs"] == 2
    assert set(doc["parts"]["interventions"]["arms"]) == {
        "baseline", "rehearsal", "block/v_rev/all/1", "block/random0+/all/1", "push/v_rev/all/1"}
    assert not (out / "aligned").exists() and not (out / "lora_run").exists()  # models removed without --keep
