# Everything runs from a project-local virtualenv that the targets create on demand,
# so a fresh machine with only python3 needs nothing else.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo demo-agent demo-fleet test lint typecheck unit test-slow test-faults fuzz test-browser bench bench-fleet clean proto

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The agent alone (kill a service, watch the fix), then the fleet loop (control plane, four
# agents, a rollout in waves, a fault fixed and reported, a bad bundle halted and rolled back).
demo: $(STAMP)
	$(BIN)/python -m agent.demo
	$(BIN)/python -m controlplane.fleet_demo

demo-agent: $(STAMP)
	$(BIN)/python -m agent.demo

demo-fleet: $(STAMP)
	$(BIN)/python -m controlplane.fleet_demo

lint: $(STAMP)
	$(BIN)/ruff check agent controlplane tests bench
	$(BIN)/ruff format --check agent controlplane tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q

# The default suite: lint, types, unit and integration tests (slow soak/fault tests excluded).
test: lint typecheck unit

# Soak and fault runs, kept out of `make test`.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The fault-injection suite (docs/testing.md): kill -9, netns partitions, full disk, bad SQLite,
# PostgreSQL restarts. Needs root for netns/tmpfs/private PostgreSQL; skips say why otherwise.
test-faults: $(STAMP)
	$(BIN)/python -m pytest -q -rs -m faults tests/e2e

# Hypothesis fuzz pass over the policy parser and the bundle verifier; prints inputs executed.
# STANCH_FUZZ_EXAMPLES=N sets the examples per target (default 3000).
fuzz: $(STAMP)
	$(BIN)/python -m pytest -q -m fuzz tests/fuzz

# The web console in headless Chromium (Debian's chromium; skipped with a reason without it),
# against a real control plane and agents; writes docs/screenshots/*.png.
test-browser: $(STAMP)
	$(BIN)/python -m pytest -q -m browser tests/console

# Regenerate stanch/ (protobuf + gRPC code) from proto/**/*.proto; commit the result.
proto: $(STAMP)
	$(BIN)/python proto/generate.py

bench: $(STAMP)
	$(BIN)/python bench/agent_bench.py

# The control plane against 10,000 simulated agents (bench/fleet_sim.py): connect, rollout,
# report ingestion, restart storm. Needs both cores for ~15 minutes; see BENCHMARKS.md.
bench-fleet: $(STAMP)
	$(BIN)/python bench/cp_bench.py --agents 10000 --runs 3

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache
