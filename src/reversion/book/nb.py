"""Helpers for the papermill-parameterized notebooks.

Papermill injects parameters after the cell tagged ``parameters`` and only *warns*
about names the notebook does not declare. Every notebook therefore starts with
:func:`begin` and, after its parameters, calls :func:`parameters` with the chapter's
schema, which refuses unknown names, missing names and wrong types before any work.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")
_SNAPSHOT_KEY = "__reversion_names_before_parameters__"


def _user_ns() -> dict:
    from IPython import get_ipython

    ip = get_ipython()
    if ip is None:
        raise RuntimeError("reversion.nb works inside a notebook (IPython) only")
    return ip.user_ns


def begin() -> None:
    """Remember which names exist before the parameters cell (call in the first cell)."""
    ns = _user_ns()
    ns[_SNAPSHOT_KEY] = set(ns)
    import matplotlib

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
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(map(repr, unknown))}; "
                         f"this notebook accepts: {', '.join(fields)}")
    missing = [f for f in fields if f not in values]
    if missing:
        raise ValueError(f"missing parameter(s) {', '.join(map(repr, missing))}")
    for name in fields:
        if not _type_ok(values[name], hints[name]):
            raise ValueError(f"parameter {name!r} must be {hints[name]}, got "
                             f"{values[name]!r} ({type(values[name]).__name__})")
    return schema(**{k: values[k] for k in fields})


def parameters(schema: type[T]) -> T:
    """The chapter's parameters: every name defined since :func:`begin`."""
    ns = _user_ns()
    if _SNAPSHOT_KEY not in ns:
        raise RuntimeError("call reversion.nb.begin() in the notebook's first cell")
    before = ns[_SNAPSHOT_KEY]
    values = {k: v for k, v in ns.items()
              if k not in before and not k.startswith("_") and k not in ("In", "Out")}
    return collect(schema, values)


def glue(name: str, value: Any) -> None:
    """``myst_nb.glue`` without displaying: the prose pastes it with ``{glue:text}``."""
    from myst_nb import glue as _glue

    if hasattr(value, "item"):
        value = value.item()
    _glue(name, value, display=False)
