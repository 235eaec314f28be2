"""The ``reversion`` command line: estimate, track, book; argument errors (reversion.cli)."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reversion.cli import main
from reversion.core.activations import mean_activations, prompt_activations
from reversion.core.directions import Directions, layer_stability
from reversion.core.drift import null_threshold, threshold
from reversion.core.models import load_model
from reversion.infra import seeding
from reversion.stages.nulls import matched_p99_by_layer
from reversion.stages.track import TrackError, TrackResult, track
from reversion.subjects.checkpoints.reader import CheckpointReader
from reversion.subjects.checkpoints.textdata import encode_prompts, load_tokenizer, pad_id_of, read_prompts

from helpers import LAYERS, fails

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--device", "cpu", "--n-null", "200", "--n-boot", "20"]


def estimate(tiny, family, out, *extra):
    pair = getattr(tiny, family)
    return main(["estimate", "--witness", str(pair.witness), "--aligned", str(pair.aligned), "--prompts",
                 str(tiny.harmful), "--out", str(out), *FAST, *map(str, extra)])


def run_module(*args, cwd=None):
    env = {**os.environ, "REVERSION_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "reversion", *map(str, args)], cwd=cwd or ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# --------------------------------------------------------------------------- help


def test_help_of_every_command():
    top = run_module("--help")
    assert top.returncode == 0 and "estimate" in top.stdout and "track" in top.stdout and "book" in top.stdout
    for cmd, needle in (("estimate", "--witness"), ("track", "--directions"), ("book", "reversion.book")):
        proc = run_module(cmd, "--help")
        assert proc.returncode == 0, proc.stderr
        assert needle in proc.stdout


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "estimate" in capsys.readouterr().out


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("reversion")
    if not script.exists():
        pytest.skip("console script not installed in this environment (pip install -e .)")
    proc = subprocess.run([str(script), "--version"], stdout=subprocess.PIPE, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("reversion ")


# --------------------------------------------------------------------------- estimate


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_estimate_in_process(tiny, tmp_path, family, capsys):
    out = tmp_path / "v.safetensors"
    assert estimate(tiny, family, out) == 0
    printed = capsys.readouterr().out
    assert "<- chosen" in printed and "wrote" in printed
    d = Directions.load(out)
    assert d.v_rev.shape == (LAYERS + 1, 32)
    assert 1 <= d.layer <= LAYERS
    norms = d.v_rev.norm(dim=-1)
    assert torch.allclose(norms[1:], torch.ones(LAYERS, dtype=norms.dtype))
    meta = d.meta
    assert meta["model_type"] == family and meta["hidden_size"] == 32 and meta["chat_template"] is True
    assert meta["n_prompts"] == tiny.n_prompts and meta["position"] == "last"
    assert len(meta["matched_p99"]) == len(meta["stability"]) == LAYERS + 1
    assert all(0 < meta["matched_p99"][l] < 1 for l in range(1, LAYERS + 1))
    assert meta["isotropic_p99"] > 0 and "layer_reason" in meta
    assert d.v_P is None and d.r_S is None


def test_estimate_equals_the_directions_computed_by_hand(tiny, tmp_path):
    """The CLI loads one model at a time; its file holds what the definitions give: v_rev =
    normalize(mu_H - mu_S), v_P = normalize(mu_P - mu_S), r_S = normalize(mu_S(harmful) -
    mu_S(harmless)) from mean activations (a running sum: another code path than the CLI's
    per-prompt activations), the split-half stability and the matched null's p99 per layer
    from their named seeds."""
    out = tmp_path / "v.safetensors"
    assert estimate(tiny, "llama", out, "--pretrained", tiny.llama.witness, "--harmless", tiny.harmless) == 0
    tok = load_tokenizer(tiny.tokenizer)
    ids = encode_prompts(tok, read_prompts(tiny.harmful))
    harmless = encode_prompts(tok, read_prompts(tiny.harmless))
    pad = pad_id_of(tok)
    H, S = (load_model(p, device="cpu") for p in (tiny.llama.witness, tiny.llama.aligned))
    mu_H, mu_S = (mean_activations(m, ids, "all", pad_id=pad) for m in (H, S))
    mu_S_harmless = mean_activations(S, harmless, "all", pad_id=pad)

    def unit(x):
        n = x.norm(dim=-1, keepdim=True)
        return torch.where(n > 0, x / n.clamp_min(1e-300), torch.zeros_like(x))

    got = Directions.load(out)
    assert torch.allclose(got.v_rev, unit(mu_H - mu_S), atol=1e-10)
    assert torch.allclose(got.v_P, unit(mu_H - mu_S), atol=1e-10)  # theta_P = theta_H here
    assert torch.allclose(got.r_S, unit(mu_S - mu_S_harmless), atol=1e-10)
    assert torch.allclose(got.displacement_norm, (mu_H - mu_S).norm(dim=-1), atol=1e-10)
    acts_H, acts_S = (prompt_activations(m, ids, "all", pad_id=pad) for m in (H, S))
    assert torch.allclose(got.activation_norm, acts_S.norm(dim=-1).mean(0), atol=1e-10)
    draws = layer_stability(acts_H, acts_S, 20, seeding.rng(0, "vrev-stability"))
    # Undefined (every draw without displacement, here the unmoved embedding layer 0) is None.
    stability = [None if not draws[:, l].any() else float(draws[:, l].mean()) for l in range(draws.shape[1])]
    assert stability[0] is None and got.meta["stability"][0] is None
    assert got.meta["stability"][1:] == pytest.approx(stability[1:], abs=1e-9)
    matched = matched_p99_by_layer(acts_S, got.v_rev, 200, seeding.rng(0, "reversion-cli-estimate"))
    assert got.meta["matched_p99"] == pytest.approx(matched, abs=1e-9)
    # Another --seed, another null and bootstrap; the directions do not move.
    other = tmp_path / "seed1.safetensors"
    assert estimate(tiny, "llama", other, "--seed", "1") == 0
    d1 = Directions.load(other)
    assert torch.equal(d1.v_rev, got.v_rev) and d1.meta["matched_p99"] != got.meta["matched_p99"]


def test_estimate_with_controls_fixed_layer_and_no_template(tiny, tmp_path):
    out = tmp_path / "v.safetensors"
    assert estimate(tiny, "gpt2", out, "--pretrained", tiny.gpt2.witness, "--harmless", tiny.harmless,
                    "--layer", "1", "--chat-template", "off", "--position", "mean") == 0
    d = Directions.load(out)
    assert d.layer == 1 and "given with --layer" in d.meta["layer_reason"]
    assert d.meta["chat_template"] is False and d.meta["position"] == "mean"
    assert d.v_P is not None and d.r_S is not None
    # theta_P = theta_H here: v_P coincides with v_rev
    assert torch.allclose(d.v_P[1:], d.v_rev[1:])


def test_estimate_as_a_module_subprocess(tiny, tmp_path):
    out = tmp_path / "sub" / "v.safetensors"
    proc = run_module("estimate", "--witness", tiny.llama.witness, "--aligned", tiny.llama.aligned,
                      "--prompts", tiny.harmful, "--tokenizer", tiny.tokenizer, "--out", out, *FAST)
    assert proc.returncode == 0, proc.stderr
    assert "chosen layer" in proc.stdout
    assert Directions.load(out).v_rev.shape == (LAYERS + 1, 32)


def test_estimate_argument_errors(tiny, tmp_path, capsys):
    base = ["estimate", "--prompts", tiny.harmful, "--out", tmp_path / "v.safetensors", "--device", "cpu"]
    L, A, W = tiny.llama, tiny.llama.aligned, tiny.llama.witness
    fails(capsys, [*base, "--witness", tmp_path / "missing", "--aligned", A], "--witness", "path not found",
          "missing")
    (tmp_path / "not_a_ckpt").mkdir()
    fails(capsys, [*base, "--witness", W, "--aligned", tmp_path / "not_a_ckpt"], "--aligned",
          "no config.json")
    fails(capsys, [*base, "--witness", tiny.llama_wide, "--aligned", A], "--witness", "hidden_size", "48", "32")
    fails(capsys, [*base, "--witness", tiny.gpt2.witness, "--aligned", A], "--witness", "family", "gpt2",
          "llama")
    fails(capsys, [*base, "--witness", W, "--aligned", A, "--layer", "9"], "--layer", "out of range", "[0, 2]")
    fails(capsys, [*base, "--witness", W, "--aligned", A, "--layer", "middle"], "--layer", "integer")
    fails(capsys, ["estimate", "--witness", W, "--aligned", A, "--prompts", tiny.empty, "--out",
                   tmp_path / "v.safetensors"], "--prompts", "no prompts", "empty.jsonl")
    fails(capsys, ["estimate", "--witness", W, "--aligned", A, "--prompts", tmp_path / "none.jsonl", "--out",
                   tmp_path / "v.safetensors"], "--prompts", "not found")
    fails(capsys, [*base, "--witness", W, "--aligned", A, "--tokenizer", tmp_path / "no_tok"], "--tokenizer",
          "not found")
    fails(capsys, [*base[:-4], "--out", tmp_path / "v.pt", "--witness", W, "--aligned", A], "--out",
          ".safetensors")
    fails(capsys, [*base, "--witness", A, "--aligned", A], "--witness/--aligned: v_rev = mu_H - mu_S: "
          "zero-norm displacement")
    fails(capsys, [*base, "--witness", W, "--aligned", A, "--pretrained", A], "--pretrained: v_P")
    fails(capsys, [*base, "--witness", W, "--aligned", A, "--n-boot", "1"], "--n-boot", ">= 2", "got 1")
    fails(capsys, [*base, "--witness", W, "--aligned", A, "--min-stability", "1"], "--min-stability", "(0, 1)")
    fails(capsys, [*base, "--witness", W, "--aligned", A, "--n-null", "0"], "--n-null", ">= 1")
    fails(capsys, [*base, "--witness", W, "--aligned", A, "--chat-template", "on", "--tokenizer",
                   tiny.plain_tokenizer], "--prompts", "no chat template")
    assert not (tmp_path / "v.safetensors").exists()
    # a missing required argument is argparse's own error (status 2)
    fails(capsys, ["estimate", "--aligned", A, "--prompts", tiny.harmful, "--out", tmp_path / "v.safetensors"],
          "--witness")
    assert L is tiny.llama


def test_error_exit_status_from_the_module(tmp_path):
    proc = run_module("estimate", "--witness", tmp_path / "nowhere", "--aligned", tmp_path,
                      "--prompts", tmp_path / "p.jsonl", "--out", tmp_path / "v.safetensors")
    assert proc.returncode == 2
    # Both are bad; the aligned checkpoint (the reference every other one is checked against) comes first.
    assert "reversion estimate: error: --aligned: " in proc.stderr
    assert "is not a Hugging Face checkpoint folder (no config.json)" in proc.stderr
    assert proc.stdout == ""


# --------------------------------------------------------------------------- track


@pytest.fixture(scope="module")
def llama_dirs(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("dirs") / "v.safetensors"
    assert estimate(tiny, "llama", out) == 0
    return out


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_track_witness_is_fully_aligned_and_aligned_has_no_drift(tiny, llama_dirs, tmp_path, capsys):
    out = tmp_path / "track.csv"
    assert main(["track", "--directions", str(llama_dirs), "--aligned", str(tiny.llama.aligned), "--prompts",
                 str(tiny.harmful), "--device", "cpu", "--out", str(out),
                 str(tiny.llama.witness), str(tiny.llama.aligned)]) == 0
    printed = capsys.readouterr().out
    dirs = Directions.load(llama_dirs)
    layer = dirs.layer
    # The one threshold rule: here (d = 32) the matched p99 lies below the isotropic one, which is the bar.
    value, source = null_threshold(32, dirs.meta["matched_p99"][layer])
    assert dirs.meta["matched_p99"][layer] < value and source == "isotropic p99"
    assert f"threshold {value:.4f} ({source})" in printed and "wrote" in printed
    rows = _rows(out)
    assert [float(r["threshold"]) for r in rows] == [value, value]  # written as repr: exact
    assert [r["checkpoint"] for r in rows] == [str(tiny.llama.witness), str(tiny.llama.aligned)]
    w, a = rows
    assert int(w["layer"]) == layer
    # drift of the witness itself is mu_H - mu_S: alignment 1, one displacement along v_rev
    assert float(w["alignment"]) == pytest.approx(1.0, abs=1e-9)
    assert float(w["relative_projection"]) == pytest.approx(1.0, abs=1e-9)
    assert w["above"] == "True"
    assert float(a["drift_norm"]) == 0.0 and float(a["alignment"]) == 0.0 and a["above"] == "False"


def test_track_all_layers_and_watch(tiny, llama_dirs, tmp_path):
    run = tmp_path / "run"
    for step, src in ((20, tiny.llama.witness), (10, tiny.llama.aligned)):
        shutil.copytree(src, run / f"checkpoint-{step}")
    (run / "logs").mkdir()  # not a checkpoint: ignored
    out = tmp_path / "watch.csv"
    assert main(["track", "--directions", str(llama_dirs), "--aligned", str(tiny.llama.aligned), "--prompts",
                 str(tiny.harmful), "--device", "cpu", "--all-layers", "--watch", str(run), "--interval", "0",
                 "--max-polls", "2", "--out", str(out)]) == 0
    rows = _rows(out)
    assert len(rows) == 2 * (LAYERS + 1)
    assert [int(r["step"]) for r in rows] == [10] * (LAYERS + 1) + [20] * (LAYERS + 1)
    witness_rows = [r for r in rows if r["step"] == "20" and r["layer"] != "0"]
    assert all(float(r["alignment"]) == pytest.approx(1.0, abs=1e-9) for r in witness_rows)


def test_track_given_threshold_and_relative_paths(tiny, llama_dirs, monkeypatch, capsys):
    monkeypatch.chdir(tiny.root)
    assert main(["track", "--directions", str(llama_dirs), "--aligned", "llama/aligned", "--prompts",
                 str(tiny.harmful), "--threshold", "0.5", "--device", "cpu", "llama/witness"]) == 0
    out = capsys.readouterr().out
    assert "threshold 0.5000 (given)" in out
    line = [x for x in out.splitlines() if x.startswith("llama/witness")][0]
    assert line.split()[1:] == ["-", "1.0000", line.split()[3], line.split()[4], "yes"]


def test_track_threshold_in_null_units(tiny, llama_dirs, capsys):
    base = ["track", "--directions", str(llama_dirs), "--aligned", str(tiny.llama.aligned), "--prompts",
            str(tiny.harmful), "--device", "cpu"]
    dirs = Directions.load(llama_dirs)
    value, source = null_threshold(32, dirs.meta["matched_p99"][dirs.layer])
    assert main([*base, "--threshold-null", "1.5", str(tiny.llama.witness)]) == 0
    assert f"threshold {1.5 * value:.4f} (1.5 x {source})" in capsys.readouterr().out
    fails(capsys, [*base, "--threshold", "0.3", "--threshold-null", "1", str(tiny.llama.witness)],
          "--threshold", "--threshold-null", "not both")
    fails(capsys, [*base, "--threshold-null", "0", str(tiny.llama.witness)], "--threshold-null")


def test_track_argument_errors(tiny, llama_dirs, tmp_path, capsys):
    base = ["track", "--directions", llama_dirs, "--aligned", tiny.llama.aligned, "--prompts", tiny.harmful,
            "--device", "cpu"]
    fails(capsys, base, "CHECKPOINT", "--watch")
    fails(capsys, [*base, tmp_path / "gone"], "CHECKPOINT", "gone", "not found")
    fails(capsys, [*base, tiny.gpt2.witness], "CHECKPOINT", "family", "gpt2")
    fails(capsys, [*base, tiny.llama_wide], "CHECKPOINT", "hidden_size")
    fails(capsys, [*base, "--layer", "5", tiny.llama.witness], "--layer", "out of range")
    fails(capsys, [*base, "--watch", tmp_path / "nowhere"], "--watch", "not a directory")
    fails(capsys, ["track", "--directions", tmp_path / "none.safetensors", "--aligned", tiny.llama.aligned,
                   "--prompts", tiny.harmful, tiny.llama.witness], "--directions", "none.safetensors")
    fails(capsys, ["track", "--directions", llama_dirs, "--aligned", tiny.llama_wide, "--prompts", tiny.harmful,
                   tiny.llama_wide], "--directions", "width 32", "hidden_size 48")
    fails(capsys, ["track", "--directions", llama_dirs, "--aligned", tiny.llama.aligned, "--prompts", tiny.empty,
                   tiny.llama.witness], "--prompts", "no prompts")
    (tmp_path / "junk.safetensors").write_text("not a safetensors file")
    fails(capsys, ["track", "--directions", tmp_path / "junk.safetensors", "--aligned", tiny.llama.aligned,
                   "--prompts", tiny.harmful, tiny.llama.witness], "--directions", "cannot read")


@pytest.mark.parametrize("side", ["below", "above"])
def test_track_threshold_is_the_null_rule(tiny, llama_dirs, tmp_path, capsys, side):
    """With a matched p99 planted below the isotropic one the bar stays the isotropic p99; planted
    above it, the matched p99 is the bar (:func:`null_threshold`), printed and in the CSV."""
    dirs = Directions.load(llama_dirs)
    iso = dirs.meta["isotropic_p99"]
    matched = list(dirs.meta["matched_p99"])
    matched[dirs.layer] = 0.5 * iso if side == "below" else (1 + iso) / 2
    planted = tmp_path / "v.safetensors"
    Directions(dirs.v_rev, dirs.v_P, dirs.r_S, dirs.displacement_norm, dirs.activation_norm,
               {**dirs.meta, "matched_p99": matched}).save(planted)
    value, source = null_threshold(32, matched[dirs.layer])
    assert source == ("isotropic p99" if side == "below" else "matched null p99")
    out = tmp_path / "t.csv"
    assert main(["track", "--directions", str(planted), "--aligned", str(tiny.llama.aligned), "--prompts",
                 str(tiny.harmful), "--device", "cpu", "--out", str(out), str(tiny.llama.witness)]) == 0
    assert f"threshold {value:.4f} ({source})" in capsys.readouterr().out
    assert [float(r["threshold"]) for r in _rows(out)] == [value]


# --------------------------------------------------------------------------- track: the stage


def test_the_track_stage_gives_the_commands_rows(tiny, llama_dirs, tmp_path, capsys):
    """``reversion track`` prints and writes what :func:`reversion.stages.track.track` returns:
    readings in step order, every layer with ``all_layers``, frozen."""
    run = tmp_path / "run"
    for step, src in ((20, tiny.llama.witness), (10, tiny.llama.aligned)):
        shutil.copytree(src, run / f"checkpoint-{step}")
    ckpts = [run / "checkpoint-20", run / "checkpoint-10", tiny.llama.witness]
    out = tmp_path / "t.csv"
    assert main(["track", "--directions", str(llama_dirs), "--aligned", str(tiny.llama.aligned), "--prompts",
                 str(tiny.harmful), "--device", "cpu", "--all-layers", "--out", str(out), *map(str, ckpts)]) == 0
    capsys.readouterr()
    reader = CheckpointReader(tiny.llama.aligned, tiny.harmful, device="cpu")
    res = track(llama_dirs, reader, ckpts, all_layers=True)
    assert isinstance(res, TrackResult) and res.layers == tuple(range(LAYERS + 1))
    assert res.layer == Directions.load(llama_dirs).layer and res.same_prompts and res.n_prompts == tiny.n_prompts
    assert (res.threshold, res.threshold_source) == threshold(32, res.layer, Directions.load(llama_dirs).meta[
        "matched_p99"])
    assert [r.step for r in res.at_layer()] == [10, 20, None]  # step order, the unnumbered one last
    rows = _rows(out)
    assert len(rows) == len(res.readings) == 3 * (LAYERS + 1)
    for row, rec in zip(rows, res.records()):
        assert row == {k: "" if v is None else str(v) for k, v in rec.items()}
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.layer = 0


def test_the_track_stage_names_its_inputs(tiny, llama_dirs, tmp_path):
    reader = CheckpointReader(tiny.llama.aligned, tiny.harmful, device="cpu")
    with pytest.raises(TrackError, match=r"^layer: layer 5 is out of range \[0, 2\]"):
        track(llama_dirs, reader, [tiny.llama.witness], layer=5)
    with pytest.raises(TrackError, match="^threshold must be a finite number"):
        track(llama_dirs, reader, [tiny.llama.witness], threshold=float("nan"))
    with pytest.raises(TrackError, match="^position must be one of"):
        track(llama_dirs, reader, [tiny.llama.witness], position="first")
    with pytest.raises(TrackError, match="^directions: .*none.safetensors"):
        track(tmp_path / "none.safetensors", reader, [tiny.llama.witness])
    with pytest.raises(TrackError, match="^directions: v_rev has width 32 but aligned has hidden_size 48"):
        track(llama_dirs, CheckpointReader(tiny.llama_wide, tiny.harmful, tokenizer=tiny.tokenizer), [])
    with pytest.raises(ValueError, match=r"gone: path not found"):
        track(llama_dirs, reader, [tmp_path / "gone"])
    with pytest.raises(ValueError, match="^aligned: path not found"):
        CheckpointReader(tmp_path / "nowhere", tiny.harmful)
    with pytest.raises(ValueError, match="^prompts: .*no prompts"):
        CheckpointReader(tiny.llama.aligned, tiny.empty)
    with pytest.raises(ValueError, match="^tokenizer: "):
        CheckpointReader(tiny.llama.aligned, tiny.harmful, tokenizer=tmp_path / "no_tok")
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        CheckpointReader(tiny.llama.aligned, tiny.harmful, batch_size=0)


# --------------------------------------------------------------------------- book


def test_book_passes_arguments_through(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["book", "--help"])
    assert exc.value.code == 0
    assert "python -m reversion.book" in capsys.readouterr().out


# --------------------------------------------------------------------------- failures, Ctrl-C, progress, --device-map
#
# Status 2 (usage) stays for argument problems; a failure after the arguments were accepted -- a model
# that does not load, memory that runs out -- is status 1 with one line naming the cause; Ctrl-C is
# 130 after keeping what was done.


def _one_line_error(capsys, command: str) -> str:
    """The one line a failure (status 1) leaves on stderr: its cause, no usage."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"reversion {command}: error: ") and "usage:" not in err
    return lines[0]


def _estimate_argv(tiny, out, *extra, fast=FAST):
    return ["estimate", "--witness", str(tiny.llama.witness), "--aligned", str(tiny.llama.aligned), "--prompts",
            str(tiny.harmful), "--out", str(out), *fast, *map(str, extra)]


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nGPU 0 "
                                                          "has a total capacity of 79.1 GiB"), MemoryError()],
                         ids=["cuda", "cpu"])
def test_out_of_memory_exits_1_with_the_settings_to_try(tiny, llama_dirs, tmp_path, monkeypatch, capsys, error):
    def out_of_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr("reversion.stages.estimate.measure", out_of_memory)
    out = tmp_path / "v.safetensors"
    assert main(_estimate_argv(tiny, out)) == 1
    line = _one_line_error(capsys, "estimate")
    assert f"out of memory ({type(error).__name__}" in line
    assert "--dtype bfloat16" in line and "--device-map auto" in line and "--batch-size (now 16)" in line
    assert not out.exists()
    # the settings already given are not offered again
    assert main(_estimate_argv(tiny, out, "--dtype", "bfloat16", "--batch-size", "1")) == 1
    line = _one_line_error(capsys, "estimate")
    assert "--dtype" not in line and "--batch-size" not in line and "--device-map auto" in line
    # track: the same
    from reversion.stages.track import Tracker

    monkeypatch.setattr(Tracker, "reference", out_of_memory)
    assert main(["track", "--directions", str(llama_dirs), "--aligned", str(tiny.llama.aligned), "--prompts",
                 str(tiny.harmful), "--device", "cpu", str(tiny.llama.witness)]) == 1
    assert "out of memory" in _one_line_error(capsys, "track")


def test_a_model_too_large_exits_1_with_its_size_and_the_settings_that_fit(tiny, tmp_path, monkeypatch, capsys):
    from reversion.core import models

    need = models.weight_bytes({}, None, models.checkpoint_tensors(tiny.llama.aligned))  # float32, as saved
    monkeypatch.setattr(models, "free_bytes", lambda device: int(0.75 * need))  # bfloat16 fits, float32 does not
    out = tmp_path / "v.safetensors"
    assert main(_estimate_argv(tiny, out)) == 1
    line = _one_line_error(capsys, "estimate")
    assert "out of memory:" in line and "the model does not fit" in line and models._size(need) in line
    assert "settings that would fit: --dtype bfloat16" in line and "LoRA" in line and "gradient checkpointing" in line
    assert not out.exists()
    assert main(_estimate_argv(tiny, out, "--dtype", "bfloat16")) == 0  # the setting it names fits
    assert out.exists()


def test_a_model_that_does_not_load_exits_1_not_2(tiny, llama_dirs, tmp_path, capsys):
    """Weights of another width under this config: every check passes (the files are whole, the
    config is the aligned one's), and ``from_pretrained`` fails. (A truncated weight file is found
    before loading: an argument error, ``tests/test_bad_inputs.py``.)"""
    broken = tmp_path / "mismatched"
    shutil.copytree(tiny.llama.witness, broken)
    shutil.copy(tiny.llama_wide / "model.safetensors", broken / "model.safetensors")
    out = tmp_path / "v.safetensors"
    assert main(["estimate", "--witness", str(broken), "--aligned", str(tiny.llama.aligned), "--prompts",
                 str(tiny.harmful), "--out", str(out), *FAST]) == 1
    line = _one_line_error(capsys, "estimate")
    assert f"--witness: could not load the model at {broken} (RuntimeError: " in line
    assert not out.exists()
    # track: what was read before the failure stays in --out
    rows = tmp_path / "t.csv"
    assert main(["track", "--directions", str(llama_dirs), "--aligned", str(tiny.llama.aligned), "--prompts",
                 str(tiny.harmful), "--device", "cpu", "--out", str(rows), str(tiny.llama.witness), str(broken)]) == 1
    assert f"CHECKPOINT {broken}: could not load the model" in _one_line_error(capsys, "track")
    assert [r["checkpoint"] for r in _rows(rows)] == [str(tiny.llama.witness)]


def test_ctrl_c_mid_estimate_leaves_nothing_at_out(tiny, tmp_path, monkeypatch, capsys):
    from reversion.core import directions

    out = tmp_path / "out" / "v.safetensors"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("reversion.stages.estimate.measure", interrupted)
    assert main(_estimate_argv(tiny, out)) == 130
    assert capsys.readouterr().err.strip() == "stopped" and not out.exists()
    monkeypatch.undo()

    def half_written(tensors, path, metadata=None):  # stopped while the file is being written
        Path(path).write_bytes(b"part of a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(directions, "save_file", half_written)
    assert main(_estimate_argv(tiny, out)) == 130
    assert capsys.readouterr().err.strip() == "stopped"
    assert not out.exists() and list(out.parent.iterdir()) == []  # nor any part of it beside
    out.write_bytes(b"an earlier estimate")
    assert main(_estimate_argv(tiny, out)) == 130
    assert out.read_bytes() == b"an earlier estimate" and list(out.parent.iterdir()) == [out]
    monkeypatch.undo()
    assert main(_estimate_argv(tiny, out)) == 0  # the control: the same run, uninterrupted, writes it
    assert Directions.load(out).v_rev.shape == (LAYERS + 1, 32)


def test_ctrl_c_in_track_keeps_the_rows_and_exits_130(tiny, llama_dirs, tmp_path, monkeypatch, capsys):
    from reversion.stages.track import Tracker

    read, seen = Tracker.read, []

    def read_then_stop(self, checkpoint):
        seen.append(checkpoint)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return read(self, checkpoint)

    monkeypatch.setattr(Tracker, "read", read_then_stop)
    out = tmp_path / "t.csv"
    assert main(["track", "--directions", str(llama_dirs), "--aligned", str(tiny.llama.aligned), "--prompts",
                 str(tiny.harmful), "--device", "cpu", "--out", str(out), str(tiny.llama.witness),
                 str(tiny.llama.aligned)]) == 130
    assert "stopped" in capsys.readouterr().err
    assert [r["checkpoint"] for r in _rows(out)] == [str(tiny.llama.witness)]


class _Terminal:
    """A stderr that says it is a terminal (and keeps what is written)."""

    def __init__(self):
        self.text = []

    def write(self, s):
        self.text.append(s)
        return len(s)

    def flush(self):
        pass

    def isatty(self):
        return True

    def value(self):
        return "".join(self.text)


def test_estimate_shows_progress_on_a_terminal_only(tiny, tmp_path, monkeypatch, capsys):
    assert main(_estimate_argv(tiny, tmp_path / "a.safetensors")) == 0  # stderr is no terminal here
    plain = capsys.readouterr()
    assert "prompt/s" not in plain.err and "it/s" not in plain.err
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(_estimate_argv(tiny, tmp_path / "b.safetensors")) == 0
    shown = terminal.value()
    # the probes through theta_H and theta_S, and through theta_H again for its first answer token
    assert f"/{3 * tiny.n_prompts} " in shown and "prompt" in shown and "theta_H" in shown and "theta_S" in shown
    assert capsys.readouterr().out == plain.out.replace("a.safetensors", "b.safetensors")  # stdout unchanged
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert main(_estimate_argv(tiny, tmp_path / "c.safetensors", "--quiet")) == 0
    assert "prompt" not in quiet.value()
    assert torch.equal(Directions.load(tmp_path / "b.safetensors").v_rev, Directions.load(tmp_path / "c.safetensors").v_rev)


def test_device_map_flag(tiny, llama_dirs, tmp_path, monkeypatch, capsys):
    """``--device-map cpu`` loads straight onto the CPU: the numbers of ``--device cpu``. A device
    the machine lacks, or both flags, are argument errors naming the flag."""
    no_device = ["--n-null", "200", "--n-boot", "20"]
    out = tmp_path / "v.safetensors"
    assert main(_estimate_argv(tiny, out, "--device-map", "cpu", fast=no_device)) == 0
    assert "device map cpu" in capsys.readouterr().out
    assert torch.equal(Directions.load(out).v_rev, Directions.load(llama_dirs).v_rev)
    track = ["track", "--directions", str(llama_dirs), "--aligned", str(tiny.llama.aligned), "--prompts",
             str(tiny.harmful)]
    assert main([*track, "--device-map", "cpu", "--out", str(tmp_path / "m.csv"), str(tiny.llama.witness)]) == 0
    assert main([*track, "--device", "cpu", "--out", str(tmp_path / "d.csv"), str(tiny.llama.witness)]) == 0
    assert _rows(tmp_path / "m.csv") == _rows(tmp_path / "d.csv")
    bad = tmp_path / "bad.safetensors"
    fails(capsys, _estimate_argv(tiny, bad, "--device-map", "cuda:0", fast=no_device), "--device-map: 'cuda:0' asks "
          "for a GPU, but this machine has none")
    fails(capsys, _estimate_argv(tiny, bad, "--device-map", "cpu"), "--device-map: give --device or --device-map")
    fails(capsys, _estimate_argv(tiny, bad, "--device-map", "{nope", fast=no_device), "--device-map: not a JSON object")
    fails(capsys, [*track, "--device-map", '{"model": "cuda:1", "lm_head": "cpu"}', str(tiny.llama.witness)],
          "--device-map['model']: 'cuda:1' asks for a GPU")
    # a GPU without bfloat16 (simulated: there is none here) refuses --dtype bfloat16 on it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    fails(capsys, _estimate_argv(tiny, bad, "--device-map", "cuda:0", "--dtype", "bfloat16", fast=no_device),
          "--dtype: bfloat16 is not supported natively by cuda:0")
    fails(capsys, [*track, "--device-map", "cuda:0", "--dtype", "bfloat16", str(tiny.llama.witness)],
          "--dtype: bfloat16 is not supported natively by cuda:0")
    assert not bad.exists()
