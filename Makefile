# microgpt — developer commands. Run `make help` for the list.
#
# Installing torch: GPU users get the normal (CUDA) torch from uv.lock. Where a local CPU wheel of torch exists
# (our machines and CI: pip's find-links folder), `make sync` installs everything else from the lock and that
# wheel instead of the multi-GB CUDA stack (see ../shared/TOOLCHAIN.md and the README).

SHELL := /bin/bash
.DEFAULT_GOAL := help
unexport PYTHONDONTWRITEBYTECODE
export UV_PYTHON_DOWNLOADS := never

UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
# Where a CPU build of torch may lie: $PIP_FIND_LINKS, else pip's configured find-links.
WHEEL_DIR := $(or $(PIP_FIND_LINKS),$(shell pip config get global.find-links 2>/dev/null))
CPU_TORCH := $(firstword $(wildcard $(addsuffix /torch-*+cpu-cp311-*.whl,$(WHEEL_DIR))))
# Once the CPU wheel is in place, `uv run` must not re-sync (that would pull the CUDA build).
ifneq ($(CPU_TORCH),)
export UV_NO_SYNC := 1
endif
RUN := $(UV) run --no-sync

.PHONY: help sync lint lint-fix test jupyter demo

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

.tools/bin/uv:
	python3 -m venv .tools && .tools/bin/pip install -q uv==$(UV_VERSION)

.venv/.synced: uv.lock pyproject.toml | $(UV)
ifeq ($(CPU_TORCH),)
	$(UV) sync --locked --all-groups
else
	$(UV) sync --locked --all-groups --inexact \
		$$(grep -oE '^name = "(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)"' uv.lock | cut -d'"' -f2 \
			| sort -u | sed 's/^/--no-install-package /')
	$(UV) pip install --python .venv/bin/python $(CPU_TORCH)
endif
	@touch $@

sync: .venv/.synced  ## Install all dependencies (dev included) into .venv

lint: .venv/.synced  ## ruff check, ruff format --check, mypy --strict
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy

lint-fix: .venv/.synced  ## Fix what ruff can fix, then format
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

test: .venv/.synced  ## Run the tests with coverage (HTML report in .coverage_html)
	$(RUN) pytest --cov=microgpt --cov-report=term --cov-report=html $(PYTEST_ARGS)

jupyter: .venv/.synced  ## Open JupyterLab on notebooks/
	$(RUN) jupyter lab --no-browser --allow-root --notebook-dir=notebooks

demo: .venv/.synced  ## The main job: two-stage pipeline + soups on the bundled data (configs/demo.yaml, < 10 min on 2 cores)
	$(RUN) microgpt pipeline configs/demo.yaml $(DEMO_ARGS)
