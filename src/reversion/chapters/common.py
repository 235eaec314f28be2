"""What every experiment chapter's parameters share: the world they run in."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..worlds import World, make_world

_WORLD_FIELDS = {f.name for f in dataclasses.fields(World)}


@dataclass(frozen=True)
class WorldParams:
    """The world fields of a chapter's parameters (subclasses add their own)."""

    world: str
    """Named world: ``default`` (the book's organism) or ``smoke`` (a tiny one for tests)."""
    world_overrides: dict
    """Changes to the world, e.g. ``{"finetune": {"lr": 1e-4}}`` (see :mod:`reversion.worlds`)."""

    def make_world(self, **top: object) -> World:
        """The world with ``world_overrides`` applied, then every chapter field that is also a
        field of :class:`World` (e.g. ``n_seeds``), then ``top``; fine-tuning fields in
        ``top["finetune"]`` are merged."""
        over = dict(self.world_overrides)
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in _WORLD_FIELDS}
        top = {**own, **top}
        if "finetune" in top:
            top = {**top, "finetune": {**over.get("finetune", {}), **top["finetune"]}}
        return make_world(self.world, {**over, **top})
