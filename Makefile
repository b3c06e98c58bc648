# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
TOOLS  := .tools
UV     := $(TOOLS)/bin/uv
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: setup demo demo-platform test lint bench clean system-deps locks

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv

$(VENV)/.installed: $(UV) pyproject.toml analyses/caliali/pyproject.toml analyses/framestats/pyproject.toml
	$(UV) venv --quiet --allow-existing $(VENV) --python $(PYTHON)
	$(UV) pip install --quiet --python $(PY) -e '.[test]' -e 'analyses/caliali[bench,isxd]' -e analyses/framestats
	touch $@

setup: $(VENV)/.installed

# The main job: caliali on a simulated 4-session experiment, through ncaas (embedded).
demo: setup
	$(PY) analyses/caliali/demo.py

# The platform alone, on the small test analysis (a few seconds).
demo-platform: setup
	$(PY) -m ncaas.demo

test: setup system-deps lint
	$(PY) -m pytest

# Style and types: ruff's formatter and rules on the whole tree, mypy on the platform (src/ncaas).
lint: setup
	$(VENV)/bin/ruff format --check --quiet .
	$(VENV)/bin/ruff check --quiet .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(TOOLS) ncaas-data demo-data

# Regenerate every analysis' hashed lock from its pyproject.toml (commit the result).
locks: setup
	$(VENV)/bin/ncaas env lock analyses/framestats
	$(VENV)/bin/ncaas env lock analyses/caliali
	$(VENV)/bin/ncaas env lock suite2p
	$(VENV)/bin/ncaas env lock minian

# Debian packages the server tests use: Chromium (browser test) and PostgreSQL 15; the Slurm
# executor's tests: Slurm 22.05 (slurmctld, slurmd, its commands, slurmdbd for sacct), munge, MariaDB;
# FFmpeg, which the hosted minian declares (its blueprint's environment.system).
system-deps:
	@missing=""; command -v chromium >/dev/null || missing="$$missing chromium"; \
	 ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	 command -v ffmpeg >/dev/null || missing="$$missing ffmpeg"; \
	 for p in slurmctld slurmd slurmdbd munged sbatch mariadbd; do [ -x /usr/sbin/$$p ] || [ -x /usr/bin/$$p ] || \
	   missing="$$missing $$(echo $$p | sed 's/munged/munge/; s/sbatch/slurm-client/; s/mariadbd/mariadb-server/')"; \
	 done; \
	 if [ -z "$$missing" ]; then :; \
	 elif [ "$$(id -u)" = 0 ]; then echo "installing Debian packages:$$missing"; \
	   { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
	     || echo "could not install$$missing; tests that need them will be skipped"; \
	 else echo "not root: cannot install$$missing; tests that need them will be skipped"; fi
