"""``reversion`` command line: estimate v_rev from your checkpoints, track drift along it.

::

    reversion estimate --witness H --aligned S --prompts harmful.jsonl --out v_rev.safetensors
    reversion track --directions v_rev.safetensors --aligned S --prompts harmful.jsonl run/checkpoint-*
    reversion track ... --watch run/ --interval 60
    reversion book [--force] [--only STEM] ...      (python -m reversion.book)

The commands parse and print; the work is the stages': ``estimate`` runs
:func:`reversion.stages.estimate.measure` on the command line's subject, ``track`` the tracking
stage (:mod:`reversion.stages.track`) on a
:class:`~reversion.subjects.checkpoints.reader.CheckpointReader`.

Checkpoints are local Hugging Face folders (``config.json`` + weights); nothing is
downloaded. Models load one at a time, on CUDA when present (``--device``), or straight where
``--device-map`` puts them (``auto``: over every GPU, then CPU RAM), in their saved dtype
(``--dtype``). Prompts go through the tokenizer's chat template when it has one
(``--chat-template``). ``estimate`` shows its progress on stderr when that is a terminal
(``--quiet``: never).

Exit status: 0 done; 2 an argument problem (a missing path, checkpoints of different families
or widths, an empty prompt file, a layer out of range, a device the machine lacks, a dtype it
cannot run), with a message naming the argument and the usage; 1 a failure after the arguments
were accepted -- a model that does not load, or memory that runs out (a model too large for the
memory free is found before loading) -- with one line naming the cause and, for memory, the
settings to try; 130 interrupted (Ctrl-C), with "stopped" on stderr, after keeping what was
done: ``track`` has written every row it read, ``estimate`` leaves nothing at ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from reversion.infra.checks import check_int
from reversion.subjects.checkpoints.files import (
    DTYPES,
    CheckpointError,
    LoadError,
    checkpoint_or_adapter,
    parse_device_map,
    torch_dtype,
)

__all__ = ["main", "build_parser"]

CHAT_TEMPLATE = {"auto": "auto", "on": True, "off": False}
TRACK_FIELDS = ("checkpoint", "step", "layer", "alignment", "projection", "drift_norm",
                "relative_projection", "threshold", "above")


# An argument problem: ``parser.error`` with this message. The checkpoint checks shared with
# the notebooks raise the same type.
_Fail = CheckpointError


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from reversion import __version__

    parser = argparse.ArgumentParser(
        prog="reversion",
        description="Estimate the reversion direction v_rev from your own checkpoints and track "
                    "fine-tuning drift along it (arXiv 2606.28525).")
    parser.add_argument("--version", action="version", version=f"reversion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tokenizer", metavar="PATH",
                        help="tokenizer folder (default: the --aligned checkpoint's)")
    common.add_argument("--chat-template", choices=tuple(CHAT_TEMPLATE), default="auto",
                        help="wrap each prompt in the tokenizer's chat template as a user turn with the "
                             "generation prompt: auto = when the tokenizer has one (default)")
    common.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="weights' dtype: auto = as saved (default)")
    common.add_argument("--device", default="auto",
                        help="torch device: auto = cuda when available, else cpu (default)")
    common.add_argument("--device-map", metavar="auto|DEVICE|JSON",
                        help="load the weights straight onto devices (from_pretrained's device_map) rather "
                             "than into CPU memory and then to --device: auto = spread over every GPU, then "
                             "CPU RAM; a device (cuda:0, cpu); or a JSON object of module names to devices")
    common.add_argument("--batch-size", type=int, default=16, metavar="N",
                        help="prompts per forward pass (default 16)")
    common.add_argument("--prompt-field", default="prompt", metavar="NAME",
                        help="field / column holding the prompt in JSONL / CSV files (default 'prompt')")

    est = sub.add_parser(
        "estimate", parents=[common], help="estimate v_rev (all layers) from a witness and an aligned checkpoint",
        description="v_rev = normalize(mean h_H(x) - mean h_S(x)) over harmful prompts x, at every layer "
                    "(layer l = hidden_states[l]); writes a safetensors file with v_rev, the control "
                    "directions, norms and metadata (chosen layer, matched-null p99 per layer).")
    est.add_argument("--witness", required=True, metavar="PATH", help="helpful-only witness checkpoint (theta_H)")
    est.add_argument("--aligned", required=True, metavar="PATH", help="safety-aligned checkpoint (theta_S)")
    est.add_argument("--pretrained", metavar="PATH", help="pretrained checkpoint (theta_P): adds the control v_P")
    est.add_argument("--base", metavar="PATH",
                     help="the local model that checkpoints given as LoRA adapters apply to (merged into it)")
    est.add_argument("--prompts", required=True, metavar="FILE",
                     help="harmful probe prompts: .jsonl ('prompt' field), .csv ('prompt' column) or .txt")
    est.add_argument("--harmless", metavar="FILE", help="harmless prompts: adds the control r_S (refusal direction)")
    est.add_argument("--layer", default="auto", metavar="INT|auto",
                     help="layer to record as chosen: an index in [0, L], or auto = the largest relative "
                          "displacement among stable intermediate layers (default)")
    est.add_argument("--position", choices=("last", "mean"), default="last",
                     help="activation of the last prompt token (default) or mean over prompt tokens")
    est.add_argument("--out", required=True, metavar="FILE.safetensors", help="output file")
    est.add_argument("--n-null", type=int, default=2000, metavar="N",
                     help="draws of the matched null per layer (default 2000)")
    est.add_argument("--n-boot", type=int, default=100, metavar="N",
                     help="split-half bootstrap draws for the layer rule (default 100)")
    est.add_argument("--min-stability", type=float, default=0.9, metavar="X",
                     help="split-half stability a layer needs to be chosen automatically (default 0.9)")
    est.add_argument("--seed", type=int, default=0, help="seed of the null and the bootstrap (default 0)")
    est.add_argument("--quiet", action="store_true",
                     help="no progress bar on stderr (shown only when stderr is a terminal)")

    tr = sub.add_parser(
        "track", parents=[common], help="alignment of drift with v_rev for a list of checkpoints (or a folder)",
        description="For each checkpoint: drift d = mean h_ckpt(x) - mean h_S(x) over the prompts, "
                    "alignment cos(d, v_rev), projection d.v_rev and ||d||, at the direction file's "
                    "layer (or --layer, or every layer with --all-layers).")
    tr.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT",
                    help="checkpoint folders; read in the order of the number ending their names "
                         "(checkpoint-500), the others after them as given")
    tr.add_argument("--directions", required=True, metavar="FILE", help="output of reversion estimate")
    tr.add_argument("--aligned", required=True, metavar="PATH", help="the aligned checkpoint theta_S (reference)")
    tr.add_argument("--base", metavar="PATH",
                    help="the local model LoRA adapter checkpoints apply to (default: --aligned, as when "
                         "theta_S itself was fine-tuned with LoRA); loaded once, adapters swapped on it")
    tr.add_argument("--prompts", required=True, metavar="FILE", help="harmful probe prompts")
    tr.add_argument("--layer", type=int, metavar="INT", help="layer (default: the direction file's)")
    tr.add_argument("--all-layers", action="store_true", help="also record every layer (in the CSV)")
    tr.add_argument("--position", choices=("last", "mean"),
                    help="position rule (default: the direction file's)")
    tr.add_argument("--threshold", type=float, metavar="X",
                    help="alignment threshold (default: the larger of the isotropic p99 and the file's "
                         "matched-null p99 at the layer; reversion.core.drift.null_threshold)")
    tr.add_argument("--threshold-null", type=float, metavar="K",
                    help="the threshold in null units: K times that default (the book's chapter 'The monitor's "
                         "early warning' measures what each K is worth); not with --threshold")
    tr.add_argument("--out", metavar="FILE.csv", help="write the rows to a CSV file")
    tr.add_argument("--watch", metavar="DIR",
                    help="poll DIR for new checkpoint folders (e.g. a Trainer's output_dir)")
    tr.add_argument("--interval", type=float, default=60.0, metavar="S", help="seconds between polls (default 60)")
    tr.add_argument("--max-polls", type=int, metavar="N", help="stop after N polls (default: until Ctrl-C)")

    est.set_defaults(_sub=est)
    tr.set_defaults(_sub=tr)
    sub.add_parser("book", add_help=False, help="execute the notebooks and build the book "
                                                "(python -m reversion.book; 'reversion book --help')")
    return parser


# --------------------------------------------------------------------------- argument checks


def _layer_arg(flag: str, value: Any, n: int) -> int:
    try:
        layer = int(value)
    except (TypeError, ValueError):
        raise _Fail(f"{flag}: expected an integer or 'auto', got {value!r}") from None
    if not 0 <= layer <= n:
        raise _Fail(f"{flag}: layer {layer} is out of range [0, {n}] for a model with {n} layers "
                    f"(0 = embeddings, {n} = after the final norm)")
    return layer


def _positive(flag: str, value: int, lo: int = 1) -> None:
    try:
        check_int(f"{flag}:", value, lo)
    except ValueError as exc:
        raise _Fail(str(exc)) from None


def _device_dtype(args):
    import torch

    from reversion.core.models import default_device

    dtype = torch_dtype(args.dtype)
    if args.device == "auto":
        device = default_device()
    else:
        try:
            device = torch.device(args.device)
        except (RuntimeError, ValueError):
            raise _Fail(f"--device: not a torch device: {args.device!r}") from None
    return device, dtype


def _device_map(args):
    """``--device-map`` as ``from_pretrained`` takes it (None when not given); an explicit
    ``--device`` beside it is an argument error (the map says where everything goes)."""
    device_map = parse_device_map("--device-map", args.device_map)
    if device_map is not None and args.device != "auto":
        raise _Fail(f"--device-map: give --device or --device-map, not both (got --device {args.device})")
    return device_map


def _fmt(x: Any, spec: str = ".4f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and x != x:
        return "nan"
    return format(x, spec)


# --------------------------------------------------------------------------- estimate


def _subject(args):
    """The command line's checkpoints as a subject (every prompt row estimates v_rev), checked
    as the chapters' ``checkpoints`` are, with errors naming the flags."""
    from reversion.subjects.checkpoints.subject import from_parameters

    if args.device != "auto":
        _device_dtype(args)  # a bad --device is an argument error
    given = {"witness": args.witness, "aligned": args.aligned, "pretrained": args.pretrained,
             "prompts": args.prompts, "harmless": args.harmless, "tokenizer": args.tokenizer,
             "base": args.base, "dtype": args.dtype, "device_map": _device_map(args)}
    absolute = {k: (str(Path(v).absolute()) if k not in ("dtype", "device_map") else v)
                for k, v in given.items() if v is not None and v != ""}
    try:
        return from_parameters(absolute, naming="flag", split_prompts=False,
                               chat_template=CHAT_TEMPLATE[args.chat_template], prompt_field=args.prompt_field,
                               device=None if args.device == "auto" else args.device,
                               batch_size=args.batch_size, seed=args.seed)
    except CheckpointError:
        raise
    except ValueError as exc:
        raise _Fail(str(exc)) from None


class _Progress:
    """The subject as :func:`~reversion.stages.estimate.measure` reads it, with a progress bar on
    stderr: :meth:`load` shows which checkpoint is loading, and a forward pre-hook on each loaded
    model's input embeddings counts the prompts of every batch it reads. The total is what
    ``measure`` reads: the probes through each model, the harmless prompts through theta_S and the
    probes again through the witness (its first answer token). Everything else is the subject's."""

    def __init__(self, subject):
        from tqdm import tqdm

        prompts = subject.prompts()
        roles = subject.roles()
        total = len(prompts.vrev) * (len(roles) + ("theta_H" in roles)) + len(prompts.harmless or ())
        self._subject = subject
        self.bar = tqdm(total=total, desc="estimate", unit="prompt", file=sys.stderr, leave=False, mininterval=0.5)

    def __getattr__(self, name: str):
        return getattr(self._subject, name)

    def load(self, role: str, **kw):
        self.bar.set_description(f"loading {role}")
        model = self._subject.load(role, **kw)
        self.bar.set_description(role)
        model.get_input_embeddings().register_forward_pre_hook(self._count)
        return model

    def _count(self, module, args) -> None:
        if args and hasattr(args[0], "shape"):
            self.bar.update(int(args[0].shape[0]))

    def close(self) -> None:
        self.bar.close()


def cmd_estimate(args) -> int:
    from reversion import __version__
    from reversion.core import stats
    from reversion.core.directions import Directions
    from reversion.infra import seeding
    from reversion.stages.estimate import measure
    from reversion.stages.nulls import matched_p99_by_layer
    from reversion.subjects.checkpoints.textdata import file_sha256, has_chat_template

    for flag in ("--batch-size", "--n-null"):
        _positive(flag, getattr(args, flag[2:].replace("-", "_")))
    _positive("--n-boot", args.n_boot, 2)
    if not 0 < args.min_stability < 1:
        raise _Fail(f"--min-stability: must lie in (0, 1), got {args.min_stability}")
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise _Fail(f"--out: the output file must end in .safetensors, got {args.out!r}")
    if out.exists() and out.is_dir():
        raise _Fail(f"--out: {args.out} is a directory")
    subject = _subject(args)
    arch = subject.arch()
    L = int(arch["num_hidden_layers"])
    fixed_layer = None if args.layer == "auto" else _layer_arg("--layer", args.layer, L)
    prompts = subject.prompts()
    templated = CHAT_TEMPLATE[args.chat_template] is True or (
        args.chat_template == "auto" and has_chat_template(subject.tok))
    device, _ = _device_dtype(args)
    where = f"device {device.type}" if subject.device_map is None else f"device map {args.device_map}"
    print(f"reversion estimate: {arch['model_type']}, L={L} layers, d={arch['hidden_size']}; "
          f"{len(prompts.vrev)} harmful prompts" + (f", {len(prompts.harmless)} harmless" if prompts.harmless else "")
          + f"; chat template {'on' if templated else 'off'}; position {args.position}; {where}")
    meta = {"checkpoints": {"witness": args.witness, "aligned": args.aligned, "pretrained": args.pretrained},
            "prompts_file": args.prompts, "prompts_sha256": file_sha256(args.prompts),
            "chat_template": templated, **arch, "reversion_version": __version__}
    # Progress only for a person watching: a log or a pipe gets stdout's lines and nothing else.
    shown = _Progress(subject) if not args.quiet and sys.stderr.isatty() else None
    try:
        est = measure(shown or subject, len(prompts.vrev), args.position, args.n_boot, args.min_stability, meta)
    except LoadError:  # a model that does not load: a failure (status 1), not an argument error
        raise
    except ValueError as exc:  # no direction: the message names the flags (the subject names its inputs)
        raise _Fail(str(exc)) from None
    finally:
        if shown is not None:
            shown.close()
    dirs = est.directions
    matched = matched_p99_by_layer(est.acts["S"], dirs.v_rev, args.n_null,
                                   seeding.rng(args.seed, "reversion-cli-estimate"))
    # None where the stability is undefined (every bootstrap half without displacement, e.g. an
    # embedding layer the training did not move): 0 only inside the layer rule.
    stability = [None if not est.stability[:, l].any() else float(est.stability[:, l].mean())
                 for l in range(est.stability.shape[1])]
    if fixed_layer is None:
        layer, reason = dirs.layer, dirs.meta["layer_reason"]
    else:
        layer, reason = fixed_layer, f"layer {fixed_layer}: given with --layer"
    d = int(arch["hidden_size"])
    meta = {**dirs.meta, "layer": int(layer), "layer_reason": reason, "stability": stability,
            "matched_p99": matched, "isotropic_p99": stats.isotropic_cos_quantile(d, 0.99),
            "n_null": args.n_null, "n_boot": args.n_boot, "seed": args.seed}
    dirs = Directions(dirs.v_rev, dirs.v_P, dirs.r_S, dirs.displacement_norm, dirs.activation_norm, meta)
    # Written whole or not at all: into a temporary folder beside --out (removed whatever happens,
    # Ctrl-C included), then renamed onto it.
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        os.replace(dirs.save(Path(tmp) / out.name), out)

    print(f"{'layer':>5} {'displacement':>12} {'relative':>9} {'stability':>9} {'matched p99':>11}")
    for l in range(L + 1):
        rel = float(dirs.displacement_norm[l] / dirs.activation_norm[l]) if dirs.activation_norm[l] > 0 else None
        mark = "  <- chosen" if l == layer else ""
        print(f"{l:>5} {_fmt(float(dirs.displacement_norm[l])):>12} {_fmt(rel):>9} "
              f"{_fmt(stability[l], '.3f'):>9} {_fmt(matched[l]):>11}{mark}")
    print(f"chosen {reason}")
    print(f"isotropic p99 at d={d}: {meta['isotropic_p99']:.4f}")
    print(f"wrote {args.out}")
    return 0


# --------------------------------------------------------------------------- track

# How the tracking stage's errors name its inputs here.
TRACK_NAMES = {"directions": "--directions", "layer": "--layer", "threshold": "--threshold",
               "threshold_null": "--threshold-null",
               "position": "--position", "watch": "--watch"}


class _Output:
    """The printed table and the ``--out`` CSV. The file is created with the first rows (or
    at the end of a run without any), so a run that fails before measuring anything --
    e.g. on a checkpoint that does not load -- leaves no file behind."""

    def __init__(self, path: str | None, width: int = 10):
        self.width = width
        self.file = None
        self.path = Path(path) if path else None
        if self.path is not None and self.path.is_dir():
            raise _Fail(f"--out: {path} is a directory")

    def _open(self) -> None:
        if self.path is None or self.file is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("w", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.file, fieldnames=TRACK_FIELDS)
        self.writer.writeheader()
        self.file.flush()

    def header(self) -> None:
        print(f"{'checkpoint':<{self.width}} {'step':>7} {'alignment':>9} {'projection':>11} {'drift_norm':>10} "
              f"{'above':>5}")

    def add(self, readings, layer: int) -> None:
        """Print the readings at ``layer`` and write every one to the CSV."""
        self._open()
        for r in readings:
            if self.file is not None:
                self.writer.writerow({k: ("" if getattr(r, k) is None else getattr(r, k)) for k in TRACK_FIELDS})
            if r.layer == layer:
                step = "-" if r.step is None else str(r.step)
                print(f"{r.checkpoint:<{self.width}} {step:>7} {r.alignment:>9.4f} {r.projection:>11.4f} "
                      f"{r.drift_norm:>10.4f} {'yes' if r.above else 'no':>5}", flush=True)
        if self.file is not None:
            self.file.flush()

    def close(self, finished: bool) -> None:
        if finished:
            self._open()  # a finished run without rows still writes its header
        if self.file is not None:
            self.file.close()


def cmd_track(args) -> int:
    """Parse, build the stage's tracker (:mod:`reversion.stages.track`) on a checkpoint reader,
    print each checkpoint's reading as it comes."""
    from reversion.stages.track import Checkpoint, TrackError, Tracker, in_step_order, read_directions, watch
    from reversion.subjects.checkpoints.reader import CheckpointReader

    if not args.checkpoints and not args.watch:
        raise _Fail("give CHECKPOINT folders to track, or --watch DIR")
    if args.watch and not Path(args.watch).is_dir():
        raise _Fail(f"--watch: not a directory: {args.watch}")
    if args.max_polls is not None:
        _positive("--max-polls", args.max_polls)
    if args.interval < 0:
        raise _Fail(f"--interval: must be >= 0, got {args.interval}")
    ckpts = in_step_order(Checkpoint(checkpoint_or_adapter(f"CHECKPOINT {c}", c)[0], c, f"CHECKPOINT {c}")
                          for c in args.checkpoints)
    _positive("--batch-size", args.batch_size)
    try:
        dirs = read_directions(args.directions, "--directions")
        device, _ = _device_dtype(args)
        device_map = _device_map(args)
        reader = CheckpointReader(args.aligned, args.prompts, base=args.base, tokenizer=args.tokenizer,
                                  chat_template=CHAT_TEMPLATE[args.chat_template], prompt_field=args.prompt_field,
                                  dtype=args.dtype, device=device if device_map is None else None,
                                  batch_size=args.batch_size, naming="flag", device_map=device_map)
        t = Tracker(dirs, reader, layer=args.layer, all_layers=args.all_layers, threshold=args.threshold,
                    position=args.position, names=TRACK_NAMES, threshold_null=args.threshold_null)
        for c in ckpts:
            t.check(c)
    except TrackError as exc:
        raise _Fail(str(exc)) from None
    out = _Output(args.out, max([10] + [len(c.label) for c in ckpts]) if not args.watch else 32)
    print(f"reversion track: layer {t.layer}; threshold {t.threshold:.4f} ({t.threshold_source}); "
          f"{t.n_prompts} prompts" + (" (the estimate's own prompts: a disjoint set avoids shared noise)"
                                      if t.same_prompts else ""))
    finished = stopped = False
    try:
        t.reference()
        out.header()
        for c in ckpts:
            out.add(t.read(c), t.layer)
        if args.watch:
            watch(t, args.watch, lambda readings: out.add(readings, t.layer), interval=args.interval,
                  max_polls=args.max_polls)
        finished = True
    except KeyboardInterrupt:  # every row read so far is written already: keep the file
        print("stopped", file=sys.stderr)
        finished = stopped = True
    finally:
        out.close(finished)
    if args.out:
        print(f"wrote {args.out}")
    return 130 if stopped else 0


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "book":
        from reversion.book import build as book

        return book.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return {"estimate": cmd_estimate, "track": cmd_track}[args.command](args)
    except LoadError as exc:  # the arguments were fine, the model is not: a failure, no usage
        return _failed(args, str(exc))
    except _Fail as exc:
        args._sub.error(str(exc))  # exits with status 2, message on stderr
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130
    except Exception as exc:
        from reversion.core.models import OUT_OF_MEMORY  # torch: loaded by the commands already

        if not isinstance(exc, OUT_OF_MEMORY):
            raise
        return _failed(args, _out_of_memory(args, exc))
    return 2  # pragma: no cover


def _failed(args, message: str) -> int:
    """Status 1 and one line on stderr naming the cause."""
    print(f"reversion {args.command}: error: {' '.join(message.split())}", file=sys.stderr)
    return 1


def _out_of_memory(args, exc: BaseException) -> str:
    """What ran out, and the settings to try: those a model found too large before loading says
    fit (:class:`~reversion.core.models.ModelTooLarge`), else the ones that lower memory and are
    not set already."""
    from reversion.core.models import ModelTooLarge

    if isinstance(exc, ModelTooLarge):
        return f"out of memory: {exc.message(flags=True)}"
    tries = []
    if args.dtype not in ("bfloat16", "float16"):
        tries.append("--dtype bfloat16 (float16 on a GPU without bfloat16)")
    if args.device_map != "auto":
        tries.append("--device-map auto (spreads the layers over every GPU, then CPU RAM)")
    if args.batch_size > 1:
        tries.append(f"a smaller --batch-size (now {args.batch_size})")
    cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"out of memory ({cause})" + (f"; try {', '.join(tries)}" if tries else "")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
