# The two commands of the README: `make benchmark` and `make test`. Each builds .venv when it is missing.
# Also: `make test-fast` (the quick tier, no `slow` tests) and `make lint` (ruff and mypy, as CI runs them).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cocu-installed
BROWSER := $(VENV)/.cocu-browser
BENCH ?= default

# Nothing is downloaded at run time: fail fast instead of retrying the Hub, and keep optional telemetry off.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE := disabled
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-fast lint faults benchmark teacher clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test,ray]'
	touch $(STAMP)

# The gallery's browser test drives Debian's chromium through Playwright (whose own download needs its CDN).
# Installed when running as root with apt; otherwise that one test is skipped, and the build goes on.
$(BROWSER): | $(STAMP)
	@if command -v chromium >/dev/null 2>&1; then touch $@; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null 2>&1 \
			&& touch $@ || echo "chromium could not be installed: the browser test will be skipped"; \
	else echo "no chromium and not root: the browser test will be skipped"; fi

test: $(STAMP) $(BROWSER)
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# SIGKILL trials of every stage (synth, build-bank, enrich, fit), each rerun and compared with a clean run, and the
# bad-input matrix. `make test` runs the same suite with one trial per stage.
FAULT_TRIALS ?= 10
faults: $(STAMP)
	COCU_FAULT_TRIALS=$(FAULT_TRIALS) $(PY) -m pytest -q tests/faults

# BENCH_ARGS: e.g. --retrain-teacher (train the teacher CLIP in the run instead of using benchmarks/teacher/)
benchmark: $(STAMP)
	$(PY) -m cocu.benchmarks.benchmark --preset $(BENCH) --out benchmark $(BENCH_ARGS)

# The teacher CLIP that benchmarks/teacher/ ships, trained again with its recorded recipe (recipe.json).
teacher: $(STAMP)
	$(PY) -m cocu.benchmarks.teacher --preset $(BENCH) --work benchmark --out benchmarks/teacher

clean:
	rm -rf benchmark .pytest_cache
