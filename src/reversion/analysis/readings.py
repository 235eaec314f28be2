"""What every result over histories reads the same way."""

from __future__ import annotations


class OverHistories:
    """A result with ``world``, ``subjects`` and ``ests`` (one per history, history 0 first): history
    0's subject, estimate and chosen layer, and what the subject says differs from the organism."""

    @property
    def subject(self):
        return self.subjects[0]

    @property
    def est(self):
        return self.ests[0]

    @property
    def layer(self) -> int:
        """History 0's chosen layer (where the chapters read history 0)."""
        return self.est.layer

    @property
    def notes(self) -> list[str]:
        """What differs from the organism's chapter (printed under the parameters)."""
        return self.subject.describe(self.world.finetune)
