# The two commands README promises: `make run` (the main job) and `make test` (the suite).
# Both install into .venv first; torch is pinned to the CPU wheel before the project so the
# project's torch range is already met and no CUDA build is pulled.

VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: install run serve test test-faults test-integration test-all lint format benchmark benchmark-serve stack-up stack-down

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# Scale out: the Dask runner, PostgreSQL and S3 clients, and the emulated S3 endpoint.
$(VENV)/.installed-integration: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev,integration]"
	touch $@

run: install
	$(VENV)/bin/tailor run

serve: install
	$(VENV)/bin/tailor serve

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest

test-faults: install
	$(PY) -m pytest -m faults

test-integration: $(VENV)/.installed-integration
	bash deployments/install-servers.sh
	$(PY) -m pytest -m integration

test-all: lint $(VENV)/.installed-integration
	bash deployments/install-servers.sh
	$(PY) -m pytest -m ""

stack-up: $(VENV)/.installed-integration
	bash deployments/install-servers.sh
	$(PY) deployments/stack.py up --dir .stack

stack-down: install
	$(PY) deployments/stack.py down --dir .stack

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

benchmark: install
	$(PY) benchmarks/pipeline.py

benchmark-serve: install
	$(PY) benchmarks/serve_latency.py --workdir .tailor
