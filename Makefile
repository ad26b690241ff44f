# jmappushd developer entry points. Both targets build .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: run test lint typecheck bench bench-smoke clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $(STAMP)

## run: the daemon in the foreground on etc/dev.ini (SQLite, 127.0.0.1:8080, demo/demo)
run: $(STAMP)
	printf 'demo\n' | $(BIN)/jmappushctl -c etc/dev.ini user add demo --password-stdin --exist-ok
	$(BIN)/twistd --nodaemon --pidfile= jmappushd --config etc/dev.ini

## test: lint, type-check, then the whole test suite
test: $(STAMP)
	$(BIN)/ruff check jmappushd tests twisted $(wildcard benchmarks)
	$(BIN)/mypy jmappushd twisted/plugins
	$(BIN)/mypy tests
	$(BIN)/python -m pytest -q tests

## fuzz: the property-based fuzz suite with many more random examples (a few minutes)
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz_*.py

## bench: the full benchmark suite (about 7 minutes); results in docs/benchmarks.*
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]' --config-settings editable_mode=compat
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info var
