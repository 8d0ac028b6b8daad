# mpupload — the two set-up commands are `make run` and `make test`; both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: venv system-deps services test unit run bench bench-smoke lint typecheck clean

$(STAMP): pyproject.toml setup.cfg
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages the integration tests need (Ceph RADOS Gateway); installed when missing.
system-deps:
	bash scripts/ensure-system-deps.sh

# PostgreSQL and Redis run on the development machines; started here when they are down.
services:
	bash scripts/ensure-services.sh

test: venv system-deps services
	bash scripts/run-tests.sh

unit: venv
	$(PY) -m pytest tests/unit -q

# The embedded demo: moto's S3 server as its own process, a sample file, an upload with the live bar.
run: venv
	$(PY) -m mpupload demo

# Every peer on a 1 GiB file (discard endpoint and moto); the fastest peers on a 4 GiB file (discard); every
# peer on a 100 MiB file (discard: start-up cost). mpupload's peak RSS is recorded in every run. Directory uploads:
# every peer on three generated trees (discard: 3 runs; moto: 1) and the 100,000-file start-up check. rclone is a
# Debian package: system-deps installs it. The cluster benchmark (network namespaces: run as root) simulates 1-3 hosts.
# Brokered against direct uploads (one API server signing): 1 GiB in 64 MiB and in 5 MiB parts, the 10,000-file tree.
bench: venv system-deps
	$(PY) -m benchmarks.run --size 1GiB --runs 3 --out benchmarks/results/1gib.json
	$(PY) -m benchmarks.run --size 4GiB --servers discard --peers mpupload,mpupload-bar,s5cmd,awscrt,boto3-tuned \
		--runs 3 --out benchmarks/results/4gib.json
	$(PY) -m benchmarks.run --size 100MiB --servers discard --runs 5 --out benchmarks/results/100mib.json
	$(PY) -m benchmarks.report benchmarks/results/1gib.json benchmarks/results/4gib.json \
		benchmarks/results/100mib.json --readme README.md
	$(PY) -m benchmarks.datasets --runs 3 --moto-runs 1 --out benchmarks/results/datasets.json --readme README.md
	$(PY) -m benchmarks.startup --out benchmarks/results/startup.json
	$(PY) -m benchmarks.bar_cost
	$(PY) -m benchmarks.push --out benchmarks/results/push.json --readme benchmarks/README.md
	$(PY) -m benchmarks.ingest --backend both --generators 1 --out benchmarks/results/ingest.json
	$(PY) -m benchmarks.ingest --backend postgresql --replicas 2 --broker-url redis://127.0.0.1:6379/0 \
		--generators 1 --out benchmarks/results/ingest-replicas.json
	$(PY) -m benchmarks.cluster --runs 2 --out benchmarks/results/cluster.json --readme README.md
	$(PY) -m benchmarks.brokered --size 1GiB --runs 5 --out benchmarks/results/brokered-64MiB-parts.json
	$(PY) -m benchmarks.brokered --size 1GiB --part-size 5MiB --runs 5 --out benchmarks/results/brokered-5MiB-parts.json
	$(PY) -m benchmarks.brokered --tree 10000 --runs 5 --out benchmarks/results/brokered-tree.json

bench-smoke: venv system-deps
	$(PY) -m benchmarks.run --smoke --out artifacts/bench-smoke.json
	$(PY) -m benchmarks.datasets --smoke --out artifacts/datasets-smoke.json

lint: venv
	$(PY) -m ruff check mpupload tests benchmarks

typecheck: venv
	$(PY) -m mypy

clean:
	rm -rf $(VENV) build dist *.egg-info artifacts .pytest_cache .mypy_cache
