"""Stage ``track``: how each saved checkpoint of a fine-tuning run drifted along v_rev.

For a direction file (``reversion estimate``'s output) and the checkpoints of a run from
theta_S: the drift d = mean_x h_ckpt(x) - mean_x h_S(x) over the probe prompts, at the
direction file's layer (or a given one; optionally every layer), read with
:func:`reversion.core.drift.read_drift` -- alignment cos(d, v_rev), projection d . v_rev,
||d||, and the projection relative to ||mu_H - mu_S|| -- and compared with the threshold of
:func:`reversion.core.drift.threshold` (the rule is :func:`reversion.core.drift.null_threshold`'s).
These are the values the :class:`~reversion.subjects.checkpoints.trainer_hooks.ReversionMonitor`
logs during training, so a checkpoint re-read here agrees with the monitor's log at its step.

Models are read through a :class:`Source` (the stage knows no subject implementation):
:class:`reversion.subjects.checkpoints.reader.CheckpointReader` reads local Hugging Face
folders and LoRA adapter checkpoints. :func:`track` reads a list of checkpoints in one call;
:class:`Tracker` reads them one at a time (``reversion track`` prints each as it comes), and
:func:`watch` polls a Trainer's output folder for new ones.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol, Sequence

import torch

from reversion.core.activations import POSITIONS
from reversion.core.directions import Directions
from reversion.core.drift import read_drift
from reversion.core.drift import threshold as drift_threshold
from reversion.infra.checks import check_choice, check_float, check_int

__all__ = ["Checkpoint", "Reading", "Source", "TrackError", "TrackResult", "Tracker", "in_step_order",
           "read_directions", "step_of", "track", "watch"]


class TrackError(ValueError):
    """A bad input of the stage; the message starts with the input's name (as ``names`` gives it)."""


class Source(Protocol):
    """What the stage reads models through (:class:`reversion.subjects.checkpoints.reader.CheckpointReader`)."""

    arch: dict
    """theta_S's ``model_type``, ``hidden_size`` and ``num_hidden_layers``."""
    name: str
    """How an error names theta_S (``aligned``, ``--aligned``)."""
    n_prompts: int
    """Number of probe prompts."""
    prompts_sha256: str | None
    """SHA-256 of the probe prompt file (None: unknown), compared with the estimate's."""

    def is_checkpoint(self, path: Path) -> bool:
        """Whether a folder looks complete (weights written), for :func:`watch`."""

    def check(self, name: str, path: Path) -> None:
        """Raise ``ValueError`` naming ``name`` unless ``path`` can be compared with theta_S."""

    def reference(self, layers: Sequence[int], position: str) -> torch.Tensor:
        """theta_S's mean probe activations ``[len(layers), d]``."""

    def means(self, name: str, path: Path, layers: Sequence[int], position: str) -> torch.Tensor:
        """The checkpoint's mean probe activations ``[len(layers), d]``."""


def step_of(path: str | Path) -> int | None:
    """The number ending a folder's name (``checkpoint-500`` -> 500), else None."""
    m = re.search(r"(\d+)$", Path(path).name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint to read."""

    path: Path
    """Its folder (a full checkpoint or a LoRA adapter)."""
    label: str
    """How its readings name it (``reversion track``: the path as given)."""
    name: str
    """How an error names it (``reversion track``: ``CHECKPOINT path``)."""

    @classmethod
    def at(cls, path: str | Path, label: str | None = None, name: str | None = None) -> "Checkpoint":
        """A checkpoint at ``path``, labelled ``label`` (default: the path) and named ``name`` in
        errors (default: the label)."""
        label = str(path) if label is None else label
        return cls(Path(path), label, label if name is None else name)

    @property
    def step(self) -> int | None:
        """:func:`step_of` its folder."""
        return step_of(self.path)


def in_step_order(checkpoints: Iterable[Checkpoint]) -> list[Checkpoint]:
    """By the number ending the folder name (``checkpoint-500``); the others after them, as given."""
    return sorted(checkpoints, key=lambda c: (c.step is None, c.step or 0))


@dataclass(frozen=True)
class Reading:
    """One checkpoint at one layer (a row of ``reversion track``'s CSV)."""

    checkpoint: str
    """The checkpoint's label."""
    step: int | None
    """The number ending its folder name (None: none)."""
    layer: int
    """Layer of the reading (``hidden_states[layer]``)."""
    alignment: float
    """cos(d, v_rev) (0 for no drift, or where v_rev is zero)."""
    projection: float
    """d . v_rev / ||v_rev||, in activation units."""
    drift_norm: float
    """||d||."""
    relative_projection: float | None
    """projection / ||mu_H - mu_S|| (1 = as far along v_rev as the witness; None: no displacement)."""
    threshold: float | None
    """The threshold at the tracked layer (None at the other layers)."""
    above: bool | None
    """alignment > threshold at the tracked layer (None at the other layers)."""


FIELDS = tuple(f.name for f in fields(Reading))
"""The columns of a reading, in order."""


@dataclass(frozen=True)
class TrackResult:
    """The readings of a list of checkpoints."""

    readings: tuple[Reading, ...]
    """Checkpoint by checkpoint (in step order), layer by layer."""
    layer: int
    """The tracked layer (the direction file's, or the one given)."""
    layers: tuple[int, ...]
    """Every layer read (the tracked one, or all with ``all_layers``)."""
    threshold: float
    """What an alignment at the tracked layer must exceed."""
    threshold_source: str
    """``"given"``, ``"matched null p99"`` or ``"isotropic p99"`` (see :func:`reversion.core.drift.null_threshold`)."""
    position: str
    """Position rule of the readings (``"last"`` or ``"mean"``)."""
    n_prompts: int
    """Number of probe prompts."""
    same_prompts: bool
    """The probes are the estimate's own prompt file (a disjoint set avoids shared noise)."""

    def at_layer(self, layer: int | None = None) -> tuple[Reading, ...]:
        """The readings at ``layer`` (default: the tracked one)."""
        layer = self.layer if layer is None else layer
        return tuple(r for r in self.readings if r.layer == layer)

    def records(self, layer: int | None = None) -> list[dict]:
        """The readings as dicts (:data:`FIELDS`), at ``layer`` (default: every layer read)."""
        rows = self.readings if layer is None else self.at_layer(layer)
        return [asdict(r) for r in rows]


def read_directions(path: str | Path, name: str = "directions") -> Directions:
    """A direction file, with errors naming the input as ``name``."""
    try:
        return Directions.load(path)
    except FileNotFoundError as exc:
        raise TrackError(f"{name}: {exc}") from None
    except Exception as exc:
        raise TrackError(f"{name}: cannot read {path} as a direction file ({type(exc).__name__}: {exc})") from None


class Tracker:
    """Readings of one checkpoint at a time against theta_S (see the module docstring).

    ``directions``: the :class:`~reversion.core.directions.Directions` (v_rev, displacement
    norms, and in ``meta`` the chosen ``layer``, ``position``, ``matched_p99`` and
    ``prompts_sha256``); ``source``: the models (:class:`Source`); ``layer``: the tracked layer
    (default: the direction file's); ``all_layers``: read every layer as well; ``threshold``:
    a given threshold (default :func:`reversion.core.drift.threshold`'s); ``threshold_null``: the
    threshold in null units instead (a multiple of that default); ``position``: the
    position rule (default: the direction file's, else ``"last"``); ``names``: how errors
    name the inputs (``{"directions": "--directions", "layer": "--layer", ...}``; default
    their own names). The directions and the layer are checked against the source's
    architecture here, before any model loads.
    """

    def __init__(self, directions: Directions, source: Source, *, layer: int | None = None,
                 all_layers: bool = False, threshold: float | None = None, position: str | None = None,
                 names: Mapping[str, str] | None = None, threshold_null: float | None = None):
        self.names = dict(names or {})
        self.dirs = directions
        self.source = source
        arch = source.arch
        L1, d = directions.v_rev.shape
        if d != arch["hidden_size"]:
            raise TrackError(f"{self.name('directions')}: v_rev has width {d} but {source.name} has hidden_size "
                             f"{arch['hidden_size']}; they come from different models")
        if L1 - 1 != arch["num_hidden_layers"]:
            raise TrackError(f"{self.name('directions')}: v_rev has {L1 - 1} layers but {source.name} has "
                             f"{arch['num_hidden_layers']}")
        meta = directions.meta
        if meta.get("model_type") and meta["model_type"] != arch["model_type"]:
            raise TrackError(f"{source.name}: model family {arch['model_type']!r} differs from the direction "
                             f"file's {meta['model_type']!r}")
        L = L1 - 1
        if layer is not None:
            if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= L:
                raise TrackError(f"{self.name('layer')}: layer {layer} is out of range [0, {L}] for a model with "
                                 f"{L} layers (0 = embeddings, {L} = after the final norm)")
            self.layer = layer
        elif meta.get("layer") is not None:
            self.layer = int(meta["layer"])
        else:
            raise TrackError(f"{self.name('layer')}: the direction file records no chosen layer; "
                             f"pass {self.name('layer')}")
        self.layers = tuple(range(L1)) if all_layers else (self.layer,)
        v = directions.v_rev.double()
        bad = [l for l in self.layers if not torch.isfinite(v[l]).all()]
        if bad:
            raise TrackError(f"{self.name('directions')}: v_rev has NaN or infinite values at layer(s) {bad}")
        if not float(v[self.layer].norm()) > 0:
            raise TrackError(f"{self.name('directions')}: v_rev is zero at layer {self.layer}: no direction to "
                             f"track there (choose another with {self.name('layer')})")
        try:
            self.position = check_choice(self.name("position"), position or meta.get("position", "last"),
                                         POSITIONS)
            if threshold is not None:
                check_float(self.name("threshold"), threshold)
            if threshold is not None and threshold_null is not None:
                raise ValueError(f"{self.name('threshold')} and {self.name('threshold_null')} are both set: give "
                                 "the threshold as a cosine or in null units, not both")
            if threshold_null is not None:
                check_float(self.name("threshold_null"), threshold_null, 0.0, lo_open=True)
        except ValueError as exc:
            raise TrackError(str(exc)) from None
        self.threshold, self.threshold_source = drift_threshold(d, self.layer, meta.get("matched_p99"), threshold,
                                                                threshold_null)
        self.same_prompts = source.prompts_sha256 is not None and meta.get("prompts_sha256") == source.prompts_sha256
        self.mu_S: torch.Tensor | None = None

    def name(self, key: str) -> str:
        """How errors name input ``key``."""
        return self.names.get(key, key)

    @property
    def n_prompts(self) -> int:
        return self.source.n_prompts

    def reference(self) -> None:
        """Read theta_S (once; :meth:`read` does it when needed)."""
        if self.mu_S is None:
            self.mu_S = self.source.reference(self.layers, self.position)

    def check(self, checkpoint: Checkpoint) -> None:
        """The source's checks of one checkpoint (configs only, no model loads)."""
        self.source.check(checkpoint.name, checkpoint.path)

    def read(self, checkpoint: Checkpoint) -> tuple[Reading, ...]:
        """The readings of one checkpoint, one per layer read."""
        self.reference()
        mu = self.source.means(checkpoint.name, checkpoint.path, self.layers, self.position)
        out = []
        for i, layer in enumerate(self.layers):
            v = self.dirs.v_rev[layer]
            if not float(v.norm()) > 0:  # all layers: a layer without a direction reads as no alignment
                r = {"alignment": 0.0, "projection": 0.0, "drift_norm": float((mu[i] - self.mu_S[i]).norm()),
                     "relative_projection": None}
            else:
                r = read_drift(mu[i], self.mu_S[i], v, float(self.dirs.displacement_norm[layer]))
            tracked = layer == self.layer
            out.append(Reading(checkpoint.label, checkpoint.step, layer, **r,
                               threshold=self.threshold if tracked else None,
                               above=(r["alignment"] > self.threshold) if tracked else None))
        return tuple(out)

    def result(self, readings: Iterable[Reading]) -> TrackResult:
        """``readings`` with this tracker's layer, threshold and settings."""
        return TrackResult(tuple(readings), self.layer, self.layers, self.threshold, self.threshold_source,
                           self.position, self.n_prompts, self.same_prompts)


def _as_checkpoint(c: Checkpoint | str | Path) -> Checkpoint:
    return c if isinstance(c, Checkpoint) else Checkpoint.at(c)


def track(directions: Directions | str | Path, source: Source, checkpoints: Sequence[Checkpoint | str | Path], *,
          layer: int | None = None, all_layers: bool = False, threshold: float | None = None,
          position: str | None = None, names: Mapping[str, str] | None = None,
          threshold_null: float | None = None) -> TrackResult:
    """The readings of ``checkpoints`` (folders, or :class:`Checkpoint`), read in step order.

    ``directions``: a :class:`~reversion.core.directions.Directions` or the path of a direction
    file; ``source``: where the models are read (e.g.
    ``CheckpointReader("path/to/aligned", "harmful.jsonl")``); the keywords are
    :class:`Tracker`'s. Every checkpoint is checked (configs only) before the first model loads.
    """
    if isinstance(directions, (str, Path)):
        directions = read_directions(directions, (names or {}).get("directions", "directions"))
    t = Tracker(directions, source, layer=layer, all_layers=all_layers, threshold=threshold, position=position,
                names=names, threshold_null=threshold_null)
    ordered = in_step_order(_as_checkpoint(c) for c in checkpoints)
    for c in ordered:
        t.check(c)
    return t.result(r for c in ordered for r in t.read(c))


def _signature(path: Path) -> tuple:
    try:
        return tuple(sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.is_file()))
    except OSError:
        return ()


def watch(tracker: Tracker, root: str | Path, on_readings: Callable[[tuple[Reading, ...]], None], *,
          interval: float = 60.0, max_polls: int | None = None) -> None:
    """Poll ``root`` for checkpoint folders; read each once it is complete and pass its readings
    to ``on_readings``. Complete: it holds ``trainer_state.json`` (the Trainer writes it after the
    weights), or its files did not change between two polls. New folders are read in step
    order, each labelled ``root-name/folder-name`` (named ``<watch> label`` in errors, ``names``'s
    ``"watch"``). Stops after ``max_polls`` polls (None: never; Ctrl-C ends it)."""
    root = Path(root)
    if not root.is_dir():
        raise TrackError(f"{tracker.name('watch')}: not a directory: {root}")
    check_float("interval", interval, 0.0)
    if max_polls is not None:
        check_int("max_polls", max_polls, 1)
    done: set[Path] = set()
    seen: dict[Path, tuple] = {}
    polls = 0
    while True:
        polls += 1
        cands = [p for p in root.iterdir() if p.is_dir() and p not in done and tracker.source.is_checkpoint(p)]
        cands.sort(key=lambda p: (step_of(p) is None, step_of(p) or 0, p.name))
        for p in cands:
            sig = _signature(p)
            if (p / "trainer_state.json").is_file() or seen.get(p) == sig:
                label = f"{root.name}/{p.name}"
                c = Checkpoint.at(p, label, f"{tracker.name('watch')} {label}")
                tracker.check(c)
                on_readings(tracker.read(c))
                done.add(p)
            else:
                seen[p] = sig
        if max_polls is not None and polls >= max_polls:
            return
        time.sleep(interval)
