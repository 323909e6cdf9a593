# Quick start: `make bench` (the main job) and `make test`. Each sets up what it needs:
# a virtual environment in .venv, the dependencies, and the native extension.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; on a CUDA machine set TORCH_SPEC to the CUDA build you want.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
# The extras of pyproject.toml (the one list of dependencies): the commands' packages (tools),
# the test runner (test) and Triton (its interpreter runs the triton backend on the CPU).
EXTRAS ?= tools,test,triton
NATIVE_SOURCES := $(wildcard kernels/*/*.cpp kernels/*/*.cu kernels/*/*.h kernels/*/*.cuh)

.PHONY: setup test bench check install-check clean

# torch first, pinned (a bare `torch` would pull the multi-GB CUDA build), and the build
# backend: the editable install below builds without isolation, against this torch.
$(BIN)/.deps: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)" "setuptools>=64" wheel
	touch $@

# The editable install builds cnnops._C from kernels/ (C++ always, CUDA when torch has it)
# and installs the extras; the torch above already satisfies the requirement.
$(BIN)/.built: $(BIN)/.deps setup.py $(NATIVE_SOURCES)
	$(BIN)/pip install -q --no-build-isolation -e ".[$(EXTRAS)]"
	touch $@

setup: $(BIN)/.built

test: setup
	$(BIN)/python -m pytest -q -n 2 tests

bench: setup
	$(BIN)/python -m cnnops bench

check: setup
	$(BIN)/python -m cnnops check

# A fresh venv with wheel and the newest setuptools under the venv's own pip installs the
# project with the README's command (tests/test_install.py; a minute or two, no C++ build).
install-check: setup
	CNNOPS_INSTALL_TEST=1 $(BIN)/python -m pytest -q --noconftest tests/test_install.py

clean:
	rm -rf $(VENV) build *.egg-info cnnops/_C*.so
