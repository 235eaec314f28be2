"""Mean probe activations of local checkpoints: what ``reversion track`` reads models through.

:class:`CheckpointReader` holds theta_S (the reference), the probe prompts (read, templated and
tokenized once) and how to load a checkpoint: a full Hugging Face folder is loaded, measured
and dropped, one at a time; a LoRA adapter folder (``adapter_config.json``, no
``config.json``) is applied, unmerged, to a base model loaded once (default: theta_S, as when
theta_S itself was fine-tuned with LoRA) and deleted again after its reading, so one base is in
memory however many adapter checkpoints there are. Nothing is downloaded: a hub id in an
adapter's config is never resolved.

It is the :class:`reversion.stages.track.Source` of the tracking stage (which knows no
subject implementation). Every problem is a :class:`~reversion.subjects.checkpoints.files.CheckpointError`
naming the input: as a parameter (``aligned``, ``prompts``) or, with ``naming="flag"``, as the
command line's flag (``--aligned``).
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from pathlib import Path
from typing import Any, Sequence

import torch

from reversion.core.activations import mean_activations
from reversion.core.models import OUT_OF_MEMORY, check_adapter, default_device, load_model, preflight
from reversion.infra.checks import check_choice, check_int
from reversion.infra.runtime import free_memory
from reversion.subjects.checkpoints.files import (
    DTYPES,
    CheckpointError,
    LoadError,
    adapter_base_name,
    arch_of,
    check_same_arch,
    checkpoint_folder,
    checkpoint_or_adapter,
    is_adapter,
    read_config,
    torch_dtype,
)
from reversion.subjects.checkpoints.textdata import (
    encode_prompts,
    file_sha256,
    load_tokenizer,
    pad_id_of,
    read_prompts,
)

__all__ = ["CheckpointReader", "has_weights"]

NAMINGS = ("parameter", "flag")


@contextlib.contextmanager
def _quiet_peft():
    """Without the library notices every adapter swap raises: transformers' deprecation of
    ``is_gradient_checkpointing`` (which peft calls) and peft's note that the deleted adapter
    was the active one (it is, by design: each is measured, then deleted)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        yield


def has_weights(path: Path) -> bool:
    """A complete-looking checkpoint folder: a config and weights, or a LoRA adapter."""
    return is_adapter(path) or ((path / "config.json").is_file() and any(
        p.suffix in (".safetensors", ".bin") for p in path.iterdir() if p.is_file()))


class CheckpointReader:
    """theta_S and the checkpoints of a fine-tuning run, read as mean probe activations.

    ``aligned``: theta_S's folder (the reference; its architecture is what every checkpoint
    must share); ``prompts``: the harmful probe prompt file (JSONL / CSV / TXT, ``prompt_field``);
    ``base``: the model LoRA adapter checkpoints apply to (default ``aligned``); ``tokenizer``:
    its folder (default the aligned one's); ``chat_template``: ``"auto"`` (when the tokenizer
    has one), True or False; ``dtype``: one of :data:`~reversion.subjects.checkpoints.files.DTYPES`
    (``auto`` = as saved); ``device``: None = CUDA when present; ``device_map``: where
    ``from_pretrained`` puts the weights instead (``"auto"``, a device, a mapping; see
    :func:`reversion.core.models.load_model`); ``batch_size``: prompts per forward; ``naming``: ``"parameter"`` (errors name ``aligned``) or ``"flag"`` (``--aligned``).
    """

    def __init__(self, aligned: str | Path, prompts: str | Path, *, base: str | Path | None = None,
                 tokenizer: str | Path | None = None, chat_template: Any = "auto", prompt_field: str = "prompt",
                 dtype: str = "auto", device: str | torch.device | None = None, batch_size: int = 16,
                 naming: str = "parameter", device_map: Any = None):
        check_choice("naming", naming, NAMINGS)
        self.naming = naming
        check_int("batch_size", batch_size, 1)
        check_choice("dtype", dtype, DTYPES)
        if chat_template not in ("auto", True, False):
            raise ValueError(f"chat_template must be 'auto', True or False, got {chat_template!r}")
        self.aligned = checkpoint_folder(self.name, aligned)
        self.arch = arch_of(read_config(self.name, self.aligned))
        try:
            texts = read_prompts(prompts, prompt_field)
        except (FileNotFoundError, ValueError) as exc:
            raise CheckpointError(f"{self._name('prompts')}: {exc}") from None
        tok_name, tok_path = (self._name("tokenizer"), tokenizer) if tokenizer else (self.name, self.aligned)
        try:
            tok = load_tokenizer(tok_path)
        except (FileNotFoundError, ValueError) as exc:
            hint = "" if tokenizer else f" (pass {self._name('tokenizer')} PATH)" if naming == "flag" \
                else " (pass tokenizer=PATH)"
            raise CheckpointError(f"{tok_name}: {exc}{hint}") from None
        try:
            self.ids = encode_prompts(tok, texts, chat_template)
        except ValueError as exc:
            raise CheckpointError(f"{self._name('prompts')}: {exc}") from None
        self.pad_id = pad_id_of(tok)
        self.prompts_sha256 = file_sha256(prompts)
        self.batch_size = batch_size
        self.dtype = torch_dtype(dtype)
        self.device = torch.device(device) if device is not None else default_device()
        self._base_given = base is not None
        self.base = checkpoint_folder(self._name("base"), base) if base is not None else self.aligned
        self.device_map = device_map
        self._device = device
        # devices that exist, a dtype they run, weights that fit: before any model is read
        self._preflight(self.name, self.aligned)
        if base is not None:
            self._preflight(self._name("base"), self.base)
        self._base_arch: dict | None = None
        self._peft = None
        self._n_adapters = 0

    # ------------------------------------------------------------------ naming

    def _name(self, key: str) -> str:
        return f"--{key.replace('_', '-')}" if self.naming == "flag" else key

    def _preflight(self, name: str, path: Path) -> None:
        """:func:`reversion.core.models.preflight` of ``path``, its errors naming the inputs."""
        names = {**{k: self._name(k) for k in ("device", "device_map", "dtype")}, "checkpoint": name}
        try:
            preflight(path, self._device, self.dtype, self.device_map, names)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None

    @property
    def name(self) -> str:
        """How errors name theta_S (``aligned`` or ``--aligned``)."""
        return self._name("aligned")

    @property
    def n_prompts(self) -> int:
        return len(self.ids)

    # ------------------------------------------------------------------ checks

    def is_checkpoint(self, path: Path) -> bool:
        """:func:`has_weights`: a folder whose weights have been written (for polling a run)."""
        return has_weights(path)

    def check(self, name: str, path: str | Path) -> None:
        """A :class:`CheckpointError` naming ``name`` unless ``path`` is a checkpoint (or an adapter
        for the base) of theta_S's architecture; reads configs only."""
        path, adapter = checkpoint_or_adapter(name, path)
        if not adapter:
            check_same_arch(self.name, self.arch, name, arch_of(read_config(name, path)))
            self._preflight(name, path)
            return
        base_name = self._name("base") if self._base_given else self.name
        if self._base_arch is None:
            self._base_arch = arch_of(read_config(base_name, self.base)) if self._base_given else self.arch
            check_same_arch(self.name, self.arch, base_name, self._base_arch)
        named = adapter_base_name(path)
        if named and Path(named).is_dir() and Path(named).resolve() != self.base.resolve():
            raise CheckpointError(f"{name}: the adapter was trained on {named}, not on the base {self.base} "
                                  f"(pass {self._name('base')} with the model it was trained on)")
        try:  # its shapes against the base's, before the base is loaded
            check_adapter(path, self.base, name, base_name)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None

    # ------------------------------------------------------------------ reading

    def reference(self, layers: Sequence[int], position: str) -> torch.Tensor:
        """theta_S's mean probe activations ``[len(layers), d]`` (float64, CPU)."""
        return self._model_means(self.name, self.aligned, layers, position)

    def means(self, name: str, path: str | Path, layers: Sequence[int], position: str) -> torch.Tensor:
        """The mean probe activations ``[len(layers), d]`` of the checkpoint or adapter at ``path``."""
        path = Path(path)
        if is_adapter(path):
            return self._adapter_means(name, path, layers, position)
        return self._model_means(name, path, layers, position)

    def _load(self, name: str, path: Path):
        try:
            if self.device_map is not None:
                return load_model(path, dtype=self.dtype, device_map=self.device_map)
            return load_model(path, self.device, self.dtype)
        except OUT_OF_MEMORY:  # reported as memory, with the settings to try
            raise
        except Exception as exc:
            raise LoadError(f"{name}: could not load the model at {path} ({type(exc).__name__}: {exc})") from None

    def _mean_of(self, name: str, model, layers: Sequence[int], position: str) -> torch.Tensor:
        try:
            return mean_activations(model, self.ids, list(layers), position=position, batch_size=self.batch_size,
                                    pad_id=self.pad_id)
        except ValueError as exc:  # e.g. token ids beyond the model's vocabulary: the wrong tokenizer
            raise CheckpointError(f"{name}: {exc}") from None

    def _model_means(self, name: str, path: Path, layers: Sequence[int], position: str) -> torch.Tensor:
        model = self._load(name, path)
        try:
            return self._mean_of(name, model, layers, position)
        finally:
            dropped = weakref.ref(model)
            del model
            free_memory(dropped)

    def _adapter_means(self, name: str, path: Path, layers: Sequence[int], position: str) -> torch.Tensor:
        """The base is loaded once (the first adapter) and each adapter is loaded onto it, measured
        unmerged, and deleted (PEFT's ``load_adapter`` / ``delete_adapter``)."""
        from peft import PeftModel  # only where adapters are read: a second of import time

        adapter = f"a{self._n_adapters}"
        self._n_adapters += 1
        base = None
        if self._peft is None:  # loaded outside the try: a base that fails to load is named as such
            base = self._load(self._name("base") if self._base_given else self.name, self.base)
        try:
            with _quiet_peft():
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(base, str(path), adapter_name=adapter,
                                                           is_trainable=False)
                else:
                    self._peft.load_adapter(str(path), adapter_name=adapter, is_trainable=False)
                self._peft.set_adapter(adapter)
        except (ValueError, KeyError, RuntimeError) as exc:  # e.g. target modules not in the base
            raise CheckpointError(f"{name}: cannot apply the LoRA adapter at {path} to the base {self.base} "
                                  f"({type(exc).__name__}: {exc})") from None
        self._peft.eval()
        try:
            return self._mean_of(name, self._peft, layers, position)
        finally:
            if len(self._peft.peft_config) > 1:
                with _quiet_peft():
                    self._peft.delete_adapter(adapter)
