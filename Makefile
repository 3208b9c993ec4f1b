# Two commands on a fresh machine: `make demo` and `make test`. Everything else is installed here.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch: the CPU build where no CUDA GPU is present, the CUDA build where one is.
TORCH_VERSION ?= 2.13.0
TORCH_CUDA_INDEX ?= https://download.pytorch.org/whl/cu130
# Elsewhere, e.g. TORCH_CPU_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" avoids the CUDA wheel.
TORCH_CPU_PIP_ARGS ?=
EXTRAS ?= dev,trt-rtx

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  echo "CUDA GPU found: installing the CUDA build of torch $(TORCH_VERSION)"; \
	  $(BIN)/pip install -q "torch==$(TORCH_VERSION)" --extra-index-url $(TORCH_CUDA_INDEX); \
	else \
	  echo "No CUDA GPU: installing the CPU build of torch $(TORCH_VERSION)"; \
	  $(BIN)/pip install -q "torch==$(TORCH_VERSION)" $(TORCH_CPU_PIP_ARGS); \
	fi
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	@touch $(STAMP)

demo: install
	$(BIN)/sfda-deploy demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	PYTHONPATH=. $(BIN)/python scripts/adapt_speed.py
	PYTHONPATH=. $(BIN)/python scripts/runtime_speed.py
	PYTHONPATH=. $(BIN)/python scripts/export_fidelity.py

clean:
	rm -rf $(VENV) build *.egg-info
