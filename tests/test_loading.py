"""Loading big models (reversion.core.models): ``device_map``, dtype by name, the size estimate
read before loading, and the bad settings refused before any work.

There is no GPU here: where a test needs one, ``torch.cuda`` is monkeypatched to report GPUs
(:func:`gpus`), and the memory query (:func:`reversion.core.models.free_bytes`) to report a
planted number of free bytes; the code under test asks torch the same questions on a real
machine. Every refusal has its positive control (the same call with the fault removed passes).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from reversion.core import models
from reversion.core.models import (
    ModelTooLarge,
    checkpoint_tensors,
    load_model,
    merged_adapter,
    parameter_count,
    placement,
    preflight,
    weight_bytes,
)
from reversion.subjects.checkpoints.files import CheckpointError, parse_device_map, torch_dtype
from reversion.subjects.checkpoints.subject import from_parameters


pytestmark = pytest.mark.usefixtures("one_thread")


def gpus(monkeypatch, n: int, bf16: bool = True) -> None:
    """Make this CPU-only process see ``n`` GPUs (``bf16``: with native bfloat16)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)


def free(monkeypatch, cpu: int, gpu: int = 0) -> None:
    """Plant the free memory each device reports."""
    monkeypatch.setattr(models, "free_bytes", lambda d: cpu if d.type == "cpu" else gpu)


def logits(model, ids=((5, 9, 2, 7, 11, 3),)) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids)).logits


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_device_map_cpu_gives_todays_logits(tiny, family):
    """``device_map=None`` is today's path (load, then ``.to``); ``device_map="cpu"`` loads straight
    there through ``from_pretrained(device_map=...)``: the same model, bit for bit."""
    path = getattr(tiny, family).aligned
    today = load_model(path, "cpu")
    mapped = load_model(path, device_map="cpu")
    by_dict = load_model(path, device_map={"": "cpu"})
    assert not today.training and not mapped.training
    assert torch.equal(logits(today), logits(mapped)) and torch.equal(logits(today), logits(by_dict))
    assert getattr(mapped, "hf_device_map", {"": "cpu"}) in ({"": "cpu"}, {"": torch.device("cpu")})


def test_dtype_by_name(tiny):
    path = tiny.llama.aligned
    assert next(load_model(path, "cpu", "bfloat16").parameters()).dtype == torch.bfloat16
    assert next(load_model(path, device_map="cpu", dtype=torch_dtype("float16")).parameters()).dtype == torch.float16
    assert next(load_model(path, "cpu", "auto").parameters()).dtype == torch.float32  # as saved
    with pytest.raises(ValueError, match="^dtype: not a floating-point dtype: 'int8'"):
        load_model(path, "cpu", "int8")
    with pytest.raises(ValueError, match=r"^checkpoints\['dtype'\] must be one of auto, float32, bfloat16, float16"):
        torch_dtype("half", "checkpoints['dtype']")


def test_float16_runs_on_the_cpu(tiny):
    """float16 on the CPU is accepted (see ``check_dtype``): it runs, and agrees with float32 to
    float16's precision."""
    path = tiny.llama.aligned
    half = logits(load_model(path, "cpu", "float16"))
    full = logits(load_model(path, "cpu", "float32"))
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    assert torch.allclose(half.float(), full, atol=2e-2, rtol=2e-2)


# --------------------------------------------------------------------------- the size estimate


def test_parameter_count_is_the_hand_count():
    """A tiny Llama (V=100, d=16, 2 layers, 4 heads of 4, 2 KV heads, I=24, untied head):
    embeddings 100*16 = 1600; per layer q 16*16 + k 16*8 + v 16*8 + o 16*16 = 768, MLP
    3*16*24 = 1152, two norms 32: 1952, two layers 3904; final norm 16; head 1600: 7120.
    A tiny GPT-2 (V=100, 32 positions, d=16, 2 layers, inner 64, tied head): wte 1600 + wpe 512;
    per layer ln 32 + c_attn 16*48+48 + c_proj 16*16+16 + ln 32 + c_fc 16*64+64 + c_proj 64*16+16
    = 3280, two layers 6560; ln_f 32: 8704."""
    llama = dict(model_type="llama", vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=24, tie_word_embeddings=False)
    gpt2 = dict(model_type="gpt2", vocab_size=100, n_positions=32, n_embd=16, n_layer=2, n_head=4)
    assert parameter_count(llama) == 7120
    assert parameter_count(gpt2) == 8704
    # the models those configs build have exactly that many
    assert sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(**llama)).parameters()) == 7120
    assert sum(p.numel() for p in GPT2LMHeadModel(GPT2Config(**gpt2)).parameters()) == 8704
    # and the published sizes: Llama-2-7B, GPT-2 small
    llama2_7b = dict(model_type="llama", vocab_size=32000, hidden_size=4096, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008)
    assert parameter_count(llama2_7b) == 6_738_415_616
    assert parameter_count(dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=768,
                                n_layer=12)) == 124_439_808
    # bytes: the count times the dtype's size (the config's saved dtype when none is given)
    assert weight_bytes(llama, torch.bfloat16) == 2 * 7120
    assert weight_bytes({**llama, "dtype": "float16"}) == 2 * 7120
    assert weight_bytes(llama) == 4 * 7120


def test_weight_bytes_from_safetensors_headers(tmp_path):
    """A file of 3x5 float32, 7 float16 and 2 int64: 60 + 14 + 16 = 90 bytes of data as saved;
    in bfloat16 the floating tensors take 2 bytes an element, the integers stay: 44 + 16 = 60."""
    folder = tmp_path / "m"
    folder.mkdir()
    tensors = {"a.weight": torch.zeros(3, 5), "b.weight": torch.zeros(7, dtype=torch.float16),
               "step": torch.zeros(2, dtype=torch.int64)}
    save_file(tensors, folder / "model.safetensors")
    found = checkpoint_tensors(folder)
    assert found == {"a.weight": ("F32", (3, 5), 60), "b.weight": ("F16", (7,), 14), "step": ("I64", (2,), 16)}
    header = int.from_bytes((folder / "model.safetensors").read_bytes()[:8], "little")
    assert weight_bytes({}, None, found) == 90 == (folder / "model.safetensors").stat().st_size - 8 - header
    assert weight_bytes({}, torch.bfloat16, found) == 60
    assert weight_bytes({}, torch.float32, found) == 88 + 16
    # sharded: the index's shards together, the same sizes
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    save_file({"a.weight": tensors["a.weight"]}, sharded / "model-00001-of-00002.safetensors")
    save_file({"b.weight": tensors["b.weight"], "step": tensors["step"]}, sharded / "model-00002-of-00002.safetensors")
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 90}, "weight_map": {
        "a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors",
        "step": "model-00002-of-00002.safetensors"}}))
    assert checkpoint_tensors(sharded) == found
    # a truncated file is named as such (the estimate then falls back on the config)
    cut = tmp_path / "cut"
    cut.mkdir()
    data = (folder / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[:-10])
    with pytest.raises(ValueError, match="truncated"):
        checkpoint_tensors(cut)


def test_a_truncated_weight_file_is_refused_before_loading(tiny, tmp_path):
    """An interrupted copy: the header survives, the data does not. Found from the header's sizes."""
    cut = tmp_path / "cut"
    shutil.copytree(tiny.llama.aligned, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    with pytest.raises(ValueError, match=r"^path: could not load the model at .*cut: .*model.safetensors is "
                                         r"truncated: its header describes \d+ bytes, the file has \d+"):
        load_model(cut, "cpu")
    with pytest.raises(ValueError, match=r"^checkpoints\['witness'\]: could not load the model at .*cut: .*truncated"):
        from_parameters({"witness": str(cut), "aligned": str(tiny.llama.aligned), "prompts": str(tiny.harmful)})


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_estimate_of_a_saved_model_is_its_size(tiny, family):
    path = getattr(tiny, family).aligned
    model = load_model(path, "cpu")
    state = {id(p): p for p in model.parameters()}  # a tied head counted once
    params = sum(p.numel() for p in state.values())
    config = json.loads((path / "config.json").read_text())
    tensors = checkpoint_tensors(path)
    assert sum(math.prod(s) for _, s, _ in tensors.values()) == params == parameter_count(config)
    assert weight_bytes(config, None, tensors) == 4 * params == weight_bytes(config)
    assert weight_bytes(config, torch.bfloat16, tensors) == 2 * params


# --------------------------------------------------------------------------- too large


def test_too_large_names_the_size_and_the_settings_that_fit(tiny, monkeypatch):
    path = tiny.llama.aligned
    need = weight_bytes({}, None, checkpoint_tensors(path))  # float32, as saved
    free(monkeypatch, cpu=int(0.75 * need))  # bfloat16 (half) fits, float32 does not
    with pytest.raises(ModelTooLarge) as e:
        load_model(path, "cpu")
    msg = str(e.value)
    assert isinstance(e.value, MemoryError) and e.value.need == need
    assert f"its weights take {models._size(need)}" in msg and "in float32" in msg and "cpu has" in msg
    assert "settings that would fit: dtype='bfloat16'" in msg
    assert "LoRA rather than full fine-tuning" in msg and "16 bytes a parameter" in msg
    assert "gradient checkpointing" in msg
    assert "--dtype bfloat16" in e.value.message(flags=True)
    # the same in bfloat16 fits (the positive control), and loads
    assert next(load_model(path, "cpu", "bfloat16").parameters()).dtype == torch.bfloat16
    # nothing fits: said so
    free(monkeypatch, cpu=10)
    with pytest.raises(ModelTooLarge, match="no dtype or device_map here fits it"):
        load_model(path, "cpu")


def test_too_large_on_a_gpu_suggests_loading_straight_onto_it(tiny, monkeypatch):
    """Without a map the weights go through CPU RAM first: RAM too small, GPU large enough ->
    ``device_map='cuda:0'``; GPU too small for float32 but two GPUs' worth with CPU ->
    ``device_map='auto'``."""
    path = tiny.llama.aligned
    need = weight_bytes({}, None, checkpoint_tensors(path))
    gpus(monkeypatch, 1)
    free(monkeypatch, cpu=need // 10, gpu=2 * need)
    with pytest.raises(ModelTooLarge, match=r"cpu has .*device_map='cuda:0' \(straight onto the GPU"):
        preflight(path, "cuda:0")
    preflight(path, device_map="cuda:0")  # the suggestion passes
    free(monkeypatch, cpu=need // 2 + 1, gpu=need // 2 + 1)
    with pytest.raises(ModelTooLarge, match=r"cuda:0 has .*device_map='auto' \(spread over 1 GPU"):
        preflight(path, device_map="cuda:0")
    preflight(path, device_map="auto")


# --------------------------------------------------------------------------- bad settings


def test_a_device_map_naming_devices_that_do_not_exist(tiny, monkeypatch):
    path = tiny.llama.aligned
    with pytest.raises(ValueError, match=r"^device_map: 'cuda:0' asks for a GPU, but this machine has none"):
        load_model(path, device_map="cuda:0")
    with pytest.raises(ValueError, match=r"^device_map\['model.layers'\]: 'cuda:0' asks for a GPU"):
        load_model(path, device_map={"model.embed_tokens": "cpu", "model.layers": "cuda:0"})
    with pytest.raises(ValueError, match=r"^device: 'cuda' asks for a GPU"):
        load_model(path, "cuda")
    with pytest.raises(ValueError, match=r"^device_map: give device or device_map, not both"):
        load_model(path, "cpu", device_map="cpu")
    with pytest.raises(ValueError, match=r"^device_map\['lm_head'\]: 'disk' offload is not supported"):
        placement(None, {"lm_head": "disk"})
    with pytest.raises(ValueError, match=r"^device_map: not a device: 'gpu0'"):
        placement(None, "gpu0")
    gpus(monkeypatch, 1)
    with pytest.raises(ValueError, match=r"^device_map: 'cuda:3' asks for GPU 3, but this machine has 1 \(cuda:0\)"):
        placement(None, "cuda:3")
    with pytest.raises(ValueError, match=r"^device_map\['model'\]: 1 asks for GPU 1, but this machine has 1"):
        placement(None, {"model": 1, "lm_head": "cpu"})
    # the positive controls: what exists is placed
    assert placement(None, "cuda:0") == [torch.device("cuda", 0)]
    assert placement(None, {"model": 0, "lm_head": "cpu"}) == [torch.device("cuda", 0), torch.device("cpu")]
    assert placement(None, "auto") == [torch.device("cuda", 0), torch.device("cpu")]
    gpus(monkeypatch, 4)
    assert placement(None, "cuda:3") == [torch.device("cuda", 3)]


def test_bfloat16_on_a_gpu_without_it(tiny, monkeypatch):
    path = tiny.llama.aligned
    gpus(monkeypatch, 1, bf16=False)
    free(monkeypatch, cpu=10**12, gpu=10**12)
    with pytest.raises(ValueError, match=r"^dtype: bfloat16 is not supported natively by cuda:0.*float16"):
        load_model(path, dtype="bfloat16", device_map="cuda:0")
    with pytest.raises(ValueError, match=r"^dtype: bfloat16"):
        load_model(path, dtype=torch.bfloat16, device_map="auto")
    preflight(path, dtype="float16", device_map="cuda:0")  # float16 is fine there
    preflight(path, dtype="bfloat16", device_map="cpu")  # and bfloat16 on the CPU
    gpus(monkeypatch, 1, bf16=True)
    preflight(path, dtype="bfloat16", device_map="cuda:0")  # the positive control


# --------------------------------------------------------------------------- adapters


def _adapter(base: Path, out: Path, targets=("q_proj", "v_proj"), named: str | None = None) -> Path:
    torch.manual_seed(0)
    peft = get_peft_model(load_model(base, "cpu"), LoraConfig(r=4, target_modules=list(targets),
                                                              init_lora_weights=False))
    peft.save_pretrained(out)
    if named is not None:  # as a hub run saves it: a hub id, never resolved here
        cfg = json.loads((out / "adapter_config.json").read_text())
        (out / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": named}))
    return out


def test_an_adapter_whose_base_does_not_match(tiny, tmp_path):
    """The adapter's shapes decide (its config names a hub id here): a Llama adapter of width 32
    on a Llama of width 48, and GPT-2's ``c_attn`` on a Llama, are refused naming both."""
    good = _adapter(tiny.llama.aligned, tmp_path / "good", named="org/llama-tiny")
    with pytest.raises(ValueError, match=r"^adapter: cannot apply the LoRA adapter at .*good to base = "
                                         r".*llama_wide: .*32 x 32 in the adapter but 48 x 48 in the base "
                                         r"\(the adapter says it was trained on 'org/llama-tiny'\)"):
        merged_adapter(tiny.llama_wide, good, "cpu")
    foreign = _adapter(tiny.gpt2.aligned, tmp_path / "foreign", targets=("c_attn",), named="gpt2")
    with pytest.raises(ValueError, match=r"target module\(s\) 'c_attn' are not in the base"):
        merged_adapter(tiny.llama.aligned, foreign, "cpu")
    merged = merged_adapter(tiny.llama.aligned, good, "cpu")  # the positive control
    assert not any("lora" in n for n, _ in merged.named_parameters())
    # through the subject: named as its keys, before any model is loaded
    ckpt = {"witness": str(good), "aligned": str(tiny.llama_wide), "prompts": str(tiny.harmful),
            "base": str(tiny.llama_wide)}
    with pytest.raises(ValueError, match=r"^checkpoints\['witness'\]: cannot apply the LoRA adapter at .* to "
                                         r"checkpoints\['base'\] = .*llama_wide: .*'org/llama-tiny'"):
        from_parameters(ckpt)
    assert from_parameters({**ckpt, "aligned": str(tiny.llama.aligned), "base": str(tiny.llama.aligned)}).witness == good


# --------------------------------------------------------------------------- the checkpoint subject


def test_the_subject_passes_device_map_through(tiny, monkeypatch):
    ckpt = {"witness": str(tiny.llama.witness), "aligned": str(tiny.llama.aligned), "prompts": str(tiny.harmful)}
    plain = from_parameters(ckpt, device="cpu")
    mapped = from_parameters({**ckpt, "device_map": "cpu"})
    assert plain.device_map is None and mapped.device_map == "cpu"
    # in the cache key only when given: the keys of runs without one are unchanged
    assert "device_map" not in plain.key() and mapped.key()["device_map"] == "cpu"
    assert {k: v for k, v in mapped.key().items() if k not in ("device_map", "device")} == \
        {k: v for k, v in plain.key().items() if k != "device"}
    assert torch.equal(logits(plain.load("theta_S")), logits(mapped.load("theta_S")))
    json_map = from_parameters({**ckpt, "device_map": '{"": "cpu"}'})
    assert json_map.device_map == {"": "cpu"} and json_map.key()["device_map"] == {"": "cpu"}


def test_the_subject_refuses_bad_settings_before_any_work(tiny, monkeypatch):
    ckpt = {"witness": str(tiny.llama.witness), "aligned": str(tiny.llama.aligned), "prompts": str(tiny.harmful)}
    with pytest.raises(ValueError, match=r"^checkpoints\['device_map'\]: 'cuda:0' asks for a GPU, but this "
                                         r"machine has none"):
        from_parameters({**ckpt, "device_map": "cuda:0"})
    with pytest.raises(ValueError, match=r"^checkpoints\['device_map'\]: not a JSON object"):
        from_parameters({**ckpt, "device_map": "{oops"})
    with pytest.raises(ValueError, match=r"^checkpoints\['device_map'\]: give device or checkpoints\['device_map'\], "
                                         r"not both"):
        from_parameters({**ckpt, "device_map": "cpu"}, device="cpu")
    with pytest.raises(CheckpointError, match=r"^--device-map: a mapping of module names .*bad entry: 'model': True"):
        parse_device_map("--device-map", {"model": True})
    gpus(monkeypatch, 2, bf16=False)
    free(monkeypatch, cpu=10**12, gpu=10**12)
    with pytest.raises(ValueError, match=r"^checkpoints\['device_map'\]: 'cuda:2' asks for GPU 2, but this "
                                         r"machine has 2 \(cuda:0, cuda:1\)"):
        from_parameters({**ckpt, "device_map": "cuda:2"})
    with pytest.raises(ValueError, match=r"^checkpoints\['dtype'\]: bfloat16 is not supported natively by cuda:1"):
        from_parameters({**ckpt, "dtype": "bfloat16", "device_map": {"model": 1, "lm_head": "cpu"}})
    assert from_parameters({**ckpt, "dtype": "float16", "device_map": "cuda:1"}).device_map == "cuda:1"
    # too large: found when the subject is built, from the safetensors headers alone
    free(monkeypatch, cpu=1000)
    with pytest.raises(ModelTooLarge, match=r"aligned: the model does not fit: its weights take"):
        from_parameters(ckpt, device="cpu")
