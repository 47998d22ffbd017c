# Two commands do all the setup on a fresh machine (Python 3.11+):
#   make run    - build into .venv, then serve the gRPC API with demo data (127.0.0.1:50051)
#   make test   - build into .venv, then run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SOURCES := pyproject.toml setup.py $(wildcard settlement/_fast/*.pyx) $(wildcard proto/settlement/v1/*.proto)

.PHONY: run test bench bench-run drills lint clean

$(STAMP): $(SOURCES)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/settlement serve --demo --rulebook examples/rulebook.toml

test: lint
	$(PY) -m pytest tests -q
	$(PY) -m pytest bench -q --benchmark-disable

# The reliability drills, long version (the short one is part of `make test`).
drills: $(STAMP)
	SETTLEMENT_DRILLS=long $(PY) -m pytest tests/drills -q

bench: $(STAMP)
	mkdir -p bench/results
	$(PY) -m pytest bench --benchmark-only --benchmark-min-rounds=50 \
		--benchmark-json=bench/results/engine.json --benchmark-columns=min,median,mean,rounds
	$(PY) bench/report.py bench/results/engine.json

# One-command load harness: throw-away PostgreSQL, server, pgbench, report + plots
# in bench/results/harness/ (about 5 minutes; ARGS=--quick for a short run).
bench-run: $(STAMP)
	$(PY) bench/run $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check settlement server clients tests bench
	$(VENV)/bin/mypy settlement server clients bench

clean:
	rm -rf $(VENV) build *.egg-info settlement/_fast/*.c settlement/_fast/*.so
