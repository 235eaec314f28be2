"""Stage ``estimate``: v_rev and its control directions for a subject, the layer chosen by rule.

For each checkpoint the subject has (theta_H, theta_S, and theta_P when given), loaded one
at a time: the activations of the estimation probes at every layer (and theta_S's on
harmless prompts). From them: the directions at every layer
(:func:`~reversion.core.directions.directions_from_acts`), the split-half stability per
layer and the chosen layer (:func:`~reversion.core.directions.select_layer`). The stage
stores the directions, the per-prompt activations (for the stability bootstrap and the
matched null) and the witness's greedy first answer tokens (for the vocabulary readout).
Every chapter that needs v_rev calls it and gets the same directions; ``reversion estimate`` runs
:func:`measure` on the command line's subject.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from reversion.core import stats
from reversion.core.activations import POSITIONS, prompt_activations
from reversion.core.directions import (
    Directions,
    directions_from_acts,
    layer_stability,
    select_layer,
)
from reversion.core.generation import greedy_generate
from reversion.infra import cache, seeding
from reversion.infra.checks import check_choice, check_float, check_int
from reversion.infra.provenance import code_of
from reversion.infra.runtime import free_memory, set_cpu_threads
from reversion.subjects.base import Subject

__all__ = ["VRevEstimate", "estimate", "measure", "stability_vs_probes", "summary"]

CODE = ("reversion.stages.estimate",)


@dataclass(frozen=True)
class VRevEstimate:
    directions: Directions
    acts: dict[str, torch.Tensor]
    """``H``, ``S``, ``P``, ``S_harmless`` -> ``[n_prompts, L+1, d]``."""
    stability: np.ndarray
    """``[n_boot, L+1]`` split-half cosines."""
    path: Path | None
    """The cache entry (None for an uncached :func:`measure`)."""
    openers: list[int]
    """The witness's greedy first answer token on each estimation prompt."""

    @property
    def layer(self) -> int:
        return self.directions.layer


def _check(position: str, n_boot: int, min_stability: float) -> None:
    check_choice("position", position, POSITIONS)
    check_int("n_boot", n_boot, 2)
    check_float("min_stability", min_stability, 0.0, 1.0, lo_open=True, hi_open=True)


def measure(subject: Subject, n_probe: int, position: str = "last", n_boot: int = 200,
            min_stability: float = 0.9, meta: dict | None = None) -> VRevEstimate:
    """The estimate, uncached: activations, directions, stability, layer (see the module docstring)."""
    _check(position, n_boot, min_stability)
    prompts = subject.prompts(n_probe)
    kw = dict(layers="all", position=position, batch_size=subject.batch_size, pad_id=prompts.pad_id)
    acts: dict[str, torch.Tensor] = {}
    openers: list[int] = []
    for role, tag in (("theta_H", "H"), ("theta_S", "S"), ("theta_P", "P")):
        if role not in subject.roles():
            continue
        model = subject.load(role)
        acts[tag] = prompt_activations(model, prompts.vrev, **kw)
        if tag == "S" and prompts.harmless:
            acts["S_harmless"] = prompt_activations(model, prompts.harmless, **kw)
        if tag == "H":  # the witness's answer openings, for the vocabulary readout
            openers = [g[0] for g in greedy_generate(model, prompts.vrev, 1, None, subject.batch_size)]
        dropped = weakref.ref(model)
        del model
        free_memory(dropped)
    meta = {"position": position, **(meta or {})}
    try:
        dirs = directions_from_acts(acts, meta)
    except ValueError as exc:
        raise _naming_inputs(subject, exc) from None
    stab = layer_stability(acts["H"], acts["S"], n_boot, seeding.rng(subject.seed, "vrev-stability"))
    layer, reason = select_layer(dirs.displacement_norm.numpy(), dirs.activation_norm.numpy(),
                                 stab.mean(0), min_stability)
    dirs = Directions(dirs.v_rev, dirs.v_P, dirs.r_S, dirs.displacement_norm, dirs.activation_norm,
                      {**dirs.meta, "layer": layer, "layer_reason": reason})
    return VRevEstimate(dirs, acts, stab, None, openers)


def _naming_inputs(subject: Subject, exc: ValueError) -> ValueError:
    """A direction that does not exist (e.g. identical witness and aligned checkpoints), with
    the inputs at fault named as the subject names them (``checkpoints['witness']``,
    ``--witness``) when it names its inputs (checkpoints do; the organism has none)."""
    msg = str(exc)
    role = "theta_P" if msg.startswith("v_P") else "harmless" if msg.startswith("r_S") else "theta_H/theta_S"
    named = subject.name_input(role)
    return ValueError(f"{named}: {msg}") if named else exc


def estimate(subject: Subject, n_probe: int = 128, position: str = "last", n_boot: int = 200,
             min_stability: float = 0.9, progress: bool = True) -> VRevEstimate:
    """:func:`measure`, cached per (subject, n_probe, position, n_boot, min_stability)."""
    _check(position, n_boot, min_stability)
    subject.prepare(progress=progress)
    key = {"subject": subject.key(), "n_probe": n_probe, "position": position, "n_boot": n_boot,
           "min_stability": min_stability}

    def build(out: Path) -> None:
        set_cpu_threads()  # the organism's small models; a CLI run of measure() keeps torch's threads
        est = measure(subject, n_probe, position, n_boot, min_stability, meta=subject.arch())
        est.directions.save(out / "v_rev.safetensors")
        save_file({k: v.contiguous() for k, v in est.acts.items()}, out / "acts.safetensors")
        np.save(out / "stability.npy", est.stability)
        (out / "witness_openers.json").write_text(json.dumps(est.openers))

    path = cache.cached("estimate", key, build, code=code_of(CODE, subject))
    return VRevEstimate(Directions.load(path / "v_rev.safetensors"), load_file(path / "acts.safetensors"),
                        np.load(path / "stability.npy"), path,
                        json.loads((path / "witness_openers.json").read_text()))


def stability_vs_probes(est: VRevEstimate, layer: int, sizes: list[int], n_boot: int,
                        seed: int = 0) -> dict[int, dict]:
    """Split-half stability at one layer using only the first ``n`` probes, for each ``n``."""
    g = seeding.rng(seed, "stability-vs-probes", layer)
    out = {}
    H, S = est.acts["H"][:, layer].numpy(), est.acts["S"][:, layer].numpy()
    for n in sizes:
        if n < 4 or n > len(H):
            raise ValueError(f"probe subset size {n} outside [4, {len(H)}]")
        out[n] = stats.aggregate(stats.split_half_stability(H[:n], S[:n], n_boot, g))
    return out


def summary(est: VRevEstimate) -> dict:
    """Per-layer table data: displacement, relative displacement, stability, control cosines
    (None where a control direction does not exist)."""
    d = est.directions
    rows = []
    for l in range(d.v_rev.shape[0]):
        rows.append({
            "layer": l,
            "displacement": float(d.displacement_norm[l]),
            "relative displacement": float(d.displacement_norm[l] / d.activation_norm[l]),
            "stability mean": float(est.stability[:, l].mean()),
            "stability std": float(est.stability[:, l].std(ddof=1)),
            "cos(v_rev, v_P)": float(d.v_rev[l] @ d.v_P[l]) if d.v_P is not None else None,
            "cos(v_rev, r_S)": float(d.v_rev[l] @ d.r_S[l]) if d.r_S is not None else None,
        })
    return {"rows": rows, "layer": d.layer, "reason": d.meta["layer_reason"]}
