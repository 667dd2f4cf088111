# The two commands of the README: `make benchmark` and `make test`. Each builds .venv when it is missing.
# Also: `make test-fast` (the quick tier, no `slow` tests) and `make lint` (ruff and mypy, as CI runs them).
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

.PHONY: install test test-fast lint faults benchmark teacher gpu-wheels gpu-install-check clean browser engines scale-check

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test,ray]'
	touch $(STAMP)

# The gallery's browser test drives a Chromium through Playwright: $COCU_CHROMIUM or one on the PATH; else Debian's
# chromium (apt, as root); else Playwright's own download. Checked on every `make test` (no stamp that could go stale).
# Where none can be had the test is skipped, except under CI=true: then this step and the test both fail.
browser: $(STAMP)
	@if [ -n "$$COCU_CHROMIUM" ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; \
	then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null 2>&1; then \
		echo "installed Debian's chromium for the browser test"; \
	elif $(PY) -m playwright install chromium >/dev/null 2>&1; then echo "installed Playwright's Chromium"; \
	elif [ "$$CI" = true ]; then echo "no Chromium (none found; apt and playwright install failed): CI fails"; exit 1; \
	else echo "no Chromium (none found; apt and playwright install failed): the browser test will be skipped"; fi

test: $(STAMP) browser
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

# The engine tests alone: a two-node Ray cluster started with `ray start` (separate processes), SLURM array shapes.
engines: $(STAMP)
	$(PY) -m pytest -q tests/engines

# Not part of `make test`: docs/scale.md's sbatch chain on a one-node SLURM cluster under a temporary folder, compared
# byte for byte with a plain run; installs slurm-wlm and munge (apt, as root) when missing; stops every daemon it starts.
scale-check: $(STAMP)
	PY=$(abspath $(PY)) bash tests/engines/slurm_scale_check.sh

# BENCH_ARGS: e.g. --retrain-teacher (train the teacher CLIP in the run instead of using benchmarks/teacher/)
benchmark: $(STAMP)
	$(PY) -m cocu.benchmarks.benchmark --preset $(BENCH) --out benchmark $(BENCH_ARGS)

# The teacher CLIP that benchmarks/teacher/ ships, trained again with its recorded recipe (recipe.json).
teacher: $(STAMP)
	$(PY) -m cocu.benchmarks.teacher --preset $(BENCH) --work benchmark --out benchmarks/teacher

# The GPU check's wheels (Python 3.12, x86-64) into .whl/, and the size a device call would carry (docs/scale.md).
gpu-wheels: $(STAMP)
	bash benchmarks/gpu_wheels.sh

# The GPU machine's install step in a fresh Python 3.12 venv holding what its image holds of cocu's needs (numpy,
# packaging, setuptools, pyarrow, typer): the carried wheels and cocu from the tree, offline; torch is not installed (its
# 3.12 CUDA wheels with their libraries are gigabytes), so what imports torch is left to the GPU machine.
PYTHON312 ?= $(shell command -v python3.12 >/dev/null 2>&1 && python3.12 -c "import sys; print(sys.executable)" 2>/dev/null \
	|| ls $$HOME/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | head -1)
gpu-install-check: $(STAMP)
	bash benchmarks/gpu_wheels.sh || [ $$? = 3 ]  # over the device's size limit still installs here
	rm -rf /tmp/cocu-gpu-venv /tmp/cocu-gpu-site && $(PYTHON312) -m venv /tmp/cocu-gpu-venv
	/tmp/cocu-gpu-venv/bin/pip install -q setuptools packaging numpy pyarrow typer
	COCU_SITE=/tmp/cocu-gpu-site PYTHON=/tmp/cocu-gpu-venv/bin/python bash benchmarks/gpu_check.sh --install-only
	PYTHONPATH=/tmp/cocu-gpu-site /tmp/cocu-gpu-venv/bin/python -c "import sys, faiss, ftfy, jsonargparse, \
	cocu.curation.core.shards, cocu.curation.core.configs; print('python', sys.version.split()[0], '| faiss', \
	faiss.__version__, '| cocu from', cocu.curation.core.shards.__file__)"

clean:
	rm -rf benchmark .pytest_cache
