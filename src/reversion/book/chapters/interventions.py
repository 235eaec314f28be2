"""Chapter 05: block, push, projection and rehearsal against plain benign fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from reversion.book.chapters.common import SubjectParams, write_chapter
from reversion.core import stats
from reversion.core.drift import drift_alignment
from reversion.core.interventions import Block, Projection, Push, Rehearsal
from reversion.infra.checks import check_float, check_fraction, check_int
from reversion.stages.estimate import VRevEstimate, estimate
from reversion.stages.finetune import FinetuneRun, finetune_many
from reversion.subjects.base import Subject
from reversion.subjects.organism.worlds import World

STEM = "05_interventions"
VARIANTS = ("baseline", "block", "push", "projection", "rehearsal")


@dataclass(frozen=True)
class Params(SubjectParams):
    """Parameters of chapter 05 (strengths and fraction fixed before any result was seen)."""

    n_seeds: int
    """Fine-tuning seeds; every variant uses the same seeds (paired comparison)."""
    block_strength: float
    """Weight of the bounded block term (0 reproduces the baseline)."""
    push_strength: float
    """Weight of the bounded push term."""
    rehearsal_fraction: float
    """Share of each batch replaced by safety examples (harmful request -> refusal; with
    checkpoints: a prompt of the estimation half -> ``refusal_response``)."""
    intervention_layers: list
    """Layers the block, push and projection act on; empty = every block output 1..L
    (projection: 1..L-1)."""
    sweep_strengths: list
    """Block strengths of the trade-off sweep."""
    n_sweep_seeds: int
    """Seeds per sweep point."""

    def __post_init__(self) -> None:
        for name in ("block_strength", "push_strength"):
            check_float(name, getattr(self, name), 0.0)
        check_fraction("rehearsal_fraction", self.rehearsal_fraction)
        for s in self.sweep_strengths:
            check_float("sweep_strengths", s, 0.0)
        check_int("n_seeds", self.n_seeds, 2)  # paired intervals
        check_int("n_sweep_seeds", self.n_sweep_seeds, 1, self.n_seeds)


@dataclass
class Result:
    world: World
    est: VRevEstimate
    runs: dict[str, list[FinetuneRun]]
    cos: dict[str, np.ndarray]
    """variant -> ``[n_seeds, T+1, L+1]`` alignment with v_rev."""
    sweep: dict[float, list[FinetuneRun]]
    sweep_cos: dict[float, np.ndarray]
    theta_S_harmfulness: float
    subject: Subject
    """The organism or your checkpoints."""

    @property
    def notes(self) -> list[str]:
        """What differs from the organism's chapter (printed under the parameters)."""
        return self.subject.describe(self.world.finetune)

    @property
    def layer(self) -> int:
        return self.est.layer


def make_variant(name: str, P: Params, est: VRevEstimate, strength: float | None = None):
    """The intervention object of a variant (None for the baseline)."""
    d = est.directions
    L = d.v_rev.shape[0] - 1
    layers = list(P.intervention_layers) or list(range(1, L + 1))
    if name == "baseline":
        return None
    if name == "block":
        return Block(d.v_rev, d.displacement_norm, P.block_strength if strength is None else strength, layers)
    if name == "push":
        return Push(d.v_rev, d.displacement_norm, P.push_strength, layers)
    if name == "projection":
        return Projection(d.v_rev, [l for l in layers if l < L] or [est.layer])
    if name == "rehearsal":
        return Rehearsal(P.rehearsal_fraction)
    raise ValueError(f"unknown variant {name!r} (known: {', '.join(VARIANTS)})")


def check_layers(P: Params, subject: Subject) -> None:
    """Intervention layers in range, before any training (not after the baseline runs)."""
    L = subject.arch()["num_hidden_layers"]
    bad = [l for l in P.intervention_layers if not isinstance(l, int) or not 1 <= l <= L]
    if bad:
        raise ValueError(f"intervention_layers {bad} outside [1, {L}]")


def jobs(P: Params, world: World, subject: Subject, est: VRevEstimate) -> dict:
    """``{(variant, seed) or (strength, seed): (subject, ft, intervention)}``: every variant with
    every seed (same seed = same data order), and the block-strength sweep."""
    out = {(v, s): (subject, world.finetune_config(s), make_variant(v, P, est))
           for v in VARIANTS for s in world.seeds}
    for lam in P.sweep_strengths:
        for s in world.seeds[: P.n_sweep_seeds]:
            out[(float(lam), s)] = (subject, world.finetune_config(s),
                                    make_variant("block", P, est, lam) if lam > 0 else None)
    return out


def run(P: Params, progress: bool = True) -> Result:
    """What the notebook shows, in one call: stages ``estimate`` and ``finetune`` (every
    variant and sweep point), then the alignment of each run's drift with v_rev."""
    world = P.make_world()
    subject = P.subject(world, need_finetune=True)
    check_layers(P, subject)
    est = estimate(subject, world.finetune.n_probe, progress=progress)
    js = jobs(P, world, subject, est)
    return collect(P, world, subject, est, dict(zip(js, finetune_many(list(js.values()), progress))))


def collect(P: Params, world: World, subject: Subject, est: VRevEstimate, done: dict) -> Result:
    """The runs of :func:`jobs`, by variant and by sweep strength, with their alignment."""
    runs = {v: [done[(v, s)] for s in world.seeds] for v in VARIANTS}
    sweep = {float(lam): [done[(float(lam), s)] for s in world.seeds[: P.n_sweep_seeds]]
             for lam in P.sweep_strengths}
    v = est.directions.v_rev
    cos = {k: np.stack([drift_alignment(r.probe_means, v) for r in rs]) for k, rs in runs.items()}
    sweep_cos = {k: np.stack([drift_alignment(r.probe_means, v) for r in rs]) for k, rs in sweep.items()}
    h_S = runs["baseline"][0].evals[0]["harmfulness"]
    return Result(world, est, runs, cos, sweep, sweep_cos, h_S, subject)


def cumulative_reversion(run: FinetuneRun, level: float) -> float:
    """Mean excess harmfulness over theta_S's level across the run: the trapezoid area of
    (harmfulness - level) over the evaluation grid 0..T, divided by T."""
    T = run.steps[-1]
    return stats.auc_above(run.series("harmfulness"), run.steps, level) / T


def per_seed(res: Result, variant: str) -> dict[str, np.ndarray]:
    """Per-seed final values of one variant (``[n_seeds]`` each)."""
    T, task, layer = res.world.finetune.steps, _task(res), res.layer
    rs = res.runs[variant]
    out = {
        "final_alignment": res.cos[variant][:, T, layer],
        "harmfulness": np.array([r.evals[T]["harmfulness"] for r in rs]),
        "non_refusal": np.array([r.evals[T]["non_refusal"] for r in rs]),
        "task_accuracy": np.array([r.evals[T]["task_accuracy"][task] for r in rs]) if _accuracy(res) else None,
        "task_loss": np.array([r.evals[T]["task_loss"][task] for r in rs]),
        "cumulative_reversion": np.array([cumulative_reversion(r, res.theta_S_harmfulness) for r in rs]),
    }
    return {k: v for k, v in out.items() if v is not None}


def _task(res: Result) -> str:
    """The fine-tuning task's key in the evaluations."""
    return res.subject.task_key(res.world.finetune)


def _accuracy(res: Result) -> bool:
    """Whether the runs measure task accuracy (the organism does; text models have held-out loss only)."""
    return res.subject.has_task_accuracy


def _paired_keys(res: Result) -> tuple[str, ...]:
    task_cost = "task_accuracy" if _accuracy(res) else "task_loss"
    return ("final_alignment", "harmfulness", task_cost, "cumulative_reversion")


def variant_table(res: Result) -> pd.DataFrame:
    rows = []
    for v in VARIANTS:
        ps = per_seed(res, v)
        rows.append({"variant": v, **{k: f"{x.mean():.3f} ± {x.std(ddof=1):.3f}" for k, x in ps.items()}})
    return pd.DataFrame(rows).set_index("variant")


def paired_table(res: Result) -> pd.DataFrame:
    """Per-seed differences to the baseline (same seed = same data order), 95% t-intervals."""
    base = per_seed(res, "baseline")
    rows = []
    for v in VARIANTS[1:]:
        ps = per_seed(res, v)
        for k in ("final_alignment", "harmfulness", "task_accuracy", "task_loss", "cumulative_reversion"):
            if k not in ps:
                continue
            d = stats.paired_difference(ps[k], base[k])
            rows.append({"variant": v, "metric": k, "mean difference": d["mean"],
                         "95% CI low": d["ci_low"], "95% CI high": d["ci_high"]})
    return pd.DataFrame(rows).set_index(["variant", "metric"])


def sweep_table(res: Result) -> pd.DataFrame:
    T, task, layer = res.world.finetune.steps, _task(res), res.layer
    rows = []
    for lam, rs in res.sweep.items():
        row = {"block strength": lam,
               "final alignment": float(res.sweep_cos[lam][:, T, layer].mean()),
               "harmfulness": float(np.mean([r.evals[T]["harmfulness"] for r in rs]))}
        if _accuracy(res):
            row["task accuracy"] = float(np.mean([r.evals[T]["task_accuracy"][task] for r in rs]))
        rows.append({**row, "task loss": float(np.mean([r.evals[T]["task_loss"][task] for r in rs])),
                     "n": len(rs)})
    cols = ["block strength", "final alignment", "harmfulness"] + (["task accuracy"] if _accuracy(res) else []) \
        + ["task loss", "n"]
    return pd.DataFrame(rows, columns=cols).set_index("block strength")


def projection_note(m: dict) -> str:
    """What the forward-pass projection did, in words decided by the numbers."""
    V = m["variants"]
    dh = V["projection"]["harmfulness"]["mean"] - V["baseline"]["harmfulness"]["mean"]
    parts = ["it lowers harmfulness against the baseline" if dh < 0 else
             "it does not lower harmfulness against the baseline"]
    if "task_accuracy" not in V["baseline"]:  # text models: held-out loss only
        dl = V["projection"]["task_loss"]["mean"] - V["baseline"]["task_loss"]["mean"]
        parts.append(f"its held-out loss differs from the baseline's by {dl:+.3f}")
        return "; ".join(parts)
    da = V["projection"]["task_accuracy"]["mean"] - V["baseline"]["task_accuracy"]["mean"]
    if da < -0.1:
        parts.append(f"and it costs task accuracy ({da:+.3f}): the weights adapted to a forward pass "
                     "that is edited in training and not at evaluation")
    return "; ".join(parts)


def ordering(means: dict[str, float]) -> bool:
    return means["block"] < means["baseline"] < means["push"]


def _spearman_or_none(x, y) -> float | None:
    try:
        return stats.spearman(x, y)
    except ValueError:  # a constant input: undefined, not zero
        return None


def metrics(P: Params, res: Result) -> dict:
    T, layer = res.world.finetune.steps, res.layer
    variants = {}
    for v in VARIANTS:
        ps = per_seed(res, v)
        variants[v] = {k: stats.aggregate(x) for k, x in ps.items()}
        variants[v]["final_alignment_by_layer"] = {
            str(l): stats.aggregate(res.cos[v][:, T, l]) for l in range(res.cos[v].shape[2])}
    base = per_seed(res, "baseline")
    paired = {v: {k: stats.paired_difference(per_seed(res, v)[k], base[k])
                  for k in _paired_keys(res)}
              for v in VARIANTS[1:]}
    al = {v: variants[v]["final_alignment"]["mean"] for v in VARIANTS}
    hm = {v: variants[v]["harmfulness"]["mean"] for v in VARIANTS}
    cr_base = variants["baseline"]["cumulative_reversion"]["mean"]
    cr_reh = variants["rehearsal"]["cumulative_reversion"]["mean"]
    points_a = np.concatenate([per_seed(res, v)["final_alignment"] for v in VARIANTS])
    points_h = np.concatenate([per_seed(res, v)["harmfulness"] for v in VARIANTS])
    return {
        "layer": layer, "T": T, "theta_S_harmfulness": res.theta_S_harmfulness,
        "strengths": {"block": P.block_strength, "push": P.push_strength,
                      "rehearsal_fraction": P.rehearsal_fraction},
        "variants": variants, "paired_vs_baseline": paired,
        "ordering": {"alignment": ordering(al), "harmfulness": ordering(hm)},
        "rehearsal_reduction": (1 - cr_reh / cr_base) if cr_base > 0 else None,
        "spearman_alignment_harmfulness_across_variants": _spearman_or_none(points_a, points_h),
        "sweep": sweep_table(res).reset_index().to_dict(orient="records"),
        "paper": {"final_alignment": {"baseline": 0.648, "block": -0.211},
                  "harmfulness": {"baseline": 0.19, "block": 0.085}, "rehearsal_reduction": 0.30},
    }


def save(P: Params, res: Result) -> dict:
    return write_chapter(STEM, __name__, P, res, metrics(P, res))
