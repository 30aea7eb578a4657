# One command each: `make demo` runs the main job, `make test` passes the tests.
# Both create or refresh .venv, install the package and the offline assets, and are safe to rerun.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# On this project's machines these two wheels come from local disk; override for another platform.
TORCH ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev
STAMP := $(VENV)/.installed

.PHONY: install assets demo test lint bench bench-zero-shot clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when the package metadata changes (the source is installed editable).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

assets: install
	bash scripts/install_assets.sh $(BIN)/python all

demo: assets
	$(BIN)/inhernet demo

lint: install
	$(BIN)/ruff check src tests benchmarks

test: assets lint
	$(BIN)/python -m pytest -q

# The runs behind BENCHMARKS.md (long: minutes per budget on a 2-core CPU).
bench: assets
	for b in 0.1 0.25; do OMP_NUM_THREADS=1 $(BIN)/inhernet bench --preset mnist-cnn --budget $$b --seeds 3 \
		--steps 300 --batch-size 64 --out benchmarks/results || exit 1; done

bench-zero-shot: assets
	$(BIN)/python benchmarks/zero_shot.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
