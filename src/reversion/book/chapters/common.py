"""What every experiment chapter's parameters share: the world, and the subject it runs on."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import ClassVar

from reversion.core.train_settings import CHECKPOINT_FINETUNE
from reversion.infra.checks import check_int
from reversion.infra.results import write_metrics
from reversion.subjects.base import Subject, identity
from reversion.subjects.checkpoints.subject import CHECKPOINT_KEYS, from_parameters
from reversion.subjects.organism.subject import OrganismSubject, histories
from reversion.subjects.organism.worlds import World, make_world

_WORLD_FIELDS = {f.name for f in dataclasses.fields(World)}


@dataclass(frozen=True)
class WorldParams:
    """The world fields of a chapter's parameters (subclasses add their own)."""

    world: str
    """Named world: ``default`` (the book's organism) or ``smoke`` (a tiny one for tests)."""
    world_overrides: dict
    """Changes to the world, e.g. ``{"finetune": {"lr": 1e-4}}`` (see :mod:`reversion.subjects.organism.worlds`)."""

    def make_world(self, **top: object) -> World:
        """The world with ``world_overrides`` applied, then every chapter field that is also a
        field of :class:`World` (e.g. ``n_seeds``), then ``top``; fine-tuning fields in
        ``top["finetune"]`` are merged."""
        over = dict(self.world_overrides)
        if getattr(self, "checkpoints", None):  # your checkpoints fine-tune with their own defaults
            over["finetune"] = {**CHECKPOINT_FINETUNE, **over.get("finetune", {})}
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in _WORLD_FIELDS}
        top = {**own, **top}
        if "finetune" in top:
            top = {**top, "finetune": {**over.get("finetune", {}), **top["finetune"]}}
        return make_world(self.world, {**over, **top})


@dataclass(frozen=True, kw_only=True)
class Replication:
    """The replication fields of a chapter's parameters (a mixin with :class:`WorldParams`)."""

    n_histories: int
    """Independent organism histories: the unit of replication, over which intervals run (your
    checkpoints are one history)."""
    n_seeds: int
    """Fine-tuning seeds per history, averaged within it (the same seeds in every history)."""

    MIN_SEEDS: ClassVar[int] = 1
    """The fewest seeds the chapter can use (2 where an interval over one history's seeds is read)."""

    def __post_init__(self) -> None:
        check_int("n_histories", self.n_histories, 1)
        check_int("n_seeds", self.n_seeds, self.MIN_SEEDS)


OLD_CHECKPOINT_PARAMETERS = tuple(CHECKPOINT_KEYS)
"""The parameter names the chapters on your checkpoints took before ``checkpoints`` held them all."""


@dataclass(frozen=True, kw_only=True)
class SubjectParams(WorldParams):
    """World fields plus ``checkpoints``: empty runs the organism; a mapping with ``witness``,
    ``aligned``, ``prompts`` (and ``finetune_data`` where the chapter fine-tunes) runs the same
    chapter on your own Hugging Face checkpoints (keys:
    :data:`reversion.subjects.checkpoints.subject.CHECKPOINT_KEYS`). In checkpoint mode the
    fine-tuning schedule starts from :data:`reversion.core.train_settings.CHECKPOINT_FINETUNE`, not
    the organism's, and ``world_overrides={"finetune": {"lr": ..., "steps": ..., "batch_size": ...,
    "eval_steps": [...]}}`` changes it; ``checkpoints['training']`` says how it trains (LoRA by
    default)."""

    checkpoints: dict = field(default_factory=dict)
    """Your own checkpoints instead of the organism ({} = the organism); see the README."""

    MOVED: ClassVar[dict[str, str]] = {
        name: (f"parameter {name!r} is now a key of 'checkpoints': pass "
               f"checkpoints={{'witness': ..., 'aligned': ..., {name!r}: ...}} "
               f"(papermill: -y \"checkpoints: {{{name}: ...}}\")")
        for name in OLD_CHECKPOINT_PARAMETERS}
    """Old parameter names, and the error that shows the new form (read by :func:`reversion.book.nb.collect`)."""

    def subject(self, world: World, need_finetune: bool = False) -> Subject:
        """The organism of ``world``, or the checked checkpoint subject of ``checkpoints``.
        Raises ``ValueError`` naming the key at fault, before any work."""
        if not self.checkpoints:
            return OrganismSubject(world.history)
        return from_parameters(self.checkpoints, need_finetune=need_finetune)

    def subjects(self, world: World, need_finetune: bool = False) -> list[Subject]:
        """The world's ``n_histories`` independent organism histories (history 0 is
        :meth:`subject`'s), or your checkpoints: one history."""
        if not self.checkpoints:
            return histories(world.history, world.n_histories)
        return [self.subject(world, need_finetune)]

    def recorded(self) -> dict:
        """The parameters written to metrics.json: without ``checkpoints`` when it is empty, so
        organism metrics are unchanged by its existence."""
        d = dataclasses.asdict(self)
        if not self.checkpoints:
            d.pop("checkpoints")
        return d


def stage_ids(subject: Subject, est=None) -> dict:
    """The identities of the stages a chapter's numbers come from (recorded beside its metrics;
    the claims chapter checks that chapters agree on them): the subject, and the estimate's
    directions and layer (estimates that differ only in their bootstrap count agree)."""
    out = {"subject": identity(subject)}
    if est is not None:
        h = hashlib.sha256(est.directions.v_rev.double().numpy().tobytes())
        h.update(str(est.layer).encode())
        out["estimate"] = h.hexdigest()[:24]
    return out


def write_chapter(stem: str, module: str, P: SubjectParams, res, metrics: dict, fine_tunes: bool = True) -> dict:
    """``results/<stem>/metrics.json`` of an experiment chapter: its metrics with the parameters,
    the fine-tuning seeds (where it fine-tunes), the subject's record, the stage identities and
    the chapter module's code identity."""
    write_metrics(stem, metrics, P.recorded(), seeds=res.world.seeds if fine_tunes else None,
                  subject=res.subject.record(), stages=stage_ids(res.subject, res.est), code=(module,))
    return metrics
