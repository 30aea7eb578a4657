# One command each: `make demo` runs the main job, `make test` passes the tests.
# Both create or refresh .venv, install the package and the offline assets, and are safe to rerun.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# On this project's machines these two wheels come from local disk; override for another platform.
TORCH ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev
STAMP := $(VENV)/.installed

.PHONY: install assets demo test lint docs bench bench-long bench-fashion-long bench-tweets bench-zero-shot clean

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
	$(BIN)/inhernet-bench demo

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/lint-imports

# The reference site, into build/site; --strict fails on any warning (a broken link, an unresolved API name).
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

test: assets lint docs
	$(BIN)/python -m pytest -q

# The runs behind BENCHMARKS.md (long: minutes per budget on a 2-core CPU).
bench: assets
	for b in 0.1 0.25; do OMP_NUM_THREADS=1 $(BIN)/inhernet-bench bench --preset mnist-cnn --budget $$b --seeds 3 \
		--steps 300 --batch-size 64 --out benchmarks/results || exit 1; done

# The 5-epoch mnist-cnn tables (issue 9), about 35 minutes each on 2 idle cores; resumable: each finished
# method-seed run is kept in benchmarks/parts/ and a rerun skips it.
LONG := --preset mnist-cnn --epochs 5 --batch-size 64 --seeds 3 --curve-points 20 --tune-lr --tune-steps 500 \
	--methods inhernet,inhernet-paper,svd-kd,prune-kd,kd-student
bench-long: assets
	OMP_NUM_THREADS=2 $(BIN)/inhernet-bench bench $(LONG) --budget 0.1 --part-dir benchmarks/parts/mnist-cnn-0.1-5ep \
		--json benchmarks/results/mnist-cnn-0.1-5ep.json
	OMP_NUM_THREADS=2 $(BIN)/inhernet-bench bench $(LONG) --budget 0.25 --part-dir benchmarks/parts/mnist-cnn-0.25-5ep \
		--json benchmarks/results/mnist-cnn-0.25-5ep.json
	OMP_NUM_THREADS=2 $(BIN)/inhernet-bench bench $(LONG),inhernet-prune --budget 0.25 --match macs \
		--part-dir benchmarks/parts/mnist-cnn-0.25-macs-5ep --json benchmarks/results/mnist-cnn-0.25-macs-5ep.json

# fashion-effnet, 2,000 steps at batch 64, 2 seeds, tuned lr, final accuracy on all 10,000 test images (issue 9):
# about 35 minutes per budget on 2 idle cores (the first run also fine-tunes and caches the teacher, ~7 minutes);
# resumable like bench-long.
FASHION := --preset fashion-effnet --steps 2000 --batch-size 64 --seeds 2 --curve-points 10 --full-test --tune-lr \
	--tune-steps 200 --methods inhernet,kd-student,prune-kd,svd-kd,inhernet-prune
bench-fashion-long: assets
	for b in 0.25 0.1; do OMP_NUM_THREADS=2 $(BIN)/inhernet-bench bench $(FASHION) --budget $$b \
		--part-dir benchmarks/parts/fashion-effnet-$$b-2000 --json benchmarks/results/fashion-effnet-$$b-2000.json || exit 1; done

# tweets-minilm (about 50 + 20 minutes on a shared 2-core CPU; the first run also fine-tunes and caches
# the teacher, about 13 minutes). layerdrop-kd does not depend on the budget, so 0.25 leaves it out.
bench-tweets: assets
	OMP_NUM_THREADS=1 $(BIN)/inhernet-bench bench --preset tweets-minilm --budget 0.5 --seeds 3 --steps 40 \
		--batch-size 32 --lr 1e-4 --curve-points 1 --methods inhernet,kd-student,layerdrop-kd --out benchmarks/results
	OMP_NUM_THREADS=1 $(BIN)/inhernet-bench bench --preset tweets-minilm --budget 0.25 --seeds 1 --steps 40 \
		--batch-size 32 --lr 1e-4 --curve-points 1 --methods inhernet,kd-student --out benchmarks/results

bench-zero-shot: assets
	$(BIN)/python -m inhernet_bench.scripts.zero_shot

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

# BENCHMARKS.md is generated from benchmarks/results/ and the captions in benchmarks/sections.toml.
.PHONY: benchmarks-md
benchmarks-md: install
	$(BIN)/python -m inhernet_bench.benchmarks_md
