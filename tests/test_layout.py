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

from reversion.analysis.verdicts import VERDICTS
from reversion.infra import provenance

SRC = Path(provenance.module_file("reversion")).parent
LAYER = {"infra": 0, "core": 1, "subjects": 2, "stages": 3, "analysis": 4,
         "cli": 5, "benchmark": 5, "design": 5, "monitor": 5, "book": 5}


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


# --------------------------------------------------------------------------- the book presents, never computes

BOOK_NEVER_IMPORTS = ("torch", "scipy", "reversion.core.stats")
"""What a page module needs only to compute: tensors, statistics."""
VERDICT_RULES = {"CONSISTENT", "NOT_SPECIFIC", "INCONCLUSIVE", "NOT_REPRODUCED", "NOT_TESTABLE", "verdict", "side",
                 "contrast_side", "failing_controls", "weaker"}
"""The names in :mod:`reversion.analysis.verdicts` that choose or name a particular verdict (the book
may import the vocabulary, ``VERDICTS``, to show one)."""


def _all_imports(tree: ast.AST) -> list[tuple[str, list[str]]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
    return out


def book_offences(source: str) -> list[str]:
    """What makes a book module compute: an import of torch, scipy or the statistics module, a
    verdict rule or constant imported, or a verdict written out as a literal."""
    tree = ast.parse(source)
    bad = []
    for module, names in _all_imports(tree):
        if any(module == f or module.startswith(f + ".") for f in BOOK_NEVER_IMPORTS) or \
                (module == "reversion.core" and "stats" in names):
            bad.append(f"imports {module}")
        if module.startswith("reversion.analysis") and VERDICT_RULES & set(names):
            bad.append(f"imports {sorted(VERDICT_RULES & set(names))} from {module}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in VERDICTS:
            bad.append(f"writes the verdict {node.value!r} (line {node.lineno})")
        if isinstance(node, ast.Attribute) and node.attr in VERDICT_RULES - {"side"} and \
                isinstance(node.value, ast.Name) and node.value.id == "verdicts":
            bad.append(f"uses verdicts.{node.attr} (line {node.lineno})")
    return bad


@pytest.mark.parametrize("module", [m for m in modules() if m.startswith("reversion.book")])
def test_the_book_presents_and_never_computes(module):
    """No module in ``book/`` imports torch, scipy or the statistics module, or assigns a verdict:
    every number and every verdict comes from the analysis layer."""
    bad = book_offences(provenance.module_file(module).read_text())
    assert not bad, f"{module}: {bad}"


def test_a_page_that_computes_or_judges_is_caught():
    """The check above can fail: each kind of offence, planted, is reported; a page that only
    formats passes."""
    assert book_offences("import torch\nfrom scipy import stats\n") == ["imports torch", "imports scipy"]
    assert book_offences("from reversion.core import stats\n") == ["imports reversion.core"]
    assert book_offences("from reversion.analysis.verdicts import CONSISTENT, VERDICTS\n") == \
        ["imports ['CONSISTENT'] from reversion.analysis.verdicts"]
    assert book_offences("def f(x):\n    return 'not reproduced' if x < 0 else 'fine'\n") == \
        ["writes the verdict 'not reproduced' (line 2)"]
    assert book_offences("from reversion.analysis.verdicts import VERDICTS\nimport pandas as pd\n"
                         "def table(rows):\n    return pd.DataFrame(rows)\n") == []


def test_the_analysis_layer_sits_below_the_book():
    """``book/`` imports the analysis layer and never the other way (the layer test above checks
    direction; this checks both layers exist and are used)."""
    analysis = [m for m in modules() if m.startswith("reversion.analysis.")]
    assert {"reversion.analysis.verdicts", "reversion.analysis.claims", "reversion.analysis.arms"} <= set(analysis)
    used = {i for m in modules() if m.startswith("reversion.book.chapters.") for i in imports(m)}
    assert {i for i in used if i.startswith("reversion.analysis.")}, "no page reads the analysis layer"


def _reading_list(page: str, analysis: str) -> set[str]:
    """The project modules below the book that a page module and its analysis module import
    directly (infrastructure -- argument checks, result files -- aside: it says nothing of what is
    computed)."""
    below = {i for m in (page, analysis) for i in imports(m)
             if layer(i) is not None and layer(i) < LAYER["book"] and not i.startswith("reversion.infra")
             and provenance.module_file(i).name != "__init__.py"}  # a package's own file holds only its docstring
    return below | {analysis}


def test_what_the_interventions_chapter_computes_is_four_files_below_its_page():
    """A newcomer reads the notebook, its page module and at most four modules below it: the
    analysis module and what the two import directly."""
    got = _reading_list("reversion.book.chapters.ch06_interventions", "reversion.analysis.arms")
    assert len(got) <= 4, sorted(got)
    assert got == {"reversion.analysis.arms", "reversion.analysis.arm_runs", "reversion.analysis.verdicts",
                   "reversion.core.stats"}


def test_no_module_name_is_used_twice_across_layers():
    """A module's name says which one it is: no two layers hold a module of the same name (the
    two subjects' ``subject`` modules share a layer and a role)."""
    layers_of: dict[str, set[int]] = {}
    for m in modules():
        name = m.split(".")[-1]
        if name not in ("reversion", "__main__") and layer(m) is not None:
            layers_of.setdefault(name, set()).add(layer(m))
    twice = {n: sorted(ls) for n, ls in layers_of.items() if len(ls) > 1}
    assert not twice, twice
