"""Local Hugging Face checkpoint folders, as users pass them (command line and notebooks).

The checks raise :class:`CheckpointError`, a ``ValueError`` whose message starts with the
argument at fault (``--witness``, ``parameter 'aligned'``, ...): the command line turns it
into a usage error, the notebooks let it through as it is (its subclass :class:`LoadError`, a
model that passed the checks but does not load, is a failure: exit status 1). Nothing heavy is imported here
at module level, so ``reversion --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

DTYPES = ("auto", "float32", "bfloat16", "float16")
"""Weight dtypes a user may ask for by name (``auto`` = as saved; :func:`torch_dtype`)."""


class CheckpointError(ValueError):
    """A bad checkpoint or input argument; the message names the argument."""


class LoadError(CheckpointError):
    """A checkpoint that passed every check but could not be loaded (truncated weights, a library
    error): the message names the argument and the cause. Not an argument problem: the command
    line exits with status 1 and the cause, not with a usage error."""


def checkpoint_folder(name: str, path: str | Path) -> Path:
    """``path`` as a folder holding a ``config.json``, else :class:`CheckpointError`."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{name}: path not found: {path}")
    if not (p / "config.json").is_file():
        raise CheckpointError(f"{name}: {path} is not a Hugging Face checkpoint folder (no config.json)")
    return p


def read_config(name: str, path: Path):
    """The checkpoint's (text) config, read from local files only."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # unknown model_type, broken JSON, ...
        raise CheckpointError(f"{name}: cannot read the config of {path} ({type(exc).__name__}: {exc})") from None
    get = getattr(cfg, "get_text_config", None)
    return get() if callable(get) else cfg


def arch_of(cfg) -> dict[str, Any]:
    """What two checkpoints must share for their activations to be compared."""
    return {"model_type": getattr(cfg, "model_type", None), "hidden_size": getattr(cfg, "hidden_size", None),
            "num_hidden_layers": getattr(cfg, "num_hidden_layers", None)}


def check_same_arch(ref_name: str, ref: dict, name: str, other: dict) -> None:
    """:class:`CheckpointError` naming ``name`` unless ``other`` matches ``ref`` (:func:`arch_of`)."""
    if ref["model_type"] != other["model_type"]:
        raise CheckpointError(f"{name}: model family {other['model_type']!r} differs from {ref_name}'s "
                              f"{ref['model_type']!r}; both must be checkpoints of the same model")
    if ref["hidden_size"] != other["hidden_size"]:
        raise CheckpointError(f"{name}: width (hidden_size) {other['hidden_size']} differs from {ref_name}'s "
                              f"{ref['hidden_size']}; activations are not comparable")
    if ref["num_hidden_layers"] != other["num_hidden_layers"]:
        raise CheckpointError(f"{name}: {other['num_hidden_layers']} layers, {ref_name} has "
                              f"{ref['num_hidden_layers']}; layers do not correspond")


def torch_dtype(name: Any, param: str = "dtype"):
    """The ``torch.dtype`` of a :data:`DTYPES` name (``"auto"`` stays ``"auto"``: as saved; a
    ``torch.dtype`` is returned as it is), else a ``ValueError`` naming ``param``. What a device
    cannot run is :func:`reversion.core.models.check_dtype`'s to refuse (it knows the devices)."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"{param} must be one of {', '.join(DTYPES)}, got {name!r}")
    if name == "auto":
        return "auto"
    return getattr(torch, name)


def parse_device_map(name: str, value: Any) -> Any:
    """A ``device_map`` as users write it, or None (not given): ``"auto"`` (accelerate's other
    strategies too), a device (``"cuda:0"``, ``"cpu"``, a GPU index as an int or digits), a
    ``{module: device}`` mapping, or that mapping as JSON text (``--device-map '{"": 0}'``).
    Only the form is checked here (a :class:`CheckpointError` naming ``name``); whether the devices
    exist is :func:`reversion.core.models.placement`'s check."""
    import json

    if value is None or value == "":
        return None
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise CheckpointError(f"{name}: not a JSON object: {value!r} ({exc})") from None
    if isinstance(value, str):
        value = value.strip()
        return int(value) if value.isdigit() else value
    if isinstance(value, bool) or not isinstance(value, (int, Mapping)):
        raise CheckpointError(f"{name}: expected 'auto', a device ('cuda:0', 'cpu') or a mapping of module "
                              f"names to devices, got {value!r}")
    if isinstance(value, Mapping):
        bad = [k for k, v in value.items() if not isinstance(k, str) or isinstance(v, bool)
               or not isinstance(v, (str, int))]
        if bad:
            raise CheckpointError(f"{name}: a mapping of module names (strings) to devices ('cuda:0', 'cpu', a "
                                  f"GPU index); bad entr{'y' if len(bad) == 1 else 'ies'}: "
                                  f"{', '.join(f'{k!r}: {value[k]!r}' for k in bad)}")
        return dict(value)
    return value


# --------------------------------------------------------------------------- LoRA adapters

ADAPTER_CONFIG = "adapter_config.json"
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def is_adapter(path: str | Path) -> bool:
    """A PEFT adapter folder (``adapter_config.json`` and adapter weights, no ``config.json``),
    e.g. a ``checkpoint-N/`` of a LoRA run saved by ``transformers.Trainer``."""
    p = Path(path)
    return (p / ADAPTER_CONFIG).is_file() and any((p / w).is_file() for w in _ADAPTER_WEIGHTS) \
        and not (p / "config.json").is_file()


def checkpoint_or_adapter(name: str, path: str | Path) -> tuple[Path, bool]:
    """``path`` as a full checkpoint folder or a PEFT adapter folder: ``(path, is_adapter)``."""
    p = Path(path)
    if p.exists() and is_adapter(p):
        return p, True
    if p.exists() and (p / ADAPTER_CONFIG).is_file() and not (p / "config.json").is_file():
        raise CheckpointError(f"{name}: {path} holds {ADAPTER_CONFIG} but no adapter weights "
                              f"({' or '.join(_ADAPTER_WEIGHTS)})")
    return checkpoint_folder(name, p), False


def adapter_base_name(path: str | Path) -> str | None:
    """What the adapter says it was trained on (``base_model_name_or_path``): often a hub id,
    which is never resolved here."""
    import json

    try:
        return json.loads((Path(path) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None
