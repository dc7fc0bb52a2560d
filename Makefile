# xsell: `make help` lists the targets. Every target bootstraps the virtualenv it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
GEN := gen
PROTO_SRC := $(shell find protos -name '*.proto')
GEN_STAMP := $(GEN)/.stamp
# What `buf breaking` compares the contracts with: committed main, so a change on a branch (or not yet
# committed) that breaks a field, an RPC or a package of a released contract fails lint.
BUF_AGAINST ?= ../.git\#branch=main,subdir=protos
# pytest-xdist workers for `make test`; each has its own NATS and PostgreSQL. TEST_WORKERS=0 runs in-process.
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-17s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	# The repository root and the generated stubs are importable from the venv, no install step.
	$(PY) -c "import sysconfig, pathlib; p = pathlib.Path(sysconfig.get_paths()['purelib']) / 'xsell-dev.pth'; p.write_text('$(CURDIR)\n$(CURDIR)/$(GEN)\n')"
	touch $(STAMP)

.PHONY: venv
venv: $(STAMP) ## Create the virtualenv and install the dependencies

# The operator CLI's console script (pyproject's [project.scripts]); the code comes from the tree.
XSELL_CLI := $(VENV)/bin/xsell
$(XSELL_CLI): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(XSELL_CLI)

.PHONY: cli
cli: $(XSELL_CLI) $(GEN_STAMP) ## Install the operator CLI as .venv/bin/xsell (docs/gateway.md)

$(GEN_STAMP): $(STAMP) $(PROTO_SRC) scripts/gen_protos.py
	$(PY) scripts/gen_protos.py
	touch $(GEN_STAMP)

.PHONY: protos
protos: $(GEN_STAMP) ## Regenerate the Python stubs from protos/ into gen/

.PHONY: run
run: $(GEN_STAMP) $(XSELL_CLI) ## Start NATS, the four services and the gateway on SQLite (Ctrl-C stops); XSELL_DEV_PORT_OFFSET=100 moves every port
	$(PY) -m devstack

.PHONY: trace
trace: $(GEN_STAMP) ## Print a campaign ID's trace from the local span store: make trace ID=CSELL-NOV-T06-0884
	@if [ -z '$(ID)' ]; then echo "usage: make trace ID=CSELL-…  (an outreach's campaign ID: var/mail/ names each e-mail after its own)"; \
	else $(PY) -m devstack.trace '$(ID)'; fi

.PHONY: lint
lint: $(GEN_STAMP) ## buf lint, buf breaking (against main), ruff and mypy
	cd protos && ../$(VENV)/bin/buf lint
	cd protos && ../$(VENV)/bin/buf breaking --against '$(BUF_AGAINST)'
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

.PHONY: fmt
fmt: $(STAMP) ## Format the Python code
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

.PHONY: test
test: lint $(XSELL_CLI) ## Lint, then unit, integration and e2e tests in TEST_WORKERS (2) pytest-xdist workers
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=20

.PHONY: test-fast
test-fast: $(GEN_STAMP) ## Unit tests only
	$(PY) -m pytest tests/unit

.PHONY: k8s
k8s: $(STAMP) ## Render the Kubernetes overlays into var/k8s/<overlay>.yaml and validate them offline
	mkdir -p var/k8s
	for overlay in dev prod; do $(VENV)/bin/kubectl kustomize deploy/k8s/overlays/$$overlay > var/k8s/$$overlay.yaml || exit 1; done
	$(VENV)/bin/kubernetes-validate --strict --quiet -k 1.32 var/k8s/*.yaml

BENCH_BACKENDS ?= sqlite postgresql
comma := ,
empty :=
space := $(empty) $(empty)

.PHONY: bench bench-segments bench-campaigns bench-channels bench-attribution bench-relay
bench: bench-segments bench-campaigns bench-channels bench-attribution bench-relay ## Every benchmark below at full scale (1M people: an hour or more; docs/benchmarks.md); figures land in bench/results/
bench-segments: $(GEN_STAMP) ## Segments, 1M profiles / 10M events: ingest, recompute vs raw SQL, latency, RSS
	$(PY) -m bench --backends $(subst $(space),$(comma),$(strip $(BENCH_BACKENDS)))

bench-campaigns: $(GEN_STAMP) ## Campaigns: release of a 1M-person audience, trigger -> dispatch latency, RSS (SQLite; the trigger on PostgreSQL too)
	for backend in $(BENCH_BACKENDS); do $(PY) -m bench.campaigns --backend $$backend || exit 1; done

bench-channels: $(GEN_STAMP) ## Channels: dispatch to HTTP and SMTP sinks, latency at 1k/s, duplicates and losses
	for backend in $(BENCH_BACKENDS); do $(PY) -m bench.channels --backend $$backend || exit 1; done

bench-relay: $(GEN_STAMP) ## The outbox relay's CPU per event against raw acknowledged publishes (every service's events)
	$(PY) -m bench.relay

bench-attribution: $(GEN_STAMP) ## Attribution: disbursement -> views updated at 100/s, month recompute at 1M
	for backend in $(BENCH_BACKENDS); do $(PY) -m bench.attribution --backend $$backend || exit 1; done

.PHONY: clean
clean: ## Remove generated stubs, local data and build metadata (keeps the venv)
	rm -rf $(GEN) var xsell.egg-info
