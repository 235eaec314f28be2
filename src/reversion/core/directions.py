"""History-defined directions in activation space, and alignment of drift with them.

All directions are per layer, ``[L+1, d]`` (layer convention of
:mod:`reversion.core.activations`: 0 = embeddings, L = after the final norm).

* ``v_rev  = normalize(mu_H - mu_S)`` on harmful probe prompts: from the aligned model
  back toward the helpful-only witness;
* ``v_P    = normalize(mu_P - mu_S)``: toward the pretrained model (control);
* ``r_S    = normalize(mu_S(harmful) - mu_S(harmless))``: theta_S's own refusal
  direction, difference of means as in Arditi et al. 2024 (control).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from reversion.core import stats
from reversion.infra import seeding
from reversion.core.hooks import text_config


def unit_rows(x: torch.Tensor, what: str, eps: float = 1e-12,
              allow_zero: tuple[int, ...] = (0,)) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalize each row of ``[L+1, d]``; a zero-norm row is an error, not a NaN.

    Layer 0 is exempt by default: at the last prompt token it is the embedding of the
    same separator token for every prompt, so two prompt sets (or two checkpoints with
    an unchanged embedding) can coincide there. Such a row stays zero, and alignment
    with a zero direction is reported as 0.
    """
    finite = torch.isfinite(x).all(dim=-1)
    if not finite.all():
        raise ValueError(f"{what}: non-finite values (NaN or inf) at layer(s) "
                         f"{(~finite).nonzero().flatten().tolist()} -- no direction can be estimated")
    norms = x.norm(dim=-1)
    bad = [l for l in (norms <= eps).nonzero().flatten().tolist() if l not in allow_zero]
    if bad:
        raise ValueError(f"{what}: zero-norm displacement at layer(s) {bad} -- the two "
                         "checkpoints give identical mean activations there; no direction exists")
    safe = torch.where(norms > eps, norms, torch.ones_like(norms))
    return torch.where((norms > eps)[:, None], x / safe[:, None], torch.zeros_like(x)), norms


@dataclass(frozen=True)
class Directions:
    """v_rev and the control directions at every layer, with what they were estimated from."""
    v_rev: torch.Tensor
    """``[L+1, d]`` unit rows."""
    v_P: torch.Tensor | None
    """``[L+1, d]`` unit rows, or None without a pretrained checkpoint."""
    r_S: torch.Tensor | None
    """``[L+1, d]`` unit rows, or None without harmless prompts."""
    displacement_norm: torch.Tensor
    """``[L+1]``: ||mu_H - mu_S||."""
    activation_norm: torch.Tensor
    """``[L+1]``: mean ||h_S(x)|| over the probes (scale for the displacement)."""
    meta: dict
    """Layer chosen and why, position rule, number of prompts, the architecture (and, from
    ``reversion estimate``, the checkpoint paths, stability and matched p99 per layer)."""

    def save(self, path: str | Path) -> Path:
        """safetensors with the metadata as JSON strings (reusable by other chapters and users)."""
        tensors = {"v_rev": self.v_rev, "displacement_norm": self.displacement_norm,
                   "activation_norm": self.activation_norm}
        if self.v_P is not None:
            tensors["v_P"] = self.v_P
        if self.r_S is not None:
            tensors["r_S"] = self.r_S
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp,
                  metadata={k: json.dumps(v) for k, v in self.meta.items()})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Directions":

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no direction file at {path}")
        with safe_open(path, "pt") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        t = load_file(path)
        return cls(t["v_rev"], t.get("v_P"), t.get("r_S"), t["displacement_norm"],
                   t["activation_norm"], meta)

    @property
    def layer(self) -> int:
        return int(self.meta["layer"])


def directions_from_acts(acts: dict[str, torch.Tensor], meta: dict | None = None) -> Directions:
    """v_rev (and v_P / r_S where their activations are given) at every layer from per-prompt
    activations ``[n, L+1, d]``: ``H`` and ``S`` on the harmful probes, ``P`` (theta_P on the
    same probes) and ``S_harmless`` (theta_S on harmless prompts) optional.

    Activations are computed one model at a time (:mod:`reversion.stages.estimate`), so only
    one checkpoint is ever in memory; this is the arithmetic on them.
    """
    for name in ("H", "S"):
        if name not in acts:
            raise ValueError(f"activations of {name!r} are missing: v_rev needs both H and S")
    if acts["H"].shape[0] == 0:
        raise ValueError("harmful probe prompt set is empty")
    for name, a in acts.items():
        if a.ndim != 3 or a.shape[1:] != acts["S"].shape[1:]:
            raise ValueError(f"activations of {name!r} have shape {tuple(a.shape)}, S has {tuple(acts['S'].shape)}: "
                             "the models differ in layer count (num_hidden_layers) or width (hidden_size); "
                             "layers or activations are not comparable")
    if acts["H"].shape[0] != acts["S"].shape[0] or ("P" in acts and acts["P"].shape[0] != acts["S"].shape[0]):
        raise ValueError("H, S (and P) must be activations of the same probe prompts")
    mu_H, mu_S = acts["H"].mean(0), acts["S"].mean(0)
    v_rev, disp = unit_rows(mu_H - mu_S, "v_rev = mu_H - mu_S")
    v_P = r_S = None
    if "P" in acts:
        v_P, _ = unit_rows(acts["P"].mean(0) - mu_S, "v_P = mu_P - mu_S")
    if "S_harmless" in acts:
        r_S, _ = unit_rows(mu_S - acts["S_harmless"].mean(0), "r_S = mu_S(harmful) - mu_S(harmless)")
    meta = {"n_prompts": int(acts["H"].shape[0]), **(meta or {})}
    meta.setdefault("layer", None)
    return Directions(v_rev, v_P, r_S, disp, acts["S"].norm(dim=-1).mean(0), meta)


def layer_stability(acts_H: torch.Tensor, acts_S: torch.Tensor, n_boot: int,
                    generator: np.random.Generator) -> np.ndarray:
    """``[n_boot, L+1]`` split-half stability of v_rev at every layer
    (:func:`reversion.core.stats.split_half_stability` on ``[n, L+1, d]`` activations).

    A layer where a half has no displacement (e.g. layer 0 when the embeddings did not move)
    gets 0, never NaN, so the layer rule never picks it for its stability.
    """
    out = []
    for layer in range(acts_H.shape[1]):
        try:
            s = stats.split_half_stability(acts_H[:, layer].numpy(), acts_S[:, layer].numpy(), n_boot, generator)
        except ValueError:
            s = np.zeros(n_boot)
        out.append(np.nan_to_num(s, nan=0.0))
    return np.stack(out, axis=1)


def select_layer(displacement_norm: np.ndarray, activation_norm: np.ndarray,
                 stability: np.ndarray, min_stability: float = 0.9) -> tuple[int, str]:
    """The rule the book states, fixed before any intervention result is seen.

    Among the block outputs 1..L-1 (layer 0 is the token embedding, layer L carries the
    final norm's rescaling), keep the layers whose split-half stability is at least
    ``min_stability`` and take the one with the largest *relative* displacement
    ||mu_H - mu_S|| / mean ||h_S||; if none is stable enough, take the most stable.
    """
    L = len(displacement_norm) - 1
    cand = list(range(1, L)) or list(range(0, L + 1))
    rel = np.asarray(displacement_norm) / np.asarray(activation_norm)
    stable = [l for l in cand if stability[l] >= min_stability]
    if stable:
        best = max(stable, key=lambda l: rel[l])
        return best, (f"layer {best}: largest relative displacement ({rel[best]:.3f}) among the "
                      f"intermediate layers with split-half stability >= {min_stability}")
    best = max(cand, key=lambda l: stability[l])
    return best, (f"layer {best}: no intermediate layer reached stability {min_stability}; "
                  "the most stable one")


def final_norm_and_unembedding(model) -> tuple[torch.nn.Module | None, torch.Tensor]:
    """The final norm (GPT-2 ``ln_f``, Llama ``norm``) and the unembedding ``[V, d]``."""
    base = model.base_model
    norm = None
    for name in ("ln_f", "norm", "final_layer_norm", "final_layernorm"):
        if hasattr(base, name):
            norm = getattr(base, name)
            break
    return norm, model.get_output_embeddings().weight


@torch.no_grad()
def logit_lens(model, direction: torch.Tensor) -> torch.Tensor:
    """Vocabulary readout ``[V]`` of a bare direction ``[d]``.

    A norm applied to a direction would add its bias (and, for LayerNorm, recentre an
    activation that does not exist), so only its linear part is folded in: the
    per-channel scale, after removing the mean for LayerNorm (which it always does).
    """
    norm, W_U = final_norm_and_unembedding(model)
    v = direction.to(W_U.dtype).to(W_U.device)
    if norm is not None:
        if isinstance(norm, torch.nn.LayerNorm) or getattr(norm, "bias", None) is not None:
            v = v - v.mean()
        weight = getattr(norm, "weight", None)
        if weight is not None:
            # Gemma-style RMSNorm scales by (1 + weight); its config says so.
            offset = 1.0 if "gemma" in str(getattr(text_config(model), "model_type", "")) else 0.0
            v = v * (weight + offset)
    return (W_U @ v).double().cpu()


def random_directions(shape: tuple[int, int], seed: int) -> torch.Tensor:
    """``[L+1, d]`` unit rows drawn uniformly on the sphere at every layer, from the project's
    seed helper (the same ``seed`` gives the same direction on any machine)."""
    g = seeding.rng(seed, "random-direction")
    x = torch.from_numpy(g.standard_normal(shape))
    return x / x.norm(dim=-1, keepdim=True)


def residual_direction(v: torch.Tensor, controls: list[torch.Tensor]) -> torch.Tensor:
    """``[L+1, d]``: at each layer, the unit part of ``v`` outside the span of the ``controls``'
    rows (Gram-Schmidt; a control row of zero norm is skipped). A layer where ``v`` lies in
    the span (no residual) is a zero row."""
    out = torch.zeros_like(v, dtype=torch.float64)
    for l in range(v.shape[0]):
        basis: list[torch.Tensor] = []
        for c in controls:
            b = c[l].double()
            for q in basis:
                b = b - (b @ q) * q
            if float(b.norm()) > 1e-8:
                basis.append(b / b.norm())
        r = v[l].double()
        for q in basis:
            r = r - (r @ q) * q
        if float(r.norm()) > 1e-8 * max(float(v[l].norm()), 1e-300):
            out[l] = r / r.norm()
    return out


def control_directions(d: "Directions", n_random: int = 1, random_seed: int = 0) -> dict[str, torch.Tensor]:
    """The directions an intervention is compared along, by name: ``v_rev``; ``-r_S`` (undoing
    theta_S's refusal) and ``v_P`` (toward the pretrained model) where the estimate has them;
    ``residual`` (v_rev outside their span) where both exist; and ``n_random`` random unit
    directions (seeds ``random_seed + i``), each with both signs (``random{i}+``, ``random{i}-``).
    A direction an estimate lacks is absent, not zero."""
    out = {"v_rev": d.v_rev.double()}
    if d.r_S is not None:
        out["-r_S"] = -d.r_S.double()
    if d.v_P is not None:
        out["v_P"] = d.v_P.double()
    if d.r_S is not None and d.v_P is not None:
        out["residual"] = residual_direction(d.v_rev, [d.r_S, d.v_P])
    for i in range(n_random):
        r = random_directions(tuple(d.v_rev.shape), random_seed + i)
        out[f"random{i}+"], out[f"random{i}-"] = r, -r
    return out
