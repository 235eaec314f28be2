# reversion -- build the book and run the tests.
#
#   make book   create .venv, fetch MathJax, execute every notebook, build the HTML
#   make test   create .venv, run the fast tests and the notebook tests
#
# Everything is installed from the package registries (PyPI, npm); nothing else
# is fetched.  `make help` lists the targets.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

PYTHON_BOOTSTRAP ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip
# Keyed on the *content* of the pins and the project metadata: `make venv`
# re-installs only when one of them changes (a fresh checkout's mtimes don't matter).
VENV_STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)

# MathJax 3 is served from the book itself (book/_static/mathjax), never from a CDN.
MATHJAX_VERSION   := 3.2.2
MATHJAX_INTEGRITY := sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==
MATHJAX_DIR       := book/_static/mathjax
MATHJAX_STAMP     := $(MATHJAX_DIR)/.version-$(MATHJAX_VERSION)

# Extra arguments for `python -m reversion.book` (e.g. BOOK_ARGS="--force").
BOOK_ARGS ?=
# Extra arguments for benchmarks/run.py (e.g. BENCH_ARGS="--no-book").
BENCH_ARGS ?=
# Extra arguments for pytest (e.g. PYTEST_ARGS="-k book -x").
PYTEST_ARGS ?=
# Test files run side by side, one process per core (pytest-xdist; a file's tests stay in one
# process, so its fixtures are built once; the browser tests are collected in test_notebooks.py,
# whose smoke execution of the chapters they share; TEST_PROCS=0 runs them here), each on one thread:
# two OpenMP pools per core make everything many times slower.
TEST_PROCS ?= auto
PYTEST     := OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_PROCS) --dist loadfile

.PHONY: help venv mathjax book test test-slow test-browser test-all benchmark design clean requirements

help: ## list the targets
	@echo "reversion -- make targets:"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  %-13s %s\n", $$1, $$2 }'
	@echo
	@echo "Quick start:  make book   (then open _build/html/index.html)"
	@echo "              make test"

venv: $(VENV_STAMP) ## create .venv and install the pinned requirements (idempotent)

$(VENV_STAMP):
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON_BOOTSTRAP)"; $(PYTHON_BOOTSTRAP) -m venv $(VENV); }
	$(PIP) install -r requirements.txt
	$(PIP) install -e . --no-deps
	rm -f $(VENV)/.installed-*
	touch $@

mathjax: $(MATHJAX_STAMP) ## fetch MathJax 3 (pinned) from npm into book/_static/mathjax (idempotent)

$(MATHJAX_STAMP):
	@command -v npm >/dev/null || { echo "npm is needed to fetch MathJax (apt-get install npm)" >&2; exit 1; }
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	  integrity=$$(cd "$$tmp" && npm pack mathjax@$(MATHJAX_VERSION) --json --silent | $(PYTHON_BOOTSTRAP) -c 'import json,sys; print(json.load(sys.stdin)[0]["integrity"])'); \
	  if [ "$$integrity" != "$(MATHJAX_INTEGRITY)" ]; then echo "MathJax tarball integrity mismatch: $$integrity" >&2; exit 1; fi; \
	  tar -xzf "$$tmp"/mathjax-$(MATHJAX_VERSION).tgz -C "$$tmp"; \
	  rm -rf $(MATHJAX_DIR); mkdir -p $(dir $(MATHJAX_DIR)); \
	  cp -R "$$tmp"/package/es5 $(MATHJAX_DIR); \
	  cp "$$tmp"/package/LICENSE $(MATHJAX_DIR)/LICENSE
	test -f $(MATHJAX_DIR)/tex-chtml.js
	test -d $(MATHJAX_DIR)/output/chtml/fonts/woff-v2
	touch $@

book: venv mathjax ## execute the notebooks (papermill, default parameters) and build the HTML book strictly
	$(PY) -m reversion.book $(BOOK_ARGS)
	@echo "Open _build/html/index.html"

# pytest exits 5 when it collects no test: that is a broken suite, not a pass,
# and make fails on any non-zero exit status, so it is never taken for success.
test: venv ## run the fast tests and the notebook tests (papermill + nbval at smoke parameters)
	$(PYTEST) $(PYTEST_ARGS)

test-slow: venv ## only the tests marked slow (end-to-end notebook runs; CI runs them after make test)
	$(PYTEST) -m slow $(PYTEST_ARGS)

test-browser: venv mathjax ## only the browser tests: the book at smoke parameters in headless Chromium
	$(PY) -m pytest tests/test_notebooks.py -k 'browser or builds_strictly or index_leads or screenshots or layout_check or stylesheet' $(PYTEST_ARGS)

test-all: venv ## also run the tests marked slow
	$(PYTEST) -m '' $(PYTEST_ARGS)

# Not part of `make book`: the book shows the latest benchmarks/results.json.
benchmark: venv mathjax ## measure costs and the book build (cold + warm, ~12 min); writes benchmarks/results.json
	$(PY) benchmarks/run.py $(BENCH_ARGS)
	$(PY) -m reversion.book $(BOOK_ARGS)

design: venv ## the organism's design study (minutes): candidates on 6 held-out histories; writes benchmarks/design_study.json
	$(PY) -m reversion.design $(DESIGN_ARGS)

requirements: ## re-pin requirements.txt from the current .venv
	{ sed -n '/^#/p' requirements.txt; \
	  $(PIP) freeze --exclude-editable | sed -E 's/^(torch==[0-9.]+)\+cpu$$/\1/'; } > requirements.txt.new
	mv requirements.txt.new requirements.txt

clean: ## remove the built HTML and the executed notebooks (keeps .venv, .cache, results)
	rm -rf _build book/executed
