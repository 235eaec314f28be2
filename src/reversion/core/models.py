"""Load and save Hugging Face causal LMs from local folders (never a hub).

:func:`load_model` loads as always (CPU, then moved) or, with ``device_map``, straight onto the
devices; :func:`preflight` refuses before loading what cannot work (a device the machine lacks,
a dtype the device cannot run, weights that do not fit: :class:`ModelTooLarge`), from small files
only; :func:`weight_bytes` is the size estimate it uses.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from reversion.infra.kernels import compute_device

# Loading and saving tiny checkpoints hundreds of times: their progress bars are noise.
hf_logging.disable_progress_bar()

OUT_OF_MEMORY = (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))
"""What running out of memory raises (the CPU's ``MemoryError``, including :class:`ModelTooLarge`,
and CUDA's): callers that wrap loading errors let these through, so that they are reported as
memory problems with the settings to try."""


def default_device() -> torch.device:
    """``REVERSION_DEVICE`` (:func:`reversion.infra.kernels.compute_device`): CUDA when present
    unless it says ``cpu``; nothing needs a GPU."""
    return compute_device()


def save_model(model: torch.nn.Module, path: Path) -> None:
    """``save_pretrained`` as safetensors: loadable by ``AutoModelForCausalLM``."""
    model.save_pretrained(path, safe_serialization=True)


def load_model(path: str | Path, device: torch.device | str | None = None,
               dtype: torch.dtype | str | None = None, device_map: Any = None) -> torch.nn.Module:
    """Load any local Hugging Face causal LM folder (never reaches a hub), in eval mode.

    ``dtype``: a ``torch.dtype``, a name (``"float32"``, ``"bfloat16"``, ``"float16"``) or
    ``"auto"`` / None (as saved). ``device_map=None`` loads on the CPU and moves the model to
    ``device`` (default :func:`default_device`), as always; otherwise it is passed to
    ``from_pretrained(device_map=...)``, which puts each weight straight where it goes (no copy
    through CPU memory): ``"auto"`` (accelerate spreads the layers over every GPU, then CPU RAM),
    a device (``"cuda:0"``, ``"cpu"``) or a ``{module: device}`` dict; ``device`` is then not given.
    Before anything is read (:func:`preflight`): a ``ValueError`` naming ``device`` /
    ``device_map`` / ``dtype`` for a device that does not exist here or a dtype it cannot run,
    and :class:`ModelTooLarge` when the weights do not fit the memory they would go to.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no Hugging Face checkpoint at {path} (config.json missing)")
    preflight(path, device, dtype, device_map)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is None:  # today's path, unchanged: through CPU memory, then moved
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        return model.to(device or default_device()).eval()
    model = AutoModelForCausalLM.from_pretrained(path, device_map=device_map, **kwargs)
    return model.eval()


def merged_adapter(base: str | Path, adapter: str | Path, device: torch.device | str | None = None,
                   dtype: torch.dtype | str | None = None, device_map: Any = None) -> torch.nn.Module:
    """The local ``base`` model with the PEFT (LoRA) adapter folder ``adapter`` merged in: a plain
    model, which every stage reads and trains like any checkpoint (in eval mode). The adapter is
    checked against the base first (:func:`check_adapter`); ``device`` / ``dtype`` / ``device_map``
    as in :func:`load_model`."""
    from peft import PeftModel  # only where adapters are used: a second of import time

    check_adapter(adapter, base)
    model = PeftModel.from_pretrained(load_model(base, device, dtype, device_map), str(adapter), is_trainable=False)
    return model.merge_and_unload().eval()


# --------------------------------------------------------------------------- before loading
#
# Everything below reads only small files (config.json, safetensors headers, adapter_config.json)
# and asks torch what devices and memory there are: a bad setting or a model that cannot fit is
# refused before minutes of loading (and, for a CPU-loaded model moved to a GPU, before the CPU
# copy is made).

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
"""``device_map`` strings with which accelerate places the layers (over every GPU, then CPU RAM)."""
FULL_FINETUNE_BYTES = 16
"""Bytes a parameter holds in full fine-tuning with float32 AdamW: weight, gradient, two moments."""
_SAFETENSORS, _SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
_ADAPTER_WEIGHTS, _ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
_NAMES = {"device": "device", "device_map": "device_map", "dtype": "dtype", "checkpoint": "path"}
# Safetensors codes of floating-point tensors (the ones ``dtype`` converts; the rest keep theirs).
_FLOAT_CODES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


def parameter_count(config: Mapping[str, Any]) -> int:
    """The parameters of a decoder from its ``config.json`` sizes.

    GPT-2 (``n_embd``, ``n_layer``, ``n_inner``, ``n_positions``; biases everywhere, tied head)
    and the Llama form (``hidden_size``, ``intermediate_size``, ``num_attention_heads``,
    ``num_key_value_heads``, ``head_dim``; gated MLP, RMS norms, ``attention_bias`` /
    ``mlp_bias``, Qwen2's q/k/v biases, ``tie_word_embeddings``): exact for GPT-2, Llama, Mistral
    and Qwen2, an estimate for other families (the safetensors header is exact for all:
    :func:`checkpoint_tensors`). A ``KeyError`` where a size is missing.
    """
    c = config if "hidden_size" in config or "n_embd" in config else (config.get("text_config") or config)
    if c.get("model_type") == "gpt2" or "n_embd" in c:
        d, L, V, P = c["n_embd"], c["n_layer"], c["vocab_size"], c["n_positions"]
        inner = c.get("n_inner") or 4 * d
        block = (2 * d  # ln_1
                 + d * 3 * d + 3 * d + d * d + d  # c_attn, c_proj
                 + 2 * d  # ln_2
                 + d * inner + inner + inner * d + d)  # c_fc, c_proj
        head = 0 if c.get("tie_word_embeddings", True) else V * d
        return V * d + P * d + L * block + 2 * d + head
    d, L, V, inter = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"], c["intermediate_size"]
    h = c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or h
    hd = c.get("head_dim") or d // h
    bias = bool(c.get("attention_bias", False))
    qkv_bias = bias or c.get("model_type") == "qwen2"
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d + ((h + 2 * kv) * hd if qkv_bias else 0) + (d if bias else 0)
    mlp = 3 * d * inter + ((2 * inter + d) if c.get("mlp_bias", False) else 0)
    head = 0 if c.get("tie_word_embeddings", False) else V * d
    return V * d + L * (attn + mlp + 2 * d) + d + head


def weight_bytes(config: Mapping[str, Any], dtype: torch.dtype | None = None,
                 tensors: Mapping[str, tuple[str, tuple[int, ...], int]] | None = None) -> int:
    """The bytes a model's weights take loaded in ``dtype`` (None: as saved). Pure.

    With ``tensors`` (:func:`checkpoint_tensors`: ``{name: (safetensors dtype, shape, stored
    bytes)}``) the count is exact: each floating-point tensor's elements times ``dtype``'s size
    (its stored bytes when ``dtype`` is None), other tensors as stored. Without, it is
    :func:`parameter_count` times the size of ``dtype`` (else of the config's saved ``dtype`` /
    ``torch_dtype``, else float32).
    """
    if tensors is not None:
        return sum(math.prod(shape) * dtype.itemsize if dtype is not None and code in _FLOAT_CODES else stored
                   for code, shape, stored in tensors.values())
    return parameter_count(config) * (dtype or saved_dtype(config)).itemsize


def saved_dtype(config: Mapping[str, Any], tensors: Mapping | None = None) -> torch.dtype:
    """What ``dtype="auto"`` loads: the config's ``dtype`` (``torch_dtype`` before transformers 5),
    else the first floating-point tensor's, else float32 (``from_pretrained``'s rule)."""
    name = config.get("dtype") or config.get("torch_dtype")
    if isinstance(name, str) and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    codes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    for code, _, _ in (tensors or {}).values():
        if code in codes:
            return codes[code]
    return torch.float32


def safetensors_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """``{name: (dtype code, shape, bytes)}`` of a safetensors file, from its header alone (an
    8-byte little-endian length, then that much JSON); a ``ValueError`` for a file that is not
    one, or is shorter than its header says (truncated)."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n <= size - 8:
            raise ValueError(f"{path} is not a safetensors file")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise ValueError(f"{path} is not a safetensors file (unreadable header)") from None
    out, end = {}, 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        start, stop = t["data_offsets"]
        out[name] = (t["dtype"], tuple(int(s) for s in t["shape"]), int(stop - start))
        end = max(end, int(stop))
    if 8 + n + end > size:
        raise ValueError(f"{path} is truncated: its header describes {8 + n + end} bytes, the file has {size}")
    return out


def checkpoint_tensors(path: str | Path) -> dict[str, tuple[str, tuple[int, ...], int]] | None:
    """Every weight of the checkpoint folder ``path`` from its safetensors headers
    (``model.safetensors``, or the shards ``model.safetensors.index.json`` lists), reading no
    weight: exact shapes and sizes. None where the weights are not (all) safetensors."""
    p = Path(path)
    if (p / _SAFETENSORS).is_file():
        return safetensors_header(p / _SAFETENSORS)
    if not (p / _SAFETENSORS_INDEX).is_file():
        return None
    shards = sorted(set(json.loads((p / _SAFETENSORS_INDEX).read_text())["weight_map"].values()))
    if not shards or not all((p / s).is_file() for s in shards):
        return None
    out: dict = {}
    for s in shards:
        out.update(safetensors_header(p / s))
    return out


def cuda_count() -> int:
    """GPUs this process can use (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def bf16_supported(index: int) -> bool:
    """Native bfloat16 on GPU ``index`` (compute capability 8.0+): what
    ``torch.cuda.is_bf16_supported(including_emulation=False)`` says for that device. Older GPUs
    only emulate it (``including_emulation=True`` would say yes), many times slower."""
    with torch.cuda.device(index):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def free_bytes(device: torch.device) -> int | None:
    """Memory free where weights would go: ``torch.cuda.mem_get_info`` on a GPU, the available
    RAM on the CPU; None where unknown (e.g. MPS)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device.index or 0)[0])
    if device.type == "cpu":
        import psutil  # a dependency of the package; imported where memory is asked about

        return int(psutil.virtual_memory().available)
    return None


def check_device(name: str, value: Any) -> torch.device:
    """``value`` (a device string, ``torch.device`` or GPU index) as a device that exists here,
    else a ``ValueError`` naming ``name``: ``"cuda:3"`` on a one-GPU machine, any CUDA device
    on a CPU-only one, a string that is no device."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: not a device: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{name}: a GPU index must be >= 0, got {value}")
        dev = torch.device("cuda", value)
    elif isinstance(value, (str, torch.device)):
        try:
            dev = torch.device(value)
        except (RuntimeError, ValueError):
            raise ValueError(f"{name}: not a device: {value!r} (e.g. 'cpu', 'cuda:0')") from None
    else:
        raise ValueError(f"{name}: not a device: {value!r} (e.g. 'cpu', 'cuda:0')")
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        n = cuda_count()
        index = 0 if dev.index is None else dev.index
        if n == 0:
            raise ValueError(f"{name}: {value!r} asks for a GPU, but this machine has none "
                             "(torch.cuda.is_available() is False); use 'cpu'")
        if index >= n:
            raise ValueError(f"{name}: {value!r} asks for GPU {index}, but this machine has {n} "
                             f"({', '.join(f'cuda:{i}' for i in range(n))})")
        return torch.device("cuda", index)
    if dev.type == "mps" and torch.backends.mps.is_available():
        return dev
    raise ValueError(f"{name}: device {value!r} is not available here (use 'cpu' or 'cuda:N')")


def placement(device: Any = None, device_map: Any = None, names: Mapping[str, str] = _NAMES) -> list[torch.device]:
    """The devices the weights would go to, checked (:func:`check_device`): ``device`` (default
    :func:`default_device`) without a map; every GPU and the CPU for a strategy (``"auto"``, ...);
    the map's devices. ``names`` says how errors name ``device`` and ``device_map``."""
    name = names["device_map"]
    if device_map is None:
        return [check_device(names["device"], device) if device is not None else default_device()]
    if device is not None:
        raise ValueError(f"{name}: give {names['device']} or {name}, not both (got {device!r} and {device_map!r})")
    if isinstance(device_map, str) and device_map in DEVICE_MAP_STRATEGIES:
        return [torch.device("cuda", i) for i in range(cuda_count())] + [torch.device("cpu")]
    if isinstance(device_map, Mapping):
        if not device_map:
            raise ValueError(f"{name}: an empty mapping places no module")
        devices: list[torch.device] = []
        for module, where in device_map.items():
            if not isinstance(module, str):
                raise ValueError(f"{name}: keys must be module names (strings), got {module!r}")
            if where == "disk":
                raise ValueError(f"{name}[{module!r}]: 'disk' offload is not supported here (no offload "
                                 "folder); use 'cpu'")
            dev = check_device(f"{name}[{module!r}]", where)
            if dev not in devices:
                devices.append(dev)
        return devices
    return [check_device(name, device_map)]


def check_dtype(name: str, dtype: torch.dtype, devices: Sequence[torch.device]) -> None:
    """A ``ValueError`` naming ``name`` when a device cannot run ``dtype``: bfloat16 on a GPU
    without native bfloat16 (:func:`bf16_supported`). float16 on the CPU is accepted: torch runs
    every operation of these models in float16 there (slower than float32, tested against it),
    and it is how a float16 checkpoint is read without a GPU and without a float32 copy twice
    its size."""
    if dtype != torch.bfloat16:
        return
    for dev in devices:
        if dev.type == "cuda" and not bf16_supported(dev.index or 0):
            raise ValueError(f"{name}: bfloat16 is not supported natively by {dev} (compute capability "
                             "below 8.0: torch.cuda.is_bf16_supported() is False); use float16 or float32")


def resolve_dtype(name: str, dtype: torch.dtype | str | None, config: Mapping[str, Any],
                  tensors: Mapping | None = None) -> torch.dtype:
    """The ``torch.dtype`` weights would be loaded in: ``dtype`` itself, a name, or the saved
    dtype for None / ``"auto"`` (:func:`saved_dtype`); a ``ValueError`` naming ``name`` else."""
    if dtype is None or dtype == "auto":
        return saved_dtype(config, tensors)
    found = getattr(torch, dtype, None) if isinstance(dtype, str) and not dtype.startswith("_") else dtype
    if not isinstance(found, torch.dtype) or not found.is_floating_point:
        raise ValueError(f"{name}: not a floating-point dtype: {dtype!r} (e.g. 'float32', 'bfloat16', 'float16')")
    return found


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def _where(devices: Sequence[torch.device]) -> str:
    return ", ".join(str(d) for d in devices)


class ModelTooLarge(MemoryError):
    """A model whose weights do not fit the memory they would be loaded into, found before
    loading (:func:`preflight`): the size, the memory and the settings that would fit.
    :meth:`message` writes them as parameters (``dtype='bfloat16'``) or as flags
    (``--dtype bfloat16``)."""

    def __init__(self, path: Path, need: int, free: int, where: str, parameters: int, dtype: torch.dtype,
                 fits: list[tuple[dict[str, str], str]]):
        self.path = path
        """The checkpoint folder."""
        self.need = need
        """Bytes of its weights in :attr:`dtype`."""
        self.free = free
        """Bytes free where they would go."""
        self.where = where
        """The device(s) they would go to."""
        self.parameters = parameters
        """The model's parameter count."""
        self.dtype = dtype
        """The dtype asked for (resolved)."""
        self.fits = fits
        """``({setting: value}, why)`` of each setting that would fit."""
        super().__init__(self.message())

    def message(self, flags: bool = False) -> str:
        def setting(values: dict[str, str]) -> str:
            if flags:
                return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items())
            return ", ".join(f"{k}={v!r}" for k, v in values.items())

        dt = str(self.dtype).removeprefix("torch.")
        head = (f"{self.path}: the model does not fit: its weights take {_size(self.need)} "
                f"({self.parameters / 1e9:.2f} B parameters in {dt}) and {self.where} has {_size(self.free)} free")
        if self.fits:
            tail = "settings that would fit: " + "; ".join(f"{setting(s)} ({why})" for s, why in self.fits)
        else:
            tail = "no dtype or device_map here fits it: it needs more memory (a larger GPU, or several)"
        train = (f"to fine-tune it, use LoRA rather than full fine-tuning (float32 AdamW holds ~"
                 f"{FULL_FINETUNE_BYTES} bytes a parameter: {_size(FULL_FINETUNE_BYTES * self.parameters)}) "
                 "and gradient checkpointing")
        return f"{head}; {tail}; {train}"


def _capacity(devices: Sequence[torch.device]) -> int | None:
    free = [free_bytes(d) for d in devices]
    return None if any(f is None for f in free) else sum(free)


def preflight(path: str | Path, device: Any = None, dtype: torch.dtype | str | None = None,
              device_map: Any = None, names: Mapping[str, str] = _NAMES) -> None:
    """What :func:`load_model` checks before loading the checkpoint at ``path`` (small files only):
    the devices (:func:`placement`), the dtype on them (:func:`check_dtype`), and that the
    weights (:func:`weight_bytes`, exact from the safetensors headers where there are some) fit
    the memory free there, else :class:`ModelTooLarge` with the settings that would. The CPU
    path (``device_map=None``) holds the whole model in RAM before moving it, so there both the
    RAM and the device must hold it. A safetensors file shorter than its header says (an
    interrupted copy) or with no readable header is a ``ValueError`` too. ``names`` say how errors
    name ``device``, ``device_map``, ``dtype`` and the ``checkpoint`` itself."""
    path = Path(path)
    names = {**_NAMES, **names}
    devices = placement(device, device_map, names)
    config = json.loads((path / "config.json").read_text())
    try:
        tensors = checkpoint_tensors(path)
    except ValueError as exc:  # truncated, or no safetensors at all: refused before minutes of loading
        raise ValueError(f"{names['checkpoint']}: could not load the model at {path}: {exc}") from None
    except (OSError, KeyError):  # an index without its map, ...: from_pretrained will say why
        tensors = None
    want = resolve_dtype(names["dtype"], dtype, config, tensors)
    check_dtype(names["dtype"], want, devices)
    try:
        need = weight_bytes(config, want, tensors)
    except (KeyError, TypeError):  # a family whose sizes we cannot read: nothing to compare
        return
    params = sum(math.prod(s) for _, s, _ in tensors.values()) if tensors is not None else parameter_count(config)
    via_cpu = device_map is None and devices[0].type != "cpu"
    targets = devices + ([torch.device("cpu")] if via_cpu else [])
    # Each device holds everything without a map; a map's devices share it.
    short = [(d, f) for d in (targets if device_map is None else [])
             for f in [free_bytes(d)] if f is not None and need > f]
    if device_map is not None:
        cap = _capacity(devices)
        if cap is not None and need > cap:
            short = [(devices, cap)]
    if not short:
        return
    where, free = short[0]
    where = _where(where) if isinstance(where, list) else str(where)
    fits = _fitting(config, tensors, want, params, devices, device_map, via_cpu)
    raise ModelTooLarge(path, need, free, where, params, want, fits)


def _fitting(config, tensors, want, params, devices, device_map, via_cpu) -> list[tuple[dict[str, str], str]]:
    """The settings under which the weights would fit: a 2-byte dtype (bfloat16 where every
    device runs it, else float16); straight onto the GPU rather than through CPU RAM; spread
    over every GPU and CPU RAM (``device_map="auto"``); both."""
    out: list[tuple[dict[str, str], str]] = []
    halves = [n for n in ("bfloat16", "float16") if getattr(torch, n).itemsize < want.itemsize]
    gpus = [torch.device("cuda", i) for i in range(cuda_count())]
    small = next((n for n in halves if n != "bfloat16" or all(bf16_supported(d.index or 0) for d in gpus)), None)

    def fits(dtype: torch.dtype, devs: Sequence[torch.device], shared: bool) -> bool:
        need = weight_bytes(config, dtype, tensors)
        free = [free_bytes(d) for d in devs]
        if any(f is None for f in free):
            return False
        return need <= sum(free) if shared else all(need <= f for f in free)

    here = devices if device_map is not None else devices[:1]
    shared = device_map is not None
    if small is not None and fits(getattr(torch, small), here + ([torch.device("cpu")] if via_cpu else []), shared):
        out.append(({"dtype": small}, f"{_size(weight_bytes(config, getattr(torch, small), tensors))}"))
    if via_cpu and fits(want, here, False):
        out.append(({"device_map": str(here[0])}, "straight onto the GPU, not through CPU RAM"))
    spread = gpus + [torch.device("cpu")]
    if not (isinstance(device_map, str) and device_map in DEVICE_MAP_STRATEGIES):
        if fits(want, spread, True):
            out.append(({"device_map": "auto"}, f"spread over {len(gpus)} GPU(s) and CPU RAM"))
        elif small is not None and fits(getattr(torch, small), spread, True):
            out.append(({"dtype": small, "device_map": "auto"}, f"spread over {len(gpus)} GPU(s) and CPU RAM"))
    return out


def check_adapter(adapter: str | Path, base: str | Path, name: str = "adapter", base_name: str = "base") -> None:
    """A ``ValueError`` naming ``name`` and ``base_name`` unless the PEFT adapter folder
    ``adapter`` fits the model folder ``base``, read from small files before anything loads:
    every LoRA pair's shapes (``lora_A`` ``[r, in]``, ``lora_B`` ``[out, r]``, from the adapter's
    safetensors header) against the base weight of the same module (from its safetensors
    headers; against the config's width where there are none), and each named target module
    against the base's modules. ``base_model_name_or_path`` (often a hub id, never resolved) is
    quoted in the message: the shapes are what decide."""
    adapter, base = Path(adapter), Path(base)
    try:
        cfg = json.loads((adapter / _ADAPTER_CONFIG).read_text())
        lora = safetensors_header(adapter / _ADAPTER_WEIGHTS) if (adapter / _ADAPTER_WEIGHTS).is_file() else None
        base_cfg = json.loads((base / "config.json").read_text())
        base_tensors = checkpoint_tensors(base)
    except (OSError, ValueError, KeyError):  # unreadable files: loading says why
        return
    claimed = cfg.get("base_model_name_or_path")

    def refuse(why: str) -> None:
        raise ValueError(f"{name}: cannot apply the LoRA adapter at {adapter} to {base_name} = {base}: {why} "
                         f"(the adapter says it was trained on {claimed!r})")

    modules = None
    if base_tensors is not None:
        modules = {k.removesuffix(".weight") for k in base_tensors if k.endswith(".weight")}
        targets = cfg.get("target_modules")
        if isinstance(targets, list):  # a string is a regex or "all-linear": peft resolves it
            missing = [t for t in targets if not any(m == t or m.endswith("." + t) for m in modules)]
            if missing:
                refuse(f"its target module(s) {', '.join(map(repr, missing))} are not in the base")
    if lora is None:
        return
    width = base_cfg.get("hidden_size") or base_cfg.get("n_embd") or (base_cfg.get("text_config") or {}).get(
        "hidden_size")
    for key, (_, shape_a, _) in sorted(lora.items()):
        for a, b in ((".lora_A.", ".lora_B."), (".lora_embedding_A", ".lora_embedding_B")):
            if a not in key:
                continue
            module = key.split(a)[0].removeprefix("base_model.model.")
            pair = lora.get(key.replace(a, b))
            if pair is None or len(shape_a) != 2 or len(pair[1]) != 2:
                continue
            dims = sorted((shape_a[1], pair[1][0]))  # (in, out); Conv1D and embeddings store them the other way
            if modules is not None and module + ".weight" in base_tensors:
                got = base_tensors[module + ".weight"][1]
                if sorted(got) != dims:
                    refuse(f"{module} is {dims[0]} x {dims[1]} in the adapter but "
                           f"{' x '.join(map(str, sorted(got)))} in the base")
            elif modules is not None and not module.endswith("lm_head"):  # a tied head is not saved
                refuse(f"it adapts {module}, which the base does not have")
            elif width and width not in dims:
                refuse(f"{module} is {dims[0]} x {dims[1]} in the adapter; the base's width is {width}")
