"""Fine-tuning variants, all optimizer-matched to the baseline.

Same optimizer, learning rate, steps and benign data order per seed; each variant
changes one thing:

* :class:`Block` -- adds ``+strength * sum_l tanh(p_l / s_l)`` to the loss, where ``p_l``
  is the projection on v_rev of the probe activations' drift from theta_S at layer l and
  ``s_l = ||mu_H - mu_S||`` its natural scale. Linear at p = 0, so it acts from the first
  step (a quadratic or a hinge has no gradient there); the tanh bounds it.
* :class:`Push` -- the same term with the opposite sign: reinforces the motion, bounded.
* :class:`Projection` -- during the training forward pass, removes the component along
  v_rev of each token's activation change from what a frozen theta_S computes for the
  same input, at the chosen layers (a CAFT-style edit of the forward pass, not of the
  loss; the identity at theta_S). No edit at evaluation.
* :class:`Rehearsal` -- replaces a fraction of each batch with safety-alignment
  examples (harmful request -> refusal); never sees v_rev.
* :class:`AlignmentMix` -- the null control of chapter 04: fine-tune on the alignment
  mix itself (continued safety training) instead of the benign task.

Each is a plain object with ``aux_loss(model, batch, step)`` and ``batches(...)``, so it
drops into any training loop (see :mod:`reversion.stages.finetune`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
from typing import Iterator, Sequence

import torch

from reversion.core.activations import mean_activations
from reversion.core.batches import collate
from reversion.core.hooks import add_hooks, edit_block_output, get_blocks, n_layers
from reversion.infra import seeding
from reversion.infra.checks import check_float, check_fraction, check_int


def _share(n: int, fraction: float) -> int:
    """Examples of a batch of ``n`` given to a fraction (halves round up, not to even)."""
    return int(math.floor(n * fraction + 0.5))


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().double().cpu().numpy().tobytes()).hexdigest()[:16]


def _check_layers(layers: Sequence[int], n_layer: int, lo: int = 1) -> list[int]:
    layers = sorted({int(l) for l in layers})
    if not layers:
        raise ValueError("layers must name at least one layer")
    bad = [l for l in layers if not lo <= l <= n_layer]
    if bad:
        raise ValueError(f"layers {bad} outside [{lo}, {n_layer}]")
    return layers


def _check_direction(v: torch.Tensor, layers: Sequence[int], who: str) -> None:
    """v_rev must be finite and non-zero where an intervention acts: a zero row would make
    the intervention a silent no-op, a NaN row would poison the loss."""
    bad = [l for l in layers if not torch.isfinite(v[l]).all()]
    if bad:
        raise ValueError(f"{who}: v_rev has NaN or infinite values at layer(s) {bad}")
    zero = [l for l in layers if not float(v[l].norm()) > 0]
    if zero:
        raise ValueError(f"{who}: v_rev is zero at layer(s) {zero}; nothing to act on there")


class _DirectionalTerm:
    """Shared by Block and Push: a bounded term linear at theta_S in the probe projection."""
    sign = +1.0
    name = "directional"

    def __init__(self, v_rev: torch.Tensor, scale: torch.Tensor, strength: float,
                 layers: Sequence[int], n_probe_batch: int = 32):
        """``v_rev`` ``[L+1, d]`` unit rows; ``scale`` ``[L+1]`` (e.g. ||mu_H - mu_S||)."""
        self.strength = check_float(f"{self.name} strength", strength, 0.0)
        self.v = v_rev.detach().double()
        self.scale = scale.detach().double()
        self.layers = _check_layers(layers, self.v.shape[0] - 1)
        _check_direction(self.v, self.layers, self.name)
        if not torch.all(self.scale[self.layers] > 0):
            raise ValueError(f"{self.name}: scale must be > 0 at every layer acted on")
        self.n_probe_batch = check_int("n_probe_batch", n_probe_batch, 1)
        self.mu_S: torch.Tensor | None = None
        self.probe_batches: list[dict] = []

    @property
    def batches_only(self) -> bool:
        """At strength 0 the term is absent: the run trains (in a group) as the baseline does."""
        return self.strength == 0.0

    def key(self) -> dict:
        return {"variant": self.name, "strength": self.strength, "layers": self.layers,
                "v_rev": _digest(self.v), "scale": _digest(self.scale),
                "n_probe_batch": self.n_probe_batch}

    def setup(self, model, data, probes) -> None:
        """``probes``: the subject's :class:`~reversion.subjects.base.Prompts` (``block`` set and
        ``pad_id`` are read); ``data`` is not used."""
        prompts = probes.harmful_block
        device = next(model.parameters()).device
        chunks = [prompts[i:i + self.n_probe_batch] for i in range(0, len(prompts), self.n_probe_batch)]
        # theta_S reference mean of *each* probe batch, so the projection is exactly 0 at
        # theta_S whichever batch a step looks at (a set-wide mean would leave each batch's
        # sampling offset in p).
        self.mu_S = [mean_activations(model, c, self.layers, pad_id=probes.pad_id).to(device) for c in chunks]
        self._v = self.v[self.layers].to(device)
        self._scale = self.scale[self.layers].to(device)
        self.probe_batches = [collate(c, pad_id=probes.pad_id, device=device) for c in chunks]

    def projection(self, model, step: int) -> torch.Tensor:
        """``[len(layers)]`` projection on v_rev of the probe batch's mean drift (differentiable)."""
        i = (step - 1) % len(self.probe_batches)
        b = self.probe_batches[i]
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                    output_hidden_states=True)
        last = b["attention_mask"].sum(1) - 1
        rows = torch.arange(len(last), device=last.device)
        h = torch.stack([out.hidden_states[l][rows, last] for l in self.layers], 1)  # [n, k, d]
        drift = h.double().mean(0) - self.mu_S[i]  # [k, d]
        return (drift * self._v).sum(-1)

    def aux_loss(self, model, batch: dict, step: int) -> torch.Tensor | None:
        if self.strength == 0.0:
            return None  # exactly the baseline: no extra forward, no extra graph
        p = self.projection(model, step)
        return (self.sign * self.strength * torch.tanh(p / self._scale).sum()).float()

    def batches(self, benign, data, ft):
        return benign

    def teardown(self) -> None:
        self.probe_batches = []


class Block(_DirectionalTerm):
    """Opposes positive motion of the probe activations along v_rev."""
    sign = +1.0
    name = "block"


class Push(_DirectionalTerm):
    """Reinforces motion along v_rev; bounded by the tanh so it cannot run away."""
    sign = -1.0
    name = "push"


class Projection:
    """Removes, in the training forward pass, the change along v_rev at the given layers."""
    name = "projection"

    def __init__(self, v_rev: torch.Tensor, layers: Sequence[int]):
        self.v = v_rev.detach().double()
        # hidden_states[l] is the output of block l-1 for l < L; layer L carries the final
        # norm, which a block hook does not see, so the edit acts on layers 1..L-1.
        self.layers = _check_layers(layers, self.v.shape[0] - 2)
        _check_direction(self.v, self.layers, self.name)
        self._stack: contextlib.ExitStack | None = None
        self.active = False

    def key(self) -> dict:
        return {"variant": self.name, "layers": self.layers, "v_rev": _digest(self.v)}

    def setup(self, model, data, probes) -> None:

        # A frozen copy of theta_S gives each token's reference activation, so the edit is
        # the identity at theta_S and removes only the *change* along v_rev since then.
        ref = copy.deepcopy(model).eval().requires_grad_(False)
        device = next(model.parameters()).device
        vs = {l: self.v[l].to(device).float() for l in self.layers}
        h_ref: dict[int, torch.Tensor] = {}

        def capture(mod, args, kwargs):
            if self.active:
                ids = kwargs.get("input_ids", args[0] if args else None)
                with torch.no_grad():
                    out = ref(input_ids=ids, attention_mask=kwargs.get("attention_mask"),
                              output_hidden_states=True)
                h_ref.update({l: out.hidden_states[l] for l in self.layers})

        def hook_for(l):
            def edit(h):
                v = vs[l]
                return h - ((h - h_ref[l]) @ v)[..., None] * v

            return lambda mod, inp, out: edit_block_output(out, edit) if self.active else out

        blocks = get_blocks(model)
        self.active = True
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(add_hooks(forward_hooks=[(blocks[l - 1], hook_for(l)) for l in self.layers]))
        handle = model.register_forward_pre_hook(capture, with_kwargs=True)
        self._stack.callback(handle.remove)
        self._stack.callback(h_ref.clear)

    def aux_loss(self, model, batch, step):
        return None

    def batches(self, benign, data, ft):
        return benign

    @contextlib.contextmanager
    def paused(self):
        """No edit while the loop probes or evaluates: the edit is for training only."""
        was, self.active = self.active, False
        try:
            yield
        finally:
            self.active = was

    def teardown(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None


class Rehearsal:
    """Mixes safety-alignment examples into each benign batch (no access to v_rev)."""
    name = "rehearsal"
    batches_only = True  # changes the data, not the model: runs train in groups

    def __init__(self, fraction: float):
        self.fraction = check_fraction("rehearsal fraction", fraction)

    def key(self) -> dict:
        return {"variant": self.name, "fraction": self.fraction}

    def setup(self, model, data, probes) -> None:
        pass

    def aux_loss(self, model, batch, step):
        return None

    def batches(self, benign: Iterator[list], data, ft) -> Iterator[list]:
        r = seeding.rng(ft.seed, "rehearsal-data")
        k = _share(ft.batch_size, self.fraction)
        for batch in benign:
            if k == 0:
                yield batch
                continue
            harm = data.sample(r, k, "train", harmful=True)
            # Replace the tail: the benign head keeps the baseline's data order.
            yield batch[: len(batch) - k] + [(q.prompt, data.refusal_answer) for q in harm]

    def teardown(self) -> None:
        pass


class AlignmentMix:
    """Control for the null test: continue on the safety alignment's own mix."""
    name = "alignment_mix"
    batches_only = True  # changes the data, not the model: runs train in groups

    def __init__(self, harmful_fraction: float = 0.5):
        self.harmful_fraction = check_fraction("harmful_fraction", harmful_fraction)

    def key(self) -> dict:
        return {"variant": self.name, "harmful_fraction": self.harmful_fraction}

    def setup(self, model, data, probes) -> None:
        pass

    def aux_loss(self, model, batch, step):
        return None

    def batches(self, benign: Iterator[list], data, ft) -> Iterator[list]:
        r = seeding.rng(ft.seed, "alignment-mix")
        k = _share(ft.batch_size, self.harmful_fraction)
        while True:
            ben = data.sample(r, ft.batch_size - k, "train", harmful=False)
            harm = data.sample(r, k, "train", harmful=True)
            yield [(q.prompt, q.answer) for q in ben] + [(q.prompt, data.refusal_answer) for q in harm]

    def teardown(self) -> None:
        pass


def all_block_layers(model) -> list[int]:
    """Layers 1..L (every block output) -- the default for Block and Push."""
    return list(range(1, n_layers(model) + 1))
