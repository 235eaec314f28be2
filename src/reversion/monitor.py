"""The public API for your own fine-tuning runs: watch one while it trains, or re-read its checkpoints.

::

    from reversion.monitor import ObjectiveMixin, ReversionMonitor, block_term
    from reversion.monitor import CheckpointReader, track

* :class:`ReversionMonitor` -- a ``transformers.TrainerCallback`` that logs the alignment of
  activation drift with v_rev every k steps and flags a run that stays above the threshold
  (:func:`reversion.core.drift.null_threshold` states the rule);
  :class:`ReversionWarning` is what it warns with;
* :class:`ObjectiveMixin` -- adds a directional term (:func:`block_term`: ``"block"``,
  ``"oppose"`` or ``"push"``) to the loss of any ``Trainer`` subclass (trl's ``SFTTrainer``
  too); :class:`BlockTrainer` is the mixin on ``Trainer``;
* :func:`track` -- the same readings for saved checkpoints (full folders or LoRA adapters)
  after the fact, read through a :class:`CheckpointReader`; it is what ``reversion track``
  runs and returns a :class:`TrackResult`.

The objects are those of :mod:`reversion.subjects.checkpoints.trainer_hooks`,
:mod:`reversion.subjects.checkpoints.reader` and :mod:`reversion.stages.track`, where they are
documented; this module only gives them a short import path.
"""

from __future__ import annotations

from reversion.stages.track import TrackResult, track
from reversion.subjects.checkpoints.trainer_hooks import (
    BlockTrainer,
    ObjectiveMixin,
    ReversionMonitor,
    ReversionWarning,
    block_term,
)
from reversion.subjects.checkpoints.reader import CheckpointReader

__all__ = ["BlockTrainer", "CheckpointReader", "ObjectiveMixin", "ReversionMonitor", "ReversionWarning",
           "TrackResult", "block_term", "track"]
