# The two commands a user needs: `make tour` and `make test`. Both create .venv on first use and
# re-install only when pyproject.toml changed since the last install.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: tour test lint clean-venv

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade --quiet pip

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install --quiet -e '.[dev,faces]'
	touch $(STAMP)

tour: $(STAMP)
	$(VENV)/bin/wherewhat tour

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean-venv:
	rm -rf $(VENV)
