# Atrium — the two commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test test-sqlite test-postgres bench clean-venv check-config demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt $(VENV)/.runtime
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

## make run: start Atrium on 127.0.0.1:8008 (writes ./homeserver.yaml on first start)
run: $(VENV)/.runtime
	$(BIN)/gunicorn -k gevent web:app

## make demo: three federating Atrium servers on loopback (TLS, one user each); Ctrl-C stops them
demo: $(VENV)/.runtime
	$(BIN)/python -m atrium demo $(DEMO_ARGS)

check-config: $(VENV)/.runtime
	$(BIN)/python -m atrium check-config

## make test: the whole suite on SQLite, then the store-backed part on PostgreSQL
test: $(VENV)/.dev
	$(BIN)/python -m tools.run_tests

test-sqlite: $(VENV)/.dev
	ATRIUM_TEST_DB=sqlite $(BIN)/python -m pytest -q

test-postgres: $(VENV)/.dev
	ATRIUM_TEST_DB=postgres $(BIN)/python -m pytest -q --ignore=tests/protocol --ignore=tests/supervision

## make bench: every benchmark, Atrium only (add SYNAPSE=1 to run Synapse beside it)
bench: $(VENV)/.dev
	$(BIN)/python bench/protocol_signing.py
	$(BIN)/python bench/protocol_stateres.py
	$(BIN)/python bench/rooms_send.py $(if $(SYNAPSE),--synapse,)
	$(BIN)/python bench/sync_wake.py $(if $(SYNAPSE),--synapse,)
	$(BIN)/python bench/keys_query_claim.py
	$(BIN)/python bench/media_large_upload.py
	$(BIN)/python bench/federation_outage.py

clean-venv:
	rm -rf $(VENV)
