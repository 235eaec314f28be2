"""What every experiment chapter's parameters share: the world they run in."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from reversion.subjects.checkpoints.subject import DEFAULT_REFUSAL
from reversion.subjects.organism.worlds import World, make_world

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


SUBJECT_FIELDS = ("witness", "aligned", "pretrained", "tokenizer", "prompts", "harmless", "finetune_data",
                  "dtype", "refusal_response", "max_new_tokens")


@dataclass(frozen=True, kw_only=True)
class SubjectParams(WorldParams):
    """World fields plus the checkpoint fields of chapters 02-05: empty paths run the
    organism; ``witness`` and ``aligned`` set run the same chapter on your own Hugging Face
    checkpoints (see :mod:`reversion.checkpoint_subject`). Relative paths are relative to the
    project root; the fields are keyword-only with organism defaults (a notebook declares them
    all in its parameters cell). In checkpoint mode the fine-tuning schedule is the world's
    (``world_overrides={"finetune": {"lr": ..., "steps": ..., "batch_size": ..., "eval_steps": [...]}}``)."""

    witness: str = ""
    """Helpful-only witness checkpoint theta_H, a local Hugging Face folder ("" = the organism)."""
    aligned: str = ""
    """Safety-aligned checkpoint theta_S ("" = the organism); fine-tuning starts from it."""
    pretrained: str = ""
    """Pretrained checkpoint theta_P for the v_P control ("" = no v_P with checkpoints)."""
    tokenizer: str = ""
    """Tokenizer folder ("" = the aligned checkpoint's). Its chat template is applied when it has one."""
    prompts: str = ""
    """Harmful probe prompts (JSONL 'prompt' field, CSV 'prompt' column, or one per line; >= 8):
    rows 0, 2, ... estimate v_rev, rows 1, 3, ... measure drift and are judged for harmfulness."""
    harmless: str = ""
    """Harmless prompts for the r_S control ("" = no r_S with checkpoints)."""
    finetune_data: str = ""
    """Benign fine-tuning pairs (JSONL / CSV with 'prompt' and 'response'): first 75% trained
    on, the rest held out for the task cost (chapters 03-05)."""
    dtype: str = "auto"
    """Weights' dtype with checkpoints: auto (as saved), float32, bfloat16 or float16. It applies to
    the models only read (v_rev estimation); the fine-tuned copy of theta_S trains in float32,
    because AdamW updates of a small learning rate round away on half-precision weights."""
    refusal_response: str = DEFAULT_REFUSAL
    """Answer of the safety examples with checkpoints (harmful prompt -> this refusal): used by
    the rehearsal variant (05) and the alignment-mix control runs (04)."""
    max_new_tokens: int = 32
    """Greedy tokens generated per held-out harmful prompt for the refusal-phrase judge."""

    def subject(self, need_finetune: bool = False):
        """The checked :class:`~reversion.checkpoint_subject.Subject`, or None for the organism.
        Raises ``ValueError`` naming the parameter at fault, before any work."""
        from reversion.subjects.checkpoints.subject import resolve_subject

        return resolve_subject(**{k: getattr(self, k) for k in SUBJECT_FIELDS}, need_finetune=need_finetune)

    def recorded(self) -> dict:
        """The parameters written to metrics.json: without the checkpoint fields when they
        are all empty, so organism metrics are unchanged by their existence."""
        d = dataclasses.asdict(self)
        if not self.witness and not self.aligned:
            for k in SUBJECT_FIELDS:
                d.pop(k)
        return d


def estimate(subject, world: World, n_probe: int, position: str = "last", n_boot: int = 200,
             min_stability: float = 0.9, progress: bool = True):
    """Stage ``estimate_vrev`` of the organism, or its checkpoint counterpart."""
    if subject is None:
        from reversion.stages.estimate import estimate_vrev

        return estimate_vrev(world.history, n_probe, position, n_boot, min_stability, progress)
    from reversion.subjects.checkpoints.subject import estimate as estimate_checkpoints

    return estimate_checkpoints(subject, position, n_boot, min_stability, progress=progress)


def finetune_jobs(subject, jobs: list, progress: bool = True) -> list:
    """:func:`reversion.finetune.finetune_many` over ``(history, ft, intervention)`` jobs for the
    organism; for checkpoints the same jobs one after another (a real model per worker process
    would not fit), through :func:`reversion.checkpoint_subject.finetune`."""
    if subject is None:
        from reversion.stages.finetune import finetune_many

        return finetune_many(jobs, progress)
    from reversion.subjects.checkpoints.subject import finetune as finetune_checkpoints

    return [finetune_checkpoints(subject, ft, iv, progress) for _, ft, iv in jobs]


def subject_notes(subject, world: World, finetunes: bool) -> list[str]:
    """What a chapter prints about its subject: nothing for the organism."""
    if subject is None:
        return []
    a = subject.arch
    notes = [f"Subject: your checkpoints ({a['model_type']}, {a['num_hidden_layers']} layers, width "
             f"{a['hidden_size']}), not the organism. witness = {subject.witness}, aligned = {subject.aligned}.",
             "v_rev is estimated on rows 0, 2, 4, ... of the prompt file; drift is measured (and "
             "harmfulness judged) on rows 1, 3, 5, ...; the organism's world and n_probe do not apply."]
    if finetunes:
        ft = world.finetune
        notes.append(f"Fine-tuning: AdamW, lr {ft.lr:g}, {ft.steps} steps, batch {ft.batch_size}, on the first "
                     "75% of the benign pairs (set with world_overrides['finetune']). Harmfulness: refusal-"
                     f"phrase judge on {subject.max_new_tokens} greedy tokens; task cost: held-out loss per "
                     "response token (there is no task accuracy for text).")
    if subject.pretrained is None:
        notes.append("No pretrained checkpoint: the v_P control is not computed.")
    if subject.harmless is None:
        notes.append("No harmless prompts: the r_S control is not computed.")
    return notes
