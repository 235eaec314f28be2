"""What the Null test chapter computes: is the alignment of drift with v_rev more than chance?

Each history's run-step pairs and runs are compared with two nulls at its own chosen layer
(:mod:`reversion.stages.nulls`), against the stricter of them
(:func:`reversion.core.drift.null_threshold`). ``design`` below is the chapter's parameters (the
page's ``Params``): any object with their fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reversion.core import stats
from reversion.core.drift import drift_alignment, null_threshold
from reversion.core.interventions import AlignmentMix
from reversion.infra import seeding
from reversion.stages.estimate import VRevEstimate, estimate
from reversion.stages.finetune import FinetuneRun, finetune_many
from reversion.stages.nulls import alignment_nulls
from reversion.stages.nulls import p99 as null_p99
from reversion.subjects.base import Subject
from reversion.subjects.organism.subject import histories
from reversion.subjects.organism.worlds import World


@dataclass
class Result:
    world: World
    est: VRevEstimate
    runs: list[FinetuneRun]
    controls: list[FinetuneRun]
    pairs: pd.DataFrame
    nulls: dict[str, np.ndarray]
    """null name -> sampled cosines with v_rev at the chosen layer."""
    p99: dict[str, float]
    control_cos: np.ndarray
    """``[n_control, n_pair_steps]`` alignment of the control runs."""
    steps: list[int]
    subject: Subject
    """The organism or your checkpoints."""
    others: list = dataclasses.field(default_factory=list)
    """Histories 1, 2, .. (:func:`other_histories`), each a Result without control runs."""

    @property
    def width(self) -> int:
        return int(self.est.directions.v_rev.shape[1])

    @property
    def notes(self) -> list[str]:
        """What differs from the organism's chapter (printed under the parameters)."""
        notes = self.subject.describe(self.world.finetune)
        n, d = self.est.acts["S"].shape[0], self.width
        if n <= d:  # fewer prompts than dimensions: the matched covariance is rank-deficient
            notes.append(f"The matched null draws from the covariance of {n} prompts' activations (rank <= "
                         f"{n - 1} in width {d}): with few prompts it is a rough null.")
        return notes


def jobs(design, world: World, subject: Subject) -> list:
    """The fine-tuning runs: one per seed, then the control runs (continued training on the
    safety alignment's own mix), whose drift alone is used, so they skip the generation grid."""
    mix = AlignmentMix(world.history.safety.harmful_fraction)
    out = [(subject, world.finetune_config(s), None) for s in world.seeds]
    return out + [(subject, world.finetune_config(1000 + s, eval_steps=()), mix) for s in range(design.n_control_seeds)]


def pair_steps(design, world: World) -> list[int]:
    T = world.finetune.steps
    steps = [s for s in design.pair_steps if s <= T]
    if not steps:
        raise ValueError(f"no pair step <= T={T} in {design.pair_steps}")
    return steps


def train(design, world: World, subject: Subject, progress: bool = True) -> Result:
    """The chapter: stages ``estimate`` and ``finetune`` (runs and controls), the nulls at the
    chosen layer and the run-step pairs against them; then the other histories alike."""
    steps = pair_steps(design, world)
    est = estimate(subject, world.finetune.n_probe, progress=progress)
    done = finetune_many(jobs(design, world, subject), progress)
    res = analyse(design, world, subject, est, done[:world.n_seeds], done[world.n_seeds:], steps)
    res.others = other_histories(design, world, steps, progress)
    return res


def analyse(design, world: World, subject: Subject, est: VRevEstimate, runs: list[FinetuneRun],
            controls: list[FinetuneRun], steps: list[int]) -> Result:
    """Nulls at the chosen layer (:func:`reversion.stages.nulls.alignment_nulls`) and the run-step pairs."""
    layer, v = est.layer, est.directions.v_rev[est.layer].numpy()
    # Matched: Gaussian drift with the covariance of theta_S's activations at this layer.
    acts_S = est.acts["S"][:, layer].numpy()
    nulls = alignment_nulls(v, acts_S, design.n_null, seeding.rng(getattr(subject, "seed", world.history.seed), "null-test"))
    p99 = null_p99(nulls, v.shape[0])
    rows = []
    for seed, r in zip(world.seeds, runs):
        cos = drift_alignment(r.probe_means, est.directions.v_rev)
        for s in steps:
            rows.append({"seed": seed, "step": s, "alignment": float(cos[s, layer])})
    pairs = pd.DataFrame(rows)
    pairs["above isotropic p99"] = pairs["alignment"] > p99["isotropic"]
    pairs["above matched p99"] = pairs["alignment"] > p99["matched"]
    pairs["above both"] = pairs["alignment"] > stricter_p99(p99, v.shape[0])
    control_cos = np.stack([drift_alignment(c.probe_means, est.directions.v_rev)[steps, layer] for c in controls]) \
        if controls else np.zeros((0, len(steps)))
    return Result(world, est, runs, controls, pairs, nulls, p99, control_cos, steps, subject)


def other_histories(design, world: World, steps: list[int], progress: bool = True) -> list[Result]:
    """Histories 1, 2, .. of the organism (none for your checkpoints): each against its own
    estimate's nulls at its own layer, without control runs. Their estimates are the v_rev
    and Alignment chapters', their runs the Training history chapter's (cache hits)."""
    if design.checkpoints:
        return []
    out = []
    for s in histories(world.history, world.n_histories)[1:]:
        est = estimate(s, world.finetune.n_probe, progress=progress)
        runs = finetune_many([(s, world.finetune_config(k), None) for k in world.seeds], progress)
        out.append(analyse(design, world, s, est, runs, [], steps))
    return out


def history_rows(results: list[Result], alpha: float) -> list[dict]:
    """Per history: its layer, threshold (the stricter p99), pairs above it, runs significant."""
    rows = []
    for h, r in enumerate(results):
        per, thr = per_run_test(r, alpha), stricter_p99(r.p99, r.width)
        rows.append({"history": h, "layer": r.est.layer, "threshold": thr,
                     "pairs above": int((r.pairs["alignment"] > thr).sum()), "pairs": len(r.pairs),
                     "runs significant": int(per["significant"].sum()), "runs": len(per)})
    return rows


def stricter_p99(p99: dict, d: int) -> float:
    """What a pair must beat: :func:`reversion.core.drift.null_threshold` of the matched p99 at
    width ``d`` (the stricter of the two nulls)."""
    return null_threshold(d, p99["matched"])[0]


def per_run_test(res: Result, alpha: float) -> pd.DataFrame:
    """Each run's mean alignment over the pair steps against both nulls.

    Steps of one run are strongly autocorrelated, so they are not independent tests.
    Treating them as one (fully correlated) draw is conservative: the mean of one
    null direction's cosine over steps has the null's own distribution. The threshold
    is the larger of the matched null's and the isotropic null's (1 - alpha / n_runs)
    quantiles: family-wise error <= alpha (Bonferroni) under either.
    """
    n = len(res.runs)
    thr = max(stats.empirical_quantile(res.nulls["matched"], 1 - alpha / n),
              stats.isotropic_cos_quantile(res.width, 1 - alpha / n))
    per = res.pairs.groupby("seed")["alignment"].mean()
    return pd.DataFrame({"mean alignment": per, "threshold": thr, "significant": per > thr,
                         "unadjusted p": [stats.empirical_p_value(x, res.nulls["matched"]) for x in per]})


def metrics(res: Result, alpha: float) -> dict:
    """History 0's nulls, pairs and runs in full; ``by_history``: every history's counts (the
    history is the unit of replication: ``histories_all_pairs_above`` of ``n_histories``)."""
    runs = per_run_test(res, alpha)
    by = history_rows([res, *res.others], alpha)
    ctrl_mean = res.control_cos.mean(1)
    thr = stricter_p99(res.p99, res.width)
    return {
        "layer": res.est.layer, "width": res.width,
        "null": {"isotropic_p99": res.p99["isotropic"], "isotropic_mc_p99": res.p99["isotropic_mc"],
                 "matched_p99": res.p99["matched"], "threshold_p99": thr,
                 "threshold_null": "matched" if res.p99["matched"] >= res.p99["isotropic"] else "isotropic",
                 "control_runs_alignment": stats.aggregate(res.control_cos.ravel()),
                 "control_runs_max": float(res.control_cos.max())},
        "pairs": {"n": int(len(res.pairs)), "above_isotropic": int(res.pairs["above isotropic p99"].sum()),
                  "above_matched": int(res.pairs["above matched p99"].sum()),
                  "above_threshold": int((res.pairs["alignment"] > thr).sum()),
                  "above_control_max": int((res.pairs["alignment"] > res.control_cos.max()).sum()),
                  "steps": res.steps},
        "per_run": {"n": len(runs), "significant": int(runs["significant"].sum()), "alpha": alpha,
                    "threshold": float(runs["threshold"].iloc[0])},
        # Not a test against chance: all runs share theta_S and the one estimated v_rev, so
        # their signs are not independent under the null. It only says how consistent they are.
        "sign_consistency_p": stats.sign_flip_test(runs["mean alignment"].to_numpy()),
        "runs_above_every_control": int((runs["mean alignment"].to_numpy()[:, None] > ctrl_mean[None]).all(1).sum()),
        "paper": {"pairs_above_isotropic": "24 of 24"},
        "by_history": by, "n_histories": len(by), "n_seeds": len(runs),
        "histories_all_pairs_above": sum(r["pairs above"] == r["pairs"] for r in by),
        "histories_all_runs_significant": sum(r["runs significant"] == r["runs"] for r in by),
    }
