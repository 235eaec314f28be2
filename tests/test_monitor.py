"""ReversionMonitor inside a real transformers.Trainer run, and BlockTrainer (reversion.subjects.checkpoints.trainer_hooks)."""

from __future__ import annotations

import csv
import json
import math
import warnings

import pytest
import torch
from transformers import Trainer, TrainingArguments

from reversion.cli import main
from reversion.core import stats
from reversion.core.activations import mean_activations
from reversion.core.directions import Directions
from reversion.analysis import chance
from reversion.core.drift import alignment, null_threshold, read_drift, threshold
from reversion.core.models import load_model
from reversion.stages.track import track
from reversion.subjects.checkpoints.trainer_hooks import (
    BlockTrainer, ObjectiveMixin, ReversionMonitor, ReversionWarning, block_term, reference_mean,
)
from reversion.subjects.checkpoints.reader import CheckpointReader
from reversion.subjects.checkpoints.textdata import (
    PairCollator, encode_pairs, encode_prompts, load_tokenizer, pad_id_of, read_pairs, read_prompts,
)

from helpers import EXAMPLES, planted_pair


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A planted reversion: witness = aligned trained on the benign pairs; directions estimated."""
    root = tmp_path_factory.mktemp("planted")
    witness, aligned, tok = planted_pair(root)
    out = root / "v_rev.safetensors"
    assert main(["estimate", "--witness", str(witness), "--aligned", str(aligned), "--prompts",
                 str(EXAMPLES["harmful"]), "--out", str(out), "--device", "cpu", "--n-null", "200",
                 "--n-boot", "20"]) == 0
    probes = encode_prompts(tok, read_prompts(EXAMPLES["harmful"]))
    train = encode_pairs(tok, read_pairs(EXAMPLES["benign"]))
    return {"root": root, "witness": witness, "aligned": aligned, "tok": tok, "dirs": Directions.load(out),
            "probes": probes, "train": train}


def _args(tmp_path, steps=6, **kw):
    base = dict(output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=8,
                learning_rate=3e-3, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, data_seed=0,
                disable_tqdm=True)
    base.update(kw)
    return TrainingArguments(**base)


def _trainer(planted, tmp_path, cls=Trainer, steps=6, **kw):
    model = load_model(planted["aligned"], device="cpu")
    trainer_kw = {k: kw.pop(k) for k in list(kw) if k == "block"}
    return cls(model=model, args=_args(tmp_path, steps, **kw), train_dataset=planted["train"],
               data_collator=PairCollator(pad_id_of(planted["tok"])), **trainer_kw)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_monitor_in_a_trainer_run_logs_and_flags(planted, tmp_path):
    trainer = _trainer(planted, tmp_path, steps=6)
    log = tmp_path / "monitor.csv"
    mon = ReversionMonitor(planted["dirs"], planted["probes"], every=2, patience=2, log_path=log,
                           pad_id=pad_id_of(planted["tok"])).attach(trainer)
    layer = planted["dirs"].layer
    assert (mon.threshold, mon.threshold_source) == null_threshold(mon.d, planted["dirs"].meta["matched_p99"][layer])
    with pytest.warns(ReversionWarning, match="for 2 checks in a row"):
        trainer.train()
    hist = trainer.state.log_history
    ours = [h for h in hist if "reversion/alignment" in h]
    assert [h["step"] for h in ours] == [0, 2, 4, 6]
    # The Trainer's own loss log survives at the monitor's steps (should_log is restored).
    assert [h["step"] for h in hist if "loss" in h] == [1, 2, 3, 4, 5, 6]
    rows = _read_csv(log)
    assert [int(r["step"]) for r in rows] == [0, 2, 4, 6]
    for h, r, m in zip(ours, rows, mon.history):
        assert float(r["alignment"]) == pytest.approx(h["reversion/alignment"], abs=1e-12)
        assert m["alignment"] == h["reversion/alignment"]
    assert ours[0]["reversion/alignment"] == 0.0  # mu_S computed from the model at step 0: no drift
    # Planted: fine-tuning on the witness's own data moves straight toward the witness.
    assert all(h["reversion/alignment"] > mon.threshold for h in ours[1:])
    assert ours[-1]["reversion/relative_projection"] > 0
    assert mon.flagged and mon.flagged_step == 4
    assert rows[-1]["flagged"] == "True" and rows[1]["flagged"] == "False"
    s = mon.summary()
    assert s["checks"] == 4 and s["flagged"] and s["max_alignment"] == max(h["reversion/alignment"] for h in ours)


def test_monitor_values_match_a_direct_measurement(planted, tmp_path):
    """The monitor's alignment equals cos(mu_t - mu_S, v_rev) measured on the trained model."""
    trainer = _trainer(planted, tmp_path, steps=3)
    mu_S = mean_activations(trainer.model, planted["probes"], "all", pad_id=pad_id_of(planted["tok"]))
    mon = ReversionMonitor(planted["dirs"], planted["probes"], mu_S=mu_S, every=3, threshold=0.99,
                           pad_id=pad_id_of(planted["tok"]), log_path=tmp_path / "m.jsonl")
    trainer.add_callback(mon)  # not attached: values go to state.log_history directly
    trainer.train()
    layer = planted["dirs"].layer
    mu_t = mean_activations(trainer.model, planted["probes"], "all", pad_id=pad_id_of(planted["tok"]))
    expected = float(alignment(mu_t - mu_S, planted["dirs"].v_rev)[layer])
    read = read_drift(mu_t[layer], mu_S[layer], planted["dirs"].v_rev[layer],
                      float(planted["dirs"].displacement_norm[layer]))
    assert read["alignment"] == pytest.approx(expected, abs=1e-12)
    last = [h for h in trainer.state.log_history if "reversion/alignment" in h][-1]
    assert last["step"] == 3
    assert last["reversion/alignment"] == pytest.approx(expected, abs=1e-9)
    for key in ("projection", "drift_norm", "relative_projection"):
        assert last[f"reversion/{key}"] == pytest.approx(read[key], abs=1e-9)
    lines = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 3] and lines[-1]["alignment"] == pytest.approx(expected, abs=1e-9)
    assert not mon.flagged


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_monitor_with_both_families(tiny, family, tmp_path):
    pair = getattr(tiny, family)
    out = tmp_path / "v.safetensors"
    assert main(["estimate", "--witness", str(pair.witness), "--aligned", str(pair.aligned), "--prompts",
                 str(tiny.harmful), "--out", str(out), "--device", "cpu", "--n-null", "100", "--n-boot", "10"]) == 0
    tok = load_tokenizer(tiny.tokenizer)
    probes = encode_prompts(tok, read_prompts(tiny.harmful))
    model = load_model(pair.aligned, device="cpu")
    trainer = Trainer(model=model, args=_args(tmp_path, 2), train_dataset=encode_pairs(tok, read_pairs(tiny.benign)),
                      data_collator=PairCollator(pad_id_of(tok)))
    mon = ReversionMonitor(Directions.load(out), probes, every=1, pad_id=pad_id_of(tok),
                           log_path=tmp_path / "log.jsonl").attach(trainer)
    trainer.train()
    steps = [h["step"] for h in trainer.state.log_history if "reversion/alignment" in h]
    assert steps == [0, 1, 2] and len(mon.history) == 3
    assert all(-1 <= r["alignment"] <= 1 for r in mon.history)


def test_stop_on_flag_and_planted_threshold(planted, tmp_path):
    trainer = _trainer(planted, tmp_path, steps=8)
    mon = ReversionMonitor(planted["dirs"], planted["probes"], every=2, threshold=-1.0, patience=2,
                           stop_on_flag=True, pad_id=pad_id_of(planted["tok"])).attach(trainer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReversionWarning)
        trainer.train()
    assert mon.flagged and mon.flagged_step == 2
    assert trainer.state.global_step == 2


def test_threshold_defaults(planted):
    dirs = planted["dirs"]
    probes = planted["probes"]
    d = dirs.v_rev.shape[1]
    layer = dirs.layer
    assert (ReversionMonitor(dirs, probes).threshold, ReversionMonitor(dirs, probes).threshold_source) \
        == null_threshold(d, dirs.meta["matched_p99"][layer])
    bare = Directions(dirs.v_rev, None, None, dirs.displacement_norm, dirs.activation_norm, {"layer": layer})
    m = ReversionMonitor(bare, probes)
    assert m.threshold_source == "isotropic p99"
    assert m.threshold == pytest.approx(stats.isotropic_cos_quantile(d, 0.99))
    t = ReversionMonitor(dirs.v_rev[layer], probes, layer=layer, threshold=0.5)
    assert (t.threshold, t.threshold_source, t.displacement) == (0.5, "given", None)
    # The rule is the one ``reversion track`` uses (core.drift.threshold).
    for mon, matched, given in ((ReversionMonitor(dirs, probes), dirs.meta["matched_p99"], None), (m, None, None),
                                (t, dirs.meta["matched_p99"], 0.5)):
        assert (mon.threshold, mon.threshold_source) == threshold(d, layer, matched, given)


def with_matched(dirs: Directions, value: float) -> Directions:
    """``dirs`` with a planted matched-null p99 at their layer."""
    matched = list(dirs.meta["matched_p99"])
    matched[dirs.layer] = value
    return Directions(dirs.v_rev, dirs.v_P, dirs.r_S, dirs.displacement_norm, dirs.activation_norm,
                      {**dirs.meta, "matched_p99": matched})


@pytest.mark.parametrize("side", ["below", "above"])
def test_monitor_and_track_apply_the_one_threshold_rule(planted, tmp_path, side):
    """A matched p99 planted below the isotropic one does not lower the bar; one above it is the
    bar: the book's Null test (:func:`reversion.analysis.chance.stricter_p99`), the monitor and
    the tracking stage all give :func:`null_threshold`'s value."""
    dirs = planted["dirs"]
    d = dirs.v_rev.shape[1]
    iso = stats.isotropic_cos_quantile(d, 0.99)
    matched = 0.5 * iso if side == "below" else (1 + iso) / 2
    want = null_threshold(d, matched)
    assert want == ((iso, "isotropic p99") if side == "below" else (matched, "matched null p99"))
    assert chance.stricter_p99({"isotropic": iso, "matched": matched}, d) == want[0]  # the book
    planted_dirs = with_matched(dirs, matched)
    mon = ReversionMonitor(planted_dirs, planted["probes"], pad_id=pad_id_of(planted["tok"]))
    assert (mon.threshold, mon.threshold_source) == want
    path = tmp_path / "v_rev.safetensors"
    planted_dirs.save(path)
    res = track(path, CheckpointReader(planted["aligned"], EXAMPLES["harmful"], device="cpu"), [planted["witness"]])
    assert (res.threshold, res.threshold_source) == want
    assert res.readings[0].threshold == want[0]
    assert res.readings[0].above == (res.readings[0].alignment > want[0])


def test_the_short_import_path_exposes_the_same_objects():
    import reversion.monitor as public
    from reversion.stages import track as stage
    from reversion.subjects.checkpoints import trainer_hooks as impl

    for name in ("ReversionMonitor", "ObjectiveMixin", "BlockTrainer", "block_term", "ReversionWarning"):
        assert getattr(public, name) is getattr(impl, name), name
    assert public.track is stage.track and public.TrackResult is stage.TrackResult
    assert public.CheckpointReader is CheckpointReader and public.ObjectiveMixin is ObjectiveMixin
    assert set(public.__all__) <= set(dir(public))


def test_monitor_argument_errors(planted, tiny, tmp_path):
    dirs, probes = planted["dirs"], planted["probes"]
    with pytest.raises(ValueError, match="every"):
        ReversionMonitor(dirs, probes, every=0)
    with pytest.raises(ValueError, match="patience"):
        ReversionMonitor(dirs, probes, patience=0)
    with pytest.raises(ValueError, match="pass layer="):
        ReversionMonitor(dirs.v_rev, probes)
    with pytest.raises(ValueError, match="outside the valid range"):
        ReversionMonitor(dirs, probes, layer=99)
    with pytest.raises(ValueError, match="probe_ids is empty"):
        ReversionMonitor(dirs, [])
    with pytest.raises(ValueError, match=".csv or .jsonl"):
        ReversionMonitor(dirs, probes, log_path=tmp_path / "log.txt")
    with pytest.raises(ValueError, match="mu_S must be"):
        ReversionMonitor(dirs, probes, mu_S=torch.zeros(3))
    with pytest.raises(TypeError, match="Directions or a tensor"):
        ReversionMonitor([0.0, 1.0], probes, layer=1)
    # A model of another width: refused when training begins.
    wide = load_model(tiny.llama_wide, device="cpu")
    trainer = Trainer(model=wide, args=_args(tmp_path, 1), train_dataset=planted["train"],
                      data_collator=PairCollator(pad_id_of(planted["tok"])))
    trainer.add_callback(ReversionMonitor(dirs, probes))
    with pytest.raises(ValueError, match="hidden_size is 48"):
        trainer.train()


def test_reference_mean_matches_mean_activations(planted):
    model = load_model(planted["aligned"], device="cpu")
    layer = planted["dirs"].layer
    mu = reference_mean(model, planted["probes"], layer, pad_id=pad_id_of(planted["tok"]))
    full = mean_activations(model, planted["probes"], "all", pad_id=pad_id_of(planted["tok"]))
    assert torch.allclose(mu, full[layer])


def test_block_trainer_zero_strength_is_the_baseline_and_blocking_opposes_motion(planted, tmp_path):
    runs = {}
    for name, strength in (("plain", None), ("zero", 0.0), ("block", 5.0)):
        trainer = _trainer(planted, tmp_path / name, cls=BlockTrainer, steps=4)
        if strength is not None:
            trainer.block = block_term(trainer.model, planted["dirs"], planted["probes"], strength,
                                       pad_id=pad_id_of(planted["tok"]))
        mon = ReversionMonitor(planted["dirs"], planted["probes"], every=4, threshold=0.99,
                               pad_id=pad_id_of(planted["tok"])).attach(trainer)
        trainer.train()
        runs[name] = (trainer, mon)
    losses = {k: [h["loss"] for h in t.state.log_history if "loss" in h] for k, (t, _) in runs.items()}
    assert losses["zero"] == losses["plain"]
    assert runs["zero"][0].last_block_term is None  # strength 0 adds nothing (no extra forward)
    assert runs["block"][0].last_block_term is not None and math.isfinite(runs["block"][0].last_block_term)
    proj = {k: m.history[-1]["projection"] for k, (_, m) in runs.items()}
    assert proj["block"] < proj["plain"]


def test_monitor_agrees_with_track_on_saved_checkpoints(planted, tmp_path):
    """Monitor values at a save step equal ``reversion track`` on the checkpoint saved there."""
    trainer = _trainer(planted, tmp_path, steps=4, save_strategy="steps", save_steps=2, save_only_model=True)
    log = tmp_path / "monitor.csv"
    ReversionMonitor(planted["dirs"], planted["probes"], every=2, log_path=log,
                     pad_id=pad_id_of(planted["tok"])).attach(trainer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReversionWarning)
        trainer.train()
    out = tmp_path / "track.csv"
    ckpts = [str(tmp_path / "out" / f"checkpoint-{s}") for s in (4, 2)]
    assert main(["track", "--directions", str(planted["root"] / "v_rev.safetensors"), "--aligned",
                 str(planted["aligned"]), "--tokenizer", str(planted["aligned"]), "--prompts",
                 str(EXAMPLES["harmful"]), "--device", "cpu", "--out", str(out), *ckpts]) == 0
    tracked = _read_csv(out)
    assert [int(r["step"]) for r in tracked] == [2, 4]  # read in step order
    monitored = {int(r["step"]): r for r in _read_csv(log)}
    for r in tracked:
        m = monitored[int(r["step"])]
        for key in ("alignment", "projection", "drift_norm"):
            assert float(r[key]) == pytest.approx(float(m[key]), abs=1e-6)


def test_checks_follow_the_trainers_mixed_precision(planted, tmp_path):
    """Under bf16 training the probe forward runs under bf16 autocast, mu_S too: a check at step 0
    reads zero drift, and the values sit within bf16 rounding of the float32 ones."""
    from types import SimpleNamespace

    model = load_model(planted["aligned"], device="cpu")
    assert isinstance(ReversionMonitor.precision(SimpleNamespace(bf16=False, fp16=False), model),
                      type(__import__("contextlib").nullcontext()))
    with ReversionMonitor.precision(SimpleNamespace(bf16=True), model):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")
    trainer = _trainer(planted, tmp_path, steps=2, bf16=True)
    mon = ReversionMonitor(planted["dirs"], planted["probes"], every=1, threshold=0.99,
                           pad_id=pad_id_of(planted["tok"])).attach(trainer)
    trainer.train()
    assert mon.summary()["checks"] == 3
    ours = [h for h in trainer.state.log_history if "reversion/alignment" in h]
    assert ours[0]["reversion/alignment"] == 0.0  # mu_S measured under the same autocast
    layer = planted["dirs"].layer
    mu32 = mean_activations(trainer.model, planted["probes"], [layer], pad_id=pad_id_of(planted["tok"]))[0]
    with ReversionMonitor.precision(SimpleNamespace(bf16=True), trainer.model):
        mu16 = reference_mean(trainer.model, planted["probes"], layer, pad_id=pad_id_of(planted["tok"]))
    assert not torch.equal(mu16, mu32)  # the check really ran in bf16
    assert torch.allclose(mu16, mu32, rtol=0.05, atol=0.05 * float(mu32.abs().max()))
