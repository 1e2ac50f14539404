# Two entry points on a fresh machine: `make demo` and `make test` (both set everything up first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lenscope-installed
PYTEST_ARGS ?=

.PHONY: setup browser demo test test-all test-slow clean

# --no-deps from a fully pinned lock: no resolver may swap the CPU torch for a multi-GB CUDA build.
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)
	@echo "lenscope is installed in $(VENV): run '$(VENV)/bin/lenscope --help',"
	@echo "or 'source $(VENV)/bin/activate' first to put 'lenscope' on your PATH."

DEMO_ARGS ?=
demo: setup
	$(VENV)/bin/lenscope demo $(DEMO_ARGS)

# The browser test drives Debian's chromium (installed once, needs root + apt on a fresh machine).
browser:
	bash scripts/install-browser.sh

test: setup browser
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: setup browser
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) model_repository/cpu model_repository/gpu .pytest_cache
