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

demo: $(STAMP)
	$(BIN)/graphprune compile models.zoo:minilm --pattern 2:4 -o out/demo

test: $(STAMP)
	$(BIN)/ruff check graphprune models tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo 'pytest collected no tests (exit 5): failing'; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(BIN)/python benchmarks/compile_speed.py

clean:
	rm -rf out build *.egg-info .pytest_cache .mypy_cache .ruff_cache
