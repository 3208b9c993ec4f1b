# Two commands on a fresh machine: `make demo` and `make test`. Everything else is installed here.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0

# The install route of this machine (scripts/install_plan.py; README, "Install"): jetson (from
# /etc/nv_tegra_release: JetPack has no nvidia-smi), cuda13 (x86, driver >= 580), cuda12 (x86, driver
# 525-579) or cpu. Override with e.g. `make install ROUTE=cpu`.
TEGRA_RELEASE ?= /etc/nv_tegra_release
ROUTE ?= $(shell $(PYTHON) -m scripts.install_plan --tegra-release $(TEGRA_RELEASE))

# torch per route. Elsewhere than PyPI's CPU default, e.g. TORCH_CPU_PIP_ARGS="--index-url
# https://download.pytorch.org/whl/cpu" avoids the CUDA wheel on a CPU machine.
TORCH_CPU_PIP_ARGS ?=
TORCH_INDEX_cuda13 ?= https://download.pytorch.org/whl/cu130
TORCH_INDEX_cuda12 ?= https://download.pytorch.org/whl/cu126
# NVIDIA's wheels for JetPack 6 (torch and onnxruntime-gpu built for the board's CUDA 12.6).
JETSON_INDEX ?= https://pypi.jetson-ai-lab.io/jp6/cu126
JETSON_TORCH ?= torch

# One ONNX Runtime per route, never both (they share the `onnxruntime` module): the `cpu` extra
# (onnxruntime) or the `gpu` extra (onnxruntime-gpu); Jetson gets onnxruntime-gpu from JETSON_INDEX.
# TensorRT: `trt` (11.x, CUDA 13), `trt-cu12` (10.x, CUDA 12); Jetson uses JetPack's system TensorRT 10.
EXTRAS_cpu    ?= cpu
EXTRAS_cuda13 ?= gpu,trt
EXTRAS_cuda12 ?= gpu,trt-cu12
EXTRAS_jetson ?= fp16
# `make test` adds the test tools on top: pytest and, off Jetson, TensorRT for RTX (~230 MB, whose CPU
# builder checks the ONNX → engine path without a GPU). `make demo` does not install them.
TEST_EXTRAS_cpu    ?= dev,trt-rtx
TEST_EXTRAS_cuda13 ?= dev,trt-rtx
TEST_EXTRAS_cuda12 ?= dev,trt-rtx
TEST_EXTRAS_jetson ?= dev
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install demo test test-fast bench clean route

install: $(STAMP)

route:
	@$(PYTHON) -m scripts.install_plan --tegra-release $(TEGRA_RELEASE) --explain

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -m scripts.install_plan --tegra-release $(TEGRA_RELEASE) --explain >/dev/null
	@case "$(ROUTE)" in \
	  jetson) \
	    $(PYTHON) -m venv --system-site-packages $(VENV) && \
	    $(BIN)/pip install -q $(JETSON_TORCH) onnxruntime-gpu --index-url $(JETSON_INDEX) && \
	    $(BIN)/pip install -q -e ".[$(EXTRAS_jetson)]" ;; \
	  cuda13|cuda12) \
	    $(PYTHON) -m venv $(VENV) && \
	    $(BIN)/pip install -q "torch==$(TORCH_VERSION)" --extra-index-url $(TORCH_INDEX_$(ROUTE)) && \
	    $(BIN)/pip install -q -e ".[$(EXTRAS_$(ROUTE))]" ;; \
	  cpu) \
	    $(PYTHON) -m venv $(VENV) && \
	    $(BIN)/pip install -q "torch==$(TORCH_VERSION)" $(TORCH_CPU_PIP_ARGS) && \
	    $(BIN)/pip install -q -e ".[$(EXTRAS_cpu)]" ;; \
	  *) echo "unknown ROUTE '$(ROUTE)': use jetson, cuda13, cuda12 or cpu" >&2; exit 2 ;; \
	esac
	@touch $(STAMP)

demo: install
	$(BIN)/sfda-deploy demo

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[$(TEST_EXTRAS_$(ROUTE))]"
	@touch $(TEST_STAMP)

# ruff (lint and import order, configured in pyproject.toml) first, then the suite.
test: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# While developing: the suite without the end-to-end runs (tests marked `slow`: the demo, whole CLI flows).
test-fast: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/python -m scripts.adapt_speed
	$(BIN)/python -m scripts.runtime_speed
	$(BIN)/python -m scripts.export_fidelity

clean:
	rm -rf $(VENV) build *.egg-info
