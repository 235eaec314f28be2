"""Watch a ``transformers.Trainer`` fine-tuning run for motion along v_rev.

:class:`ReversionMonitor` is a ``TrainerCallback``. Every ``every`` optimizer steps it
runs one no-grad forward of the model being trained on the harmful probe prompts and
records, at the monitored layer ``l``,

* ``alignment``  = cos(d_t, v_rev), with drift d_t = mean_x h_t(x) - mu_S,
* ``projection`` = d_t . v_rev (in activation units),
* ``drift_norm`` = ||d_t||,
* ``relative_projection`` = projection / ||mu_H - mu_S|| when the displacement is
  known (1 = as far along v_rev as the helpful-only witness),

where mu_S is the mean activation of the safety-aligned checkpoint on the same
prompts (given, or computed from the model when training begins -- then the model
*must* be theta_S at that moment, which is false when resuming: pass ``mu_S``).

How the values reach the Trainer's logs. ``Trainer.log(logs)`` appends
``{**logs, "step": global_step}`` to ``trainer.state.log_history`` and then calls every
callback's ``on_log`` (reporting integrations: TensorBoard, W&B, ...). In
transformers 5 it copies ``logs`` *before* ``on_log`` runs, so a callback cannot add
its metrics to ``log_history`` by editing ``logs`` in ``on_log``. The monitor
therefore calls ``trainer.log`` itself when it knows the trainer
(``ReversionMonitor(..., trainer=trainer)`` or :meth:`ReversionMonitor.attach`), and
otherwise appends the same record to ``state.log_history`` directly (then only the
integrations miss it). Calling ``trainer.log`` from ``on_step_end`` would reset
``control.should_log`` (the callback handler's ``on_log`` clears it) and swallow the
Trainer's own loss log of that step, so the monitor restores the flag.

Its own log file (``log_path``, ``.csv`` or ``.jsonl``) gets one row per check,
appended, flushed and fsynced at once: an interrupted run loses nothing.

Flagging: when the alignment exceeds ``threshold`` for ``patience`` checks in a row,
``monitor.flagged`` becomes True (with ``flagged_step``), a :class:`ReversionWarning`
is issued once, and with ``stop_on_flag=True`` training stops. The default threshold
is the one ``reversion track`` and the book's null test use:
:func:`reversion.core.drift.threshold`, whose rule is stated in
:func:`reversion.core.drift.null_threshold` (the stricter of the isotropic p99 and the matched
null's p99 at the layer, which ``reversion estimate`` stores per layer). Without a matched
p99 only the isotropic one is left, tiny at LLM width (0.036 at d = 4096): a drift barely
off-random passes it, so prefer a direction file with its matched null, or a threshold of
your own.

:class:`ObjectiveMixin` adds the bounded block term of
:class:`reversion.core.interventions.Block` (``+strength * sum_l relu(p_l / s_l)``; ``Oppose`` is the tanh) to the
loss of any ``Trainer`` subclass (``class MySFT(ObjectiveMixin, trl.SFTTrainer)``;
:class:`BlockTrainer` is ``ObjectiveMixin`` on ``Trainer``); :func:`block_term` builds and
sets one up for a text model.

Several processes (``torchrun``). DDP: the monitor measures and logs on the main process
only (one log row per check; the other ranks record nothing), and the block term's
forward runs through the module inside the DDP wrapper (see :class:`ObjectiveMixin`).
FSDP2 (``torch.distributed.fsdp.fully_shard``; on CPU with gloo too: a model loaded with
``from_pretrained(..., distributed_config=DistributedConfig(fsdp_size=W))``, which the Trainer
trains as it is, or sharded by hand; the Trainer's ``fsdp`` setting shards through accelerate,
on GPUs only): a probe forward must go through the root module, whose forward gathers the
sharded parameters (the backbone called below it meets them sharded: ``aten.embedding.default
got mixed torch.Tensor and DTensor``). The block term and the monitor share that forward,
:func:`sharded_probe_sum`: each rank forwards its share of each probe batch through the
root module and the per-layer sums are all-reduced, so every rank holds one process's
values. The block term and its gradient are then those of one process (:class:`ShardedTerm`,
tested against one process); the monitor measures on every rank at every check (the forward
is a collective), and every rank keeps the same history and flag (so ``stop_on_flag`` stops
all of them together), but only the main process writes the log row, calls
``trainer.log`` and warns: one row per check, equal to one process's run (tested, 2 CPU
processes). FSDP1 (``FullyShardedDataParallel``) is refused with a ValueError, and DeepSpeed
ZeRO-3 is not supported; track such runs' checkpoints with ``reversion track``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
from transformers import Trainer, TrainerCallback

from reversion.core.activations import mean_activations, model_device
from reversion.core.directions import Directions
from reversion.core.drift import read_drift, streak
from reversion.core.drift import threshold as drift_threshold
from reversion.core.hooks import hidden_size, n_layers
from reversion.core.interventions import DIRECTIONAL, all_block_layers
from reversion.core.objective import ObjectiveMixin
from reversion.core.tracking import ProbeTracker
from reversion.infra.checks import check_float, check_int
from reversion.subjects.base import Prompts

__all__ = ["BlockTrainer", "ObjectiveMixin", "ReversionMonitor", "ReversionWarning", "ShardedTerm", "block_term",
           "reference_mean"]

LOG_FIELDS = ("step", "layer", "alignment", "projection", "drift_norm", "relative_projection",
              "threshold", "above", "flagged")


class ReversionWarning(UserWarning):
    """Fine-tuning drift stayed aligned with v_rev for ``patience`` checks in a row."""

def reference_mean(model, probe_ids: Sequence[Sequence[int]], layer: int, position: str = "last",
                   pad_id: int = 0, batch_size: int = 32) -> torch.Tensor:
    """mu at one layer ``[d]`` (float64, CPU): the mean probe activation of ``model``."""
    return mean_activations(model, probe_ids, [layer], position=position, batch_size=batch_size,
                            pad_id=pad_id)[0]


class ReversionMonitor(TrainerCallback):
    """A ``TrainerCallback`` recording the alignment of activation drift with v_rev.

    ``directions``: a :class:`~reversion.core.directions.Directions` (its ``layer``, matched
    null and displacement are used) or a v_rev tensor ``[d]`` or ``[L+1, d]`` (then
    ``layer`` is required); ``probe_ids``: harmful probe prompts as token ids
    (:func:`reversion.subjects.checkpoints.textdata.encode_prompts`); ``mu_S``: theta_S's mean activation
    ``[d]`` at the layer or ``[L+1, d]`` (None: computed from the model at train begin);
    ``every``: check every k optimizer steps; ``threshold``: alignment above which a
    check counts (None: the rule of :func:`reversion.core.drift.null_threshold`, as in
    ``reversion track``); ``threshold_null``: the threshold in *null units*, a multiple of that
    rule's threshold (1.0 is the default; the book's "Early warning" chapter measures what each
    multiple is worth, and a multiple carries over between widths where a raw cosine does not);
    ``patience``: checks in a row above it before flagging (:func:`reversion.core.drift.first_flag`);
    ``log_path``: ``.csv`` or ``.jsonl`` file appended to;
    ``trainer``: route the values through ``trainer.log`` (or call :meth:`attach`);
    ``stop_on_flag``: stop training once flagged; ``prefix``: of the logged keys.
    """

    def __init__(self, directions: Directions | torch.Tensor, probe_ids: Sequence[Sequence[int]], *,
                 layer: int | None = None, mu_S: torch.Tensor | None = None, every: int = 10,
                 threshold: float | None = None, threshold_null: float | None = None, patience: int = 3,
                 log_path: str | Path | None = None, pad_id: int = 0, position: str | None = None,
                 batch_size: int = 32, trainer: Trainer | None = None, stop_on_flag: bool = False,
                 prefix: str = "reversion/"):
        check_int("every", every, 1)
        check_int("patience", patience, 1)
        if not probe_ids:
            raise ValueError("probe_ids is empty: the monitor needs harmful probe prompts (token ids)")
        self.displacement: float | None = None
        meta: dict = {}
        if isinstance(directions, Directions):
            meta = directions.meta
            if layer is None:
                if meta.get("layer") is None:
                    raise ValueError("the Directions carry no chosen layer; pass layer=")
                layer = int(meta["layer"])
            v_all = directions.v_rev
            self._check_layer(layer, v_all.shape[0] - 1)
            self.displacement = float(directions.displacement_norm[layer])
            v = v_all[layer]
            position = position or meta.get("position", "last")
        elif isinstance(directions, torch.Tensor):
            if directions.ndim == 2:
                if layer is None:
                    raise ValueError("v_rev given as [L+1, d]: pass layer=")
                self._check_layer(layer, directions.shape[0] - 1)
                v = directions[layer]
            elif directions.ndim == 1:
                if layer is None:
                    raise ValueError("v_rev given as [d]: pass the layer it belongs to (layer=)")
                v = directions
            else:
                raise ValueError(f"v_rev must be [d] or [L+1, d], got shape {tuple(directions.shape)}")
        else:
            raise TypeError(f"directions must be a reversion.core.directions.Directions or a tensor, "
                            f"got {type(directions).__name__}")
        v = v.detach().double().cpu()
        norm = float(v.norm())
        if not norm > 0:
            raise ValueError(f"v_rev is zero at layer {layer}: no direction to monitor there")
        self.v = v / norm
        self.layer = int(layer)
        self.d = int(self.v.shape[0])
        self.position = position or "last"
        self.probe_ids = [list(map(int, p)) for p in probe_ids]
        self.pad_id = int(pad_id)
        self.batch_size = batch_size
        self.every = every
        self.patience = patience
        self.stop_on_flag = stop_on_flag
        self.prefix = prefix
        self.mu_S = self._mu_at_layer(mu_S) if mu_S is not None else None
        self._mu_given = mu_S is not None

        if threshold is not None:
            check_float("threshold", threshold)
        matched = meta.get("matched_p99")
        self.threshold, self.threshold_source = drift_threshold(
            self.d, self.layer, matched if isinstance(matched, list) else None, threshold, threshold_null)

        self.log_path = Path(log_path) if log_path is not None else None
        if self.log_path is not None and self.log_path.suffix.lower() not in (".csv", ".jsonl"):
            raise ValueError(f"log_path must end in .csv or .jsonl, got {self.log_path.name!r}")
        self.trainer = trainer
        self.history: list[dict[str, Any]] = []
        self.flagged = False
        self.flagged_step: int | None = None
        self._run = 0  # checks in a row above the threshold
        self._tracker: ProbeTracker | None = None

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _check_layer(layer: int, n: int) -> None:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= n:
            raise ValueError(f"layer {layer!r} is outside the valid range [0, {n}]")

    def _mu_at_layer(self, mu: torch.Tensor) -> torch.Tensor:
        mu = torch.as_tensor(mu).detach().double().cpu()
        if mu.ndim == 2:
            self._check_layer(self.layer, mu.shape[0] - 1)
            mu = mu[self.layer]
        if mu.shape != (self.d,):
            raise ValueError(f"mu_S must be [d={self.d}] or [L+1, d], got shape {tuple(mu.shape)}")
        return mu

    def attach(self, trainer: Trainer) -> "ReversionMonitor":
        """Add this monitor to ``trainer`` and log through ``trainer.log``; returns self."""
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    def _check_model(self, model) -> None:
        if hidden_size(model) != self.d:
            raise ValueError(f"v_rev has width {self.d} but the model's hidden_size is {hidden_size(model)}")
        self._check_layer(self.layer, n_layers(model))

    # ------------------------------------------------------------------ measuring

    def measure(self, model) -> dict[str, float]:
        """Alignment, projection and drift norm of ``model`` now (no grad; model mode restored).
        On an FSDP2-sharded model a collective: every rank calls it at the same step (:meth:`probe_mean`)."""
        if self.mu_S is None:
            raise RuntimeError("mu_S is unknown: pass mu_S= or let on_train_begin compute it")
        out = read_drift(self.probe_mean(model), self.mu_S, self.v, self.displacement)
        if out["relative_projection"] is None:
            del out["relative_projection"]
        return out

    def probe_mean(self, model) -> torch.Tensor:
        """The mean probe activation of ``model`` at the monitored layer, ``[d]`` float64 on the CPU.

        One process or DDP: a :class:`~reversion.core.tracking.ProbeTracker` forward on this process.
        FSDP2 (``fully_shard``): the tracker's padded batches, each split over the ranks and forwarded
        through the root module with the sums all-reduced (:func:`sharded_probe_sum`, the block term's
        forward), so every rank gets one process's mean (to float rounding); afterwards every FSDP
        module is resharded, as training left it. A collective: all ranks call it together.
        """
        if self._tracker is None or self._tracker.device != model_device(model):  # pads once per run
            self._tracker = ProbeTracker(model, self.probe_ids, [self.layer], self.position, self.pad_id,
                                         self.batch_size)
        if not _fsdp2(model):
            return self._tracker(model)[0]
        total = 0.0  # summed on the model's device; one transfer
        was_training = model.training
        model.eval()
        try:
            # no_grad, not inference_mode: FSDP2 reuses its all-gather buffers, and buffers made
            # in inference mode fail the next training step ("Inplace update to inference tensor").
            with torch.no_grad():
                for x, attn, _, _ in self._tracker.batches:
                    total = total + sharded_probe_sum(model, x, attn, [self.layer], self.position)[0]
            total = total.to("cpu", torch.float64)
        finally:
            model.train(was_training)
            for m in model.modules():  # the root keeps its gathered parameters after a forward
                if isinstance(m, FSDPModule):
                    m.reshard()
        if not torch.isfinite(total).all():
            raise ValueError(f"non-finite activations (NaN or inf) at layer {self.layer}")
        return total / self._tracker.n

    def _record(self, step: int, model, state, control, main: bool = True) -> dict[str, Any]:
        """Measure and update the streak and flag; the main process (``main``) also writes the row,
        logs it and warns. Under FSDP2 every rank records (each holds the all-reduced values), so
        ``stop_on_flag`` stops every rank at the same step."""
        m = self.measure(model)
        above = m["alignment"] > self.threshold
        self._run = streak(self._run, m["alignment"], self.threshold)
        newly = False
        if self._run >= self.patience and not self.flagged:
            self.flagged, self.flagged_step, newly = True, step, True
        row = {"step": step, "layer": self.layer, **m, "threshold": self.threshold, "above": above,
               "flagged": self.flagged}
        row.setdefault("relative_projection", None)
        self.history.append(row)
        if main:
            self._write(row)
            self._report(m, state, control)
        if newly:
            if main:
                msg = (f"reversion monitor: drift aligned with v_rev above {self.threshold:.4f} "
                       f"({self.threshold_source}) for {self.patience} checks in a row, at step {step} "
                       f"(layer {self.layer}, alignment {m['alignment']:.4f})")
                warnings.warn(msg, ReversionWarning, stacklevel=2)
            if self.stop_on_flag and control is not None:
                control.should_training_stop = True
        return row

    def _write(self, row: dict[str, Any]) -> None:
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.log_path.exists() or self.log_path.stat().st_size == 0
        with self.log_path.open("a", encoding="utf-8", newline="") as f:
            if self.log_path.suffix.lower() == ".csv":
                w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
                if new:
                    w.writeheader()
                w.writerow({k: ("" if row.get(k) is None else row[k]) for k in LOG_FIELDS})
            else:
                f.write(json.dumps({k: row.get(k) for k in LOG_FIELDS}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _report(self, m: dict[str, float], state, control) -> None:
        if state is None:
            return
        logs = {f"{self.prefix}{k}": float(v) for k, v in m.items()}
        logs[f"{self.prefix}flagged"] = float(self.flagged)
        if self.trainer is not None:
            saved = control.should_log if control is not None else None
            self.trainer.log(logs)
            if control is not None:
                control.should_log = saved  # Trainer.log -> on_log cleared it
        else:
            entry = dict(logs)
            if state.epoch is not None:
                entry["epoch"] = state.epoch
            state.log_history.append({**entry, "step": state.global_step})

    # ------------------------------------------------------------------ callback events

    @staticmethod
    def precision(args, model) -> contextlib.AbstractContextManager:
        """The Trainer's mixed precision for the checks: under ``bf16``/``fp16`` training the probe
        forward runs under the same autocast as the training forward (in float32 it cost about
        three bf16 forwards on a GPU), and mu_S is measured the same way, so drift carries no
        precision offset."""
        dtype = torch.bfloat16 if getattr(args, "bf16", False) else torch.float16 if getattr(args, "fp16", False) \
            else None
        if dtype is None or model is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=model_device(model).type, dtype=dtype)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("ReversionMonitor needs the model (the Trainer passes it to callbacks)")
        if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            raise ValueError("model: ReversionMonitor does not run on a model wrapped in FSDP1 "
                             "(FullyShardedDataParallel); shard it with FSDP2 (torch.distributed.fsdp.fully_shard, "
                             "the Trainer's default FSDP version) or track its checkpoints with `reversion track`")
        self._check_model(model)
        sharded = _fsdp2(model)
        if self.mu_S is None:
            if state.global_step > 0:
                warnings.warn("ReversionMonitor: mu_S computed from the model at a resumed step "
                              f"{state.global_step}, not at theta_S; pass mu_S= when resuming",
                              ReversionWarning, stacklevel=2)
            with self.precision(args, model):
                self.mu_S = self.probe_mean(model) if sharded else \
                    reference_mean(model, self.probe_ids, self.layer, self.position, self.pad_id, self.batch_size)
        if sharded or state.is_world_process_zero:  # sharded: every rank takes part in the forward
            with self.precision(args, model):
                self._record(state.global_step, model, state, control, main=state.is_world_process_zero)
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is None or state.global_step % self.every != 0:
            return control
        if not (state.is_world_process_zero or _fsdp2(model)):  # DDP: the main process alone measures
            return control
        with self.precision(args, model):
            self._record(state.global_step, model, state, control, main=state.is_world_process_zero)
        return control

    def summary(self) -> dict[str, Any]:
        """Threshold, its source, number of checks, flag, last and maximum alignment."""
        al = [r["alignment"] for r in self.history]
        return {"layer": self.layer, "threshold": self.threshold, "threshold_source": self.threshold_source,
                "patience": self.patience, "checks": len(al), "flagged": self.flagged,
                "flagged_step": self.flagged_step, "last_alignment": al[-1] if al else None,
                "max_alignment": max(al) if al else None}


# --------------------------------------------------------------------------- block term


def block_term(model, directions: Directions, probe_ids: Sequence[Sequence[int]], strength: float,
               layers: Sequence[int] | None = None, n_probe_batch: int = 32, pad_id: int = 0,
               objective: str = "block") -> "ShardedTerm":
    """A directional term of :mod:`reversion.core.interventions` set up on ``model`` (which must be
    theta_S now), wrapped in a :class:`ShardedTerm` (in one process exactly the term; over
    several, each rank forwards its share of the probes).

    ``objective``: ``"block"`` (one-sided: resists motion along +v_rev only, a hinge),
    ``"oppose"`` (the bounded tanh term, which also steers along -v_rev) or ``"push"``.

    ``layers``: where the term acts (default every block output 1..L, as in the
    book's interventions); its scale per layer is ||mu_H - mu_S|| from ``directions``;
    ``pad_id``: the tokenizer's padding id (pads are masked; any id in the vocabulary works).
    Use it as ``BlockTrainer(..., block=block_term(...))``. Under torch.distributed, call it on
    every rank (each needs the probe batches and their theta_S means).
    """

    layers = list(layers) if layers is not None else all_block_layers(model)
    if objective not in DIRECTIONAL:
        raise ValueError(f"objective must be one of {', '.join(DIRECTIONAL)}, got {objective!r}")
    block = DIRECTIONAL[objective](directions.v_rev, directions.displacement_norm, strength, layers, n_probe_batch)
    # Block.setup reads only the ``block`` prompts (token ids), their pad id and the model.
    ids = [tuple(map(int, p)) for p in probe_ids]
    block.setup(model, None, Prompts(ids, None, ids, ids, int(pad_id)))
    return ShardedTerm(block)


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _fsdp2(model) -> bool:
    """Whether ``model`` holds modules sharded by FSDP2 (``fully_shard``)."""
    return any(isinstance(m, FSDPModule) for m in model.modules())


def sharded_probe_sum(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[int],
                      position: str = "last") -> torch.Tensor:
    """A right-padded probe batch's activations at ``layers``, summed over its rows and over the ranks:
    ``[len(layers), d]`` float64, the same on every rank.

    Rank ``r`` of ``W`` forwards rows ``r, r+W, ...`` through ``model`` itself (the root module: under
    FSDP its forward gathers the sharded parameters; a submodule called directly would meet them
    sharded) and sums its rows' activations (``position``: ``"last"`` real token or ``"mean"`` over
    the real tokens); the partial sums are added with ``funcol.all_reduce``, whose backward is again
    a sum over ranks (see :class:`ShardedTerm`). A collective: every rank calls it at the same time,
    so a rank whose share is empty (a batch smaller than ``W``) forwards one row with weight 0.
    One process: the whole batch, no collective. Autograd follows the caller's grad mode.
    """
    rank, world = _world()
    n = input_ids.shape[0]
    rows = torch.arange(rank, n, world, device=input_ids.device)
    weight = 1.0
    if len(rows) == 0:
        rows, weight = rows.new_zeros(1), 0.0
    mask = attention_mask[rows]
    out = model(input_ids=input_ids[rows], attention_mask=mask, output_hidden_states=True)
    if position == "last":
        last = mask.sum(1) - 1
        at = torch.arange(len(rows), device=last.device)
        h = torch.stack([out.hidden_states[l][at, last] for l in layers], 1)  # [rows, k, d]
    else:
        real = mask.bool()[:, :, None]  # masked_fill, not a multiply: 0 * NaN at a pad is NaN
        h = torch.stack([out.hidden_states[l].double().masked_fill(~real, 0.0).sum(1) / real.sum(1)
                         for l in layers], 1)
    part = weight * h.double().sum(0)  # [k, d]
    if world == 1:
        return part
    # funcol, not dist.all_reduce (in place, outside autograd): its backward sums over the ranks.
    return funcol.all_reduce(part, "sum", dist.group.WORLD)


class ShardedTerm:
    """A set-up directional term (:class:`~reversion.core.interventions.Block`, ``Oppose`` or ``Push``) whose probe forward is
    split over the ranks of a ``torch.distributed`` run.

    One process: ``aux_loss`` is the term's own, unchanged. ``W`` processes: rank ``r``
    forwards rows ``r, r+W, ...`` of the step's probe batch, sums their last-token activations
    at the term's layers, and the sums are added over the ranks with
    ``torch.distributed._functional_collectives.all_reduce`` (torch 2.13's replacement for the
    deprecated ``torch.distributed.nn.functional.all_reduce``); every rank then holds the
    same mean, drift, projection and term ``T`` as one process (that forward is
    :func:`sharded_probe_sum`, which the monitor shares under FSDP2). That all-reduce is
    differentiable: its backward is again a sum over ranks, so rank ``r``'s parameter gradient
    is ``W * dT/ds * ds_r/dtheta``
    (``s_r``: its partial sum). DDP and FSDP average the gradients over the ranks, which
    gives ``dT/ds * sum_r ds_r/dtheta = dT/dtheta``, the one-process gradient (tested
    against one process under FSDP2). A plain ``dist.all_reduce`` would cut the graph, and
    a backward that did not sum would give ``dT/dtheta / W``.

    Every rank must call ``aux_loss`` at the same steps (it holds collectives; under FSDP the
    forward's all-gathers are collectives too), so a rank whose share is empty (a batch
    smaller than ``W``) forwards one row with weight 0.
    """

    def __init__(self, term):
        for attr in ("probe_batches", "mu_S", "v", "scale", "layers", "sign", "strength", "penalty"):
            if not hasattr(term, attr):
                raise ValueError(f"term must be a set-up Block, Oppose or Push (it has no {attr!r}), "
                                 f"got {type(term).__name__}")
        if not term.probe_batches:
            raise ValueError("term has no probe batches: call its setup(model, data, probes) first")
        self.term = term

    @property
    def strength(self) -> float:
        return self.term.strength

    def key(self) -> dict:
        return self.term.key()

    def teardown(self) -> None:
        self.term.teardown()

    def aux_loss(self, model, batch, step: int) -> torch.Tensor | None:
        _, world = _world()
        if world == 1 or self.term.strength == 0.0:
            return self.term.aux_loss(model, batch, step)
        t = self.term
        i = (step - 1) % len(t.probe_batches)
        b = t.probe_batches[i]
        total = sharded_probe_sum(model, b["input_ids"], b["attention_mask"], t.layers)  # [k, d]
        device = total.device
        drift = total / b["input_ids"].shape[0] - t.mu_S[i].to(device)
        p = (drift * t.v[t.layers].to(device)).sum(-1)
        return (t.sign * t.strength * t.penalty(p / t.scale[t.layers].to(device)).sum()).float()


class BlockTrainer(ObjectiveMixin, Trainer):
    """``Trainer`` whose training loss adds ``block.aux_loss(model, inputs, step)`` (see
    :class:`ObjectiveMixin`, which does the same for any ``Trainer`` subclass)."""
