# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
TOOLS  := .tools
UV     := $(TOOLS)/bin/uv
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: setup demo test bench clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv

$(VENV)/.installed: $(UV) pyproject.toml analyses/caliali/pyproject.toml analyses/framestats/pyproject.toml
	$(UV) venv --quiet --allow-existing $(VENV) --python $(PYTHON)
	$(UV) pip install --quiet --python $(PY) -e '.[test]' -e analyses/caliali -e analyses/framestats
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m ncaas.demo

test: setup
	$(PY) -m pytest

clean:
	rm -rf $(VENV) $(TOOLS) ncaas-data demo-data
