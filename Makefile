# Two entry points do all the set-up on a fresh machine: `make book` and `make test`.
# PROFILE=ci (default, small budgets) or PROFILE=full (the study behind the verdicts).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV    ?= .venv
PYTHON  ?= python3
PROFILE ?= ci
# Where pip finds torch's CPU build (the default PyPI wheel of torch for Linux is the CUDA build, gigabytes of
# nvidia-* packages). Set TORCH_INDEX_URL= (empty) where the CPU wheel is found otherwise (a local wheel folder, a
# mirror), or another index for another build. One retry only: where that index cannot be reached (an offline
# mirror of PyPI that serves the CPU build itself) pip would otherwise retry it five times before going on.
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
TORCH_PIN := $(shell grep -E '^torch==' requirements.txt)
BIN     := $(abspath $(VENV))/bin
PY      := $(BIN)/python
PIP     := $(PY) -m pip
# Notebook kernels ("python3") resolve `python` on PATH: put the venv first.
export PATH := $(BIN):$(PATH)
export PYTHONHASHSEED := 0
# CPU results depend on torch's thread count in the last bits: pin it, so stored chapter outputs re-validate.
# The SIMD kernels are pinned by qdiff_lib itself on import (qdiff_lib/numerics.py; QDIFF_NUMERICS=native opts out).
export OMP_NUM_THREADS := 2

CHAPTERS = $(shell $(PY) tools/toc_chapters.py)

.PHONY: help venv book execute html test recheck lint unit nbval build-check mathjax chromium browser-check bench study clean

help:
	@echo "make book    set up .venv, execute every chapter with papermill (PROFILE=$(PROFILE)), build _build/html"
	@echo "make test    set up .venv, lint, unit tests, nbval over every chapter, strict jupyter-book build, browser check"
	@echo "make recheck recompute the cheapest committed full-profile run end to end and compare every number (CI)"
	@echo "make bench   benchmarks (ratios against the alternatives, timed in the same run)"

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-nodeps.txt constraints.txt requirements-browser.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null || { \
	  echo "make: Python 3.11 or newer is needed (the pinned numpy, scipy and pandas require it); $(PYTHON) is" \
	       "$$($(PYTHON) --version 2>&1 || echo 'not found'). Run with PYTHON=python3.11 (or newer)." >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check --no-deps --retries 1 "$(TORCH_PIN)" \
	    $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL))
	$(PIP) install -q --disable-pip-version-check -r requirements.txt -c constraints.txt
	$(PIP) install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(PIP) install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PIP) install -q --disable-pip-version-check -r requirements-browser.txt
	$(PY) tools/check_env.py
	touch $@

# Execute each chapter into _build/executed first and store it only when it succeeded, so a failing chapter never
# leaves a half-written notebook behind; tools/execute_chapter.py stamps each with its commit, machine and numerics
# (read back by the reproducibility chapter, which comes last in the TOC).
execute: venv
	for nb in $(CHAPTERS); do \
	  $(PY) tools/execute_chapter.py "$$nb" $(if $(filter-out ci,$(PROFILE)),-p profile $(PROFILE)); \
	done

html: venv mathjax
	$(BIN)/jupyter-book build . -W -n --keep-going

book: execute html
	@echo "book: $(abspath _build/html/index.html)"

# ruff (pinned in requirements.txt, configured in pyproject.toml): pycodestyle, pyflakes, import order, bugbear,
# pyupgrade.
lint: venv
	$(BIN)/ruff check qdiff_lib bench tests tools

# The unit tests run on TEST_WORKERS processes at once (pytest-xdist, one test file per process at a time); each keeps
# OMP_NUM_THREADS torch threads, so no pinned result depends on how many processes share the machine. The chapters
# run one at a time: each kernel already uses OMP_NUM_THREADS threads (the count their stored outputs were computed
# with), and two at once on two cores took 17.7 min against about 10 one by one.
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)

# --durations: every log says where the time goes (issue 21 part 8: make test within 20 minutes on a slow machine).
# The end-to-end re-check of a committed full run (marker full_recheck, several minutes on one core) is left to
# make recheck, which CI runs after make test; make test re-checks the committed runs' first training steps exactly.
unit: venv
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 -m "not full_recheck" tests

recheck: venv
	$(BIN)/pytest -q -m full_recheck tests/test_study.py

nbval: venv
	cd chapters && $(BIN)/pytest -q -p no:cacheprovider --durations=15 --nbval \
	    --nbval-sanitize-with ../tests/nbval_sanitize.cfg --nbval-cell-timeout 1200 \
	    $(notdir $(CHAPTERS))

build-check: venv mathjax
	rm -rf _build/html _build/.doctrees
	$(BIN)/jupyter-book build . -W -n --keep-going

test: lint unit nbval build-check browser-check

# MathJax is served by the book itself (no CDN: formulas render without a network). npm installs the version pinned
# in package-lock.json into node_modules/, which _config.yml copies into _build/html/_static/.
MATHJAX := node_modules/mathjax/es5/tex-mml-chtml.js
mathjax: $(MATHJAX)

$(MATHJAX): package.json package-lock.json
	command -v npm >/dev/null || { echo "make: npm not found, installing Debian's npm"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; }
	npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $@

# Debian's Chromium for the browser check, installed when absent (as root, non-interactively, as CI runs).
CHROMIUM ?= /usr/bin/chromium
export CHROMIUM
chromium:
	test -x $(CHROMIUM) || { echo "make: $(CHROMIUM) not found, installing Debian's chromium"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# Every page of the built book in headless Chromium: no raw MyST markup or unresolved glue key, no traceback, every
# figure loaded, every formula rendered by the local MathJax, every internal link and anchor resolving, nothing
# fetched from another host. First the checker's own tests (it must catch each fault), then the book; screenshots
# go to _build/screenshots/.
browser-check: build-check chromium
	QDIFF_BROWSER_REQUIRED=1 $(BIN)/pytest -q tests/test_rendered_book.py
	$(PY) tools/browser_check.py _build/html --screenshots _build/screenshots

bench: venv
	$(PY) -m bench

study: venv
	$(PY) -m qdiff_lib study --profile full

clean:
	rm -rf _build
