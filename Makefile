# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
PIP = $(VENV)/bin/python -m pip
# The CPU build of torch is enough for the demo and the tests; on a GPU machine install the torch
# build that matches its CUDA first (or set TORCH_SPEC), then `pip install .`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test install install-test clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

install: $(VENV)/bin/python
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q .

install-test: $(VENV)/bin/python
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[test]"

demo: install
	$(VENV)/bin/dnamamba demo

test: install-test
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf build dist *.egg-info runs .pytest_cache
