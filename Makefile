# Quick start: `make bench` (the main job) and `make test`. Each sets up what it needs:
# a virtual environment in .venv, the dependencies, and the native extension.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; on a CUDA machine set TORCH_SPEC to the CUDA build you want.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
DEPS := numpy tqdm matplotlib scikit-learn pytest pytest-benchmark pytest-xdist "triton>=3.6"
NATIVE_SOURCES := $(wildcard kernels/*/*.cpp kernels/*/*.cu kernels/*/*.h kernels/*/*.cuh)

.PHONY: setup test bench check clean

$(BIN)/.deps: setup.py Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q $(DEPS)
	touch $@

# The editable install builds cnnops._C from kernels/ (C++ always, CUDA when torch has it).
$(BIN)/.built: $(BIN)/.deps $(NATIVE_SOURCES)
	$(BIN)/pip install -q --no-build-isolation --no-deps -e .
	touch $@

setup: $(BIN)/.built

test: setup
	$(BIN)/python -m pytest -q -n 2 tests

bench: setup
	$(BIN)/python -m cnnops bench

check: setup
	$(BIN)/python -m cnnops check

clean:
	rm -rf $(VENV) build *.egg-info cnnops/_C*.so
