# `make demo` and `make test` do all the setup on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-all bench clean

# torch is pinned and installed first: a bare `torch` requirement would pull GBs of CUDA wheels.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# Browser tests use Debian's chromium; it is installed here when missing (root) and never downloaded by a tool.
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "warning: chromium is missing (apt-get install chromium); browser tests will be skipped"; fi; fi
	touch $@

demo: $(VENV)/.installed
	$(BIN)/selfsup data fetch mnist
	$(BIN)/selfsup demo

# The slow end-to-end checks (each method learns; resume after SIGKILL; 2-process runs) take several
# minutes more on 2 cores, so `make test` (and CI) leave them to `make test-all`.
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not slow"

test-all: $(VENV)/.installed-test
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-test
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/augment.py

clean:
	rm -rf $(VENV) *.egg-info runs
