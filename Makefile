# jmappushd developer entry points. Every target builds .venv on first use.
# `make help` lists them.

# The interpreter the venv is built from: python3.11 when it exists, else python3, which must
# be 3.11 or newer (setup.cfg's python_requires). Override with `make PYTHON=/path/to/python`.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: help run test lint typecheck pytest fuzz bench bench-smoke clean python-check

## help: this list
help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST)

python-check:
	@test -n "$(PYTHON)" || { echo "make: no python3.11 or python3 found; set PYTHON=..." >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	    echo "make: $(PYTHON) is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())'); jmappushd needs 3.11 or newer (make PYTHON=...)" >&2; exit 1; }

$(STAMP): setup.cfg pyproject.toml | python-check
	@echo "make: building $(VENV) with $(PYTHON) ($$($(PYTHON) -c 'import platform; print(platform.python_version())'))"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $(STAMP)

## run: the daemon in the foreground on etc/dev.ini (SQLite, 127.0.0.1:8080, demo/demo)
run: $(STAMP)
	printf 'demo\n' | $(BIN)/jmappushctl -c etc/dev.ini user add demo --password-stdin --exist-ok
	$(BIN)/twistd --nodaemon --pidfile= jmappushd --config etc/dev.ini

## test: lint, type-check, then the whole test suite (what CI runs)
test: lint typecheck pytest

## lint: ruff over the package, tests, plugin and benchmarks
lint: $(STAMP)
	$(BIN)/ruff check jmappushd tests twisted benchmarks

## typecheck: mypy (strict) over the package and plugin, then over the tests
typecheck: $(STAMP)
	$(BIN)/mypy jmappushd twisted/plugins
	$(BIN)/mypy tests

## pytest: the test suite alone
pytest: $(STAMP)
	$(BIN)/python -m pytest -q tests

## fuzz: the property-based fuzz suite with many more random examples (a few minutes)
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz_*.py

## bench: the full benchmark suite (about 7 minutes); results in docs/benchmarks.*
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]' --config-settings editable_mode=compat
	$(BIN)/python -m benchmarks

## bench-smoke: every benchmark at tiny sizes (a minute), results in var/bench-smoke/
bench-smoke: $(STAMP)
	$(BIN)/python -m benchmarks --smoke --no-profile --workdir var/bench-smoke --out-dir var/bench-smoke

## clean: remove the venv, build output and the development state in var/
clean:
	rm -rf $(VENV) build dist *.egg-info var
