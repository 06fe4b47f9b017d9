# Two entry points for a fresh machine:  make demo  and  make test
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# The real MiniLM at 2:4 twice: by magnitude, then calibrated (SparseGPT, the default with --calib) on
# sentences disjoint from the held-out ones fidelity is measured on; under 2 minutes on a quiet 2-core machine.
demo: $(STAMP)
	$(BIN)/graphprune compile models.zoo:minilm --pattern 2:4 --method magnitude \
		--eval models.zoo:minilm_eval_demo -o out/demo-magnitude
	$(BIN)/graphprune compile models.zoo:minilm --pattern 2:4 \
		--calib models.zoo:minilm_calib_demo --eval models.zoo:minilm_eval_demo -o out/demo
	$(BIN)/python -m models.demo out/demo-magnitude out/demo

test: $(STAMP)
	$(BIN)/ruff check graphprune models tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo 'pytest collected no tests (exit 5): failing'; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(BIN)/python benchmarks/compile_speed.py

clean:
	rm -rf out build *.egg-info .pytest_cache .mypy_cache .ruff_cache
