# Generative Models with PyTorch: every set-up step lives here.
#   make book         virtualenv + pinned install + data + the HTML site in _build/html
#   make test         the same set-up, then every test: notebooks (strict nbval), structure, data, browser, Colab, JupyterLab
#   make execute      re-run every notebook in place to refresh its committed outputs
#   make bench        time each notebook fresh (wall seconds, peak memory) into _build/bench.md
#   make screenshots  PNGs of every page, light and dark, in _build/screenshots/
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard chapters/[0-9][0-9]_*.ipynb)) $(sort $(wildcard chapters/[A-Z]_*.ipynb))
MATHJAX := assets/mathjax-extra/mathjax/tex-chtml.js
ROOT_USER := $(shell [ "$$(id -u)" = 0 ] && echo yes)

# The test run's settings: progress bars off, and the CPU thread count fixed (2 threads on a
# 2-core machine is about twice as fast as 1 when nothing else runs).
export TQDM_DISABLE := 1
export GENBOOK_THREADS ?= 2
export PYDEVD_DISABLE_FILE_VALIDATION := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv data mathjax book test test-fast execute bench screenshots browser-deps clean

help:
	@sed -n '2,6p' Makefile | sed 's/^# \{0,1\}//'

venv: $(STAMP)
$(STAMP): requirements.txt
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	@touch $@

# Fashion-MNIST, checked by SHA-256 (torchvision's download, else Debian's dataset-fashion-mnist),
# then the book's evaluation classifier, trained once on the CPU and kept in data/.
data: venv
	$(BIN)/python chapters/genbook.py data
	$(BIN)/python chapters/genbook.py classifier

# MathJax 3 from the npm registry, copied into the site so that math renders offline.
mathjax: $(MATHJAX)
$(MATHJAX):
	@command -v npm >/dev/null || { [ -n "$(ROOT_USER)" ] && apt-get install -y -q npm >/dev/null; } \
	  || { echo "npm is needed to fetch MathJax (apt-get install npm)"; exit 1; }
	@tmp=$$(mktemp -d) && (cd $$tmp && npm pack --silent mathjax@3 >/dev/null && tar xzf mathjax-*.tgz) \
	  && rm -rf assets/mathjax-extra/mathjax && mkdir -p assets/mathjax-extra \
	  && cp -r $$tmp/package/es5 assets/mathjax-extra/mathjax && rm -rf $$tmp
	@echo "MathJax vendored in assets/mathjax-extra/mathjax"

book: venv data mathjax
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "The book is at $(CURDIR)/_build/html/index.html"

# A Chromium drives the browser tests, of the site and of JupyterLab: $$BOOK_CHROMIUM, Debian's
# chromium, Google Chrome or Playwright's own (tools/booksite.py's chromium_path()), else Debian's
# chromium installed with apt-get when root (Playwright cannot download its own browser here).
browser-deps: venv
	@$(BIN)/python -c 'import sys; sys.path.insert(0, "tools"); import booksite; sys.exit(not booksite.chromium_path())' \
	  || command -v chromium >/dev/null || { [ -n "$(ROOT_USER)" ] \
	  && (apt-get install -y -q chromium fonts-dejavu-core >/dev/null 2>&1 \
	      || (apt-get update -q >/dev/null && apt-get install -y -q chromium fonts-dejavu-core >/dev/null)); } \
	  || echo "WARNING: Chromium is not installed and could not be: the browser tests will be SKIPPED."

# tests/test_colab.py runs every chapter in a simulated Colab (COLAB_TEST=full: every chapter
# whole); tests/test_jupyterlab.py opens every chapter in JupyterLab (needs browser-deps).
test: book browser-deps
	$(BIN)/python -m pytest tests chapters --nbval -rs --durations=15

# The notebooks and structure only, without building the site.
test-fast: venv data
	$(BIN)/python -m pytest tests chapters --nbval --ignore=tests/test_browser.py \
	  --ignore=tests/test_jupyterlab.py --ignore=tests/test_colab.py -rs

execute: venv data
	$(BIN)/python tools/execute.py $(NOTEBOOKS)

bench: venv data
	@mkdir -p _build
	$(BIN)/python tools/bench.py $(NOTEBOOKS)

screenshots: book browser-deps
	cd tools && ../$(BIN)/python screenshots.py

clean:
	rm -rf _build
