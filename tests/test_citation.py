"""How to cite: CITATION.cff is valid Citation File Format 1.2.0 for the software and lists the
paper; LICENSE is MIT, as pyproject.toml declares; the book's first page carries the BibTeX of
both, the paper's with its arXiv id.

Validation is offline, with the same check ``cffconvert --validate`` makes (the CFF 1.2.0 JSON
schema, YAML dates read as text): the ``cffconvert`` next to this interpreter when installed,
else the official schema file ``tests/data/cff-1.2.0.schema.json`` (committed: see
``tests/data/README.md``) with the pinned ``jsonschema``. (cffconvert 2.0.0, the latest, requires ``jsonschema<4``, which the pinned
``jsonschema==4.26.0`` of nbformat and jupyter-book rules out.) A planted broken file must fail
the same validation, so a validator that accepts everything fails the test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
CFF = ROOT / "CITATION.cff"
SCHEMA = ROOT / "tests" / "data" / "cff-1.2.0.schema.json"
ARXIV_ID = "2606.28525"
PAPER_TITLE = "A Gravitational Interpretation of Fine-Tuning Reversion"


def cffconvert() -> Path | None:
    exe = Path(sys.executable).parent / "cffconvert"
    return exe if exe.is_file() else None


class _TextDates(yaml.SafeLoader):
    """YAML without implicit timestamps: CFF dates are strings to the schema (as in cffconvert)."""


_TextDates.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def validate(path: Path) -> tuple[bool, str]:
    """(valid, what the validator said) for the CFF file at ``path``."""
    exe = cffconvert()
    if exe is not None:
        proc = subprocess.run([str(exe), "--validate", "-i", str(path)], capture_output=True,
                              text=True, timeout=120)
        return proc.returncode == 0, proc.stdout + proc.stderr
    if SCHEMA.is_file():
        import jsonschema  # noqa: PLC0415 (only on this path)

        schema = json.loads(SCHEMA.read_text())
        doc = yaml.load(path.read_text(), Loader=_TextDates)
        errors = sorted(jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())
                        .iter_errors(doc), key=lambda e: list(e.path))
        return not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    raise AssertionError(f"no CFF validator: neither {Path(sys.executable).parent / 'cffconvert'} nor {SCHEMA}")


def cff() -> dict:
    return yaml.load(CFF.read_text(), Loader=_TextDates)


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_citation_cff_is_valid():
    ok, said = validate(CFF)
    assert ok, f"{CFF} is not valid CFF 1.2.0:\n{said}"


@pytest.mark.parametrize("drop", ["authors", "message", "cff-version"])
def test_a_cff_without_a_required_key_fails_validation(tmp_path, drop):
    doc = cff()
    del doc[drop]
    broken = tmp_path / "CITATION.cff"
    broken.write_text(yaml.safe_dump(doc, sort_keys=False))
    ok, said = validate(broken)
    assert not ok, f"a CITATION.cff without {drop!r} passed validation:\n{said}"


def test_a_reference_without_its_type_fails_validation(tmp_path):
    doc = cff()
    del doc["references"][0]["type"]
    broken = tmp_path / "CITATION.cff"
    broken.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert not validate(broken)[0]


def test_citation_cff_describes_this_package_and_the_paper():
    doc, project = cff(), pyproject()
    assert doc["cff-version"] == "1.2.0" and doc["type"] == "software"
    assert str(doc["version"]) == project["version"]
    assert doc["license"] == project["license"]["text"] == "MIT"
    (paper,) = [r for r in doc["references"] if r["title"] == PAPER_TITLE]
    assert paper["type"] == "article"
    assert paper["authors"] and all("name" in a or "family-names" in a for a in paper["authors"])
    assert ARXIV_ID in paper["url"]
    assert f"arXiv:{ARXIV_ID}" in [i["value"] for i in paper["identifiers"]]


def test_license_is_mit_as_declared():
    text = (ROOT / "LICENSE").read_text()
    assert text.splitlines()[0] == "MIT License"
    assert "Copyright (c) 2026 The reversion team" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND" in text
    assert pyproject()["license"] == {"text": "MIT"}


def bibtex_entries() -> dict[str, tuple[str, dict[str, str]]]:
    """``{key: (type, fields)}`` of the fenced ``bibtex`` blocks of the book's first page."""
    from pybtex.database import parse_string

    blocks = re.findall(r"^```bibtex\n(.*?)^```$", (ROOT / "book" / "intro.md").read_text(),
                        flags=re.S | re.M)
    assert len(blocks) == 2, "the intro page shows two BibTeX blocks: the software and the paper"
    out = {}
    for block in blocks:
        for key, entry in parse_string(block, "bibtex").entries.items():
            fields = {k.lower(): str(v) for k, v in entry.fields.items()}
            fields["author"] = " and ".join(str(p) for p in entry.persons.get("author", []))
            out[key] = (entry.type.lower(), fields)
    return out


def test_the_intro_page_cites_the_paper_by_its_arxiv_id():
    (paper,) = [f for t, f in bibtex_entries().values() if t == "article"]
    assert paper["eprint"] == ARXIV_ID
    assert paper["archiveprefix"] == "arXiv"
    assert paper["title"] == PAPER_TITLE
    assert ARXIV_ID in paper["url"]


def test_the_intro_page_cites_the_software_as_citation_cff_does():
    (software,) = [f for t, f in bibtex_entries().values() if t == "software"]
    assert software["version"] == str(cff()["version"])
    assert software["license"] == cff()["license"]
    intro = (ROOT / "book" / "intro.md").read_text()
    assert "## How to cite" in intro
    assert "](../CITATION.cff)" in intro and "](../LICENSE)" in intro  # downloads in the book
