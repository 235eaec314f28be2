"""What every experiment chapter's parameters share: the world they run in."""

from __future__ import annotations

from dataclasses import dataclass

from ..worlds import World, make_world


@dataclass(frozen=True)
class WorldParams:
    """The world fields of a chapter's parameters (subclasses add their own)."""

    world: str
    """Named world: ``default`` (the book's organism) or ``smoke`` (a tiny one for tests)."""
    world_overrides: dict
    """Changes to the world, e.g. ``{"finetune": {"lr": 1e-4}}`` (see :mod:`reversion.worlds`)."""

    def make_world(self, **top: object) -> World:
        """The world with ``world_overrides`` and the chapter's own top-level fields
        (e.g. ``n_seeds``) applied; fine-tuning fields in ``top["finetune"]`` are merged."""
        over = dict(self.world_overrides)
        if "finetune" in top:
            top = {**top, "finetune": {**over.get("finetune", {}), **top["finetune"]}}
        return make_world(self.world, {**over, **top})
