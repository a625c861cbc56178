# Everything a fresh machine (Python 3.11+, pip, make) needs: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint types unit docs bench bench-large lock clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

## The zero-setup tour: synthetic usage, a 14-day backfill, a live summary; OTLP to localhost:4317 if a Collector listens.
demo: install
	$(BIN)/otel-llm-receiver demo

## The whole check CI runs: lint, types, and every test.
test: install lint types unit

lint: install
	$(BIN)/ruff check .

types: install
	$(BIN)/mypy

unit: install
	$(BIN)/python -m pytest

## Regenerate docs/metrics.md, otel_llm_receiver/names.py and docs/collector.md's Prometheus-name table from the catalog.
docs: install
	$(BIN)/python -m otel_llm_receiver.catalog > docs/metrics.md
	$(BIN)/python -m otel_llm_receiver.catalog --names > otel_llm_receiver/names.py
	$(BIN)/python -m tests.support.prometheus_names docs/collector.md

## Regenerate the image's hashed dependency lock (requirements/image.txt) with pip-tools; see docs/deployment.md.
lock: install
	$(BIN)/python -m pip install --quiet pip-tools
	PIP_CONFIG_FILE=/dev/null $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links --all-build-deps \
		--extra azure --extra bedrock --extra vertex-billing --extra focus --extra postgresql \
		--output-file requirements/image.txt pyproject.toml

bench: install
	$(BIN)/python benchmarks/ledger_apply.py
	$(BIN)/python benchmarks/export.py
	$(BIN)/python benchmarks/openai_poll.py
	$(BIN)/python benchmarks/response_size.py
	$(BIN)/python benchmarks/signals.py
	$(BIN)/python benchmarks/focus_export.py
	$(BIN)/python benchmarks/startup.py
	$(BIN)/python benchmarks/ledger_growth.py
	$(BIN)/python benchmarks/backfill_memory.py --days 7,14

## The 90-day backfill of a large organisation (about 1.1M API rows; 15-25 min for its 3 runs).
bench-large: install
	$(BIN)/python benchmarks/ledger_apply.py --sizes 1000000 --large
	$(BIN)/python benchmarks/backfill_memory.py --days 90

clean:
	rm -rf $(VENV) otel-llm-data .pytest_cache .mypy_cache .ruff_cache .hypothesis
