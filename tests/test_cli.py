"""The ``reversion`` command line: estimate, track, book; argument errors (reversion.cli)."""

from __future__ import annotations

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
