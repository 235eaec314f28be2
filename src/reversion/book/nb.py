"""Helpers for the papermill-parameterized notebooks.

Papermill injects parameters after the cell tagged ``parameters`` and only *warns*
about names the notebook does not declare. Every notebook therefore starts with
:func:`begin` and, after its parameters, calls :func:`parameters` with the chapter's
schema, which refuses unknown names, missing names and wrong types before any work.

The book hides papermill's injected cell; :func:`show_run` renders in its place what
the run used -- every parameter, marked where it differs from the notebook's default,
the world's effective settings -- and a provenance line (code identity, versions, date).
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import types
import typing
from typing import Any, TypeVar

import matplotlib
from IPython import get_ipython
from IPython.display import HTML, display

from reversion.infra.provenance import provenance

T = TypeVar("T")
_SNAPSHOT_KEY = "__reversion_names_before_parameters__"
_HISTORY_KEY = "__reversion_cells_before_parameters__"
_DEFAULTS_KEY = "__reversion_parameter_defaults__"


def _user_ns() -> dict:

    ip = get_ipython()
    if ip is None:
        raise RuntimeError("reversion.book.nb works inside a notebook (IPython) only")
    return ip.user_ns


def begin() -> None:
    """Remember which names exist before the parameters cell (call in the first cell)."""
    ns = _user_ns()
    ns[_SNAPSHOT_KEY] = set(ns) | {_HISTORY_KEY, _DEFAULTS_KEY}
    ns[_HISTORY_KEY] = len(ns.get("In", []))

    matplotlib.rcParams.update({"figure.dpi": 110, "savefig.bbox": "tight"})


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(hint) or (Any,)
        return isinstance(value, (list, tuple)) and all(
            inner is Any or inner is Ellipsis or _type_ok(v, inner) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if isinstance(hint, type):  # bare list, dict, ...
        return isinstance(value, hint)
    return True


def collect(schema: type[T], values: dict[str, Any]) -> T:
    """Build ``schema`` from ``values``: unknown, missing or mistyped names are errors."""
    hints = typing.get_type_hints(schema)
    fields = [f.name for f in dataclasses.fields(schema)]
    moved = getattr(schema, "MOVED", {})
    for name in values:
        if name in moved and name not in fields:
            raise ValueError(moved[name])
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(map(repr, unknown))}; "
                         f"this notebook accepts: {', '.join(fields)}")
    missing = [f.name for f in dataclasses.fields(schema) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"missing parameter(s) {', '.join(map(repr, missing))}")
    for name in fields:
        if not _type_ok(values[name], hints[name]):
            raise ValueError(f"parameter {name!r} must be {hints[name]}, got "
                             f"{values[name]!r} ({type(values[name]).__name__})")
    return schema(**{k: values[k] for k in fields if k in values})


def parameters(schema: type[T]) -> T:
    """The chapter's parameters: every name defined since :func:`begin`."""
    ns = _user_ns()
    if _SNAPSHOT_KEY not in ns:
        raise RuntimeError("call reversion.book.nb.begin() in the notebook's first cell")
    before = ns[_SNAPSHOT_KEY]
    values = {k: v for k, v in ns.items()
              if k not in before and not k.startswith("_") and k not in ("In", "Out")}
    ns[_DEFAULTS_KEY] = _defaults(ns)
    return collect(schema, values)


def _defaults(ns: dict) -> dict | None:
    """The values of the notebook's own parameters cell: the first cell run after :func:`begin`
    (papermill's injected cell, which follows it, starts with ``# Parameters``). None when the
    history does not show it (e.g. the cells were run out of order)."""
    cells = list(ns.get("In", []))[ns.get(_HISTORY_KEY, 0):]
    own = [c for c in cells if c.strip() and not c.lstrip().startswith("# Parameters")]
    if not own:
        return None
    scratch: dict = {}
    try:
        exec(compile(own[0], "<parameters>", "exec"), scratch)  # plain assignments
    except Exception:
        return None
    return {k: v for k, v in scratch.items() if not k.startswith("_")}


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def show_run(P: Any, world: Any = None, subject: Any = None, code: tuple[str, ...] = ()) -> None:
    """Render what produced this page: every parameter of ``P`` (marked *set for this run* where
    it differs from the notebook's default), the subject it ran on, the effective settings of
    ``world`` (when given), and a provenance line -- the code identity of ``code`` (the modules
    this chapter imports, :func:`reversion.infra.provenance.code_hash`), library versions and
    the date."""



    defaults = _user_ns().get(_DEFAULTS_KEY)
    rows = []
    for f in dataclasses.fields(P) if P is not None else ():
        value = getattr(P, f.name)
        if defaults is None or f.name not in defaults:
            how = ""
        else:
            how = "default" if defaults[f.name] == value else "<b>set for this run</b>"
        rows.append(f"<tr><td><code>{f.name}</code></td><td><code>{html.escape(repr(value))}</code></td>"
                    f"<td>{how}</td></tr>")
    table = ("<table><thead><tr><th>parameter</th><th>value</th><th></th></tr></thead><tbody>"
             + "".join(rows) + "</tbody></table>") if rows else "<p>This page has no parameters of its own.</p>"
    if subject:
        table += f"<p>Subject: {html.escape(subject.title())}.</p>"
    world_html = ""
    if world is not None:
        items = "".join(f"<tr><td><code>{k}</code></td><td><code>{html.escape(repr(v))}</code></td></tr>"
                        for k, v in _flat(world).items())
        world_html = (f"<details><summary>Effective world settings ({len(_flat(world))} fields)</summary>"
                      f"<table><tbody>{items}</tbody></table></details>")
    prov = provenance(code or None)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    line = (f"<p><small>Produced by reversion {prov['package_version']}, code {prov['code_hash'][:12]} "
            f"({'this chapter' if code else 'the package'}), torch {prov['torch_version']}, transformers "
            f"{prov['transformers_version']}, Python {prov['python_version']}, on {when} UTC.</small></p>")
    display(HTML(table + world_html + line))


def glue(name: str, value: Any) -> None:
    """``myst_nb.glue`` without displaying: the prose pastes it with ``{glue:text}``."""
    from myst_nb import glue as _glue

    if hasattr(value, "item"):
        value = value.item()
    _glue(name, value, display=False)


def notes(lines: list[str]) -> None:
    """Print a chapter's notes on its subject (nothing for the organism)."""
    for line in lines:
        print(line)
