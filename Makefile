# The two commands of the README: `make benchmark` and `make test`. Each builds .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cocu-installed
BENCH ?= default

# Nothing is downloaded at run time: fail fast instead of retrying the Hub, and keep optional telemetry off.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE := disabled
export TOKENIZERS_PARALLELISM := false

.PHONY: install test faults benchmark clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# SIGKILL trials of every stage (synth, build-bank, enrich, fit), each rerun and compared with a clean run, and the
# bad-input matrix. `make test` runs the same suite with one trial per stage.
FAULT_TRIALS ?= 10
faults: $(STAMP)
	COCU_FAULT_TRIALS=$(FAULT_TRIALS) $(PY) -m pytest -q tests/faults

benchmark: $(STAMP)
	$(PY) -m cocu.evaluation.benchmark --preset $(BENCH) --out benchmark

clean:
	rm -rf benchmark .pytest_cache
