# The two commands a new machine needs: `make demo` and `make test`. Only Python 3.11+ is required.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
REPO   := feature_repo

.PHONY: demo test lint validate-compose bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(VENV)/.installed $@

## demo: install, generate the example data, apply feature_repo/, materialize, print a training set
demo: $(VENV)/.installed
	$(BIN)/feature-store --repo $(REPO) generate-data
	$(BIN)/feature-store --repo $(REPO) apply
	$(BIN)/feature-store --repo $(REPO) materialize
	$(BIN)/feature-store --repo $(REPO) training-set --entities data/entity_rows.parquet \
		--service fraud_model_v1 --output $(REPO)/data/train.parquet

## test: install with dev extras and run the whole suite on two processes (starts a throwaway Redis if none is reachable; 17 min 14 s on 2 quiet cores on 2026-12-05, Spark included, 26 min 28 s beside two busy loops)
# PYTHONDONTWRITEBYTECODE= : some machines set it, and then every test process and every CLI a test runs compiles
# the package and rewrites the tests' asserts anew (5 s of each run's collection alone)
test: $(VENV)/.dev-installed
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n 2

## test-fast: the developers' tier (50-57 s on 2 quiet cores on 2026-12-05): no server processes, kill -9 trials or deliberate waits, no Spark (a JVM and minutes of its tests) and no Redis Cluster (six servers per test process): `make test` runs those; fewer hypothesis examples
test-fast: $(VENV)/.dev-installed
	PYTHONDONTWRITEBYTECODE= ONLINE_EXAMPLES=2 SEMANTICS_EXAMPLES=8 COMPACTION_EXAMPLES=5 FUZZ_EXAMPLES=20 \
		$(BIN)/python -m pytest -q -n 2 -m "not slow and not spark and not redis_cluster"

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check feature_store tests benchmarks
	$(BIN)/mypy feature_store

## validate-compose: docker-compose.yml against the official compose-spec schema (check-jsonschema, a dev extra,
## ships it: no Docker engine or network needed)
validate-compose: $(VENV)/.dev-installed
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/offline.py --size small

clean:
	rm -rf $(VENV) $(REPO)/data .pytest_cache .hypothesis
