# Two fresh-machine commands: `make demo` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
PY_BOOT ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STACK := $(PY) -m tenant_migration.stack
STAMP := $(VENV)/.lock-installed
BYTECODE := $(VENV)/.bytecode-compiled
# A hosted platform (the bundled sample, or meterhub: docs/platform-profile.md) and its demo tenant.
PLATFORM ?= sample
DEMO_TENANT_sample := 3
DEMO_TENANT_meterhub := 2
DEMO_TENANT ?= $(DEMO_TENANT_$(PLATFORM))
PRESET ?= demo
WORKERS ?= 0

.PHONY: help system-deps venv stack-up stack-down stack-status stack-reset data demo test test-unit \
        test-integration lint lock clean bench-postgres bench-cassandra bench-load bench-gates bench-airflow bench-airflow-standalone bench-workers airflow-standalone

help:
	@echo "make demo    - set up everything and migrate tenant $(DEMO_TENANT) of the demo dataset (PLATFORM=sample|meterhub)"
	@echo "make test    - set up everything and run the whole test suite"
	@echo "make stack-up | stack-down | stack-status | stack-reset"
	@echo "make data PRESET=tiny|demo|bench [PLATFORM=meterhub]"
	@echo "make airflow-standalone - Airflow UI on http://127.0.0.1:18080 (user admin, password in .stack/airflow/simple_auth_manager_passwords.json)"
	@echo "make bench-postgres | bench-cassandra | bench-load | bench-gates | bench-airflow | bench-airflow-standalone | bench-workers - benchmarks"

system-deps:
	@scripts/install-system-deps.sh

# The venv is rebuilt from the lock whenever the lock changes; uv verifies every hash.
$(STAMP): requirements.lock
	@command -v $(PY_BOOT) >/dev/null || { echo "python 3.11 is required ($(PY_BOOT) not found)"; exit 1; }
	@test -x $(PY) || $(PY_BOOT) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check uv==0.13.9
	$(VENV)/bin/uv pip sync -q --require-hashes --python $(PY) requirements.lock
	@echo "$(CURDIR)/include" > $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/tenant_migration.pth
	@touch $(STAMP)

# Every task process imports Airflow, pandas and Great Expectations afresh. With
# PYTHONDONTWRITEBYTECODE set (as on these machines) no .pyc is ever cached and each import
# compiles from source: GX alone took 8.4 s of CPU instead of 4.2 s. Compile once, here.
$(BYTECODE): $(STAMP)
	$(PY) -m compileall -q -j 0 $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') >/dev/null
	@touch $(BYTECODE)

venv: $(STAMP) $(BYTECODE)

# WORKERS=N: the CeleryExecutor with Redis and N Celery workers on this machine (0: LocalExecutor).
stack-up: system-deps venv
	$(STACK) up --workers $(WORKERS)

stack-down:
	@if [ -x $(PY) ]; then $(STACK) down; fi

stack-status: venv
	$(STACK) status

stack-reset: venv
	$(STACK) reset

data: stack-up
	$(STACK) data $(PRESET) --platform $(PLATFORM)

demo: stack-up
	$(STACK) data demo --platform $(PLATFORM)
	$(STACK) demo-reset --platform $(PLATFORM)
	$(PY) -m tenant_migration.demo --tenant $(DEMO_TENANT) --platform $(PLATFORM)

# The tests load (and reload) the tiny dataset themselves. Lint first: it is cheap and fails fast.
test: stack-up lint
	$(PY) -m pytest

test-unit: venv
	$(PY) -m pytest tests/unit tests/dags

lint: venv
	$(VENV)/bin/ruff check dags include plugins tests bench
	$(VENV)/bin/mypy include/tenant_migration

lock:
	$(VENV)/bin/uv pip compile requirements.txt --python-version 3.11 --generate-hashes -o requirements.lock

# Benchmarks print ratios against a raw ceiling measured in the same run; the ratio is the last line.
bench-postgres: stack-up
	$(PY) bench/bench_catchup.py
	$(PY) bench/bench_postgres.py

bench-cassandra: stack-up
	$(PY) bench/bench_cassandra.py

bench-load: stack-up
	$(PY) bench/bench_load.py

# Gate time against copy time on the demo dataset (runs the demo migration; RUNS=3 for a spread).
bench-gates: stack-up
	$(PY) bench/bench_gates.py --tenant $(DEMO_TENANT) --runs $${RUNS:-1}

# Airflow's overhead on the last successful migration run (run `make demo` first).
bench-airflow: stack-up
	$(PY) bench/bench_airflow_overhead.py

# The same under a real `airflow standalone`: loads the demo data, resets the target, triggers the
# migration through the REST API with the form's conf RUNS times (default 2), measures each run.
bench-airflow-standalone: stack-up
	$(PY) bench/bench_airflow_overhead.py --standalone --tenant $(DEMO_TENANT) --runs $${RUNS:-2}

# The same under the CeleryExecutor with 1, then 2 workers (Redis and the workers started and
# stopped by the bench): the copy phase's and the DAG's wall with each, on the same data.
bench-workers: stack-up
	$(PY) bench/bench_airflow_overhead.py --celery $${COUNTS:-1,2} --tenant $(DEMO_TENANT) --runs $${RUNS:-1}

airflow-standalone: stack-up
	$(STACK) run -- $(VENV)/bin/airflow standalone

clean: stack-down
	rm -rf $(VENV)
