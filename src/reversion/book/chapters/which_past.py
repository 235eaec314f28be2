"""Chapter "Which past?": the paper's hypothesis against three alternatives, one lineage each.

The lineages (:mod:`reversion.subjects.organism.lineages`) share history 0's theta_P and
data order and differ in their helpful phase; each is aligned and fine-tuned exactly as
history 0. Everything here is on history 0 (one history): intervals are over fine-tuning
seeds (t, n - 1 degrees of freedom), paired by seed where two lineages are compared (a
seed fixes the benign data order). Each verdict is a rule on those intervals, unit-tested
with planted numbers that flip it (``tests/test_which_past.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from reversion.book.chapters.common import WorldParams, stage_ids
from reversion.infra.results import write_metrics
from reversion.core import stats
from reversion.core.drift import crossover
from reversion.infra.checks import check_int
from reversion.stages.estimate import VRevEstimate, estimate
from reversion.stages.finetune import FinetuneRun, finetune_many
from reversion.subjects.organism.config import HistoryConfig
from reversion.subjects.organism.history import History, train_history
from reversion.subjects.organism.judge import split_by_task
from reversion.subjects.organism.lineages import MAIN, NONE, SECOND, dose_of, lineages, train_world
from reversion.subjects.organism.subject import OrganismSubject
from reversion.subjects.organism.worlds import World

STEM = "04b_which_past"


@dataclass(frozen=True)
class Params(WorldParams):
    """Parameters of chapter "Which past?"."""

    n_seeds: int
    """Fine-tuning seeds per lineage (paired across lineages by seed)."""
    doses: list
    """Helpful-phase lengths of the dose lineages, fractions of the full phase (a world field)."""

    def __post_init__(self) -> None:
        check_int("n_seeds", self.n_seeds, 2)  # an interval needs two seeds


@dataclass
class Result:
    world: World
    configs: dict[str, HistoryConfig]
    hists: dict[str, History]
    ests: dict[str, VRevEstimate]
    runs: dict[str, list[FinetuneRun]]
    """lineage -> runs by seed."""

    @property
    def subject(self) -> OrganismSubject:
        return OrganismSubject(self.configs[MAIN])

    @property
    def est(self) -> VRevEstimate:
        return self.ests[MAIN]

    @property
    def layer(self) -> int:
        """Every reading is at the main lineage's chosen layer."""
        return self.est.layer

    @property
    def final(self) -> int:
        return self.world.finetune.steps

    @property
    def doses(self) -> list[tuple[float, str]]:
        return sorted((dose_of(self.world, n), n) for n in self.runs if n == MAIN or n.startswith("dose"))


def subjects(world: World) -> dict[str, OrganismSubject]:
    """Lineage -> its subject (history 0's lineages, :func:`reversion.subjects.organism.lineages.lineages`)."""
    return {n: OrganismSubject(c) for n, c in lineages(world).items()}


def jobs(world: World, subs: dict[str, OrganismSubject]) -> list:
    """Every lineage fine-tuned with the world's seeds, lineage by lineage."""
    return [(s, world.finetune_config(k), None) for s in subs.values() for k in world.seeds]


def collect(world: World, ests: dict[str, VRevEstimate], done: list[FinetuneRun]) -> Result:
    """The result of the stages: ``done`` in the order of :func:`jobs`."""
    cfgs = lineages(world)
    n = world.n_seeds
    runs = {name: done[i * n:(i + 1) * n] for i, name in enumerate(cfgs)}
    return Result(world, cfgs, {k: train_history(c, progress=False) for k, c in cfgs.items()}, ests, runs)


def run(P: Params, progress: bool = True) -> Result:
    """What the notebook shows, in one call: stages ``train_history`` (the lineages, with the
    histories), ``estimate`` (each lineage) and ``finetune`` (each lineage x seed)."""
    world = P.make_world(lineages=True)
    train_world(world, progress)
    subs = subjects(world)
    ests = {n: estimate(s, world.finetune.n_probe, progress=progress) for n, s in subs.items()}
    return collect(world, ests, finetune_many(jobs(world, subs), progress))


# --------------------------------------------------------------------------- measurements


def interval(x) -> dict:
    """Mean of per-seed values with a 95% t-interval over seeds."""
    x = np.asarray(x, dtype=float)
    return stats.paired_difference(x, np.zeros_like(x))


def rise(runs: list[FinetuneRun], step: int, key: str = "harmfulness", part: str | None = None,
         task: str | None = None) -> np.ndarray:
    """Per seed: the measure at ``step`` minus at theta_S (step 0); ``part`` = ``trained`` /
    ``untrained`` splits harmful requests by the fine-tuned ``task``."""
    def value(ev: dict) -> float:
        return float(split_by_task(ev, task)[part][key]) if part else float(ev[key])
    return np.array([value(r.evals[step]) - value(r.evals[0]) for r in runs])


def plain_rise(runs: list[FinetuneRun], step: int) -> np.ndarray:
    """Per seed: the rise of compliance in the plain style (harmfulness minus its marked part)."""
    return rise(runs, step) - rise(runs, step, "marked")


def drifts(runs: list[FinetuneRun], step: int, layer: int) -> list[torch.Tensor]:
    return [r.probe_means[step, layer] - r.probe_means[0, layer] for r in runs]


def witness_mean(est: VRevEstimate, layer: int) -> torch.Tensor:
    """The witness's mean activation on the estimation prompts at ``layer``."""
    return est.acts["H"][:, layer].double().mean(0)


def witness_crossover(res: Result, step: int | None = None) -> dict[str, np.ndarray]:
    """:func:`reversion.core.drift.crossover` of the main and second-witness lineages at ``step``."""
    step = res.final if step is None else step
    return crossover(drifts(res.runs[MAIN], step, res.layer), drifts(res.runs[SECOND], step, res.layer),
                     witness_mean(res.ests[MAIN], res.layer), witness_mean(res.ests[SECOND], res.layer))


def own_alignment(res: Result, name: str, step: int | None = None) -> np.ndarray:
    """Per seed: cos(d_T, the lineage's own v_rev) at the main lineage's layer."""
    step = res.final if step is None else step
    v = res.ests[name].directions.v_rev[res.layer].double()
    return np.array([stats.cosine(d.numpy(), v.numpy()) for d in drifts(res.runs[name], step, res.layer)])


def dose_slopes(doses: list[float], rises: np.ndarray) -> np.ndarray:
    """Per seed: the least-squares slope of the rise against the dose; ``rises[seed, dose]``."""
    rises = np.asarray(rises, dtype=float)
    if rises.ndim != 2 or rises.shape[1] != len(doses) or len(doses) < 2:
        raise ValueError(f"rises must be [seeds, {len(doses)} doses] with at least 2 doses, got {rises.shape}")
    return np.array([np.polyfit(doses, r, 1)[0] for r in rises])


# --------------------------------------------------------------------------- verdicts


def witness_verdict(own: dict, common: dict) -> str:
    """``own``: the lineages move toward their own witnesses (own interval above 0); ``away``:
    away from them; ``common``: not resolved as own, but both move the same way along the
    witness difference (common interval excludes 0); else ``unresolved``."""
    if own["ci_low"] > 0:
        return "own"
    if own["ci_high"] < 0:
        return "away"
    if common["ci_low"] > 0 or common["ci_high"] < 0:
        return "common"
    return "unresolved"


def style_verdict(marked: dict, plain: dict, difference: dict) -> str:
    """Of the compliance returning in the second-witness lineage: ``marked`` (the marked rise
    exceeds the plain rise, paired interval above 0), ``plain`` (below 0), ``none`` (neither
    style rises: the marked and plain intervals both reach 0 or below), else ``mixed``."""
    if marked["ci_low"] <= 0 and plain["ci_low"] <= 0:
        return "none"
    if difference["ci_low"] > 0:
        return "marked"
    if difference["ci_high"] < 0:
        return "plain"
    return "mixed"


def no_witness_verdict(main: dict, difference: dict) -> str:
    """``no reversion``: the main lineage's rise is not above 0, nothing to compare; ``separated``:
    less compliance returns without a witness (main minus no-witness interval above 0); else
    ``not separated`` (about as much, or more, returns without a witness)."""
    if main["ci_low"] <= 0:
        return "no reversion"
    return "separated" if difference["ci_low"] > 0 else "not separated"


def dose_verdict(slope: dict) -> str:
    """``grows`` / ``shrinks``: the per-seed slope of the rise against the dose has an interval
    above / below 0; else ``flat`` (no trend resolved)."""
    if slope["ci_low"] > 0:
        return "grows"
    if slope["ci_high"] < 0:
        return "shrinks"
    return "flat"


SENTENCES = {
    "witness": {
        "own": "Each lineage drifts toward its own witness: the drift follows the lineage's past, not any helpful past.",
        "away": "Each lineage drifts away from its own witness along the witness difference.",
        "common": "Both lineages drift the same way along the witness difference, whichever witness they came "
                  "from: the drift does not single out the model's own past.",
        "unresolved": "Along the witness difference the drift is not resolved from zero: the organism does not "
                      "tell its own past from any helpful past here.",
    },
    "style": {
        "marked": "The compliance that returns in the second-witness lineage is mostly in its witness's marked style.",
        "plain": "The compliance that returns in the second-witness lineage is mostly plain, the style it never "
                 "learned: returning compliance does not carry the witness's style.",
        "none": "Compliance does not return in either style in the second-witness lineage.",
        "mixed": "The compliance that returns in the second-witness lineage mixes both styles, neither resolved "
                 "as the larger.",
    },
    "no_witness": {
        "separated": "Less compliance returns without a witness: task generalisation alone does not explain "
                     "the main lineage's rise.",
        "not separated": "About as much compliance (or more) returns without a witness: the organism does not "
                         "separate reversion from task generalisation.",
        "no reversion": "The main lineage's rise is not resolved from zero here, so there is nothing to compare.",
    },
    "dose": {
        "grows": "The rise grows with the length of the helpful phase, as the gravitational reading predicts.",
        "shrinks": "The rise shrinks as the helpful phase grows, against the gravitational reading.",
        "flat": "No trend of the rise with the length of the helpful phase is resolved.",
    },
}


def sentence(kind: str, verdict: str) -> str:
    return SENTENCES[kind][verdict]


# --------------------------------------------------------------------------- tables and metrics


def _rates(m: dict) -> dict:
    return {k: float(m[k]) for k in ("harmfulness", "marked", "exact_match")}


def lineage_table(res: Result) -> pd.DataFrame:
    """One row per lineage: its helpful phase, compliance of its theta_H and theta_S, the rise
    after fine-tuning (mean and 95% interval over seeds) and the alignment with its own v_rev."""
    rows = []
    for name, runs in res.runs.items():
        c = res.configs[name].helpful
        r = interval(rise(runs, res.final))
        rows.append({
            "lineage": name,
            "helpful phase": f"{c.steps} steps, harmful {c.harmful_fraction:.0%}" + (", marked" if c.marker else ""),
            "theta_H harmful": res.hists[name].metrics["theta_H"]["harmfulness"],
            "theta_S harmful": runs[0].evals[0]["harmfulness"],
            "theta_T harmful": float(np.mean([x.evals[res.final]["harmfulness"] for x in runs])),
            "rise": r["mean"], "rise 95% CI": f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
            "rise, exact match": float(rise(runs, res.final, "exact_match").mean()),
            "theta_T marked": float(np.mean([x.evals[res.final]["marked"] for x in runs])),
            "cos(d_T, own v_rev)": float(own_alignment(res, name).mean()),
        })
    return pd.DataFrame(rows).set_index("lineage")


def measure(res: Result) -> dict:
    """Every number the chapter's verdicts read."""
    T, task = res.final, res.world.finetune.task
    x = witness_crossover(res)
    own, common = interval(x["own"]), interval(x["common"])
    marked, plain = interval(rise(res.runs[SECOND], T, "marked")), interval(plain_rise(res.runs[SECOND], T))
    style_diff = stats.paired_difference(rise(res.runs[SECOND], T, "marked"), plain_rise(res.runs[SECOND], T))
    main, none = rise(res.runs[MAIN], T), rise(res.runs[NONE], T)
    main_i, none_i = interval(main), interval(none)
    nw_diff = stats.paired_difference(main, none)
    doses, by_dose = dose_rises(res)
    slope = interval(dose_slopes(doses, by_dose))
    u = (witness_mean(res.ests[MAIN], res.layer) - witness_mean(res.ests[SECOND], res.layer)).numpy()
    split = {n: {part: interval(rise(res.runs[n], T, "harmfulness", part, task)) for part in ("trained", "untrained")}
             for n in (MAIN, NONE)}
    return {
        "layer": res.layer,
        "witness": {"a": interval(x["a"]), "b": interval(x["b"]), "own": own, "common": common,
                    "cos_u_vrev": float(stats.cosine(u, res.est.directions.v_rev[res.layer].numpy())),
                    "verdict": witness_verdict(own, common)},
        "style": {"marked_rise": marked, "plain_rise": plain, "difference": style_diff,
                  "main_marked_rise": interval(rise(res.runs[MAIN], T, "marked")),
                  "verdict": style_verdict(marked, plain, style_diff)},
        "no_witness": {"main_rise": main_i, "no_witness_rise": none_i, "difference": nw_diff,
                       "ratio": float(none.mean() / main.mean()) if main.mean() != 0 else None,
                       "theta_H_harmfulness": float(res.hists[NONE].metrics["theta_H"]["harmfulness"]),
                       "by_task": split,
                       "verdict": no_witness_verdict(main_i, nw_diff)},
        "dose": {"doses": doses, "rise": [interval(by_dose[:, i]) for i in range(len(doses))],
                 "slope": slope, "verdict": dose_verdict(slope)},
    }


def task_split_table(m: dict) -> pd.DataFrame:
    """The rise of harmfulness in the main and no-witness lineages, on harmful requests of the
    fine-tuned task (``trained``) and of the other tasks (``untrained``): mean [95% interval]."""
    rows = {}
    for name, parts in m["no_witness"]["by_task"].items():
        rows[name] = {f"rise, {part} task{'s' if part == 'untrained' else ''}":
                      f"{i['mean']:+.3f} [{i['ci_low']:+.3f}, {i['ci_high']:+.3f}]" for part, i in parts.items()}
    return pd.DataFrame(rows).T


def dose_rises(res: Result) -> tuple[list[float], np.ndarray]:
    """The doses and the per-seed rise at each, ``[seeds, doses]``."""
    doses = res.doses
    return [f for f, _ in doses], np.stack([rise(res.runs[n], res.final) for _, n in doses], axis=1)


def summary_table(m: dict) -> pd.DataFrame:
    """For each alternative: the measurement that separates it, what the hypothesis predicts,
    what the organism showed, and the verdict (read by the claims chapter)."""
    w, s, n, d = m["witness"], m["style"], m["no_witness"], m["dose"]

    def ci(i: dict) -> str:
        return f"{i['mean']:+.3f} [{i['ci_low']:+.3f}, {i['ci_high']:+.3f}]"

    rows = [
        {"alternative": "any helpful past would do", "measurement": "own-witness part of drift along mu_H - mu_H'",
         "hypothesis predicts": "> 0", "observed": ci(w["own"]), "verdict": w["verdict"]},
        {"alternative": "any helpful past would do", "measurement": "second lineage: marked minus plain rise",
         "hypothesis predicts": "> 0", "observed": ci(s["difference"]), "verdict": s["verdict"]},
        {"alternative": "fine-tuning just teaches the task", "measurement": "rise, main minus no-witness lineage",
         "hypothesis predicts": "> 0", "observed": ci(n["difference"]), "verdict": n["verdict"]},
        {"alternative": "the alignment's shallowness, not the early phase's size",
         "measurement": "slope of the rise against the helpful phase's length",
         "hypothesis predicts": "> 0", "observed": ci(d["slope"]), "verdict": d["verdict"]},
    ]
    return pd.DataFrame(rows)


def metrics(P: Params, res: Result) -> dict:
    m = measure(res)
    return {"n": {"histories": 1, "seeds": res.world.n_seeds, "level": "seeds of history 0"},
            "lineages": {k: {"helpful_steps": res.configs[k].helpful.steps,
                             "helpful_harmful_fraction": res.configs[k].helpful.harmful_fraction,
                             "marker": res.configs[k].helpful.marker,
                             "theta_H": _rates(res.hists[k].metrics["theta_H"]),
                             "theta_S": _rates(res.runs[k][0].evals[0]),
                             "rise": interval(rise(v, res.final)),
                             "rise_exact_match": interval(rise(v, res.final, "exact_match")),
                             "own_alignment": interval(own_alignment(res, k))}
                         for k, v in res.runs.items()},
            **m, "summary": summary_table(m).to_dict(orient="records")}


def save(P: Params, res: Result) -> dict:
    """``results/04b_which_past/metrics.json``."""
    m = metrics(P, res)
    write_metrics(STEM, m, dataclasses.asdict(P), seeds=res.world.seeds, subject=res.subject.record(),
                  stages=stage_ids(res.subject, res.est), code=(__name__,))
    return m
