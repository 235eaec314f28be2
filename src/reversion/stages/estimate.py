"""Stage ``estimate_vrev``: v_rev and its controls for a world's history (cached).

The stage stores the directions at every layer, the per-prompt activations they came
from (for the stability bootstrap), the split-half stability per layer and the chosen
layer with its reason. Chapters 03-05 call it and get the same directions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from reversion.infra import cache, seeding
from reversion.core import stats
from reversion.subjects.organism.config import HistoryConfig, to_dict
from reversion.core.directions import Directions, estimate_directions, select_layer
from reversion.subjects.organism.history import train_history
from reversion.subjects.organism.language import PAD, Language
from reversion.subjects.organism.prompts import ProbeSets
from reversion.infra.runtime import set_cpu_threads


@dataclass(frozen=True)
class VRevEstimate:
    directions: Directions
    acts: dict[str, torch.Tensor]
    """``H``, ``S``, ``P``, ``S_harmless`` -> ``[n_prompts, L+1, d]``."""
    stability: np.ndarray
    """``[n_boot, L+1]`` split-half cosines."""
    path: Path

    @property
    def layer(self) -> int:
        return self.directions.layer


def estimate_vrev(history: HistoryConfig, n_probe: int = 128, position: str = "last",
                  n_boot: int = 200, min_stability: float = 0.9, progress: bool = True) -> VRevEstimate:
    """v_rev, v_P and r_S at every layer from the history's checkpoints; layer selected by rule."""
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")
    hist = train_history(history, progress)
    key = {"history": to_dict(history), "n_probe": n_probe, "position": position,
           "n_boot": n_boot, "min_stability": min_stability}

    def build(out: Path) -> None:
        set_cpu_threads()
        lang = Language(history.language)
        probes = ProbeSets.build(lang, n_probe)
        models = {ck: hist.load(ck) for ck in ("theta_P", "theta_H", "theta_S")}
        dirs, acts = estimate_directions(
            models["theta_H"], models["theta_S"], probes.harmful_vrev, theta_P=models["theta_P"],
            harmless=probes.harmless_vrev, position=position, pad_id=PAD,
            meta={"checkpoints": {k: str(v) for k, v in hist.paths.items()},
                  "probe_split": "probe_vrev"})
        g = seeding.rng(history.seed, "vrev-stability")
        L1 = acts["H"].shape[1]
        stab = np.stack([stats.split_half_stability(acts["H"][:, l].numpy(), acts["S"][:, l].numpy(),
                                                    n_boot, g) for l in range(L1)], axis=1)
        layer, reason = select_layer(dirs.displacement_norm.numpy(), dirs.activation_norm.numpy(),
                                     stab.mean(0), min_stability)
        dirs = Directions(dirs.v_rev, dirs.v_P, dirs.r_S, dirs.displacement_norm,
                          dirs.activation_norm, {**dirs.meta, "layer": layer, "layer_reason": reason})
        dirs.save(out / "v_rev.safetensors")
        save_file({k: v.contiguous() for k, v in acts.items()}, out / "acts.safetensors")
        np.save(out / "stability.npy", stab)

    path = cache.cached("estimate_vrev", key, build)
    return VRevEstimate(Directions.load(path / "v_rev.safetensors"),
                        load_file(path / "acts.safetensors"), np.load(path / "stability.npy"), path)


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
    """Per-layer table data: displacement, relative displacement, stability, control cosines."""
    d = est.directions
    L1 = d.v_rev.shape[0]
    rows = []
    for l in range(L1):
        rows.append({
            "layer": l,
            "displacement": float(d.displacement_norm[l]),
            "relative displacement": float(d.displacement_norm[l] / d.activation_norm[l]),
            "stability mean": float(est.stability[:, l].mean()),
            "stability std": float(est.stability[:, l].std(ddof=1)),
            "cos(v_rev, v_P)": float(d.v_rev[l] @ d.v_P[l]) if d.v_P is not None else float("nan"),
            "cos(v_rev, r_S)": float(d.v_rev[l] @ d.r_S[l]) if d.r_S is not None else float("nan"),
        })
    return {"rows": rows, "layer": d.layer, "reason": d.meta["layer_reason"]}
