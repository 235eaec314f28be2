"""``reversion track`` on LoRA adapter checkpoints (what a ``peft`` run saves as ``checkpoint-N/``).

Tiny local models only: a random Llama (theta_S), a perturbed copy as the witness, and LoRA
adapters with random, non-zero weights on theta_S. An adapter read unmerged on the base
must give the numbers of the same adapter merged into a full checkpoint (float32:
agreement to 1e-6 relative); a missing or foreign base and an adapter whose target modules
the base lacks are argument errors that name the input; ``--watch`` reads adapter folders.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from reversion.cli import main
from reversion.core.models import load_model
from reversion.subjects.checkpoints.files import is_adapter

from helpers import fails, make_model, save

FAST = ["--device", "cpu", "--n-null", "200", "--n-boot", "20"]


def _adapter(base_dir: Path, out: Path, seed: int, targets=("q_proj", "v_proj")) -> Path:
    """A LoRA adapter with random A and B (so it changes the model) saved like a Trainer checkpoint."""
    torch.manual_seed(seed)
    model = load_model(base_dir, device="cpu")
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets),
                                                  init_lora_weights=False))
    with torch.no_grad():  # larger than peft's default init, so the drift is clearly non-zero
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.mul_(3.0)
    peft_model.save_pretrained(out)
    (out / "trainer_state.json").write_text(json.dumps({"global_step": seed}))
    return out


@pytest.fixture(scope="module")
def lora(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("lora")
    direction = root / "v_rev.safetensors"
    assert main(["estimate", "--witness", str(tiny.llama.witness), "--aligned", str(tiny.llama.aligned),
                 "--prompts", str(tiny.harmful), "--out", str(direction), *FAST]) == 0
    run = root / "run"
    a5 = _adapter(tiny.llama.aligned, run / "checkpoint-5", 5)
    a10 = _adapter(tiny.llama.aligned, run / "checkpoint-10", 10)
    merged = PeftModel.from_pretrained(load_model(tiny.llama.aligned, device="cpu"), str(a5)).merge_and_unload()
    merged_dir = save(merged, None, root / "merged-5")
    return {"root": root, "direction": direction, "run": run, "a5": a5, "a10": a10, "merged": merged_dir}


def _track(tiny, lora, out: Path, *checkpoints, extra=()) -> list[dict]:
    assert main(["track", "--directions", str(lora["direction"]), "--aligned", str(tiny.llama.aligned),
                 "--prompts", str(tiny.harmful), "--device", "cpu", "--out", str(out), *map(str, extra),
                 *map(str, checkpoints)]) == 0
    with out.open() as f:
        return list(csv.DictReader(f))


def test_an_adapter_folder_is_recognised(lora, tiny):
    assert is_adapter(lora["a5"]) and not (lora["a5"] / "config.json").exists()
    assert not is_adapter(tiny.llama.aligned)


def test_unmerged_adapters_read_as_their_merged_checkpoint(tiny, lora, tmp_path):
    rows = _track(tiny, lora, tmp_path / "t.csv", lora["a5"], lora["a10"], lora["merged"])
    by = {Path(r["checkpoint"]).name: r for r in rows}
    a5, a10, merged = by["checkpoint-5"], by["checkpoint-10"], by["merged-5"]
    for key in ("alignment", "projection", "drift_norm"):
        assert float(a5[key]) == pytest.approx(float(merged[key]), rel=1e-6, abs=1e-9), key
    assert float(a5["drift_norm"]) > 1e-3  # the adapter moved the model: not a trivial zero
    # Each adapter is read on its own (swapped, not stacked): the second differs from the first.
    assert abs(float(a10["projection"]) - float(a5["projection"])) > 1e-6
    assert [r["step"] for r in rows] == ["5", "5", "10"]  # read in step order


def test_the_base_defaults_to_aligned_and_can_be_named(tiny, lora, tmp_path):
    default = _track(tiny, lora, tmp_path / "a.csv", lora["a5"])
    named = _track(tiny, lora, tmp_path / "b.csv", lora["a5"], extra=["--base", tiny.llama.aligned])
    assert default[0]["alignment"] == named[0]["alignment"]


def test_watch_reads_adapter_checkpoints(tiny, lora, tmp_path):
    assert main(["track", "--directions", str(lora["direction"]), "--aligned", str(tiny.llama.aligned),
                 "--prompts", str(tiny.harmful), "--device", "cpu", "--out", str(tmp_path / "w.csv"),
                 "--watch", str(lora["run"]), "--interval", "0", "--max-polls", "1"]) == 0
    with (tmp_path / "w.csv").open() as f:
        assert sorted(Path(r["checkpoint"]).name for r in csv.DictReader(f)) == ["checkpoint-10", "checkpoint-5"]


def test_bad_bases_and_adapters_are_argument_errors(tiny, lora, tmp_path, capsys):
    common = ["track", "--directions", lora["direction"], "--aligned", tiny.llama.aligned,
              "--prompts", tiny.harmful, "--device", "cpu"]
    fails(capsys, [*common, "--base", tmp_path / "nowhere", lora["a5"]], "--base", "path not found")
    fails(capsys, [*common, "--base", tiny.llama_wide, lora["a5"]], "--base", "width")
    # An adapter for modules this base does not have (GPT-2's c_attn on a Llama).
    gpt2_dir = save(make_model("gpt2", _tok(tiny)), None, tmp_path / "gpt2")
    foreign = _adapter(gpt2_dir, tmp_path / "checkpoint-7", 7, targets=("c_attn",))
    # Its config names the local model it was trained on, which is not the base: refused.
    fails(capsys, [*common, foreign], f"CHECKPOINT {foreign}", "the adapter was trained on", "--base")
    # Named as a hub id (never resolved), it is applied, and peft finds no c_attn in a Llama.
    cfg = json.loads((foreign / "adapter_config.json").read_text())
    (foreign / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "some-org/model"}))
    fails(capsys, [*common, foreign], f"CHECKPOINT {foreign}", "cannot apply the LoRA adapter")
    # An adapter folder whose weights are missing.
    broken = tmp_path / "checkpoint-9"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((lora["a5"] / "adapter_config.json").read_text())
    fails(capsys, [*common, broken], "no adapter weights")
    assert not (tmp_path / "t.csv").exists()


def _tok(tiny):
    from reversion.subjects.checkpoints.textdata import load_tokenizer

    return load_tokenizer(tiny.tokenizer)


def test_a_witness_given_as_an_adapter_is_its_merged_checkpoint(tiny, lora, tmp_path, isolated):
    """Estimation reads an adapter witness merged into the base: the same directions as the
    merged checkpoint folder; without a base, the error names checkpoints['base']."""
    from reversion.stages.estimate import measure
    from reversion.subjects.checkpoints.subject import from_parameters

    common = {"aligned": str(tiny.llama.aligned), "prompts": str(tiny.harmful), "tokenizer": str(tiny.tokenizer)}
    as_adapter = from_parameters({**common, "witness": str(lora["a5"]), "base": str(tiny.llama.aligned)})
    as_folder = from_parameters({**common, "witness": str(lora["merged"])})
    a = measure(as_adapter, 0, n_boot=4).directions
    b = measure(as_folder, 0, n_boot=4).directions
    assert torch.allclose(a.v_rev, b.v_rev, atol=1e-6) and a.layer == b.layer
    assert float((a.displacement_norm - b.displacement_norm).abs().max()) < 1e-5
    assert as_adapter.record()["base"] == str(tiny.llama.aligned)
    with pytest.raises(ValueError, match=r"checkpoints\['witness'\]: .* is a LoRA adapter .*checkpoints\['base'\]"):
        from_parameters({**common, "witness": str(lora["a5"])})
    # The command line takes --base the same way.
    out = tmp_path / "v.safetensors"
    assert main(["estimate", "--witness", str(lora["a5"]), "--base", str(tiny.llama.aligned), "--aligned",
                 str(tiny.llama.aligned), "--prompts", str(tiny.harmful), "--out", str(out), *FAST]) == 0
