"""The package's layout is its architecture: every module sits in the folder of its layer and
imports only from its own layer and those below; the two subjects do not know each other;
there is no import cycle; and an import inside a function names a reason.

Layers, bottom to top: ``infra`` < ``core`` < ``subjects`` < ``stages`` < ``analysis`` (pure
functions from stage outputs to typed results and verdicts) < the entry points (``cli``,
``benchmark``, the public ``monitor`` API) and ``book``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from reversion.infra import provenance

SRC = Path(provenance.module_file("reversion")).parent
LAYER = {"infra": 0, "core": 1, "subjects": 2, "stages": 3, "analysis": 4,
         "cli": 5, "benchmark": 5, "monitor": 5, "book": 5}


def modules() -> list[str]:
    out = []
    for f in sorted(SRC.rglob("*.py")):
        parts = f.relative_to(SRC).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        out.append(".".join(("reversion", *parts)))
    return out


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYER.get(parts[1]) if len(parts) > 1 else None


def imports(module: str) -> set[str]:
    """Direct package imports, without the parent packages a module implies."""
    parents = {".".join(module.split(".")[:i]) for i in range(1, len(module.split(".")))}
    return set(provenance._direct_imports(module)) - parents


def test_every_module_is_in_a_layer():
    stray = [m for m in modules() if m not in ("reversion", "reversion.__main__") and layer(m) is None]
    assert not stray, f"modules outside the layers {sorted(LAYER)}: {stray}"


@pytest.mark.parametrize("module", [m for m in modules() if layer(m) is not None])
def test_no_import_from_a_higher_layer(module):
    up = [i for i in imports(module) if layer(i) is not None and layer(i) > layer(module)]
    assert not up, f"{module} (layer {layer(module)}) imports from a higher layer: {up}"


def test_the_subjects_do_not_know_each_other():
    for a, b in (("organism", "checkpoints"), ("checkpoints", "organism")):
        for m in modules():
            if m.startswith(f"reversion.subjects.{a}"):
                bad = [i for i in imports(m) if i.startswith(f"reversion.subjects.{b}")]
                assert not bad, f"{m} imports {bad}"


def test_stages_and_core_know_no_subject_implementation():
    for m in modules():
        if layer(m) in (LAYER["core"], LAYER["stages"]):
            bad = [i for i in imports(m) if i.startswith(("reversion.subjects.checkpoints",
                                                            "reversion.subjects.organism"))]
            assert not bad, f"{m} imports a subject implementation: {bad}"


def test_no_import_cycle():
    graph = {m: {i for i in imports(m) if i in set(modules())} for m in modules()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_the_planted_cycle_and_higher_import_are_caught(monkeypatch):
    """The checks above can fail: a core module that imports the book is caught."""
    real = provenance._direct_imports
    monkeypatch.setattr(provenance, "_direct_imports",
                        lambda m: real(m) | {"reversion.book.plots"} if m == "reversion.core.stats" else real(m))
    with pytest.raises(AssertionError, match="higher layer"):
        test_no_import_from_a_higher_layer("reversion.core.stats")


def test_package_imports_inside_functions_only_where_start_up_must_stay_light():
    """Only the command line defers the package's own modules (``reversion --help`` must not
    import torch); elsewhere they are imported at the top, where a reader sees them."""
    allowed = {"reversion.cli"}
    found = []
    for m in modules():
        tree = ast.parse(provenance.module_file(m).read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("reversion") \
                            and m not in allowed:
                        found.append(f"{m}:{node.lineno} {node.module}")
    assert not found, f"package imports inside functions: {found}"
