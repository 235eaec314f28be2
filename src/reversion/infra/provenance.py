"""Identity of the code that produced a number: which modules, which versions, which device.

Cache keys and notebook stamps hash the code a result *depends on*, not the whole package:
:func:`code_hash` follows the package-internal imports of the named modules (statically,
from their source: imports inside functions count too) and hashes the files of that
closure. Editing a plotting module therefore changes the identity of the notebooks that
draw with it and of nothing that trains.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import platform
from pathlib import Path
from typing import Iterable

import reversion
from reversion.infra import kernels

PACKAGE = "reversion"


@functools.lru_cache(maxsize=1)
def _root() -> Path:
    # resolved once: a cache lookup walks an import closure of dozens of modules, and resolving
    # the root for each of them was most of a lookup's cost
    return Path(reversion.__file__).resolve().parent


def module_file(name: str) -> Path:
    """The source file of a package module, e.g. ``reversion.core.stats``."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        raise ValueError(f"{name!r} is not a module of the {PACKAGE} package")
    rel = Path(*name.split(".")[1:])
    pkg = _root() / rel / "__init__.py"
    if pkg.is_file():
        return pkg
    mod = (_root() / rel).with_suffix(".py")
    if mod.is_file():
        return mod
    raise ValueError(f"no module {name!r} in {_root()}")


def _exists(name: str) -> bool:
    try:
        module_file(name)
        return True
    except ValueError:
        return False


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def _direct_imports(name: str) -> frozenset[str]:
    """Package modules that ``name`` imports anywhere in its source (cached per file version:
    a long-lived process, e.g. a test that edits a module, sees the edit)."""
    path = module_file(name)
    return _parse_imports(name, str(path), _stamp(path))


@functools.lru_cache(maxsize=None)
def _parse_imports(name: str, path_str: str, stamp: tuple[int, int]) -> frozenset[str]:
    path = Path(path_str)
    is_pkg = path.name == "__init__.py"
    here = name if is_pkg else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == PACKAGE or a.name.startswith(PACKAGE + "."):
                    out.add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod != PACKAGE and not mod.startswith(PACKAGE + "."):
                continue
            out.add(mod)
            for a in node.names:  # ``from reversion.infra import cache``: a submodule
                if _exists(f"{mod}.{a.name}"):
                    out.add(f"{mod}.{a.name}")
    # Importing a module runs its parent packages' __init__ too.
    parts = name.split(".")
    out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    out.discard(name)
    return frozenset(m for m in out if _exists(m))


def closure(modules: Iterable[str]) -> list[str]:
    """The package modules that ``modules`` depend on (themselves included), sorted."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        module_file(m)  # a typo in a module name is an error, not an empty closure
        seen.add(m)
        todo.extend(_direct_imports(m) - seen)
    return sorted(seen)


def _stamps(paths: tuple[str, ...]) -> tuple:
    out = []
    for p in paths:
        try:
            out.append(_stamp(Path(p)))
        except OSError:  # gone: the hash is recomputed (and names what is missing)
            out.append(None)
    return tuple(out)


_MEMO: dict[tuple[str, ...], tuple[tuple[str, ...], tuple, str]] = {}
"""``modules`` -> (the files hashed and their folders, their stamps, the hash)."""


def _hash(modules: tuple[str, ...]) -> str:
    # Following the closure stats every import of every module (3 ms a call; a book's cache
    # lookups made about a thousand calls). A repeated call re-checks only the stamps of the files
    # it hashed and of their folders (a module added there could join the closure): any change
    # recomputes it, so a long-lived process still sees an edit.
    memo = _MEMO.get(modules)
    if memo is not None and _stamps(memo[0]) == memo[1]:
        return memo[2]
    files = [m[len("file:"):] for m in modules if m.startswith("file:")]
    mods = closure(m for m in modules if not m.startswith("file:"))
    entries = [(m, str(module_file(m)), _stamp(module_file(m))) for m in mods]
    entries += [(f, f, _stamp(Path(f))) for f in sorted(files)]
    digest = _hash_files(tuple(entries))
    folders = tuple(sorted({str(Path(p).parent) for _, p, _ in entries}))
    # the files' stamps as read before hashing: an edit in between recomputes next time
    _MEMO[modules] = (tuple(p for _, p, _ in entries) + folders,
                      tuple(st for _, _, st in entries) + _stamps(folders), digest)
    return digest


@functools.lru_cache(maxsize=256)
def _hash_files(files: tuple[tuple[str, str, tuple[int, int]], ...]) -> str:
    h = hashlib.sha256()
    for m, path, _ in files:
        h.update(m.encode() + b"\0")
        h.update(Path(path).read_bytes() + b"\0")
    return h.hexdigest()


def code_hash(modules: Iterable[str] | None = None) -> str:
    """SHA-256 over the source of ``modules`` and everything they import from the package
    (default: every module of the package)."""
    if modules is None:
        root = _root()
        modules = [PACKAGE + "".join("." + p for p in f.relative_to(root).with_suffix("").parts
                                     if p != "__init__")
                   for f in root.rglob("*.py")]
    return _hash(tuple(sorted(set(modules))))


def code_of(modules: Iterable[str], *objects) -> tuple[str, ...]:
    """``modules`` plus the module of each object's class (a subject, an intervention), as names
    a cache key hashes with :func:`code_hash`. A class defined outside the package (in a
    notebook, a script) is named by its source file instead, so editing it still changes the
    key (``file:<path>``; its source is hashed, not followed)."""
    import inspect

    out = list(modules)
    for obj in objects:
        if obj is None:
            continue
        name = type(obj).__module__
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            out.append(name)
            continue
        try:
            out.append("file:" + str(Path(inspect.getsourcefile(type(obj))).resolve()))
        except (TypeError, OSError):  # defined interactively: no source to hash
            raise ValueError(f"{type(obj).__name__} is defined in {name!r} without a source file; cached stages "
                             "need its code to key their results: define it in a module") from None
    return tuple(out)


def versions() -> dict:
    """torch / transformers / Python versions (part of every cache key: numbers differ across them)."""
    import torch
    import transformers

    return {"torch_version": torch.__version__, "transformers_version": transformers.__version__,
            "python_version": platform.python_version()}


def device_kind() -> str:
    """Where stages compute and with what arithmetic: ``cpu:<pinned kernels>``
    (:func:`reversion.infra.kernels.signature`) or ``cuda:<device name>``."""
    import torch

    if kernels.compute_device().type == "cuda":
        return "cuda:" + torch.cuda.get_device_name(0)
    return "cpu:" + kernels.signature()


def provenance(modules: Iterable[str] | None = None) -> dict:
    """What produced a result: package version, the code hash of ``modules``, library versions."""
    return {"package_version": reversion.__version__, "code_hash": code_hash(modules), **versions()}
