"""What the "Which past?" chapter computes: the paper's hypothesis against three alternatives,
one lineage each, and the verdict of each measurement.

The lineages (:mod:`reversion.subjects.organism.lineages`) share history 0's theta_P and
data order and differ in their helpful phase; each is aligned and fine-tuned exactly as
history 0. Everything here is on history 0 (one history): intervals are over fine-tuning
seeds (t, n - 1 degrees of freedom), paired by seed where two lineages are compared (a
seed fixes the benign data order). Each verdict is a rule on those intervals, unit-tested
with planted numbers that flip it (``tests/test_which_past.py``).

On your own checkpoints (``checkpoints``) the chapter runs what real checkpoints can show: with a
second lineage (``second_witness`` and ``second_aligned``) the witness crossover in activations,
and, with ``pretrained`` and ``harmless``, the residual alignment; the measurements that need the
organism's lineages (style, no witness, dose) or fine-tuned weights are blocks with the verdict
:data:`~reversion.analysis.verdicts.NOT_TESTABLE` that say what they need (:func:`missing`).
``design`` below is the chapter's parameters (the page's ``Params``): any object with their fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from reversion.analysis.verdicts import NOT_TESTABLE
from reversion.core import stats
from reversion.core.drift import crossover, residual_alignment
from reversion.core.models import load_model
from reversion.infra import seeding
from reversion.infra.paths import resolve
from reversion.stages.estimate import VRevEstimate, estimate
from reversion.stages.finetune import FinetuneRun, finetune_many
from reversion.subjects.base import Subject
from reversion.subjects.checkpoints.subject import SECOND_LINEAGE_KEYS, CheckpointSubject, where
from reversion.subjects.organism.config import HistoryConfig
from reversion.subjects.organism.history import History, train_history
from reversion.subjects.organism.judge import split_by_task
from reversion.subjects.organism.lineages import MAIN, NONE, SECOND, dose_of, lineages, train_world
from reversion.subjects.organism.subject import OrganismSubject, histories
from reversion.subjects.organism.worlds import World

class _Readings:
    """What both results read the same way: the main lineage's estimate, its layer and T."""

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


@dataclass
class Result(_Readings):
    world: World
    configs: dict[str, HistoryConfig]
    hists: dict[str, History]
    ests: dict[str, VRevEstimate]
    runs: dict[str, list[FinetuneRun]]
    """lineage -> runs by seed."""
    other_ests: list[VRevEstimate]
    """The world's other histories (1, 2, ..): their estimates ..."""
    other_runs: list[list[FinetuneRun]]
    """... and their runs by seed (history 0 is the main lineage)."""

    @property
    def history_ests(self) -> list[VRevEstimate]:
        return [self.est, *self.other_ests]

    @property
    def history_runs(self) -> list[list[FinetuneRun]]:
        return [self.runs[MAIN], *self.other_runs]

    @property
    def subject(self) -> OrganismSubject:
        return OrganismSubject(self.configs[MAIN])


    @property
    def doses(self) -> list[tuple[float, str]]:
        return sorted((dose_of(self.world, n), n) for n in self.runs if n == MAIN or n.startswith("dose"))

    @property
    def notes(self) -> list[str]:
        return []  # the organism: nothing differs from the chapter's text


@dataclass
class CheckpointResult(_Readings):
    """The chapter on your checkpoints: your lineage (:data:`MAIN`) and, where ``checkpoints``
    has ``second_witness`` and ``second_aligned``, the second one (:data:`SECOND`), fine-tuned
    with the same seeds; one history."""

    world: World
    subjects: dict[str, CheckpointSubject]
    ests: dict[str, VRevEstimate]
    runs: dict[str, list[FinetuneRun]]
    """lineage -> runs by seed."""
    checkpoints: dict
    """The ``checkpoints`` parameter (what :func:`missing` reads)."""

    @property
    def subject(self) -> CheckpointSubject:
        return self.subjects[MAIN]


    @property
    def history_ests(self) -> list[VRevEstimate]:
        return [self.est]

    @property
    def history_runs(self) -> list[list[FinetuneRun]]:
        return [self.runs[MAIN]]

    @property
    def notes(self) -> list[str]:
        """What differs from the organism's chapter, and what is not measured for want of which key."""
        out = self.subject.describe(self.world.finetune)
        if SECOND in self.subjects:
            s = self.subjects[SECOND]
            out.append(f"Second lineage: witness = {s.witness}, aligned = {s.aligned}; it is estimated, fine-tuned "
                       "and judged like yours, with the same prompts, data, tokenizer and seeds.")
        out.append("Your checkpoints are one history: intervals are over fine-tuning seeds; n_histories and doses "
                   "do not apply.")
        out += [f"Not measurable with these checkpoints ({LABELS[k]}): needs {v}."
                for k, v in missing(self.checkpoints).items()]
        return out


def subjects(design, world: World, main: Subject | None = None) -> dict[str, Subject]:
    """Lineage -> its subject. The organism: history 0's lineages
    (:func:`reversion.subjects.organism.lineages.lineages`), then ``history 1``.. : the world's other
    independent histories (for the residual alignment). Your checkpoints: yours (``main``, else
    ``design.subject``), then the second lineage where ``checkpoints`` gives it (:func:`second_subject`)."""
    if design.checkpoints:
        main = design.subject(world, need_finetune=True) if main is None else main
        second = second_subject(design.checkpoints, main)
        return {MAIN: main, **({SECOND: second} if second is not None else {})}
    out = {n: OrganismSubject(c) for n, c in lineages(world).items()}
    for i, s in enumerate(histories(world.history, world.n_histories)[1:], 1):
        out[f"history {i}"] = s
    return out


def second_subject(checkpoints: dict, main: CheckpointSubject) -> CheckpointSubject | None:
    """The second lineage as a subject: ``main`` with ``second_witness`` and ``second_aligned``
    (checked when ``main`` was built) as its witness and aligned model -- same prompts, fine-tuning
    data, tokenizer, base and settings -- and without the v_P / r_S controls (only its v_rev is read).
    None unless both keys are given."""
    if not all(checkpoints.get(k) for k in SECOND_LINEAGE_KEYS):
        return None
    return dataclasses.replace(main, witness=resolve(checkpoints["second_witness"]),
                               aligned=resolve(checkpoints["second_aligned"]), pretrained=None, harmless=None)


def jobs(world: World, subs: dict[str, Subject]) -> list:
    """Every lineage fine-tuned with the world's seeds, lineage by lineage. The main lineage and
    the other histories are the runs of the Training history to Null test chapters (every step
    recorded); the extra lineages are read at steps 0 and T only, so their runs record the drift
    probes and the judge there alone."""
    T = world.finetune.steps
    read_at_T = {"eval_steps": (0, T), "track_every": T}
    extra = set(lineages(world)) - {MAIN}
    return [(s, world.finetune_config(k, **(read_at_T if name in extra else {})), None)
            for name, s in subs.items() for k in world.seeds]


def assemble(design, world: World, ests: dict[str, VRevEstimate], done: list[FinetuneRun],
            subs: dict[str, Subject] | None = None) -> Result | CheckpointResult:
    """The result of the stages: ``ests`` by lineage in the order of :func:`subjects`, ``done`` in the
    order of :func:`jobs` (``subs``: the subjects they ran on, else :func:`subjects` again)."""
    n = world.n_seeds
    if design.checkpoints:
        subs = subjects(design, world) if subs is None else subs
        runs = {k: done[i * n:(i + 1) * n] for i, k in enumerate(subs)}
        return CheckpointResult(world, dict(subs), {k: ests[k] for k in subs}, runs, dict(design.checkpoints))
    cfgs, names = lineages(world), list(subjects(design, world))
    every = {name: done[i * n:(i + 1) * n] for i, name in enumerate(names)}
    runs = {k: every[k] for k in cfgs}
    others = [every[k] for k in names if k not in cfgs]
    return Result(world, cfgs, {k: train_history(c, progress=False) for k, c in cfgs.items()},
                  {k: ests[k] for k in cfgs}, runs, [ests[k] for k in names if k not in cfgs], others)



def train(design, world: World, progress: bool = True) -> Result | CheckpointResult:
    """The chapter's runs: stages ``train_history`` (the lineages, with the histories; not for
    your checkpoints), ``estimate`` (each lineage) and ``finetune`` (each lineage x seed)."""
    if not design.checkpoints:
        train_world(world, progress)
    subs = subjects(design, world)
    ests = {n: estimate(s, world.finetune.n_probe, progress=progress) for n, s in subs.items()}
    return assemble(design, world, ests, finetune_many(jobs(world, subs), progress), subs)


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


def flat_weights(path) -> torch.Tensor:
    """A Hugging Face checkpoint's weights as one float64 vector (the tied LM head once)."""
    sd = load_model(path, "cpu").state_dict()
    return torch.cat([sd[k].double().flatten() for k in sorted(sd) if k != "lm_head.weight"])


def weight_series(runs: list[FinetuneRun], key: str) -> np.ndarray:
    """``[seeds, steps]`` of a weight-space readout (``cos_gap`` / ``gap_closed``) over the evaluated
    steps after 0 (recorded by the fine-tuning stage)."""
    return np.array([[r.evals[s]["weight_space"][key] for s in r.steps if s > 0] for r in runs])


def weight_crossover(res: Result) -> dict[str, np.ndarray]:
    """:func:`reversion.core.drift.crossover` in weight space: each final run's theta_T - theta_S
    along theta_H - theta_H' (main) and its mirror (second witness)."""
    def moves(name: str) -> list[torch.Tensor]:
        start = flat_weights(res.hists[name].paths["theta_S"])
        return [flat_weights(r.path / "model") - start for r in res.runs[name]]

    return crossover(moves(MAIN), moves(SECOND), flat_weights(res.hists[MAIN].paths["theta_H"]),
                     flat_weights(res.hists[SECOND].paths["theta_H"]))


RELIABLE = 0.5
"""Split-half reliability a residual v_rev needs before its alignment is read as a component
(below it, the residual direction is mostly estimation noise)."""


def residuals(res: Result) -> list[dict]:
    """Per history, at its own chosen layer: :func:`reversion.core.drift.residual_alignment` of the
    final drifts with v_rev outside span(r_S, v_P)."""
    out = []
    for h, (est, runs) in enumerate(zip(res.history_ests, res.history_runs)):
        layer, dirs = est.layer, est.directions
        controls = [x[layer] for x in (dirs.r_S, dirs.v_P) if x is not None]
        out.append({"layer": layer, **residual_alignment(est.acts["H"][:, layer], est.acts["S"][:, layer], controls,
                                                         drifts(runs, res.final, layer), seeding.rng(h, "residual"))})
    return out


def residual_verdict(alignment: dict, reliability: list[float], null_p99: float) -> str:
    """``noise``: most histories' residual v_rev is unreliable (split-half cosine below
    :data:`RELIABLE`); ``specific``: every history's is reliable and the alignment's interval
    lies above the complement's null p99; ``none``: reliable, and the interval reaches below the
    null p99 -- no history-specific component resolved."""
    if sum(r < RELIABLE for r in reliability) * 2 > len(reliability):
        return "noise"
    if min(reliability) >= RELIABLE and alignment["ci_low"] is not None and alignment["ci_low"] > null_p99:
        return "specific"
    return "none"


def dose_slopes(doses: list[float], rises: np.ndarray) -> np.ndarray:
    """Per seed: the least-squares slope of the rise against the dose; ``rises[seed, dose]``."""
    rises = np.asarray(rises, dtype=float)
    if rises.ndim != 2 or rises.shape[1] != len(doses) or len(doses) < 2:
        raise ValueError(f"rises must be [seeds, {len(doses)} doses] with at least 2 doses, got {rises.shape}")
    return np.array([np.polyfit(doses, r, 1)[0] for r in rises])


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


LABELS = {"witness": "the witness crossover", "style": "the returning compliance's style",
          "weights": "the crossover in weight space", "no_witness": "the no-witness lineage",
          "residual": "the residual alignment", "dose": "the dose"}
"""Each measurement, by the key of its block in the metrics (``weights``: ``weight_space``)."""


BLOCK = {"weights": "weight_space"}


ORGANISM_ONLY = {
    "style": "a second witness whose compliance carries a style the first never used, which the judge reads "
             "(the organism's marked style)",
    "weights": "the fine-tuned weights theta_T of both lineages, which runs on checkpoints do not keep",
    "no_witness": "a lineage whose helpful phase held no harmful request, aligned and fine-tuned as yours "
                  "(the organism's no-witness lineage)",
    "dose": "lineages with shorter helpful phases from the same theta_P, each aligned and fine-tuned as yours "
            "(the organism's dose lineages)",
}
"""What each measurement that needs the organism's lineages needs."""


def missing(checkpoints: dict) -> dict[str, str]:
    """Measurement (:data:`LABELS`) -> what it needs that ``checkpoints`` does not give (empty for
    the organism). The witness crossover needs ``second_witness`` and ``second_aligned``; the
    residual alignment ``pretrained`` (v_P) and ``harmless`` (r_S); the others the organism's
    lineages or fine-tuned weights (:data:`ORGANISM_ONLY`)."""
    if not checkpoints:
        return {}
    out = {}
    absent = [k for k in SECOND_LINEAGE_KEYS if not checkpoints.get(k)]
    if absent:
        out["witness"] = (f"{' and '.join(where(k) for k in absent)} (a second helpful-only witness theta_H' "
                          "and the model aligned from it, ideally from the same theta_P)")
    out["style"], out["weights"], out["no_witness"] = (ORGANISM_ONLY[k] for k in ("style", "weights", "no_witness"))
    controls = [f"{where(k)} ({what})" for k, what in (("pretrained", "theta_P, for v_P"),
                                                      ("harmless", "harmless prompts, for r_S"))
                if not checkpoints.get(k)]
    if controls:
        out["residual"] = " and ".join(controls)
    out["dose"] = ORGANISM_ONLY["dose"]
    return out


def not_testable(needs: str) -> dict:
    """The metrics block of a measurement these checkpoints cannot give."""
    return {"verdict": NOT_TESTABLE, "needs": needs}


def testable(m: dict, kind: str) -> bool:
    """Whether measurement ``kind`` (:data:`LABELS`) was made."""
    return "needs" not in m[BLOCK.get(kind, kind)]


def _rates(m: dict) -> dict:
    return {k: float(m[k]) for k in ("harmfulness", "marked", "exact_match")}


def witness_measure(res: Result | CheckpointResult) -> dict:
    """The witness crossover's intervals over seeds, cos(u, v_rev) and the verdict."""
    x = witness_crossover(res)
    own, common = interval(x["own"]), interval(x["common"])
    u = (witness_mean(res.ests[MAIN], res.layer) - witness_mean(res.ests[SECOND], res.layer)).numpy()
    return {"a": interval(x["a"]), "b": interval(x["b"]), "own": own, "common": common,
            "cos_u_vrev": float(stats.cosine(u, res.est.directions.v_rev[res.layer].numpy())),
            "verdict": witness_verdict(own, common)}


def residual_measure(res: Result | CheckpointResult) -> dict:
    """The residual alignment over histories (one history: over its seeds) and the verdict."""
    resid = residuals(res)
    resid_al = stats.nested([r["alignment"] for r in resid])
    if resid_al["ci_low"] is None:  # one history: fall back to its seeds
        resid_al = {**resid_al, **{k: interval(resid[0]["alignment"])[k] for k in ("ci_low", "ci_high")}}
    rel = [r["reliability"] for r in resid]
    return {"alignment": resid_al, "reliability": rel, "layers": [r["layer"] for r in resid],
            "dim": resid[0]["dim"], "null_p99": resid[0]["null_p99"], "n_histories": len(resid),
            "verdict": residual_verdict(resid_al, rel, resid[0]["null_p99"])}


def measure_pasts(res: Result | CheckpointResult) -> dict:
    """Every number the chapter's verdicts read (your checkpoints: :func:`measure_checkpoints`)."""
    if isinstance(res, CheckpointResult):
        return measure_checkpoints(res)
    T, task = res.final, res.world.finetune.task
    marked, plain = interval(rise(res.runs[SECOND], T, "marked")), interval(plain_rise(res.runs[SECOND], T))
    style_diff = stats.paired_difference(rise(res.runs[SECOND], T, "marked"), plain_rise(res.runs[SECOND], T))
    main, none = rise(res.runs[MAIN], T), rise(res.runs[NONE], T)
    main_i, none_i = interval(main), interval(none)
    nw_diff = stats.paired_difference(main, none)
    doses, by_dose = dose_rises(res)
    slope = interval(dose_slopes(doses, by_dose))
    split = {n: {part: interval(rise(res.runs[n], T, "harmfulness", part, task)) for part in ("trained", "untrained")}
             for n in (MAIN, NONE)}
    steps = [s for s in res.runs[MAIN][0].steps if s > 0]
    wx = weight_crossover(res)
    w_own, w_common = interval(wx["own"]), interval(wx["common"])
    weights = {"steps": steps,
               **{key: [stats.nested([weight_series(runs, key)[:, i] for runs in res.history_runs])
                        for i in range(len(steps))] for key in ("cos_gap", "gap_closed")},
               "crossover": {"own": w_own, "common": w_common, "verdict": witness_verdict(w_own, w_common)}}
    return {
        "weight_space": weights,
        "layer": res.layer,
        "residual": residual_measure(res),
        "witness": witness_measure(res),
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


def measure_checkpoints(res: CheckpointResult) -> dict:
    """What your checkpoints can show, in the organism's layout: the witness crossover (with the
    second lineage) and the residual alignment (with v_P and r_S) as there; every other block
    :func:`not_testable`, saying what it needs (``missing``: all of them)."""
    needs = missing(res.checkpoints)

    def block(kind: str, made) -> dict:
        return not_testable(needs[kind]) if kind in needs else made(res)

    return {
        "weight_space": not_testable(needs["weights"]),
        "layer": res.layer,
        "residual": block("residual", residual_measure),
        "witness": block("witness", witness_measure),
        "style": not_testable(needs["style"]),
        "no_witness": not_testable(needs["no_witness"]),
        "dose": not_testable(needs["dose"]),
        "missing": needs,
    }


def dose_rises(res: Result) -> tuple[list[float], np.ndarray]:
    """The doses and the per-seed rise at each, ``[seeds, doses]``."""
    doses = res.doses
    return [f for f, _ in doses], np.stack([rise(res.runs[n], res.final) for _, n in doses], axis=1)


def lineage_rows(res: Result | CheckpointResult) -> list[dict]:
    """One row per lineage: its helpful phase, compliance of its theta_H and theta_S, the rise
    after fine-tuning (mean and 95% interval over seeds) and the alignment with its own v_rev.
    Your checkpoints: compliance of theta_S and theta_T, the rise and the alignment."""
    rows = []
    for name, runs in res.runs.items():
        r = interval(rise(runs, res.final))
        row = {"lineage": name}
        if not isinstance(res, CheckpointResult):
            c = res.configs[name].helpful
            row.update({"helpful steps": c.steps, "helpful harmful fraction": c.harmful_fraction,
                        "marked": bool(c.marker), "theta_H harmful": res.hists[name].metrics["theta_H"]["harmfulness"]})
        row.update({"theta_S harmful": runs[0].evals[0]["harmfulness"],
                    "theta_T harmful": float(np.mean([x.evals[res.final]["harmfulness"] for x in runs])),
                    "rise": r["mean"], "rise low": r["ci_low"], "rise high": r["ci_high"]})
        if not isinstance(res, CheckpointResult):
            row.update({"rise, exact match": float(rise(runs, res.final, "exact_match").mean()),
                        "theta_T marked": float(np.mean([x.evals[res.final]["marked"] for x in runs]))})
        row["cos(d_T, own v_rev)"] = float(own_alignment(res, name).mean())
        rows.append(row)
    return rows


def verdict_of(m: dict, kind: str) -> str:
    """The verdict of measurement ``kind`` (:data:`LABELS`) in the chapter's metrics, or
    :data:`~reversion.analysis.verdicts.NOT_TESTABLE` where it was not made."""
    block = m[BLOCK.get(kind, kind)]
    if "needs" in block:
        return NOT_TESTABLE
    return block["crossover"]["verdict"] if kind == "weights" else block["verdict"]


def metrics(res: Result | CheckpointResult) -> dict:
    """Every number of the chapter (``metrics.json``)."""
    m = measure_pasts(res)
    if isinstance(res, CheckpointResult):
        second = res.subjects.get(SECOND)
        return {"n": {"histories": 1, "seeds": res.world.n_seeds, "level": "seeds of your checkpoints' lineages",
                      "residual_histories": 1 if testable(m, "residual") else 0},
                "lineages": {k: {"theta_S": {q: float(v[0].evals[0][q]) for q in ("harmfulness", "non_refusal")},
                                 "rise": interval(rise(v, res.final)),
                                 "own_alignment": interval(own_alignment(res, k))}
                             for k, v in res.runs.items()},
                "second_lineage": None if second is None else {"witness": second.witness.as_posix(),
                                                               "aligned": second.aligned.as_posix()},
                **m}
    return {"n": {"histories": 1, "seeds": res.world.n_seeds, "level": "seeds of history 0",
                  "residual_histories": len(res.history_runs)},
            "lineages": {k: {"helpful_steps": res.configs[k].helpful.steps,
                             "helpful_harmful_fraction": res.configs[k].helpful.harmful_fraction,
                             "marker": res.configs[k].helpful.marker,
                             "theta_H": _rates(res.hists[k].metrics["theta_H"]),
                             "theta_S": _rates(res.runs[k][0].evals[0]),
                             "rise": interval(rise(v, res.final)),
                             "rise_exact_match": interval(rise(v, res.final, "exact_match")),
                             "own_alignment": interval(own_alignment(res, k))}
                         for k, v in res.runs.items()},
            **m}
