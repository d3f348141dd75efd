# hitl: the two commands a new machine needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/hitl
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: demo demo-transfer demo-drift test install install-test assets data web worker beat label-studio label-studio-stop benchmark-ingest benchmark-label-studio benchmark-selection benchmark-strategies benchmark-labels clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

## The pages' script libraries, exactly as package-lock.json pins them (served as static files).
node_modules/.installed: package.json package-lock.json
	@command -v npm >/dev/null || scripts/system-packages.sh --npm
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

assets: node_modules/.installed
install: $(VENV)/.installed assets
install-test: $(VENV)/.installed-test assets

data:
	@scripts/system-packages.sh

## The main job on the embedded default: SQLite, no Postgres, no Label Studio.
demo: install data
	$(PY) manage.py migrate --verbosity 0
	$(PY) manage.py demo $(DEMO_ARGS)

## A cold start on RGB images (Fashion-MNIST made RGB) with the pretrained EfficientNet-Lite0.
demo-transfer: install data
	$(PY) manage.py migrate --verbosity 0
	$(PY) manage.py demo_transfer $(DEMO_ARGS)

## After `make demo`: the demo's deployment reports darker images; the monitor alerts and schedules a batch.
demo-drift: install data
	$(PY) manage.py migrate --verbosity 0
	$(PY) manage.py demo_drift $(DRIFT_ARGS)

## The tests, against the PostgreSQL and Redis running on this machine.
test: install-test
	@scripts/system-packages.sh --browser
	$(VENV)/bin/ruff check .
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m pytest $(PYTEST_ARGS)

web: install
	$(PY) manage.py migrate --verbosity 0
	$(PY) manage.py collectstatic --no-input --verbosity 0
	$(VENV)/bin/gunicorn hitl.wsgi --bind $(HOST):$(PORT) --workers 2 --access-logfile -

worker: install
	$(VENV)/bin/celery -A workers worker --loglevel INFO

beat: install
	$(VENV)/bin/celery -A workers beat --loglevel INFO

## Label Studio 1.23.2 in its own virtualenv (~/.cache/hitl), on 127.0.0.1:18080.
label-studio:
	@scripts/label-studio.sh start
	@scripts/label-studio.sh env

label-studio-stop:
	@scripts/label-studio.sh stop

benchmark-label-studio: install-test
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) benchmarks/label_studio.py

benchmark-selection: install-test
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) benchmarks/selection.py

## Sample efficiency of the query strategies (add QUICK=1 for the 15-minute version).
benchmark-strategies: install-test data
	$(PY) benchmarks/sample_efficiency.py $(if $(QUICK),--quick)

## hitl's default pipeline against random labels + supervised training (QUICK=1: the 15-minute
## version; DEVICE=cuda for the full run on a GPU).
benchmark-labels: install-test data
	$(PY) benchmarks/label_efficiency.py $(if $(QUICK),--quick) $(if $(DEVICE),--device $(DEVICE))

benchmark-ingest: install-test
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) benchmarks/ingest.py

clean:
	rm -rf var
