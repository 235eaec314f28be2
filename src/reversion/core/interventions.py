"""Fine-tuning variants, all optimizer-matched to the baseline.

Same optimizer, learning rate, steps and benign data order per seed; each variant
changes one thing. The directional terms read ``p_l``, the projection on a direction ``v``
(v_rev or a control) of the probe activations' mean drift from theta_S at layer l, scaled by
``s_l = ||mu_H - mu_S||``; ``p`` is exactly 0 at theta_S on every probe batch.

* :class:`Block` -- adds ``+strength * sum_l relu(p_l / s_l)``: resists motion *along +v* and
  nothing else (a hinge). Its gradient is zero at theta_S, so it acts from the first step at
  which a probe batch's ``p`` turns positive, and it never pushes the model along -v.
* :class:`Oppose` -- adds ``+strength * sum_l tanh(p_l / s_l)``: linear at p = 0, so it acts
  from the first step, and its slope vanishes only around p ~ -2s, so its optimum lies
  beyond theta_S on the -v side: it steers along -v rather than only blocking motion along
  +v (the paper-style objective, named for what it does).
* :class:`Push` -- the tanh term with the opposite sign: reinforces the motion, bounded.
* :class:`Projection` -- during the training forward pass, removes the component along
  v of each token's activation change from what a frozen theta_S computes for the
  same input, at the chosen layers (a CAFT-style edit of the forward pass, not of the
  loss; the identity at theta_S). No edit at evaluation.
* :class:`Rehearsal` -- safety-alignment examples (harmful request -> refusal) in each batch,
  either replacing a share of the benign examples or added to the full benign batch (the
  benign data then equal the baseline's; the extra examples are the extra compute); never
  sees a direction.
* :class:`AlignmentMix` -- the null control of the Null test chapter: fine-tune on the alignment
  mix itself (continued safety training) instead of the benign task.

Strengths are comparable across directions through :func:`gradient_norms`: a term's gradient
at theta_S (its linear part, where it acts) against the task gradient's. Each variant is a plain
object with ``aux_loss(model, batch, step)`` and ``batches(...)``, so it drops into any training
loop (see :mod:`reversion.stages.finetune`, which also trains the directional terms of grouped
subjects in groups: :class:`GroupTerms`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
from typing import Iterator, Sequence

import torch

from reversion.core.activations import mean_activations
from reversion.core.batches import IGNORE, collate
from reversion.core.grouped import stack_prompts
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


PENALTIES = ("tanh", "relu")


class _DirectionalTerm:
    """Shared by Block, Oppose and Push: ``sign * strength * sum_l penalty(p_l / s_l)``."""
    sign = +1.0
    penalty_kind = "tanh"
    name = "directional"
    group_term = True  # a grouped subject trains it in a group (GroupTerms)

    def __init__(self, v_rev: torch.Tensor, scale: torch.Tensor, strength: float,
                 layers: Sequence[int], n_probe_batch: int = 32, direction: str = "v_rev"):
        """``v_rev`` ``[L+1, d]`` unit rows: the direction acted along (v_rev or a control, named
        ``direction``); ``scale`` ``[L+1]`` (e.g. ||mu_H - mu_S||)."""
        self.strength = check_float(f"{self.name} strength", strength, 0.0)
        self.v = v_rev.detach().double()
        self.scale = scale.detach().double()
        self.layers = _check_layers(layers, self.v.shape[0] - 1)
        _check_direction(self.v, self.layers, self.name)
        if not torch.all(self.scale[self.layers] > 0):
            raise ValueError(f"{self.name}: scale must be > 0 at every layer acted on")
        self.n_probe_batch = check_int("n_probe_batch", n_probe_batch, 1)
        if not isinstance(direction, str) or not direction:
            raise ValueError(f"{self.name}: direction must be a name, got {direction!r}")
        self.direction = direction
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

    def penalty(self, z: torch.Tensor) -> torch.Tensor:
        """The per-layer penalty of the scaled projection ``z = p / s`` (before sign and strength)."""
        return torch.tanh(z) if self.penalty_kind == "tanh" else torch.relu(z)

    def probe_chunks(self, probes) -> list[list]:
        """The probe prompts (the subject's ``block`` set), in batches of ``n_probe_batch``."""
        prompts = probes.harmful_block
        return [prompts[i:i + self.n_probe_batch] for i in range(0, len(prompts), self.n_probe_batch)]

    def setup(self, model, data, probes) -> None:
        """``probes``: the subject's :class:`~reversion.subjects.base.Prompts` (``block`` set and
        ``pad_id`` are read); ``data`` is not used."""
        device = next(model.parameters()).device
        chunks = self.probe_chunks(probes)
        # theta_S reference mean of *each* probe batch, so the projection is exactly 0 at
        # theta_S whichever batch a step looks at (a set-wide mean would leave each batch's
        # sampling offset in p).
        self.mu_S = [mean_activations(model, c, self.layers, pad_id=probes.pad_id).to(device) for c in chunks]
        self._v = self.v[self.layers].to(device)
        self._scale = self.scale[self.layers].to(device)
        self.probe_batches = [collate(c, pad_id=probes.pad_id, device=device) for c in chunks]

    def projection(self, model, step: int) -> torch.Tensor:
        """``[len(layers)]`` projection on the direction of the probe batch's mean drift (differentiable)."""
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
        return (self.sign * self.strength * self.penalty(p / self._scale).sum()).float()

    def batches(self, benign, data, ft):
        return benign

    def teardown(self) -> None:
        self.probe_batches = []


class Block(_DirectionalTerm):
    """Resists positive motion along the direction, one-sided (a hinge on ``p / s``)."""
    sign = +1.0
    penalty_kind = "relu"
    name = "block"


class Oppose(_DirectionalTerm):
    """Opposes motion along the direction with a bounded linear-at-zero term: it acts from the
    first step and keeps pushing past theta_S toward -v (what the paper-style "block" does)."""
    sign = +1.0
    penalty_kind = "tanh"
    name = "oppose"


class Push(_DirectionalTerm):
    """Reinforces motion along the direction; bounded by the tanh so it cannot run away."""
    sign = -1.0
    penalty_kind = "tanh"
    name = "push"


DIRECTIONAL = {c.name: c for c in (Block, Oppose, Push)}
"""The directional objectives by name."""


class GroupTerms:
    """The directional terms of a :class:`~reversion.core.grouped.GroupedGPT2` group's runs, one
    per run, computed in one batched probe forward.

    Run k's term is exactly what its term object adds when the run trains alone (the same probe
    batch at each step, the same theta_S reference per batch, the same penalty), so a run's
    numbers do not depend on its group beyond float rounding (``tests/test_interventions.py``).
    Every run of the group needs a term (the stage groups runs with and without one apart).
    """

    def __init__(self, group, terms: Sequence[_DirectionalTerm], probes: Sequence, width: int):
        from_chunks = [t.probe_chunks(p) for t, p in zip(terms, probes)]
        shapes = {tuple(len(c) for c in ch) for ch in from_chunks}
        if len(shapes) != 1:
            raise ValueError("a group's directional terms need probe batches of one shape "
                             f"(got {sorted(shapes)})")
        if any(t is None or t.strength == 0.0 for t in terms):
            raise ValueError("every run of a term group needs a directional term of strength > 0")
        device = group.wte.device
        self.group, self.width = group, width
        self.layers = sorted({l for t in terms for l in t.layers})
        L1 = len(self.layers)
        at = {l: i for i, l in enumerate(self.layers)}
        pad = probes[0].pad_id
        self.batches = [stack_prompts([ch[i] for ch in from_chunks], pad, device, width)
                        for i in range(len(from_chunks[0]))]
        self.v = torch.stack([t.v[self.layers] for t in terms]).to(device)  # [K, L1, d]
        self.scale = torch.stack([torch.where(t.scale[self.layers] > 0, t.scale[self.layers],
                                              torch.ones(L1, dtype=torch.float64)) for t in terms]).to(device)
        self.mask = torch.zeros(len(terms), L1, dtype=torch.float64, device=device)
        for k, t in enumerate(terms):
            self.mask[k, [at[l] for l in t.layers]] = 1.0
        self.coef = torch.tensor([t.sign * t.strength for t in terms], dtype=torch.float64, device=device)
        self.relu = torch.tensor([t.penalty_kind == "relu" for t in terms], device=device)[:, None]
        # theta_S's reference, by the arithmetic of the training-time forward (p is exactly 0 there)
        with torch.no_grad():
            self.mu_S = [self._means(ids, lengths) for ids, lengths in self.batches]

    def _means(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``[K, L1, d]`` float64 mean last-token state of each run's probe batch (differentiable)."""
        K, N, T = ids.shape
        top = max(self.layers)
        _, hs = self.group.hidden(ids, self.layers, upto=None if top >= self.group.L else top)
        return torch.stack([self.group._at_last(h, lengths, T).double().sum(1) / N for h in hs], 1)

    def __call__(self, step: int) -> torch.Tensor:
        """``[K]``: each run's term at ``step`` (1-based, as the runs alone count it)."""
        i = (step - 1) % len(self.batches)
        p = ((self._means(*self.batches[i]) - self.mu_S[i]) * self.v).sum(-1)  # [K, L1]
        z = p / self.scale
        pen = torch.where(self.relu, torch.relu(z), torch.tanh(z))
        return (self.coef * (pen * self.mask).sum(1)).float()


def _task_losses(model, batches: Sequence[dict], micro_batch: int | None):
    """Each batch's mean answer loss, as one forward or, with ``micro_batch``, as forwards of that
    many sequences weighted by their share of the batch's answer tokens (the same mean)."""
    for b in batches:
        n = b["input_ids"].shape[0]
        if micro_batch is None or micro_batch >= n:
            yield model(**b).loss
            continue
        total = (b["labels"][:, 1:] != IGNORE).sum()
        for s in range(0, n, micro_batch):
            part = {k: v[s:s + micro_batch] for k, v in b.items()}
            k = (part["labels"][:, 1:] != IGNORE).sum()
            if k:
                yield model(**part).loss * (k / total)


def gradient_norms(model, term: _DirectionalTerm, probes, task_batches: Sequence[dict], *,
                   micro_batch: int | None = None) -> dict:
    """The norms, at ``model`` (theta_S), of the task loss's gradient (mean loss over
    ``task_batches``, collated) and of the term's linear part ``sum_l p_l / s_l`` averaged over
    every probe batch: the slope the term has wherever it acts (tanh at p = 0, the hinge for
    p > 0). ``strength = multiple * task / term`` makes the term's gradient ``multiple`` times
    the task's, whatever the direction -- a calibration that sees no outcome.

    The gradients are those of the parameters that train (``requires_grad``: a LoRA model's
    adapters), accumulated forward by forward in their gradient buffers as training accumulates
    them, so memory holds one forward's graph and one gradient. ``micro_batch``: sequences per
    forward of the task loss (None: a batch at a time), for a model that trains with gradient
    checkpointing or accumulation; the term's probe batches are forwarded whole."""
    if micro_batch is not None:
        check_int("micro_batch", micro_batch, 1)
    params = [q for q in model.parameters() if q.requires_grad]
    grads = [q.grad for q in params]
    modes = [(m, m.training) for m in model.modules()]  # restored module by module
    model.eval()  # dropout off: the same forward at every call

    def mean_norm(losses, n: int) -> float:
        """The norm of the mean over ``n`` batches of the gradients of ``losses`` (their parts)."""
        for q in params:
            q.grad = None
        for loss in losses:
            loss.backward()
        return float(torch.sqrt(sum((q.grad.double() ** 2).sum() for q in params if q.grad is not None))) / n

    try:
        task = mean_norm(_task_losses(model, task_batches, micro_batch), len(task_batches))
        term.setup(model, None, probes)
        try:
            n = len(term.probe_batches)
            g_term = mean_norm(((term.projection(model, i + 1) / term._scale).sum() for i in range(n)), n)
        finally:
            term.teardown()
    finally:
        for q, g in zip(params, grads):
            q.grad = g
        for m, mode in modes:
            m.training = mode
    if not g_term > 0:
        raise ValueError(f"{term.name} along {term.direction}: the term has no gradient at theta_S")
    return {"task": task, "term": g_term, "ratio": task / g_term}


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
    """Safety-alignment examples in each benign batch (no access to any direction).

    ``mode="replace"``: they replace the batch's tail (the same batch size as the baseline, a
    quarter less benign data at fraction 0.25). ``mode="add"``: they are appended to the full
    benign batch, so the benign data equal the baseline's and the extra examples are the extra
    compute (``round(fraction * batch_size)`` sequences per step)."""
    name = "rehearsal"
    batches_only = True  # changes the data, not the model: runs train in groups
    MODES = ("replace", "add")

    def __init__(self, fraction: float, mode: str = "replace"):
        self.fraction = check_fraction("rehearsal fraction", fraction)
        if mode not in self.MODES:
            raise ValueError(f"rehearsal mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        self.mode = mode

    def key(self) -> dict:
        k = {"variant": self.name, "fraction": self.fraction}
        return k if self.mode == "replace" else {**k, "mode": self.mode}  # old keys stay valid

    def group_tag(self, ft) -> str:
        """Runs whose batches differ in size cannot share a group."""
        return f"+{_share(ft.batch_size, self.fraction)}" if self.mode == "add" else ""

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
            safety = [(q.prompt, data.refusal_answer) for q in harm]
            # Replace the tail: the benign head keeps the baseline's data order.
            yield batch + safety if self.mode == "add" else batch[: len(batch) - k] + safety

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
